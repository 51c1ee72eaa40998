"""Scoring rows/s of the parametric models by rows per network call, against two GEMM references.

For DTPMCategorical and DTPMInverseGamma (default network 21 -> 256 -> 512 -> 256 -> out), 65,536
rows at d = 21:

- ``gemm65536``: the network's four ``torch.addmm`` products on 65,536-row inputs, timed alone
  (the reference of ``studies/parametric_fast_recipe/inference_rate.py``);
- ``gemm4096``: the same products in 16 blocks of 4,096 rows (the best the GEMM alone does with
  cache-sized blocks);
- ``df``: ``decision_function`` (input checks, chunking, float64 scores);
- ``bN``: the scoring module called on blocks of N rows.

Every engine is timed in one loop, alternating call by call, 7 rounds, medians; rates are shown as
a share of each GEMM reference.

Usage: python studies/parametric_inference_blocks/blocks.py
"""

import time

import numpy as np
import torch

from dtpm_fast.parametric.detectors import DTPMCategorical, DTPMInverseGamma

D, ROWS, ROUNDS = 21, 65_536, 7


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, D), dtype=np.float32)
    Xt = torch.from_numpy(X)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {ROWS} rows, d = {D}")
    for cls in (DTPMCategorical, DTPMInverseGamma):
        model = cls(epochs=1, random_state=0, device="cpu").fit(
            rng.standard_normal((256, D), dtype=np.float32)
        )
        module = model._module
        layers = [m for m in module.net if isinstance(m, torch.nn.Linear)]
        inputs = [torch.randn(ROWS, layer.in_features) for layer in layers]

        def gemm(block, inputs=inputs, layers=layers):
            def run(_x):
                with torch.inference_mode():
                    for a, layer in zip(inputs, layers, strict=True):
                        for s in range(0, ROWS, block):
                            torch.addmm(layer.bias, a[s : s + block], layer.weight.t())

            return run

        def blocked(block, module=module):
            def run(_x):
                with torch.inference_mode():
                    out = torch.empty(ROWS)
                    for s in range(0, ROWS, block):
                        out[s : s + block] = module(Xt[s : s + block])
                return out

            return run

        engines = {"gemm65536": gemm(ROWS), "gemm4096": gemm(4096), "df": model.decision_function}
        for block in (65536, 16384, 8192, 4096, 2048, 1024, 512):
            engines[f"b{block}"] = blocked(block)
        times = {k: [] for k in engines}
        for _ in range(ROUNDS):
            for name, fn in engines.items():
                start = time.perf_counter()
                fn(X)
                times[name].append(time.perf_counter() - start)
        rate = {k: ROWS / np.median(v) for k, v in times.items()}
        print(
            f"\n{cls.__name__}: gemm65536 {rate['gemm65536']:,.0f} rows/s, gemm4096 {rate['gemm4096']:,.0f} rows/s"
        )
        for name in engines:
            if not name.startswith("gemm"):
                print(
                    f"  {name:8s} {rate[name]:>10,.0f} rows/s = {rate[name] / rate['gemm65536']:6.1%} of gemm65536, "
                    f"{rate[name] / rate['gemm4096']:6.1%} of gemm4096"
                )


if __name__ == "__main__":
    main()

"""Scoring rows/s of the parametric models against the in-run float32 GEMM rate (results/inference.txt).

GEMM rate: the network's own matrix products for one batch of 65,536 rows at d = 21, timed alone:
``torch.addmm(bias, A, W.T)`` for each Linear layer (21->256, 256->512, 512->256, 256->out) on
random float32 inputs of the same shapes, with the layer's own weights; rows/s = 65,536 / (sum
of the four times); also the same products in 4096-row blocks (the rows per call of CPU
scoring, ``_torch_utils.CPU_INFERENCE_BATCH``), the stricter reference. It is the rate the
network would reach if everything else (standardisation, ReLU, dropout-free eval, softmax and
expectation, input checks, copies) were free.
Engines: ``decision_function`` of the detector (eager), of the TorchScript and of the pt2 file
loaded with ``load_exported``. All are timed in one loop, alternating call by call, 9 rounds,
default torch threads; medians reported; scores of the exported files checked against eager.

Usage: python studies/parametric_fast_recipe/inference_rate.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dtpm_fast.parametric.detectors import DTPMCategorical, DTPMInverseGamma
from dtpm_fast.parametric.export import load_exported

D, ROWS, ROUNDS = 21, 65_536, 9


def gemm_only(module, block: int = ROWS) -> callable:
    layers = [m for m in module.net if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(ROWS, layer.in_features) for layer in layers]

    def run(_x):
        with torch.inference_mode():
            for a, layer in zip(inputs, layers, strict=False):
                for s in range(0, ROWS, block):
                    torch.addmm(layer.bias, a[s : s + block], layer.weight.t())

    return run


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, D), dtype=np.float32)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {ROWS} rows, d = {D}")
    for cls in (DTPMCategorical, DTPMInverseGamma):
        model = cls(epochs=1, random_state=0, device="cpu").fit(
            rng.standard_normal((256, D), dtype=np.float32)
        )
        with tempfile.TemporaryDirectory() as tmp:
            engines = {
                "gemm": gemm_only(model._module),
                "gemm4096": gemm_only(model._module, 4096),
                "eager": model.decision_function,
            }
            for fmt in ("torchscript", "pt2"):
                path = Path(tmp) / f"m.{fmt}"
                model.export(path, format=fmt)
                engines[fmt] = load_exported(path, device="cpu").decision_function
            reference = model.decision_function(X)
            for name in ("torchscript", "pt2"):
                np.testing.assert_allclose(engines[name](X), reference, rtol=1e-5, atol=1e-5)
            times = {k: [] for k in engines}
            for _ in range(ROUNDS):
                for name, fn in engines.items():
                    start = time.perf_counter()
                    fn(X)
                    times[name].append(time.perf_counter() - start)
        gemm = ROWS / np.median(times["gemm"])
        gemm4096 = ROWS / np.median(times["gemm4096"])
        print(
            f"\n{cls.__name__}: GEMM rate {gemm:,.0f} rows/s (median; best {ROWS / min(times['gemm']):,.0f}); "
            f"in 4096-row blocks {gemm4096:,.0f} rows/s"
        )
        for name in ("eager", "torchscript", "pt2"):
            rate = ROWS / np.median(times[name])
            print(
                f"  {name:12s} {rate:>10,.0f} rows/s median = {rate / gemm:5.1%} of the GEMM rate, "
                f"{rate / gemm4096:5.1%} of the 4096-row-block GEMM rate "
                f"(best {ROWS / min(times[name]):,.0f}); scores equal to eager within 1e-5"
            )


if __name__ == "__main__":
    main()

"""Eager vs TorchScript vs pt2 scoring speed, interleaved in one process.

On a shared machine the load changes between pytest-benchmark tests; alternating the three
engines call by call exposes them to the same load, so their ratio is what this measures.

    python studies/parametric_speed/parametric_engines.py --kind categorical --rows 65536 --repeats 6
    # CPU seconds of one thread:
    OMP_NUM_THREADS=1 python studies/parametric_speed/parametric_engines.py --timer cpu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from dtpm_fast.parametric import DTPMCategorical, DTPMInverseGamma, load_exported

D = 21


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("categorical", "inverse_gamma"), default="categorical")
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    clock = time.perf_counter if args.timer == "wall" else time.process_time

    X_fit = np.random.default_rng(1).standard_normal((256, D), dtype=np.float32)
    cls = DTPMCategorical if args.kind == "categorical" else DTPMInverseGamma
    model = cls(epochs=1, random_state=0, device="cpu").fit(X_fit)  # weights do not change the cost
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"eager": model}
        for fmt in ("torchscript", "pt2"):
            model.export(Path(tmp) / f"model.{fmt}", format=fmt)
            engines[fmt] = load_exported(Path(tmp) / f"model.{fmt}", device="cpu")
        X = np.random.default_rng(0).standard_normal((args.rows, D), dtype=np.float32)
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, scorer in engines.items():
                start = clock()
                scorer.decision_function(X)
                times[name].append(clock() - start)
    unit = "rows/s" if args.timer == "wall" else "rows per CPU-second"
    eager = np.median(times["eager"])
    for name, t in times.items():
        print(
            f"{name:12s} best {args.rows / min(t):10,.0f} {unit}   median {args.rows / np.median(t):10,.0f}"
            f"   median time vs eager {np.median(t) / eager - 1:+.1%}"
        )


if __name__ == "__main__":
    main()

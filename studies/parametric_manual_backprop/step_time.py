"""Milliseconds per training step, autograd + autocast against the written-out step (README table).

d = 21, default network, DTE-IG with the fast recipe's settings, 10 epochs of 8 steps on random
rows at 64, 209 and 512 rows per step (or the batch sizes given); best of 3 fits per setting.

Usage: OMP_NUM_THREADS=1 python studies/parametric_manual_backprop/step_time.py [BATCH ...]
"""

import sys
import time

import numpy as np
import torch

from dtpm_fast.parametric.network import build_scorer
from dtpm_fast.parametric.training import train_network

D = 21


def fit_seconds(n: int, batch: int, epochs: int, backprop: str) -> float:
    torch.manual_seed(0)
    X = torch.randn(n, D)
    module = build_scorer("inverse_gamma", D, (256, 512, 256), 0.5, np.zeros(D), np.ones(D))
    start = time.perf_counter()
    train_network(
        module.net,
        X,
        kind="inverse_gamma",
        T=400,
        num_bins=None,
        epochs=epochs,
        batch_size=batch,
        lr=3e-3,
        weight_decay=5e-4,
        schedule="warmup_cosine",
        precision="bfloat16",
        pipeline="per_epoch",
        t_sampling="stratified",
        ig_weighting="sigma2",
        backprop=backprop,
        progress=False,
    )
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    for batch in [int(b) for b in sys.argv[1:]] or [64, 209, 512]:
        for backprop in ("autograd", "manual"):
            best = min(fit_seconds(batch * 8, batch, 10, backprop) for _ in range(3))
            print(f"{batch} rows per step, {backprop}: {best / 80 * 1e3:.2f} ms per step", flush=True)


if __name__ == "__main__":
    main()

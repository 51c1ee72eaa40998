"""Training epoch time of the fast recipe by batch size, float32 against bfloat16 (830 rows, d = 21,
DTE-C network, one thread, medians of 3 x 20 epochs).

Usage: OMP_NUM_THREADS=1 python studies/parametric_step_budget/precision_by_batch.py
"""

import time

import numpy as np
import torch

from dtpm_fast.parametric.network import build_scorer
from dtpm_fast.parametric.training import train_network

torch.set_num_threads(1)
N, D = 830, 21
X = torch.randn(N, D)


def run(batch, precision, kind, epochs=20):
    torch.manual_seed(0)
    m = build_scorer(kind, D, (256, 512, 256), 0.5, np.zeros(D), np.ones(D), 7)
    t = time.perf_counter()
    train_network(
        m.net,
        X,
        kind=kind,
        T=400,
        num_bins=7,
        epochs=epochs,
        batch_size=batch,
        lr=3e-3,
        weight_decay=5e-4,
        schedule="warmup_cosine",
        precision=precision,
        pipeline="per_epoch",
        t_sampling="stratified",
        ig_weighting="sigma2",
    )
    return (time.perf_counter() - t) / epochs * 1e3


res = {}
for _ in range(3):
    for batch in (64, 104, 209, 512):
        for prec in ("float32", "bfloat16"):
            res.setdefault((batch, prec), []).append(run(batch, prec, "categorical"))
for k, v in sorted(res.items()):
    print(k, f"{np.median(v):.1f} ms/epoch")

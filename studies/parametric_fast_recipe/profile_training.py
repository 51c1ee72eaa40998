"""Where a training epoch's time goes, paper recipe vs fast recipe (results/profile.txt).

830 rows x 21 features (6_cardio's training set under the semi protocol), default network, one
thread. Part 1: ms per epoch, the recipes alternating 5 times (20 epochs each), medians. Part 2:
torch.profiler operator table (self CPU time) of 10 epochs of each recipe.

Usage: OMP_NUM_THREADS=1 python studies/parametric_fast_recipe/profile_training.py
(the recipes as ``fit`` resolves them today; results/profile.txt holds the first round's output,
studies/parametric_step_budget/results/profile.txt the second's)
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from dtpm_fast.parametric.detectors import DTPMCategorical
from dtpm_fast.parametric.network import build_scorer
from dtpm_fast.parametric.training import train_network

N, D = 830, 21
#: Each recipe's settings as ``fit`` resolves them for N rows (the fast recipe's batch size depends on N).
RECIPES = {name: DTPMCategorical(recipe=name).training_settings(n_rows=N) for name in ("paper", "fast")}


def run(recipe: str, X: torch.Tensor, epochs: int) -> float:
    r = RECIPES[recipe]
    torch.manual_seed(0)
    m = build_scorer("categorical", D, (256, 512, 256), 0.5, np.zeros(D), np.ones(D), 7)
    start = time.perf_counter()
    train_network(
        m.net,
        X,
        kind="categorical",
        T=400,
        num_bins=7,
        epochs=epochs,
        batch_size=r["batch_size"],
        lr=r["lr"],
        weight_decay=5e-4,
        schedule=r["schedule"],
        precision=r["precision"],
        pipeline=r["pipeline"],
        t_sampling=r["t_sampling"],
        ig_weighting=r["ig_weighting"],
        backprop=r["backprop"],
    )
    return (time.perf_counter() - start) / epochs * 1e3


def main() -> None:
    torch.set_num_threads(1)
    X = torch.randn(N, D)
    times: dict[str, list[float]] = {"paper": [], "fast": []}
    for _ in range(5):
        for recipe in times:
            times[recipe].append(run(recipe, X, 20))
    for recipe, v in times.items():
        per_step = np.median(v) / -(-N // RECIPES[recipe]["batch_size"])
        print(
            f"{recipe}: {np.median(v):.1f} ms/epoch (median of 5; all {[round(x, 1) for x in v]}), "
            f"{per_step:.2f} ms/step, {RECIPES[recipe]['epochs']} epochs -> "
            f"{np.median(v) * RECIPES[recipe]['epochs'] / 1e3:.2f} s per fit of {N} rows"
        )
    print(
        f"per-fit ratio paper/fast: "
        f"{np.median(times['paper']) * 400 / (np.median(times['fast']) * RECIPES['fast']['epochs']):.1f}x"
    )
    for recipe in times:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(recipe, X, 10)
        print(f"\n== {recipe} recipe, 10 epochs\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()

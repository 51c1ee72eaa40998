"""Does the authors' published DTE-IG recipe reproduce the paper's DTE-IG column where ours does not?

``DTPMInverseGamma`` falls below the issue's floor (paper mean - 2 std - 2) on 14_glass and
15_Hepatitis. This script trains the inverse-Gamma model a second time, *without* dtpm_fast's
training code: plain ``nn.Sequential`` with ``nn.Dropout``, a shuffling ``DataLoader``, unfused
Adam, the schedule and loss written out here, and both scores: ``s`` as the authors' public
code returns it (the signed network output) and ``s^2`` (what ``beta_hat / (a + 1)`` ranks by).
Facts restated (docs/METHOD.md sections 2 and 4; the authors' ``run.py`` builds ``DTEInverseGamma``
with its constructor defaults, which at the paper's version of their code were the default MLP,
400 epochs, batch 64, lr 1e-4, weight decay 5e-4, T = 400):

- beta_t = linspace(1e-4, 1e-2, T), sigma2_t = 1 - prod(1 - beta); x_t = x_0 + sqrt(sigma2_t) eps;
- loss = -mean(a log(s^2 + 1e-5) - s^2 / sigma2_t), a = d/2 - 1;
- d -> 256 -> 512 -> 256 -> 1, ReLU after each hidden layer, dropout 0.5 after the 2nd and 3rd.

Data: ``dtpm_fast.evaluation.protocol.prepare_split(X, y, seed, "semi")`` (the paper's rows:
PyOD's KNN reproduces the paper's KNN column on them). One JSON line per run, resumable.

    OMP_NUM_THREADS=1 python studies/parametric_quality/ig_authors_recipe.py \
        --out studies/parametric_quality/ig_authors_recipe.jsonl \
        --datasets 14_glass,15_Hepatitis --seeds 0,1,2,3,4
    python studies/parametric_quality/ig_authors_recipe.py \
        --out studies/parametric_quality/ig_authors_recipe.jsonl --report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data" / "adbench" / "Classical"
PAPER_CSV = REPO / "tests" / "data" / "dte_paper_semi_aucroc.csv"
EVAL_RUNS = REPO / "studies" / "adbench_evaluation" / "eval_parametric_semi" / "runs.csv"


def train_and_score(X_train: np.ndarray, X_test: np.ndarray, seed: int, epochs: int, T: int = 400):
    """Train the restated recipe; return the signed network output s on X_test."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    d = X_train.shape[1]
    a = 0.5 * d - 1.0
    betas = torch.linspace(1e-4, 1e-2, T)
    sigma2 = 1.0 - torch.cumprod(1.0 - betas, dim=0)
    sigma = sigma2.sqrt()
    net = nn.Sequential(
        nn.Linear(d, 256), nn.ReLU(),
        nn.Linear(256, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 1),
    )  # fmt: skip
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(torch.from_numpy(X_train).float(), batch_size=64, shuffle=True)
    net.train()
    for _ in range(epochs):
        for x0 in loader:
            t = torch.randint(0, T, (x0.shape[0],))
            x_t = x0 + sigma[t].unsqueeze(1) * torch.randn_like(x0)
            beta = net(x_t)[:, 0] ** 2
            loss = -(a * torch.log(beta + 1e-5) - beta / sigma2[t]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(X_test).float())[:, 0].numpy().astype(np.float64)


def run_one(dataset: str, seed: int, epochs: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from dtpm_fast.evaluation.protocol import load_dataset, prepare_split

    X, y = load_dataset(DATA_DIR, dataset)
    X_train, X_test, y_test = prepare_split(X, y, seed, "semi")
    start = time.perf_counter()
    s = train_and_score(X_train, X_test, seed, epochs)
    return {
        "dataset": dataset,
        "seed": seed,
        "epochs": epochs,
        "auc_signed_s": 100.0 * roc_auc_score(y_test, s),
        "auc_s_squared": 100.0 * roc_auc_score(y_test, s * s),
        "fraction_negative_s": float(np.mean(s < 0)),
        "seconds": time.perf_counter() - start,
    }


def report(out: Path) -> str:
    import pandas as pd

    runs = pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    paper = pd.read_csv(PAPER_CSV).set_index("dataset")
    ours = pd.read_csv(EVAL_RUNS) if EVAL_RUNS.exists() else None
    lines = [
        (
            "| dataset | seeds | restated recipe, score s (authors) | restated recipe, score s^2 "
            "| DTPMInverseGamma (harness) | paper DTE-IG | floor |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, sub in runs.groupby("dataset", sort=False):
        name = dataset.split("_", 1)[1].lower()
        p_mean, p_std = paper.loc[name, "DTE-IG"], paper.loc[name, "DTE-IG_std"]
        ours_cell = "-"
        if ours is not None:
            mine = ours[
                (ours.dataset == dataset) & (ours.model == "inverse-gamma") & ours.seed.isin(sub.seed)
            ]
            if len(mine):
                ours_cell = f"{mine.auc_roc.mean():.2f} ± {mine.auc_roc.std(ddof=1):.2f}"
        per_seed = ", ".join(f"{v:.1f}" for v in sub.auc_signed_s)
        lines.append(
            f"| {dataset} | {','.join(map(str, sub.seed))} "
            f"| {sub.auc_signed_s.mean():.2f} ± {sub.auc_signed_s.std(ddof=1):.2f} ({per_seed}) "
            f"| {sub.auc_s_squared.mean():.2f} ± {sub.auc_s_squared.std(ddof=1):.2f} "
            f"| {ours_cell} | {p_mean:.2f} ± {p_std:.2f} | {p_mean - 2 * p_std - 2:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="JSON-lines results file (appended, resumable)"
    )
    parser.add_argument("--datasets", default="14_glass,15_Hepatitis")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--report", action="store_true", help="print the markdown table instead of running")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    done = set()
    if args.out.exists():
        done = {
            (r["dataset"], r["seed"], r["epochs"]) for r in map(json.loads, args.out.read_text().splitlines())
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (dataset, seed, args.epochs) in done:
                continue
            result = run_one(dataset, seed, args.epochs)
            with args.out.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

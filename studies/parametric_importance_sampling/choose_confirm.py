"""DTE-IG AUC-ROC of the fast recipe with the importance-sampled loss against the sigma2-weighted one.

Both records are 22-data-set evaluations of ``recipe="fast"`` with the same splits and seeds
(5 seeds on the nine small data sets, 3 on the thirteen others) and batches of at least 64
rows (results/min_batch64/); they differ only in ``ig_weighting``. The data sets are split into those the screens looked at before the choice
(``CHOSEN_ON``) and the others, which only this evaluation saw.

Usage (from the repository root):
    python studies/parametric_importance_sampling/choose_confirm.py \
        > studies/parametric_importance_sampling/results/min_batch64/choose_confirm.md
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
IMPORTANCE = ROOT / "studies/parametric_importance_sampling/results/min_batch64"
SIGMA2 = ROOT / "studies/parametric_manual_backprop/results"
PAPER = ROOT / "studies/adbench_evaluation/eval_parametric_semi/runs.csv"
#: The data sets of results/screening/ (the choice was made on these).
CHOSEN_ON = {
    "39_vertebral", "41_Waveform", "14_glass", "15_Hepatitis", "37_Stamps", "4_breastw", "21_Lymphography",
    "47_yeast", "42_WBC", "45_wine", "35_SpamBase", "17_InternetAds", "38_thyroid",
}  # fmt: skip


def mean_auc(paths: list[Path], label: str) -> pd.Series:
    runs = pd.concat([pd.read_csv(p) for p in paths]).drop_duplicates(["dataset", "model", "seed"])
    runs = runs[runs["model"] == "inverse-gamma"]
    return runs.groupby("dataset")["auc_roc"].mean().rename(label)


def main() -> None:
    table = pd.concat(
        [
            mean_auc([PAPER], "paper recipe"),
            mean_auc(sorted(SIGMA2.glob("eval_*/runs.csv")), "fast, sigma2"),
            mean_auc(sorted(IMPORTANCE.glob("eval_*/runs.csv")), "fast, importance"),
        ],
        axis=1,
        join="inner",
    )
    table["importance - sigma2"] = table["fast, importance"] - table["fast, sigma2"]
    table["part"] = ["choose" if name in CHOSEN_ON else "confirm" for name in table.index]
    table = table.sort_values(["part", "importance - sigma2"])
    print(
        "# DTE-IG, fast recipe: importance-sampled against sigma2-weighted loss (mean AUC-ROC per data set)\n"
    )
    columns = ["paper recipe", "fast, sigma2", "fast, importance", "importance - sigma2"]
    print("| data set | part | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, row in table.iterrows():
        print(f"| {name} | {row['part']} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    print("\n| part | data sets | paper recipe | fast, sigma2 | fast, importance | importance - sigma2 |")
    print("|---|---|---|---|---|---|")
    for part, rows in [*table.groupby("part"), ("all", table)]:
        means = rows[columns].mean()
        print(f"| {part} | {len(rows)} | " + " | ".join(f"{v:.2f}" for v in means) + " |")


if __name__ == "__main__":
    main()

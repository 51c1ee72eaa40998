"""Summarise results/auc_*.csv: per model, the mean AUC-ROC of each precision over the 22 data
sets (per-data-set means over seeds), the mean and largest per-data-set difference, and the data
sets that moved by more than 0.05.

Usage (from the repository root):
    python studies/parametric_bf16_inference/summarize.py > studies/parametric_bf16_inference/results/summary.md
"""

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    runs = pd.concat([pd.read_csv(p) for p in sorted(RESULTS.glob("auc_*.csv"))])
    per_set = runs.groupby(["model", "dataset"])[["auc_float32", "auc_bfloat16", "diff"]].mean()
    print(f"# bfloat16 against float32 scoring: {len(runs)} fits, {runs.dataset.nunique()} data sets\n")
    print(
        "| model | mean AUC-ROC float32 | bfloat16 | mean diff | largest abs diff (data set) | sets moved > 0.05 |"
    )
    print("|---|---|---|---|---|---|")
    for model, rows in per_set.groupby(level="model"):
        worst = rows["diff"].abs().idxmax()[1]
        moved = ", ".join(f"{d} {v:+.3f}" for (_, d), v in rows["diff"].items() if abs(v) > 0.05)
        print(
            f"| {model} | {rows.auc_float32.mean():.3f} | {rows.auc_bfloat16.mean():.3f} | "
            f"{rows['diff'].mean():+.4f} | {rows['diff'].abs().max():.3f} ({worst}) | {moved or 'none'} |"
        )
    print(
        f"\nLargest score difference over the score range, all fits: "
        f"{runs.max_score_diff_over_range.max():.4f} (median {runs.max_score_diff_over_range.median():.4f})"
    )


if __name__ == "__main__":
    main()

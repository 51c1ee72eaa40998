"""Mean AUC-ROC per candidate from screen.py output, beside the recorded paper-recipe runs.

Usage: python studies/parametric_step_budget/summarise.py SCREEN_CSV [SCREEN_CSV ...]
The paper recipe's AUC-ROC for the same (data set, model, seed) comes from
studies/adbench_evaluation/eval_parametric_semi/runs.csv.
"""

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "studies/adbench_evaluation/eval_parametric_semi/runs.csv"


def main() -> None:
    runs = pd.concat([pd.read_csv(p) for p in sys.argv[1:]], ignore_index=True)
    paper = pd.read_csv(PAPER)[["dataset", "model", "seed", "auc_roc", "fit_s"]]
    paper = paper.rename(columns={"auc_roc": "paper_auc", "fit_s": "paper_fit_s"})
    merged = runs.merge(paper, on=["dataset", "model", "seed"], how="left")
    merged["diff"] = merged["auc_roc"] - merged["paper_auc"]
    per_set = merged.groupby(["model", "candidate", "dataset"])[["auc_roc", "paper_auc", "diff"]].mean()
    table = per_set["diff"].unstack("dataset").round(1)
    summary = merged.groupby(["model", "candidate"]).agg(
        runs=("auc_roc", "size"),
        mean_auc=("auc_roc", "mean"),
        paper_auc=("paper_auc", "mean"),
        mean_diff=("diff", "mean"),
        fit_s=("fit_s", "sum"),
    )
    pd.set_option("display.width", 250)
    print(summary.round(2).to_string())
    print("\nper data set, diff against the recorded paper recipe (mean over seeds):")
    print(table.to_string())


if __name__ == "__main__":
    main()

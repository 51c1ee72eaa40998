"""Mean AUC-ROC of screened candidates against the fast recipe's and the paper recipe's records.

Reads screen CSVs (studies/parametric_floors/screen.py), the fast recipe's harness records
(studies/parametric_importance_sampling/results/eval_*/runs.csv, the default before this study)
and the paper recipe's (studies/adbench_evaluation/eval_parametric_semi/runs.csv); compares on
the (data set, model, seed) triples each candidate ran. Prints a per-data-set table and, per
model, the mean difference from the paper recipe and the data sets below the paper's floor
(mean - max(2 std, 2) of the published DTE-C / DTE-IG) that the paper recipe meets.

Usage: python studies/parametric_floors/summarize.py SCREEN_CSV...
"""

import sys
from pathlib import Path

import pandas as pd

from dtpm_fast.evaluation.report import load_paper_table, match_paper_names

ROOT = Path(__file__).resolve().parents[2]
FAST = sorted((ROOT / "studies/parametric_importance_sampling/results").glob("eval_*/runs.csv"))
PAPER = ROOT / "studies/adbench_evaluation/eval_parametric_semi/runs.csv"
REFERENCE = ROOT / "tests/data"  # the paper's published table, dte_paper_semi_aucroc.csv
COLUMN = {"categorical": "DTE-C", "inverse-gamma": "DTE-IG"}


def floors(datasets: list[str]) -> dict[tuple[str, str], float]:
    """Paper mean - max(2 std, 2) of the published column, per (data set, model)."""
    table = load_paper_table(REFERENCE, "semi")
    names = match_paper_names(datasets, list(table.index))
    out = {}
    for name, match in names.items():
        for model, col in COLUMN.items():
            mean, std = table.loc[match.paper_name, col], table.loc[match.paper_name, col + "_std"]
            out[(name, model)] = mean - max(2 * std, 2.0)
    return out


def main() -> None:
    screens = pd.concat([pd.read_csv(p) for p in sys.argv[1:]])
    keys = ["dataset", "model", "seed"]
    fast = pd.concat([pd.read_csv(p) for p in FAST])[keys + ["auc_roc"]].assign(candidate="fast (recorded)")
    paper = pd.read_csv(PAPER)[keys + ["auc_roc"]].assign(candidate="paper (recorded)")
    runs = pd.concat([screens[keys + ["candidate", "auc_roc"]], fast, paper])
    seeds = screens[keys].drop_duplicates()
    runs = runs.merge(seeds, on=keys)
    table = runs.pivot_table(
        index=["dataset", "model"], columns="candidate", values="auc_roc", aggfunc="mean"
    )
    floor = floors(sorted({d for d, _ in table.index}))
    table["floor"] = [floor[(d, m)] for d, m in table.index]
    pd.set_option("display.width", 200)
    print(table.round(2).to_string())
    candidates = [c for c in table.columns if c not in ("paper (recorded)", "floor")]
    for model, rows in table.groupby(level="model"):
        print(f"\n{model}: {len(rows)} data sets; mean difference from the paper recipe")
        for c in candidates:
            diff = (rows[c] - rows["paper (recorded)"]).mean()
            misses = [
                f"{d} {rows.loc[(d, model), c]:.2f} < {rows.loc[(d, model), 'floor']:.2f}"
                for d, _ in rows.index
                if rows.loc[(d, model), "paper (recorded)"] >= rows.loc[(d, model), "floor"]
                and rows.loc[(d, model), c] < rows.loc[(d, model), "floor"]
            ]
            print(f"  {c:>18}: {diff:+.2f}; floors missed: {'; '.join(misses) or 'none'}")


if __name__ == "__main__":
    main()

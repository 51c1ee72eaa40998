"""Mean AUC-ROC of the fast recipe at peak lr 1e-3 and 3e-3 against the paper recipe, by part.

Records (same splits and seeds; compared on the triples present in all three):
- paper recipe: studies/adbench_evaluation/eval_parametric_semi/runs.csv;
- fast, lr 3e-3: studies/parametric_importance_sampling/results/eval_*/runs.csv;
- fast, lr 1e-3: studies/parametric_floors/results/eval_*/runs.csv.

"choose": the 13 data sets the screens (results/choose_*.csv) ran on before the choice;
"confirm": the 9 others (27_PageBlocks among them was also in the diagnostic screen,
results/budget_pageblocks.csv).

Usage (from the repository root):
    python studies/parametric_floors/choose_confirm.py > studies/parametric_floors/results/choose_confirm.md
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
RECORDS = {
    "paper recipe": [ROOT / "studies/adbench_evaluation/eval_parametric_semi/runs.csv"],
    "fast, lr 3e-3": sorted(
        (ROOT / "studies/parametric_importance_sampling/results").glob("eval_*/runs.csv")
    ),
    "fast, lr 1e-3": sorted((ROOT / "studies/parametric_floors/results").glob("eval_*/runs.csv")),
}
CHOSEN_ON = {
    "41_Waveform", "35_SpamBase", "17_InternetAds", "38_thyroid", "47_yeast", "39_vertebral", "14_glass",
    "15_Hepatitis", "37_Stamps", "4_breastw", "21_Lymphography", "42_WBC", "45_wine",
}  # fmt: skip
KEY = ["dataset", "model", "seed"]


def main() -> None:
    frames = []
    for label, paths in RECORDS.items():
        runs = pd.concat([pd.read_csv(p) for p in paths]).drop_duplicates(KEY)
        frames.append(runs.set_index(KEY)["auc_roc"].rename(label))
    runs = pd.concat(frames, axis=1, join="inner").reset_index()
    table = runs.groupby(["model", "dataset"])[list(RECORDS)].mean().reset_index()
    table["part"] = ["choose" if d in CHOSEN_ON else "confirm" for d in table["dataset"]]
    print("# Fast recipe at peak lr 1e-3 and 3e-3 against the paper recipe (mean AUC-ROC)\n")
    print(f"Runs: {len(runs)} (data set, model, seed) triples present in all three records.\n")
    print("| model | part | data sets | " + " | ".join(RECORDS) + " | 1e-3 - paper | 1e-3 - 3e-3 |")
    print("|---|---|---|" + "---|" * (len(RECORDS) + 2))
    for model, rows in table.groupby("model"):
        for part, sub in [*rows.groupby("part"), ("all", rows)]:
            m = sub[list(RECORDS)].mean()
            print(
                f"| {model} | {part} | {len(sub)} | "
                + " | ".join(f"{v:.2f}" for v in m)
                + f" | {m['fast, lr 1e-3'] - m['paper recipe']:+.2f} | {m['fast, lr 1e-3'] - m['fast, lr 3e-3']:+.2f} |"
            )


if __name__ == "__main__":
    main()

"""Tables of a harness run (runs.csv) comparing two models: per data set means over seeds,
differences, wins/losses, Wilcoxon signed-rank p on the per-data-set means, time ratios; for
the choose half, the confirm half and all data sets (split as in variants.py).

Usage: python studies/plus_detector/summarise.py RUNS_CSV [NEW=plus] [BASE=np] [--no-split]
"""

import csv
import sys
from collections import defaultdict

import numpy as np
from scipy.stats import wilcoxon

path = sys.argv[1]
args = [a for a in sys.argv[2:] if not a.startswith("--")]
new, base = (args + ["plus", "np"][len(args) :])[:2]
with open(path, newline="") as fh:
    rows = list(csv.DictReader(fh))
vals = defaultdict(lambda: defaultdict(list))
for r in rows:
    for key in ("auc_roc", "auc_pr", "fit_s", "score_s"):
        vals[(r["dataset"], r["model"])][key].append(float(r[key]))
names = sorted({r["dataset"] for r in rows})
halves = (
    {"all": names}
    if "--no-split" in sys.argv
    else {"choose": names[0::2], "confirm": names[1::2], "all": names}
)


def mean(name, model, key):
    return float(np.mean(vals[(name, model)][key]))


def total(model, key, subset):
    return sum(sum(vals[(n, model)][key]) for n in subset)


print(f"| data set | {base} AUC-ROC | {new} AUC-ROC | diff | {base} AUC-PR | {new} AUC-PR | diff | half |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for n in names:
    half = (
        "choose" if n in halves.get("choose", []) else ("confirm" if n in halves.get("confirm", []) else "")
    )
    a, b = mean(n, base, "auc_roc"), mean(n, new, "auc_roc")
    c, d = mean(n, base, "auc_pr"), mean(n, new, "auc_pr")
    print(f"| {n} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {c:.2f} | {d:.2f} | {d - c:+.2f} | {half} |")
print()
print(
    f"| subset | sets | {base} AUC-ROC | {new} AUC-ROC | diff | wins/ties/losses | worst diff | Wilcoxon p | "
    f"{base} AUC-PR | {new} AUC-PR | diff | AUC-PR p | time ratio (fit+score) |"
)
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for h, subset in halves.items():
    a = np.array([mean(n, base, "auc_roc") for n in subset])
    b = np.array([mean(n, new, "auc_roc") for n in subset])
    c = np.array([mean(n, base, "auc_pr") for n in subset])
    d = np.array([mean(n, new, "auc_pr") for n in subset])
    diff = np.round(b - a, 6)
    p = wilcoxon(b, a).pvalue if np.any(diff != 0) else 1.0
    p_pr = wilcoxon(d, c).pvalue if np.any(np.round(d - c, 6) != 0) else 1.0
    worst = subset[int(np.argmin(diff))]
    t_ratio = (total(new, "fit_s", subset) + total(new, "score_s", subset)) / (
        total(base, "fit_s", subset) + total(base, "score_s", subset)
    )
    print(
        f"| {h} | {len(subset)} | {a.mean():.2f} | {b.mean():.2f} | {diff.mean():+.2f} | "
        f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()} | {diff.min():+.2f} ({worst}) | {p:.4f} | "
        f"{c.mean():.2f} | {d.mean():.2f} | {(d - c).mean():+.2f} | {p_pr:.4f} | {t_ratio:.2f} |"
    )
# Data sets under 1000 rows are resampled to exactly 1000 with replacement (n_train + n_test = 1000).
sizes = {r["dataset"]: int(r["n_train"]) + int(r["n_test"]) for r in rows}
groups = {
    "resampled (n_train + n_test = 1000)": [n for n in names if sizes[n] == 1000],
    "not resampled": [n for n in names if sizes[n] != 1000],
}
print(f"\n| group | sets | {base} AUC-ROC | {new} AUC-ROC | diff | wins/ties/losses |")
print("|---|---:|---:|---:|---:|---|")
for g, subset in groups.items():
    if not subset:
        continue
    a = np.array([mean(n, base, "auc_roc") for n in subset])
    b = np.array([mean(n, new, "auc_roc") for n in subset])
    diff = np.round(b - a, 6)
    print(
        f"| {g} | {len(subset)} | {a.mean():.2f} | {b.mean():.2f} | {diff.mean():+.2f} | "
        f"{(diff > 0).sum()}/{(diff == 0).sum()}/{(diff < 0).sum()} |"
    )
ratios = [
    (sum(vals[(n, new)]["fit_s"]) + sum(vals[(n, new)]["score_s"]))
    / (sum(vals[(n, base)]["fit_s"]) + sum(vals[(n, base)]["score_s"]))
    for n in names
]
print(
    f"\nper-data-set time ratio (fit+score, {new}/{base}): median {np.median(ratios):.2f}, max {max(ratios):.2f} "
    f"({names[int(np.argmax(ratios))]})"
)

"""How much could adding a trained DTE-C (or DTE-IG) to `plus` gain at most? Reads recorded harness
summaries (no fitting): `plus` and `np` from results/classical, the fast-recipe parametric models
from ../parametric_floors/results/eval_{small,large}, over the data sets both cover, and prints
each model's mean and the label-using ceiling max(plus, model) per data set.

Usage: python studies/plus_detector/ceiling_parametric.py
"""

import csv
from pathlib import Path

here = Path(__file__).resolve().parent


def read(path):
    with open(path, newline="") as f:
        return {(r["dataset"], r["model"]): float(r["ours"]) for r in csv.DictReader(f)}


plus_np = read(here / "results" / "classical" / "summary.csv")
parametric = {}
for part in ("eval_small", "eval_large"):
    parametric.update(read(here.parent / "parametric_floors" / "results" / part / "summary.csv"))
sets = sorted({name for name, _ in parametric})
mean = lambda values: sum(values) / len(values)
np_, plus = [plus_np[(s, "np")] for s in sets], [plus_np[(s, "plus")] for s in sets]
print(f"{len(sets)} data sets; np {mean(np_):.2f}, plus {mean(plus):.2f}")
for model in ("categorical", "inverse-gamma"):
    own = [parametric[(s, model)] for s in sets]
    best = [max(a, b) for a, b in zip(plus, own, strict=True)]
    worst = min((b - a, s) for a, b, s in zip(np_, own, sets, strict=True))
    print(
        f"{model}: {mean(own):.2f} ({mean(own) - mean(np_):+.2f} against np, worst {worst[0]:+.2f} on "
        f"{worst[1]}); ceiling max(plus, {model}) {mean(best):.2f} = {mean(best) - mean(np_):+.2f} "
        f"against np, {mean(best) - mean(plus):+.2f} against plus"
    )

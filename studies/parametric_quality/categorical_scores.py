"""Does another read-out of a logits-trained DTE-C model recover the double softmax's AUC-ROC?

Trains `DTPMCategorical` (the default recipe, logits cross-entropy) on the semi-supervised split of
each data set (seed 0) and scores the test rows four ways from the same predicted distribution
over bins: the expected bin (the score docs/METHOD.md section 4 defines and the library returns),
1 - p(bin 0), the argmax bin, and the expected bin of the sharpened distribution p^4. A question
for studies/parametric_quality/parametric_quality.md, not a library feature.

    python studies/parametric_quality/categorical_scores.py --datasets 38_thyroid,6_cardio,39_vertebral
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from dtpm_fast import DTPMCategorical
from dtpm_fast.evaluation.protocol import load_dataset, prepare_split

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench" / "Classical"


def read_outs(p: np.ndarray) -> dict[str, np.ndarray]:
    bins = np.arange(p.shape[1])
    sharp = p**4 / (p**4).sum(axis=1, keepdims=True)
    return {
        "expected bin": p @ bins,
        "1 - p(bin 0)": 1 - p[:, 0],
        "argmax bin": p.argmax(axis=1),
        "expected bin of p^4": sharp @ bins,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="38_thyroid,6_cardio,39_vertebral")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| data set | " + " | ".join(read_outs(np.ones((1, 7)) / 7)) + " |")
    print("|---|---|---|---|---|")
    for name in args.datasets.split(","):
        X, y = load_dataset(args.data, name)
        X_train, X_test, y_test = prepare_split(X, y, seed=args.seed, protocol="semi")
        model = DTPMCategorical(random_state=args.seed, standardize=False, device="cpu").fit(X_train)
        scores = read_outs(model.posterior(X_test))
        print(
            f"| {name} | "
            + " | ".join(f"{100 * roc_auc_score(y_test, s):.2f}" for s in scores.values())
            + " |"
        )


if __name__ == "__main__":
    main()

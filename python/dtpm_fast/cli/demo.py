"""The built-in demo: fit DTPMNonParametric on the bundled cardio data and score held-back rows."""

from __future__ import annotations

import time
from importlib import resources

import numpy as np

from dtpm_fast.evaluation.metrics import auc_roc


def load_cardio() -> tuple[np.ndarray, np.ndarray]:
    """The bundled ADBench 6_cardio data (see dtpm_fast/data/README.md): X (1831, 21), y (1 = anomaly)."""
    with resources.files("dtpm_fast").joinpath("data/cardio.npz").open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        return data["X"].astype(np.float32), data["y"].astype(np.int64)


def run(top: int = 5, seed: int = 0, plot=None) -> dict:
    """Semi-supervised split (train on half of the normal rows), fit, score; returns the numbers.

    With ``plot`` (a path), also writes dtpm_fast.plotting.plot_overview of the test rows there.
    """
    from dtpm_fast.nonparametric import DTPMNonParametric

    X, y = load_cardio()
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    train = normal[: normal.size // 2]
    test = np.concatenate([normal[normal.size // 2 :], np.flatnonzero(y == 1)])

    start = time.perf_counter()
    model = DTPMNonParametric().fit(X[train])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = model.decision_function(X[test])
    score_s = time.perf_counter() - start
    order = np.argsort(-scores)[:top]
    contributions = model.explain(X[test[order]])
    if plot is not None:
        from dtpm_fast.plotting import plot_overview

        plot_overview(model, X[test], y[test], path=plot)
    return {
        "n_train": train.size,
        "n_test": test.size,
        "n_features": X.shape[1],
        "auc_roc": auc_roc(y[test], scores),  # percent
        "fit_s": fit_s,
        "score_s": score_s,
        "rows_per_s": test.size / score_s,
        "index": model.index_kind_,
        "top_rows": test[order],
        "top_scores": scores[order],
        "top_labels": y[test[order]],
        "top_features": np.argsort(-contributions, axis=1)[:, :3],
        "top_feature_share": np.sort(contributions, axis=1)[:, ::-1][:, :3]
        / contributions.sum(1, keepdims=True),
    }


def _print_report(r: dict) -> None:
    print("dtpm_fast demo: DTPMNonParametric (K=5, T=300, posterior mean) on ADBench 6_cardio")
    print(
        f"  train {r['n_train']} normal rows, test {r['n_test']} rows, {r['n_features']} features, "
        f"index {r['index']}"
    )
    print(
        f"  AUC-ROC {r['auc_roc']:.2f}%   fit {r['fit_s'] * 1e3:.1f} ms   "
        f"score {r['score_s'] * 1e3:.1f} ms ({r['rows_per_s']:,.0f} rows/s)"
    )
    print("  top anomalies (row, score, true label, most anomalous features with share of D2):")
    for row, score, label, feats, share in zip(
        r["top_rows"],
        r["top_scores"],
        r["top_labels"],
        r["top_features"],
        r["top_feature_share"],
        strict=False,
    ):
        parts = ", ".join(f"x{f} {100 * s:.0f}%" for f, s in zip(feats, share, strict=False))
        print(f"    row {row:5d}  score {score:6.1f}  label {label}  {parts}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="fit and score the bundled cardio data, print AUC-ROC")
    from dtpm_fast.cli import _args

    parser.add_argument(
        "--top", type=_args.positive_int, default=5, metavar="N", help="how many top anomalies to show"
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="also write a figure (scores, posteriors, explanation) there; needs matplotlib",
    )
    parser.set_defaults(func=_demo)


def _demo(args) -> int:
    result = run(top=args.top, plot=args.plot)
    _print_report(result)
    if args.plot is not None:
        print(f"  figure written to {args.plot}")
    return 0

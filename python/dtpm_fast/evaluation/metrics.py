"""Detection metrics as the DTE authors and ADBench compute them."""

from __future__ import annotations

import numpy as np


def _check_scores(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if y_true.shape != scores.shape:
        raise ValueError(
            f"y_true has {y_true.size} entries but scores has {scores.size}; pass one score per row"
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (normal) and 1 (anomaly)")
    if y_true.min(initial=1) == y_true.max(initial=0):
        raise ValueError("y_true must contain both normal (0) and anomalous (1) rows for AUC metrics")
    # The authors' runner replaces NaN scores by 0 before the AUCs; do the same (and say so).
    scores = np.where(np.isnan(scores), 0.0, scores)
    return y_true, scores


def auc_roc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve in percent (0..100, like the paper's tables).

    ``scores``: higher = more anomalous; NaN scores count as 0, as in the authors' runner.
    """
    from scipy.stats import rankdata  # here: scipy.stats takes ~1 s to import

    y_true, scores = _check_scores(y_true, scores)
    # Mann-Whitney: the share of (anomaly, normal) pairs ranked correctly, ties counting half.
    ranks = rankdata(scores)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    return 100.0 * float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_pr(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (ADBench's AUC-PR), in percent."""
    from sklearn.metrics import average_precision_score

    y_true, scores = _check_scores(y_true, scores)
    return 100.0 * float(average_precision_score(y_true, scores))


def f1_at_true_count(y_true: np.ndarray, scores: np.ndarray) -> float:
    """F1 (percent) when the ``k`` highest scores are flagged, ``k`` = the true number of anomalies.

    Ties at the cut-off are broken by a stable sort on the score (the first rows win), so the
    value is deterministic; the authors' ``argpartition`` leaves ties in an unspecified order.
    """
    y_true, scores = _check_scores(y_true, scores)
    k = int(y_true.sum())
    flagged = np.zeros_like(y_true)
    flagged[np.argsort(-scores, kind="stable")[:k]] = 1
    true_pos = int((flagged & y_true).sum())
    # precision = recall = true_pos / k because exactly k rows are flagged, so F1 = true_pos / k.
    return 100.0 * true_pos / k


def all_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``{"auc_roc", "auc_pr", "f1"}``, each in percent."""
    return {
        "auc_roc": auc_roc(y_true, scores),
        "auc_pr": auc_pr(y_true, scores),
        "f1": f1_at_true_count(y_true, scores),
    }

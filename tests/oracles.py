"""Plain NumPy/SciPy reference implementations that the fast paths are checked against."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from dtpm_fast.schedule import ve_sigma2


def posterior_oracle(sqdist: np.ndarray, n_features: int, T: int = 300):
    """(mode, mean, posterior) of docs/METHOD.md section 3, evaluated on the full grid in float64."""
    sigma2 = ve_sigma2(T)
    d2 = np.maximum(np.asarray(sqdist, dtype=np.float64), 0.0).mean(axis=1)
    a, b = n_features / 2.0 - 1.0, d2 / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = -(a + 1.0) * np.log(sigma2)[None, :] - b[:, None] / sigma2[None, :]
        log_p -= logsumexp(log_p, axis=1, keepdims=True)
    post = np.exp(log_p)
    for row, at in ((d2 == 0, 0), (np.isinf(d2), T - 1)):  # degenerate rows: all mass at one end
        post[row] = 0.0
        post[row, at] = 1.0
    return post.argmax(axis=1), post @ np.arange(T, dtype=np.float64), post


def neighbour_sqdist_oracle(queries, train, ids):
    """(sqdist [n, k], per-feature contribution [n, d]) by explicit float64 differences."""
    diff = queries[:, None, :].astype(np.float64) - train[ids].astype(np.float64)
    sq = diff**2
    return sq.sum(axis=2), sq.mean(axis=1)


def knn_sqdist_oracle(queries, train, k, leave_one_out=False):
    """Exact K smallest squared distances by brute force (leave_one_out: queries are train)."""
    d = ((queries[:, None, :].astype(np.float64) - train[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k]

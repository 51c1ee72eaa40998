"""Cache, per data set and seed (semi protocol), the KMAX nearest training rows of every test
row and (leave-one-out) of every training row, so scoring variants can be compared cheaply.

Usage: python studies/plus_detector/cache_neighbours.py DATA_DIR CACHE_DIR [KMAX [TRANSFORM]]

TRANSFORM (fitted on the training rows, applied to both): "none" (the protocol's standardised
rows, DTE-NP's input), "lw" (whitening with the Ledoit-Wolf shrunk covariance), "qn" (each feature
through the normal quantile of its training rank, linear beyond the training range), "nsA"
(per-feature rescaling by neighbour discrepancy) or "subB" (a fixed random half of the features).
"""

import sys
from pathlib import Path

import numpy as np

from dtpm_fast import _core
from dtpm_fast.evaluation import protocol as proto

data_dir, cache = Path(sys.argv[1]), Path(sys.argv[2])
KMAX = int(sys.argv[3]) if len(sys.argv) > 3 else 50
TRANSFORM = sys.argv[4] if len(sys.argv) > 4 else "none"
cache.mkdir(parents=True, exist_ok=True)


def loo(ids, d2, n):
    """Drop each row's own id (or its farthest candidate when absent) - the library's rule."""
    own = ids == np.arange(n)[:, None]
    absent = ~own.any(axis=1)
    own[absent, -1] = True
    keep = ~own
    return ids[keep].reshape(n, -1), d2[keep].reshape(n, -1)


def lw_whiten(Xtr, Xte):
    from sklearn.covariance import LedoitWolf

    mu = Xtr.mean(axis=0)
    cov = LedoitWolf(assume_centered=False).fit(Xtr).covariance_
    lam, V = np.linalg.eigh(cov)
    W = V / np.sqrt(np.maximum(lam, 1e-12 * lam.max()))
    f = lambda A: np.ascontiguousarray((A - mu) @ W, dtype=np.float32)
    return f(Xtr), f(Xte)


def neighbour_scale(tr, te, alpha, k=5):
    """Rescale feature j by 1/sqrt(s_j + alpha*mean(s)), s_j the mean squared difference in
    feature j between a training row and its k nearest other training rows."""
    index = _core.BruteForceIndex(tr)
    _, ids = index.search(tr, k + 1)
    ids, _ = loo(ids, np.zeros(ids.shape, np.float32), tr.shape[0])
    s = ((tr[:, None, :] - tr[ids]) ** 2).mean(axis=(0, 1), dtype=np.float64)
    w = 1.0 / np.sqrt(s + alpha * s.mean() + 1e-12)
    return np.ascontiguousarray(tr * w, dtype=np.float32), np.ascontiguousarray(te * w, dtype=np.float32)


def quantile_normal(tr, te):
    """Map feature j through Phi^-1 of its training mid-rank ECDF; beyond the training range
    continue with slope 1 (the features are standardised), so extreme values stay extreme."""
    from scipy.stats import norm

    out_tr, out_te = np.empty_like(tr), np.empty_like(te)
    n = tr.shape[0]
    for j in range(tr.shape[1]):
        xs, counts = np.unique(tr[:, j], return_counts=True)
        mid = (np.cumsum(counts) - 0.5 * counts) / n
        zs = norm.ppf(mid)
        for src, dst in ((tr, out_tr), (te, out_te)):
            v = src[:, j]
            z = np.interp(v, xs, zs)
            z = np.where(v > xs[-1], zs[-1] + (v - xs[-1]), z)
            dst[:, j] = np.where(v < xs[0], zs[0] - (xs[0] - v), z)
    return np.ascontiguousarray(out_tr, np.float32), np.ascontiguousarray(out_te, np.float32)


for name, path in sorted(proto.find_datasets(data_dir).items()):
    X, y = proto.load_npz(path)
    for seed in range(5):
        out = cache / f"{name}__{seed}.npz"
        if out.exists():
            continue
        s = proto.prepare(X, y, seed, "semi")
        tr = np.ascontiguousarray(s.X_train, dtype=np.float32)
        te = np.ascontiguousarray(s.X_test, dtype=np.float32)
        if TRANSFORM == "lw":
            tr, te = lw_whiten(s.X_train, s.X_test)
        elif TRANSFORM.startswith("sub"):  # a fixed random half of the features (at least 3)
            cols = np.sort(
                np.random.RandomState(int(TRANSFORM[3:])).permutation(tr.shape[1])[: max(3, tr.shape[1] // 2)]
            )
            tr, te = np.ascontiguousarray(tr[:, cols]), np.ascontiguousarray(te[:, cols])
        elif TRANSFORM == "qn":
            tr, te = quantile_normal(tr, te)
        elif TRANSFORM.startswith("ns"):
            tr, te = neighbour_scale(tr, te, float(TRANSFORM[2:]))
        k = min(KMAX, tr.shape[0] - 1)
        index = _core.BruteForceIndex(tr)
        d_te, i_te = index.search(te, k)
        d_tr, i_tr = index.search(tr, k + 1)
        i_tr, d_tr = loo(i_tr, d_tr, tr.shape[0])
        np.savez(
            out,
            d_te=d_te,
            i_te=i_te.astype(np.int32),
            d_tr=d_tr,
            i_tr=i_tr.astype(np.int32),
            y=s.y_test.astype(np.int8),
            d=tr.shape[1],
        )
        print(name, seed, tr.shape, te.shape, flush=True)

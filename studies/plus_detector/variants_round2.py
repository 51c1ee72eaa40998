"""Second round of variants against the multi-scale rule, from the same caches (cache_neighbours.py,
cache_global.py), with the helpers and evaluation loop of variants.py.

Usage: python studies/plus_detector/variants_round2.py CACHE_DIR {choose|confirm|all} [VARIANT ...]
       [views=VIEW ...] [-v]

Families (all names below; "plus" is the chosen rule, the mean posterior time over K = 1..32):

- ``plus+V_mean|max``: plus combined with a second view V (``g`` Mahalanobis, ``lw`` the rule
  on Ledoit-Wolf whitened rows, ``qn`` the rule on quantile-normal features, ``lm16``, ``lg16``,
  ``lg32`` below; ``plus+lm16+g_mean`` three views); each
  view is first turned into a tail surprisal -log(1 - F(s)), F the empirical CDF of the training
  rows' leave-one-out scores (continued linearly in training standard deviations beyond their
  maximum), then the two are averaged (``mean``; Fisher's sum ranks the same) or the larger kept
  (``max``).
- ``qn``, ``lw``: the rule on the transformed rows alone.
- ``lmK``: a local Mahalanobis distance, the row's offset from the mean of its K nearest training
  rows measured in their shrunk covariance (shrunk towards the mean local variance per feature);
  training rows leave-one-out. Needs the protocol's rows, rebuilt from DATA (Classical folder).
  ``lgK``: the negative log-likelihood under that local Gaussian (the distance plus half the log
  determinant of the shrunk covariance, which keeps the neighbourhood's scale).
- ``lgtK``: the posterior-mean diffusion time when the K neighbours are taken as a Gaussian
  (``local_gaussian_time``); ``lgt_multi`` its mean over the ladder; ``plus+lgtK`` the mean of the
  two times (same scale, no calibration).
- ``rowsB``: the rule averaged over B random halves of the training rows (neighbours found inside
  each half from the cached 50; the ladder stops at 16).
"""

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

import variants as base
from dtpm_fast.evaluation import protocol as proto

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench" / "Classical"
LADDER = base.GEO


def plus(c, view=""):
    return base.multi(c, lambda c, k: base.t_view(c, k, view), LADDER, base.ident)


def surprisal(train, test):
    """-log(1 - F) with F the training scores' ECDF (n + 1 in the denominator), continued beyond the
    training maximum by the excess in training standard deviations."""
    s = np.sort(train)
    n = s.size
    sd = s.std() or 1.0

    def f(v):
        u = np.searchsorted(s, v, side="right") / (n + 1)
        return -np.log1p(-u) + np.maximum(0.0, (v - s[-1]) / sd)

    return f(train), f(test)


def combine(c, first, second, how):
    a_tr, a_te = surprisal(*first(c))
    b_tr, b_te = surprisal(*second(c))
    op = {"mean": lambda a, b: (a + b) / 2, "max": np.maximum}[how]
    return op(a_tr, b_tr), op(a_te, b_te)


def combine3(c, views):
    parts = [surprisal(*view(c)) for view in views]
    return sum(p[0] for p in parts) / len(parts), sum(p[1] for p in parts) / len(parts)


@lru_cache(maxsize=2)
def rows(name, seed):
    X, y = proto.load_npz(DATA / f"{name}.npz")
    s = proto.prepare(X, y, seed, "semi")
    return s.X_train, s.X_test


def local_mahalanobis(c, k, density=False):
    """(x - m)' C^-1 (x - m), C = A'A/k + lam I, m and A the mean and centred rows of x's k
    neighbours, lam their mean variance per feature; through the k x k Gram matrix (Woodbury).
    With ``density`` the negative log-likelihood of x under N(m, C) instead (adds log det C)."""
    tr, te = rows(c["name"], c["seed"])

    def score(X, ids):
        out = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], 2048):
            N = tr[ids[lo : lo + 2048, :k]]  # (b, k, d)
            m = N.mean(axis=1)
            A = N - m[:, None, :]
            v = X[lo : lo + 2048] - m
            lam = np.einsum("bkd,bkd->b", A, A) / (k * X.shape[1]) + 1e-9
            G = np.einsum("bkd,bjd->bkj", A, A) + (k * lam)[:, None, None] * np.eye(k)
            Av = np.einsum("bkd,bd->bk", A, v)
            sol = np.linalg.solve(G, Av[..., None])[..., 0]
            maha = (np.einsum("bd,bd->b", v, v) - np.einsum("bk,bk->b", Av, sol)) / lam
            if density:
                logdet = X.shape[1] * np.log(lam) + np.linalg.slogdet(G)[1] - k * np.log(k * lam)
                out[lo : lo + 2048] = 0.5 * (maha + logdet)
            else:
                out[lo : lo + 2048] = np.log(maha + base.EPS)
        return out

    return score(tr, c["i_tr"]), score(te, c["i_te"])


def local_gaussian_time(c, k):
    """Posterior-mean diffusion time when x_t = x_0 + sigma_t e with x_0 drawn from the Gaussian
    N(m, S) of x's k nearest training rows (S = A'A/k, no shrinkage: the noise regularises):
    log p(x | t) = -1/2 [v' (S + sigma2_t I)^-1 v + log det(S + sigma2_t I)], v = x - m, uniform
    prior on the grid. As sigma2_t outgrows S this is DTE-NP's likelihood at the same k; at k = 1
    it is DTE-NP's exactly."""
    tr, te = rows(c["name"], c["seed"])
    s2 = np.exp(base.GRID.log_sigma2)  # (T,)
    steps = np.arange(s2.size)

    def score(X, ids):
        d = X.shape[1]
        out = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], 512):
            N = tr[ids[lo : lo + 512, :k]]
            m = N.mean(axis=1)
            A = N - m[:, None, :]
            v = X[lo : lo + 512] - m
            gamma, W = np.linalg.eigh(np.einsum("bkd,bjd->bkj", A, A))
            gamma = np.maximum(gamma, 0.0)
            proj = np.einsum("bkj,bk->bj", W, np.einsum("bkd,bd->bk", A, v)) ** 2
            proj = np.where(gamma > 1e-9, proj / np.maximum(gamma, 1e-300), 0.0)
            mu = gamma / k
            vv = np.einsum("bd,bd->b", v, v)
            inv = 1.0 / s2  # (T,)
            shrink = inv[None, None, :] - 1.0 / (mu[..., None] + s2[None, None, :])  # (b, k, T)
            quad = vv[:, None] * inv[None, :] - np.einsum("bk,bkt->bt", proj, shrink)
            logdet = d * np.log(s2)[None, :] + np.log1p(mu[..., None] * inv[None, None, :]).sum(axis=1)
            ll = -0.5 * (quad + logdet)
            ll -= ll.max(axis=1, keepdims=True)
            p = np.exp(ll)
            out[lo : lo + 512] = (p @ steps) / p.sum(axis=1)
        return out

    return score(tr, c["i_tr"]), score(te, c["i_te"])


def row_halves(c, n_bags):
    """The rule on random halves of the training rows, neighbours taken from the cached 50."""
    n_train = c["d_tr"].shape[0]
    d = int(c["d"])
    ladder = tuple(k for k in LADDER if k <= 16)
    tr_sum, te_sum = 0.0, 0.0
    for b in range(n_bags):
        keep = np.random.RandomState(1000 + b).rand(n_train) < 0.5
        parts = []
        for ids, sq in ((c["i_tr"], c["d_tr"]), (c["i_te"], c["d_te"])):
            inside = keep[ids]
            # Kept candidates first, in distance order; missing ones padded with the farthest kept.
            order = np.argsort(~inside, axis=1, kind="stable")
            sq_in = np.take_along_axis(sq, order, axis=1)
            n_in = inside.sum(axis=1)
            cols = np.minimum(np.arange(16)[None, :], np.maximum(n_in, 1)[:, None] - 1)
            sq16 = np.ascontiguousarray(np.take_along_axis(sq_in, cols, axis=1))
            t = np.mean(
                [
                    base._core.posterior(
                        np.ascontiguousarray(sq16[:, :k]),
                        d,
                        base.GRID.log_sigma2,
                        base.GRID.inv_sigma2,
                        False,
                        True,
                        False,
                    )[1]
                    for k in ladder
                ],
                axis=0,
            )
            parts.append(t)
        tr_sum, te_sum = tr_sum + parts[0], te_sum + parts[1]
    return tr_sum / n_bags, te_sum / n_bags


V = {}
V["plus"] = plus
V["qn"] = lambda c: plus(c, "qn_")
V["lw"] = lambda c: plus(c, "lw_")
V["lm16"] = lambda c: local_mahalanobis(c, 16)
V["lm32"] = lambda c: local_mahalanobis(c, 32)
V["lg16"] = lambda c: local_mahalanobis(c, 16, True)
V["lg32"] = lambda c: local_mahalanobis(c, 32, True)
for k in (2, 4, 8, 16, 32):
    V[f"lgt{k}"] = lambda c, k=k: local_gaussian_time(c, k)
V["lgt_multi"] = lambda c: base.multi(c, local_gaussian_time, LADDER, base.ident)
V["lgt_multi_4_32"] = lambda c: base.multi(c, local_gaussian_time, (4, 8, 16, 32), base.ident)
V["plus+lgt16"] = lambda c: base.combo(c, [plus, V["lgt16"]], base.ident)
V["plus+lgt32"] = lambda c: base.combo(c, [plus, V["lgt32"]], base.ident)
V["rows8"] = lambda c: row_halves(c, 8)
SECOND = {
    "g": lambda c: base.log_d2(c, 1, "g_"),
    "lw": V["lw"],
    "qn": V["qn"],
    "lm16": V["lm16"],
    "lg16": V["lg16"],
    "lg32": V["lg32"],
}
for view, fn in SECOND.items():
    for how in ("mean", "max"):
        V[f"plus+{view}_{how}"] = lambda c, fn=fn, how=how: combine(c, plus, fn, how)
V["plus+lm16+g_mean"] = lambda c: combine3(c, (plus, V["lm16"], SECOND["g"]))
V["k5"] = lambda c: base.t_mean(c, 5)

if __name__ == "__main__":
    base.run(V, sys.argv[1:])

"""Score variants computed from the cached neighbours (cache_neighbours.py), AUC-ROC per data set.

Usage: python studies/plus_detector/variants.py CACHE_DIR {choose|confirm|all} [VARIANT ...]
       [views=VIEW ...] [-v]

VIEW names a second cache built with a transform, read from CACHE_DIR_VIEW. The helpers and the
evaluation loop (``run``) are imported by variants_round2.py.

The 31 classical data sets are sorted by file stem (Python's string order); the choose half is
every other one starting with the first (indices 0, 2, ...), the confirm half the rest.
"""

import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon
from sklearn.metrics import roc_auc_score

EPS = 1e-12


def dmean(d, k):
    return d[:, :k].mean(axis=1, dtype=np.float64)


def zcal(train, test):
    """Standardise by the training (leave-one-out) scores' mean and std."""
    mu, sd = train.mean(), train.std()
    sd = sd if sd > 0 else 1.0
    return (train - mu) / sd, (test - mu) / sd


def ecdf(train, test):
    s = np.sort(train)
    return (np.searchsorted(s, train, side="right") / s.size, np.searchsorted(s, test, side="right") / s.size)


def log_d2(c, k, view=""):
    return np.log(dmean(c[view + "d_tr"], k) + EPS), np.log(dmean(c[view + "d_te"], k) + EPS)


def log_agg(c, k, agg, view=""):
    f = {
        "sqrt": lambda d: np.sqrt(np.maximum(d[:, :k], 0)).mean(axis=1),
        "kth": lambda d: d[:, k - 1].astype(np.float64),
        "geo": lambda d: np.log(np.maximum(d[:, :k], 0) + 1e-6).mean(axis=1),
    }[agg]
    if agg == "geo":
        return f(c[view + "d_tr"]), f(c[view + "d_te"])
    return np.log(f(c[view + "d_tr"]) + EPS), np.log(f(c[view + "d_te"]) + EPS)


def lof_like(c, k, kref=None):
    """log D2_k(x) - mean over x's k neighbours of their leave-one-out log D2_k."""
    kref = kref or k
    tr, te = log_d2(c, k)
    ref_tr = tr[c["i_tr"][:, :kref]].mean(axis=1)
    ref_te = tr[c["i_te"][:, :kref]].mean(axis=1)
    return tr - ref_tr, te - ref_te


def multi_k(c, ks, cal=zcal):
    tr_sum, te_sum = 0.0, 0.0
    for k in ks:
        a, b = cal(*log_d2(c, k))
        tr_sum, te_sum = tr_sum + a, te_sum + b
    return tr_sum / len(ks), te_sum / len(ks)


def combo(c, parts, cal=zcal, weights=None):
    weights = weights or [1.0] * len(parts)
    te_sum = 0.0
    tr_sum = 0.0
    for w, part in zip(weights, parts, strict=False):
        a, b = cal(*part(c))
        tr_sum, te_sum = tr_sum + w * a, te_sum + w * b
    return tr_sum, te_sum


V = {}
for k in (1, 3, 5, 10, 20, 50):
    V[f"k{k}"] = lambda c, k=k: log_d2(c, k)
for k in (5, 10, 20, 50):
    V[f"lof{k}"] = lambda c, k=k: lof_like(c, k)
V["lof10r5"] = lambda c: lof_like(c, 10, 5)
V["multik_1_50"] = lambda c: multi_k(c, (1, 2, 5, 10, 20, 50))
V["multik_5_20"] = lambda c: multi_k(c, (5, 10, 20))
V["multik_1_50_ecdf"] = lambda c: multi_k(c, (1, 2, 5, 10, 20, 50), ecdf)
V["k5+lof10"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: lof_like(c, 10)])
V["k5+lof20"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: lof_like(c, 20)])
V["k10+lof10"] = lambda c: combo(c, [lambda c: log_d2(c, 10), lambda c: lof_like(c, 10)])
V["k5+lof5"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: lof_like(c, 5)])
V["k5+lof50"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: lof_like(c, 50)])
V["k5+k20+lof10"] = lambda c: combo(
    c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 20), lambda c: lof_like(c, 10)]
)
V["k5+k20+lof10+lof20"] = lambda c: combo(
    c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 20), lambda c: lof_like(c, 10), lambda c: lof_like(c, 20)]
)
V["k5+lof10_ecdf"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: lof_like(c, 10)], ecdf)

V["sqrt5"] = lambda c: log_agg(c, 5, "sqrt")
V["kth5"] = lambda c: log_agg(c, 5, "kth")
V["geo5"] = lambda c: log_agg(c, 5, "geo")
V["lw5"] = lambda c: log_d2(c, 5, "lw_")
V["lw10"] = lambda c: log_d2(c, 10, "lw_")
V["lw20"] = lambda c: log_d2(c, 20, "lw_")
V["k5+lw5"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 5, "lw_")])
V["k5+lw5_ecdf"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 5, "lw_")], ecdf)
V["k5+k20+lw5+lw20"] = lambda c: combo(
    c,
    [
        lambda c: log_d2(c, 5),
        lambda c: log_d2(c, 20),
        lambda c: log_d2(c, 5, "lw_"),
        lambda c: log_d2(c, 20, "lw_"),
    ],
)

for view in ("ns0.1", "ns1"):
    for k in (5, 20):
        V[f"{view}_{k}"] = lambda c, k=k, view=view: log_d2(c, k, view + "_")
    V[f"k5+{view}_5"] = lambda c, view=view: combo(
        c, [lambda c: log_d2(c, 5), lambda c, view=view: log_d2(c, 5, view + "_")]
    )

V["g"] = lambda c: log_d2(c, 1, "g_")
V["k5+g"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 1, "g_")])
V["k5+g_w.5"] = lambda c: combo(c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 1, "g_")], weights=[1, 0.5])
V["multik+g"] = lambda c: combo(
    c, [lambda c: multi_k(c, (1, 2, 5, 10, 20, 50)), lambda c: log_d2(c, 1, "g_")]
)
V["k5+lw5+g"] = lambda c: combo(
    c, [lambda c: log_d2(c, 5), lambda c: log_d2(c, 5, "lw_"), lambda c: log_d2(c, 1, "g_")]
)

from dtpm_fast import _core
from dtpm_fast.schedule import PosteriorGrid

GRID = PosteriorGrid.for_steps(300)


def t_mean(c, k, view=""):
    d = int(c["d"])
    f = lambda D: _core.posterior(
        np.ascontiguousarray(D[:, :k]), d, GRID.log_sigma2, GRID.inv_sigma2, False, True, False
    )[1]
    return f(c[view + "d_tr"]), f(c[view + "d_te"])


def multi(c, fn, ks, cal=zcal):
    tr_sum, te_sum = 0.0, 0.0
    for k in ks:
        a, b = cal(*fn(c, k))
        tr_sum, te_sum = tr_sum + a, te_sum + b
    return tr_sum / len(ks), te_sum / len(ks)


ident = lambda a, b: (a, b)
V["t5"] = lambda c: t_mean(c, 5)
V["tmulti_raw"] = lambda c: multi(c, t_mean, (1, 2, 5, 10, 20, 50), ident)
V["tmulti_z"] = lambda c: multi(c, t_mean, (1, 2, 5, 10, 20, 50))
V["multik_2_20"] = lambda c: multi_k(c, (2, 5, 10, 20))
V["multik_1_10"] = lambda c: multi_k(c, (1, 2, 5, 10))
V["multik_geo"] = lambda c: multi_k(c, (1, 2, 4, 8, 16, 32))
V["multik_all"] = lambda c: multi_k(c, tuple(range(1, 51)))
V["multik_raw"] = lambda c: multi_k(c, (1, 2, 5, 10, 20, 50), ident)

KS = (1, 2, 5, 10, 20, 50)
V["tmulti_geo"] = lambda c: multi(c, t_mean, (1, 2, 4, 8, 16, 32), ident)
V["tmulti_3_30"] = lambda c: multi(c, t_mean, (3, 5, 10, 20, 30), ident)
V["tmulti_1_20"] = lambda c: multi(c, t_mean, (1, 2, 5, 10, 20), ident)
V["tmulti_all"] = lambda c: multi(c, t_mean, tuple(range(1, 51)), ident)
V["tmulti_5_50"] = lambda c: multi(c, t_mean, (5, 10, 20, 50), ident)
V["tmulti+lw"] = lambda c: combo(
    c,
    [lambda c: multi(c, t_mean, KS, ident), lambda c: multi(c, lambda c, k: t_mean(c, k, "lw_"), KS, ident)],
    ident,
)
V["tmulti+g"] = lambda c: combo(
    c, [lambda c: multi(c, t_mean, KS, ident), lambda c: t_mean(c, 1, "g_")], ident
)
V["tmulti+g.5"] = lambda c: combo(
    c, [lambda c: multi(c, t_mean, KS, ident), lambda c: t_mean(c, 1, "g_")], ident, [1, 0.5]
)
V["tmulti_z+g"] = lambda c: combo(c, [lambda c: multi(c, t_mean, KS), lambda c: t_mean(c, 1, "g_")])

GEO = (1, 2, 4, 8, 16, 32)


def t_view(c, k, view):
    d = int(c[view + "d"])
    f = lambda D: _core.posterior(
        np.ascontiguousarray(D[:, :k]), d, GRID.log_sigma2, GRID.inv_sigma2, False, True, False
    )[1]
    return f(c[view + "d_tr"]), f(c[view + "d_te"])


def bag(c, n_sub, ks=GEO, full=True):
    views = ([""] if full else []) + [f"sub{b}_" for b in range(n_sub)]
    parts = [lambda c, v=v: multi(c, lambda c, k, v=v: t_view(c, k, v), ks, ident) for v in views]
    return combo(c, parts, ident)


V["bag2"] = lambda c: bag(c, 2)
V["bag4"] = lambda c: bag(c, 4)
V["bag4_nofull"] = lambda c: bag(c, 4, full=False)
V["bag4_k5"] = lambda c: bag(c, 4, ks=(5,))
V["sub0_k5"] = lambda c: t_view(c, 5, "sub0_")


def t_kth(c, k):
    d = int(c["d"])
    f = lambda D: _core.posterior(
        np.ascontiguousarray(D[:, k - 1 : k]), d, GRID.log_sigma2, GRID.inv_sigma2, False, True, False
    )[1]
    return f(c["d_tr"]), f(c["d_te"])


V["tmulti_geo_kth"] = lambda c: multi(c, t_kth, GEO, ident)
V["tmulti_1_16"] = lambda c: multi(c, t_mean, (1, 2, 4, 8, 16), ident)
V["tmulti_1_8"] = lambda c: multi(c, t_mean, (1, 2, 4, 8), ident)
V["tmulti_1_5"] = lambda c: multi(c, t_mean, (1, 5), ident)
V["tmulti_1_32_all"] = lambda c: multi(c, t_mean, tuple(range(1, 33)), ident)


def t_local(c, kref, weight):
    """Multi-scale time minus weight x the mean multi-scale time of the kref nearest training rows."""
    tr, te = multi(c, t_mean, GEO, ident)
    return (
        tr - weight * tr[c["i_tr"][:, :kref]].mean(axis=1),
        te - weight * tr[c["i_te"][:, :kref]].mean(axis=1),
    )


V["tlocal5_1"] = lambda c: t_local(c, 5, 1.0)
V["tlocal5_.5"] = lambda c: t_local(c, 5, 0.5)
V["tlocal20_.5"] = lambda c: t_local(c, 20, 0.5)
V["tlocal5_.25"] = lambda c: t_local(c, 5, 0.25)


def halves(cache):
    names = sorted({p.name.split("__")[0] for p in cache.glob("*__0.npz")})
    return {"choose": names[0::2], "confirm": names[1::2], "all": names}


def run(V, argv):
    """Score every wanted variant on one half, print the table against ``k5`` (DTE-NP)."""
    cache, half = Path(argv[0]), argv[1]
    sets = halves(cache)[half]
    VIEWS = [a.split("=", 1)[1] for a in argv[2:] if a.startswith("views=")]
    wanted = [a for a in argv[2:] if not a.startswith("views=") and a != "-v"] or list(V)
    res = {v: {} for v in ["k5"] + [w for w in wanted if w != "k5"]}
    for name in sets:
        aucs = {v: [] for v in res}
        for seed in range(5):
            z = np.load(cache / f"{name}__{seed}.npz")
            c = {key: z[key] for key in z.files}
            c["name"], c["seed"] = name, seed
            for view in VIEWS:
                zv = np.load(Path(f"{cache}_{view}") / f"{name}__{seed}.npz")
                c.update({f"{view}_{key}": zv[key] for key in zv.files})
            for v in res:
                aucs[v].append(100 * roc_auc_score(c["y"], V[v](c)[1]))
        for v, per_set in res.items():
            per_set[name] = np.mean(aucs[v])

    base = np.array([res["k5"][n] for n in sets])
    print(f"{'variant':24s} {'mean':>7s} {'diff':>6s} {'W':>3s} {'L':>3s} {'worst':>7s} {'p':>7s}")
    for v in res:
        a = np.array([res[v][n] for n in sets])
        diff = a - base
        p = wilcoxon(a, base).pvalue if np.any(diff != 0) else 1.0
        print(
            f"{v:24s} {a.mean():7.2f} {diff.mean():+6.2f} {(diff > 0).sum():3d} {(diff < 0).sum():3d} "
            f"{diff.min():+7.2f} {p:7.4f}",
            flush=True,
        )
    if "-v" in argv[2:] or len(res) <= 4:
        for n in sets:
            print(f"{n:20s} " + " ".join(f"{res[v][n]:7.2f}" for v in res))


if __name__ == "__main__":
    run(V, sys.argv[1:])

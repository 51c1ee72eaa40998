"""How often a test row has an exact copy among the training rows (squared distance 0 to its
nearest training row), per data set, averaged over seeds 0-4 (semi protocol), from the caches
of cache_neighbours.py. Data sets under 1000 rows are resampled to 1000 with replacement by the
protocol, so their test rows often repeat training rows.

The last two columns repeat the AUC-ROC difference (ladder 1..32 minus DTE-NP at K = 5, the
default rules, from the same caches) on all test rows and on the test rows left after dropping the
normal ones that have a copy in train: what remains of the gain where copies cannot help.

Usage: python studies/plus_detector/copies.py CACHE_DIR DATA_DIR
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from dtpm_fast import _core
from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.schedule import PosteriorGrid

GRID = PosteriorGrid.for_steps(300)
LADDER = (1, 2, 4, 8, 16, 32)


def t_mean(sq, k, d):
    return _core.posterior(
        np.ascontiguousarray(sq[:, :k]), d, GRID.log_sigma2, GRID.inv_sigma2, False, True, False
    )[1]


cache, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
print(
    "| data set | rows | resampled | test normals with a copy in train | anomalies with a copy in train "
    "| AUC-ROC diff, all test rows | AUC-ROC diff, without normals that have a copy |"
)
print("|---|---:|---|---:|---:|---:|---:|")
for name, path in sorted(proto.find_datasets(data_dir).items()):
    n_rows = proto.load_npz(path)[1].shape[0]
    normal, anomalous, gain_all, gain_rest = [], [], [], []
    for seed in range(5):
        z = np.load(cache / f"{name}__{seed}.npz")
        copy = z["d_te"][:, 0] == 0
        normal.append(copy[z["y"] == 0].mean())
        anomalous.append(copy[z["y"] == 1].mean())
        d = int(z["d"])
        base = t_mean(z["d_te"], 5, d)
        ladder = np.mean([t_mean(z["d_te"], k, d) for k in LADDER], axis=0)
        y = z["y"]
        keep = ~(copy & (y == 0))
        gain_all.append(100 * (roc_auc_score(y, ladder) - roc_auc_score(y, base)))
        if 0 < y[keep].sum() < keep.sum():  # both classes left (every normal may have a copy)
            gain_rest.append(
                100 * (roc_auc_score(y[keep], ladder[keep]) - roc_auc_score(y[keep], base[keep]))
            )
    print(
        f"| {name} | {n_rows} | {'yes' if n_rows < proto.MIN_ROWS else 'no'} | "
        f"{100 * np.mean(normal):.1f}% | {100 * np.mean(anomalous):.1f}% | {np.mean(gain_all):+.2f} | "
        + (f"{np.mean(gain_rest):+.2f} ({len(gain_rest)} seeds) |" if gain_rest else "no normal left |")
    )

"""Cache a global view per data set and seed (semi protocol): the squared Mahalanobis distance of
each row to the training mean under the Ledoit-Wolf covariance (training rows leave-in).

Usage: python studies/plus_detector/cache_global.py DATA_DIR CACHE_DIR
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

from dtpm_fast.evaluation import protocol as proto

data_dir, cache = Path(sys.argv[1]), Path(sys.argv[2])
cache.mkdir(parents=True, exist_ok=True)
for name, path in sorted(proto.find_datasets(data_dir).items()):
    X, y = proto.load_npz(path)
    for seed in range(5):
        s = proto.prepare(X, y, seed, "semi")
        mu = s.X_train.mean(axis=0)
        P = np.linalg.pinv(LedoitWolf().fit(s.X_train).covariance_)
        d_tr, d_te = (np.einsum("ij,jk,ik->i", A - mu, P, A - mu)[:, None] for A in (s.X_train, s.X_test))
        np.savez(cache / f"{name}__{seed}.npz", d_tr=d_tr, d_te=d_te)
    print(name, flush=True)

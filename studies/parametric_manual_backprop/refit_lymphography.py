"""Refit the 21_Lymphography DTE-IG run (seed 2, semi protocol) that ranked anomalies lowest under
the sigma weighting, with the written-out step, with autograd, and with the sigma2 weighting.

Usage: OMP_NUM_THREADS=1 python studies/parametric_manual_backprop/refit_lymphography.py DATA_DIR
"""

import sys

import numpy as np

from dtpm_fast import DTPMInverseGamma
from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.evaluation.metrics import auc_roc
from dtpm_fast.parametric import training

X, y = proto.load_npz(proto.find_datasets(sys.argv[1])["21_Lymphography"])
split = proto.prepare(X, y, 2, "semi")
base = dict(training.RECIPES["fast"])
for name, overrides in [
    ("written-out step, sigma", {"ig_weighting": "sigma"}),
    ("autograd, sigma", {"ig_weighting": "sigma", "backprop": "autograd"}),
    ("written-out step, sigma2", {"ig_weighting": "sigma2"}),
]:
    training.RECIPES["fast"] = dict(base, **overrides)
    model = DTPMInverseGamma(recipe="fast", device="cpu", random_state=2).fit(split.X_train)
    scores = model.decision_function(split.X_test)
    print(
        f"{name}: AUC-ROC {auc_roc(split.y_test, scores):.2f}, epoch loss (1, 51, 101, 151, 200) "
        f"{np.round(model.loss_history_[[0, 50, 100, 150, 199]], 3).tolist()}",
        flush=True,
    )

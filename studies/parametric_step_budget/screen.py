"""Screen training-setting candidates for DTE-C / DTE-IG on chosen data sets and seeds (semi protocol).

Each candidate is a set of overrides of ``RECIPES["fast"]`` (epochs, batch_size, lr, schedule,
precision, pipeline, t_sampling, ig_weighting), of constructor parameters (dropout,
weight_decay), or ``steps_per_epoch=S`` (batch size min(512, max(64, ceil(n_train / S)))); the model is built as the evaluation harness builds it (device="cpu",
random_state=seed) with recipe="fast". Prints one CSV line per (data set, seed, model, candidate):
AUC-ROC (percent) and fit seconds.

Usage: python studies/parametric_step_budget/screen.py DATA_DIR MODELS DATASETS SEEDS CANDIDATE...
  MODELS: comma list of categorical,inverse-gamma; DATASETS: comma list of file stems;
  SEEDS: comma list; CANDIDATE: name:key=value;key=value (e.g. "f32:precision=float32")
"""

import sys
import time

import numpy as np

from dtpm_fast import DTPMCategorical, DTPMInverseGamma
from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.evaluation.metrics import auc_roc
from dtpm_fast.parametric import training

CLASSES = {"categorical": DTPMCategorical, "inverse-gamma": DTPMInverseGamma}
BASE = dict(training.RECIPES["fast"])
#: Candidate keys passed to the constructor instead of the recipe table.
CONSTRUCTOR = ("dropout", "weight_decay", "hidden_sizes")


def parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def main() -> None:
    data_dir, models, datasets, seeds, *candidates = sys.argv[1:]
    paths = proto.find_datasets(data_dir)
    print("dataset,seed,model,candidate,auc_roc,fit_s,n_train", flush=True)
    for name in datasets.split(","):
        X, y = proto.load_npz(paths[name])
        for seed in (int(s) for s in seeds.split(",")):
            split = proto.prepare(X, y, seed, "semi")
            for model in models.split(","):
                for spec in candidates:
                    label, _, body = spec.partition(":")
                    overrides = dict(kv.split("=", 1) for kv in body.split(";") if kv)
                    recipe = "paper" if label == "paper" else "fast"
                    values = {k: parse(v) for k, v in overrides.items()}
                    if "steps_per_epoch" in values:  # batch size from the training rows
                        per_epoch = values.pop("steps_per_epoch")
                        values["batch_size"] = min(512, max(64, -(-len(split.X_train) // per_epoch)))
                    params = {k: values.pop(k) for k in CONSTRUCTOR if k in values}
                    training.RECIPES["fast"] = dict(BASE, **values)
                    detector = CLASSES[model](device="cpu", random_state=seed, recipe=recipe, **params)
                    start = time.perf_counter()
                    detector.fit(split.X_train)
                    fit_s = time.perf_counter() - start
                    auc = auc_roc(split.y_test, detector.decision_function(split.X_test))
                    print(
                        f"{name},{seed},{model},{label},{auc:.4f},{fit_s:.2f},{len(split.X_train)}",
                        flush=True,
                    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

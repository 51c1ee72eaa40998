"""Screen training-setting candidates of DTE-C / DTE-IG on the harness's own inputs (semi protocol).

Unlike studies/parametric_step_budget/screen.py, every fit here goes through the evaluation
harness (``runner.evaluate_one``: float32 rows, ``standardize=False``, the registered model
factory), so a candidate equal to the default reproduces the harness's AUC-ROC exactly.

A candidate is ``name:key=value;key=value``. Keys of ``RECIPES[recipe]`` (schedule, precision,
ig_weighting, min_steps_per_epoch, ...) override that recipe's table; every other key
(epochs, batch_size, lr, dropout, weight_decay, recipe) is passed to the constructor, except
``lr_per_64=X``: the peak learning rate X * B / 64 for the batch B the recipe's rule gives these
training rows (the linear scaling rule from the authors' lr at batches of 64).

Prints one CSV line per (data set, seed, model, candidate): AUC-ROC (percent), fit seconds,
training rows.

Usage: python studies/parametric_floors/screen.py DATA_DIR MODELS DATASETS SEEDS CANDIDATE...
  MODELS: comma list of categorical,inverse-gamma; DATASETS: file stems; SEEDS: comma list
"""

import copy
import sys

import numpy as np

from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.evaluation.models import ModelOptions
from dtpm_fast.evaluation.runner import evaluate_one
from dtpm_fast.parametric import training

BASE = copy.deepcopy(training.RECIPES)


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
                    values = {k: parse(v) for k, v in (kv.split("=", 1) for kv in body.split(";") if kv)}
                    recipe = values.setdefault("recipe", "fast")
                    table = {k: values.pop(k) for k in list(values) if k in BASE[recipe]}
                    training.RECIPES.clear()
                    training.RECIPES.update(copy.deepcopy(BASE))
                    training.RECIPES[recipe].update(table)
                    if "lr_per_64" in values:
                        settings = training.RECIPES[recipe]
                        batch = training.batch_size_for(
                            len(split.X_train), settings["batch_size"], settings["min_steps_per_epoch"]
                        )
                        values["lr"] = values.pop("lr_per_64") * batch / 64
                    options = ModelOptions(seed=seed, device="cpu", extra=values)
                    result = evaluate_one(model, split, options)
                    print(
                        f"{name},{seed},{model},{label},{result['auc_roc']:.4f},"
                        f"{result['fit_s']:.2f},{result['n_train']}",
                        flush=True,
                    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

"""AUC-ROC and speed of DTE-C / DTE-IG scoring with ``inference_precision="bfloat16"`` against float32.

``auc DATA_DIR DATASETS SEEDS``: for each (data set, seed, model) fit the default detector
through the harness's factory (semi protocol, float32 rows, ``standardize=False``), score the
test rows with the float32 network and with its hidden layers in bfloat16 (the scorer the
option uses, ``with_bfloat16_hidden``, on the same fitted weights) and print one CSV line:
AUC-ROC of each, their difference, and the largest score difference relative to the score range.

``speed``: rows per second of ``decision_function`` on 65,536 rows at d = 21 (default network,
one epoch of training: the weights do not change the cost), float32 and bfloat16 models
alternating, 5 rounds; prints each round and the median ratio.
"""

import sys
import time

import numpy as np

from dtpm_fast._torch_utils import batched_inference
from dtpm_fast.evaluation import protocol as proto
from dtpm_fast.evaluation.metrics import auc_roc
from dtpm_fast.evaluation.models import ModelOptions, get_model


def auc(data_dir: str, datasets: str, seeds: str) -> None:
    paths = proto.find_datasets(data_dir)
    print("dataset,seed,model,auc_float32,auc_bfloat16,diff,max_score_diff_over_range", flush=True)
    for name in datasets.split(","):
        X, y = proto.load_npz(paths[name])
        for seed in (int(s) for s in seeds.split(",")):
            split = proto.prepare(X, y, seed, "semi")
            X_train = np.ascontiguousarray(split.X_train, dtype=np.float32)
            X_test = np.ascontiguousarray(split.X_test, dtype=np.float32)
            for model in ("categorical", "inverse-gamma"):
                det = get_model(model).factory(ModelOptions(seed=seed, device="cpu")).fit(X_train)
                exact = det.decision_function(X_test)
                reduced = batched_inference(det._module.with_bfloat16_hidden(), X_test).astype(np.float64)
                a32, a16 = auc_roc(split.y_test, exact), auc_roc(split.y_test, reduced)
                spread = np.max(np.abs(reduced - exact)) / np.ptp(exact)
                print(f"{name},{seed},{model},{a32:.4f},{a16:.4f},{a16 - a32:+.4f},{spread:.4g}", flush=True)


def speed() -> None:
    from dtpm_fast import DTPMCategorical, DTPMInverseGamma

    rng = np.random.default_rng(0)
    X_train = rng.standard_normal((512, 21)).astype(np.float32)
    X = rng.standard_normal((65536, 21)).astype(np.float32)
    for cls in (DTPMCategorical, DTPMInverseGamma):
        models = {
            p: cls(epochs=1, random_state=0, inference_precision=p).fit(X_train)
            for p in ("float32", "bfloat16")
        }
        ratios = []
        for round_ in range(5):
            rate = {}
            for precision, model in models.items():
                start = time.perf_counter()
                model.decision_function(X)
                rate[precision] = len(X) / (time.perf_counter() - start)
            ratios.append(rate["bfloat16"] / rate["float32"])
            print(
                f"{cls.__name__} round {round_}: float32 {rate['float32']:,.0f} rows/s, "
                f"bfloat16 {rate['bfloat16']:,.0f} rows/s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
        print(f"{cls.__name__}: median ratio {np.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "auc":
        auc(*sys.argv[2:])
    else:
        speed()

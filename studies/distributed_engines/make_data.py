"""Make the study's Parquet folder and model, and score every row in-process (the reference).

    python studies/distributed_engines/make_data.py [--rows 4000000] [--files 8] [--train 20000]

Writes under $DTPM_STUDY_DIR (default /tmp/dtpm_distributed_study): rows/part-*.parquet
(columns id int64, f0..f15 float32; 1% of the rows shifted by +3 in 4 random features),
model.dtpm (DTPMNonParametric fitted on a separate sample of normal rows) and
reference_scores.npy (model.decision_function of every row, indexed by id).
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import dtpm_fast
from common import (
    COLUMNS,
    DATA_ROOT,
    MODEL_PATH,
    N_FEATURES,
    REFERENCE_PATH,
    ROWS_DIR,
    TreeMemorySampler,
    environment,
    write_result,
)


def make_rows(rng: np.random.Generator, n: int, anomaly_rate: float) -> np.ndarray:
    mixing = np.linalg.qr(np.random.default_rng(1).standard_normal((N_FEATURES, N_FEATURES)))[0]
    X = (rng.standard_normal((n, N_FEATURES)) * np.linspace(0.5, 2.0, N_FEATURES)) @ mixing
    anomalous = np.flatnonzero(rng.random(n) < anomaly_rate)
    for row in anomalous:
        X[row, rng.choice(N_FEATURES, 4, replace=False)] += 3.0
    return X.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--train", type=int, default=20_000)
    args = parser.parse_args()

    if ROWS_DIR.exists():
        shutil.rmtree(ROWS_DIR)
    ROWS_DIR.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_file = -(-args.rows // args.files)
    for part, start in enumerate(range(0, args.rows, per_file)):
        stop = min(start + per_file, args.rows)
        X = make_rows(rng, stop - start, anomaly_rate=0.01)
        columns = {"id": pa.array(np.arange(start, stop, dtype=np.int64))}
        columns.update({name: pa.array(X[:, j]) for j, name in enumerate(COLUMNS)})
        pq.write_table(pa.table(columns), ROWS_DIR / f"part-{part:03d}.parquet", row_group_size=65536)

    X_train = make_rows(np.random.default_rng(12345), args.train, anomaly_rate=0.0)
    start = time.perf_counter()
    detector = dtpm_fast.DTPMNonParametric(contamination=0.01).fit(X_train)
    fit_s = time.perf_counter() - start
    detector.save(MODEL_PATH)

    # The reference: every row scored in this process, batch by batch, reading the same files.
    reference = np.full(args.rows, np.nan)
    start = time.perf_counter()
    with TreeMemorySampler() as memory:
        model = dtpm_fast.load(MODEL_PATH)
        for path in sorted(ROWS_DIR.glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
                X = np.column_stack([batch.column(c).to_numpy() for c in COLUMNS])
                reference[batch.column("id").to_numpy()] = model.decision_function(X)
    score_s = time.perf_counter() - start
    assert not np.isnan(reference).any()
    np.save(REFERENCE_PATH, reference)
    write_result(
        "in_process",
        {
            **environment(),
            "command": "python studies/distributed_engines/make_data.py "
            + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
            "rows": args.rows,
            "files": args.files,
            "features": N_FEATURES,
            "train_rows": args.train,
            "index": detector.index_kind_,
            "fit_s": round(fit_s, 3),
            "model_bytes": MODEL_PATH.stat().st_size,
            "data_bytes": sum(p.stat().st_size for p in ROWS_DIR.glob("*.parquet")),
            "score_s": round(score_s, 2),
            "rows_per_s": round(args.rows / score_s),
            "peak_pss_mib": round(memory.peak_pss / 2**20),
            "peak_rss_mib": round(memory.peak_rss / 2**20),
            "threads": dtpm_fast.build_info()["threads"],
            "data_dir": str(DATA_ROOT),
        },
    )


if __name__ == "__main__":
    main()

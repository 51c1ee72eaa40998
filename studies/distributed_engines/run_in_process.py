"""Score every row of the study's Parquet folder in this process (the baseline for the engines).

    python studies/distributed_engines/run_in_process.py [--threads 2]

The same loop as make_data.py's reference (pyarrow, one decision_function call per 65536-row
record batch of each file), timed again so that it runs under the same machine load as the
engine runs; the scores must equal the reference bit for bit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq

import dtpm_fast
from common import COLUMNS, MODEL_PATH, REFERENCE_PATH, ROWS_DIR, TreeMemorySampler, environment, write_result
from dtpm_fast import _core


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    _core.set_max_threads(args.threads)
    reference = np.load(REFERENCE_PATH)
    scores = np.full(reference.size, np.nan)
    start = time.perf_counter()
    with TreeMemorySampler() as memory:
        model = dtpm_fast.load(MODEL_PATH)
        for path in sorted(ROWS_DIR.glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
                X = np.column_stack([batch.column(c).to_numpy() for c in COLUMNS])
                scores[batch.column("id").to_numpy()] = model.decision_function(X)
    score_s = time.perf_counter() - start
    write_result(
        f"in_process_threads{args.threads}",
        {
            **environment(),
            "command": f"python studies/distributed_engines/run_in_process.py --threads {args.threads}",
            "threads": args.threads,
            "read_and_score_s": round(score_s, 2),
            "rows_per_s": round(reference.size / score_s),
            "peak_pss_mib": round(memory.peak_pss / 2**20),
            "peak_rss_mib": round(memory.peak_rss / 2**20),
            "reference_bit_identical": bool(np.array_equal(scores, reference)),
        },
    )


if __name__ == "__main__":
    main()

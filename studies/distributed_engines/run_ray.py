"""Score every row of the study's Parquet folder with Ray Data (the README recipe), check the scores.

    python studies/distributed_engines/run_ray.py [--actors 2] [--batch-size 65536]

A local Ray cluster with num_cpus=2. The model file is loaded once per actor; the output
(every input column plus ``score``) is written as Parquet, read back and compared, matched by
``id``, with the in-process scores of make_data.py.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import pyarrow.dataset as pds

from common import (
    COLUMNS,
    DATA_ROOT,
    MODEL_PATH,
    ROWS_DIR,
    TreeMemorySampler,
    compare,
    environment,
    write_result,
)


class Scorer:
    """The README's Ray Data scorer: one model per actor, batches are dicts of NumPy arrays."""

    def __init__(self, path, columns):
        import dtpm_fast

        self.model = dtpm_fast.load(path)  # once per actor
        self.columns = list(columns)

    def __call__(self, batch):
        X = np.column_stack([batch[c] for c in self.columns]).astype(np.float32, copy=False)
        batch["score"] = self.model.decision_function(X)
        # For the check only (not in the README): which call scored the row, and where in it.
        batch["batch_key"] = np.full(X.shape[0], batch["id"][0] if X.shape[0] else -1, dtype=np.int64)
        batch["batch_pos"] = np.arange(X.shape[0], dtype=np.int64)
        return batch


def _actor_threads() -> int:
    """CPU threads dtpm_fast uses in a Ray worker with the actors' CPU reservation."""
    import dtpm_fast

    return dtpm_fast.build_info()["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray cluster")
    parser.add_argument(
        "--actor-cpus",
        type=float,
        default=0.5,
        help="CPUs reserved per actor; actors x actor-cpus must stay below --num-cpus, or the read "
        "and write tasks never get a CPU and the pipeline waits forever",
    )
    args = parser.parse_args()

    import ray

    global _actor_threads
    _actor_threads = ray.remote(_actor_threads)
    out_dir = DATA_ROOT / "ray_scores"
    shutil.rmtree(out_dir, ignore_errors=True)
    with TreeMemorySampler() as memory:
        start = time.perf_counter()
        ray.init(
            num_cpus=args.num_cpus,
            object_store_memory=2 * 2**30,
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            startup_s = time.perf_counter() - start
            start = time.perf_counter()
            ds = ray.data.read_parquet(str(ROWS_DIR))
            ds.map_batches(
                Scorer,
                fn_constructor_args=(str(MODEL_PATH), COLUMNS),
                compute=ray.data.ActorPoolStrategy(size=args.actors),
                num_cpus=args.actor_cpus,
                batch_size=args.batch_size,
            ).write_parquet(str(out_dir))
            score_s = time.perf_counter() - start
            threads = ray.get(_actor_threads.options(num_cpus=args.actor_cpus).remote())
        finally:
            ray.shutdown()

    table = pds.dataset(out_dir, format="parquet").to_table(columns=["id", "score", "batch_key", "batch_pos"])
    check = compare(*(table.column(c).to_numpy() for c in ("id", "score", "batch_key", "batch_pos")))
    write_result(
        f"ray_actors{args.actors}_cpus{args.actor_cpus:g}",
        {
            **environment(),
            "command": f"python studies/distributed_engines/run_ray.py --actors {args.actors} "
            f"--batch-size {args.batch_size} --num-cpus {args.num_cpus} --actor-cpus {args.actor_cpus}",
            "ray": ray.__version__,
            "dtpm_threads_per_worker": threads,
            "startup_s": round(startup_s, 2),
            "score_and_write_s": round(score_s, 2),
            "rows_per_s": round(check["rows"] / score_s),
            "peak_pss_mib": round(memory.peak_pss / 2**20),
            "peak_rss_mib": round(memory.peak_rss / 2**20),
            "peak_processes": memory.peak_processes,
            **check,
        },
    )


if __name__ == "__main__":
    main()

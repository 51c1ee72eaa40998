"""Shared pieces of the distributed-engine study: paths, the model loader cache, memory sampling."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

DATA_ROOT = Path(os.environ.get("DTPM_STUDY_DIR", "/tmp/dtpm_distributed_study"))
ROWS_DIR = DATA_ROOT / "rows"  # the Parquet folder to score
MODEL_PATH = DATA_ROOT / "model.dtpm"
REFERENCE_PATH = DATA_ROOT / "reference_scores.npy"  # in-process scores, indexed by id
N_FEATURES = 16
COLUMNS = [f"f{j}" for j in range(N_FEATURES)]


class TreeMemorySampler:
    """Samples the memory of this process and all its descendants every ``interval`` seconds.

    Reports the peak of the summed PSS (proportional set size: a shared page is split between
    the processes that map it, so shared memory such as Ray's object store is counted once) and
    the peak of the summed RSS (counts shared pages once per process, an upper bound).
    """

    def __init__(self, interval: float = 0.25):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        psutil = self._psutil
        root = psutil.Process(os.getpid())
        pss = rss = 0
        procs = [root, *root.children(recursive=True)]
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(procs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def load_rows() -> np.ndarray:
    """Every row of the Parquet folder as a float32 (n, d) array, row i holding id i."""
    import pyarrow.dataset as pds

    table = pds.dataset(ROWS_DIR, format="parquet").to_table(columns=["id", *COLUMNS])
    X = np.empty((table.num_rows, len(COLUMNS)), dtype=np.float32)
    ids = table.column("id").to_numpy()
    for j, name in enumerate(COLUMNS):
        X[ids, j] = table.column(name).to_numpy()
    return X


def compare(ids, scores, batch_keys=None, batch_pos=None) -> dict:
    """Engine scores, matched by id, against in-process scoring.

    ``reference_*``: against make_data.py's scores (every file scored in 65536-row calls).
    ``same_batches_*`` (when the engine recorded, per row, a key of the batch it was scored in
    and its position there): against ``decision_function`` called in this process on exactly
    the rows of each engine batch, in the same order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    reference = np.load(REFERENCE_PATH)
    expected = reference[ids]
    result = {
        "rows": int(ids.size),
        "all_rows_scored_once": bool(np.array_equal(np.sort(ids), np.arange(reference.size))),
        "reference_rows_differing": int(np.count_nonzero(scores != expected)),
        "reference_max_abs_diff": float(np.abs(scores - expected).max()) if ids.size else 0.0,
    }
    if batch_keys is not None:
        import dtpm_fast

        model = dtpm_fast.load(MODEL_PATH)
        X = load_rows()
        order = np.lexsort((np.asarray(batch_pos), np.asarray(batch_keys)))
        keys = np.asarray(batch_keys)[order]
        bounds = np.flatnonzero(np.diff(keys)) + 1
        rescored = np.empty_like(scores)
        sizes = []
        for rows in np.split(order, bounds):
            rescored[rows] = model.decision_function(X[ids[rows]])
            sizes.append(rows.size)
        result.update(
            {
                "engine_batches": len(sizes),
                "engine_batch_rows_min_max": [int(min(sizes)), int(max(sizes))],
                "same_batches_bit_identical": bool(np.array_equal(scores, rescored)),
                "same_batches_rows_differing": int(np.count_nonzero(scores != rescored)),
            }
        )
    return result


def environment() -> dict:
    import dtpm_fast

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, no GPU",
        "loadavg_1_5_15": load,
        "python": platform.python_version(),
        "dtpm_fast": dtpm_fast.__version__,
        "simd": dtpm_fast.build_info()["simd"],
    }


def java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    except OSError:
        return "none"
    return out.stderr.splitlines()[0] if out.stderr else "unknown"


def write_result(name: str, result: dict) -> None:
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")  # the latest run
    with open(out / "all_runs.jsonl", "a") as fh:  # every run, one line each
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))

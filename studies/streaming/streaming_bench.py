"""Throughput and peak memory of `dtpm-fast score` against in-memory `decision_function`.

Usage (data goes to --workdir, never into the repository)::

    nice -n 10 python studies/streaming/streaming_bench.py all --rows 10000000 --train 2000 \
        --workdir /tmp/dtpm_stream

Steps: write an N-row, 32-column float32 Parquet file (and its first 1M rows as a second
file), fit the exact ("flat") and approximate ("hnsw") non-parametric models on
``--train`` rows from the same distribution, then for each model

* in memory: read the whole file into one float32 array, time ``decision_function`` on it;
* streaming: run ``dtpm-fast score MODEL DATA -o OUT.parquet`` as a child process.

Peak memory is each child's max RSS (``os.wait4``). Concurrency: one fitted model scored
from 1, 2 and 4 Python threads (OpenMP/FAISS at one thread each, so any scaling comes from
the native code releasing the GIL). Results: JSON in the workdir and a Markdown table on
stdout (recorded in studies/streaming/streaming.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

N_FEATURES = 32
ONE_MILLION = 1_000_000


def _run_child(argv: list[str]) -> dict:
    """Run a command; return its wall time, max RSS (MiB), exit status and output."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own resource usage (RUSAGE_CHILDREN would mix all children).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv} failed ({process.returncode}):\n{err}")
    return {"wall_s": wall, "max_rss_mib": usage.ru_maxrss / 1024, "stdout": out, "stderr": err}


def make_data(workdir: str, rows: int, train_rows: int, seed: int = 0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {
        "big": os.path.join(workdir, f"data_{rows}.parquet"),
        "one_million": os.path.join(workdir, f"data_{ONE_MILLION}.parquet"),
        "train": os.path.join(workdir, f"train_{train_rows}.npy"),
    }
    names = [f"f{j}" for j in range(N_FEATURES)]
    schema = pa.schema([(name, pa.float32()) for name in names])
    if not os.path.exists(paths["big"]):
        rng = np.random.default_rng(seed)
        chunk = 1_000_000
        with (
            pq.ParquetWriter(paths["big"] + ".tmp", schema) as big,
            pq.ParquetWriter(paths["one_million"] + ".tmp", schema) as small,
        ):
            for start in range(0, rows, chunk):
                block = rng.standard_normal((min(chunk, rows - start), N_FEATURES), dtype=np.float32)
                block[::100] += 3.0  # 1% shifted rows, so scores are not all alike
                table = pa.table({name: block[:, j] for j, name in enumerate(names)}, schema=schema)
                big.write_table(table)
                if start < ONE_MILLION:
                    small.write_table(table.slice(0, ONE_MILLION - start))
        os.replace(paths["big"] + ".tmp", paths["big"])
        os.replace(paths["one_million"] + ".tmp", paths["one_million"])
    if not os.path.exists(paths["train"]):
        rng = np.random.default_rng(seed + 1)
        np.save(paths["train"], rng.standard_normal((train_rows, N_FEATURES), dtype=np.float32))
    return paths


def fit_models(workdir: str, train_path: str, indexes: list[str]) -> dict:
    import dtpm_fast

    X = np.load(train_path)
    paths = {}
    for index in indexes:
        path = os.path.join(workdir, f"model_{index}_{len(X)}.dtpm")
        if not os.path.exists(path):
            model = dtpm_fast.DTPMNonParametric(index=index).fit(X)
            model.feature_names_in_ = np.asarray([f"f{j}" for j in range(N_FEATURES)], dtype=object)
            model.save(path)
        paths[index] = path
    return paths


def in_memory(model_path: str, data_path: str) -> None:
    """Child process: whole file -> one array -> decision_function; prints rows and seconds."""
    import pyarrow.parquet as pq

    import dtpm_fast

    model = dtpm_fast.load(model_path)
    table = pq.read_table(data_path)
    X = np.empty((table.num_rows, table.num_columns), dtype=np.float32)
    for j in range(table.num_columns):
        X[:, j] = table.column(j).to_numpy()
    del table
    started = time.perf_counter()
    scores = model.decision_function(X)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(scores), "score_s": seconds, "checksum": float(scores.sum())}))


def threads(model_path: str, rows: int) -> None:
    """Child process: one model scored from 1, 2 and 4 Python threads; prints rows/s per count."""
    from concurrent.futures import ThreadPoolExecutor

    import dtpm_fast
    from dtpm_fast.cli.score import set_threads

    model = dtpm_fast.load(model_path)
    X = np.random.default_rng(5).standard_normal((rows, N_FEATURES), dtype=np.float32)
    chunks = np.array_split(X, 16)
    model.decision_function(chunks[0])  # warm-up
    started = time.perf_counter()
    reference = np.concatenate([model.decision_function(c) for c in chunks])
    results = {"openmp": {"rows_per_s": rows / (time.perf_counter() - started), "identical": True}}
    for n_threads in (1, 2, 4):
        started = time.perf_counter()
        # OpenMP thread counts are per calling thread: each Python thread asks for one.
        with ThreadPoolExecutor(max_workers=n_threads, initializer=set_threads, initargs=(1,)) as pool:
            scores = np.concatenate(list(pool.map(model.decision_function, chunks)))
        seconds = time.perf_counter() - started
        results[n_threads] = {
            "rows_per_s": rows / seconds,
            "identical": bool(np.array_equal(scores, reference)),
        }
    print(json.dumps(results))


def run_all(args) -> None:
    os.makedirs(args.workdir, exist_ok=True)
    data = make_data(args.workdir, args.rows, args.train)
    models = fit_models(args.workdir, data["train"], args.indexes)
    out = os.path.join(args.workdir, "scores.parquet")
    results_path = os.path.join(args.workdir, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as handle:
            results = json.load(handle)
    me = [sys.executable, os.path.abspath(__file__)]

    def record(key, value):
        results[key] = value
        with open(results_path, "w") as handle:
            json.dump(results, handle, indent=1)
        print(key, json.dumps(value), flush=True)

    for index in args.indexes:
        for label, data_path, rows in (
            ("10M", data["big"], args.rows),
            ("1M", data["one_million"], ONE_MILLION),
        ):
            if label == "1M" and index != args.indexes[0]:
                continue
            key = f"{index}/{label}"
            if f"{key}/cli" not in results:
                child = _run_child(
                    [
                        "dtpm-fast",
                        "score",
                        models[index],
                        data_path,
                        "-o",
                        out,
                        "--overwrite",
                        "--batch-rows",
                        str(args.batch_rows),
                    ]
                )
                loop = re.search(r"scored ([\d,]+) rows in ([\d.]+) s", child["stderr"])
                record(
                    f"{key}/cli",
                    {
                        "rows": rows,
                        "wall_s": child["wall_s"],
                        "loop_s": float(loop.group(2)),
                        "max_rss_mib": child["max_rss_mib"],
                    },
                )
            if f"{key}/memory" not in results and (label == "10M" or not args.skip_1m_memory):
                child = _run_child([*me, "inmemory", models[index], data_path])
                measured = json.loads(child["stdout"])
                record(
                    f"{key}/memory",
                    {"rows": rows, "score_s": measured["score_s"], "max_rss_mib": child["max_rss_mib"]},
                )
    # Paired runs: the machine is shared and its load drifts over a 10-minute run, so the
    # CLI/in-memory ratio is also measured in alternating short runs on the 1M-row file.
    for index in args.indexes:
        for round_number in range(args.paired_rounds):
            key = f"{index}/1M/paired{round_number}"
            if key in results:
                continue
            cli = _run_child(
                ["dtpm-fast", "score", models[index], data["one_million"], "-o", out, "--overwrite"]
            )
            loop = re.search(r"scored ([\d,]+) rows in ([\d.]+) s", cli["stderr"])
            memory = json.loads(_run_child([*me, "inmemory", models[index], data["one_million"]])["stdout"])
            record(
                key,
                {
                    "cli_loop_s": float(loop.group(2)),
                    "memory_score_s": memory["score_s"],
                    "ratio": memory["score_s"] / float(loop.group(2)),
                },
            )
    if "threads" not in results:
        for index in args.indexes:
            child = _run_child([*me, "threads", models[index], str(args.thread_rows)])
            results.setdefault("threads", {})[index] = json.loads(child["stdout"])
        record("threads", results["threads"])
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        (
            "| run | rows | in-memory rows/s | `dtpm-fast score` rows/s (loop / incl. start-up) | "
            "ratio (loop / in-memory) | peak RSS CLI | peak RSS in-memory |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(k.rsplit("/", 1)[0] for k in results if k.endswith("/cli")):
        cli, memory = results[f"{key}/cli"], results.get(f"{key}/memory")
        loop_rate = cli["rows"] / cli["loop_s"]
        wall_rate = cli["rows"] / cli["wall_s"]
        mem_rate = memory["rows"] / memory["score_s"] if memory else float("nan")
        lines.append(
            f"| {key} | {cli['rows']:,} | {mem_rate:,.0f} | {loop_rate:,.0f} / {wall_rate:,.0f} | "
            f"{loop_rate / mem_rate:.2f} | {cli['max_rss_mib']:,.0f} MiB | "
            f"{memory['max_rss_mib'] if memory else float('nan'):,.0f} MiB |"
        )
    paired = sorted(k for k in results if "/paired" in k)
    if paired:
        lines += [
            "",
            "| paired run (1M rows, alternating) | in-memory rows/s | CLI loop rows/s | ratio |",
            "|---|---:|---:|---:|",
        ]
        for key in paired:
            entry = results[key]
            lines.append(
                f"| {key} | {ONE_MILLION / entry['memory_score_s']:,.0f} | "
                f"{ONE_MILLION / entry['cli_loop_s']:,.0f} | {entry['ratio']:.2f} |"
            )
    if "threads" in results:
        lines += [
            "",
            (
                "| index | Python threads (OpenMP 1 each; 'openmp' = 1 thread, OpenMP all cores) | rows/s | "
                "identical to sequential |"
            ),
            "|---|---:|---:|---|",
        ]
        for index, by_count in results["threads"].items():
            for n, entry in by_count.items():
                lines.append(f"| {index} | {n} | {entry['rows_per_s']:,.0f} | {entry['identical']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    everything = sub.add_parser("all")
    everything.add_argument("--rows", type=int, default=10_000_000)
    everything.add_argument("--train", type=int, default=2000)
    everything.add_argument("--workdir", default="/tmp/dtpm_stream")
    everything.add_argument("--indexes", nargs="+", default=["flat", "hnsw"])
    everything.add_argument("--batch-rows", type=int, default=65536)
    everything.add_argument("--thread-rows", type=int, default=200_000)
    everything.add_argument("--skip-1m-memory", action="store_true")
    everything.add_argument("--paired-rounds", type=int, default=2)
    memory = sub.add_parser("inmemory")
    memory.add_argument("model")
    memory.add_argument("data")
    thread = sub.add_parser("threads")
    thread.add_argument("model")
    thread.add_argument("rows", type=int)
    args = parser.parse_args()
    if args.step == "all":
        run_all(args)
    elif args.step == "inmemory":
        in_memory(args.model, args.data)
    else:
        threads(args.model, args.rows)


if __name__ == "__main__":
    main()

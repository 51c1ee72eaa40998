"""Fuzz the table readers (CSV, gzip CSV, Parquet) with mutated files, in child processes
that can crash without taking this one down.

Each case is a valid seed file with a few random byte edits (flips, deletions, insertions
of CSV-significant or invalid-UTF-8 bytes and numeric extremes, truncation, duplicated
spans), derived deterministically from (seed, format, case number). A child process reads
a batch of cases, each in both bad-row modes through ``tables.prefetch`` (as
``dtpm-fast score`` does), and prints one outcome per case and mode:

(For ``csv.gz``, even cases mutate the text and compress it, odd cases mutate the
compressed bytes.)

* ``batches``     -- the read ended with batches of finite float32 rows, rows increasing;
* ``value_error`` -- a ValueError (BadRowError included) whose message names the file or a row;
* ``bad_error``   -- any other exception, or a ValueError that names neither (a bug);
* ``bad_batch``   -- batches with non-finite values or unordered row numbers (a bug).

A child that dies of a signal (an abort) or runs past the timeout (a hang) has its batch
rerun case by case, each case in its own process, so the case is named: ``crash`` / ``hang``.

Usage: python studies/fuzz_tables/fuzz.py --cases 2000 --seed 0 [--formats csv,csv.gz,parquet]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 5  # cases per child process: small, since an abort may come at interpreter exit
TIMEOUT_S = 120
TOKENS = [
    b",",
    b"\n",
    b"\r\n",
    b"\r",
    b'"',
    b"\xff",
    b"\xc3(",
    b"\xe2\x82",
    b"1e39",
    b"-1e400",
    b"nan",
    b"inf",
    b"",
    b" ",
    b"\x00",
    b"\t",
    b"\xef\xbb\xbf",
    b"0x1",
    b"1,2,3,4,5,6,7",
    b"\n\n\n",
]


def seed_file(fmt: str) -> bytes:
    rng = np.random.default_rng(12345)
    n = 300
    X = rng.normal(size=(n, 4)) * 10.0 ** rng.integers(-5, 6, size=(n, 4))
    if fmt in ("csv", "csv.gz"):
        lines = ["id,a,b,c,d"]
        for i, row in enumerate(X):
            cells = [repr(float(v)) for v in row]
            if i % 37 == 5:
                cells[1] = '"' + cells[1] + '"'
            if i % 53 == 9:
                lines.append("")
            lines.append(f"r{i:04d}," + ",".join(cells))
        text = ("\n".join(lines) + "\n").encode()
        return gzip.compress(text, mtime=0) if fmt == "csv.gz" else text
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = X[:, 1].copy()
    b[::17] = np.nan
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "a": X[:, 0],
            "b": pa.array(b, from_pandas=True),
            "c": (X[:, 2] * 100).astype(np.int64),
            "d": X[:, 3].astype(np.float32),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=70)
    return sink.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 7))):
        kind = rng.integers(0, 6)
        at = int(rng.integers(0, max(len(out), 1)))
        if kind == 0 and out:  # flip a byte
            out[at] = int(rng.integers(0, 256))
        elif kind == 1:  # insert a token
            out[at:at] = TOKENS[int(rng.integers(0, len(TOKENS)))]
        elif kind == 2 and out:  # delete a span
            del out[at : at + int(rng.integers(1, 16))]
        elif kind == 3:  # truncate
            del out[at:]
        elif kind == 4 and out:  # duplicate a span
            span = bytes(out[at : at + int(rng.integers(1, 200))])
            out[at:at] = span
        else:  # overwrite with random bytes
            out[at : at + 8] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
    return bytes(out)


def case_bytes(seed: int, fmt: str, case: int, seeds: dict) -> bytes:
    rng = np.random.default_rng([seed, ["csv", "csv.gz", "parquet"].index(fmt), case])
    if fmt == "csv.gz" and case % 2 == 0:  # even cases: mutated text, compressed (reaches the parser)
        return gzip.compress(mutate(gzip.decompress(seeds[fmt]), rng), mtime=0)
    return mutate(seeds[fmt], rng)  # odd cases: mutated compressed bytes


def run_cases(seed: int, specs: list[tuple[str, int]]) -> None:
    """Child: read each case in both modes; print one JSON line per case and mode."""
    from dtpm_fast.io import tables

    seeds = {fmt: seed_file(fmt) for fmt in {f for f, _ in specs}}
    with tempfile.TemporaryDirectory() as folder:
        for fmt, case in specs:
            path = os.path.join(folder, f"case{case}.{fmt}")
            with open(path, "wb") as fh:
                fh.write(case_bytes(seed, fmt, case, seeds))
            for mode in ("error", "skip"):
                outcome, detail = "batches", ""
                try:
                    reader = tables.open_reader(path, on_bad_row=mode, batch_rows=64)
                    rows, finite = [], True
                    for batch in tables.prefetch(reader):
                        rows.append(batch.rows)
                        finite &= (
                            bool(np.isfinite(batch.features).all()) and batch.features.dtype == np.float32
                        )
                    rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
                    if not finite or (np.diff(rows) <= 0).any() or (rows < 0).any():
                        outcome = "bad_batch"
                except ValueError as exc:
                    text = str(exc)
                    named = os.path.basename(path) in text or text.startswith("row ")
                    outcome, detail = ("value_error" if named else "bad_error"), text[:200]
                except Exception as exc:  # noqa: BLE001 - the point of the study
                    outcome, detail = "bad_error", f"{type(exc).__name__}: {str(exc)[:200]}"
                print(
                    json.dumps(
                        {"fmt": fmt, "case": case, "mode": mode, "outcome": outcome, "detail": detail}
                    ),
                    flush=True,
                )


def child(seed: int, specs: list[tuple[str, int]]) -> tuple[int | None, list[dict]]:
    """Run specs in a child; (returncode or None on timeout, parsed outcome lines)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps([seed, specs])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=2000, help="cases per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="csv,csv.gz,parquet")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--batch", type=int, default=BATCH, help="cases per child process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        seed, specs = json.loads(args.child)
        run_cases(seed, [tuple(s) for s in specs])
        return

    started = time.time()
    results: list[dict] = []
    specs = [(fmt, case) for fmt in args.formats.split(",") for case in range(args.cases)]
    for start in range(0, len(specs), args.batch):
        batch = specs[start : start + args.batch]
        code, lines = child(args.seed, batch)
        if code == 0:
            results += lines
            continue
        # A crash or hang: rerun every case alone to name it (both modes per process).
        for spec in batch:
            code, lines = child(args.seed, [spec])
            if code == 0:
                results += lines
            else:
                kind = "hang" if code is None else f"crash (signal {-code})" if code < 0 else f"exit {code}"
                results.append(
                    {
                        "fmt": spec[0],
                        "case": spec[1],
                        "mode": "both",
                        "outcome": kind.split(" ")[0],
                        "detail": kind,
                    }
                )
    counts = Counter((r["fmt"], r["outcome"]) for r in results)
    bugs = [r for r in results if r["outcome"] not in ("batches", "value_error")]
    summary = {
        "seed": args.seed,
        "cases_per_format": args.cases,
        "reads": len(results),
        "seconds": round(time.time() - started, 1),
        "counts": {f"{fmt} {outcome}": n for (fmt, outcome), n in sorted(counts.items())},
        "bugs": bugs[:50],
    }
    with open(args.out, "w") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "bugs"}, indent=2))
    print(f"{len(bugs)} reads ended as a bug (crash, hang, wrong exception or bad batch)")
    for bug in bugs[:10]:
        print("  ", bug)


if __name__ == "__main__":
    main()

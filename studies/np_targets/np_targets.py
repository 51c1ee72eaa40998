"""Issue-2 measurements of the non-parametric detector that are not pytest-benchmark groups:

1. speed against the authors' pipeline (authors_style.py, next to this file) and a bare FAISS pipeline,
   fit + score, at n_train = n_query = 10k, d = 32 and on 38_thyroid and 6_cardio;
2. peak memory while scoring 1M rows (beyond the fitted index and the input);
3. the index choice behind index="auto": flat vs KD-tree vs HNSW by dimension.

Usage: python studies/np_targets/np_targets.py [--quick] [--only speed,memory,index] \
    [--out studies/np_targets/np_targets.md]
Reads ADBench files from ../shared/data/adbench (next to the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"
sys.path.insert(0, str(HERE))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def semi_split(name: str):
    from dtpm_fast.evaluation.protocol import load_dataset, prepare_split

    X, y = load_dataset(SHARED / "data" / "adbench", name)
    X_train, X_test, _ = prepare_split(X, y, seed=0, protocol="semi")
    return X_train.astype(np.float32), X_test.astype(np.float32)


# ---- 1. speed ------------------------------------------------------------------------------
def speed(quick: bool) -> list[str]:
    import faiss

    from authors_style import AuthorsStyleDTENP
    from dtpm_fast import DTPMNonParametric

    rng = np.random.default_rng(0)
    n = 2000 if quick else 10_000
    problems = {
        f"gaussian n_train = n_query = {n}, d = 32": (
            rng.standard_normal((n, 32), dtype=np.float32),
            rng.standard_normal((n, 32), dtype=np.float32),
        )
    }
    for name in ("38_thyroid", "6_cardio"):
        problems[f"{name} (semi-supervised split, seed 0)"] = semi_split(name)

    def bare_faiss(X_train, X_test):
        index = faiss.IndexFlatL2(X_train.shape[1])
        index.add(X_train)
        index.search(X_test, 5)

    lines = [
        "| data | authors-style fit+score (s) | bare FAISS flat build+search (s) | dtpm_fast fit+score, index=auto (s) | dtpm_fast, index=flat (s) | authors / dtpm_fast (auto) | authors / dtpm_fast (flat) | authors / bare FAISS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, (X_train, X_test) in problems.items():
        t_authors = best_of(
            lambda X_train=X_train, X_test=X_test: AuthorsStyleDTENP().fit(X_train).scores(X_test), 1
        )
        t_faiss = best_of(lambda X_train=X_train, X_test=X_test: bare_faiss(X_train, X_test), 5)
        t_auto = best_of(
            lambda X_train=X_train, X_test=X_test: DTPMNonParametric().fit(X_train).decision_function(X_test),
            5,
        )
        t_flat = best_of(
            lambda X_train=X_train, X_test=X_test: (
                DTPMNonParametric(index="flat").fit(X_train).decision_function(X_test)
            ),
            5,
        )
        lines.append(
            f"| {label} | {t_authors:.3f} | {t_faiss:.4f} | {t_auto:.4f} | {t_flat:.4f} | "
            f"{t_authors / t_auto:.0f}x | {t_authors / t_flat:.0f}x | {t_authors / t_faiss:.0f}x |"
        )
        print(lines[-1], flush=True)
    return lines


# ---- 2. memory -----------------------------------------------------------------------------
MEMORY_CHILD = r"""
import json, sys, numpy as np
from dtpm_fast import DTPMNonParametric

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
n_query, n_train, d, batch = map(int, sys.argv[1:5])
index = sys.argv[5]
rng = np.random.default_rng(0)
detector = DTPMNonParametric(index=index, batch_size=batch).fit(rng.standard_normal((n_train, d), dtype=np.float32))
queries = rng.standard_normal((n_query, d), dtype=np.float32)
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS high-water mark
    fh.write("5")
scores = detector.decision_function(queries)
peak = status("VmHWM:")
print(json.dumps({"rss_before": before, "peak": peak, "extra": peak - before, "scores": scores.nbytes}))
"""


def memory(quick: bool) -> list[str]:
    n_query = 100_000 if quick else 1_000_000
    n_train, d = 20_000, 32
    lines = [
        (
            f"Scoring {n_query:,} query rows (d = {d}, float32 input of {n_query * d * 4 / 2**20:.0f} MiB) "
            f"against {n_train:,} training rows, K = 5 (index auto = the native brute force at this d):"
        ),
        "",
        "| index | batch_size | peak RSS increase while scoring (MiB) | of which the float64 scores (MiB) | n*K*4 bytes (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for index in ("auto", "flat"):
        for batch in (16_384, 65_536, 262_144):
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, str(n_query), str(n_train), str(d), str(batch), index],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            lines.append(
                f"| {index} | {batch:,} | {r['extra'] / 2**20:.1f} | {r['scores'] / 2**20:.1f} | "
                f"{n_query * 5 * 4 / 2**20:.1f} |"
            )
            print(lines[-1], flush=True)
    return lines


# ---- 3. index choice -----------------------------------------------------------------------
def index_choice(quick: bool) -> list[str]:
    import faiss

    from dtpm_fast import DTPMNonParametric
    from dtpm_fast.evaluation.metrics import auc_roc
    from dtpm_fast.evaluation.protocol import load_dataset

    cap = 5_000 if quick else 50_000
    lines = [
        "| data | d | n_train | n_query | flat (s) | kdtree (s) | hnsw (s) | kdtree speed-up | hnsw speed-up | hnsw recall@5 | AUC flat | AUC hnsw |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rng = np.random.default_rng(1)
    cases = []
    for name in ("33_skin", "10_cover", "22_magic.gamma", "28_pendigits", "30_satellite", "24_mnist"):
        X, y = load_dataset(SHARED / "data" / "adbench", name)
        order = rng.permutation(len(X))[: 2 * cap]
        X, y = X[order].astype(np.float32), y[order]
        half = len(X) // 2
        cases.append((name, X[:half], X[half:], y[half:]))
    for d in (4, 8, 12, 16, 24):  # above, a KD-tree is a slow brute force (studies/index_choice/README.md)
        X = rng.standard_normal((2 * cap // 2, d), dtype=np.float32)
        cases.append((f"gaussian d={d}", X[: cap // 2], X[cap // 2 :], None))
    for name, X_train, X_test, y_test in cases:
        fitted = {kind: DTPMNonParametric(index=kind).fit(X_train) for kind in ("flat", "kdtree", "hnsw")}
        times = {
            kind: best_of(lambda m=m, X_test=X_test: m.decision_function(X_test), 3)
            for kind, m in fitted.items()
        }
        Z_train = fitted["flat"]._train
        Z_test = fitted["flat"]._scaler.transform(X_test)
        _, exact = faiss.knn(Z_test, Z_train, 5)
        hnsw_ids = fitted["hnsw"]._index.search(Z_test, 5)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, hnsw_ids, strict=False)])
        if y_test is not None and 0 < y_test.sum() < len(y_test):
            aucs = [f"{auc_roc(y_test, fitted[k].decision_function(X_test)):.2f}" for k in ("flat", "hnsw")]
        else:
            aucs = ["-", "-"]
        lines.append(
            f"| {name} | {X_train.shape[1]} | {len(X_train):,} | {len(X_test):,} | {times['flat']:.3f} | "
            f"{times['kdtree']:.3f} | {times['hnsw']:.3f} | {times['flat'] / times['kdtree']:.1f}x | "
            f"{times['flat'] / times['hnsw']:.1f}x | {recall:.3f} | {aucs[0]} | {aucs[1]} |"
        )
        print(lines[-1], flush=True)
    return lines


def machine() -> str:
    import dtpm_fast

    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, dtpm_fast {dtpm_fast.__version__} "
        f"({json.dumps(dtpm_fast.build_info())})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="speed,memory,index")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    report = [
        "# Non-parametric detector: speed, memory, index choice",
        "",
        f"Command: `python studies/np_targets/np_targets.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine()}",
        "",
    ]
    sections = {
        "speed": ("## Fit + score against the authors' pipeline", speed),
        "memory": ("## Peak memory while scoring", memory),
        "index": ("## Index choice (decision_function time, same fitted data)", index_choice),
    }
    for key in args.only.split(","):
        title, fn = sections[key]
        print(title, flush=True)
        report += [title, "", *fn(args.quick), ""]
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()

"""Exact neighbour search by dimension and size: FAISS flat vs the native brute force vs a KD-tree.

Times build + one search of k = 6 neighbours (the detector's leave-one-out search is
n_neighbors + 1 = 6) for n_query = 10k queries, on standard-normal data (the worst case for a
KD-tree) and on ADBench data sets of low dimension (where a KD-tree does best). The table
behind ``index="auto"`` (studies/index_choice/README.md).

Usage: python studies/index_choice/index_choice.py [--quick] [--out studies/index_choice/index_choice.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared"
K = 6
N_QUERY = 10_000
# A KD-tree degrades to a slow brute force with dimension: measured only where it can win.
KDTREE_MAX_DIM = 16


def build_and_search(kind: str, X: np.ndarray, Q: np.ndarray) -> None:
    from dtpm_fast.nonparametric import indexes as neighbours

    neighbours.build_index(kind, X, neighbours.resolve_params(kind, None)).search(Q, K)


def best_of(fn, budget_s: float = 3.0, max_repeats: int = 3) -> float:
    """Best of up to ``max_repeats`` runs, fewer when one run takes longer than ``budget_s``."""
    times = []
    while len(times) < max_repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return min(times)


def real_cases(rng: np.random.Generator, quick: bool):
    from dtpm_fast.evaluation.protocol import load_dataset
    from dtpm_fast.standardize import Standardizer

    for name in ("33_skin", "10_cover", "22_magic.gamma", "28_pendigits"):
        X, _ = load_dataset(SHARED / "data" / "adbench", name)
        X = X[rng.permutation(len(X))].astype(np.float32)
        X = Standardizer.fit(X).transform(X)  # the detector searches standardised rows
        for n_train in (1_000, 10_000, 100_000):
            if quick and n_train > 10_000:
                continue
            if n_train + N_QUERY <= len(X):
                yield f"{name}", X[:n_train], X[n_train : n_train + N_QUERY]


def gaussian_cases(rng: np.random.Generator, quick: bool):
    for n_train in (1_000, 10_000) if quick else (1_000, 10_000, 100_000):
        for d in (3, 5, 7, 10, 16, 32, 64, 128, 784):
            if n_train > 10_000 and d > 128:
                continue  # minutes of FAISS time on 2 cores; the ratio is flat in n above 10k
            yield (
                "gaussian",
                rng.standard_normal((n_train, d), dtype=np.float32),
                rng.standard_normal((N_QUERY, d), dtype=np.float32),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n_train <= 10k only")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    import dtpm_fast

    rng = np.random.default_rng(0)
    lines = [
        f"Command: `python studies/index_choice/index_choice.py {' '.join(sys.argv[1:])}`",
        "",
        f"dtpm_fast {dtpm_fast.__version__}, {dtpm_fast.build_info()}",
        "",
        f"Build + search, k = {K}, {N_QUERY:,} queries; best of up to 3 runs (1 when a run takes > 3 s).",
        "",
        "| data | d | n_train | flat (s) | brute (s) | kdtree (s) | flat / brute | kdtree / brute |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for data, X, Q in [*real_cases(rng, args.quick), *gaussian_cases(rng, args.quick)]:
        d = X.shape[1]
        t = {
            kind: best_of(lambda kind=kind, X=X, Q=Q: build_and_search(kind, X, Q))
            for kind in ("flat", "brute")
        }
        t["kdtree"] = (
            best_of(lambda X=X, Q=Q: build_and_search("kdtree", X, Q)) if d <= KDTREE_MAX_DIM else None
        )
        kd = f"{t['kdtree']:.4f}" if t["kdtree"] is not None else "-"
        kd_ratio = f"{t['kdtree'] / t['brute']:.2f}" if t["kdtree"] is not None else "-"
        lines.append(
            f"| {data} | {d} | {len(X):,} | {t['flat']:.4f} | {t['brute']:.4f} | {kd} | "
            f"{t['flat'] / t['brute']:.1f} | {kd_ratio} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

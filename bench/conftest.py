"""Benchmark-suite options: the problem size (``--bench-size small|large`` or DTPM_BENCH_SIZE).

``small`` is a quick look (a minute or two on 2 cores); ``large`` is what bench/README.md
records. Benchmarks live outside ``testpaths``, so the normal ``pytest`` never runs them; run
them with ``pytest bench/`` (see bench/README.md).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

SIZES = {
    # Posterior kernel: rows of (n, K) squared distances scored per call.
    "posterior_rows": {"small": 200_000, "large": 2_000_000},
    # Neighbour-distance kernel: query rows, training rows (d = 32, K = 5).
    "neighbour_queries": {"small": 20_000, "large": 200_000},
    "neighbour_train": {"small": 20_000, "large": 100_000},
    # End-to-end scoring: training rows = query rows (the target is 100k x 100k, d = 32).
    "end_to_end_rows": {"small": 10_000, "large": 100_000},
}


def pytest_addoption(parser):
    parser.addoption(
        "--bench-size",
        choices=("small", "large"),
        default=os.environ.get("DTPM_BENCH_SIZE", "small"),
        help="benchmark problem size: small (quick) or large (the recorded numbers); env DTPM_BENCH_SIZE",
    )


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session")
def size(bench_size):
    """``size("posterior_rows")`` -> the row count for the selected problem size."""
    return lambda name: SIZES[name][bench_size]


@pytest.fixture(scope="session")
def gaussian_rows():
    """``gaussian_rows(n, d, seed)`` -> standard-normal float32 (n, d), C-contiguous (used without a copy)."""
    return lambda n, d, seed: np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the size and the native build beside the timings, so a saved file explains itself."""
    import dtpm_fast

    output_json["dtpm_fast"] = {"bench_size": config.getoption("--bench-size"), **dtpm_fast.build_info()}

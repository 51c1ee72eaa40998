"""Native kernels alone: the posterior from neighbour distances, and the exact neighbour distances.

rows/s = extra_info["rows"] / mean time. The issue's target for the posterior kernel is
>= 20M rows/s (K = 5, T = 300, mode and mean) on the 2-core machine; a chunked NumPy float32
version (also timed here, group posterior-numpy) does ~1.3M rows/s.
"""

from __future__ import annotations

import numpy as np
import pytest

from dtpm_fast import _core
from dtpm_fast.schedule import PosteriorGrid

K, T, D = 5, 300, 32


@pytest.fixture(scope="module")
def sqdist(size):
    """Squared distances of a plausible scale for standardised d = 32 data: ~ d * chi2-ish."""
    n = size("posterior_rows")
    rng = np.random.default_rng(0)
    return (rng.gamma(4.0, D / 4.0, size=(n, K)) * rng.uniform(0.05, 2.0, size=(n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def grid():
    return PosteriorGrid.for_steps(T)


@pytest.mark.benchmark(group="posterior")
@pytest.mark.parametrize("what", ["mode", "mean", "mode+mean"])
def test_posterior_kernel(benchmark, sqdist, grid, what):
    want_mode, want_mean = "mode" in what, "mean" in what
    benchmark.extra_info.update(rows=len(sqdist), K=K, T=T, d=D)
    mode, mean, _ = benchmark(
        _core.posterior, sqdist, D, grid.log_sigma2, grid.inv_sigma2, want_mode, want_mean, False
    )
    assert (mode is not None) == want_mode and (mean is not None) == want_mean


def _numpy_posterior_mean(sqdist: np.ndarray, grid: PosteriorGrid, chunk: int = 8192) -> np.ndarray:
    """The plain float32 NumPy route the kernel replaces (chunked to bound memory): O(n*T) work."""
    a = np.float32(D / 2 - 1)
    log_s2 = grid.log_sigma2.astype(np.float32)
    inv_s2 = grid.inv_sigma2.astype(np.float32)
    t = np.arange(T, dtype=np.float32)
    out = np.empty(len(sqdist), dtype=np.float32)
    for start in range(0, len(sqdist), chunk):
        b = sqdist[start : start + chunk].mean(axis=1, dtype=np.float32)[:, None] / 2
        logp = -(a + 1) * log_s2 - b * inv_s2
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        out[start : start + chunk] = (p @ t) / p.sum(axis=1)
    return out


@pytest.mark.benchmark(group="posterior-numpy")
def test_posterior_numpy_reference(benchmark, sqdist, grid):
    rows = sqdist[:50_000]  # the slow route: a fixed slice keeps it short
    benchmark.extra_info.update(rows=len(rows), K=K, T=T, d=D)
    mean = benchmark(_numpy_posterior_mean, rows, grid)
    _, exact, _ = _core.posterior(rows[:1000], D, grid.log_sigma2, grid.inv_sigma2, False, True, False)
    np.testing.assert_allclose(mean[:1000], exact, atol=0.05)


@pytest.fixture(scope="module")
def neighbour_problem(size, gaussian_rows):
    train = gaussian_rows(size("neighbour_train"), D, 1)
    queries = gaussian_rows(size("neighbour_queries"), D, 2)
    ids = np.random.default_rng(3).integers(0, len(train), size=(len(queries), K), dtype=np.int64)
    return queries, train, ids


@pytest.mark.benchmark(group="neighbour-distance")
@pytest.mark.parametrize("contribution", [False, True], ids=["sqdist", "sqdist+per-feature"])
def test_neighbour_distance_kernel(benchmark, neighbour_problem, contribution):
    queries, train, ids = neighbour_problem
    benchmark.extra_info.update(rows=len(queries), K=K, d=D, n_train=len(train))
    sq, contrib = benchmark(_core.neighbour_sqdist, queries, train, ids, contribution)
    assert sq.shape == (len(queries), K) and (contrib is not None) == contribution

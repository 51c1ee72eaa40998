"""The native kernels against the NumPy oracles, on random inputs including odd sizes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dtpm_fast import _core
from dtpm_fast.schedule import PosteriorGrid
from oracles import neighbour_sqdist_oracle, posterior_oracle

GRID = PosteriorGrid.for_steps(300)


def random_sqdist(rng, n, k, d):
    """Squared distances spanning the whole grid: per-row scale from 1e-5 to 10 per feature."""
    scale = np.exp(rng.uniform(np.log(1e-5), np.log(10.0), size=(n, 1)))
    return rng.gamma(2.0, 0.5, size=(n, k)) * d * scale


def run_posterior(sq, d, grid=GRID, full=True):
    return _core.posterior(sq, d, grid.log_sigma2, grid.inv_sigma2, True, True, full)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 97, 511, 512, 513, 2049, 5000])
@pytest.mark.parametrize("d", [3, 4, 21, 100])
def test_posterior_matches_oracle(dtype, n, d):
    rng = np.random.default_rng(n * 1000 + d)
    sq = random_sqdist(rng, n, 5, d).astype(dtype)
    mode, mean, post = run_posterior(sq, d)
    o_mode, o_mean, o_post = posterior_oracle(sq, d)
    # float32 exp and sums: means agree to ~1e-6 relative of the range 0..299
    np.testing.assert_allclose(mean, o_mean, rtol=0, atol=2e-3)
    np.testing.assert_allclose(post, o_post, rtol=0, atol=1e-6)
    assert np.abs(mode - o_mode).max() <= 1
    assert (mode == o_mode).mean() >= 0.999
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-9)
    # the windowed mean (no full posterior) equals the full-grid mean
    _, windowed_mean, none = _core.posterior(sq, d, GRID.log_sigma2, GRID.inv_sigma2, False, True, False)
    assert none is None
    np.testing.assert_allclose(windowed_mean, mean, rtol=0, atol=1e-3)


@pytest.mark.parametrize("d", [3, 6, 21, 32, 64])
@pytest.mark.parametrize("T", [300, 400])
def test_tabulated_mean_matches_oracle(d, T):
    """A call with many rows interpolates a table of the mean; it must match the exact mean.

    The table is checked to 1e-5 at every interval midpoint when built; the windowed sum that
    small calls use is ~5e-5 off the float64 oracle, so atol=2e-5 also shows the table is used.
    """
    grid = PosteriorGrid.for_steps(T)
    rng = np.random.default_rng(d + T)
    n = 200_000
    sq = (rng.gamma(4.0, d / 4.0, size=(n, 5)) * rng.uniform(0.05, 2.0, size=(n, 1))).astype(np.float32)
    mode, mean, _ = _core.posterior(sq, d, grid.log_sigma2, grid.inv_sigma2, True, True, False)
    check = rng.choice(n, 4000, replace=False)
    o_mode, o_mean, _ = posterior_oracle(sq[check], d, T)
    np.testing.assert_allclose(mean[check], o_mean, rtol=0, atol=2e-5)
    assert np.abs(mode[check] - o_mode).max() <= 1
    mean_only = _core.posterior(sq, d, grid.log_sigma2, grid.inv_sigma2, False, True, False)[1]
    np.testing.assert_array_equal(mean_only, mean)


@pytest.mark.parametrize("T", [2, 3, 300, 400])
def test_mode_counts_the_swap_points_below_the_continuous_mode(T):
    """The grid mode is the number of swap points b* (f_t = f_t+1) below b/c, exactly, also on
    and next to each swap point, below the first and above the last."""
    grid = PosteriorGrid.for_steps(T)
    log_s2, inv_s2 = grid.log_sigma2, grid.inv_sigma2
    swap = (log_s2[1:] - log_s2[:-1]) / (inv_s2[:-1] - inv_s2[1:])  # increasing, in sigma2 units
    s_star = np.concatenate(
        [
            swap,
            np.nextafter(swap, 0),
            np.nextafter(swap, np.inf),
            [swap[0] / 1e3, swap[-1] * 1e3, 1e-300, 1e300],
        ]
    )
    d = 10  # c = d / 2; one neighbour with D2 = 2 b = 2 c s_star, so b / c = s_star
    sq = (2.0 * (d / 2.0) * s_star)[:, None]
    mode, _, _ = _core.posterior(sq, d, log_s2, inv_s2, True, False, False)
    s_seen = (sq[:, 0] / 2.0) / (d / 2.0)  # b / c as the kernel computes it
    np.testing.assert_array_equal(mode, np.searchsorted(swap, s_seen, side="left"))


def test_tabulated_mean_with_extreme_rows():
    """Rows far outside the tabulated octaves, zero and infinite distances, in one large call."""
    rng = np.random.default_rng(7)
    n, d = 100_000, 10
    sq = random_sqdist(rng, n, 5, d)
    extreme = rng.choice(n, 60, replace=False)
    sq[extreme[:20]] *= 1e-30
    sq[extreme[20:40]] *= 1e30
    sq[extreme[40:50]] = 0.0
    sq[extreme[50:]] = np.inf
    mode, mean, _ = run_posterior(sq, d, full=False)
    check = np.concatenate([extreme, rng.choice(n, 3000, replace=False)])
    o_mode, o_mean, _ = posterior_oracle(sq[check], d)
    np.testing.assert_allclose(mean[check], o_mean, rtol=0, atol=2e-3)
    assert np.abs(mode[check] - o_mode).max() <= 1
    assert np.isfinite(mean).all()
    sq[n // 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_posterior(sq, d, full=False)


POSTERIOR_ISA_CHILD = """
import sys, numpy as np
from dtpm_fast import _core
from dtpm_fast.schedule import PosteriorGrid
g = PosteriorGrid.for_steps(300)
sq = np.load(sys.argv[1])
out = {"simd": _core.build_info()["simd"]}
out["mode"], out["mean"], out["post"] = _core.posterior(sq[:3000], 21, g.log_sigma2, g.inv_sigma2, True, True, True)
out["windowed"] = _core.posterior(sq[:3000], 21, g.log_sigma2, g.inv_sigma2, False, True, False)[1]
out["tabulated"] = _core.posterior(sq, 21, g.log_sigma2, g.inv_sigma2, False, True, False)[1]
np.savez(sys.argv[2], **out)
"""


@pytest.mark.parametrize("isa, name", [("baseline", "baseline"), ("x86-64-v3", "AVX2")])
def test_lower_instruction_sets_match_oracle(tmp_path, isa, name):
    """Each compiled variant of the per-row routine (4 / 8 / 16 float lanes) against the oracle,
    in a child process because the instruction set is chosen once per process."""
    rng = np.random.default_rng(5)
    sq = rng.gamma(4.0, 21 / 4.0, size=(100_000, 5)) * rng.uniform(0.05, 2.0, size=(100_000, 1))
    sq[:3000] = random_sqdist(rng, 3000, 5, 21)
    np.save(tmp_path / "sq.npy", sq.astype(np.float32))
    env = {**os.environ, "DTPM_FORCE_ISA": isa}
    subprocess.run(
        [sys.executable, "-c", POSTERIOR_ISA_CHILD, str(tmp_path / "sq.npy"), str(tmp_path / "out.npz")],
        env=env,
        check=True,
    )
    with np.load(tmp_path / "out.npz") as out:
        if name not in str(out["simd"]):
            pytest.skip(f"this CPU or build has no {isa} variant (got {out['simd']})")
        sq32 = np.load(tmp_path / "sq.npy")
        o_mode, o_mean, o_post = posterior_oracle(sq32[:3000], 21)
        assert np.abs(out["mode"] - o_mode).max() <= 1
        np.testing.assert_allclose(out["mean"], o_mean, rtol=0, atol=2e-3)
        np.testing.assert_allclose(out["post"], o_post, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["windowed"], o_mean, rtol=0, atol=2e-3)
        check = np.arange(3000, 100_000, 97)
        np.testing.assert_allclose(
            out["tabulated"][check], posterior_oracle(sq32[check], 21)[1], rtol=0, atol=2e-5
        )


@pytest.mark.parametrize("k", [1, 2, 7])
def test_posterior_any_k(k):
    rng = np.random.default_rng(k)
    sq = random_sqdist(rng, 200, k, 8)
    mode, mean, _ = run_posterior(sq, 8, full=False)
    o_mode, o_mean, _ = posterior_oracle(sq, 8)
    np.testing.assert_allclose(mean, o_mean, atol=2e-3)
    assert np.abs(mode - o_mode).max() <= 1


def test_posterior_other_grid_sizes():
    for T in (2, 3, 400):
        grid = PosteriorGrid.for_steps(T)
        sq = random_sqdist(np.random.default_rng(T), 300, 5, 10)
        mode, mean, post = run_posterior(sq, 10, grid)
        o_mode, o_mean, _ = posterior_oracle(sq, 10, T)
        np.testing.assert_allclose(mean, o_mean, atol=2e-3)
        assert np.abs(mode - o_mode).max() <= 1
        assert post.shape == (300, T)


def test_posterior_degenerate_rows():
    sq = np.array([[0.0, 0.0], [-1e-7, 0.0], [np.inf, 1.0], [1e30, 1e30]], dtype=np.float64)
    mode, mean, post = run_posterior(sq, 6)
    assert list(mode[:3]) == [0, 0, 299] and list(mean[:3]) == [0.0, 0.0, 299.0]
    assert post[0, 0] == 1.0 and post[2, 299] == 1.0
    assert mode[3] == 299 and np.isfinite(mean).all() and np.isfinite(post).all()


def test_posterior_rejects_bad_input():
    sq = np.ones((4, 5))
    with pytest.raises(ValueError, match="NaN"):
        run_posterior(np.array([[1.0, np.nan]]), 6)
    with pytest.raises(ValueError, match="n_features must be > 2"):
        run_posterior(sq, 2)
    with pytest.raises(ValueError, match="at least one neighbour"):
        run_posterior(np.ones((4, 0)), 6)
    with pytest.raises(ValueError, match="2-D"):
        run_posterior(np.ones(4), 6)
    with pytest.raises(ValueError, match="same length"):
        _core.posterior(sq, 6, GRID.log_sigma2, GRID.inv_sigma2[:-1])
    with pytest.raises(ValueError, match="increase"):
        _core.posterior(sq, 6, GRID.log_sigma2[::-1].copy(), GRID.inv_sigma2[::-1].copy())


def test_posterior_empty_input():
    mode, mean, post = run_posterior(np.zeros((0, 5), dtype=np.float32), 6)
    assert mode.shape == (0,) and mean.shape == (0,) and post.shape == (0, 300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,d", [(1, 1, 3), (3, 5, 7), (97, 5, 33), (1000, 4, 64)])
def test_neighbour_sqdist_matches_oracle(dtype, n, k, d):
    rng = np.random.default_rng(n + k + d)
    train = rng.standard_normal((150, d)).astype(dtype)
    queries = rng.standard_normal((n, d)).astype(dtype)
    ids = rng.integers(0, 150, size=(n, k))
    sq, contrib = _core.neighbour_sqdist(queries, train, ids, True)
    o_sq, o_contrib = neighbour_sqdist_oracle(queries, train, ids)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert sq.dtype == dtype and contrib.dtype == dtype
    np.testing.assert_allclose(sq, o_sq, rtol=tol)
    np.testing.assert_allclose(contrib, o_contrib, rtol=tol, atol=tol)
    sq_only, none = _core.neighbour_sqdist(queries, train, ids, False)
    assert none is None
    np.testing.assert_array_equal(sq_only, sq)


def test_neighbour_sqdist_rejects_bad_ids_and_shapes():
    train = np.zeros((10, 3), dtype=np.float32)
    queries = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="row 1 has a neighbour id outside"):
        _core.neighbour_sqdist(queries, train, np.array([[0], [10]]))
    with pytest.raises(ValueError, match="outside"):
        _core.neighbour_sqdist(queries, train, np.array([[-1], [0]]))
    with pytest.raises(ValueError, match="features"):
        _core.neighbour_sqdist(np.zeros((2, 4), dtype=np.float32), train, np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="one row per query"):
        _core.neighbour_sqdist(queries, train, np.zeros((3, 1), dtype=np.int64))

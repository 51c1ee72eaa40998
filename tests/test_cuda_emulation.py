"""The CUDA kernels' own source, run on the CPU by an emulator, against the host kernels and oracles.

``csrc/cuda/{posterior,neighbour_distance,smallest_per_row}.cu`` are compiled here by the C++
compiler against ``tests/cuda_emulation/cuda_emulation.hpp`` (see ``csrc/cuda/cuda_api.cuh``):
the same kernels and launchers, with blocks run one after another and each block's threads as
fibers that meet at ``__syncthreads()`` and warp shuffles. This checks the kernels' indexing,
grid-stride loops, shared-memory use, shuffles and tie rules on every machine, and the emulator
reports divergent barriers and malformed shuffles as errors (tests at the bottom show it does).
The last test runs all of this again under AddressSanitizer, which stops at any read or write
outside an array, naming the kernel line.

It is not a GPU run: timing, occupancy, the memory model and the hardware's float units (other
than ``__expf``, modelled) are not covered; ``tests/test_gpu.py`` covers those when a GPU exists.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtpm_fast import _core
from dtpm_fast.schedule import PosteriorGrid
from kernel_cases import assert_modes_agree, random_sqdist
from oracles import neighbour_sqdist_oracle, posterior_oracle

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    REPO / "csrc" / "cuda" / f"{name}.cu" for name in ("posterior", "neighbour_distance", "smallest_per_row")
]
EMULATION = REPO / "tests" / "cuda_emulation"
EMULATED_SMS = 3  # kEmulatedSMs in cuda_emulation.hpp: launches get at most 3 blocks
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
SANITIZE_ENV = "DTPM_EMULATION_SANITIZE"

_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_f64p = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
_i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_i64p = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_i64 = ctypes.c_int64


class EmulationError(RuntimeError):
    """The emulator stopped a kernel (deadlock, malformed shuffle)."""


class EmulatedKernels:
    """ctypes front end to the emulated launchers; numpy arrays in, numpy arrays out."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        err = [ctypes.c_char_p, _i64]
        for dtype, p in (("f32", _f32p), ("f64", _f64p)):
            fn = getattr(lib, f"dtpm_emu_posterior_{dtype}")
            fn.argtypes = [p, _i64, _i64, _i64, _f64p, _f64p, _i64, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, *err]  # fmt: skip
            fn = getattr(lib, f"dtpm_emu_neighbour_sqdist_{dtype}")
            fn.argtypes = [p, _i64, p, _i64, _i64, _i64p, _i64, p, ctypes.c_void_p, _i32p, *err]
        lib.dtpm_emu_smallest_per_row.argtypes = [_f32p, _i64, _i64, _i64, _i64, _i64, ctypes.c_int, _i64,
                                                  _f32p, _i64p, _i64, *err]  # fmt: skip
        lib.dtpm_emu_smallest_per_row_max_k.restype = _i64
        lib.dtpm_emu_set_schedule.argtypes = [ctypes.c_int, ctypes.c_uint64, *err]
        lib.dtpm_emu_selfcheck.argtypes = [ctypes.c_char_p, ctypes.c_float, _f32p, *err]
        self.lib = lib

    @staticmethod
    def _call(fn, *args):
        message = ctypes.create_string_buffer(2048)
        code = fn(*args, message, len(message))
        if code == 1:
            raise ValueError(message.value.decode())
        if code:
            raise EmulationError(message.value.decode())

    def set_schedule(self, name: str, seed: int = 0) -> None:
        self._call(self.lib.dtpm_emu_set_schedule, SCHEDULES[name], seed)

    def posterior(self, sq, n_features, grid, want_mode=True, want_mean=True, want_posterior=False):
        """(mode, mean, posterior, status) from the device posterior launcher."""
        n, k = sq.shape
        T = len(grid.log_sigma2)
        mode = np.full(n, -7, np.int32) if want_mode else None
        mean = np.full(n, np.nan) if want_mean else None
        post = np.full((n, T), np.nan) if want_posterior else None
        status = np.zeros(1, np.int32)
        fn = self.lib.dtpm_emu_posterior_f32 if sq.dtype == np.float32 else self.lib.dtpm_emu_posterior_f64
        ptr = [None if a is None else a.ctypes.data for a in (mode, mean, post, status)]
        self._call(fn, sq, n, k, n_features, grid.log_sigma2, grid.inv_sigma2, T, *ptr)
        return mode, mean, post, int(status[0])

    def neighbour_sqdist(self, queries, train, ids, want_contribution=True):
        """(sqdist, contribution, status) from the device neighbour-distance launcher."""
        n, d = queries.shape
        k = ids.shape[1]
        sq = np.full((n, k), np.nan, queries.dtype)
        contrib = np.full((n, d), np.nan, queries.dtype) if want_contribution else None
        status = np.zeros(1, np.int32)
        fn = getattr(
            self.lib, "dtpm_emu_neighbour_sqdist_" + ("f32" if queries.dtype == np.float32 else "f64")
        )
        contrib_ptr = None if contrib is None else contrib.ctypes.data
        self._call(fn, queries, n, train, train.shape[0], d, ids, k, sq, contrib_ptr, status)
        return sq, contrib, int(status[0])

    def smallest_per_row(self, values, k, cols=None, id_offset=0, diagonal_offset=None, out_ld=None):
        """(values, ids) of the k smallest of each row's first ``cols`` columns."""
        rows, ld = values.shape
        cols = ld if cols is None else cols
        out_ld = k if out_ld is None else out_ld
        out_v = np.full((rows, out_ld), -5.0, np.float32)
        out_i = np.full((rows, out_ld), -5, np.int64)
        exclude = diagonal_offset is not None
        self._call(self.lib.dtpm_emu_smallest_per_row, values, rows, cols, ld, k, id_offset, int(exclude),
                   diagonal_offset or 0, out_v, out_i, out_ld)  # fmt: skip
        return out_v, out_i

    def selfcheck(self, name: str, value: float = 0.0) -> np.ndarray:
        out = np.full(128, -1.0, np.float32)
        self._call(self.lib.dtpm_emu_selfcheck, name.encode(), value, out)
        return out


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> EmulatedKernels:
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")
    out = tmp_path_factory.mktemp("cuda_emulation") / "libdtpm_cuda_emulation.so"
    sanitize = os.environ.get(SANITIZE_ENV) == "address"  # set by the AddressSanitizer test below
    optimize = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    command = [
        compiler, "-std=c++17", *optimize, "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unknown-pragmas",
        f"-I{REPO / 'csrc' / 'include'}", f"-I{REPO / 'csrc' / 'cuda'}", f"-I{EMULATION}",
        "-x", "c++", *map(str, SOURCES), "-x", "none",
        str(EMULATION / "emulation.cpp"), str(EMULATION / "emulated_kernels.cpp"),
        str(EMULATION / "emulator_selfcheck.cpp"), "-o", str(out),
    ]  # fmt: skip
    build = subprocess.run(command, check=False, capture_output=True, text=True)
    assert build.returncode == 0, f"building the CUDA emulation failed:\n{build.stderr}"
    kernels = EmulatedKernels(out)
    yield kernels
    kernels.set_schedule("forward")


@pytest.fixture(params=list(SCHEDULES))
def schedule(request, emu):
    """Runs the test under each fiber order; the kernels' results must not depend on it."""
    emu.set_schedule(request.param, seed=12345)
    yield request.param
    emu.set_schedule("forward")


# ---- posterior -----------------------------------------------------------------------------------
def _assert_matches_host(emu, sq, d, grid, want_posterior=False):
    """The emulated posterior of ``sq`` against ``_core``'s (status 0); returns (mode, mean, posterior)."""
    want_mode, want_mean, want_post = _core.posterior(
        sq, d, grid.log_sigma2, grid.inv_sigma2, True, True, want_posterior
    )
    mode, mean, post, status = emu.posterior(sq, d, grid, want_posterior=want_posterior)
    assert status == 0
    assert_modes_agree(mode, want_mode)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-4)
    if want_posterior:
        np.testing.assert_allclose(post, want_post, atol=1e-6)
    return mode, mean, post


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 255, 257, 1601])  # 1601 > 3 blocks x 256 threads: the loop repeats
@pytest.mark.parametrize(("k", "d"), [(1, 3), (5, 8), (7, 501)])
def test_posterior_mode_and_mean_match_the_host(emu, dtype, n, k, d):
    rng = np.random.default_rng(n * 1000 + d)
    sq = random_sqdist(rng, n, k, d, dtype)
    grid = PosteriorGrid.for_steps(300)
    mode, mean, _ = _assert_matches_host(emu, sq, d, grid)
    _, oracle_mean, _ = posterior_oracle(sq, d)
    np.testing.assert_allclose(mean, oracle_mean, rtol=1e-4, atol=1e-4)
    mode_only, none, _, _ = emu.posterior(sq, d, grid, want_mean=False)
    assert none is None
    np.testing.assert_array_equal(mode_only, mode)


@pytest.mark.parametrize("n", [1, 3, 97, 200])  # 200 rows > 3 blocks x 8 warps: the warp loop repeats
def test_full_posterior_matches_the_host(emu, schedule, n):
    rng = np.random.default_rng(n)
    sq = random_sqdist(rng, n, 5, 16, np.float32)
    _, _, post = _assert_matches_host(emu, sq, 16, PosteriorGrid.for_steps(300), want_posterior=True)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-9)


@pytest.mark.parametrize("T", [1, 2, 3, 300, 2048, 2049, 5000])  # 2048: last grid in shared memory
def test_posterior_grid_sizes_in_and_beyond_shared_memory(emu, T):
    rng = np.random.default_rng(T)
    sq = random_sqdist(rng, 301, 5, 16, np.float32)
    grid = PosteriorGrid.for_steps(T)
    _assert_matches_host(emu, sq, 16, grid)
    _assert_matches_host(emu, sq[:40].copy(), 16, grid, want_posterior=True)  # T values per row: a few rows


def test_posterior_degenerate_rows_and_nan(emu):
    grid = PosteriorGrid.for_steps(300)
    sq = np.array([[0.0, 0.0], [np.inf, 1.0], [-3.0, -1.0]], np.float32)
    mode, mean, post, status = emu.posterior(sq, 10, grid, want_posterior=True)
    assert mode.tolist() == [0, 299, 0] and mean.tolist() == [0.0, 299.0, 0.0] and status == 0
    assert post[0, 0] == 1.0 and post[1, 299] == 1.0 and post.sum() == 3.0
    sq_nan = np.array([[1.0, 2.0], [1.0, np.nan], [4.0, 4.0]], np.float64)
    for want_posterior in (False, True):
        mode, mean, _, status = emu.posterior(sq_nan, 10, grid, want_posterior=want_posterior)
        assert status == 1  # STATUS_NAN_DISTANCE: the Python wrapper raises on it
        assert mode[1] == 0 and mean[1] == 0.0 and mode[2] > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_posterior_extreme_distances_match_the_host(emu, dtype):
    """From subnormal to beyond the grid's last boundary (all mass at T-1 while finite)."""
    scale = np.logspace(-40 if dtype == np.float64 else -30, 30, 400)
    sq = (scale[:, None] * np.array([0.5, 1.0, 1.5])).astype(dtype)
    mode, mean, _ = _assert_matches_host(emu, sq, 12, PosteriorGrid.for_steps(300), want_posterior=True)
    assert mode[0] == 0 and mode[-1] == 299 and mean[-1] == 299.0


def test_posterior_launcher_checks_its_arguments(emu):
    grid = PosteriorGrid.for_steps(300)
    with pytest.raises(ValueError, match="n_features must be > 2"):
        emu.posterior(np.ones((2, 2), np.float32), 2, grid)
    empty = PosteriorGrid(log_sigma2=np.zeros(0), inv_sigma2=np.zeros(0))
    with pytest.raises(ValueError, match="T must be >= 1"):
        emu.posterior(np.ones((2, 2), np.float32), 10, empty)
    mode, mean, _, _ = emu.posterior(np.ones((0, 3), np.float32), 10, grid)
    assert mode.shape == (0,) and mean.shape == (0,)


# ---- exact distances to given ids ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 3, 4, 5, 8, 9, 16, 17, 32, 33, 129])  # 4, 8, 16 and 32 lanes per query
@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 3), (200, 16)])  # 200 > 3 blocks x 64 groups of 4
def test_neighbour_sqdist_matches_the_host(emu, dtype, d, n, k):
    rng = np.random.default_rng(d * 100 + n)
    train = rng.standard_normal((50, d)).astype(dtype)
    queries = rng.standard_normal((n, d)).astype(dtype)
    ids = rng.integers(0, 50, size=(n, k), dtype=np.int64)
    want_sq, want_contrib = _core.neighbour_sqdist(queries, train, ids, True)
    sq, contrib, status = emu.neighbour_sqdist(queries, train, ids)
    assert status == 0
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(sq, want_sq, rtol=rtol)
    np.testing.assert_allclose(contrib, want_contrib, rtol=rtol, atol=1e-7)
    oracle_sq, oracle_contrib = neighbour_sqdist_oracle(queries, train, ids)
    np.testing.assert_allclose(sq, oracle_sq, rtol=1e-5)
    np.testing.assert_allclose(contrib, oracle_contrib, rtol=1e-5, atol=1e-6)
    sq_only, none, _ = emu.neighbour_sqdist(queries, train, ids, want_contribution=False)
    assert none is None
    np.testing.assert_array_equal(sq_only, sq)


def test_neighbour_sqdist_flags_bad_ids_and_checks_arguments(emu):
    x = np.ones((2, 4), np.float32)
    sq, _, status = emu.neighbour_sqdist(x, x, np.array([[0, 2], [-1, 1]], np.int64))
    assert status == 2  # STATUS_ID_OUT_OF_RANGE
    assert sq[0, 1] == 0.0 and sq[1, 0] == 0.0 and sq[0, 0] == 0.0
    with pytest.raises(ValueError, match="d >= 1"):
        emu.neighbour_sqdist(
            np.ones((2, 0), np.float32), np.ones((2, 0), np.float32), np.zeros((2, 1), np.int64)
        )


# ---- row-wise k smallest -------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 4])  # 4 rows > 3 blocks: the row loop repeats
@pytest.mark.parametrize("cols", [1, 2, 255, 256, 257, 1023, 1024, 1025, 3001])  # 1024 = one unrolled step
@pytest.mark.parametrize("k", [1, 5, 16, 17, 33, 64])
def test_smallest_per_row_matches_a_stable_sort(emu, rows, cols, k):
    rng = np.random.default_rng(rows * cols + k)
    values = rng.integers(0, max(2, cols // 3), size=(rows, cols)).astype(np.float32)  # many ties
    got_v, got_i = emu.smallest_per_row(values, k)
    order = np.argsort(values, axis=1, kind="stable")[:, :k]
    keep = min(k, cols)
    np.testing.assert_array_equal(got_i[:, :keep], order)
    np.testing.assert_array_equal(got_v[:, :keep], np.take_along_axis(values, order, axis=1))
    assert (got_i[:, keep:] == -1).all() and np.isnan(got_v[:, keep:]).all()


def test_smallest_per_row_gives_the_same_answer_under_every_schedule(emu, schedule):
    rng = np.random.default_rng(7)
    values = rng.integers(0, 40, size=(5, 700)).astype(np.float32)
    got_v, got_i = emu.smallest_per_row(values, 20, diagonal_offset=3)
    masked = values.copy()
    for r in range(5):
        masked[r, r + 3] = np.inf
    order = np.argsort(masked, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(got_i, order)
    np.testing.assert_array_equal(got_v, np.take_along_axis(values, order, axis=1))


def test_smallest_per_row_skips_the_diagonal_and_puts_nan_last(emu):
    values = np.arange(40, dtype=np.float32).reshape(4, 10)
    values[2, 4] = np.nan
    _, ids = emu.smallest_per_row(values, 10, id_offset=100, diagonal_offset=1)
    for r in range(4):
        assert 100 + r + 1 not in ids[r, :9]
    assert ids[2, 8] == 104  # the NaN came last among the nine usable columns
    assert ids[0, 9] == -1
    _, ids = emu.smallest_per_row(values, 10, diagonal_offset=-2)  # rows 0, 1 have no such column
    assert ids[0, 9] == 9 and ids[1, 9] == 9 and ids[2, 9] == -1


def test_smallest_per_row_reads_a_strided_block_into_a_strided_output(emu):
    rng = np.random.default_rng(11)
    block = rng.standard_normal((6, 300)).astype(np.float32)
    block[:, 250:] = -100.0  # beyond cols: must never be read as candidates
    got_v, got_i = emu.smallest_per_row(block, 7, cols=250, id_offset=5000, out_ld=12)
    order = np.argsort(block[:, :250], axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got_i[:, :7], order + 5000)
    np.testing.assert_array_equal(got_v[:, :7], np.take_along_axis(block, order, axis=1))
    assert (got_i[:, 7:] == -5).all() and (got_v[:, 7:] == -5.0).all()  # columns past k untouched


def test_smallest_per_row_launcher_checks_its_arguments(emu):
    values = np.zeros((2, 8), np.float32)
    max_k = emu.lib.dtpm_emu_smallest_per_row_max_k()
    assert max_k == 64
    with pytest.raises(ValueError, match="k must be in"):
        emu.smallest_per_row(values, max_k + 1)
    with pytest.raises(ValueError, match="out_ld"):
        emu.smallest_per_row(values, 4, out_ld=3)
    with pytest.raises(ValueError, match="ld >= cols"):
        emu.smallest_per_row(values, 4, cols=9)


# ---- the emulator itself -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        ("half_block_barrier", "64 threads wait in __syncthreads\\(\\) while 64 have exited"),
        (
            "barrier_inside_a_warp",
            "deadlock in block 0: 1 threads in __syncthreads\\(\\), 31 in a shuffle, 96 exited",
        ),
        ("shuffle_after_a_lane_exits", "lane 5, which has exited"),
        ("mask_omits_the_caller", "omits the calling lane"),
    ],
)
def test_emulator_reports_what_would_hang_or_be_undefined_on_a_gpu(emu, kernel, message):
    with pytest.raises(EmulationError, match=message):
        emu.selfcheck(kernel)


def test_emulator_schedules_expose_a_missing_barrier(emu):
    emu.selfcheck("read_without_barrier", 1.0)
    assert (emu.selfcheck("read_without_barrier", 2.0) == 2.0).all()  # forward: thread 0 wrote first
    emu.set_schedule("reverse")
    try:
        stale = emu.selfcheck("read_without_barrier", 3.0)
        assert (stale[1:] == 2.0).all() and stale[0] == 3.0  # the others read the old value
        assert (emu.selfcheck("read_after_barrier", 4.0) == 4.0).all()
    finally:
        emu.set_schedule("forward")


def test_emulator_shuffles_and_dynamic_shared_memory(emu, schedule):
    np.testing.assert_array_equal(emu.selfcheck("warp_sums"), 49628.0)
    assert np.isnan(emu.selfcheck("read_fresh_dynamic_shared")).all()


@pytest.mark.slow
def test_emulated_kernels_stay_within_their_arrays_under_address_sanitizer():
    """This file's tests again, with the emulation built under AddressSanitizer (about 2 minutes).

    An index slip that reads or writes one element past an array (which on a GPU may go
    unnoticed or corrupt a neighbouring buffer) stops the run with the kernel line that did it.
    """
    if os.environ.get(SANITIZE_ENV):
        pytest.skip("already inside the sanitized run")
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")

    def runtime(name):
        found = subprocess.run(
            [compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=False
        )
        path = Path(found.stdout.strip())
        return path if path.is_absolute() and path.exists() else None

    asan, cxx = runtime("libasan.so"), runtime("libstdc++.so")
    if asan is None or cxx is None:
        pytest.skip(f"{compiler} has no AddressSanitizer runtime")
    # Python is not linked with libstdc++: preload it too, so ASan finds the C++ throw it wraps.
    env = {
        **os.environ,
        SANITIZE_ENV: "address",
        "LD_PRELOAD": f"{asan} {cxx}",
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
    }
    # -s: no output capture in the child, so a report ASan prints before it exits reaches us.
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-s", "-p", "no:cacheprovider"]
    run = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    report = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"the sanitized run failed:\n{report}"
    assert " passed" in run.stdout and "AddressSanitizer" not in run.stdout

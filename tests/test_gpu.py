"""The CUDA path (issue 4): device kernels against the host kernels, device search against exact
search, and the detector on the GPU against the detector on the CPU.

Everything marked ``gpu`` needs a CUDA GPU, PyTorch with CUDA and dtpm_fast built with its
``_cuda`` module, and is skipped otherwise (with the reason). The tests at the top run
everywhere: they check what a machine without a GPU must do (refuse ``device="cuda"`` with a
reason, fall back under ``"auto"``, report the build consistently).
"""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest

import dtpm_fast
from dtpm_fast import DTPMNonParametric, _core, _device, _gpu
from dtpm_fast.schedule import PosteriorGrid
from oracles import knn_sqdist_oracle, neighbour_sqdist_oracle, posterior_oracle

CUDA_USABLE, CUDA_REASON = _device.cuda_status()


def _has_cuda_module() -> bool:
    return importlib.util.find_spec("dtpm_fast._cuda") is not None


def _cupy_or_skip():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no GPU")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"CuPy cannot use the GPU: {exc}")
    return cupy


# ---- run everywhere ----------------------------------------------------------------------------
def test_build_info_reports_cuda_module_consistently():
    assert dtpm_fast.build_info()["cuda"] is _has_cuda_module()


@pytest.mark.skipif(CUDA_USABLE, reason="this machine has a usable GPU")
def test_explicit_cuda_without_gpu_raises_with_reason(blobs):
    X_train, _, _ = blobs
    with pytest.raises(ValueError, match=r"device='cuda' was requested but CUDA is not usable: .+"):
        DTPMNonParametric(device="cuda").fit(X_train)


@pytest.mark.skipif(CUDA_USABLE, reason="this machine has a usable GPU")
def test_auto_falls_back_to_cpu_quietly(blobs):
    X_train, X_test, _ = blobs
    auto = DTPMNonParametric(device="auto").fit(X_train)
    cpu = DTPMNonParametric(device="cpu").fit(X_train)
    np.testing.assert_array_equal(auto.decision_function(X_test), cpu.decision_function(X_test))


@pytest.mark.skipif(not _has_cuda_module(), reason="dtpm_fast was built without its CUDA module")
def test_cuda_module_counts_devices_without_raising():
    from dtpm_fast import _cuda

    count = _cuda.device_count()
    assert count >= 0
    assert (_cuda.device_status() == "ok") == (count > 0)
    assert _cuda.architectures  # e.g. "80-real 90-real 90-virtual", or the user's CMAKE_CUDA_ARCHITECTURES


def test_gpu_wrappers_reject_host_arrays():
    with pytest.raises(ValueError, match="CUDA array"):
        _gpu.posterior(np.ones((3, 5)), 8, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="CUDA array"):
        _gpu.neighbour_sqdist(np.ones((3, 5)), np.ones((4, 5)), np.zeros((3, 1), dtype=np.int64))


def test_cuda_sources_and_bindings_keep_their_includes_apart():
    """CUDA sources never include pybind11; the bindings never include CUDA headers (issue 4)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "csrc"

    def includes(path):
        return re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.MULTILINE)

    cuda_sources = sorted((root / "cuda").glob("*.cu*")) + sorted((root / "cuda").glob("*.hpp"))
    bindings = sorted((root / "bindings").glob("*.cpp"))
    assert cuda_sources and bindings
    for path in cuda_sources:
        assert not [h for h in includes(path) if h.startswith("pybind11")], path
    assert any(h.startswith("pybind11") for path in bindings for h in includes(path))  # the check sees them
    for path in bindings:
        cuda_headers = [h for h in includes(path) if h.startswith("cuda") or h.endswith(".cuh")]
        assert not cuda_headers, f"{path} includes {cuda_headers}"


# ---- device kernels against the host kernels -----------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


def _random_sqdist(rng, n, k, d, dtype):
    """Squared distances spanning the grid, with zero, infinite and slightly negative rows mixed in."""
    per_dim = rng.gamma(1.0, 0.3, size=(n, 1)) * rng.uniform(0.5, 1.5, size=(n, k))
    sq = (per_dim * d).astype(dtype)
    if n >= 3:
        sq[0] = 0.0
        sq[1, 0] = np.inf
        sq[2, 0] = -1e-6
    return sq


def _assert_modes_agree(got, want):
    """Equal except rare +-1 at grid boundaries (float rounding)."""
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max(initial=0) <= 1
    assert np.count_nonzero(diff) <= max(1, len(want) // 1000)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 97, 255, 256, 257, 4099])
@pytest.mark.parametrize(("k", "d"), [(1, 3), (5, 8), (5, 64), (7, 501)])
def test_posterior_kernel_matches_host(torch, dtype, n, k, d):
    rng = np.random.default_rng(n * 1000 + d)
    sq = _random_sqdist(rng, n, k, d, dtype)
    grid = PosteriorGrid.for_steps(300)
    want_mode, want_mean, want_post = _core.posterior(
        sq, d, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    mode, mean, post = _gpu.posterior(
        torch.from_numpy(sq).cuda(), d, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    _assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(post.cpu().numpy(), want_post, atol=1e-6)
    _, oracle_mean, _ = posterior_oracle(sq, d)
    np.testing.assert_allclose(mean.cpu().numpy(), oracle_mean, rtol=1e-4, atol=1e-4)
    # mode/mean alone take the windowed one-thread-per-row kernel
    mode2, mean2, none = _gpu.posterior(torch.from_numpy(sq).cuda(), d, grid.log_sigma2, grid.inv_sigma2)
    assert none is None
    _assert_modes_agree(mode2.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean2.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("T", [2, 3, 300, 2048, 2049, 5000])
def test_posterior_kernel_grid_sizes_in_and_beyond_shared_memory(torch, T):
    rng = np.random.default_rng(T)
    sq = _random_sqdist(rng, 513, 5, 16, np.float32)
    grid = PosteriorGrid.for_steps(T)
    want_mode, want_mean, _ = _core.posterior(sq, 16, grid.log_sigma2, grid.inv_sigma2, True, True, False)
    mode, mean, _ = _gpu.posterior(torch.from_numpy(sq).cuda(), 16, grid.log_sigma2, grid.inv_sigma2)
    _assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_posterior_kernel_edge_cases(torch):
    grid = PosteriorGrid.for_steps(300)
    sq = torch.tensor([[0.0, 0.0], [float("inf"), 1.0]], device="cuda")
    mode, mean, post = _gpu.posterior(sq, 10, grid.log_sigma2, grid.inv_sigma2, True, True, True)
    assert mode.tolist() == [0, 299] and mean.tolist() == [0.0, 299.0]
    assert post[0, 0].item() == 1.0 and post[1, 299].item() == 1.0 and post.sum().item() == 2.0
    with pytest.raises(ValueError, match="NaN"):
        _gpu.posterior(
            torch.tensor([[1.0, float("nan")]], device="cuda"), 10, grid.log_sigma2, grid.inv_sigma2
        )
    with pytest.raises(ValueError, match="n_features must be > 2"):
        _gpu.posterior(torch.ones((2, 2), device="cuda"), 2, grid.log_sigma2, grid.inv_sigma2)
    with pytest.raises(ValueError, match="C-contiguous"):
        _gpu.posterior(torch.ones((4, 2), device="cuda").T, 10, grid.log_sigma2, grid.inv_sigma2)
    mode, mean, _ = _gpu.posterior(torch.ones((0, 5), device="cuda"), 10, grid.log_sigma2, grid.inv_sigma2)
    assert mode.shape == (0,) and mean.shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 3, 4, 5, 16, 17, 64, 129])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (3, 5), (97, 16)])
def test_neighbour_sqdist_kernel_matches_host(torch, dtype, d, n, k):
    rng = np.random.default_rng(d * 100 + n)
    train = rng.standard_normal((50, d)).astype(dtype)
    queries = rng.standard_normal((n, d)).astype(dtype)
    ids = rng.integers(0, 50, size=(n, k), dtype=np.int64)
    want_sq, want_contrib = _core.neighbour_sqdist(queries, train, ids, True)
    sq, contrib = _gpu.neighbour_sqdist(
        torch.from_numpy(queries).cuda(),
        torch.from_numpy(train).cuda(),
        torch.from_numpy(ids).cuda(),
        want_contribution=True,
    )
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(sq.cpu().numpy(), want_sq, rtol=rtol)
    np.testing.assert_allclose(contrib.cpu().numpy(), want_contrib, rtol=rtol, atol=1e-7)
    oracle_sq, _ = neighbour_sqdist_oracle(queries, train, ids)
    np.testing.assert_allclose(sq.cpu().numpy(), oracle_sq, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_neighbour_sqdist_kernel_rejects_bad_ids(torch):
    q = torch.ones((2, 4), device="cuda")
    with pytest.raises(ValueError, match="outside"):
        _gpu.neighbour_sqdist(q, q, torch.tensor([[0], [2]], device="cuda"))
    with pytest.raises(ValueError, match="int64"):
        _gpu.neighbour_sqdist(q, q, torch.tensor([[0], [1]], device="cuda", dtype=torch.int32))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("rows", [1, 3, 97])
@pytest.mark.parametrize("cols", [1, 2, 255, 256, 257, 1023, 1025, 5000])
@pytest.mark.parametrize("k", [1, 5, 16, 17, 33, 64])
def test_smallest_per_row_matches_stable_sort(torch, rows, cols, k):
    rng = np.random.default_rng(rows * cols + k)
    values = rng.integers(0, max(2, cols // 3), size=(rows, cols)).astype(np.float32)  # many ties
    got_v, got_i = _gpu.smallest_per_row(torch.from_numpy(values).cuda(), k)
    order = np.argsort(values, axis=1, kind="stable")[:, :k]
    keep = min(k, cols)
    np.testing.assert_array_equal(got_i.cpu().numpy()[:, :keep], order)
    np.testing.assert_array_equal(got_v.cpu().numpy()[:, :keep], np.take_along_axis(values, order, axis=1))
    assert (got_i.cpu().numpy()[:, keep:] == -1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_smallest_per_row_skips_diagonal_and_treats_nan_as_inf(torch):
    values = np.arange(40, dtype=np.float32).reshape(4, 10)
    values[2, 4] = np.nan
    _, i = _gpu.smallest_per_row(torch.from_numpy(values).cuda(), 10, id_offset=100, diagonal_offset=1)
    ids = i.cpu().numpy()
    for r in range(4):
        assert 100 + r + 1 not in ids[r, :9]
    assert ids[2, 8] == 104  # the NaN came last among the nine usable columns
    assert ids[0, 9] == -1


# ---- neighbour search on the device -----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("d", [3, 7, 64])
@pytest.mark.parametrize("k", [1, 5, 60])
# 4 KiB: 4 training rows x 256 queries per block; 1 MiB: all rows x 262 queries; 1 GiB: one block
@pytest.mark.parametrize("budget", [4096, 1 << 20, 1 << 30])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_brute_force_search_is_exact(torch, d, k, budget, leave_one_out):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(d + k)
    train = rng.standard_normal((997, d)).astype(np.float32)
    queries = train[:600] if leave_one_out else rng.standard_normal((600, d)).astype(np.float32)
    search = _gpu.BruteForceSearch(torch.from_numpy(train).cuda(), memory_budget=budget)
    sq, ids = search.search(torch.from_numpy(queries).cuda(), k, 0 if leave_one_out else None)
    sq, ids = sq.cpu().numpy(), ids.cpu().numpy()
    np.testing.assert_allclose(sq, knn_sqdist_oracle(queries, train, k, leave_one_out), rtol=1e-5, atol=1e-5)
    want, _ = _core.neighbour_sqdist(queries, train, ids, False)
    np.testing.assert_allclose(sq, want, rtol=1e-6)  # the ids really are at those distances
    if leave_one_out:
        assert not (ids == np.arange(600)[:, None]).any()
    else:
        faiss_sq, _ = faiss.knn(queries, train, k)
        np.testing.assert_allclose(sq, faiss_sq, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_brute_force_search_refuses_too_many_neighbours(torch):
    search = _gpu.BruteForceSearch(torch.zeros((5, 3), device="cuda"))
    with pytest.raises(ValueError, match="only 4 training rows"):
        search.search(torch.zeros((2, 3), device="cuda"), 5, leave_one_out_from=0)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA_USABLE and _gpu.faiss_gpu_available()), reason="needs faiss with GPU support")
def test_faiss_gpu_search_matches_brute_force(torch):
    rng = np.random.default_rng(3)
    train = torch.from_numpy(rng.standard_normal((3000, 16)).astype(np.float32)).cuda()
    q = train[:100].contiguous()
    for loo in (None, 0):
        want = _gpu.BruteForceSearch(train).search(q, 5, loo)
        got = _gpu.FaissGpuSearch(train).search(q, 5, loo)
        torch.testing.assert_close(got[0], want[0])
    search = _gpu.FaissGpuSearch(train)
    assert search.search(q, 2048)[0].shape == (100, 2048)
    with pytest.raises(ValueError, match="at most k=2048"):
        search.search(q, 2048, leave_one_out_from=0)


# ---- the detector, CPU against GPU ---------------------------------------------------------------
@pytest.fixture(scope="module", params=["synthetic", "cardio"])
def train_test(request):
    """(X_train, X_test): synthetic clusters (always there) and ADBench cardio (from ../shared)."""
    if request.param == "cardio":
        shared = request.getfixturevalue("shared_dir")
        with np.load(shared / "reference" / "golden_dte_np.npz") as data:
            return data["6_cardio/X_train"], data["6_cardio/X_test"]
    rng = np.random.default_rng(7)
    centres = rng.normal(0.0, 4.0, size=(5, 21))
    X = centres[rng.integers(0, 5, 1500)] + rng.standard_normal((1500, 21))
    X[300:306] = X[306]  # seven equal training rows: D2 = 0 in their leave-one-out scores
    test = np.vstack([X[:300] + 0.1 * rng.standard_normal((300, 21)), rng.normal(0.0, 8.0, (50, 21))])
    return X[300:].astype(np.float32) * 10 + 3, test.astype(np.float32) * 10 + 3


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("score", ["mean", "mode"])
def test_detector_on_gpu_matches_cpu(torch, train_test, score):
    X_train, X_test = train_test
    cpu = DTPMNonParametric(score=score, device="cpu", batch_size=97).fit(X_train)
    gpu = DTPMNonParametric(score=score, device="cuda", batch_size=97).fit(X_train)
    assert gpu._gpu is not None and cpu._gpu is None
    for got, want in (
        (gpu.decision_scores_, cpu.decision_scores_),
        (gpu.decision_function(X_test), cpu.decision_function(X_test)),
    ):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        if score == "mean":
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            _assert_modes_agree(got, want)
    assert gpu.threshold_ == pytest.approx(cpu.threshold_, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(gpu.posterior(X_test[:50]), cpu.posterior(X_test[:50]), atol=1e-6)
    np.testing.assert_allclose(gpu.explain(X_test[:50]), cpu.explain(X_test[:50]), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_detector_keeps_device_arrays_on_the_device(torch, blobs):
    X_train, X_test, _ = blobs
    det = DTPMNonParametric(device="cuda").fit(torch.from_numpy(X_train).cuda())
    want = det.decision_function(X_test)
    got = det.decision_function(torch.from_numpy(X_test).cuda())
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.float64
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    post = det.posterior(torch.from_numpy(X_test).cuda().double())  # float64 input is cast like on the CPU
    assert post.is_cuda and tuple(post.shape) == (len(X_test), det.T)
    with pytest.raises(ValueError, match="NaN or infinity"):
        det.decision_function(torch.full((2, X_train.shape[1]), float("nan"), device="cuda"))
    with pytest.raises(ValueError, match="features"):
        det.decision_function(torch.ones((2, 3), device="cuda"))
    cpu = DTPMNonParametric(device="cpu").fit(X_train)
    with pytest.raises(ValueError, match="device"):
        cpu.decision_function(torch.from_numpy(X_test).cuda())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_detector_accepts_cupy_on_the_callers_stream(blobs):
    cupy = _cupy_or_skip()
    X_train, X_test, _ = blobs
    det = DTPMNonParametric(device="cuda").fit(X_train)
    want = det.decision_function(X_test)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got = det.decision_function(cupy.asarray(X_test))
        explained = det.explain(cupy.asarray(X_test))
    stream.synchronize()
    assert isinstance(got, cupy.ndarray) and isinstance(explained, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    np.testing.assert_allclose(cupy.asnumpy(explained), det.explain(X_test), rtol=1e-6)
    sq = cupy.asarray(np.full((4, 5), 3.0, dtype=np.float32))
    grid = PosteriorGrid.for_steps(300)
    mode, mean, _ = _gpu.posterior(sq, 8, grid.log_sigma2, grid.inv_sigma2)
    assert isinstance(mode, cupy.ndarray) and isinstance(mean, cupy.ndarray)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_gpu_detector_pickles_like_a_cpu_one(blobs):
    X_train, X_test, _ = blobs
    det = DTPMNonParametric(device="cuda").fit(X_train)
    state_arrays = det._get_state()[1]
    assert all(isinstance(a, np.ndarray) for a in state_arrays.values())
    loaded = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(loaded.decision_function(X_test), det.decision_function(X_test))
    np.testing.assert_array_equal(loaded.decision_scores_, det.decision_scores_)

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
from dtpm_fast import DTPMNonParametric, _core, _device
from dtpm_fast.nonparametric import gpu as _gpu
from dtpm_fast.nonparametric.gpu import kernels as gpu_kernels
from dtpm_fast.schedule import PosteriorGrid
from kernel_cases import assert_modes_agree, random_sqdist
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


def test_auto_on_a_machine_without_a_device_does_not_import_torch():
    """The native module answers "no device" in microseconds; torch would take seconds to import.

    Run in a fresh interpreter, so that no other test has imported torch already.
    """
    import subprocess
    import sys

    if not _has_cuda_module():
        pytest.skip("needs dtpm_fast's CUDA module (without it the CPU is chosen before any import)")
    from dtpm_fast import _cuda

    if _cuda.device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    code = (
        "import sys, numpy as np\n"
        "from dtpm_fast import DTPMNonParametric\n"
        "X = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)\n"
        "DTPMNonParametric(device='auto').fit(X).decision_function(X)\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.skipif(not _has_cuda_module(), reason="dtpm_fast was built without its CUDA module")
def test_cuda_module_counts_devices_without_raising():
    from dtpm_fast import _cuda

    count = _cuda.device_count()
    assert count >= 0
    assert (_cuda.device_status() == "ok") == (count > 0)
    assert _cuda.architectures  # e.g. "80-real 90-real 90-virtual", or the user's CMAKE_CUDA_ARCHITECTURES


def _native_calls(source: str) -> list:
    """(binding name, positional count, keyword names) of every ``native().<name>(...)`` call."""
    import ast

    calls = []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None) if isinstance(node, ast.Call) else None
        inner = getattr(func, "value", None)
        if (
            isinstance(func, ast.Attribute)
            and isinstance(inner, ast.Call)
            and getattr(inner.func, "id", "") == "native"
        ):
            calls.append((func.attr, len(node.args), sorted(k.arg for k in node.keywords)))
    return calls


@pytest.mark.skipif(not _has_cuda_module(), reason="dtpm_fast was built without its CUDA module")
def test_gpu_layer_calls_the_cuda_bindings_by_their_own_argument_names():
    """Every kernel call in nonparametric/gpu/kernels.py names each binding argument, and the bindings accept them.

    Runs without a GPU (CI builds _cuda): the names come from the bindings' signatures, and each
    call is made for real with null pointers, which the launchers refuse before touching CUDA.
    """
    import inspect
    import re

    from dtpm_fast import _cuda

    calls = _native_calls(inspect.getsource(gpu_kernels))
    assert {name for name, _, _ in calls} == {"posterior", "neighbour_sqdist", "smallest_per_row"}
    for name, n_positional, keywords in calls:
        signature = getattr(_cuda, name).__doc__.splitlines()[0]  # "name(a: int, b: str, ...) -> None"
        params = re.findall(r"(\w+):", signature.split("(", 1)[1].rsplit(")", 1)[0])
        assert n_positional == 0 and keywords == sorted(params), (name, keywords, params)
        # "mode" stays non-null (never read: the null sqdist is refused first); with every output
        # null the posterior launcher would return early, having nothing to compute.
        pointers = {"sqdist", "log_sigma2", "inv_sigma2", "mean", "posterior", "status", "queries"}
        pointers |= {"train", "ids", "contribution", "values", "out_values", "out_ids", "stream"}
        fixed = {"dtype": "float32", "n_features": 3, "exclude_diagonal": False}
        args = {p: fixed.get(p, 0 if p in pointers else 1) for p in params}  # valid shapes, null pointers
        with pytest.raises(ValueError, match="null device pointer"):
            getattr(_cuda, name)(**args)


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


# ---- search choice and chunk sizes: pure Python, run everywhere ---------------------------------
def test_choose_search_takes_faiss_only_within_its_k_limit():
    assert _gpu.FAISS_GPU_MAX_K == 2048
    largest = _gpu.FAISS_GPU_MAX_K - 1  # n_neighbors + 1 (the row itself, when scoring the training set)
    assert _gpu.choose_search("auto", 5, True) == "faiss"
    assert _gpu.choose_search("auto", largest, True) == "faiss"
    assert _gpu.choose_search("auto", largest + 1, True) == "torch"  # A2: FAISS would refuse this k
    assert _gpu.choose_search("auto", 5, False) == "torch"
    assert _gpu.choose_search("torch", 5, True) == "torch"
    assert _gpu.choose_search("torch", 10_000, False) == "torch"
    assert _gpu.choose_search("faiss", largest, True) == "faiss"
    with pytest.raises(ValueError, match="(?i)faiss"):
        _gpu.choose_search("faiss", 5, False)
    with pytest.raises(ValueError, match="2048"):
        _gpu.choose_search("faiss", largest + 1, True)
    for unknown in ("FAISS", "brute", ""):
        with pytest.raises(ValueError, match="search"):
            _gpu.choose_search(unknown, 5, True)


def _column_probes(n_train: int) -> list[int]:
    """Chunk widths from 1 to n_train, about four per factor of two."""
    widths = {1, n_train}
    width = 1.0
    while width < n_train:
        widths.add(int(width))
        width *= 2**0.25
    return sorted(widths)


def test_search_chunks_keep_the_working_memory_within_the_budget():
    """(rows, cols) from ``search_chunks`` never hold more than the budget, and use most of it.

    The bound is owed whenever one query row against one training column fits; "most" (at least
    half) is owed when the whole search needs at least twice the budget and the leanest chunk
    width leaves room for four query rows.
    """
    work = _gpu.search_working_bytes
    budgets = [64 << 10, 1 << 20, 8 << 20, 64 << 20, 512 << 20, 2 << 30, 8 << 30]
    checked = filled = 0
    for n_train in (1, 2, 97, 1000, 65_537, 1_000_000, 5_000_000):
        for n_cand in sorted({min(c, n_train) for c in (16, 64, 65, 257, 4096)}):
            smallest = work(1, 1, n_train, n_cand)
            leanest_row = min(work(1, cols, n_train, n_cand) for cols in _column_probes(n_train))
            for n_queries in (1, 255, 256, 4097, 100_000, 2_000_000):
                everything = work(n_queries, n_train, n_train, n_cand)
                for budget in budgets:
                    rows, cols = _gpu.search_chunks(n_queries, n_train, n_cand, budget)
                    case = f"{n_queries=} {n_train=} {n_cand=} {budget=}: {rows=} {cols=}"
                    assert 1 <= rows <= n_queries and 1 <= cols <= n_train, case
                    used = work(rows, cols, n_train, n_cand)
                    if budget >= smallest:
                        assert used <= budget, f"{case}: {used} bytes"
                        checked += 1
                    if everything >= 2 * budget and budget >= 4 * leanest_row:
                        assert used >= budget // 2, f"{case}: only {used} bytes used"
                        filled += 1
    assert checked > 500 and filled > 200  # the conditions above leave plenty of cases to check


# torch 2.9 warns on every use of the legacy TF32 flags, which the TF32 tests set on purpose.
_IGNORE_TORCH_2_9_TF32_API_WARNING = pytest.mark.filterwarnings(
    "ignore:Please use the new API settings:UserWarning"
)


def _assert_tf32_off(matmul):
    if hasattr(matmul, "fp32_precision"):  # (reading allow_tf32 raises while the two APIs disagree)
        assert matmul.fp32_precision == "ieee"
    else:
        assert matmul.allow_tf32 is False


@_IGNORE_TORCH_2_9_TF32_API_WARNING
def test_full_fp32_matmul_switches_tf32_off_inside_and_restores_the_callers_setting():
    """The flags exist in CPU builds of torch too, so the save / restore logic runs everywhere."""
    torch = pytest.importorskip("torch")
    matmul = torch.backends.cuda.matmul
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # what a training script does to get TF32
        assert matmul.allow_tf32 is True
        with _gpu.full_fp32_matmul():
            _assert_tf32_off(matmul)
        assert matmul.allow_tf32 is True  # readable again (torch raises on a mixed state) and restored
        assert torch.get_float32_matmul_precision() == "high"
        with pytest.raises(KeyError), _gpu.full_fp32_matmul():  # restored on the way out of an error too
            raise KeyError("inside")
        assert matmul.allow_tf32 is True
        with _gpu.full_fp32_matmul():
            with _gpu.full_fp32_matmul():  # nested (or another thread): the outer exit restores
                pass
            _assert_tf32_off(matmul)
        assert matmul.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(saved)
    assert matmul.allow_tf32 is (saved != "highest")


def test_full_fp32_matmul_keeps_an_inherited_setting_inherited():
    """TF32 from torch.backends.fp32_precision: after the block, matmul still follows that setting."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.backends, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    matmul = torch.backends.cuda.matmul
    saved = torch.backends.fp32_precision, matmul.fp32_precision
    try:
        torch.backends.fp32_precision = "tf32"
        matmul.fp32_precision = "none"  # inherit
        assert matmul.fp32_precision == "tf32"
        with _gpu.full_fp32_matmul():
            assert matmul.fp32_precision == "ieee"
        torch.backends.fp32_precision = "ieee"  # the user turns TF32 off at the top level
        assert matmul.fp32_precision == "ieee"  # and matmul follows: nothing was pinned
    finally:
        torch.backends.fp32_precision, matmul.fp32_precision = saved


# ---- device kernels against the host kernels -----------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    import torch

    return torch


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 97, 255, 256, 257, 4099])
@pytest.mark.parametrize(("k", "d"), [(1, 3), (5, 8), (5, 64), (7, 501)])
def test_posterior_kernel_matches_host(torch, dtype, n, k, d):
    rng = np.random.default_rng(n * 1000 + d)
    sq = random_sqdist(rng, n, k, d, dtype)
    grid = PosteriorGrid.for_steps(300)
    want_mode, want_mean, want_post = _core.posterior(
        sq, d, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    mode, mean, post = _gpu.posterior(
        torch.from_numpy(sq).cuda(), d, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(post.cpu().numpy(), want_post, atol=1e-6)
    _, oracle_mean, _ = posterior_oracle(sq, d)
    np.testing.assert_allclose(mean.cpu().numpy(), oracle_mean, rtol=1e-4, atol=1e-4)
    # mode/mean alone take the windowed one-thread-per-row kernel
    mode2, mean2, none = _gpu.posterior(torch.from_numpy(sq).cuda(), d, grid.log_sigma2, grid.inv_sigma2)
    assert none is None
    assert_modes_agree(mode2.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean2.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("T", [2, 3, 300, 2048, 2049, 5000])
def test_posterior_kernel_grid_sizes_in_and_beyond_shared_memory(torch, T):
    rng = np.random.default_rng(T)
    sq = random_sqdist(rng, 513, 5, 16, np.float32)
    grid = PosteriorGrid.for_steps(T)
    want_mode, want_mean, _ = _core.posterior(sq, 16, grid.log_sigma2, grid.inv_sigma2, True, True, False)
    mode, mean, _ = _gpu.posterior(torch.from_numpy(sq).cuda(), 16, grid.log_sigma2, grid.inv_sigma2)
    assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_posterior_kernel_matches_host_on_a_million_rows(torch, dtype):
    """More rows than the GPU keeps resident (~270k threads on an H200): the grid-stride loop repeats."""
    rng = np.random.default_rng(1_000_003)
    sq = random_sqdist(rng, 1_000_003, 5, 16, dtype)
    grid = PosteriorGrid.for_steps(300)
    want_mode, want_mean, _ = _core.posterior(sq, 16, grid.log_sigma2, grid.inv_sigma2, True, True, False)
    mode, mean, _ = _gpu.posterior(torch.from_numpy(sq).cuda(), 16, grid.log_sigma2, grid.inv_sigma2)
    assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_full_posterior_beyond_shared_memory_matches_host(torch):
    """T = 3000 keeps the grid in global memory; 20k rows are more than the resident warps (one per row)."""
    rng = np.random.default_rng(3000)
    sq = random_sqdist(rng, 20_011, 5, 16, np.float32)
    grid = PosteriorGrid.for_steps(3000)
    want_mode, want_mean, want_post = _core.posterior(
        sq, 16, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    mode, mean, post = _gpu.posterior(
        torch.from_numpy(sq).cuda(), 16, grid.log_sigma2, grid.inv_sigma2, True, True, True
    )
    assert_modes_agree(mode.cpu().numpy(), want_mode)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-4, atol=1e-4)
    post = post.cpu().numpy()
    np.testing.assert_allclose(post, want_post, atol=1e-6)
    np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-9)


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
    sq = _assert_sqdist_matches_host(torch, queries, train, ids, rtol=1e-6 if dtype == np.float32 else 1e-12)
    oracle_sq, _ = neighbour_sqdist_oracle(queries, train, ids)
    np.testing.assert_allclose(sq, oracle_sq, rtol=1e-5)


def _assert_sqdist_matches_host(torch, queries, train, ids, rtol):
    """Device distances and per-feature contributions against ``_core``; returns the device distances."""
    want_sq, want_contrib = _core.neighbour_sqdist(queries, train, ids, True)
    sq, contrib = _gpu.neighbour_sqdist(
        torch.from_numpy(queries).cuda(),
        torch.from_numpy(train).cuda(),
        torch.from_numpy(ids).cuda(),
        want_contribution=True,
    )
    np.testing.assert_allclose(sq.cpu().numpy(), want_sq, rtol=rtol)
    np.testing.assert_allclose(contrib.cpu().numpy(), want_contrib, rtol=rtol, atol=1e-7)
    return sq.cpu().numpy()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("d", [5, 64])  # 4 and 32 lanes per query: ~67k and ~8k queries resident
def test_neighbour_sqdist_kernel_matches_host_on_300k_queries(torch, d):
    rng = np.random.default_rng(300_000 + d)
    n, k = 300_007, 16
    train = rng.standard_normal((1000, d)).astype(np.float32)
    queries = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.integers(0, 1000, size=(n, k), dtype=np.int64)
    _assert_sqdist_matches_host(torch, queries, train, ids, rtol=1e-6)


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


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_smallest_per_row_checks_the_callers_output_buffers(torch):
    """Wrong buffers raise instead of letting the kernel write int64 ids or k columns out of bounds."""
    host = np.random.default_rng(11).permutation(40).astype(np.float32).reshape(4, 10)
    values = torch.from_numpy(host).cuda()

    def buffers(
        rows=4, k=3, value_dtype=torch.float32, id_dtype=torch.int64, value_device="cuda", id_device="cuda"
    ):
        return (
            torch.empty((rows, k), dtype=value_dtype, device=value_device),
            torch.empty((rows, k), dtype=id_dtype, device=id_device),
        )

    wrong = {
        "int32 ids": buffers(id_dtype=torch.int32),
        "float64 values": buffers(value_dtype=torch.float64),
        "a row short": buffers(rows=3),
        "a column short": buffers(k=2),
        "ids on the host": buffers(id_device="cpu"),
        "values on the host": buffers(value_device="cpu"),
    }
    if torch.cuda.device_count() > 1:
        wrong["ids on another GPU"] = buffers(id_device="cuda:1")
    for what, (out_values, out_ids) in wrong.items():
        try:
            _gpu.smallest_per_row(values, 3, out_values=out_values, out_ids=out_ids)
        except ValueError:
            continue
        pytest.fail(f"smallest_per_row accepted out buffers with {what}")
    # column slices of wider buffers stay allowed: the search writes its candidates that way
    wide_values = torch.full((4, 9), -5.0, device="cuda")
    wide_ids = torch.full((4, 9), -7, dtype=torch.int64, device="cuda")
    _gpu.smallest_per_row(values, 3, out_values=wide_values[:, 3:6], out_ids=wide_ids[:, 3:6])
    order = np.argsort(host, axis=1, kind="stable")[:, :3]
    got_values, got_ids = wide_values.cpu().numpy(), wide_ids.cpu().numpy()
    np.testing.assert_array_equal(got_ids[:, 3:6], order)
    np.testing.assert_array_equal(got_values[:, 3:6], np.take_along_axis(host, order, axis=1))
    assert (np.delete(got_values, [3, 4, 5], axis=1) == -5.0).all()
    assert (np.delete(got_ids, [3, 4, 5], axis=1) == -7).all()


# ---- neighbour search on the device -----------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("d", [3, 7, 64])
@pytest.mark.parametrize("k", [1, 5, 60])
# 4 KiB and 1 MiB split both the queries and the training rows into chunks (search_chunks); 1 GiB: one block
@pytest.mark.parametrize("budget", [4096, 1 << 20, 1 << 30])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_brute_force_search_is_exact(torch, d, k, budget, leave_one_out):
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
    else:  # the leave-one-out half above needs no faiss
        faiss = pytest.importorskip("faiss")
        faiss_sq, _ = faiss.knn(queries, train, k)
        np.testing.assert_allclose(sq, faiss_sq, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_brute_force_search_refuses_too_many_neighbours(torch):
    search = _gpu.BruteForceSearch(torch.zeros((5, 3), device="cuda"))
    with pytest.raises(ValueError, match="only 4 training rows"):
        search.search(torch.zeros((2, 3), device="cuda"), 5, leave_one_out_from=0)


def _round_to_tf32(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 mantissa bits, nearest even), as tensor cores read them."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return rounded.view(np.float32)


@_IGNORE_TORCH_2_9_TF32_API_WARNING
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_brute_force_search_stays_exact_with_tf32_enabled(torch):
    """A5: TF32 switched on by the caller must not reach the search's matrix product, nor be switched off."""
    rng = np.random.default_rng(32)
    d, k = 8, 5
    # Rows near 100 with unit spread: TF32 keeps 10 mantissa bits, so its inputs move by up to
    # 0.06 and ||x||^2 - 2 q.x by tens; neighbour distances are a few units apart.
    train = (100.0 + rng.standard_normal((3000, d))).astype(np.float32)
    queries = (100.0 + rng.standard_normal((300, d))).astype(np.float32)
    want = knn_sqdist_oracle(queries, train, k)
    # The data really is TF32-sensitive: ranking by TF32-rounded scores misses a true neighbour
    # among 4k candidates in most rows.
    norms = _round_to_tf32((train.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)).astype(np.float64)
    scores = norms[None, :] - 2.0 * _round_to_tf32(queries).astype(np.float64) @ _round_to_tf32(train).T
    cand = np.argsort(scores, axis=1)[:, : 4 * k]
    cand_sq = ((queries[:, None, :].astype(np.float64) - train[cand]) ** 2).sum(axis=2)
    found = np.isclose(np.sort(cand_sq, axis=1)[:, :k], want, rtol=1e-9).all(axis=1)
    assert found.mean() < 0.5

    saved = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        search = _gpu.BruteForceSearch(torch.from_numpy(train).cuda())
        sq, ids = search.search(torch.from_numpy(queries).cuda(), k)
        det = DTPMNonParametric(n_neighbors=k, device="cuda").fit(train)
        scores_tf32 = det.decision_function(queries)
        assert torch.backends.cuda.matmul.allow_tf32 is True  # the caller's setting is left as it was
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
    np.testing.assert_allclose(sq.cpu().numpy(), want, rtol=1e-5, atol=1e-5)
    want_sq, _ = _core.neighbour_sqdist(queries, train, ids.cpu().numpy(), False)
    np.testing.assert_allclose(sq.cpu().numpy(), want_sq, rtol=1e-6)
    cpu = DTPMNonParametric(n_neighbors=k, device="cpu").fit(train)
    np.testing.assert_allclose(scores_tf32, cpu.decision_function(queries), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
@pytest.mark.parametrize("budget", [1 << 20, 8 << 20])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_brute_force_search_stays_within_its_memory_budget(torch, budget, leave_one_out):
    """A4: k = 100 (200 candidates, the top-k path) over 20k training rows in 1-8 MiB blocks."""
    rng = np.random.default_rng(20_000)
    train_np = rng.standard_normal((20_000, 16)).astype(np.float32)
    train = torch.from_numpy(train_np).cuda()
    queries_np = train_np[:5000] if leave_one_out else rng.standard_normal((5000, 16)).astype(np.float32)
    queries = torch.from_numpy(queries_np).cuda()
    loo = 0 if leave_one_out else None
    k = 100
    search = _gpu.BruteForceSearch(train, memory_budget=budget)
    search.search(queries[:300], k, loo)  # warm-up: cuBLAS workspace and the like are not the search's
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    # Requested bytes, not the allocator's blocks (which can be up to 1 MiB larger each).
    before = torch.cuda.memory_stats()["requested_bytes.all.current"]
    sq, ids = search.search(queries, k, loo)
    torch.cuda.synchronize()
    peak = torch.cuda.memory_stats()["requested_bytes.all.peak"] - before
    outputs = sq.numel() * sq.element_size() + ids.numel() * ids.element_size()
    slack = 256 << 10  # torch.topk / cuBLAS temporaries
    assert peak <= budget + outputs + slack, f"peak {peak} bytes > budget {budget} + outputs {outputs}"
    sample = np.arange(0, 5000, 125)
    want = _sampled_knn_oracle(queries_np, train_np, sample, k, leave_one_out)
    np.testing.assert_allclose(sq.cpu().numpy()[sample], want, rtol=1e-5, atol=1e-5)


def _sampled_knn_oracle(queries, train, sample, k, leave_one_out):
    """``knn_sqdist_oracle`` for the query rows ``sample`` only (leave_one_out: query i is train row i)."""
    if leave_one_out:  # the row itself is at distance 0, first in the sort (ties give the same values)
        return knn_sqdist_oracle(queries[sample], train, k + 1)[:, 1:]
    return knn_sqdist_oracle(queries[sample], train, k)


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
    """(X_train, X_test): synthetic clusters and ADBench cardio (from tests/data/golden_dte_np.npz)."""
    if request.param == "cardio":
        reference = request.getfixturevalue("reference_dir")
        with np.load(reference / "golden_dte_np.npz") as data:
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
    assert gpu._backend.device_name != "cpu" and cpu._backend.device_name == "cpu"
    for got, want in (
        (gpu.decision_scores_, cpu.decision_scores_),
        (gpu.decision_function(X_test), cpu.decision_function(X_test)),
    ):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        if score == "mean":
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            assert_modes_agree(got, want)
    assert gpu.threshold_ == pytest.approx(cpu.threshold_, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(gpu.posterior(X_test[:50]), cpu.posterior(X_test[:50]), atol=1e-6)
    np.testing.assert_allclose(gpu.explain(X_test[:50]), cpu.explain(X_test[:50]), rtol=1e-5, atol=1e-6)


def test_device_standardisation_is_the_host_rule_on_far_rows(torch):
    # The rule the GPU engine applies, run on CPU tensors: equal to Standardizer.transform,
    # including entries that overflow float32 (clipped float64 values, never +-inf).
    from dtpm_fast.standardize import Standardizer, standardize_tensor

    f32_max = np.finfo(np.float32).max
    rng = np.random.default_rng(5)
    scaler = Standardizer(rng.normal(size=4), rng.uniform(0.01, 3.0, size=4))
    X = rng.normal(size=(6, 4)).astype(np.float32)
    X[1] = f32_max
    X[2] = -f32_max
    X[3, 0] = np.float32(3e38)
    got = standardize_tensor(
        torch.from_numpy(X), torch.from_numpy(scaler.mean), torch.from_numpy(scaler.scale)
    ).numpy()
    want = scaler.transform(X)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[[1, 2, 3]], want[[1, 2, 3]])
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_far_rows_score_on_the_gpu_as_on_the_cpu(torch, blobs):
    X_train, _, _ = blobs
    f32_max = np.finfo(np.float32).max
    Q = np.vstack(
        [np.full((2, X_train.shape[1]), f32_max), np.full((1, X_train.shape[1]), 1e20), X_train[:5]]
    )
    Q[1] *= -1
    cpu = DTPMNonParametric(device="cpu").fit(X_train)
    gpu = DTPMNonParametric(device="cuda").fit(X_train)
    for queries in (Q, torch.from_numpy(Q.astype(np.float32)).cuda()):
        got = gpu.decision_function(queries)
        got = got.cpu().numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_allclose(got, cpu.decision_function(Q), rtol=1e-4, atol=1e-4)


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


# Busy-waits one thread for `cycles` clock ticks: later work on its stream queues behind it.
_SPIN_KERNEL = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
"""


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_detector_reads_cupy_input_on_the_callers_stream(blobs, monkeypatch):
    """Every native kernel launches on the caller's CuPy stream, which fills the input late.

    The caller's non-blocking stream spins ~0.1 s, then copies the data into ``x`` (zeros until
    then), then asks for the scores. Only that stream is synchronised before reading them.
    (DLPack already orders the input hand-over between streams, so the stream handles the
    kernels receive are recorded and checked as well.)
    """
    cupy = _cupy_or_skip()
    X_train, X_test, _ = blobs
    det = DTPMNonParametric(device="cuda").fit(X_train)
    want = det.decision_function(X_test)
    stale = det.decision_function(np.zeros_like(X_test))  # what reading x too early gives
    assert not np.allclose(stale, want)
    spin = cupy.RawKernel(_SPIN_KERNEL, "spin")
    data = cupy.asarray(X_test)
    x = cupy.zeros_like(data)
    cupy.cuda.Device().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)  # no implicit ordering with the legacy default stream
    handles = []
    launch_stream = gpu_kernels.stream_handle
    monkeypatch.setattr(
        gpu_kernels, "stream_handle", lambda t: handles.append(launch_stream(t)) or handles[-1]
    )
    with stream:
        spin((1,), (1,), (np.int64(200_000_000),))  # ~0.1 s at 2 GHz
        x[...] = data
        got = det.decision_function(x)
    stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    assert handles and set(handles) == {stream.ptr}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_detector_accepts_tensors_that_require_grad(torch, blobs):
    X_train, X_test, _ = blobs
    x_train = torch.from_numpy(X_train).cuda().requires_grad_()
    x_test = torch.from_numpy(X_test).cuda().requires_grad_()
    det = DTPMNonParametric(device="cuda").fit(x_train)
    plain = DTPMNonParametric(device="cuda").fit(x_train.detach())
    np.testing.assert_array_equal(det.decision_scores_, plain.decision_scores_)
    got = det.decision_function(x_test)
    assert isinstance(got, torch.Tensor) and got.is_cuda
    np.testing.assert_array_equal(
        got.detach().cpu().numpy(), plain.decision_function(x_test.detach()).cpu().numpy()
    )
    np.testing.assert_array_equal(got.detach().cpu().numpy(), plain.decision_function(X_test))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not CUDA_USABLE, reason=f"no usable GPU: {CUDA_REASON}")
def test_posterior_of_host_rows_holds_one_batch_on_the_device(torch):
    """B5: NumPy in, NumPy out: the (n, T) result is gathered on the host, batch by batch."""
    rng = np.random.default_rng(5)
    X_train = rng.standard_normal((1000, 8)).astype(np.float32)
    X = rng.standard_normal((200_000, 8)).astype(np.float32)
    det = DTPMNonParametric(device="cuda", batch_size=4096).fit(X_train)
    det.posterior(X[:10])  # the device state and the workspaces exist before we measure
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_stats()["requested_bytes.all.current"]
    post = det.posterior(X)
    peak = torch.cuda.memory_stats()["requested_bytes.all.peak"] - before
    whole = X.shape[0] * det.T * 8  # 480 MB; one batch is 4096 * 300 * 8 = 9.8 MB
    assert peak < whole / 4, f"peak {peak} bytes on the device for a {whole}-byte result"
    assert isinstance(post, np.ndarray) and post.dtype == np.float64 and post.shape == (len(X), det.T)
    cpu = DTPMNonParametric(device="cpu").fit(X_train)
    for rows in (slice(0, 500), slice(len(X) - 500, None)):
        np.testing.assert_allclose(post[rows], cpu.posterior(X[rows]), atol=1e-6)


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

"""The CUDA path of the non-parametric detector: device arrays in, device arrays out.

Three layers, each usable on its own:

* thin wrappers over the native ``_cuda`` kernels (``posterior``, ``neighbour_sqdist``,
  ``smallest_per_row``) taking torch or CuPy arrays without copies (DLPack /
  ``__cuda_array_interface__``) and launching on the caller's current stream;
* exact k-nearest-neighbour search on the device (``BruteForceSearch``: chunked
  ``||x||^2 - 2 q.x`` matrix products under a memory budget, a one-pass row selection kernel,
  then exact re-ranking of the candidates; ``FaissGpuSearch`` when faiss has GPU support);
* ``NonParametricEngine``, the fitted state of ``DTPMNonParametric`` on one GPU.

torch is imported lazily: importing this module never needs torch, CuPy or a GPU.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

FAISS_GPU_MAX_K = 2048  # FAISS's GPU k-selection limit (k and nprobe)
# Working memory of one brute-force search chunk (search_working_bytes). 8 GiB keeps ~2,000 query
# rows per chunk against 1M training rows, enough blocks to fill a large GPU; the engine takes
# at most a quarter of the free memory.
DEFAULT_MEMORY_BUDGET = 8 << 30
_MIN_QUERY_ROWS = 256  # query rows per chunk we try to keep when the training set is chunked
_CANDIDATE_MARGIN = 11  # extra candidates re-ranked exactly: K = 5 -> 16, one kernel instance


# ---- native module and arrays ----------------------------------------------------------------
def native():
    """The ``_cuda`` extension; raises ImportError when this build has no CUDA module."""
    from dtpm_fast import _cuda

    return _cuda


def _torch():
    import torch

    return torch


def is_device_array(x) -> bool:
    """True for CUDA arrays (torch CUDA tensors, CuPy arrays, anything with __cuda_array_interface__)."""
    if type(x).__module__.split(".")[0] == "torch":
        # A tensor that requires grad raises RuntimeError from __cuda_array_interface__.
        return bool(getattr(x, "is_cuda", False))
    return hasattr(x, "__cuda_array_interface__")


def array_kind(x) -> str:
    """The kind of an array: "cupy" (CuPy), "torch" (other device arrays) or "numpy" (host data)."""
    if not is_device_array(x):
        return "numpy"
    return "cupy" if type(x).__module__.split(".")[0] == "cupy" else "torch"


def as_tensor(x):
    """A torch view of a device array (no copy) or the tensor itself."""
    torch = _torch()
    if isinstance(x, torch.Tensor):
        return x.detach()  # scores need no autograd graph; a view, no copy
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    return torch.as_tensor(x, device="cuda")  # __cuda_array_interface__: zero-copy


def to_kind(t, kind: str):
    """Return tensor ``t`` as ``kind``: the tensor, a CuPy view (no copy) or a host NumPy array."""
    if kind == "numpy":
        return t.detach().cpu().numpy()
    if kind == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t


def to_numpy(x) -> np.ndarray:
    """Host copy of a device array (or ``np.asarray`` of host data)."""
    if is_device_array(x):
        return as_tensor(x).detach().cpu().numpy()
    return np.asarray(x)


@contextlib.contextmanager
def caller_stream(x):
    """Run torch work on the stream the caller of ``x`` is using (CuPy's current stream for CuPy)."""
    if array_kind(x) == "cupy":
        import cupy

        torch = _torch()
        device = as_tensor(x).device
        with cupy.cuda.Device(device.index):  # CuPy's current stream is per device
            ptr = cupy.cuda.get_current_stream().ptr
        # ptr 0 is CuPy's default (legacy null) stream, which is torch's default stream too
        stream = torch.cuda.ExternalStream(ptr, device=device) if ptr else torch.cuda.default_stream(device)
        with torch.cuda.stream(stream):
            yield
    else:
        yield


def _stream_handle(t) -> int:
    return _torch().cuda.current_stream(t.device).cuda_stream


def _ptr(t) -> int:
    return 0 if t is None else int(t.data_ptr())


def _require(t, name: str, dtypes: tuple, ndim: int, device=None):
    """Check a tensor for the kernels: CUDA, dtype, dimensions, C-contiguous, same device."""
    torch = _torch()
    if not isinstance(t, torch.Tensor) or not t.is_cuda:
        raise ValueError(f"{name} must be a CUDA array (torch or CuPy), got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise ValueError(
            f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}; convert it first"
        )
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be C-contiguous; call .contiguous() (torch) or cupy.ascontiguousarray")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    return t


def _check_status(status, what: str) -> None:
    """Raise the error a kernel flagged (this synchronises with the stream)."""
    bits = int(status.item())
    _cuda = native()
    if bits & _cuda.STATUS_NAN_DISTANCE:
        raise ValueError(f"{what}: a squared distance is NaN")
    if bits & _cuda.STATUS_ID_OUT_OF_RANGE:
        raise ValueError(f"{what}: a neighbour id is outside [0, n_train)")


# ---- kernel wrappers -------------------------------------------------------------------------
def posterior(
    sqdist,
    n_features: int,
    log_sigma2,
    inv_sigma2,
    want_mode: bool = True,
    want_mean: bool = True,
    want_posterior: bool = False,
    check: bool = True,
):
    """Posterior over the diffusion time on the GPU; the device twin of ``_core.posterior``.

    Parameters
    ----------
    sqdist : device array of shape (n, k), float32 or float64, C-contiguous
        Squared distances to the K nearest neighbours.
    n_features : int
        Data dimension d (> 2).
    log_sigma2, inv_sigma2 : array of shape (T,), float64
        The grid tables, host (validated, then copied) or device.
    want_mode, want_mean, want_posterior : bool
        Which outputs to compute.
    check : bool, default True
        Read the kernel's status word and raise ValueError on a NaN distance (one sync).

    Returns
    -------
    (mode int32 (n,) | None, mean float64 (n,) | None, posterior float64 (n, T) | None)
        Device arrays of the kind of ``sqdist`` (torch or CuPy), on its device.
    """
    kind = array_kind(sqdist)
    if kind == "numpy":
        raise ValueError("sqdist must be a CUDA array; use dtpm_fast._core.posterior for host arrays")
    torch = _torch()
    with caller_stream(sqdist):
        d2 = _require(as_tensor(sqdist), "sqdist", (torch.float32, torch.float64), 2)
        log_s2, inv_s2 = device_grid(log_sigma2, inv_sigma2, d2.device)
        mode, mean, post = posterior_tensors(
            d2, n_features, log_s2, inv_s2, want_mode, want_mean, want_posterior, check
        )
        return tuple(None if t is None else to_kind(t, kind) for t in (mode, mean, post))


def device_grid(log_sigma2, inv_sigma2, device):
    """The grid tables as float64 tensors on ``device``; host tables are validated first."""
    torch = _torch()
    tables = []
    for name, table in (("log_sigma2", log_sigma2), ("inv_sigma2", inv_sigma2)):
        if is_device_array(table):
            t = _require(as_tensor(table), name, (torch.float64,), 1, device)
        else:
            host = np.ascontiguousarray(table, dtype=np.float64)
            if host.ndim != 1 or host.size < 1 or not np.all(np.isfinite(host)):
                raise ValueError(f"{name} must be a finite 1-D array with at least one step")
            t = torch.from_numpy(host).to(device)
        tables.append(t)
    if tables[0].shape != tables[1].shape:
        raise ValueError("log_sigma2 and inv_sigma2 must have the same length")
    if not is_device_array(log_sigma2):
        host_log = np.asarray(log_sigma2, dtype=np.float64)
        if np.any(np.diff(host_log) <= 0) or np.any(np.asarray(inv_sigma2, dtype=np.float64) <= 0):
            raise ValueError("schedule: sigma2 must be positive and increase strictly with t")
    return tables[0], tables[1]


def posterior_tensors(d2, n_features, log_s2, inv_s2, want_mode, want_mean, want_posterior, check=True):
    """``posterior`` on checked torch tensors (same device, contiguous); returns tensors."""
    torch = _torch()
    n, k = d2.shape
    T = int(log_s2.shape[0])
    dev = d2.device
    mode = torch.empty(n, dtype=torch.int32, device=dev) if want_mode else None
    mean = torch.empty(n, dtype=torch.float64, device=dev) if want_mean else None
    post = torch.empty((n, T), dtype=torch.float64, device=dev) if want_posterior else None
    status = torch.zeros(1, dtype=torch.int32, device=dev)
    if n > 0:
        native().posterior(
            sqdist=_ptr(d2),
            dtype=str(d2.dtype).removeprefix("torch."),
            n=n,
            k=k,
            n_features=int(n_features),
            log_sigma2=_ptr(log_s2),
            inv_sigma2=_ptr(inv_s2),
            T=T,
            mode=_ptr(mode),
            mean=_ptr(mean),
            posterior=_ptr(post),
            status=_ptr(status),
            stream=_stream_handle(d2),
        )
        if check:
            _check_status(status, "posterior")
    return mode, mean, post


def neighbour_sqdist(queries, train, ids, want_contribution: bool = False, check: bool = True):
    """Exact squared distances to given neighbour ids on the GPU; twin of ``_core.neighbour_sqdist``.

    Parameters
    ----------
    queries : device array of shape (n, d), float32 or float64
    train : device array of shape (n_train, d), same dtype
    ids : device array of shape (n, k), int64, each in [0, n_train)
    want_contribution : bool
        Also return the per-feature contributions, mean over the k ids of (x_j - nbr_j)^2.
    check : bool, default True
        Raise ValueError on an out-of-range id (one sync).

    Returns
    -------
    (sqdist (n, k), contribution (n, d) | None), dtype of the inputs, kind of ``queries``.
    """
    kind = array_kind(queries)
    if kind == "numpy":
        raise ValueError("queries must be a CUDA array; use dtpm_fast._core.neighbour_sqdist for host arrays")
    torch = _torch()
    with caller_stream(queries):
        q = _require(as_tensor(queries), "queries", (torch.float32, torch.float64), 2)
        x = _require(as_tensor(train), "train", (q.dtype,), 2, q.device)
        i = _require(as_tensor(ids), "ids", (torch.int64,), 2, q.device)
        if x.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} features but train has {x.shape[1]}")
        if i.shape[0] != q.shape[0]:
            raise ValueError(f"ids must have one row per query ({q.shape[0]}), got {i.shape[0]}")
        sq, contrib = sqdist_tensors(q, x, i, want_contribution, check)
        return to_kind(sq, kind), None if contrib is None else to_kind(contrib, kind)


def sqdist_tensors(q, x, ids, want_contribution=False, check=True):
    """``neighbour_sqdist`` on checked torch tensors; returns tensors."""
    torch = _torch()
    n, d = q.shape
    k = ids.shape[1]
    sq = torch.empty((n, k), dtype=q.dtype, device=q.device)
    contrib = torch.empty((n, d), dtype=q.dtype, device=q.device) if want_contribution else None
    status = torch.zeros(1, dtype=torch.int32, device=q.device)
    if n > 0 and k > 0:
        native().neighbour_sqdist(
            queries=_ptr(q),
            train=_ptr(x),
            dtype=str(q.dtype).removeprefix("torch."),
            n=n,
            n_train=x.shape[0],
            d=d,
            ids=_ptr(ids),
            k=k,
            sqdist=_ptr(sq),
            contribution=_ptr(contrib),
            status=_ptr(status),
            stream=_stream_handle(q),
        )
        if check:
            _check_status(status, "neighbour_sqdist")
    return sq, contrib


def smallest_per_row(
    values, k: int, id_offset: int = 0, diagonal_offset: int | None = None, out_values=None, out_ids=None
):
    """The k smallest entries of each row of a float32 CUDA matrix, ascending, with int64 column ids.

    ``diagonal_offset=o`` skips column ``i + o`` in row ``i`` (leave-one-out). Rows with fewer
    than k usable columns get id -1 (value NaN) in the missing places. ``out_values``/``out_ids``
    may be strided column slices of larger buffers (row stride = their ``stride(0)``).
    """
    torch = _torch()
    v = _require(as_tensor(values), "values", (torch.float32,), 2)
    rows, cols = v.shape
    if (out_values is None) != (out_ids is None):
        raise ValueError("pass both out_values and out_ids, or neither")
    if out_values is None:
        out_values = torch.empty((rows, k), dtype=torch.float32, device=v.device)
        out_ids = torch.empty((rows, k), dtype=torch.int64, device=v.device)
    for buf, name, dtype in ((out_values, "out_values", torch.float32), (out_ids, "out_ids", torch.int64)):
        if not isinstance(buf, torch.Tensor) or buf.device != v.device or buf.dtype != dtype:
            raise ValueError(f"{name} must be a {dtype} tensor on {v.device}")
        if tuple(buf.shape) != (rows, k):
            raise ValueError(f"{name} must have shape {(rows, k)}, got {tuple(buf.shape)}")
    if out_values.stride(1) != 1 or out_ids.stride(1) != 1 or out_values.stride(0) != out_ids.stride(0):
        raise ValueError("out_values and out_ids must share a row stride and have unit column stride")
    if rows > 0:
        native().smallest_per_row(
            values=_ptr(v),
            rows=rows,
            cols=cols,
            ld=cols,
            k=k,
            id_offset=id_offset,
            exclude_diagonal=diagonal_offset is not None,
            diagonal_offset=diagonal_offset or 0,
            out_values=_ptr(out_values),
            out_ids=_ptr(out_ids),
            out_ld=out_values.stride(0),
            stream=_stream_handle(v),
        )
    return out_values, out_ids


# ---- neighbour search on the device ----------------------------------------------------------
def faiss_gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _n_candidates(k: int, n_available: int) -> int:
    """Candidates re-ranked exactly: k plus a margin against float32 rounding of the norm expansion."""
    return min(n_available, max(k + _CANDIDATE_MARGIN, 2 * k))


def _drop_self(ids, first_row: int):
    """Remove each row's own id (or the last candidate when absent): the leave-one-out rule."""
    torch = _torch()
    rows = torch.arange(first_row, first_row + ids.shape[0], device=ids.device)
    is_self = ids == rows[:, None]
    absent = ~is_self.any(dim=1)
    is_self[absent, -1] = True
    return ids[~is_self].view(ids.shape[0], ids.shape[1] - 1)


def search_working_bytes(rows: int, cols: int, n_train: int, n_cand: int, n_features: int = 0) -> int:
    """Device bytes one chunk of ``BruteForceSearch.search`` holds at once (an upper bound).

    Per query row: the float32 score block (``cols`` columns), the candidate values and ids of
    every column chunk (``min(n_cand, cols)`` slots each, 4 + 8 bytes), the merge / re-rank /
    sort temporaries of ``n_cand`` candidates (48 bytes each, generous) and the augmented query.
    """
    n_chunks = -(-n_train // cols)
    slots = n_chunks * min(n_cand, cols)
    width = (n_features + 1 + 3) // 4 * 4
    return rows * (4 * cols + 12 * slots + 48 * n_cand + 4 * width)


def search_chunks(n_queries: int, n_train: int, n_cand: int, memory_budget: int, n_features: int = 0):
    """(query rows, training columns) per chunk so that ``search_working_bytes`` fits the budget.

    Keeps the whole training set in one block when at least ``_MIN_QUERY_ROWS`` query rows (or
    all of them) then fit; otherwise halves the column chunk until they do, or takes the chunk
    that is cheapest per row. Never below one row (a budget too small for one row is exceeded,
    by the least possible, rather than refused).
    """
    target = max(1, min(n_queries, _MIN_QUERY_ROWS))
    cheapest = None  # (bytes per query row, cols)
    cols = n_train
    while True:
        per_row = search_working_bytes(1, cols, n_train, n_cand, n_features)
        if memory_budget // per_row >= target:
            return max(1, min(n_queries, memory_budget // per_row)), cols
        if cheapest is None or per_row < cheapest[0]:
            cheapest = (per_row, cols)
        if cols == 1:
            per_row, cols = cheapest
            return max(1, min(n_queries, memory_budget // per_row)), cols
        cols = (cols + 1) // 2


class _FullFp32Matmul:
    """Plain float32 matrix products (no TF32) while any thread is inside, the setting restored after.

    A user who enabled TF32 (``torch.set_float32_matmul_precision("high")``) would otherwise get
    candidate scores ~1e-3 coarse and an "exact" search that can miss neighbours. The flag is
    process-wide, so entries are counted under a lock: the first thread in saves and sets it, the
    last one out restores it (other threads' matmuls run in full precision meanwhile). Uses the
    ``fp32_precision`` API where torch has it (reading ``allow_tf32`` raises in torch while the two
    APIs disagree).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    @staticmethod
    def _flag():
        matmul = _torch().backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):
            return matmul, "fp32_precision", "ieee"
        return matmul, "allow_tf32", False  # torch < 2.9

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                matmul, name, strict = self._flag()
                self._saved = getattr(matmul, name)  # the effective value (inherited or set)
                if self._saved != strict:
                    setattr(matmul, name, strict)
            self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                matmul, name, strict = self._flag()
                if self._saved != strict:
                    if name == "fp32_precision":
                        # "none" inherits from torch.backends(.cuda).fp32_precision again; set the
                        # saved value explicitly only when it had been set on matmul itself.
                        setattr(matmul, name, "none")
                    if getattr(matmul, name) != self._saved:
                        setattr(matmul, name, self._saved)


_FULL_FP32_MATMUL = _FullFp32Matmul()


def full_fp32_matmul() -> _FullFp32Matmul:
    """Context manager: no TF32 in matrix products inside it (see ``_FullFp32Matmul``)."""
    return _FULL_FP32_MATMUL


class BruteForceSearch:
    """Exact k-NN on the GPU with torch: chunked matrix products, row selection, exact re-ranking.

    The training rows are kept as ``[-2 x, ||x||^2, 0...]`` so one plain float32 matrix product
    against ``[q, 1, 0...]`` gives ``||x||^2 - 2 q.x`` (the query norm does not change the
    ranking). Each block of scores is written once and read once by ``smallest_per_row``; the
    candidates (k plus a margin) are then re-ranked with exact explicit-difference distances.
    The products run in full float32 whatever the caller's TF32 setting (``full_fp32_matmul``).

    Parameters
    ----------
    train : torch.Tensor of shape (n_train, d), float32, CUDA
    memory_budget : int
        Bytes of working memory for one chunk: score block plus candidate buffers
        (``search_working_bytes``); the (n, k) results come on top.
    """

    def __init__(self, train, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        torch = _torch()
        self.train = train
        n, d = train.shape
        width = (d + 1 + 3) // 4 * 4  # 16-byte aligned rows for the GEMM
        aug = torch.zeros((n, width), dtype=torch.float32, device=train.device)
        aug[:, :d] = -2.0 * train
        aug[:, d] = (train * train).sum(dim=1)
        self._train_aug = aug
        self._width = width
        self.memory_budget = int(memory_budget)
        if self.memory_budget < 4 * 1024:
            raise ValueError(f"memory_budget must be at least 4096 bytes, got {memory_budget}")

    def search(self, Q, k: int, leave_one_out_from: int | None = None):
        """Exact k nearest training rows of each query.

        Parameters
        ----------
        Q : torch.Tensor of shape (n, d), float32, CUDA, C-contiguous
        k : int
        leave_one_out_from : int, optional
            Query row i is training row ``leave_one_out_from + i`` and must not be its own neighbour.

        Returns
        -------
        (sqdist float32 (n, k), ids int64 (n, k)) tensors, ascending exact distances.
        """
        torch = _torch()
        _cuda = native()
        n, d = Q.shape
        n_train = self.train.shape[0]
        available = n_train - (1 if leave_one_out_from is not None else 0)
        if k > available:
            raise ValueError(f"k={k} neighbours requested but only {available} training rows are available")
        n_cand = _n_candidates(k, available)
        use_kernel = n_cand <= _cuda.smallest_per_row_max_k()
        rows, cols = search_chunks(n, n_train, n_cand, self.memory_budget, d)
        # Column chunks and their candidate slots: min(n_cand, chunk width) each.
        chunks, n_slots = [], 0
        for c0 in range(0, n_train, cols):
            c1 = min(n_train, c0 + cols)
            chunks.append((c0, c1, n_slots, min(n_cand, c1 - c0)))
            n_slots += chunks[-1][3]
        out_sq = torch.empty((n, k), dtype=torch.float32, device=Q.device)
        out_ids = torch.empty((n, k), dtype=torch.int64, device=Q.device)
        q_aug = torch.zeros((min(rows, n), self._width), dtype=torch.float32, device=Q.device)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            qa = q_aug[: r1 - r0]
            qa[:, :d] = Q[r0:r1]
            qa[:, d] = 1.0
            cand_val = torch.empty((r1 - r0, n_slots), dtype=torch.float32, device=Q.device)
            cand_ids = torch.empty_like(cand_val, dtype=torch.int64)
            for c0, c1, first_slot, slots in chunks:
                with full_fp32_matmul():
                    scores = qa @ self._train_aug[c0:c1].T
                diag = None if leave_one_out_from is None else leave_one_out_from + r0 - c0
                where = slice(first_slot, first_slot + slots)
                if use_kernel:
                    smallest_per_row(scores, slots, c0, diag, cand_val[:, where], cand_ids[:, where])
                else:
                    self._topk_fallback(scores, slots, c0, diag, cand_val[:, where], cand_ids[:, where])
                del scores  # free this block before the next one is allocated
            if len(chunks) > 1:  # NaN marks empty slots and sorts last
                _, pos = torch.topk(cand_val, n_cand, dim=1, largest=False, sorted=True)
                cand_ids = cand_ids.gather(1, pos)
            cand_ids = cand_ids.contiguous()
            exact, _ = sqdist_tensors(Q[r0:r1], self.train, cand_ids, check=False)
            exact.masked_fill_(cand_ids < 0, float("inf"))  # empty slots (never among the first k)
            exact_sorted, pos = torch.sort(exact, dim=1, stable=True)
            out_sq[r0:r1] = exact_sorted[:, :k]
            out_ids[r0:r1] = cand_ids.gather(1, pos[:, :k])
            # Free this chunk's buffers before the next chunk allocates its own: the budget
            # (search_working_bytes) counts one chunk's buffers, not two.
            del cand_val, cand_ids, exact, exact_sorted, pos
        return out_sq, out_ids

    @staticmethod
    def _topk_fallback(scores, n_cand, col_offset, diag, out_val, out_ids):
        """torch.topk for candidate counts beyond the selection kernel (k > 64)."""
        torch = _torch()
        rows, cols = scores.shape
        if diag is not None:
            r = torch.arange(rows, device=scores.device)
            keep = (r + diag >= 0) & (r + diag < cols)
            scores[r[keep], r[keep] + diag] = float("inf")
        usable = min(n_cand, cols)
        val, idx = torch.topk(scores, usable, dim=1, largest=False, sorted=True)
        out_val[:, :usable] = val
        out_ids[:, :usable] = idx + col_offset
        if diag is not None:  # the excluded column may have come back when a row had too few others
            excluded = idx == (torch.arange(rows, device=scores.device)[:, None] + diag)
            out_val[:, :usable][excluded] = float("nan")
            out_ids[:, :usable][excluded] = -1
        out_val[:, usable:] = float("nan")
        out_ids[:, usable:] = -1


class FaissGpuSearch:
    """Candidate search with FAISS on the GPU, then exact re-ranking.

    "flat": ``faiss.knn_gpu`` brute force over the training tensor (exact, no index copy);
    "ivf": ``GpuIndexIVFFlat`` (approximate; rows it leaves short are searched exactly).

    Only built when ``faiss_gpu_available()``. FAISS's GPU k-selection is limited to
    k <= 2048 (and nprobe <= 2048): larger values raise ValueError.
    """

    def __init__(self, train, kind: str = "flat", nlist: int | None = None, nprobe: int = 8):
        import faiss
        import faiss.contrib.torch_utils

        self.train = train
        n, d = train.shape
        device = train.device.index or 0
        self._res = faiss.StandardGpuResources()
        self._device = device
        self.index = None
        if kind == "ivf":
            if nprobe > FAISS_GPU_MAX_K:
                raise ValueError(f"nprobe={nprobe} exceeds FAISS's GPU limit of {FAISS_GPU_MAX_K}")
            cfg = faiss.GpuIndexIVFFlatConfig()
            cfg.device = device
            nlist = nlist or max(1, int(4 * math.sqrt(n)))
            self.index = faiss.GpuIndexIVFFlat(self._res, d, nlist, faiss.METRIC_L2, cfg)
            self.index.train(train)
            self.index.nprobe = nprobe
            self.index.add(train)
        elif kind != "flat":
            raise ValueError(f"FAISS GPU index kind must be 'flat' or 'ivf', got {kind!r}")
        self.exact = kind == "flat"
        self._exact = None  # brute force, built on first need

    def search(self, Q, k: int, leave_one_out_from: int | None = None):
        """Same contract as ``BruteForceSearch.search``."""
        torch = _torch()
        n_train = self.train.shape[0]
        extra = 1 if leave_one_out_from is not None else 0
        if k > n_train - extra:
            raise ValueError(
                f"k={k} neighbours requested but only {n_train - extra} training rows are available"
            )
        if k + extra > FAISS_GPU_MAX_K:
            raise ValueError(
                f"FAISS GPU search supports at most k={FAISS_GPU_MAX_K} neighbours (asked {k + extra}, "
                "including the row itself when scoring the training set); use fewer neighbours or search='torch'"
            )
        n_cand = min(_n_candidates(k, n_train - extra), FAISS_GPU_MAX_K - extra) + extra
        import faiss
        import faiss.contrib.torch_utils as tu

        stream = getattr(tu, "using_stream", None)
        ctx = stream(self._res) if stream is not None else contextlib.nullcontext()
        with ctx:
            if self.index is None:
                _, ids = faiss.knn_gpu(self._res, Q, self.train, n_cand, device=self._device)
            else:
                _, ids = self.index.search(Q, n_cand)
        if (ids < 0).any():  # IVF came back short: exact candidates for those rows (self included)
            rows = torch.nonzero((ids < 0).any(dim=1)).flatten()
            if self._exact is None:
                self._exact = BruteForceSearch(self.train)
            ids[rows] = self._exact.search(Q[rows].contiguous(), n_cand)[1]
        if extra:
            ids = _drop_self(ids, leave_one_out_from)
        exact_sq, _ = sqdist_tensors(Q, self.train, ids.contiguous(), check=False)
        exact_sorted, pos = torch.sort(exact_sq, dim=1, stable=True)
        return exact_sorted[:, :k].contiguous(), ids.gather(1, pos[:, :k])


# ---- the detector's GPU state ----------------------------------------------------------------
SEARCH_KINDS = ("auto", "torch", "faiss")


def choose_search(search: str, n_neighbors: int, faiss_available: bool) -> str:
    """The neighbour search a GPU engine uses: "faiss" or "torch".

    "auto" takes FAISS when it has GPU support and the query fits its k limit (``n_neighbors``
    plus the row itself when the training set is scored), else the torch brute force, which has
    no such limit. "faiss" insists and raises ValueError when it cannot be used.
    """
    if search not in SEARCH_KINDS:
        raise ValueError(f"search must be one of {SEARCH_KINDS}, got {search!r}")
    fits = n_neighbors + 1 <= FAISS_GPU_MAX_K
    if search == "faiss":
        if not faiss_available:
            raise ValueError("search='faiss' needs faiss with GPU support (faiss-gpu); use search='torch'")
        if not fits:
            raise ValueError(
                f"FAISS GPU search supports at most k={FAISS_GPU_MAX_K} neighbours including the row "
                f"itself (n_neighbors={n_neighbors}); use search='torch' or 'auto'"
            )
        return "faiss"
    return "faiss" if search == "auto" and faiss_available and fits else "torch"


class NonParametricEngine:
    """The fitted state of ``DTPMNonParametric`` on one GPU, and its scoring.

    Holds the standardised training rows, the standardiser statistics and the grid tables on
    the device; queries are standardised, searched and scored there. Host (NumPy) queries are
    uploaded ``batch_size`` rows at a time and the results come back as NumPy; device queries
    (torch or CuPy) give device results of the same kind on the caller's stream.

    Parameters
    ----------
    train : ndarray of shape (n_train, d), float32
        Standardised training rows (the detector keeps this host copy for saving).
    scaler_mean, scaler_scale : ndarray of shape (d,), float64
        The standardiser; queries get ``(X - mean) / scale`` in float32 like on the CPU.
    log_sigma2, inv_sigma2 : ndarray of shape (T,), float64
        The posterior grid.
    n_neighbors : int
    device : str or torch.device, default "cuda"
    search : {"auto", "torch", "faiss"}
        See ``choose_search``: "auto" uses FAISS GPU when available and k fits its limit, else the
        torch brute force.
    batch_size : int
        Query rows standardised, searched and scored at a time.
    memory_budget : int, optional
        Working memory of one search chunk (default 8 GiB, at most a quarter of free memory).
    faiss_index : {"flat", "ivf"}, default "flat"
        The FAISS GPU index when FAISS is used ("ivf" is approximate, its candidates re-ranked).
    faiss_params : dict, optional
        ``nlist`` and ``nprobe`` for "ivf".
    """

    def __init__(
        self,
        train,
        scaler_mean,
        scaler_scale,
        log_sigma2,
        inv_sigma2,
        n_neighbors: int,
        device="cuda",
        search: str = "auto",
        batch_size: int = 65536,
        memory_budget: int | None = None,
        faiss_index: str = "flat",
        faiss_params: dict | None = None,
    ):
        torch = _torch()
        choose_search(search, n_neighbors, faiss_available=True)  # reject bad values before any work
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"device must be a CUDA device, got {device!r}")
        self.device = torch.device(
            "cuda", dev.index if dev.index is not None else torch.cuda.current_device()
        )
        self.n_neighbors = int(n_neighbors)
        self.batch_size = int(batch_size)
        self.n_features = int(train.shape[1])
        self.train = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)).to(self.device)
        self._mean = torch.from_numpy(np.asarray(scaler_mean, dtype=np.float64)).to(self.device)
        self._scale = torch.from_numpy(np.asarray(scaler_scale, dtype=np.float64)).to(self.device)
        self.log_sigma2, self.inv_sigma2 = device_grid(log_sigma2, inv_sigma2, self.device)
        self._home_stream = torch.cuda.current_stream(self.device)
        self.T = int(self.log_sigma2.shape[0])
        self.search_kind = choose_search(search, self.n_neighbors, faiss_gpu_available())
        if self.search_kind == "faiss":
            params = faiss_params or {}
            self._search = FaissGpuSearch(
                self.train, faiss_index, params.get("nlist"), params.get("nprobe", 8)
            )
        else:
            if memory_budget is None:
                free, _ = torch.cuda.mem_get_info(self.device)
                memory_budget = max(1 << 20, min(DEFAULT_MEMORY_BUDGET, free // 4))
            self._search = BruteForceSearch(self.train, memory_budget)

    # ---- inputs ------------------------------------------------------------------------------
    def _as_device_matrix(self, X, name: str = "X"):
        """A device array as a float32 (n, d) tensor (no copy when already so), checked like check_matrix."""
        torch = _torch()
        t = as_tensor(X)
        if t.device != self.device:
            raise ValueError(
                f"{name} is on {t.device} but the detector was fitted on {self.device}; move it there"
            )
        if t.is_complex():
            raise ValueError(f"{name} must be real-valued, got complex dtype {t.dtype}.")
        if t.ndim != 2:
            hint = " Reshape a single sample with X.reshape(1, -1)." if t.ndim == 1 else ""
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {t.ndim}-D.{hint}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(
                f"{name} is empty: shape {tuple(t.shape)}; need at least one row and one feature."
            )
        if t.shape[1] != self.n_features:
            raise ValueError(
                f"{name} has {t.shape[1]} features, but the detector was fitted with {self.n_features}."
            )
        t = t.to(torch.float32).contiguous()
        finite = torch.isfinite(t).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ValueError(
                f"{name} contains NaN or infinity in {bad.numel()} row(s) (first: row {int(bad[0])}); "
                "impute or drop them before scoring."
            )
        return t

    def _standardize(self, t):
        """(X - mean) / scale in float32, the CPU Standardizer's arithmetic on float32 input."""
        return ((t - self._mean.to(t.dtype)) / self._scale.to(t.dtype)).contiguous()

    def _batches(self, X, standardized: bool):
        """Yield (start, stop, standardised float32 batch on the device) over X (host or device)."""
        torch = _torch()
        on_device = is_device_array(X)
        n = X.shape[0]
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            if on_device:
                batch = X[start:stop]
            else:
                batch = torch.from_numpy(np.ascontiguousarray(X[start:stop], dtype=np.float32)).to(
                    self.device
                )
            yield start, stop, batch if standardized else self._standardize(batch)

    # ---- scoring -----------------------------------------------------------------------------
    def score_rows(
        self, X, want_mode=True, want_mean=True, want_posterior=False, standardized=False, leave_one_out=False
    ):
        """Mode int32 (n,), mean float64 (n,), posterior float64 (n, T) tensors (or None).

        ``X`` is a checked float32 host array (C-contiguous; results on the host) or a tensor from
        ``_as_device_matrix`` (results on the device).
        ``leave_one_out`` means X is the training set itself, row i excluded from its own neighbours.
        """
        torch = _torch()
        n = X.shape[0]
        # Host queries get host results, copied batch by batch: device memory stays bounded by
        # batch_size even for the (n, T) posterior.
        where = self.device if is_device_array(X) else torch.device("cpu")
        mode = torch.empty(n, dtype=torch.int32, device=where) if want_mode else None
        mean = torch.empty(n, dtype=torch.float64, device=where) if want_mean else None
        post = torch.empty((n, self.T), dtype=torch.float64, device=where) if want_posterior else None
        for start, stop, Q in self._batches(X, standardized):
            sq, _ = self._search.search(Q, self.n_neighbors, start if leave_one_out else None)
            m, mu, p = posterior_tensors(
                sq,
                self.n_features,
                self.log_sigma2,
                self.inv_sigma2,
                want_mode,
                want_mean,
                want_posterior,
                check=False,
            )  # finite inputs: no NaN
            for out, part in ((mode, m), (mean, mu), (post, p)):
                if out is not None:
                    out[start:stop] = part
        return mode, mean, post

    def train_scores(self):
        """Leave-one-out (mode, mean) of the training rows, as NumPy int32 / float64 arrays."""
        mode, mean, _ = self.score_rows(self.train, standardized=True, leave_one_out=True)
        return mode.cpu().numpy(), mean.cpu().numpy()

    def _run(self, X, fn):
        """Apply ``fn(checked X)`` on the caller's stream and return results as the kind of X."""
        kind = array_kind(X)
        with caller_stream(X):
            checked = self._as_device_matrix(X) if kind != "numpy" else X
            result = to_kind(fn(checked), kind)
            self._order_after_current_stream()
            return result

    def _order_after_current_stream(self) -> None:
        """Make the fit-time stream wait for the work just queued on the caller's stream.

        The fitted tensors were allocated on the stream current at fit time; if they are freed
        (a refit, dropping the detector), torch's allocator may reuse their memory on that
        stream at once. Waiting here orders such reuse after the caller's reads. (Not
        ``record_stream``: it would keep the raw handle of a CuPy stream that may be destroyed
        before the tensors are freed.)
        """
        torch = _torch()
        stream = torch.cuda.current_stream(self.device)
        if stream != self._home_stream:
            self._home_stream.wait_stream(stream)

    def decision_function(self, X, score: str = "mean"):
        """Scores float64 (n,): posterior mean or mode of t; NumPy for NumPy input, else device."""

        def run(x):
            mode, mean, _ = self.score_rows(x, want_mode=score == "mode", want_mean=score == "mean")
            return mean if score == "mean" else mode.to(_torch().float64)

        return self._run(X, run)

    def posterior(self, X):
        """Posterior float64 (n, T), rows summing to 1; NumPy for NumPy input, else device."""
        return self._run(X, lambda x: self.score_rows(x, False, False, True)[2])

    def explain(self, X):
        """Per-feature contributions float32 (n, d) in standardised units; rows sum to D2."""
        torch = _torch()

        def run(x):
            where = self.device if is_device_array(x) else torch.device("cpu")  # as in score_rows
            out = torch.empty((x.shape[0], self.n_features), dtype=torch.float32, device=where)
            for start, stop, Q in self._batches(x, standardized=False):
                _, ids = self._search.search(Q, self.n_neighbors)
                out[start:stop] = sqdist_tensors(Q, self.train, ids, want_contribution=True, check=False)[1]
            return out

        return self._run(X, run)

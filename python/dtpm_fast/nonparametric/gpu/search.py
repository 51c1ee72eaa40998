"""Exact k-nearest-neighbour search on the device.

``BruteForceSearch``: chunked ``||x||^2 - 2 q.x`` matrix products under a memory budget, a
one-pass row selection kernel, then exact re-ranking of the candidates. ``FaissGpuSearch`` when
faiss has GPU support. ``choose_search`` picks between them.
"""

from __future__ import annotations

import contextlib
import math
import threading

from dtpm_fast.nonparametric.gpu.arrays import native, torch_module
from dtpm_fast.nonparametric.gpu.kernels import smallest_per_row, sqdist_tensors

FAISS_GPU_MAX_K = 2048  # FAISS's GPU k-selection limit (k and nprobe)
# Working memory of one brute-force search chunk (search_working_bytes). 8 GiB keeps ~2,000 query
# rows per chunk against 1M training rows, enough blocks to fill a large GPU; the engine takes
# at most a quarter of the free memory.
DEFAULT_MEMORY_BUDGET = 8 << 30
_MIN_QUERY_ROWS = 256  # query rows per chunk we try to keep when the training set is chunked
_CANDIDATE_MARGIN = 11  # extra candidates re-ranked exactly: K = 5 -> 16, one kernel instance


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
    torch = torch_module()
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
        matmul = torch_module().backends.cuda.matmul
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
        torch = torch_module()
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
        torch = torch_module()
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
        torch = torch_module()
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
        torch = torch_module()
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

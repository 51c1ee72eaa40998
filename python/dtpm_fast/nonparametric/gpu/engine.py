"""The fitted state of ``DTPMNonParametric`` on one GPU (its device backend).

torch is imported lazily: importing this module never needs torch, CuPy or a GPU.
"""

from __future__ import annotations

import numpy as np

from dtpm_fast._validation import check_n_features, check_shape
from dtpm_fast.nonparametric.gpu.arrays import (
    array_kind,
    as_tensor,
    caller_stream,
    is_device_array,
    to_kind,
    torch_module,
)
from dtpm_fast.nonparametric.gpu.kernels import device_grid, posterior_tensors, sqdist_tensors
from dtpm_fast.nonparametric.gpu.search import (
    DEFAULT_MEMORY_BUDGET,
    BruteForceSearch,
    FaissGpuSearch,
    choose_search,
    faiss_gpu_available,
)
from dtpm_fast.standardize import standardize_tensor


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
        torch = torch_module()
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
        torch = torch_module()
        t = as_tensor(X)
        if t.device != self.device:
            raise ValueError(
                f"{name} is on {t.device} but the detector was fitted on {self.device}; move it there"
            )
        if t.is_complex():
            raise ValueError(f"Complex data not supported: {name} must be real-valued, got dtype {t.dtype}.")
        check_shape(tuple(t.shape), name)
        check_n_features(t, self.n_features, name)
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
        return standardize_tensor(t, self._mean, self._scale)

    def _batches(self, X, standardized: bool):
        """Yield (start, stop, standardised float32 batch on the device) over X (host or device)."""
        torch = torch_module()
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
        torch = torch_module()
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
        torch = torch_module()
        stream = torch.cuda.current_stream(self.device)
        if stream != self._home_stream:
            self._home_stream.wait_stream(stream)

    def decision_function(self, X, score: str = "mean"):
        """Scores float64 (n,): posterior mean or mode of t; NumPy for NumPy input, else device."""

        def run(x):
            mode, mean, _ = self.score_rows(x, want_mode=score == "mode", want_mean=score == "mean")
            return mean if score == "mean" else mode.to(torch_module().float64)

        return self._run(X, run)

    def posterior(self, X):
        """Posterior float64 (n, T), rows summing to 1; NumPy for NumPy input, else device."""
        return self._run(X, lambda x: self.score_rows(x, False, False, True)[2])

    def explain(self, X):
        """Per-feature contributions float32 (n, d) in standardised units; rows sum to D2."""
        torch = torch_module()

        def run(x):
            where = self.device if is_device_array(x) else torch.device("cpu")  # as in score_rows
            out = torch.empty((x.shape[0], self.n_features), dtype=torch.float32, device=where)
            for start, stop, Q in self._batches(x, standardized=False):
                _, ids = self._search.search(Q, self.n_neighbors)
                out[start:stop] = sqdist_tensors(Q, self.train, ids, want_contribution=True, check=False)[1]
            return out

        return self._run(X, run)


class GpuBackend(NonParametricEngine):
    """``DTPMNonParametric``'s backend on one GPU: the engine over the detector's fitted state.

    The state stays on the host too (the detector saves it); FAISS GPU is used with
    ``index="ivf"`` as IVF, otherwise as an exact flat search (see ``choose_search``).
    """

    def __init__(self, state, n_neighbors: int, batch_size: int, device: str):
        super().__init__(
            state.train,
            state.scaler.mean,
            state.scaler.scale,
            state.grid.log_sigma2,
            state.grid.inv_sigma2,
            n_neighbors,
            device=device,
            batch_size=batch_size,
            faiss_index="ivf" if state.index_kind == "ivf" else "flat",
            faiss_params=state.index_params,
        )
        self.device_name = device

    def index_bytes(self) -> None:
        """Nothing: the host index is rebuilt from the training rows when the file is loaded."""
        return None

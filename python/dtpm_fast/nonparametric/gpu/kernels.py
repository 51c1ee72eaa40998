"""Thin wrappers over the native ``_cuda`` kernels: the device twins of ``_core``'s kernels.

Each takes torch or CuPy arrays without copies and launches on the caller's current stream.
"""

from __future__ import annotations

import numpy as np

from dtpm_fast.nonparametric.gpu.arrays import (
    array_kind,
    as_tensor,
    caller_stream,
    data_pointer,
    is_device_array,
    native,
    require_tensor,
    stream_handle,
    to_kind,
    torch_module,
)


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
    torch = torch_module()
    with caller_stream(sqdist):
        d2 = require_tensor(as_tensor(sqdist), "sqdist", (torch.float32, torch.float64), 2)
        log_s2, inv_s2 = device_grid(log_sigma2, inv_sigma2, d2.device)
        mode, mean, post = posterior_tensors(
            d2, n_features, log_s2, inv_s2, want_mode, want_mean, want_posterior, check
        )
        return tuple(None if t is None else to_kind(t, kind) for t in (mode, mean, post))


def device_grid(log_sigma2, inv_sigma2, device):
    """The grid tables as float64 tensors on ``device``; host tables are validated first."""
    torch = torch_module()
    tables = []
    for name, table in (("log_sigma2", log_sigma2), ("inv_sigma2", inv_sigma2)):
        if is_device_array(table):
            t = require_tensor(as_tensor(table), name, (torch.float64,), 1, device)
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
    torch = torch_module()
    n, k = d2.shape
    T = int(log_s2.shape[0])
    dev = d2.device
    mode = torch.empty(n, dtype=torch.int32, device=dev) if want_mode else None
    mean = torch.empty(n, dtype=torch.float64, device=dev) if want_mean else None
    post = torch.empty((n, T), dtype=torch.float64, device=dev) if want_posterior else None
    status = torch.zeros(1, dtype=torch.int32, device=dev)
    if n > 0:
        native().posterior(
            sqdist=data_pointer(d2),
            dtype=str(d2.dtype).removeprefix("torch."),
            n=n,
            k=k,
            n_features=int(n_features),
            log_sigma2=data_pointer(log_s2),
            inv_sigma2=data_pointer(inv_s2),
            T=T,
            mode=data_pointer(mode),
            mean=data_pointer(mean),
            posterior=data_pointer(post),
            status=data_pointer(status),
            stream=stream_handle(d2),
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
    torch = torch_module()
    with caller_stream(queries):
        q = require_tensor(as_tensor(queries), "queries", (torch.float32, torch.float64), 2)
        x = require_tensor(as_tensor(train), "train", (q.dtype,), 2, q.device)
        i = require_tensor(as_tensor(ids), "ids", (torch.int64,), 2, q.device)
        if x.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} features but train has {x.shape[1]}")
        if i.shape[0] != q.shape[0]:
            raise ValueError(f"ids must have one row per query ({q.shape[0]}), got {i.shape[0]}")
        sq, contrib = sqdist_tensors(q, x, i, want_contribution, check)
        return to_kind(sq, kind), None if contrib is None else to_kind(contrib, kind)


def sqdist_tensors(q, x, ids, want_contribution=False, check=True):
    """``neighbour_sqdist`` on checked torch tensors; returns tensors."""
    torch = torch_module()
    n, d = q.shape
    k = ids.shape[1]
    sq = torch.empty((n, k), dtype=q.dtype, device=q.device)
    contrib = torch.empty((n, d), dtype=q.dtype, device=q.device) if want_contribution else None
    status = torch.zeros(1, dtype=torch.int32, device=q.device)
    if n > 0 and k > 0:
        native().neighbour_sqdist(
            queries=data_pointer(q),
            train=data_pointer(x),
            dtype=str(q.dtype).removeprefix("torch."),
            n=n,
            n_train=x.shape[0],
            d=d,
            ids=data_pointer(ids),
            k=k,
            sqdist=data_pointer(sq),
            contribution=data_pointer(contrib),
            status=data_pointer(status),
            stream=stream_handle(q),
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
    torch = torch_module()
    v = require_tensor(as_tensor(values), "values", (torch.float32,), 2)
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
            values=data_pointer(v),
            rows=rows,
            cols=cols,
            ld=cols,
            k=k,
            id_offset=id_offset,
            exclude_diagonal=diagonal_offset is not None,
            diagonal_offset=diagonal_offset or 0,
            out_values=data_pointer(out_values),
            out_ids=data_pointer(out_ids),
            out_ld=out_values.stride(0),
            stream=stream_handle(v),
        )
    return out_values, out_ids


# ---- neighbour search on the device ----------------------------------------------------------

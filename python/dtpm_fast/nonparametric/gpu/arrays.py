"""Device arrays for the GPU path: torch and CuPy inputs as torch views, the caller's stream.

torch is imported lazily: importing this module never needs torch, CuPy or a GPU.
"""

from __future__ import annotations

import contextlib

import numpy as np


def native():
    """The ``_cuda`` extension; raises ImportError when this build has no CUDA module."""
    from dtpm_fast import _cuda

    return _cuda


def torch_module():
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
    torch = torch_module()
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

        torch = torch_module()
        device = as_tensor(x).device
        with cupy.cuda.Device(device.index):  # CuPy's current stream is per device
            ptr = cupy.cuda.get_current_stream().ptr
        # ptr 0 is CuPy's default (legacy null) stream, which is torch's default stream too
        stream = torch.cuda.ExternalStream(ptr, device=device) if ptr else torch.cuda.default_stream(device)
        with torch.cuda.stream(stream):
            yield
    else:
        yield


def stream_handle(t) -> int:
    return torch_module().cuda.current_stream(t.device).cuda_stream


def data_pointer(t) -> int:
    return 0 if t is None else int(t.data_ptr())


def require_tensor(t, name: str, dtypes: tuple, ndim: int, device=None):
    """Check a tensor for the kernels: CUDA, dtype, dimensions, C-contiguous, same device."""
    torch = torch_module()
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

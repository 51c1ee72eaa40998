"""Run-time device selection: "auto" | "cpu" | "cuda"."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def cuda_status(native: bool = True) -> tuple[bool, str]:
    """(usable, reason): whether the CUDA path can run here, and if not, why.

    ``native=True`` also requires dtpm_fast's own CUDA module (the non-parametric kernels);
    the torch-only models pass ``native=False``.
    """
    if native:
        try:
            from dtpm_fast import _cuda
        except ImportError as exc:
            return False, f"dtpm_fast was built without its CUDA module ({exc}); rebuild with nvcc available"
        # Asked first: it costs microseconds, importing torch costs seconds (a CPU-only machine
        # would otherwise pay that on every fit with device="auto").
        if _cuda.device_count() == 0:  # no driver, no device, or a driver too old for our runtime
            return False, f"dtpm_fast's CUDA module finds no usable GPU: {_cuda.device_status()}"
    try:
        import torch
    except ImportError:
        return False, "the CUDA path needs PyTorch with CUDA support (pip install torch)"
    if not torch.cuda.is_available():
        return False, "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
    return True, "ok"


def resolve_device(device: str, native: bool = True) -> str:
    """Map "auto" | "cpu" | "cuda" (or "cuda:N") to the device to use; explicit CUDA must be usable."""
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    usable, reason = cuda_status(native)
    if device == "auto":
        return "cuda" if usable else "cpu"
    if not usable:
        raise ValueError(f"device={device!r} was requested but CUDA is not usable: {reason}")
    return device

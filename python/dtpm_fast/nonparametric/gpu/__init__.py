"""The GPU backend of ``DTPMNonParametric``, split along its concerns.

``arrays`` (torch / CuPy / DLPack interop and the caller's stream), ``kernels`` (thin wrappers
over the native ``_cuda`` kernels), ``search`` (exact and FAISS search on the device) and
``engine`` (the fitted state on one GPU). torch is imported lazily: importing any of them needs
no torch, CuPy or GPU. The names below are this package's surface for the tests and benchmarks.
"""

from dtpm_fast.nonparametric.gpu.arrays import is_device_array, stream_handle, to_numpy
from dtpm_fast.nonparametric.gpu.engine import GpuBackend, NonParametricEngine
from dtpm_fast.nonparametric.gpu.kernels import (
    device_grid,
    neighbour_sqdist,
    posterior,
    posterior_tensors,
    smallest_per_row,
    sqdist_tensors,
)
from dtpm_fast.nonparametric.gpu.search import (
    FAISS_GPU_MAX_K,
    BruteForceSearch,
    FaissGpuSearch,
    choose_search,
    faiss_gpu_available,
    full_fp32_matmul,
    search_chunks,
    search_working_bytes,
)

__all__ = [
    "FAISS_GPU_MAX_K",
    "BruteForceSearch",
    "FaissGpuSearch",
    "GpuBackend",
    "NonParametricEngine",
    "choose_search",
    "device_grid",
    "faiss_gpu_available",
    "full_fp32_matmul",
    "is_device_array",
    "neighbour_sqdist",
    "posterior",
    "posterior_tensors",
    "search_chunks",
    "search_working_bytes",
    "smallest_per_row",
    "sqdist_tensors",
    "stream_handle",
    "to_numpy",
]

// The CUDA names the kernels and their launchers use, from one place.
//
// Under nvcc: the CUDA runtime, and a kernel launch written as a function call. Under any other
// compiler: tests/cuda_emulation/cuda_emulation.hpp, which supplies the same names and runs the
// unchanged kernel code on the host (one block at a time, its threads as cooperative fibers), so
// the CPU test suite can check these kernels against the host ones on a machine without a GPU.
// The kernel files include this header instead of <cuda_runtime.h>; nothing else differs.
#pragma once

#if defined(__CUDACC__)

#include <cuda_runtime.h>

#include <cstddef>

/// Declares `name` as the block's dynamic shared memory viewed as `type` elements.
#define DTPM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]

namespace dtpm::cuda::detail {

/// kernel<<<blocks, threads, shared_bytes, stream>>>(args...); the caller checks cudaGetLastError().
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), int blocks, int threads, std::size_t shared_bytes,
                          cudaStream_t stream, Args... args) {
  kernel<<<blocks, threads, shared_bytes, stream>>>(args...);
}

}  // namespace dtpm::cuda::detail

#else

#include "cuda_emulation.hpp"  // found on the include path of the tests' emulation build only

#endif

// Error checking for CUDA runtime calls and kernel launches (device code never throws; host does).
#pragma once

#include <stdexcept>
#include <string>

#include "cuda_api.cuh"

namespace dtpm::cuda {

/// Throws std::runtime_error naming the failed call, the CUDA error and the source location.
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                           " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

}  // namespace dtpm::cuda

/// Wrap every CUDA runtime call; after a kernel launch use CHECK_CUDA(cudaGetLastError()).
#define CHECK_CUDA(call)                                                         \
  do {                                                                           \
    const cudaError_t dtpm_cuda_err_ = (call);                                   \
    if (dtpm_cuda_err_ != cudaSuccess)                                           \
      ::dtpm::cuda::throw_cuda_error(dtpm_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

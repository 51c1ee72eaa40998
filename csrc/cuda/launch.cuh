// Shared launch plumbing for the launchers: pointer checks, device selection, grid sizing.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "cuda_api.cuh"
#include "dtpm_cuda.hpp"

namespace dtpm::cuda::detail {

/// The device owning `ptr`; throws std::invalid_argument unless it is device or managed memory.
inline int device_of(const void* ptr, const char* name) {
  if (ptr == nullptr) throw std::invalid_argument(std::string(name) + " is a null device pointer");
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls do not report it
    throw std::invalid_argument(std::string(name) + " is not a CUDA pointer (" + cudaGetErrorString(err) +
                                ")");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(name) +
                                " must point to device memory (got host memory: pass a CUDA tensor)");
  return attr.device;
}

/// Checks an optional pointer lives on `device`.
inline void require_on(int device, const void* ptr, const char* name) {
  if (ptr != nullptr && device_of(ptr, name) != device)
    throw std::invalid_argument(std::string(name) + " is on CUDA device " +
                                std::to_string(device_of(ptr, name)) + " but the inputs are on device " +
                                std::to_string(device));
}

/// Makes `device` current for the guard's lifetime (the caller's arrays may be on another GPU).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CHECK_CUDA(cudaGetDevice(&previous_));
    if (previous_ != device) CHECK_CUDA(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }  // best effort: destructors must not throw
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

/// Blocks for a grid-stride kernel: enough to fill the GPU, never more than the work needs.
template <typename Kernel>
inline int grid_blocks(Kernel kernel, int threads, size_t shared_bytes, int64_t work_blocks) {
  int device = 0, sms = 0, per_sm = 0;
  CHECK_CUDA(cudaGetDevice(&device));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes));
  const int64_t resident = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  const int64_t blocks = work_blocks < resident ? work_blocks : resident;
  return static_cast<int>(blocks > 0 ? blocks : 1);
}

inline cudaStream_t as_stream(StreamHandle handle) { return reinterpret_cast<cudaStream_t>(handle); }

}  // namespace dtpm::cuda::detail

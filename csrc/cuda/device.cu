// Device discovery that never throws: a machine without a driver or GPU reports 0 devices.
#include <cuda_runtime.h>

#include <string>

#include "dtpm_cuda.hpp"

namespace dtpm::cuda {

namespace {
cudaError_t count_devices(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    *count = 0;
    cudaGetLastError();  // no driver / no device is an answer here, not a pending error
  }
  return err;
}
}  // namespace

int device_count() {
  int count = 0;
  count_devices(&count);
  return count;
}

std::string device_status() {
  int count = 0;
  const cudaError_t err = count_devices(&count);
  if (err != cudaSuccess) return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device found";
  return "ok";
}

int runtime_version() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) cudaGetLastError();
  return version;
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    version = 0;
  }
  return version;
}

}  // namespace dtpm::cuda

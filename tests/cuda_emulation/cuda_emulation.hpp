// Host emulation of the CUDA subset used by csrc/cuda's kernels, for the CPU test suite.
//
// csrc/cuda/cuda_api.cuh includes this header when the kernel files are compiled by a plain C++
// compiler (tests/test_cuda_emulation.py does that). The kernel code itself is unchanged: a
// launch runs the blocks one after another, and the threads of a block as cooperative fibers
// that switch only at __syncthreads() and warp shuffles. The emulator checks what the hardware
// would leave undefined and reports it as an error instead of a wrong answer: a shuffle whose
// mask omits the calling lane or a lane it reads, lanes of one mask disagreeing, a lane that
// exited while the others wait for it, and every other deadlock (e.g. __syncthreads() reached by
// only part of a block). Dynamic shared memory starts filled with NaN so that a read before the
// write shows up. Scheduling order is forward, reverse or seeded-random per pass, so code that
// relies on one thread running before another without a barrier gives different answers.
//
// Not emulated: memory-model subtleties beyond barriers, timing, occupancy (the launchers see a
// device with kEmulatedSMs multiprocessors and one resident block each, so grid-stride loops
// repeat), and device-pointer checks (every pointer counts as device memory of device 0).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

// ---- language extensions ------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one at a time, so a function-local static is exactly one block's shared variable.
#define __shared__ static
#define DTPM_DYNAMIC_SHARED(type, name) type* const name = ::dtpm_emulation::dynamic_shared<type>()

using std::isnan;

namespace dtpm_emulation {

struct uint3 {
  unsigned int x, y, z;
};

/// The emulated thread's coordinates (valid inside a kernel only).
struct ThreadCoordinates {
  uint3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadCoordinates& coordinates();

/// Start of the current block's dynamic shared memory (NaN-filled at block start).
void* dynamic_shared_bytes();
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

void sync_threads();
/// One warp exchange: every lane of `mask` offers `bits` and receives the bits of lane `source`.
std::uint64_t exchange(unsigned mask, std::uint64_t bits, int source_lane, int width);

/// Runs body() as blocks x threads emulated threads with `shared_bytes` of dynamic shared memory.
void run_grid(int blocks, int threads, std::size_t shared_bytes, const std::function<void()>& body);

/// Scheduling order of the fibers in each pass: 0 forward, 1 reverse, 2 random (seeded).
void set_schedule(int order, std::uint64_t seed);

/// Number of multiprocessors the launchers see (grid_blocks: one resident block each).
constexpr int kEmulatedSMs = 3;

}  // namespace dtpm_emulation

#define threadIdx (::dtpm_emulation::coordinates().thread_idx)
#define blockIdx (::dtpm_emulation::coordinates().block_idx)
#define blockDim (::dtpm_emulation::coordinates().block_dim)
#define gridDim (::dtpm_emulation::coordinates().grid_dim)

// ---- device functions -------------------------------------------------------------------------
inline void __syncthreads() { ::dtpm_emulation::sync_threads(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
  const int lane = static_cast<int>(::dtpm_emulation::coordinates().thread_idx.x % 32);
  int source = lane ^ lane_mask;
  if (source / width > lane / width) source = lane;  // reads from a later group return one's own value
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ::dtpm_emulation::exchange(mask, bits, source, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename T>
T __ldcs(const T* address) {
  return *address;
}

/// __expf as the hardware computes it: 2^(x * log2(e)) with the product rounded to float, whose
/// error (relative |x| * 2^-24 * ln 2) dominates that of the approximate exp2 itself; subnormal
/// results flush to zero as with the .ftz instruction.
inline float __expf(float x) {
  const float y = std::exp2(x * 1.4426950408889634f);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y;
}

/// The fibers of a block never run at the same time, so a plain read-modify-write is atomic.
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

// ---- runtime API ------------------------------------------------------------------------------
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
using cudaStream_t = struct CUstream_emulated*;
enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3
};
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

inline const char* cudaGetErrorName(cudaError_t err) {
  return err == cudaSuccess ? "cudaSuccess" : "cudaError";
}
inline const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void*) {
  *attr = cudaPointerAttributes{cudaMemoryTypeDevice, 0};
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = ::dtpm_emulation::kEmulatedSMs;
  return cudaSuccess;
}
template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, std::size_t) {
  *blocks = 1;
  return cudaSuccess;
}

namespace dtpm::cuda::detail {

/// The emulated kernel launch: every emulated thread calls kernel(args...).
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), int blocks, int threads, std::size_t shared_bytes,
                          cudaStream_t, Args... args) {
  ::dtpm_emulation::run_grid(blocks, threads, shared_bytes, [&] { kernel(args...); });
}

}  // namespace dtpm::cuda::detail

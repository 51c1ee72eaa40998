// Small kernels that show the emulator catching what real hardware would get wrong or hang on,
// and computing what it would get right. Launched from tests/test_cuda_emulation.py through
// dtpm_emu_selfcheck (emulated_kernels.cpp).
#include <stdexcept>
#include <string>

#include "cuda_emulation.hpp"

namespace {

constexpr int kThreads = 128;

// __syncthreads() reached by half of the block: hangs on hardware.
__global__ void half_block_barrier(float* out) {
  if (threadIdx.x < kThreads / 2) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Lane 0 waits at a barrier for its warp, which waits in a shuffle for lane 0: hangs on hardware.
__global__ void barrier_inside_a_warp(float* out) {
  if (threadIdx.x == 0) __syncthreads();
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Lane 5 leaves before a full-warp shuffle: undefined on hardware.
__global__ void shuffle_after_a_lane_exits(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// Every lane but 0 calls a shuffle whose mask names lane 0 only.
__global__ void mask_omits_the_caller(float* out) { out[threadIdx.x] = __shfl_xor_sync(0x1u, 1.0f, 0); }

// Thread 0 writes, everyone reads, no barrier between: the answer depends on the schedule.
__global__ void read_without_barrier(float* out, float value) {
  __shared__ float slot;
  if (threadIdx.x == 0) slot = value;
  out[threadIdx.x] = slot;
}

// The same with the barrier: every schedule gives `value`.
__global__ void read_after_barrier(float* out, float value) {
  __shared__ float slot;
  if (threadIdx.x == 0) slot = value;
  __syncthreads();
  out[threadIdx.x] = slot;
}

// Butterfly sum of the lane ids over each warp (0 + ... + 31 = 496), and over groups of 8 lanes.
__global__ void warp_sums(float* out) {
  float v = static_cast<float>(threadIdx.x % 32);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const unsigned group = 0xffu << ((threadIdx.x % 32) / 8 * 8);
  float g = static_cast<float>(threadIdx.x % 8);
  for (int offset = 4; offset > 0; offset /= 2) g += __shfl_xor_sync(group, g, offset, 8);
  out[threadIdx.x] = v * 100.0f + g;  // 49600 + 28
}

// Dynamic shared memory read before any write: NaN.
__global__ void read_fresh_dynamic_shared(float* out) {
  DTPM_DYNAMIC_SHARED(float, scratch);
  out[threadIdx.x] = scratch[threadIdx.x];
}

}  // namespace

namespace dtpm_emulation {

void run_selfcheck(const std::string& which, float value, float* out) {
  using dtpm::cuda::detail::launch_kernel;
  if (which == "half_block_barrier")
    launch_kernel(half_block_barrier, 1, kThreads, 0, nullptr, out);
  else if (which == "barrier_inside_a_warp")
    launch_kernel(barrier_inside_a_warp, 1, kThreads, 0, nullptr, out);
  else if (which == "shuffle_after_a_lane_exits")
    launch_kernel(shuffle_after_a_lane_exits, 1, kThreads, 0, nullptr, out);
  else if (which == "mask_omits_the_caller")
    launch_kernel(mask_omits_the_caller, 1, kThreads, 0, nullptr, out);
  else if (which == "read_without_barrier")
    launch_kernel(read_without_barrier, 1, kThreads, 0, nullptr, out, value);
  else if (which == "read_after_barrier")
    launch_kernel(read_after_barrier, 1, kThreads, 0, nullptr, out, value);
  else if (which == "warp_sums")
    launch_kernel(warp_sums, 1, kThreads, 0, nullptr, out);
  else if (which == "read_fresh_dynamic_shared")
    launch_kernel(read_fresh_dynamic_shared, 1, kThreads, kThreads * sizeof(float), nullptr, out);
  else
    throw std::invalid_argument("no self-check kernel named " + which);
}

}  // namespace dtpm_emulation

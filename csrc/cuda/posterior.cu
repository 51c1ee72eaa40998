// Inverse-Gamma posterior over the diffusion time (docs/METHOD.md section 3), on device memory.
//
// Agrees with csrc/cpu/posterior.cpp where it matters for the result: D2 is summed in double
// in neighbour order; the mode counts the same boundaries (L[t+1] - L[t]) / (I[t] - I[t+1])
// below b/c (here by binary search, on the host by a bucket lookup: identical counts); the mean
// sums the float weights of the terms within kWindowNats of the peak in double (the host's
// windowed sum does the same; its large calls interpolate a table checked to 1e-5 against the
// exact mean); beyond b_all_last all mass is at T-1 on both. Mode and mean use one thread per
// row; the full posterior uses one warp per row so that its [n, T] writes are coalesced.
// tests/test_cuda_emulation.py runs this file on the CPU (see cuda_api.cuh).
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "cuda_api.cuh"
#include "dtpm/posterior_arguments.hpp"
#include "dtpm_cuda.hpp"
#include "launch.cuh"

namespace dtpm::cuda {
namespace {

// Terms more than this below the peak are dropped (weight < 1e-13; the host's window is 2^-33).
constexpr double kWindowNats = 30.0;
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Grids up to this T keep log_sigma2, inv_sigma2 and the boundaries in shared memory (48 KiB).
constexpr int64_t kSharedMaxT = 2048;

/// The grid tables, in shared memory (with precomputed boundaries) or global memory.
struct GridView {
  const double* L;
  const double* I;
  const double* B;  // nullptr: compute boundaries on the fly (large T, global memory)
  int64_t T;

  __device__ double boundary(int64_t t) const { return B ? B[t] : (L[t + 1] - L[t]) / (I[t] - I[t + 1]); }
  __device__ double log_density(int64_t t, double c, double b) const { return -c * L[t] - b * I[t]; }
};

/// Loads the tables into shared memory when they fit; every thread of the block must call it.
__device__ GridView load_grid(const double* L_g, const double* I_g, int64_t T, bool use_shared) {
  if (!use_shared) return GridView{L_g, I_g, nullptr, T};
  DTPM_DYNAMIC_SHARED(double, smem);
  double* L = smem;
  double* I = smem + T;
  double* B = smem + 2 * T;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    L[t] = L_g[t];
    I[t] = I_g[t];
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t + 1 < T; t += blockDim.x) B[t] = (L[t + 1] - L[t]) / (I[t] - I[t + 1]);
  __syncthreads();
  return GridView{L, I, B, T};
}

/// First index in [lo, hi) where before(index) is false (before: true then false).
template <typename Pred>
__device__ int64_t partition_point(int64_t lo, int64_t hi, Pred before) {
  int64_t n = hi - lo;
  if (n <= 0) return lo;
  while (n > 1) {
    const int64_t half = n / 2;
    lo = before(lo + half - 1) ? lo + half : lo;
    n -= half;
  }
  return lo + (before(lo) ? 1 : 0);
}

/// b = D2 / 2 for one row, summed like the host kernel; a NaN row flags `status` and gives 0.
template <typename Real>
__device__ double half_mean_sqdist(const Real* row, int64_t k, int32_t* status) {
  double total = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const double v = static_cast<double>(row[j]);
    total += v < 0.0 ? 0.0 : v;  // keeps NaN (std::max(NaN, 0.0) is NaN on the host too)
  }
  if (isnan(total)) {
    if (status) atomicOr(status, kStatusNanDistance);
    total = 0.0;
  }
  return 0.5 * total / static_cast<double>(k);
}

/// The b from which term T-2 weighs under e^-745 of term T-1 (0 in double): all mass at T-1,
/// as on the host.
__device__ double b_all_last(const GridView& g, double c) {
  if (g.T < 2) return INFINITY;
  return (c * (g.L[g.T - 1] - g.L[g.T - 2]) + 745.0) / (g.I[g.T - 2] - g.I[g.T - 1]);
}

__device__ int64_t grid_mode(const GridView& g, double b, double c) {
  const double s_star = b / c;
  return partition_point(0, g.T - 1, [&](int64_t t) { return g.boundary(t) < s_star; });
}

template <typename Real>
__global__ void __launch_bounds__(kThreads)
    mode_mean_kernel(const Real* __restrict__ sqdist, int64_t n, int64_t k, double c,
                     const double* __restrict__ L_g, const double* __restrict__ I_g, int64_t T,
                     bool use_shared, int32_t* __restrict__ mode, double* __restrict__ mean,
                     int32_t* status) {
  const GridView g = load_grid(L_g, I_g, T, use_shared);
  const double b_last = b_all_last(g, c);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double b = half_mean_sqdist(sqdist + i * k, k, status);
    if (b == 0.0 || b >= b_last) {  // degenerate: all mass on one end of the grid
      const int64_t at = b == 0.0 ? 0 : T - 1;
      if (mode) mode[i] = static_cast<int32_t>(at);
      if (mean) mean[i] = static_cast<double>(at);
      continue;
    }
    const int64_t m = grid_mode(g, b, c);
    if (mode) mode[i] = static_cast<int32_t>(m);
    if (!mean) continue;
    const double f_peak = g.log_density(m, c, b);
    const double floor_f = f_peak - kWindowNats;
    const int64_t lo = partition_point(0, m, [&](int64_t t) { return g.log_density(t, c, b) < floor_f; });
    const int64_t hi =
        partition_point(m + 1, T, [&](int64_t t) { return g.log_density(t, c, b) >= floor_f; });
    // Float weights, double sums: a float running sum over thousands of terms (large T) drifts
    // by ~1e-4 relative, twenty times the host's error.
    double sum_w = 0.0, sum_tw = 0.0;
    for (int64_t t = lo; t < hi; ++t) {
      const double w = __expf(static_cast<float>(g.log_density(t, c, b) - f_peak));
      sum_w += w;
      sum_tw += w * static_cast<double>(t);
    }
    mean[i] = sum_tw / sum_w;
  }
}

__device__ double warp_sum(double v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename Real>
__global__ void __launch_bounds__(kThreads)
    full_posterior_kernel(const Real* __restrict__ sqdist, int64_t n, int64_t k, double c,
                          const double* __restrict__ L_g, const double* __restrict__ I_g, int64_t T,
                          bool use_shared, int32_t* __restrict__ mode, double* __restrict__ mean,
                          double* __restrict__ posterior, int32_t* status) {
  const GridView g = load_grid(L_g, I_g, T, use_shared);
  const double b_last = b_all_last(g, c);
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  // Whole warps iterate together (same i), so the full-mask shuffles below are safe.
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; i < n; i += warps) {
    double* row = posterior + i * T;
    const double b = half_mean_sqdist(sqdist + i * k, k, lane == 0 ? status : nullptr);
    if (b == 0.0 || b >= b_last) {
      const int64_t at = b == 0.0 ? 0 : T - 1;
      for (int64_t t = lane; t < T; t += kWarp) row[t] = t == at ? 1.0 : 0.0;
      if (lane == 0) {
        if (mode) mode[i] = static_cast<int32_t>(at);
        if (mean) mean[i] = static_cast<double>(at);
      }
      continue;
    }
    const int64_t m = grid_mode(g, b, c);
    const double f_peak = g.log_density(m, c, b);
    double sum_w = 0.0, sum_tw = 0.0;
    for (int64_t t = lane; t < T; t += kWarp) {
      const double w = __expf(static_cast<float>(g.log_density(t, c, b) - f_peak));
      sum_w += w;
      sum_tw += w * static_cast<double>(t);
    }
    sum_w = warp_sum(sum_w);
    sum_tw = warp_sum(sum_tw);
    const double inv = 1.0 / sum_w;
    // Recomputing the weights is cheaper than staging T values per warp in shared memory.
    for (int64_t t = lane; t < T; t += kWarp)
      row[t] = static_cast<double>(__expf(static_cast<float>(g.log_density(t, c, b) - f_peak))) * inv;
    if (lane == 0) {
      if (mode) mode[i] = static_cast<int32_t>(m);
      if (mean) mean[i] = sum_tw / sum_w;
    }
  }
}

}  // namespace

template <typename Real>
void posterior_scores(const Real* sqdist, int64_t n, int64_t k, int64_t n_features,
                      const DeviceSchedule& schedule, int32_t* mode, double* mean, double* posterior,
                      int32_t* status, StreamHandle stream) {
  check_posterior_arguments(n, k, n_features);
  if (schedule.T < 1) throw std::invalid_argument("posterior_scores: schedule T must be >= 1");
  if (n == 0 || (!mode && !mean && !posterior)) return;

  const int device = detail::device_of(sqdist, "sqdist");
  detail::require_on(device, schedule.log_sigma2, "log_sigma2");
  detail::require_on(device, schedule.inv_sigma2, "inv_sigma2");
  detail::require_on(device, mode, "mode");
  detail::require_on(device, mean, "mean");
  detail::require_on(device, posterior, "posterior");
  detail::require_on(device, status, "status");
  if (!schedule.log_sigma2 || !schedule.inv_sigma2)
    throw std::invalid_argument("posterior_scores: null schedule");
  detail::DeviceGuard guard(device);

  const int64_t T = schedule.T;
  const bool use_shared = T <= kSharedMaxT;
  const size_t shared_bytes = use_shared ? static_cast<size_t>(3 * T - 1) * sizeof(double) : 0;
  const double c = 0.5 * static_cast<double>(n_features);  // a + 1
  const cudaStream_t s = detail::as_stream(stream);
  if (posterior) {
    const int64_t rows_per_block = kThreads / kWarp;
    const int blocks = detail::grid_blocks(full_posterior_kernel<Real>, kThreads, shared_bytes,
                                           (n + rows_per_block - 1) / rows_per_block);
    detail::launch_kernel(full_posterior_kernel<Real>, blocks, kThreads, shared_bytes, s, sqdist, n, k, c,
                          schedule.log_sigma2, schedule.inv_sigma2, T, use_shared, mode, mean, posterior,
                          status);
  } else {
    const int blocks =
        detail::grid_blocks(mode_mean_kernel<Real>, kThreads, shared_bytes, (n + kThreads - 1) / kThreads);
    detail::launch_kernel(mode_mean_kernel<Real>, blocks, kThreads, shared_bytes, s, sqdist, n, k, c,
                          schedule.log_sigma2, schedule.inv_sigma2, T, use_shared, mode, mean, status);
  }
  CHECK_CUDA(cudaGetLastError());
}

template void posterior_scores<float>(const float*, int64_t, int64_t, int64_t, const DeviceSchedule&,
                                      int32_t*, double*, double*, int32_t*, StreamHandle);
template void posterior_scores<double>(const double*, int64_t, int64_t, int64_t, const DeviceSchedule&,
                                       int32_t*, double*, double*, int32_t*, StreamHandle);

}  // namespace dtpm::cuda

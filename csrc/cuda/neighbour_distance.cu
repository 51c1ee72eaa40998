// Exact squared distances to given neighbour ids, and per-feature contributions, on device memory.
//
// A group of G lanes (G = 4..32, a power of two dividing the warp) handles one query: lanes
// stride over the features, so the reads of a neighbour row are coalesced, and the partial sums
// meet in a shuffle reduction. Per-term arithmetic matches the host kernel (float differences,
// squares summed in double); only the summation order differs.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "cuda_api.cuh"
#include "dtpm_cuda.hpp"
#include "launch.cuh"

namespace dtpm::cuda {
namespace {

constexpr int kThreads = 256;

template <typename Real, int G>
__global__ void __launch_bounds__(kThreads)
    neighbour_sqdist_kernel(const Real* __restrict__ queries, int64_t n, const Real* __restrict__ train,
                            int64_t n_train, int64_t d, const int64_t* __restrict__ ids, int64_t k,
                            Real* __restrict__ sqdist, Real* __restrict__ contribution, int32_t* status) {
  const int lane = threadIdx.x % G;
  // The G lanes of a group always share the same query, hence the same trip counts.
  const unsigned group_mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << ((threadIdx.x % 32) / G * G));
  const int64_t groups = static_cast<int64_t>(gridDim.x) * (blockDim.x / G);
  const Real inv_k = Real(1) / static_cast<Real>(k);
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G; i < n; i += groups) {
    const Real* q = queries + i * d;
    Real* contrib = contribution ? contribution + i * d : nullptr;
    if (contrib)
      for (int64_t f = lane; f < d; f += G) contrib[f] = Real(0);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = ids[i * k + j];
      if (id < 0 || id >= n_train) {
        if (lane == 0) {
          sqdist[i * k + j] = Real(0);
          if (status) atomicOr(status, kStatusIdOutOfRange);
        }
        continue;
      }
      const Real* x = train + id * d;
      double total = 0.0;
      for (int64_t f = lane; f < d; f += G) {
        const Real diff = q[f] - x[f];
        const Real sq = diff * diff;
        total += static_cast<double>(sq);
        if (contrib) contrib[f] += sq * inv_k;  // each lane owns its features: no race
      }
      for (int offset = G / 2; offset > 0; offset /= 2)
        total += __shfl_xor_sync(group_mask, total, offset, G);
      if (lane == 0) sqdist[i * k + j] = static_cast<Real>(total);
    }
  }
}

template <typename Real, int G>
void launch(const Real* queries, int64_t n, const Real* train, int64_t n_train, int64_t d, const int64_t* ids,
            int64_t k, Real* sqdist, Real* contribution, int32_t* status, cudaStream_t stream) {
  const int64_t queries_per_block = kThreads / G;
  const int blocks = detail::grid_blocks(neighbour_sqdist_kernel<Real, G>, kThreads, 0,
                                         (n + queries_per_block - 1) / queries_per_block);
  detail::launch_kernel(neighbour_sqdist_kernel<Real, G>, blocks, kThreads, 0, stream, queries, n, train,
                        n_train, d, ids, k, sqdist, contribution, status);
  CHECK_CUDA(cudaGetLastError());
}

}  // namespace

template <typename Real>
void neighbour_sqdist(const Real* queries, int64_t n, const Real* train, int64_t n_train, int64_t d,
                      const int64_t* ids, int64_t k, Real* sqdist, Real* per_feature_contribution,
                      int32_t* status, StreamHandle stream) {
  if (n < 0 || n_train < 0 || d < 1 || k < 1)
    throw std::invalid_argument("neighbour_sqdist: need n >= 0, n_train >= 0, d >= 1 and k >= 1");
  if (n == 0) return;
  const int device = detail::device_of(queries, "queries");
  if (n_train > 0) detail::require_on(device, train, "train");
  detail::require_on(device, ids, "ids");
  detail::require_on(device, sqdist, "sqdist");
  detail::require_on(device, per_feature_contribution, "per_feature_contribution");
  detail::require_on(device, status, "status");
  if (!ids || !sqdist) throw std::invalid_argument("neighbour_sqdist: ids and sqdist must not be null");
  detail::DeviceGuard guard(device);
  const cudaStream_t s = detail::as_stream(stream);
  // Enough lanes to cover the features once, at least 4 so tiny d still shares a warp sensibly.
  if (d > 16)
    launch<Real, 32>(queries, n, train, n_train, d, ids, k, sqdist, per_feature_contribution, status, s);
  else if (d > 8)
    launch<Real, 16>(queries, n, train, n_train, d, ids, k, sqdist, per_feature_contribution, status, s);
  else if (d > 4)
    launch<Real, 8>(queries, n, train, n_train, d, ids, k, sqdist, per_feature_contribution, status, s);
  else
    launch<Real, 4>(queries, n, train, n_train, d, ids, k, sqdist, per_feature_contribution, status, s);
}

template void neighbour_sqdist<float>(const float*, int64_t, const float*, int64_t, int64_t, const int64_t*,
                                      int64_t, float*, float*, int32_t*, StreamHandle);
template void neighbour_sqdist<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                       const int64_t*, int64_t, double*, double*, int32_t*, StreamHandle);

}  // namespace dtpm::cuda

// Row-wise k-smallest selection: the select step of the brute-force GPU neighbour search.
//
// One block per row reads the row once (streaming loads). Each thread keeps a sorted list of
// its KT best (value, column) pairs in registers (compile-time indices, branch-free insertion);
// the block then pops the k global minima in k rounds of a block-wide argmin over list heads.
// Ties go to the smaller column, so the result is deterministic.
#include <climits>
#include <cmath>
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
constexpr int kWarp = 32;
constexpr int kEmpty = INT_MAX;  // column id of an unused slot; loses every comparison

__device__ __forceinline__ bool better(float v, int j, float w, int i) { return v < w || (v == w && j < i); }

/// Every lane of the warp ends with the warp's best (v, c) pair (butterfly reduction).
__device__ __forceinline__ void warp_best(float& v, int& c) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const int oc = __shfl_xor_sync(0xffffffffu, c, offset);
    if (better(ov, oc, v, c)) {
      v = ov;
      c = oc;
    }
  }
}

template <int KT>
__device__ __forceinline__ void consider(float v, int j, float (&val)[KT], int (&col)[KT]) {
  v = isnan(v) ? INFINITY : v;
  if (!better(v, j, val[KT - 1], col[KT - 1])) return;
#pragma unroll
  for (int s = KT - 1; s > 0; --s) {  // downwards: slots s and s-1 still hold their old values here
    const bool before_prev = better(v, j, val[s - 1], col[s - 1]);
    const bool before_this = better(v, j, val[s], col[s]);
    val[s] = before_prev ? val[s - 1] : (before_this ? v : val[s]);
    col[s] = before_prev ? col[s - 1] : (before_this ? j : col[s]);
  }
  if (better(v, j, val[0], col[0])) {
    val[0] = v;
    col[0] = j;
  }
}

template <int KT>
__global__ void __launch_bounds__(kThreads)
    smallest_per_row_kernel(const float* __restrict__ values, int64_t rows, int64_t cols, int64_t ld, int k,
                            int64_t id_offset, bool exclude_diagonal, int64_t diagonal_offset,
                            float* __restrict__ out_values, int64_t* __restrict__ out_ids, int64_t out_ld) {
  __shared__ float warp_val[kThreads / kWarp];
  __shared__ int warp_col[kThreads / kWarp];
  __shared__ int winner;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int step = blockDim.x;

  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float val[KT];
    int col[KT];
#pragma unroll
    for (int s = 0; s < KT; ++s) {
      val[s] = INFINITY;
      col[s] = kEmpty;
    }
    const int64_t skip64 = exclude_diagonal ? r + diagonal_offset : -1;
    const int skip = (skip64 >= 0 && skip64 < cols) ? static_cast<int>(skip64) : -1;
    const float* row = values + r * ld;
    const int n_cols = static_cast<int>(cols);
    int j = threadIdx.x;
    // Four independent streaming loads in flight per thread before any comparison.
    for (; j + 3 * step < n_cols; j += 4 * step) {
      const float v0 = __ldcs(row + j), v1 = __ldcs(row + j + step);
      const float v2 = __ldcs(row + j + 2 * step), v3 = __ldcs(row + j + 3 * step);
      if (j != skip) consider<KT>(v0, j, val, col);
      if (j + step != skip) consider<KT>(v1, j + step, val, col);
      if (j + 2 * step != skip) consider<KT>(v2, j + 2 * step, val, col);
      if (j + 3 * step != skip) consider<KT>(v3, j + 3 * step, val, col);
    }
    for (; j < n_cols; j += step)
      if (j != skip) consider<KT>(__ldcs(row + j), j, val, col);

    for (int round = 0; round < k; ++round) {
      float v = val[0];
      int c = col[0];
      warp_best(v, c);
      if (lane == 0) {
        warp_val[warp] = v;
        warp_col[warp] = c;
      }
      __syncthreads();
      if (warp == 0) {
        const int n_warps = blockDim.x / kWarp;
        v = lane < n_warps ? warp_val[lane] : INFINITY;
        c = lane < n_warps ? warp_col[lane] : kEmpty;
        warp_best(v, c);
        if (lane == 0) {
          out_values[r * out_ld + round] = c == kEmpty ? NAN : v;  // NaN: sorts after every real value
          out_ids[r * out_ld + round] = c == kEmpty ? -1 : id_offset + c;
          winner = c;
        }
      }
      __syncthreads();
      // Columns are dealt to threads by j % blockDim.x, so exactly one thread holds the winner.
      if (winner != kEmpty && col[0] == winner) {
#pragma unroll
        for (int s = 0; s + 1 < KT; ++s) {
          val[s] = val[s + 1];
          col[s] = col[s + 1];
        }
        val[KT - 1] = INFINITY;
        col[KT - 1] = kEmpty;
      }
    }
    // `winner` and the warp slots are rewritten by the next row only after its first barrier.
  }
}

template <int KT>
void launch(const float* values, int64_t rows, int64_t cols, int64_t ld, int k, int64_t id_offset,
            bool exclude_diagonal, int64_t diagonal_offset, float* out_values, int64_t* out_ids,
            int64_t out_ld, cudaStream_t stream) {
  const int blocks = detail::grid_blocks(smallest_per_row_kernel<KT>, kThreads, 0, rows);
  detail::launch_kernel(smallest_per_row_kernel<KT>, blocks, kThreads, 0, stream, values, rows, cols, ld, k,
                        id_offset, exclude_diagonal, diagonal_offset, out_values, out_ids, out_ld);
  CHECK_CUDA(cudaGetLastError());
}

}  // namespace

int64_t smallest_per_row_max_k() { return 64; }

void smallest_per_row(const float* values, int64_t rows, int64_t cols, int64_t ld, int64_t k,
                      int64_t id_offset, bool exclude_diagonal, int64_t diagonal_offset, float* out_values,
                      int64_t* out_ids, int64_t out_ld, StreamHandle stream) {
  // The column loop runs in int; keep its look-ahead (4 * kThreads) clear of overflow.
  if (rows < 0 || cols < 1 || cols > INT_MAX - 4 * kThreads || ld < cols)
    throw std::invalid_argument("smallest_per_row: need rows >= 0, 1 <= cols < 2^31 - 1024 and ld >= cols");
  if (k < 1 || k > smallest_per_row_max_k())
    throw std::invalid_argument("smallest_per_row: k must be in [1, " +
                                std::to_string(smallest_per_row_max_k()) + "], got " + std::to_string(k));
  if (out_ld < k) throw std::invalid_argument("smallest_per_row: out_ld must be >= k");
  if (rows == 0) return;
  const int device = detail::device_of(values, "values");
  detail::require_on(device, out_values, "out_values");
  detail::require_on(device, out_ids, "out_ids");
  if (!out_values || !out_ids) throw std::invalid_argument("smallest_per_row: null output");
  detail::DeviceGuard guard(device);
  const cudaStream_t s = detail::as_stream(stream);
  const int kk = static_cast<int>(k);
  if (k <= 16)
    launch<16>(values, rows, cols, ld, kk, id_offset, exclude_diagonal, diagonal_offset, out_values, out_ids,
               out_ld, s);
  else if (k <= 32)
    launch<32>(values, rows, cols, ld, kk, id_offset, exclude_diagonal, diagonal_offset, out_values, out_ids,
               out_ld, s);
  else
    launch<64>(values, rows, cols, ld, kk, id_offset, exclude_diagonal, diagonal_offset, out_values, out_ids,
               out_ld, s);
}

}  // namespace dtpm::cuda

// Host launchers of the dtpm_fast CUDA kernels.
//
// Host-only declarations: no CUDA headers and no __global__ here, so the pybind11 module (and
// any C++ caller) compiles with a plain C++ compiler. Array arguments are device pointers to
// row-major (C-contiguous) arrays; launches are asynchronous on `stream` (a cudaStream_t passed
// as an integer, 0 = the legacy default stream) and run on the device that owns the first
// array. Bad shapes throw std::invalid_argument; CUDA failures throw std::runtime_error with
// the source file and line.
#pragma once

#include <cstdint>
#include <string>

namespace dtpm::cuda {

/// A cudaStream_t as an integer, e.g. torch.cuda.current_stream().cuda_stream.
using StreamHandle = std::uintptr_t;

/// Bits a kernel ORs into its optional `status` word (device memory) when it meets bad input.
enum StatusBits : int32_t {
  kStatusNanDistance = 1,   ///< posterior: a squared distance was NaN (that row scored 0).
  kStatusIdOutOfRange = 2,  ///< neighbour_sqdist: an id was outside [0, n_train) (distance set to 0).
};

/// Number of usable CUDA devices; 0 (never an exception) without a driver or a device.
int device_count();

/// "ok" when at least one device is usable, else the CUDA runtime's reason (no driver, ...).
std::string device_status();

/// CUDA runtime version compiled in (e.g. 13000), and the driver's (0 without a driver).
int runtime_version();
int driver_version();

/// The diffusion-time grid in device memory.
struct DeviceSchedule {
  const double* log_sigma2 = nullptr;  ///< [T] device memory, strictly increasing in t.
  const double* inv_sigma2 = nullptr;  ///< [T] device memory, 1 / sigma2_t.
  int64_t T = 0;                       ///< Number of diffusion steps (>= 1).
};

/// Inverse-Gamma posterior over the diffusion time; the device twin of dtpm::posterior_scores.
///
/// Same results as the host kernel: grid mode from the boundary binary search, mean from the
/// terms within 30 nats of the peak, D2 == 0 -> t = 0, D2 == +inf -> t = T-1.
/// The schedule is not validated here (it lives on the device): callers check it on the host.
///
/// @param[in]  sqdist     [n, k] squared neighbour distances (device memory); negatives count as 0.
/// @param[in]  n          Number of rows (>= 0).
/// @param[in]  k          Neighbours per row (>= 1).
/// @param[in]  n_features Data dimension d (> 2).
/// @param[in]  schedule   The grid (device memory).
/// @param[out] mode       [n] grid argmax of p(t), or nullptr (device memory).
/// @param[out] mean       [n] posterior mean of t, or nullptr (device memory).
/// @param[out] posterior  [n, T] normalised posterior, or nullptr (device memory).
/// @param[out] status     One int32 OR-ed with kStatusNanDistance when a row has a NaN distance,
///                        or nullptr (device memory; the caller zeroes it and reads it back).
/// @param[in]  stream     Stream to launch on.
template <typename Real>
void posterior_scores(const Real* sqdist, int64_t n, int64_t k, int64_t n_features,
                      const DeviceSchedule& schedule, int32_t* mode, double* mean, double* posterior,
                      int32_t* status, StreamHandle stream);

/// Exact squared distances from each query to given training rows; twin of dtpm::neighbour_sqdist.
///
/// @param[in]  queries  [n, d] query rows (device memory).
/// @param[in]  n        Number of queries.
/// @param[in]  train    [n_train, d] training rows (device memory).
/// @param[in]  n_train  Number of training rows.
/// @param[in]  d        Number of features (>= 1).
/// @param[in]  ids      [n, k] int64 row indices into train (device memory).
/// @param[in]  k        Ids per query (>= 1).
/// @param[out] sqdist   [n, k] squared distances as explicit differences (device memory).
/// @param[out] per_feature_contribution [n, d] mean over the k ids of (x_j - nbr_j)^2, or
///                      nullptr (device memory).
/// @param[out] status   One int32 OR-ed with kStatusIdOutOfRange on a bad id, or nullptr
///                      (device memory).
/// @param[in]  stream   Stream to launch on.
template <typename Real>
void neighbour_sqdist(const Real* queries, int64_t n, const Real* train, int64_t n_train, int64_t d,
                      const int64_t* ids, int64_t k, Real* sqdist, Real* per_feature_contribution,
                      int32_t* status, StreamHandle stream);

/// Largest k smallest_per_row accepts (larger k: use a sort-based top-k).
int64_t smallest_per_row_max_k();

/// The k smallest values of each row and their column ids, ascending (ties: smaller column first).
///
/// The selection step of the brute-force neighbour search: `values` holds one block of
/// ||x||^2 - 2 q.x scores, read once. NaN counts as +inf.
///
/// @param[in]  values      [rows, ld] row-major, first `cols` columns used (device memory).
/// @param[in]  rows, cols, ld  Shape; cols < 2^31, ld >= cols.
/// @param[in]  k           Values to keep per row, 1 <= k <= smallest_per_row_max_k().
/// @param[in]  id_offset   Added to the column index to form the output id (chunk start).
/// @param[in]  exclude_diagonal  When true, row r skips column r + diagonal_offset (leave-one-out).
/// @param[in]  diagonal_offset   See exclude_diagonal.
/// @param[out] out_values  [rows, out_ld] first k columns written (device memory).
/// @param[out] out_ids     [rows, out_ld] int64 ids, -1 (value NaN) where the row had fewer
///                         than k usable columns (device memory).
/// @param[in]  out_ld      Leading dimension of both outputs (>= k).
/// @param[in]  stream      Stream to launch on.
void smallest_per_row(const float* values, int64_t rows, int64_t cols, int64_t ld, int64_t k,
                      int64_t id_offset, bool exclude_diagonal, int64_t diagonal_offset, float* out_values,
                      int64_t* out_ids, int64_t out_ld, StreamHandle stream);

}  // namespace dtpm::cuda

// Public C++ API of the dtpm_fast native core.
//
// Plain pointers and shapes only: no pybind11, no CUDA headers. Every array is
// row-major (C-contiguous) and lives in host memory unless stated otherwise.
// Functions throw std::invalid_argument for bad shapes or values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dtpm {

/// The discrete diffusion-time grid of the posterior, as two precomputed tables.
struct Schedule {
  const double* log_sigma2 = nullptr;  ///< [T] log(sigma2_t), strictly increasing in t.
  const double* inv_sigma2 = nullptr;  ///< [T] 1 / sigma2_t.
  int64_t T = 0;                       ///< Number of diffusion steps.
};

/// Inverse-Gamma posterior over the diffusion time, from K squared neighbour distances per row.
///
/// For row i with D2 = mean_k sqdist[i, k], the posterior over t = 0..T-1 is
///   p(t) ~ exp(-(a + 1) log sigma2_t - b / sigma2_t),  a = d/2 - 1,  b = D2 / 2
/// (docs/METHOD.md section 3). D2 == 0 puts all mass at t = 0; D2 == +inf at t = T-1.
///
/// @param[in]  sqdist     [n, k] squared distances to the K nearest neighbours (host).
///                        Small negative values (norm-expansion rounding) count as 0.
/// @param[in]  n          Number of rows (>= 0).
/// @param[in]  k          Neighbours per row (>= 1).
/// @param[in]  n_features Data dimension d (> 2, so that the shape a is positive).
/// @param[in]  schedule   The grid (host).
/// @param[out] mode       [n] grid argmax of p(t), or nullptr to skip (host).
/// @param[out] mean       [n] posterior mean of t, or nullptr to skip (host).
/// @param[out] posterior  [n, T] normalised posterior, or nullptr to skip (host).
/// @throws std::invalid_argument on bad sizes or a NaN distance.
template <typename Real>
void posterior_scores(const Real* sqdist, int64_t n, int64_t k, int64_t n_features, const Schedule& schedule,
                      int32_t* mode, double* mean, double* posterior);

/// Exact squared Euclidean distances from each query to given training rows.
///
/// @param[in]  queries  [n, d] query rows (host).
/// @param[in]  n        Number of queries.
/// @param[in]  train    [n_train, d] training rows (host).
/// @param[in]  n_train  Number of training rows.
/// @param[in]  d        Number of features.
/// @param[in]  ids      [n, k] row indices into train, each in [0, n_train) (host).
/// @param[in]  k        Ids per query.
/// @param[out] sqdist   [n, k] squared distances, computed as explicit differences (host).
/// @param[out] per_feature_contribution  [n, d] mean over the k ids of (x_j - nbr_j)^2,
///                      or nullptr to skip (host).
/// @throws std::invalid_argument if an id is out of range.
template <typename Real>
void neighbour_sqdist(const Real* queries, int64_t n, const Real* train, int64_t n_train, int64_t d,
                      const int64_t* ids, int64_t k, Real* sqdist, Real* per_feature_contribution);

/// Exact k-nearest-neighbour search by brute force over float32 rows, squared L2.
///
/// The training rows are referenced (not copied) and packed once (centred, in groups of vector-width rows,
/// feature-major inside a group); each search keeps a register tile of queries against a group
/// of training rows and a per-query top-k list, with no query x train distance matrix in
/// memory. Candidates are ranked by the norm expansion |x - c|^2 - 2 (q - c).(x - c) on centred
/// rows (c = the training mean, so a common offset costs no precision); the distances returned
/// are then recomputed as explicit differences. Ties go to the smaller id.
class BruteForceKnn {
 public:
  /// @param[in] train   [n_train, d] training rows, finite (host). Not copied: they must stay
  ///                    valid and unchanged while this object is used (the final distances read them).
  /// @param[in] n_train Number of training rows (>= 1).
  /// @param[in] d       Number of features (>= 1).
  /// @throws std::invalid_argument on bad sizes or a non-finite value.
  BruteForceKnn(const float* train, int64_t n_train, int64_t d);

  int64_t size() const { return n_train_; }
  int64_t dim() const { return d_; }

  /// The k nearest training rows of each query, nearest first (OpenMP over queries).
  ///
  /// @param[in]  queries   [n_queries, d] query rows, finite (host).
  /// @param[in]  n_queries Number of queries (>= 0).
  /// @param[in]  k         Neighbours per query, 1 <= k <= size().
  /// @param[out] sqdist    [n_queries, k] squared distances by explicit differences, ascending (host).
  /// @param[out] ids       [n_queries, k] row indices into train; equal distances by smaller id (host).
  /// @throws std::invalid_argument on bad sizes, a non-finite query, or squared distances that
  ///         overflow float32.
  void search(const float* queries, int64_t n_queries, int64_t k, float* sqdist, int64_t* ids) const;

 private:
  int64_t n_train_, d_;
  int64_t n_groups_ = 0, chunk_groups_ = 1;
  const float* train_ = nullptr;  ///< [n_train, d] the caller's rows, for the final exact distances
  std::vector<float> center_;     ///< [d] training mean
  std::vector<float> packed_;     ///< see detail::KnnScan
  std::vector<float> norms_;      ///< [n_groups * width]
};

/// What this build of the core contains.
struct BuildInfo {
  std::string version;
  std::string compiler;
  bool openmp = false;
  std::string simd;  ///< The instruction set the native kernels dispatch to (active_isa()).
};
BuildInfo build_info();

/// The instruction set the posterior kernel and the k-NN scan dispatch to on this CPU, e.g.
/// "x86-64-v4 (AVX-512)": the best one the CPU supports, or a lower one named by the environment
/// variable DTPM_FORCE_ISA (baseline, x86-64-v3, x86-64-v4), read once per process.
std::string active_isa();

/// Threads the OpenMP kernels use (1 without OpenMP).
int max_threads();

/// Sets the threads the OpenMP kernels use from now on (no effect without OpenMP).
/// @throws std::invalid_argument if n < 1.
void set_max_threads(int n);

}  // namespace dtpm

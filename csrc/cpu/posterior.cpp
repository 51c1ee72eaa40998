// Inverse-Gamma posterior over the diffusion time (ALGORITHM.md section 3), on host memory.
//
// Per row the log-density f_t = -c log(sigma2_t) - b / sigma2_t (c = d/2, b = D2/2) is
// unimodal in t, so the grid argmax comes from a binary search over the T-1 points where
// consecutive terms swap order, and the mean only sums the terms within kWindowNats of
// the peak (located by two more binary searches). Only the full posterior evaluates
// every grid point.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtpm/dtpm.hpp"
#include "simd_dispatch.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dtpm {
namespace {

// A term this far below the peak weighs < 1e-13 of it: far below float32 resolution of the sums.
constexpr double kWindowNats = 30.0;
constexpr int64_t kRowsPerBlock = 512;

/// The grid plus the precomputed mode boundaries.
struct Grid {
  const double* log_s2;
  const double* inv_s2;
  int64_t T;
  // boundary[t] (t < T-1): the sigma2* = b/c above which term t+1 outweighs term t.
  std::vector<double> boundary;
};

Grid make_grid(const Schedule& s) {
  Grid g{s.log_sigma2, s.inv_sigma2, s.T, {}};
  g.boundary.resize(static_cast<size_t>(std::max<int64_t>(s.T - 1, 0)));
  for (int64_t t = 0; t + 1 < s.T; ++t) {
    // f_{t+1} > f_t  <=>  b/c > (L_{t+1} - L_t) / (I_t - I_{t+1}), a mean of sigma2_t, sigma2_{t+1}.
    g.boundary[t] = (s.log_sigma2[t + 1] - s.log_sigma2[t]) / (s.inv_sigma2[t] - s.inv_sigma2[t + 1]);
  }
  return g;
}

/// Branch-free exp for x <= 0 in float32 (Cody-Waite reduction, degree-6 polynomial,
/// relative error ~1e-7); below -87 it returns 0. Plain arithmetic so loops vectorise.
inline float exp_nonpositive(float x) {
  const float keep = x >= -87.0f ? 1.0f : 0.0f;
  x = std::max(x, -87.0f);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale * keep;
}

/// First index in [lo, hi) where before(index) is false; before must be true then false.
template <typename Pred>
inline int64_t partition_point(int64_t lo, int64_t hi, Pred before) {
  int64_t n = hi - lo;
  if (n <= 0) return lo;
  while (n > 1) {
    const int64_t half = n / 2;
    lo = before(lo + half - 1) ? lo + half : lo;
    n -= half;
  }
  return lo + (before(lo) ? 1 : 0);
}

/// Scores one block of rows given b = D2/2 per row (host). Compiled per instruction set.
DTPM_SIMD_CLONES
void block_scores(const double* half_d2, int64_t rows, double c, const Grid& g, int32_t* mode,
                  double* mean, double* posterior) {
  const int64_t T = g.T;
  const double* L = g.log_s2;
  const double* I = g.inv_s2;
  for (int64_t i = 0; i < rows; ++i) {
    const double b = half_d2[i];
    double* post_row = posterior ? posterior + i * T : nullptr;
    if (b == 0.0 || std::isinf(b)) {  // degenerate: all mass on one end of the grid
      const int64_t at = b == 0.0 ? 0 : T - 1;
      if (mode) mode[i] = static_cast<int32_t>(at);
      if (mean) mean[i] = static_cast<double>(at);
      if (post_row) {
        std::fill(post_row, post_row + T, 0.0);
        post_row[at] = 1.0;
      }
      continue;
    }
    const double s_star = b / c;
    const double* bd = g.boundary.data();
    const int64_t m = partition_point(0, T - 1, [&](int64_t t) { return bd[t] < s_star; });
    if (mode) mode[i] = static_cast<int32_t>(m);
    if (!mean && !post_row) continue;

    const double f_peak = -c * L[m] - b * I[m];
    int64_t lo = 0, hi = T;
    if (!post_row) {
      const double floor_f = f_peak - kWindowNats;
      lo = partition_point(0, m, [&](int64_t t) { return -c * L[t] - b * I[t] < floor_f; });
      hi = partition_point(m + 1, T, [&](int64_t t) { return -c * L[t] - b * I[t] >= floor_f; });
    }
    float sum_w = 0.0f, sum_tw = 0.0f;
    if (post_row) {
#pragma omp simd reduction(+ : sum_w, sum_tw)
      for (int64_t t = 0; t < T; ++t) {
        const float w = exp_nonpositive(static_cast<float>(-c * L[t] - b * I[t] - f_peak));
        post_row[t] = w;
        sum_w += w;
        sum_tw += w * static_cast<float>(t);
      }
      const double inv = 1.0 / static_cast<double>(sum_w);
      for (int64_t t = 0; t < T; ++t) post_row[t] *= inv;
    } else {
#pragma omp simd reduction(+ : sum_w, sum_tw)
      for (int64_t t = lo; t < hi; ++t) {
        const float w = exp_nonpositive(static_cast<float>(-c * L[t] - b * I[t] - f_peak));
        sum_w += w;
        sum_tw += w * static_cast<float>(t);
      }
    }
    if (mean) mean[i] = static_cast<double>(sum_tw) / static_cast<double>(sum_w);
  }
}

void check_schedule(const Schedule& s) {
  if (s.T < 1) throw std::invalid_argument("schedule: T must be >= 1, got " + std::to_string(s.T));
  if (!s.log_sigma2 || !s.inv_sigma2) throw std::invalid_argument("schedule: null table");
  for (int64_t t = 0; t < s.T; ++t) {
    if (!std::isfinite(s.log_sigma2[t]) || !(s.inv_sigma2[t] > 0.0) || !std::isfinite(s.inv_sigma2[t]))
      throw std::invalid_argument("schedule: sigma2 must be finite and positive at every step");
    if (t > 0 && !(s.log_sigma2[t] > s.log_sigma2[t - 1]))
      throw std::invalid_argument("schedule: sigma2 must increase strictly with t");
  }
}

}  // namespace

template <typename Real>
void posterior_scores(const Real* sqdist, int64_t n, int64_t k, int64_t n_features,
                      const Schedule& schedule, int32_t* mode, double* mean, double* posterior) {
  if (n < 0) throw std::invalid_argument("posterior_scores: n must be >= 0");
  if (k < 1) throw std::invalid_argument("posterior_scores: need at least one neighbour per row");
  if (n_features <= 2)
    throw std::invalid_argument("posterior_scores: n_features must be > 2 (the inverse-Gamma shape d/2 - 1 must be positive), got " +
                                std::to_string(n_features));
  check_schedule(schedule);
  const Grid grid = make_grid(schedule);
  const double c = 0.5 * static_cast<double>(n_features);  // a + 1
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  int saw_nan = 0;

#pragma omp parallel for schedule(static) reduction(| : saw_nan) if (n > 4 * kRowsPerBlock)
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t begin = blk * kRowsPerBlock;
    const int64_t rows = std::min(kRowsPerBlock, n - begin);
    double half_d2[kRowsPerBlock];
    for (int64_t i = 0; i < rows; ++i) {
      const Real* row = sqdist + (begin + i) * k;
      double total = 0.0;
      for (int64_t j = 0; j < k; ++j) total += std::max(static_cast<double>(row[j]), 0.0);
      if (std::isnan(total)) {
        saw_nan = 1;
        total = 0.0;
      }
      half_d2[i] = 0.5 * total / static_cast<double>(k);
    }
    block_scores(half_d2, rows, c, grid, mode ? mode + begin : nullptr, mean ? mean + begin : nullptr,
                 posterior ? posterior + begin * schedule.T : nullptr);
  }
  if (saw_nan) throw std::invalid_argument("posterior_scores: a squared distance is NaN");
}

template void posterior_scores<float>(const float*, int64_t, int64_t, int64_t, const Schedule&, int32_t*,
                                      double*, double*);
template void posterior_scores<double>(const double*, int64_t, int64_t, int64_t, const Schedule&, int32_t*,
                                       double*, double*);

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace dtpm

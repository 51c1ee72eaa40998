// Inverse-Gamma posterior over the diffusion time (docs/METHOD.md section 3), on host memory.
//
// Per row the log-density f_t = -c log(sigma2_t) - b / sigma2_t (c = d/2, b = D2/2) is
// unimodal in t, so the grid argmax is the number of the T-1 swap points (where consecutive
// terms swap order) below the continuous mode b/c: a bucket lookup over the bits of b/c. The
// mean sums the terms within kWindowBits (base-2 log) of the peak, walking outwards from it a
// chunk of grid points at a time; a call with many rows instead interpolates a table of the
// mean as a function of b (posterior_table.cpp), checked against the exact mean before use.
// Only the full posterior evaluates every grid point. This file holds the checks, the grid and
// the threading; posterior_block.cpp the per-row work, compiled per instruction set.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtpm/dtpm.hpp"
#include "dtpm/posterior_arguments.hpp"
#include "isa.hpp"
#include "posterior_grid.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dtpm {
namespace detail {

Grid make_grid(const Schedule& s) {
  Grid g;
  g.log_s2 = s.log_sigma2;
  g.inv_s2 = s.inv_sigma2;
  g.T = s.T;
  // Padding: log sigma2 = +inf gives a log-weight of -inf (weight 0) for every finite b.
  g.log2_s2_padded.assign(static_cast<size_t>(s.T + 2 * kChunk), std::numeric_limits<float>::infinity());
  g.inv2_s2_padded.assign(static_cast<size_t>(s.T + 2 * kChunk), 0.0f);
  g.step_padded.resize(static_cast<size_t>(s.T + 2 * kChunk));
  for (int64_t t = -kChunk; t < s.T + kChunk; ++t) g.step_padded[t + kChunk] = static_cast<float>(t);
  for (int64_t t = 0; t < s.T; ++t) {
    g.log2_s2_padded[t + kChunk] = static_cast<float>(kLog2e * s.log_sigma2[t]);
    g.inv2_s2_padded[t + kChunk] = static_cast<float>(kLog2e * s.inv_sigma2[t]);
  }
  g.boundary.resize(static_cast<size_t>(std::max<int64_t>(s.T - 1, 0)));
  for (int64_t t = 0; t + 1 < s.T; ++t) {
    // f_{t+1} > f_t  <=>  b/c > (L_{t+1} - L_t) / (I_t - I_{t+1}), a mean of sigma2_t, sigma2_{t+1}.
    g.boundary[t] = (s.log_sigma2[t + 1] - s.log_sigma2[t]) / (s.inv_sigma2[t] - s.inv_sigma2[t + 1]);
  }
  // Mode buckets from the first boundary's to the last boundary's (at most 2^16 of them).
  if (s.T >= 2) {
    auto key_of = [](double v) {
      uint64_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      return bits >> (52 - kModeBucketBits);
    };
    const uint64_t first = key_of(g.boundary.front()), last = key_of(g.boundary.back());
    if (g.boundary.front() > 0.0 && last - first < (uint64_t{1} << 16)) {
      g.first_bucket_key = first;
      g.boundaries_below_bucket.resize(static_cast<size_t>(last - first + 1));
      int64_t below = 0;
      for (uint64_t q = first; q <= last; ++q) {
        while (below < s.T - 1 && key_of(g.boundary[below]) < q) ++below;
        g.boundaries_below_bucket[q - first] = static_cast<int32_t>(below);
      }
    }
  }
  return g;
}

}  // namespace detail

namespace {

constexpr int64_t kRowsPerBlock = 512;
/// Fewer rows run on the calling thread: ~1 ms of work or less, where waking a second thread
/// costs more than it saves, and much more when another process holds the other cores.
constexpr int64_t kParallelMinRows = 16384;
/// The mean table is built when it costs at most one exact evaluation (~1.4 us, ~10-16 rows of
/// the windowed sum) per this many rows: then it at least halves the cost of the means.
constexpr int64_t kRowsPerTableEvaluation = 32;

/// b = D2 / 2 of one row (negative distances count as 0); NaN if a distance is NaN.
template <typename Real>
inline double half_mean_sqdist(const Real* row, int64_t k) {
  double total = 0.0;
  for (int64_t j = 0; j < k; ++j) total += std::max(static_cast<double>(row[j]), 0.0);
  return 0.5 * total / static_cast<double>(k);
}

struct IsaChoice {
  detail::BlockScoresFn block_scores;
  const char* name;
};

/// The per-row routine compiled for the best instruction set this CPU supports.
IsaChoice pick_isa() {
  const detail::Isa which = detail::detect_isa();
  switch (which) {
#if defined(DTPM_DISPATCH_X86)
    case detail::Isa::x86_64_v4:
      return {detail::block_scores_x86_64_v4, detail::isa_name(which)};
    case detail::Isa::x86_64_v3:
      return {detail::block_scores_x86_64_v3, detail::isa_name(which)};
#endif
    default:
      return {detail::block_scores_baseline, detail::isa_name(which)};
  }
}

const IsaChoice& isa() {
  static const IsaChoice choice = pick_isa();
  return choice;
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
void posterior_scores(const Real* sqdist, int64_t n, int64_t k, int64_t n_features, const Schedule& schedule,
                      int32_t* mode, double* mean, double* posterior) {
  check_posterior_arguments(n, k, n_features);
  check_schedule(schedule);
  const detail::Grid grid = detail::make_grid(schedule);
  const detail::BlockScoresFn block_scores = isa().block_scores;
  const double c = 0.5 * static_cast<double>(n_features);  // a + 1
  const int64_t n_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  int saw_nan = 0;

  // Many rows wanting the mean (not the full posterior): tabulate it over the rows' range of b.
  // That pass leaves each row's b in its mean slot, so the scoring pass below reads it back
  // instead of summing the distances again; the slot is overwritten with the mean.
  detail::MeanTable table;
  const int64_t max_evaluations = n / kRowsPerTableEvaluation;
  const bool b_in_mean = mean && !posterior && max_evaluations > 0;
  if (b_in_mean) {
    double b_lo = std::numeric_limits<double>::infinity(), b_hi = 0.0;
#pragma omp parallel for schedule(static) reduction(min : b_lo) reduction(max : b_hi) \
    reduction(| : saw_nan) if (n >= kParallelMinRows)
    for (int64_t i = 0; i < n; ++i) {
      double b = half_mean_sqdist(sqdist + i * k, k);
      if (std::isnan(b)) {
        saw_nan = 1;
        b = 0.0;
      } else if (b > 0.0 && b < std::numeric_limits<double>::infinity()) {
        b_lo = std::min(b_lo, b);
        b_hi = std::max(b_hi, b);
      }
      mean[i] = b;
    }
    if (saw_nan) throw std::invalid_argument("posterior_scores: a squared distance is NaN");
    table = detail::make_mean_table(grid, c, b_lo, b_hi, max_evaluations);
  }
  const detail::MeanTable* table_used = table.intervals > 0 ? &table : nullptr;

#pragma omp parallel for schedule(static) reduction(| : saw_nan) if (n >= kParallelMinRows)
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t begin = blk * kRowsPerBlock;
    const int64_t rows = std::min(kRowsPerBlock, n - begin);
    double half_d2[kRowsPerBlock];
    if (b_in_mean) {
      std::copy(mean + begin, mean + begin + rows, half_d2);
    } else {
      for (int64_t i = 0; i < rows; ++i) {
        half_d2[i] = half_mean_sqdist(sqdist + (begin + i) * k, k);
        if (std::isnan(half_d2[i])) {
          saw_nan = 1;
          half_d2[i] = 0.0;
        }
      }
    }
    block_scores(half_d2, rows, c, grid, table_used, mode ? mode + begin : nullptr,
                 mean ? mean + begin : nullptr, posterior ? posterior + begin * schedule.T : nullptr);
  }
  if (saw_nan) throw std::invalid_argument("posterior_scores: a squared distance is NaN");
}

template void posterior_scores<float>(const float*, int64_t, int64_t, int64_t, const Schedule&, int32_t*,
                                      double*, double*);
template void posterior_scores<double>(const double*, int64_t, int64_t, int64_t, const Schedule&, int32_t*,
                                       double*, double*);

std::string active_isa() { return isa().name; }

void set_max_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_max_threads: need at least 1 thread, got " + std::to_string(n));
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace dtpm

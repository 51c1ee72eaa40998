// Internal to the posterior kernel: the precomputed grid, and the per-row scoring routine
// compiled once per instruction set (posterior_block.cpp) and picked at run time.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "dtpm/dtpm.hpp"

namespace dtpm::detail {

/// The windowed mean walks outwards from the peak this many grid points at a time.
constexpr int64_t kChunk = 16;
/// A term this many bits (base-2 log) below the peak weighs < 1e-10 of it: leaving it out
/// moves the mean by less than 1e-7 of the grid range.
constexpr float kWindowBits = 33.0f;
constexpr double kLog2e = 1.4426950408889634;
/// Mode buckets per octave of sigma2*, as a power of 2: 256 keep at most a few boundaries per
/// bucket on the default grids (consecutive sigma2 differ by >= 0.28%).
constexpr int kModeBucketBits = 8;

/// The grid plus what every row reuses.
struct Grid {
  const double* log_s2 = nullptr;  ///< [T] log sigma2_t (host)
  const double* inv_s2 = nullptr;  ///< [T] 1 / sigma2_t (host)
  int64_t T = 0;
  /// [T-1] boundary[t]: the sigma2* = b/c above which term t+1 outweighs term t (increasing).
  std::vector<double> boundary;
  /// Buckets over sigma2*, 2^kModeBucketBits per octave (by the bits of the double), each with
  /// the number of boundaries below its start; empty when the grid spans too many octaves.
  std::vector<int32_t> boundaries_below_bucket;
  uint64_t first_bucket_key = 0;

  /// The grid mode for the continuous mode s_star = b/c (> 0): the number of boundaries below
  /// it. A bucket lookup plus the one or two boundaries inside the bucket; a binary search
  /// when there are no buckets. Both count the same boundaries, so they agree exactly.
  int64_t mode_of(double s_star) const {
    const int64_t n_boundaries = T - 1;
    if (!boundaries_below_bucket.empty()) {
      uint64_t key;
      std::memcpy(&key, &s_star, sizeof key);
      const uint64_t bucket = (key >> (52 - kModeBucketBits)) - first_bucket_key;
      if (bucket >= boundaries_below_bucket.size())  // wraps around below the first bucket
        return (key >> (52 - kModeBucketBits)) < first_bucket_key ? 0 : n_boundaries;
      int64_t m = boundaries_below_bucket[bucket];
      while (m < n_boundaries && boundary[m] < s_star) ++m;
      return m;
    }
    int64_t lo = 0, n = n_boundaries;  // first index whose boundary is >= s_star
    while (n > 0) {
      const int64_t half = n / 2;
      if (boundary[lo + half] < s_star) {
        lo += half + 1;
        n -= half + 1;
      } else {
        n = half;
      }
    }
    return lo;
  }
  /// log2(e) log sigma2_t and log2(e) / sigma2_t in float32, padded by kChunk entries on each
  /// side whose weight underflows, so whole chunks can be read past either end of the grid.
  std::vector<float> log2_s2_padded, inv2_s2_padded;
  /// t as float32, padded the same way (the weights the mean multiplies by).
  std::vector<float> step_padded;
};

Grid make_grid(const Schedule& schedule);

/// The posterior mean as a function of b alone (the grid and c = d/2 are fixed within a call),
/// tabulated for calls with many rows: a cubic Hermite piece per interval, from the exact mean
/// and its derivative at both ends. Knots are uniform in b within each octave, P = 2^bits per
/// octave, so a row's interval and position come from the bits of its double b: no log, no
/// search. Built only when checked at every interval midpoint against the exact mean
/// (posterior_table.cpp); rows outside the tabulated octaves use the windowed sum.
struct MeanTable {
  int shift = 52;          ///< 52 - log2(knots per octave): mantissa bits below an interval
  double unit = 0.0;       ///< 2^-shift: those bits as a position in [0, 1)
  uint64_t first_key = 0;  ///< the lowest knot's double bits, shifted right by `shift`
  uint64_t intervals = 0;  ///< 0: no table
  /// [intervals][4] coefficients of p(u) = c0 + u (c1 + u (c2 + u c3)), u in [0, 1) within an interval.
  std::vector<double> coefficients;

  /// The tabulated mean at b (> 0, finite) in *mean, or false when b lies outside the table.
  bool lookup(double b, double* mean) const {
    uint64_t key;
    std::memcpy(&key, &b, sizeof key);
    const uint64_t interval = (key >> shift) - first_key;  // wraps around below the table
    if (interval >= intervals) return false;
    const double u = static_cast<double>(key & ((uint64_t{1} << shift) - 1)) * unit;
    const double* p = coefficients.data() + 4 * interval;
    *mean = p[0] + u * (p[1] + u * (p[2] + u * p[3]));
    return true;
  }
};

/// The table for rows whose b lies in [b_lo, b_hi], or an empty one (intervals == 0) when it
/// would need more than max_evaluations exact means or misses kTableTolerance somewhere.
MeanTable make_mean_table(const Grid& grid, double c, double b_lo, double b_hi, int64_t max_evaluations);

/// Largest error of the tabulated mean at any interval midpoint, in grid steps.
constexpr double kTableTolerance = 1e-5;

/// Scores `rows` rows given b = D2/2 per row; outputs may be nullptr (host memory). The mean
/// comes from `table` where it covers b (table may be nullptr), else from the windowed sum.
using BlockScoresFn = void (*)(const double* half_d2, int64_t rows, double c, const Grid& grid,
                               const MeanTable* table, int32_t* mode, double* mean, double* posterior);

void block_scores_baseline(const double*, int64_t, double, const Grid&, const MeanTable*, int32_t*, double*,
                           double*);
#if defined(DTPM_DISPATCH_X86)
void block_scores_x86_64_v3(const double*, int64_t, double, const Grid&, const MeanTable*, int32_t*, double*,
                            double*);
void block_scores_x86_64_v4(const double*, int64_t, double, const Grid&, const MeanTable*, int32_t*, double*,
                            double*);
#endif

}  // namespace dtpm::detail

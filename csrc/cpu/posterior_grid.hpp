// Internal to the posterior kernel: the precomputed grid, and the per-row scoring routine
// compiled once per instruction set (posterior_block.cpp) and picked at run time.
#pragma once

#include <cstdint>
#include <vector>

#include "dtpm/dtpm.hpp"

namespace dtpm::detail {

/// The windowed mean walks outwards from the peak this many grid points at a time.
constexpr int64_t kChunk = 16;
/// A term this many bits (base-2 log) below the peak weighs < 1e-10 of it: leaving it out
/// moves the mean by less than 1e-7 of the grid range.
constexpr float kWindowBits = 33.0f;
constexpr double kLog2e = 1.4426950408889634;

/// The grid plus what every row reuses.
struct Grid {
  const double* log_s2;  ///< [T] log sigma2_t (host)
  const double* inv_s2;  ///< [T] 1 / sigma2_t (host)
  int64_t T;
  /// [T-1] boundary[t]: the sigma2* = b/c above which term t+1 outweighs term t (increasing).
  std::vector<double> boundary;
  /// log2(e) log sigma2_t and log2(e) / sigma2_t in float32, padded by kChunk entries on each
  /// side whose weight underflows, so whole chunks can be read past either end of the grid.
  std::vector<float> log2_s2_padded, inv2_s2_padded;
  /// t as float32, padded the same way (the weights the mean multiplies by).
  std::vector<float> step_padded;
};

Grid make_grid(const Schedule& schedule);

/// Scores `rows` rows given b = D2/2 per row; outputs may be nullptr (host memory).
using BlockScoresFn = void (*)(const double* half_d2, int64_t rows, double c, const Grid& grid, int32_t* mode,
                               double* mean, double* posterior);

void block_scores_baseline(const double*, int64_t, double, const Grid&, int32_t*, double*, double*);
#if defined(DTPM_DISPATCH_X86)
void block_scores_x86_64_v3(const double*, int64_t, double, const Grid&, int32_t*, double*, double*);
void block_scores_x86_64_v4(const double*, int64_t, double, const Grid&, int32_t*, double*, double*);
#endif

}  // namespace dtpm::detail

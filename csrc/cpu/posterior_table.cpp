// The tabulated posterior mean (posterior_grid.hpp, MeanTable): for a fixed grid and c = d/2
// the grid mean of t is a smooth function of b = D2/2 alone, so a call with many rows
// evaluates it exactly at a few hundred knots and interpolates between them. Every interval is
// checked at its midpoint against the exact mean before the table is used.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "posterior_grid.hpp"

namespace dtpm::detail {
namespace {

/// The grid mean of t at b and its derivative in b, from every term within 60 nats of the
/// peak, in double precision: the reference the table is built from and checked against.
struct MeanAndSlope {
  double mean, slope;
};

MeanAndSlope exact_mean(double b, double c, const Grid& g) {
  double peak = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < g.T; ++t) peak = std::max(peak, -c * g.log_s2[t] - b * g.inv_s2[t]);
  double s_w = 0.0, s_tw = 0.0, s_rw = 0.0, s_trw = 0.0;
  for (int64_t t = 0; t < g.T; ++t) {
    const double x = -c * g.log_s2[t] - b * g.inv_s2[t] - peak;
    if (x < -60.0) continue;
    const double w = std::exp(x), r = g.inv_s2[t], tt = static_cast<double>(t);
    s_w += w;
    s_tw += tt * w;
    s_rw += r * w;
    s_trw += tt * r * w;
  }
  const double mean = s_tw / s_w;
  // d/db of sum t w / sum w with dw_t/db = -w_t / sigma2_t: minus the covariance of t and 1/sigma2.
  return {mean, -(s_trw / s_w - mean * (s_rw / s_w))};
}

/// Knot j of a table starting at octave e_lo with 2^bits knots per octave.
double knot(int64_t j, int e_lo, int bits) {
  const int64_t per_octave = int64_t{1} << bits;
  const int64_t octave = j >> bits, within = j & (per_octave - 1);
  return std::ldexp(1.0 + static_cast<double>(within) / static_cast<double>(per_octave),
                    e_lo + static_cast<int>(octave));
}

/// The table with 2^bits knots per octave over octaves [e_lo, e_hi), or an empty one if any
/// interval misses kTableTolerance at its midpoint.
MeanTable try_table(const Grid& g, double c, int e_lo, int e_hi, int bits) {
  const int64_t intervals = static_cast<int64_t>(e_hi - e_lo) << bits;
  // Exact values at the knots (even slots) and interval midpoints (odd slots).
  std::vector<MeanAndSlope> exact(static_cast<size_t>(2 * intervals + 1));
#pragma omp parallel for schedule(static) if (intervals > 512)  // from ~1 ms of work
  for (int64_t s = 0; s < 2 * intervals + 1; ++s) {
    const double b =
        s % 2 == 0 ? knot(s / 2, e_lo, bits) : 0.5 * (knot(s / 2, e_lo, bits) + knot(s / 2 + 1, e_lo, bits));
    exact[s] = exact_mean(b, c, g);
  }
  MeanTable table;
  table.shift = 52 - bits;
  table.unit = std::ldexp(1.0, -table.shift);
  const double lowest = knot(0, e_lo, bits);
  std::memcpy(&table.first_key, &lowest, sizeof lowest);
  table.first_key >>= table.shift;
  table.coefficients.resize(static_cast<size_t>(4 * intervals));
  for (int64_t j = 0; j < intervals; ++j) {
    const double width = knot(j + 1, e_lo, bits) - knot(j, e_lo, bits);
    const MeanAndSlope& left = exact[2 * j];
    const MeanAndSlope& right = exact[2 * j + 2];
    // Cubic Hermite on u in [0, 1]: values and slopes (scaled to u) at both ends.
    const double v0 = left.mean, v1 = right.mean, d0 = left.slope * width, d1 = right.slope * width;
    double* p = table.coefficients.data() + 4 * j;
    p[0] = v0;
    p[1] = d0;
    p[2] = 3.0 * (v1 - v0) - 2.0 * d0 - d1;
    p[3] = 2.0 * (v0 - v1) + d0 + d1;
    const double at_middle = p[0] + 0.5 * (p[1] + 0.5 * (p[2] + 0.5 * p[3]));
    if (!(std::fabs(at_middle - exact[2 * j + 1].mean) <= kTableTolerance)) return MeanTable{};
  }
  table.intervals = static_cast<uint64_t>(intervals);
  return table;
}

}  // namespace

MeanTable make_mean_table(const Grid& g, double c, double b_lo, double b_hi, int64_t max_evaluations) {
  if (!(b_lo > 0.0) || !(b_hi >= b_lo) || !std::isfinite(b_hi) || g.T < 2) return MeanTable{};
  // Only the octaves where the mean still moves: beyond 2^24 on either side of the grid's
  // sigma2 range (times c) the posterior is so narrow that the windowed sum costs a few terms.
  const int grid_lo = std::ilogb(c * std::exp(g.log_s2[0])) - 24;
  const int grid_hi = std::ilogb(c * std::exp(g.log_s2[g.T - 1])) + 24;
  const int e_lo = std::max(std::ilogb(b_lo), grid_lo);
  const int e_hi = std::min(std::ilogb(b_hi), grid_hi) + 1;
  if (e_hi <= e_lo) return MeanTable{};
  // Transitions between grid points sharpen as c grows; the cubic's error falls 16x per
  // doubling of the knots. Measured at the midpoints (T = 300, 64 knots per octave): 9e-7 at
  // c = 32, 5e-6 at c = 150, 7e-5 at c = 392. So start with 16 sqrt(c) knots per octave (64 at
  // c = 16, 512 at c = 392) and refine while the check fails and evaluations stay affordable.
  int bits = std::clamp(static_cast<int>(std::ceil(0.5 * std::log2(c))) + 4, 4, 12);
  for (; bits <= 14; ++bits) {
    const int64_t evaluations = 2 * (static_cast<int64_t>(e_hi - e_lo) << bits) + 1;
    if (evaluations > max_evaluations) break;
    MeanTable table = try_table(g, c, e_lo, e_hi, bits);
    if (table.intervals > 0) return table;
  }
  return MeanTable{};
}

}  // namespace dtpm::detail

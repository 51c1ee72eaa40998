// The per-row posterior scoring, compiled once per instruction set (CMake passes DTPM_ISA and
// the matching -march); posterior.cpp picks the best one for the running CPU. Vectors are
// GCC/Clang vector extensions at the native width of that instruction set (isa_vector.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "isa_vector.hpp"
#include "posterior_grid.hpp"

namespace dtpm::detail {
namespace {

constexpr int kVectorsPerChunk = static_cast<int>(kChunk) / kLanes;

/// Branch-free 2^x for x <= 0, lane-wise, float32 (relative error < 3e-7). Below -126 it
/// returns a value under 2^-126 instead of 0: harmless in sums whose largest term is 1.
inline vfloat exp2_nonpositive(vfloat x) {
  const vfloat lowest = vfloat{} - 126.0f;
  x = x > lowest ? x : lowest;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat k = (x + round_magic) - round_magic;
  const vfloat f = x - k;  // in [-0.5, 0.5]
  // Degree-5 polynomial fitted to 2^f on [-0.5, 0.5] for minimal relative error (7.5e-8).
  vfloat p = f * 1.3276471963693207e-3f + 9.675541739310978e-3f;
  p = p * f + 5.550713277122638e-2f;
  p = p * f + 2.4022119716402857e-1f;
  p = p * f + 6.931469670603301e-1f;
  p = p * f + 1.0000000716561703f;
  const vint bits = (__builtin_convertvector(k, vint) + 127) << 23;
  return p * (vfloat)bits;  // same-size vector cast: a bit cast
}

/// Full posterior of one row: every grid point, log-weights in double before the float exp.
inline void full_posterior(double b, double c, int64_t m, const Grid& g, double* post_row, double* mean) {
  const int64_t T = g.T;
  const double f_peak = -c * g.log_s2[m] - b * g.inv_s2[m];
  for (int64_t t0 = 0; t0 < T; t0 += kLanes) {
    vfloat x;
    for (int j = 0; j < kLanes; ++j) {
      const int64_t t = std::min<int64_t>(t0 + j, T - 1);
      x[j] = static_cast<float>(kLog2e * (-c * g.log_s2[t] - b * g.inv_s2[t] - f_peak));
    }
    const vfloat w = exp2_nonpositive(x);
    for (int j = 0; j < kLanes && t0 + j < T; ++j) post_row[t0 + j] = w[j];
  }
  double sum_w = 0.0, sum_tw = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    sum_w += post_row[t];
    sum_tw += post_row[t] * static_cast<double>(t);
  }
  const double inv = 1.0 / sum_w;
  for (int64_t t = 0; t < T; ++t) post_row[t] *= inv;
  if (mean) *mean = sum_tw * inv;
}

/// Posterior mean of one row from the terms within kWindowBits of the peak at m: walk right,
/// then left, a chunk at a time, until a chunk's outer term drops below the window (the
/// log-density is unimodal in t, so every later term is smaller still).
inline double windowed_mean(float b, float c, int64_t m, const Grid& g) {
  const float* L2 = g.log2_s2_padded.data() + kChunk;  // valid for t in [-kChunk, T + kChunk)
  const float* I2 = g.inv2_s2_padded.data() + kChunk;
  const float* step = g.step_padded.data() + kChunk;
  const float peak = -c * L2[m] - b * I2[m];
  vfloat acc_w[kVectorsPerChunk] = {}, acc_tw[kVectorsPerChunk] = {};
  auto add_chunk = [&](int64_t t0) {
    for (int v = 0; v < kVectorsPerChunk; ++v) {
      const int64_t t = t0 + v * kLanes;
      const vfloat w = exp2_nonpositive(-c * load(L2 + t) - b * load(I2 + t) - peak);
      acc_w[v] += w;
      acc_tw[v] += w * load(step + t);
    }
  };
  auto below_window = [&](int64_t t) { return -c * L2[t] - b * I2[t] - peak < -kWindowBits; };
  for (int64_t t0 = m; t0 < g.T; t0 += kChunk) {
    add_chunk(t0);
    if (below_window(t0 + kChunk - 1)) break;
  }
  for (int64_t t0 = m - kChunk; t0 > -kChunk; t0 -= kChunk) {
    add_chunk(t0);
    if (below_window(t0)) break;
  }
  vfloat sum_w = acc_w[0], sum_tw = acc_tw[0];
  for (int v = 1; v < kVectorsPerChunk; ++v) {
    sum_w += acc_w[v];
    sum_tw += acc_tw[v];
  }
  // Pairwise lane reduction: a short dependency chain instead of kLanes serial adds.
  float lanes_w[kLanes], lanes_tw[kLanes];
  std::memcpy(lanes_w, &sum_w, sizeof lanes_w);
  std::memcpy(lanes_tw, &sum_tw, sizeof lanes_tw);
#pragma GCC unroll 8
  for (int width = kLanes / 2; width > 0; width /= 2) {
#pragma GCC unroll 8
    for (int j = 0; j < width; ++j) {
      lanes_w[j] += lanes_w[j + width];
      lanes_tw[j] += lanes_tw[j + width];
    }
  }
  const double total_w = lanes_w[0], total_tw = lanes_tw[0];
  return total_tw / total_w;
}

}  // namespace

void DTPM_CONCAT(block_scores_, DTPM_ISA)(const double* half_d2, int64_t rows, double c, const Grid& g,
                                          const MeanTable* table, int32_t* mode, double* mean,
                                          double* posterior) {
  const int64_t T = g.T;
  // From this b on, term T-2 weighs under e^-745 of term T-1 (0 in double): all mass at T-1.
  // (Also keeps b within float range for the windowed sum.)
  const double b_all_last =
      T < 2 ? std::numeric_limits<double>::infinity()
            : (c * (g.log_s2[T - 1] - g.log_s2[T - 2]) + 745.0) / (g.inv_s2[T - 2] - g.inv_s2[T - 1]);
  for (int64_t i = 0; i < rows; ++i) {
    const double b = half_d2[i];
    double* post_row = posterior ? posterior + i * T : nullptr;
    if (b == 0.0 || b >= b_all_last) {  // degenerate: all mass on one end of the grid
      const int64_t at = b == 0.0 ? 0 : T - 1;
      if (mode) mode[i] = static_cast<int32_t>(at);
      if (mean) mean[i] = static_cast<double>(at);
      if (post_row) {
        std::fill(post_row, post_row + T, 0.0);
        post_row[at] = 1.0;
      }
      continue;
    }
    // The grid mode: how many swap points lie below the continuous mode b / c.
    auto grid_mode = [&] { return g.mode_of(b / c); };
    if (post_row) {
      const int64_t m = grid_mode();
      if (mode) mode[i] = static_cast<int32_t>(m);
      full_posterior(b, c, m, g, post_row, mean ? mean + i : nullptr);
      continue;
    }
    const bool tabulated = mean && table && table->lookup(b, mean + i);
    if (mode || (mean && !tabulated)) {
      const int64_t m = grid_mode();
      if (mode) mode[i] = static_cast<int32_t>(m);
      if (mean && !tabulated) mean[i] = windowed_mean(static_cast<float>(b), static_cast<float>(c), m, g);
    }
  }
}

}  // namespace dtpm::detail

// The brute-force k-NN scan, compiled once per instruction set (CMake passes DTPM_ISA and the
// matching -march); knn.cpp picks the best one for the running CPU. A register tile of
// kQueryRows queries x kVectors vectors of training rows accumulates q.x with FMAs, so no
// query x train distance matrix is ever written; each lane's partial distance is then compared
// with that query's current k-th best in one vector compare, and only lanes that beat it enter
// the sorted top-k list (a handful per query over a whole scan).
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "isa_vector.hpp"
#include "knn_scan.hpp"

#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace dtpm::detail {
namespace {

// Accumulators kQueryRows * kVectors stay in registers with room for the loads and broadcasts:
// 32 vector registers with AVX-512, 16 below it.
#if defined(__AVX512F__)
constexpr int kQueryRows = 8;
#else
constexpr int kQueryRows = 4;
#endif
constexpr int kVectors = 2;
constexpr int kWidth = kLanes * kVectors;

/// Bit j set where v[j] < limit.
inline unsigned lanes_below(vfloat v, float limit) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(static_cast<__m512>(v), _mm512_set1_ps(limit), _CMP_LT_OQ);
#elif defined(__AVX__)
  return static_cast<unsigned>(
      _mm256_movemask_ps(_mm256_cmp_ps(static_cast<__m256>(v), _mm256_set1_ps(limit), _CMP_LT_OQ)));
#elif defined(__SSE__)
  return static_cast<unsigned>(_mm_movemask_ps(_mm_cmplt_ps(static_cast<__m128>(v), _mm_set1_ps(limit))));
#else
  unsigned mask = 0;
  for (int j = 0; j < kLanes; ++j) mask |= static_cast<unsigned>(v[j] < limit) << j;
  return mask;
#endif
}

/// Inserts (dist, id) into the ascending list of k, given dist < dist[k-1]. Ids arrive in
/// increasing order, so placing it after equal distances keeps ties ordered by smaller id.
inline void insert_sorted(float* dist, int64_t* ids, int64_t k, float value, int64_t id) {
  int64_t at = k - 1;
  while (at > 0 && dist[at - 1] > value) {
    dist[at] = dist[at - 1];
    ids[at] = ids[at - 1];
    --at;
  }
  dist[at] = value;
  ids[at] = id;
}

void scan(const KnnScan& s, int64_t q_begin, int64_t q_end) {
  const int64_t d = s.d, k = s.k;
  std::vector<float> tile(static_cast<size_t>(kQueryRows * d));  // centred queries, row-major
  for (int64_t c0 = 0; c0 < s.n_groups; c0 += s.chunk_groups) {
    const int64_t c1 = std::min(s.n_groups, c0 + s.chunk_groups);
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kQueryRows) {
      const int64_t rows = std::min<int64_t>(kQueryRows, q_end - q0);
      float limit[kQueryRows];
      for (int r = 0; r < kQueryRows; ++r) {
        float* out = tile.data() + r * d;
        if (r < rows) {
          const float* q = s.queries + (q0 + r) * d;
          for (int64_t f = 0; f < d; ++f) out[f] = q[f] - s.center[f];
          limit[r] = s.best_partial[(q0 + r) * k + k - 1];
        } else {  // a padding query: computed, never inserted
          std::fill(out, out + d, 0.0f);
          limit[r] = -std::numeric_limits<float>::infinity();
        }
      }
      for (int64_t g = c0; g < c1; ++g) {
        const float* group = s.packed + g * d * kWidth;
        vfloat acc[kQueryRows][kVectors];
        for (int v = 0; v < kVectors; ++v) {
          const vfloat norm = load(s.norms + g * kWidth + v * kLanes);
          for (int r = 0; r < kQueryRows; ++r) acc[r][v] = norm;
        }
        for (int64_t f = 0; f < d; ++f) {
          vfloat x[kVectors];
          for (int v = 0; v < kVectors; ++v) x[v] = load(group + f * kWidth + v * kLanes);
          for (int r = 0; r < kQueryRows; ++r) {
            const float qf = tile[r * d + f];
            for (int v = 0; v < kVectors; ++v) acc[r][v] += qf * x[v];
          }
        }
        for (int r = 0; r < kQueryRows; ++r) {
          for (int v = 0; v < kVectors; ++v) {
            unsigned mask = lanes_below(acc[r][v], limit[r]);
            if (!mask) continue;
            float* best = s.best_partial + (q0 + r) * k;
            int64_t* best_ids = s.best_ids + (q0 + r) * k;
            float lanes[kLanes];
            std::memcpy(lanes, &acc[r][v], sizeof lanes);
            while (mask) {
              const int j = __builtin_ctz(mask);
              mask &= mask - 1;
              if (lanes[j] < limit[r]) {  // the limit may have dropped since the compare
                insert_sorted(best, best_ids, k, lanes[j], g * kWidth + v * kLanes + j);
                limit[r] = best[k - 1];
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

KnnKernel DTPM_CONCAT(knn_kernel_, DTPM_ISA)() { return {scan, kWidth, kQueryRows}; }

}  // namespace dtpm::detail

// Internal to the brute-force k-nearest-neighbour search (knn.cpp): the packed training set
// and the scan routine compiled once per instruction set (knn_block.cpp), picked at run time.
#pragma once

#include <cstdint>

namespace dtpm::detail {

/// One scan over the packed training rows for a range of queries.
///
/// Training rows are centred (minus `center`) and packed in groups of `width` rows; inside a
/// group, feature-major and scaled by -2: packed[(g * d + f) * width + w] = -2 (x_{g*width+w, f}
/// - center_f), so that one vector load gives one feature of `lanes` rows. norms[row] = |x -
/// center|^2, +inf for the padding rows that fill the last group (never returned). The running
/// top-k lives in best_partial/best_ids: per query, k partial distances |x|^2 - 2 q.x (query
/// centred too) ascending, with their ids; +inf / -1 where still empty.
struct KnnScan {
  const float* packed;  ///< [n_groups * d * width] (host)
  const float* norms;   ///< [n_groups * width] (host)
  const float* center;  ///< [d] (host)
  int64_t n_groups;
  int64_t chunk_groups;  ///< groups per cache chunk: every query tile runs over a chunk before the next
  int64_t d;
  const float* queries;  ///< [m, d] row-major, not centred (host)
  int64_t k;
  float* best_partial;  ///< [m, k] running top-k (host)
  int64_t* best_ids;    ///< [m, k] (host)
};

/// Updates the top-k of queries [q_begin, q_end) with every training row.
using KnnScanFn = void (*)(const KnnScan& scan, int64_t q_begin, int64_t q_end);

struct KnnKernel {
  KnnScanFn scan;
  int width;       ///< training rows per packed group
  int query_rows;  ///< queries per register tile
};

KnnKernel knn_kernel_baseline();
#if defined(DTPM_DISPATCH_X86)
KnnKernel knn_kernel_x86_64_v3();
KnnKernel knn_kernel_x86_64_v4();
#endif

}  // namespace dtpm::detail

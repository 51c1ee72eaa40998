// Brute-force exact k-NN (dtpm.hpp, BruteForceKnn): argument checks, packing, threading and
// the final exact distances; the scan itself is knn_block.cpp, compiled per instruction set.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtpm/dtpm.hpp"
#include "isa.hpp"
#include "knn_scan.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dtpm {
namespace {

// A chunk of packed training rows that every query tile of a thread runs over before the next
// one: small enough to stay in a core's L2 (2 MiB on the machine measured) next to the queries.
constexpr int64_t kChunkBytes = 512 * 1024;
// Queries per OpenMP work item: enough tiles to reuse each chunk, enough items to balance.
constexpr int64_t kMaxQueriesPerTask = 512;

const detail::KnnKernel& kernel() {
  static const detail::KnnKernel chosen = [] {
    switch (detail::detect_isa()) {
#if defined(DTPM_DISPATCH_X86)
      case detail::Isa::x86_64_v4:
        return detail::knn_kernel_x86_64_v4();
      case detail::Isa::x86_64_v3:
        return detail::knn_kernel_x86_64_v3();
#endif
      default:
        return detail::knn_kernel_baseline();
    }
  }();
  return chosen;
}

void require_finite(const float* x, int64_t count, const char* name) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(x[i]))
      throw std::invalid_argument(
          std::string(name) + " contains a non-finite value (NaN or inf) at flat index " + std::to_string(i));
}

int threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

BruteForceKnn::BruteForceKnn(const float* train, int64_t n_train, int64_t d) : n_train_(n_train), d_(d) {
  if (n_train < 1)
    throw std::invalid_argument("BruteForceKnn: need at least 1 training row, got " +
                                std::to_string(n_train));
  if (d < 1) throw std::invalid_argument("BruteForceKnn: need at least 1 feature, got " + std::to_string(d));
  if (!train) throw std::invalid_argument("BruteForceKnn: train is null");
  require_finite(train, n_train * d, "train");
  train_ = train;

  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t i = 0; i < n_train; ++i)
    for (int64_t f = 0; f < d; ++f) mean[f] += train[i * d + f];
  center_.resize(static_cast<size_t>(d));
  for (int64_t f = 0; f < d; ++f) center_[f] = static_cast<float>(mean[f] / static_cast<double>(n_train));

  const int64_t width = kernel().width;
  n_groups_ = (n_train + width - 1) / width;
  chunk_groups_ = std::max<int64_t>(1, kChunkBytes / (d * width * static_cast<int64_t>(sizeof(float))));
  packed_.assign(static_cast<size_t>(n_groups_ * d * width), 0.0f);
  norms_.assign(static_cast<size_t>(n_groups_ * width), std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n_train; ++i) {
    const int64_t g = i / width, w = i % width;
    double norm = 0.0;
    for (int64_t f = 0; f < d; ++f) {
      const float centred = train[i * d + f] - center_[f];
      packed_[(g * d + f) * width + w] = -2.0f * centred;
      norm += static_cast<double>(centred) * centred;
    }
    if (!(norm <= std::numeric_limits<float>::max()))
      throw std::invalid_argument("train: row " + std::to_string(i) +
                                  " is too far from the others: its squared distance overflows float32");
    norms_[i] = static_cast<float>(norm);
  }
}

void BruteForceKnn::search(const float* queries, int64_t n_queries, int64_t k, float* sqdist,
                           int64_t* ids) const {
  if (k < 1 || k > n_train_)
    throw std::invalid_argument("k must be in [1, " + std::to_string(n_train_) +
                                "] (the training rows), got " + std::to_string(k));
  if (n_queries < 0) throw std::invalid_argument("n_queries must be >= 0, got " + std::to_string(n_queries));
  if (n_queries == 0) return;
  if (!queries || !sqdist || !ids) throw std::invalid_argument("BruteForceKnn::search: null pointer");
  require_finite(queries, n_queries * d_, "queries");

  std::fill(sqdist, sqdist + n_queries * k, std::numeric_limits<float>::infinity());
  std::fill(ids, ids + n_queries * k, int64_t{-1});
  const detail::KnnKernel& kern = kernel();
  const detail::KnnScan scan{
      packed_.data(), norms_.data(), center_.data(), n_groups_, chunk_groups_, d_, queries, k, sqdist, ids};
  // Work items of whole register tiles, at least ~4 per thread so a busy core is compensated.
  const int64_t rows = kern.query_rows;
  int64_t per_task = std::clamp<int64_t>(n_queries / (4 * threads()), rows, kMaxQueriesPerTask);
  per_task = (per_task + rows - 1) / rows * rows;
  const int64_t n_tasks = (n_queries + per_task - 1) / per_task;
  int overflow = 0;

  // Below ~1-2 ms of work (2^24 query-row-feature products) a second thread costs more than it
  // saves, and much more when another process holds the other cores.
  const bool parallel = n_queries * n_train_ * d_ >= (int64_t{1} << 24);
#pragma omp parallel for schedule(dynamic, 1) reduction(| : overflow) if (parallel)
  for (int64_t task = 0; task < n_tasks; ++task) {
    const int64_t q0 = task * per_task, q1 = std::min(n_queries, q0 + per_task);
    kern.scan(scan, q0, q1);
    // The ranking used the norm expansion; the distances returned are explicit differences.
    std::vector<std::pair<float, int64_t>> found(static_cast<size_t>(k));
    for (int64_t i = q0; i < q1; ++i) {
      const float* q = queries + i * d_;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t id = ids[i * k + j];
        if (id < 0) {  // a partial distance overflowed: never < +inf
          overflow = 1;
          found[j] = {std::numeric_limits<float>::infinity(), id};
          continue;
        }
        const float* x = train_ + id * d_;
        double total = 0.0;
        for (int64_t f = 0; f < d_; ++f) {
          const double diff = static_cast<double>(q[f]) - x[f];
          total += diff * diff;
        }
        found[j] = {static_cast<float>(total), id};
      }
      std::sort(found.begin(), found.end());
      for (int64_t j = 0; j < k; ++j) {
        sqdist[i * k + j] = found[j].first;
        ids[i * k + j] = found[j].second;
      }
    }
  }
  if (overflow)
    throw std::invalid_argument(
        "queries: a query is so far from the training rows that its squared distance "
        "overflows float32");
}

}  // namespace dtpm

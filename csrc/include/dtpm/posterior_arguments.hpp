// Argument checks shared by the host and device posterior launchers (header-only, plain C++).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace dtpm {

/// Throws std::invalid_argument unless n >= 0, k >= 1 and n_features > 2 (the inverse-Gamma
/// shape d/2 - 1 must be positive).
inline void check_posterior_arguments(int64_t n, int64_t k, int64_t n_features) {
  if (n < 0) throw std::invalid_argument("posterior_scores: n must be >= 0");
  if (k < 1) throw std::invalid_argument("posterior_scores: need at least one neighbour per row");
  if (n_features <= 2)
    throw std::invalid_argument(
        "posterior_scores: n_features must be > 2 (the inverse-Gamma shape d/2 - 1 must be positive), got " +
        std::to_string(n_features));
}

}  // namespace dtpm

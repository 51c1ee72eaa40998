// C entry points (for ctypes) to csrc/cuda's launchers compiled against the emulation, and to the
// emulator's self-check kernels (emulator_selfcheck.cpp).
//
// Each returns 0 on success, 1 for std::invalid_argument (the launchers' argument checks) and 2
// for any other failure (an emulation error: deadlock, malformed shuffle), with the message
// copied into `error` (NUL-terminated, at most error_size bytes).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda_emulation.hpp"
#include "dtpm_cuda.hpp"

namespace {

template <typename Call>
int guarded(char* error, std::int64_t error_size, Call call) {
  std::string message;
  int code = 0;
  try {
    call();
  } catch (const std::invalid_argument& e) {
    message = e.what();
    code = 1;
  } catch (const std::exception& e) {
    message = e.what();
    code = 2;
  }
  if (error && error_size > 0) {
    const std::size_t n = std::min<std::size_t>(message.size(), static_cast<std::size_t>(error_size - 1));
    std::memcpy(error, message.data(), n);
    error[n] = '\0';
  }
  return code;
}

template <typename Real>
int posterior(const Real* sqdist, std::int64_t n, std::int64_t k, std::int64_t n_features,
              const double* log_sigma2, const double* inv_sigma2, std::int64_t T, std::int32_t* mode,
              double* mean, double* posterior, std::int32_t* status, char* error, std::int64_t error_size) {
  return guarded(error, error_size, [&] {
    const dtpm::cuda::DeviceSchedule schedule{log_sigma2, inv_sigma2, T};
    dtpm::cuda::posterior_scores<Real>(sqdist, n, k, n_features, schedule, mode, mean, posterior, status, 0);
  });
}

template <typename Real>
int neighbour_sqdist(const Real* queries, std::int64_t n, const Real* train, std::int64_t n_train,
                     std::int64_t d, const std::int64_t* ids, std::int64_t k, Real* sqdist,
                     Real* contribution, std::int32_t* status, char* error, std::int64_t error_size) {
  return guarded(error, error_size, [&] {
    dtpm::cuda::neighbour_sqdist<Real>(queries, n, train, n_train, d, ids, k, sqdist, contribution, status,
                                       0);
  });
}

}  // namespace

namespace dtpm_emulation {
/// Launches the self-check kernel `which` (emulator_selfcheck.cpp) on 128 threads writing out[128].
void run_selfcheck(const std::string& which, float value, float* out);
}  // namespace dtpm_emulation

extern "C" {

int dtpm_emu_set_schedule(int order, std::uint64_t seed, char* error, std::int64_t error_size) {
  return guarded(error, error_size, [&] { dtpm_emulation::set_schedule(order, seed); });
}

int dtpm_emu_posterior_f32(const float* sqdist, std::int64_t n, std::int64_t k, std::int64_t n_features,
                           const double* log_sigma2, const double* inv_sigma2, std::int64_t T,
                           std::int32_t* mode, double* mean, double* post, std::int32_t* status, char* error,
                           std::int64_t error_size) {
  return posterior(sqdist, n, k, n_features, log_sigma2, inv_sigma2, T, mode, mean, post, status, error,
                   error_size);
}

int dtpm_emu_posterior_f64(const double* sqdist, std::int64_t n, std::int64_t k, std::int64_t n_features,
                           const double* log_sigma2, const double* inv_sigma2, std::int64_t T,
                           std::int32_t* mode, double* mean, double* post, std::int32_t* status, char* error,
                           std::int64_t error_size) {
  return posterior(sqdist, n, k, n_features, log_sigma2, inv_sigma2, T, mode, mean, post, status, error,
                   error_size);
}

int dtpm_emu_neighbour_sqdist_f32(const float* queries, std::int64_t n, const float* train,
                                  std::int64_t n_train, std::int64_t d, const std::int64_t* ids,
                                  std::int64_t k, float* sqdist, float* contribution, std::int32_t* status,
                                  char* error, std::int64_t error_size) {
  return neighbour_sqdist(queries, n, train, n_train, d, ids, k, sqdist, contribution, status, error,
                          error_size);
}

int dtpm_emu_neighbour_sqdist_f64(const double* queries, std::int64_t n, const double* train,
                                  std::int64_t n_train, std::int64_t d, const std::int64_t* ids,
                                  std::int64_t k, double* sqdist, double* contribution, std::int32_t* status,
                                  char* error, std::int64_t error_size) {
  return neighbour_sqdist(queries, n, train, n_train, d, ids, k, sqdist, contribution, status, error,
                          error_size);
}

int dtpm_emu_selfcheck(const char* name, float value, float* out, char* error, std::int64_t error_size) {
  return guarded(error, error_size, [&] { dtpm_emulation::run_selfcheck(name, value, out); });
}

std::int64_t dtpm_emu_smallest_per_row_max_k() { return dtpm::cuda::smallest_per_row_max_k(); }

int dtpm_emu_smallest_per_row(const float* values, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                              std::int64_t k, std::int64_t id_offset, int exclude_diagonal,
                              std::int64_t diagonal_offset, float* out_values, std::int64_t* out_ids,
                              std::int64_t out_ld, char* error, std::int64_t error_size) {
  return guarded(error, error_size, [&] {
    dtpm::cuda::smallest_per_row(values, rows, cols, ld, k, id_offset, exclude_diagonal != 0, diagonal_offset,
                                 out_values, out_ids, out_ld, 0);
  });
}

}  // extern "C"

// _cuda: the private pybind11 module over the CUDA launchers. No CUDA headers here: arrays
// arrive as raw device pointers (integers, 0 = none) with their shapes, and the stream as an
// integer handle; python/dtpm_fast/_gpu.py takes them from torch/CuPy arrays and checks dtype,
// contiguity and device first. The launchers re-check that every pointer is device memory.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "dtpm_cuda.hpp"

namespace py = pybind11;
namespace dc = dtpm::cuda;

namespace {

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

enum class Real { f32, f64 };

Real parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return Real::f32;
  if (dtype == "float64") return Real::f64;
  throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

void posterior(std::uintptr_t sqdist, const std::string& dtype, int64_t n, int64_t k, int64_t n_features,
               std::uintptr_t log_sigma2, std::uintptr_t inv_sigma2, int64_t T, std::uintptr_t mode,
               std::uintptr_t mean, std::uintptr_t posterior, std::uintptr_t status, std::uintptr_t stream) {
  const Real real = parse_dtype(dtype);
  const dc::DeviceSchedule schedule{as_ptr<const double>(log_sigma2), as_ptr<const double>(inv_sigma2), T};
  py::gil_scoped_release release;
  if (real == Real::f32)
    dc::posterior_scores<float>(as_ptr<const float>(sqdist), n, k, n_features, schedule,
                                as_ptr<int32_t>(mode), as_ptr<double>(mean), as_ptr<double>(posterior),
                                as_ptr<int32_t>(status), stream);
  else
    dc::posterior_scores<double>(as_ptr<const double>(sqdist), n, k, n_features, schedule,
                                 as_ptr<int32_t>(mode), as_ptr<double>(mean), as_ptr<double>(posterior),
                                 as_ptr<int32_t>(status), stream);
}

void neighbour_sqdist(std::uintptr_t queries, std::uintptr_t train, const std::string& dtype, int64_t n,
                      int64_t n_train, int64_t d, std::uintptr_t ids, int64_t k, std::uintptr_t sqdist,
                      std::uintptr_t contribution, std::uintptr_t status, std::uintptr_t stream) {
  const Real real = parse_dtype(dtype);
  py::gil_scoped_release release;
  if (real == Real::f32)
    dc::neighbour_sqdist<float>(as_ptr<const float>(queries), n, as_ptr<const float>(train), n_train, d,
                                as_ptr<const int64_t>(ids), k, as_ptr<float>(sqdist),
                                as_ptr<float>(contribution), as_ptr<int32_t>(status), stream);
  else
    dc::neighbour_sqdist<double>(as_ptr<const double>(queries), n, as_ptr<const double>(train), n_train, d,
                                 as_ptr<const int64_t>(ids), k, as_ptr<double>(sqdist),
                                 as_ptr<double>(contribution), as_ptr<int32_t>(status), stream);
}

void smallest_per_row(std::uintptr_t values, int64_t rows, int64_t cols, int64_t ld, int64_t k,
                      int64_t id_offset, bool exclude_diagonal, int64_t diagonal_offset,
                      std::uintptr_t out_values, std::uintptr_t out_ids, int64_t out_ld,
                      std::uintptr_t stream) {
  py::gil_scoped_release release;
  dc::smallest_per_row(as_ptr<const float>(values), rows, cols, ld, k, id_offset, exclude_diagonal,
                       diagonal_offset, as_ptr<float>(out_values), as_ptr<int64_t>(out_ids), out_ld, stream);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "Private CUDA kernels of dtpm_fast (device memory, raw pointers). Use dtpm_fast._gpu or the public "
      "API instead.";
  m.attr("__version__") = DTPM_VERSION;
  m.attr("architectures") = DTPM_CUDA_ARCHITECTURES;
  m.attr("toolkit_version") = DTPM_CUDA_TOOLKIT_VERSION;
  m.attr("STATUS_NAN_DISTANCE") = static_cast<int>(dc::kStatusNanDistance);
  m.attr("STATUS_ID_OUT_OF_RANGE") = static_cast<int>(dc::kStatusIdOutOfRange);

  m.def("device_count", &dc::device_count, "Usable CUDA devices; 0 without a driver or GPU (never raises).");
  m.def("device_status", &dc::device_status, "'ok', or why no CUDA device is usable.");
  m.def("runtime_version", &dc::runtime_version, "CUDA runtime version linked in, e.g. 13000.");
  m.def("driver_version", &dc::driver_version, "CUDA driver version, 0 without a driver.");
  m.def("smallest_per_row_max_k", &dc::smallest_per_row_max_k);

  m.def("posterior", &posterior, py::arg("sqdist"), py::arg("dtype"), py::arg("n"), py::arg("k"),
        py::arg("n_features"), py::arg("log_sigma2"), py::arg("inv_sigma2"), py::arg("T"), py::arg("mode"),
        py::arg("mean"), py::arg("posterior"), py::arg("status"), py::arg("stream"),
        "Posterior mode int32[n], mean float64[n], posterior float64[n, T] from sqdist[n, k] (all device "
        "pointers; 0 skips an output). Asynchronous on `stream`.");
  m.def("neighbour_sqdist", &neighbour_sqdist, py::arg("queries"), py::arg("train"), py::arg("dtype"),
        py::arg("n"), py::arg("n_train"), py::arg("d"), py::arg("ids"), py::arg("k"), py::arg("sqdist"),
        py::arg("contribution"), py::arg("status"), py::arg("stream"),
        "Exact sqdist[n, k] for int64 ids[n, k], optional contribution[n, d] (device pointers).");
  m.def("smallest_per_row", &smallest_per_row, py::arg("values"), py::arg("rows"), py::arg("cols"),
        py::arg("ld"), py::arg("k"), py::arg("id_offset"), py::arg("exclude_diagonal"),
        py::arg("diagonal_offset"), py::arg("out_values"), py::arg("out_ids"), py::arg("out_ld"),
        py::arg("stream"), "k smallest float32 values per row with int64 ids, ascending (device pointers).");
}

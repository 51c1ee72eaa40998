// _core: the private pybind11 module over the host kernels. Shape checks and GIL release only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "dtpm/dtpm.hpp"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                                std::to_string(a.ndim()) + "-D");
}

template <typename Real>
py::tuple posterior(CArray<Real> sqdist, int64_t n_features, CArray<double> log_sigma2,
                    CArray<double> inv_sigma2, bool want_mode, bool want_mean, bool want_posterior) {
  require_ndim(sqdist, 2, "sqdist");
  require_ndim(log_sigma2, 1, "log_sigma2");
  require_ndim(inv_sigma2, 1, "inv_sigma2");
  if (log_sigma2.shape(0) != inv_sigma2.shape(0))
    throw std::invalid_argument("log_sigma2 and inv_sigma2 must have the same length");
  const int64_t n = sqdist.shape(0), k = sqdist.shape(1), T = log_sigma2.shape(0);
  dtpm::Schedule schedule{log_sigma2.data(), inv_sigma2.data(), T};

  std::optional<py::array_t<int32_t>> mode;
  std::optional<py::array_t<double>> mean, post;
  if (want_mode) mode.emplace(n);
  if (want_mean) mean.emplace(n);
  if (want_posterior) post.emplace(std::vector<py::ssize_t>{n, T});
  int32_t* mode_ptr = mode ? mode->mutable_data() : nullptr;
  double* mean_ptr = mean ? mean->mutable_data() : nullptr;
  double* post_ptr = post ? post->mutable_data() : nullptr;
  const Real* d_ptr = sqdist.data();
  {
    py::gil_scoped_release release;
    dtpm::posterior_scores<Real>(d_ptr, n, k, n_features, schedule, mode_ptr, mean_ptr, post_ptr);
  }
  auto or_none = [](auto& opt) -> py::object { return opt ? py::object(*opt) : py::none(); };
  return py::make_tuple(or_none(mode), or_none(mean), or_none(post));
}

template <typename Real>
py::tuple neighbour_sqdist(CArray<Real> queries, CArray<Real> train, CArray<int64_t> ids,
                           bool want_contribution) {
  require_ndim(queries, 2, "queries");
  require_ndim(train, 2, "train");
  require_ndim(ids, 2, "ids");
  const int64_t n = queries.shape(0), d = queries.shape(1), k = ids.shape(1);
  if (train.shape(1) != d)
    throw std::invalid_argument("queries have " + std::to_string(d) + " features but train has " +
                                std::to_string(train.shape(1)));
  if (ids.shape(0) != n)
    throw std::invalid_argument("ids must have one row per query (" + std::to_string(n) + "), got " +
                                std::to_string(ids.shape(0)));
  py::array_t<Real> sqdist(std::vector<py::ssize_t>{n, k});
  std::optional<py::array_t<Real>> contrib;
  if (want_contribution) contrib.emplace(std::vector<py::ssize_t>{n, d});
  Real* out = sqdist.mutable_data();
  Real* contrib_ptr = contrib ? contrib->mutable_data() : nullptr;
  const Real* q = queries.data();
  const Real* x = train.data();
  const int64_t* id = ids.data();
  const int64_t n_train = train.shape(0);
  {
    py::gil_scoped_release release;
    dtpm::neighbour_sqdist<Real>(q, n, x, n_train, d, id, k, out, contrib_ptr);
  }
  return py::make_tuple(sqdist, contrib ? py::object(*contrib) : py::none());
}

/// float32, C-contiguous, 2-D, or a ValueError naming the argument (no silent conversion: a
/// copy of a large training set or query batch should be the caller's choice).
py::array_t<float> require_float32_matrix(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be a C-contiguous float32 array; got dtype " +
                                std::string(py::str(a.dtype())) +
                                " (use np.ascontiguousarray(x, dtype=np.float32))");
  require_ndim(a, 2, name);
  return py::array_t<float>::ensure(a);
}

py::tuple knn_search(const dtpm::BruteForceKnn& index, const py::array& queries, int64_t k) {
  py::array_t<float> q = require_float32_matrix(queries, "queries");
  if (q.shape(1) != index.dim())
    throw std::invalid_argument("queries have " + std::to_string(q.shape(1)) +
                                " features but the index has " + std::to_string(index.dim()));
  const int64_t m = q.shape(0);
  py::array_t<float> sqdist(std::vector<py::ssize_t>{m, k > 0 ? k : 0});
  py::array_t<int64_t> ids(std::vector<py::ssize_t>{m, k > 0 ? k : 0});
  const float* q_ptr = q.data();
  float* d_ptr = sqdist.mutable_data();
  int64_t* i_ptr = ids.mutable_data();
  {
    py::gil_scoped_release release;
    index.search(q_ptr, m, k, d_ptr, i_ptr);
  }
  return py::make_tuple(sqdist, ids);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Private native kernels of dtpm_fast (host memory). Use the public dtpm_fast API instead.";
  m.attr("__version__") = DTPM_VERSION;

  // float64 overloads first: pybind11 tries exact dtypes before converting, so float32 input
  // reaches the float32 kernel without a copy and other dtypes are converted to float64.
  const char* posterior_doc =
      "posterior(sqdist, n_features, log_sigma2, inv_sigma2, want_mode, want_mean, want_posterior)\n"
      "-> (mode int32[n] | None, mean float64[n] | None, posterior float64[n, T] | None)";
  m.def("posterior", &posterior<double>, py::arg("sqdist"), py::arg("n_features"), py::arg("log_sigma2"),
        py::arg("inv_sigma2"), py::arg("want_mode") = true, py::arg("want_mean") = true,
        py::arg("want_posterior") = false, posterior_doc);
  m.def("posterior", &posterior<float>, py::arg("sqdist"), py::arg("n_features"), py::arg("log_sigma2"),
        py::arg("inv_sigma2"), py::arg("want_mode") = true, py::arg("want_mean") = true,
        py::arg("want_posterior") = false);

  const char* nd_doc =
      "neighbour_sqdist(queries, train, ids, want_contribution)\n"
      "-> (sqdist [n, k], per-feature contribution [n, d] | None), dtype of the inputs";
  m.def("neighbour_sqdist", &neighbour_sqdist<double>, py::arg("queries"), py::arg("train"), py::arg("ids"),
        py::arg("want_contribution") = false, nd_doc);
  m.def("neighbour_sqdist", &neighbour_sqdist<float>, py::arg("queries"), py::arg("train"), py::arg("ids"),
        py::arg("want_contribution") = false);

  py::class_<dtpm::BruteForceKnn>(m, "BruteForceIndex",
                                  "Exact brute-force k-NN over float32 rows (squared L2); keeps a reference "
                                  "to the rows, which must not be modified afterwards.")
      .def(py::init([](const py::array& train) {
             py::array_t<float> x = require_float32_matrix(train, "train");
             const float* ptr = x.data();
             const int64_t n = x.shape(0), d = x.shape(1);
             py::gil_scoped_release release;
             return new dtpm::BruteForceKnn(ptr, n, d);
           }),
           py::arg("train"), py::keep_alive<1, 2>())  // the index reads train's memory
      .def("search", &knn_search, py::arg("queries"), py::arg("k"),
           "search(queries float32 [m, d], k) -> (sqdist float32 [m, k], ids int64 [m, k]), nearest first")
      .def_property_readonly("ntotal", &dtpm::BruteForceKnn::size)
      .def_property_readonly("d", &dtpm::BruteForceKnn::dim);

  m.def("build_info", [] {
    const dtpm::BuildInfo info = dtpm::build_info();
    py::dict out;
    out["version"] = info.version;
    out["compiler"] = info.compiler;
    out["openmp"] = info.openmp;
    out["simd"] = info.simd;
    return out;
  });
  m.def("max_threads", &dtpm::max_threads, "Threads the OpenMP kernels use.");
  m.def("set_max_threads", &dtpm::set_max_threads, py::arg("n"),
        "Sets the threads the OpenMP kernels use (the native core's OpenMP runtime, not FAISS's).");
}

#include "dtpm/dtpm.hpp"

#ifndef DTPM_VERSION
#error "DTPM_VERSION must be defined by the build"
#endif

namespace dtpm {

BuildInfo build_info() {
  BuildInfo info;
  info.version = DTPM_VERSION;
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#elif defined(_MSC_VER)
  info.compiler = "msvc " + std::to_string(_MSC_VER);
#else
  info.compiler = "unknown";
#endif
#ifdef _OPENMP
  info.openmp = true;
#endif
  info.simd = active_isa();
  return info;
}

}  // namespace dtpm

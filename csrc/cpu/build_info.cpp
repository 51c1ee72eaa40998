#include "dtpm/dtpm.hpp"
#include "simd_dispatch.hpp"

#ifndef DTPM_VERSION
#error "DTPM_VERSION must be defined by the build"
#endif

namespace dtpm {

std::string active_simd() {
#if DTPM_HAS_SIMD_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "compiler auto-vectorisation only (no runtime dispatch)";
#endif
}

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
  info.simd = active_simd();
  return info;
}

}  // namespace dtpm

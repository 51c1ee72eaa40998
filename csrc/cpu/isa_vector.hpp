// Shared by the files CMake compiles once per instruction set (posterior_block.cpp,
// knn_block.cpp; it passes DTPM_ISA and the matching -march): the per-ISA function names and
// the native float vector (GCC/Clang vector extensions) of that instruction set.
#pragma once

#include <cstdint>
#include <cstring>

#ifndef DTPM_ISA
#error "DTPM_ISA must name the instruction set this file is compiled for"
#endif
#define DTPM_CONCAT_(a, b) a##b
#define DTPM_CONCAT(a, b) DTPM_CONCAT_(a, b)

namespace dtpm::detail {
namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vfloat __attribute__((vector_size(4 * kLanes)));
typedef int32_t vint __attribute__((vector_size(4 * kLanes)));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace
}  // namespace dtpm::detail

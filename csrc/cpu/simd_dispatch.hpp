// Runtime dispatch of hot loops to the best instruction set of the running CPU.
// Shipped builds target the baseline ISA; GCC's target_clones adds AVX2 and AVX-512
// variants selected at load time, so no -march=native is needed.
#pragma once

#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DTPM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define DTPM_HAS_SIMD_CLONES 1
#else
#define DTPM_SIMD_CLONES
#define DTPM_HAS_SIMD_CLONES 0
#endif

namespace dtpm {
/// The instruction set the cloned kernels run with on this CPU, e.g. "x86-64-v4 (AVX-512)".
std::string active_simd();
}  // namespace dtpm

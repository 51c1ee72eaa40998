// Run-time choice of the instruction set, shared by every kernel compiled per instruction set.
#include "isa.hpp"

namespace dtpm::detail {
namespace {

Isa probe() {
#if defined(DTPM_DISPATCH_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Isa::x86_64_v4;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::x86_64_v3;
#endif
  return Isa::baseline;
}

}  // namespace

Isa detect_isa() {
  static const Isa isa = probe();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::x86_64_v4:
      return "x86-64-v4 (AVX-512)";
    case Isa::x86_64_v3:
      return "x86-64-v3 (AVX2, FMA)";
    case Isa::baseline:
      break;
  }
#if defined(DTPM_DISPATCH_X86)
  return "x86-64 baseline (SSE2)";
#else
  return "baseline (compiler default vector width)";
#endif
}

}  // namespace dtpm::detail

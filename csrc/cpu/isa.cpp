// Run-time choice of the instruction set, shared by every kernel compiled per instruction set.
#include "isa.hpp"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace dtpm::detail {
namespace {

const char* isa_id(Isa isa) {
  switch (isa) {
    case Isa::x86_64_v4:
      return "x86-64-v4";
    case Isa::x86_64_v3:
      return "x86-64-v3";
    case Isa::baseline:
      break;
  }
  return "baseline";
}

Isa best_supported() {
#if defined(DTPM_DISPATCH_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Isa::x86_64_v4;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::x86_64_v3;
#endif
  return Isa::baseline;
}

/// DTPM_FORCE_ISA=baseline|x86-64-v3|x86-64-v4 picks a lower instruction set than the CPU's best
/// (so the tests can run every compiled variant on one machine); a higher or unknown one is ignored.
Isa probe() {
  const Isa best = best_supported();
  const char* forced = std::getenv("DTPM_FORCE_ISA");
  if (!forced) return best;
  for (Isa isa : {Isa::baseline, Isa::x86_64_v3, Isa::x86_64_v4}) {
    if (std::strcmp(forced, isa_id(isa)) == 0 && static_cast<int>(isa) <= static_cast<int>(best)) return isa;
  }
  return best;
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

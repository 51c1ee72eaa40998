// Internal to the host kernels: the instruction set the per-ISA objects (posterior_block.cpp,
// knn_block.cpp, each compiled once per entry below) are chosen by at run time.
#pragma once

namespace dtpm::detail {

enum class Isa { baseline, x86_64_v3, x86_64_v4 };

/// The best instruction set this CPU supports among those compiled in (detected once).
Isa detect_isa();

/// A readable name, e.g. "x86-64-v4 (AVX-512)".
const char* isa_name(Isa isa);

}  // namespace dtpm::detail

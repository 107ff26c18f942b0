// gradcomm/codec/detail/isa_paths.hpp — AVX2 and AVX-512 paths of whole codec loops, picked
// at run time. Internal: not part of the API.
//
//   template <unsigned B> GRADCOMM_FLATTEN_AVX2 void encode_avx2(const job& j) {
//     encode<B>(j);  // the portable loop, inlined here and compiled for AVX2
//   }
//   if (gradcomm::detail::cpu_best_isa() == gradcomm::detail::cpu_isa::avx2) encode_avx2<4>(j);
//
// Builds on cpu_dispatch.hpp (GRADCOMM_X86_DISPATCH). Where a loop is several functions deep
// (the block quantizers: scale, quantize, pack, Philox), a wrapper with a target attribute
// and `flatten` recompiles the whole portable call tree for the wider ISA. Every path writes
// the same bytes: the AVX2 target leaves FMA out (no contraction), and code given the AVX-512
// target (which brings FMA) must have no multiply-add whose contraction changes a result;
// tests compare every path the machine has.
#pragma once

#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/core/config.hpp>

#if GRADCOMM_X86_DISPATCH
#define GRADCOMM_FLATTEN_AVX2 __attribute__((target("avx2"), flatten))
#define GRADCOMM_FLATTEN_AVX512 \
  __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq"), flatten))
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// Vector instruction sets with a path, narrowest first.
enum class cpu_isa : unsigned char { portable, avx2, avx512 };

/// True where this CPU (and its OS) runs `isa`'s path (whatever GRADCOMM_CPU_ISA says:
/// tests compare every path the CPU has).
inline bool cpu_isa_available(cpu_isa isa) noexcept {
#if GRADCOMM_X86_DISPATCH
  __builtin_cpu_init();
  switch (isa) {
    case cpu_isa::portable: return true;
    case cpu_isa::avx2: return __builtin_cpu_supports("avx2");
    case cpu_isa::avx512:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == cpu_isa::portable;
#endif
}

/// The widest path this CPU runs (asked once), within GRADCOMM_CPU_ISA's cap
/// (cpu_dispatch.hpp): the path the codecs take.
inline cpu_isa cpu_best_isa() noexcept {
  static const cpu_isa best = [] {
    const unsigned cap = cpu_isa_cap_level();
    if (cap >= 2 && cpu_isa_available(cpu_isa::avx512)) return cpu_isa::avx512;
    if (cap >= 1 && cpu_isa_available(cpu_isa::avx2)) return cpu_isa::avx2;
    return cpu_isa::portable;
  }();
  return best;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/cpu_dispatch.hpp — the one way a CPU loop picks its vector path.
// Internal: not part of the API.
//
//   template <unsigned B> GRADCOMM_FLATTEN_AVX2 void encode_avx2(const job& j) {
//     encode<B>(j);  // the portable loop, inlined here and compiled for AVX2
//   }
//   #if GRADCOMM_X86_DISPATCH
//   if (gradcomm::detail::cpu_runs(gradcomm::detail::cpu_isa::avx2)) return encode_avx2<4>(j);
//   #endif
//   return encode<4>(j);
//
// Every codec family keeps its portable loop and its AVX2 / AVX-512 clones in
// `codec/detail/<family>_cpu.hpp` and asks `cpu_best_isa()` (or `cpu_runs(isa)`) which to
// take: one question, asked once a process. The default build targets baseline x86-64 (SSE2);
// the clones are the same source compiled for a wider ISA (a wrapper with a target attribute,
// and `flatten` where the loop is several functions deep), chosen at run time, so that a plain
// build runs at the speed of the machine it runs on. Under nvcc, and with compilers other than
// GCC and Clang, only the portable loops exist.
//
// Every path writes the same bytes: the AVX2 clones leave FMA out (no contraction) unless the
// family's math says a fused multiply-add cannot change a result (vector quantization's
// distance search only ranks candidates), and code given the AVX-512 target (which brings
// FMA) has no multiply-add whose contraction changes a result; tests compare every path the
// machine has.
//
// The levels: `avx2` is AVX2 with FMA (x86-64-v3: every AVX2 CPU made has both, but they are
// separate feature bits), `avx512` adds AVX-512 F, BW, VL and DQ.
//
// The environment variable GRADCOMM_CPU_ISA caps the dispatch (read once, at the first
// dispatch): `portable` takes the portable loops, `avx2` the AVX2 ones on a CPU that has
// AVX-512, so that one machine measures and tests every path; unset, or any other value,
// leaves the widest path the CPU runs.
//
//   GRADCOMM_CPU_ISA=avx2 build/benchmarks/bench_codecs   # the AVX2 paths on an AVX-512 CPU
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstdlib>
#include <cstring>

#if !GRADCOMM_CUDA_COMPILER && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#define GRADCOMM_X86_DISPATCH 1
#define GRADCOMM_FLATTEN_AVX2 __attribute__((target("avx2"), flatten))
#define GRADCOMM_FLATTEN_AVX512 \
  __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512dq"), flatten))
#else
#define GRADCOMM_X86_DISPATCH 0
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// Vector instruction sets with a path, narrowest first (ordered: `a >= b` means a path
/// built for `b` runs where `a` does).
enum class cpu_isa : unsigned char { portable, avx2, avx512 };

/// The widest path GRADCOMM_CPU_ISA allows.
inline cpu_isa cpu_isa_cap() noexcept {
  static const cpu_isa cap = [] {
    const char* v = std::getenv("GRADCOMM_CPU_ISA");
    if (v == nullptr) return cpu_isa::avx512;
    if (std::strcmp(v, "portable") == 0) return cpu_isa::portable;
    if (std::strcmp(v, "avx2") == 0) return cpu_isa::avx2;
    return cpu_isa::avx512;
  }();
  return cap;
}

/// True where this CPU (and its OS) runs `isa`'s path, whatever GRADCOMM_CPU_ISA says (tests
/// compare every path the CPU has).
inline bool cpu_isa_available(cpu_isa isa) noexcept {
#if GRADCOMM_X86_DISPATCH
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  switch (isa) {
    case cpu_isa::portable: return true;
    case cpu_isa::avx2: return avx2;
    case cpu_isa::avx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == cpu_isa::portable;
#endif
}

/// The widest path this CPU runs (asked once), within GRADCOMM_CPU_ISA's cap: the path the
/// codecs take.
inline cpu_isa cpu_best_isa() noexcept {
  static const cpu_isa best = [] {
    const cpu_isa cap = cpu_isa_cap();
    if (cap >= cpu_isa::avx512 && cpu_isa_available(cpu_isa::avx512)) return cpu_isa::avx512;
    if (cap >= cpu_isa::avx2 && cpu_isa_available(cpu_isa::avx2)) return cpu_isa::avx2;
    return cpu_isa::portable;
  }();
  return best;
}

/// True where the codecs take `isa`'s path or a wider one: the dispatch question.
inline bool cpu_runs(cpu_isa isa) noexcept { return cpu_best_isa() >= isa; }

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

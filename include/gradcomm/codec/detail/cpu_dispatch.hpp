// gradcomm/codec/detail/cpu_dispatch.hpp — the vector instructions this CPU has, for CPU loops
// that carry an AVX2 clone beside the portable one. Internal: not part of the API.
//
//   #if GRADCOMM_X86_DISPATCH
//   if (gradcomm::detail::cpu_has_avx2()) return loop_avx2(in, out, n);  // [[gnu::target("avx2")]]
//   #endif
//   return loop(in, out, n);
//
// The default build targets baseline x86-64 (SSE2): 4-lane integer code without unsigned
// compares or 32-bit min. The clones are the same source compiled for AVX2, chosen at run
// time, so that a plain build runs at the speed of the machine it runs on. Under nvcc, and
// with compilers other than GCC and Clang, only the portable loops exist.
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
#else
#define GRADCOMM_X86_DISPATCH 0
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// The widest path GRADCOMM_CPU_ISA allows: 0 portable, 1 AVX2, 2 any (unset, or another
/// value).
inline unsigned cpu_isa_cap_level() noexcept {
  static const unsigned level = [] {
    const char* v = std::getenv("GRADCOMM_CPU_ISA");
    if (v == nullptr) return 2u;
    if (std::strcmp(v, "portable") == 0) return 0u;
    if (std::strcmp(v, "avx2") == 0) return 1u;
    return 2u;
  }();
  return level;
}

/// True where the CPU (and the OS) run AVX2 code and GRADCOMM_CPU_ISA allows it.
inline bool cpu_has_avx2() noexcept {
#if GRADCOMM_X86_DISPATCH
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && cpu_isa_cap_level() >= 1;
  }();
  return has;
#else
  return false;
#endif
}

/// True where the CPU runs AVX2 and FMA code (every AVX2 CPU made so far has FMA, but
/// they are separate feature bits) and GRADCOMM_CPU_ISA allows AVX2.
inline bool cpu_has_avx2_fma() noexcept {
#if GRADCOMM_X86_DISPATCH
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0 &&
           cpu_isa_cap_level() >= 1;
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

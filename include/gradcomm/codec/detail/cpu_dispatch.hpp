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
#pragma once

#include <gradcomm/core/config.hpp>

#if !GRADCOMM_CUDA_COMPILER && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#define GRADCOMM_X86_DISPATCH 1
#else
#define GRADCOMM_X86_DISPATCH 0
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// True where the CPU (and the OS) run AVX2 code.
inline bool cpu_has_avx2() noexcept {
#if GRADCOMM_X86_DISPATCH
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
#else
  return false;
#endif
}

/// True where the CPU runs AVX2 and FMA code (every AVX2 CPU made so far has FMA, but
/// they are separate feature bits).
inline bool cpu_has_avx2_fma() noexcept {
#if GRADCOMM_X86_DISPATCH
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/philox_fill.hpp — many Philox blocks at once, for the CPU loops of
// stochastic codecs. Internal: not part of the API.
//
//   std::uint32_t w[4 * 256];
//   gradcomm::detail::philox_fill(stream, i / 4, 256, w, gradcomm::detail::cpu_best_isa());
//   // w[k] == stream.at(i + k) for i % 4 == 0
//
// The words are exactly philox_stream::block's (tests compare every path with it). Scalar
// code makes about 0.5 G words/s (ten rounds of two 32x32->64 multiplies a block); x86-64
// CPUs with AVX2 or AVX-512 run 4 or 8 blocks a vector, several vectors in flight (about
// 1.5 and 4.5 G words/s on a Zen 5 core), chosen at run time (isa_paths.hpp) so that the
// default build (SSE2) gets them too. Under nvcc the host code takes the portable path.
#pragma once

#include <gradcomm/codec/detail/isa_paths.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/philox.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// Blocks first .. first+count-1 of `s` (block counters wrap at 2^32, as philox_stream's
/// do) into out[0 .. 4*count), one block at a time.
inline void philox_fill_portable(const philox_stream& s, std::uint32_t first, std::size_t count,
                                 std::uint32_t* out) noexcept {
  for (std::size_t j = 0; j < count; ++j) {
    const u32x4 r = s.block(first + static_cast<std::uint32_t>(j));
    std::memcpy(out + 4 * j, r.v, sizeof r.v);
  }
}

#if GRADCOMM_X86_DISPATCH

// Each 64-bit lane holds one block's word in its low half; the high half is ignored by
// the 32x32->64 multiply (vpmuludq), so the products' high halves can stay as garbage.
__attribute__((target("avx2"))) inline void philox_fill_avx2(const philox_stream& s,
                                                             std::uint32_t first, std::size_t count,
                                                             std::uint32_t* out) noexcept {
  constexpr std::size_t g_count = 8;  // vectors in flight: hides the multiply latency
  constexpr std::size_t per_iter = 4 * g_count;
  const __m256i m0 = _mm256_set1_epi64x(philox_m0), m1 = _mm256_set1_epi64x(philox_m1);
  const __m256i lane = _mm256_set_epi64x(3, 2, 1, 0);
  std::size_t j = 0;
  for (; j + per_iter <= count; j += per_iter) {
    __m256i c0[g_count], c1[g_count], c2[g_count], c3[g_count];
    for (std::size_t g = 0; g < g_count; ++g) {
      const auto base = static_cast<std::uint32_t>(first + j + 4 * g);
      c0[g] = _mm256_add_epi64(_mm256_set1_epi64x(base), lane);
      c1[g] = _mm256_set1_epi64x(s.step);
      c2[g] = _mm256_set1_epi64x(s.rank);
      c3[g] = _mm256_set1_epi64x(s.bucket);
    }
    std::uint32_t k0 = s.key.v[0], k1 = s.key.v[1];
    for (int r = 0; r < 10; ++r) {
      const __m256i key0 = _mm256_set1_epi64x(k0), key1 = _mm256_set1_epi64x(k1);
      for (std::size_t g = 0; g < g_count; ++g) {
        const __m256i p0 = _mm256_mul_epu32(c0[g], m0), p1 = _mm256_mul_epu32(c2[g], m1);
        c0[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[g]), key0);
        c2[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[g]), key1);
        c1[g] = p1;
        c3[g] = p0;
      }
      k0 += philox_w0;
      k1 += philox_w1;
    }
    for (std::size_t g = 0; g < g_count; ++g) {
      // Blocks a, b | c, d in the two 128-bit halves; gather each block's four words.
      const __m256i t01 = _mm256_unpacklo_epi32(c0[g], c1[g]);  // a0 a1 . . | c0 c1 . .
      const __m256i t01h = _mm256_unpackhi_epi32(c0[g], c1[g]);
      const __m256i t23 = _mm256_unpacklo_epi32(c2[g], c3[g]);
      const __m256i t23h = _mm256_unpackhi_epi32(c2[g], c3[g]);
      const __m256i ac = _mm256_unpacklo_epi64(t01, t23);  // a0..a3 | c0..c3
      const __m256i bd = _mm256_unpacklo_epi64(t01h, t23h);
      std::uint32_t* o = out + 4 * (j + 4 * g);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_permute2x128_si256(ac, bd, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8),
                          _mm256_permute2x128_si256(ac, bd, 0x31));
    }
  }
  philox_fill_portable(s, static_cast<std::uint32_t>(first + j), count - j, out + 4 * j);
}

__attribute__((target("avx512f"))) inline void philox_fill_avx512(const philox_stream& s,
                                                                  std::uint32_t first,
                                                                  std::size_t count,
                                                                  std::uint32_t* out) noexcept {
  constexpr std::size_t g_count = 4;
  constexpr std::size_t per_iter = 8 * g_count;
  const __m512i m0 = _mm512_set1_epi64(philox_m0), m1 = _mm512_set1_epi64(philox_m1);
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i low = _mm512_set1_epi64(0xffffffff);
  // The maskz forms with every lane set: GCC 12's plain forms trip -Wmaybe-uninitialized.
  constexpr __mmask8 all = 0xff;
  // 64-bit lane l of (w0|w1) and (w2|w3) -> block l's 16 bytes, in block order.
  const __m512i first_half = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i second_half = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  std::size_t j = 0;
  for (; j + per_iter <= count; j += per_iter) {
    __m512i c0[g_count], c1[g_count], c2[g_count], c3[g_count];
    for (std::size_t g = 0; g < g_count; ++g) {
      const auto base = static_cast<std::uint32_t>(first + j + 8 * g);
      c0[g] = _mm512_add_epi64(_mm512_set1_epi64(base), lane);
      c1[g] = _mm512_set1_epi64(s.step);
      c2[g] = _mm512_set1_epi64(s.rank);
      c3[g] = _mm512_set1_epi64(s.bucket);
    }
    std::uint32_t k0 = s.key.v[0], k1 = s.key.v[1];
    for (int r = 0; r < 10; ++r) {
      const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
      for (std::size_t g = 0; g < g_count; ++g) {
        const __m512i p0 = _mm512_maskz_mul_epu32(all, c0[g], m0);
        const __m512i p1 = _mm512_maskz_mul_epu32(all, c2[g], m1);
        c0[g] = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p1, 32), c1[g], key0,
                                          0x96);  // a^b^c
        c2[g] = _mm512_ternarylogic_epi64(_mm512_maskz_srli_epi64(all, p0, 32), c3[g], key1, 0x96);
        c1[g] = p1;
        c3[g] = p0;
      }
      k0 += philox_w0;
      k1 += philox_w1;
    }
    for (std::size_t g = 0; g < g_count; ++g) {
      const __m512i w01 =
          _mm512_or_si512(_mm512_and_si512(c0[g], low), _mm512_maskz_slli_epi64(all, c1[g], 32));
      const __m512i w23 =
          _mm512_or_si512(_mm512_and_si512(c2[g], low), _mm512_maskz_slli_epi64(all, c3[g], 32));
      std::uint32_t* o = out + 4 * (j + 8 * g);
      _mm512_storeu_si512(o, _mm512_permutex2var_epi64(w01, first_half, w23));
      _mm512_storeu_si512(o + 16, _mm512_permutex2var_epi64(w01, second_half, w23));
    }
  }
  philox_fill_portable(s, static_cast<std::uint32_t>(first + j), count - j, out + 4 * j);
}

#endif  // GRADCOMM_X86_DISPATCH

/// Words 4*first .. 4*(first+count)-1 of `s` into out[0 .. 4*count): out[k] is
/// s.at(4*first + k). `isa` must be available (cpu_isa_available).
inline void philox_fill(const philox_stream& s, std::uint32_t first, std::size_t count,
                        std::uint32_t* out, cpu_isa isa) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (isa == cpu_isa::avx512) return philox_fill_avx512(s, first, count, out);
  if (isa == cpu_isa::avx2) return philox_fill_avx2(s, first, count, out);
#else
  (void)isa;
#endif
  philox_fill_portable(s, first, count, out);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

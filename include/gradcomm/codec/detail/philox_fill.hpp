// gradcomm/codec/detail/philox_fill.hpp — many Philox blocks at once, for the CPU loops of
// stochastic codecs. Internal: not part of the API.
//
//   std::uint32_t w[4 * 256];
//   gradcomm::detail::philox_fill(stream, i / 4, 256, w, gradcomm::detail::cpu_best_isa());
//   // w[k] == stream.at(i + k) for i % 4 == 0
//
// The words are exactly philox_stream::block's (tests compare every path with it). Scalar
// code makes about 0.5 G words/s (ten rounds of two 32x32->64 multiplies a block); x86-64
// CPUs with AVX2 or AVX-512 run 8 blocks a vector, several vectors in flight (about 2.5
// and 4.5 G words/s on a Zen 5 core), chosen at run time (cpu_dispatch.hpp) so that the
// default build (SSE2) gets them too. Under nvcc the host code takes the portable path.
// philox_words_avx2 leaves the words in registers, for loops that use them at once.
#pragma once

#include <gradcomm/codec/detail/cpu_dispatch.hpp>
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

// The hi and lo halves of the 32x32->64 products a × m, one a 32-bit lane: vpmuludq
// multiplies the even lanes, a second one the odd lanes shifted down, vpmulld gives the
// low halves.
[[gnu::target("avx2"), gnu::always_inline]] inline void philox_mul_avx2(__m256i a, __m256i m,
                                                                        __m256i& hi,
                                                                        __m256i& lo) noexcept {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
  lo = _mm256_mullo_epi32(a, m);
}

// Blocks first .. first+8G-1 of `s` (counters wrap at 2^32) in element order: w[4g + v]
// holds words 32g + 8v .. 32g + 8v + 7 (blocks 8g + 2v and 8g + 2v + 1). One block a 32-bit
// lane; lanes 0-3 hold blocks 0, 2, 4, 6 and lanes 4-7 blocks 1, 3, 5, 7 of each eight, so
// that a 4x4 transpose inside each 128-bit half puts the words in element order. Round 1
// multiplies the rank, the same in every block, and round 2 a word made of step and rank
// alone: those products are taken once, in scalar code. Callers keep several groups in
// flight (G = 4 hides the multiplies' latency).
template <std::size_t G>
[[gnu::target("avx2"), gnu::always_inline]] inline void philox_words_avx2(const philox_stream& s,
                                                                          std::uint32_t first,
                                                                          __m256i* w) noexcept {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox_m0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox_m1));
  std::uint32_t k0 = s.key.v[0], k1 = s.key.v[1];
  // Round 1: c = (block, step, rank, bucket).
  const std::uint64_t r1 = std::uint64_t{philox_m1} * s.rank;
  const std::uint32_t c0_1 =
      static_cast<std::uint32_t>(r1 >> 32) ^ s.step ^ k0;  // the same in every block
  const std::uint32_t c1_1 = static_cast<std::uint32_t>(r1);
  const __m256i bucket_key = _mm256_set1_epi32(static_cast<int>(s.bucket ^ k1));
  // Round 2 multiplies c0_1.
  k0 += philox_w0;
  k1 += philox_w1;
  const std::uint64_t r2 = std::uint64_t{philox_m0} * c0_1;
  const __m256i c1_key = _mm256_set1_epi32(static_cast<int>(c1_1 ^ k0));
  const __m256i hi_key =
      _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(r2 >> 32) ^ k1));
  const __m256i c3_2 = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(r2)));
  const __m256i lane = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  __m256i c0[G], c1[G], c2[G], c3[G];
  for (std::size_t g = 0; g < G; ++g) {
    const __m256i block = _mm256_add_epi32(
        _mm256_set1_epi32(static_cast<int>(first + static_cast<std::uint32_t>(8 * g))), lane);
    __m256i hi, lo;
    philox_mul_avx2(block, m0, hi, lo);
    const __m256i c2_1 = _mm256_xor_si256(hi, bucket_key);  // c3_1 = lo
    philox_mul_avx2(c2_1, m1, hi, c1[g]);
    c0[g] = _mm256_xor_si256(hi, c1_key);
    c2[g] = _mm256_xor_si256(lo, hi_key);
    c3[g] = c3_2;
  }
  for (int r = 2; r < 10; ++r) {
    k0 += philox_w0;
    k1 += philox_w1;
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)),
                  key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (std::size_t g = 0; g < G; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      philox_mul_avx2(c0[g], m0, hi0, lo0);
      philox_mul_avx2(c2[g], m1, hi1, lo1);
      // c1 ^ key first: it is ready long before the product.
      c0[g] = _mm256_xor_si256(hi1, _mm256_xor_si256(c1[g], key0));
      c2[g] = _mm256_xor_si256(hi0, _mm256_xor_si256(c3[g], key1));
      c1[g] = lo1;
      c3[g] = lo0;
    }
  }
  for (std::size_t g = 0; g < G; ++g) {
    // Half 0 holds blocks 0, 2, 4, 6, half 1 blocks 1, 3, 5, 7: after the transpose,
    // blocks 0 | 1, 2 | 3, 4 | 5, 6 | 7.
    const __m256i t0 = _mm256_unpacklo_epi32(c0[g], c1[g]);
    const __m256i t1 = _mm256_unpackhi_epi32(c0[g], c1[g]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[g], c3[g]);
    const __m256i t3 = _mm256_unpackhi_epi32(c2[g], c3[g]);
    w[4 * g] = _mm256_unpacklo_epi64(t0, t2);
    w[4 * g + 1] = _mm256_unpackhi_epi64(t0, t2);
    w[4 * g + 2] = _mm256_unpacklo_epi64(t1, t3);
    w[4 * g + 3] = _mm256_unpackhi_epi64(t1, t3);
  }
}

__attribute__((target("avx2"))) inline void philox_fill_avx2(const philox_stream& s,
                                                             std::uint32_t first, std::size_t count,
                                                             std::uint32_t* out) noexcept {
  std::size_t j = 0;
  __m256i w[16];
  for (; j + 32 <= count; j += 32) {
    philox_words_avx2<4>(s, static_cast<std::uint32_t>(first + j), w);
    for (int v = 0; v < 16; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * j + 8 * v), w[v]);
    }
  }
  for (; j + 8 <= count; j += 8) {
    philox_words_avx2<1>(s, static_cast<std::uint32_t>(first + j), w);
    for (int v = 0; v < 4; ++v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * j + 8 * v), w[v]);
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

// gradcomm/codec/detail/vq_cpu.hpp — vector quantization's encode and decode loops on the CPU.
// Internal: not part of the API.
//
// The portable loops (codec/detail/vq_math.hpp's search, group by group), the AVX2 and
// AVX-512 loops that search 8 and 16 groups a vector, chosen by codec/detail/cpu_dispatch.hpp;
// every path picks the same codes. Also the built-in Gaussian codebooks' trees and search
// tables (detail/vq_codebooks.hpp's constants, built once).
//
//   std::size_t b = gradcomm::detail::vq_encode_blocks_dispatch<4>(x, n, 256, 0, t, scales, codes);
#pragma once

#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/vq_codebooks.hpp>
#include <gradcomm/codec/detail/vq_math.hpp>
#include <gradcomm/core/config.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {

namespace detail {

#if GRADCOMM_X86_DISPATCH
// vq_pick16 with both halves of the 16 candidates in two AVX2 vectors. Every operation is
// the scalar one's (add, fma in the same order, max with +0, the same keys), so the codes
// are the same bits.
template <int D>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline unsigned vq_pick16_avx2(
    const float* y, float yn, const float* norm, const float (*minus2c)[vq_branches]) noexcept {
  const __m256 ynv = _mm256_set1_ps(yn);
  __m256 a0 = _mm256_add_ps(_mm256_loadu_ps(norm), ynv);
  __m256 a1 = _mm256_add_ps(_mm256_loadu_ps(norm + 8), ynv);
  for (int k = 0; k < D; ++k) {
    const __m256 yk = _mm256_set1_ps(y[k]);
    a0 = _mm256_fmadd_ps(yk, _mm256_loadu_ps(minus2c[k]), a0);
    a1 = _mm256_fmadd_ps(yk, _mm256_loadu_ps(minus2c[k] + 8), a1);
  }
  const __m256 zero = _mm256_setzero_ps();
  a0 = _mm256_max_ps(a0, zero);  // max(-0, +0) and max(NaN, +0) give +0, as a > 0 ? a : 0
  a1 = _mm256_max_ps(a1, zero);
  const __m256i mask = _mm256_set1_epi32(~15);
  const __m256i k0 = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(a0), mask),
                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i k1 = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(a1), mask),
                                     _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
  const __m256i m = _mm256_min_epu32(k0, k1);
  __m128i h = _mm_min_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_min_epu32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_min_epu32(h, _mm_shuffle_epi32(h, 0xb1));
  return static_cast<unsigned>(_mm_cvtsi128_si32(h)) & 15u;
}
#endif

#if GRADCOMM_X86_DISPATCH
template <int D>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline std::uint8_t vq_nearest_avx2(
    const float* y, const vq_search_tables& t) noexcept {
  const float yn = vq_norm2<D>(y);
  const unsigned c = vq_pick16_avx2<D>(y, yn, t.norm[0], t.minus2c[0]);
  const unsigned f = vq_pick16_avx2<D>(y, yn, t.norm[1 + c], t.minus2c[1 + c]);
  return static_cast<std::uint8_t>(c * vq_branches + f);
}
#endif

#if GRADCOMM_X86_DISPATCH
// vq_nearest_avx2 as a function of its own, for callers compiled for the baseline.
template <int D>
[[gnu::target("avx2,fma")]] inline std::uint8_t vq_nearest_avx2_call(
    const float* y, const vq_search_tables& t) noexcept {
  return vq_nearest_avx2<D>(y, t);
}
#endif

// The groups of one block (count values, normalized by n) into codes. Zero: ±Inf and NaN
// read as 0.
template <int D, bool Zero>
inline void vq_encode_block(const float* __restrict x, std::size_t count, const vq_norm& n,
                            const vq_search_tables& t, std::uint8_t* __restrict codes) noexcept {
  const std::size_t full = count / D;
  float y[D];
  for (std::size_t g = 0; g < full; ++g) {
    for (int k = 0; k < D; ++k) y[k] = vq_normalize<Zero>(x, g * D + k, n);
    codes[g] = vq_nearest<D>(y, t);
  }
  if (const std::size_t rest = count % D) {
    for (int k = 0; k < D; ++k) {
      y[k] = static_cast<std::size_t>(k) < rest ? vq_normalize<Zero>(x, full * D + k, n) : 0.0f;
    }
    codes[full] = vq_nearest<D>(y, t);
  }
}

// Values in block b of n values in blocks of `block`.
inline std::size_t vq_block_count(std::size_t n, std::size_t block, std::size_t b) noexcept {
  return n - b * block < block ? n - b * block : block;
}

// Encodes blocks from `first` on; returns the first block holding ±Inf or NaN (left
// unwritten), or the number of blocks. Scales go out as f32 bytes.
template <int D>
inline std::size_t vq_encode_blocks(const float* __restrict src, std::size_t n, std::size_t block,
                                    std::size_t first, const vq_search_tables& t,
                                    std::byte* __restrict scales,
                                    std::uint8_t* __restrict codes) noexcept {
  const std::size_t nb = n / block + (n % block != 0 ? 1 : 0);
  for (std::size_t b = first; b < nb; ++b) {
    const std::size_t begin = b * block;
    const std::size_t count = n - begin < block ? n - begin : block;
    const vq_norm norm = vq_block_norm<false>(src + begin, count, t.max_scale);
    if (!std::isfinite(norm.sum_squares)) return b;
    std::memcpy(scales + 4 * b, &norm.scale, 4);
    vq_encode_block<D, false>(src + begin, count, norm, t, codes + begin / D);
  }
  return nb;
}

#if GRADCOMM_X86_DISPATCH
// The same two loops for AVX2 and FMA. (A generic loop cannot call the AVX2 search: GCC
// refuses to inline a target function into one compiled for the baseline.)
// table16[i] for each lane's i (0 .. 15; `upper`: i >= 8).
[[gnu::target("avx2,fma"), gnu::always_inline]] inline __m256 vq_lookup16_avx2(
    const float* table16, __m256i i, __m256 upper) noexcept {
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table16), i);
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table16 + 8), i);
  return _mm256_blendv_ps(lo, hi, upper);
}

// Codes of the 8·NB groups at x (8·NB·D values, normalized by `inv`): one lane a group, NB
// registers of groups side by side (independent chains, for the pipelines to overlap). The
// coarse stage broadcasts each candidate to all lanes. The fine stage, at d = 2, fetches
// candidate j of each lane's subtree by a table lookup on the lane's coarse index (two
// 8-entry permutes and a blend); at d = 4 and 8, where a candidate needs more lookups than
// it has multiply-adds, it searches each group's subtree with the 16 candidates across the
// lanes instead (vq_pick16_avx2). Each group gets the scalar search's operations, in its
// order.
template <int D, int NB = 1>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline void vq_encode8_avx2(
    const float* __restrict x, float inv, const vq_search_tables& t,
    std::uint8_t* __restrict codes) noexcept {
  const __m256i lane = _mm256_setr_epi32(0, D, 2 * D, 3 * D, 4 * D, 5 * D, 6 * D, 7 * D);
  const __m256 invv = _mm256_set1_ps(inv);
  __m256 y[NB][D], yn[NB];
  for (int b = 0; b < NB; ++b) {
    yn[b] = _mm256_setzero_ps();
    for (int k = 0; k < D; ++k) {
      y[b][k] = _mm256_mul_ps(_mm256_i32gather_ps(x + 8 * D * b + k, lane, 4), invv);
      yn[b] = _mm256_fmadd_ps(y[b][k], y[b][k], yn[b]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
  const __m256i low_bits = _mm256_set1_epi32(~15);
  __m256i best[NB], coarse[NB];
  for (int b = 0; b < NB; ++b) best[b] = _mm256_set1_epi32(-1);
  for (unsigned j = 0; j < vq_branches; ++j) {
    for (int b = 0; b < NB; ++b) {
      __m256 a = _mm256_add_ps(_mm256_set1_ps(t.norm[0][j]), yn[b]);
      for (int k = 0; k < D; ++k) {
        a = _mm256_fmadd_ps(y[b][k], _mm256_set1_ps(t.minus2c[0][k][j]), a);
      }
      a = _mm256_max_ps(a, zero);
      const __m256i key = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(a), low_bits),
                                          _mm256_set1_epi32(static_cast<int>(j)));
      best[b] = _mm256_min_epu32(best[b], key);
    }
  }
  for (int b = 0; b < NB; ++b) coarse[b] = _mm256_and_si256(best[b], _mm256_set1_epi32(15));
  if constexpr (D == 2) {
    __m256 upper[NB];
    for (int b = 0; b < NB; ++b) {
      upper[b] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(coarse[b], _mm256_set1_epi32(7)));
      best[b] = _mm256_set1_epi32(-1);
    }
    for (unsigned j = 0; j < vq_branches; ++j) {
      for (int b = 0; b < NB; ++b) {
        __m256 a = _mm256_add_ps(vq_lookup16_avx2(t.fine_norm[j], coarse[b], upper[b]), yn[b]);
        for (int k = 0; k < D; ++k) {
          a = _mm256_fmadd_ps(y[b][k], vq_lookup16_avx2(t.fine_minus2c[j][k], coarse[b], upper[b]),
                              a);
        }
        a = _mm256_max_ps(a, zero);
        const __m256i key = _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(a), low_bits),
                                            _mm256_set1_epi32(static_cast<int>(j)));
        best[b] = _mm256_min_epu32(best[b], key);
      }
    }
    for (int b = 0; b < NB; ++b) {
      const __m256i code = _mm256_or_si256(_mm256_slli_epi32(coarse[b], 4),
                                           _mm256_and_si256(best[b], _mm256_set1_epi32(15)));
      // 8 codes of 32 bits to 8 bytes.
      const __m128i c16 =
          _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + 8 * b), _mm_packus_epi16(c16, c16));
    }
  } else {
    for (int b = 0; b < NB; ++b) {
      alignas(32) float ys[D][8], yns[8];
      alignas(32) std::int32_t cs[8];
      for (int k = 0; k < D; ++k) _mm256_store_ps(ys[k], y[b][k]);
      _mm256_store_ps(yns, yn[b]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(cs), coarse[b]);
      for (int l = 0; l < 8; ++l) {
        float yl[D];
        for (int k = 0; k < D; ++k) yl[k] = ys[k][l];
        const auto c = static_cast<unsigned>(cs[l]);
        codes[8 * b + l] = static_cast<std::uint8_t>(
            c * vq_branches + vq_pick16_avx2<D>(yl, yns[l], t.norm[1 + c], t.minus2c[1 + c]));
      }
    }
  }
}

// vq_encode8_avx2 as a function of its own (the tests compare it with vq_nearest).
template <int D, int NB = 1>
[[gnu::target("avx2,fma")]] inline void vq_encode8_avx2_call(const float* x, float inv,
                                                             const vq_search_tables& t,
                                                             std::uint8_t* codes) noexcept {
  vq_encode8_avx2<D, NB>(x, inv, t, codes);
}

// The groups of a block from group g on, one at a time (vq_nearest_avx2), and a last
// partial group padded with zeros: what the vector loops of a block leave.
template <int D>
[[gnu::target("avx2,fma"), gnu::always_inline]] inline void vq_encode_rest_avx2(
    const float* __restrict x, std::size_t count, const vq_norm& n, const vq_search_tables& t,
    std::uint8_t* __restrict codes, std::size_t g) noexcept {
  const std::size_t full = count / D;
  float y[D];
  for (; g < full; ++g) {
    for (int k = 0; k < D; ++k) y[k] = vq_normalize<false>(x, g * D + k, n);
    codes[g] = vq_nearest_avx2<D>(y, t);
  }
  if (const std::size_t rest = count % D) {
    for (int k = 0; k < D; ++k) {
      y[k] = static_cast<std::size_t>(k) < rest ? vq_normalize<false>(x, full * D + k, n) : 0.0f;
    }
    codes[full] = vq_nearest_avx2<D>(y, t);
  }
}

// vq_encode_blocks with `Block` (vq_encode_block_avx2 or _avx512) for each block: each
// block's norm is taken one block ahead, so that its chain of dependent additions runs
// beside the previous block's search. Inlined into its ISA's wrapper; Block is not
// always_inline (GCC refuses to inline a target function into a generic one), but the
// compiler may inline it there.
template <int D, auto Block>
[[gnu::always_inline]] inline std::size_t vq_encode_blocks_ahead(
    const float* __restrict src, std::size_t n, std::size_t block, std::size_t first,
    const vq_search_tables& t, std::byte* __restrict scales,
    std::uint8_t* __restrict codes) noexcept {
  const std::size_t nb = n / block + (n % block != 0 ? 1 : 0);
  if (first >= nb) return nb;
  vq_norm next =
      vq_block_norm<false>(src + first * block, vq_block_count(n, block, first), t.max_scale);
  for (std::size_t b = first; b < nb; ++b) {
    const std::size_t begin = b * block;
    const vq_norm norm = next;
    if (!std::isfinite(norm.sum_squares)) return b;
    if (b + 1 < nb)
      next =
          vq_block_norm<false>(src + begin + block, vq_block_count(n, block, b + 1), t.max_scale);
    std::memcpy(scales + 4 * b, &norm.scale, 4);
    Block(src + begin, vq_block_count(n, block, b), norm, t, codes + begin / D);
  }
  return nb;
}

// The groups of one block, eight (or sixteen at d = 2) a vector where the block's scale
// allows, then vq_encode_rest_avx2.
template <int D>
[[gnu::target("avx2,fma")]] inline void vq_encode_block_avx2(
    const float* __restrict x, std::size_t count, const vq_norm& n, const vq_search_tables& t,
    std::uint8_t* __restrict codes) noexcept {
  const std::size_t full = count / D;
  std::size_t g = 0;
  if (n.in_f32) {
    // At d = 2, two registers of groups at a time: measured fastest on a Zen 5 core.
    constexpr int nb = D == 2 ? 2 : 1;
    for (; g + 8 * nb <= full; g += 8 * nb) vq_encode8_avx2<D, nb>(x + g * D, n.inv, t, codes + g);
    for (; g + 8 <= full; g += 8) vq_encode8_avx2<D>(x + g * D, n.inv, t, codes + g);
  }
  vq_encode_rest_avx2<D>(x, count, n, t, codes, g);
}

template <int D>
[[gnu::target("avx2,fma")]] inline std::size_t vq_encode_blocks_avx2(
    const float* __restrict src, std::size_t n, std::size_t block, std::size_t first,
    const vq_search_tables& t, std::byte* __restrict scales,
    std::uint8_t* __restrict codes) noexcept {
  return vq_encode_blocks_ahead<D, &vq_encode_block_avx2<D>>(src, n, block, first, t, scales,
                                                             codes);
}
#endif

#if GRADCOMM_X86_DISPATCH
#define GRADCOMM_VQ_AVX512 \
  gnu::target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"), gnu::always_inline

// Index tables of vq_encode16_avx512's transpose: pick[k][l] = D·l + k (mod 32), value k of
// group l of a pair of registers; up[q][l] = l − per·q (mod 16), per = 32 / D groups a pair.
template <int D>
struct vq_lane_tables {
  std::int32_t pick[D][16];
  std::int32_t up[D / 2][16];
};
template <int D>
constexpr vq_lane_tables<D> vq_make_lane_tables() noexcept {
  vq_lane_tables<D> t{};
  for (int k = 0; k < D; ++k) {
    for (int l = 0; l < 16; ++l) t.pick[k][l] = (D * l + k) % 32;
  }
  for (int q = 0; q < D / 2; ++q) {
    for (int l = 0; l < 16; ++l) t.up[q][l] = (l - 32 / D * q + 16) % 16;
  }
  return t;
}

// The key of candidate j at distance a: (a & ~15) | j, a clamped at +0 first (max(-0, +0)
// and max(NaN, +0) give +0), as vq_pick16's.
[[GRADCOMM_VQ_AVX512]] inline __m512i vq_key16_avx512(__m512 a, unsigned j) noexcept {
  const __m512 clamped = _mm512_maskz_max_ps(0xffff, a, _mm512_setzero_ps());
  return _mm512_ternarylogic_epi32(_mm512_castps_si512(clamped), _mm512_set1_epi32(~15),
                                   _mm512_set1_epi32(static_cast<int>(j)), 0xea);
}

// Codes of the 16·NB groups at x (16·NB·D values, normalized by `inv`): vq_encode8_avx2 on
// 16 lanes, one a group, NB registers of groups side by side (independent chains of
// dependent multiply-adds, for the pipelines to overlap). A 16-entry table is one register,
// so the fine stage fetches
// candidate j of each lane's subtree with one permute (vpermps) where AVX2 needs two and a
// blend. Each lane does the scalar search's operations, in its order. (The maskz forms with
// every lane set: GCC 12's plain forms trip -Wmaybe-uninitialized.)
template <int D, int NB = 1>
[[GRADCOMM_VQ_AVX512]] inline void vq_encode16_avx512(const float* __restrict x, float inv,
                                                      const vq_search_tables& t,
                                                      std::uint8_t* __restrict codes) noexcept {
  constexpr __mmask16 all = 0xffff;
  // Coordinate k of 16 groups: x[D·g + k] for g = 0..15, from D registers of 16 values.
  // A pair of registers (32 values) holds per = 32 / D groups: vpermt2ps picks their value k
  // into lanes 0 .. per-1, a masked vpermps moves them to lanes per·q .. (the tables are
  // constants, so the loads do not wait on stores).
  constexpr int per = 32 / D;
  static constexpr vq_lane_tables<D> tab = vq_make_lane_tables<D>();
  const __m512 invv = _mm512_set1_ps(inv);
  __m512 y[NB][D], yn[NB];
  for (int b = 0; b < NB; ++b) {
    __m512 v[D];
    for (int r = 0; r < D; ++r) v[r] = _mm512_loadu_ps(x + 16 * D * b + 16 * r);
    yn[b] = _mm512_setzero_ps();
    for (int k = 0; k < D; ++k) {
      const __m512i pick = _mm512_loadu_si512(tab.pick[k]);
      __m512 c = _mm512_permutex2var_ps(v[0], pick, v[1]);  // groups 0 .. per-1
      for (int q = 1; q < D / 2; ++q) {
        const __m512 part = _mm512_permutex2var_ps(v[2 * q], pick, v[2 * q + 1]);
        const auto lanes = static_cast<__mmask16>(((1u << per) - 1) << (per * q));
        c = _mm512_mask_permutexvar_ps(c, lanes, _mm512_loadu_si512(tab.up[q]), part);
      }
      y[b][k] = _mm512_mul_ps(c, invv);
      yn[b] = _mm512_fmadd_ps(y[b][k], y[b][k], yn[b]);
    }
  }
  // Keys (distance bits with the candidate in the low 4 bits) are distinct, so the minimum
  // may be taken in any order.
  __m512i best[NB], coarse[NB];
  for (int b = 0; b < NB; ++b) best[b] = _mm512_set1_epi32(-1);
  for (unsigned j = 0; j < vq_branches; ++j) {
    for (int b = 0; b < NB; ++b) {
      __m512 a = _mm512_add_ps(_mm512_set1_ps(t.norm[0][j]), yn[b]);
      for (int k = 0; k < D; ++k) {
        a = _mm512_fmadd_ps(y[b][k], _mm512_set1_ps(t.minus2c[0][k][j]), a);
      }
      best[b] = _mm512_maskz_min_epu32(all, best[b], vq_key16_avx512(a, j));
    }
  }
  for (int b = 0; b < NB; ++b) {
    coarse[b] = _mm512_and_si512(best[b], _mm512_set1_epi32(15));
    best[b] = _mm512_set1_epi32(-1);
  }
  for (unsigned j = 0; j < vq_branches; ++j) {
    const __m512 norm = _mm512_loadu_ps(t.fine_norm[j]);
    for (int b = 0; b < NB; ++b) {
      __m512 a = _mm512_add_ps(_mm512_maskz_permutexvar_ps(all, coarse[b], norm), yn[b]);
      for (int k = 0; k < D; ++k) {
        a = _mm512_fmadd_ps(
            y[b][k],
            _mm512_maskz_permutexvar_ps(all, coarse[b], _mm512_loadu_ps(t.fine_minus2c[j][k])), a);
      }
      best[b] = _mm512_maskz_min_epu32(all, best[b], vq_key16_avx512(a, j));
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m512i code = _mm512_or_si512(_mm512_maskz_slli_epi32(all, coarse[b], 4),
                                         _mm512_and_si512(best[b], _mm512_set1_epi32(15)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16 * b),
                     _mm512_maskz_cvtepi32_epi8(all, code));
  }
}

// vq_encode16_avx512 as a function of its own (the tests compare it with vq_nearest).
template <int D, int NB = 1>
[[gnu::target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]] inline void vq_encode16_avx512_call(
    const float* x, float inv, const vq_search_tables& t, std::uint8_t* codes) noexcept {
  vq_encode16_avx512<D, NB>(x, inv, t, codes);
}

template <int D>
[[gnu::target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]] inline void vq_encode_block_avx512(
    const float* __restrict x, std::size_t count, const vq_norm& n, const vq_search_tables& t,
    std::uint8_t* __restrict codes) noexcept {
  const std::size_t full = count / D;
  std::size_t g = 0;
  if (n.in_f32) {
    // Four registers of groups at a time (two at d = 8, where each holds more work):
    // measured fastest on a Zen 5 core.
    constexpr int nb = D == 8 ? 2 : 4;
    for (; g + 16 * nb <= full; g += 16 * nb) {
      vq_encode16_avx512<D, nb>(x + g * D, n.inv, t, codes + g);
    }
    for (; g + 16 <= full; g += 16) vq_encode16_avx512<D>(x + g * D, n.inv, t, codes + g);
    for (; g + 8 <= full; g += 8) vq_encode8_avx2<D>(x + g * D, n.inv, t, codes + g);
  }
  vq_encode_rest_avx2<D>(x, count, n, t, codes, g);
}

// vq_encode_blocks_avx2 with the 16-group search.
template <int D>
[[gnu::target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]] inline std::size_t
vq_encode_blocks_avx512(const float* __restrict src, std::size_t n, std::size_t block,
                        std::size_t first, const vq_search_tables& t, std::byte* __restrict scales,
                        std::uint8_t* __restrict codes) noexcept {
  return vq_encode_blocks_ahead<D, &vq_encode_block_avx512<D>>(src, n, block, first, t, scales,
                                                               codes);
}
#undef GRADCOMM_VQ_AVX512
#endif

template <int D>
inline std::size_t vq_encode_blocks_dispatch(const float* src, std::size_t n, std::size_t block,
                                             std::size_t first, const vq_search_tables& t,
                                             std::byte* scales, std::uint8_t* codes) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) {
    if (cpu_best_isa() == cpu_isa::avx512) {
      return vq_encode_blocks_avx512<D>(src, n, block, first, t, scales, codes);
    }
    return vq_encode_blocks_avx2<D>(src, n, block, first, t, scales, codes);
  }
#endif
  return vq_encode_blocks<D>(src, n, block, first, t, scales, codes);
}

// Decodes (Add: adds) n values from a valid codebook (256 rows of D floats), scales and codes.
template <int D, bool Add>
[[gnu::always_inline]] inline void vq_decode_blocks(const float* __restrict cb,
                                                    const std::byte* __restrict scales,
                                                    const std::uint8_t* __restrict codes,
                                                    std::size_t n, std::size_t block,
                                                    float* __restrict out) noexcept {
  const std::size_t nb = n / block + (n % block != 0 ? 1 : 0);
  for (std::size_t b = 0; b < nb; ++b) {
    float s;
    std::memcpy(&s, scales + 4 * b, 4);
    const std::size_t begin = b * block;
    const std::size_t count = n - begin < block ? n - begin : block;
    const std::uint8_t* c = codes + begin / D;
    float* o = out + begin;
    const std::size_t full = count / D;
    for (std::size_t g = 0; g < full; ++g) {
      const float* w = cb + c[g] * D;
      for (int k = 0; k < D; ++k) {
        if constexpr (Add) {
          o[g * D + k] += s * w[k];
        } else {
          o[g * D + k] = s * w[k];
        }
      }
    }
    for (std::size_t k = 0; k < count % D; ++k) {
      const float v = s * cb[c[full] * D + k];
      if constexpr (Add) {
        o[full * D + k] += v;
      } else {
        o[full * D + k] = v;
      }
    }
  }
}

#if GRADCOMM_X86_DISPATCH
// AVX2 without FMA: s·w + acc stays two roundings, as in the portable loop.
template <int D, bool Add>
[[gnu::target("avx2")]] inline void vq_decode_blocks_avx2(const float* cb, const std::byte* scales,
                                                          const std::uint8_t* codes, std::size_t n,
                                                          std::size_t block, float* out) noexcept {
  vq_decode_blocks<D, Add>(cb, scales, codes, n, block, out);
}
#endif

template <int D, bool Add>
inline void vq_decode_blocks_dispatch(const float* cb, const std::byte* scales,
                                      const std::uint8_t* codes, std::size_t n, std::size_t block,
                                      float* out) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2))
    return vq_decode_blocks_avx2<D, Add>(cb, scales, codes, n, block, out);
#endif
  vq_decode_blocks<D, Add>(cb, scales, codes, n, block, out);
}

// Calls f.template operator()<D>() with D = dim (2, 4 or 8) as a constant.
template <class F>
decltype(auto) with_vq_dim(unsigned dim, F&& f) {
  switch (dim) {
    case 2: return f.template operator()<2>();
    case 4: return f.template operator()<4>();
    default: return f.template operator()<8>();
  }
}

inline vq_tree vq_gaussian_tree(unsigned dim) noexcept {
  vq_tree t;
  t.dim = dim;
  const float* coarse = dim == 2   ? vq_gaussian_coarse_d2
                        : dim == 4 ? vq_gaussian_coarse_d4
                                   : vq_gaussian_coarse_d8;
  const float* fine = dim == 2   ? vq_gaussian_fine_d2
                      : dim == 4 ? vq_gaussian_fine_d4
                                 : vq_gaussian_fine_d8;
  std::memcpy(t.coarse.data(), coarse, sizeof(float) * vq_branches * dim);
  std::memcpy(t.fine.data(), fine, sizeof(float) * vq_codewords * dim);
  return t;
}

// The built-in codebook's codewords (256 rows of dim floats) and search tables, built once.
inline const vq_tree& vq_gaussian(unsigned dim) noexcept {
  static const vq_tree t2 = vq_gaussian_tree(2), t4 = vq_gaussian_tree(4), t8 = vq_gaussian_tree(8);
  return dim == 2 ? t2 : dim == 4 ? t4 : t8;
}
inline const vq_search_tables& vq_gaussian_tables(unsigned dim) noexcept {
  static const vq_search_tables t2 = vq_search_tables::of(vq_gaussian(2)),
                                t4 = vq_search_tables::of(vq_gaussian(4)),
                                t8 = vq_search_tables::of(vq_gaussian(8));
  return dim == 2 ? t2 : dim == 4 ? t4 : t8;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

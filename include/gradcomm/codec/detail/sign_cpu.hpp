// gradcomm/codec/detail/sign_cpu.hpp — sign_codec's fused error-feedback loop: portable and AVX2.
// Internal: not part of the API.
//
//   const gradcomm::detail::sign_ef_job j{g, e, next, n, block, policy, scales, codes, "call"};
//   gradcomm::detail::sign_ef_encode_isa(j, gradcomm::detail::cpu_best_isa());
//
// sign_codec's and ternary_codec's plain encode and decode are the block quantizers' loops
// (quant_cpu.hpp); this is sign's own loop, encode_with_residual's. The portable loop calls
// sign_math.hpp's functions; the AVX2 one does the same operations in the same order (no FMA)
// with intrinsics, so it writes the same bits, chosen at run time (cpu_dispatch.hpp).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/quant_cpu.hpp>
#include <gradcomm/codec/detail/sign_math.hpp>
#include <gradcomm/core/error.hpp>

#include <cmath>
#include <string>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// sign_codec under error feedback, fused (sign_codec::encode_with_residual): for s = g + e,
// the payload body that encode(s) writes and next = s − decode(that payload), non-finite
// elements 0. Per block two passes over g and e (the second from cache): the scale, then
// codes and residual. The portable loops are the reference; the AVX2 ones do the same
// operations in the same order (no FMA), so they write the same bits.
struct sign_ef_job {
  const float* g;
  const float* e;
  float* next;
  std::size_t n;
  std::uint32_t block;
  nonfinite_policy policy;
  std::byte* scales;    // 4 × blocks bytes
  std::uint8_t* codes;  // packed_bytes(n, 1) bytes
  const char* call;
};

// Names the first non-finite g[i] + e[i] of a block, as quant_encode names the first bad value.
[[noreturn]] GRADCOMM_QUANT_COLD inline void throw_sign_ef_nonfinite(const char* call,
                                                                     const float* g, const float* e,
                                                                     std::size_t base,
                                                                     std::size_t n) {
  std::size_t i = 0;
  while (i + 1 < n && std::isfinite(g[i] + e[i])) ++i;
  throw_invalid_argument(call, "non-finite value " + std::to_string(g[i] + e[i]) + " at index " +
                                   std::to_string(base + i));
}

// Elements [from, to) of one code byte (to − 1 < (from / 8 + 1) * 8): their bits replace
// those of the byte, the others stay.
template <bool Zero>
inline void sign_ef_partial_byte(const sign_ef_job& j, std::size_t from, std::size_t to,
                                 float scale) noexcept {
  unsigned byte = j.codes[from / 8];
  for (std::size_t i = from; i < to; ++i) {
    const unsigned bit = 1u << (i % 8);
    byte = (byte & ~bit) | (sign_ef_element<Zero>(j.g, j.e, j.next, i, scale) ? bit : 0u);
  }
  j.codes[from / 8] = static_cast<std::uint8_t>(byte);
}

// The elements of [b0, end) before the first code-byte boundary (a partial byte); returns
// that boundary, or end.
template <bool Zero>
inline std::size_t sign_ef_head(const sign_ef_job& j, std::size_t b0, std::size_t end,
                                float scale) noexcept {
  if (b0 % 8 == 0) return b0;
  const std::size_t to = end < (b0 / 8 + 1) * 8 ? end : (b0 / 8 + 1) * 8;
  sign_ef_partial_byte<Zero>(j, b0, to, scale);
  return to;
}

// Codes and residual of the block [b0, b0 + len): whole code bytes in the middle, partial
// ones at either end.
template <bool Zero>
inline void sign_ef_codes(const sign_ef_job& j, std::size_t b0, std::size_t len,
                          float scale) noexcept {
  const std::size_t end = b0 + len;
  std::size_t i = sign_ef_head<Zero>(j, b0, end, scale);
  for (; i + 8 <= end; i += 8) {
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k)
      byte |= sign_ef_element<Zero>(j.g, j.e, j.next, i + k, scale) << k;
    j.codes[i / 8] = static_cast<std::uint8_t>(byte);
  }
  if (i < end) sign_ef_partial_byte<Zero>(j, i, end, scale);
}

#if GRADCOMM_X86_DISPATCH
[[gnu::target("avx2")]] inline double sign_ef_sums_avx2(const float* g, const float* e,
                                                        std::size_t len,
                                                        std::int32_t& max_bits) noexcept {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  __m256i mx = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 a =
        _mm256_and_ps(_mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_loadu_ps(e + i)), abs_mask);
    mx = _mm256_max_epi32(mx, _mm256_castps_si256(a));
    // |double(s)| == double(|s|): the conversion is exact.
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  }
  alignas(32) double l[8];
  alignas(32) std::int32_t m8[8];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(l + 4, hi);
  _mm256_store_si256(reinterpret_cast<__m256i*>(m8), mx);
  std::int32_t m = 0;
  for (int k = 0; k < 8; ++k) m = m8[k] > m ? m8[k] : m;
  for (std::size_t k = 0; i + k < len; ++k) {
    const float s = g[i + k] + e[i + k];
    const std::int32_t a = abs_float_bits(float_bits(s));
    m = a > m ? a : m;
    l[k] += std::fabs(static_cast<double>(s));
  }
  max_bits = m;
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// 8 elements from i: next[i..i+8) and the 8 code bits.
template <bool Zero>
[[gnu::target("avx2"), gnu::always_inline]] inline unsigned sign_ef_codes8_avx2(
    const sign_ef_job& j, std::size_t i, __m256 scale) noexcept {
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  const __m256 s = _mm256_add_ps(_mm256_loadu_ps(j.g + i), _mm256_loadu_ps(j.e + i));
  __m256 v = s;
  if constexpr (Zero) {
    const __m256i bad =
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(s), exponent), exponent);
    v = _mm256_andnot_ps(_mm256_castsi256_ps(bad), s);
  }
  const __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
  // ±scale: (2c − 1) × scale is exactly scale with its sign flipped for c = 0.
  const __m256 d = _mm256_xor_ps(scale, _mm256_and_ps(neg, _mm256_set1_ps(-0.0f)));
  const __m256 r = _mm256_sub_ps(s, d);
  const __m256i rbad =
      _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(r), exponent), exponent);
  _mm256_storeu_ps(j.next + i, _mm256_andnot_ps(_mm256_castsi256_ps(rbad), r));
  return ~static_cast<unsigned>(_mm256_movemask_ps(neg)) & 0xffu;
}

template <bool Zero>
[[gnu::target("avx2")]] inline void sign_ef_codes_avx2(const sign_ef_job& j, std::size_t b0,
                                                       std::size_t len, float scale) noexcept {
  const std::size_t end = b0 + len;
  std::size_t i = sign_ef_head<Zero>(j, b0, end, scale);
  const __m256 sv = _mm256_set1_ps(scale);
  for (; i + 32 <= end; i += 32) {
    std::uint32_t bits = 0;
    for (unsigned q = 0; q < 4; ++q) bits |= sign_ef_codes8_avx2<Zero>(j, i + 8 * q, sv) << (8 * q);
    std::memcpy(j.codes + i / 8, &bits, 4);
  }
  for (; i + 8 <= end; i += 8)
    j.codes[i / 8] = static_cast<std::uint8_t>(sign_ef_codes8_avx2<Zero>(j, i, sv));
  if (i < end) sign_ef_partial_byte<Zero>(j, i, end, scale);
}
#endif

// Block by block: the scale (one pass), then codes and residual (another). Each block's
// sums are taken one block ahead, so that their chain of dependent additions runs beside
// the previous block's second pass. A block with NaN or Inf throws in its turn (policy
// reject or pass) or reads them as 0 (policy zero).
template <bool Avx2>
inline void sign_ef_encode(const sign_ef_job& j) {
  const std::size_t n = j.n;
  if (n % 8 != 0) j.codes[n / 8] = 0;  // the padding bits
  auto sums = [&j](std::size_t b0, std::int32_t& mb) {
    const std::size_t len = j.n - b0 < j.block ? j.n - b0 : j.block;
#if GRADCOMM_X86_DISPATCH
    if constexpr (Avx2) return sign_ef_sums_avx2(j.g + b0, j.e + b0, len, mb);
#endif
    return sign_ef_sums<false>(j.g + b0, j.e + b0, len, mb);
  };
  std::int32_t next_mb = 0;
  double next_sum = n != 0 ? sums(0, next_mb) : 0.0;
  std::size_t k = 0;
  std::size_t g_prefetched = 0, e_prefetched = 0;  // values below these were prefetched
  for (std::size_t b0 = 0; b0 < n; b0 += j.block, ++k) {
    const std::size_t len = n - b0 < j.block ? n - b0 : j.block;
    // Two streams read, one written: asking 4 KiB ahead measured faster than leaving it
    // to the hardware prefetcher.
    const std::size_t ahead = n - b0 - len < 1024 ? n : b0 + len + 1024;
    g_prefetched = prefetch_values(j.g, g_prefetched, ahead);
    e_prefetched = prefetch_values(j.e, e_prefetched, ahead);
    std::int32_t mb = next_mb;
    double sum = next_sum;
    if (b0 + len < n) next_sum = sums(b0 + len, next_mb);
    const bool zero_nonfinite = mb >= nonfinite_abs_bits;
    if (zero_nonfinite) {
      if (j.policy != nonfinite_policy::zero)
        throw_sign_ef_nonfinite(j.call, j.g + b0, j.e + b0, b0, len);
      sum = sign_ef_sums<true>(j.g + b0, j.e + b0, len, mb);
    }
    // block_mean_abs's scale; scalar_quant_step(scale, 1) is the scale itself.
    const float scale = sign_scale(sum, len);
    store_f32(j.scales + 4 * k, scale);
#if GRADCOMM_X86_DISPATCH
    if constexpr (Avx2) {
      if (zero_nonfinite) {
        sign_ef_codes_avx2<true>(j, b0, len, scale);
      } else {
        sign_ef_codes_avx2<false>(j, b0, len, scale);
      }
      continue;
    }
#endif
    if (zero_nonfinite) {
      sign_ef_codes<true>(j, b0, len, scale);
    } else {
      sign_ef_codes<false>(j, b0, len, scale);
    }
  }
}

#if GRADCOMM_X86_DISPATCH
GRADCOMM_FLATTEN_AVX2 inline void sign_ef_encode_avx2(const sign_ef_job& j) {
  sign_ef_encode<true>(j);
}
#endif

// The fused step on `isa`'s path (portable or AVX2; AVX-512 CPUs take the AVX2 one).
inline void sign_ef_encode_isa(const sign_ef_job& j, cpu_isa isa) {
#if GRADCOMM_X86_DISPATCH
  if (isa != cpu_isa::portable) return sign_ef_encode_avx2(j);
#else
  (void)isa;
#endif
  sign_ef_encode<false>(j);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

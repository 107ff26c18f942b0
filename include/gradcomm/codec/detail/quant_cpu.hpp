// gradcomm/codec/detail/quant_cpu.hpp — the block quantizers' CPU loops: portable, AVX2, AVX-512.
// Internal: not part of the API.
//
//   const gradcomm::detail::quant_encode_job job{in, n, 256, rule, policy, rng,
//                                                scales, codes, "call", cpu_best_isa()};
//   gradcomm::detail::quant_encode(job, 4, /*stochastic=*/false);   // scales and packed codes
//   gradcomm::detail::quant_decode(body, out, n, /*add=*/true);      // out += decoded
//
// Scalar quantization, sign and ternary encode and decode through these loops (their wire
// format is codec/quantize.hpp's). Every element goes through quant_math.hpp's functions;
// the AVX2 and AVX-512 paths are the same source compiled for those ISAs, plus intrinsics
// where the compiler would not find the vector form (stochastic rounding with its Philox
// words in registers), chosen once a call (cpu_dispatch.hpp). Every path writes the same
// bytes; the tests compare them.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>  // with cpu_dispatch.hpp, Philox, intrinsics
#include <gradcomm/codec/detail/quant_math.hpp>
#include <gradcomm/core/bitpack.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/error.hpp>

#include <cmath>
#include <string>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The CPU loops work on windows of this many values (a multiple of 8 and of 4): codes are
// staged and packed a window at a time, random words drawn a window at a time.
inline constexpr std::size_t quant_window = 512;

inline void store_f32(std::byte* p, float v) noexcept { std::memcpy(p, &v, 4); }
inline float load_f32(const std::byte* p) noexcept {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

#if defined(__GNUC__) || defined(__clang__)
#define GRADCOMM_QUANT_COLD __attribute__((noinline, cold))
#else
#define GRADCOMM_QUANT_COLD
#endif

// Cold and out of line: the AVX paths' `flatten` would inline the string building.
[[noreturn]] GRADCOMM_QUANT_COLD inline void throw_nonfinite(const char* call, const float* x,
                                                             std::size_t base, std::size_t n) {
  std::size_t i = 0;
  while (i + 1 < n && std::isfinite(x[i])) ++i;
  throw_invalid_argument(
      call, "non-finite value " + std::to_string(x[i]) + " at index " + std::to_string(base + i));
}

// Packs m codes (m % 8 == 0 except in the last window) into out. Codes of 1, 2, 4 and 8
// bits, whole codes a byte, take plain loops over bytes, which vectorize (the codes are
// < 2^B); the other widths, and the tail, core/bitpack.hpp's packer.
template <unsigned B>
inline void pack_window(const std::uint8_t* codes, std::size_t m, std::byte* out) noexcept {
  const std::size_t groups = m / 8;
  std::size_t g = 0;
  if constexpr (B == 1 || B == 2 || B == 4 || B == 8) {
    constexpr unsigned per = 8 / B;
    auto* o = reinterpret_cast<unsigned char*>(out);
    for (std::size_t j = 0; j < groups * B; ++j) {
      unsigned v = 0;
      for (unsigned k = 0; k < per; ++k) v |= static_cast<unsigned>(codes[per * j + k]) << (B * k);
      o[j] = static_cast<unsigned char>(v);
    }
    g = groups;
  }
  pack_bits_impl<B>(codes + 8 * g, m - 8 * g, out + B * g);
}

// out[2i] = low `Shift` bits of in[i], out[2i + 1] = the rest: byte -> two halves. For 1,
// 2 and 4-bit codes, unpacking is one to three such passes, which vectorize (one
// shift-and-mask pass a code width does not).
template <unsigned Shift>
inline void split_halves(const std::uint8_t* in, std::size_t count, std::uint8_t* out) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    out[2 * i] = static_cast<std::uint8_t>(in[i] & ((1u << Shift) - 1));
    out[2 * i + 1] = static_cast<std::uint8_t>(in[i] >> Shift);
  }
}

// Unpacks m codes (m <= quant_window: the halving passes stage in arrays of that size;
// m % 8 == 0 except in the last window) from `in`. Codes of 1, 2 and 4 bits take one to
// three halving passes, 8-bit ones a copy; the other widths, and the tail, core/bitpack.hpp's
// unpacker.
template <unsigned B>
inline void unpack_window(const std::byte* in, std::size_t m, std::uint8_t* codes) noexcept {
  const std::size_t groups = m / 8;
  std::size_t g = 0;
  const auto* p = reinterpret_cast<const std::uint8_t*>(in);
  if constexpr (B == 8) {
    std::memcpy(codes, p, groups * 8);
    g = groups;
  } else if constexpr (B == 4) {
    split_halves<4>(p, groups * 4, codes);
    g = groups;
  } else if constexpr (B == 2) {
    alignas(64) std::uint8_t nibbles[quant_window / 2];
    split_halves<4>(p, groups * 2, nibbles);
    split_halves<2>(nibbles, groups * 4, codes);
    g = groups;
  } else if constexpr (B == 1) {
    alignas(64) std::uint8_t nibbles[quant_window / 4], crumbs[quant_window / 2];
    split_halves<4>(p, groups, nibbles);
    split_halves<2>(nibbles, groups * 2, crumbs);
    split_halves<1>(crumbs, groups * 4, codes);
    g = groups;
  }
  unpack_bits_impl<B>(in + B * g, m - 8 * g, codes + 8 * g);
}

template <unsigned B, bool Stochastic, bool ZeroNonfinite>
inline void quantize_run(const float* x, std::size_t m, float step, const std::uint32_t* words,
                         std::uint8_t* codes) noexcept {
  for (std::size_t k = 0; k < m; ++k) {
    const float v = ZeroNonfinite ? finite_or_zero(x[k]) : x[k];
    if constexpr (Stochastic) {
      codes[k] = scalar_quant_stochastic<B>(v, step, philox_uniform(words[k]));
    } else {
      (void)words;
      codes[k] = scalar_quant_nearest<B>(v, step);
    }
  }
}

#if GRADCOMM_X86_DISPATCH
// scalar_quant_stochastic<B> of 8 values with their Philox words: the same operations in
// the same order (x / step, the clamp on the bits, truncation, u < frac, the sign), so the
// same codes, as 32-bit lanes. `divisor` is nonzero_step(step); one bit needs step > 0
// (the caller writes the all-zero block's codes itself).
template <unsigned B, bool ZeroNonfinite>
[[gnu::target("avx2"), gnu::always_inline]] inline __m256i quant_stochastic8_avx2(
    __m256 x, __m256i words, __m256 divisor) noexcept {
  if constexpr (ZeroNonfinite) {
    const __m256i exponent = _mm256_set1_epi32(0x7f800000);
    const __m256i xb = _mm256_castps_si256(x);
    const __m256i bad = _mm256_cmpeq_epi32(_mm256_and_si256(xb, exponent), exponent);
    x = _mm256_castsi256_ps(_mm256_andnot_si256(bad, xb));
  }
  const __m256 t = _mm256_div_ps(x, divisor);
  const __m256 u =
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(words, 8)), _mm256_set1_ps(0x1.0p-24f));
  if constexpr (B == 1) {
    const __m256 p = _mm256_mul_ps(_mm256_add_ps(t, _mm256_set1_ps(1.0f)), _mm256_set1_ps(0.5f));
    return _mm256_srli_epi32(_mm256_castps_si256(_mm256_cmp_ps(u, p, _CMP_LT_OQ)), 31);
  } else {
    // |t| and qmax as bits are non-negative int32: a signed min is the unsigned one.
    const __m256i ab =
        _mm256_min_epi32(_mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(0x7fffffff)),
                         _mm256_set1_epi32(static_cast<int>(qmax_float_bits(B))));
    const __m256 a = _mm256_castsi256_ps(ab);
    const __m256i lo = _mm256_cvttps_epi32(a);
    const __m256 frac = _mm256_sub_ps(a, _mm256_cvtepi32_ps(lo));
    const __m256i m = _mm256_sub_epi32(lo, _mm256_castps_si256(_mm256_cmp_ps(u, frac, _CMP_LT_OQ)));
    // −m where t's sign bit is set: t < 0, or −0 (m = 0). t is never NaN: x is finite
    // (NaN and Inf were rejected or zeroed) and the divisor positive.
    return _mm256_add_epi32(_mm256_sign_epi32(m, _mm256_castps_si256(t)),
                            _mm256_set1_epi32(scalar_quant_qmax(B)));
  }
}

// Four vectors of 8 codes (0 .. 254) to 32 bytes in order.
[[gnu::target("avx2"), gnu::always_inline]] inline void store_codes32_avx2(
    const __m256i* c, std::uint8_t* out) noexcept {
  const __m256i ab = _mm256_packus_epi32(c[0], c[1]);  // a0-3 b0-3 | a4-7 b4-7
  const __m256i cd = _mm256_packus_epi32(c[2], c[3]);
  const __m256i bytes = _mm256_packus_epi16(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 ...
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(out),
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// Values [from, to) of one chunk of 32 (8 Philox blocks, from / 32 == (to - 1) / 32), x at
// value `from`: the chunk's words through a buffer, then the portable loop.
template <unsigned B, bool ZeroNonfinite>
[[gnu::target("avx2")]] inline void quantize_chunk_part_avx2(const float* x, std::size_t from,
                                                             std::size_t to, float step,
                                                             const philox_stream& rng,
                                                             std::uint8_t* codes) noexcept {
  __m256i w[4];
  philox_words_avx2<1>(rng, static_cast<std::uint32_t>(from / 32 * 8), w);
  alignas(32) std::uint32_t words[32];
  for (int v = 0; v < 4; ++v) _mm256_store_si256(reinterpret_cast<__m256i*>(words + 8 * v), w[v]);
  quantize_run<B, true, ZeroNonfinite>(x, to - from, step, words + from % 32, codes);
}

// quantize_run<B, true, ZeroNonfinite> with the Philox words made in registers and used
// at once: values [i, i + m) of the tensor, x pointing at value i. Whole chunks of 32
// values (8 Philox blocks) take the vector loop, PG chunks at a time while they last (4:
// enough independent multiplies to fill the pipelines; 2 measured 25 % slower on a Zen 5
// core), then one at a time; a partial chunk at either end takes quantize_chunk_part_avx2.
template <unsigned B, bool ZeroNonfinite, int PG = 4>
[[gnu::target("avx2")]] inline void quantize_run_philox_avx2(const float* x, std::size_t i,
                                                             std::size_t m, float step,
                                                             const philox_stream& rng,
                                                             std::uint8_t* codes) noexcept {
  if constexpr (B == 1) {
    if (!(step > 0.0f)) {  // scalar_quant_stochastic<1>: u < 1, always +
      std::memset(codes, 1, m);
      return;
    }
  }
  const std::size_t end = i + m;
  std::size_t k = i;
  if (k % 32 != 0) {
    const std::size_t to = end < (k / 32 + 1) * 32 ? end : (k / 32 + 1) * 32;
    quantize_chunk_part_avx2<B, ZeroNonfinite>(x, k, to, step, rng, codes);
    k = to;
  }
  const __m256 divisor = _mm256_set1_ps(nonzero_step(step));
  __m256i w[4 * PG], c[4];
  for (; k + 32 * PG <= end; k += 32 * PG) {
    philox_words_avx2<PG>(rng, static_cast<std::uint32_t>(k / 4), w);
    const float* xv = x + (k - i);
    for (int q = 0; q < PG; ++q) {
      for (int v = 0; v < 4; ++v) {
        c[v] = quant_stochastic8_avx2<B, ZeroNonfinite>(_mm256_loadu_ps(xv + 32 * q + 8 * v),
                                                        w[4 * q + v], divisor);
      }
      store_codes32_avx2(c, codes + (k - i) + 32 * q);
    }
  }
  for (; k + 32 <= end; k += 32) {
    philox_words_avx2<1>(rng, static_cast<std::uint32_t>(k / 4), w);
    const float* xv = x + (k - i);
    for (int v = 0; v < 4; ++v) {
      c[v] = quant_stochastic8_avx2<B, ZeroNonfinite>(_mm256_loadu_ps(xv + 8 * v), w[v], divisor);
    }
    store_codes32_avx2(c, codes + (k - i));
  }
  if (k < end)
    quantize_chunk_part_avx2<B, ZeroNonfinite>(x + (k - i), k, end, step, rng, codes + (k - i));
}
#endif

// The stochastic loops compute long enough between reads that the hardware prefetcher
// falls behind: the encoder asks for the values 16 KiB ahead of the block it works on.
// Prefetches values [from, to) a cache line at a time; returns where the next call starts.
inline std::size_t prefetch_values(const float* in, std::size_t from, std::size_t to) noexcept {
#if GRADCOMM_HAS_BUILTIN(__builtin_prefetch) || defined(__GNUC__)
  for (; from < to; from += 16) __builtin_prefetch(in + from);
  return from;
#else
  (void)in, (void)from;
  return to;
#endif
}
inline constexpr std::size_t prefetch_distance = 4096;  // values

// max |x[i]| over x[0..len) as bits (abs_float_bits: NaN and Inf above every finite value).
inline std::int32_t max_abs_bits(const float* x, std::size_t len) noexcept {
  std::int32_t mb = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const std::int32_t a = abs_float_bits(float_bits(x[i]));
    mb = a > mb ? a : mb;
  }
  return mb;
}

// One encode of a block quantizer: where the values come from and the body goes.
struct quant_encode_job {
  const float* in;
  std::size_t n;
  std::uint32_t block;
  block_scale_rule rule;
  nonfinite_policy policy;
  philox_stream rng;
  std::byte* scales;  // 4 × blocks bytes
  std::byte* codes;   // packed_bytes(n, bits) bytes
  const char* call;
  cpu_isa isa;  // the loops' and Philox's path (cpu_dispatch.hpp)
};

// Block by block: one pass for the scale (and the check for NaN / Inf), one pass that
// quantizes into the window's code stage; full windows are packed to the payload.
// PhiloxAvx2 (stochastic, AVX2 path): the random words are made inside the quantizing
// loop (quantize_run_philox_avx2), not drawn a window at a time into memory.
template <unsigned B, bool Stochastic, bool PhiloxAvx2 = false>
void quant_encode_blocks(const quant_encode_job& job) {
  static_assert(Stochastic || !PhiloxAvx2);
  constexpr bool fill_words = Stochastic && !PhiloxAvx2;
  constexpr std::size_t window = quant_window;
  alignas(64) std::uint8_t stage[window];
  alignas(64) std::uint32_t words[fill_words ? window : 1];
  const std::size_t n = job.n;
  std::size_t wstart = 0, wend = 0;  // the window being staged
  std::size_t prefetched = 0;        // values below this were prefetched
  std::size_t k = 0;
  // The max |x| of each block is taken one block ahead: its chain of dependent maxima then
  // runs beside the previous block's quantizing instead of before it.
  std::int32_t next_mb = max_abs_bits(job.in, n < job.block ? n : job.block);
  for (std::size_t b0 = 0; b0 < n; b0 += job.block, ++k) {
    const std::size_t len = n - b0 < job.block ? n - b0 : job.block;
    const float* x = job.in + b0;
    const std::size_t ahead = n - b0 - len < prefetch_distance ? n : b0 + len + prefetch_distance;
    prefetched = prefetch_values(job.in, prefetched, ahead);
    const std::int32_t mb = next_mb;
    if (const std::size_t next = b0 + len; next < n) {
      next_mb = max_abs_bits(job.in + next, n - next < job.block ? n - next : job.block);
    }
    const bool zero_nonfinite = mb >= nonfinite_abs_bits;
    if (zero_nonfinite && job.policy != nonfinite_policy::zero) {
      throw_nonfinite(job.call, x, b0, len);
    }
    float scale;
    if (zero_nonfinite) {
      scale = block_scale<true>(x, len, job.rule);
    } else if (job.rule == block_scale_rule::max_abs) {
      scale = bits_float(static_cast<std::uint32_t>(mb));
    } else {
      scale = block_scale<false>(x, len, job.rule);
    }
    store_f32(job.scales + 4 * k, scale);
    const float step = scalar_quant_step(scale, B);
    for (std::size_t i = b0; i < b0 + len;) {
      if (i == wend) {
        if (wend != 0) {
          pack_window<B>(stage, wend - wstart, job.codes + wstart / 8 * B);
        }
        wstart = wend;
        wend = n - wstart < window ? n : wstart + window;
        if constexpr (fill_words) {
          philox_fill(job.rng, static_cast<std::uint32_t>(wstart / 4), (wend - wstart + 3) / 4,
                      words, job.isa);
        }
      }
      const std::size_t m = (b0 + len < wend ? b0 + len : wend) - i;
      const std::size_t o = i - wstart;
      if constexpr (PhiloxAvx2) {
#if GRADCOMM_X86_DISPATCH
        if (zero_nonfinite) {
          quantize_run_philox_avx2<B, true>(x + (i - b0), i, m, step, job.rng, stage + o);
        } else {
          quantize_run_philox_avx2<B, false>(x + (i - b0), i, m, step, job.rng, stage + o);
        }
#endif
      } else if (zero_nonfinite) {
        quantize_run<B, Stochastic, true>(x + (i - b0), m, step, words + (fill_words ? o : 0),
                                          stage + o);
      } else {
        quantize_run<B, Stochastic, false>(x + (i - b0), m, step, words + (fill_words ? o : 0),
                                           stage + o);
      }
      i += m;
    }
  }
  if (n != 0) {
    pack_window<B>(stage, wend - wstart, job.codes + wstart / 8 * B);
  }
}

#if GRADCOMM_X86_DISPATCH
template <unsigned B, bool Stochastic>
GRADCOMM_FLATTEN_AVX2 void quant_encode_blocks_avx2(const quant_encode_job& job) {
  quant_encode_blocks<B, Stochastic, Stochastic>(job);
}
template <unsigned B, bool Stochastic>
GRADCOMM_FLATTEN_AVX512 void quant_encode_blocks_avx512(const quant_encode_job& job) {
  quant_encode_blocks<B, Stochastic>(job);
}
#endif

template <unsigned B, bool Stochastic>
void quant_encode_isa(const quant_encode_job& job) {
#if GRADCOMM_X86_DISPATCH
  if (job.isa == cpu_isa::avx512) return quant_encode_blocks_avx512<B, Stochastic>(job);
  if (job.isa == cpu_isa::avx2) return quant_encode_blocks_avx2<B, Stochastic>(job);
#endif
  quant_encode_blocks<B, Stochastic>(job);
}

// Dispatches once a call on bits, rounding and ISA: the loops see constants.
inline void quant_encode(const quant_encode_job& job, unsigned bits, bool stochastic) {
  with_code_bits(bits, [&]<unsigned B>() {
    if (stochastic) {
      quant_encode_isa<B, true>(job);
    } else {
      quant_encode_isa<B, false>(job);
    }
  });
}

// A block-quantized body after its header, checked: where scales and codes start.
struct quant_body {
  unsigned bits;
  std::uint32_t block;
  const std::byte* scales;
  const std::byte* codes;
};

template <unsigned B, bool Add>
void quant_decode_blocks(const std::byte* scales, const std::byte* codes, std::size_t n,
                         std::uint32_t block, float* out) noexcept {
  constexpr std::size_t window = quant_window;
  alignas(64) std::uint8_t stage[window];
  for (std::size_t wstart = 0; wstart < n; wstart += window) {
    const std::size_t m = n - wstart < window ? n - wstart : window;
    unpack_window<B>(codes + wstart / 8 * B, m, stage);
    for (std::size_t i = wstart; i < wstart + m;) {
      const std::size_t k = i / block;
      const std::size_t block_end = (k + 1) * block;
      const std::size_t end = block_end < wstart + m ? block_end : wstart + m;
      const float step = scalar_quant_step(load_f32(scales + 4 * k), B);
      const std::uint8_t* c = stage + (i - wstart);
      float* o = out + i;
      const std::size_t len = end - i;
      for (std::size_t j = 0; j < len; ++j) {
        if constexpr (Add) {
          o[j] += scalar_quant_value<B>(c[j], step);
        } else {
          o[j] = scalar_quant_value<B>(c[j], step);
        }
      }
      i = end;
    }
  }
}

#if GRADCOMM_X86_DISPATCH
// AVX2 only: AVX-512 brings FMA, and acc + q × step must round like decode's q × step.
template <unsigned B, bool Add>
GRADCOMM_FLATTEN_AVX2 void quant_decode_blocks_avx2(const std::byte* scales, const std::byte* codes,
                                                    std::size_t n, std::uint32_t block,
                                                    float* out) noexcept {
  quant_decode_blocks<B, Add>(scales, codes, n, block, out);
}
#endif

template <unsigned B, bool Add>
void quant_decode_isa(const quant_body& q, float* out, std::size_t n, cpu_isa isa) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (isa != cpu_isa::portable)
    return quant_decode_blocks_avx2<B, Add>(q.scales, q.codes, n, q.block, out);
#else
  (void)isa;
#endif
  quant_decode_blocks<B, Add>(q.scales, q.codes, n, q.block, out);
}

inline void quant_decode(const quant_body& q, float* out, std::size_t n, bool add,
                         cpu_isa isa = cpu_best_isa()) noexcept {
  with_code_bits(q.bits, [&]<unsigned B>() {
    if (add) {
      quant_decode_isa<B, true>(q, out, n, isa);
    } else {
      quant_decode_isa<B, false>(q, out, n, isa);
    }
  });
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

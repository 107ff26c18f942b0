// gradcomm/codec/quantize.hpp — scalar quantization: 1 to 8 bits a value, one scale a block.
//
//   gradcomm::scalar_quant_codec q({.bits = 4, .block = 256,
//                                   .rounding = gradcomm::quant_rounding::stochastic});
//   q.set_stream({.seed = 42, .step = it, .rank = r, .bucket = b});  // stochastic only
//   std::vector<std::byte> wire(q.max_encoded_bytes(g.size()));
//   wire.resize(q.encode(g, wire));
//   q.decode_add(wire, sum);  // sum += decode(wire)
//
// Levels. With b bits a value is q × step, q an integer in [-qmax, qmax], qmax = 2^(b-1) - 1
// (8 bits: ±127), step = scale / qmax for the value's block, sent as the code q + qmax; the
// code 2^b - 1 is never used. One bit has no zero level: q ∈ {-1, +1} (code 0 / 1), qmax = 1,
// step = scale, so a value is ± scale (zero goes to +). The scale of a block is max |g|
// (levels reach the extremes) or its L2 norm (QSGD: qmax levels of ‖g‖). Rounding is to the
// nearest level (ties to even q), |x − Q(x)| ≤ half the level spacing (step / 2; one bit:
// step), or stochastic and unbiased (E[Q(x)] = x) with Philox numbers keyed by stream_key,
// element i drawing philox_stream(seed, step, rank, bucket).at(i).
//
// Payload (core/wire.hpp): header (dtype f32), 8 parameter bytes
//   u8 bits (1..8), u8 scale rule (quant_scale), u8 rounding (quant_rounding), u8 zero,
//   u32 block size (>= 1),
// then the body: one f32 scale per block (ceil(n / block) of them, each finite and >= 0),
// then the n codes packed at `bits` bits each (core/bitpack.hpp), zero padding bits.
//
// The arithmetic of one block and one element is GRADCOMM_HD (scalar_quant_step,
// scalar_quant_nearest, scalar_quant_stochastic, scalar_quant_value, block_max_abs,
// block_l2_norm): the CUDA kernels call the same functions and write the same bytes.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>
#include <gradcomm/core/bitpack.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {

/// How a block's scale is chosen (one byte in the payload).
///
///   gradcomm::scalar_quant_params p{.scale = gradcomm::quant_scale::l2_norm};  // QSGD
enum class quant_scale : std::uint8_t {
  max_abs = 0,  ///< max |g| of the block: the extreme levels are reached
  l2_norm = 1,  ///< ‖g‖₂ of the block, as QSGD (coarser, unbiased with stochastic rounding)
};

/// How a value is rounded to a level (one byte in the payload).
///
///   gradcomm::scalar_quant_params p{.rounding = gradcomm::quant_rounding::stochastic};
enum class quant_rounding : std::uint8_t {
  nearest = 0,     ///< the nearest level, ties to even q: deterministic
  stochastic = 1,  ///< up or down with the probabilities that make E[Q(x)] = x
};

/// Parameters of scalar_quant_codec; designated initializers read well:
///
///   gradcomm::scalar_quant_codec q({.bits = 2, .block = 512});
struct scalar_quant_params {
  unsigned bits = 8;          ///< bits a value, 1 to 8
  std::uint32_t block = 256;  ///< values that share a scale, >= 1
  quant_scale scale = quant_scale::max_abs;
  quant_rounding rounding = quant_rounding::nearest;
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

/// The largest |q| of b-bit codes: 2^(b-1) - 1 for b >= 2; 1 for b = 1 (q = ±1).
///
///   static_assert(gradcomm::scalar_quant_qmax(8) == 127);
GRADCOMM_HD constexpr int scalar_quant_qmax(unsigned bits) noexcept {
  return bits <= 1 ? 1 : (1 << (bits - 1)) - 1;
}

/// The distance between levels of a block whose scale is `scale` (finite, >= 0): the
/// smallest float >= scale / qmax, so that |x| <= scale never needs clamping — even where
/// scale / qmax is subnormal — unless qmax × that float would overflow, then the largest
/// float <= scale / qmax (normal, so the bound still holds up to rounding). Encoder and
/// decoder both derive the step from the scale in the payload with this function.
///
///   float step = gradcomm::scalar_quant_step(scale, 4);  // about scale / 7
GRADCOMM_HD inline float scalar_quant_step(float scale, unsigned bits) noexcept {
  const int qmax = scalar_quant_qmax(bits);
  if (qmax == 1) return scale;
  const double want = static_cast<double>(scale);
  float f = static_cast<float>(want / qmax);
  // f × qmax is exact in double (24 + 7 bits): the comparisons are exact.
  if (static_cast<double>(f) * qmax < want) f = detail::bits_float(detail::float_bits(f) + 1);
  if (static_cast<double>(f) * qmax > 3.4028234663852886e38) {
    f = detail::bits_float(detail::float_bits(f) - 1);
  }
  return f;
}

namespace detail {

// |x| as bits: ordered like |x| for finite values; Inf and NaN sort above every finite.
GRADCOMM_HD constexpr std::int32_t abs_float_bits(std::uint32_t u) noexcept {
  return static_cast<std::int32_t>(u & 0x7fffffffu);
}
inline constexpr std::int32_t nonfinite_abs_bits = 0x7f800000;

// x, or 0 for NaN and ±Inf; a mask, not a branch, so that sums over it vectorize.
GRADCOMM_HD inline float finite_or_zero(float x) noexcept {
  const std::uint32_t u = detail::float_bits(x);
  const std::uint32_t keep = (u & 0x7f800000u) != 0x7f800000u ? 1u : 0u;
  return detail::bits_float(u & (0u - keep));
}

// Round to nearest, ties to even: for |t| <= 2^22, the bits of t + round_magic are
// round_magic_bits + round(t) (exact, and kept under -ffast-math: the bits are read, the sum
// is not undone).
inline constexpr float round_magic = 12582912.0f;  // 1.5 × 2^23
inline constexpr std::int32_t round_magic_bits = 0x4B400000;

// The bits of float(qmax) for b >= 2: qmax = 2^(b-1) - 1 is b - 1 ones, exponent b - 2.
// (std::bit_cast is host-only under nvcc.)
GRADCOMM_HD constexpr std::uint32_t qmax_float_bits(unsigned bits) noexcept {
  const unsigned e = bits - 2;
  return ((127u + e) << 23) | (((1u << e) - 1u) << (23 - e));
}
static_assert(qmax_float_bits(2) == 0x3f800000u && qmax_float_bits(3) == 0x40400000u &&
              qmax_float_bits(8) == 0x42fe0000u);

// A zero step comes only with an all-zero block: divide by 1 instead (0 / 0 is NaN). A
// select, not a branch around the division, so that loops vectorize under -ftrapping-math.
GRADCOMM_HD inline float nonzero_step(float step) noexcept { return step > 0.0f ? step : 1.0f; }

}  // namespace detail

/// The code of x rounded to the nearest level (ties to even q); `step` from
/// scalar_quant_step (0 only for an all-zero block: q = 0). Values past ±qmax × step clamp
/// to the extreme levels. One bit: 1 for x >= 0 (zero included), 0 below.
///
///   std::uint8_t c = gradcomm::scalar_quant_nearest<4>(x, step);  // 0 .. 14
template <unsigned Bits>
GRADCOMM_HD inline std::uint8_t scalar_quant_nearest(float x, float step) noexcept {
  static_assert(Bits >= 1 && Bits <= 8, "codes have 1 to 8 bits");
  if constexpr (Bits == 1) {
    (void)step;
    return x < 0.0f ? 0 : 1;
  } else {
    constexpr int qmax = scalar_quant_qmax(Bits);
    // Clamped after the rounding add, on the sum's bits (integer min / max: no branch):
    // positive floats order like their bits and a negative sum (t below −2^23) sorts below
    // every positive one, so this is clamping t to ±qmax. NaN -> +qmax.
    constexpr std::int32_t zero = detail::round_magic_bits;
    const float y = x / detail::nonzero_step(step) + detail::round_magic;
    std::int32_t b = static_cast<std::int32_t>(detail::float_bits(y));  // negative for y < 0
    b = b < zero + qmax ? b : zero + qmax;
    b = b > zero - qmax ? b : zero - qmax;
    return static_cast<std::uint8_t>(b - zero + qmax);
  }
}

/// The code of x rounded stochastically with u uniform in [0, 1) (philox_uniform):
/// between the two levels around x, the upper one with probability (x − lower) / step, so
/// E[value] = x. One bit: +step with probability (1 + x / step) / 2. A zero step (all-zero
/// block) gives q = 0; one bit, +. Values past ±qmax × step clamp to the extreme levels.
///
///   std::uint8_t c = gradcomm::scalar_quant_stochastic<8>(x, step, gradcomm::philox_uniform(w));
template <unsigned Bits>
GRADCOMM_HD inline std::uint8_t scalar_quant_stochastic(float x, float step, float u) noexcept {
  static_assert(Bits >= 1 && Bits <= 8, "codes have 1 to 8 bits");
  const float t = x / detail::nonzero_step(step);
  if constexpr (Bits == 1) {
    const float p = (t + 1.0f) * 0.5f;            // past ±1 it is past [0, 1]: no clamp needed
    return u < (step > 0.0f ? p : 1.0f) ? 1 : 0;  // a zero step has no sign to choose: +
  } else {
    constexpr int qmax = scalar_quant_qmax(Bits);
    // On a = min(|t|, qmax), so that the result is symmetric, and floor(a) (truncation, as
    // a >= 0) and a − floor(a) are exact. The clamp is on the bits (an integer min: no
    // branch); no float operation sits inside a select, so that loops vectorize.
    constexpr std::uint32_t qmax_bits = detail::qmax_float_bits(Bits);
    std::uint32_t ab = detail::float_bits(t) & 0x7fffffffu;
    ab = ab < qmax_bits ? ab : qmax_bits;  // NaN -> qmax
    const float a = detail::bits_float(ab);
    const auto lo = static_cast<std::int32_t>(a);
    const float frac = a - static_cast<float>(lo);
    const std::int32_t m = lo + (u < frac ? 1 : 0);
    return static_cast<std::uint8_t>((t < 0.0f ? -m : m) + qmax);
  }
}

/// The value of a code: (code − qmax) × step; one bit: (2 × code − 1) × step.
///
///   float v = gradcomm::scalar_quant_value<4>(c, step);
template <unsigned Bits>
GRADCOMM_HD inline float scalar_quant_value(std::uint8_t code, float step) noexcept {
  static_assert(Bits >= 1 && Bits <= 8, "codes have 1 to 8 bits");
  if constexpr (Bits == 1) {
    return static_cast<float>(2 * static_cast<int>(code) - 1) * step;
  } else {
    return static_cast<float>(static_cast<int>(code) - scalar_quant_qmax(Bits)) * step;
  }
}

/// max |x| over x[0..n); with ZeroNonfinite, NaN and ±Inf count as 0. Order-independent,
/// so any parallel reduction gives the same float.
///
///   float s = gradcomm::block_max_abs(x + b * 256, 256);
template <bool ZeroNonfinite = false>
GRADCOMM_HD inline float block_max_abs(const float* x, std::size_t n) noexcept {
  std::int32_t m = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::int32_t a = detail::abs_float_bits(detail::float_bits(x[i]));
    if constexpr (ZeroNonfinite) a = a >= detail::nonfinite_abs_bits ? 0 : a;
    m = a > m ? a : m;
  }
  return detail::bits_float(static_cast<std::uint32_t>(m));
}

namespace detail {
// Σ f(x[i]) in double, in 8 lanes (lane i % 8), joined as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)):
// a fixed order (a kernel reproduces it to write the same scale) that vectorizes.
template <bool ZeroNonfinite, class F>
GRADCOMM_HD inline double lane_sum(const float* x, std::size_t n, F f) noexcept {
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const float v = ZeroNonfinite ? finite_or_zero(x[i + k]) : x[i + k];
      l[k] += f(static_cast<double>(v));
    }
  }
  for (int k = 0; i + k < n; ++k) {
    const float v = ZeroNonfinite ? finite_or_zero(x[i + k]) : x[i + k];
    l[k] += f(static_cast<double>(v));
  }
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}
GRADCOMM_HD inline float double_to_scale(double s) noexcept {
  return s >= 3.4028234663852886e38 ? 3.4028234663852886e38f : static_cast<float>(s);
}
}  // namespace detail

/// ‖x‖₂ over x[0..n) (squares summed in double in a fixed order, so neither 1e38 nor
/// subnormals are lost), capped at the largest float. Never below max |x|.
///
///   float s = gradcomm::block_l2_norm(x + b * 256, 256);
template <bool ZeroNonfinite = false>
GRADCOMM_HD inline float block_l2_norm(const float* x, std::size_t n) noexcept {
  const double ss = detail::lane_sum<ZeroNonfinite>(x, n, [](double v) { return v * v; });
  return detail::double_to_scale(std::sqrt(ss));
}

/// mean |x| over x[0..n) (n >= 1; summed in double in a fixed order): sign_codec's scale.
///
///   float s = gradcomm::block_mean_abs(x + b * 256, 256);
template <bool ZeroNonfinite = false>
GRADCOMM_HD inline float block_mean_abs(const float* x, std::size_t n) noexcept {
  const double sa = detail::lane_sum<ZeroNonfinite>(x, n, [](double v) { return std::fabs(v); });
  return detail::double_to_scale(sa / static_cast<double>(n));
}

namespace detail {

// Scale rules of the block quantizers: scalar_quant's two, and sign_codec's mean |g|.
enum class block_scale_rule : unsigned char { max_abs, l2_norm, mean_abs };

GRADCOMM_HD constexpr std::size_t quant_block_count(std::size_t n, std::uint32_t block) noexcept {
  return n / block + (n % block != 0 ? 1 : 0);
}
// Scales then codes.
GRADCOMM_HD constexpr std::size_t quant_body_bytes(std::size_t n, std::uint32_t block,
                                                   unsigned bits) noexcept {
  return 4 * quant_block_count(n, block) + packed_bytes(n, bits);
}

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

template <bool ZeroNonfinite>
inline float block_scale(const float* x, std::size_t n, block_scale_rule r) noexcept {
  switch (r) {
    case block_scale_rule::max_abs: return block_max_abs<ZeroNonfinite>(x, n);
    case block_scale_rule::l2_norm: return block_l2_norm<ZeroNonfinite>(x, n);
    case block_scale_rule::mean_abs: return block_mean_abs<ZeroNonfinite>(x, n);
  }
  return 0.0f;
}

// Packs m codes (m % 8 == 0 except in the last window) into out; `avail` bytes lie between
// out and the end of the code section. 8-byte stores spill into the next group's bytes,
// which are written after them.
template <unsigned B>
inline void pack_window(const std::uint8_t* codes, std::size_t m, std::byte* out,
                        std::size_t avail) noexcept {
  constexpr std::uint64_t code_mask = bitpack_lanes(bitpack_low_mask(B), 8);
  const std::size_t groups = m / 8;
  std::size_t g = 0;
  if constexpr (B == 1 || B == 2 || B == 4 || B == 8) {
    // Whole codes a byte: plain loops over bytes, which vectorize (the codes are < 2^B).
    constexpr unsigned per = 8 / B;
    auto* o = reinterpret_cast<unsigned char*>(out);
    for (std::size_t j = 0; j < groups * B; ++j) {
      unsigned v = 0;
      for (unsigned k = 0; k < per; ++k) v |= static_cast<unsigned>(codes[per * j + k]) << (B * k);
      o[j] = static_cast<unsigned char>(v);
    }
    g = groups;
  }
  const std::size_t wide = wide_groups<B>(groups, avail);
  for (; g < wide; ++g) {
    std::uint64_t x;
    std::memcpy(&x, codes + 8 * g, 8);
    x = squeeze8<B>(x & code_mask);
    std::memcpy(out + B * g, &x, 8);
  }
  for (; g < groups; ++g) pack8<B>(codes + 8 * g, out + B * g);
  if (const std::size_t rest = m % 8) {
    std::uint8_t tail[8] = {};
    std::memcpy(tail, codes + 8 * groups, rest);
    std::byte packed[8];
    pack8<B>(tail, packed);
    std::memcpy(out + B * groups, packed, (rest * B + 7) / 8);
  }
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
// m % 8 == 0 except in the last window) from `in`; `avail` bytes lie between `in` and the
// end of the code section.
template <unsigned B>
inline void unpack_window(const std::byte* in, std::size_t m, std::uint8_t* codes,
                          std::size_t avail) noexcept {
  constexpr std::uint64_t group_mask = bitpack_low_mask(8 * B);
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
  const std::size_t wide = wide_groups<B>(groups, avail);
  for (; g < wide; ++g) {
    std::uint64_t x;
    std::memcpy(&x, in + B * g, 8);
    x = spread8<B>(x & group_mask);
    std::memcpy(codes + 8 * g, &x, 8);
  }
  for (; g < groups; ++g) unpack8<B>(in + B * g, codes + 8 * g);
  if (const std::size_t rest = m % 8) {
    std::uint64_t x = 0;
    std::memcpy(&x, in + B * groups, (rest * B + 7) / 8);
    const std::uint64_t spread = spread8<B>(x);
    std::memcpy(codes + 8 * groups, &spread, rest);
  }
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
  const std::size_t code_bytes = packed_bytes(n, B);
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
          pack_window<B>(stage, wend - wstart, job.codes + wstart / 8 * B,
                         code_bytes - wstart / 8 * B);
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
    pack_window<B>(stage, wend - wstart, job.codes + wstart / 8 * B, code_bytes - wstart / 8 * B);
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

// Checked body: decoders call this before they write anything.
template <unsigned B>
void quant_check_codes(const std::byte* codes, std::size_t n, const char* call) {
  const std::size_t bytes = packed_bytes(n, B);
  if (const unsigned used = n % 8 * B % 8; used != 0) {
    const auto last = std::to_integer<unsigned>(codes[bytes - 1]);
    if (last >> used) {
      throw decode_error(call, "nonzero padding bits: the last code byte is " +
                                   std::to_string(last) + ", only its low " + std::to_string(used) +
                                   " bits are code bits");
    }
  }
  if constexpr (B >= 2) {
    // The all-ones code (2^B − 1) has no level. Any? One pass that vectorizes where codes
    // sit whole in bytes, a few shifts a group of 8 elsewhere; then find the first.
    const auto* p = reinterpret_cast<const std::uint8_t*>(codes);
    std::uint64_t any = 0;
    if constexpr (B == 2 || B == 4 || B == 8) {
      std::uint8_t acc = 0;
      for (std::size_t i = 0; i < bytes; ++i) {
        const std::uint8_t b = p[i];
        if constexpr (B == 8) {
          acc |= b == 0xff ? 1 : 0;
        } else if constexpr (B == 4) {
          acc |= static_cast<std::uint8_t>(b & (b >> 1) & (b >> 2) & (b >> 3) & 0x11);
        } else {
          acc |= static_cast<std::uint8_t>(b & (b >> 1) & 0x55);
        }
      }
      any = acc;
    } else {
      constexpr std::uint64_t field_low = bitpack_lanes(1, B) & bitpack_low_mask(8 * B);
      const std::size_t groups = (n + 7) / 8;  // padding codes are 0: never all ones
      const std::size_t wide = wide_groups<B>(groups, bytes);
      for (std::size_t g = 0; g < groups; ++g) {
        std::uint64_t x = 0;
        if (g < wide) {
          std::memcpy(&x, codes + B * g, 8);  // a whole word: the next group's bits go below
          x &= bitpack_low_mask(8 * B);
        } else {
          std::memcpy(&x, codes + B * g, bytes - B * g < B ? bytes - B * g : B);
        }
        std::uint64_t y = x;
        for (unsigned k = 1; k < B; ++k) y &= x >> k;
        any |= y & field_low;
      }
    }
    if (any != 0) {
      for (std::size_t i = 0; i < n; ++i) {
        if (get_code(codes, i, B) == bitpack_low_mask(B)) {
          throw decode_error(call,
                             "code " + std::to_string(bitpack_low_mask(B)) + " at index " +
                                 std::to_string(i) + " is out of range: " + std::to_string(B) +
                                 "-bit codes have " + std::to_string(2 * scalar_quant_qmax(B) + 1) +
                                 " levels, 0 to " + std::to_string(2 * scalar_quant_qmax(B)));
        }
      }
    }
  }
}

inline void quant_check_scales(const std::byte* scales, std::size_t blocks, const char* call) {
  std::uint32_t bad = 0;
  for (std::size_t k = 0; k < blocks; ++k) {
    std::uint32_t u;
    std::memcpy(&u, scales + 4 * k, 4);
    bad |= (u >> 31) | ((u & 0x7f800000u) == 0x7f800000u ? 1u : 0u);
  }
  if (bad == 0) return;
  for (std::size_t k = 0; k < blocks; ++k) {
    const float s = load_f32(scales + 4 * k);
    if (!std::isfinite(s)) {
      throw decode_error(
          call, "non-finite scale " + std::to_string(s) + " in block " + std::to_string(k));
    }
    if (std::signbit(s)) {
      throw decode_error(call,
                         "negative scale " + std::to_string(s) + " in block " + std::to_string(k));
    }
  }
}

template <unsigned B, bool Add>
void quant_decode_blocks(const std::byte* scales, const std::byte* codes, std::size_t n,
                         std::uint32_t block, float* out) noexcept {
  constexpr std::size_t window = quant_window;
  alignas(64) std::uint8_t stage[window];
  const std::size_t code_bytes = packed_bytes(n, B);
  for (std::size_t wstart = 0; wstart < n; wstart += window) {
    const std::size_t m = n - wstart < window ? n - wstart : window;
    unpack_window<B>(codes + wstart / 8 * B, m, stage, code_bytes - wstart / 8 * B);
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

// A block-quantized body after its header, checked: where scales and codes start.
struct quant_body {
  unsigned bits;
  std::uint32_t block;
  const std::byte* scales;
  const std::byte* codes;
};

// Reads the body of a payload whose header says `bits` and `block` (already range-checked)
// and checks its length, its scales and its codes.
inline quant_body open_quant_body(wire_reader& r, const wire_header& h, unsigned bits,
                                  std::uint32_t block, std::size_t n, const char* call) {
  check_count(h, n, call);
  const std::size_t need = quant_body_bytes(n, block, bits);
  if (h.body_bytes != need) {
    throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                 std::to_string(n) + " values in blocks of " +
                                 std::to_string(block) + " at " + std::to_string(bits) +
                                 " bits need " + std::to_string(need));
  }
  const std::byte* body = r.take(need).data();
  const std::size_t blocks = quant_block_count(n, block);
  quant_body q{bits, block, body, body + 4 * blocks};
  quant_check_scales(q.scales, blocks, call);
  with_code_bits(bits, [&]<unsigned B>() { quant_check_codes<B>(q.codes, n, call); });
  return q;
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

inline void check_block_size(const char* call, std::uint32_t block) {
  if (block == 0) throw_invalid_argument(call, "block size 0: blocks hold at least 1 value");
}

// Philox streams hold 2^34 words (core/philox.hpp): one an element.
inline void check_stochastic_count(const char* call, std::size_t n) {
  if (static_cast<std::uint64_t>(n) > (std::uint64_t{1} << 34)) {
    throw_invalid_argument(call, std::to_string(n) +
                                     " values: stochastic rounding draws one Philox word a "
                                     "value and a stream holds 2^34");
  }
}

inline std::uint32_t get_u32_le(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// What a block quantizer's encode needs beyond the values: shared by scalar_quant_codec,
// sign_codec and ternary_codec.
struct quant_format {
  codec_id id;
  std::span<const std::byte> params;
  unsigned bits;
  std::uint32_t block;
  block_scale_rule rule;
  bool stochastic;
  nonfinite_policy policy;
  stream_key key;
};

GRADCOMM_HD constexpr std::size_t quant_payload_bytes(std::size_t n, std::size_t params_bytes,
                                                      std::uint32_t block, unsigned bits) noexcept {
  return wire_header_bytes + params_bytes + quant_body_bytes(n, block, bits);
}

// Header, parameters, scales, codes; returns the payload's size.
inline std::size_t quant_encode_payload(const quant_format& f, host_view<const float> in,
                                        std::span<std::byte> out, const char* call) {
  const std::size_t n = in.size();
  const std::size_t need = quant_payload_bytes(n, f.params.size(), f.block, f.bits);
  if (out.size() < need) throw_buffer_too_small(call, need, out.size());
  if (f.stochastic) check_stochastic_count(call, n);
  wire_writer w(out, call);
  const std::size_t body = quant_body_bytes(n, f.block, f.bits);
  write_header(w, f.id, dtype::f32, n, f.params, body);
  std::byte* scales = w.take(body).data();
  const quant_encode_job job{
      in.data(), n,
      f.block,   f.rule,
      f.policy,  philox_stream(f.key.seed, f.key.step, f.key.rank, f.key.bucket),
      scales,    scales + 4 * quant_block_count(n, f.block),
      call,      cpu_best_isa()};
  quant_encode(job, f.bits, f.stochastic);
  return need;
}

// The header of a payload whose only parameter is the block size (sign, ternary): checks
// it and the body, which has `bits`-bit codes.
inline quant_body open_block_only(std::span<const std::byte> payload, std::size_t n, codec_id id,
                                  unsigned bits, const char* call) {
  wire_reader r(payload, call);
  const wire_header h = read_header(r, id);
  check_dtype(h, dtype::f32, call);
  if (h.params.size() != 4) {
    throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected 4");
  }
  const std::uint32_t block = get_u32_le(h.params.data());
  if (block == 0) throw decode_error(call, "block size 0");
  return open_quant_body(r, h, bits, block, n, call);
}

}  // namespace detail

/// Scalar quantization (see the top of this header): `bits` bits a value, one f32 scale a
/// block, nearest or stochastic rounding. Not linear, fixed size, stateless. Decoders take
/// their parameters from the payload, so any scalar_quant payload decodes.
///
///   gradcomm::scalar_quant_codec q({.bits = 8});
///   std::vector<std::byte> wire(q.max_encoded_bytes(n));
///   wire.resize(q.encode(g, wire));
///   q.decode(wire, out);  // |out[i] − g[i]| <= step / 2 of i's block
class scalar_quant_codec : public host_codec_calls<scalar_quant_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::scalar_quant;
  /// Bytes of codec parameters in the header.
  static constexpr std::size_t params_bytes = 8;

  /// Throws invalid_argument for bits outside 1..8, block 0, or an unknown enum value.
  explicit scalar_quant_codec(scalar_quant_params p = {}) : p_(p) {
    constexpr const char* call = "scalar_quant_codec";
    if (p.bits < 1 || p.bits > 8) {
      detail::throw_invalid_argument(
          call, "bad bit width " + std::to_string(p.bits) + ": 1 to 8 bits a value");
    }
    detail::check_block_size(call, p.block);
    if (static_cast<unsigned>(p.scale) > 1 || static_cast<unsigned>(p.rounding) > 1) {
      detail::throw_invalid_argument(call, "unknown scale rule or rounding");
    }
  }

  const scalar_quant_params& params() const noexcept { return p_; }

  /// Keys the random numbers of stochastic rounding (ignored when rounding is nearest).
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, p_.block, p_.bits);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  /// Throws buffer_too_small, or invalid_argument naming the first NaN / Inf (policy reject
  /// or pass); policy zero encodes them as 0 and leaves them out of the scale.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes] = {};
    params[0] = static_cast<std::byte>(p_.bits);
    params[1] = static_cast<std::byte>(p_.scale);
    params[2] = static_cast<std::byte>(p_.rounding);
    std::memcpy(params + 4, &p_.block, 4);
    const detail::quant_format f{id,
                                 params,
                                 p_.bits,
                                 p_.block,
                                 p_.scale == quant_scale::l2_norm
                                     ? detail::block_scale_rule::l2_norm
                                     : detail::block_scale_rule::max_abs,
                                 p_.rounding == quant_rounding::stochastic,
                                 p_.nonfinite,
                                 key_};
    return detail::quant_encode_payload(f, in, out, "scalar_quant_codec::encode");
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(open(payload, out.size(), "scalar_quant_codec::decode"), out.data(),
                         out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(open(payload, acc.size(), "scalar_quant_codec::decode_add"), acc.data(),
                         acc.size(), true);
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<scalar_quant_codec>::encode;
  using host_codec_calls<scalar_quant_codec>::decode;
  using host_codec_calls<scalar_quant_codec>::decode_add;

 private:
  static detail::quant_body open(std::span<const std::byte> payload, std::size_t n,
                                 const char* call) {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    check_dtype(h, dtype::f32, call);
    if (h.params.size() != params_bytes) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                   std::to_string(params_bytes));
    }
    const auto bits = std::to_integer<unsigned>(h.params[0]);
    const auto rule = std::to_integer<unsigned>(h.params[1]);
    const auto rounding = std::to_integer<unsigned>(h.params[2]);
    const auto reserved = std::to_integer<unsigned>(h.params[3]);
    const std::uint32_t block = detail::get_u32_le(h.params.data() + 4);
    if (bits < 1 || bits > 8) {
      throw decode_error(call, "bad bit width " + std::to_string(bits) + " (1 to 8)");
    }
    if (rule > 1) throw decode_error(call, "bad scale rule " + std::to_string(rule));
    if (rounding > 1) throw decode_error(call, "bad rounding " + std::to_string(rounding));
    if (reserved != 0) {
      throw decode_error(call, "reserved parameter byte is " + std::to_string(reserved));
    }
    if (block == 0) throw decode_error(call, "block size 0");
    return detail::open_quant_body(r, h, bits, block, n, call);
  }

  scalar_quant_params p_;
  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

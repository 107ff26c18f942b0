// gradcomm/codec/detail/quant_math.hpp — scalar quantization's per-element and per-block
// arithmetic. Internal header; the names in namespace gradcomm are public through
// codec/quantize.hpp.
//
//   const float step = gradcomm::scalar_quant_step(gradcomm::block_max_abs(x, 256), 4);
//   std::uint8_t c = gradcomm::scalar_quant_nearest<4>(x[i], step);  // 0 .. 14
//   float v = gradcomm::scalar_quant_value<4>(c, step);
//
// The one specification of the levels, the roundings and the block scales (codec/quantize.hpp
// says the rules): the CPU loops (quant_cpu.hpp), sign and ternary (sign_math.hpp) and the
// CUDA kernels call these, and write the same bytes. GRADCOMM_HD functions and constants only:
// no containers, no exceptions, no intrinsics.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {

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

// The scale of a block under rule r (quantize.hpp, sign.hpp).
template <bool ZeroNonfinite>
GRADCOMM_HD inline float block_scale(const float* x, std::size_t n, block_scale_rule r) noexcept {
  switch (r) {
    case block_scale_rule::max_abs: return block_max_abs<ZeroNonfinite>(x, n);
    case block_scale_rule::l2_norm: return block_l2_norm<ZeroNonfinite>(x, n);
    case block_scale_rule::mean_abs: return block_mean_abs<ZeroNonfinite>(x, n);
  }
  return 0.0f;
}

}  // namespace detail

}  // namespace v0
}  // namespace gradcomm

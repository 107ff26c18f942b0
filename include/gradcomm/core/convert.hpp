// gradcomm/core/convert.hpp — f32 to and from the 16- and 8-bit float formats, one element.
//
//   gradcomm::bf16 h = gradcomm::to_bf16(0.1f);
//   float back = gradcomm::to_float(h);
//   gradcomm::fp8_e4m3 q = gradcomm::to_fp8_e4m3(500.0f);  // saturates to 448
//
// Rounding is to nearest, ties to even. f16 overflows to ±Inf past 65504 (as IEEE rounding
// says); bf16 keeps f32's range; the OCP fp8 formats saturate. These are GRADCOMM_HD
// functions: the cast codecs' loops (codec/cast.hpp), the CUDA kernels and the transports'
// 16-bit sums (transport/mpi.hpp) all call them, so they live below both codec/ and
// transport/. Written with selects rather than branches so that the loops around them
// vectorize.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstdint>
#include <cstring>

namespace gradcomm {
inline namespace v0 {

namespace detail {
GRADCOMM_HD inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
GRADCOMM_HD inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// c ? a : b by masks, on signed ints (SSE2 compares only those). A plain ?: whose arm
// holds a float operation becomes a branch under GCC's default -ftrapping-math, and the
// loop around it no longer vectorizes.
GRADCOMM_HD inline std::int32_t select_i32(bool c, std::int32_t a, std::int32_t b) noexcept {
  const std::int32_t m = -static_cast<std::int32_t>(c);
  return (a & m) | (b & ~m);
}
GRADCOMM_HD inline std::int32_t float_bits_i32(float f) noexcept {
  return static_cast<std::int32_t>(float_bits(f));
}
GRADCOMM_HD inline float i32_bits_float(std::int32_t i) noexcept {
  return bits_float(static_cast<std::uint32_t>(i));
}
}  // namespace detail

/// f32 -> bf16, round to nearest even; NaN stays NaN (quiet, sign kept).
GRADCOMM_HD inline bf16 to_bf16(float f) noexcept {
  std::uint32_t u = detail::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

/// bf16 -> f32, exact.
GRADCOMM_HD inline float to_float(bf16 h) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(h.bits) << 16);
}

/// f32 -> IEEE f16, round to nearest even, overflow to ±Inf, subnormals kept.
GRADCOMM_HD inline f16 to_f16(float f) noexcept {
  const std::int32_t u = detail::float_bits_i32(f);
  const std::int32_t x = u & 0x7fffffff;  // non-negative: compared as signed ints
  // Below 2^-14: a subnormal (or zero). Adding 0.5 puts the f16 subnormal step (2^-24)
  // in the last place of the sum, so the FPU rounds to nearest even.
  const std::int32_t sub = detail::float_bits_i32(detail::i32_bits_float(x) + 0.5f) - 0x3f000000;
  // Normal: re-bias the exponent (127 -> 15) and round 23 mantissa bits to 10.
  const std::int32_t normal = (x - 0x37fff001 + ((x >> 13) & 1)) >> 13;
  std::int32_t h = detail::select_i32(x < 0x38800000, sub, normal);
  // At or past the midpoint between 65504 and 65536 (Inf included): Inf; NaN: quiet NaN.
  h = detail::select_i32(x >= 0x477ff000, 0x7c00, h);
  h = detail::select_i32(x > 0x7f800000, 0x7e00, h);
  // Assembled in the top half and shifted down, so that loops narrow once (see fp8).
  const std::uint32_t r =
      (static_cast<std::uint32_t>(u) & 0x80000000u) | (static_cast<std::uint32_t>(h) << 16);
  return f16{static_cast<std::uint16_t>(r >> 16)};
}

/// IEEE f16 -> f32, exact.
GRADCOMM_HD inline float to_float(f16 h) noexcept {
  const std::int32_t sign = static_cast<std::int32_t>(h.bits & 0x8000u) << 16;
  const std::int32_t a = h.bits & 0x7fff;
  const std::int32_t normal = (a << 13) + 0x38000000;   // re-bias 15 -> 127
  const std::int32_t special = (a << 13) + 0x70000000;  // Inf and NaN (payload kept)
  const std::int32_t sub = detail::float_bits_i32(static_cast<float>(a) * 0x1p-24f);  // exact
  std::int32_t m = detail::select_i32(a >= 0x7c00, special, normal);
  m = detail::select_i32(a < 0x400, sub, m);
  return detail::i32_bits_float(sign | m);
}

/// Largest finite OCP fp8 E4M3 value: 448 (0x7e). Larger magnitudes saturate to it.
inline constexpr float fp8_e4m3_max = 448.0f;
/// Largest finite OCP fp8 E5M2 value: 57344 (0x7b). Larger magnitudes saturate to it.
inline constexpr float fp8_e5m2_max = 57344.0f;

namespace detail {
// f32 bits -> the magnitude bits of fp8 E4M3, round to nearest even, saturating; a NaN
// input gives 448 (the caller handles NaN: the codec loops, cheaper, after the fact).
GRADCOMM_HD inline std::int32_t fp8_e4m3_magnitude(std::int32_t u) noexcept {
  std::int32_t x = u & 0x7fffffff;      // |f| as bits: non-negative, compared as signed ints
  x = x < 0x43e00000 ? x : 0x43e00000;  // saturate at 448 (Inf too) before rounding
  // Below 2^-6 a subnormal (or zero): adding 2^14 puts the subnormal step (2^-9) in the
  // last place of the sum, so the FPU rounds to nearest even.
  const std::int32_t sub = float_bits_i32(i32_bits_float(x) + 16384.0f) - 0x46800000;
  // Normal: re-bias the exponent (127 -> 7) and round 23 mantissa bits to 3.
  const std::int32_t normal = (x + (0x7ffff - 0x3c000000) + ((x >> 20) & 1)) >> 20;
  return select_i32(x < 0x3c800000, sub, normal);
}
// The same for E5M2: saturating at 57344, a NaN input gives 57344.
GRADCOMM_HD inline std::int32_t fp8_e5m2_magnitude(std::int32_t u) noexcept {
  std::int32_t x = u & 0x7fffffff;
  x = x < 0x47600000 ? x : 0x47600000;
  // Below 2^-14: adding 2^7 puts the subnormal step (2^-16) in the last place.
  const std::int32_t sub = float_bits_i32(i32_bits_float(x) + 128.0f) - 0x43000000;
  // Normal: re-bias the exponent (127 -> 15) and round 23 mantissa bits to 2.
  const std::int32_t normal = (x + (0xfffff - 0x38000000) + ((x >> 21) & 1)) >> 21;
  return select_i32(x < 0x38800000, sub, normal);
}
GRADCOMM_HD inline std::int32_t sign_byte(std::int32_t u) noexcept { return (u >> 24) & 0x80; }
GRADCOMM_HD inline bool is_nan_bits(std::int32_t u) noexcept {
  return (u & 0x7fffffff) > 0x7f800000;
}
}  // namespace detail

/// f32 -> OCP fp8 E4M3 (bias 7, no infinities), round to nearest even, saturating:
/// finite values beyond ±448 and ±Inf become ±448; NaN becomes NaN (0x7f, sign kept).
///
///   gradcomm::fp8_e4m3 q = gradcomm::to_fp8_e4m3(0.3f);  // 0x2a, i.e. 0.3125
GRADCOMM_HD inline fp8_e4m3 to_fp8_e4m3(float f) noexcept {
  const std::int32_t u = detail::float_bits_i32(f);
  const std::int32_t h =
      detail::select_i32(detail::is_nan_bits(u), 0x7f, detail::fp8_e4m3_magnitude(u));
  return fp8_e4m3{static_cast<std::uint8_t>(detail::sign_byte(u) | h)};
}

/// f32 -> OCP fp8 E5M2 (bias 15, IEEE-like), round to nearest even, saturating: finite
/// values beyond ±57344 and ±Inf become ±57344; NaN becomes NaN (0x7e, sign kept). E5M2
/// has infinities, but a saturating conversion never produces them.
///
///   gradcomm::fp8_e5m2 q = gradcomm::to_fp8_e5m2(0.3f);  // 0x35, i.e. 0.3125
GRADCOMM_HD inline fp8_e5m2 to_fp8_e5m2(float f) noexcept {
  const std::int32_t u = detail::float_bits_i32(f);
  const std::int32_t h =
      detail::select_i32(detail::is_nan_bits(u), 0x7e, detail::fp8_e5m2_magnitude(u));
  return fp8_e5m2{static_cast<std::uint8_t>(detail::sign_byte(u) | h)};
}

/// OCP fp8 E4M3 -> f32, exact; 0x7f and 0xff are NaN.
///
///   float v = gradcomm::to_float(gradcomm::fp8_e4m3{0x7e});  // 448
GRADCOMM_HD inline float to_float(fp8_e4m3 h) noexcept {
  const std::int32_t sign = static_cast<std::int32_t>(h.bits & 0x80u) << 24;
  const std::int32_t a = h.bits & 0x7f;
  const std::int32_t normal = (a << 20) + 0x3c000000;  // re-bias 7 -> 127
  const std::int32_t sub = detail::float_bits_i32(static_cast<float>(a) * 0x1p-9f);  // m * 2^-9
  std::int32_t m = detail::select_i32(a >= 8, normal, sub);
  m = detail::select_i32(a == 0x7f, 0x7fc00000, m);
  return detail::i32_bits_float(sign | m);
}

/// OCP fp8 E5M2 -> f32, exact; 0x7c is +Inf, 0x7d..0x7f are NaN (and their negatives),
/// payload kept as to_float(f16) keeps it.
///
///   float v = gradcomm::to_float(gradcomm::fp8_e5m2{0x7b});  // 57344
GRADCOMM_HD inline float to_float(fp8_e5m2 h) noexcept {
  const std::int32_t sign = static_cast<std::int32_t>(h.bits & 0x80u) << 24;
  const std::int32_t a = h.bits & 0x7f;
  const std::int32_t normal = (a << 21) + 0x38000000;   // re-bias 15 -> 127
  const std::int32_t special = (a << 21) + 0x70000000;  // Inf and NaN (payload kept)
  const std::int32_t sub = detail::float_bits_i32(static_cast<float>(a) * 0x1p-16f);
  std::int32_t m = detail::select_i32(a >= 0x7c, special, normal);
  m = detail::select_i32(a < 4, sub, m);
  return detail::i32_bits_float(sign | m);
}

}  // namespace v0
}  // namespace gradcomm

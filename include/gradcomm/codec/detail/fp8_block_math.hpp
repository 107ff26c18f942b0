// gradcomm/codec/detail/fp8_block_math.hpp — block-scaled fp8's per-block arithmetic (GRADCOMM_HD).
// Internal header; the names in namespace gradcomm are public through codec/fp8_block.hpp.
//
//   std::uint8_t elems[32];
//   std::uint8_t e = gradcomm::fp8_block_encode<gradcomm::dtype::fp8_e4m3>(x, 32, elems);
//   gradcomm::fp8_block_decode<gradcomm::dtype::fp8_e4m3, false>(e, elems, 32, out);
//
// The one specification of the MX scale and elements (codec/fp8_block.hpp says the rules):
// the CPU loops (fp8_block_cpu.hpp) and the CUDA kernels call these. No containers, no
// exceptions, no intrinsics: nvcc compiles it for the device.
#pragma once

#include <gradcomm/codec/detail/cast_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {

/// Values per fp8_block_codec block (one E8M0 scale each), as in the OCP MX formats.
inline constexpr std::size_t fp8_block_size = 32;

/// The largest exponent of an fp8 element format: 8 (E4M3, max 448 = 1.75 · 2^8) or
/// 15 (E5M2, max 57344 = 1.75 · 2^15).
///
///   static_assert(gradcomm::fp8_emax(gradcomm::dtype::fp8_e4m3) == 8);
GRADCOMM_HD constexpr int fp8_emax(dtype element) noexcept {
  return element == dtype::fp8_e4m3 ? 8 : 15;
}

/// The largest E8M0 scale code fp8_block_codec writes for `element`: 254 − emax, that of a
/// block whose largest value is near FLT_MAX. Decoders reject larger codes, which would
/// overflow f32.
///
///   static_assert(gradcomm::fp8_block_max_scale_code(gradcomm::dtype::fp8_e5m2) == 239);
GRADCOMM_HD constexpr int fp8_block_max_scale_code(dtype element) noexcept {
  return 254 - fp8_emax(element);
}

/// The scale 2^(code − 127) of an E8M0 code (0 .. 254; 255 is NaN and not handled here).
///
///   float s = gradcomm::e8m0_to_float(127);  // 1.0f
GRADCOMM_HD inline float e8m0_to_float(std::uint8_t code) noexcept {
  // Code 0 is 2^-127, an f32 subnormal: its own bit pattern.
  return detail::bits_float(code == 0 ? 0x00400000u : static_cast<std::uint32_t>(code) << 23);
}

/// The MX shared-scale code of a block whose largest magnitude has f32 bits `amax_bits`
/// (finite, sign clear): floor(log2(max |x|)) − emax + 127, clamped to [0, 254]; 0 when
/// the block is all zeros.
///
///   std::uint8_t e = gradcomm::fp8_block_scale_code(gradcomm::detail::float_bits(3.0f), 8);
///   // floor(log2 3) = 1: e = 1 − 8 + 127 = 120, scale 2^-7, 3 becomes 384
GRADCOMM_HD inline std::uint8_t fp8_block_scale_code(std::uint32_t amax_bits, int emax) noexcept {
  const int field = static_cast<int>(amax_bits >> 23);
  // A subnormal's floor(log2) from its highest set bit: the bits, as an integer below
  // 2^23, convert to a float exactly, whose exponent is that bit's position.
  const int sub_log2 =
      static_cast<int>(
          detail::float_bits(static_cast<float>(static_cast<std::int32_t>(amax_bits))) >> 23) -
      127 - 149;
  const int log2 = field != 0 ? field - 127 : (amax_bits == 0 ? -1000 : sub_log2);
  const int code = log2 - emax + 127;
  return static_cast<std::uint8_t>(code < 0 ? 0 : code > 254 ? 254 : code);
}

namespace detail {

// Blocks (scales) of n values: ceil(n / 32).
GRADCOMM_HD constexpr std::size_t fp8_block_count(std::size_t n) noexcept {
  return n / fp8_block_size + (n % fp8_block_size != 0 ? 1 : 0);
}

// The element byte of x / scale, x finite, `inv` = 1 / scale (a power of two, so the
// product is exact): the saturating cast of cast_math.hpp.
template <dtype Element>
GRADCOMM_HD inline std::uint8_t fp8_block_element(float x, float inv) noexcept {
  return fp8_byte_not_nan<Element>(x * inv);
}

// 1 / scale for a scale code (0 .. 254 − emax): 2^(127 − code), a normal f32.
GRADCOMM_HD inline float fp8_block_inverse_scale(std::uint8_t code) noexcept {
  return bits_float(static_cast<std::uint32_t>(254 - code) << 23);
}

// max |x[i]| over x[0..count) as bits: ±Inf and NaN at 0x7f800000 and above.
GRADCOMM_HD inline std::int32_t fp8_block_amax_bits(const float* x, unsigned count) noexcept {
  std::int32_t amax = 0;
  for (unsigned i = 0; i < count; ++i) {
    const std::int32_t a = float_bits_i32(x[i]) & 0x7fffffff;
    amax = a > amax ? a : amax;
  }
  return amax;
}

}  // namespace detail

/// Encodes one block of `count` (1 .. 32) finite values: writes the elements, returns the
/// E8M0 scale code. `Element` is dtype::fp8_e4m3 or fp8_e5m2.
///
///   std::uint8_t elems[32];
///   std::uint8_t e = gradcomm::fp8_block_encode<gradcomm::dtype::fp8_e4m3>(x, 32, elems);
template <dtype Element>
GRADCOMM_HD inline std::uint8_t fp8_block_encode(const float* x, unsigned count,
                                                 std::uint8_t* elems) noexcept {
  const std::int32_t amax = detail::fp8_block_amax_bits(x, count);
  const std::uint8_t code =
      fp8_block_scale_code(static_cast<std::uint32_t>(amax), detail::fp8_format<Element>::emax);
  const float inv = detail::fp8_block_inverse_scale(code);
  for (unsigned i = 0; i < count; ++i) elems[i] = detail::fp8_block_element<Element>(x[i], inv);
  return code;
}

/// Decodes one block: out[i] = element i × 2^(code − 127), exactly; adds instead of
/// overwriting when `Add`. `code` must be a valid one (≤ fp8_block_max_scale_code).
///
///   gradcomm::fp8_block_decode<gradcomm::dtype::fp8_e4m3, false>(e, elems, 32, out);
template <dtype Element, bool Add>
GRADCOMM_HD inline void fp8_block_decode(std::uint8_t code, const std::uint8_t* __restrict elems,
                                         unsigned count, float* __restrict out) noexcept {
  using type = typename detail::fp8_format<Element>::type;
  // Two factors, so that neither is an f32 subnormal (slow as an operand on some CPUs):
  // code 0's 2^-127 as 2^-64 · 2^-63. The first product is exact, the second too.
  const float s1 =
      code == 0 ? 0x1p-64f : detail::bits_float(static_cast<std::uint32_t>(code) << 23);
  const float s2 = code == 0 ? 0x1p-63f : 1.0f;
  for (unsigned i = 0; i < count; ++i) {
    const float v = to_float(type{elems[i]}) * s1 * s2;
    if constexpr (Add) {
      out[i] += v;
    } else {
      out[i] = v;
    }
  }
}

}  // namespace v0
}  // namespace gradcomm

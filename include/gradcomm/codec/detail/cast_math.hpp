// gradcomm/codec/detail/cast_math.hpp — the cast codecs' per-element arithmetic (GRADCOMM_HD).
// Internal: not part of the API.
//
//   using st = gradcomm::detail::cast_storage<gradcomm::dtype::fp8_e4m3>;
//   gradcomm::fp8_e4m3 q = st::from_not_nan(x);  // saturating, x not NaN
//
// The one specification of a cast: the CPU loops (cast_cpu.hpp), block-scaled fp8
// (fp8_block_math.hpp) and the CUDA kernels call these. The conversions themselves are
// core/convert.hpp's. Nothing here needs more than a C++ compiler or nvcc: no containers,
// no exceptions, no intrinsics.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The OCP fp8 element formats: storage type, largest exponent, the NaN code.
template <dtype Element>
struct fp8_format;
template <>
struct fp8_format<dtype::fp8_e4m3> {
  using type = fp8_e4m3;
  static constexpr int emax = 8;
  static constexpr std::uint8_t nan_code = 0x7f;
};
template <>
struct fp8_format<dtype::fp8_e5m2> {
  using type = fp8_e5m2;
  static constexpr int emax = 15;
  static constexpr std::uint8_t nan_code = 0x7e;
};

// The saturating fp8 byte of f, f not NaN (anything for NaN). Assembled in the top byte
// and shifted down: the vectorizer then narrows to bytes once, at the end, rather than
// every operand of the select (half the speed).
template <dtype Element>
GRADCOMM_HD inline std::uint8_t fp8_byte_not_nan(float f) noexcept {
  const std::int32_t u = float_bits_i32(f);
  std::int32_t m;
  if constexpr (Element == dtype::fp8_e4m3) {
    m = fp8_e4m3_magnitude(u);
  } else {
    m = fp8_e5m2_magnitude(u);
  }
  const std::uint32_t r =
      (static_cast<std::uint32_t>(u) & 0x80000000u) | (static_cast<std::uint32_t>(m) << 24);
  return static_cast<std::uint8_t>(r >> 24);
}

// The storage of a cast to `To`: from(f), and from_not_nan(f) where f is not NaN (anything
// for NaN; the codec fixes those afterwards).
template <dtype To>
struct cast_storage;
template <>
struct cast_storage<dtype::f16> {
  using type = f16;
  GRADCOMM_HD static f16 from(float f) noexcept { return to_f16(f); }
  GRADCOMM_HD static f16 from_not_nan(float f) noexcept { return to_f16(f); }
};
template <>
struct cast_storage<dtype::bf16> {
  using type = bf16;
  GRADCOMM_HD static bf16 from(float f) noexcept { return to_bf16(f); }
  GRADCOMM_HD static bf16 from_not_nan(float f) noexcept { return to_bf16(f); }
};
template <dtype Element>
struct fp8_cast_storage {
  using type = typename fp8_format<Element>::type;
  GRADCOMM_HD static type from(float f) noexcept {
    if constexpr (Element == dtype::fp8_e4m3) {
      return to_fp8_e4m3(f);
    } else {
      return to_fp8_e5m2(f);
    }
  }
  GRADCOMM_HD static type from_not_nan(float f) noexcept {
    return type{fp8_byte_not_nan<Element>(f)};
  }
};
template <>
struct cast_storage<dtype::fp8_e4m3> : fp8_cast_storage<dtype::fp8_e4m3> {};
template <>
struct cast_storage<dtype::fp8_e5m2> : fp8_cast_storage<dtype::fp8_e5m2> {};

// True where v is ±Inf or NaN (a bit test: it vectorizes, std::isfinite may not).
GRADCOMM_HD inline bool is_nonfinite(float v) noexcept {
  return (float_bits_i32(v) & 0x7f800000) == 0x7f800000;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

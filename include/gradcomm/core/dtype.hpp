// gradcomm/core/dtype.hpp — the element types gradients travel in.
//
//   static_assert(gradcomm::dtype_of<gradcomm::bf16> == gradcomm::dtype::bf16);
//   std::size_t n = gradcomm::dtype_size(gradcomm::dtype::f16);  // 2
//
// The 16- and 8-bit formats are storage types: a struct around the raw bits, so a
// `bf16*` cannot be mistaken for a `uint16_t*` or a `float*`. Conversions are in
// core/convert.hpp.
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace gradcomm {
inline namespace v0 {

/// Element type tags, as they appear in the wire header (one byte).
enum class dtype : std::uint8_t {
  f32 = 0,
  f16 = 1,
  bf16 = 2,
  fp8_e4m3 = 3,
  fp8_e5m2 = 4,
};

/// IEEE binary16, as bits.
struct f16 {
  std::uint16_t bits;
  friend constexpr bool operator==(f16, f16) = default;
};
/// bfloat16 (the upper half of an f32), as bits.
struct bf16 {
  std::uint16_t bits;
  friend constexpr bool operator==(bf16, bf16) = default;
};
/// OCP fp8 E4M3 (bias 7, no infinities, 0x7f/0xff are NaN), as bits.
struct fp8_e4m3 {
  std::uint8_t bits;
  friend constexpr bool operator==(fp8_e4m3, fp8_e4m3) = default;
};
/// OCP fp8 E5M2 (bias 15, IEEE-like infinities and NaN), as bits.
struct fp8_e5m2 {
  std::uint8_t bits;
  friend constexpr bool operator==(fp8_e5m2, fp8_e5m2) = default;
};

static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2 && sizeof(fp8_e4m3) == 1 &&
              sizeof(fp8_e5m2) == 1);

/// True for the element types a gradient tensor may hold.
template <class T>
inline constexpr bool is_element_type_v =
    std::is_same_v<std::remove_cv_t<T>, float> || std::is_same_v<std::remove_cv_t<T>, f16> ||
    std::is_same_v<std::remove_cv_t<T>, bf16> || std::is_same_v<std::remove_cv_t<T>, fp8_e4m3> ||
    std::is_same_v<std::remove_cv_t<T>, fp8_e5m2>;

template <class T>
concept element_type = is_element_type_v<T>;

namespace detail {
template <class T>
constexpr dtype dtype_of_impl() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return dtype::f32;
  else if constexpr (std::is_same_v<U, f16>)
    return dtype::f16;
  else if constexpr (std::is_same_v<U, bf16>)
    return dtype::bf16;
  else if constexpr (std::is_same_v<U, fp8_e4m3>)
    return dtype::fp8_e4m3;
  else
    return dtype::fp8_e5m2;
}
}  // namespace detail

/// The tag of an element type.
template <element_type T>
inline constexpr dtype dtype_of = detail::dtype_of_impl<T>();

/// Bytes per element.
GRADCOMM_HD constexpr std::size_t dtype_size(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f16:
    case dtype::bf16: return 2;
    case dtype::fp8_e4m3:
    case dtype::fp8_e5m2: return 1;
  }
  return 0;
}

/// True for the byte values that name a dtype (for checking untrusted headers).
GRADCOMM_HD constexpr bool is_valid_dtype(std::uint8_t raw) noexcept { return raw <= 4; }

/// The dtype's name: "f32", "f16", "bf16", "fp8_e4m3", "fp8_e5m2".
constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::fp8_e4m3: return "fp8_e4m3";
    case dtype::fp8_e5m2: return "fp8_e5m2";
  }
  return "unknown";
}

}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/cast.hpp — f32 to 16-bit floats and back, as a codec.
//
//   gradcomm::cast_codec<gradcomm::dtype::bf16> c;   // or dtype::f16
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));                  // 2 bytes a value + header
//   c.decode(wire, out);
//
// Rounding is to nearest, ties to even. f16 overflows to ±Inf past 65504 (as
// IEEE rounding says); bf16 keeps f32's range. The per-element conversions are
// GRADCOMM_HD functions shared with the CUDA kernels.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

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
  std::uint32_t x = detail::float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  std::uint32_t h;
  if (x >= 0x7f800000u) {
    h = x > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN (quiet) or Inf
  } else if (x >= 0x477ff000u) {
    h = 0x7c00u;  // at or past the midpoint between 65504 and 65536: rounds to Inf
  } else if (x < 0x38800000u) {
    // Below 2^-14: a subnormal (or zero). Adding 0.5 puts the f16 subnormal step
    // (2^-24) in the last place of the sum, so the FPU rounds to nearest even.
    const float s = detail::bits_float(x) + 0.5f;
    h = detail::float_bits(s) - 0x3f000000u;
  } else {
    const std::uint32_t odd = (x >> 13) & 1u;
    x += 0xc8000fffu + odd;  // re-bias the exponent (127 -> 15) and round
    h = x >> 13;
  }
  return f16{static_cast<std::uint16_t>(sign | h)};
}

/// IEEE f16 -> f32, exact.
GRADCOMM_HD inline float to_float(f16 h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t e = (h.bits >> 10) & 0x1fu;
  const std::uint32_t m = h.bits & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return detail::bits_float(sign | detail::float_bits(v));
  }
  if (e == 31) return detail::bits_float(sign | 0x7f800000u | (m << 13));
  return detail::bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

namespace detail {
template <dtype To>
struct cast_storage;
template <>
struct cast_storage<dtype::f16> {
  using type = f16;
  GRADCOMM_HD static f16 from(float f) noexcept { return to_f16(f); }
};
template <>
struct cast_storage<dtype::bf16> {
  using type = bf16;
  GRADCOMM_HD static bf16 from(float f) noexcept { return to_bf16(f); }
};
}  // namespace detail

/// The cast codec: every value as a 16-bit float (`To` = dtype::f16 or bf16).
/// Linear (sums of payloads are sums of values, up to rounding), fixed size,
/// stateless. NaN and ±Inf follow `policy` (default: rejected, naming the index).
template <dtype To>
class cast_codec {
  using storage = detail::cast_storage<To>;
  using element = typename storage::type;

 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = true, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::cast;
  static constexpr dtype wire_dtype = To;

  explicit cast_codec(nonfinite_policy policy = nonfinite_policy::reject) noexcept
      : policy_(policy) {}

  nonfinite_policy policy() const noexcept { return policy_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return wire_header_bytes + n * sizeof(element);
  }

  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    const std::size_t n = in.size();
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small("cast_codec::encode", need, out.size());
    wire_writer w(out, "cast_codec::encode");
    write_header(w, id, To, n, {}, n * sizeof(element));
    std::byte* body = w.take(n * sizeof(element)).data();
    const float* src = in.data();
    if (policy_ == nonfinite_policy::zero) {
      for (std::size_t i = 0; i < n; ++i) {
        const float v = std::isfinite(src[i]) ? src[i] : 0.0f;
        store(body, i, storage::from(v));
      }
    } else {
      bool nonfinite = false;
      for (std::size_t i = 0; i < n; ++i) {
        nonfinite |= !std::isfinite(src[i]);
        store(body, i, storage::from(src[i]));
      }
      if (nonfinite && policy_ == nonfinite_policy::reject) reject_nonfinite(in);
    }
    return need;
  }

  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    const std::byte* body = open(payload, out.size(), "cast_codec::decode");
    float* dst = out.data();
    for (std::size_t i = 0; i < out.size(); ++i) dst[i] = to_float(load(body, i));
  }

  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    const std::byte* body = open(payload, acc.size(), "cast_codec::decode_add");
    float* dst = acc.data();
    for (std::size_t i = 0; i < acc.size(); ++i) dst[i] += to_float(load(body, i));
  }

 private:
  static void store(std::byte* body, std::size_t i, element e) noexcept {
    std::memcpy(body + i * sizeof(element), &e, sizeof(element));
  }
  static element load(const std::byte* body, std::size_t i) noexcept {
    element e;
    std::memcpy(&e, body + i * sizeof(element), sizeof(element));
    return e;
  }

  // Checks the header against this codec and the caller's element count; returns the body.
  static const std::byte* open(std::span<const std::byte> payload, std::size_t n,
                               const char* call) {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    if (h.type != To) {
      throw decode_error(call, "dtype " + std::string(dtype_name(h.type)) + ", expected " +
                                   std::string(dtype_name(To)));
    }
    if (!h.params.empty()) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected 0");
    }
    check_count(h, n, call);
    if (h.body_bytes != n * sizeof(element)) {
      throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                   std::to_string(n) + " elements need " +
                                   std::to_string(n * sizeof(element)));
    }
    return r.take(n * sizeof(element)).data();
  }

  [[noreturn]] static void reject_nonfinite(host_view<const float> in) {
    std::size_t i = 0;
    while (std::isfinite(in[i])) ++i;
    detail::throw_invalid_argument(
        "cast_codec::encode",
        "non-finite value " + std::to_string(in[i]) + " at index " + std::to_string(i));
  }

  nonfinite_policy policy_;
};

using bf16_codec = cast_codec<dtype::bf16>;
using f16_codec = cast_codec<dtype::f16>;

}  // namespace v0
}  // namespace gradcomm

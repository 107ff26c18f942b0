// gradcomm/codec/cast.hpp — f32 to 16- and 8-bit floats and back, as a codec.
//
//   gradcomm::cast_codec<gradcomm::dtype::bf16> c;   // or f16, fp8_e4m3, fp8_e5m2
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));                  // 2 bytes a value (fp8: 1) + header
//   c.decode(wire, out);
//
// Rounding is to nearest, ties to even. f16 overflows to ±Inf past 65504 (as
// IEEE rounding says); bf16 keeps f32's range. The fp8 formats (OCP 8-bit floating
// point, E4M3 and E5M2) saturate: what lies beyond the largest finite value, ±Inf
// included, becomes ±448 (E4M3) or ±57344 (E5M2). Only the 16-bit casts are `linear`
// (codec.hpp says why). The per-element conversions are GRADCOMM_HD functions shared with
// the CUDA kernels, written with selects rather than branches so that the codec's loops
// vectorize; those loops have AVX2 clones chosen at run time (detail/cpu_dispatch.hpp).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
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

namespace detail {
template <dtype To>
struct cast_storage;
template <>
struct cast_storage<dtype::f16> {
  using type = f16;
  GRADCOMM_HD static f16 from(float f) noexcept { return to_f16(f); }
  // from(f) where f is not NaN; anything for NaN (the codec fixes those afterwards).
  GRADCOMM_HD static f16 from_not_nan(float f) noexcept { return to_f16(f); }
};
template <>
struct cast_storage<dtype::bf16> {
  using type = bf16;
  GRADCOMM_HD static bf16 from(float f) noexcept { return to_bf16(f); }
  GRADCOMM_HD static bf16 from_not_nan(float f) noexcept { return to_bf16(f); }
};
template <>
struct cast_storage<dtype::fp8_e4m3> {
  using type = fp8_e4m3;
  GRADCOMM_HD static fp8_e4m3 from(float f) noexcept { return to_fp8_e4m3(f); }
  GRADCOMM_HD static fp8_e4m3 from_not_nan(float f) noexcept {
    // Assembled in the top byte and shifted down: the vectorizer then narrows to bytes
    // once, at the end, rather than every operand of the select (half the speed).
    const std::int32_t u = float_bits_i32(f);
    const std::uint32_t r = (static_cast<std::uint32_t>(u) & 0x80000000u) |
                            (static_cast<std::uint32_t>(fp8_e4m3_magnitude(u)) << 24);
    return fp8_e4m3{static_cast<std::uint8_t>(r >> 24)};
  }
};
template <>
struct cast_storage<dtype::fp8_e5m2> {
  using type = fp8_e5m2;
  GRADCOMM_HD static fp8_e5m2 from(float f) noexcept { return to_fp8_e5m2(f); }
  GRADCOMM_HD static fp8_e5m2 from_not_nan(float f) noexcept {
    // Assembled in the top byte and shifted down: the vectorizer then narrows to bytes
    // once, at the end, rather than every operand of the select (half the speed).
    const std::int32_t u = float_bits_i32(f);
    const std::uint32_t r = (static_cast<std::uint32_t>(u) & 0x80000000u) |
                            (static_cast<std::uint32_t>(fp8_e5m2_magnitude(u)) << 24);
    return fp8_e5m2{static_cast<std::uint8_t>(r >> 24)};
  }
};

// True where v is ±Inf or NaN (a bit test: it vectorizes, std::isfinite may not).
GRADCOMM_HD inline bool is_nonfinite(float v) noexcept {
  return (float_bits_i32(v) & 0x7f800000) == 0x7f800000;
}
}  // namespace detail

/// The cast codec: every value as a 16- or 8-bit float (`To` = dtype::f16, bf16,
/// fp8_e4m3 or fp8_e5m2), `dtype_size(To)` bytes a value after the header. Fixed size,
/// stateless. `linear` for f16 and bf16 only: a native all-reduce sums them (NCCL does);
/// fp8 sums would round to 2 or 3 mantissa bits at every hop and saturate at 448 or
/// 57344, so fp8 payloads are decoded and summed in f32 (scatter–reduce–allgather).
///
/// NaN and ±Inf follow `policy`: rejected naming the index (default), zeroed, or carried
/// (`pass`) where the format can: f16, bf16 and E5M2 carry both; E4M3 has no infinities,
/// so under `pass` it carries NaN and rejects ±Inf.
///
///   gradcomm::e4m3_codec c(gradcomm::nonfinite_policy::zero);
///   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));  // 24 + g.size()
///   c.encode(g, wire);
///   c.decode_add(wire, sum);
template <dtype To>
class cast_codec {
  using storage = detail::cast_storage<To>;
  using element = typename storage::type;

 public:
  using value_type = float;
  static constexpr codec_traits traits{
      .linear = To == dtype::f16 || To == dtype::bf16, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::cast;
  static constexpr dtype wire_dtype = To;
  /// Payload bytes per value.
  static constexpr std::size_t element_bytes = dtype_size(To);
  static_assert(sizeof(element) == element_bytes, "storage types are their bits");

  explicit cast_codec(nonfinite_policy policy = nonfinite_policy::reject) noexcept
      : policy_(policy) {}

  nonfinite_policy policy() const noexcept { return policy_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return wire_header_bytes + n * element_bytes;
  }

  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    const std::size_t n = in.size();
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small("cast_codec::encode", need, out.size());
    wire_writer w(out, "cast_codec::encode");
    write_header(w, id, To, n, {}, n * element_bytes);
    std::byte* body = w.take(n * element_bytes).data();
    if (policy_ == nonfinite_policy::zero) {
      encode_zeroing(in.data(), body, n);
    } else {
      const bool nonfinite = encode_all(in.data(), body, n);
      if (nonfinite) {
        if (policy_ == nonfinite_policy::reject) reject_nonfinite(in);
        pass_nonfinite(in, body);
      }
    }
    return need;
  }

  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    const std::byte* body = open(payload, out.size(), "cast_codec::decode");
    decode_into(body, out.data(), out.size());
  }

  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    const std::byte* body = open(payload, acc.size(), "cast_codec::decode_add");
    decode_adding(body, acc.data(), acc.size());
  }

 private:
  // The loops live apart, with restrict pointers (the payload is bytes, which may alias
  // anything), and have AVX2 clones chosen at run time (detail/cpu_dispatch.hpp).
  static bool encode_all(const float* src, std::byte* body, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_has_avx2()) return encode_all_avx2(src, body, n);
#endif
    return encode_all_impl(src, body, n);
  }
  static void encode_zeroing(const float* src, std::byte* body, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_has_avx2()) return encode_zeroing_avx2(src, body, n);
#endif
    encode_zeroing_impl(src, body, n);
  }
  static void decode_into(const std::byte* body, float* dst, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_has_avx2()) return decode_into_avx2(body, dst, n);
#endif
    decode_into_impl(body, dst, n);
  }
  static void decode_adding(const std::byte* body, float* dst, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_has_avx2()) return decode_adding_avx2(body, dst, n);
#endif
    decode_adding_impl(body, dst, n);
  }

 public:
  // The portable loops; public for the tests, which compare them with the clones.
  [[gnu::always_inline]] static inline bool encode_all_impl(const float* __restrict src,
                                                            std::byte* __restrict body,
                                                            std::size_t n) noexcept {
    // The largest magnitude's bits tell whether any value is ±Inf or NaN: one max a
    // vector, sharing the |f| the conversion computes anyway.
    std::int32_t largest = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t a = detail::float_bits_i32(src[i]) & 0x7fffffff;
      largest = a > largest ? a : largest;
      store(body, i, storage::from_not_nan(src[i]));
    }
    return largest >= 0x7f800000;
  }
  [[gnu::always_inline]] static inline void encode_zeroing_impl(const float* __restrict src,
                                                                std::byte* __restrict body,
                                                                std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t b = detail::float_bits_i32(src[i]);
      const float v =
          detail::i32_bits_float(detail::select_i32(detail::is_nonfinite(src[i]), 0, b));
      store(body, i, storage::from(v));
    }
  }
  [[gnu::always_inline]] static inline void decode_into_impl(const std::byte* __restrict body,
                                                             float* __restrict dst,
                                                             std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) dst[i] = to_float(load(body, i));
  }
  [[gnu::always_inline]] static inline void decode_adding_impl(const std::byte* __restrict body,
                                                               float* __restrict dst,
                                                               std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) dst[i] += to_float(load(body, i));
  }
#if GRADCOMM_X86_DISPATCH
  [[gnu::target("avx2")]] static bool encode_all_avx2(const float* src, std::byte* body,
                                                      std::size_t n) noexcept {
    return encode_all_impl(src, body, n);
  }
  [[gnu::target("avx2")]] static void encode_zeroing_avx2(const float* src, std::byte* body,
                                                          std::size_t n) noexcept {
    encode_zeroing_impl(src, body, n);
  }
  [[gnu::target("avx2")]] static void decode_into_avx2(const std::byte* body, float* dst,
                                                       std::size_t n) noexcept {
    decode_into_impl(body, dst, n);
  }
  [[gnu::target("avx2")]] static void decode_adding_avx2(const std::byte* body, float* dst,
                                                         std::size_t n) noexcept {
    decode_adding_impl(body, dst, n);
  }
#endif

 private:
  static void store(std::byte* body, std::size_t i, element e) noexcept {
    std::memcpy(body + i * element_bytes, &e, element_bytes);
  }
  static element load(const std::byte* body, std::size_t i) noexcept {
    element e;
    std::memcpy(&e, body + i * element_bytes, element_bytes);
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
    if (h.body_bytes != n * element_bytes) {
      throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                   std::to_string(n) + " elements need " +
                                   std::to_string(n * element_bytes));
    }
    return r.take(n * element_bytes).data();
  }

  [[noreturn]] static void reject_nonfinite(host_view<const float> in) {
    std::size_t i = 0;
    while (!detail::is_nonfinite(in[i])) ++i;
    detail::throw_invalid_argument(
        "cast_codec::encode",
        "non-finite value " + std::to_string(in[i]) + " at index " + std::to_string(i));
  }

  // Under `pass`, after the fast loop (which mishandles NaN): NaN as NaN; ±Inf as the
  // format's infinity where it has one (the saturating fp8 conversions would give ±max),
  // and rejected by E4M3, which has none.
  static void pass_nonfinite(host_view<const float> in, std::byte* body) {
    for (std::size_t i = 0; i < in.size(); ++i) {
      if (std::isnan(in[i])) store(body, i, storage::from(in[i]));
      if (!std::isinf(in[i])) continue;
      if constexpr (To == dtype::fp8_e4m3) {
        detail::throw_invalid_argument("cast_codec::encode",
                                       "value " + std::to_string(in[i]) + " at index " +
                                           std::to_string(i) +
                                           ": fp8_e4m3 has no infinities to carry it");
      } else if constexpr (To == dtype::fp8_e5m2) {
        store(body, i, element{static_cast<std::uint8_t>(in[i] < 0 ? 0xfcu : 0x7cu)});
      }
    }
  }

  nonfinite_policy policy_;
};

using bf16_codec = cast_codec<dtype::bf16>;
using f16_codec = cast_codec<dtype::f16>;
/// f32 <-> OCP fp8 E4M3 (saturating at ±448), one byte a value.
using e4m3_codec = cast_codec<dtype::fp8_e4m3>;
/// f32 <-> OCP fp8 E5M2 (saturating at ±57344), one byte a value.
using e5m2_codec = cast_codec<dtype::fp8_e5m2>;

}  // namespace v0
}  // namespace gradcomm

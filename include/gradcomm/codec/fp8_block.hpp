// gradcomm/codec/fp8_block.hpp — block-scaled fp8 (OCP Microscaling, MXFP8), as a codec.
//
//   gradcomm::fp8_block_codec c(gradcomm::dtype::fp8_e4m3);   // or fp8_e5m2
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));   // 24 + n + ceil(n / 32) bytes: 8.25 bits a value
//   c.decode_add(wire, sum);          // sum += decode(wire)
//
// Blocks of 32 consecutive values share one power-of-two scale, stored as an E8M0 byte e
// (scale 2^(e − 127); 0xff, E8M0's NaN, is never written). The scale follows the OCP MX
// specification (v1.0, section 6.3): e = floor(log2(max |x|)) − emax + 127, clamped to
// [0, 254], with emax the element format's largest exponent (8 for E4M3, 15 for E5M2), and
// each element is the saturating fp8 of x / scale (codec/cast.hpp). The block's largest
// value then lies in [2^emax, 2^(emax+1)) once scaled: up to 1.75 · 2^emax (the format's
// largest) it rounds as the format does, relative error ≤ 2^-4 (E4M3) or 2^-3 (E5M2);
// beyond, it saturates — the specification's rule accepts that clipping, of up to 12.5 %
// of the block's largest value, in exchange for the finest scale. Smaller values keep the
// format's relative precision down to its subnormals (absolute error ≤ 2^-10 · scale for
// E4M3, 2^-17 · scale for E5M2). An all-zero block has e = 0 and zero elements. Decoding is
// exact: every element times its scale is an f32.
//
// Payload (core/wire.hpp): the header with dtype fp8_e4m3 or fp8_e5m2 (the elements'
// format), no parameters, element count n; then the body:
//
//   ceil(n / 32) u8   E8M0 scale codes, block 0 first
//   n            u8   elements, in the header's fp8 format
//
// The per-block arithmetic is GRADCOMM_HD (fp8_block_scale_code, fp8_block_encode,
// fp8_block_decode), shared with the CUDA kernels.
#pragma once

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

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

template <dtype Element>
struct fp8_format;
template <>
struct fp8_format<dtype::fp8_e4m3> {
  using type = fp8_e4m3;
  static constexpr int emax = 8;
  static constexpr std::uint8_t nan_code = 0x7f;
  GRADCOMM_HD static std::int32_t magnitude(std::int32_t u) noexcept {
    return fp8_e4m3_magnitude(u);
  }
};
template <>
struct fp8_format<dtype::fp8_e5m2> {
  using type = fp8_e5m2;
  static constexpr int emax = 15;
  static constexpr std::uint8_t nan_code = 0x7e;
  GRADCOMM_HD static std::int32_t magnitude(std::int32_t u) noexcept {
    return fp8_e5m2_magnitude(u);
  }
};

// The element byte of x / scale, x finite, `inv` = 1 / scale (a power of two, so the
// product is exact). Assembled in the top byte (see cast.hpp's from_not_nan).
template <dtype Element>
GRADCOMM_HD inline std::uint8_t fp8_block_element(float x, float inv) noexcept {
  const std::int32_t u = float_bits_i32(x * inv);
  const std::uint32_t r = (static_cast<std::uint32_t>(u) & 0x80000000u) |
                          (static_cast<std::uint32_t>(fp8_format<Element>::magnitude(u)) << 24);
  return static_cast<std::uint8_t>(r >> 24);
}

// 1 / scale for a scale code (0 .. 254 − emax): 2^(127 − code), a normal f32.
GRADCOMM_HD inline float fp8_block_inverse_scale(std::uint8_t code) noexcept {
  return bits_float(static_cast<std::uint32_t>(254 - code) << 23);
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
  std::int32_t amax = 0;
  for (unsigned i = 0; i < count; ++i) {
    const std::int32_t a = detail::float_bits_i32(x[i]) & 0x7fffffff;
    amax = a > amax ? a : amax;
  }
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

/// Block-scaled fp8 (MXFP8): blocks of 32 values share a power-of-two E8M0 scale, each value
/// an fp8 E4M3 or E5M2 element (layout and rounding above). Not linear (the scales differ
/// between payloads), fixed size (n + ceil(n / 32) body bytes), stateless.
///
/// NaN and ±Inf follow `policy`: rejected naming the first index (default); zeroed; or
/// carried (`pass`) as element codes — NaN in either format, ±Inf in E5M2 — while the
/// block's scale comes from its finite values; E4M3 has no infinities and rejects them.
/// Decoding reads the element format from the header: any fp8_block_codec decodes any
/// fp8_block payload.
///
///   gradcomm::fp8_block_codec c(gradcomm::dtype::fp8_e5m2, gradcomm::nonfinite_policy::zero);
///   std::vector<std::byte> wire(c.max_encoded_bytes(n));
///   c.encode(g, wire);
///   c.decode(wire, out);  // |out[i] − g[i]| ≤ 2^-3 |g[i]| below the block's clipping
class fp8_block_codec : public host_codec_calls<fp8_block_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::fp8_block;
  static constexpr std::size_t block_size = fp8_block_size;

  /// `element`: dtype::fp8_e4m3 (default) or fp8_e5m2; anything else throws
  /// gradcomm::error (invalid_argument).
  explicit fp8_block_codec(dtype element = dtype::fp8_e4m3,
                           nonfinite_policy policy = nonfinite_policy::reject)
      : element_(element), policy_(policy) {
    if (element != dtype::fp8_e4m3 && element != dtype::fp8_e5m2) {
      detail::throw_invalid_argument(
          "fp8_block_codec",
          "element dtype " + std::string(dtype_name(element)) + ", expected fp8_e4m3 or fp8_e5m2");
    }
  }

  /// The element format this codec encodes with.
  dtype element() const noexcept { return element_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  /// Blocks (scales) of n values: ceil(n / 32).
  static constexpr std::size_t blocks(std::size_t n) noexcept {
    return n / block_size + (n % block_size != 0 ? 1 : 0);
  }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return wire_header_bytes + blocks(n) + n;
  }

  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    static constexpr const char* call = "fp8_block_codec::encode";
    const std::size_t n = in.size();
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    wire_writer w(out, call);
    write_header(w, id, element_, n, {}, blocks(n) + n);
    auto* scales = reinterpret_cast<std::uint8_t*>(w.take(blocks(n)).data());
    auto* elems = reinterpret_cast<std::uint8_t*>(w.take(n).data());
    with_element(element_, [&]<dtype E>() {
      // The finite blocks in one fast pass; the blocks it stopped at, one by one.
      std::size_t b = 0;
      while ((b = encode_blocks<E>(in.data(), n, b, scales, elems)) < blocks(n)) {
        encode_nonfinite_block<E>(in, b, scales, elems);
        ++b;
      }
    });
    return need;
  }

  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    decode_impl<false>(payload, out, "fp8_block_codec::decode");
  }

  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    decode_impl<true>(payload, acc, "fp8_block_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<fp8_block_codec>::encode;
  using host_codec_calls<fp8_block_codec>::decode;
  using host_codec_calls<fp8_block_codec>::decode_add;

  // ---- the loops, with AVX2 clones chosen at run time (detail/cpu_dispatch.hpp) ----------

  /// Encodes blocks from `first` on while they are finite; returns the index of the first
  /// block holding ±Inf or NaN (left unwritten), or blocks(n). Public for the tests, which
  /// compare the portable loop with the clone.
  template <dtype E>
  [[gnu::always_inline]] static inline std::size_t encode_blocks_impl(
      const float* __restrict src, std::size_t n, std::size_t first,
      std::uint8_t* __restrict scales, std::uint8_t* __restrict elems) noexcept {
    const std::size_t nb = blocks(n);
    for (std::size_t b = first; b < nb; ++b) {
      const std::size_t begin = b * block_size;
      const auto count = static_cast<unsigned>(n - begin < block_size ? n - begin : block_size);
      const float* x = src + begin;
      std::int32_t amax = 0;
      if (count == block_size) {
        for (unsigned i = 0; i < block_size; ++i) {  // a constant trip count vectorizes whole
          const std::int32_t a = detail::float_bits_i32(x[i]) & 0x7fffffff;
          amax = a > amax ? a : amax;
        }
      } else {
        for (unsigned i = 0; i < count; ++i) {
          const std::int32_t a = detail::float_bits_i32(x[i]) & 0x7fffffff;
          amax = a > amax ? a : amax;
        }
      }
      if (amax >= 0x7f800000) return b;
      const std::uint8_t code =
          fp8_block_scale_code(static_cast<std::uint32_t>(amax), detail::fp8_format<E>::emax);
      const float inv = detail::fp8_block_inverse_scale(code);
      scales[b] = code;
      std::uint8_t* q = elems + begin;
      if (count == block_size) {
        for (unsigned i = 0; i < block_size; ++i) q[i] = detail::fp8_block_element<E>(x[i], inv);
      } else {
        for (unsigned i = 0; i < count; ++i) q[i] = detail::fp8_block_element<E>(x[i], inv);
      }
    }
    return nb;
  }

  /// Decodes (or, with Add, adds) n values from valid scales and elements.
  template <dtype E, bool Add>
  [[gnu::always_inline]] static inline void decode_blocks_impl(
      const std::uint8_t* __restrict scales, const std::uint8_t* __restrict elems, std::size_t n,
      float* __restrict out) noexcept {
    const std::size_t full = n / block_size;
    for (std::size_t b = 0; b < full; ++b) {
      fp8_block_decode<E, Add>(scales[b], elems + b * block_size, block_size, out + b * block_size);
    }
    if (const std::size_t rest = n % block_size) {
      fp8_block_decode<E, Add>(scales[full], elems + full * block_size, static_cast<unsigned>(rest),
                               out + full * block_size);
    }
  }

 private:
  template <class F>
  static void with_element(dtype e, F&& f) {
    if (e == dtype::fp8_e4m3) {
      f.template operator()<dtype::fp8_e4m3>();
    } else {
      f.template operator()<dtype::fp8_e5m2>();
    }
  }

  template <dtype E>
  static std::size_t encode_blocks(const float* src, std::size_t n, std::size_t first,
                                   std::uint8_t* scales, std::uint8_t* elems) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_runs(detail::cpu_isa::avx2))
      return encode_blocks_avx2<E>(src, n, first, scales, elems);
#endif
    return encode_blocks_impl<E>(src, n, first, scales, elems);
  }
  template <dtype E, bool Add>
  static void decode_blocks(const std::uint8_t* scales, const std::uint8_t* elems, std::size_t n,
                            float* out) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (detail::cpu_runs(detail::cpu_isa::avx2))
      return decode_blocks_avx2<E, Add>(scales, elems, n, out);
#endif
    decode_blocks_impl<E, Add>(scales, elems, n, out);
  }
#if GRADCOMM_X86_DISPATCH
  template <dtype E>
  [[gnu::target("avx2")]] static std::size_t encode_blocks_avx2(const float* src, std::size_t n,
                                                                std::size_t first,
                                                                std::uint8_t* scales,
                                                                std::uint8_t* elems) noexcept {
    return encode_blocks_impl<E>(src, n, first, scales, elems);
  }
  template <dtype E, bool Add>
  [[gnu::target("avx2")]] static void decode_blocks_avx2(const std::uint8_t* scales,
                                                         const std::uint8_t* elems, std::size_t n,
                                                         float* out) noexcept {
    decode_blocks_impl<E, Add>(scales, elems, n, out);
  }
#endif

  // Block b holds ±Inf or NaN: reject, or encode it with them zeroed and then, under
  // `pass`, put NaN and (E5M2) ±Inf element codes in their places.
  template <dtype E>
  void encode_nonfinite_block(host_view<const float> in, std::size_t b, std::uint8_t* scales,
                              std::uint8_t* elems) const {
    static constexpr const char* call = "fp8_block_codec::encode";
    const std::size_t begin = b * block_size;
    const std::size_t count = in.size() - begin < block_size ? in.size() - begin : block_size;
    float x[block_size];
    for (std::size_t i = 0; i < count; ++i) {
      const float v = in[begin + i];
      if (!detail::is_nonfinite(v)) {
        x[i] = v;
        continue;
      }
      // Blocks before b were finite: the first non-finite value of b is the input's first.
      if (policy_ == nonfinite_policy::reject) {
        detail::throw_invalid_argument(call, "non-finite value " + std::to_string(v) +
                                                 " at index " + std::to_string(begin + i));
      }
      if (E == dtype::fp8_e4m3 && policy_ == nonfinite_policy::pass && std::isinf(v)) {
        detail::throw_invalid_argument(call, "value " + std::to_string(v) + " at index " +
                                                 std::to_string(begin + i) +
                                                 ": fp8_e4m3 has no infinities to carry it");
      }
      x[i] = 0.0f;
    }
    std::uint8_t* q = elems + begin;
    scales[b] = fp8_block_encode<E>(x, static_cast<unsigned>(count), q);
    if (policy_ != nonfinite_policy::pass) return;
    for (std::size_t i = 0; i < count; ++i) {
      const float v = in[begin + i];
      const std::uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
      if (std::isnan(v)) q[i] = sign | detail::fp8_format<E>::nan_code;
      if (std::isinf(v)) q[i] = sign | 0x7c;  // E5M2's infinity (E4M3 threw above)
    }
  }

  template <bool Add>
  void decode_impl(std::span<const std::byte> payload, host_view<float> out,
                   const char* call) const {
    const std::size_t n = out.size();
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    if (h.type != dtype::fp8_e4m3 && h.type != dtype::fp8_e5m2) {
      throw decode_error(call, "element dtype " + std::string(dtype_name(h.type)) +
                                   ", expected fp8_e4m3 or fp8_e5m2");
    }
    if (!h.params.empty()) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected 0");
    }
    check_count(h, n, call);
    const std::size_t nb = blocks(n);
    if (h.body_bytes != nb + n) {
      throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                   std::to_string(n) + " elements need " + std::to_string(nb) +
                                   " scale bytes and " + std::to_string(n) + " element bytes");
    }
    const auto* scales = reinterpret_cast<const std::uint8_t*>(r.take(nb).data());
    const auto* elems = reinterpret_cast<const std::uint8_t*>(r.take(n).data());
    // Every scale before any output: a rejected payload leaves `out` as it was.
    const int max_code = fp8_block_max_scale_code(h.type);
    std::uint8_t worst = 0;
    for (std::size_t b = 0; b < nb; ++b) worst = scales[b] > worst ? scales[b] : worst;
    if (worst > max_code) {
      std::size_t b = 0;
      while (scales[b] <= max_code) ++b;
      if (scales[b] == 0xff) {
        throw decode_error(call, "E8M0 NaN scale code 0xff at block " + std::to_string(b) +
                                     " (scale byte offset " + std::to_string(b) + " of the body)");
      }
      throw decode_error(call, "scale code " + std::to_string(scales[b]) + " at block " +
                                   std::to_string(b) +
                                   " out of range: " + std::string(dtype_name(h.type)) +
                                   " blocks have codes 0.." + std::to_string(max_code));
    }
    with_element(h.type, [&]<dtype E>() { decode_blocks<E, Add>(scales, elems, n, out.data()); });
  }

  dtype element_;
  nonfinite_policy policy_;
};

}  // namespace v0
}  // namespace gradcomm

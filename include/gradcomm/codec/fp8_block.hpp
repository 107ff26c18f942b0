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
// fp8_block_decode: detail/fp8_block_math.hpp), shared with the CUDA kernels; the CPU loops,
// with AVX2 clones chosen at run time, are detail/fp8_block_cpu.hpp's.
#pragma once

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cast_math.hpp>
#include <gradcomm/codec/detail/fp8_block_cpu.hpp>
#include <gradcomm/codec/detail/fp8_block_math.hpp>
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
  static constexpr std::size_t blocks(std::size_t n) noexcept { return detail::fp8_block_count(n); }

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
      while ((b = detail::fp8_block_cpu::encode_blocks<E>(in.data(), n, b, scales, elems)) <
             blocks(n)) {
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

 private:
  template <class F>
  static void with_element(dtype e, F&& f) {
    if (e == dtype::fp8_e4m3) {
      f.template operator()<dtype::fp8_e4m3>();
    } else {
      f.template operator()<dtype::fp8_e5m2>();
    }
  }

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
    with_element(h.type, [&]<dtype E>() {
      detail::fp8_block_cpu::decode_blocks<E, Add>(scales, elems, n, out.data());
    });
  }

  dtype element_;
  nonfinite_policy policy_;
};

}  // namespace v0
}  // namespace gradcomm

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
// (codec.hpp says why). The per-element conversions are core/convert.hpp's GRADCOMM_HD
// functions, shared with the CUDA kernels and the MPI transport's 16-bit sums; the storage of
// each format is detail/cast_math.hpp's, and the loops, with AVX2 clones chosen at run time,
// are detail/cast_cpu.hpp's.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cast_cpu.hpp>
#include <gradcomm/codec/detail/cast_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
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
#include <type_traits>

namespace gradcomm {
inline namespace v0 {

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
class cast_codec : public host_codec_calls<cast_codec<To>> {
  using storage = detail::cast_storage<To>;
  using element = typename storage::type;
  using loops = detail::cast_cpu<To>;  // the CPU loops (detail/cast_cpu.hpp)

 public:
  using value_type = float;
  static constexpr codec_traits traits{
      .linear = To == dtype::f16 || To == dtype::bf16, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::cast;
  static constexpr dtype wire_dtype = To;
  /// The 16-bit casts' bodies are the n values as f16 / bf16, summed natively by a
  /// transport that sums them (codec.hpp, T2); fp8 is not linear.
  using linear_element = std::conditional_t<traits.linear, element, void>;
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
      loops::encode_zeroing(in.data(), body, n);
    } else {
      const bool nonfinite = loops::encode_all(in.data(), body, n);
      if (nonfinite) {
        if (policy_ == nonfinite_policy::reject) reject_nonfinite(in);
        pass_nonfinite(in, body);
      }
    }
    return need;
  }

  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    const std::byte* body = open(payload, out.size(), "cast_codec::decode");
    loops::decode_into(body, out.data(), out.size());
  }

  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    const std::byte* body = open(payload, acc.size(), "cast_codec::decode_add");
    loops::decode_adding(body, acc.data(), acc.size());
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<cast_codec>::encode;
  using host_codec_calls<cast_codec>::decode;
  using host_codec_calls<cast_codec>::decode_add;

 private:
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
      if (std::isnan(in[i])) loops::store(body, i, storage::from(in[i]));
      if (!std::isinf(in[i])) continue;
      if constexpr (To == dtype::fp8_e4m3) {
        detail::throw_invalid_argument("cast_codec::encode",
                                       "value " + std::to_string(in[i]) + " at index " +
                                           std::to_string(i) +
                                           ": fp8_e4m3 has no infinities to carry it");
      } else if constexpr (To == dtype::fp8_e5m2) {
        loops::store(body, i, element{static_cast<std::uint8_t>(in[i] < 0 ? 0xfcu : 0x7cu)});
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

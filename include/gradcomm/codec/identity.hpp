// gradcomm/codec/identity.hpp — f32 as it is: the uncompressed baseline that every
// communicator runs through the same code path as the codecs it is compared with.
//
//   gradcomm::identity_codec c;
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));   // header + the 4n bytes of g
//   c.decode_add(wire, acc);          // acc += g, bit for bit
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cstddef>
#include <cstring>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

/// The identity codec: a wire header and the values as little-endian f32. Linear
/// (payloads sum natively as floats) and fixed-size. Non-finite values travel as
/// they are: there is no format limit to protect.
///
///   gradcomm::allreduce<gradcomm::identity_codec, gradcomm::local_transport> ar(t, {});
class identity_codec : public host_codec_calls<identity_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = true, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::none;
  static constexpr dtype wire_dtype = dtype::f32;
  /// D(C(x)) == x bit for bit: gossip with it keeps no public copies (comm/gossip.hpp).
  static constexpr bool lossless = true;
  /// The body is the n values as f32: a native float sum of bodies sums payloads.
  using linear_element = float;

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return wire_header_bytes + n * sizeof(float);
  }

  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    const std::size_t n = in.size();
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need)
      detail::throw_buffer_too_small("identity_codec::encode", need, out.size());
    wire_writer w(out, "identity_codec::encode");
    write_header(w, id, dtype::f32, n, {}, n * sizeof(float));
    if (n) std::memcpy(w.take(n * sizeof(float)).data(), in.data(), n * sizeof(float));
    return need;
  }

  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    const std::byte* body = open(payload, out.size(), "identity_codec::decode");
    if (!out.empty()) std::memcpy(out.data(), body, out.size() * sizeof(float));
  }

  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    const std::byte* body = open(payload, acc.size(), "identity_codec::decode_add");
    float* __restrict a = acc.data();
    const std::size_t n = acc.size();
    constexpr std::size_t chunk = 1024;
    alignas(64) float tmp[chunk];
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t len = n - i < chunk ? n - i : chunk;
      std::memcpy(tmp, body + i * sizeof(float), len * sizeof(float));
      for (std::size_t j = 0; j < len; ++j) a[i + j] += tmp[j];
    }
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<identity_codec>::encode;
  using host_codec_calls<identity_codec>::decode;
  using host_codec_calls<identity_codec>::decode_add;

 private:
  static const std::byte* open(std::span<const std::byte> payload, std::size_t n,
                               const char* call) {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    check_dtype(h, dtype::f32, call);
    if (!h.params.empty())
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected 0");
    check_count(h, n, call);
    if (h.body_bytes != n * sizeof(float))
      throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                   std::to_string(n) + " elements need " +
                                   std::to_string(n * sizeof(float)));
    return r.take(h.body_bytes).data();
  }
};

static_assert(Codec<identity_codec>);

}  // namespace v0
}  // namespace gradcomm

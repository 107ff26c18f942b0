// gradcomm/codec/codec.hpp — the Codec concept and the vocabulary codecs share.
//
//   gradcomm::cast_codec<gradcomm::dtype::bf16> c;
//   static_assert(gradcomm::Codec<decltype(c)>);
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));   // g: std::vector<float>
//   c.decode_add(wire, sum);          // sum += decode(wire)
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

namespace gradcomm {
inline namespace v0 {

/// What a communicator may do with a codec's payloads.
///   linear:     payloads of the same n can be summed as they are (casts,
///               PowerSGD's factors): all-reduce runs natively on the encoded form;
///   fixed_size: the payload's size depends on n alone: scatter–reduce–allgather;
///   stateful:   the codec keeps state between calls (error feedback, warm
///               starts): it can save and load it.
struct codec_traits {
  bool linear = false;
  bool fixed_size = false;
  bool stateful = false;
};

/// What encode does with NaN and ±Inf in its input.
enum class nonfinite_policy : unsigned char {
  reject,  ///< throw gradcomm::error (invalid_argument) naming the first bad index
  pass,    ///< carry them where the format can (casts); otherwise as `reject`
  zero,    ///< encode them as 0
};

/// Keys the random numbers of a stochastic codec: Philox (core/philox.hpp) keyed by
/// (seed, step, rank, bucket), so that a rerun gives the same bytes and the CPU and
/// the GPU draw the same numbers. Codecs that draw random numbers offer
/// `set_stream(stream_key)` and `stream()`; the communicator sets step, rank and
/// bucket before each encode.
struct stream_key {
  std::uint64_t seed = 0;
  std::uint32_t step = 0;
  std::uint32_t rank = 0;
  std::uint32_t bucket = 0;
  friend constexpr bool operator==(const stream_key&, const stream_key&) = default;
};

/// StochasticCodec<C>: a Codec whose encode draws random numbers keyed by a stream_key.
template <class C>
concept StochasticCodec = requires(C& c, const C& cc, stream_key k) {
  c.set_stream(k);
  { cc.stream() } -> std::convertible_to<stream_key>;
};

/// Codec<C>: a compressor of f32 gradients. Requirements:
///  1. `C::value_type` is float (the element type of the uncompressed tensor);
///  2. `C::traits` is a constexpr `codec_traits`; `C::id` a constexpr `codec_id`;
///  3. `c.max_encoded_bytes(n)` bounds the payload of n elements (header included);
///     the caller sizes its buffer with it — codecs allocate nothing per call;
///  4. `c.encode(in, out)` writes one self-describing payload (core/wire.hpp) into
///     `out` and returns its size in bytes; `out` smaller than needed is an error;
///  5. `c.decode(payload, out)` overwrites out with the decoded values and
///     `c.decode_add(payload, acc)` adds them to acc (the fused step of a
///     reduction); both throw gradcomm::decode_error naming the defect for any
///     malformed payload and never touch memory outside `payload` and `out`;
///  6. if `C::traits.stateful`: `c.state_bytes()`, `c.save_state(out) -> size_t`
///     and `c.load_state(bytes)` round-trip the state (checkpoints).
template <class C>
concept Codec = std::same_as<typename C::value_type, float> &&
    std::same_as<std::remove_cv_t<decltype(C::traits)>, codec_traits> &&
    std::same_as<std::remove_cv_t<decltype(C::id)>, codec_id> &&
    requires(C& c, const C& cc, std::size_t n, host_view<const float> in, host_view<float> out,
             std::span<std::byte> buf, std::span<const std::byte> payload) {
  { cc.max_encoded_bytes(n) } -> std::same_as<std::size_t>;
  { c.encode(in, buf) } -> std::same_as<std::size_t>;
  c.decode(payload, out);
  c.decode_add(payload, out);
} &&(!C::traits.stateful ||
     requires(C & c, std::span<std::byte> buf, std::span<const std::byte> bytes) {
       { c.state_bytes() } -> std::same_as<std::size_t>;
       { c.save_state(buf) } -> std::same_as<std::size_t>;
       c.load_state(bytes);
     });

}  // namespace v0
}  // namespace gradcomm

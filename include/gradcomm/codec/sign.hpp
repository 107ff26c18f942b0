// gradcomm/codec/sign.hpp — signs with one scale a block: sign_codec (1 bit a value, as in
// 1-bit Adam and EF-SignSGD) and ternary_codec (TernGrad: {−1, 0, +1} × scale, stochastic).
//
//   gradcomm::error_feedback<gradcomm::sign_codec> c;      // sign wants error feedback
//   gradcomm::ternary_codec t(256);
//   t.set_stream({.seed = 7, .step = it, .rank = r});      // unbiased: no feedback needed
//   std::vector<std::byte> wire(t.max_encoded_bytes(g.size()));
//   wire.resize(t.encode(g, wire));
//   t.decode_add(wire, sum);
//
// Both are block quantizers of codec/quantize.hpp with a fixed bit width and scale rule,
// and share its payload body: after the header (dtype f32) and 4 parameter bytes (u32 block
// size, >= 1), one f32 scale a block (finite, >= 0), then the codes packed LSB first.
//   sign:    code 1 is +scale, 0 is −scale; zero (and −0) encode as +. The scale is the
//            block's mean |g|, so the block's L1 norm is kept: Σ|decoded| = Σ|g|.
//   ternary: 2-bit codes q + 1 (0, 1, 2 for q = −1, 0, +1; code 3 is rejected); the scale
//            is the block's max |g|, and |q| = 1 with probability |g| / scale (Philox,
//            keyed by stream_key, element i drawing philox_stream(...).at(i)), so
//            E[decoded] = g: scalar_quant's 2-bit stochastic max-abs levels.
// NaN and ±Inf follow nonfinite_policy (default reject: encode throws naming the first bad
// index; `pass` acts as `reject`; `zero` encodes them as 0, left out of the scale).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace gradcomm {
inline namespace v0 {

/// 1 bit a value: sign(g) × mean |g| of its block (zero counts as +). Deterministic; not
/// linear, fixed size, stateless. Biased (it keeps L1 norms, not values): pair it with
/// error_feedback.
///
///   gradcomm::sign_codec s(512);  // blocks of 512 values
///   std::vector<std::byte> wire(s.max_encoded_bytes(n));  // about n / 8 + n / 128 bytes
///   wire.resize(s.encode(g, wire));
///   s.decode(wire, out);
class sign_codec {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::sign;
  /// Bytes of codec parameters in the header (the u32 block size).
  static constexpr std::size_t params_bytes = 4;

  /// Throws invalid_argument for block 0.
  explicit sign_codec(std::uint32_t block = 256, nonfinite_policy policy = nonfinite_policy::reject)
      : block_(block), policy_(policy) {
    detail::check_block_size("sign_codec", block);
  }

  std::uint32_t block() const noexcept { return block_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, block_, 1);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    const detail::quant_format f{id,    params,  1, block_, detail::block_scale_rule::mean_abs,
                                 false, policy_, {}};
    return detail::quant_encode_payload(f, in, out, "sign_codec::encode");
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(detail::open_block_only(payload, out.size(), id, 1, "sign_codec::decode"),
                         out.data(), out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(
        detail::open_block_only(payload, acc.size(), id, 1, "sign_codec::decode_add"), acc.data(),
        acc.size(), true);
  }

 private:
  std::uint32_t block_;
  nonfinite_policy policy_;
};

/// TernGrad: {−1, 0, +1} × max |g| of the block, 2 bits a value, stochastic and unbiased
/// (|q| = 1 with probability |g| / scale). Not linear, fixed size, stateless.
///
///   gradcomm::ternary_codec t;  // blocks of 256
///   t.set_stream({.seed = 1, .step = it, .rank = r, .bucket = b});
///   wire.resize(t.encode(g, wire));
///   t.decode_add(wire, sum);
class ternary_codec {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::ternary;
  /// Bytes of codec parameters in the header (the u32 block size).
  static constexpr std::size_t params_bytes = 4;

  /// Throws invalid_argument for block 0.
  explicit ternary_codec(std::uint32_t block = 256,
                         nonfinite_policy policy = nonfinite_policy::reject)
      : block_(block), policy_(policy) {
    detail::check_block_size("ternary_codec", block);
  }

  std::uint32_t block() const noexcept { return block_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  /// Keys the random numbers: a rerun with the same key gives the same bytes.
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, block_, 2);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    const detail::quant_format f{id,   params,  2,   block_, detail::block_scale_rule::max_abs,
                                 true, policy_, key_};
    return detail::quant_encode_payload(f, in, out, "ternary_codec::encode");
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(
        detail::open_block_only(payload, out.size(), id, 2, "ternary_codec::decode"), out.data(),
        out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(
        detail::open_block_only(payload, acc.size(), id, 2, "ternary_codec::decode_add"),
        acc.data(), acc.size(), true);
  }

 private:
  std::uint32_t block_;
  nonfinite_policy policy_;
  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

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
//
// sign_codec offers error feedback's fused step, encode_with_residual (ResidualCodec in
// codec/error_feedback.hpp): one pass a block over g and e computes s = g + e, the block's
// mean |s|, the sign bits and the next residual s − decoded, where encode, decode and the
// residual's update would read and write the whole tensor several times. Its arithmetic is
// detail/sign_math.hpp's, its loops (portable and AVX2) detail/sign_cpu.hpp's.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/sign_cpu.hpp>
#include <gradcomm/codec/detail/sign_math.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/core/config.hpp>
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

namespace detail {

// Names of a codec's calls, in its errors.
struct codec_call_names {
  const char* codec;
  const char* encode;
  const char* decode;
  const char* decode_add;
};

// What sign_codec and ternary_codec share: a block quantizer (quant_cpu.hpp) whose one
// parameter is the block size, with `Bits`-bit codes, scales by `Rule` and stochastic
// rounding or not; its block size, its non-finite policy, encode, decode and decode_add.
// Derived gives its id and `calls` (codec_call_names), and a stochastic one its stream().
template <class Derived, unsigned Bits, block_scale_rule Rule, bool Stochastic>
class block_sign_codec : public host_codec_calls<Derived> {
 public:
  /// Bytes of codec parameters in the header (the u32 block size).
  static constexpr std::size_t params_bytes = 4;

  std::uint32_t block() const noexcept { return block_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return quant_payload_bytes(n, params_bytes, block_, Bits);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    stream_key key{};
    if constexpr (Stochastic) key = static_cast<const Derived&>(*this).stream();
    const quant_format f{Derived::id, params, Bits, block_, Rule, Stochastic, policy_, key};
    return quant_encode_payload(f, in, out, Derived::calls.encode);
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    quant_decode(open_block_only(payload, out.size(), Derived::id, Bits, Derived::calls.decode),
                 out.data(), out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    quant_decode(open_block_only(payload, acc.size(), Derived::id, Bits, Derived::calls.decode_add),
                 acc.data(), acc.size(), true);
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<Derived>::encode;
  using host_codec_calls<Derived>::decode;
  using host_codec_calls<Derived>::decode_add;

 protected:
  /// Throws invalid_argument for block 0.
  block_sign_codec(std::uint32_t block, nonfinite_policy policy) : block_(block), policy_(policy) {
    check_block_size(Derived::calls.codec, block);
  }

  std::uint32_t block_;
  nonfinite_policy policy_;
};

}  // namespace detail

/// 1 bit a value: sign(g) × mean |g| of its block (zero counts as +). Deterministic; not
/// linear, fixed size, stateless. Biased (it keeps L1 norms, not values): pair it with
/// error_feedback.
///
///   gradcomm::sign_codec s(512);  // blocks of 512 values
///   std::vector<std::byte> wire(s.max_encoded_bytes(n));  // about n / 8 + n / 128 bytes
///   wire.resize(s.encode(g, wire));
///   s.decode(wire, out);
class sign_codec
    : public detail::block_sign_codec<sign_codec, 1, detail::block_scale_rule::mean_abs, false> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::sign;

  /// Throws invalid_argument for block 0.
  explicit sign_codec(std::uint32_t block = 256, nonfinite_policy policy = nonfinite_policy::reject)
      : block_sign_codec(block, policy) {}

  /// Error feedback's step in one pass (ResidualCodec, codec/error_feedback.hpp): with
  /// s[i] = in[i] + residual[i] (f32 sums), writes into `out` the payload encode(s) writes
  /// and into `next` s − decode(that payload), 0 where that is not finite: the same bits as
  /// those calls. Returns the payload's size. Throws buffer_too_small, invalid_argument for
  /// sizes that differ, or invalid_argument naming the first non-finite s (policy reject or
  /// pass); `residual` is only read, so a caller that passes another buffer as `next` keeps
  /// its residual when a call throws (`next` and `out` then hold anything). `next` may be
  /// `residual` itself, not overlap it otherwise.
  ///
  ///   std::vector<float> e(n, 0.0f), next(n);
  ///   wire.resize(s.encode_with_residual(g, e, wire, next));  // sends sign(g + e) × scale
  ///   std::swap(e, next);                                     // e: what is still owed
  std::size_t encode_with_residual(host_view<const float> in, host_view<const float> residual,
                                   std::span<std::byte> out, host_view<float> next) const {
    static constexpr const char* call = "sign_codec::encode_with_residual";
    const std::size_t n = in.size();
    if (residual.size() != n || next.size() != n) {
      detail::throw_invalid_argument(
          call, "input of " + std::to_string(n) + " values, residual of " +
                    std::to_string(residual.size()) + ", next of " + std::to_string(next.size()));
    }
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    wire_writer w(out, call);
    const std::size_t body = detail::quant_body_bytes(n, block_, 1);
    write_header(w, id, dtype::f32, n, params, body);
    std::byte* scales = w.take(body).data();
    const detail::sign_ef_job j{
        in.data(),
        residual.data(),
        next.data(),
        n,
        block_,
        policy_,
        scales,
        reinterpret_cast<std::uint8_t*>(scales + 4 * detail::quant_block_count(n, block_)),
        call};
    detail::sign_ef_encode_isa(j, detail::cpu_best_isa());
    return need;
  }

 private:
  friend block_sign_codec;
  static constexpr detail::codec_call_names calls{"sign_codec", "sign_codec::encode",
                                                  "sign_codec::decode", "sign_codec::decode_add"};
};

/// TernGrad: {−1, 0, +1} × max |g| of the block, 2 bits a value, stochastic and unbiased
/// (|q| = 1 with probability |g| / scale). Not linear, fixed size, stateless.
///
///   gradcomm::ternary_codec t;  // blocks of 256
///   t.set_stream({.seed = 1, .step = it, .rank = r, .bucket = b});
///   wire.resize(t.encode(g, wire));
///   t.decode_add(wire, sum);
class ternary_codec
    : public detail::block_sign_codec<ternary_codec, 2, detail::block_scale_rule::max_abs, true> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::ternary;

  /// Throws invalid_argument for block 0.
  explicit ternary_codec(std::uint32_t block = 256,
                         nonfinite_policy policy = nonfinite_policy::reject)
      : block_sign_codec(block, policy) {}

  /// Keys the random numbers: a rerun with the same key gives the same bytes.
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }

 private:
  friend block_sign_codec;
  static constexpr detail::codec_call_names calls{"ternary_codec", "ternary_codec::encode",
                                                  "ternary_codec::decode",
                                                  "ternary_codec::decode_add"};

  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/per_tensor.hpp — a codec applied tensor by tensor: per_tensor<C> cuts a
// flat buffer (a model's tensors laid end to end) at the tensors' boundaries and encodes
// each tensor with its own copy of C (its own error feedback, its own k), the small ones
// as f32.
//
//   using topk_ef = gradcomm::error_feedback<gradcomm::topk_codec>;
//   gradcomm::per_tensor<topk_ef> c(topk_ef(gradcomm::topk_codec({.ratio = 0.01})),
//                                   {802816, 1024, 1048576, 1024, 10240, 10},
//                                   {.small_tensor_elems = 4096});
//   // top-k 1 % of each weight matrix, the biases as f32: what the all-reduce does with
//   // its registered tensors, for the communicators that see one flat buffer
//   gradcomm::parameter_server<gradcomm::per_tensor<topk_ef>, T> ps(t, c, {}, opt);
//
// Why: the all-reduce registers tensors (add_tensor) and compresses bucket by bucket; the
// parameter server and gossip see one flat buffer, and a codec over the whole buffer
// treats a model's layers as one tensor. A sparsifier then spends its k where the
// gradients are largest — a layer whose gradients are smaller sends nothing for many steps
// and its error feedback grows stale — and a per-block scale spans two layers where a
// block straddles them. With per_tensor every tensor sends its own share.
// Measured on examples/data_parallel: see main.cpp's make_ps.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// per_tensor's settings.
struct per_tensor_options {
  /// Tensors of fewer elements travel as f32 (identity_codec's payload), as the
  /// all-reduce's allreduce_options::small_tensor_elems: a bias at 1 % keeps nothing.
  /// 0: every tensor goes through C.
  std::size_t small_tensor_elems = 0;
};

/// The first four bytes of a saved per_tensor state: "GCPT" read as a little-endian u32.
inline constexpr std::uint32_t per_tensor_state_magic = 0x54504347u;
/// The per_tensor state format version this build writes and reads.
inline constexpr std::uint8_t per_tensor_state_version = 1;
/// Bytes of per_tensor's wire parameters (in the payload's header) and of its state header.
inline constexpr std::size_t per_tensor_params_bytes = 16;
inline constexpr std::size_t per_tensor_state_header_bytes = 16;

/// C applied to each tensor of a fixed layout: `sizes` are the tensors' element counts, in
/// the order they lie in the flat buffer the communicator hands over (which must hold
/// exactly their sum). Each tensor keeps its own copy of C, so a stateful C (error
/// feedback, DGC's memory) keeps a state per tensor; tensors under small_tensor_elems go
/// as f32. Not linear, not fixed size; stateful where C is. Two-round codecs (PowerSGD)
/// are refused: the all-reduce registers tensors itself.
///
/// Payload, little-endian: the wire header (codec_id::per_tensor, dtype f32, n = the sum of
/// the sizes) with 16 parameter bytes — u8 C's codec id, u8 0, u16 0, u32 the number of
/// tensors, u64 small_tensor_elems — then for each tensor in order a u64 length and that
/// many bytes: C's payload of the tensor, or identity_codec's for a small one. A decoder
/// whose layout differs (C, the tensors' count or sizes, the threshold) throws decode_error
/// naming the difference.
///
/// Failure: encode checks the input's size, its values (every one finite: it refuses a
/// non-finite value up front, naming its index, whatever C's own policy, so that no
/// tensor's state moves when a later tensor's encode would refuse it) and the output's
/// room (max_encoded_bytes(n)) before any tensor is encoded: an encode that throws has
/// changed nothing. decode and decode_add decode every tensor into the object's scratch
/// first and write out (or add to acc) only when all of them decoded, so a malformed
/// payload leaves the caller's memory as it was. The scratch makes the const calls of one
/// object unsafe to run from two threads at once (the communicators give each thread its
/// own copy).
///
///   gradcomm::per_tensor<gradcomm::scalar_quant_codec> q({{.bits = 8}}, {1024, 1024, 10});
template <Codec C>
class per_tensor : public host_codec_calls<per_tensor<C>> {
  static_assert(!C::traits.two_round,
                "gradcomm::per_tensor<C>: a two-round codec (PowerSGD) needs the all-reduce's "
                "rounds, and the all-reduce registers tensors itself (add_tensor)");

 public:
  using value_type = float;
  static constexpr codec_traits traits{
      .linear = false, .fixed_size = false, .stateful = C::traits.stateful};
  static constexpr codec_id id = codec_id::per_tensor;

  /// Throws invalid_argument for an empty layout, a tensor of 0 elements or sizes whose sum
  /// overflows.
  per_tensor(C codec, std::vector<std::size_t> sizes, per_tensor_options o = {})
      : proto_(std::move(codec)), sizes_(std::move(sizes)), opt_(o) {
    constexpr const char* call = "per_tensor";
    if (sizes_.empty()) detail::throw_invalid_argument(call, "no tensors: the layout is empty");
    if (sizes_.size() > 0xffffffffu)
      detail::throw_invalid_argument(call,
                                     std::to_string(sizes_.size()) + " tensors: at most 2^32 - 1");
    offsets_.reserve(sizes_.size());
    for (std::size_t i = 0; i < sizes_.size(); ++i) {
      if (sizes_[i] == 0)
        detail::throw_invalid_argument(call, "tensor " + std::to_string(i) + " has 0 elements");
      if (sizes_[i] > SIZE_MAX / 4 - total_)
        detail::throw_invalid_argument(
            call, "the tensors' sizes overflow at tensor " + std::to_string(i));
      offsets_.push_back(total_);
      total_ += sizes_[i];
    }
    codecs_.assign(sizes_.size(), proto_);
  }

  /// The tensors' element counts, in order.
  const std::vector<std::size_t>& sizes() const noexcept { return sizes_; }
  /// Elements in all: the only n this codec encodes and decodes.
  std::size_t total() const noexcept { return total_; }
  const per_tensor_options& options() const noexcept { return opt_; }
  /// Whether tensor i travels as f32.
  bool small(std::size_t i) const noexcept { return sizes_.at(i) < opt_.small_tensor_elems; }
  /// Tensor i's copy of C (its state).
  const C& codec(std::size_t i) const { return codecs_.at(i); }
  C& codec(std::size_t i) { return codecs_.at(i); }

  /// The bytes a payload of n = total() elements takes at most (n != total(): the header
  /// alone; encode refuses that n).
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    std::size_t b = wire_header_bytes + per_tensor_params_bytes;
    if (n != total_) return b;
    for (std::size_t i = 0; i < sizes_.size(); ++i)
      b += 8 + (small(i) ? identity_codec{}.max_encoded_bytes(sizes_[i])
                         : codecs_[i].max_encoded_bytes(sizes_[i]));
    return b;
  }

  /// T4: per_tensor of C's pull codec, same layout.
  auto pull_codec() const requires has_pull_codec<C> {
    using P = decltype(pull_codec_of(proto_));
    return per_tensor<P>(pull_codec_of(proto_), sizes_, opt_);
  }
  /// T5: the tensors' residuals together, sqrt(Σ ‖e_i‖²).
  double residual_norm() const {
    double s = 0.0;
    for (const auto& c : codecs_) {
      const double r = residual_norm_of(c);
      s += r * r;
    }
    return std::sqrt(s);
  }

  /// Encodes in (n = total() values) tensor by tensor into out; returns the payload's
  /// bytes. Throws invalid_argument for another n or a non-finite value (naming its index),
  /// buffer_too_small when out holds less than max_encoded_bytes(n) — all before anything
  /// is encoded — and what C's encode throws.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    constexpr const char* call = "per_tensor::encode";
    if (in.size() != total_)
      detail::throw_invalid_argument(call, std::to_string(in.size()) +
                                               " values: this codec's tensors sum to " +
                                               std::to_string(total_));
    check_finite(in, call);
    const std::size_t need = max_encoded_bytes(total_);
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    const std::size_t head = wire_header_bytes + per_tensor_params_bytes;
    wire_writer body(out.subspan(head), call);
    for (std::size_t i = 0; i < sizes_.size(); ++i) {
      const std::span<std::byte> len = body.take(8);
      const host_view<const float> t = in.subview(offsets_[i], sizes_[i]);
      const std::span<std::byte> rest = out.subspan(head + body.position());
      const std::size_t b =
          small(i) ? identity_codec{}.encode(t, rest) : codecs_[i].encode(t, rest);
      wire_writer(len, call).put_u64(b);
      body.take(b);
    }
    wire_writer w(out.first(head), call);
    write_header(w, id, dtype::f32, total_, params(), body.position());
    return head + body.position();
  }

  /// Overwrites out (total() values) with the payload's values; throws decode_error naming
  /// the defect, out unchanged then.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    const float* s = decode_all(payload, out.size(), "per_tensor::decode");
    std::memcpy(out.data(), s, total_ * sizeof(float));
  }
  /// acc += the payload's values; throws decode_error naming the defect, acc unchanged then.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    const float* __restrict s = decode_all(payload, acc.size(), "per_tensor::decode_add");
    float* __restrict a = acc.data();
    for (std::size_t j = 0; j < total_; ++j) a[j] += s[j];
  }

  using host_codec_calls<per_tensor<C>>::encode;
  using host_codec_calls<per_tensor<C>>::decode;
  using host_codec_calls<per_tensor<C>>::decode_add;

  /// A stochastic C: tensor i draws from the key with bucket = key.bucket + 65536 · i
  /// (mod 2³²), so no two tensors share a stream.
  void set_stream(stream_key k) requires StochasticCodec<C> {
    key_ = k;
    for (std::size_t i = 0; i < codecs_.size(); ++i) {
      stream_key ki = k;
      ki.bucket = static_cast<std::uint32_t>(k.bucket + 65536u * static_cast<std::uint32_t>(i));
      codecs_[i].set_stream(ki);
    }
  }
  stream_key stream() const requires StochasticCodec<C> { return key_; }

  /// C's reset() on every tensor, where C has one.
  void reset() {
    if constexpr (requires(C & c) { c.reset(); })
      for (auto& c : codecs_) c.reset();
  }

  /// Bytes save_state writes (an upper bound where C's state_bytes is one).
  std::size_t state_bytes() const requires(C::traits.stateful) {
    std::size_t b = per_tensor_state_header_bytes;
    for (const auto& c : codecs_) b += 8 + c.state_bytes();
    return b;
  }
  /// Layout, little-endian: u32 magic 0x54504347 ("GCPT"), u8 version, u8 C's codec id,
  /// u16 0, u32 the number of tensors, u32 0, then per tensor a u64 length and C's state.
  /// Throws buffer_too_small, writing nothing, when out is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const requires(C::traits.stateful) {
    constexpr const char* call = "per_tensor::save_state";
    const std::size_t need = state_bytes();
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    wire_writer w(out, call);
    w.put_u32(per_tensor_state_magic);
    w.put_u8(per_tensor_state_version);
    w.put_u8(static_cast<std::uint8_t>(C::id));
    w.put_u16(0);
    w.put_u32(static_cast<std::uint32_t>(codecs_.size()));
    w.put_u32(0);
    for (const auto& c : codecs_) {
      const std::span<std::byte> len = w.take(8);
      const std::size_t b = c.save_state(out.subspan(w.position()));
      wire_writer(len, call).put_u64(b);
      w.take(b);
    }
    return w.position();
  }
  /// Replaces every tensor's state by what save_state wrote; throws decode_error naming the
  /// defect (and what C's load_state throws), changing nothing then.
  void load_state(std::span<const std::byte> bytes) requires(C::traits.stateful) {
    constexpr const char* call = "per_tensor::load_state";
    wire_reader r(bytes, call);
    if (r.remaining() < per_tensor_state_header_bytes)
      throw decode_error(call, "truncated: " + std::to_string(bytes.size()) + " bytes");
    if (r.get_u32() != per_tensor_state_magic) throw decode_error(call, "bad magic");
    if (r.get_u8() != per_tensor_state_version) throw decode_error(call, "unknown version");
    const std::uint8_t inner = r.get_u8();
    if (inner != static_cast<std::uint8_t>(C::id))
      throw decode_error(call, "the state of " + detail::wire_codec_text(inner) +
                                   " tensors, this codec's are " +
                                   detail::wire_codec_text(static_cast<std::uint8_t>(C::id)));
    if (r.get_u16() != 0) throw decode_error(call, "unknown flags");
    const std::uint32_t count = r.get_u32();
    if (count != codecs_.size())
      throw decode_error(call, "the state of " + std::to_string(count) +
                                   " tensors, this codec has " + std::to_string(codecs_.size()));
    if (r.get_u32() != 0) throw decode_error(call, "unknown flags");
    std::vector<C> next = codecs_;
    for (std::size_t i = 0; i < next.size(); ++i) {
      const std::uint64_t b = r.get_u64();
      next[i].load_state(r.take(b));
    }
    r.expect_end();
    codecs_ = std::move(next);
  }

 private:
  std::array<std::byte, per_tensor_params_bytes> params() const noexcept {
    std::array<std::byte, per_tensor_params_bytes> p{};
    p[0] = static_cast<std::byte>(C::id);
    const auto count = static_cast<std::uint32_t>(sizes_.size());
    const auto small = static_cast<std::uint64_t>(opt_.small_tensor_elems);
    std::memcpy(p.data() + 4, &count, 4);
    std::memcpy(p.data() + 8, &small, 8);
    return p;
  }

  // The library's vectorized finder (codec/detail/sparse_cpu.hpp), whatever C is.
  static void check_finite(host_view<const float> in, const char* call) {
    if (const std::size_t i = detail::sparse_find_nonfinite(in.data(), in.size()); i < in.size())
      detail::throw_invalid_argument(call, "non-finite value " + std::to_string(in[i]) +
                                               " at index " + std::to_string(i) +
                                               " (per_tensor refuses it before any tensor's "
                                               "encode, whatever C's policy)");
  }

  // Checks the header and the framing against this codec's layout; the tensors' payloads.
  std::vector<std::span<const std::byte>> open(std::span<const std::byte> payload, std::size_t n,
                                               const char* call) const {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    check_dtype(h, dtype::f32, call);
    if (n != total_)
      throw decode_error(call, "an output of " + std::to_string(n) +
                                   " values: this codec's tensors sum to " +
                                   std::to_string(total_));
    check_count(h, n, call);
    if (h.params.size() != per_tensor_params_bytes)
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                   std::to_string(per_tensor_params_bytes));
    const auto own = params();
    const auto inner = std::to_integer<std::uint8_t>(h.params[0]);
    if (inner != static_cast<std::uint8_t>(C::id))
      throw decode_error(call, "tensors encoded with " + detail::wire_codec_text(inner) +
                                   ", this codec's are " +
                                   detail::wire_codec_text(static_cast<std::uint8_t>(C::id)));
    std::uint32_t count = 0;
    std::uint64_t small = 0;
    std::memcpy(&count, h.params.data() + 4, 4);
    std::memcpy(&small, h.params.data() + 8, 8);
    if (count != sizes_.size())
      throw decode_error(call, std::to_string(count) + " tensors, this codec's layout has " +
                                   std::to_string(sizes_.size()));
    if (small != opt_.small_tensor_elems)
      throw decode_error(call, "small tensors under " + std::to_string(small) +
                                   " elements, this codec's threshold is " +
                                   std::to_string(opt_.small_tensor_elems));
    if (!std::equal(own.begin(), own.end(), h.params.begin()))
      throw decode_error(call, "nonzero reserved parameter bytes");
    wire_reader b(r.take(h.body_bytes), call);
    std::vector<std::span<const std::byte>> parts(sizes_.size());
    for (std::size_t i = 0; i < sizes_.size(); ++i) {
      const std::uint64_t len = b.get_u64();
      parts[i] = b.take(len);
    }
    b.expect_end();
    return parts;
  }

  // Every tensor decoded into the scratch, or a throw with the caller's memory untouched.
  const float* decode_all(std::span<const std::byte> payload, std::size_t n,
                          const char* call) const {
    const auto parts = open(payload, n, call);
    scratch_.resize(total_);
    const host_view<float> tmp(scratch_.data(), total_);
    for (std::size_t i = 0; i < sizes_.size(); ++i) decode_part(i, parts[i], tmp, call);
    return scratch_.data();
  }

  void decode_part(std::size_t i, std::span<const std::byte> part, host_view<float> out,
                   const char* call) const {
    const host_view<float> t = out.subview(offsets_[i], sizes_[i]);
    try {
      if (small(i))
        identity_codec{}.decode(part, t);
      else
        codecs_[i].decode(part, t);
    } catch (const decode_error& e) {
      throw decode_error(call, "tensor " + std::to_string(i) + ": " + e.what());
    }
  }

  C proto_;
  std::vector<std::size_t> sizes_, offsets_;
  per_tensor_options opt_;
  std::size_t total_ = 0;
  std::vector<C> codecs_;
  stream_key key_{};
  mutable std::vector<float> scratch_;
};

}  // namespace v0
}  // namespace gradcomm

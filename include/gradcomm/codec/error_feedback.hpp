// gradcomm/codec/error_feedback.hpp — error feedback around any codec, its state and re-sharding.
//
//   gradcomm::error_feedback<gradcomm::bf16_codec> ef;   // the residual e starts at zero
//   std::vector<std::byte> wire(ef.max_encoded_bytes(g.size()));
//   wire.resize(ef.encode(g, wire));     // sends C(g + e), keeps e <- g + e - D(C(g + e))
//   gradcomm::bf16_codec{}.decode(wire, out);             // the payload is bf16_codec's own
//
//   std::vector<std::byte> ckpt(ef.state_bytes());        // checkpoint the residual
//   ckpt.resize(ef.save_state(ckpt));
//   ef.load_state(ckpt);                                   // after a restart
//
// What a lossy codec drops in one step is not lost: it is added to the next step's input,
// so over many steps the decoded values sum to the gradients' sum up to one residual
// (EF-SGD, 1-bit SGD). The payload is exactly the inner codec's, so the receiver neither
// knows nor needs to know that feedback was used. The residual's update is
// detail/ef_math.hpp's, its loops detail/ef_cpu.hpp's.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/ef_cpu.hpp>
#include <gradcomm/codec/detail/ef_math.hpp>
#include <gradcomm/codec/detail/ef_state.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// ResidualCodec<C>: a Codec that offers error feedback's step fused into one pass,
///   `c.encode_with_residual(in, residual, out, next) -> size_t`:
///  1. with s[i] = in[i] + residual[i] (one f32 addition), it writes into `out` the payload
///     that `c.encode(s, out)` writes and returns its size;
///  2. it writes into `next` s − D(that payload), each non-finite element 0: bit for bit
///     what encode, decode and the subtraction give (error_feedback's unfused step);
///  3. it reads `residual` and nothing else of the caller's but `in`; it throws what encode
///     throws (and for sizes that differ), after which `out` and `next` hold anything.
/// error_feedback takes this path where the inner codec has it (sign_codec does): one pass
/// over g and e instead of several over the whole tensor.
///
///   static_assert(gradcomm::ResidualCodec<gradcomm::sign_codec>);
template <class C>
concept ResidualCodec = Codec<C> &&
    requires(C& c, host_view<const float> in, std::span<std::byte> out, host_view<float> next) {
  { c.encode_with_residual(in, in, out, next) } -> std::same_as<std::size_t>;
};

/// The first four bytes of a saved error_feedback state: "GCEF" read as a little-endian u32.
inline constexpr std::uint32_t error_feedback_state_magic = 0x46454347u;
/// The state format version this build writes and reads.
inline constexpr std::uint8_t error_feedback_state_version = 1;
/// Bytes of the state header, before the residual.
inline constexpr std::size_t error_feedback_state_header_bytes = 24;

/// Error feedback around the codec `Inner`: encode sends C(g + e) and keeps the residual
/// e <- g + e - D(C(g + e)), where D decodes exactly the bytes just produced, so that
/// residual + decoded == g + e up to one f32 rounding per element. Where Inner is a
/// ResidualCodec, encode is its fused encode_with_residual (the same bytes and residual).
///
/// It is a Codec with Inner's payload and id (decode and decode_add forward to Inner),
/// Inner's `linear` and `fixed_size`, and `stateful` set. The residual holds one f32 per
/// element; it is sized by the constructor, by resize(n) or by the first encode, and an
/// encode of another size is an error until reset() or resize(). After the first encode
/// of a size, encode allocates nothing.
///
/// State (checkpoints) is a small self-describing byte string — save_state / load_state —
/// holding the residual and, where Inner is stateful, Inner's state. Layout, little-endian:
///
///   offset  0  u32  magic 0x46454347 ("GCEF")
///   offset  4  u8   version (error_feedback_state_version)
///   offset  5  u8   inner codec id
///   offset  6  u8   flags: bit 0 sized, bit 1 holds Inner's state; other bits zero
///   offset  7  u8   reserved, zero
///   offset  8  u64  n, residual elements (0 unless sized)
///   offset 16  u64  bytes of Inner's state (0 unless bit 1)
///   offset 24  n f32 residual, then Inner's state; nothing after it
///
///   gradcomm::error_feedback<gradcomm::f16_codec> ef(gradcomm::f16_codec{}, g.size());
///   ef.encode(g, wire);
///   double owed = ef.residual_norm();   // ||e||, for statistics
template <Codec Inner>
class error_feedback {
 public:
  using value_type = float;
  using inner_type = Inner;
  static constexpr codec_traits traits{
      .linear = Inner::traits.linear, .fixed_size = Inner::traits.fixed_size, .stateful = true};
  /// The inner codec's id: the payload is the inner codec's.
  static constexpr codec_id id = Inner::id;
  /// The payload is the inner codec's, so are its entries (codec.hpp, T7).
  static constexpr bool sparse_entries = sparse_entry_codec<Inner>;
  /// The payload is the inner codec's, so is its body (codec.hpp, T2).
  using linear_element = linear_element_t<Inner>;

  /// A default inner codec; the residual is sized by the first encode.
  error_feedback() requires std::default_initializable<Inner> {}
  /// A default inner codec and a residual of n zeros.
  explicit error_feedback(std::size_t n) requires std::default_initializable<Inner> { resize(n); }
  /// `inner` as the codec; the residual is sized by the first encode.
  explicit error_feedback(Inner inner) : inner_(std::move(inner)) {}
  /// `inner` as the codec and a residual of n zeros.
  error_feedback(Inner inner, std::size_t n) : inner_(std::move(inner)) { resize(n); }

  /// The inner codec (its parameters, its own state).
  const Inner& inner() const noexcept { return inner_; }
  Inner& inner() noexcept { return inner_; }

  /// What a parameter server pulls with (codec.hpp, T4): the inner codec's pull codec, since
  /// the server's public copies already are the error feedback.
  auto pull_codec() const requires has_pull_codec<Inner> { return pull_codec_of(inner_); }

  /// Whether the residual has a size yet.
  bool sized() const noexcept { return sized_; }
  /// Elements of the residual (0 while unsized).
  std::size_t size() const noexcept { return residual_.size(); }
  /// The residual e: what has been dropped so far and will be added to the next input.
  /// The span is valid until the next call that changes the codec (encode among them: with
  /// a ResidualCodec inner, encode moves the residual to another buffer).
  std::span<const float> residual() const noexcept { return residual_; }

  /// Sets the residual to n zeros, discarding the old one (whatever its size).
  void resize(std::size_t n) {
    residual_.assign(n, 0.0f);
    scratch_.resize(n);
    sized_ = true;
  }
  /// Discards the residual and its size (a stateful inner codec's too, where it has
  /// reset()); the next encode (or resize) sizes it anew.
  void reset() noexcept {
    residual_.clear();
    scratch_.clear();
    sized_ = false;
    if constexpr (requires { inner_.reset(); }) inner_.reset();
  }
  /// Replaces the residual by `e` (and sizes it to e.size()), e.g. after re-sharding.
  /// Throws invalid_argument for a non-finite value.
  void set_residual(host_view<const float> e) {
    for (std::size_t i = 0; i < e.size(); ++i) {
      if (!std::isfinite(e[i])) {
        detail::throw_invalid_argument("error_feedback::set_residual",
                                       "non-finite value at index " + std::to_string(i));
      }
    }
    residual_.assign(e.begin(), e.end());
    scratch_.resize(e.size());
    sized_ = true;
  }

  /// ||e||_2 (accumulated in double), for statistics: how much is still owed.
  double residual_norm() const noexcept {
    double s = 0.0;
    for (float x : residual_) s += static_cast<double>(x) * static_cast<double>(x);
    return std::sqrt(s);
  }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return inner_.max_encoded_bytes(n);
  }

  /// Encodes C(in + e) into `out`, returns its size and keeps e <- in + e - D(C(in + e)).
  /// Throws invalid_argument when in.size() differs from a sized residual; whatever the
  /// inner encode throws (a small buffer, a non-finite value) leaves the residual (and
  /// whether it is sized) as it was.
  /// A residual element that comes out non-finite (Inf or NaN let through by the inner
  /// codec's policy) is set to zero: it is not a debt that can be paid, and it would
  /// poison every later step.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode(on_host, in, out);
  }
  /// encode under an execution context, which the inner codec's calls get too (codec.hpp,
  /// Codec requirement 7; only on_host today).
  template <ExecutionContext Ctx, class In>
  std::size_t encode(Ctx ctx, const In& in, std::span<std::byte> out) {
    return encode(ctx, host_input(ctx, in), out);
  }
  /// The host implementation of both forms of encode.
  std::size_t encode(host_context ctx, host_view<const float> in, std::span<std::byte> out) {
    const std::size_t n = in.size();
    const bool first = !sized_;
    if (first) {
      resize(n);
    } else if (n != residual_.size()) {
      detail::throw_invalid_argument("error_feedback::encode",
                                     "input has " + std::to_string(n) + " elements, the residual " +
                                         std::to_string(residual_.size()) +
                                         "; call reset() or resize() to change the size");
    }
    if constexpr (ResidualCodec<Inner>) {
      // One pass: the next residual goes to the scratch buffer, which becomes the residual
      // once the call has succeeded (a throw leaves the residual as it was).
      std::size_t bytes = 0;
      try {
        bytes = inner_.encode_with_residual(in, host_view<const float>(residual_), out,
                                            host_view<float>(scratch_));
      } catch (...) {
        if (first) reset();
        throw;
      }
      residual_.swap(scratch_);
      return bytes;
    }
    const float* g = in.data();
    float* t = scratch_.data();
    float* e = residual_.data();
    detail::ef_add_residual(g, e, t, n);
    std::size_t bytes = 0;
    try {
      bytes = inner_.encode(ctx, host_view<const float>(t, n), out);
    } catch (...) {
      if (first) reset();  // as before the call: unsized
      throw;
    }
    // D(C(g + e)) lands in the residual's storage, then becomes the residual: no second
    // buffer of n.
    try {
      inner_.decode(ctx, std::span<const std::byte>(out.data(), bytes), host_view<float>(e, n));
    } catch (...) {
      // The inner codec rejected its own bytes (a bug there). The caller sends nothing,
      // so all of g + e is still owed.
      std::copy(t, t + n, e);
      throw;
    }
    detail::ef_settle(t, e, n);
    return bytes;
  }

  /// The inner codec's decode: the payload is the inner codec's.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    inner_.decode(payload, out);
  }
  /// The inner codec's decode_add.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    inner_.decode_add(payload, acc);
  }
  /// The inner codec's decode and decode_add under the same context.
  template <ExecutionContext Ctx, class Out>
  void decode(Ctx ctx, std::span<const std::byte> payload, Out&& out) const {
    inner_.decode(ctx, payload, std::forward<Out>(out));
  }
  template <ExecutionContext Ctx, class Acc>
  void decode_add(Ctx ctx, std::span<const std::byte> payload, Acc&& acc) const {
    inner_.decode_add(ctx, payload, std::forward<Acc>(acc));
  }

  /// Forwards the random stream's key to a stochastic inner codec.
  void set_stream(stream_key k) requires StochasticCodec<Inner> { inner_.set_stream(k); }
  /// The inner codec's stream key.
  stream_key stream() const requires StochasticCodec<Inner> { return inner_.stream(); }

  /// Bytes that save_state writes (an upper bound where Inner's state_bytes is one).
  std::size_t state_bytes() const { return state_format.bytes(residual_.size(), inner_); }

  /// Writes the state (layout above) into `out`; returns the bytes written. Throws
  /// buffer_too_small, writing nothing, when `out` is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const {
    return state_format.save(out, inner_, sized_, {residual_.data()}, {}, residual_.size(),
                             "error_feedback::save_state");
  }

  /// Replaces the state (residual, its size, Inner's state) by one that save_state wrote.
  /// Throws decode_error naming the defect for malformed bytes (truncated, trailing bytes,
  /// bad magic or version, another codec's state, unknown flags, a non-finite residual, an
  /// inner state of another size); then nothing has changed.
  /// Allocates at most what `bytes` can hold.
  void load_state(std::span<const std::byte> bytes) {
    auto s = state_format.load(bytes, inner_, "error_feedback::load_state");
    residual_ = std::move(s.buffers[0]);
    scratch_.resize(residual_.size());
    sized_ = s.sized;
  }

 private:
  // The state's framing, which dgc_memory's has too (detail/ef_state.hpp).
  static constexpr detail::ef_state_format<1, 0> state_format{
      error_feedback_state_magic, error_feedback_state_version, {"residual"}};
  static_assert(state_format.header_bytes == error_feedback_state_header_bytes);

  Inner inner_{};
  std::vector<float> residual_;
  std::vector<float> scratch_;  // g + e, or the next residual (ResidualCodec), reused
  bool sized_ = false;
};

/// Re-shards data-parallel residuals from N ranks to `new_world_size` ranks.
///
/// In data parallelism every rank's residual covers the same full tensor, and the sum over
/// ranks of the residuals is what the all-reduced sum of decoded gradients still owes. So
/// re-sharding keeps the SUM: each of the M new ranks gets sum / M (summed in double, then
/// rounded once to f32, so the new total equals the old one up to that rounding). Equal
/// shares, rather than the whole sum on rank 0, keep every residual as large as the
/// residuals the codec already sees, instead of one rank's being N times larger and its next
/// payload dominated (and, for scaled codecs, its block scales inflated) by the debt; and
/// every rank computes the same shares without a choice of who is special.
///
/// Under reduction::mean the communicator divides the sum by the world size: the owed update
/// Σe/N becomes Σe/M after re-sharding. A caller who wants the owed update itself kept scales
/// the result by M/N (each new rank then holds the mean of the old residuals).
///
/// Throws invalid_argument for new_world_size < 1, no old ranks, or residuals of different
/// sizes.
///
///   std::vector<std::vector<float>> old = {r0, r1, r2};        // one per old rank
///   auto fresh = gradcomm::reshard_residuals(old, 2);          // two ranks now
///   ef_on_rank[j].set_residual(fresh[j]);
inline std::vector<std::vector<float>> reshard_residuals(
    std::span<const std::vector<float>> old_residuals_per_rank, int new_world_size) {
  static constexpr const char* call = "reshard_residuals";
  if (new_world_size < 1) {
    detail::throw_invalid_argument(call,
                                   "new world size " + std::to_string(new_world_size) + " < 1");
  }
  if (old_residuals_per_rank.empty()) {
    detail::throw_invalid_argument(call, "no residuals to re-shard (0 old ranks)");
  }
  const std::size_t n = old_residuals_per_rank.front().size();
  for (std::size_t r = 0; r < old_residuals_per_rank.size(); ++r) {
    if (old_residuals_per_rank[r].size() != n) {
      detail::throw_invalid_argument(call, "rank " + std::to_string(r) + "'s residual has " +
                                               std::to_string(old_residuals_per_rank[r].size()) +
                                               " elements, rank 0's " + std::to_string(n));
    }
  }
  std::vector<double> sum(n, 0.0);
  for (const auto& e : old_residuals_per_rank) {
    for (std::size_t i = 0; i < n; ++i) sum[i] += e[i];
  }
  std::vector<float> share(n);
  for (std::size_t i = 0; i < n; ++i) share[i] = static_cast<float>(sum[i] / new_world_size);
  return std::vector<std::vector<float>>(static_cast<std::size_t>(new_world_size), share);
}

}  // namespace v0
}  // namespace gradcomm

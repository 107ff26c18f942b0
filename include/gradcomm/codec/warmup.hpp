// gradcomm/codec/warmup.hpp — sparsity_warmup (Deep Gradient Compression's exponentially
// increasing sparsity over the first steps, as a function of the step) and warmed_up<C>,
// the codec adaptor that applies it to the ratio of a sparsifier inside C.
//
//   gradcomm::sparsity_warmup w{.steps_per_stage = 50};     // 25 %, 6.25 %, 1.56 %, 0.39 %
//   double r = w.ratio_at(step, 0.01);                      // a user's loop: codec.set_ratio(r)
//   using topk_ef = gradcomm::error_feedback<gradcomm::topk_codec>;
//   gradcomm::warmed_up<topk_ef> c(topk_ef(gradcomm::topk_codec({.ratio = 0.01})), w);
//   gradcomm::allreduce<gradcomm::warmed_up<topk_ef>, T> comm(t, c);   // the all-reduce's
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/dgc.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

namespace gradcomm {
inline namespace v0 {

/// Deep Gradient Compression's warm-up (Lin et al., ICLR 2018, section 3.4): the share of
/// values a sparsifier sends falls exponentially over the first `stages` stages of
/// `steps_per_stage` steps each — stage s sends first_ratio / factor^s (DGC: 25 %, 6.25 %,
/// 1.5625 %, 0.39 %, one stage an epoch) — then the codec's own (target) ratio. A stage
/// never sends less than the target. The ratio is a function of the step alone (exact in
/// double: repeated division, no pow), so every rank that counts the same steps applies the
/// same ratio at the same step. steps_per_stage = 0: no warm-up.
///
///   gradcomm::sparsity_warmup w{.steps_per_stage = 100};
///   for (std::uint64_t step = 0;; ++step) topk.set_ratio(w.ratio_at(step, 0.01));
struct sparsity_warmup {
  /// Steps each stage lasts (DGC: an epoch); 0 switches the warm-up off.
  std::uint64_t steps_per_stage = 0;
  /// Stages before the target ratio (DGC: 4).
  std::uint32_t stages = 4;
  /// The ratio of stage 0, in (0, 1] (DGC: 25 %).
  double first_ratio = 0.25;
  /// Each stage sends 1 / factor of the stage before (DGC: 4), at least 1.
  double factor = 4.0;

  /// Whether the schedule does anything.
  constexpr bool enabled() const noexcept { return steps_per_stage != 0 && stages != 0; }
  /// Steps until the target ratio: stages × steps_per_stage.
  constexpr std::uint64_t steps() const noexcept {
    return enabled() ? steps_per_stage * stages : 0;
  }
  /// The ratio at step `step` (0 the first) for a codec whose own ratio is `target`.
  double ratio_at(std::uint64_t step, double target) const noexcept {
    if (!enabled() || step >= steps()) return target;
    double r = first_ratio;
    for (std::uint64_t s = step / steps_per_stage; s > 0; --s) r /= factor;
    return std::max(r, target);
  }
  /// The largest ratio of the schedule towards `target`.
  double max_ratio(double target) const noexcept {
    return enabled() ? std::max(first_ratio, target) : target;
  }
  /// Throws invalid_argument naming the first bad field (first_ratio outside (0, 1], a
  /// factor under 1 or not finite).
  void check(const char* call) const {
    if (!enabled()) return;
    detail::sparse_check_ratio(call, first_ratio);
    if (!(factor >= 1.0) || !std::isfinite(factor))
      detail::throw_invalid_argument(
          call, "warm-up factor " + std::to_string(factor) + ": at least 1 and finite");
  }
};

namespace detail {
// Whether C is a RatioCodec or wraps one (codec.hpp, T3), however deep.
template <class C>
constexpr bool reaches_ratio_codec() {
  if constexpr (RatioCodec<C>)
    return true;
  else if constexpr (wrapper_codec<C>)
    return reaches_ratio_codec<inner_codec_t<C>>();
  else
    return false;
}
// The RatioCodec in c: c itself or the first one its inner() chain reaches.
template <class C>
auto& ratio_codec_in(C& c) {
  if constexpr (RatioCodec<std::remove_const_t<C>>)
    return c;
  else
    return ratio_codec_in(c.inner());
}
}  // namespace detail

/// The first four bytes of a saved warmed_up state: "GCWU" read as a little-endian u32.
inline constexpr std::uint32_t warmup_state_magic = 0x55574347u;
/// The warmed_up state format version this build writes and reads.
inline constexpr std::uint8_t warmup_state_version = 1;
/// Bytes of the warmed_up state header, before C's state.
inline constexpr std::size_t warmup_state_header_bytes = 16;

/// C with a sparsity_warmup: before each encode the ratio of the sparsifier in C (C itself
/// when it is a RatioCodec — top-k, approximate top-k, random-k — or the one its inner()
/// chain reaches through error_feedback or dgc_memory without a warm-up of its own) is set
/// to the schedule's ratio at this encode's step, the encodes done so far. The payload is
/// C's (decode and decode_add forward); the wrappers between must send their inner codec's
/// payload, as error_feedback and dgc_memory do. Not linear, not fixed size, stateful (the
/// step, and C's state). In the all-reduce each bucket keeps its own copy and encodes once a
/// round, so the step is the round on every rank; the first-start agreement encodes a fresh
/// copy (step 0) on every rank, and later ratio changes are no settings the ranks compare.
///
/// max_encoded_bytes(n) is the largest payload of the schedule (at its first stage): the
/// warm-up costs that buffer, and the bytes of its denser rounds (the all-reduce's
/// bucket_stats.payload_bytes and traffic counters count them).
///
/// State layout, little-endian: offset 0 u32 magic 0x55574347 ("GCWU"), 4 u8 version,
/// 5 u8 C's codec id, 6 u8 flags (bit 1: C's state follows), 7 u8 zero, 8 u64 step,
/// 16 C's state.
///
///   using topk_ef = gradcomm::error_feedback<gradcomm::topk_codec>;
///   gradcomm::warmed_up<topk_ef> c(topk_ef(gradcomm::topk_codec({.ratio = 0.01})),
///                                  {.steps_per_stage = 50});
template <Codec C>
class warmed_up {
  static_assert(detail::reaches_ratio_codec<C>(),
                "gradcomm::warmed_up<C>: C must be a RatioCodec (top-k, approximate top-k, "
                "random-k) or wrap one (error_feedback, dgc_memory)");
  static_assert(!C::traits.two_round,
                "gradcomm::warmed_up<C>: a two-round codec has no ratio; PowerSGD's warm-up is "
                "allreduce_options::uncompressed_steps");

 public:
  using value_type = float;
  using inner_type = C;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = true};
  static constexpr codec_id id = C::id;
  /// T7: its payload is C's, so it is sparse entries where C's is.
  static constexpr bool sparse_entries = sparse_entry_codec<C>;

  /// Throws invalid_argument for a bad schedule (sparsity_warmup::check). The target is
  /// the sparsifier's ratio at construction.
  warmed_up(C codec, sparsity_warmup schedule) : c_(std::move(codec)), w_(schedule) {
    w_.check("warmed_up");
    target_ = detail::ratio_codec_in(c_).ratio();
  }

  const C& inner() const noexcept { return c_; }
  C& inner() noexcept { return c_; }
  const sparsity_warmup& schedule() const noexcept { return w_; }
  /// The ratio after the warm-up (the sparsifier's at construction).
  double target_ratio() const noexcept { return target_; }
  /// Encodes done so far: the schedule's clock.
  std::uint64_t step() const noexcept { return step_; }
  /// The ratio the next encode sends at.
  double ratio() const noexcept { return w_.ratio_at(step_, target_); }

  /// The pull codec of C (codec.hpp, T4), at the target ratio.
  auto pull_codec() const requires has_pull_codec<C> {
    C c = c_;
    detail::ratio_codec_in(c).set_ratio(target_);
    return pull_codec_of(c);
  }
  /// C's residual norm (T5).
  double residual_norm() const { return residual_norm_of(c_); }

  /// The largest payload of n elements at any step of the schedule.
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    const auto& r = detail::ratio_codec_in(c_);
    return std::max({c_.max_encoded_bytes(n), r.max_encoded_bytes(n, w_.max_ratio(target_)),
                     r.max_encoded_bytes(n, target_)});
  }

  /// Sets the sparsifier's ratio to ratio(), encodes with C and counts the step; throws
  /// what C's encode throws (the step does not count then).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode(on_host, in, out);
  }
  template <ExecutionContext Ctx, class In>
  std::size_t encode(Ctx ctx, const In& in, std::span<std::byte> out) {
    detail::ratio_codec_in(c_).set_ratio(ratio());
    const std::size_t bytes = c_.encode(ctx, in, out);
    ++step_;
    return bytes;
  }
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    c_.decode(payload, out);
  }
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    c_.decode_add(payload, acc);
  }
  template <ExecutionContext Ctx, class Out>
  void decode(Ctx ctx, std::span<const std::byte> payload, Out&& out) const {
    c_.decode(ctx, payload, std::forward<Out>(out));
  }
  template <ExecutionContext Ctx, class Acc>
  void decode_add(Ctx ctx, std::span<const std::byte> payload, Acc&& acc) const {
    c_.decode_add(ctx, payload, std::forward<Acc>(acc));
  }

  /// Forwards the random stream's key to a stochastic C.
  void set_stream(stream_key k) requires StochasticCodec<C> { c_.set_stream(k); }
  stream_key stream() const requires StochasticCodec<C> { return c_.stream(); }

  /// The step back to 0, and C's reset() where it has one.
  void reset() noexcept {
    step_ = 0;
    if constexpr (requires { c_.reset(); }) c_.reset();
  }

  std::size_t state_bytes() const {
    if constexpr (C::traits.stateful)
      return warmup_state_header_bytes + c_.state_bytes();
    else
      return warmup_state_header_bytes;
  }
  /// Writes the state (layout above); returns its bytes. Throws buffer_too_small, writing
  /// nothing, when `out` is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const {
    constexpr const char* call = "warmed_up::save_state";
    const std::size_t need = state_bytes();
    detail::sparse_check_out(need, out.size(), call);
    wire_writer w(out, call);
    w.put_u32(warmup_state_magic);
    w.put_u8(warmup_state_version);
    w.put_u8(static_cast<std::uint8_t>(C::id));
    w.put_u8(C::traits.stateful ? 2 : 0);
    w.put_u8(0);
    w.put_u64(step_);
    std::size_t inner = 0;
    if constexpr (C::traits.stateful) inner = c_.save_state(out.subspan(warmup_state_header_bytes));
    return warmup_state_header_bytes + inner;
  }
  /// Replaces the state by one that save_state wrote; throws decode_error naming the
  /// defect (and what C's load_state throws), changing nothing then.
  void load_state(std::span<const std::byte> bytes) {
    constexpr const char* call = "warmed_up::load_state";
    wire_reader r(bytes, call);
    if (r.remaining() < warmup_state_header_bytes)
      throw decode_error(call, "truncated: " + std::to_string(bytes.size()) + " bytes");
    if (r.get_u32() != warmup_state_magic) throw decode_error(call, "bad magic");
    if (r.get_u8() != warmup_state_version) throw decode_error(call, "unknown version");
    if (r.get_u8() != static_cast<std::uint8_t>(C::id))
      throw decode_error(call, "another codec's state");
    if (r.get_u8() != (C::traits.stateful ? 2 : 0) || r.get_u8() != 0)
      throw decode_error(call, "unknown flags");
    const std::uint64_t step = r.get_u64();
    if constexpr (C::traits.stateful) {
      C next = c_;
      next.load_state(bytes.subspan(warmup_state_header_bytes));
      c_ = std::move(next);
    } else if (r.remaining() != 0) {
      throw decode_error(call, "trailing bytes");
    }
    step_ = step;
  }

 private:
  C c_;
  sparsity_warmup w_;
  double target_ = 1.0;
  std::uint64_t step_ = 0;
};

}  // namespace v0
}  // namespace gradcomm

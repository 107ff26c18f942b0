// gradcomm/codec/dgc.hpp — dgc_memory: Deep Gradient Compression's memory (momentum
// correction, local clipping, warm-up, momentum factor masking) around a sparsifier, and its
// saved state.
//
//   gradcomm::dgc_memory<gradcomm::approx_topk_codec> dgc(
//       gradcomm::approx_topk_codec({.ratio = 0.001}), {.momentum = 0.9f, .warmup_steps = 1000});
//   wire.resize(dgc.encode(g, wire));                     // the payload is approx_topk's
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/ef_state.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// RatioCodec<C>: a Codec whose share of values sent is a run-time ratio (top-k, approximate
/// top-k, random-k), as DGC's warm-up needs: `ratio()`, `set_ratio(r)` and
/// `max_encoded_bytes(n, r)`, the payload bound at ratio r.
///
///   static_assert(gradcomm::RatioCodec<gradcomm::topk_codec>);
template <class C>
concept RatioCodec = Codec<C> && requires(C& c, const C& cc, double r, std::size_t n) {
  { cc.ratio() } -> std::convertible_to<double>;
  c.set_ratio(r);
  { cc.max_encoded_bytes(n, r) } -> std::same_as<std::size_t>;
};

/// Parameters of dgc_memory (Lin et al., "Deep Gradient Compression", ICLR 2018).
///
///   gradcomm::dgc_params p{.momentum = 0.9f, .clip_norm = 1.0f, .warmup_steps = 2000};
struct dgc_params {
  /// m of the momentum correction u <- m u + g; 0 makes it plain error feedback. The
  /// receiving optimizer must then not apply momentum again.
  float momentum = 0.9f;
  /// Local gradient clipping: g is scaled down to this L2 norm when longer (DGC clips each
  /// rank at thr / sqrt(ranks)); 0: no clipping.
  float clip_norm = 0.0f;
  /// Steps over which the inner codec's ratio falls exponentially from `warmup_ratio` to
  /// its own ratio; 0: no warm-up. Needs a RatioCodec.
  std::uint64_t warmup_steps = 0;
  /// The inner ratio at step 0 of the warm-up (DGC: 25 %), in (0, 1].
  double warmup_ratio = 0.25;
};

/// The first four bytes of a saved dgc_memory state: "GCDG" read as a little-endian u32.
inline constexpr std::uint32_t dgc_state_magic = 0x47444347u;
/// The dgc_memory state format version this build writes and reads.
inline constexpr std::uint8_t dgc_state_version = 1;
/// Bytes of the dgc_memory state header, before the buffers.
inline constexpr std::size_t dgc_state_header_bytes = 32;

/// DGC's memory around a sparsifier `Inner`: an error-feedback variant. Each encode
///   1. clips g to clip_norm (local gradient clipping), when set;
///   2. u <- m u + g (momentum correction: the momentum is accumulated, not the gradient);
///   3. v <- v + u, and sends C(v) with the ratio of the warm-up schedule at this step;
///   4. v <- v - D(C(v)) (what was sent leaves the accumulator), and u <- 0 where D(C(v)) is
///      nonzero (momentum factor masking: sent coordinates stop their stale momentum).
/// The payload is Inner's (decode and decode_add forward). Not linear, not fixed size
/// (the warm-up changes k), stateful: u, v and the step count save and load. With a scaled
/// (unbiased) random-k inside, step 4 over-corrects v: use random-k unscaled here.
///
/// A failed encode (a small buffer, a nonfinite value) leaves the state as it was. After
/// the first encode of a size, encode allocates nothing (beyond what Inner does).
///
/// State layout, little-endian:
///   offset  0  u32 magic 0x47444347 ("GCDG"), 4 u8 version, 5 u8 inner codec id,
///   offset  6  u8 flags (bit 0 sized, bit 1 holds Inner's state), 7 u8 zero,
///   offset  8  u64 n, 16 u64 step, 24 u64 bytes of Inner's state,
///   offset 32  n f32 u (momentum), n f32 v (accumulated), Inner's state.
///
///   gradcomm::dgc_memory<gradcomm::topk_codec> dgc(gradcomm::topk_codec({.ratio = 0.001}),
///                                                  {.momentum = 0.9f, .warmup_steps = 500});
///   std::vector<std::byte> wire(dgc.max_encoded_bytes(n));
///   wire.resize(dgc.encode(g, wire));   // receivers: SGD without momentum
template <Codec Inner>
class dgc_memory {
 public:
  using value_type = float;
  using inner_type = Inner;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = true};
  static constexpr codec_id id = Inner::id;
  /// The payload is the inner codec's, so are its entries (codec.hpp, T7).
  static constexpr bool sparse_entries = sparse_entry_codec<Inner>;

  /// A default Inner; throws as the other constructor.
  explicit dgc_memory(dgc_params p = {}) requires std::default_initializable<Inner>
      : dgc_memory(Inner{}, p) {}
  /// Throws invalid_argument for a negative or nonfinite momentum or clip_norm, a warm-up
  /// ratio outside (0, 1], or a warm-up around an Inner that is no RatioCodec. The inner
  /// ratio at construction is the one the warm-up ends at.
  explicit dgc_memory(Inner inner, dgc_params p = {}) : inner_(std::move(inner)), p_(p) {
    constexpr const char* call = "dgc_memory";
    if (!(p.momentum >= 0.0f) || !std::isfinite(p.momentum)) {
      detail::throw_invalid_argument(call, "momentum " + std::to_string(p.momentum));
    }
    if (!(p.clip_norm >= 0.0f) || !std::isfinite(p.clip_norm)) {
      detail::throw_invalid_argument(call, "clip_norm " + std::to_string(p.clip_norm));
    }
    if (p.warmup_steps != 0) {
      if constexpr (RatioCodec<Inner>) {
        detail::sparse_check_ratio(call, p.warmup_ratio);
        final_ratio_ = inner_.ratio();
      } else {
        detail::throw_invalid_argument(call, "a warm-up needs an inner codec with a ratio");
      }
    }
  }

  const Inner& inner() const noexcept { return inner_; }
  Inner& inner() noexcept { return inner_; }
  const dgc_params& params() const noexcept { return p_; }

  /// Encodes done so far (the warm-up's clock).
  std::uint64_t step() const noexcept { return step_; }
  bool sized() const noexcept { return sized_; }
  std::size_t size() const noexcept { return u_.size(); }
  /// u, the corrected momentum.
  std::span<const float> momentum() const noexcept { return u_; }
  /// v, the accumulated update not yet sent.
  std::span<const float> accumulated() const noexcept { return v_; }

  /// The inner ratio the warm-up schedule gives at step `t`: warmup_ratio × (final /
  /// warmup_ratio)^(t / warmup_steps) before warmup_steps, the final ratio from then on.
  double ratio_at(std::uint64_t t) const requires RatioCodec<Inner> {
    if (p_.warmup_steps == 0) return inner_.ratio();
    if (t >= p_.warmup_steps) return final_ratio_;
    const double f = static_cast<double>(t) / static_cast<double>(p_.warmup_steps);
    return p_.warmup_ratio * std::pow(final_ratio_ / p_.warmup_ratio, f);
  }

  /// u and v become n zeros; the step count stays.
  void resize(std::size_t n) {
    u_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
    a_.resize(n);
    b_.resize(n);
    sized_ = true;
  }
  /// Forgets u, v, their size and the step count, and a stateful Inner's state (where it
  /// has reset()), so that the next encode sizes both from its input.
  void reset() noexcept {
    u_.clear();
    v_.clear();
    a_.clear();
    b_.clear();
    sized_ = false;
    step_ = 0;
    if constexpr (requires { inner_.reset(); }) inner_.reset();
  }
  /// Replaces u and v (e.g. after re-sharding each with reshard_residuals); throws
  /// invalid_argument for different sizes or a nonfinite value.
  void set_buffers(host_view<const float> u, host_view<const float> v) {
    constexpr const char* call = "dgc_memory::set_buffers";
    if (u.size() != v.size()) {
      detail::throw_invalid_argument(
          call, "u has " + std::to_string(u.size()) + " elements, v " + std::to_string(v.size()));
    }
    for (std::size_t i = 0; i < u.size(); ++i) {
      if (!std::isfinite(u[i]) || !std::isfinite(v[i])) {
        detail::throw_invalid_argument(call, "non-finite value at index " + std::to_string(i));
      }
    }
    u_.assign(u.begin(), u.end());
    v_.assign(v.begin(), v.end());
    a_.resize(u.size());
    b_.resize(u.size());
    sized_ = true;
  }

  /// The largest payload at any step of the schedule.
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    if constexpr (RatioCodec<Inner>) {
      if (p_.warmup_steps != 0) {
        return std::max(inner_.max_encoded_bytes(n, p_.warmup_ratio),
                        inner_.max_encoded_bytes(n, final_ratio_));
      }
    }
    return inner_.max_encoded_bytes(n);
  }

  /// Steps 1-4 above; returns the payload's size. Throws buffer_too_small when `out` is
  /// shorter than max_encoded_bytes(n), invalid_argument when in.size() differs from a
  /// sized state, and whatever Inner's encode throws (a nonfinite value); the state is
  /// unchanged then.
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
    constexpr const char* call = "dgc_memory::encode";
    const std::size_t n = in.size();
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const bool first = !sized_;
    if (first) {
      resize(n);
    } else if (n != u_.size()) {
      detail::throw_invalid_argument(call, "input has " + std::to_string(n) +
                                               " elements, the state " + std::to_string(u_.size()) +
                                               "; call reset() or resize() to change the size");
    }
    const float* g = in.data();
    float clip = 1.0f;
    if (p_.clip_norm > 0.0f) {
      double s = 0.0;
      for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * g[i];
      const double norm = std::sqrt(s);
      if (norm > p_.clip_norm) clip = static_cast<float>(p_.clip_norm / norm);
    }
    const float m = p_.momentum;
    float* u = u_.data();
    float* v = v_.data();
    float* a = a_.data();
    float* b = b_.data();
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = m * u[i] + clip * g[i];
      b[i] = v[i] + a[i];
    }
    if constexpr (RatioCodec<Inner>) {
      if (p_.warmup_steps != 0) inner_.set_ratio(ratio_at(step_));
    }
    std::size_t bytes = 0;
    try {
      bytes = inner_.encode(ctx, host_view<const float>(b, n), out);
    } catch (...) {
      if (first) reset();
      throw;
    }
    try {
      inner_.decode(ctx, std::span<const std::byte>(out.data(), bytes), host_view<float>(v, n));
    } catch (...) {
      // Inner rejected its own bytes (a bug there): nothing is sent, all of it is owed.
      std::copy(b, b + n, v);
      u_.swap(a_);
      ++step_;
      throw;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const float d = v[i];
      v[i] = detail::ef_finite_or_zero(b[i] - d);
      a[i] = d != 0.0f ? 0.0f : a[i];
    }
    u_.swap(a_);
    ++step_;
    return bytes;
  }

  /// Inner's decode: the payload is Inner's.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    inner_.decode(payload, out);
  }
  /// Inner's decode_add.
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

  /// Forwards the random stream's key to a stochastic Inner.
  void set_stream(stream_key k) requires StochasticCodec<Inner> { inner_.set_stream(k); }
  stream_key stream() const requires StochasticCodec<Inner> { return inner_.stream(); }

  /// Bytes that save_state writes (an upper bound where Inner's state_bytes is one).
  std::size_t state_bytes() const { return state_format.bytes(u_.size(), inner_); }

  /// Writes the state (layout above); returns the bytes written. Throws buffer_too_small,
  /// writing nothing, when `out` is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const {
    return state_format.save(out, inner_, sized_, {u_.data(), v_.data()}, {step_}, u_.size(),
                             "dgc_memory::save_state");
  }

  /// Replaces the state by one that save_state wrote. Throws decode_error naming the
  /// defect (truncated, trailing bytes, bad magic or version, another codec's state,
  /// unknown flags, a nonfinite value, an inner state of another size); nothing changes
  /// then. Allocates at most what `bytes` can hold.
  void load_state(std::span<const std::byte> bytes) {
    auto s = state_format.load(bytes, inner_, "dgc_memory::load_state");
    u_ = std::move(s.buffers[0]);
    v_ = std::move(s.buffers[1]);
    a_.resize(u_.size());
    b_.resize(u_.size());
    sized_ = s.sized;
    step_ = s.words[0];
  }

 private:
  // The framing error_feedback's state has too (detail/ef_state.hpp): buffers u and v, and
  // the step count.
  static constexpr detail::ef_state_format<2, 1> state_format{
      dgc_state_magic, dgc_state_version, {"u", "v"}};
  static_assert(state_format.header_bytes == dgc_state_header_bytes);

  Inner inner_;
  dgc_params p_;
  double final_ratio_ = 1.0;
  std::vector<float> u_, v_;  // state: momentum, accumulation
  std::vector<float> a_, b_;  // scratch: the new u and v of an encode
  bool sized_ = false;
  std::uint64_t step_ = 0;
};

}  // namespace v0
}  // namespace gradcomm

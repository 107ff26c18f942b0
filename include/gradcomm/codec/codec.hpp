// gradcomm/codec/codec.hpp — the Codec concept and the vocabulary codecs share.
//
//   gradcomm::cast_codec<gradcomm::dtype::bf16> c;
//   static_assert(gradcomm::Codec<decltype(c)>);
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));   // g: std::vector<float>
//   c.decode_add(wire, sum);          // sum += decode(wire)
//   c.encode(gradcomm::on_host, g, wire);   // the same call, its execution context first
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// What a communicator may do with a codec's payloads.
///   linear:     payloads of the same n can be summed as they are: all-reduce runs
///               natively on the encoded dtype, each partial sum rounded to it (f16
///               and bf16 casts, which NCCL sums). fp8 casts are not linear: partial
///               sums rounded to 2 or 3 mantissa bits and saturating at 448 or 57344
///               lose too much, and NCCL sums fp8 only from 2.24 on. PowerSGD's
///               factors sum natively too, but round by round (two_round), not as
///               payloads;
///   fixed_size: the payload's size depends on n alone: scatter–reduce–allgather;
///   stateful:   the codec keeps state between calls (error feedback, warm
///               starts): it can save and load it;
///   two_round:  encoding needs a reduction of its first factor before the second
///               (PowerSGD: P = M Q is summed over workers and orthogonalized before
///               Q = Mᵀ P is computed and summed). A communicator runs the rounds
///               through the codec's round API (TwoRoundCodec); encode() alone is the
///               single-worker case, whose payloads decode and sum like any other
///               codec's (all-gather), each worker with its own factors.
struct codec_traits {
  bool linear = false;
  bool fixed_size = false;
  bool stateful = false;
  bool two_round = false;
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

namespace detail {
// The memory space of what a codec call is handed: a view's own; host for the containers
// that convert to host views.
template <class V>
inline constexpr memory_space space_of = memory_space::host;
template <class T, memory_space S>
inline constexpr memory_space space_of<tensor_view<T, S>> = S;

// Refuses, at compile time and with a sentence, a view whose memory space is not its
// context's, and any context but on_host (the only one a codec runs on today).
template <class T, class Ctx, class V>
constexpr host_view<T> host_view_under(V&& v) {
  using view = std::remove_cvref_t<V>;
  if constexpr (space_of<view> != Ctx::space) {
    static_assert(space_of<view> == Ctx::space,
                  "a view's memory space must match its execution context: on_host takes host "
                  "views (host_view, std::vector), a cuda_stream takes device views (device_view)");
    return {};
  } else if constexpr (!std::same_as<Ctx, host_context>) {
    static_assert(std::same_as<Ctx, host_context>,
                  "gradcomm codecs run on the host only for now: pass gradcomm::on_host (the "
                  "cuda_stream paths come with the CUDA kernels)");
    return {};
  } else {
    return host_view<T>(v);
  }
}
}  // namespace detail

/// The host view that a codec's context form reads: `in` (a host_view or a host container)
/// under `ctx`. A view in another memory space than ctx's, or a context other than
/// on_host, does not compile and says why (Codec requirement 7).
///
///   std::size_t encode(ExecutionContext auto ctx, auto&& in, std::span<std::byte> out) const {
///     return encode(gradcomm::host_input(ctx, in), out);
///   }
template <ExecutionContext Ctx, class V>
constexpr host_view<const float> host_input(Ctx, const V& in) {
  return detail::host_view_under<const float, Ctx>(in);
}
/// The host view that a codec's context form writes (decode's out, decode_add's acc).
template <ExecutionContext Ctx, class V>
constexpr host_view<float> host_output(Ctx, V&& out) {
  return detail::host_view_under<float, Ctx>(out);
}

/// The context forms of Codec requirement 7 for a codec whose calls run on the host, written
/// once: the codec derives from host_codec_calls<itself> and brings them in beside its own
/// short forms (which would hide them otherwise).
///
///   class my_codec : public gradcomm::host_codec_calls<my_codec> {
///    public:
///     using host_codec_calls<my_codec>::encode;  // and ::decode, ::decode_add
///     std::size_t encode(gradcomm::host_view<const float> in, std::span<std::byte> out) const;
///   };
template <class Derived>
class host_codec_calls {
 public:
  /// encode, decode and decode_add under an execution context: the same bytes and values
  /// as the short forms (only on_host today).
  template <ExecutionContext Ctx, class In>
  std::size_t encode(Ctx ctx, const In& in, std::span<std::byte> out) {
    return self().encode(host_input(ctx, in), out);
  }
  template <ExecutionContext Ctx, class In>
  std::size_t encode(Ctx ctx, const In& in, std::span<std::byte> out) const {
    return self().encode(host_input(ctx, in), out);
  }
  template <ExecutionContext Ctx, class Out>
  void decode(Ctx ctx, std::span<const std::byte> payload, Out&& out) const {
    self().decode(payload, host_output(ctx, out));
  }
  template <ExecutionContext Ctx, class Acc>
  void decode_add(Ctx ctx, std::span<const std::byte> payload, Acc&& acc) const {
    self().decode_add(payload, host_output(ctx, acc));
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
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
///     and `c.load_state(bytes)` round-trip the state (checkpoints);
///  7. every call that touches tensor memory also takes an execution context
///     (core/execution.hpp) first: `c.encode(ctx, in, out)`, `c.decode(ctx, payload, out)`,
///     `c.decode_add(ctx, payload, acc)`, with the same result byte for byte. A view whose
///     memory space is not the context's does not compile (host_input / host_output say
///     why). Today only `on_host` is accepted (it finishes before returning); the short
///     forms of 4 and 5, without a context, are the host calls and mean `on_host`. A
///     wrapper (error feedback, DGC) hands its context on to its inner codec;
///  8. optional: `cc.workspace_bytes(n)`, the caller-owned scratch (bytes) a call on n
///     elements needs, asked before the call as with CUB's two-phase calls. Read through
///     `gradcomm::workspace_bytes(c, n)`, which is 0 where a codec declares none. The
///     codecs that need scratch declare it (top-k and approximate top-k: selection;
///     PowerSGD: its matrices; vector quantization: its search) with an encode that takes
///     the caller's workspace span and allocates nothing for it; their short host encode
///     keeps its scratch in the codec object.
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
  { c.encode(on_host, in, buf) } -> std::same_as<std::size_t>;
  c.decode(on_host, payload, out);
  c.decode_add(on_host, payload, out);
} &&(!C::traits.stateful ||
     requires(C & c, std::span<std::byte> buf, std::span<const std::byte> bytes) {
       { c.state_bytes() } -> std::same_as<std::size_t>;
       { c.save_state(buf) } -> std::same_as<std::size_t>;
       c.load_state(bytes);
     });

namespace detail {
// The least a codec can be: models Codec and declares no trait. A communicator's header
// instantiates itself with it (and transport_archetype, transport/transport.hpp) to check
// that it models Communicator without naming a concrete codec. Never run it.
struct codec_archetype {
  using value_type = float;
  static constexpr codec_traits traits{};
  static constexpr codec_id id = codec_id::none;
  std::size_t max_encoded_bytes(std::size_t) const noexcept { return 0; }
  std::size_t encode(host_view<const float>, std::span<std::byte>) { return 0; }
  void decode(std::span<const std::byte>, host_view<float>) {}
  void decode_add(std::span<const std::byte>, host_view<float>) {}
  std::size_t encode(host_context, host_view<const float>, std::span<std::byte>) { return 0; }
  void decode(host_context, std::span<const std::byte>, host_view<float>) {}
  void decode_add(host_context, std::span<const std::byte>, host_view<float>) {}
};
static_assert(Codec<codec_archetype>);
}  // namespace detail

/// Codec traits: what a codec declares about itself besides `traits`. Communicators read
/// them only through the names below and never name a concrete codec; a new codec
/// declares what applies to it and every communicator treats it as it treats the
/// library's own. Each is optional; the default is in brackets.
///  T1. `static constexpr bool lossless = true;` when decode(encode(x)) == x bit for bit
///      [false]. Read by `lossless_codec<C>`: gossip then exchanges the values themselves
///      and keeps no public copies.
///  T2. `using linear_element = E;` for a linear codec whose payload ends with its n values
///      as E, so that a transport's native sum of the bodies sums the payloads [void: no
///      such body]. Read by `linear_element_t<C>`: the all-reduce reduces natively where
///      the transport sums E. A wrapper whose payload is its inner codec's declares the
///      inner codec's (error_feedback).
///  T3. `using inner_type = I;` and `inner()` for a wrapper around another codec (error
///      feedback, DGC's memory) [not a wrapper]. Read by `wrapper_codec<C>` and
///      `inner_codec_t<C>`.
///  T4. `pull_codec() const` returning a stateless Codec: what a parameter server pulls
///      with when its workers push with C (error_feedback: its inner codec's, since the
///      server's public copies already are the feedback) [C itself when stateless;
///      otherwise none, and the server sends f32 values]. Read by `has_pull_codec<C>` and
///      `pull_codec_of(c)`.
///  T5. `residual_norm() const` convertible to double: ||e|| of the error the codec still
///      owes, for statistics [0]. Read by `residual_norm_of(c)`.
///  T6. `compression_quality(std::size_t n) const` convertible to double: ω in (0, 1] with
///      E‖D(E(x)) − x‖² ≤ (1 − ω)‖x‖² for x of n elements (CHOCO's compression quality)
///      [1 when lossless; otherwise measured with the codec's own encode and decode on two
///      fixed probes]. Read by `compression_quality_of(c, n)`: gossip's default consensus
///      step comes from it.
///
///   static_assert(gradcomm::lossless_codec<gradcomm::identity_codec>);
///   static_assert(std::same_as<gradcomm::linear_element_t<gradcomm::bf16_codec>, gradcomm::bf16>);
///   auto pull = gradcomm::pull_codec_of(ef);   // ef: error_feedback<sign_codec> -> sign_codec

/// T1: a Codec that declares `static constexpr bool lossless = true`.
template <class C>
concept lossless_codec = Codec<C> && requires {
  requires C::lossless;
};

namespace detail {
template <class C>
struct linear_element_of {
  using type = void;
};
template <class C>
requires requires { typename C::linear_element; }
struct linear_element_of<C> {
  using type = typename C::linear_element;
};
}  // namespace detail

/// T2: the element type of a linear codec's payload body, void where it declares none.
template <class C>
using linear_element_t = typename detail::linear_element_of<C>::type;

/// A codec whose payloads carry the values themselves, unchanged (lossless, stateless, its
/// body n f32): a communicator may reduce the tensor natively and skip encoding and
/// decoding, with the same result bit for bit.
///
///   static_assert(gradcomm::value_codec<gradcomm::identity_codec>);
template <class C>
concept value_codec =
    lossless_codec<C> && !C::traits.stateful && std::same_as<linear_element_t<C>, float>;

/// T3: a Codec wrapped around another one, `inner_codec_t<C>`.
template <class C>
concept wrapper_codec = Codec<C> && requires(const C& c) {
  typename C::inner_type;
  { c.inner() } -> std::convertible_to<const typename C::inner_type&>;
};
template <wrapper_codec C>
using inner_codec_t = typename C::inner_type;

namespace detail {
template <class C>
concept declares_pull_codec = requires(const C& c) {
  { c.pull_codec() } -> Codec;
};
}  // namespace detail

/// T4: C declares the codec a parameter server pulls with, or is stateless (pulls with itself).
template <class C>
concept has_pull_codec = Codec<C> &&(detail::declares_pull_codec<C> || !C::traits.stateful);

/// T4: the pull codec for pushes with c: c.pull_codec() where declared, else c itself.
template <has_pull_codec C>
auto pull_codec_of(const C& c) {
  if constexpr (detail::declares_pull_codec<C>)
    return c.pull_codec();
  else
    return c;
}

/// T5: c.residual_norm() where C declares it, else 0.
template <class C>
double residual_norm_of(const C& c) {
  if constexpr (requires {
                  { c.residual_norm() } -> std::convertible_to<double>;
                })
    return c.residual_norm();
  else
    return 0.0;
}

/// T6: what gossip needs to know of a lossy codec. `omega` is ω, the share of ‖x‖² that
/// survives compression once the decoded values are scaled by `gain` (≤ 1):
/// ‖gain·D(E(x)) − x‖² ≤ (1 − ω)‖x‖². `gain` is 1 but for codecs whose decoded values are
/// longer than their projection on x by more than a tenth (the unbiased stochastic ones:
/// ternary, scaled random-k, stochastic rounding at 2 bits), which are no contraction
/// unscaled; CHOCO scales those by 1/τ (Koloskova et al., 2019). Both are rounded down to multiples
/// of 2⁻²⁰, so ranks on different libms agree.
///
///   auto q = gradcomm::compression_quality_of(gradcomm::topk_codec({.ratio = 0.05}), n);
///   // q.omega == 0.05: the flat probe keeps k of n equal values
struct compression_quality {
  double omega = 1.0;
  double gain = 1.0;
};

namespace detail {
// A codec's ω and gain measured on two probes of n values, keyed and identical on every
// rank: Gaussian values (Box–Muller on Philox words) and values of equal magnitude with
// random signs, the worst case of a sparsifier (ω = k/n). The gain is the least of
// ⟨D(g), g⟩ / ‖D(g)‖² over the probes when that is below 0.9, else 1; ω is the least over
// the probes of 1 − ‖gain·D(g) − g‖² / ‖g‖², at least 2⁻²⁰.
template <Codec C>
compression_quality measure_compression_quality(const C& prototype, std::size_t n) {
  if (n == 0) return {};
  C c = prototype;
  if constexpr (StochasticCodec<C>) c.set_stream({.seed = 0x70726f6265, .step = 0});
  std::vector<float> probe[2], decoded[2];
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  double dot[2] = {}, dd[2] = {}, gg[2] = {};
  for (int p = 0; p < 2; ++p) {
    const philox_stream s(0x70726f6265, 1, static_cast<std::uint32_t>(p), 0);
    probe[p].resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const u32x4 w = s.block(static_cast<std::uint32_t>(i));
      const double u1 = 1.0 - static_cast<double>(philox_uniform(w.v[0]));  // (0, 1]
      const double u2 = static_cast<double>(philox_uniform(w.v[1]));
      const double sign = (w.v[2] & 1u) != 0 ? 1.0 : -1.0;
      probe[p][i] = static_cast<float>(
          p == 0 ? std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2) : sign);
    }
    decoded[p].resize(n);
    const std::size_t bytes = c.encode(host_view<const float>(probe[p]), wire);
    c.decode(std::span<const std::byte>(wire).first(bytes), host_view<float>(decoded[p]));
    for (std::size_t i = 0; i < n; ++i) {
      const double g = probe[p][i], d = decoded[p][i];
      dot[p] += d * g;
      dd[p] += d * d;
      gg[p] += g * g;
    }
  }
  constexpr double grid = 1.0 / (1 << 20);
  double gain = 1.0;
  for (int p = 0; p < 2; ++p)
    if (dd[p] > 0.0) gain = std::min(gain, std::max(dot[p] / dd[p], grid));
  if (gain >= 0.9) gain = 1.0;
  double omega = 1.0;
  for (int p = 0; p < 2; ++p)
    if (gg[p] > 0.0) omega = std::min(omega, (2.0 * gain * dot[p] - gain * gain * dd[p]) / gg[p]);
  return {std::max(std::floor(omega / grid) * grid, grid), std::floor(gain / grid) * grid};
}
}  // namespace detail

/// T6: c's compression quality on tensors of n elements: ω = 1 for a lossless codec, the
/// codec's own `compression_quality(n)` where it declares one (gain 1), else measured
/// (detail::measure_compression_quality: one encode and decode of two n-value probes).
///
///   const double omega = gradcomm::compression_quality_of(codec, n).omega;
template <Codec C>
compression_quality compression_quality_of(const C& c, std::size_t n) {
  if constexpr (lossless_codec<C>) {
    return {};
  } else if constexpr (requires {
                         { c.compression_quality(n) } -> std::convertible_to<double>;
                       }) {
    return {static_cast<double>(c.compression_quality(n)), 1.0};
  } else {
    return detail::measure_compression_quality(c, n);
  }
}

/// Requirement 8: the caller-owned scratch, in bytes, that c's calls on n elements need;
/// 0 where C declares no `workspace_bytes(n)`.
///
///   std::vector<std::byte> scratch(gradcomm::workspace_bytes(codec, g.size()));
template <class C>
std::size_t workspace_bytes(const C& c, std::size_t n) {
  if constexpr (requires {
                  { c.workspace_bytes(n) } -> std::convertible_to<std::size_t>;
                })
    return c.workspace_bytes(n);
  else
    return 0;
}

/// TwoRoundCodec<C>: a Codec with `traits.two_round` whose encoding a communicator
/// runs as two reductions over caller-owned f32 buffers (PowerSGD). Every worker, in
/// the same order:
///  1. `c.compute_p(in, p)` fills p (`c.p_floats(n)` floats) from its tensor;
///  2. the communicator sums p over workers (a native all-reduce of floats);
///  3. `c.compute_q(in, p, q)` turns the summed p into the shared factor in place
///     and fills q (`c.q_floats(n)` floats, possibly 0);
///  4. the communicator sums q over workers (skipped where q_floats(n) is 0);
///  5. `c.decompress(in, p, q, out)` writes the summed low-rank tensor into out
///     (which may be `in` itself) and ends the step (error feedback, warm start).
/// `in` holds the same values in steps 1, 3 and 5. Every worker ends with bitwise
/// the same `out`. Each step also takes an execution context first (Codec requirement
/// 7): `c.compute_p(on_host, in, p)`, `c.compute_q(on_host, in, p, q)`,
/// `c.decompress(on_host, in, p, q, out)`.
///
///   codec.compute_p(g, p);   allreduce_sum(p);
///   codec.compute_q(g, p, q); allreduce_sum(q);
///   codec.decompress(g, p, q, g);   // g: the sum over workers, low-rank
template <class C>
concept TwoRoundCodec = Codec<C> && C::traits.two_round&& requires(C& c, const C& cc, std::size_t n,
                                                                   host_view<const float> in,
                                                                   host_view<float> buf,
                                                                   host_view<const float> cbuf) {
  { cc.p_floats(n) } -> std::same_as<std::size_t>;
  { cc.q_floats(n) } -> std::same_as<std::size_t>;
  c.compute_p(in, buf);
  c.compute_q(in, buf, buf);
  c.decompress(in, cbuf, cbuf, buf);
  c.compute_p(on_host, in, buf);
  c.compute_q(on_host, in, buf, buf);
  c.decompress(on_host, in, cbuf, cbuf, buf);
};

// ---- T7: sparse entries (read by the all-reduce's O(k) reduce-scatter) ----

/// T7: `static constexpr bool sparse_entries = true;` for a variable-size codec whose payload
/// is a list of (index, value) entries [false]: decode() writes the entries' values at their
/// indices and zeros elsewhere, and every entry costs at least 4 payload bytes (its f32
/// value), so a payload of b bytes holds at most b / 4 entries. Read by
/// `sparse_entry_codec<C>`: the all-reduce may then sum the ranks' entries region by region
/// in O(k) bytes per rank (comm/detail/allreduce_sparse.hpp) instead of all-gathering the
/// payloads. A wrapper whose payload is its inner codec's declares the inner codec's
/// (error_feedback, dgc_memory).
///
///   static_assert(gradcomm::sparse_entry_codec<gradcomm::topk_codec>);
template <class C>
concept sparse_entry_codec = Codec<C> && !C::traits.fixed_size && !C::traits.two_round && requires {
  requires C::sparse_entries;
};

}  // namespace v0
}  // namespace gradcomm

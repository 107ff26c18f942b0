// gradcomm/comm/gossip.hpp — decentralized averaging: no server, every rank mixes its
// parameters with its neighbours', and over rounds all approach the global average.
//
//   gradcomm::local_world world(8);
//   world.run([&](gradcomm::local_transport& t) {
//     gradcomm::gossip<gradcomm::identity_codec, gradcomm::local_transport,
//                      gradcomm::ring_topology> g(t, {}, {}, gradcomm::sgd{{.lr = 0.1f}});
//     for (int it = 0; it < steps; ++it) {
//       compute_gradients(w, grads);
//       g.step(w, grads);  // w -= lr * grads, then w is averaged with the ring neighbours
//     }
//   });
//
// How a round works (the topology gives rank i its neighbourhood of round t):
//  - Averaging (undirected topologies): x_i ← x_i + γ Σ_j W_ij (x_j − x_i), with the
//    topology's symmetric, doubly stochastic W (uniform 1/(d + 1) on the regular graphs,
//    Metropolis–Hastings on graph_topology), so the average is kept to rounding. γ = 1
//    is the seed's formula x_i ← mean over N(i) ∪ {i}.
//  - Push-sum (directed or time-varying topologies, or asked for): each rank holds a
//    numerator x and a weight w (1 at the start); it keeps W_ii of both and sends the
//    share W_ji of both to each out-peer j; `params` holds the de-biased estimate x / w.
//    The weights travel with the values (an f64 in front of each payload), so the sum of
//    the weights stays the number of ranks and the sum of the numerators is kept. γ < 1
//    sends γ W_ji and keeps the rest (the matrix (1 − γ) I + γ W, as for averaging).
//  - Compressed (a codec that is not lossless): CHOCO-gossip (Koloskova et al., 2019) with
//    one public copy per edge and direction. Rank i keeps x̂_{i→j} (what j knows of i)
//    and x̂_{j→i}; it sends q = C(x_i − x̂_{i→j}), both ends add D(q) to their copy of
//    x̂_{i→j}, and x_i ← x_i + γ Σ_j W_ij (x̂_{j→i} − x̂_{i→j}). Only the difference is
//    compressed, and it shrinks as the copies catch up, so the compression error does not
//    accumulate; both ends hold bitwise the same copies, so the terms of an edge cancel
//    and the average is kept to rounding. Push-sum sends the public copy of its share
//    instead (q = C(W_ji x_i − x̂_{i→j}), the receiver adds x̂_{i→j}, the sender subtracts
//    it): the mass moved is exactly what arrived, and what the codec dropped stays home
//    until a later round sends it (error feedback). With a lossless codec and γ = 1 this
//    is plain gossip. Unless set, γ comes from the codec's compression quality ω
//    (gossip_default_gamma: 2ω / (1 + ω)), and a codec that is no contraction unscaled
//    (ternary, scaled random-k) has its decoded updates scaled by its gain (both ends alike).
//  - That ω is the codec's promise on probe data; what gossip compresses (the differences
//    x − x̂ once the copies caught up) can be far less kind. Measured in the example
//    (Fashion-MNIST MLP, 4 workers, sign on the exponential graph): the probes give sign
//    ω = 0.64 (γ 0.78), its messages in training showed ω = 0.037 from about round 200 on,
//    and at γ 0.78 the copies' lag grew (‖x − x̂‖ / ‖x‖ 0.04 after two epochs, 0.16 in the
//    third) until training collapsed (86.80 % to 66.66 %); at 0.07 the lag fell to 2·10⁻⁴ and it
//    reached 87.35 %. So with the default γ each sender measures the quality of every message
//    it sends on an edge, ω = 1 − ‖d − D(q)‖² / ‖d‖² for d = target − x̂ (the residual is
//    what its own copy still lacks after adding D(q): one pass, no decode), into ω̂ of the
//    edge (an eighth of the way towards each message's ω; it starts at the codec's ω). The
//    edge's step is min(γ, gossip_default_gamma(ω̂)): never above the codec's default (top-k
//    keeps more than k/n of most vectors; its step stays). Push-sum's sender picks its
//    share's step alone (the mass moved is what arrives, whatever the step). Averaging needs
//    one step for both ends of an edge (else the pair's terms do not cancel and the average
//    drifts): each message carries its sender's ω̂ in an 8-byte header, and both ends take
//    the step of the lower of the two. A γ set in the options is used as given. The cost:
//    sign on tests/unit/test_gossip_convergence.cpp's least squares (stable at 0.78 there,
//    its messages at ω̂ 0.02–0.03) now steps at 0.03–0.07 and ends at 0.001–0.05 of its
//    starting loss in 300 steps, where 0.78 reached 2·10⁻⁶–3·10⁻⁴: where a run is known to
//    be stable, a larger γ set by hand is faster.
//    Copies per edge rather than CHOCO's one per rank cost an encode per neighbour instead of one
//    per round, and 2 × (distinct peers) × n floats; in return a skipped edge leaves both ends'
//    copies equal (mass is kept when a peer drops out) and time-varying graphs work. Measured (1000
//    values in [-1, 1) a rank, 300 rounds): 8- and 4-bit scalar_quant keep plain gossip's rate at γ
//    = 1 on every topology tried (ring, torus, exponential, random matching). sign_codec is
//    fragile: at γ = 1 it reaches 1e-3 in 120–160 rounds on rings of 5 and 8 and the 4 × 4 torus,
//    but stalls near 0.1 on rings of 2 and 3, only creeps at γ ≤ 0.7 anywhere, and does not
//    converge with push-sum on the exponential graph (a copy there is updated only every ⌈log2 n⌉
//    rounds, and one bit a value does not catch up).
//  - Every message starts with its sender's settings word (the mixing rule, whether the
//    codec is lossy, the consensus step set in the options): a receiver whose own differs
//    throws invalid_argument naming the peer and both settings, before it applies anything
//    of the round (ranks mixing by different rules would read each other's headers as their
//    own; ranks with different steps would break the pair's cancellation: wrong answers,
//    not errors, without the check). Then push-sum's weight or compressed averaging's ω̂.
//  - The messages: one group per peer, holding the send to it and the receive from it,
//    every group of the round posted before any is waited on. A post never blocks, so no
//    rank can wait on a rank that waits on it: no deadlock by construction, whatever the
//    topology. (One group per peer rather than one for the round: a transport's wait is
//    all-or-nothing and names only the first missing peer, so only per-peer groups tell
//    which neighbours delivered when one is late.)
//  - A peer that misses the round's deadline (the transport's timeout, measured from the
//    first wait of the round) is skipped for that round: its weight goes to self on both
//    ends (its share stays home in push-sum). Its exchange is not withdrawn, on any
//    transport (MPI cannot withdraw a send; withdrawing on the others would lose an
//    exchange whose peer posted in the instant between the deadline check and the
//    withdrawal): it stays posted with its own buffers and is applied late, when it
//    completes. A pair's messages match in the order posted (one tag), so its receive
//    still gets the peer's message of that round. Each round first tests the late
//    exchanges and applies those that completed as their round would have: averaging adds
//    γ W_ij(t) (x_j(t) − x_i(t)), with this rank's x_i(t) of that round; compressed
//    averaging adds the peer's q_t to x̂_{j→i} (before its later messages), then
//    γ W_ij(t) (x̂_{j→i}(t) − x̂_{i→j}(t)), with x̂_{i→j}(t) kept from round t (this rank's
//    copy moves when it posts: the message is delivered unless the peer is gone); push-sum
//    adds the share received and gives away the share it kept home: the exchange
//    completing means that the peer posted its side of round t, whose receive takes this
//    rank's message. The peer applied the mirror term in time or late, so the pair's terms
//    cancel to rounding; settle() lets the last late exchanges land before the values are
//    read. An exchange with a peer that never comes back never completes, and neither end
//    applies it.
//  - While a peer's late exchange is open, nothing new is posted to it: its exchange of a
//    round waits for the late one and is posted as soon as that completes (in order). So
//    at most one exchange a peer stays open: late_exchanges() ≤ the number of distinct
//    peers, retired_bytes() ≤ that × (two message buffers + n floats); past that bound a
//    peer is not sent to. A late peer gets a second deadline, the next round's: that round
//    waits (within its own deadline) for the late exchange, and if it completes posts the
//    round's exchange to the peer at once. A peer late by less than that is usually alive
//    and was waiting out a deadline of its own (on a silent peer of its own); it is not
//    reported, and the ranks' rounds stay paired.
//  - A peer whose late exchange is still open after the next round's deadline (or after
//    settle()'s) is silent: it is reported once in dropped() (with the round it missed),
//    and skipped without waiting from then on: no round waits for it, its one open
//    exchange is only tested. It answers again when it comes back and posts its side of
//    that round, which completes the open exchange: it is applied late (exactly, as above),
//    and the peer is re-admitted at once (its exchange of the round is posted while the
//    round still waits for others) or from the next round. So a silent peer costs its
//    neighbours two deadlines once, not one a round, and only it is reported: a neighbour
//    late because it waited for the silent peer answers within its second deadline. A peer
//    that failed (peer_error) is skipped from then on and its late exchange dropped. Ranks
//    that skipped rounds with each other pair their next rounds (on a time-varying
//    topology such ranks stay out of step: their round numbers differ).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

namespace detail {

// Keeps `p` alive until the program ends: buffers a transport may still use after their
// owner is gone (an MPI send that no receive matched reads its buffer until the job ends).
inline void keep_until_exit(std::shared_ptr<void> p) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<void>> kept;
  std::lock_guard lk(mu);
  kept.push_back(std::move(p));
}

}  // namespace detail

/// GossipCodec<C>: a Codec that gossip can use: any Codec that keeps no state between calls
/// (codec_traits::stateful false, codec/codec.hpp). Compressed gossip's public copies
/// already are error feedback; a codec with state of its own is a second feedback loop
/// inside CHOCO's and the values diverge. Measured: error_feedback<sign_codec> (a stateful
/// wrapper, T3) on a ring of 8 grows without bound at every γ from 0.1 to 1, where
/// sign_codec alone converges; PowerSGD (its own error feedback and warm start) reaches a
/// loss of 1e51 on a least-squares problem over a ring of 4 at every γ tried. Pass the
/// inner codec of a wrapper; PowerSGD in gossip (PowerGossip, Vogels et al. 2020: low-rank
/// differences between neighbours) is not implemented.
///
///   static_assert(gradcomm::GossipCodec<gradcomm::sign_codec>);
///   static_assert(!gradcomm::GossipCodec<gradcomm::error_feedback<gradcomm::sign_codec>>);
template <class C>
concept GossipCodec = Codec<C> && !C::traits.stateful;

/// The consensus step γ that gossip takes for a lossy codec of compression quality ω
/// (compression_quality_of, codec/codec.hpp: E‖Q(x) − x‖² ≤ (1 − ω)‖x‖²):
///
///   γ(ω) = 2ω / (1 + ω):  1 at ω = 1 (lossless), about 2ω for a coarse codec.
///
/// It has the form of CHOCO-SGD's rule (Koloskova et al., 2019: γ* = δ²ω / (16δ + δ² + 4β²
/// + 2δβ² − 8δω), δ the spectral gap of W and β = ‖I − W‖), without its constants: γ* is
/// 1e-4 for top-k 1 % on a ring of 8, too small to train, and what bounds γ in practice
/// did not depend on δ. Measured on least squares (d = 2000, 300 SGD steps, rings of 4
/// and 8 alike), the largest stable γ against the default: top-k 5 % (ω = 0.05) 0.3
/// against 0.095, top-k 1 % 0.2 against 0.02, random-k 1 % 0.07 against 0.02, random-k 5 %
/// (scaled, gain 0.05) 0.1–0.3 against 0.095; sign, ternary (gain 0.39), 8-bit and bf16 are
/// stable at 1 (defaults 0.78, 0.55, 1.0, 1.0). At γ = 1 top-k 5 % ends at a loss of 1e8,
/// random-k 1 % at 1e18. Random-k, the tightest, sets the factor 2 (4 put random-k 5 %
/// at the edge). tests/unit/test_gossip_convergence.cpp trains each codec at its default.
///
///   float g = gradcomm::gossip_default_gamma(0.05);  // 0.095
inline float gossip_default_gamma(double omega) noexcept {
  if (!(omega > 0.0)) return 0x1p-20f;
  if (omega >= 1.0) return 1.0f;
  return static_cast<float>(2.0 * omega / (1.0 + omega));
}

/// How gossip mixes: `automatic` averages on undirected topologies and runs push-sum on
/// directed ones; `push_sum` may be asked for on any topology; `averaging` on an
/// undirected one only.
///
///   gradcomm::gossip_options o{.rule = gradcomm::mixing_rule::push_sum};
enum class mixing_rule : unsigned char { automatic, averaging, push_sum };

/// Settings of a gossip communicator.
///
///   gradcomm::gossip_options o{.gamma = 0.5f, .seed = 7};
struct gossip_options {
  mixing_rule rule = mixing_rule::automatic;
  /// The consensus step size γ, in (0, 1]: rounds mix with (1 − γ) I + γ W. Unset, it is
  /// chosen from the codec: 1 with a lossless codec (plain gossip), gossip_default_gamma of
  /// the codec's compression quality ω otherwise (compression_quality_of, codec/codec.hpp),
  /// found when the first round fixes n. Set it to override that choice.
  std::optional<float> gamma = std::nullopt;
  /// The tag of every message (below 32768: MPI guarantees tags up to 32767). Two gossip
  /// objects on one transport need two tags. One tag for all rounds, not one a round:
  /// messages of one pair match in the order posted, so a rank that fell a round behind
  /// (skipped once, then late) pairs its next round with its neighbours' next one instead
  /// of missing every round after (with a tag a round, it would time out every round).
  int tag = 16384;
  /// The seed of stochastic codecs' streams: (seed, round, rank, peer) keys each encode.
  std::uint64_t seed = 0;
};

/// A peer found silent (`failed` false): it missed the deadline of `round` and the next
/// round's too, and is skipped without waiting, with no new entry, until it answers (a new
/// entry if it falls silent again); or a peer that failed (a peer_error: `failed` true, and
/// it is skipped in every later round without a new entry). A peer that misses one
/// deadline and answers within the next is skipped for that round but not reported.
///
///   for (const auto& d : g.dropped()) log(d.round, d.peer, d.reason);
struct dropped_peer {
  std::uint64_t round;
  int peer;
  bool failed;
  std::string reason;
};

/// Gossip over any Transport: `step(params, grads)` applies the optimizer locally, then
/// mixes `params` with the neighbours that the topology gives for this round (see the
/// top of this header for the rules). The lower-level calls: `mix(params)` mixes alone;
/// `start_mix(params)` posts the round and returns a handle whose `wait()` finishes it,
/// so that the exchange overlaps the next backward pass:
///
///   auto round = g.start_step(w, grads);  // the local step; the messages are on their way
///   compute_gradients(w, grads);          // the next backward pass: w must not change
///   round.wait();                         // w is mixed; the handle must not outlive g
///
/// Every rank calls mix (or step) the same number of times with tensors of the same
/// size n (fixed by the first call). One gossip object a tensor (or a flat bucket of
/// them); it is neither copied nor moved (handles and posted messages point into it). Errors other
/// than a dropped peer (a payload that does not decode, this rank aborted) name the call, this rank
/// and the peer, and leave the object unusable.
///
///   using ring_gossip = gradcomm::gossip<gradcomm::scalar_quant_codec,
///                                        gradcomm::local_transport, gradcomm::ring_topology>;
///   ring_gossip g(t, {}, gradcomm::scalar_quant_codec({.bits = 8}), {}, {.gamma = 0.8f});
template <GossipCodec C, Transport T, Topology G, Optimizer O = sgd>
class gossip {
 public:
  using codec_type = C;
  using transport_type = T;
  using topology_type = G;
  using optimizer_type = O;
  using options = gossip_options;
  /// Whether the codec is lossless: then no public copies are kept.
  static constexpr bool exchanges_values = lossless_codec<C>;

  /// The outstanding round of start_mix: wait() finishes it. Destroying it without
  /// wait() finishes the round too, dropping any error (call wait() to see them).
  ///
  ///   auto h = g.start_mix(w);
  ///   h.wait();
  class pending_mix {
   public:
    pending_mix(pending_mix&& o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
    pending_mix& operator=(pending_mix&& o) noexcept {
      if (this != &o) {
        finish_quietly();
        g_ = std::exchange(o.g_, nullptr);
      }
      return *this;
    }
    pending_mix(const pending_mix&) = delete;
    pending_mix& operator=(const pending_mix&) = delete;
    ~pending_mix() { finish_quietly(); }

    /// Waits for the round's messages (skipping the peers that miss the deadline) and
    /// writes the mixed values into the tensor given to start_mix.
    void wait() {
      if (!g_)
        detail::throw_invalid_argument("gossip::pending_mix::wait",
                                       "the round was already finished (or moved from)");
      std::exchange(g_, nullptr)->finish_mix();
    }
    /// Whether wait() is still to be called.
    bool pending() const noexcept { return g_ != nullptr; }

   private:
    friend class gossip;
    explicit pending_mix(gossip* g) noexcept : g_(g) {}
    void finish_quietly() noexcept {
      if (!g_) return;
      try {
        std::exchange(g_, nullptr)->finish_mix();
      } catch (...) {
      }
    }
    gossip* g_ = nullptr;
  };

  /// A gossip communicator on `transport` (which must outlive it).
  ///
  ///   gradcomm::gossip<gradcomm::identity_codec, gradcomm::local_transport,
  ///                    gradcomm::exponential_topology> g(t);  // push-sum
  explicit gossip(T& transport, G topology = G{}, C codec = C{}, O optimizer = O{},
                  gossip_options opts = {})
      : t_(&transport),
        topo_(std::move(topology)),
        codec_(std::move(codec)),
        opt_(std::move(optimizer)),
        o_(opts),
        failed_(static_cast<std::size_t>(transport.size()), false),
        silent_(static_cast<std::size_t>(transport.size()), false),
        late_open_(static_cast<std::size_t>(transport.size()), false),
        edges_(static_cast<std::size_t>(transport.size())) {
    static constexpr const char* call = "gossip";
    const int me = transport.rank();
    if (o_.gamma) {
      if (!(*o_.gamma > 0.0f && *o_.gamma <= 1.0f))
        detail::throw_invalid_argument(
            call, "gamma is " + std::to_string(*o_.gamma) + ", it must lie in (0, 1]", me);
      gamma_ = *o_.gamma;
    } else if constexpr (!lossy) {
      gamma_ = 1.0f;
    }
    if (o_.tag < 0)
      detail::throw_invalid_argument(call, "the tag is " + std::to_string(o_.tag), me);
    switch (o_.rule) {
      case mixing_rule::automatic:
        rule_ = G::undirected ? mixing_rule::averaging : mixing_rule::push_sum;
        break;
      case mixing_rule::averaging:
        if (!G::undirected)
          detail::throw_invalid_argument(call,
                                         std::string("averaging needs an undirected topology; ") +
                                             std::string(topo_.name()) +
                                             " is directed: use push-sum",
                                         me);
        rule_ = mixing_rule::averaging;
        break;
      case mixing_rule::push_sum: rule_ = mixing_rule::push_sum; break;
    }
  }

  // Neither copied nor moved: a pending_mix and the posted messages point into it.
  gossip(const gossip&) = delete;
  gossip& operator=(const gossip&) = delete;
  ~gossip() {
    // Late exchanges still open are withdrawn where the transport withdraws whole groups,
    // else abandoned: their buffers outlive this object (retire).
    abandon_round();
    for (auto& l : late_) {
      if (!l.complete && l.req && !transport_withdraws_groups<T>) {
        try {
          l.complete = t_->test(*l.req);
        } catch (...) {
        }
      }
      retire(l);
    }
  }

  /// This rank and the number of ranks.
  int rank() const noexcept { return t_->rank(); }
  int size() const noexcept { return t_->size(); }
  /// The rule in use (never `automatic`).
  mixing_rule rule() const noexcept { return rule_; }
  /// Rounds finished so far; the next round's number.
  std::uint64_t round() const noexcept { return round_; }
  /// The push-sum weight w of this rank (1 under averaging).
  double weight() const noexcept { return weight_; }
  /// Payload bytes and messages this rank sent and received (exchanges that completed),
  /// time spent encoding, decoding (and mixing) and waiting.
  const traffic_counters& counters() const noexcept { return counters_; }
  /// Every peer found silent or failed so far, in the order found (see dropped_peer).
  std::span<const dropped_peer> dropped() const noexcept { return dropped_; }
  /// The peers that failed (peer_error) and are skipped for good, in the order found.
  std::span<const int> failed_peers() const noexcept { return failed_list_; }
  /// Bytes held by late exchanges still open (missed their deadline, not completed yet):
  /// their payloads and receive buffers, which the transport uses until they complete,
  /// and this rank's values of their round. At most one a peer (nothing more is posted
  /// to a peer while one is open): at most (distinct peers) × (two message buffers + n
  /// floats), however long a peer stays silent.
  ///
  ///   if (g.retired_bytes() > budget) log("peers keep missing the deadline");
  std::size_t retired_bytes() const noexcept {
    std::size_t b = 0;
    for (const auto& l : late_)
      b += l.send.size() + l.recv.size() + (l.plain ? l.plain->size() : 0) +
           l.own.size() * sizeof(float);
    return b;
  }

  /// Late exchanges still open: missed their round's deadline and not applied yet; at
  /// most one a peer (see retired_bytes()).
  std::size_t late_exchanges() const noexcept { return late_.size(); }

  /// The topology, the codec (the prototype each edge's encoder is copied from), the
  /// optimizer of step() and the settings.
  ///
  ///   g.optimizer().settings().lr *= 0.1f;  // a learning-rate schedule
  const G& topology() const noexcept { return topo_; }
  C& codec() noexcept { return codec_; }
  /// The consensus step γ: the one set in the options, 1 for a lossless codec, else
  /// gossip_default_gamma(quality().omega) once the first round fixed n (NaN before). With
  /// the default and a lossy codec this is the largest step: an edge whose messages
  /// compress worse than quality() promised takes a smaller one (see the top; last_gamma()).
  float gamma() const noexcept { return gamma_; }
  /// The smallest consensus step this rank took in the last round (in the round in flight,
  /// once it finished): gamma() but where an edge's measured quality lowered it. NaN before
  /// the first round.
  ///
  ///   if (g.last_gamma() < g.gamma()) std::printf("messages compress worse than promised\n");
  float last_gamma() const noexcept { return last_gamma_; }
  /// The lowest quality ω̂ this rank's messages showed on its edges (see the top; 1 for a
  /// lossless codec and before a message went out). It may lie above quality().omega (top-k
  /// keeps more than k/n of most vectors), where the step stays gamma().
  double measured_quality() const noexcept {
    double w = 1.0;
    for (const auto& e : edges_)
      if (e && e->measured) w = std::min(w, e->omega);
    return w;
  }
  /// The codec's compression quality on this tensor (ω and the gain its decoded values are
  /// scaled by, compression_quality_of): ω = 1 for a lossless codec; found by the first round.
  const compression_quality& quality() const noexcept { return quality_; }
  O& optimizer() noexcept { return opt_; }
  const gossip_options& settings() const noexcept { return o_; }

  /// One training step: the optimizer updates `params` from `grads`, then mix(params).
  ///
  ///   g.step(w, grads);
  void step(host_view<float> params, host_view<const float> grads) {
    start_step(params, grads).wait();
  }

  /// The optimizer step, then start_mix(params).
  ///
  ///   auto h = g.start_step(w, grads);
  ///   h.wait();
  [[nodiscard]] pending_mix start_step(host_view<float> params, host_view<const float> grads) {
    static constexpr const char* call = "gossip::start_step";
    check_usable(call);
    if (in_flight_)
      detail::throw_invalid_argument(
          call, "round " + std::to_string(round_) + " is still in flight: wait() for it first",
          rank());
    opt_.apply(params, grads);
    return start_mix(params);
  }

  /// One gossip round on `params`.
  ///
  ///   g.mix(w);
  void mix(host_view<float> params) { start_mix(params).wait(); }

  /// Waits up to the transport's deadline for the late exchanges still open (see the top
  /// of this header) and applies to `params` those that complete. The others stay open:
  /// their peers are silent (reported in dropped() if they were not yet) and applied
  /// nothing either. Returns how many stay open. Call it between rounds, on every rank,
  /// before reading the final values: until then a rank's late terms are missing while
  /// its peers applied theirs, so the sum over ranks is not yet the exact one.
  ///
  ///   for (int it = 0; it < steps; ++it) g.step(w, grads);
  ///   g.settle(w);  // the late exchanges land: Σ over the ranks is kept
  std::size_t settle(host_view<float> params) {
    static constexpr const char* call = "gossip::settle";
    check_usable(call);
    if (in_flight_)
      detail::throw_invalid_argument(
          call, "round " + std::to_string(round_) + " is still in flight: wait() for it first",
          rank());
    if (late_.empty()) return 0;
    if (params.size() != n_)
      detail::throw_invalid_argument(
          call, std::to_string(params.size()) + " elements for a tensor of " + std::to_string(n_),
          rank());
    try {
      {
        scoped_timer timer(counters_.wait_ns);
        const auto deadline = clock::now() + t_->timeout();
        poll_backoff backoff;
        for (;;) {
          poll_late();
          if (!any_late_open() || clock::now() >= deadline) break;
          backoff.pause();
        }
      }
      scoped_timer timer(counters_.decode_ns);
      params_ = params;
      check_received(false);  // the late ones only: the last round's were applied
      if (rule_ == mixing_rule::averaging) {
        double unused = 0.0;
        if (apply_late(unused)) add_late_delta();
      } else {
        // The numerator x = w z, as a round starts from.
        const auto w0 = static_cast<float>(weight_);
        for (std::size_t i = 0; i < n_; ++i) x_[i] = w0 * params[i];
        std::fill(delta_.begin(), delta_.end(), 0.0f);
        double w = weight_;
        if (apply_late(w)) finish_push_sum(w);
      }
      report_silent(round_);
    } catch (const std::exception& x) {
      broken_ = x.what();
      throw;
    }
    return late_.size();
  }

  /// Encodes and posts one round on `params` and returns at once; the handle's wait()
  /// finishes it. `params` must stay valid and unchanged until then (reading it is fine).
  ///
  ///   auto h = g.start_mix(w);
  ///   h.wait();
  [[nodiscard]] pending_mix start_mix(host_view<float> params) {
    static constexpr const char* call = "gossip::start_mix";
    check_usable(call);
    if (in_flight_)
      detail::throw_invalid_argument(
          call, "round " + std::to_string(round_) + " is still in flight: wait() for it first",
          rank());
    size_for(params.size());
    try {
      begin_round(params);
    } catch (...) {
      abandon_round();
      throw;
    }
    in_flight_ = true;
    return pending_mix(this);
  }

 private:
  // pending: posted, open; deferred: waits for the peer's late exchange, not posted yet;
  // dropped: skipped in this round (its weight stays home).
  enum class outcome : unsigned char { pending, deferred, done, dropped };

  // Everything exchanged with one peer in the round in flight.
  struct exchange {
    int peer = -1;
    double in_w = 0.0;   // W_ij: this rank receives from the peer
    double out_w = 0.0;  // W_ji: this rank sends to the peer
    std::size_t send_bytes = 0;
    double weight_share = 0.0;  // push-sum: the weight sent
    float share_gamma = 0.0f;   // push-sum: the γ of the share sent
    double omega_sent = 1.0;    // compressed: this edge's ω̂ sent with the message
    double d2 = 0.0;            // compressed: ‖d‖² of the message's input d
    outcome state = outcome::pending;
    std::optional<typename T::request> req;
    bool sends() const noexcept { return out_w > 0.0; }
    bool receives() const noexcept { return in_w > 0.0; }
  };

  // An exchange that missed its round's deadline: still posted, skipped in its round,
  // applied when it completes. It owns the buffers the transport uses (the edge got new
  // ones) and what applying it needs.
  struct late_exchange {
    std::uint64_t round = 0;
    int peer = -1;
    double in_w = 0.0, out_w = 0.0;
    std::size_t send_bytes = 0;
    double weight_share = 0.0;
    float share_gamma = 0.0f;
    double omega_sent = 1.0;
    std::vector<std::byte> send, recv;              // the edge's buffers of that round
    std::shared_ptr<std::vector<std::byte>> plain;  // plain averaging: the round's payload
    // This rank's side of the round: x_i(t) (plain averaging), x̂_{i→j}(t) (compressed),
    // the share sent (push-sum: W_ji x_i, or its public copy).
    std::vector<float> own;
    // After the buffers: destroyed first (a withdrawing transport's request waits for
    // copies into them to finish).
    std::optional<typename T::request> req;
    bool complete = false;
    bool sends() const noexcept { return out_w > 0.0; }
    bool receives() const noexcept { return in_w > 0.0; }
  };

  // State of the edge to one peer, made on first use and kept while the object lives.
  struct edge {
    C codec;                    // this edge's encoder: state (error feedback) per edge
    std::vector<float> mine;    // x̂_{i→j}: the public copy of what this rank sends
    std::vector<float> theirs;  // x̂_{j→i}: the public copy of what the peer sends
    std::vector<std::byte> send, recv;
    double omega = 1.0;     // ω̂: the quality this rank's messages on the edge showed (see top)
    bool measured = false;  // a message of this rank on the edge entered ω̂
  };

  // Push-sum messages carry the weight share in front of the payload; compressed
  // averaging's carry the sender's ω̂ of the edge (an f64 each, see the top).
  static constexpr std::size_t weight_bytes = sizeof(double);
  static constexpr std::size_t omega_bytes = sizeof(double);
  // Every message starts with the sender's settings word (settings_word()).
  static constexpr std::size_t settings_bytes = sizeof(std::uint64_t);
  static constexpr bool lossy = !lossless_codec<C>;

  using clock = std::chrono::steady_clock;

  // Pauses between polls: yields a few times, then sleeps 20 µs, doubling up to 0.5 ms.
  struct poll_backoff {
    int polls = 0;
    void pause() {
      if (polls < 4) {
        ++polls;
        std::this_thread::yield();
        return;
      }
      const int k = std::min(polls++ - 4, 5);
      std::this_thread::sleep_for(
          std::min(std::chrono::microseconds(20) * (1 << k), std::chrono::microseconds(500)));
    }
  };

  void check_usable(const char* call) const {
    if (!broken_.empty())
      throw error(make_error_code(errc::internal), call, rank(),
                  "this gossip object stopped after an error: " + broken_);
  }

  void size_for(std::size_t n) {
    if (!sized_) {
      n_ = n;
      sized_ = true;
      scratch_.assign(n, 0.0f);
      delta_.assign(n, 0.0f);
      if (rule_ == mixing_rule::push_sum) x_.assign(n, 0.0f);
      late_delta_.assign(n, 0.0f);
      plain_ =
          std::make_shared<std::vector<std::byte>>(settings_bytes + codec_.max_encoded_bytes(n));
      if constexpr (lossy) {
        quality_ = compression_quality_of(codec_, n);
        if (quality_.gain != 1.0) gained_.assign(n, 0.0f);
        if (!o_.gamma) gamma_ = gossip_default_gamma(quality_.omega);
      }
    } else if (n != n_) {
      detail::throw_invalid_argument("gossip::start_mix",
                                     std::to_string(n) + " elements after " + std::to_string(n_) +
                                         " (a gossip object keeps state for one tensor size)",
                                     rank());
    }
  }

  std::size_t edge_buffer_bytes() const { return header_bytes() + codec_.max_encoded_bytes(n_); }

  // The bytes in front of an edge's payload: the settings word, then push-sum's weight or
  // compressed averaging's ω̂.
  std::size_t header_bytes() const noexcept {
    if (rule_ == mixing_rule::push_sum) return settings_bytes + weight_bytes;
    return settings_bytes + (lossy ? omega_bytes : 0);
  }

  // What both ends of an edge must share, in front of every message: a mark (0x6753), the
  // mixing rule, whether the codec is lossy, and the consensus step set in the options (its
  // f32 bits; 0 for the default). Ranks that mix by different rules read each other's
  // headers as their own, and ranks with different steps break the pair's cancellation:
  // either would be a wrong answer, not an error, so the receiver compares the words.
  std::uint64_t settings_word() const noexcept {
    const std::uint64_t rule = rule_ == mixing_rule::push_sum ? 2 : 1;
    const std::uint64_t step = o_.gamma ? std::bit_cast<std::uint32_t>(*o_.gamma) : 0u;
    return (std::uint64_t{0x6753} << 48) | (rule << 40) | (std::uint64_t{lossy} << 32) | step;
  }

  static std::string settings_text(std::uint64_t w) {
    const auto rule = (w >> 40) & 0xff;
    const auto step = static_cast<std::uint32_t>(w);
    return std::string(rule == 2   ? "push-sum"
                       : rule == 1 ? "averaging"
                                   : "an unknown rule") +
           ((w >> 32) & 1 ? ", a lossy codec" : ", a lossless codec") + ", consensus step " +
           (step == 0 ? std::string("the default")
                      : std::to_string(std::bit_cast<float>(step)) + " (set)");
  }

  // A received message's settings word, checked against this rank's: a message that is no
  // gossip message is a decode_error; one whose sender's settings differ is named
  // (invalid_argument: set the same rule and consensus step on every rank). The bytes after it.
  std::span<const std::byte> check_settings(std::span<const std::byte> got, int peer,
                                            std::uint64_t round) const {
    std::uint64_t theirs = 0;
    try {
      wire_reader r(got, "gossip::mix");
      theirs = r.get_u64();
    } catch (const decode_error& d) {
      throw decode_error("gossip::mix",
                         "the payload from rank " + std::to_string(peer) + " in round " +
                             std::to_string(round) + ": " + d.what(),
                         rank());
    }
    if ((theirs >> 48) != 0x6753)
      throw decode_error("gossip::mix",
                         "the payload from rank " + std::to_string(peer) + " in round " +
                             std::to_string(round) + " does not start with a gossip header",
                         rank());
    const std::uint64_t mine = settings_word();
    if (theirs != mine)
      detail::throw_invalid_argument(
          "gossip::mix",
          "rank " + std::to_string(peer) + " mixes by " + settings_text(theirs) +
              ", this rank by " + settings_text(mine) +
              ": every rank needs the same mixing rule, codec and gossip_options::gamma",
          rank());
    return got.subspan(settings_bytes);
  }

  void put_settings(std::span<std::byte> buf) const {
    wire_writer w(buf.first(settings_bytes), "gossip::start_mix");
    w.put_u64(settings_word());
  }

  // The consensus step of an edge whose messages showed the quality ω̂ (the lower of its two
  // directions' in averaging): the set γ; else the codec's default, lowered to
  // gossip_default_gamma(ω̂) where the messages compress worse than the codec promised.
  float edge_gamma(double omega_hat) const noexcept {
    if (o_.gamma) return gamma_;
    return std::min(gamma_, gossip_default_gamma(omega_hat));
  }

  // After this rank's message moved the edge's copy x̂_{i→j}: the message's quality
  // ω = 1 − ‖d − gain·D(q)‖² / ‖d‖² (d what was encoded, target − x̂ before; the residual
  // target − x̂ after) moves ω̂ an eighth of the way towards it.
  void observe_quality(edge& ed, const exchange& e, const float* target, float scale) {
    if (!(e.d2 > 0.0)) return;
    const float* mi = ed.mine.data();
    double r2 = 0.0;
    for (std::size_t i = 0; i < n_; ++i) {
      const double r = static_cast<double>(scale * target[i]) - static_cast<double>(mi[i]);
      r2 += r * r;
    }
    constexpr double grid = 1.0 / (1 << 20);
    double w = 1.0 - r2 / e.d2;
    if (!(w >= grid)) w = grid;  // NaN or no contraction: the floor
    if (w > 1.0) w = 1.0;
    ed.omega += (w - ed.omega) / 8.0;
    ed.measured = true;
    ed.omega = std::max(std::floor(ed.omega / grid) * grid, grid);
  }

  edge& edge_to(int peer) {
    auto& slot = edges_[static_cast<std::size_t>(peer)];
    if (!slot) {
      slot = std::make_unique<edge>(edge{codec_, {}, {}, {}, {}, quality_.omega, false});
      slot->send.resize(edge_buffer_bytes());
      slot->recv.resize(edge_buffer_bytes());
      if constexpr (lossy) {
        slot->mine.assign(n_, 0.0f);
        slot->theirs.assign(n_, 0.0f);
      }
    }
    return *slot;
  }

  template <class Codec_>
  void key_stream(Codec_& c, int peer) const {
    if constexpr (StochasticCodec<Codec_>)
      c.set_stream({.seed = o_.seed,
                    .step = static_cast<std::uint32_t>(round_),
                    .rank = static_cast<std::uint32_t>(rank()),
                    .bucket = static_cast<std::uint32_t>(peer)});
  }

  static std::size_t idx(int peer) noexcept { return static_cast<std::size_t>(peer); }

  // A failed peer (peer_error) met in this round's exchange: skipped from now on.
  void record_failure(exchange& e, std::string reason) {
    e.state = outcome::dropped;
    e.req.reset();
    drop_late_of(e.peer);
    mark_failed(e.peer, std::move(reason));
  }

  void mark_failed(int peer, std::string reason) {
    const auto p = idx(peer);
    if (failed_[p]) return;
    failed_[p] = true;
    silent_[p] = false;
    failed_list_.push_back(peer);
    dropped_.push_back({round_, peer, true, std::move(reason)});
  }

  // A fresh buffer of `bytes` for the edge whose buffers a late exchange took.
  std::vector<std::byte> spare_buffer(std::size_t bytes) {
    while (!spare_.empty()) {
      std::vector<std::byte> b = std::move(spare_.back());
      spare_.pop_back();
      if (b.size() == bytes) return b;
    }
    return std::vector<std::byte>(bytes);
  }

  // The exchange stays posted: its request and buffers move to late_, with this rank's
  // side of the round, and the edge gets new buffers for the next round's messages.
  void go_late(exchange& e) {
    edge& ed = edge_to(e.peer);
    late_exchange l;
    l.round = round_;
    l.peer = e.peer;
    l.in_w = e.in_w;
    l.out_w = e.out_w;
    l.send_bytes = e.send_bytes;
    l.weight_share = e.weight_share;
    l.share_gamma = e.share_gamma;
    l.omega_sent = e.omega_sent;
    l.req = std::move(e.req);
    e.req.reset();
    const std::size_t bytes = edge_buffer_bytes();
    const bool plain = rule_ == mixing_rule::averaging && !lossy;
    if (e.sends()) {
      if (plain)
        l.plain = plain_;  // the round's payload, still sent to the peer
      else
        l.send = std::exchange(ed.send, spare_buffer(bytes));
    }
    if (e.receives()) l.recv = std::exchange(ed.recv, spare_buffer(bytes));
    if (plain) {
      l.own.assign(params_.data(), params_.data() + n_);  // x_i(t)
    } else if (e.sends() && lossy) {
      l.own = ed.mine;  // x̂_{i→j}(t), updated when the message was posted
    } else if (e.sends()) {
      const auto share = static_cast<float>(e.out_w * e.share_gamma);  // push-sum's share
      l.own.resize(n_);
      for (std::size_t i = 0; i < n_; ++i) l.own[i] = share * x_[i];
    }
    late_.push_back(std::move(l));
  }

  // The buffers of an exchange abandoned before it completed: unless the transport
  // withdraws whole groups it may still use them (an MPI send that no receive matched
  // yet reads its buffer until the job ends), so they are kept until the program ends;
  // the others are recycled.
  void retire(late_exchange& l) noexcept {
    l.req.reset();  // a withdrawing transport no longer touches the buffers after this
    try {
      if (l.complete || transport_withdraws_groups<T>) {
        recycle(l);
        return;
      }
      for (auto* b : {&l.send, &l.recv})
        if (!b->empty())
          detail::keep_until_exit(std::make_shared<std::vector<std::byte>>(std::move(*b)));
      if (l.plain) detail::keep_until_exit(std::move(l.plain));
    } catch (...) {  // out of memory: nothing safer is left to do
    }
  }

  void recycle(late_exchange& l) {
    for (auto* b : {&l.send, &l.recv})
      if (!b->empty() && spare_.size() < 2 * edges_.size()) spare_.push_back(std::move(*b));
  }

  // A failed peer: its late exchanges are dropped (it applies nothing more either).
  void drop_late_of(int peer) noexcept {
    for (auto& l : late_)
      if (l.peer == peer) retire(l);
    std::erase_if(late_, [&](const late_exchange& l) { return l.peer == peer; });
    late_open_[idx(peer)] = false;
  }

  void fail_peer(int peer, const std::string& reason) {
    for (auto& e : ex_)
      if (e.peer == peer && (e.state == outcome::pending || e.state == outcome::deferred)) {
        record_failure(e, reason);
        return;
      }
    drop_late_of(peer);
    mark_failed(peer, reason);
  }

  // Encodes and posts every group of the round, but those whose peer has a late exchange
  // still open (deferred: posted when it completes, see wait_round).
  void begin_round(host_view<float> params) {
    const neighbourhood nb = topo_.peers(rank(), size(), round_);
    ex_.clear();
    poll_late();  // a late exchange that completed since re-admits its peer now
    // The union of in- and out-peers, in rank order (both lists are sorted); failed
    // peers are left out: their weight stays with this rank.
    std::size_t a = 0, b = 0;
    while (a < nb.in.size() || b < nb.out.size()) {
      exchange e;
      if (b == nb.out.size() || (a < nb.in.size() && nb.in[a].rank < nb.out[b].rank)) {
        e.peer = nb.in[a].rank;
        e.in_w = nb.in[a++].weight;
      } else if (a == nb.in.size() || nb.out[b].rank < nb.in[a].rank) {
        e.peer = nb.out[b].rank;
        e.out_w = nb.out[b++].weight;
      } else {
        e.peer = nb.in[a].rank;
        e.in_w = nb.in[a++].weight;
        e.out_w = nb.out[b++].weight;
      }
      if (e.peer < 0 || e.peer >= size() || e.peer == rank())
        detail::throw_invalid_argument("gossip::start_mix",
                                       std::string(topo_.name()) + " names rank " +
                                           std::to_string(e.peer) + " as a peer in round " +
                                           std::to_string(round_),
                                       rank());
      if (failed_[idx(e.peer)]) continue;
      if (late_open_[idx(e.peer)]) e.state = outcome::deferred;
      ex_.push_back(std::move(e));
    }
    params_ = params;
    last_gamma_ = gamma_;
    const std::size_t n = n_;
    const float* z = params.data();
    // A late exchange still sends an earlier round's payload: this round writes a new one.
    if (plain_.use_count() > 1) plain_ = std::make_shared<std::vector<std::byte>>(plain_->size());
    {
      scoped_timer timer(counters_.encode_ns);
      if (rule_ == mixing_rule::push_sum) {
        // The numerator x = w z: params hold the estimate z.
        const auto w = static_cast<float>(weight_);
        for (std::size_t i = 0; i < n; ++i) x_[i] = w * z[i];
      } else if constexpr (!lossy) {
        key_stream(codec_, -1);
        put_settings(*plain_);
        plain_bytes_ =
            settings_bytes + codec_.encode(host_view<const float>(params),
                                           std::span<std::byte>(*plain_).subspan(settings_bytes));
      }
    }
    for (auto& e : ex_)
      if (e.state == outcome::pending) post_exchange(e);
  }

  // This rank's message to e's peer in this round, into the edge's send buffer (plain
  // averaging sends the round's one payload instead).
  void encode_edge(exchange& e) {
    if (!e.sends()) return;
    const std::size_t n = n_;
    const float* z = params_.data();
    edge& ed = edge_to(e.peer);
    key_stream(ed.codec, e.peer);
    if (rule_ == mixing_rule::averaging) {
      if constexpr (lossy) {
        double d2 = 0.0;
        for (std::size_t i = 0; i < n; ++i) {
          scratch_[i] = z[i] - ed.mine[i];
          d2 += static_cast<double>(scratch_[i]) * scratch_[i];
        }
        e.d2 = d2;
        e.omega_sent = ed.omega;
        put_settings(ed.send);
        wire_writer w(std::span<std::byte>(ed.send).subspan(settings_bytes, omega_bytes),
                      "gossip::start_mix");
        w.put_u64(std::bit_cast<std::uint64_t>(e.omega_sent));
        e.send_bytes =
            header_bytes() + ed.codec.encode(host_view<const float>(scratch_),
                                             std::span<std::byte>(ed.send).subspan(header_bytes()));
      }
      return;
    }
    // Push-sum: the sender alone picks its share's step (the mass moved is what arrives,
    // whatever the step), from its own messages' quality on the edge.
    e.share_gamma = lossy ? edge_gamma(ed.omega) : gamma_;
    const auto share = static_cast<float>(e.out_w * e.share_gamma);
    if constexpr (lossy) {
      double d2 = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        scratch_[i] = share * x_[i] - ed.mine[i];
        d2 += static_cast<double>(scratch_[i]) * scratch_[i];
      }
      e.d2 = d2;
      last_gamma_ = std::min(last_gamma_, e.share_gamma);
    } else {
      for (std::size_t i = 0; i < n; ++i) scratch_[i] = share * x_[i];
    }
    e.weight_share = e.out_w * e.share_gamma * weight_;
    const auto bits = std::bit_cast<std::uint64_t>(e.weight_share);
    put_settings(ed.send);
    wire_writer w(std::span<std::byte>(ed.send).subspan(settings_bytes, weight_bytes),
                  "gossip::start_mix");
    w.put_u64(bits);
    e.send_bytes =
        header_bytes() + ed.codec.encode(host_view<const float>(scratch_),
                                         std::span<std::byte>(ed.send).subspan(header_bytes()));
  }

  // The payload this rank sends to e's peer in this round (its public copy's update when
  // the codec is lossy).
  std::span<const std::byte> sent_payload(const exchange& e) {
    if (rule_ == mixing_rule::averaging && !lossy)
      return std::span<const std::byte>(*plain_).first(plain_bytes_);
    return std::span<const std::byte>(edge_to(e.peer).send).first(e.send_bytes);
  }

  // copy += gain · D(payload): a public copy's update, the same on both ends of the edge
  // (the gain is 1 but for codecs that are no contraction unscaled: see compression_quality).
  void add_to_copy(edge& ed, std::span<const std::byte> payload, std::vector<float>& copy) {
    if (quality_.gain == 1.0) {
      ed.codec.decode_add(payload, copy);
      return;
    }
    ed.codec.decode(payload, gained_);
    const auto gain = static_cast<float>(quality_.gain);
    float* c = copy.data();
    const float* d = gained_.data();
    for (std::size_t i = 0; i < n_; ++i) c[i] += gain * d[i];
  }

  // D(q) of this rank's payload to e's peer, added to x̂_{i→j}: what the peer adds to its
  // copy when the message lands.
  void update_mine(const exchange& e) {
    edge& ed = edge_to(e.peer);
    const std::span<const std::byte> p = sent_payload(e);
    add_to_copy(ed, p.subspan(header_bytes()), ed.mine);
    if (rule_ == mixing_rule::push_sum)
      observe_quality(ed, e, x_.data(), static_cast<float>(e.out_w * e.share_gamma));
    else
      observe_quality(ed, e, params_.data(), 1.0f);
  }

  // Compressed averaging: the sender's ω̂ in front of a received payload, checked, and the
  // payload after it.
  std::span<const std::byte> read_omega(std::span<const std::byte> got, double& omega) const {
    wire_reader r(got, "gossip::mix");
    omega = std::bit_cast<double>(r.get_u64());
    if (!(omega > 0.0 && omega <= 1.0))
      throw decode_error("gossip::mix", "compression quality " + std::to_string(omega) +
                                            " in the message header, outside (0, 1]");
    return got.subspan(omega_bytes);
  }

  // Encodes and posts e's group: the send to its peer and the receive from it.
  void post_exchange(exchange& e) {
    {
      scoped_timer timer(counters_.encode_ns);
      encode_edge(e);
    }
    const int tag = o_.tag;
    send_op s{e.peer, tag, {}};
    recv_op r{e.peer, tag, {}};
    if (e.sends()) {
      s.data = sent_payload(e);
      e.send_bytes = s.data.size();
    }
    if (e.receives()) r.data = edge_to(e.peer).recv;
    try {
      e.req.emplace(t_->post(std::span<const send_op>(&s, e.sends() ? 1 : 0),
                             std::span<const recv_op>(&r, e.receives() ? 1 : 0)));
    } catch (const peer_error& x) {
      if (x.peer() != e.peer) throw;
      record_failure(e, x.what());
      return;
    }
    e.state = outcome::pending;
    // A send is never withdrawn (see the top) and is delivered unless the peer is gone:
    // this rank's copy of what the peer knows moves now, whether or not the round waits.
    if constexpr (lossy)
      if (e.sends()) update_mine(e);
  }

  // Tests the open late exchanges (at most one a peer) without blocking. One that
  // completed re-admits its peer; late_open_ marks the peers with one still open.
  void poll_late() {
    std::fill(late_open_.begin(), late_open_.end(), false);
    for (std::size_t k = 0; k < late_.size(); ++k) {
      late_exchange& l = late_[k];
      if (l.complete) continue;
      const auto p = idx(l.peer);
      bool ok = false;
      try {
        ok = t_->test(*l.req);
      } catch (const peer_error& x) {
        if (x.peer() != l.peer) throw;
        fail_peer(l.peer, x.what());
        k = static_cast<std::size_t>(-1);  // late_ changed: test again from the start
        std::fill(late_open_.begin(), late_open_.end(), false);
        continue;
      }
      if (!ok) {
        late_open_[p] = true;
        continue;
      }
      l.complete = true;
      silent_[p] = false;  // it answers again
      if (l.sends()) counters_.add_sent(l.send_bytes);
      if (l.receives()) counters_.add_received(l.req->received(0));
    }
  }

  bool any_late_open() const noexcept {
    return std::any_of(late_.begin(), late_.end(), [](const auto& l) { return !l.complete; });
  }

  // Whether a late exchange of an earlier round is open and its peer not yet found silent:
  // this round is its peer's second deadline.
  bool waits_for_late() const noexcept {
    return std::any_of(late_.begin(), late_.end(), [&](const late_exchange& l) {
      return !l.complete && l.round < round_ && !silent_[idx(l.peer)];
    });
  }

  // The peers whose late exchange of a round before `round` is still open: silent. Each is
  // reported once, and skipped without waiting until that exchange completes.
  void report_silent(std::uint64_t round) {
    for (const auto& l : late_) {
      const auto p = idx(l.peer);
      if (l.complete || l.round >= round || silent_[p] || failed_[p]) continue;
      silent_[p] = true;
      dropped_.push_back({l.round, l.peer, false,
                          "rank " + std::to_string(l.peer) + " missed the deadline of round " +
                              std::to_string(l.round) + " and did not answer within the next (" +
                              std::to_string(t_->timeout().count()) +
                              " ms each): skipped without waiting until it answers"});
    }
  }

  // The round's wait. It polls (never waits inside the transport: MPI's wait withdraws
  // the receives of a group when it times out, and a transport's wait is not bounded by
  // the round's deadline) the late exchanges and the round's until the round's exchanges
  // completed and no peer in its second deadline has its late exchange open, or the
  // deadline passed. A deferred exchange is posted as soon as its peer's late one
  // completes. Then the round's exchanges still open go late (kept posted), and the peers
  // whose late exchange of an earlier round is still open are silent.
  void wait_round() {
    scoped_timer timer(counters_.wait_ns);
    const auto deadline = clock::now() + t_->timeout();
    poll_backoff backoff;
    for (;;) {
      poll_late();
      bool open = false;
      for (auto& e : ex_) {
        if (e.state == outcome::deferred && !late_open_[idx(e.peer)])
          post_exchange(e);  // the peer answered: its exchange of this round goes now
        if (e.state != outcome::pending) continue;
        bool ok = false;
        try {
          ok = t_->test(*e.req);
        } catch (const peer_error& x) {
          if (x.peer() != e.peer) throw;
          fail_peer(e.peer, x.what());
          continue;
        }
        if (!ok) {
          open = true;
          continue;
        }
        e.state = outcome::done;
        if (e.sends()) counters_.add_sent(e.send_bytes);
        if (e.receives()) counters_.add_received(e.req->received(0));
      }
      if (!open && !waits_for_late()) break;
      if (clock::now() >= deadline) break;
      backoff.pause();
    }
    for (auto& e : ex_) {
      if (e.state == outcome::pending) go_late(e);
      if (e.state == outcome::pending || e.state == outcome::deferred) e.state = outcome::dropped;
    }
    report_silent(round_);
  }

  std::span<const std::byte> checked_payload(std::span<const std::byte> buf, std::size_t got,
                                             int peer) const {
    if (got > buf.size())
      throw decode_error("gossip::mix",
                         "rank " + std::to_string(peer) + " reported " + std::to_string(got) +
                             " bytes for a buffer of " + std::to_string(buf.size()),
                         rank());
    return buf.first(got);
  }

  // A received message after its settings word (checked by check_received first).
  std::span<const std::byte> received_payload(exchange& e) {
    return checked_payload(edge_to(e.peer).recv, e.req->received(0), e.peer)
        .subspan(settings_bytes);
  }

  std::span<const std::byte> received_payload(late_exchange& l) {
    return checked_payload(l.recv, l.req->received(0), l.peer).subspan(settings_bytes);
  }

  // The settings word of every message that landed (in this round where `round`, and the
  // late ones) is checked before any message is applied: ranks whose settings differ change
  // nothing. (A payload that fails to decode later still stops the object, as before.)
  void check_received(bool round) {
    for (auto& e : ex_)
      if (round && e.state == outcome::done && e.receives())
        (void)check_settings(checked_payload(edge_to(e.peer).recv, e.req->received(0), e.peer),
                             e.peer, round_);
    for (auto& l : late_)
      if (l.complete && l.receives())
        (void)check_settings(checked_payload(l.recv, l.req->received(0), l.peer), l.peer, l.round);
  }

  [[noreturn]] void rethrow_decode(const decode_error& x, int peer, std::uint64_t round) {
    throw decode_error("gossip::mix",
                       "the payload from rank " + std::to_string(peer) + " in round " +
                           std::to_string(round) + ": " + x.what(),
                       rank());
  }
  [[noreturn]] void rethrow_decode(const decode_error& x, int peer) {
    rethrow_decode(x, peer, round_);
  }

  // Plain averaging where every neighbour heard from weighs the same (the regular
  // topologies): x += γ w (Σ_j x_j − k x), each payload decoded straight into the sum.
  // Returns false (and does nothing) where the weights differ.
  bool apply_uniform_averaging() {
    double w = 0.0;
    std::size_t k = 0;
    for (const auto& e : ex_) {
      if (e.state != outcome::done || !e.receives()) continue;
      if (k++ > 0 && e.in_w != w) return false;
      w = e.in_w;
    }
    if (k == 0) return true;
    std::fill(delta_.begin(), delta_.end(), 0.0f);
    for (auto& e : ex_) {
      if (e.state != outcome::done || !e.receives()) continue;
      try {
        codec_.decode_add(received_payload(e), delta_);
      } catch (const decode_error& d) {
        rethrow_decode(d, e.peer);
      }
    }
    const auto gw = static_cast<float>(gamma_ * w);
    const auto kf = static_cast<float>(k);
    float* x = params_.data();
    const float* sum = delta_.data();
    for (std::size_t i = 0; i < n_; ++i) x[i] += gw * (sum[i] - kf * x[i]);
    return true;
  }

  void apply_averaging() {
    if constexpr (!lossy) {
      if (apply_uniform_averaging()) return;
    }
    const std::size_t n = n_;
    float* x = params_.data();
    float* delta = delta_.data();
    std::fill(delta_.begin(), delta_.end(), 0.0f);
    bool any = false;
    for (auto& e : ex_) {
      if (e.state != outcome::done || !e.receives()) continue;
      any = true;
      const auto w = static_cast<float>(e.in_w);
      const std::span<const std::byte> got = received_payload(e);
      edge& ed = edge_to(e.peer);
      if constexpr (lossy) {
        double theirs_omega = 1.0;
        try {
          add_to_copy(ed, read_omega(got, theirs_omega), ed.theirs);
        } catch (const decode_error& d) {
          rethrow_decode(d, e.peer);
        }
        // Both ends take the step from the same two numbers: the pair's terms cancel.
        const double mine_omega = e.sends() ? e.omega_sent : theirs_omega;
        const float g = edge_gamma(std::min(mine_omega, theirs_omega));
        last_gamma_ = std::min(last_gamma_, g);
        const auto gw = static_cast<float>(g * e.in_w);
        // ed.mine holds this rank's own payload already: added when it was posted.
        const float* th = ed.theirs.data();
        const float* mi = ed.mine.data();
        for (std::size_t i = 0; i < n; ++i) delta[i] += gw * (th[i] - mi[i]);
      } else {
        try {
          codec_.decode(got, scratch_);
        } catch (const decode_error& d) {
          rethrow_decode(d, e.peer);
        }
        const float* xj = scratch_.data();
        for (std::size_t i = 0; i < n; ++i) delta[i] += w * (xj[i] - x[i]);
      }
    }
    if (!any) return;
    if constexpr (lossy) {
      for (std::size_t i = 0; i < n; ++i) x[i] += delta[i];
      return;
    }
    const float gamma = gamma_;
    if (gamma == 1.0f) {
      for (std::size_t i = 0; i < n; ++i) x[i] += delta[i];
    } else {
      for (std::size_t i = 0; i < n; ++i) x[i] += gamma * delta[i];
    }
  }

  // The terms of the late exchanges that completed, oldest first, as their rounds would
  // have applied them: into late_delta_ (averaging: γ W_ij(t) (x_j(t) − x_i(t)), or with
  // the public copies γ W_ij(t) (x̂_{j→i}(t) − x̂_{i→j}(t))), or into delta_ and `w`
  // (push-sum: the share received is added, the share sent leaves home now). Returns
  // whether any applied; they leave late_.
  bool apply_late(double& w) {
    if (std::none_of(late_.begin(), late_.end(), [](const auto& l) { return l.complete; }))
      return false;
    const std::size_t n = n_;
    if (rule_ == mixing_rule::averaging) std::fill(late_delta_.begin(), late_delta_.end(), 0.0f);
    float* acc = rule_ == mixing_rule::averaging ? late_delta_.data() : delta_.data();
    for (auto& l : late_) {
      if (!l.complete) continue;
      edge& ed = edge_to(l.peer);
      if (rule_ == mixing_rule::averaging) {
        if (!l.receives()) continue;
        float g = gamma_;
        const std::span<const std::byte> got = received_payload(l);
        const float* own = l.own.data();
        try {
          if constexpr (lossy) {
            double theirs_omega = 1.0;
            // In order: before any later message.
            add_to_copy(ed, read_omega(got, theirs_omega), ed.theirs);
            g = edge_gamma(std::min(l.sends() ? l.omega_sent : theirs_omega, theirs_omega));
          } else {
            codec_.decode(got, scratch_);
          }
        } catch (const decode_error& d) {
          rethrow_decode(d, l.peer, l.round);
        }
        const auto gw = static_cast<float>(g * l.in_w);
        const float* xj = lossy ? ed.theirs.data() : scratch_.data();
        for (std::size_t i = 0; i < n; ++i) acc[i] += gw * (xj[i] - own[i]);
        continue;
      }
      if (l.sends()) {
        w -= l.weight_share;
        const float* own = l.own.data();
        for (std::size_t i = 0; i < n; ++i) acc[i] -= own[i];
      }
      if (l.receives()) w += receive_share(received_payload(l), ed, l.peer, l.round);
    }
    for (auto& l : late_)
      if (l.complete) recycle(l);
    std::erase_if(late_, [](const auto& l) { return l.complete; });
    return true;
  }

  // Push-sum: adds a received share's numerator to delta_ and returns its weight.
  double receive_share(std::span<const std::byte> got, edge& ed, int peer, std::uint64_t round) {
    double their_w = 0.0;
    try {
      wire_reader r(got, "gossip::mix");
      their_w = std::bit_cast<double>(r.get_u64());
      if (!std::isfinite(their_w) || their_w < 0.0)
        throw decode_error("gossip::mix", "push-sum weight " + std::to_string(their_w));
      if constexpr (lossy) {
        add_to_copy(ed, got.subspan(weight_bytes), ed.theirs);
      } else {
        ed.codec.decode_add(got.subspan(weight_bytes), delta_);
      }
    } catch (const decode_error& d) {
      rethrow_decode(d, peer, round);
    }
    if constexpr (lossy) {
      const float* th = ed.theirs.data();
      float* delta = delta_.data();
      for (std::size_t i = 0; i < n_; ++i) delta[i] += th[i];
    }
    return their_w;
  }

  // delta_ and `w` hold what late exchanges brought (zero and weight_ without any).
  void apply_push_sum(double w) {
    const std::size_t n = n_;
    float* delta = delta_.data();
    for (auto& e : ex_) {
      if (e.state != outcome::done) continue;
      edge& ed = edge_to(e.peer);
      if (e.sends()) {
        // The share left: what the peer decoded (the public copy), or the exact share.
        w -= e.weight_share;
        if constexpr (lossy) {
          const float* mi = ed.mine.data();
          for (std::size_t i = 0; i < n; ++i) delta[i] -= mi[i];
        } else {
          const auto share = static_cast<float>(e.out_w * e.share_gamma);
          for (std::size_t i = 0; i < n; ++i) delta[i] -= share * x_[i];
        }
      }
      if (e.receives()) w += receive_share(received_payload(e), ed, e.peer, round_);
    }
    finish_push_sum(w);
  }

  void finish_push_sum(double w) {
    if (!(w > 0.0) || !std::isfinite(w))
      throw error(make_error_code(errc::internal), "gossip::mix", rank(),
                  "the push-sum weight became " + std::to_string(w) + " in round " +
                      std::to_string(round_));
    weight_ = w;
    const auto inv = static_cast<float>(1.0 / w);
    float* z = params_.data();
    const float* delta = delta_.data();
    for (std::size_t i = 0; i < n_; ++i) z[i] = (x_[i] + delta[i]) * inv;
  }

  void finish_mix() {
    try {
      wait_round();
      {
        scoped_timer timer(counters_.decode_ns);
        check_received(true);
        if (rule_ == mixing_rule::averaging) {
          double unused = 0.0;
          const bool late = apply_late(unused);
          apply_averaging();
          if (late) add_late_delta();
        } else {
          std::fill(delta_.begin(), delta_.end(), 0.0f);
          double w = weight_;
          (void)apply_late(w);
          apply_push_sum(w);
        }
      }
    } catch (const std::exception& x) {
      broken_ = x.what();
      abandon_round();
      throw;
    }
    for (auto& e : ex_) e.req.reset();
    in_flight_ = false;
    ++round_;
  }

  void add_late_delta() {
    float* x = params_.data();
    const float* d = late_delta_.data();
    for (std::size_t i = 0; i < n_; ++i) x[i] += d[i];
  }

  void abandon_round() noexcept {
    for (auto& e : ex_) {
      // Still posted: its buffers go with it (retired when the object goes).
      if (e.req) {
        try {
          go_late(e);
          continue;
        } catch (...) {
        }
      }
      e.req.reset();
    }
    in_flight_ = false;
  }

  T* t_;
  G topo_;
  C codec_;
  O opt_;
  gossip_options o_;
  float gamma_ = std::numeric_limits<float>::quiet_NaN();
  // The smallest step this rank took in the round in flight or the last one (the
  // steps of compressed gossip at the default γ fall below gamma_ with ω̂).
  float last_gamma_ = std::numeric_limits<float>::quiet_NaN();
  compression_quality quality_;
  mixing_rule rule_ = mixing_rule::averaging;
  std::uint64_t round_ = 0;
  double weight_ = 1.0;
  traffic_counters counters_;
  std::vector<dropped_peer> dropped_;
  std::vector<bool> failed_;
  std::vector<int> failed_list_;
  std::vector<bool> silent_;     // found silent: skipped without waiting until it answers
  std::vector<bool> late_open_;  // poll_late: peers with a late exchange still open
  std::vector<std::unique_ptr<edge>> edges_;
  std::vector<exchange> ex_;
  std::vector<float> scratch_, delta_, x_, late_delta_, gained_;
  std::shared_ptr<std::vector<std::byte>> plain_;
  std::size_t plain_bytes_ = 0;
  std::vector<late_exchange> late_;            // in the order of their rounds
  std::vector<std::vector<std::byte>> spare_;  // buffers of completed late exchanges
  std::size_t n_ = 0;
  bool sized_ = false;
  bool in_flight_ = false;
  host_view<float> params_;
  std::string broken_;
};

// The backend models Communicator over any codec and transport that model their concepts
// (checked with the least of each; comm/allreduce.hpp says why).
static_assert(
    Communicator<gossip<detail::codec_archetype, detail::transport_archetype, ring_topology>>);

}  // namespace v0
}  // namespace gradcomm

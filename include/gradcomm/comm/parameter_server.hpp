// gradcomm/comm/parameter_server.hpp — the parameter-server backend: workers push
// gradients, the server applies the optimizer on every arrival and sends the parameters
// back, without waiting for the other workers (unless a staleness bound says so).
//
//   using ps_t = gradcomm::parameter_server<gradcomm::error_feedback<gradcomm::scalar_quant_codec>,
//                                           gradcomm::local_transport>;
//   gradcomm::local_world world(3);  // rank 0 serves, ranks 1 and 2 train
//   world.run([&](gradcomm::local_transport& t) {
//     ps_t ps(t, {}, {.staleness = 2}, gradcomm::sgd{{.lr = 0.05f}});
//     std::vector<float> w = initial_weights(), g(w.size());
//     for (int it = 0; it < steps; ++it) {
//       compute_gradients(w, g);  // the server rank skips this in practice (see step())
//       ps.step(w, g);            // same call as gradcomm::allreduce and gradcomm::gossip
//     }
//   });  // a worker's destructor tells the servers it is done
//
// Roles: ranks [0, servers) are servers, the others workers. Server s owns the contiguous
// shard s of the n parameters (n split as evenly as possible). A worker's step pushes shard
// s of its gradient to server s, encoded with its own copy of the codec C (pass
// error_feedback<...> for error feedback: one residual per shard), and waits for each
// server's reply: the acknowledgement of the push together with the shard's parameters.
//
// How the server works (serve()): it keeps one any-source receive posted and polls it with
// test() (a posted receive from any_source: local and MPI take one; recv_any cannot be
// polled, and one that times out may drop a message that matches in that instant), so that
// it also notices silence and releases waiting workers at its own pace. A push of worker k
// at clock c (its c-th push, from 0) is decoded, applied by the optimizer O (sgd: the seed's
// w ← w − η·g; momentum; adam), the shard's version (updates applied so far) goes up by one,
// and only then is the push acknowledged. Pushes are matched to the worker's clock: each
// clock is applied exactly once (a repeated clock, a restored worker's, is acknowledged
// without being applied again; a clock beyond the next is refused).
//
// Consistency (ps_options::staleness = s): the reply to push c, after which worker k
// computes gradient c + 1, is held until every live worker has had c + 1 − s pushes
// applied (stale synchronous parallel). s = 0 is synchronous (bulk synchronous: gradient c
// of every worker is computed on the parameters after all gradients c − 1), s =
// unbounded_staleness asynchronous (the reply goes at once). Every applied update records
// the version its gradient was computed on (the version of the reply the worker had), so
// staleness is measured: server_stats() has its maximum, mean and histogram and, with
// ps_options::record_updates, updates() lists every update (enough to check the bound).
//
// Pulls: the reply carries either the shard's values as f32 (pull_encoding::f32: exact,
// and the server keeps nothing per worker), or (pull_encoding::codec, the default) the
// change since the worker's last pull, encoded with the pull codec P: the server keeps
// worker k's public copy ŵ_k (what k holds), sends q = P(w − ŵ_k) and both ends add D(q)
// to their copy, so the worker's parameters are ŵ_k bit for bit and w − ŵ_k is the
// server's error-feedback residual for k (what the codec dropped is sent later, never
// lost). The first reply to a worker carries the values (f32) to start the copies equal.
// Memory on a server: the shard (m floats), the optimizer's state, and in codec mode one
// public copy and one reply buffer per worker: O(workers × m).
//
// Faults: a worker silent for longer than worker_timeout (its time between steps, not
// counting the time it waits for a held reply), or one whose messages cannot be delivered
// (local transport: it failed), is declared lost: reported by rank in lost_workers() and
// through ps_options::on_worker_lost, left out of the staleness bound from then on, and
// its later pushes are refused. Every update the server acknowledged stays applied. A
// worker's step() throws timeout_error or peer_error naming the server that did not reply.
// With Open MPI a process that exits ends the whole job (mpi_transport's note): what
// survives there is a worker that stops talking, which the server reports like any other.
// The server's state (shard, optimizer state, versions, clocks, public copies) and a
// worker's (clock, versions, codec states) can be saved and restored (save_state /
// load_state) to continue bit for bit.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// No staleness bound: the asynchronous parameter server (replies go at once).
///
///   gradcomm::ps_options o{.staleness = gradcomm::unbounded_staleness};
inline constexpr std::uint64_t unbounded_staleness = std::numeric_limits<std::uint64_t>::max();

/// What a pull sends: the change since the worker's last pull encoded with the pull codec
/// (the server keeps a public copy per worker), or the shard's values as f32.
///
///   gradcomm::ps_options o{.pull = gradcomm::pull_encoding::f32};
enum class pull_encoding : unsigned char { codec, f32 };

/// A worker the server declared lost: its rank, the updates of it that were applied (all of
/// them acknowledged or about to be: none is undone) and why.
///
///   for (const auto& l : ps.lost_workers()) log(l.rank, l.reason);
struct lost_worker {
  int rank = -1;
  std::uint64_t updates = 0;
  std::string reason;
};

/// Settings of a parameter_server; the same on every rank.
///
///   gradcomm::ps_options o{.servers = 2, .staleness = 0, .worker_timeout =
///   std::chrono::seconds(5)};
struct ps_options {
  /// Ranks [0, servers) serve, one shard each; the others are workers.
  int servers = 1;
  /// The bound s: a worker at clock c waits until every live worker reached c − s. 0 is
  /// synchronous; unbounded_staleness asynchronous.
  std::uint64_t staleness = unbounded_staleness;
  pull_encoding pull = pull_encoding::codec;
  /// Silence after which a worker is declared lost; 0: half the transport's timeout. Must be
  /// shorter than the transport's timeout (a worker held that long would time out itself).
  std::chrono::milliseconds worker_timeout{0};
  /// Pushes travel under `tag`, replies under `tag + 1` (below 32767 for MPI).
  int tag = 29000;
  /// The seed of stochastic codecs' streams: (seed, clock, worker, shard) keys a push,
  /// (seed, version, worker, shard) a pull.
  std::uint64_t seed = 0;
  /// Keep every applied update in updates() (memory grows with the run: for tests).
  bool record_updates = false;
  /// Called on the server's thread when it declares a worker lost.
  std::function<void(const lost_worker&)> on_worker_lost = nullptr;
};

/// One applied update: worker `worker` (its rank), its push number `clock`, the version of
/// the parameters its gradient was computed on and the version it produced (the shard's
/// update count after it). Staleness = version_applied − 1 − version_seen.
///
///   for (const auto& u : ps.updates()) max_stale = std::max(max_stale, u.staleness());
struct ps_update {
  int worker = -1;
  std::uint64_t clock = 0;
  std::uint64_t version_seen = 0;
  std::uint64_t version_applied = 0;
  std::uint64_t staleness() const noexcept { return version_applied - 1 - version_seen; }
};

/// What a server did so far.
///
///   auto s = ps.server_stats();
///   std::printf("%llu updates, staleness max %llu mean %.2f\n", s.version, s.max_staleness,
///               s.mean_staleness);
struct ps_server_stats {
  std::uint64_t version = 0;         ///< updates applied to this shard
  std::uint64_t replies = 0;         ///< acknowledgements and pulls sent
  std::uint64_t duplicates = 0;      ///< pushes of a clock already applied (not applied again)
  std::uint64_t refused = 0;         ///< pushes refused (lost worker, clock gap, bad payload)
  std::uint64_t bytes_received = 0;  ///< message bytes of pushes, pulls and goodbyes
  std::uint64_t bytes_sent = 0;      ///< message bytes of replies
  std::uint64_t max_staleness = 0;   ///< in versions: updates applied between read and apply
  double mean_staleness = 0.0;
  /// Bucket 0 counts staleness 0, bucket b ≥ 1 staleness in [2^(b−1), 2^b); the last
  /// bucket everything above.
  std::array<std::uint64_t, 24> staleness_histogram{};
  std::vector<std::uint64_t> applied;  ///< updates applied per worker (index rank − servers)
  int active = 0;                      ///< workers still training
  int finished = 0;                    ///< workers that said goodbye
  int lost = 0;                        ///< workers declared lost
};

namespace detail {

inline constexpr std::uint32_t ps_magic = 0x53504347u;        // "GCPS"
inline constexpr std::uint32_t ps_state_magic = 0x54504347u;  // "GCPT"
inline constexpr std::uint8_t ps_state_version = 1;
inline constexpr std::size_t ps_header_bytes = 40;
inline constexpr std::size_t ps_reason_bytes = 512;  // room for a refusal's reason

enum class ps_kind : std::uint8_t {
  push = 1,
  pull = 2,
  bye = 3,
  ack = 10,        // a push applied now
  duplicate = 11,  // a push of a clock applied before
  pulled = 12,     // a pull
  refused = 13,    // body: the reason
};
inline constexpr std::uint8_t ps_flag_need_values = 1;
enum class ps_body : std::uint8_t { none = 0, values = 1, delta = 2 };

// The fixed header of every message; `who` is the sender's rank.
struct ps_header {
  ps_kind kind{};
  std::uint8_t aux = 0;  // worker → server: flags; server → worker: ps_body
  int who = -1;
  std::uint64_t clock = 0;
  std::uint64_t version = 0;  // push: the version seen; reply: the version sent
  std::uint64_t extra = 0;    // worker → server: n; reply: the least live clock
};

inline void ps_write_header(std::span<std::byte> out, const ps_header& h, const char* call) {
  wire_writer w(out, call);
  w.put_u32(ps_magic);
  w.put_u8(static_cast<std::uint8_t>(h.kind));
  w.put_u8(h.aux);
  w.put_u16(0);
  w.put_u32(static_cast<std::uint32_t>(h.who));
  w.put_u32(0);
  w.put_u64(h.clock);
  w.put_u64(h.version);
  w.put_u64(h.extra);
}

inline ps_header ps_read_header(std::span<const std::byte> in, const char* call) {
  wire_reader r(in, call);
  if (const std::uint32_t m = r.get_u32(); m != ps_magic)
    throw decode_error(call, "not a parameter-server message: magic " + std::to_string(m));
  ps_header h;
  h.kind = static_cast<ps_kind>(r.get_u8());
  h.aux = r.get_u8();
  if (r.get_u16() != 0) throw decode_error(call, "reserved header bytes are not zero");
  h.who = static_cast<int>(r.get_u32());
  if (r.get_u32() != 0) throw decode_error(call, "reserved header bytes are not zero");
  h.clock = r.get_u64();
  h.version = r.get_u64();
  h.extra = r.get_u64();
  return h;
}

// Shard s of n elements over `parts` servers: sizes differ by at most one.
struct ps_range {
  std::size_t lo = 0, hi = 0;
  std::size_t size() const noexcept { return hi - lo; }
};
inline ps_range ps_shard(std::size_t n, int parts, int s) noexcept {
  const auto p = static_cast<std::size_t>(parts), us = static_cast<std::size_t>(s);
  const std::size_t base = n / p, extra = n % p;
  const std::size_t lo = base * us + std::min(us, extra);
  return {lo, lo + base + (us < extra ? 1 : 0)};
}

// The default pull codec: the one C declares (codec.hpp, T4: error_feedback's inner codec),
// C itself when stateless, otherwise the f32 values (identity_codec, the protocol's own
// body format).
template <class C>
struct ps_pull_codec {
  using type = identity_codec;
  static type make(const C&) { return identity_codec{}; }
};
template <has_pull_codec C>
struct ps_pull_codec<C> {
  using type = decltype(pull_codec_of(std::declval<const C&>()));
  static type make(const C& c) { return pull_codec_of(c); }
};

// Polling with a backoff: yield while the wait is young, then short, growing sleeps.
class ps_backoff {
 public:
  void pause() {
    using namespace std::chrono;
    if (steady_clock::now() - start_ < microseconds(200)) {
      std::this_thread::yield();
      return;
    }
    nap_ = nap_.count() == 0 ? microseconds(10) : std::min(nap_ * 2, microseconds(500));
    std::this_thread::sleep_for(nap_);
  }
  void reset() noexcept {
    start_ = std::chrono::steady_clock::now();
    nap_ = std::chrono::microseconds(0);
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::microseconds nap_{0};
};

inline unsigned ps_histogram_bucket(std::uint64_t s) noexcept {
  unsigned b = 0;
  while (s != 0 && b < 23) {
    s >>= 1;
    ++b;
  }
  return b;
}

}  // namespace detail

/// The parameter-server backend (see the top of this header). Models Communicator.
///  - C: the push codec, one copy per shard on every worker (error_feedback<...> for error
///    feedback);
///  - T: an AsyncTransport (a receive from any source: local, MPI; not NCCL);
///  - O: the optimizer the servers run (gradcomm::sgd, gradcomm::adam, or any Optimizer);
///  - P: the pull codec (stateless); by default C's inner codec, C itself when stateless.
///
/// On a worker rank: step(params, grads) pushes and pulls; pull(params) only pulls;
/// finish() says goodbye (the destructor does it otherwise). On a server rank: serve(params)
/// runs the server until every worker finished or was lost (params gives the initial values
/// and receives the shard's final ones); step() does the same on its first call, so one
/// training loop runs on every rank. Every rank constructs it with the same options and
/// codec parameters, and passes tensors of the same n (fixed by the first call).
///
///   gradcomm::parameter_server<gradcomm::identity_codec, gradcomm::local_transport> ps(t);
///   if (ps.is_server()) ps.serve(w); else for (...) ps.step(w, g);
template <class C, class T, class O = sgd, class P = typename detail::ps_pull_codec<C>::type>
class parameter_server {
  static_assert(Codec<C>,
                "gradcomm::parameter_server<C, T>: C must model gradcomm::Codec "
                "(codec/codec.hpp)");
  static_assert(AsyncTransport<T>,
                "gradcomm::parameter_server<C, T>: T must model gradcomm::AsyncTransport "
                "(receive from any source, transport/transport.hpp): the server takes pushes "
                "from whichever worker sends first. NCCL has no any-source receive: use the "
                "all-reduce or gossip backends over it, or MPI for the parameter server");
  static_assert(Optimizer<O>,
                "gradcomm::parameter_server<C, T, O>: O must model gradcomm::Optimizer "
                "(comm/optimizer.hpp), e.g. gradcomm::sgd or gradcomm::adam");
  static_assert(Codec<P> && !P::traits.stateful,
                "gradcomm::parameter_server<C, T, O, P>: the pull codec P must be a stateless "
                "Codec (the server's public copies are its error feedback)");

  using clock = std::chrono::steady_clock;

 public:
  using codec_type = C;
  using pull_codec_type = P;
  using transport_type = T;
  using optimizer_type = O;

  /// A parameter server on `transport` (which must outlive it). Throws invalid_argument for
  /// a world without a worker, a bad server count, or a worker_timeout not below the
  /// transport's timeout.
  ///
  ///   gradcomm::parameter_server<gradcomm::identity_codec, gradcomm::local_transport> ps(
  ///       t, {}, {.staleness = 0}, gradcomm::sgd{{.lr = 0.1f}});
  parameter_server(T& transport, C codec = C{}, ps_options options = {}, O optimizer = {})
      : parameter_server(transport, codec, detail::ps_pull_codec<C>::make(codec),
                         std::move(options), std::move(optimizer)) {}

  /// With an explicit pull codec.
  ///
  ///   ps_t ps(t, ef_codec, gradcomm::scalar_quant_codec({.bits = 4}), {}, gradcomm::adam{});
  parameter_server(T& transport, C codec, P pull_codec, ps_options options, O optimizer = {})
      : t_(&transport),
        proto_(std::move(codec)),
        pull_(std::move(pull_codec)),
        opt_(std::move(options)),
        optimizer_(std::move(optimizer)) {
    static constexpr const char* call = "parameter_server";
    const int size = t_->size(), rank = t_->rank();
    if (opt_.servers < 1 || opt_.servers >= size)
      detail::throw_invalid_argument(call,
                                     std::to_string(opt_.servers) + " servers in a world of " +
                                         std::to_string(size) +
                                         " ranks: at least one server and one worker are needed",
                                     rank);
    if (opt_.tag < 0 || opt_.tag == std::numeric_limits<int>::max())
      detail::throw_invalid_argument(call, "tag " + std::to_string(opt_.tag), rank);
    if (opt_.worker_timeout.count() == 0) opt_.worker_timeout = t_->timeout() / 2;
    if (opt_.worker_timeout.count() < 0 || opt_.worker_timeout >= t_->timeout())
      detail::throw_invalid_argument(
          call,
          "worker_timeout of " + std::to_string(opt_.worker_timeout.count()) +
              " ms: it must be positive and below the transport's timeout (" +
              std::to_string(t_->timeout().count()) + " ms), or a held worker times out first",
          rank);
    if (is_server()) {
      slots_.resize(static_cast<std::size_t>(workers()));
    } else {
      push_.assign(static_cast<std::size_t>(opt_.servers), proto_);
      version_seen_.assign(static_cast<std::size_t>(opt_.servers), 0);
    }
  }

  parameter_server(const parameter_server&) = delete;
  parameter_server& operator=(const parameter_server&) = delete;

  /// A worker that did not finish() says goodbye here (errors are swallowed: call finish()
  /// to see them), unless an exception is unwinding through it: a worker that failed is
  /// left for the servers to declare lost, as one that was killed would be.
  ~parameter_server() {
    if (!is_server() && !finished_ && broken_.empty() &&
        std::uncaught_exceptions() == exceptions_at_birth_) {
      try {
        finish();
      } catch (...) {
      }
    }
  }

  /// This rank and the world's size (servers and workers).
  int rank() const { return t_->rank(); }
  int size() const { return t_->size(); }
  /// Servers (ranks [0, servers())) and workers (the other ranks).
  int servers() const noexcept { return opt_.servers; }
  int workers() const { return t_->size() - opt_.servers; }
  bool is_server() const { return t_->rank() < opt_.servers; }
  /// The elements [lo, hi) of n that server s owns.
  ///
  ///   auto [lo, hi] = ps.shard(0, w.size());
  std::pair<std::size_t, std::size_t> shard(int s, std::size_t n) const noexcept {
    const auto r = detail::ps_shard(n, opt_.servers, s);
    return {r.lo, r.hi};
  }

  /// One training step. On a worker: pushes grads (each server its shard), waits for every
  /// server's acknowledgement and writes the pulled parameters into params. On a server: the
  /// first call serves the whole run (serve(params)); later calls return at once.
  /// Throws timeout_error / peer_error naming a server that did not reply or failed, and
  /// peer_error when a server refused the push (this worker was declared lost); after an
  /// error the object is unusable.
  ///
  ///   ps.step(w, g);
  void step(host_view<float> params, host_view<const float> grads) {
    static constexpr const char* call = "parameter_server::step";
    if (is_server()) {
      if (!served_) serve(params);
      return;
    }
    if (params.size() != grads.size())
      detail::throw_invalid_argument(call,
                                     std::to_string(params.size()) + " parameters but " +
                                         std::to_string(grads.size()) + " gradients",
                                     rank());
    worker_ready(call, params.size());
    exchange(call, detail::ps_kind::push, params, grads);
    ++clock_;
  }

  /// Pulls the parameters without pushing (not held by the staleness bound): a worker
  /// that starts from other values than the servers', or wants fresh ones.
  ///
  ///   ps.pull(w);
  void pull(host_view<float> params) {
    static constexpr const char* call = "parameter_server::pull";
    if (is_server()) detail::throw_invalid_argument(call, "called on a server rank", rank());
    worker_ready(call, params.size());
    exchange(call, detail::ps_kind::pull, params, {});
  }

  /// Tells every server this worker is done: it leaves the staleness bound and is not
  /// reported lost. Later step() calls throw. Called by the destructor otherwise.
  ///
  ///   ps.finish();
  void finish() {
    static constexpr const char* call = "parameter_server::finish";
    if (is_server() || finished_) return;
    check_usable(call);
    finished_ = true;
    std::vector<std::array<std::byte, detail::ps_header_bytes>> msg(push_.size());
    std::vector<send_op> sends;
    for (int s = 0; s < opt_.servers; ++s) {
      detail::ps_write_header(msg[static_cast<std::size_t>(s)],
                              {detail::ps_kind::bye, 0, rank(), clock_, 0, n_}, call);
      sends.push_back({s, opt_.tag, msg[static_cast<std::size_t>(s)]});
    }
    typename T::request req;
    guarded(call, [&] {
      req = t_->post(sends, {});
      t_->wait(req);
    });
    counters_.add_sent(detail::ps_header_bytes * sends.size(), sends.size());
  }

  /// The number of pushes this worker made (its clock).
  std::uint64_t clock_count() const noexcept { return clock_; }
  /// This worker's push codec of shard s (its error-feedback residual, for instance).
  ///
  ///   double owed = ps.push_codec(0).residual_norm();
  const C& push_codec(int s) const { return push_.at(static_cast<std::size_t>(s)); }
  /// The version of server s's shard that this worker's parameters hold.
  std::uint64_t version_seen(int s) const { return version_seen_.at(static_cast<std::size_t>(s)); }

  /// Runs the server until every worker finished or was lost. `params` (n elements, the
  /// same n as the workers') gives the shard's initial values on the first call (unless
  /// load_state gave them) and receives the shard's values when it returns.
  ///
  ///   if (ps.is_server()) { ps.serve(w); return; }
  void serve(host_view<float> params) {
    serve(params, [] { return false; });
  }

  /// Serves until every worker finished or was lost, or `stop()` returns true (asked
  /// between messages); a later serve() goes on where this one stopped (e.g. after
  /// save_state). Workers held by the staleness bound keep waiting in between.
  ///
  ///   ps.serve(w, [&] { return ps.server_stats().version >= 1000; });
  ///   ps.save_state(ckpt);
  ///   ps.serve(w);
  template <class Stop>
  requires std::predicate<Stop&>
  void serve(host_view<float> params, Stop stop) {
    static constexpr const char* call = "parameter_server::serve";
    if (!is_server()) detail::throw_invalid_argument(call, "called on a worker rank", rank());
    server_ready(call, params);
    served_ = true;
    const auto now = clock::now();
    for (auto& s : slots_)
      if (!s.gated) s.last_heard = now;  // a pause between serve() calls is not silence
    if (!rx_) post_receive();
    detail::ps_backoff backoff;
    while (active_workers() > 0 && !stop()) {
      bool got = false;
      try {
        got = t_->test(*rx_);
      } catch (const peer_error& e) {
        // The local transport says so only when every other rank failed.
        lose_all_active(std::string("the transport reports every other rank failed: ") + e.what());
        break;
      } catch (const error& e) {
        if (e.code() != make_error_code(errc::buffer_too_small)) throw;
        on_oversized(e);
        continue;
      }
      if (got) {
        const std::size_t bytes = rx_->received(0);
        int source = -1;
        if constexpr (requires(const typename T::request& q) {
                        { q.source(0) } -> std::convertible_to<int>;
                      })
          source = rx_->source(0);
        ++stats_.messages;
        stats_.bytes_received += bytes;
        counters_.add_received(bytes);
        on_message(std::span<const std::byte>(rx_buf_.data(), bytes), source);
        post_receive();
        backoff.reset();
      } else {
        backoff.pause();
      }
      housekeeping();
    }
    settle_sends();
    std::copy(w_.begin(), w_.end(), params.data() + range_.lo);
  }

  /// This server's statistics (call on the server's thread or after serve returned).
  ps_server_stats server_stats() const {
    ps_server_stats s;
    s.version = version_;
    s.replies = stats_.replies;
    s.duplicates = stats_.duplicates;
    s.refused = stats_.refused;
    s.bytes_received = stats_.bytes_received;
    s.bytes_sent = stats_.bytes_sent;
    s.max_staleness = stats_.max_staleness;
    s.mean_staleness = stats_.staleness_n ? static_cast<double>(stats_.staleness_sum) /
                                                static_cast<double>(stats_.staleness_n)
                                          : 0.0;
    s.staleness_histogram = stats_.histogram;
    for (const auto& w : slots_) {
      s.applied.push_back(w.count);
      s.active += w.state == slot_state::active;
      s.finished += w.state == slot_state::finished;
      s.lost += w.state == slot_state::lost;
    }
    return s;
  }

  /// Updates applied to this server's shard so far (cheap: for serve()'s stop predicate).
  ///
  ///   ps.serve(w, [&] { return ps.version() >= 1000; });
  std::uint64_t version() const noexcept { return version_; }

  /// Every applied update, in order (only with ps_options::record_updates).
  std::span<const ps_update> updates() const noexcept { return log_; }
  /// The workers this server declared lost, in the order found.
  std::span<const lost_worker> lost_workers() const noexcept { return lost_; }
  /// The server's shard of the parameters (its current values).
  host_view<const float> shard_values() const noexcept { return {w_.data(), w_.size()}; }
  /// The server's public copy of what worker `rank` holds of the shard (codec pulls only;
  /// empty before its first pull): bit for bit the worker's parameters.
  host_view<const float> public_copy(int worker_rank) const {
    const auto& s = slot_of(worker_rank, "parameter_server::public_copy");
    return {s.known.data(), s.known.size()};
  }

  O& optimizer() noexcept { return optimizer_; }
  const ps_options& options() const noexcept { return opt_; }
  /// Bytes and messages this rank sent and received through the server protocol, time
  /// encoding, decoding and waiting.
  const traffic_counters& counters() const noexcept { return counters_; }

  /// Bytes save_state writes.
  std::size_t state_bytes() const {
    std::size_t b = 24;
    if (is_server()) {
      b += 8 + 8 + optimizer_.state_bytes();
      for (const auto& s : slots_) b += 16 + s.known.size() * sizeof(float);
      b += w_.size() * sizeof(float);
    } else {
      b += 8;
      for (const auto& c : push_) {
        b += 16;
        if constexpr (C::traits.stateful) b += c.state_bytes();
      }
    }
    return b;
  }

  /// Writes this rank's state into `out` (at least state_bytes()) and returns its size. A
  /// server: n, its shard's values and version, the optimizer's state, each worker's clock,
  /// standing and public copy. A worker: n, its clock, the versions it holds, its codec
  /// states. Statistics and the update log are not saved; neither is a reply held by the
  /// staleness bound (a restored worker pushes that clock again, and gets it acknowledged
  /// without a second application).
  ///
  ///   std::vector<std::byte> ckpt(ps.state_bytes());
  ///   ckpt.resize(ps.save_state(ckpt));
  std::size_t save_state(std::span<std::byte> out) const {
    static constexpr const char* call = "parameter_server::save_state";
    const std::size_t need = state_bytes();
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size(), rank());
    wire_writer w(out, call);
    w.put_u32(detail::ps_state_magic);
    w.put_u8(detail::ps_state_version);
    w.put_u8(is_server() ? 0 : 1);
    w.put_u16(static_cast<std::uint16_t>(opt_.servers));
    w.put_u32(static_cast<std::uint32_t>(rank()));
    w.put_u32(static_cast<std::uint32_t>(workers()));
    w.put_u64(n_);
    if (is_server()) {
      w.put_u64(version_);
      w.put_bytes(std::as_bytes(std::span<const float>(w_)));
      put_sized(w, optimizer_);
      for (const auto& s : slots_) {
        w.put_u8(static_cast<std::uint8_t>(s.state));
        w.put_u8(s.synced ? 1 : 0);
        w.put_u16(0);
        w.put_u32(0);
        w.put_u64(s.count);
        w.put_bytes(std::as_bytes(std::span<const float>(s.known)));
      }
      return w.position();
    }
    w.put_u64(clock_ | (got_values_ ? std::uint64_t{1} << 63 : 0));
    for (std::size_t s = 0; s < push_.size(); ++s) {
      w.put_u64(version_seen_[s]);
      if constexpr (C::traits.stateful)
        put_sized(w, push_[s]);
      else
        w.put_u64(0);
    }
    return w.position();
  }

  /// Replaces this rank's state by one save_state wrote on the same rank of a world of the
  /// same shape (servers, workers). Throws decode_error naming the defect, changing nothing.
  ///
  ///   ps.load_state(ckpt);
  ///   if (ps.is_server()) ps.serve(w); else ps.step(w, g);
  void load_state(std::span<const std::byte> bytes) {
    static constexpr const char* call = "parameter_server::load_state";
    wire_reader r(bytes, call);
    if (r.get_u32() != detail::ps_state_magic)
      throw decode_error(call, "not a parameter-server state (bad magic)", rank());
    if (const auto v = r.get_u8(); v != detail::ps_state_version)
      throw decode_error(call, "state version " + std::to_string(v), rank());
    const bool server = r.get_u8() == 0;
    const int servers = r.get_u16();
    const int who = static_cast<int>(r.get_u32());
    const int nworkers = static_cast<int>(r.get_u32());
    if (server != is_server() || servers != opt_.servers || who != rank() || nworkers != workers())
      throw decode_error(call,
                         "a state of rank " + std::to_string(who) + " (" +
                             (server ? "server" : "worker") + ") of " + std::to_string(servers) +
                             " servers and " + std::to_string(nworkers) +
                             " workers; this is rank " + std::to_string(rank()) + " of " +
                             std::to_string(opt_.servers) + " and " + std::to_string(workers()),
                         rank());
    const std::uint64_t n = r.get_u64();
    if (server) {
      const auto range = detail::ps_shard(static_cast<std::size_t>(n), opt_.servers, rank());
      const std::uint64_t version = r.get_u64();
      if (range.size() > r.remaining() / sizeof(float))
        throw decode_error(call, "truncated shard values", rank());
      std::vector<float> w(range.size());
      if (!w.empty()) std::memcpy(w.data(), r.take(w.size() * sizeof(float)).data(), w.size() * 4);
      O opt = optimizer_;
      opt.load_state(r.take(r.get_u64()));
      std::vector<slot> slots(slots_.size());
      for (auto& s : slots) {
        const auto st = r.get_u8();
        if (st > 2) throw decode_error(call, "worker standing " + std::to_string(st), rank());
        s.state = static_cast<slot_state>(st);
        s.synced = r.get_u8() != 0;
        r.get_u16();
        r.get_u32();
        s.count = r.get_u64();
        if (s.synced && opt_.pull == pull_encoding::codec) {
          if (range.size() > r.remaining() / sizeof(float))
            throw decode_error(call, "truncated public copy", rank());
          s.known.resize(range.size());
          if (!s.known.empty())
            std::memcpy(s.known.data(), r.take(s.known.size() * 4).data(), s.known.size() * 4);
        }
      }
      r.expect_end();
      n_ = n;
      sized_ = true;
      range_ = range;
      version_ = version;
      w_ = std::move(w);
      optimizer_ = std::move(opt);
      slots_ = std::move(slots);
      for (std::size_t k = 0; k < slots_.size(); ++k)
        if (slots_[k].state == slot_state::lost)
          lost_.push_back({worker_rank(k), slots_[k].count, "lost before the checkpoint"});
      size_server_buffers();
      return;
    }
    const std::uint64_t c = r.get_u64();
    std::vector<std::uint64_t> seen(push_.size());
    std::vector<C> codecs = push_;
    for (std::size_t s = 0; s < push_.size(); ++s) {
      seen[s] = r.get_u64();
      const std::uint64_t cb = r.get_u64();
      if constexpr (C::traits.stateful)
        codecs[s].load_state(r.take(cb));
      else if (cb != 0)
        throw decode_error(call, "codec state for a stateless codec", rank());
    }
    r.expect_end();
    n_ = n;
    sized_ = true;
    clock_ = c & ~(std::uint64_t{1} << 63);
    got_values_ = (c >> 63) != 0;
    version_seen_ = std::move(seen);
    push_ = std::move(codecs);
    size_worker_buffers();
  }

 private:
  enum class slot_state : std::uint8_t { active = 0, finished = 1, lost = 2 };

  // The server's view of one worker.
  struct slot {
    slot_state state = slot_state::active;
    std::uint64_t count = 0;  // pushes applied
    bool gated = false;       // a reply is held by the staleness bound
    bool synced = false;      // `known` holds what the worker holds
    bool need_values = false;
    detail::ps_kind pending_kind = detail::ps_kind::ack;
    std::uint64_t pending_clock = 0;
    clock::time_point last_heard{};
    std::vector<float> known;      // the public copy ŵ (codec pulls)
    std::vector<std::byte> reply;  // the reply in flight
    std::optional<typename T::request> send;
  };

  struct server_tally {
    std::uint64_t replies = 0, duplicates = 0, refused = 0, messages = 0;
    std::uint64_t bytes_received = 0, bytes_sent = 0;
    std::uint64_t max_staleness = 0, staleness_sum = 0, staleness_n = 0;
    std::array<std::uint64_t, 24> histogram{};
  };

  // u64 length, then the state of `x` (an optimizer or a codec): state_bytes() may be an
  // upper bound, so the length written is the one save_state returns.
  template <class X>
  static void put_sized(wire_writer& w, const X& x) {
    std::vector<std::byte> tmp(x.state_bytes());
    const std::size_t used = x.save_state(tmp);
    w.put_u64(used);
    w.put_bytes(std::span<const std::byte>(tmp.data(), used));
  }

  int worker_rank(std::size_t k) const noexcept { return opt_.servers + static_cast<int>(k); }

  const slot& slot_of(int worker_rank, const char* call) const {
    if (!is_server()) detail::throw_invalid_argument(call, "called on a worker rank", rank());
    if (worker_rank < opt_.servers || worker_rank >= size())
      detail::throw_invalid_argument(
          call, "rank " + std::to_string(worker_rank) + " is not a worker", rank());
    return slots_[static_cast<std::size_t>(worker_rank - opt_.servers)];
  }

  void check_usable(const char* call) const {
    if (!broken_.empty())
      throw error(make_error_code(errc::invalid_argument), call, rank(),
                  "unusable after an earlier failure: " + broken_);
    if (finished_)
      detail::throw_invalid_argument(call, "this worker already said goodbye (finish())", rank());
  }

  // ---- worker ---------------------------------------------------------------------

  void worker_ready(const char* call, std::size_t n) {
    check_usable(call);
    if (!sized_) {
      n_ = n;
      sized_ = true;
      size_worker_buffers();
    } else if (n != n_) {
      detail::throw_invalid_argument(
          call, std::to_string(n) + " parameters after " + std::to_string(n_), rank());
    }
  }

  void size_worker_buffers() {
    const auto S = static_cast<std::size_t>(opt_.servers);
    out_.resize(S);
    in_.resize(S);
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t m = detail::ps_shard(n_, opt_.servers, static_cast<int>(s)).size();
      out_[s].resize(detail::ps_header_bytes + proto_.max_encoded_bytes(m));
      in_[s].resize(detail::ps_header_bytes +
                    std::max({pull_.max_encoded_bytes(m), identity_codec{}.max_encoded_bytes(m),
                              detail::ps_reason_bytes}));
    }
  }

  void exchange(const char* call, detail::ps_kind kind, host_view<float> params,
                host_view<const float> grads) {
    const auto S = static_cast<std::size_t>(opt_.servers);
    std::vector<send_op> sends(S);
    std::vector<recv_op> recvs(S);
    const std::uint8_t flags = got_values_ ? 0 : detail::ps_flag_need_values;
    for (std::size_t s = 0; s < S; ++s) {
      const auto r = detail::ps_shard(n_, opt_.servers, static_cast<int>(s));
      std::size_t len = detail::ps_header_bytes;
      detail::ps_write_header(out_[s], {kind, flags, rank(), clock_, version_seen_[s], n_}, call);
      if (kind == detail::ps_kind::push) {
        if constexpr (StochasticCodec<C>)
          push_[s].set_stream({opt_.seed, static_cast<std::uint32_t>(clock_),
                               static_cast<std::uint32_t>(rank()), static_cast<std::uint32_t>(s)});
        scoped_timer timer(counters_.encode_ns);
        try {
          len += push_[s].encode(grads.subview(r.lo, r.size()),
                                 std::span<std::byte>(out_[s]).subspan(detail::ps_header_bytes));
        } catch (...) {
          // Shards before s were encoded (their feedback moved) but not sent.
          if (s > 0) broken_ = "an encode failed after other shards were encoded";
          throw;
        }
      }
      sends[s] = {static_cast<int>(s), opt_.tag, std::span<const std::byte>(out_[s].data(), len)};
      recvs[s] = {static_cast<int>(s), opt_.tag + 1, in_[s]};
    }
    typename T::request req;
    guarded(call, [&] {
      req = t_->post(sends, recvs);
      t_->wait(req);
    });
    for (std::size_t s = 0; s < S; ++s) {
      counters_.add_sent(sends[s].data.size());
      counters_.add_received(req.received(s));
    }
    // Every server's reply is checked before any is applied: a refusal leaves params alone.
    std::vector<detail::ps_header> hs(S);
    for (std::size_t s = 0; s < S; ++s) {
      const auto bytes = std::span<const std::byte>(in_[s].data(), req.received(s));
      try {
        hs[s] = detail::ps_read_header(bytes.first(std::min(bytes.size(), detail::ps_header_bytes)),
                                       call);
      } catch (const decode_error& e) {
        fail(e.reason());
        throw decode_error(call, "reply of server rank " + std::to_string(s) + ": " + e.reason(),
                           rank());
      }
      const auto& h = hs[s];
      const auto body = bytes.subspan(detail::ps_header_bytes);
      if (h.kind == detail::ps_kind::refused) {
        const std::string why(reinterpret_cast<const char*>(body.data()), body.size());
        fail("server rank " + std::to_string(s) + " refused: " + why);
        throw peer_error(call, rank(), static_cast<int>(s),
                         "server rank " + std::to_string(s) + " refused the " +
                             (kind == detail::ps_kind::push ? "push of clock " : "pull at clock ") +
                             std::to_string(clock_) + ": " + why);
      }
      const bool expected_kind =
          kind == detail::ps_kind::push
              ? (h.kind == detail::ps_kind::ack || h.kind == detail::ps_kind::duplicate)
              : h.kind == detail::ps_kind::pulled;
      std::string bad;
      if (!expected_kind)
        bad = "message kind " + std::to_string(static_cast<int>(h.kind));
      else if (h.who != static_cast<int>(s))
        bad = "it says it comes from rank " + std::to_string(h.who);
      else if (h.clock != clock_)
        bad = "it answers clock " + std::to_string(h.clock) + ", not " + std::to_string(clock_);
      else if (h.aux != static_cast<std::uint8_t>(detail::ps_body::values) &&
               (h.aux != static_cast<std::uint8_t>(detail::ps_body::delta) || !got_values_))
        bad = "body kind " + std::to_string(h.aux) + (got_values_ ? "" : " before the values");
      if (!bad.empty()) {
        fail(bad);
        throw decode_error(call, "reply of server rank " + std::to_string(s) + ": " + bad, rank());
      }
    }
    for (std::size_t s = 0; s < S; ++s) {
      const auto r = detail::ps_shard(n_, opt_.servers, static_cast<int>(s));
      const auto body = std::span<const std::byte>(in_[s].data(), req.received(s))
                            .subspan(detail::ps_header_bytes);
      scoped_timer timer(counters_.decode_ns);
      try {
        if (hs[s].aux == static_cast<std::uint8_t>(detail::ps_body::values))
          identity_codec{}.decode(body, params.subview(r.lo, r.size()));
        else
          pull_.decode_add(body, params.subview(r.lo, r.size()));
      } catch (const decode_error& e) {
        fail(e.reason());
        throw decode_error(call, "pull of server rank " + std::to_string(s) + ": " + e.reason(),
                           rank());
      }
      version_seen_[s] = hs[s].version;
    }
    got_values_ = true;
  }

  void fail(std::string why) {
    if (broken_.empty()) broken_ = std::move(why);
  }

  // Runs the post and wait of an exchange with the servers; a failure names the server and
  // leaves this object unusable (a push may or may not have been applied).
  template <class F>
  void guarded(const char* call, F&& f) {
    try {
      scoped_timer timer(counters_.wait_ns);
      f();
    } catch (const timeout_error& e) {
      fail(e.what());
      throw timeout_error(
          call, rank(), e.peer(),
          "server rank " + std::to_string(e.peer()) + " did not answer: " + e.reason());
    } catch (const peer_error& e) {
      fail(e.what());
      throw peer_error(call, rank(), e.peer(),
                       "server rank " + std::to_string(e.peer()) + " failed: " + e.reason());
    } catch (const std::exception& e) {
      fail(e.what());
      throw;
    }
  }

  // ---- server ---------------------------------------------------------------------

  void server_ready(const char* call, host_view<float> params) {
    if (!sized_) {
      n_ = params.size();
      sized_ = true;
      range_ = detail::ps_shard(n_, opt_.servers, rank());
      w_.assign(params.data() + range_.lo, params.data() + range_.hi);
      size_server_buffers();
    } else if (params.size() != n_) {
      detail::throw_invalid_argument(
          call, std::to_string(params.size()) + " parameters after " + std::to_string(n_), rank());
    }
  }

  void size_server_buffers() {
    const std::size_t m = range_.size();
    rx_buf_.resize(detail::ps_header_bytes + proto_.max_encoded_bytes(m));
    g_.resize(m);
    d_.resize(m);
    for (auto& s : slots_)
      s.reply.resize(detail::ps_header_bytes +
                     std::max({pull_.max_encoded_bytes(m), identity_codec{}.max_encoded_bytes(m),
                               detail::ps_reason_bytes}));
  }

  void post_receive() {
    rx_.reset();
    const recv_op r[] = {{any_source, opt_.tag, rx_buf_}};
    rx_.emplace(t_->post({}, r));
  }

  int active_workers() const noexcept {
    int a = 0;
    for (const auto& s : slots_) a += s.state == slot_state::active;
    return a;
  }

  // A message longer than the receive buffer: the transport consumed it. Its sender (where
  // the request can say) is declared lost, since it will wait for a reply in vain.
  void on_oversized(const error& e) {
    int source = -1;
    if constexpr (requires(const typename T::request& q) {
                    { q.source(0) } -> std::convertible_to<int>;
                  })
      source = rx_->source(0);
    ++stats_.refused;
    post_receive();
    if (source >= opt_.servers && source < size() &&
        slots_[static_cast<std::size_t>(source - opt_.servers)].state == slot_state::active)
      lose(static_cast<std::size_t>(source - opt_.servers),
           std::string("sent a message longer than any push: ") + e.reason());
    release_gates();
  }

  void on_message(std::span<const std::byte> msg, int source) {
    static constexpr const char* call = "parameter_server::serve";
    detail::ps_header h;
    try {
      h = detail::ps_read_header(msg.first(std::min(msg.size(), detail::ps_header_bytes)), call);
    } catch (const decode_error&) {
      ++stats_.refused;  // not ours or truncated: nobody to answer
      return;
    }
    if (h.who < opt_.servers || h.who >= size() || (source >= 0 && source != h.who)) {
      ++stats_.refused;
      return;
    }
    const auto k = static_cast<std::size_t>(h.who - opt_.servers);
    slot& s = slots_[k];
    if (h.kind == detail::ps_kind::bye) {
      if (s.state == slot_state::active) s.state = slot_state::finished;
      s.gated = false;
      release_gates();
      return;
    }
    if (h.kind != detail::ps_kind::push && h.kind != detail::ps_kind::pull) {
      ++stats_.refused;
      return;
    }
    if (s.state != slot_state::active) {
      refuse(k, h,
             s.state == slot_state::lost ? "this worker was declared lost: " + reason_of(k)
                                         : std::string("this worker said goodbye"));
      return;
    }
    s.last_heard = clock::now();
    if (h.extra != n_) {
      lose(k,
           "it has " + std::to_string(h.extra) + " parameters, the server " + std::to_string(n_));
      refuse(
          k, h,
          "parameter count " + std::to_string(h.extra) + ", the server has " + std::to_string(n_));
      release_gates();
      return;
    }
    if (s.gated) {
      lose(k, "it sent a message while its reply was held");
      refuse(k, h, "a message while a reply is outstanding");
      release_gates();
      return;
    }
    if ((h.aux & detail::ps_flag_need_values) != 0) s.need_values = true;
    if (h.kind == detail::ps_kind::pull) {
      reply(k, detail::ps_kind::pulled, h.clock);
      return;
    }
    if (h.clock < s.count) {  // applied before (a restored worker repeats it)
      ++stats_.duplicates;
      reply(k, detail::ps_kind::duplicate, h.clock);
      return;
    }
    if (h.clock > s.count || h.version > version_) {
      const std::string why = h.clock > s.count
                                  ? "clock " + std::to_string(h.clock) + " after " +
                                        std::to_string(s.count) + " applied pushes"
                                  : "it read version " + std::to_string(h.version) +
                                        " of a shard at version " + std::to_string(version_);
      lose(k, why);
      refuse(k, h, why);
      release_gates();
      return;
    }
    try {
      scoped_timer timer(counters_.decode_ns);
      proto_.decode(msg.subspan(detail::ps_header_bytes), host_view<float>(g_));
    } catch (const decode_error& e) {
      lose(k, "its push did not decode: " + e.reason());
      refuse(k, h, "the push did not decode: " + e.reason());
      release_gates();
      return;
    }
    optimizer_.apply(host_view<float>(w_), host_view<const float>(g_));
    const std::uint64_t stale = version_ - h.version;
    ++version_;
    ++s.count;
    stats_.max_staleness = std::max(stats_.max_staleness, stale);
    stats_.staleness_sum += stale;
    ++stats_.staleness_n;
    ++stats_.histogram[detail::ps_histogram_bucket(stale)];
    if (opt_.record_updates) log_.push_back({h.who, h.clock, h.version, version_});
    s.gated = true;
    s.pending_kind = detail::ps_kind::ack;
    s.pending_clock = h.clock;
    release_gates();
  }

  std::string reason_of(std::size_t k) const {
    for (const auto& l : lost_)
      if (l.rank == worker_rank(k)) return l.reason;
    return "unknown";
  }

  // The least clock among live workers (max when none is left).
  std::uint64_t min_live_clock() const noexcept {
    std::uint64_t m = std::numeric_limits<std::uint64_t>::max();
    for (const auto& s : slots_)
      if (s.state == slot_state::active) m = std::min(m, s.count);
    return m;
  }

  void release_gates() {
    for (;;) {
      const std::uint64_t least = min_live_clock();
      bool any = false;
      for (std::size_t k = 0; k < slots_.size(); ++k) {
        slot& s = slots_[k];
        if (!s.gated || s.state != slot_state::active) continue;
        // Gradient s.count comes next: every live worker must have s.count − s pushes in.
        if (opt_.staleness != unbounded_staleness &&
            least != std::numeric_limits<std::uint64_t>::max() && s.count > opt_.staleness &&
            least < s.count - opt_.staleness)
          continue;
        reply(k, s.pending_kind, s.pending_clock);
        any = true;
      }
      // A reply that found its worker lost changes the least clock: go round again.
      if (!any || min_live_clock() == least) return;
    }
  }

  // Finishes the send of worker k's previous reply, so that its buffer can be reused.
  bool finish_send(std::size_t k) {
    slot& s = slots_[k];
    if (!s.send) return true;
    try {
      t_->wait(*s.send);
      s.send.reset();
      return true;
    } catch (const timeout_error& e) {
      lose(k, std::string("a reply could not be delivered: ") + e.what());
    } catch (const peer_error& e) {
      lose(k, std::string("it failed: ") + e.what());
    }
    return false;
  }

  void post_reply(std::size_t k, std::size_t len) {
    slot& s = slots_[k];
    const send_op op[] = {
        {worker_rank(k), opt_.tag + 1, std::span<const std::byte>(s.reply.data(), len)}};
    try {
      s.send.emplace(t_->post(op, {}));
      ++stats_.replies;
      stats_.bytes_sent += len;
      counters_.add_sent(len);
    } catch (const peer_error& e) {
      lose(k, std::string("it failed: ") + e.what());
    }
  }

  void reply(std::size_t k, detail::ps_kind kind, std::uint64_t clock_echo) {
    static constexpr const char* call = "parameter_server::serve";
    slot& s = slots_[k];
    s.gated = false;
    s.last_heard = clock::now();
    if (!finish_send(k)) return;
    const std::span<std::byte> body =
        std::span<std::byte>(s.reply).subspan(detail::ps_header_bytes);
    std::size_t len = 0;
    detail::ps_body what = detail::ps_body::delta;
    {
      scoped_timer timer(counters_.encode_ns);
      if (opt_.pull == pull_encoding::f32 || !s.synced || s.need_values) {
        what = detail::ps_body::values;
        len = identity_codec{}.encode(host_view<const float>(w_), body);
        if (opt_.pull == pull_encoding::codec) s.known = w_;
        s.synced = true;
        s.need_values = false;
      } else {
        const float* w = w_.data();
        const float* known = s.known.data();
        float* d = d_.data();
        for (std::size_t i = 0; i < d_.size(); ++i) d[i] = w[i] - known[i];
        if constexpr (StochasticCodec<P>)
          pull_.set_stream({opt_.seed, static_cast<std::uint32_t>(version_),
                            static_cast<std::uint32_t>(worker_rank(k)),
                            static_cast<std::uint32_t>(rank())});
        len = pull_.encode(host_view<const float>(d_), body);
        // The worker adds the same payload to the same bits: the copies stay equal.
        pull_.decode_add(body.first(len), host_view<float>(s.known));
      }
    }
    const std::uint64_t least = min_live_clock();
    detail::ps_write_header(s.reply,
                            {kind, static_cast<std::uint8_t>(what), rank(), clock_echo, version_,
                             least == std::numeric_limits<std::uint64_t>::max() ? 0 : least},
                            call);
    post_reply(k, detail::ps_header_bytes + len);
  }

  void refuse(std::size_t k, const detail::ps_header& h, const std::string& why) {
    static constexpr const char* call = "parameter_server::serve";
    ++stats_.refused;
    slot& s = slots_[k];
    if (s.send) {
      // Never block on a worker that is not listening: refuse only when the line is free.
      try {
        if (!t_->test(*s.send)) return;
      } catch (const std::exception&) {
        return;
      }
      s.send.reset();
    }
    const std::size_t len = std::min(why.size(), detail::ps_reason_bytes);
    detail::ps_write_header(s.reply, {detail::ps_kind::refused, 0, rank(), h.clock, version_, 0},
                            call);
    if (len) std::memcpy(s.reply.data() + detail::ps_header_bytes, why.data(), len);
    post_reply(k, detail::ps_header_bytes + len);
  }

  void lose(std::size_t k, std::string why) {
    slot& s = slots_[k];
    if (s.state == slot_state::lost) return;
    s.state = slot_state::lost;
    s.gated = false;
    lost_.push_back({worker_rank(k), s.count, std::move(why)});
    if (opt_.on_worker_lost) opt_.on_worker_lost(lost_.back());
  }

  void lose_all_active(const std::string& why) {
    for (std::size_t k = 0; k < slots_.size(); ++k)
      if (slots_[k].state == slot_state::active) lose(k, why);
  }

  // Silence past the deadline, failed deliveries; then the gates those losses open.
  void housekeeping() {
    const auto now = clock::now();
    bool changed = false;
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      slot& s = slots_[k];
      if (s.send) {
        try {
          if (t_->test(*s.send)) s.send.reset();
        } catch (const peer_error& e) {
          s.send.reset();
          if (s.state == slot_state::active) {
            lose(k, std::string("it failed: ") + e.what());
            changed = true;
          }
        } catch (const error&) {
          s.send.reset();
        }
      }
      if (s.state == slot_state::active && !s.gated && now - s.last_heard > opt_.worker_timeout) {
        lose(k, "silent for more than " + std::to_string(opt_.worker_timeout.count()) +
                    " ms (worker_timeout)");
        changed = true;
      }
    }
    if (changed) release_gates();
  }

  // Sends still in flight when serve returns: done ones are dropped; a lost worker's stay
  // (their buffers live as long as this object).
  void settle_sends() {
    for (auto& s : slots_) {
      if (!s.send) continue;
      try {
        if (t_->test(*s.send)) s.send.reset();
      } catch (const std::exception&) {
        s.send.reset();
      }
    }
  }

  T* t_;
  int exceptions_at_birth_ = std::uncaught_exceptions();
  C proto_;
  P pull_;
  ps_options opt_;
  O optimizer_;
  traffic_counters counters_;
  std::uint64_t n_ = 0;
  bool sized_ = false;

  // Worker.
  std::vector<C> push_;  // one codec state per shard
  std::vector<std::uint64_t> version_seen_;
  std::vector<std::vector<std::byte>> out_, in_;
  std::uint64_t clock_ = 0;
  bool got_values_ = false;
  bool finished_ = false;
  std::string broken_;

  // Server.
  detail::ps_range range_;
  std::vector<float> w_, g_, d_;
  std::uint64_t version_ = 0;
  std::vector<slot> slots_;
  std::vector<std::byte> rx_buf_;
  std::optional<typename T::request> rx_;
  bool served_ = false;
  server_tally stats_;
  std::vector<ps_update> log_;
  std::vector<lost_worker> lost_;
};

// The backend models Communicator over any codec and AsyncTransport that model their
// concepts (checked with the least of each; comm/allreduce.hpp says why).
static_assert(Communicator<parameter_server<detail::codec_archetype, detail::transport_archetype>>);

}  // namespace v0
}  // namespace gradcomm

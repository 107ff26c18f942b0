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
// The pull codec P need not be the push codec's: a pull carries what every worker's pushes
// moved since the last one. Measured on examples/data_parallel (4 workers, one epoch, seed
// 1): top-k 1 % pushes of the worker's momentum with error feedback reached 82.07 % with
// top-k 1 % pulls, 84.92 % with f32 and 85.12 % with 8-bit pulls (scalar_quant_codec as P);
// the same pushes through DGC's memory (dgc_memory: masked momentum, and sgd without
// momentum on the server) 85.09 % with top-k 1 % pulls. Sign pushes: 83.57 % and 83.98 %
// (seeds 1, 2) with 8-bit pulls at half the example's rate, 82.65 % (seeds 1-3) with sign
// pulls at a quarter (main.cpp's ps_defaults).
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
//
// Where the parts are: this header has the public class; comm/detail/ps_options.hpp its
// settings and reports; comm/detail/ps_protocol.hpp the messages and the saved state's
// framing; comm/detail/ps_worker.hpp and ps_server.hpp the two roles.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/detail/ps_options.hpp>
#include <gradcomm/comm/detail/ps_protocol.hpp>
#include <gradcomm/comm/detail/ps_server.hpp>
#include <gradcomm/comm/detail/ps_worker.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <span>
#include <string>
#include <utility>

namespace gradcomm {
inline namespace v0 {

/// The servers' learning rate for `workers` workers that would train at rate `lr` on the
/// all-reduce (one step with the mean of the workers' gradients): lr / workers. A server
/// applies every push as it arrives, so a round of the workers' pushes is `workers`
/// updates where the all-reduce makes one; at lr / workers each gradient moves the
/// parameters as far as its share of the mean does. With staleness 0 (synchronous) and
/// plain SGD a round is then the all-reduce's step w ← w − lr · mean(g), to rounding; with
/// asynchronous workers it is the same step per gradient, each on parameters a few pushes
/// older. At lr itself the step is `workers` times too long (the example diverged there).
/// Throws invalid_argument when workers < 1 or lr is not positive and finite.
///
///   ps_t ps(t, {}, {}, gradcomm::sgd{{.lr = gradcomm::ps_server_lr(0.02f, t.size() - 1)}});
inline float ps_server_lr(float lr, int workers) {
  if (workers < 1)
    detail::throw_invalid_argument("ps_server_lr",
                                   std::to_string(workers) + " workers: at least one is needed");
  if (!(lr > 0.0f) || !std::isfinite(lr))
    detail::throw_invalid_argument(
        "ps_server_lr", "learning rate " + std::to_string(lr) + ": it must be positive and finite");
  return lr / static_cast<float>(workers);
}

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
        opt_(checked(transport, std::move(options))),
        optimizer_(std::move(optimizer)),
        worker_(transport, opt_, counters_, codec, pull_codec),
        server_(transport, opt_, counters_, codec, pull_codec, optimizer_) {}

  parameter_server(const parameter_server&) = delete;
  parameter_server& operator=(const parameter_server&) = delete;

  /// A worker that did not finish() says goodbye here (errors are swallowed: call finish()
  /// to see them), unless an exception is unwinding through it: a worker that failed is
  /// left for the servers to declare lost, as one that was killed would be.
  ~parameter_server() {
    if (!is_server() && worker_.owes_goodbye() &&
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
    const auto r = detail::slice_of(n, opt_.servers, s);
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
      if (!server_.served()) serve(params);
      return;
    }
    if (params.size() != grads.size())
      detail::throw_invalid_argument(call,
                                     std::to_string(params.size()) + " parameters but " +
                                         std::to_string(grads.size()) + " gradients",
                                     rank());
    worker_.push(call, params, grads);
  }

  /// Pulls the parameters without pushing (not held by the staleness bound): a worker
  /// that starts from other values than the servers', or wants fresh ones.
  ///
  ///   ps.pull(w);
  void pull(host_view<float> params) {
    static constexpr const char* call = "parameter_server::pull";
    if (is_server()) detail::throw_invalid_argument(call, "called on a server rank", rank());
    worker_.pull(call, params);
  }

  /// Tells every server this worker is done: it leaves the staleness bound and is not
  /// reported lost. Later step() calls throw. Called by the destructor otherwise.
  ///
  ///   ps.finish();
  void finish() {
    static constexpr const char* call = "parameter_server::finish";
    if (is_server()) return;
    worker_.finish(call);
  }

  /// The number of pushes this worker made (its clock).
  std::uint64_t clock_count() const noexcept { return worker_.clock_count(); }
  /// This worker's push codec of shard s (its error-feedback residual, for instance).
  ///
  ///   double owed = ps.push_codec(0).residual_norm();
  const C& push_codec(int s) const { return worker_.push_codec(s); }
  /// The version of server s's shard that this worker's parameters hold.
  std::uint64_t version_seen(int s) const { return worker_.version_seen(s); }

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
    server_.serve(call, params, stop);
  }

  /// This server's statistics (call on the server's thread or after serve returned).
  ps_server_stats server_stats() const { return server_.stats(); }

  /// Updates applied to this server's shard so far (cheap: for serve()'s stop predicate).
  ///
  ///   ps.serve(w, [&] { return ps.version() >= 1000; });
  std::uint64_t version() const noexcept { return server_.version(); }

  /// Every applied update, in order (only with ps_options::record_updates).
  std::span<const ps_update> updates() const noexcept { return server_.updates(); }
  /// The workers this server declared lost, in the order found.
  std::span<const lost_worker> lost_workers() const noexcept { return server_.lost_workers(); }
  /// The server's shard of the parameters (its current values).
  host_view<const float> shard_values() const noexcept { return server_.shard_values(); }
  /// The server's public copy of what worker `rank` holds of the shard (codec pulls only;
  /// empty before its first pull): bit for bit the worker's parameters.
  host_view<const float> public_copy(int worker_rank) const {
    return server_.public_copy(worker_rank);
  }

  O& optimizer() noexcept { return optimizer_; }
  const ps_options& options() const noexcept { return opt_; }
  /// Bytes and messages this rank sent and received through the server protocol, time
  /// encoding, decoding and waiting.
  const traffic_counters& counters() const noexcept { return counters_; }

  /// Bytes save_state writes.
  std::size_t state_bytes() const {
    return 24 + (is_server() ? server_.state_bytes() : worker_.state_bytes());
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
    w.put_u64(is_server() ? server_.n() : worker_.n());
    if (is_server())
      server_.save_state(w);
    else
      worker_.save_state(w);
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
    if (server)
      server_.load_state(r, n, call);
    else
      worker_.load_state(r, n, call);
  }

 private:
  // The options, checked against the transport; worker_timeout 0 becomes half its timeout.
  static ps_options checked(T& t, ps_options opt) {
    static constexpr const char* call = "parameter_server";
    const int size = t.size(), rank = t.rank();
    if (opt.servers < 1 || opt.servers >= size)
      detail::throw_invalid_argument(call,
                                     std::to_string(opt.servers) + " servers in a world of " +
                                         std::to_string(size) +
                                         " ranks: at least one server and one worker are needed",
                                     rank);
    if (opt.tag < 0 || opt.tag == std::numeric_limits<int>::max())
      detail::throw_invalid_argument(call, "tag " + std::to_string(opt.tag), rank);
    if (opt.worker_timeout.count() == 0) opt.worker_timeout = t.timeout() / 2;
    if (opt.worker_timeout.count() < 0 || opt.worker_timeout >= t.timeout())
      detail::throw_invalid_argument(
          call,
          "worker_timeout of " + std::to_string(opt.worker_timeout.count()) +
              " ms: it must be positive and below the transport's timeout (" +
              std::to_string(t.timeout().count()) + " ms), or a held worker times out first",
          rank);
    return opt;
  }

  T* t_;
  int exceptions_at_birth_ = std::uncaught_exceptions();
  ps_options opt_;
  O optimizer_;
  traffic_counters counters_;
  detail::ps_worker<C, T, P> worker_;     // the role of ranks [servers, size)
  detail::ps_server<C, T, O, P> server_;  // the role of ranks [0, servers)
};

// The backend models Communicator over any codec and AsyncTransport that model their
// concepts (checked with the least of each; comm/allreduce.hpp says why).
static_assert(Communicator<parameter_server<detail::codec_archetype, detail::transport_archetype>>);

}  // namespace v0
}  // namespace gradcomm

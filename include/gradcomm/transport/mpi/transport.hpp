// gradcomm/transport/mpi/transport.hpp — mpi_transport: the class, its public calls
// and its state. Its private machinery is defined in transport/detail/mpi_ring.hpp,
// mpi_matching.hpp, mpi_collectives.hpp and mpi_control.hpp, included at the end.
// Include <gradcomm/transport/mpi.hpp>.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/detail/backoff.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/detail/mpi_agreement.hpp>
#include <gradcomm/transport/detail/mpi_reduce.hpp>
#include <gradcomm/transport/detail/mpi_state.hpp>
#include <gradcomm/transport/transport.hpp>

#include <mpi.h>

// How all-reduces under 64 KiB run (mpi.hpp): 0 MPI_Iallreduce, 1 MPI_Ireduce to rank 0
// and MPI_Ibcast of its result (every rank the same bits, whatever the MPI). Default: 0
// with Open MPI, whose MPI_Iallreduce gives every rank the same bits; 1 with any other.
#ifndef GRADCOMM_MPI_SMALL_ALLREDUCE
#if defined(OMPI_MAJOR_VERSION)
#define GRADCOMM_MPI_SMALL_ALLREDUCE 0
#else
#define GRADCOMM_MPI_SMALL_ALLREDUCE 1
#endif
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// The ranks of an MPI communicator as a gradcomm transport. Models AsyncTransport.
///
///   gradcomm::mpi_transport t(MPI_COMM_WORLD, std::chrono::seconds(30));
///   std::vector<int> all(t.size());  // all[r] == r afterwards
///   const int me = t.rank();
///   t.allgather(std::as_bytes(std::span(&me, 1)), std::as_writable_bytes(std::span(all)));
///
/// Construction is collective over `comm` (MPI_Comm_dup): every rank of it constructs
/// its transport at the same point. MPI must be initialized with at least
/// MPI_THREAD_SERIALIZED; call a transport from one thread at a time (any thread), and
/// MPI from elsewhere only as the thread level allows.
///
/// Errors name the call, this rank and the peer: timeout_error when a peer did not
/// arrive within timeout(), gradcomm::error (buffer_too_small) when a message is longer
/// than its buffer, gradcomm::error (invalid_argument) for arguments this rank can see
/// are wrong, gradcomm::error in mpi_category() when MPI fails. A rank that dies is
/// MPI's business: mpirun ends the job, so no peer_error is ever raised.
///
/// After a timeout_error:
///  - point-to-point: the group's unmatched receives are withdrawn and leave no trace;
///    the transport goes on working. What MPI cannot withdraw stays with MPI: a send no
///    receive matched yet (MPI cannot cancel sends; Open MPI does not try) and a receive
///    whose message is in transfer. Their buffers must stay valid until the peer takes
///    the message or the job ends. The group itself is spent: wait() and test() on it
///    throw, received() of a withdrawn receive throws.
///  - collectives: MPI can neither cancel nor free a collective's request, so the
///    timed-out collective stays posted, on the transport's own buffers (the caller's
///    may be freed at once). The ring all-reduce behaves alike, and a rank arriving
///    late finds its neighbours gone and times out in turn. The ranks no longer agree
///    on the order of collectives, so every later collective on this transport throws
///    timeout_error at once. Point-to-point goes on. To carry on with collectives,
///    every rank constructs a new mpi_transport (a fresh MPI_Comm_dup); the old one's
///    communicators are not freed (a late message must not reach a new one).
///
/// Sizes: MPI counts are int, so a message, a chunk or a collective's total above
/// INT_MAX bytes (elements, for allreduce) is rejected with invalid_argument, never
/// truncated. The ranks' collective arguments must agree (requirement 15): every rank
/// throws invalid_argument naming the ranks and sizes that differ, and the transport
/// goes on (see the header). A rank that throws on its own arguments never joins the
/// collective: the others get timeout_error naming it.
class mpi_transport : public host_transport_calls<mpi_transport> {
 public:
  /// The memory it moves: host memory (Transport requirement 0). A device view given to
  /// any call does not compile and says why (host_transport_calls).
  static constexpr memory_space space = memory_space::host;
  using host_transport_calls::post, host_transport_calls::recv_any, host_transport_calls::allreduce,
      host_transport_calls::allgather, host_transport_calls::allgatherv,
      host_transport_calls::alltoall, host_transport_calls::alltoallv,
      host_transport_calls::broadcast;

  /// An outstanding point-to-point group, returned by post(). Destroying it before
  /// wait() returned withdraws the receives that were not matched yet; what MPI holds
  /// (sends, receives in transfer) stays with the transport until it completes, so
  /// those buffers must stay valid until the peers took or sent the messages.
  ///
  ///   auto req = t.post(sends, recvs);
  ///   t.wait(req);
  ///   std::size_t n = req.received(0);  // length of the first receive's message
  class request {
   public:
    request() noexcept = default;
    request(request&& o) noexcept { take(o); }
    request& operator=(request&& o) noexcept {
      if (this != &o) {
        release();
        take(o);
      }
      return *this;
    }
    request(const request&) = delete;
    request& operator=(const request&) = delete;
    ~request() { release(); }

    /// How many receives the group holds.
    ///
    ///   for (std::size_t i = 0; i < req.receives(); ++i) use(req.received(i));
    std::size_t receives() const noexcept { return n_recvs_; }
    /// The length of the message the i-th receive got. Valid after wait() returned.
    ///
    ///   std::size_t n = req.received(0);
    std::size_t received(std::size_t i) const { return recv_at(i, "received").bytes; }
    /// The rank the i-th receive's message came from (useful with any_source).
    /// Valid after wait() returned.
    ///
    ///   int from = req.source(0);
    int source(std::size_t i) const { return recv_at(i, "source").source; }

   private:
    friend class mpi_transport;

    const detail::mpi_op& recv_at(std::size_t i, const char* what) const {
      auto fail = [&](const std::string& why) {
        detail::throw_invalid_argument(std::string("mpi_transport::request::") + what,
                                       "receive " + std::to_string(i) + why, owner_);
      };
      if (i >= n_recvs_) fail(" of a group of " + std::to_string(n_recvs_));
      const auto& op = ops_[n_sends_ + i];
      if (op.st == detail::mpi_op::status::withdrawn)
        fail(" was withdrawn when its wait timed out");
      if (op.st != detail::mpi_op::status::done) fail(" has not completed (call wait first)");
      return op;
    }

    void take(request& o) noexcept {
      state_ = std::move(o.state_);
      ops_ = std::move(o.ops_);
      reqs_ = std::move(o.reqs_);
      owner_ = o.owner_;
      n_sends_ = std::exchange(o.n_sends_, 0);
      n_recvs_ = std::exchange(o.n_recvs_, 0);
      timed_out_ = std::exchange(o.timed_out_, false);
    }

    // Withdraws unmatched receives; hands what MPI still holds to the transport.
    void release() noexcept {
      if (!ops_) return;
      auto& st = *state_;
      const std::size_t n = n_sends_ + n_recvs_;
      std::erase_if(st.unmatched, [&](const detail::mpi_unmatched& u) {
        return u.op >= ops_.get() && u.op < ops_.get() + n;
      });
      const bool usable = detail::mpi_usable();
      for (std::size_t i = 0; i < n; ++i) {
        if (reqs_[i] == MPI_REQUEST_NULL) continue;
        if (!usable) {
          (void)ops_[i].sink.release();  // MPI may have written there until the end
          continue;
        }
        try {
          detail::mpi_orphan o;
          o.req = reqs_[i];
          o.memory = std::move(ops_[i].sink);
          st.orphans.push_back(std::move(o));
        } catch (...) {  // out of memory: hand the request to MPI, leave it its memory
          (void)ops_[i].sink.release();
          MPI_Request_free(&reqs_[i]);
        }
      }
      ops_.reset();
      reqs_.reset();
      state_.reset();
      n_sends_ = n_recvs_ = 0;
    }

    std::shared_ptr<detail::mpi_state> state_;
    std::unique_ptr<detail::mpi_op[]> ops_;
    std::unique_ptr<MPI_Request[]> reqs_;  // [i]: ops_[i]'s MPI request, or null
    int owner_ = -1;
    std::size_t n_sends_ = 0;
    std::size_t n_recvs_ = 0;
    bool timed_out_ = false;
  };

  /// Joins `comm` (collective over it: MPI_Comm_dup). `timeout` bounds every wait.
  /// Throws gradcomm::error when MPI is not initialized, provides less than
  /// MPI_THREAD_SERIALIZED (unless `threads` is mpi_threads::caller: then only the
  /// constructing thread may call it, and any_thread() says so), or `comm` is null or an
  /// inter-communicator.
  ///
  ///   gradcomm::mpi_transport t(MPI_COMM_WORLD);  // 60 s deadline
  ///   gradcomm::mpi_transport fast(trainer_comm, std::chrono::milliseconds(500));
  explicit mpi_transport(MPI_Comm comm,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60),
                         mpi_threads threads = mpi_threads::any) {
    static constexpr const char* call = "mpi_transport";
    if (timeout.count() <= 0)
      detail::throw_invalid_argument(
          call, "the timeout must be positive, it is " + std::to_string(timeout.count()) + " ms");
    if (!detail::mpi_usable())
      throw error(make_error_code(errc::unsupported), call, -1,
                  "MPI is not initialized (or was finalized): construct a "
                  "gradcomm::mpi_environment first, or call MPI_Init_thread");
    int level = MPI_THREAD_SINGLE;
    detail::mpi_check(MPI_Query_thread(&level), call, "MPI_Query_thread", -1);
    if (level < MPI_THREAD_SERIALIZED && threads == mpi_threads::any)
      throw error(make_error_code(errc::unsupported), call, -1,
                  "MPI was initialized with " + detail::mpi_thread_level_text(level));
    if (comm == MPI_COMM_NULL) detail::throw_invalid_argument(call, "the communicator is null");
    // The caller's communicator returns errors too while the transport calls MPI on it
    // (its own handler is put back afterwards).
    MPI_Errhandler theirs = MPI_ERRHANDLER_NULL;
    detail::mpi_check(MPI_Comm_get_errhandler(comm, &theirs), call, "MPI_Comm_get_errhandler", -1);
    detail::mpi_check(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), call,
                      "MPI_Comm_set_errhandler", -1);
    struct restore_handler {
      MPI_Comm c;
      MPI_Errhandler h;
      ~restore_handler() {
        if (h == MPI_ERRHANDLER_NULL) return;  // SMPI: MPI_COMM_WORLD reports none
        MPI_Comm_set_errhandler(c, h);
        MPI_Errhandler_free(&h);
      }
    } restore{comm, theirs};
    int inter = 0;
    detail::mpi_check(MPI_Comm_test_inter(comm, &inter), call, "MPI_Comm_test_inter", -1);
    if (inter)
      throw error(make_error_code(errc::unsupported), call, -1,
                  "an inter-communicator; give an intra-communicator");

    auto st = std::make_shared<detail::mpi_state>();
    st->timeout = timeout;
    st->thread_level = level;
    detail::mpi_check(MPI_Comm_dup(comm, &st->comm), call, "MPI_Comm_dup", -1);
    detail::mpi_check(MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN), call,
                      "MPI_Comm_set_errhandler", -1);
    detail::mpi_check(MPI_Comm_rank(st->comm, &st->rank), call, "MPI_Comm_rank", -1);
    detail::mpi_check(MPI_Comm_size(st->comm, &st->size), call, "MPI_Comm_size", st->rank);
    const int me = st->rank;
    detail::mpi_check(MPI_Comm_dup(st->comm, &st->ctrl), call, "MPI_Comm_dup", me);
    detail::mpi_check(MPI_Comm_dup(st->comm, &st->ring), call, "MPI_Comm_dup", me);
    detail::mpi_check(MPI_Comm_dup(st->comm, &st->check), call, "MPI_Comm_dup", me);
    for (MPI_Comm c : {st->ctrl, st->ring, st->check})
      detail::mpi_check(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN), call,
                        "MPI_Comm_set_errhandler", me);
    void* ub = nullptr;
    int has_ub = 0;
    detail::mpi_check(MPI_Comm_get_attr(st->comm, MPI_TAG_UB, &ub, &has_ub), call,
                      "MPI_Comm_get_attr(MPI_TAG_UB)", me);
    if (has_ub && ub) st->tag_ub = *static_cast<int*>(ub);
    detail::mpi_check(MPI_Type_contiguous(2, MPI_BYTE, &st->half), call, "MPI_Type_contiguous", me);
    detail::mpi_check(MPI_Type_commit(&st->half), call, "MPI_Type_commit", me);
    // Commutative: a combine gives the same bits whichever operand comes first.
    detail::mpi_check(MPI_Op_create(&detail::mpi_half_sum<f16>, 1, &st->f16_sum), call,
                      "MPI_Op_create", me);
    detail::mpi_check(MPI_Op_create(&detail::mpi_half_sum<bf16>, 1, &st->bf16_sum), call,
                      "MPI_Op_create", me);
    const auto n = static_cast<std::size_t>(st->size);
    st->known_seq.assign(n, 0);
    st->answered.assign(n, 0);
    st->gave_up_seq.assign(n, 0);
    st->gave_up_blame.assign(n, -1);
    st->indices.reserve(16);
    st->statuses.reserve(16);
    state_ = std::move(st);
  }

  mpi_transport(mpi_transport&&) noexcept = default;
  mpi_transport& operator=(mpi_transport&&) noexcept = default;
  mpi_transport(const mpi_transport&) = delete;
  mpi_transport& operator=(const mpi_transport&) = delete;
  /// Frees the communicators (once no request of this transport is left).
  ~mpi_transport() = default;

  /// This rank, in [0, size()).
  ///
  ///   if (t.rank() == 0) log(...);
  int rank() const noexcept { return state_->rank; }
  /// The number of ranks of the communicator.
  ///
  ///   std::vector<float> all(t.size() * n);
  int size() const noexcept { return state_->size; }
  /// Whether threads other than the constructing one may call this transport: MPI
  /// provides MPI_THREAD_SERIALIZED or more (transport trait T2, transport_any_thread).
  ///
  ///   comm_options.overlap = t.any_thread();
  bool any_thread() const noexcept { return state_->thread_level >= MPI_THREAD_SERIALIZED; }
  /// The longest any wait lasts before it throws timeout_error (a collective's:
  /// about 1.5 × that, see the header; the ring all-reduce waits that long for each
  /// of its messages, not for the whole call).
  ///
  ///   auto d = t.timeout();
  std::chrono::milliseconds timeout() const noexcept { return state_->timeout; }
  /// This rank's traffic, counted as local_transport counts it: message bytes for
  /// point-to-point; for collectives the bytes this rank contributes to and receives
  /// from the other ranks' buffers (2(N-1)/N × the input each way for an all-reduce,
  /// what a ring sends), whatever algorithm ran (the ring's own messages are not
  /// counted one by one). Time blocked in waits goes to wait_ns.
  ///
  ///   auto before = t.counters().snapshot();
  ///   t.allreduce<float>(g, g, gradcomm::reduce_op::sum);
  ///   auto moved = (t.counters().snapshot() - before).bytes_sent;
  const traffic_counters& counters() const noexcept { return state_->counters; }
  /// The private communicator (a dup of the one given): for the MPI calls of code
  /// that wants its traffic ordered with this transport's; do not free it.
  ///
  ///   MPI_Comm c = t.communicator();
  MPI_Comm communicator() const noexcept { return state_->comm; }

  /// Posts a group of sends and receives; returns at once. A receive may name
  /// any_source. Tags are in [0, MPI_TAG_UB]. Send buffers must stay valid until
  /// wait() returns.
  ///
  ///   gradcomm::send_op s[] = {{next, 0, mine}};
  ///   gradcomm::recv_op r[] = {{prev, 0, theirs}};
  ///   auto req = t.post(s, r);
  request post(std::span<const send_op> sends, std::span<const recv_op> recvs) {
    static constexpr const char* call = "mpi_transport::post";
    auto& st = *state_;
    for (const auto& s : sends) {
      check_peer_tag(call, "send to", s.peer, s.tag, false);
      if (s.data.size() > detail::mpi_max_count)
        detail::throw_invalid_argument(
            call,
            "send to rank " + std::to_string(s.peer) + " (tag " + std::to_string(s.tag) + ") of " +
                std::to_string(s.data.size()) + " bytes: " + over_int_max(),
            st.rank);
    }
    for (const auto& r : recvs) check_peer_tag(call, "receive from", r.peer, r.tag, true);
    return post_group(call, sends, recvs, st.comm, false);
  }

  /// Blocks until every operation of the group completed. Throws timeout_error naming
  /// a missing peer after timeout() (then it withdraws the unmatched receives, see the
  /// class), and gradcomm::error (buffer_too_small) when a message was longer than its
  /// receive buffer (naming sizes, peer and tag; the buffer is left untouched and the
  /// sender is not told).
  ///
  ///   t.wait(req);
  void wait(request& req) { wait_for(req, "mpi_transport::wait"); }

  /// True when every operation of the group completed (then it reports errors as
  /// wait() does); false otherwise. Never blocks on peers.
  ///
  ///   while (!t.test(req)) do_other_work();
  bool test(request& req) {
    static constexpr const char* call = "mpi_transport::test";
    check_request(req, call);
    if (!req.ops_) return true;
    progress(call);
    if (!poll(req, call)) return false;
    throw_receive_errors(req, call);
    return true;
  }

  /// Receives the earliest message under `tag` from any rank into `buf`. Throws
  /// timeout_error (peer any_source) when none came within timeout(); the receive is
  /// then withdrawn and the transport goes on.
  ///
  ///   gradcomm::recv_result r = t.recv_any(/*tag=*/3, buf);
  recv_result recv_any(int tag, std::span<std::byte> buf) {
    const recv_op r[] = {{any_source, tag, buf}};
    auto req = post({}, r);
    wait_for(req, "mpi_transport::recv_any");
    return {req.source(0), req.received(0)};
  }

  /// Element-wise reduction over all ranks; every rank gets the same bits. E is float,
  /// double, int32_t or int64_t (sum, max, min; integer sums wrap), or f16 or bf16 (sum
  /// only: each pairwise combine adds in float and rounds to nearest even, so the
  /// result is the float sum rounded at every combine of the reduction tree). `in`
  /// may be `out`; at most INT_MAX elements.
  ///
  /// Below 64 KiB: MPI_Iallreduce with Open MPI, whose algorithms give every rank the same
  /// bits; with any other MPI, MPI_Ireduce to rank 0 and then MPI_Ibcast of its result, so
  /// that they do whatever its algorithms (GRADCOMM_MPI_SMALL_ALLREDUCE, mpi.hpp).
  /// From 64 KiB: a ring (reduce-scatter
  /// then all-gather), where element i of rank c's slice (the slices of
  /// local_transport) is combined along the chain of ranks c, c+1, ..., c-1 and then
  /// copied to every rank. The ranks must pass the same element count, type and op
  /// (else every rank gets invalid_argument naming them).
  ///
  ///   t.allreduce<float>(g, g, gradcomm::reduce_op::sum);  // g: a std::vector<float>
  ///   t.allreduce<gradcomm::bf16>(h, h, gradcomm::reduce_op::sum);
  template <detail::mpi_reduce_type E>
  void allreduce(std::span<const E> in, std::span<E> out, reduce_op op) {
    static constexpr const char* call = "mpi_transport::allreduce";
    auto& st = *state_;
    if (in.size() != out.size())
      arg_error(call, "in has " + std::to_string(in.size()) + " elements but out has " +
                          std::to_string(out.size()));
    if (in.data() != out.data() &&
        detail::overlap(in.data(), in.size_bytes(), out.data(), out.size_bytes()))
      arg_error(call, "in and out overlap without being the same buffer");
    if (in.size() > detail::mpi_max_count)
      arg_error(call, std::to_string(in.size()) + " elements: " + over_int_max());
    MPI_Datatype type;
    MPI_Op mop;
    if constexpr (detail::mpi_half_type<E>) {
      if (op != reduce_op::sum)
        throw error(make_error_code(errc::unsupported), call, st.rank,
                    std::string(std::is_same_v<E, f16> ? "f16" : "bf16") +
                        " all-reduce supports reduce_op::sum only, not " +
                        detail::reduce_op_name(op));
      type = st.half;
      mop = std::is_same_v<E, f16> ? st.f16_sum : st.bf16_sum;
    } else {
      type = detail::mpi_datatype<E>();
      mop = detail::mpi_builtin_op(op);
    }
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::allreduce;
    d.elem = detail::mpi_elem_code<E>();
    d.op = op;
    d.count = in.size();
    const std::size_t bytes = in.size_bytes();
    const int count = static_cast<int>(in.size());
    if (st.size > 1 && bytes >= detail::mpi_ring_min_bytes) {
      ring_allreduce<E>(call, in, out, op, d);
    } else if (GRADCOMM_MPI_SMALL_ALLREDUCE == 1 && st.size > 1) {
      // MPI_Ireduce to rank 0, then MPI_Ibcast of its bytes: one sum, copied, so every
      // rank holds the same bits. (MPI_Iallreduce does not promise that: SimGrid's SMPI
      // gave the ranks sums that differed in the last bits.)
      const bool root = st.rank == 0;
      run_collective(
          call, d, "MPI_Ireduce", bytes,
          [&](std::byte* s) { detail::copy_bytes(s, in.data(), bytes); },
          [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
            return MPI_Ireduce(root ? MPI_IN_PLACE : s, s, count, type, mop, 0, c, r);
          },
          [&](const std::byte* s) {
            if (root) detail::copy_bytes(out.data(), s, bytes);
          });
      detail::mpi_coll_desc b;
      b.kind = detail::coll_kind::broadcast;
      b.count = bytes;
      b.root = 0;
      run_collective(
          call, b, "MPI_Ibcast", bytes,
          [&](std::byte* s) {
            if (root) detail::copy_bytes(s, out.data(), bytes);
          },
          [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
            return MPI_Ibcast(s, count * static_cast<int>(sizeof(E)), MPI_BYTE, 0, c, r);
          },
          [&](const std::byte* s) {
            if (!root) detail::copy_bytes(out.data(), s, bytes);
          });
    } else {
      run_collective(
          call, d, "MPI_Iallreduce", bytes,
          [&](std::byte* s) { detail::copy_bytes(s, in.data(), bytes); },
          [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
            return MPI_Iallreduce(MPI_IN_PLACE, s, count, type, mop, c, r);
          },
          [&](const std::byte* s) { detail::copy_bytes(out.data(), s, bytes); });
    }
    // As local_transport counts it, whichever path ran: this rank's slice goes out to
    // and comes back from N-1 ranks, every other rank's slice once each way (the ring
    // sends and receives 2(N-1) chunks, the same 2(N-1)/N × the input for even slices).
    const int n = st.size;
    const auto others = static_cast<std::uint64_t>(n - 1);
    const std::uint64_t own = detail::slice_of(in.size(), n, st.rank).size();
    std::uint64_t other_msgs = 0;
    for (int q = 0; q < n; ++q)
      other_msgs += q != st.rank && detail::slice_of(in.size(), n, q).size();
    const std::uint64_t total = (others * own + (in.size() - own)) * sizeof(E);
    const std::uint64_t msgs = (own != 0 ? others : 0) + other_msgs;
    st.counters.add_sent(total, msgs);
    st.counters.add_received(total, msgs);
  }

  /// Gathers in.size() bytes from every rank into out (size() × in.size() bytes, rank
  /// r's at r × in.size()), with MPI_Iallgather. `in` may be rank()'s own place in `out`.
  ///
  ///   t.allgather(std::as_bytes(std::span(&x, 1)), std::as_writable_bytes(std::span(all)));
  void allgather(std::span<const std::byte> in, std::span<std::byte> out) {
    static constexpr const char* call = "mpi_transport::allgather";
    auto& st = *state_;
    const auto n = static_cast<std::size_t>(st.size);
    const std::size_t m = in.size();
    if (out.size() / n != m || out.size() % n != 0)
      arg_error(call, "out has " + std::to_string(out.size()) + " bytes, expected " +
                          std::to_string(n) + " ranks x " + std::to_string(m) + " bytes");
    const bool in_place = in.data() == out.data() + static_cast<std::size_t>(st.rank) * m;
    if (!in_place && detail::overlap(in.data(), m, out.data(), out.size()))
      arg_error(call, "in overlaps out other than at this rank's place");
    if (m > detail::mpi_max_count)
      arg_error(call, "in has " + std::to_string(m) + " bytes: " + over_int_max());
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::allgather;
    d.count = m;
    const std::size_t at = static_cast<std::size_t>(st.rank) * m;
    run_collective(
        call, d, "MPI_Iallgather", out.size(),
        [&](std::byte* s) { detail::copy_bytes(s + at, in.data(), m); },
        [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
          return MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, static_cast<int>(m),
                                MPI_BYTE, c, r);
        },
        [&](const std::byte* s) { detail::copy_bytes(out.data(), s, out.size()); });
    add_both(static_cast<std::uint64_t>(n - 1) * m, m != 0 ? n - 1 : 0);
  }

  /// Gathers counts[r] bytes from each rank r into out, one after another in rank
  /// order, with MPI_Iallgatherv; in.size() must be counts[rank()]. Every rank passes
  /// the same counts; their sum is at most INT_MAX. `in` may be rank()'s place in `out`.
  ///
  ///   t.allgatherv(mine, all, counts);
  void allgatherv(std::span<const std::byte> in, std::span<std::byte> out,
                  std::span<const std::size_t> counts) {
    static constexpr const char* call = "mpi_transport::allgatherv";
    auto& st = *state_;
    const auto n = static_cast<std::size_t>(st.size);
    const auto me = static_cast<std::size_t>(st.rank);
    if (counts.size() != n)
      arg_error(call,
                "counts has " + std::to_string(counts.size()) + " entries for " + world_text());
    std::size_t total = 0, offset = 0;
    for (std::size_t r = 0; r < n; ++r) {
      if (r == me) offset = total;
      if (counts[r] > detail::mpi_max_count - total)
        arg_error(call, "counts add up to more than INT_MAX (" +
                            std::to_string(detail::mpi_max_count) +
                            ") bytes, which MPI's displacements cannot express");
      total += counts[r];
    }
    if (in.size() != counts[me])
      arg_error(call, "in has " + std::to_string(in.size()) + " bytes but counts[" +
                          std::to_string(me) + "] is " + std::to_string(counts[me]));
    if (out.size() != total)
      arg_error(call, "out has " + std::to_string(out.size()) + " bytes but the counts add up to " +
                          std::to_string(total));
    const bool in_place = in.data() == out.data() + offset;
    if (!in_place && detail::overlap(in.data(), in.size(), out.data(), out.size()))
      arg_error(call, "in overlaps out other than at this rank's place");
    std::uint64_t got = 0, got_msgs = 0;
    for (std::size_t r = 0; r < n; ++r)
      if (r != me) {
        got += counts[r];
        got_msgs += counts[r] != 0;
      }
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::allgatherv;
    d.count = total;
    d.v1 = counts;
    run_collective(
        call, d, "MPI_Iallgatherv", total,
        [&](std::byte* s) { detail::copy_bytes(s + offset, in.data(), in.size()); },
        [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
          int* a = st.int_arrays(2 * n);
          int* recv_counts = a;
          int* displs = a + n;
          std::size_t at = 0;
          for (std::size_t q = 0; q < n; ++q) {
            recv_counts[q] = static_cast<int>(counts[q]);
            displs[q] = static_cast<int>(at);
            at += counts[q];
          }
          return MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, recv_counts, displs,
                                 MPI_BYTE, c, r);
        },
        [&](const std::byte* s) { detail::copy_bytes(out.data(), s, total); }, true);
    const auto others = static_cast<std::uint64_t>(n - 1);
    st.counters.add_sent(others * in.size(), in.empty() ? 0 : others);
    st.counters.add_received(got, got_msgs);
  }

  /// Exchanges equal chunks with MPI_Ialltoall: chunk r of `in` (in.size() / size()
  /// bytes, at most INT_MAX) goes to rank r; chunk r of `out` came from rank r. in and
  /// out must not overlap.
  ///
  ///   t.alltoall(send_chunks, recv_chunks);
  void alltoall(std::span<const std::byte> in, std::span<std::byte> out) {
    static constexpr const char* call = "mpi_transport::alltoall";
    auto& st = *state_;
    const auto n = static_cast<std::size_t>(st.size);
    if (in.size() != out.size())
      arg_error(call, "in has " + std::to_string(in.size()) + " bytes but out has " +
                          std::to_string(out.size()));
    if (in.size() % n != 0)
      arg_error(call, "in has " + std::to_string(in.size()) + " bytes, not a multiple of " +
                          world_text());
    if (detail::overlap(in.data(), in.size(), out.data(), out.size()))
      arg_error(call, "in and out overlap");
    const std::size_t c = in.size() / n;
    if (c > detail::mpi_max_count)
      arg_error(call, "chunks of " + std::to_string(c) + " bytes: " + over_int_max());
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::alltoall;
    d.count = c;
    const std::size_t bytes = in.size();
    run_collective(
        call, d, "MPI_Ialltoall", 2 * bytes,
        [&](std::byte* s) { detail::copy_bytes(s, in.data(), bytes); },
        [&](MPI_Comm comm, std::byte* s, MPI_Request* r) {
          return MPI_Ialltoall(s, static_cast<int>(c), MPI_BYTE, s + bytes, static_cast<int>(c),
                               MPI_BYTE, comm, r);
        },
        [&](const std::byte* s) { detail::copy_bytes(out.data(), s + bytes, bytes); });
    add_both(static_cast<std::uint64_t>(n - 1) * c, c != 0 ? n - 1 : 0);
  }

  /// Exchanges chunks of per-rank lengths with MPI_Ialltoallv: send_counts[r] bytes of
  /// `in` go to rank r, recv_counts[r] bytes of `out` come from rank r, chunks one after
  /// another in rank order. What rank a sends to b is what b expects from a; each side's
  /// total is at most INT_MAX. in and out must not overlap.
  ///
  ///   t.alltoallv(in, send_counts, out, recv_counts);
  void alltoallv(std::span<const std::byte> in, std::span<const std::size_t> send_counts,
                 std::span<std::byte> out, std::span<const std::size_t> recv_counts) {
    static constexpr const char* call = "mpi_transport::alltoallv";
    auto& st = *state_;
    const auto n = static_cast<std::size_t>(st.size);
    const auto me = static_cast<std::size_t>(st.rank);
    if (send_counts.size() != n || recv_counts.size() != n)
      arg_error(call, "send_counts has " + std::to_string(send_counts.size()) +
                          " entries and recv_counts " + std::to_string(recv_counts.size()) +
                          " for " + world_text());
    std::size_t send_total = 0, recv_total = 0;
    for (std::size_t r = 0; r < n; ++r) {
      if (send_counts[r] > detail::mpi_max_count - send_total ||
          recv_counts[r] > detail::mpi_max_count - recv_total)
        arg_error(call, "the counts add up to more than INT_MAX (" +
                            std::to_string(detail::mpi_max_count) +
                            ") bytes, which MPI's displacements cannot express");
      send_total += send_counts[r];
      recv_total += recv_counts[r];
    }
    if (in.size() != send_total)
      arg_error(call, "in has " + std::to_string(in.size()) + " bytes but send_counts add up to " +
                          std::to_string(send_total));
    if (out.size() != recv_total)
      arg_error(call, "out has " + std::to_string(out.size()) +
                          " bytes but recv_counts add up to " + std::to_string(recv_total));
    if (detail::overlap(in.data(), in.size(), out.data(), out.size()))
      arg_error(call, "in and out overlap");
    std::uint64_t got = 0, got_msgs = 0, gave = 0, gave_msgs = 0;
    for (std::size_t r = 0; r < n; ++r)
      if (r != me) {
        got += recv_counts[r];
        got_msgs += recv_counts[r] != 0;
        gave += send_counts[r];
        gave_msgs += send_counts[r] != 0;
      }
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::alltoallv;
    d.v1 = send_counts;
    d.v2 = recv_counts;
    run_collective(
        call, d, "MPI_Ialltoallv", send_total + recv_total,
        [&](std::byte* s) { detail::copy_bytes(s, in.data(), send_total); },
        [&](MPI_Comm comm, std::byte* s, MPI_Request* r) {
          int* a = st.int_arrays(4 * n);
          int *sc = a, *sd = a + n, *rc = a + 2 * n, *rd = a + 3 * n;
          std::size_t s_at = 0, r_at = 0;
          for (std::size_t q = 0; q < n; ++q) {
            sc[q] = static_cast<int>(send_counts[q]);
            sd[q] = static_cast<int>(s_at);
            rc[q] = static_cast<int>(recv_counts[q]);
            rd[q] = static_cast<int>(r_at);
            s_at += send_counts[q];
            r_at += recv_counts[q];
          }
          return MPI_Ialltoallv(s, sc, sd, MPI_BYTE, s + send_total, rc, rd, MPI_BYTE, comm, r);
        },
        [&](const std::byte* s) { detail::copy_bytes(out.data(), s + send_total, recv_total); },
        true);
    st.counters.add_sent(gave, gave_msgs);
    st.counters.add_received(got, got_msgs);
  }

  /// Copies root's `buf` into every other rank's `buf` (all of the same length, at
  /// most INT_MAX bytes) with MPI_Ibcast.
  ///
  ///   t.broadcast(std::as_writable_bytes(std::span(params)), /*root=*/0);
  void broadcast(std::span<std::byte> buf, int root) {
    static constexpr const char* call = "mpi_transport::broadcast";
    auto& st = *state_;
    if (root < 0 || root >= st.size)
      arg_error(call, "root " + std::to_string(root) + " is not a rank of " + world_text());
    if (buf.size() > detail::mpi_max_count)
      arg_error(call, std::to_string(buf.size()) + " bytes: " + over_int_max());
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::broadcast;
    d.count = buf.size();
    d.root = static_cast<std::uint64_t>(root);
    const bool is_root = st.rank == root;
    run_collective(
        call, d, "MPI_Ibcast", buf.size(),
        [&](std::byte* s) {
          if (is_root) detail::copy_bytes(s, buf.data(), buf.size());
        },
        [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
          return MPI_Ibcast(s, static_cast<int>(buf.size()), MPI_BYTE, root, c, r);
        },
        [&](const std::byte* s) {
          if (!is_root) detail::copy_bytes(buf.data(), s, buf.size());
        });
    const auto others = static_cast<std::uint64_t>(st.size - 1);
    if (st.rank == root)
      st.counters.add_sent(others * buf.size(), buf.empty() ? 0 : others);
    else
      st.counters.add_received(buf.size(), buf.empty() ? 0 : 1);
  }

  /// Returns once every rank entered the barrier (MPI_Ibarrier).
  ///
  ///   t.barrier();
  void barrier() {
    detail::mpi_coll_desc d;
    d.kind = detail::coll_kind::barrier;
    run_collective(
        "mpi_transport::barrier", d, "MPI_Ibarrier", 0, [](std::byte*) {},
        [](MPI_Comm c, std::byte*, MPI_Request* r) { return MPI_Ibarrier(c, r); },
        [](const std::byte*) {});
  }

 private:
  friend host_transport_calls;
  // What a device view or device operation handed to a call meets (host_transport_calls).
  template <class... A>
  static void refuse_device_memory() {
    static_assert(!detail::device_memory_arguments<A...>,
                  "gradcomm: the MPI transport moves host memory; a device span needs a device "
                  "transport (NCCL, issue 18) or a copy to host first");
  }
  // Where one collective stands in its agreement (see the class): the check in flight,
  // the agreed shape this rank ran at once (if any), and the verdict.
  struct agreement {
    MPI_Request req = MPI_REQUEST_NULL;   // the check: Iallgather of the records
    MPI_Request vreq = MPI_REQUEST_NULL;  // its second round: the count vectors
    std::unique_ptr<std::uint64_t[]> vectors;
    std::vector<std::uint64_t> key;
    MPI_Comm hit_comm = MPI_COMM_NULL;  // this rank's agreed shape, run beside the check
    MPI_Comm fallback = MPI_COMM_NULL;  // where a shape not (yet) agreed runs
    MPI_Comm target = MPI_COMM_NULL;    // where every rank runs it: decided by the check
    bool decided = false;
    bool disagreed = false;
  };

  std::string world_text() const {
    return "a communicator of " + std::to_string(size()) + " ranks";
  }

  static std::string over_int_max() {
    return "MPI counts are int, at most INT_MAX (" + std::to_string(detail::mpi_max_count) +
           "); split the call";
  }

  [[noreturn]] void arg_error(const char* call, std::string why) const {
    detail::throw_invalid_argument(call, std::move(why), rank());
  }

  void add_both(std::uint64_t bytes, std::uint64_t msgs) const noexcept {
    state_->counters.add_sent(bytes, msgs);
    state_->counters.add_received(bytes, msgs);
  }

  void check_peer_tag(const char* call, const char* what, int peer, int tag, bool any_ok) const {
    const auto& st = *state_;
    if (!(any_ok && peer == any_source) && (peer < 0 || peer >= st.size))
      arg_error(call, std::string(what) + " rank " + std::to_string(peer) + " (tag " +
                          std::to_string(tag) + "): no such rank in " + world_text());
    if (tag < 0 || tag > st.tag_ub)
      arg_error(call, std::string(what) + " rank " + std::to_string(peer) + ": tag " +
                          std::to_string(tag) +
                          " is outside [0, MPI_TAG_UB = " + std::to_string(st.tag_ub) + "]");
  }

  void check_request(const request& req, const char* call) const {
    if (req.ops_ && req.state_ != state_)
      arg_error(call, "the request was posted on another transport");
    if (req.timed_out_)
      arg_error(call,
                "the group timed out earlier (its unmatched receives were withdrawn); post a "
                "new one");
  }

  // Posts a group on `comm` (the user's or the ring's); `collective`: a ring all-reduce's
  // messages, which the all-reduce counts as a whole.
  request post_group(const char* call, std::span<const send_op> sends,
                     std::span<const recv_op> recvs, MPI_Comm comm, bool collective) {
    auto& st = *state_;
    request req;
    req.owner_ = st.rank;
    const std::size_t n = sends.size() + recvs.size();
    if (n == 0) return req;
    req.state_ = state_;
    req.ops_ = std::make_unique<detail::mpi_op[]>(n);
    req.reqs_ = std::make_unique<MPI_Request[]>(n);
    for (std::size_t i = 0; i < n; ++i) req.reqs_[i] = MPI_REQUEST_NULL;
    // From here on a failure withdraws, through req's destructor, what was posted.
    req.n_sends_ = sends.size();
    req.n_recvs_ = recvs.size();
    for (std::size_t i = 0; i < recvs.size(); ++i) {
      auto& op = req.ops_[sends.size() + i];
      op.peer = recvs[i].peer;
      op.tag = recvs[i].tag;
      op.dst = recvs[i].data.data();
      op.size = recvs[i].data.size();
      op.comm = comm;
      op.collective = collective;
    }
    st.unmatched.reserve(st.unmatched.size() + recvs.size());
    for (std::size_t i = 0; i < recvs.size(); ++i) {
      req.ops_[sends.size() + i].st = detail::mpi_op::status::unmatched;
      st.unmatched.push_back({&req.ops_[sends.size() + i], &req.reqs_[sends.size() + i]});
    }
    for (std::size_t i = 0; i < sends.size(); ++i) {
      auto& op = req.ops_[i];
      op.peer = sends[i].peer;
      op.tag = sends[i].tag;
      op.is_send = true;
      op.comm = comm;
      op.collective = collective;
      op.src = sends[i].data.data();
      op.size = sends[i].data.size();
      // MPI's send buffer is not const in its C binding; it is only read.
      detail::mpi_check(MPI_Isend(const_cast<std::byte*>(op.src), static_cast<int>(op.size),
                                  MPI_BYTE, op.peer, op.tag, comm, &req.reqs_[i]),
                        call, "MPI_Isend", st.rank);
      op.st = detail::mpi_op::status::active;
    }
    progress(call);
    return req;
  }

  // ---- ring all-reduce (detail/mpi_ring.hpp) --------------------------------------------
  template <class E>
  void ring_allreduce(const char* call, std::span<const E> in, std::span<E> out, reduce_op op,
                      const detail::mpi_coll_desc& d);
  template <class Done>
  void ring_wait(request& req, const char* call, std::uint64_t seq, const detail::mpi_coll_desc& d,
                 agreement& ag, Done&& done);
  void abandon_ring(request& req, agreement& ag) noexcept;

  // ---- progress, receive matching, point-to-point waits (detail/mpi_matching.hpp) -------
  bool progress(const char* call);
  bool match_receives(const char* call);
  void start_receive(const detail::mpi_unmatched& u, MPI_Message& msg, const MPI_Status& status,
                     const char* call);
  void reap_orphans() noexcept;
  bool poll(request& req, const char* call);
  void wait_for(request& req, const char* call);
  [[noreturn]] void throw_timeout(request& req, const char* call);
  void throw_receive_errors(const request& req, const char* call) const;

  // ---- collectives and their agreement checks (detail/mpi_collectives.hpp) --------------
  template <class CopyIn, class Post, class CopyOut>
  void run_collective(const char* call, const detail::mpi_coll_desc& d, const char* mpi_function,
                      std::size_t stage_bytes, CopyIn&& copy_in, Post&& post_on, CopyOut&& copy_out,
                      bool arrays = false);
  void start_agreement(const char* call, const detail::mpi_coll_desc& d, std::uint64_t seq,
                       MPI_Comm fallback, agreement& ag);
  bool test_agreement(const char* call, const detail::mpi_coll_desc& d, agreement& ag);
  void decide(const char* call, const detail::mpi_coll_desc& d, agreement& ag);
  MPI_Comm new_shape_comm(const char* call, detail::coll_kind kind);
  MPI_Comm shape_comm(std::uint64_t id) const noexcept;
  void drop_shapes(const std::set<std::uint64_t>& ids);
  template <class Rec>
  std::string disagreement(const char* call, const detail::mpi_coll_desc& d, agreement& ag,
                           Rec&& rec, bool one_shape);
  std::vector<std::uint64_t> exchange_vectors(const char* call, const detail::mpi_coll_desc& d,
                                              agreement& ag, std::size_t words);
  template <class Done>
  void await(const char* call, detail::coll_kind kind, std::uint64_t seq, Done&& done);
  void check_collectives(const char* call) const;
  void stop_collectives(const std::string& why, int peer) noexcept;
  void leave_to_mpi(MPI_Request& r, bool arrays, agreement& ag) noexcept;

  // ---- control channel: where the others are, on a timeout (detail/mpi_control.hpp) ----
  void serve_control(const char* call);
  void send_control(int to, int tag, std::uint64_t id, std::uint64_t seq, const char* call);
  void announce_gave_up(const char* call, std::uint64_t seq, int peer) noexcept;
  template <class Done>
  bool find_missing(const char* call, detail::coll_kind kind, std::uint64_t seq, Done&& done);

  std::shared_ptr<detail::mpi_state> state_;
};

// The transport checks itself against the concepts it promises (transport/transport.hpp).
static_assert(AsyncTransport<mpi_transport>);
static_assert(mpi_transport::space == memory_space::host);

}  // namespace v0
}  // namespace gradcomm

// The definitions of the private members declared above.
#include <gradcomm/transport/detail/mpi_collectives.hpp>
#include <gradcomm/transport/detail/mpi_control.hpp>
#include <gradcomm/transport/detail/mpi_matching.hpp>
#include <gradcomm/transport/detail/mpi_ring.hpp>

#endif  // GRADCOMM_HAS_MPI

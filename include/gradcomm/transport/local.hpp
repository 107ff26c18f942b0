// gradcomm/transport/local.hpp — the `local` transport: N ranks as threads of one
// process, moving bytes through shared memory.
//
//   gradcomm::local_world world(4);  // 4 ranks, 60 s deadline on every wait
//   world.run([](gradcomm::local_transport& t) {  // one thread per rank
//     std::vector<float> g(1000, float(t.rank()));
//     t.allreduce<float>(g, g, gradcomm::reduce_op::sum);  // in place
//   });  // joins; rethrows the exception that started a failure, if any
//
// It is the transport of the tests and of the single-machine examples, and the
// reference for the others: it models AsyncTransport, reports peers that fail or
// do not arrive by rank, and every rank of a collective ends with the same bits.
//
// How it works:
//  - Point-to-point: sends and receives meet at rendezvous, matched per (source,
//    tag) in the order posted. The post that completes a match copies the bytes
//    straight from the sender's buffer into the receiver's, so a send buffer must
//    stay valid until the sender's wait() returns (or its request is destroyed).
//  - Collectives: each rank publishes its buffers for collective number k; the
//    ranks meet at steps with a deadline; between steps each rank reads and writes
//    the others' buffers directly (an all-reduce: each rank reduces its 1/N slice
//    over all inputs in rank order 0..N-1 and writes it into every rank's output).
//  - Waiting is on condition variables with deadlines, never spinning. A rank that
//    fails (throws out of world.run, or calls abort) releases every rank waiting on
//    it with a peer_error at once; a rank that does not arrive is reported by a
//    timeout_error after timeout().
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/detail/local_reduce.hpp>
#include <gradcomm/transport/detail/local_state.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

class local_transport;
class local_world;

/// One rank of a local_world. Models AsyncTransport. Use it from one thread (the
/// rank's); the world's ranks run concurrently.
///
///   world.run([](gradcomm::local_transport& t) {
///     const int me = t.rank();
///     std::vector<int> all(t.size());  // all[r] == r afterwards
///     t.allgather(std::as_bytes(std::span(&me, 1)), std::as_writable_bytes(std::span(all)));
///   });
///
/// Errors name the call, this rank and the peer: timeout_error when a peer did not
/// arrive within timeout(), peer_error when a peer failed (at once, not after the
/// timeout), gradcomm::error (invalid_argument) when the ranks' arguments disagree.
class local_transport : public host_transport_calls<local_transport> {
 public:
  /// The memory it moves: host memory (Transport requirement 0). A device view given to
  /// any call does not compile and says why (host_transport_calls).
  static constexpr memory_space space = memory_space::host;
  using host_transport_calls::post, host_transport_calls::recv_any, host_transport_calls::allreduce,
      host_transport_calls::allgather, host_transport_calls::allgatherv,
      host_transport_calls::alltoall, host_transport_calls::alltoallv,
      host_transport_calls::broadcast;

  /// Destroying a request withdraws its whole group, sends included (transport trait T1,
  /// transport/transport.hpp).
  static constexpr bool withdraws_groups = true;

  /// An outstanding point-to-point group, returned by post(). Destroying it before
  /// wait() returned withdraws the operations that were not matched yet (and waits
  /// for copies in flight to finish, so its buffers may be freed afterwards).
  ///
  ///   auto req = t.post(sends, recvs);
  ///   t.wait(req);
  ///   std::size_t n = req.received(0);  // length of the first receive's message
  class request {
   public:
    request() noexcept = default;
    request(request&& o) noexcept
        : state_(std::move(o.state_)),
          ops_(std::move(o.ops_)),
          owner_(o.owner_),
          n_sends_(std::exchange(o.n_sends_, 0)),
          n_recvs_(std::exchange(o.n_recvs_, 0)) {}
    request& operator=(request&& o) noexcept {
      if (this != &o) {
        withdraw();
        state_ = std::move(o.state_);
        ops_ = std::move(o.ops_);
        owner_ = o.owner_;
        n_sends_ = std::exchange(o.n_sends_, 0);
        n_recvs_ = std::exchange(o.n_recvs_, 0);
      }
      return *this;
    }
    request(const request&) = delete;
    request& operator=(const request&) = delete;
    ~request() { withdraw(); }

    /// How many receives the group holds.
    std::size_t receives() const noexcept { return n_recvs_; }
    /// The length of the message the i-th receive got. Valid after wait() returned.
    std::size_t received(std::size_t i) const { return recv_at(i).bytes; }
    /// The rank the i-th receive's message came from (useful with any_source).
    /// Valid after wait() returned.
    int source(std::size_t i) const { return recv_at(i).source; }

   private:
    friend class local_transport;

    const detail::local_op& recv_at(std::size_t i) const {
      if (i >= n_recvs_)
        detail::throw_invalid_argument(
            "local_transport::request::received",
            "receive " + std::to_string(i) + " of a group of " + std::to_string(n_recvs_), owner_);
      return ops_[n_sends_ + i];
    }

    void withdraw() noexcept {
      if (!ops_) return;
      auto& st = *state_;
      std::unique_lock lk(st.mu);
      for (std::size_t i = 0; i < n_sends_ + n_recvs_; ++i) {
        auto& op = ops_[i];
        if (op.st == detail::local_op::status::pending) st.unqueue(op);
        // A peer's post is copying into or out of our buffers: let it finish.
        st.slot(owner_).cv.wait(lk, [&] { return op.st != detail::local_op::status::copying; });
      }
      lk.unlock();
      ops_.reset();
    }

    std::shared_ptr<detail::local_state> state_;
    std::unique_ptr<detail::local_op[]> ops_;
    int owner_ = -1;
    std::size_t n_sends_ = 0;
    std::size_t n_recvs_ = 0;
  };

  local_transport(local_transport&&) noexcept = default;
  local_transport& operator=(local_transport&&) noexcept = default;
  local_transport(const local_transport&) = delete;
  local_transport& operator=(const local_transport&) = delete;

  /// This rank, in [0, size()).
  int rank() const noexcept { return rank_; }
  /// The number of ranks of the world.
  int size() const noexcept { return state_->size; }
  /// The longest any call waits for one peer (a collective: at each of its steps).
  std::chrono::milliseconds timeout() const noexcept { return state_->timeout; }
  /// This rank's traffic: message bytes for point-to-point; for collectives the
  /// bytes copied out of this rank's buffers into another rank's (sent) and into
  /// this rank's buffers out of another rank's (received), whichever thread copied
  /// them: 2(N-1)/N × the input each way for an all-reduce, as a ring would send.
  /// Time blocked in waits goes to wait_ns.
  ///
  ///   auto before = t.counters().snapshot();
  ///   t.allreduce<float>(g, g, gradcomm::reduce_op::sum);
  ///   auto moved = (t.counters().snapshot() - before).bytes_sent;
  const traffic_counters& counters() const noexcept { return state_->slot(rank_).counters; }

  /// Posts a group of sends and receives; returns at once (it copies the messages
  /// whose other side is already posted). A receive may name any_source.
  /// Send buffers must stay valid until wait() returns.
  ///
  ///   gradcomm::send_op s[] = {{next, 0, mine}};
  ///   gradcomm::recv_op r[] = {{prev, 0, theirs}};
  ///   auto req = t.post(s, r);
  request post(std::span<const send_op> sends, std::span<const recv_op> recvs) {
    static constexpr const char* call = "local_transport::post";
    auto& st = *state_;
    for (const auto& s : sends)
      if (s.peer < 0 || s.peer >= st.size)
        detail::throw_invalid_argument(call,
                                       "send to rank " + std::to_string(s.peer) + " (tag " +
                                           std::to_string(s.tag) + "): no such rank in " +
                                           world_text(),
                                       rank_);
    for (const auto& r : recvs)
      if (r.peer != any_source && (r.peer < 0 || r.peer >= st.size))
        detail::throw_invalid_argument(call,
                                       "receive from rank " + std::to_string(r.peer) + " (tag " +
                                           std::to_string(r.tag) + "): no such rank in " +
                                           world_text(),
                                       rank_);
    request req;
    req.owner_ = rank_;
    req.n_sends_ = sends.size();
    req.n_recvs_ = recvs.size();
    const std::size_t n = sends.size() + recvs.size();
    if (n == 0) return req;
    req.state_ = state_;
    req.ops_ = std::make_unique<detail::local_op[]>(n);
    for (std::size_t i = 0; i < sends.size(); ++i) {
      auto& op = req.ops_[i];
      op.owner = rank_;
      op.peer = sends[i].peer;
      op.tag = sends[i].tag;
      op.is_send = true;
      op.src = sends[i].data.data();
      op.size = sends[i].data.size();
    }
    for (std::size_t i = 0; i < recvs.size(); ++i) {
      auto& op = req.ops_[sends.size() + i];
      op.owner = rank_;
      op.peer = recvs[i].peer;
      op.tag = recvs[i].tag;
      op.dst = recvs[i].data.data();
      op.size = recvs[i].data.size();
    }
    bool copies = false;
    {
      std::lock_guard lk(st.mu);
      throw_if_aborted(call);
      for (std::size_t i = 0; i < n; ++i) {
        const int p = req.ops_[i].peer;
        if (p != any_source && st.slot(p).failed)
          throw peer_error(call, rank_, p, st.failure_text(p));
      }
      for (std::size_t i = 0; i < n; ++i) copies |= match_or_enqueue(req.ops_[i]);
    }
    if (copies) {
      for (std::size_t i = 0; i < n; ++i)
        if (req.ops_[i].copy_here) copy_pair(req.ops_[i]);
      std::lock_guard lk(st.mu);
      for (std::size_t i = 0; i < n; ++i)
        if (req.ops_[i].copy_here) finish_pair(req.ops_[i]);
    }
    return req;
  }

  /// Blocks until every operation of the group completed. Throws timeout_error
  /// naming a missing peer after timeout(), peer_error at once when that peer
  /// failed, and gradcomm::error (buffer_too_small) when a message was longer than
  /// its receive buffer (naming sizes, peer and tag; the sender is not told).
  ///
  ///   t.wait(req);
  void wait(request& req) { wait_for(req, "local_transport::wait"); }

  /// True when every operation of the group completed (then it reports errors as
  /// wait() does); false otherwise. Never blocks on peers.
  ///
  ///   while (!t.test(req)) do_other_work();
  bool test(request& req) {
    static constexpr const char* call = "local_transport::test";
    check_owner(req, call);
    if (!req.ops_) return true;
    {
      std::lock_guard lk(state_->mu);
      if (!group_done(req)) {
        throw_if_group_cannot_finish(req, call);
        return false;
      }
    }
    throw_receive_errors(req, call);
    return true;
  }

  /// Receives the earliest-posted message under `tag` from any rank into `buf`.
  /// Throws timeout_error (peer any_source) when none came within timeout(), and
  /// peer_error only when every other rank failed: the others may still send.
  ///
  ///   gradcomm::recv_result r = t.recv_any(/*tag=*/3, buf);
  recv_result recv_any(int tag, std::span<std::byte> buf) {
    const recv_op r[] = {{any_source, tag, buf}};
    auto req = post({}, r);
    wait_for(req, "local_transport::recv_any");
    return {req.source(0), req.received(0)};
  }

  /// Element-wise reduction over all ranks; every rank gets the same bits: each
  /// rank reduces its 1/N slice over all inputs in rank order 0..N-1 and writes the
  /// result into every rank's `out`. `in` may be `out`.
  ///
  ///   t.allreduce<float>(g, g, gradcomm::reduce_op::sum);  // g: a std::vector<float>
  template <native_reduce_type E>
  void allreduce(std::span<const E> in, std::span<E> out, reduce_op op) {
    static constexpr const char* call = "local_transport::allreduce";
    detail::coll_desc d;
    d.kind = detail::coll_kind::allreduce;
    d.elem = detail::local_elem_code<E>;
    d.op = op;
    d.count = in.size();
    d.in = reinterpret_cast<const std::byte*>(in.data());
    d.out = reinterpret_cast<std::byte*>(out.data());
    d.out_bytes = out.size_bytes();
    if (in.size() != out.size())
      d.error = "in has " + std::to_string(in.size()) + " elements but out has " +
                std::to_string(out.size());
    else if (in.data() != out.data() &&
             detail::overlap(in.data(), in.size_bytes(), out.data(), out.size_bytes()))
      d.error = "in and out overlap without being the same buffer";
    const std::uint64_t seq = begin_collective(call, std::move(d));
    const int n = size();
    const auto k = seq % 2;
    auto& st = *state_;
    auto input = [&](int q) { return reinterpret_cast<const E*>(st.slot(q).desc[k].in); };
    auto output = [&](int q) { return reinterpret_cast<E*>(st.slot(q).desc[k].out); };
    const auto mine = detail::slice_of(in.size(), n, rank_);
    switch (op) {
      case reduce_op::sum:
        detail::local_reduce_slice<E, reduce_op::sum>(input, output, n, mine.lo, mine.hi);
        break;
      case reduce_op::max:
        detail::local_reduce_slice<E, reduce_op::max>(input, output, n, mine.lo, mine.hi);
        break;
      case reduce_op::min:
        detail::local_reduce_slice<E, reduce_op::min>(input, output, n, mine.lo, mine.hi);
        break;
    }
    collective_step(call, seq, 2, true);
    // This rank read its slice from N-1 inputs and wrote the result to N-1 outputs;
    // the others read the rest of its input and wrote the rest of its output. Sent
    // and received are equal: 2(N-1)/N × the input when the slices are even, what
    // a ring all-reduce sends.
    const auto others = static_cast<std::uint64_t>(n - 1);
    const std::uint64_t own = mine.hi - mine.lo;
    std::uint64_t other_msgs = 0;
    for (int q = 0; q < n; ++q) {
      const auto s = detail::slice_of(in.size(), n, q);
      other_msgs += q != rank_ && s.hi != s.lo;
    }
    const std::uint64_t total = (others * own + (in.size() - own)) * sizeof(E);
    const std::uint64_t total_msgs = (own != 0 ? others : 0) + other_msgs;
    slot().counters.add_sent(total, total_msgs);
    slot().counters.add_received(total, total_msgs);
  }

  /// Gathers in.size() bytes from every rank into out (size() × in.size() bytes,
  /// rank r's at r × in.size()). `in` may be rank()'s own place in `out`.
  ///
  ///   t.allgather(std::as_bytes(std::span(&x, 1)), std::as_writable_bytes(std::span(all)));
  void allgather(std::span<const std::byte> in, std::span<std::byte> out) {
    static constexpr const char* call = "local_transport::allgather";
    const auto n = static_cast<std::size_t>(size());
    const std::size_t m = in.size();
    detail::coll_desc d = bytes_desc(detail::coll_kind::allgather, in, out);
    if (out.size() / n != m || out.size() % n != 0)
      d.error = "out has " + std::to_string(out.size()) + " bytes, expected " + std::to_string(n) +
                " ranks x " + std::to_string(m) + " bytes";
    else if (in.data() != out.data() + static_cast<std::size_t>(rank_) * m &&
             detail::overlap(in.data(), m, out.data(), out.size()))
      d.error = "in overlaps out other than at this rank's place";
    const std::uint64_t seq = begin_collective(call, std::move(d));
    const auto k = seq % 2;
    for (int q = 0; q < size(); ++q) {
      std::byte* to = out.data() + static_cast<std::size_t>(q) * m;
      const std::byte* from = state_->slot(q).desc[k].in;
      if (to != from) detail::copy_bytes(to, from, m);
    }
    collective_step(call, seq, 2, true);
    add_both(static_cast<std::uint64_t>(n - 1) * m, m != 0 ? n - 1 : 0);
  }

  /// Gathers counts[r] bytes from each rank r into out, one after another in rank
  /// order; in.size() must be counts[rank()]. Every rank passes the same counts.
  ///
  ///   t.allgatherv(mine, all, counts);
  void allgatherv(std::span<const std::byte> in, std::span<std::byte> out,
                  std::span<const std::size_t> counts) {
    static constexpr const char* call = "local_transport::allgatherv";
    detail::coll_desc d = bytes_desc(detail::coll_kind::allgatherv, in, out);
    d.counts = counts;
    std::size_t total = 0, offset = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      if (r == static_cast<std::size_t>(rank_)) offset = total;
      total += counts[r];
    }
    if (counts.size() != static_cast<std::size_t>(size()))
      d.error = "counts has " + std::to_string(counts.size()) + " entries for " + world_text();
    else if (in.size() != counts[static_cast<std::size_t>(rank_)])
      d.error = "in has " + std::to_string(in.size()) + " bytes but counts[" +
                std::to_string(rank_) + "] is " +
                std::to_string(counts[static_cast<std::size_t>(rank_)]);
    else if (out.size() != total)
      d.error = "out has " + std::to_string(out.size()) + " bytes but the counts add up to " +
                std::to_string(total);
    else if (in.data() != out.data() + offset &&
             detail::overlap(in.data(), in.size(), out.data(), out.size()))
      d.error = "in overlaps out other than at this rank's place";
    const std::uint64_t seq = begin_collective(call, std::move(d));
    const auto k = seq % 2;
    std::uint64_t got = 0, got_msgs = 0;
    std::size_t at = 0;
    for (int q = 0; q < size(); ++q) {
      const std::size_t c = counts[static_cast<std::size_t>(q)];
      const std::byte* from = state_->slot(q).desc[k].in;
      if (out.data() + at != from) detail::copy_bytes(out.data() + at, from, c);
      if (q != rank_) {
        got += c;
        got_msgs += c != 0;
      }
      at += c;
    }
    collective_step(call, seq, 2, true);
    const auto others = static_cast<std::uint64_t>(size() - 1);
    slot().counters.add_sent(others * in.size(), in.empty() ? 0 : others);
    slot().counters.add_received(got, got_msgs);
  }

  /// Exchanges equal chunks: chunk r of `in` (in.size() / size() bytes) goes to
  /// rank r; chunk r of `out` came from rank r. in and out must not overlap.
  ///
  ///   t.alltoall(send_chunks, recv_chunks);
  void alltoall(std::span<const std::byte> in, std::span<std::byte> out) {
    static constexpr const char* call = "local_transport::alltoall";
    const auto n = static_cast<std::size_t>(size());
    detail::coll_desc d = bytes_desc(detail::coll_kind::alltoall, in, out);
    if (in.size() != out.size())
      d.error = "in has " + std::to_string(in.size()) + " bytes but out has " +
                std::to_string(out.size());
    else if (in.size() % n != 0)
      d.error = "in has " + std::to_string(in.size()) + " bytes, not a multiple of " + world_text();
    else if (detail::overlap(in.data(), in.size(), out.data(), out.size()))
      d.error = "in and out overlap";
    const std::uint64_t seq = begin_collective(call, std::move(d));
    const auto k = seq % 2;
    const std::size_t c = in.size() / n;
    for (std::size_t q = 0; q < n; ++q)
      detail::copy_bytes(
          out.data() + q * c,
          state_->slot(static_cast<int>(q)).desc[k].in + static_cast<std::size_t>(rank_) * c, c);
    collective_step(call, seq, 2, true);
    add_both(static_cast<std::uint64_t>(n - 1) * c, c != 0 ? n - 1 : 0);
  }

  /// Exchanges chunks of per-rank lengths: send_counts[r] bytes of `in` go to rank
  /// r, recv_counts[r] bytes of `out` come from rank r, chunks one after another in
  /// rank order. What rank a sends to b is what b expects from a.
  ///
  ///   t.alltoallv(in, send_counts, out, recv_counts);
  void alltoallv(std::span<const std::byte> in, std::span<const std::size_t> send_counts,
                 std::span<std::byte> out, std::span<const std::size_t> recv_counts) {
    static constexpr const char* call = "local_transport::alltoallv";
    const auto n = static_cast<std::size_t>(size());
    detail::coll_desc d = bytes_desc(detail::coll_kind::alltoallv, in, out);
    d.counts = send_counts;
    d.counts2 = recv_counts;
    std::size_t send_total = 0, recv_total = 0;
    for (std::size_t c : send_counts) send_total += c;
    for (std::size_t c : recv_counts) recv_total += c;
    if (send_counts.size() != n || recv_counts.size() != n)
      d.error = "send_counts has " + std::to_string(send_counts.size()) +
                " entries and recv_counts " + std::to_string(recv_counts.size()) + " for " +
                world_text();
    else if (in.size() != send_total)
      d.error = "in has " + std::to_string(in.size()) + " bytes but send_counts add up to " +
                std::to_string(send_total);
    else if (out.size() != recv_total)
      d.error = "out has " + std::to_string(out.size()) + " bytes but recv_counts add up to " +
                std::to_string(recv_total);
    else if (detail::overlap(in.data(), in.size(), out.data(), out.size()))
      d.error = "in and out overlap";
    const std::uint64_t seq = begin_collective(call, std::move(d));
    const auto k = seq % 2;
    const auto me = static_cast<std::size_t>(rank_);
    std::uint64_t got = 0, got_msgs = 0, gave = 0, gave_msgs = 0;
    std::size_t at = 0;
    for (std::size_t q = 0; q < n; ++q) {
      const auto& dq = state_->slot(static_cast<int>(q)).desc[k];
      std::size_t from = 0;  // where q's chunk for this rank starts in q's input
      for (std::size_t p = 0; p < me; ++p) from += dq.counts[p];
      detail::copy_bytes(out.data() + at, dq.in + from, recv_counts[q]);
      at += recv_counts[q];
      if (q != me) {
        got += recv_counts[q];
        got_msgs += recv_counts[q] != 0;
        gave += send_counts[q];
        gave_msgs += send_counts[q] != 0;
      }
    }
    collective_step(call, seq, 2, true);
    slot().counters.add_sent(gave, gave_msgs);
    slot().counters.add_received(got, got_msgs);
  }

  /// Copies root's `buf` into every other rank's `buf` (all of the same length).
  ///
  ///   t.broadcast(std::as_writable_bytes(std::span(params)), /*root=*/0);
  void broadcast(std::span<std::byte> buf, int root) {
    static constexpr const char* call = "local_transport::broadcast";
    detail::coll_desc d = bytes_desc(detail::coll_kind::broadcast, buf, buf);
    d.root = root;
    if (root < 0 || root >= size())
      d.error = "root " + std::to_string(root) + " is not a rank of " + world_text();
    const std::uint64_t seq = begin_collective(call, std::move(d));
    if (rank_ != root)
      detail::copy_bytes(buf.data(), state_->slot(root).desc[seq % 2].in, buf.size());
    collective_step(call, seq, 2, true);
    const auto others = static_cast<std::uint64_t>(size() - 1);
    if (rank_ == root)
      slot().counters.add_sent(others * buf.size(), buf.empty() ? 0 : others);
    else
      slot().counters.add_received(buf.size(), buf.empty() ? 0 : 1);
  }

  /// Returns once every rank entered the barrier.
  ///
  ///   t.barrier();
  void barrier() {
    detail::coll_desc d;
    d.kind = detail::coll_kind::barrier;
    begin_collective("local_transport::barrier", std::move(d));
  }

  /// Marks this rank failed, for ranks run on threads of the caller's own (world.run
  /// does it when a rank throws): every rank waiting on this one, or later talking to
  /// it or starting a collective, gets a peer_error naming it with `reason`.
  /// Call it from this rank's thread, outside any call on this transport.
  ///
  ///   try { train(t); } catch (const std::exception& e) { t.abort(e.what()); throw; }
  void abort(std::string reason) {
    std::lock_guard lk(state_->mu);
    state_->mark_failed(rank_, std::move(reason));
  }

 private:
  friend host_transport_calls;
  // What a device view or device operation handed to a call meets (host_transport_calls).
  template <class... A>
  static void refuse_device_memory() {
    static_assert(!detail::device_memory_arguments<A...>,
                  "gradcomm: the local transport moves host memory; a device span needs a device "
                  "transport (NCCL, issue 18) or a copy to host first");
  }
  friend class local_world;

  local_transport(std::shared_ptr<detail::local_state> s, int rank) noexcept
      : state_(std::move(s)), rank_(rank) {}

  detail::local_rank_slot& slot() const noexcept { return state_->slot(rank_); }

  std::string world_text() const { return "a world of " + std::to_string(size()) + " ranks"; }

  void add_both(std::uint64_t bytes, std::uint64_t msgs) const noexcept {
    slot().counters.add_sent(bytes, msgs);
    slot().counters.add_received(bytes, msgs);
  }

  static detail::coll_desc bytes_desc(detail::coll_kind kind, std::span<const std::byte> in,
                                      std::span<std::byte> out) {
    detail::coll_desc d;
    d.kind = kind;
    d.count = in.size();
    d.in = in.data();
    d.out = out.data();
    d.out_bytes = out.size();
    return d;
  }

  // Lock held.
  void throw_if_aborted(const char* call) const {
    if (slot().failed)
      throw peer_error(call, rank_, rank_, "this rank was aborted: " + slot().fail_reason);
  }

  void check_owner(const request& req, const char* call) const {
    if (req.ops_ && (req.state_ != state_ || req.owner_ != rank_))
      detail::throw_invalid_argument(call,
                                     "the request was posted by rank " +
                                         std::to_string(req.owner_) +
                                         (req.state_ != state_ ? " of another world" : ""),
                                     rank_);
  }

  // ---- point-to-point ---------------------------------------------------------

  // Matches `op` with the earliest-posted counterpart, or queues it. Returns whether
  // it matched (then this thread copies). Lock held.
  bool match_or_enqueue(detail::local_op& op) {
    auto& st = *state_;
    using status = detail::local_op::status;
    if (op.is_send) {
      auto& q = st.recvs_at[static_cast<std::size_t>(op.peer)];
      for (auto it = q.begin(); it != q.end(); ++it) {
        detail::local_op* r = *it;
        if (r->tag == op.tag && (r->peer == op.owner || r->peer == any_source)) {
          q.erase(it);
          pair(op, *r, op);
          return true;
        }
      }
      st.sends_to[static_cast<std::size_t>(op.peer)].push_back(&op);
    } else {
      auto& q = st.sends_to[static_cast<std::size_t>(op.owner)];
      for (auto it = q.begin(); it != q.end(); ++it) {
        detail::local_op* s = *it;
        if (s->tag == op.tag && (op.peer == any_source || s->owner == op.peer)) {
          q.erase(it);
          pair(*s, op, op);
          return true;
        }
      }
      st.recvs_at[static_cast<std::size_t>(op.owner)].push_back(&op);
    }
    op.st = status::pending;
    return false;
  }

  static void pair(detail::local_op& send, detail::local_op& recv, detail::local_op& mine) {
    send.st = recv.st = detail::local_op::status::copying;
    send.match = &recv;
    recv.match = &send;
    mine.copy_here = true;
  }

  // Without the lock: both buffers are reserved for this copy by the `copying` state.
  static void copy_pair(detail::local_op& op) {
    const detail::local_op& send = op.is_send ? op : *op.match;
    detail::local_op& recv = op.is_send ? *op.match : op;
    if (send.size <= recv.size) detail::copy_bytes(recv.dst, send.src, send.size);
  }

  // Lock held.
  void finish_pair(detail::local_op& op) {
    auto& st = *state_;
    detail::local_op& send = op.is_send ? op : *op.match;
    detail::local_op& recv = op.is_send ? *op.match : op;
    recv.source = send.owner;
    if (send.size > recv.size) {
      recv.error = "a message of " + std::to_string(send.size) + " bytes from rank " +
                   std::to_string(send.owner) + " (tag " + std::to_string(send.tag) +
                   ") does not fit the receive buffer of " + std::to_string(recv.size) + " bytes";
    } else {
      recv.bytes = send.size;
      st.slot(send.owner).counters.add_sent(send.size);
      st.slot(recv.owner).counters.add_received(send.size);
    }
    send.st = recv.st = detail::local_op::status::done;
    op.copy_here = false;
    st.slot(send.owner).cv.notify_all();
    if (recv.owner != send.owner) st.slot(recv.owner).cv.notify_all();
  }

  // Lock held.
  static bool group_done(const request& req) noexcept {
    for (std::size_t i = 0; i < req.n_sends_ + req.n_recvs_; ++i)
      if (req.ops_[i].st != detail::local_op::status::done) return false;
    return true;
  }

  // Throws when an operation of the group can never complete. Lock held.
  void throw_if_group_cannot_finish(const request& req, const char* call) const {
    auto& st = *state_;
    throw_if_aborted(call);
    for (std::size_t i = 0; i < req.n_sends_ + req.n_recvs_; ++i) {
      const auto& op = req.ops_[i];
      if (op.st != detail::local_op::status::pending) continue;
      if (op.peer != any_source) {
        if (st.slot(op.peer).failed)
          throw peer_error(call, rank_, op.peer, st.failure_text(op.peer));
      } else if (st.size > 1) {
        const int f = st.first_failed([this](int r) { return r != rank_; });
        bool all_failed = true;
        for (int r = 0; r < st.size; ++r) all_failed &= r == rank_ || st.slot(r).failed;
        if (all_failed)
          throw peer_error(call, rank_, f,
                           "every other rank failed, the first: " + st.failure_text(f));
      }
    }
  }

  void wait_for(request& req, const char* call) {
    check_owner(req, call);
    if (!req.ops_) return;
    auto& st = *state_;
    scoped_timer timer(slot().counters.wait_ns);
    const auto deadline = detail::local_clock::now() + st.timeout;
    std::unique_lock lk(st.mu);
    for (;;) {
      if (group_done(req)) break;
      throw_if_group_cannot_finish(req, call);
      bool pending = false;
      for (std::size_t i = 0; i < req.n_sends_ + req.n_recvs_; ++i)
        pending |= req.ops_[i].st == detail::local_op::status::pending;
      if (!pending) {
        slot().cv.wait(lk);  // only copies in flight: they finish without peers
      } else if (detail::local_clock::now() >= deadline) {
        throw_timeout(req, call);
      } else {
        slot().cv.wait_until(lk, deadline);
      }
    }
    lk.unlock();
    throw_receive_errors(req, call);
  }

  [[noreturn]] void throw_timeout(const request& req, const char* call) const {
    int first = any_source;
    std::string what;
    for (std::size_t i = 0; i < req.n_sends_ + req.n_recvs_; ++i) {
      const auto& op = req.ops_[i];
      if (op.st != detail::local_op::status::pending) continue;
      if (!what.empty()) what += "; ";
      const std::string who =
          op.peer == any_source ? "any rank" : "rank " + std::to_string(op.peer);
      what += (op.is_send ? "send to " : "receive from ") + who + " (tag " +
              std::to_string(op.tag) + ", " + std::to_string(op.size) + " bytes)";
      if (first == any_source && op.peer != any_source) first = op.peer;
    }
    throw timeout_error(
        call, rank_, first,
        "no match within " + std::to_string(timeout().count()) + " ms for: " + what);
  }

  void throw_receive_errors(const request& req, const char* call) const {
    for (std::size_t i = 0; i < req.n_recvs_; ++i) {
      const auto& op = req.ops_[req.n_sends_ + i];
      if (!op.error.empty())
        throw error(make_error_code(errc::buffer_too_small), call, rank_, op.error);
    }
  }

  // ---- collectives ------------------------------------------------------------

  // Publishes this rank's arguments as collective number k, meets the others at
  // step 1 and checks that all called the same collective with consistent sizes
  // (every rank sees the same descriptors, so every rank throws the same error).
  std::uint64_t begin_collective(const char* call, detail::coll_desc&& d) {
    auto& st = *state_;
    std::uint64_t seq = 0;
    {
      std::lock_guard lk(st.mu);
      throw_if_aborted(call);
      // A failed rank is the cause; a broken sequence may be only its effect.
      if (const int f = st.first_failed([](int) { return true; }); f >= 0)
        throw peer_error(call, rank_, f, st.failure_text(f));
      if (st.broken.set)
        throw peer_error(call, rank_, st.broken.rank,
                         "collectives on this world stopped when rank " +
                             std::to_string(st.broken.rank) + " left collective #" +
                             std::to_string(st.broken.seq) + ": " + st.broken.reason);
      seq = ++slot().coll_seq;
    }
    const bool one_step = d.kind == detail::coll_kind::barrier;
    publish(slot().desc[seq % 2], std::move(d));
    collective_step(call, seq, 1, one_step);
    if (std::string why = check_agreement(seq); !why.empty()) {
      if (!one_step) {
        std::lock_guard lk(st.mu);
        slot().busy = false;
        if (st.broken.set) st.notify_all_ranks();
      }
      detail::throw_invalid_argument(call, why, rank_);
    }
    return seq;
  }

  // Writes this rank's descriptor into its slot, with the counts copied into arrays
  // the slot owns (their capacity stays, so steady calls allocate nothing).
  static void publish(detail::coll_desc& slot_desc, detail::coll_desc&& d) {
    auto counts = std::move(slot_desc.counts_store), counts2 = std::move(slot_desc.counts2_store);
    counts.assign(d.counts.begin(), d.counts.end());
    counts2.assign(d.counts2.begin(), d.counts2.end());
    slot_desc = std::move(d);
    slot_desc.counts_store = std::move(counts);
    slot_desc.counts2_store = std::move(counts2);
    slot_desc.counts = slot_desc.counts_store;
    slot_desc.counts2 = slot_desc.counts2_store;
  }

  // Two ranks whose buffers overlap, where one of them writes (several ranks handed
  // the same vector): each rank would write the others' results. "" when none.
  static std::string shared_buffers(const detail::coll_desc& a, int qa, const detail::coll_desc& b,
                                    int qb) {
    auto r = [](int q) { return "rank " + std::to_string(q); };
    if (detail::overlap(a.out, a.out_bytes, b.out, b.out_bytes))
      return r(qa) + " and " + r(qb) + " pass overlapping output buffers";
    if (detail::overlap(a.out, a.out_bytes, b.in, detail::local_in_bytes(b)))
      return r(qa) + "'s output overlaps " + r(qb) + "'s input";
    if (detail::overlap(b.out, b.out_bytes, a.in, detail::local_in_bytes(a)))
      return r(qb) + "'s output overlaps " + r(qa) + "'s input";
    return {};
  }

  std::string check_agreement(std::uint64_t seq) const {
    const auto k = seq % 2;
    const int n = size();
    auto desc = [&](int q) -> const detail::coll_desc& { return state_->slot(q).desc[k]; };
    auto r = [](int q) { return "rank " + std::to_string(q); };
    const auto& d0 = desc(0);
    for (int q = 1; q < n; ++q)
      if (desc(q).kind != d0.kind)
        return "collective #" + std::to_string(seq) + ": rank 0 called " +
               detail::coll_name(d0.kind) + " but " + r(q) + " called " +
               detail::coll_name(desc(q).kind);
    for (int q = 0; q < n; ++q)
      if (!desc(q).error.empty()) return "arguments of " + r(q) + ": " + desc(q).error;
    for (int q = 1; q < n; ++q) {
      const auto& dq = desc(q);
      switch (d0.kind) {
        case detail::coll_kind::allreduce:
          if (dq.elem != d0.elem || dq.op != d0.op || dq.count != d0.count) {
            auto what = [](const detail::coll_desc& x) {
              return std::to_string(x.count) + " " + detail::local_elem_name(x.elem) +
                     " elements (" + detail::reduce_op_name(x.op) + ")";
            };
            return "rank 0 reduces " + what(d0) + " but " + r(q) + " reduces " + what(dq);
          }
          break;
        case detail::coll_kind::allgather:
        case detail::coll_kind::alltoall:
          if (dq.count != d0.count)
            return "rank 0 passes " + std::to_string(d0.count) + " bytes but " + r(q) + " passes " +
                   std::to_string(dq.count);
          break;
        case detail::coll_kind::allgatherv:
          for (std::size_t p = 0; p < static_cast<std::size_t>(n); ++p)
            if (dq.counts[p] != d0.counts[p])
              return "rank 0 has counts[" + std::to_string(p) +
                     "] = " + std::to_string(d0.counts[p]) + " but " + r(q) + " has " +
                     std::to_string(dq.counts[p]);
          break;
        case detail::coll_kind::broadcast:
          if (dq.root != d0.root)
            return "rank 0 broadcasts from root " + std::to_string(d0.root) + " but " + r(q) +
                   " from root " + std::to_string(dq.root);
          if (dq.count != d0.count)
            return "rank 0 has a buffer of " + std::to_string(d0.count) + " bytes but " + r(q) +
                   " one of " + std::to_string(dq.count);
          break;
        case detail::coll_kind::alltoallv:
        case detail::coll_kind::barrier: break;
      }
    }
    if (d0.kind != detail::coll_kind::barrier)
      for (int q = 0; q < n; ++q)
        for (int p = q + 1; p < n; ++p)
          if (std::string why = shared_buffers(desc(q), q, desc(p), p); !why.empty())
            return why + " (" + detail::coll_name(d0.kind) + " of collective #" +
                   std::to_string(seq) + "): each rank of a local_world needs buffers of its own";
    if (d0.kind == detail::coll_kind::alltoallv)
      for (int q = 0; q < n; ++q)
        for (int p = 0; p < n; ++p)
          if (const std::size_t sent = desc(q).counts[static_cast<std::size_t>(p)],
              expected = desc(p).counts2[static_cast<std::size_t>(q)];
              sent != expected)
            return r(q) + " sends " + std::to_string(sent) + " bytes to " + r(p) + " but " + r(p) +
                   " expects " + std::to_string(expected) + " bytes from " + r(q);
    return {};
  }

  // Arrives at step `step` of collective `seq` and waits until every rank arrived.
  // On any failure it withdraws this rank's buffers before throwing: it marks the
  // collectives broken (no rank passes a step any more) and waits until no rank is
  // still reading or writing between steps.
  void collective_step(const char* call, std::uint64_t seq, int step, bool last) {
    auto& st = *state_;
    auto& me = slot();
    scoped_timer timer(me.counters.wait_ns);
    const std::uint64_t target = seq * 4 + static_cast<std::uint64_t>(step);
    std::unique_lock lk(st.mu);
    me.progress = target;
    me.busy = false;
    auto arrived = [&](int q) { return st.slot(q).progress >= target; };
    auto all_arrived = [&] {
      for (int q = 0; q < st.size; ++q)
        if (!arrived(q)) return false;
      return true;
    };
    // Only the last arrival can release the waiters; withdrawing ranks wait on `busy`.
    if (all_arrived() || st.broken.set) st.notify_all_ranks();
    const auto deadline = detail::local_clock::now() + st.timeout;
    for (;;) {
      if (st.broken.set) fail_broken_collective(lk, call, seq, step, target);
      if (all_arrived()) {
        me.busy = !last;
        return;
      }
      if (const int f = st.first_failed([&](int q) { return !arrived(q); }); f >= 0)
        abandon_collective(lk, seq, false, peer_error(call, rank_, f, st.failure_text(f)));
      if (detail::local_clock::now() >= deadline) {
        const std::vector<int> missing = missing_ranks(target);
        abandon_collective(lk, seq, true,
                           timeout_error(call, rank_, missing.front(),
                                         missing_text(missing, seq, step) + " within " +
                                             std::to_string(st.timeout.count()) + " ms"));
      }
      me.cv.wait_until(lk, deadline);
    }
  }

  std::vector<int> missing_ranks(std::uint64_t target) const {
    std::vector<int> m;
    for (int q = 0; q < size(); ++q)
      if (state_->slot(q).progress < target) m.push_back(q);
    return m;
  }

  std::string missing_text(const std::vector<int>& missing, std::uint64_t seq, int step) const {
    return std::string(missing.size() == 1 ? "rank " : "ranks ") + detail::rank_list(missing) +
           " did not reach step " + std::to_string(step) + " of collective #" +
           std::to_string(seq) + " (" + detail::coll_name(slot().desc[seq % 2].kind) + ")";
  }

  // Lock held. Waits until no other rank is between steps (those finish their
  // copies without waiting on anyone, and no rank starts a new one once `broken` is set).
  void wait_until_no_rank_busy(std::unique_lock<std::mutex>& lk) {
    auto& st = *state_;
    slot().cv.wait(lk, [&] {
      for (int q = 0; q < st.size; ++q)
        if (q != rank_ && st.slot(q).busy) return false;
      return true;
    });
  }

  template <class Error>
  [[noreturn]] void abandon_collective(std::unique_lock<std::mutex>& lk, std::uint64_t seq,
                                       bool timed_out, Error e) {
    auto& st = *state_;
    if (!st.broken.set) {
      st.broken = {true, rank_, seq, timed_out, e.reason()};
      st.notify_all_ranks();
    }
    wait_until_no_rank_busy(lk);
    throw e;
  }

  // Another rank left the collective with an error: report what this rank was
  // waiting for, in the same terms where it was waiting for the same thing.
  [[noreturn]] void fail_broken_collective(std::unique_lock<std::mutex>& lk, const char* call,
                                           std::uint64_t seq, int step, std::uint64_t target) {
    auto& st = *state_;
    wait_until_no_rank_busy(lk);
    const std::vector<int> missing = missing_ranks(target);
    const int f = st.first_failed([&](int q) { return st.slot(q).progress < target; });
    if (f >= 0) throw peer_error(call, rank_, f, st.failure_text(f));
    if (st.broken.timeout && !missing.empty())
      throw timeout_error(call, rank_, missing.front(),
                          missing_text(missing, seq, step) + " within " +
                              std::to_string(st.timeout.count()) + " ms (rank " +
                              std::to_string(st.broken.rank) + "'s deadline passed first)");
    throw peer_error(call, rank_, st.broken.rank,
                     "rank " + std::to_string(st.broken.rank) + " left collective #" +
                         std::to_string(st.broken.seq) + ": " + st.broken.reason);
  }

  std::shared_ptr<detail::local_state> state_;
  int rank_ = 0;
};

/// N ranks as threads of one process. run() starts one thread per rank; or take
/// each rank's transport() and run it on threads of your own.
///
///   gradcomm::local_world world(8, std::chrono::seconds(5));
///   world.run([&](gradcomm::local_transport& t) { train(t); });
///
/// A world stays failed once a rank failed or a collective was abandoned (after a
/// timeout the ranks no longer agree on the order of collectives): later
/// collectives throw peer_error at once. Point-to-point between live ranks goes on.
/// Each rank's buffers must be its own: a collective in which one rank's output overlaps
/// another rank's input or output (ranks handed the same vector) is refused on every rank
/// with invalid_argument before any byte moves.
class local_world {
 public:
  /// `size` ranks; every wait of every rank is bounded by `timeout`.
  ///
  ///   gradcomm::local_world world(4, std::chrono::milliseconds(200));
  explicit local_world(int size, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    if (size < 1)
      detail::throw_invalid_argument(
          "local_world", "size is " + std::to_string(size) + ", a world needs at least one rank");
    if (timeout.count() <= 0)
      detail::throw_invalid_argument("local_world", "the timeout must be positive, it is " +
                                                        std::to_string(timeout.count()) + " ms");
    state_ = std::make_shared<detail::local_state>(size, timeout);
  }

  /// The number of ranks.
  int size() const noexcept { return state_->size; }
  /// The deadline of every wait.
  std::chrono::milliseconds timeout() const noexcept { return state_->timeout; }

  /// The transport of rank `rank`, for running ranks on threads of your own; it
  /// shares the rank's counters with every other handle of that rank.
  ///
  ///   std::jthread t0([&] { auto t = world.transport(0); work(t); });
  local_transport transport(int rank) {
    if (rank < 0 || rank >= size())
      detail::throw_invalid_argument(
          "local_world::transport",
          "rank " + std::to_string(rank) + " of a world of " + std::to_string(size()) + " ranks");
    return local_transport(state_, rank);
  }

  /// Runs f(local_transport&) on size() threads, one per rank, and joins them. When a
  /// rank throws, it is marked failed (the others get peer_error naming it) and run
  /// rethrows the exception that started it all: the first one that was not a
  /// peer_error caused by another rank's failure. f is called from all the threads
  /// at once, each with its own rank's transport.
  ///
  ///   world.run([](gradcomm::local_transport& t) { t.barrier(); });
  template <class F>
  requires std::invocable<F&, local_transport&>
  void run(F&& f) {
    auto& st = *state_;
    std::size_t first = 0;
    {
      std::lock_guard lk(st.mu);
      first = st.failures.size();
    }
    auto body = [&](int r) {
      local_transport t(state_, r);
      try {
        std::invoke(f, t);
      } catch (...) {
        record_failure(r, std::current_exception());
      }
    };
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(size()));
    try {
      for (int r = 0; r < size(); ++r) threads.emplace_back(body, r);
    } catch (...) {
      {
        std::lock_guard lk(st.mu);
        for (int r = static_cast<int>(threads.size()); r < size(); ++r)
          st.mark_failed(r, "its thread could not be started");
      }
      for (auto& th : threads) th.join();
      throw;
    }
    for (auto& th : threads) th.join();
    std::exception_ptr root;
    {
      std::lock_guard lk(st.mu);
      for (std::size_t i = first; i < st.failures.size() && !root; ++i)
        if (!st.failures[i].caused_by_peer) root = st.failures[i].error;
      if (!root && st.failures.size() > first) root = st.failures[first].error;
    }
    if (root) std::rethrow_exception(root);
  }

 private:
  void record_failure(int r, std::exception_ptr e) {
    bool by_peer = false;
    std::string reason;
    try {
      std::rethrow_exception(e);
    } catch (const peer_error& x) {
      by_peer = true;
      reason = x.what();
    } catch (const std::exception& x) {
      reason = x.what();
    } catch (...) {
      reason = "an exception that is not a std::exception";
    }
    auto& st = *state_;
    std::lock_guard lk(st.mu);
    st.failures.push_back({r, std::move(e), by_peer});
    st.mark_failed(r, std::move(reason));
  }

  std::shared_ptr<detail::local_state> state_;
};

// The transport checks itself against the concepts it promises (transport/transport.hpp).
static_assert(AsyncTransport<local_transport>);
static_assert(local_transport::space == memory_space::host);

}  // namespace v0
}  // namespace gradcomm

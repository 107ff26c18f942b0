// gradcomm/transport/transport.hpp — what a transport is: the vocabulary of
// point-to-point groups and the concepts `Transport` and `AsyncTransport`.
//
//   template <gradcomm::Transport T>
//   void ring_exchange(T& t, std::span<const std::byte> mine, std::span<std::byte> theirs) {
//     const int next = (t.rank() + 1) % t.size(), prev = (t.rank() + t.size() - 1) % t.size();
//     gradcomm::send_op s[] = {{next, /*tag=*/0, mine}};
//     gradcomm::recv_op r[] = {{prev, /*tag=*/0, theirs}};
//     auto req = t.post(s, r);  // one group: its sends and receives never deadlock each other
//     t.wait(req);              // bounded by t.timeout()
//   }
//
// A transport moves bytes between the ranks of a fixed world: `local` (threads of
// one process), `mpi`, `nccl`. Communicators are written against the concepts
// here, so a combination that cannot work (a parameter server over a transport
// without any-source receive) fails to compile.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

namespace gradcomm {
inline namespace v0 {

/// The source of a receive that takes a message from whichever rank sends first.
///
///   auto r = t.recv_any(tag, buf);  // r.source is the rank it came from
inline constexpr int any_source = -1;

/// How a native all-reduce combines the ranks' elements.
///
///   t.allreduce<float>(g, g, gradcomm::reduce_op::sum);
enum class reduce_op { sum, max, min };

/// One send of a point-to-point group: `data` goes to rank `peer` under `tag`.
/// The bytes must stay valid and unchanged until the group's wait() returns.
///
///   gradcomm::send_op s{/*peer=*/1, /*tag=*/7, std::as_bytes(std::span(v))};
struct send_op {
  int peer;
  int tag;
  std::span<const std::byte> data;
};

/// One receive of a point-to-point group: a message from rank `peer` under `tag`
/// lands in `data`. `data` is the receive buffer: a shorter message is fine (its
/// length is reported), a longer one is an error on the receiver.
///
///   gradcomm::recv_op r{/*peer=*/0, /*tag=*/7, std::as_writable_bytes(std::span(v))};
struct recv_op {
  int peer;
  int tag;
  std::span<std::byte> data;
};

/// What a receive from any source got: the sending rank and the message length.
///
///   gradcomm::recv_result r = t.recv_any(tag, buf);
///   use(r.source, buf.first(r.bytes));
struct recv_result {
  int source;
  std::size_t bytes;
};

/// True for the element types every transport reduces natively.
///
///   static_assert(gradcomm::native_reduce_type<float>);
template <class T>
concept native_reduce_type = std::is_same_v<T, float> || std::is_same_v<T, double> ||
    std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t>;

namespace detail {

// Transport is split into three groups so that a failed check names the group
// (identity, point-to-point, collectives) and the expression that is missing.

template <class T>
concept transport_identity = requires(const T& ct) {
  { ct.rank() } -> std::same_as<int>;
  { ct.size() } -> std::same_as<int>;
  { ct.timeout() } -> std::same_as<std::chrono::milliseconds>;
  { ct.counters() } -> std::same_as<const traffic_counters&>;
};

template <class T>
concept transport_point_to_point = requires(T& t, typename T::request& req,
                                            const typename T::request& creq,
                                            std::span<const send_op> sends,
                                            std::span<const recv_op> recvs, std::size_t i) {
  typename T::request;
  { t.post(sends, recvs) } -> std::same_as<typename T::request>;
  t.wait(req);
  { t.test(req) } -> std::same_as<bool>;
  { creq.received(i) } -> std::convertible_to<std::size_t>;
};

template <class T>
concept transport_collectives = requires(T& t, std::span<const std::byte> in,
                                         std::span<std::byte> out,
                                         std::span<const std::size_t> counts, int root) {
  t.allreduce(std::span<const float>{}, std::span<float>{}, reduce_op::sum);
  t.allreduce(std::span<const double>{}, std::span<double>{}, reduce_op::sum);
  t.allreduce(std::span<const std::int32_t>{}, std::span<std::int32_t>{}, reduce_op::sum);
  t.allreduce(std::span<const std::int64_t>{}, std::span<std::int64_t>{}, reduce_op::sum);
  t.allgather(in, out);
  t.allgatherv(in, out, counts);
  t.alltoall(in, out);
  t.alltoallv(in, counts, out, counts);
  t.broadcast(out, root);
  t.barrier();
};

}  // namespace detail

/// A transport: the ranks of a fixed world, tagged point-to-point groups and native
/// collectives, every wait bounded by a deadline. Requirements, for `t` a `T&`:
///
///  1. `t.rank()` and `t.size()` return `int`: this rank in [0, size) and the world size.
///  2. `t.timeout()` returns `std::chrono::milliseconds`; no call blocks longer than that
///     waiting for one peer (a collective waits at most that long at each of its steps).
///  3. `t.counters()` returns `const traffic_counters&`, updated by every call: bytes and
///     messages that left and reached this rank, and the time spent waiting.
///  4. `typename T::request` names an outstanding group; `req.received(i)` is the
///     length of the message the i-th receive of the group got (valid after wait()).
///  5. `t.post(std::span<const send_op>, std::span<const recv_op>)` returns a request
///     and does not block on peers. All operations of one call are posted as one
///     group: its sends and receives never deadlock each other, whatever the order.
///     Messages between one pair of ranks under one tag match in the order posted.
///  6. `t.wait(req)` returns when every operation of the group completed; it throws
///     `timeout_error` naming a missing peer after `timeout()`, `peer_error` when
///     that peer failed, and an `error` when a message is longer than its buffer.
///     Send buffers must stay valid until wait() returns.
///  7. `t.test(req)` returns whether the group completed, without blocking.
///  8. `t.allreduce(std::span<const E> in, std::span<E> out, reduce_op)` for E in
///     float, double, int32_t, int64_t (`native_reduce_type`); `in` may be `out`.
///     Every rank ends with the same bits.
///  9. `t.allgather(in, out)`: out holds size() × in.size() bytes, rank r's at r × in.size().
/// 10. `t.allgatherv(in, out, counts)`: counts[r] bytes from rank r, placed one after
///     another in rank order.
/// 11. `t.alltoall(in, out)`: equal chunks of in.size() / size() bytes; chunk r of
///     `in` goes to rank r, chunk r of `out` came from rank r.
/// 12. `t.alltoallv(in, send_counts, out, recv_counts)`: the same with per-rank
///     lengths, chunks one after another in rank order.
/// 13. `t.broadcast(std::span<std::byte> buf, int root)`: every rank ends with root's bytes.
/// 14. `t.barrier()`: returns once every rank entered it.
/// 15. Every rank calls the collectives in the same order with consistent sizes;
///     a mismatch is reported (not hung on) where the transport can see it.
///
/// Requirements 1–3 are checked as group `detail::transport_identity`, 4–7 as
/// `detail::transport_point_to_point`, 8–14 as `detail::transport_collectives`;
/// 2, 6 and 15 are semantic.
///
/// A communicator states its need with a message, so that a wrong argument reads
/// as a sentence and not as a page of template backtrace:
///
///   template <class Codec, class T>
///   class allreduce {
///     static_assert(gradcomm::Transport<T>,
///                   "gradcomm::allreduce<Codec, T>: T must model gradcomm::Transport");
///   };
///
/// or calls `check_transport<T>()` (below), which says which group is missing.
template <class T>
concept Transport = detail::transport_identity<T> && detail::transport_point_to_point<T> &&
    detail::transport_collectives<T>;

/// A transport that also receives from any source (local, MPI; NCCL has none):
///
/// 16. `t.recv_any(int tag, std::span<std::byte> buf)` returns `recv_result`: it takes
///     the earliest-posted message under `tag` from any rank, bounded by timeout().
///
///   template <gradcomm::AsyncTransport T> class parameter_server;  // needs recv_any
template <class T>
concept AsyncTransport = Transport<T> && requires(T& t, int tag, std::span<std::byte> buf) {
  { t.recv_any(tag, buf) } -> std::same_as<recv_result>;
};

namespace detail {
// The least a transport can be: models AsyncTransport and declares no trait. A
// communicator's header instantiates itself with it (and codec_archetype, codec/codec.hpp)
// to check that it models Communicator without naming a concrete transport. Its calls do
// nothing; never run it.
struct transport_archetype {
  struct request {
    std::size_t received(std::size_t) const noexcept { return 0; }
  };
  int rank() const noexcept { return 0; }
  int size() const noexcept { return 1; }
  std::chrono::milliseconds timeout() const noexcept { return {}; }
  const traffic_counters& counters() const noexcept { return counters_; }
  request post(std::span<const send_op>, std::span<const recv_op>) { return {}; }
  void wait(request&) {}
  bool test(request&) { return true; }
  recv_result recv_any(int, std::span<std::byte>) { return {}; }
  template <native_reduce_type E>
  void allreduce(std::span<const E>, std::span<E>, reduce_op) {}
  void allgather(std::span<const std::byte>, std::span<std::byte>) {}
  void allgatherv(std::span<const std::byte>, std::span<std::byte>, std::span<const std::size_t>) {}
  void alltoall(std::span<const std::byte>, std::span<std::byte>) {}
  void alltoallv(std::span<const std::byte>, std::span<const std::size_t>, std::span<std::byte>,
                 std::span<const std::size_t>) {}
  void broadcast(std::span<std::byte>, int) {}
  void barrier() {}
  traffic_counters counters_;
};
static_assert(AsyncTransport<transport_archetype>);
}  // namespace detail

/// Transport traits: what a transport declares about itself, read by communicators
/// through the names below (never by the transport's type). Each is optional:
///
///  T1. `static constexpr bool withdraws_groups = true;` when destroying a request
///      withdraws all of its group, sends included, and returns only when the transport
///      no longer touches the group's buffers (local_transport). Read by
///      `transport_withdraws_groups<T>`; false when not declared (MPI cannot withdraw a
///      send). Gossip then withdraws the exchanges it still holds open when it goes and
///      frees their buffers, instead of keeping them until the program ends.
///
///   static_assert(gradcomm::transport_withdraws_groups<gradcomm::local_transport>);
template <class T>
inline constexpr bool transport_withdraws_groups = requires {
  requires T::withdraws_groups;
};

/// Checks T against Transport one group at a time, each failure with its own
/// sentence; true when T models it.
///
///   static_assert(gradcomm::check_transport<my_transport>());
template <class T>
consteval bool check_transport() {
  static_assert(detail::transport_identity<T>,
                "gradcomm::Transport (requirements 1-3): T needs rank() -> int, size() -> int, "
                "timeout() -> std::chrono::milliseconds and counters() -> const "
                "traffic_counters&, all callable on a const T");
  static_assert(detail::transport_point_to_point<T>,
                "gradcomm::Transport (requirements 4-7): T needs a type T::request with "
                "received(i), post(span<const send_op>, span<const recv_op>) -> request, "
                "wait(request&) and test(request&) -> bool");
  static_assert(detail::transport_collectives<T>,
                "gradcomm::Transport (requirements 8-14): T needs allreduce for float, double, "
                "int32_t and int64_t, allgather, allgatherv, alltoall, alltoallv, broadcast "
                "and barrier");
  return Transport<T>;
}

/// Like check_transport, and also requirement 16 (recv_any).
///
///   static_assert(gradcomm::check_async_transport<my_transport>());
template <class T>
consteval bool check_async_transport() {
  static_assert(check_transport<T>());
  static_assert(AsyncTransport<T>,
                "gradcomm::AsyncTransport (requirement 16): T needs recv_any(int tag, "
                "span<std::byte>) -> recv_result");
  return true;
}

}  // namespace v0
}  // namespace gradcomm

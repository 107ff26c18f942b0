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
// one process), `mpi`, and one day `nccl` (between GPUs). Communicators are written
// against the concepts here, so a combination that cannot work (a parameter server over
// a transport without any-source receive) fails to compile.
//
// A transport says which memory it moves (`T::space`, requirement 0), and its byte spans
// say it too: a host transport (local, MPI) takes std::span of host memory, a device
// transport takes device views (transport_span). A device view handed to a host
// transport does not compile, and says so (host_transport_calls):
//
//   gradcomm::device_bytes d(p, n);  // p from cudaMalloc
//   mpi.broadcast(d, 0);             // error: the MPI transport moves host memory; ...
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ranges>
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

/// How the calls of a transport whose memory space is S take a buffer of T: a std::span
/// on the host (what host code holds; every host view converts to one, host_bytes
/// included), a device view on the device (which host code cannot read).
///
///   gradcomm::transport_span<const std::byte, gradcomm::memory_space::host> in = bytes;
///   gradcomm::transport_span<float, gradcomm::memory_space::device> g(d, n);  // device_view
template <class T, memory_space S>
using transport_span = std::conditional_t<S == memory_space::host, std::span<T>, tensor_view<T, S>>;

/// One send of a point-to-point group of a transport whose memory space is S: `data`
/// goes to rank `peer` under `tag`. The bytes must stay valid and unchanged until the
/// group's wait() returns.
///
///   gradcomm::send_op s{/*peer=*/1, /*tag=*/7, std::as_bytes(std::span(v))};
template <memory_space S>
struct basic_send_op {
  int peer;
  int tag;
  transport_span<const std::byte, S> data;
};

/// One receive of a point-to-point group of a transport whose memory space is S: a
/// message from rank `peer` under `tag` lands in `data`. `data` is the receive buffer: a
/// shorter message is fine (its length is reported), a longer one is an error on the
/// receiver.
///
///   gradcomm::recv_op r{/*peer=*/0, /*tag=*/7, std::as_writable_bytes(std::span(v))};
template <memory_space S>
struct basic_recv_op {
  int peer;
  int tag;
  transport_span<std::byte, S> data;
};

/// The operations of host transports (local, MPI): their bytes are std::spans of host memory.
using send_op = basic_send_op<memory_space::host>;
using recv_op = basic_recv_op<memory_space::host>;

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

// Requirement 0: the memory space, and for a device transport the stream it orders on.
template <class T>
concept transport_space = std::same_as<std::remove_cv_t<decltype(T::space)>, memory_space> &&
    (T::space == memory_space::host || requires(const T& ct) {
      requires ExecutionContextFor<typename T::context_type, memory_space::device>;
      { ct.context() } -> std::convertible_to<typename T::context_type>;
    });

template <class T>
concept transport_identity = transport_space<T> && requires(const T& ct) {
  { ct.rank() } -> std::same_as<int>;
  { ct.size() } -> std::same_as<int>;
  { ct.timeout() } -> std::same_as<std::chrono::milliseconds>;
  { ct.counters() } -> std::same_as<const traffic_counters&>;
};

template <class T>
concept transport_point_to_point = requires(T& t, typename T::request& req,
                                            const typename T::request& creq,
                                            std::span<const basic_send_op<T::space>> sends,
                                            std::span<const basic_recv_op<T::space>> recvs,
                                            std::size_t i) {
  typename T::request;
  { t.post(sends, recvs) } -> std::same_as<typename T::request>;
  t.wait(req);
  { t.test(req) } -> std::same_as<bool>;
  { creq.received(i) } -> std::convertible_to<std::size_t>;
};

template <class T, class E>
using transport_span_of = transport_span<E, T::space>;

template <class T>
concept transport_collectives = requires(T& t, transport_span_of<T, const std::byte> in,
                                         transport_span_of<T, std::byte> out,
                                         std::span<const std::size_t> counts, int root) {
  t.allreduce(transport_span_of<T, const float>{}, transport_span_of<T, float>{}, reduce_op::sum);
  t.allreduce(transport_span_of<T, const double>{}, transport_span_of<T, double>{}, reduce_op::sum);
  t.allreduce(transport_span_of<T, const std::int32_t>{}, transport_span_of<T, std::int32_t>{},
              reduce_op::sum);
  t.allreduce(transport_span_of<T, const std::int64_t>{}, transport_span_of<T, std::int64_t>{},
              reduce_op::sum);
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
///  0. `T::space` is a `static constexpr memory_space`: where the bytes it moves live.
///     Every byte or element buffer below is a `transport_span<B, T::space>`, and the
///     operations of 5 are `basic_send_op<T::space>` / `basic_recv_op<T::space>`: for a
///     host transport (local, MPI) a `std::span` and `send_op` / `recv_op`, as written
///     below; for a device transport a `device_view`. Counts stay host spans. A device
///     transport orders its work on a stream: it is constructed with an execution context
///     whose space is device (`typename T::context_type`, `ExecutionContextFor<...,
///     memory_space::device>`: a `cuda_stream`, core/cuda/stream.cuh) and `t.context()`
///     returns it; its calls enqueue their work on that stream in call order and never
///     synchronize it on the hot path. Nothing device-side exists yet: the NCCL transport
///     (issue 18) is the first. A host transport refuses device views at compile time with
///     a sentence (host_transport_calls), so ask `T::space`, not whether a call compiles.
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
/// Requirements 0–3 are checked as group `detail::transport_identity`, 4–7 as
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
concept AsyncTransport = Transport<T> &&
    requires(T& t, int tag, transport_span<std::byte, T::space> buf) {
  { t.recv_any(tag, buf) } -> std::same_as<recv_result>;
};

namespace detail {
// The least a transport can be: models AsyncTransport and declares no trait. A
// communicator's header instantiates itself with it (and codec_archetype, codec/codec.hpp)
// to check that it models Communicator without naming a concrete transport. Its calls do
// nothing; never run it.
struct transport_archetype {
  static constexpr memory_space space = memory_space::host;
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

// The shape of a device transport (requirement 0): device views, and the stream its work
// is ordered on. Models Transport, not AsyncTransport (NCCL has no any-source receive).
// Declarations only; nothing device-side is implemented yet.
struct device_transport_archetype {
  static constexpr memory_space space = memory_space::device;
  struct context_type {  // stands for cuda_stream (core/cuda/stream.cuh, nvcc only)
    static constexpr memory_space space = memory_space::device;
  };
  using bytes = transport_span<std::byte, space>;
  using const_bytes = transport_span<const std::byte, space>;
  struct request {
    std::size_t received(std::size_t) const noexcept;
  };
  context_type context() const noexcept;
  int rank() const noexcept;
  int size() const noexcept;
  std::chrono::milliseconds timeout() const noexcept;
  const traffic_counters& counters() const noexcept;
  request post(std::span<const basic_send_op<space>>, std::span<const basic_recv_op<space>>);
  void wait(request&);
  bool test(request&);
  template <native_reduce_type E>
  void allreduce(tensor_view<const E, space>, tensor_view<E, space>, reduce_op);
  void allgather(const_bytes, bytes);
  void allgatherv(const_bytes, bytes, std::span<const std::size_t>);
  void alltoall(const_bytes, bytes);
  void alltoallv(const_bytes, std::span<const std::size_t>, bytes, std::span<const std::size_t>);
  void broadcast(bytes, int);
  void barrier();
};
static_assert(Transport<device_transport_archetype>);
static_assert(!AsyncTransport<device_transport_archetype>);

// True for an argument that holds device memory: a device view, a device operation, or
// a range of device operations (a span, an array, a vector of them).
template <class A>
inline constexpr bool is_device_memory = false;
template <class T>
inline constexpr bool is_device_memory<tensor_view<T, memory_space::device>> = true;
template <>
inline constexpr bool is_device_memory<basic_send_op<memory_space::device>> = true;
template <>
inline constexpr bool is_device_memory<basic_recv_op<memory_space::device>> = true;
template <class A>
constexpr bool holds_device_memory() {
  if constexpr (std::ranges::range<A>) {
    return is_device_memory<std::remove_cv_t<std::ranges::range_value_t<A>>>;
  } else {
    return is_device_memory<A>;
  }
}
template <class... A>
concept device_memory_arguments = (holds_device_memory<std::remove_cvref_t<A>>() || ...);
}  // namespace detail

/// The calls of a host transport (`space == memory_space::host`: local, MPI) given device
/// memory, written once: each call that moves bytes, handed a device view or device
/// operations (basic_send_op<memory_space::device>, ...), stops compilation with the
/// transport's own sentence instead of a page of candidates that do not match. The
/// transport derives from host_transport_calls<itself>, brings these in beside its own
/// calls (which would hide them otherwise) and says its sentence in a private static
/// `refuse_device_memory<A...>()`, which the base calls:
///
///   class my_transport : public gradcomm::host_transport_calls<my_transport> {
///    public:
///     static constexpr gradcomm::memory_space space = gradcomm::memory_space::host;
///     using host_transport_calls::allgather;  // and post, recv_any, allreduce, ...
///     void allgather(std::span<const std::byte> in, std::span<std::byte> out);
///    private:
///     friend host_transport_calls;
///     template <class... A>
///     static void refuse_device_memory() {
///       static_assert(!gradcomm::detail::device_memory_arguments<A...>,
///                     "my_transport moves host memory; ...");
///     }
///   };
template <class Derived>
class host_transport_calls {
 public:
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void post(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void recv_any(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class E = void, class... A>
  requires detail::device_memory_arguments<A...>
  void allreduce(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void allgather(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void allgatherv(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void alltoall(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void alltoallv(A&&...) { Derived::template refuse_device_memory<A...>(); }
  template <class... A>
  requires detail::device_memory_arguments<A...>
  void broadcast(A&&...) { Derived::template refuse_device_memory<A...>(); }
};

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

///  T2. `bool any_thread() const noexcept` returning false when the transport may be called
///      only from the thread that constructed it (mpi_transport over MPI below
///      MPI_THREAD_SERIALIZED, e.g. SimGrid's SMPI, where ranks are simulated actors and
///      a thread of their own cannot call MPI). Read by `transport_any_thread(t)`; true
///      when not declared. The all-reduce refuses `overlap` (a background thread) then.
///
///   if (!gradcomm::transport_any_thread(t)) opt.overlap = false;
template <class T>
bool transport_any_thread(const T& t) noexcept {
  if constexpr (requires {
                  { t.any_thread() } -> std::convertible_to<bool>;
                })
    return t.any_thread();
  else
    return true;
}

/// Checks T against Transport one group at a time, each failure with its own
/// sentence; true when T models it.
///
///   static_assert(gradcomm::check_transport<my_transport>());
template <class T>
consteval bool check_transport() {
  static_assert(detail::transport_identity<T>,
                "gradcomm::Transport (requirements 0-3): T needs `static constexpr "
                "memory_space space` (a device one also context_type and context()), rank() -> "
                "int, size() -> int, timeout() -> std::chrono::milliseconds and counters() -> "
                "const traffic_counters&, all callable on a const T");
  static_assert(detail::transport_point_to_point<T>,
                "gradcomm::Transport (requirements 4-7): T needs a type T::request with "
                "received(i), post(span<const basic_send_op<space>>, span<const "
                "basic_recv_op<space>>) -> request, wait(request&) and test(request&) -> bool");
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
                "transport_span<std::byte, space>) -> recv_result");
  return true;
}

}  // namespace v0
}  // namespace gradcomm

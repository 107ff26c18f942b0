// tests/unit/forwarding_transport.hpp — a Transport that forwards every call to a
// local_transport and nothing more: no receive from any source (so not an
// AsyncTransport, as NCCL), and not declared to withdraw whole groups (as MPI, which
// cannot withdraw a send). The gossip tests run over it; the parameter server refuses it
// (tests/compile_fail).
//
//   forwarding_transport fwd{&t};
#pragma once

#include <gradcomm/core/counters.hpp>
#include <gradcomm/transport/local.hpp>
#include <gradcomm/transport/transport.hpp>

#include <chrono>
#include <cstddef>
#include <span>

struct forwarding_transport {
  gradcomm::local_transport* t;
  using request = gradcomm::local_transport::request;
  int rank() const { return t->rank(); }
  int size() const { return t->size(); }
  std::chrono::milliseconds timeout() const { return t->timeout(); }
  const gradcomm::traffic_counters& counters() const { return t->counters(); }
  request post(std::span<const gradcomm::send_op> s, std::span<const gradcomm::recv_op> r) {
    return t->post(s, r);
  }
  void wait(request& q) { t->wait(q); }
  bool test(request& q) { return t->test(q); }
  template <class E>
  void allreduce(std::span<const E> in, std::span<E> out, gradcomm::reduce_op op) {
    t->allreduce<E>(in, out, op);
  }
  void allgather(std::span<const std::byte> in, std::span<std::byte> out) { t->allgather(in, out); }
  void allgatherv(std::span<const std::byte> in, std::span<std::byte> out,
                  std::span<const std::size_t> c) {
    t->allgatherv(in, out, c);
  }
  void alltoall(std::span<const std::byte> in, std::span<std::byte> out) { t->alltoall(in, out); }
  void alltoallv(std::span<const std::byte> in, std::span<const std::size_t> sc,
                 std::span<std::byte> out, std::span<const std::size_t> rc) {
    t->alltoallv(in, sc, out, rc);
  }
  void broadcast(std::span<std::byte> b, int root) { t->broadcast(b, root); }
  void barrier() { t->barrier(); }
};
static_assert(gradcomm::Transport<forwarding_transport>);
static_assert(!gradcomm::AsyncTransport<forwarding_transport>);

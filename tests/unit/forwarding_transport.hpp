// tests/unit/forwarding_transport.hpp — a Transport over a local_transport that behaves as
// MPI where gossip can tell: no receive from any source (so not an AsyncTransport, as
// NCCL), not declared to withdraw whole groups, and a request destroyed before it completed
// withdraws its receives but leaves its sends posted (MPI cannot withdraw a send), until
// a peer takes them or the transport goes. The gossip tests run over it; the parameter
// server refuses it (tests/compile_fail).
//
//   forwarding_transport fwd{&t};
#pragma once

#include <gradcomm/core/counters.hpp>
#include <gradcomm/transport/local.hpp>
#include <gradcomm/transport/transport.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <utility>
#include <vector>

struct forwarding_transport {
  static constexpr gradcomm::memory_space space = gradcomm::memory_space::host;
  using local_request = gradcomm::local_transport::request;

  // A group as two local groups, its sends and its receives, so that the receives can be
  // withdrawn alone.
  class request {
   public:
    request() = default;
    request(request&&) noexcept = default;
    request& operator=(request&& o) noexcept {
      if (this != &o) {
        release();
        sends_ = std::move(o.sends_);
        recvs_ = std::move(o.recvs_);
        kept_ = std::move(o.kept_);
        done_ = o.done_;
      }
      return *this;
    }
    ~request() { release(); }
    std::size_t received(std::size_t i) const { return recvs_.received(i); }

   private:
    friend struct forwarding_transport;
    void release() noexcept {
      if (kept_ && !done_) {
        try {
          kept_->push_back(std::move(sends_));  // still posted, as MPI keeps a send
        } catch (...) {
        }
      }
      kept_.reset();
    }
    local_request sends_, recvs_;
    std::shared_ptr<std::vector<local_request>> kept_;
    bool done_ = false;
  };

  gradcomm::local_transport* t;
  // The sends of requests destroyed before they completed.
  std::shared_ptr<std::vector<local_request>> kept = std::make_shared<std::vector<local_request>>();

  int rank() const { return t->rank(); }
  int size() const { return t->size(); }
  std::chrono::milliseconds timeout() const { return t->timeout(); }
  const gradcomm::traffic_counters& counters() const { return t->counters(); }
  request post(std::span<const gradcomm::send_op> s, std::span<const gradcomm::recv_op> r) {
    request q;
    q.sends_ = t->post(s, {});
    q.recvs_ = t->post({}, r);
    q.kept_ = kept;
    return q;
  }
  // Each half waits up to the timeout: a group may take twice as long to time out.
  void wait(request& q) {
    t->wait(q.sends_);
    t->wait(q.recvs_);
    q.done_ = true;
  }
  bool test(request& q) {
    const bool sent = t->test(q.sends_);
    const bool received = t->test(q.recvs_);
    q.done_ = sent && received;
    return q.done_;
  }
  template <gradcomm::native_reduce_type E>  // what local_transport reduces, no more
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

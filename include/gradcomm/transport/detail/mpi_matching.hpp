// gradcomm/transport/detail/mpi_matching.hpp — mpi_transport's progress engine:
// receives matched in post order (MPI_Improbe, MPI_Imrecv; MPI_Iprobe, MPI_Irecv on an MPI
// that runs on one thread), polling with a backoff
// until a deadline, and the errors of a point-to-point group.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

// The class these members belong to (it includes this file at its end).
#include <gradcomm/transport/mpi/transport.hpp>

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

// Everything a wait does besides testing its own requests: matches posted receives
// with arrived messages, answers the other ranks' control queries, reaps orphans.
// Returns whether anything moved.
inline bool mpi_transport::progress(const char* call) {
  bool moved = match_receives(call);
  serve_control(call);
  reap_orphans();
  return moved;
}

// Matches unmatched receives in post order. A message found for one receive goes to
// the earliest-posted receive it matches: an earlier one that found nothing in this
// pass may match a message that arrived since, and MPI's order says it is that one's.
inline bool mpi_transport::match_receives(const char* call) {
  auto& st = *state_;
  auto& u = st.unmatched;
  bool moved = false;
  for (std::size_t i = 0; i < u.size();) {
    const detail::mpi_op& want = *u[i].op;
    int found = 0;
    MPI_Message msg = MPI_MESSAGE_NULL;
    MPI_Status status;
    detail::mpi_check(
        detail::mpi_probe(want.peer == any_source ? MPI_ANY_SOURCE : want.peer, want.tag, want.comm,
                          st.thread_level, &found, &msg, &status),
        call, "MPI_Improbe", st.rank);
    if (!found) {
      ++i;
      continue;
    }
    std::size_t j = 0;
    while (j < i && !(u[j].op->comm == want.comm && u[j].op->tag == status.MPI_TAG &&
                      (u[j].op->peer == any_source || u[j].op->peer == status.MPI_SOURCE)))
      ++j;
    const detail::mpi_unmatched taker = u[j];
    u.erase(u.begin() + static_cast<std::ptrdiff_t>(j));
    start_receive(taker, msg, status, call);
    moved = true;
    if (j < i) --i;  // u[i] moved down one place and is still unmatched
  }
  return moved;
}

inline void mpi_transport::start_receive(const detail::mpi_unmatched& u, MPI_Message& msg,
                                         const MPI_Status& status, const char* call) {
  auto& st = *state_;
  detail::mpi_op& op = *u.op;
  int count = 0;
  detail::mpi_check(MPI_Get_count(&status, MPI_BYTE, &count), call, "MPI_Get_count", st.rank);
  op.source = status.MPI_SOURCE;
  op.bytes = static_cast<std::size_t>(count);
  op.st = detail::mpi_op::status::active;
  std::byte* into = op.dst;
  if (op.bytes > op.size) {
    // Received aside and dropped, so the buffer is never written past its end.
    op.error = "a message of " + std::to_string(op.bytes) + " bytes from rank " +
               std::to_string(op.source) + " (tag " + std::to_string(op.tag) +
               ") does not fit the receive buffer of " + std::to_string(op.size) + " bytes";
    op.sink.reset(new std::byte[op.bytes]);
    into = op.sink.get();
  }
  detail::mpi_check(
      detail::mpi_receive_probed(into, count, MPI_BYTE, &msg, status, op.comm, u.slot), call,
      "MPI_Imrecv", st.rank);
}

inline void mpi_transport::reap_orphans() noexcept {
  auto& st = *state_;
  std::erase_if(st.orphans, [](detail::mpi_orphan& o) {
    int done = 0;
    if (o.req == MPI_REQUEST_NULL) return true;
    if (MPI_Test(&o.req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS) return done != 0;
    // Failed: nothing more to learn from it. Open MPI keeps a failed request
    // allocated; a collective's may not be freed, so its handle is dropped.
    o.leak();
    if (o.req != MPI_REQUEST_NULL && !o.collective) MPI_Request_free(&o.req);
    return true;
  });
}

// Tests the group's MPI requests once; returns whether every operation is over.
inline bool mpi_transport::poll(request& req, const char* call) {
  auto& st = *state_;
  const std::size_t n = req.n_sends_ + req.n_recvs_;
  st.indices.resize(n);
  st.statuses.resize(n);
  int out = 0;
  const int rc = MPI_Testsome(static_cast<int>(n), req.reqs_.get(), &out, st.indices.data(),
                              st.statuses.data());
  if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS)
    detail::mpi_check(rc, call, "MPI_Testsome", st.rank);
  std::string failure;
  int failure_code = MPI_SUCCESS;
  if (out != MPI_UNDEFINED) {
    for (int k = 0; k < out; ++k) {
      const auto i = static_cast<std::size_t>(st.indices[static_cast<std::size_t>(k)]);
      detail::mpi_op& op = req.ops_[i];
      const int err = rc == MPI_ERR_IN_STATUS ? st.statuses[static_cast<std::size_t>(k)].MPI_ERROR
                                              : MPI_SUCCESS;
      // Open MPI leaves a failed request allocated.
      if (req.reqs_[i] != MPI_REQUEST_NULL) MPI_Request_free(&req.reqs_[i]);
      op.st = detail::mpi_op::status::done;
      op.sink.reset();
      if (err != MPI_SUCCESS) {
        if (failure.empty()) {
          failure_code = err;
          failure = std::string(op.is_send ? "send to" : "receive from") + " rank " +
                    std::to_string(op.is_send ? op.peer : op.source) + " (tag " +
                    std::to_string(op.tag) + ") failed: " + detail::mpi_error_text(err);
        }
      } else if (op.collective) {
        // counted by the all-reduce, as local_transport counts it
      } else if (op.is_send) {
        st.counters.add_sent(op.size);
      } else if (op.error.empty()) {
        st.counters.add_received(op.bytes);
      }
    }
  }
  if (!failure.empty())
    throw error(std::error_code(failure_code, mpi_category()), call, st.rank, failure);
  for (std::size_t i = 0; i < n; ++i)
    if (req.ops_[i].st != detail::mpi_op::status::done) return false;
  return true;
}

inline void mpi_transport::wait_for(request& req, const char* call) {
  check_request(req, call);
  if (!req.ops_) return;
  auto& st = *state_;
  scoped_timer timer(st.counters.wait_ns);
  const auto deadline = detail::mpi_clock::now() + st.timeout;
  detail::poll_backoff backoff;
  for (;;) {
    if (progress(call)) backoff.reset();
    if (poll(req, call)) break;
    if (detail::mpi_clock::now() >= deadline) throw_timeout(req, call);
    backoff.pause();
  }
  throw_receive_errors(req, call);
}

inline void mpi_transport::throw_timeout(request& req, const char* call) {
  auto& st = *state_;
  int first = any_source;
  std::string what;
  for (std::size_t i = 0; i < req.n_sends_ + req.n_recvs_; ++i) {
    auto& op = req.ops_[i];
    using status = detail::mpi_op::status;
    if (op.st == status::done) continue;
    const int peer = op.st == status::active && !op.is_send ? op.source : op.peer;
    if (!what.empty()) what += "; ";
    what += std::string(op.is_send ? "send to " : "receive from ") +
            (peer == any_source ? "any rank" : "rank " + std::to_string(peer)) + " (tag " +
            std::to_string(op.tag) + ", " + std::to_string(op.size) + " bytes)";
    if (op.st == status::active && !op.is_send) what += " still in transfer";
    if (first == any_source && peer != any_source) first = peer;
  }
  st.tainted = true;
  // Withdraw what only this transport holds; MPI keeps the rest (see the class).
  std::erase_if(st.unmatched, [&](const detail::mpi_unmatched& u) {
    if (u.op < req.ops_.get() || u.op >= req.ops_.get() + req.n_sends_ + req.n_recvs_) return false;
    u.op->st = detail::mpi_op::status::withdrawn;
    return true;
  });
  req.timed_out_ = true;
  throw timeout_error(call, st.rank, first,
                      "no match within " + std::to_string(st.timeout.count()) + " ms for: " + what);
}

inline void mpi_transport::throw_receive_errors(const request& req, const char* call) const {
  for (std::size_t i = 0; i < req.n_recvs_; ++i) {
    const auto& op = req.ops_[req.n_sends_ + i];
    if (!op.error.empty())
      throw error(make_error_code(errc::buffer_too_small), call, rank(), op.error);
  }
}

}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

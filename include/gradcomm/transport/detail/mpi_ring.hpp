// gradcomm/transport/detail/mpi_ring.hpp — mpi_transport's ring all-reduce:
// reduce-scatter then all-gather on the point-to-point machinery, in segments.
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

// Reduce-scatter then all-gather around the ring, N-1 steps each: at every step rank
// r sends one chunk to r+1 and receives one from r-1 (chunk c is rank c's slice, as
// local_transport's). Chunk c is combined along the fixed chain c, c+1, ..., c-1 and
// then copied, so every rank ends with the same bits. It sends and receives only the
// transport's stage (combined from `in`, copied to `out` at the end): a ring abandoned
// after a timeout leaves MPI sending and receiving the transport's memory only. An
// agreed shape runs on its own communicator beside the check; a new one on the ring
// communicator after it. Each wait is bounded by timeout(); when one expires the
// others are asked where they are, as for MPI's collectives, so the error names the
// rank that did not arrive rather than a neighbour stuck behind it.
template <class E>
void mpi_transport::ring_allreduce(const char* call, std::span<const E> in, std::span<E> out,
                                   reduce_op op, const detail::mpi_coll_desc& d) {
  auto& st = *state_;
  check_collectives(call);
  const std::uint64_t seq = ++st.coll_seq;
  const int n = st.size, me = st.rank;
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  const std::size_t count = in.size();
  const std::size_t seg = std::max<std::size_t>(1, detail::mpi_ring_segment_bytes / sizeof(E));
  E* const w = reinterpret_cast<E*>(st.stage_buffer(count * sizeof(E)));
  // Only this rank's own chunk is sent as it is; the others are combined from `in`
  // into the stage before they leave.
  detail::copy_bytes(w + detail::slice_of(count, n, me).lo,
                     in.data() + detail::slice_of(count, n, me).lo,
                     detail::slice_of(count, n, me).size() * sizeof(E));
  E* const got = reinterpret_cast<E*>(
      st.ring_buffer(detail::slice_of(count, n, 0).size() * sizeof(E)));  // chunk 0 is longest
  std::vector<send_op> sends;
  std::vector<recv_op> recvs;
  agreement ag;
  request req;  // the step in flight, here so that a failure sees what MPI still holds
  try {
    start_agreement(call, d, seq, st.ring, ag);
    MPI_Comm comm = ag.hit_comm;
    if (comm == MPI_COMM_NULL) {
      await(call, d.kind, seq, [&] { return test_agreement(call, d, ag); });
      comm = ag.target;
    }
    for (int s = 0; s < 2 * (n - 1); ++s) {
      const bool reduce = s < n - 1;
      const int k = reduce ? s : s - (n - 1);
      // Reduce-scatter: send the chunk reduced last step (step 0: this rank's own
      // input), receive the next one down. All-gather: pass on the finished chunks,
      // starting with the one this rank finished (chunk r+1).
      const int cs = ((reduce ? me - k : me + 1 - k) % n + n) % n;
      const int cr = ((reduce ? me - k - 1 : me - k) % n + n) % n;
      const std::size_t s_lo = detail::slice_of(count, n, cs).lo;
      const std::size_t s_len = detail::slice_of(count, n, cs).size();
      const std::size_t r_lo = detail::slice_of(count, n, cr).lo;
      const std::size_t r_len = detail::slice_of(count, n, cr).size();
      const E* src = w + s_lo;
      E* dst = reduce ? got : w + r_lo;
      const int tag = reduce ? detail::mpi_tag_ring_reduce : detail::mpi_tag_ring_gather;
      sends.clear();
      recvs.clear();
      for (std::size_t o = 0; o < s_len; o += seg)
        sends.push_back({next, tag, std::as_bytes(std::span(src + o, std::min(seg, s_len - o)))});
      for (std::size_t o = 0; o < r_len; o += seg)
        recvs.push_back(
            {prev, tag, std::as_writable_bytes(std::span(dst + o, std::min(seg, r_len - o)))});
      req = post_group(call, sends, recvs, comm, true);
      // All-gather: the chunk this step sends is final; it goes to `out` while the
      // step's messages travel (the last one received, after the loop).
      if (!reduce) detail::copy_bytes(out.data() + s_lo, src, s_len * sizeof(E));
      // Messages from one rank under one tag arrive in order: segment j is message j.
      for (std::size_t j = 0; j < recvs.size(); ++j) {
        const detail::mpi_op& rop = req.ops_[sends.size() + j];
        ring_wait(req, call, seq, d, ag, [&] { return rop.st == detail::mpi_op::status::done; });
        if (!rop.error.empty())
          throw error(make_error_code(errc::buffer_too_small), call, st.rank,
                      rop.error + " (the ranks passed different element counts)");
        if (rop.bytes != rop.size)
          throw error(make_error_code(errc::internal), call, st.rank,
                      "a ring message of " + std::to_string(rop.bytes) + " bytes from rank " +
                          std::to_string(rop.source) + " where " + std::to_string(rop.size) +
                          " were due");
        if (reduce) {
          const std::size_t o = j * seg, len = std::min(seg, r_len - o);
          detail::mpi_ring_combine<E>(w + r_lo + o, in.data() + r_lo + o, got + o, len, op);
        }
      }
      // The sends too: the next step may write over what this one sends.
      ring_wait(req, call, seq, d, ag, [] { return false; });  // until all completed
      req = request();
    }
    await(call, d.kind, seq, [&] { return test_agreement(call, d, ag); });
  } catch (const timeout_error& e) {
    abandon_ring(req, ag);
    stop_collectives(e.reason(), e.peer());
    throw;
  } catch (const error& e) {
    abandon_ring(req, ag);
    if (!ag.disagreed)
      stop_collectives("collective #" + std::to_string(seq) + " (allreduce) failed: " + e.what(),
                       -1);
    throw;
  } catch (const std::exception& e) {
    abandon_ring(req, ag);
    stop_collectives("collective #" + std::to_string(seq) + " (allreduce) failed: " + e.what(), -1);
    throw;
  }
  const int last = (me + 2) % n;  // the chunk the all-gather's last step received
  detail::copy_bytes(out.data() + detail::slice_of(count, n, last).lo,
                     w + detail::slice_of(count, n, last).lo,
                     detail::slice_of(count, n, last).size() * sizeof(E));
}

// Waits, at most timeout(), until `done()` (tested after each poll of the group) or
// the whole group completed; then finds the missing ranks (see find_missing). The
// agreement is decided on the way (a disagreement throws).
template <class Done>
void mpi_transport::ring_wait(request& req, const char* call, std::uint64_t seq,
                              const detail::mpi_coll_desc& d, agreement& ag, Done&& done) {
  if (!req.ops_) return;  // empty chunks: nothing was posted
  await(call, d.kind, seq, [&] {
    (void)test_agreement(call, d, ag);
    return poll(req, call) || done();
  });
}

// A failed ring leaves its buffers to MPI (its sends and receives in flight are the
// transport's stage and chunk buffer, never the caller's); the step's unmatched
// receives are withdrawn when `req` goes.
inline void mpi_transport::abandon_ring(request& req, agreement& ag) noexcept {
  MPI_Request none = MPI_REQUEST_NULL;
  leave_to_mpi(none, false, ag);
  req = request();
  state_->leak_buffers();
}

}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

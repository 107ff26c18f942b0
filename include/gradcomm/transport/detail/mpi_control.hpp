// gradcomm/transport/detail/mpi_control.hpp — mpi_transport's control channel: when
// a collective times out, ask the others where they are and name the rank missing.
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

// Answers "which collective are you in?" and records what the answers and the
// questions say about where the other ranks are.
inline void mpi_transport::serve_control(const char* call) {
  auto& st = *state_;
  if (st.size == 1) return;
  for (;;) {
    int found = 0;
    MPI_Message msg = MPI_MESSAGE_NULL;
    MPI_Status status;
    detail::mpi_check(detail::mpi_probe(MPI_ANY_SOURCE, MPI_ANY_TAG, st.ctrl, st.thread_level,
                                        &found, &msg, &status),
                      call, "MPI_Improbe", st.rank);
    if (!found) return;
    detail::mpi_ctrl_message m{};
    MPI_Request req = MPI_REQUEST_NULL;
    detail::mpi_check(
        detail::mpi_receive_probed(m.words, 2, MPI_UINT64_T, &msg, status, st.ctrl, &req), call,
        "MPI_Mrecv", st.rank);
    detail::mpi_check(MPI_Wait(&req, MPI_STATUS_IGNORE), call, "MPI_Mrecv", st.rank);
    const auto q = static_cast<std::size_t>(status.MPI_SOURCE);
    st.tainted = true;  // some rank timed out
    st.known_seq[q] = std::max(st.known_seq[q], m.words[1]);
    if (status.MPI_TAG == detail::mpi_tag_query) {
      send_control(status.MPI_SOURCE, detail::mpi_tag_answer, m.words[0], st.coll_seq, call);
    } else if (status.MPI_TAG == detail::mpi_tag_gave_up) {
      if (m.words[1] >= st.gave_up_seq[q]) {
        st.gave_up_seq[q] = m.words[1];
        st.gave_up_blame[q] = static_cast<int>(m.words[0]) - 1;
      }
    } else {
      st.answered[q] = std::max(st.answered[q], m.words[0]);
    }
  }
}

inline void mpi_transport::send_control(int to, int tag, std::uint64_t id, std::uint64_t seq,
                                        const char* call) {
  auto& st = *state_;
  detail::mpi_orphan o;
  o.memory.reset(new std::byte[sizeof(detail::mpi_ctrl_message)]);
  auto* m = reinterpret_cast<std::uint64_t*>(o.memory.get());
  m[0] = id;
  m[1] = seq;
  detail::mpi_check(MPI_Isend(m, 2, MPI_UINT64_T, to, tag, st.ctrl, &o.req), call, "MPI_Isend",
                    st.rank);
  st.orphans.push_back(std::move(o));  // freed by reap_orphans once sent
}

// Tells the other ranks that this one gave up on collective #seq blaming `peer`, so
// that a rank timing out later blames that rank and not this one (which no longer
// answers once it returned).
inline void mpi_transport::announce_gave_up(const char* call, std::uint64_t seq,
                                            int peer) noexcept {
  auto& st = *state_;
  try {
    for (int q = 0; q < st.size; ++q)
      if (q != st.rank)
        send_control(q, detail::mpi_tag_gave_up, static_cast<std::uint64_t>(peer + 1), seq, call);
  } catch (...) {  // best effort: the timeout is what the caller hears about
  }
}

// After the deadline of collective #seq: asks the ranks not known to have reached it
// where they are, waits up to the grace period for answers (a rank inside any call
// of its transport answers at once), and throws timeout_error naming the ranks that
// did not reach it. Returns true if the collective completed meanwhile (`done()`
// tests what it waits for).
template <class Done>
bool mpi_transport::find_missing(const char* call, detail::coll_kind kind, std::uint64_t seq,
                                 Done&& done) {
  auto& st = *state_;
  st.tainted = true;
  const auto n = static_cast<std::size_t>(st.size);
  const std::uint64_t id = ++st.query_id;
  std::vector<int> asked;
  for (std::size_t q = 0; q < n; ++q)
    if (q != static_cast<std::size_t>(st.rank) && st.known_seq[q] < seq) {
      send_control(static_cast<int>(q), detail::mpi_tag_query, id, seq, call);
      asked.push_back(static_cast<int>(q));
    }
  using namespace std::chrono;
  const auto grace =
      std::clamp(duration_cast<milliseconds>(st.timeout / 2), milliseconds(1), milliseconds(2000));
  const auto until = detail::mpi_clock::now() + grace;
  detail::poll_backoff backoff;
  for (;;) {
    if (done()) return true;
    progress(call);
    bool all = true;
    for (int q : asked) all &= st.answered[static_cast<std::size_t>(q)] >= id;
    if (all || detail::mpi_clock::now() >= until) break;
    backoff.pause();
  }
  std::vector<int> missing;
  std::string detail_text;
  for (int q : asked) {
    const auto uq = static_cast<std::size_t>(q);
    if (st.known_seq[uq] >= seq) continue;
    missing.push_back(q);
    detail_text += "; rank " + std::to_string(q) +
                   (st.answered[uq] >= id ? " is at collective #" + std::to_string(st.known_seq[uq])
                                          : " did not answer (it is in no call of its transport)");
  }
  const std::string what =
      "collective #" + std::to_string(seq) + " (" + detail::coll_name(kind) + ")";
  const std::string waited = " within " + std::to_string(st.timeout.count()) + " ms";
  if (missing.empty()) {
    // Every rank reached it. A rank that gave up on it before this one named the
    // rank that stopped answering it: the one to blame (the others only waited).
    for (std::size_t q = 0; q < n; ++q) {
      const int blamed = st.gave_up_blame[q];
      if (st.gave_up_seq[q] == seq && blamed >= 0 && blamed != st.rank) {
        announce_gave_up(call, seq, blamed);
        throw timeout_error(call, st.rank, blamed,
                            what + " did not complete" + waited + ": rank " + std::to_string(q) +
                                " gave up on it waiting for rank " + std::to_string(blamed) +
                                ", which stopped answering");
      }
    }
    announce_gave_up(call, seq, -1);
    throw timeout_error(call, st.rank, -1,
                        what + " did not complete" + waited +
                            ", though every rank reached it (MPI made no progress)");
  }
  announce_gave_up(call, seq, missing.front());
  throw timeout_error(call, st.rank, missing.front(),
                      std::string(missing.size() == 1 ? "rank " : "ranks ") +
                          detail::rank_list(missing) + " did not reach " + what + waited +
                          detail_text);
}

}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

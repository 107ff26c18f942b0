// gradcomm/transport/detail/mpi_collectives.hpp — mpi_transport's collectives: one
// collective run beside its agreement check, the agreed-shape communicators, the
// disagreement text, and what a timed-out collective leaves to MPI.
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

// Runs one collective with the agreement: `copy_in(stage)` fills the transport's
// stage (stage_bytes), `post_on(comm, stage, &request)` posts the MPI collective on
// `comm`, `copy_out(stage)` hands the result over. A shape every rank agreed on is
// posted at once on its communicator, beside the check; another one after it.
template <class CopyIn, class Post, class CopyOut>
void mpi_transport::run_collective(const char* call, const detail::mpi_coll_desc& d,
                                   const char* mpi_function, std::size_t stage_bytes,
                                   CopyIn&& copy_in, Post&& post_on, CopyOut&& copy_out,
                                   bool arrays) {
  auto& st = *state_;
  check_collectives(call);
  const std::uint64_t seq = ++st.coll_seq;
  scoped_timer timer(st.counters.wait_ns);
  MPI_Request r = MPI_REQUEST_NULL;
  MPI_Comm posted_on = MPI_COMM_NULL;
  agreement ag;
  auto post = [&](MPI_Comm c) {
    std::byte* s = st.stage_buffer(stage_bytes);
    copy_in(s);
    detail::mpi_check(post_on(c, s, &r), call, mpi_function, st.rank);
    posted_on = c;
  };
  try {
    if (st.size == 1) {
      post(st.comm);
    } else {
      start_agreement(call, d, seq, st.comm, ag);
      if (ag.hit_comm != MPI_COMM_NULL) post(ag.hit_comm);
      await(call, d.kind, seq, [&] { return test_agreement(call, d, ag); });
      if (ag.target != posted_on) {
        if (posted_on != MPI_COMM_NULL) leave_to_mpi(r, arrays, ag);  // several shapes ran
        post(ag.target);
      }
    }
    await(call, d.kind, seq, [&] {
      int done = 0;
      detail::mpi_check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), call, mpi_function, st.rank);
      return done != 0;
    });
  } catch (const timeout_error& e) {
    leave_to_mpi(r, arrays, ag);
    stop_collectives(e.reason(), e.peer());
    throw;
  } catch (const error& e) {
    leave_to_mpi(r, arrays, ag);
    if (!ag.disagreed)
      stop_collectives("collective #" + std::to_string(seq) + " (" + detail::coll_name(d.kind) +
                           ") failed: " + e.what(),
                       -1);
    throw;
  } catch (const std::exception& e) {
    leave_to_mpi(r, arrays, ag);
    stop_collectives("collective #" + std::to_string(seq) + " (" + detail::coll_name(d.kind) +
                         ") failed: " + e.what(),
                     -1);
    throw;
  }
  copy_out(st.stage.get());
}

// Posts the check of collective #seq: every rank's record (kind, element type, op,
// count, root, a hash of its count vectors, the agreed shape it ran at once, whether
// it saw this shape agreed before), gathered on the check communicator.
inline void mpi_transport::start_agreement(const char* call, const detail::mpi_coll_desc& d,
                                           std::uint64_t seq, MPI_Comm fallback, agreement& ag) {
  auto& st = *state_;
  constexpr std::size_t w = detail::mpi_record_words;
  ag.fallback = fallback;
  ag.key = detail::mpi_shape_key(d);
  std::uint64_t hit = 0;
  if (auto it = st.shapes.find(ag.key); it != st.shapes.end()) {
    hit = it->second.id;
    ag.hit_comm = it->second.comm;
  }
  std::uint64_t* rec = st.record_buffer(w * (static_cast<std::size_t>(st.size) + 1));
  std::fill(rec, rec + w, std::uint64_t{0});
  rec[detail::rw_kind] = detail::mpi_coll_word(d);
  rec[detail::rw_count] = d.count;
  rec[detail::rw_root] = d.root;
  rec[detail::rw_hash] = detail::mpi_vector_hash(d);
  rec[detail::rw_hit] = hit;
  rec[detail::rw_seen] = st.seen.count(ag.key);
  rec[detail::rw_seq] = seq;
  detail::mpi_check(MPI_Iallgather(rec, static_cast<int>(w), MPI_UINT64_T, rec + w,
                                   static_cast<int>(w), MPI_UINT64_T, st.check, &ag.req),
                    call, "MPI_Iallgather", st.rank);
}

// True once the check completed and was decided; throws invalid_argument (on every
// rank alike: they all decide from the same records) when the ranks disagree.
inline bool mpi_transport::test_agreement(const char* call, const detail::mpi_coll_desc& d,
                                          agreement& ag) {
  if (ag.decided) return true;
  auto& st = *state_;
  int done = 0;
  detail::mpi_check(MPI_Test(&ag.req, &done, MPI_STATUS_IGNORE), call, "MPI_Iallgather", st.rank);
  if (!done) return false;
  decide(call, d, ag);
  return true;
}

inline void mpi_transport::decide(const char* call, const detail::mpi_coll_desc& d, agreement& ag) {
  auto& st = *state_;
  const int n = st.size;
  constexpr std::size_t w = detail::mpi_record_words;
  // Copied out: a second round may reuse the records' buffer.
  std::vector<std::uint64_t> all(st.records.get() + w,
                                 st.records.get() + w * (static_cast<std::size_t>(n) + 1));
  auto rec = [&](int q) { return all.data() + w * static_cast<std::size_t>(q); };
  std::set<std::uint64_t> hits;
  bool every_rank_hit = true, every_rank_saw = true;
  for (int q = 0; q < n; ++q) {
    if (rec(q)[detail::rw_hit] != 0)
      hits.insert(rec(q)[detail::rw_hit]);
    else
      every_rank_hit = false;
    every_rank_saw &= rec(q)[detail::rw_seen] != 0;
  }
  const bool one_shape = every_rank_hit && hits.size() == 1;
  const std::string why = disagreement(call, d, ag, rec, one_shape);
  ag.decided = true;
  if (!why.empty()) {
    drop_shapes(hits);
    ag.disagreed = true;
    detail::throw_invalid_argument(
        call,
        "the ranks disagree on collective #" + std::to_string(rec(0)[detail::rw_seq]) + ": " + why,
        st.rank);
  }
  if (hits.size() == 1) {  // every rank runs it there (all-to-all(v): some may join)
    ag.target = shape_comm(*hits.begin());
    return;
  }
  drop_shapes(hits);  // several agreed shapes ran at once: they stay behind
  if (GRADCOMM_MPI_HAS_COMM_IDUP && hits.empty() && every_rank_saw &&
      st.shapes.size() < detail::mpi_max_shapes &&
      st.dropped_comms.size() < detail::mpi_max_dropped_shapes) {
    // Agreed twice: the shape gets a communicator of its own. Waited on with the
    // deadline: a rank stopped right after the check must not hang the others here.
    MPI_Comm c = new_shape_comm(call, d.kind);
    st.shapes.emplace(ag.key, detail::mpi_state::shape{st.next_shape_id++, c});
    st.seen.erase(ag.key);
    ag.target = c;
    return;
  }
  if (st.seen.size() >= 4 * detail::mpi_max_shapes) st.seen.clear();
  st.seen.insert(ag.key);
  ag.target = ag.fallback;
}

inline MPI_Comm mpi_transport::new_shape_comm(const char* call, detail::coll_kind kind) {
  auto& st = *state_;
  // MPI writes the handle when the dup completes: it lives on the heap, left to MPI
  // if the dup is abandoned.
  auto c = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
  MPI_Request r = MPI_REQUEST_NULL;
#if GRADCOMM_MPI_HAS_COMM_IDUP
  detail::mpi_check(MPI_Comm_idup(st.comm, c.get(), &r), call, "MPI_Comm_idup", st.rank);
#else
  throw error(make_error_code(errc::unsupported), call, st.rank,
              "MPI_Comm_idup: this MPI has none (GRADCOMM_MPI_HAS_COMM_IDUP 0)");
#endif
  try {
    await(call, kind, st.coll_seq, [&] {
      int done = 0;
      detail::mpi_check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), call, "MPI_Comm_idup", st.rank);
      return done != 0;
    });
  } catch (...) {
    if (r != MPI_REQUEST_NULL) {
      (void)c.release();
      detail::mpi_orphan o;
      o.collective = true;
      o.req = r;
      try {
        st.orphans.push_back(std::move(o));
      } catch (...) {
      }
    }
    throw;
  }
  detail::mpi_check(MPI_Comm_set_errhandler(*c, MPI_ERRORS_RETURN), call, "MPI_Comm_set_errhandler",
                    st.rank);
  return *c;
}

inline MPI_Comm mpi_transport::shape_comm(std::uint64_t id) const noexcept {
  for (const auto& [key, shape] : state_->shapes)
    if (shape.id == id) return shape.comm;
  return MPI_COMM_NULL;
}

// Every rank drops the same shapes (a collective may stay behind on their
// communicators, which are never used again).
inline void mpi_transport::drop_shapes(const std::set<std::uint64_t>& ids) {
  auto& st = *state_;
  for (auto it = st.shapes.begin(); it != st.shapes.end();) {
    if (ids.count(it->second.id)) {
      st.dropped_comms.push_back(it->second.comm);
      it = st.shapes.erase(it);
    } else {
      ++it;
    }
  }
}

// Why the records (and, for the v-collectives, the count vectors) disagree; empty
// when they agree.
template <class Rec>
std::string mpi_transport::disagreement(const char* call, const detail::mpi_coll_desc& d,
                                        agreement& ag, Rec&& rec, bool one_shape) {
  const int n = state_->size;
  auto rk = [](int q) { return "rank " + std::to_string(q); };
  // "rank 0 <a> but rank q <b>, rank p <c>" over the ranks where `differs`.
  auto list = [&](auto&& differs, auto&& text0, auto&& text) {
    std::string s;
    for (int q = 1; q < n; ++q)
      if (differs(rec(q))) s += (s.empty() ? "" : ", ") + rk(q) + " " + text(rec(q));
    return s.empty() ? s : "rank 0 " + text0(rec(0)) + " but " + s;
  };
  const auto* r0 = rec(0);
  using namespace detail;
  if (std::string s =
          list([&](const std::uint64_t* r) { return mpi_record_kind(r) != mpi_record_kind(r0); },
               [](const std::uint64_t* r) {
                 return std::string("called ") + coll_name(mpi_record_kind(r));
               },
               [](const std::uint64_t* r) {
                 return std::string("called ") + coll_name(mpi_record_kind(r));
               });
      !s.empty())
    return s;
  auto count = [](const std::uint64_t* r) { return std::to_string(r[rw_count]); };
  switch (mpi_record_kind(r0)) {
    case coll_kind::allreduce: {
      auto what = [](const std::uint64_t* r) {
        return "reduces " + std::to_string(r[rw_count]) + " " + mpi_elem_name(mpi_record_elem(r)) +
               " elements (" + reduce_op_name(mpi_record_op(r)) + ")";
      };
      return list(
          [&](const std::uint64_t* r) {
            return r[rw_kind] != r0[rw_kind] || r[rw_count] != r0[rw_count];
          },
          what, what);
    }
    case coll_kind::allgather:
      return list([&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
                  [&](const std::uint64_t* r) { return "passes " + count(r) + " bytes"; },
                  [&](const std::uint64_t* r) { return "passes " + count(r); });
    case coll_kind::alltoall:
      return list([&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
                  [&](const std::uint64_t* r) { return "passes chunks of " + count(r) + " bytes"; },
                  [&](const std::uint64_t* r) { return "chunks of " + count(r); });
    case coll_kind::broadcast:
      if (std::string s = list(
              [&](const std::uint64_t* r) { return r[rw_root] != r0[rw_root]; },
              [](const std::uint64_t* r) {
                return "broadcasts from root " + std::to_string(r[rw_root]);
              },
              [](const std::uint64_t* r) { return "from root " + std::to_string(r[rw_root]); });
          !s.empty())
        return s;
      return list([&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
                  [&](const std::uint64_t* r) { return "has a buffer of " + count(r) + " bytes"; },
                  [&](const std::uint64_t* r) { return "one of " + count(r); });
    case coll_kind::allgatherv: {
      bool same = true;
      for (int q = 1; q < n; ++q)
        same &= rec(q)[rw_hash] == r0[rw_hash] && rec(q)[rw_count] == r0[rw_count];
      if (same) return {};
      const auto v = exchange_vectors(call, d, ag, static_cast<std::size_t>(n));
      const auto un = static_cast<std::size_t>(n);
      for (std::size_t q = 1; q < un; ++q)
        for (std::size_t p = 0; p < un; ++p)
          if (v[q * un + p] != v[p])
            return "rank 0 has counts[" + std::to_string(p) + "] = " + std::to_string(v[p]) +
                   " but " + rk(static_cast<int>(q)) + " has " + std::to_string(v[q * un + p]);
      return {};
    }
    case coll_kind::alltoallv: {
      if (one_shape) return {};  // every rank's counts are those of one agreed call
      const auto un = static_cast<std::size_t>(n);
      const auto v = exchange_vectors(call, d, ag, 2 * un);
      // v[q * 2n + p]: what q sends to p; v[q * 2n + n + p]: what q expects from p.
      for (std::size_t q = 0; q < un; ++q)
        for (std::size_t p = 0; p < un; ++p)
          if (const auto sent = v[q * 2 * un + p], expected = v[p * 2 * un + un + q];
              sent != expected)
            return rk(static_cast<int>(q)) + " sends " + std::to_string(sent) + " bytes to " +
                   rk(static_cast<int>(p)) + " but " + rk(static_cast<int>(p)) + " expects " +
                   std::to_string(expected) + " bytes from " + rk(static_cast<int>(q));
      return {};
    }
    case coll_kind::barrier: return {};
  }
  return {};
}

// The check's second round (every rank decides alike to run it): every rank's count
// vectors, `words` each.
inline std::vector<std::uint64_t> mpi_transport::exchange_vectors(const char* call,
                                                                  const detail::mpi_coll_desc& d,
                                                                  agreement& ag,
                                                                  std::size_t words) {
  auto& st = *state_;
  const auto n = static_cast<std::size_t>(st.size);
  ag.vectors.reset(new std::uint64_t[words * (n + 1)]);
  std::uint64_t* mine = ag.vectors.get();
  std::size_t k = 0;
  for (auto x : d.v1) mine[k++] = x;
  for (auto x : d.v2) mine[k++] = x;
  detail::mpi_check(MPI_Iallgather(mine, static_cast<int>(words), MPI_UINT64_T, mine + words,
                                   static_cast<int>(words), MPI_UINT64_T, st.check, &ag.vreq),
                    call, "MPI_Iallgather", st.rank);
  await(call, d.kind, st.coll_seq, [&] {
    int done = 0;
    detail::mpi_check(MPI_Test(&ag.vreq, &done, MPI_STATUS_IGNORE), call, "MPI_Iallgather",
                      st.rank);
    return done != 0;
  });
  return std::vector<std::uint64_t>(mine + words, mine + words * (n + 1));
}

// Waits, at most timeout(), until `done()`; then finds the missing ranks (see
// find_missing), which throws unless `done()` became true meanwhile.
template <class Done>
void mpi_transport::await(const char* call, detail::coll_kind kind, std::uint64_t seq,
                          Done&& done) {
  const auto deadline = detail::mpi_clock::now() + state_->timeout;
  detail::poll_backoff backoff;
  for (;;) {
    if (progress(call)) backoff.reset();
    if (done()) return;
    if (detail::mpi_clock::now() >= deadline) {
      (void)find_missing(call, kind, seq, done);  // or throws
      return;
    }
    backoff.pause();
  }
}

// After a collective timed out the ranks no longer agree on the order of collectives.
inline void mpi_transport::check_collectives(const char* call) const {
  const auto& st = *state_;
  if (st.broken)
    throw timeout_error(call, st.rank, st.broken_peer,
                        "collectives on this transport stopped when " + st.broken_reason +
                            "; every rank needs a new mpi_transport (a fresh communicator)");
}

inline void mpi_transport::stop_collectives(const std::string& why, int peer) noexcept {
  auto& st = *state_;
  st.broken = true;
  st.tainted = true;
  st.broken_peer = peer;
  try {
    st.broken_reason = why;
  } catch (...) {
  }
}

// What MPI still holds of a collective that will not complete here (its data
// request `r`, the check's rounds) stays MPI's, with the transport buffers they use:
// MPI can neither cancel nor free a collective's request. None is the caller's.
inline void mpi_transport::leave_to_mpi(MPI_Request& r, bool arrays, agreement& ag) noexcept {
  auto& st = *state_;
  auto keep = [&](detail::mpi_orphan&& o) {
    try {
      st.orphans.push_back(std::move(o));
    } catch (...) {
      o.leak();  // MPI may still use its memory
    }
  };
  if (ag.req != MPI_REQUEST_NULL) {
    detail::mpi_orphan o;
    o.collective = true;
    o.req = std::exchange(ag.req, MPI_REQUEST_NULL);
    o.words = std::move(st.records);
    st.records_len = 0;
    keep(std::move(o));
  }
  if (ag.vreq != MPI_REQUEST_NULL) {
    detail::mpi_orphan o;
    o.collective = true;
    o.req = std::exchange(ag.vreq, MPI_REQUEST_NULL);
    o.words = std::move(ag.vectors);
    keep(std::move(o));
  }
  if (r != MPI_REQUEST_NULL) {
    detail::mpi_orphan o;
    o.collective = true;
    o.req = std::exchange(r, MPI_REQUEST_NULL);
    o.memory = std::move(st.stage);
    st.stage_len = 0;
    if (arrays) {
      o.arrays = std::move(st.arrays);
      st.arrays_len = 0;
    }
    keep(std::move(o));
  }
}

}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

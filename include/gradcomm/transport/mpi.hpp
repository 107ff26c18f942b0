// gradcomm/transport/mpi.hpp — the `mpi` transport: the ranks of an MPI communicator,
// one process each, over MPI's non-blocking point-to-point and MPI-3 collectives.
//
//   int main(int argc, char** argv) {
//     gradcomm::mpi_environment env(argc, argv);  // MPI_Init_thread ... MPI_Finalize
//     gradcomm::mpi_transport t(env.world());     // a private dup of MPI_COMM_WORLD
//     std::vector<float> g(1000, float(t.rank()));
//     t.allreduce<float>(g, g, gradcomm::reduce_op::sum);  // in place
//   }                                             // run with: mpirun -np 4 ./train
//
// Needs MPI: link gradcomm::mpi (CMake; Debian packages libopenmpi-dev and
// openmpi-bin), which defines GRADCOMM_HAS_MPI=1. Without it this header declares only
// stubs whose use stops compilation with a message saying so, and never includes mpi.h.
//
// How it works:
//  - The transport works on its own MPI_Comm_dup of the communicator it is given (the
//    trainer's tags and collectives never meet ours) with MPI_ERRORS_RETURN: every MPI
//    return code is checked and becomes a gradcomm::error in mpi_category() naming the
//    call, the MPI function and the rank.
//  - Nothing ever blocks inside MPI: every wait polls (MPI_Testsome, MPI_Test) with a
//    short backoff (yield for the first millisecond, then sleeps of 20 µs growing to
//    0.5 ms) until its deadline, so a peer that never arrives gives a timeout_error.
//  - Sends are MPI_Isend. Receives are matched by this transport, in the order they
//    were posted, with MPI_Improbe and then received with MPI_Imrecv: the length of a
//    message is known before a byte lands, so a message longer than its buffer is
//    received aside and reported (gradcomm::error, buffer_too_small) instead of being
//    truncated by MPI. Open MPI 4.1's shared-memory single-copy path (CMA) writes a
//    truncated message past the end of the receive buffer (measured with 4.1.4: a 2 MiB
//    message received into a 1 MiB buffer overwrote the 1 MiB after it, and so did
//    8000- and 70000-byte ones), so MPI's own truncation is not safe to rely on. An
//    unmatched receive lives only in this transport, which is also why a timed-out
//    receive can be withdrawn without MPI_Cancel.
//  - Collectives are the non-blocking MPI-3 ones (MPI_Iallreduce, MPI_Iallgather(v),
//    MPI_Ialltoall(v), MPI_Ibcast, MPI_Ibarrier) waited on with the same deadline. f16
//    and bf16 sums use an MPI_Op of this transport on a 2-byte type: each combine
//    widens to float, adds and rounds back to nearest even (core/convert.hpp).
//  - All-reduces of 64 KiB and more on two ranks or more are this transport's own ring
//    (reduce-scatter, then all-gather: 2(N-1) steps, each a send to the next rank and
//    a receive from the previous one, in messages of at most 512 KiB so that reducing
//    one overlaps receiving the next), on the point-to-point machinery above and a third
//    private communicator, so its messages never meet the user's tags. Open MPI's
//    MPI_Iallreduce (libnbc) does not use a bandwidth-optimal algorithm for large
//    messages, nor does it for user-defined ops such as the f16/bf16 sums.
//  - When a collective times out, the rank asks the others which collective they are
//    in, over a second private communicator (a few bytes, only on this path): ranks
//    inside any call of their transport answer at once, so the ranks that did not
//    reach the collective are named. The answers are awaited for half the timeout (at
//    most 2 s), so a collective's timeout_error comes about 1.5 × timeout() after it
//    started. A rank that gives up tells the others whom it blamed, so that a rank
//    timing out after it names that rank, not the one that merely waited on it.
//  - Every collective is checked across ranks (kind, element type, op, count, root,
//    all-gather(v) counts, the all-to-all(v) send/receive count matrix) by a small
//    MPI_Iallgather of fixed-size records on a fourth private communicator; ranks
//    that disagree all throw invalid_argument naming the ranks and sizes, before any
//    data moves. A shape every rank agreed on twice gets a communicator of its own (at
//    most 64): from then on it is posted at once, beside its check, so the steady
//    state adds no round trip, and a collective of another shape can never match it
//    (different communicators); the check still names a rank that passes another one.
//  - Collectives (MPI's and the ring) read and write only the transport's stage
//    buffers, copied from the input and to the output: what a collective that timed
//    out leaves with MPI (a send nobody received, a collective a rank never joined) is
//    the transport's memory, left to MPI for good, never the caller's, who may free
//    its buffers and finalize.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/transport.hpp>

#include <mpi.h>

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

class mpi_transport;

namespace detail {

using mpi_clock = std::chrono::steady_clock;

// MPI counts and displacements are int; larger sizes are rejected, never truncated.
inline constexpr std::size_t mpi_max_count =
    static_cast<std::size_t>(std::numeric_limits<int>::max());

inline bool mpi_usable() noexcept {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init != 0 && fin == 0;
}

inline std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(text, static_cast<std::size_t>(len));
}

inline void mpi_check(int rc, const char* call, const char* mpi_function, int rank) {
  if (rc != MPI_SUCCESS)
    throw error(std::error_code(rc, mpi_category()), call, rank,
                std::string(mpi_function) + " failed: " + mpi_error_text(rc));
}

inline const char* mpi_thread_level_name(int level) noexcept {
  if (level == MPI_THREAD_SINGLE) return "MPI_THREAD_SINGLE";
  if (level == MPI_THREAD_FUNNELED) return "MPI_THREAD_FUNNELED";
  if (level == MPI_THREAD_SERIALIZED) return "MPI_THREAD_SERIALIZED";
  if (level == MPI_THREAD_MULTIPLE) return "MPI_THREAD_MULTIPLE";
  return "an unknown thread level";
}

inline std::string mpi_thread_level_text(int level) {
  return std::string(mpi_thread_level_name(level)) +
         "; the transport needs MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE (a communicator "
         "calls it from a background thread): initialize MPI with MPI_Init_thread, or "
         "construct a gradcomm::mpi_environment";
}

// Polling with a backoff: yield while the wait is young (latency), then sleep in
// growing steps (other ranks may share the cores).
class mpi_backoff {
 public:
  void pause() {
    using namespace std::chrono;
    if (mpi_clock::now() - start_ < milliseconds(1)) {
      std::this_thread::yield();
      return;
    }
    nap_ = nap_.count() == 0 ? microseconds(20) : std::min(nap_ * 2, microseconds(500));
    std::this_thread::sleep_for(nap_);
  }
  void reset() noexcept {
    start_ = mpi_clock::now();
    nap_ = std::chrono::microseconds(0);
  }

 private:
  mpi_clock::time_point start_ = mpi_clock::now();
  std::chrono::microseconds nap_{0};
};

// One send or receive of a posted group. It lives in its request's array; the
// transport's list of unmatched receives points at it until it is matched.
struct mpi_op {
  enum class status : unsigned char { unmatched, active, done, withdrawn };
  int peer = 0;
  int tag = 0;
  bool is_send = false;
  bool collective = false;        // part of a ring all-reduce: counted by the collective
  MPI_Comm comm = MPI_COMM_NULL;  // the communicator it travels on
  status st = status::done;
  const std::byte* src = nullptr;     // send: the message
  std::byte* dst = nullptr;           // receive: the buffer
  std::size_t size = 0;               // send: message length; receive: buffer length
  std::size_t bytes = 0;              // receive: the length of the message it got
  int source = -1;                    // receive: the rank the message came from
  std::unique_ptr<std::byte[]> sink;  // takes a message longer than the buffer
  std::string error;                  // receive: why it failed
};

struct mpi_unmatched {
  mpi_op* op;
  MPI_Request* slot;  // where the MPI_Imrecv request goes
};

// An operation MPI cannot withdraw, kept until it completes (a send nobody received,
// a collective a rank never joined, a control message). MPI may still use its memory.
struct mpi_orphan {
  MPI_Request req = MPI_REQUEST_NULL;
  std::unique_ptr<std::byte[]> memory;     // a receive's sink, a control message
  std::unique_ptr<int[]> arrays;           // a v-collective's counts and displacements
  std::unique_ptr<std::uint64_t[]> words;  // an agreement check's records
  bool collective = false;                 // MPI forbids freeing its request

  // Leaves the memory to MPI for good: it may still read or write it.
  void leak() noexcept {
    (void)memory.release();
    (void)arrays.release();
    (void)words.release();
  }
};

// A small message on the control communicator: {query id, collective number}.
struct mpi_ctrl_message {
  std::uint64_t words[2];
};

// Everything of one transport, shared with its requests so that a request may
// outlive the transport object (moved, destroyed) and still clean up.
struct mpi_state {
  mpi_state() = default;
  mpi_state(const mpi_state&) = delete;
  mpi_state& operator=(const mpi_state&) = delete;

  ~mpi_state() {
    if (!mpi_usable()) return;  // after MPI_Finalize nothing may be called
    tainted |= !orphans.empty();
    for (auto& o : orphans) {
      int done = 0;
      if (o.req == MPI_REQUEST_NULL ||
          (MPI_Test(&o.req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done))
        continue;
      o.leak();
      // A point-to-point request can be handed to MPI; a collective's may not be
      // freed (MPI 3.1, 5.12), so its handle is dropped.
      if (o.req != MPI_REQUEST_NULL && !o.collective) MPI_Request_free(&o.req);
    }
    if (f16_sum != MPI_OP_NULL) MPI_Op_free(&f16_sum);
    if (bf16_sum != MPI_OP_NULL) MPI_Op_free(&bf16_sum);
    if (half != MPI_DATATYPE_NULL) MPI_Type_free(&half);
    // After a fault, messages may still be on their way to these communicators (a late
    // rank's ring segments, checks, control messages). Open MPI holds a message for a
    // freed communicator and hands it to the next one that gets its context id, where
    // it would be taken for that one's: such a transport's communicators are never
    // freed, so their ids are never given again.
    if (tainted) return;
    for (auto& [key, shape] : shapes) MPI_Comm_free(&shape.comm);
    for (auto& c : dropped_comms) MPI_Comm_free(&c);
    if (check != MPI_COMM_NULL) MPI_Comm_free(&check);
    if (ring != MPI_COMM_NULL) MPI_Comm_free(&ring);
    if (ctrl != MPI_COMM_NULL) MPI_Comm_free(&ctrl);
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }

  MPI_Comm comm = MPI_COMM_NULL;   // ours: user messages and collectives
  MPI_Comm ctrl = MPI_COMM_NULL;   // ours: "which collective are you in?"
  MPI_Comm ring = MPI_COMM_NULL;   // ours: the ring all-reduce's messages (no user tag meets them)
  MPI_Comm check = MPI_COMM_NULL;  // ours: the agreement records of the collectives
  MPI_Datatype half = MPI_DATATYPE_NULL;
  MPI_Op f16_sum = MPI_OP_NULL;
  MPI_Op bf16_sum = MPI_OP_NULL;
  int rank = 0;
  int size = 1;
  int tag_ub = 32767;
  std::chrono::milliseconds timeout{60000};
  traffic_counters counters;

  std::vector<mpi_unmatched> unmatched;  // receives not matched yet, in post order
  std::vector<mpi_orphan> orphans;

  std::uint64_t coll_seq = 0;            // collectives this rank started
  std::vector<std::uint64_t> known_seq;  // [q]: the latest collective rank q was seen in
  std::uint64_t query_id = 0;
  std::vector<std::uint64_t> answered;  // [q]: the last query id rank q answered
  bool broken = false;                  // a collective timed out: no more collectives
  bool tainted = false;  // a wait timed out or a rank gave up: keep the communicators
  std::string broken_reason;
  int broken_peer = -1;
  std::vector<std::uint64_t> gave_up_seq;  // [q]: the collective rank q gave up in (0: none)
  std::vector<int> gave_up_blame;          // [q]: the rank it blamed

  // Shapes every rank agreed on, each with a communicator of its own, so that a
  // collective of one shape never matches one of another: a hit runs at once, beside
  // the check (see the class).
  struct shape {
    std::uint64_t id;
    MPI_Comm comm;
  };
  std::map<std::vector<std::uint64_t>, shape> shapes;
  std::set<std::vector<std::uint64_t>> seen;  // agreed once, on the default communicator
  std::vector<MPI_Comm> dropped_comms;        // a speculative collective may stay there
  std::uint64_t next_shape_id = 1;
  // The check's records (own, then every rank's); handed to MPI for good on a failure.
  std::unique_ptr<std::uint64_t[]> records;
  std::size_t records_len = 0;
  // Collectives read and write only these (never the caller's buffers), so that what a
  // timed-out collective leaves with MPI is the transport's (leaked), never the caller's.
  std::unique_ptr<std::byte[]> stage;
  std::size_t stage_len = 0;

  // Scratch for MPI_Testsome and the v-collectives' int arrays (kept between calls).
  std::vector<int> indices;
  std::vector<MPI_Status> statuses;
  std::unique_ptr<int[]> arrays;
  std::size_t arrays_len = 0;
  // The ring all-reduce's receive buffer for one chunk (kept between calls).
  std::unique_ptr<std::byte[]> ring_buf;
  std::size_t ring_buf_len = 0;

  int* int_arrays(std::size_t n) {
    if (arrays_len < n) {
      arrays.reset(new int[n]);
      arrays_len = n;
    }
    return arrays.get();
  }

  std::byte* stage_buffer(std::size_t bytes) {
    if (stage_len < bytes) {
      stage.reset();
      stage_len = 0;
      stage.reset(new std::byte[bytes]);
      stage_len = bytes;
    }
    return stage.get();
  }

  std::uint64_t* record_buffer(std::size_t words) {
    if (records_len < words) {
      records.reset(new std::uint64_t[words]);
      records_len = words;
    }
    return records.get();
  }

  // Leaves the collective buffers to MPI for good (it may still read or write them).
  void leak_buffers() noexcept {
    (void)stage.release();
    stage_len = 0;
    (void)ring_buf.release();
    ring_buf_len = 0;
    (void)records.release();
    records_len = 0;
    (void)arrays.release();
    arrays_len = 0;
  }

  std::byte* ring_buffer(std::size_t bytes) {
    if (ring_buf_len < bytes) {
      ring_buf.reset();  // free first: the old and the new one need not coexist
      ring_buf_len = 0;
      ring_buf.reset(new std::byte[bytes]);
      ring_buf_len = bytes;
    }
    return ring_buf.get();
  }
};

inline constexpr int mpi_tag_query = 1;
inline constexpr int mpi_tag_answer = 2;
// "I gave up on collective #seq, blaming rank b": {b, seq}.
inline constexpr int mpi_tag_gave_up = 3;
// Tags on the ring communicator: the reduce-scatter's and the all-gather's messages.
inline constexpr int mpi_tag_ring_reduce = 0;
inline constexpr int mpi_tag_ring_gather = 1;

// All-reduces of at least this many bytes on more than one rank go around the ring
// (below it MPI_Iallreduce's latency-bound algorithms win). Every rank decides alike,
// from the element count and the world size.
inline constexpr std::size_t mpi_ring_min_bytes = std::size_t{64} << 10;
// A ring step's chunk travels in messages of at most this many bytes, so that the
// reduction of one overlaps the transfer of the next (and no message reaches INT_MAX).
inline constexpr std::size_t mpi_ring_segment_bytes = std::size_t{512} << 10;

enum class mpi_coll : unsigned char {
  barrier,
  allreduce,
  allgather,
  allgatherv,
  alltoall,
  alltoallv,
  broadcast
};

inline const char* mpi_coll_name(mpi_coll k) noexcept {
  switch (k) {
    case mpi_coll::barrier: return "barrier";
    case mpi_coll::allreduce: return "allreduce";
    case mpi_coll::allgather: return "allgather";
    case mpi_coll::allgatherv: return "allgatherv";
    case mpi_coll::alltoall: return "alltoall";
    case mpi_coll::alltoallv: return "alltoallv";
    case mpi_coll::broadcast: return "broadcast";
  }
  return "collective";
}

template <class E>
inline constexpr bool mpi_half_type = std::is_same_v<E, f16> || std::is_same_v<E, bf16>;

/// The element types mpi_transport::allreduce takes: the native ones, f16 and bf16.
template <class E>
concept mpi_reduce_type = native_reduce_type<E> || mpi_half_type<E>;

template <class E>
MPI_Datatype mpi_datatype() noexcept {
  if constexpr (std::is_same_v<E, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<E, double>)
    return MPI_DOUBLE;
  else if constexpr (std::is_same_v<E, std::int32_t>)
    return MPI_INT32_T;
  else
    return MPI_INT64_T;
}

inline MPI_Op mpi_builtin_op(reduce_op op) noexcept {
  switch (op) {
    case reduce_op::sum: return MPI_SUM;
    case reduce_op::max: return MPI_MAX;
    case reduce_op::min: return MPI_MIN;
  }
  return MPI_SUM;
}

inline const char* mpi_reduce_op_name(reduce_op op) noexcept {
  switch (op) {
    case reduce_op::sum: return "sum";
    case reduce_op::max: return "max";
    case reduce_op::min: return "min";
  }
  return "?";
}

// One pairwise combine of the 16-bit sums: widen, add, round to nearest even. A NaN
// result becomes the one quiet NaN, so that the combine is commutative to the bit
// (x86 keeps the first operand's NaN payload) and every rank ends with the same bits.
template <class H>
inline H mpi_half_add(H a, H b) noexcept {
  constexpr std::uint16_t quiet_nan = std::is_same_v<H, f16> ? 0x7e00 : 0x7fc0;
  const float s = to_float(a) + to_float(b);
  if constexpr (std::is_same_v<H, f16>)
    return s != s ? f16{quiet_nan} : to_f16(s);
  else
    return s != s ? bf16{quiet_nan} : to_bf16(s);
}

template <class H>
void mpi_half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const H* a = static_cast<const H*>(in);
  H* b = static_cast<H*>(inout);
  const std::size_t n = static_cast<std::size_t>(*len);
  for (std::size_t i = 0; i < n; ++i) b[i] = mpi_half_add(a[i], b[i]);
}

// One combine of the ring: out[i] = mine[i] op got[i] (`out` may be `mine`). Integer
// sums wrap instead of overflowing (as local_transport's); max and min as MPI_MAX and
// MPI_MIN. Each element is combined once on its chain, so the result is the same bits
// everywhere whatever the operand order (the f16/bf16 add is commutative to the bit).
template <class E, reduce_op Op>
void mpi_ring_combine_op(E* out, const E* mine, const E* got, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (mpi_half_type<E>) {
      out[i] = mpi_half_add(mine[i], got[i]);
    } else if constexpr (Op == reduce_op::sum) {
      if constexpr (std::is_integral_v<E>) {
        using U = std::make_unsigned_t<E>;
        out[i] = static_cast<E>(static_cast<U>(mine[i]) + static_cast<U>(got[i]));
      } else {
        out[i] = mine[i] + got[i];
      }
    } else if constexpr (Op == reduce_op::max) {
      out[i] = mine[i] < got[i] ? got[i] : mine[i];
    } else {
      out[i] = got[i] < mine[i] ? got[i] : mine[i];
    }
  }
}

template <class E>
void mpi_ring_combine(E* out, const E* mine, const E* got, std::size_t n, reduce_op op) noexcept {
  switch (op) {
    case reduce_op::sum: mpi_ring_combine_op<E, reduce_op::sum>(out, mine, got, n); break;
    case reduce_op::max: mpi_ring_combine_op<E, reduce_op::max>(out, mine, got, n); break;
    case reduce_op::min: mpi_ring_combine_op<E, reduce_op::min>(out, mine, got, n); break;
  }
}

// The length of rank r's 1/n slice of `count` elements (sizes differ by at most one),
// for counting an all-reduce's traffic as local_transport does.
inline std::size_t mpi_slice_len(std::size_t count, int n, int r) noexcept {
  const auto un = static_cast<std::size_t>(n), ur = static_cast<std::size_t>(r);
  return count / un + (ur < count % un ? 1 : 0);
}

// Where rank r's slice starts (the ring's chunk r).
inline std::size_t mpi_slice_lo(std::size_t count, int n, int r) noexcept {
  const auto un = static_cast<std::size_t>(n), ur = static_cast<std::size_t>(r);
  return count / un * ur + std::min(ur, count % un);
}

inline bool mpi_overlap(const void* a, std::size_t na, const void* b, std::size_t nb) noexcept {
  if (na == 0 || nb == 0) return false;
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return x < y + nb && y < x + na;
}

inline std::string mpi_rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ranks[i]);
  }
  return s;
}

// ---- agreement: what a collective's arguments are, compared across ranks ----------------

// Element codes of an agreement record (0: bytes).
template <class E>
constexpr std::uint64_t mpi_elem_code() noexcept {
  if constexpr (std::is_same_v<E, float>)
    return 1;
  else if constexpr (std::is_same_v<E, double>)
    return 2;
  else if constexpr (std::is_same_v<E, std::int32_t>)
    return 3;
  else if constexpr (std::is_same_v<E, std::int64_t>)
    return 4;
  else if constexpr (std::is_same_v<E, f16>)
    return 5;
  else
    return 6;
}

inline const char* mpi_elem_name(std::uint64_t code) noexcept {
  static constexpr const char* names[] = {"byte", "f32", "f64", "i32", "i64", "f16", "bf16"};
  return code < 7 ? names[code] : "?";
}

// One rank's arguments to a collective, as compared across ranks.
struct mpi_coll_desc {
  mpi_coll kind = mpi_coll::barrier;
  std::uint64_t elem = 0;
  reduce_op op = reduce_op::sum;
  std::uint64_t count = 0;  // allreduce: elements; allgather, broadcast: bytes; alltoall: chunk
  std::uint64_t root = 0;
  std::span<const std::size_t> v1, v2;  // allgatherv: counts; alltoallv: send, recv counts
};

// An agreement record: a fixed number of words, whatever the collective, so that ranks
// in different collectives still meet in the check.
inline constexpr std::size_t mpi_record_words = 8;
enum mpi_record_word : std::size_t { rw_kind, rw_count, rw_root, rw_hash, rw_hit, rw_seen, rw_seq };

// Shapes agreed by every rank get a communicator of their own (at most this many per
// transport); shapes that change from call to call are checked every time.
inline constexpr std::size_t mpi_max_shapes = 64;
// After this many shapes were dropped (a speculative collective stayed behind on their
// communicators), no new ones are made: a pattern that keeps dropping them would leak.
inline constexpr std::size_t mpi_max_dropped_shapes = 16;

inline std::uint64_t mpi_mix(std::uint64_t h, std::uint64_t x) noexcept {
  h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 29);
}

inline std::uint64_t mpi_coll_word(const mpi_coll_desc& d) noexcept {
  return static_cast<std::uint64_t>(d.kind) | d.elem << 8 | static_cast<std::uint64_t>(d.op) << 16;
}

// The key of a shape in the agreed-shape cache: every argument that must agree.
inline std::vector<std::uint64_t> mpi_shape_key(const mpi_coll_desc& d) {
  std::vector<std::uint64_t> k{mpi_coll_word(d), d.count, d.root, d.v1.size(), d.v2.size()};
  k.insert(k.end(), d.v1.begin(), d.v1.end());
  k.insert(k.end(), d.v2.begin(), d.v2.end());
  return k;
}

inline std::uint64_t mpi_vector_hash(const mpi_coll_desc& d) noexcept {
  std::uint64_t h = mpi_mix(d.v1.size(), d.v2.size());
  for (auto x : d.v1) h = mpi_mix(h, x);
  for (auto x : d.v2) h = mpi_mix(h, x);
  return h;
}

inline mpi_coll mpi_record_kind(const std::uint64_t* r) noexcept {
  return static_cast<mpi_coll>(r[rw_kind] & 0xff);
}
inline std::uint64_t mpi_record_elem(const std::uint64_t* r) noexcept {
  return (r[rw_kind] >> 8) & 0xff;
}
inline reduce_op mpi_record_op(const std::uint64_t* r) noexcept {
  return static_cast<reduce_op>((r[rw_kind] >> 16) & 0xff);
}

}  // namespace detail

/// Initializes MPI for the program's lifetime, or finds it initialized: RAII around
/// MPI_Init_thread (requesting MPI_THREAD_MULTIPLE) and MPI_Finalize. It finalizes only
/// what it initialized, so a trainer that owns MPI may still construct one. Throws
/// gradcomm::error (unsupported) when MPI provides less than MPI_THREAD_SERIALIZED.
/// Destroy every mpi_transport before it.
///
///   int main(int argc, char** argv) {
///     gradcomm::mpi_environment env(argc, argv);
///     gradcomm::mpi_transport t(env.world());
///     ...
///   }  // t is destroyed, then env calls MPI_Finalize
class mpi_environment {
 public:
  /// Initializes MPI with the program's arguments (MPI may take its own out of them).
  ///
  ///   gradcomm::mpi_environment env(argc, argv);
  mpi_environment(int& argc, char**& argv) { init(&argc, &argv); }
  /// Initializes MPI without arguments.
  ///
  ///   gradcomm::mpi_environment env;
  mpi_environment() { init(nullptr, nullptr); }
  mpi_environment(const mpi_environment&) = delete;
  mpi_environment& operator=(const mpi_environment&) = delete;
  ~mpi_environment() {
    if (owns_ && detail::mpi_usable()) MPI_Finalize();
  }

  /// MPI_COMM_WORLD, for constructing a transport.
  ///
  ///   gradcomm::mpi_transport t(env.world());
  MPI_Comm world() const noexcept { return MPI_COMM_WORLD; }
  /// The thread level MPI provides (MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE).
  ///
  ///   bool any_thread = env.thread_level() == MPI_THREAD_MULTIPLE;
  int thread_level() const noexcept { return level_; }
  /// Whether this object initialized MPI (and will finalize it).
  ///
  ///   if (!env.initialized_here()) log("MPI was initialized by the trainer");
  bool initialized_here() const noexcept { return owns_; }

 private:
  void init(int* argc, char*** argv) {
    static constexpr const char* call = "mpi_environment";
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin) throw error(make_error_code(errc::unsupported), call, -1, "MPI was finalized already");
    if (init) {
      detail::mpi_check(MPI_Query_thread(&level_), call, "MPI_Query_thread", -1);
    } else {
      detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &level_), call,
                        "MPI_Init_thread", -1);
      owns_ = true;
    }
    if (level_ < MPI_THREAD_SERIALIZED) {
      if (owns_) MPI_Finalize();
      owns_ = false;
      throw error(make_error_code(errc::unsupported), call, -1,
                  "MPI provides " + detail::mpi_thread_level_text(level_));
    }
  }

  int level_ = MPI_THREAD_SINGLE;
  bool owns_ = false;
};

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
class mpi_transport {
 public:
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
  /// MPI_THREAD_SERIALIZED, or `comm` is null or an inter-communicator.
  ///
  ///   gradcomm::mpi_transport t(MPI_COMM_WORLD);  // 60 s deadline
  ///   gradcomm::mpi_transport fast(trainer_comm, std::chrono::milliseconds(500));
  explicit mpi_transport(MPI_Comm comm,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
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
    if (level < MPI_THREAD_SERIALIZED)
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
  /// Below 64 KiB, or on one rank: MPI_Iallreduce. From 64 KiB: a ring (reduce-scatter
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
        detail::mpi_overlap(in.data(), in.size_bytes(), out.data(), out.size_bytes()))
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
                        detail::mpi_reduce_op_name(op));
      type = st.half;
      mop = std::is_same_v<E, f16> ? st.f16_sum : st.bf16_sum;
    } else {
      type = detail::mpi_datatype<E>();
      mop = detail::mpi_builtin_op(op);
    }
    detail::mpi_coll_desc d;
    d.kind = detail::mpi_coll::allreduce;
    d.elem = detail::mpi_elem_code<E>();
    d.op = op;
    d.count = in.size();
    const std::size_t bytes = in.size_bytes();
    if (st.size > 1 && bytes >= detail::mpi_ring_min_bytes) {
      ring_allreduce<E>(call, in, out, op, d);
    } else {
      const int count = static_cast<int>(in.size());
      run_collective(
          call, d, "MPI_Iallreduce", bytes, [&](std::byte* s) { copy_bytes(s, in.data(), bytes); },
          [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
            return MPI_Iallreduce(MPI_IN_PLACE, s, count, type, mop, c, r);
          },
          [&](const std::byte* s) { copy_bytes(out.data(), s, bytes); });
    }
    // As local_transport counts it, whichever path ran: this rank's slice goes out to
    // and comes back from N-1 ranks, every other rank's slice once each way (the ring
    // sends and receives 2(N-1) chunks, the same 2(N-1)/N × the input for even slices).
    const int n = st.size;
    const auto others = static_cast<std::uint64_t>(n - 1);
    const std::uint64_t own = detail::mpi_slice_len(in.size(), n, st.rank);
    std::uint64_t other_msgs = 0;
    for (int q = 0; q < n; ++q)
      other_msgs += q != st.rank && detail::mpi_slice_len(in.size(), n, q);
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
    if (!in_place && detail::mpi_overlap(in.data(), m, out.data(), out.size()))
      arg_error(call, "in overlaps out other than at this rank's place");
    if (m > detail::mpi_max_count)
      arg_error(call, "in has " + std::to_string(m) + " bytes: " + over_int_max());
    detail::mpi_coll_desc d;
    d.kind = detail::mpi_coll::allgather;
    d.count = m;
    const std::size_t at = static_cast<std::size_t>(st.rank) * m;
    run_collective(
        call, d, "MPI_Iallgather", out.size(),
        [&](std::byte* s) { copy_bytes(s + at, in.data(), m); },
        [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
          return MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s, static_cast<int>(m),
                                MPI_BYTE, c, r);
        },
        [&](const std::byte* s) { copy_bytes(out.data(), s, out.size()); });
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
    if (!in_place && detail::mpi_overlap(in.data(), in.size(), out.data(), out.size()))
      arg_error(call, "in overlaps out other than at this rank's place");
    std::uint64_t got = 0, got_msgs = 0;
    for (std::size_t r = 0; r < n; ++r)
      if (r != me) {
        got += counts[r];
        got_msgs += counts[r] != 0;
      }
    detail::mpi_coll_desc d;
    d.kind = detail::mpi_coll::allgatherv;
    d.count = total;
    d.v1 = counts;
    run_collective(
        call, d, "MPI_Iallgatherv", total,
        [&](std::byte* s) { copy_bytes(s + offset, in.data(), in.size()); },
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
        [&](const std::byte* s) { copy_bytes(out.data(), s, total); }, true);
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
    if (detail::mpi_overlap(in.data(), in.size(), out.data(), out.size()))
      arg_error(call, "in and out overlap");
    const std::size_t c = in.size() / n;
    if (c > detail::mpi_max_count)
      arg_error(call, "chunks of " + std::to_string(c) + " bytes: " + over_int_max());
    detail::mpi_coll_desc d;
    d.kind = detail::mpi_coll::alltoall;
    d.count = c;
    const std::size_t bytes = in.size();
    run_collective(
        call, d, "MPI_Ialltoall", 2 * bytes, [&](std::byte* s) { copy_bytes(s, in.data(), bytes); },
        [&](MPI_Comm comm, std::byte* s, MPI_Request* r) {
          return MPI_Ialltoall(s, static_cast<int>(c), MPI_BYTE, s + bytes, static_cast<int>(c),
                               MPI_BYTE, comm, r);
        },
        [&](const std::byte* s) { copy_bytes(out.data(), s + bytes, bytes); });
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
    if (detail::mpi_overlap(in.data(), in.size(), out.data(), out.size()))
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
    d.kind = detail::mpi_coll::alltoallv;
    d.v1 = send_counts;
    d.v2 = recv_counts;
    run_collective(
        call, d, "MPI_Ialltoallv", send_total + recv_total,
        [&](std::byte* s) { copy_bytes(s, in.data(), send_total); },
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
        [&](const std::byte* s) { copy_bytes(out.data(), s + send_total, recv_total); }, true);
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
    d.kind = detail::mpi_coll::broadcast;
    d.count = buf.size();
    d.root = static_cast<std::uint64_t>(root);
    const bool is_root = st.rank == root;
    run_collective(
        call, d, "MPI_Ibcast", buf.size(),
        [&](std::byte* s) {
          if (is_root) copy_bytes(s, buf.data(), buf.size());
        },
        [&](MPI_Comm c, std::byte* s, MPI_Request* r) {
          return MPI_Ibcast(s, static_cast<int>(buf.size()), MPI_BYTE, root, c, r);
        },
        [&](const std::byte* s) {
          if (!is_root) copy_bytes(buf.data(), s, buf.size());
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
    d.kind = detail::mpi_coll::barrier;
    run_collective(
        "mpi_transport::barrier", d, "MPI_Ibarrier", 0, [](std::byte*) {},
        [](MPI_Comm c, std::byte*, MPI_Request* r) { return MPI_Ibarrier(c, r); },
        [](const std::byte*) {});
  }

 private:
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

  // ---- ring all-reduce --------------------------------------------------------------

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
  void ring_allreduce(const char* call, std::span<const E> in, std::span<E> out, reduce_op op,
                      const detail::mpi_coll_desc& d) {
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
    copy_bytes(w + detail::mpi_slice_lo(count, n, me),
               in.data() + detail::mpi_slice_lo(count, n, me),
               detail::mpi_slice_len(count, n, me) * sizeof(E));
    E* const got = reinterpret_cast<E*>(
        st.ring_buffer(detail::mpi_slice_len(count, n, 0) * sizeof(E)));  // chunk 0 is longest
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
        const std::size_t s_lo = detail::mpi_slice_lo(count, n, cs);
        const std::size_t s_len = detail::mpi_slice_len(count, n, cs);
        const std::size_t r_lo = detail::mpi_slice_lo(count, n, cr);
        const std::size_t r_len = detail::mpi_slice_len(count, n, cr);
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
        if (!reduce) copy_bytes(out.data() + s_lo, src, s_len * sizeof(E));
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
      stop_collectives("collective #" + std::to_string(seq) + " (allreduce) failed: " + e.what(),
                       -1);
      throw;
    }
    const int last = (me + 2) % n;  // the chunk the all-gather's last step received
    copy_bytes(out.data() + detail::mpi_slice_lo(count, n, last),
               w + detail::mpi_slice_lo(count, n, last),
               detail::mpi_slice_len(count, n, last) * sizeof(E));
  }

  // Waits, at most timeout(), until `done()` (tested after each poll of the group) or
  // the whole group completed; then finds the missing ranks (see find_missing). The
  // agreement is decided on the way (a disagreement throws).
  template <class Done>
  void ring_wait(request& req, const char* call, std::uint64_t seq, const detail::mpi_coll_desc& d,
                 agreement& ag, Done&& done) {
    if (!req.ops_) return;  // empty chunks: nothing was posted
    await(call, d.kind, seq, [&] {
      (void)test_agreement(call, d, ag);
      return poll(req, call) || done();
    });
  }

  // A failed ring leaves its buffers to MPI (its sends and receives in flight are the
  // transport's stage and chunk buffer, never the caller's); the step's unmatched
  // receives are withdrawn when `req` goes.
  void abandon_ring(request& req, agreement& ag) noexcept {
    MPI_Request none = MPI_REQUEST_NULL;
    leave_to_mpi(none, false, ag);
    req = request();
    state_->leak_buffers();
  }

  // ---- progress -----------------------------------------------------------------

  // Everything a wait does besides testing its own requests: matches posted receives
  // with arrived messages, answers the other ranks' control queries, reaps orphans.
  // Returns whether anything moved.
  bool progress(const char* call) {
    bool moved = match_receives(call);
    serve_control(call);
    reap_orphans();
    return moved;
  }

  // Matches unmatched receives in post order. A message found for one receive goes to
  // the earliest-posted receive it matches: an earlier one that found nothing in this
  // pass may match a message that arrived since, and MPI's order says it is that one's.
  bool match_receives(const char* call) {
    auto& st = *state_;
    auto& u = st.unmatched;
    bool moved = false;
    for (std::size_t i = 0; i < u.size();) {
      const detail::mpi_op& want = *u[i].op;
      int found = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status status;
      detail::mpi_check(MPI_Improbe(want.peer == any_source ? MPI_ANY_SOURCE : want.peer, want.tag,
                                    want.comm, &found, &msg, &status),
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

  void start_receive(const detail::mpi_unmatched& u, MPI_Message& msg, const MPI_Status& status,
                     const char* call) {
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
    detail::mpi_check(MPI_Imrecv(into, count, MPI_BYTE, &msg, u.slot), call, "MPI_Imrecv", st.rank);
  }

  // Answers "which collective are you in?" and records what the answers and the
  // questions say about where the other ranks are.
  void serve_control(const char* call) {
    auto& st = *state_;
    if (st.size == 1) return;
    for (;;) {
      int found = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status status;
      detail::mpi_check(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, st.ctrl, &found, &msg, &status),
                        call, "MPI_Improbe", st.rank);
      if (!found) return;
      detail::mpi_ctrl_message m{};
      detail::mpi_check(MPI_Mrecv(m.words, 2, MPI_UINT64_T, &msg, MPI_STATUS_IGNORE), call,
                        "MPI_Mrecv", st.rank);
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

  void send_control(int to, int tag, std::uint64_t id, std::uint64_t seq, const char* call) {
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

  void reap_orphans() noexcept {
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

  // ---- point-to-point -------------------------------------------------------------

  // Tests the group's MPI requests once; returns whether every operation is over.
  bool poll(request& req, const char* call) {
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

  void wait_for(request& req, const char* call) {
    check_request(req, call);
    if (!req.ops_) return;
    auto& st = *state_;
    scoped_timer timer(st.counters.wait_ns);
    const auto deadline = detail::mpi_clock::now() + st.timeout;
    detail::mpi_backoff backoff;
    for (;;) {
      if (progress(call)) backoff.reset();
      if (poll(req, call)) break;
      if (detail::mpi_clock::now() >= deadline) throw_timeout(req, call);
      backoff.pause();
    }
    throw_receive_errors(req, call);
  }

  [[noreturn]] void throw_timeout(request& req, const char* call) {
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
      if (u.op < req.ops_.get() || u.op >= req.ops_.get() + req.n_sends_ + req.n_recvs_)
        return false;
      u.op->st = detail::mpi_op::status::withdrawn;
      return true;
    });
    req.timed_out_ = true;
    throw timeout_error(
        call, st.rank, first,
        "no match within " + std::to_string(st.timeout.count()) + " ms for: " + what);
  }

  void throw_receive_errors(const request& req, const char* call) const {
    for (std::size_t i = 0; i < req.n_recvs_; ++i) {
      const auto& op = req.ops_[req.n_sends_ + i];
      if (!op.error.empty())
        throw error(make_error_code(errc::buffer_too_small), call, rank(), op.error);
    }
  }

  // ---- collectives ----------------------------------------------------------------

  static void copy_bytes(void* to, const void* from, std::size_t n) noexcept {
    if (n != 0) std::memcpy(to, from, n);
  }

  // Runs one collective with the agreement: `copy_in(stage)` fills the transport's
  // stage (stage_bytes), `post_on(comm, stage, &request)` posts the MPI collective on
  // `comm`, `copy_out(stage)` hands the result over. A shape every rank agreed on is
  // posted at once on its communicator, beside the check; another one after it.
  template <class CopyIn, class Post, class CopyOut>
  void run_collective(const char* call, const detail::mpi_coll_desc& d, const char* mpi_function,
                      std::size_t stage_bytes, CopyIn&& copy_in, Post&& post_on, CopyOut&& copy_out,
                      bool arrays = false) {
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
        stop_collectives("collective #" + std::to_string(seq) + " (" +
                             detail::mpi_coll_name(d.kind) + ") failed: " + e.what(),
                         -1);
      throw;
    } catch (const std::exception& e) {
      leave_to_mpi(r, arrays, ag);
      stop_collectives("collective #" + std::to_string(seq) + " (" + detail::mpi_coll_name(d.kind) +
                           ") failed: " + e.what(),
                       -1);
      throw;
    }
    copy_out(st.stage.get());
  }

  // Posts the check of collective #seq: every rank's record (kind, element type, op,
  // count, root, a hash of its count vectors, the agreed shape it ran at once, whether
  // it saw this shape agreed before), gathered on the check communicator.
  void start_agreement(const char* call, const detail::mpi_coll_desc& d, std::uint64_t seq,
                       MPI_Comm fallback, agreement& ag) {
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
  bool test_agreement(const char* call, const detail::mpi_coll_desc& d, agreement& ag) {
    if (ag.decided) return true;
    auto& st = *state_;
    int done = 0;
    detail::mpi_check(MPI_Test(&ag.req, &done, MPI_STATUS_IGNORE), call, "MPI_Iallgather", st.rank);
    if (!done) return false;
    decide(call, d, ag);
    return true;
  }

  void decide(const char* call, const detail::mpi_coll_desc& d, agreement& ag) {
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
      detail::throw_invalid_argument(call,
                                     "the ranks disagree on collective #" +
                                         std::to_string(rec(0)[detail::rw_seq]) + ": " + why,
                                     st.rank);
    }
    if (hits.size() == 1) {  // every rank runs it there (all-to-all(v): some may join)
      ag.target = shape_comm(*hits.begin());
      return;
    }
    drop_shapes(hits);  // several agreed shapes ran at once: they stay behind
    if (hits.empty() && every_rank_saw && st.shapes.size() < detail::mpi_max_shapes &&
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

  MPI_Comm new_shape_comm(const char* call, detail::mpi_coll kind) {
    auto& st = *state_;
    // MPI writes the handle when the dup completes: it lives on the heap, left to MPI
    // if the dup is abandoned.
    auto c = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
    MPI_Request r = MPI_REQUEST_NULL;
    detail::mpi_check(MPI_Comm_idup(st.comm, c.get(), &r), call, "MPI_Comm_idup", st.rank);
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
    detail::mpi_check(MPI_Comm_set_errhandler(*c, MPI_ERRORS_RETURN), call,
                      "MPI_Comm_set_errhandler", st.rank);
    return *c;
  }

  MPI_Comm shape_comm(std::uint64_t id) const noexcept {
    for (const auto& [key, shape] : state_->shapes)
      if (shape.id == id) return shape.comm;
    return MPI_COMM_NULL;
  }

  // Every rank drops the same shapes (a collective may stay behind on their
  // communicators, which are never used again).
  void drop_shapes(const std::set<std::uint64_t>& ids) {
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
  std::string disagreement(const char* call, const detail::mpi_coll_desc& d, agreement& ag,
                           Rec&& rec, bool one_shape) {
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
                   return std::string("called ") + mpi_coll_name(mpi_record_kind(r));
                 },
                 [](const std::uint64_t* r) {
                   return std::string("called ") + mpi_coll_name(mpi_record_kind(r));
                 });
        !s.empty())
      return s;
    auto count = [](const std::uint64_t* r) { return std::to_string(r[rw_count]); };
    switch (mpi_record_kind(r0)) {
      case mpi_coll::allreduce: {
        auto what = [](const std::uint64_t* r) {
          return "reduces " + std::to_string(r[rw_count]) + " " +
                 mpi_elem_name(mpi_record_elem(r)) + " elements (" +
                 mpi_reduce_op_name(mpi_record_op(r)) + ")";
        };
        return list(
            [&](const std::uint64_t* r) {
              return r[rw_kind] != r0[rw_kind] || r[rw_count] != r0[rw_count];
            },
            what, what);
      }
      case mpi_coll::allgather:
        return list([&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
                    [&](const std::uint64_t* r) { return "passes " + count(r) + " bytes"; },
                    [&](const std::uint64_t* r) { return "passes " + count(r); });
      case mpi_coll::alltoall:
        return list(
            [&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
            [&](const std::uint64_t* r) { return "passes chunks of " + count(r) + " bytes"; },
            [&](const std::uint64_t* r) { return "chunks of " + count(r); });
      case mpi_coll::broadcast:
        if (std::string s = list(
                [&](const std::uint64_t* r) { return r[rw_root] != r0[rw_root]; },
                [](const std::uint64_t* r) {
                  return "broadcasts from root " + std::to_string(r[rw_root]);
                },
                [](const std::uint64_t* r) { return "from root " + std::to_string(r[rw_root]); });
            !s.empty())
          return s;
        return list(
            [&](const std::uint64_t* r) { return r[rw_count] != r0[rw_count]; },
            [&](const std::uint64_t* r) { return "has a buffer of " + count(r) + " bytes"; },
            [&](const std::uint64_t* r) { return "one of " + count(r); });
      case mpi_coll::allgatherv: {
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
      case mpi_coll::alltoallv: {
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
      case mpi_coll::barrier: return {};
    }
    return {};
  }

  // The check's second round (every rank decides alike to run it): every rank's count
  // vectors, `words` each.
  std::vector<std::uint64_t> exchange_vectors(const char* call, const detail::mpi_coll_desc& d,
                                              agreement& ag, std::size_t words) {
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
  void await(const char* call, detail::mpi_coll kind, std::uint64_t seq, Done&& done) {
    const auto deadline = detail::mpi_clock::now() + state_->timeout;
    detail::mpi_backoff backoff;
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
  void check_collectives(const char* call) const {
    const auto& st = *state_;
    if (st.broken)
      throw timeout_error(call, st.rank, st.broken_peer,
                          "collectives on this transport stopped when " + st.broken_reason +
                              "; every rank needs a new mpi_transport (a fresh communicator)");
  }

  void stop_collectives(const std::string& why, int peer) noexcept {
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
  void leave_to_mpi(MPI_Request& r, bool arrays, agreement& ag) noexcept {
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

  // Tells the other ranks that this one gave up on collective #seq blaming `peer`, so
  // that a rank timing out later blames that rank and not this one (which no longer
  // answers once it returned).
  void announce_gave_up(const char* call, std::uint64_t seq, int peer) noexcept {
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
  bool find_missing(const char* call, detail::mpi_coll kind, std::uint64_t seq, Done&& done) {
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
    const auto grace = std::clamp(duration_cast<milliseconds>(st.timeout / 2), milliseconds(1),
                                  milliseconds(2000));
    const auto until = detail::mpi_clock::now() + grace;
    detail::mpi_backoff backoff;
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
      detail_text +=
          "; rank " + std::to_string(q) +
          (st.answered[uq] >= id ? " is at collective #" + std::to_string(st.known_seq[uq])
                                 : " did not answer (it is in no call of its transport)");
    }
    const std::string what =
        "collective #" + std::to_string(seq) + " (" + detail::mpi_coll_name(kind) + ")";
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
                            detail::mpi_rank_list(missing) + " did not reach " + what + waited +
                            detail_text);
  }

  std::shared_ptr<detail::mpi_state> state_;
};

}  // namespace v0
}  // namespace gradcomm

#else  // GRADCOMM_HAS_MPI

namespace gradcomm {
inline namespace v0 {
namespace detail {
template <bool HasMpi = false>
struct mpi_needs_mpi {
  static_assert(HasMpi,
                "gradcomm::mpi_transport and gradcomm::mpi_environment need MPI: link "
                "gradcomm::mpi (CMake; Debian packages libopenmpi-dev and openmpi-bin), which "
                "defines GRADCOMM_HAS_MPI=1");
};
}  // namespace detail
/// Without MPI (GRADCOMM_HAS_MPI 0): a stub whose use stops compilation, saying so.
using mpi_transport = detail::mpi_needs_mpi<>;
/// Without MPI (GRADCOMM_HAS_MPI 0): a stub whose use stops compilation, saying so.
using mpi_environment = detail::mpi_needs_mpi<>;
}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

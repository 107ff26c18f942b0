// gradcomm/transport/detail/mpi_state.hpp — what an mpi_transport shares with its
// requests: MPI error checks, the posted operations, the orphans left to MPI, the
// communicators and stage buffers, the tags and the ring's sizes.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <vector>

// Whether MPI has MPI_Comm_idup (MPI 3.0). SimGrid's SMPI 3.32 has not (it aborts):
// benchmarks/smpi.sh builds with 0. Agreed collective shapes then get no communicator of
// their own (mpi_collectives.hpp): each collective runs after its agreement check instead
// of beside it, one all-gather's latency more.
#ifndef GRADCOMM_MPI_HAS_COMM_IDUP
#define GRADCOMM_MPI_HAS_COMM_IDUP 1
#endif

namespace gradcomm {
inline namespace v0 {

/// Which threads of the program call MPI through gradcomm. `any` (the default): a
/// communicator's background thread too (allreduce_options::overlap), so MPI must provide
/// MPI_THREAD_SERIALIZED or more. `caller`: only the thread that initialized MPI, so any
/// thread level will do; for MPIs that provide less, such as SimGrid's SMPI (its ranks are
/// simulated actors: a thread a rank starts cannot call MPI). A transport made so refuses
/// the all-reduce's overlap (transport_any_thread) unless MPI provides more after all.
///
///   gradcomm::mpi_environment env(argc, argv, gradcomm::mpi_threads::caller);
///   gradcomm::mpi_transport t(env.world(), std::chrono::seconds(60),
///   gradcomm::mpi_threads::caller);
enum class mpi_threads : unsigned char { any, caller };

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

// MPI_Improbe, or where MPI runs on one thread only (below MPI_THREAD_SERIALIZED)
// MPI_Iprobe: the message it finds is then the one the next receive of its source and tag
// on `comm` takes, as no other thread can receive it first. SimGrid's SMPI 3.32 has no
// MPI_Improbe (it aborts) and provides MPI_THREAD_FUNNELED at most. `msg` stays
// MPI_MESSAGE_NULL after MPI_Iprobe: receive with mpi_receive_probed.
inline int mpi_probe(int source, int tag, MPI_Comm comm, int thread_level, int* found,
                     MPI_Message* msg, MPI_Status* status) {
  *msg = MPI_MESSAGE_NULL;
  if (thread_level < MPI_THREAD_SERIALIZED) return MPI_Iprobe(source, tag, comm, found, status);
  return MPI_Improbe(source, tag, comm, found, msg, status);
}

// Receives (non-blocking) the message mpi_probe found.
inline int mpi_receive_probed(void* into, int count, MPI_Datatype type, MPI_Message* msg,
                              const MPI_Status& status, MPI_Comm comm, MPI_Request* req) {
  if (*msg == MPI_MESSAGE_NULL)
    return MPI_Irecv(into, count, type, status.MPI_SOURCE, status.MPI_TAG, comm, req);
  return MPI_Imrecv(into, count, type, msg, req);
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
  int thread_level = MPI_THREAD_SINGLE;  // what MPI_Query_thread said at construction
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

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

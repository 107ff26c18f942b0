// gradcomm/transport/detail/local_state.hpp — the shared state of a local_world: the
// posted operations, what each rank passed to a collective, the ranks' slots, the
// matching queues and the failures. local_transport (transport/local.hpp) works on it.
#pragma once

#include <gradcomm/core/counters.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

using local_clock = std::chrono::steady_clock;

// One posted send or receive. It lives in its request's array; the world's queues
// point at it while it is pending.
struct local_op {
  enum class status : unsigned char { idle, pending, copying, done, cancelled };
  int owner = 0;
  int peer = 0;
  int tag = 0;
  bool is_send = false;
  bool copy_here = false;  // matched by the post that owns it: that thread copies
  status st = status::idle;
  const std::byte* src = nullptr;  // send: the message
  std::byte* dst = nullptr;        // receive: the buffer
  std::size_t size = 0;            // send: message length; receive: buffer length
  std::size_t bytes = 0;           // receive: the length of the message it got
  int source = -1;                 // receive: the rank the message came from
  local_op* match = nullptr;
  std::string error;  // receive: why it failed (the message was longer than the buffer)
};

template <class E>
inline constexpr unsigned char local_elem_code = std::is_same_v<E, float>          ? 0
                                                 : std::is_same_v<E, double>       ? 1
                                                 : std::is_same_v<E, std::int32_t> ? 2
                                                                                   : 3;

inline const char* local_elem_name(unsigned char code) noexcept {
  static constexpr const char* names[] = {"f32", "f64", "i32", "i64"};
  return code < 4 ? names[code] : "?";
}

// What one rank passed to collective number k. Written by its rank before it
// arrives at step 1 and read by the others after they pass it. Two slots (k % 2)
// suffice: no rank can start collective k + 2 before every rank finished k.
struct coll_desc {
  coll_kind kind = coll_kind::barrier;
  unsigned char elem = 0;
  reduce_op op = reduce_op::sum;
  int root = 0;
  std::size_t count = 0;  // allreduce: elements; otherwise the bytes of `in`
  const std::byte* in = nullptr;
  std::byte* out = nullptr;
  std::size_t out_bytes = 0;
  std::span<const std::size_t> counts;   // allgatherv counts, alltoallv send counts
  std::span<const std::size_t> counts2;  // alltoallv receive counts
  std::string error;                     // this rank's own arguments are wrong
  // Copies of counts and counts2 that the slot owns: a rank that finds the ranks
  // disagree throws and may free its own arrays while the others still read them.
  std::vector<std::size_t> counts_store, counts2_store;
};

inline std::size_t local_elem_bytes(unsigned char code) noexcept { return code % 2 == 0 ? 4 : 8; }

// The bytes of `in` that a collective's descriptor names.
inline std::size_t local_in_bytes(const coll_desc& d) noexcept {
  return d.kind == coll_kind::allreduce ? d.count * local_elem_bytes(d.elem) : d.count;
}

struct local_rank_slot {
  traffic_counters counters;
  std::condition_variable cv;  // this rank waits here, for anything
  // Guarded by local_state::mu:
  bool failed = false;
  std::uint64_t fail_order = 0;
  std::string fail_reason;
  std::uint64_t coll_seq = 0;  // collectives this rank started
  std::uint64_t progress = 0;  // 4 × collective number + step reached
  bool busy = false;           // between steps: reading and writing the others' buffers
  // Protocol-guarded (see coll_desc):
  coll_desc desc[2];
};

// Set once by the first rank that leaves a collective with an error; from then on
// collectives on this world fail fast (the ranks no longer agree on the sequence).
struct coll_broken {
  bool set = false;
  int rank = -1;
  std::uint64_t seq = 0;
  bool timeout = false;  // it gave up waiting, as opposed to a peer failing
  std::string reason;
};

struct local_failure {
  int rank;
  std::exception_ptr error;
  bool caused_by_peer;  // a peer_error: the effect of another rank's failure
};

struct local_state {
  local_state(int n, std::chrono::milliseconds t)
      : size(n),
        timeout(t),
        slots(std::make_unique<local_rank_slot[]>(static_cast<std::size_t>(n))),
        sends_to(static_cast<std::size_t>(n)),
        recvs_at(static_cast<std::size_t>(n)) {}

  const int size;
  const std::chrono::milliseconds timeout;
  std::mutex mu;
  std::unique_ptr<local_rank_slot[]> slots;
  // Guarded by mu:
  std::vector<std::deque<local_op*>> sends_to;  // [dst]: unmatched sends to dst, in post order
  std::vector<std::deque<local_op*>> recvs_at;  // [dst]: unmatched receives of dst, in post order
  std::uint64_t fail_counter = 0;
  coll_broken broken;
  std::vector<local_failure> failures;

  local_rank_slot& slot(int r) noexcept { return slots[static_cast<std::size_t>(r)]; }

  void notify_all_ranks() noexcept {
    for (int r = 0; r < size; ++r) slot(r).cv.notify_all();
  }

  static void erase(std::deque<local_op*>& q, local_op* op) {
    if (auto it = std::find(q.begin(), q.end(), op); it != q.end()) q.erase(it);
  }

  // Takes a pending operation out of the matching queues. Lock held.
  void unqueue(local_op& op) {
    if (op.is_send)
      erase(sends_to[static_cast<std::size_t>(op.peer)], &op);
    else
      erase(recvs_at[static_cast<std::size_t>(op.owner)], &op);
    op.st = local_op::status::cancelled;
  }

  // Marks rank r failed and withdraws its unmatched operations, whose buffers may
  // be gone by now. Lock held.
  void mark_failed(int r, std::string reason) {
    auto& s = slot(r);
    if (s.failed) return;
    s.failed = true;
    s.fail_order = ++fail_counter;
    s.fail_reason = std::move(reason);
    for (auto& q : sends_to)
      std::erase_if(q, [r](local_op* op) {
        if (op->owner != r) return false;
        op->st = local_op::status::cancelled;
        return true;
      });
    for (local_op* op : recvs_at[static_cast<std::size_t>(r)]) op->st = local_op::status::cancelled;
    recvs_at[static_cast<std::size_t>(r)].clear();
    notify_all_ranks();
  }

  // The failed rank among those `pred` selects that failed first, or -1. Lock held.
  template <class Pred>
  int first_failed(Pred pred) const {
    int best = -1;
    for (int r = 0; r < size; ++r) {
      const auto& s = slots[static_cast<std::size_t>(r)];
      if (s.failed && pred(r) &&
          (best < 0 || s.fail_order < slots[static_cast<std::size_t>(best)].fail_order))
        best = r;
    }
    return best;
  }

  std::string failure_text(int r) const {
    return "rank " + std::to_string(r) +
           " failed: " + slots[static_cast<std::size_t>(r)].fail_reason;
  }
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

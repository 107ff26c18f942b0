// gradcomm/transport/detail/mpi_agreement.hpp — agreement: what a collective's
// arguments are, compared across ranks (the records of the check and the keys of
// the agreed-shape cache). Plain words, no MPI: the transport gathers them.
#pragma once

#include <gradcomm/core/dtype.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

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
  coll_kind kind = coll_kind::barrier;
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

inline coll_kind mpi_record_kind(const std::uint64_t* r) noexcept {
  return static_cast<coll_kind>(r[rw_kind] & 0xff);
}
inline std::uint64_t mpi_record_elem(const std::uint64_t* r) noexcept {
  return (r[rw_kind] >> 8) & 0xff;
}
inline reduce_op mpi_record_op(const std::uint64_t* r) noexcept {
  return static_cast<reduce_op>((r[rw_kind] >> 16) & 0xff);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

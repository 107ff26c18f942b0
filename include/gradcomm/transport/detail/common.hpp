// gradcomm/transport/detail/common.hpp — helpers every transport uses alike: the
// collectives' names, overlap tests, rank lists, the slice a rank owns, the
// element-wise reduce ops. One copy here, so that the local and MPI transports
// name, split and combine alike (their errors and results must match).
#pragma once

#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// memcpy with null pointers is undefined even for zero bytes; empty spans have them.
inline void copy_bytes(void* dst, const void* src, std::size_t n) noexcept {
  if (n != 0) std::memcpy(dst, src, n);
}

// Whether [a, a + na) and [b, b + nb) share a byte; empty ranges share none.
inline bool overlap(const void* a, std::size_t na, const void* b, std::size_t nb) noexcept {
  if (na == 0 || nb == 0) return false;
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return x < y + nb && y < x + na;
}

// The collectives, as errors name them. The values travel in the MPI transport's
// agreement records: append, never reorder.
enum class coll_kind : unsigned char {
  barrier,
  allreduce,
  allgather,
  allgatherv,
  alltoall,
  alltoallv,
  broadcast
};

inline const char* coll_name(coll_kind k) noexcept {
  switch (k) {
    case coll_kind::barrier: return "barrier";
    case coll_kind::allreduce: return "allreduce";
    case coll_kind::allgather: return "allgather";
    case coll_kind::allgatherv: return "allgatherv";
    case coll_kind::alltoall: return "alltoall";
    case coll_kind::alltoallv: return "alltoallv";
    case coll_kind::broadcast: return "broadcast";
  }
  return "collective";
}

inline const char* reduce_op_name(reduce_op op) noexcept {
  switch (op) {
    case reduce_op::sum: return "sum";
    case reduce_op::max: return "max";
    case reduce_op::min: return "min";
  }
  return "?";
}

// "0, 2, 5": ranks as errors list them.
inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ranks[i]);
  }
  return s;
}

// The slice [lo, hi) of `count` elements that rank r of n owns (reduces, or sends
// around the ring as chunk r): sizes differ by at most one, the longer ones first.
struct slice {
  std::size_t lo, hi;
  std::size_t size() const noexcept { return hi - lo; }
};
inline slice slice_of(std::size_t count, int n, int r) noexcept {
  const auto un = static_cast<std::size_t>(n), ur = static_cast<std::size_t>(r);
  const std::size_t base = count / un, extra = count % un;
  const std::size_t lo = base * ur + std::min(ur, extra);
  return {lo, lo + base + (ur < extra ? 1 : 0)};
}

// One element of a reduction: a op b. Integer sums wrap instead of overflowing
// (undefined for signed types); max and min keep `a` on ties, as MPI_MAX and MPI_MIN.
template <class E, reduce_op Op>
inline E combine(E a, E b) noexcept {
  if constexpr (Op == reduce_op::sum) {
    if constexpr (std::is_integral_v<E>) {
      using U = std::make_unsigned_t<E>;
      return static_cast<E>(static_cast<U>(a) + static_cast<U>(b));
    } else {
      return a + b;
    }
  } else if constexpr (Op == reduce_op::max) {
    return a < b ? b : a;
  } else {
    return b < a ? b : a;
  }
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

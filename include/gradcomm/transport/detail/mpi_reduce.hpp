// gradcomm/transport/detail/mpi_reduce.hpp — the MPI transport's reductions: the
// element types it takes, their MPI datatypes and ops, the f16/bf16 sum MPI_Op and
// the ring all-reduce's combine.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace gradcomm {
inline namespace v0 {
namespace detail {

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
    if constexpr (mpi_half_type<E>)
      out[i] = mpi_half_add(mine[i], got[i]);
    else
      out[i] = combine<E, Op>(mine[i], got[i]);
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

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

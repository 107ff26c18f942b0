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

// x86-64 with GCC or Clang: f16 sums eight at a time with F16C where the CPU has it (checked
// once at run time; the library is built without -mf16c).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#include <immintrin.h>
#define GRADCOMM_MPI_F16C 1
#else
#define GRADCOMM_MPI_F16C 0
#endif

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

#if GRADCOMM_MPI_F16C
// out[i] = mpi_half_add(a[i], b[i]) for f16 with F16C: widening is exact, the float sum
// is the same, and VCVTPS2PH rounds to nearest even with IEEE overflow and subnormals (it
// ignores MXCSR.FTZ), as to_f16 does; a NaN sum becomes the one quiet NaN, as there. The
// bits are the scalar loop's (test_mpi_transport: every f16 against adversarial partners).
// Eight values a step; the rest go through the scalar add. `out` may be `a` or `b`.
__attribute__((target("avx,f16c"))) inline void mpi_f16_add_f16c(f16* out, const f16* a,
                                                                 const f16* b,
                                                                 std::size_t n) noexcept {
  const __m128i nan = _mm_set1_epi16(0x7e00);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 s =
        _mm256_add_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i))),
                      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i))));
    const __m256i un = _mm256_castps_si256(_mm256_cmp_ps(s, s, _CMP_UNORD_Q));
    const __m128i mask =
        _mm_packs_epi32(_mm256_castsi256_si128(un), _mm256_extractf128_si256(un, 1));
    const __m128i h = _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_blendv_epi8(h, nan, mask));
  }
  for (; i < n; ++i) out[i] = mpi_half_add(a[i], b[i]);
}

inline bool mpi_cpu_has_f16c() noexcept {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

// out[i] = mpi_half_add(a[i], b[i]), i < n: F16C for f16 where the CPU has it, else the
// scalar add. `out` may be `a` or `b`.
template <class H>
void mpi_half_add_n(H* out, const H* a, const H* b, std::size_t n) noexcept {
#if GRADCOMM_MPI_F16C
  if constexpr (std::is_same_v<H, f16>) {
    if (mpi_cpu_has_f16c()) {
      mpi_f16_add_f16c(out, a, b, n);
      return;
    }
  }
#endif
  for (std::size_t i = 0; i < n; ++i) out[i] = mpi_half_add(a[i], b[i]);
}

template <class H>
void mpi_half_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const H* a = static_cast<const H*>(in);
  H* b = static_cast<H*>(inout);
  mpi_half_add_n(b, a, b, static_cast<std::size_t>(*len));
}

// One combine of the ring: out[i] = mine[i] op got[i] (`out` may be `mine`). Integer
// sums wrap instead of overflowing (as local_transport's); max and min as MPI_MAX and
// MPI_MIN. Each element is combined once on its chain, so the result is the same bits
// everywhere whatever the operand order (the f16/bf16 add is commutative to the bit).
template <class E, reduce_op Op>
void mpi_ring_combine_op(E* out, const E* mine, const E* got, std::size_t n) noexcept {
  if constexpr (mpi_half_type<E>) {
    mpi_half_add_n(out, mine, got, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = combine<E, Op>(mine[i], got[i]);
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

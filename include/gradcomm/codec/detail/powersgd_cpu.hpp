// gradcomm/codec/detail/powersgd_cpu.hpp — PowerSGD's passes over the matrix on the CPU.
// Internal: not part of the API.
//
// The passes of one step (the P pass with error feedback's fold, the Q pass, the output and
// the decoder's P Qᵀ, the deferred residual's settle), each a portable loop and its AVX2
// clone behind codec/detail/cpu_dispatch.hpp, and the scans that check factors (finite
// values, the product's bound). Their arithmetic is codec/detail/powersgd_math.hpp's.
//
//   gradcomm::detail::psgd_pass a;  // the matrix, its factors and the outputs
//   gradcomm::detail::psgd_p_pass(a);
#pragma once

#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/powersgd_math.hpp>
#include <gradcomm/core/config.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// Columns the decoder and the residual for r > 4 handle at a time: a tile of P̂ Qᵀ stays in
// L1 while every rank's factor column runs over it.
inline constexpr std::size_t psgd_tile = 256;

// Floats that a streaming loop over one row reads ahead of itself (3 KiB), and the four-row
// Q pass (1.5 KiB a row: eight streams). The passes stream g and e from memory while the
// factors (r·cols floats a row) come from L2; left to the hardware prefetchers alone, the
// loads of g and e wait (measured at 4096 × 4096, rank 4, on an AMD EPYC: the P pass took
// 1.7× as long; the distances are the best of 256 to 1024).
inline constexpr std::size_t psgd_prefetch_ahead = 768;
inline constexpr std::size_t psgd_q_prefetch_ahead = 384;

// A read hint for the cache line at float i of p. A prefetch never faults; the address is
// formed as an integer, so that one past the end of the array is no pointer arithmetic.
[[gnu::always_inline]] inline void psgd_prefetch(const float* p, std::size_t i) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + 4 * i));
#else
  (void)p;
  (void)i;
#endif
}

// One pass's view of the matrix and its factors. Factors are column-major: column k of
// P (rows × r) starts at k·rows, column k of Q (cols × r) at k·cols.
struct psgd_pass {
  const float* g = nullptr;  // the input, rows × cols row-major
  float* e = nullptr;        // the residual (null without error feedback)
  bool zero = false;         // nonfinite_policy::zero
  std::size_t rows = 0, cols = 0, r = 0;
  const float* q = nullptr;      // P pass: the warm start; finish: this worker's Q
  const float* q_out = nullptr;  // finish: the summed Q for `out` (null: no output)
  const float* p = nullptr;      // Q pass and finish: P̂
  float* p_acc = nullptr;        // P pass: P out
  float* q_acc = nullptr;        // Q pass: Q out
  float* out = nullptr;          // finish: the output (may be g)
  // Error feedback's fold (P pass) and settle: e holds the residual's base, and where the
  // last step's residual is deferred, e = finite_or_zero(base − pp · pqᵀ) (pp: that step's
  // P̂, rows × r; pq: its Q, cols × r; both null when nothing is deferred).
  float* m = nullptr;  // P pass with error feedback: M = g + e out, rows × cols
  const float* pp = nullptr;
  const float* pq = nullptr;
};

// at[j] = Σ_k P(i, k) · Q(j0 + j, k), k = 0, 1, ..., r−1 added left to right. Ranks go
// four at a time through one loop (a load and a store of `at` per four). Decode and the
// encoder's residual compute it alike (psgd_settled for r ≤ 4 too), so that they agree
// to the bit.
template <class Src>
[[gnu::always_inline]] inline void psgd_lowrank_tile(const Src* p, std::size_t rows, std::size_t i,
                                                     const Src* q, std::size_t cols, std::size_t r,
                                                     std::size_t j0, std::size_t len,
                                                     float* __restrict at) noexcept {
  for (std::size_t k = 0; k < r; k += 4) {
    const std::size_t g = std::min<std::size_t>(4, r - k);
    // Missing ranks of the last group read column k again with a zero coefficient: + 0·q
    // changes no sum (the finite q of a checked payload or of the encoder).
    const float c0 = psgd_load(p, k * rows + i);
    const float c1 = g > 1 ? psgd_load(p, (k + 1) * rows + i) : 0.0f;
    const float c2 = g > 2 ? psgd_load(p, (k + 2) * rows + i) : 0.0f;
    const float c3 = g > 3 ? psgd_load(p, (k + 3) * rows + i) : 0.0f;
    const Src* __restrict q0 = psgd_at(q, k * cols + j0);
    const Src* __restrict q1 = g > 1 ? psgd_at(q, (k + 1) * cols + j0) : q0;
    const Src* __restrict q2 = g > 2 ? psgd_at(q, (k + 2) * cols + j0) : q0;
    const Src* __restrict q3 = g > 3 ? psgd_at(q, (k + 3) * cols + j0) : q0;
    if (k == 0) {
      for (std::size_t j = 0; j < len; ++j) {
        at[j] = psgd_rank4_first(c0, c1, c2, c3, psgd_load(q0, j), psgd_load(q1, j),
                                 psgd_load(q2, j), psgd_load(q3, j));
      }
    } else {
      for (std::size_t j = 0; j < len; ++j) {
        at[j] = psgd_rank4_next(at[j], c0, c1, c2, c3, psgd_load(q0, j), psgd_load(q1, j),
                                psgd_load(q2, j), psgd_load(q3, j));
      }
    }
  }
}

// Row i of P = M Q (g, e: the row's start): one loop over the row reads each m once for
// four ranks (the ranks missing from a last group read column k0 again and are dropped). A
// non-finite m makes its row's P non-finite (∞·q and NaN·q stay so through the sums), which
// is how the caller finds one: the loop does not look at m.
template <bool HasE, bool Zero>
[[gnu::always_inline]] inline void psgd_p_row(const psgd_pass& a, std::size_t i,
                                              const float* __restrict g,
                                              const float* __restrict e) noexcept {
  constexpr std::size_t lanes = psgd_lanes;
  const std::size_t rows = a.rows, cols = a.cols, full = cols & ~(lanes - 1);
  {
    for (std::size_t k0 = 0; k0 < a.r; k0 += 4) {
      const std::size_t nk = std::min<std::size_t>(4, a.r - k0);
      const float* __restrict q0 = a.q + k0 * cols;
      const float* __restrict q1 = nk > 1 ? q0 + cols : q0;
      const float* __restrict q2 = nk > 2 ? q0 + 2 * cols : q0;
      const float* __restrict q3 = nk > 3 ? q0 + 3 * cols : q0;
      float l0[lanes] = {}, l1[lanes] = {}, l2[lanes] = {}, l3[lanes] = {};
      for (std::size_t j = 0; j < full; j += lanes) {
        psgd_prefetch(g, j + psgd_prefetch_ahead);
        if constexpr (HasE) psgd_prefetch(e, j + psgd_prefetch_ahead);
        for (std::size_t v = 0; v < lanes; ++v) {
          psgd_p_term<HasE, Zero>(g, e, q0, q1, q2, q3, j + v, v, l0, l1, l2, l3);
        }
      }
      for (std::size_t j = full; j < cols; ++j) {
        psgd_p_term<HasE, Zero>(g, e, q0, q1, q2, q3, j, j - full, l0, l1, l2, l3);
      }
      float* p = a.p_acc + k0 * rows + i;
      p[0] = psgd_lane_sum(l0);
      if (nk > 1) p[rows] = psgd_lane_sum(l1);
      if (nk > 2) p[2 * rows] = psgd_lane_sum(l2);
      if (nk > 3) p[3 * rows] = psgd_lane_sum(l3);
    }
  }
}

// P = M Q, a row at a time, M computed where it is used (no error feedback).
template <bool Zero>
[[gnu::always_inline]] inline void psgd_p_rows(const psgd_pass& a) noexcept {
  for (std::size_t i = 0; i < a.rows; ++i) psgd_p_row<false, Zero>(a, i, a.g + i * a.cols, nullptr);
}

// Row i's coefficients of the deferred P̂ for r ≤ 4 (0 for the missing ranks), and its Q
// columns (column 0 again for the missing ones).
struct psgd_deferred_row {
  float c[4];
  const float* q[4];
  psgd_deferred_row(const psgd_pass& a, std::size_t i) noexcept {
    for (std::size_t k = 0; k < 4; ++k) {
      c[k] = k < a.r ? a.pp[k * a.rows + i] : 0.0f;
      q[k] = a.pq + (k < a.r ? k : 0) * a.cols;
    }
  }
};

// One row of M = g + e into m, e settled first where the last step's residual is deferred
// (Deferred; r ≤ 4). Its own function with restrict parameters, so that GCC vectorizes it
// without overlap checks.
template <bool Zero, bool Deferred>
[[gnu::always_inline]] inline void psgd_fold_row(
    const float* __restrict g, const float* __restrict base, float* __restrict m,
    const float* __restrict q0, const float* __restrict q1, const float* __restrict q2,
    const float* __restrict q3, const float (&c)[4], std::size_t cols) noexcept {
  const std::size_t full = cols & ~(psgd_lanes - 1);
  for (std::size_t j = 0; j < full; j += psgd_lanes) {
    psgd_prefetch(g, j + psgd_prefetch_ahead);
    psgd_prefetch(base, j + psgd_prefetch_ahead);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
    for (std::size_t v = j; v < j + psgd_lanes; ++v) {
      const float e = Deferred ? psgd_settled(base[v], q0, q1, q2, q3, c, v) : base[v];
      m[v] = psgd_m_of<true, Zero>(g[v], e);
    }
  }
  for (std::size_t v = full; v < cols; ++v) {
    const float e = Deferred ? psgd_settled(base[v], q0, q1, q2, q3, c, v) : base[v];
    m[v] = psgd_m_of<true, Zero>(g[v], e);
  }
}

// The P pass with error feedback, a row at a time: the row of M = g + e (the residual
// settled first where it is deferred) goes to m, then row i of P = M Q is summed from m's
// row while it is in L1. M is what the Q pass reads, and the residual's base for the next
// step: the step's residual M − P̂ Qᵀ is settled in the next step's first pass (or by
// psgd_settle_pass), so that no pass of its own reads and writes the n floats.
template <bool Zero>
[[gnu::always_inline]] inline void psgd_fold_rows(const psgd_pass& a) noexcept {
  alignas(32) float at[psgd_tile];
  const std::size_t rows = a.rows, cols = a.cols, r = a.r;
  const float c0[4] = {};
  for (std::size_t i = 0; i < rows; ++i) {
    const float* g = a.g + i * cols;
    const float* base = a.e + i * cols;
    float* m = a.m + i * cols;
    if (a.pp == nullptr) {
      psgd_fold_row<Zero, false>(g, base, m, g, g, g, g, c0, cols);
    } else if (r <= 4) {
      const psgd_deferred_row d(a, i);
      psgd_fold_row<Zero, true>(g, base, m, d.q[0], d.q[1], d.q[2], d.q[3], d.c, cols);
    } else {
      for (std::size_t j0 = 0; j0 < cols; j0 += psgd_tile) {
        const std::size_t len = std::min(psgd_tile, cols - j0);
        psgd_lowrank_tile(a.pp, rows, i, a.pq, cols, r, j0, len, at);
        for (std::size_t j = j0; j < j0 + len; ++j) {
          m[j] = psgd_m_of<true, Zero>(g[j], psgd_finite_or_zero(base[j] - at[j - j0]));
        }
      }
    }
    psgd_p_row<false, false>(a, i, m, nullptr);
  }
}

[[gnu::always_inline]] inline void psgd_p_pass_impl(const psgd_pass& a) noexcept {
  if (a.m != nullptr) return a.zero ? psgd_fold_rows<true>(a) : psgd_fold_rows<false>(a);
  a.zero ? psgd_p_rows<true>(a) : psgd_p_rows<false>(a);
}

// e <- finite_or_zero(e − pp · pqᵀ) in place: the deferred residual settled. Returns Σ e²
// (psgd_sum_squares of each row, added row after row) when `norm` is set.
[[gnu::always_inline]] inline double psgd_settle_impl(const psgd_pass& a, bool norm) noexcept {
  alignas(32) float at[psgd_tile];
  const std::size_t rows = a.rows, cols = a.cols, r = a.r;
  double sum = 0.0;
  for (std::size_t i = 0; i < rows; ++i) {
    float* __restrict e = a.e + i * cols;
    if (r <= 4) {
      const psgd_deferred_row d(a, i);
      const float* __restrict q0 = d.q[0];
      const float* __restrict q1 = d.q[1];
      const float* __restrict q2 = d.q[2];
      const float* __restrict q3 = d.q[3];
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
      for (std::size_t j = 0; j < cols; ++j) e[j] = psgd_settled(e[j], q0, q1, q2, q3, d.c, j);
    } else {
      for (std::size_t j0 = 0; j0 < cols; j0 += psgd_tile) {
        const std::size_t len = std::min(psgd_tile, cols - j0);
        psgd_lowrank_tile(a.pp, rows, i, a.pq, cols, r, j0, len, at);
        for (std::size_t j = 0; j < len; ++j) {
          e[j0 + j] = psgd_finite_or_zero(e[j0 + j] - at[j]);
        }
      }
    }
    if (norm) sum += psgd_sum_squares(e, cols);
  }
  return sum;
}

// Columns [j0, j1) of ranks k0 .. k0 + G − 1 of Q (q: column k0) over the four rows of M at
// g + off[b] (and e + off[b]):
//   Q(j, k0 + k) += (m0·c[4k] + m1·c[4k + 1]) + (m2·c[4k + 2] + m3·c[4k + 3]),
// m_b = M(row b, j) and c[4k + b] row b's P̂(·, k0 + k). Its own function, with restrict
// parameters and ivdep: otherwise GCC wants run-time overlap checks between Q and every
// row, more than it will make, and leaves the loop scalar.
template <bool HasE, bool Zero, std::size_t G>
[[gnu::always_inline]] inline void psgd_q_span(const float* __restrict g, const float* __restrict e,
                                               const std::size_t* __restrict off,
                                               const float* __restrict c, float* __restrict q,
                                               std::size_t cols, std::size_t j0,
                                               std::size_t j1) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC ivdep
#endif
  for (std::size_t j = j0; j < j1; ++j) {
    float m[4];
    for (std::size_t b = 0; b < 4; ++b) {
      m[b] = psgd_m<HasE, Zero>(g + off[b], HasE ? e + off[b] : nullptr, j);
    }
    for (std::size_t k = 0; k < G; ++k) {
      const float* ck = c + 4 * k;
      q[k * cols + j] += psgd_q_term(m, ck);
    }
  }
}

// Ranks k0 .. k0 + G − 1 of Q over the four rows from i0 (c as psgd_q_span's): one loop over
// the rows reads each m once for G ranks, and each Q element is loaded and stored once per
// four rows. Rows missing from a last block read row i0 again with coefficient 0: that adds
// ±0 where m is finite, and where it is not, row i0's own term has made Q non-finite
// already. A span of 64 columns at a time, the lines 384 columns ahead prefetched first (in
// the first group: later groups find the rows in cache).
template <bool HasE, bool Zero, std::size_t G>
[[gnu::always_inline]] inline void psgd_q_group(const psgd_pass& a, std::size_t i0, std::size_t k0,
                                                const float* c) noexcept {
  constexpr std::size_t span = 64;
  const std::size_t cols = a.cols, nb = std::min<std::size_t>(4, a.rows - i0);
  const float* g = a.g + i0 * cols;
  const float* e = HasE ? a.e + i0 * cols : nullptr;
  std::size_t off[4];
  for (std::size_t b = 0; b < 4; ++b) off[b] = b < nb ? b * cols : 0;
  float* q = a.q_acc + k0 * cols;
  for (std::size_t j = 0; j < cols; j += span) {
    if (k0 == 0) {
      for (std::size_t x = j + psgd_q_prefetch_ahead; x < j + psgd_q_prefetch_ahead + span;
           x += psgd_lanes) {
        for (std::size_t b = 0; b < nb; ++b) {
          psgd_prefetch(g + off[b], x);
          if constexpr (HasE) psgd_prefetch(e + off[b], x);
        }
      }
    }
    psgd_q_span<HasE, Zero, G>(g, e, off, c, q, cols, j, std::min(j + span, cols));
  }
}

// Q = Mᵀ P̂, four rows at a time, four ranks at a time.
template <bool HasE, bool Zero>
[[gnu::always_inline]] inline void psgd_q_rows(const psgd_pass& a) noexcept {
  const std::size_t r = a.r, rows = a.rows;
  std::fill(a.q_acc, a.q_acc + r * a.cols, 0.0f);
  for (std::size_t i0 = 0; i0 < rows; i0 += 4) {
    const std::size_t nb = std::min<std::size_t>(4, rows - i0);
    for (std::size_t k0 = 0; k0 < r; k0 += 4) {
      const std::size_t nk = std::min<std::size_t>(4, r - k0);
      float c[16] = {};
      for (std::size_t k = 0; k < nk; ++k) {
        for (std::size_t b = 0; b < nb; ++b) c[4 * k + b] = a.p[(k0 + k) * rows + i0 + b];
      }
      switch (nk) {
        case 1: psgd_q_group<HasE, Zero, 1>(a, i0, k0, c); break;
        case 2: psgd_q_group<HasE, Zero, 2>(a, i0, k0, c); break;
        case 3: psgd_q_group<HasE, Zero, 3>(a, i0, k0, c); break;
        default: psgd_q_group<HasE, Zero, 4>(a, i0, k0, c); break;
      }
    }
  }
}

[[gnu::always_inline]] inline void psgd_q_pass_impl(const psgd_pass& a) noexcept {
  if (a.e != nullptr) return a.zero ? psgd_q_rows<true, true>(a) : psgd_q_rows<true, false>(a);
  a.zero ? psgd_q_rows<false, true>(a) : psgd_q_rows<false, false>(a);
}

// The output of a step: out = P̂ Q_outᵀ (the summed Q), a tile at a time through L1, as the
// decoder computes it.
[[gnu::always_inline]] inline void psgd_finish_pass_impl(const psgd_pass& a) noexcept {
  alignas(32) float at[psgd_tile];
  const std::size_t rows = a.rows, cols = a.cols, r = a.r;
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j0 = 0; j0 < cols; j0 += psgd_tile) {
      const std::size_t len = std::min(psgd_tile, cols - j0);
      psgd_lowrank_tile(a.p, rows, i, a.q_out, cols, r, j0, len, at);
      std::memcpy(a.out + i * cols + j0, at, 4 * len);
    }
  }
}

// out = P Qᵀ (or out += P Qᵀ) from a payload's factors.
template <bool Add>
[[gnu::always_inline]] inline void psgd_decode_impl(const std::byte* p, const std::byte* q,
                                                    std::size_t rows, std::size_t cols,
                                                    std::size_t r, float* out) noexcept {
  alignas(32) float at[psgd_tile];
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j0 = 0; j0 < cols; j0 += psgd_tile) {
      const std::size_t len = std::min(psgd_tile, cols - j0);
      psgd_lowrank_tile(p, rows, i, q, cols, r, j0, len, at);
      float* __restrict o = out + i * cols + j0;
      if constexpr (Add) {
        for (std::size_t j = 0; j < len; ++j) o[j] += at[j];
      } else {
        for (std::size_t j = 0; j < len; ++j) o[j] = at[j];
      }
    }
  }
}

// The portable passes and their AVX2 clones (detail/cpu_dispatch.hpp). No FMA: the output
// must be bitwise the same on every worker, whichever CPU it runs on.
inline void psgd_p_pass_portable(const psgd_pass& a) noexcept { psgd_p_pass_impl(a); }
inline void psgd_q_pass_portable(const psgd_pass& a) noexcept { psgd_q_pass_impl(a); }
inline void psgd_finish_pass_portable(const psgd_pass& a) noexcept { psgd_finish_pass_impl(a); }
inline double psgd_settle_portable(const psgd_pass& a, bool norm) noexcept {
  return psgd_settle_impl(a, norm);
}
template <bool Add>
inline void psgd_decode_portable(const std::byte* p, const std::byte* q, std::size_t rows,
                                 std::size_t cols, std::size_t r, float* out) noexcept {
  psgd_decode_impl<Add>(p, q, rows, cols, r, out);
}
#if GRADCOMM_X86_DISPATCH
[[gnu::target("avx2")]] inline void psgd_p_pass_avx2(const psgd_pass& a) noexcept {
  psgd_p_pass_impl(a);
}
[[gnu::target("avx2")]] inline void psgd_q_pass_avx2(const psgd_pass& a) noexcept {
  psgd_q_pass_impl(a);
}
[[gnu::target("avx2")]] inline void psgd_finish_pass_avx2(const psgd_pass& a) noexcept {
  psgd_finish_pass_impl(a);
}
[[gnu::target("avx2")]] inline double psgd_settle_avx2(const psgd_pass& a, bool norm) noexcept {
  return psgd_settle_impl(a, norm);
}
template <bool Add>
[[gnu::target("avx2")]] inline void psgd_decode_avx2(const std::byte* p, const std::byte* q,
                                                     std::size_t rows, std::size_t cols,
                                                     std::size_t r, float* out) noexcept {
  psgd_decode_impl<Add>(p, q, rows, cols, r, out);
}
#endif

inline void psgd_p_pass(const psgd_pass& a) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return psgd_p_pass_avx2(a);
#endif
  psgd_p_pass_portable(a);
}
inline void psgd_q_pass(const psgd_pass& a) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return psgd_q_pass_avx2(a);
#endif
  psgd_q_pass_portable(a);
}
inline void psgd_finish_pass(const psgd_pass& a) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return psgd_finish_pass_avx2(a);
#endif
  psgd_finish_pass_portable(a);
}
// Settles a deferred residual in place (psgd_settle_impl); returns Σ e² where `norm` is set.
inline double psgd_settle(const psgd_pass& a, bool norm) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return psgd_settle_avx2(a, norm);
#endif
  return psgd_settle_portable(a, norm);
}
template <bool Add>
inline void psgd_decode(const std::byte* p, const std::byte* q, std::size_t rows, std::size_t cols,
                        std::size_t r, float* out) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return psgd_decode_avx2<Add>(p, q, rows, cols, r, out);
#endif
  psgd_decode_portable<Add>(p, q, rows, cols, r, out);
}

// A bound on |Σ_k P(i,k) Q(j,k)| over every element: Σ_k max|P(·,k)| · max|Q(·,k)|, in
// double. Under psgd_safe_bound the sums in f32 cannot overflow (their rounding adds far
// less than the margin).
template <class Src>
double psgd_product_bound(const Src* p, std::size_t rows, const Src* q, std::size_t cols,
                          std::size_t r) noexcept {
  double bound = 0.0;
  for (std::size_t k = 0; k < r; ++k) {
    float mp = 0.0f, mq = 0.0f;
    for (std::size_t i = 0; i < rows; ++i) mp = std::max(mp, std::fabs(psgd_load(p, k * rows + i)));
    for (std::size_t j = 0; j < cols; ++j) mq = std::max(mq, std::fabs(psgd_load(q, k * cols + j)));
    bound += static_cast<double>(mp) * mq;
  }
  return bound;
}
inline constexpr double psgd_safe_bound = 0x1p127;  // half of FLT_MAX

// Index of the first non-finite value among n floats at p (bytes or floats), or n.
template <class Src>
std::size_t psgd_first_nonfinite(const Src* p, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(psgd_load(p, i))) return i;
  }
  return n;
}

// Index of the first of n floats at p whose magnitude is not below psgd_safe_bound (NaN
// included), or n. No payload an encode accepts holds such a value (its factors' bound is
// below psgd_safe_bound and P̂'s columns are unit vectors), so a residual element that
// large could never be sent: every later encode would throw on it.
template <class Src>
std::size_t psgd_first_unsendable(const Src* p, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    if (!(std::fabs(psgd_load(p, i)) < static_cast<float>(psgd_safe_bound))) return i;
  }
  return n;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

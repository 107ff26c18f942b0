// gradcomm/codec/detail/powersgd_math.hpp — PowerSGD's arithmetic of one element and one row.
// Internal: not part of the API.
//
// The one specification of what the passes compute (codec/detail/powersgd_cpu.hpp; a CUDA
// kernel calls the same functions): an element of M = g + e, the P pass's dot products (one
// element into four ranks' lanes, the lanes added in a fixed tree), an element of the
// low-rank product P̂ Qᵀ, the deferred residual's element, the Q pass's four-row term, the
// norms, and the steps before and after the orthogonalization (a power-of-two prescale, a
// column scaled to unit norm). Every sum has its order written out, so that every path (a
// vector width, an ISA, a GPU) gives the same bits; none may be contracted into a fused
// multiply-add (the CPU clones are compiled without FMA).
//
//   const float m = gradcomm::detail::psgd_m_of<true, false>(g[j], e[j]);  // g + e
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// Element i of a factor held as floats, or as the little-endian f32 bytes of a payload.
GRADCOMM_HD inline float psgd_load(const float* p, std::size_t i) noexcept { return p[i]; }
GRADCOMM_HD inline float psgd_load(const std::byte* p, std::size_t i) noexcept {
  float v;
  std::memcpy(&v, p + 4 * i, 4);
  return v;
}
GRADCOMM_HD inline const float* psgd_at(const float* p, std::size_t i) noexcept { return p + i; }
GRADCOMM_HD inline const std::byte* psgd_at(const std::byte* p, std::size_t i) noexcept {
  return p + 4 * i;
}

// v, or 0 where v is ±Inf or NaN: a bit mask, so that the loops vectorize.
GRADCOMM_HD inline float psgd_finite_or_zero(float v) noexcept {
  const std::int32_t b = float_bits_i32(v);
  const std::int32_t keep = -static_cast<std::int32_t>((b & 0x7f800000) != 0x7f800000);
  return i32_bits_float(b & keep);
}

// Element j of a row of M: g (+ e), non-finite values zeroed under Zero (g's before the
// sum, so that the residual's debt survives a bad gradient, and the sum's after it, for an
// overflow). Without error feedback the passes compute it where they use it; with error
// feedback the first pass (psgd_fold_rows) writes M and the second reads it.
template <bool HasE, bool Zero>
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_m_of(float g, float e) noexcept {
  if constexpr (Zero) {
    const float v = psgd_finite_or_zero(g);
    if constexpr (HasE) {
      return psgd_finite_or_zero(v + e);
    } else {
      return v;
    }
  } else if constexpr (HasE) {
    return g + e;
  } else {
    return g;
  }
}
template <bool HasE, bool Zero>
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_m(const float* __restrict g,
                                                       const float* __restrict e,
                                                       std::size_t j) noexcept {
  return psgd_m_of<HasE, Zero>(g[j], HasE ? e[j] : 0.0f);
}

// Lanes of the P pass's dot products: lane v sums the terms j ≡ v (mod 16) in order, then a
// fixed tree adds the lanes. Four ranks × 16 lanes are eight AVX2 registers (sixteen SSE2
// ones), independent sums enough to hide the adder's latency; the order is the code's, not
// the vector width's, so both give the same bits.
inline constexpr std::size_t psgd_lanes = 16;

[[gnu::always_inline]] GRADCOMM_HD inline float psgd_lane_sum(
    const float (&l)[psgd_lanes]) noexcept {
  float s[8];
  for (std::size_t v = 0; v < 8; ++v) s[v] = l[v] + l[v + 8];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// One element of the P pass: m into the four ranks' lanes.
template <bool HasE, bool Zero>
[[gnu::always_inline]] GRADCOMM_HD inline void psgd_p_term(
    const float* __restrict g, const float* __restrict e, const float* __restrict q0,
    const float* __restrict q1, const float* __restrict q2, const float* __restrict q3,
    std::size_t j, std::size_t v, float* __restrict l0, float* __restrict l1, float* __restrict l2,
    float* __restrict l3) noexcept {
  const float m = psgd_m<HasE, Zero>(g, e, j);
  l0[v] += m * q0[j];
  l1[v] += m * q1[j];
  l2[v] += m * q2[j];
  l3[v] += m * q3[j];
}

// An element of P̂ Qᵀ, four ranks at a time, added left to right: the first group of ranks,
// and each later group added to the sum so far (`at`). A missing rank has coefficient 0.
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_rank4_first(float c0, float c1, float c2,
                                                                 float c3, float q0, float q1,
                                                                 float q2, float q3) noexcept {
  return ((c0 * q0 + c1 * q1) + c2 * q2) + c3 * q3;
}
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_rank4_next(float at, float c0, float c1,
                                                                float c2, float c3, float q0,
                                                                float q1, float q2,
                                                                float q3) noexcept {
  return (((at + c0 * q0) + c1 * q1) + c2 * q2) + c3 * q3;
}

// The deferred residual's term at j for r ≤ 4: finite_or_zero(base − Σ_k P̂(i, k) Q(j, k)),
// the sum exactly as psgd_lowrank_tile's first group (missing ranks: column 0 with
// coefficient 0), so that the residual is what decode's P̂ Qᵀ leaves, to the bit.
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_settled(
    float base, const float* __restrict q0, const float* __restrict q1, const float* __restrict q2,
    const float* __restrict q3, const float (&c)[4], std::size_t j) noexcept {
  return psgd_finite_or_zero(base -
                             psgd_rank4_first(c[0], c[1], c[2], c[3], q0[j], q1[j], q2[j], q3[j]));
}

// The Q pass's term of four rows b of M (m[b]) for one rank, whose coefficients c[b] are
// the rows' P̂: (m0·c0 + m1·c1) + (m2·c2 + m3·c3).
[[gnu::always_inline]] GRADCOMM_HD inline float psgd_q_term(const float (&m)[4],
                                                            const float* c) noexcept {
  return (m[0] * c[0] + m[1] * c[1]) + (m[2] * c[2] + m[3] * c[3]);
}

// Σ v², each square in double, over eight lanes (lane k: the terms i ≡ k mod 8, in order)
// added in a fixed tree: no chain of dependent additions, and the same bits on every ISA.
[[gnu::always_inline]] GRADCOMM_HD inline double psgd_sum_squares(const float* __restrict v,
                                                                  std::size_t n) noexcept {
  double l[8] = {};
  const std::size_t full = n & ~std::size_t{7};
  for (std::size_t j = 0; j < full; j += 8) {
    for (std::size_t k = 0; k < 8; ++k) l[k] += static_cast<double>(v[j + k]) * v[j + k];
  }
  for (std::size_t j = full; j < n; ++j) l[j - full] += static_cast<double>(v[j]) * v[j];
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// Before the orthogonalization: column pk (rows floats) scaled by a power of two to a
// largest magnitude in [1, 2). Exact: it leaves the thin Q of the QR as it is and keeps the
// norms far from overflow and underflow. A zero column stays as it is.
GRADCOMM_HD inline void psgd_pow2_prescale(float* pk, std::size_t rows) noexcept {
#if GRADCOMM_DEVICE_PASS
  float big = 0.0f;
  for (std::size_t i = 0; i < rows; ++i) big = big < fabsf(pk[i]) ? fabsf(pk[i]) : big;
  if (big == 0.0f) return;
  int exponent = 0;
  (void)frexpf(big, &exponent);  // big = f · 2^exponent, f in [0.5, 1)
  for (std::size_t i = 0; i < rows; ++i) pk[i] = ldexpf(pk[i], 1 - exponent);
#else
  float big = 0.0f;
  for (std::size_t i = 0; i < rows; ++i) big = big < std::fabs(pk[i]) ? std::fabs(pk[i]) : big;
  if (big == 0.0f) return;
  int exponent = 0;
  (void)std::frexp(big, &exponent);  // big = f · 2^exponent, f in [0.5, 1)
  for (std::size_t i = 0; i < rows; ++i) pk[i] = std::ldexp(pk[i], 1 - exponent);
#endif
}

// After it: a warm start column qk (cols floats) scaled to unit norm, Σ q² added in order in
// double and 1/‖q‖ taken in double (1/‖q‖ of a subnormal q is no f32). Returns false for a
// zero (or non-finite) column, left as it is.
GRADCOMM_HD inline bool psgd_unit_column(float* qk, std::size_t cols) noexcept {
  double s = 0.0;
  for (std::size_t j = 0; j < cols; ++j) s += static_cast<double>(qk[j]) * qk[j];
#if GRADCOMM_DEVICE_PASS
  if (!(s > 0.0) || !isfinite(s)) return false;
  const double inv = 1.0 / sqrt(s);
#else
  if (!(s > 0.0) || !std::isfinite(s)) return false;
  const double inv = 1.0 / std::sqrt(s);
#endif
  for (std::size_t j = 0; j < cols; ++j) qk[j] = static_cast<float>(qk[j] * inv);
  return true;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

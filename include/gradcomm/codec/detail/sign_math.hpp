// gradcomm/codec/detail/sign_math.hpp — sign and ternary's per-element and per-block arithmetic.
// Internal: not part of the API.
//
//   const float scale = gradcomm::detail::sign_scale(abs_sum, len);  // mean |x| of the block
//   unsigned c = gradcomm::detail::sign_code(x);                     // 1 for x >= 0
//   float v = gradcomm::detail::sign_value(c, scale);                // ±scale
//
// sign_codec is scalar_quant's 1-bit nearest rounding with mean |x| scales, ternary_codec
// its 2-bit stochastic max |x| levels: both encode through quant_math.hpp's functions. What
// is sign's own is written here, GRADCOMM_HD, the one specification that the CPU loops
// (sign_cpu.hpp) and the CUDA kernels call: the sign bit, the block scale, and the fused
// error-feedback step (ef_math.hpp's residual update) one element and one block at a time.
// No containers, no exceptions, no intrinsics.
#pragma once

#include <gradcomm/codec/detail/ef_math.hpp>
#include <gradcomm/codec/detail/quant_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The code of v: 1 for v >= 0 (zero and −0 included; NaN too), 0 below (scalar_quant's
// 1-bit nearest rounding).
GRADCOMM_HD inline unsigned sign_code(float v) noexcept { return v < 0.0f ? 0u : 1u; }

// The value of a code: +scale for 1, −scale for 0 (scalar_quant_value<1>).
GRADCOMM_HD inline float sign_value(unsigned code, float scale) noexcept {
  return scalar_quant_value<1>(static_cast<std::uint8_t>(code), scale);
}

// A block's scale from Σ |x| over its len (>= 1) values: the mean |x|, capped at the largest
// float (block_mean_abs's; scalar_quant_step(scale, 1) is the scale itself).
GRADCOMM_HD inline float sign_scale(double abs_sum, std::size_t len) noexcept {
  return double_to_scale(abs_sum / static_cast<double>(len));
}

// ---- the fused error-feedback step (sign_codec::encode_with_residual) --------------------

// Σ |g[i] + e[i]| over one block in lane_sum's order (8 lanes by i % 8, joined in a fixed
// order), and max |s| as bits. Zero: non-finite s read as 0.
template <bool Zero>
GRADCOMM_HD inline double sign_ef_sums(const float* g, const float* e, std::size_t len,
                                       std::int32_t& max_bits) noexcept {
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int32_t m = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const float s = ef_input(g[i], e[i]);
    const std::int32_t a = abs_float_bits(float_bits(s));
    m = a > m ? a : m;
    l[i % 8] += std::fabs(static_cast<double>(Zero ? finite_or_zero(s) : s));
  }
  max_bits = m;
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// Element i: its code (1 for s >= 0, zero included) and next[i].
template <bool Zero>
GRADCOMM_HD inline unsigned sign_ef_element(const float* g, const float* e, float* next,
                                            std::size_t i, float scale) noexcept {
  const float s = ef_input(g[i], e[i]);
  const unsigned c = sign_code(Zero ? finite_or_zero(s) : s);
  next[i] = ef_residual(s, sign_value(c, scale));
  return c;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/ef_math.hpp — error feedback's per-element arithmetic (GRADCOMM_HD).
// Internal: not part of the API.
//
//   const float s = gradcomm::detail::ef_input(g[i], e[i]);       // what is encoded
//   e[i] = gradcomm::detail::ef_residual(s, decoded[i]);          // what is still owed
//
// The one specification of the residual's update, e <- g + e − D(C(g + e)), each non-finite
// element 0: error_feedback's loops (ef_cpu.hpp), sign_codec's fused step (sign_math.hpp) and
// the CUDA kernels call these. No containers, no exceptions, no intrinsics.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>

#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// v, or 0 where v is ±Inf or NaN. A bit test, so that the loop vectorizes (std::isfinite
// often does not).
GRADCOMM_HD inline float ef_finite_or_zero(float v) noexcept {
  return (float_bits(v) & 0x7f800000u) == 0x7f800000u ? 0.0f : v;
}

// The value error feedback encodes: the input plus what is owed (one f32 addition).
GRADCOMM_HD inline float ef_input(float g, float e) noexcept { return g + e; }

// The next residual of an element encoded as s = ef_input(g, e) and decoded as `decoded`:
// s − decoded, or 0 where that is not finite (a debt that cannot be paid, and would poison
// every later step).
GRADCOMM_HD inline float ef_residual(float s, float decoded) noexcept {
  return ef_finite_or_zero(s - decoded);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

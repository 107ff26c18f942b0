// gradcomm/codec/detail/randomk_math.hpp — random-k's per-element arithmetic: index j of the
// selection (randomk_index, public) and its precomputed layout. GRADCOMM_HD: hosts and
// devices draw the same indices.
//
//   std::uint64_t i = gradcomm::randomk_index(n, k, j, rot0, rot1, w0, w1);
#pragma once

#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/core/config.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

namespace gradcomm {
inline namespace v0 {

/// Index j (0 <= j < k) of random-k's selection of k among n (1 <= k <= n) for Philox words
/// w[0..4) = {rotation word 0, rotation word 1, stratum word 0, stratum word 1}: [0, n) is
/// cut into k strata of lengths ⌊n/k⌋ or ⌈n/k⌉, one uniform position is drawn in stratum
/// j, and every position is rotated by the same uniform offset (mod n). Integer arithmetic
/// only: hosts and devices agree.
///
///   std::uint64_t i = gradcomm::randomk_index(n, k, j, rot0, rot1, w0, w1);
GRADCOMM_HD constexpr std::uint64_t randomk_index(std::uint64_t n, std::uint64_t k, std::uint64_t j,
                                                  std::uint32_t rot0, std::uint32_t rot1,
                                                  std::uint32_t w0, std::uint32_t w1) noexcept;

namespace detail {
// randomk_index with its divisions and its rotation done once, for loops over j.
struct randomk_layout {
  std::uint64_t n;
  sparse_strata strata;
  std::uint64_t rotation;
  GRADCOMM_HD constexpr randomk_layout(std::uint64_t n_, std::uint64_t k, std::uint32_t rot0,
                                       std::uint32_t rot1) noexcept
      : n(n_), strata(n_, k), rotation(sparse_uniform_below(rot0, rot1, n_)) {}
  GRADCOMM_HD constexpr std::uint64_t index(std::uint64_t j, std::uint32_t w0,
                                            std::uint32_t w1) const noexcept {
    const std::uint64_t pos = strata.start(j) + sparse_uniform_below(w0, w1, strata.length(j));
    return pos < n - rotation ? pos + rotation : pos - (n - rotation);
  }
};
}  // namespace detail

GRADCOMM_HD constexpr std::uint64_t randomk_index(std::uint64_t n, std::uint64_t k, std::uint64_t j,
                                                  std::uint32_t rot0, std::uint32_t rot1,
                                                  std::uint32_t w0, std::uint32_t w1) noexcept {
  return detail::randomk_layout(n, k, rot0, rot1).index(j, w0, w1);
}

namespace detail {
/// The value random-k sends for g at a selected index, under scale s (1 unscaled): a
/// nonfinite g as 0 (policy zero; reject has refused it before), times s, saturated at
/// ±FLT_MAX, so that a payload never carries an infinity its decoder would reject.
GRADCOMM_HD inline float randomk_value(float g, float s) noexcept {
  float v = g;
  if (sparse_key(v) >= sparse_nonfinite_key) v = 0.0f;  // policy zero
  v *= s;
  if (sparse_key(v) >= sparse_nonfinite_key) {
    v = std::copysign(std::numeric_limits<float>::max(), v);
  }
  return v;
}
}  // namespace detail

}  // namespace v0
}  // namespace gradcomm

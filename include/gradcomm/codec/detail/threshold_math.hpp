// gradcomm/codec/detail/threshold_math.hpp — threshold_codec's compare: the key above which a
// value is sent. GRADCOMM_HD: the CPU compaction and device kernels select alike. Internal:
// not part of the API.
//
//   const std::int32_t t = gradcomm::detail::threshold_select_key(tau);
//   bool sent = gradcomm::detail::sparse_key(g) >= t;  // |g| > tau
#pragma once

#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/core/config.hpp>

#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// The least key a value must have to be sent for |g| > t (t >= 0, as f32): key(|g|) >=
/// key(t) + 1; an infinite t selects nothing finite.
GRADCOMM_HD inline std::int32_t threshold_select_key(float t) noexcept {
  const std::int32_t k = sparse_key(t);
  return (k < sparse_nonfinite_key ? k : sparse_nonfinite_key) + 1;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

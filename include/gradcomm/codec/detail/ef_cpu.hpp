// gradcomm/codec/detail/ef_cpu.hpp — error feedback's CPU loops around an inner codec.
// Internal: not part of the API.
//
//   gradcomm::detail::ef_add_residual(g, e, t, n);   // t = g + e: what the inner codec encodes
//   inner.encode(t, wire); inner.decode(wire, e);    // e = D(C(t))
//   gradcomm::detail::ef_settle(t, e, n);            // e = t − e: the next residual
//
// Each element goes through ef_math.hpp's functions. Portable loops only: the compiler
// vectorizes them for the build's ISA, and they run at memory speed beside the inner codec's
// encode and decode (a codec with a fused step, ResidualCodec, takes its own loop instead).
#pragma once

#include <gradcomm/codec/detail/ef_math.hpp>
#include <gradcomm/core/config.hpp>

#include <cstddef>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// t[i] = g[i] + e[i].
inline void ef_add_residual(const float* g, const float* e, float* t, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) t[i] = ef_input(g[i], e[i]);
}

// e[i] = t[i] − e[i] (e holding the decoded values), 0 where not finite.
inline void ef_settle(const float* t, float* e, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) e[i] = ef_residual(t[i], e[i]);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/comm/detail/buffer_ops.hpp — the buffer operations a communicator's algorithms
// ask of their execution context: copy, overlapping copy, scale, zero, and the
// staging buffer type.
//
//   detail::staging_buffer<host_context, std::byte> send;   // std::vector on the host
//   detail::copy(ctx, dst, src);                            // memcpy on the host
//   detail::scale(ctx, values, 1.0f / ranks);               // values *= a
//
// The algorithms (comm/detail/allreduce_*.hpp) are written against these calls only, so
// that the same code serves host buffers today and device buffers later: a device context
// brings its own overloads (kernels on its stream) and its own staging buffer. Only the
// host context (core/execution.hpp) is implemented here.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The buffer a context's algorithms stage payloads and partial sums in: it lives in the
// context's memory space, grows with resize() and hands out data() and size().
template <class Ctx, class E>
struct staging_for;
template <class E>
struct staging_for<host_context, E> {
  using type = std::vector<E>;
};
template <class Ctx, class E>
using staging_buffer = typename staging_for<Ctx, E>::type;

// The view of elements of E that a context's calls read and write.
template <class Ctx, class E>
using view_in = tensor_view<E, Ctx::space>;

// dst := src (same size); the ranges do not overlap.
template <class E>
inline void copy(host_context, host_view<E> dst, host_view<const E> src) noexcept {
  if (!src.empty()) std::memcpy(dst.data(), src.data(), src.size_bytes());
}

// dst := src (same size) where the ranges may overlap.
template <class E>
inline void copy_overlapping(host_context, host_view<E> dst, host_view<const E> src) noexcept {
  if (!src.empty()) std::memmove(dst.data(), src.data(), src.size_bytes());
}

// v *= a, element by element (the same bits as the loop it stands for).
inline void scale(host_context, host_view<float> v, float a) noexcept {
  float* p = v.data();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] *= a;
}

// v := 0.
inline void zero(host_context, host_view<float> v) noexcept {
  float* p = v.data();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = 0.0f;
}

// The staging buffer as a view of its first n elements (all of it by default).
template <class E, class A>
inline host_view<E> view_of(host_context, std::vector<E, A>& b, std::size_t n) noexcept {
  return host_view<E>(b.data(), n);
}
template <class E, class A>
inline host_view<E> view_of(host_context c, std::vector<E, A>& b) noexcept {
  return view_of(c, b, b.size());
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

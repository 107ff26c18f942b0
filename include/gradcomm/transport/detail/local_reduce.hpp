// gradcomm/transport/detail/local_reduce.hpp — the local transport's all-reduce kernel:
// one rank's slice, reduced over every rank's input in rank order, in L1-sized blocks.
#pragma once

#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cstddef>

namespace gradcomm {
inline namespace v0 {
namespace detail {

template <class E, reduce_op Op, std::size_t N>
inline void local_fold_fixed(E* acc, const E* x) noexcept {
  for (std::size_t i = 0; i < N; ++i) acc[i] = combine<E, Op>(acc[i], x[i]);
}

template <class E, reduce_op Op>
inline void local_fold(E* acc, const E* x, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) acc[i] = combine<E, Op>(acc[i], x[i]);
}

// For every rank q: out(q)[lo, hi) = in(0) op in(1) op ... op in(n-1), left to
// right, in blocks that stay in L1. Each block is read from every input before it
// is written anywhere, and only this call touches [lo, hi) of any buffer, so an
// output may be its rank's input.
template <class E, reduce_op Op, class In, class Out>
void local_reduce_slice(In in, Out out, int n, std::size_t lo, std::size_t hi) {
  constexpr std::size_t block = 2048;
  alignas(64) E acc[block];
  for (std::size_t b = lo; b < hi; b += block) {
    const std::size_t len = std::min(block, hi - b);
    copy_bytes(acc, in(0) + b, len * sizeof(E));
    for (int q = 1; q < n; ++q) {
      // A constant trip count lets the compiler vectorize without a cost model.
      if (len == block)
        local_fold_fixed<E, Op, block>(acc, in(q) + b);
      else
        local_fold<E, Op>(acc, in(q) + b, len);
    }
    for (int q = 0; q < n; ++q) copy_bytes(out(q) + b, acc, len * sizeof(E));
  }
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

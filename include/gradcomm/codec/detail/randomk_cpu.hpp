// gradcomm/codec/detail/randomk_cpu.hpp — random-k's CPU loop over its selection: Philox
// words a batch at a time, indices by randomk_math.hpp, scattered accesses prefetched.
// Internal: not part of the API.
//
//   gradcomm::detail::randomk_for_each(n, k, key, g, [&](std::uint64_t j, std::uint64_t i) { ...
//   });
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>
#include <gradcomm/codec/detail/randomk_math.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/core/philox.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {

namespace detail {
// Calls f(j, index_j) for j in [0, k), in order: the rotation draws words 0 and 1 of the
// key's stream, stratum j words 2j + 2 and 2j + 3. `touch` (null: none) is the array f
// reads (Write: writes) at the indices, prefetched ahead.
template <bool Write = false, class F>
void randomk_for_each(std::uint64_t n, std::uint64_t k, const stream_key& key, const float* touch,
                      F&& f) {
  if (k == 0) return;
  const philox_stream rng(key.seed, key.step, key.rank, key.bucket);
  const u32x4 first = rng.block(0);
  const randomk_layout layout(n, k, first.v[0], first.v[1]);
  const cpu_isa isa = cpu_best_isa();
  constexpr std::uint64_t batch = 1024;  // strata a batch: words 2 j0 + 2 .. 2 j0 + 2049
  std::uint32_t w[4 * (batch / 2 + 1)];
  std::uint64_t ix[batch];
  constexpr std::uint64_t ahead = sparse_prefetch_distance;
  for (std::uint64_t j0 = 0; j0 < k; j0 += batch) {
    const std::uint64_t count = std::min(batch, k - j0);
    // Word 2 j0 + 2 is word 2 of block j0 / 2 (j0 is even).
    philox_fill(rng, static_cast<std::uint32_t>(j0 / 2), static_cast<std::size_t>(count / 2 + 1), w,
                isa);
    for (std::uint64_t j = 0; j < count; ++j) {
      ix[j] = layout.index(j0 + j, w[2 * j + 2], w[2 * j + 3]);
    }
    if (touch != nullptr) {
      for (std::uint64_t j = 0; j < std::min(count, ahead); ++j) {
        sparse_prefetch<Write>(touch + ix[j]);
      }
    }
    for (std::uint64_t j = 0; j < count; ++j) {
      if (touch != nullptr && j + ahead < count) sparse_prefetch<Write>(touch + ix[j + ahead]);
      f(j0 + j, ix[j]);
    }
  }
}
}  // namespace detail

}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/vq_learn.hpp — k-means for vector quantization's learned codebook.
// Internal: not part of the API.
//
// Lloyd's iterations over normalized groups, assigning each group by the encoder's own tree
// search (so that the codewords are the centroids of what the encoder picks), and the
// sums and counts one iteration needs. vq_learned_codec refreshes its codebook with them;
// benchmarks/tools/make_codebook.cpp trains the built-in ones.
//
//   gradcomm::detail::vq_learn_scratch s;
//   gradcomm::detail::vq_lloyd<4>(groups, m, 5, tree, s);
#pragma once

#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/vq_cpu.hpp>
#include <gradcomm/codec/detail/vq_math.hpp>
#include <gradcomm/core/config.hpp>

#include <array>
#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {

namespace detail {

// k-means scratch: the sums and counts of one Lloyd iteration.
struct vq_learn_scratch {
  std::array<double, vq_codewords * 8> sums{};
  std::array<std::uint64_t, vq_codewords> counts{};
};

// `iterations` Lloyd iterations on m normalized groups (D floats each), assigning by the
// tree search: each codeword moves to the mean of its groups, each coarse centroid to the
// mean of its subtree's groups; a codeword (centroid) with none stays. Deterministic.
template <int D>
void vq_lloyd(const float* samples, std::size_t m, unsigned iterations, vq_tree& tree,
              vq_learn_scratch& s) {
  for (unsigned it = 0; it < iterations; ++it) {
    const vq_search_tables t = vq_search_tables::of(tree);
    s.sums.fill(0.0);
    s.counts.fill(0);
    const bool simd = cpu_runs(cpu_isa::avx2);
    for (std::size_t i = 0; i < m; ++i) {
      const float* y = samples + i * D;
#if GRADCOMM_X86_DISPATCH
      const unsigned c = simd ? vq_nearest_avx2_call<D>(y, t) : vq_nearest<D>(y, t);
#else
      (void)simd;
      const unsigned c = vq_nearest<D>(y, t);
#endif
      ++s.counts[c];
      for (int k = 0; k < D; ++k) s.sums[c * D + k] += y[k];
    }
    for (unsigned i = 0; i < vq_branches; ++i) {
      double sub[D] = {};
      std::uint64_t total = 0;
      for (unsigned j = 0; j < vq_branches; ++j) {
        const unsigned c = i * vq_branches + j;
        total += s.counts[c];
        for (int k = 0; k < D; ++k) sub[k] += s.sums[c * D + k];
        if (s.counts[c] == 0) continue;
        for (int k = 0; k < D; ++k) {
          tree.fine[c * D + k] =
              static_cast<float>(s.sums[c * D + k] / static_cast<double>(s.counts[c]));
        }
      }
      if (total == 0) continue;
      for (int k = 0; k < D; ++k) {
        tree.coarse[i * D + k] = static_cast<float>(sub[k] / static_cast<double>(total));
      }
    }
  }
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

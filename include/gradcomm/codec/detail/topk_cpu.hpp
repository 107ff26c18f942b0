// gradcomm/codec/detail/topk_cpu.hpp — the CPU selection of top-k and approximate top-k: the
// radix k-th largest key, the stratified sample of keys, the exact top-k, and the workspace
// they need. Internal: not part of the API.
//
//   gradcomm::detail::sparse_scratch s;
//   gradcomm::detail::sparse_top_k(g, n, k, policy, s, "topk_codec::encode");
//   // s.index[0, k), s.value[0, k): the k largest |g|, in index order
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/codec/detail/topk_math.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// The k-th largest key (1 <= k <= n) and how many keys exceed it.
struct sparse_kth {
  std::int32_t key;
  std::size_t greater;
};

// One radix digit: the histogram of (key >> shift) & mask over the keys whose bits above
// `shift + width` equal `prefix`, then the digit holding the rank-th largest key.
template <bool ZeroNonfinite>
void sparse_radix_digit(const float* __restrict g, std::size_t n, unsigned shift, unsigned width,
                        std::int32_t prefix, std::size_t& rank, std::size_t& greater,
                        std::int32_t& digit, sparse_buffer<std::uint64_t>& hist) {
  const std::uint32_t bins = 1u << width;
  // Four histograms, so that equal neighbours do not wait on each other's increments; bin
  // `bins` takes the keys outside the prefix.
  hist.grow_to(4 * (bins + 1));
  std::fill(hist.begin(), hist.begin() + 4 * (bins + 1), std::uint64_t{0});
  std::uint64_t* h = hist.data();
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (std::size_t j = 0; j < 4; ++j) {
      const auto k = static_cast<std::uint32_t>(sparse_key_policy<ZeroNonfinite>(g[i + j]));
      ++h[j * (bins + 1) + topk_radix_bin(k, shift, width, prefix)];
    }
  }
  for (; i < n; ++i) {
    const auto k = static_cast<std::uint32_t>(sparse_key_policy<ZeroNonfinite>(g[i]));
    ++h[topk_radix_bin(k, shift, width, prefix)];
  }
  std::size_t above = 0;
  for (std::uint32_t b = bins; b-- > 0;) {
    const std::size_t c = h[b] + h[(bins + 1) + b] + h[2 * (bins + 1) + b] + h[3 * (bins + 1) + b];
    if (above + c >= rank) {
      digit = static_cast<std::int32_t>(b);
      greater += above;
      rank -= above;
      return;
    }
    above += c;
  }
  digit = 0;  // unreachable while 1 <= rank <= the keys under the prefix
}

/// The k-th largest key of g[0, n) (1 <= k <= n) by three histogram passes (11, 11 and 9
/// bits of the 31-bit key): exact, O(1) memory, whatever the data (all equal included).
/// Nonfinite values must have been rejected before (or count as 0 under policy zero).
inline sparse_kth sparse_radix_kth(const float* g, std::size_t n, std::size_t k,
                                   nonfinite_policy policy, sparse_scratch& s) {
  std::size_t rank = k, greater = 0;
  std::int32_t d1 = 0, d2 = 0, d3 = 0;
  const auto run = [&]<bool Z>() {
    sparse_radix_digit<Z>(g, n, 20, 11, 0, rank, greater, d1, s.histogram);
    sparse_radix_digit<Z>(g, n, 9, 11, d1, rank, greater, d2, s.histogram);
    sparse_radix_digit<Z>(g, n, 0, 9, (d1 << 11) | d2, rank, greater, d3, s.histogram);
  };
  if (policy == nonfinite_policy::zero) {
    run.template operator()<true>();
  } else {
    run.template operator()<false>();
  }
  return {(d1 << 20) | (d2 << 9) | d3, greater};
}

/// Keeps, among the s.index / s.value pairs [0, c) (in index order), the k with the
/// largest magnitudes, ties to the lower index; returns k. Uses s.key.
inline std::size_t sparse_keep_largest(sparse_scratch& s, std::size_t c, std::size_t k) {
  if (k >= c) return c;
  s.reserve_keys(c);
  std::int32_t* keys = s.key.data();
  for (std::size_t j = 0; j < c; ++j) keys[j] = sparse_key(s.value[j]);
  std::nth_element(keys, keys + (k - 1), keys + c, std::greater<>());
  const std::int32_t t = keys[k - 1];
  std::size_t greater = 0;
  for (std::size_t j = 0; j < c; ++j) greater += sparse_key(s.value[j]) > t;
  const std::size_t ties = k - greater;
  std::size_t w = 0, seen = 0;
  for (std::size_t j = 0; j < c; ++j) {
    const std::int32_t key = sparse_key(s.value[j]);
    const bool eq = key == t;
    const bool keep = key > t || (eq && seen < ties);
    seen += eq;
    s.index[w] = s.index[j];
    s.value[w] = s.value[j];
    w += keep;
  }
  return w;
}

/// Fixed key of the sample positions: the selection is deterministic, the same on every
/// rank and run.
inline constexpr std::uint64_t sparse_sample_seed = 0x5eed'70b5'a3b1'e000ull;

/// Keys of a stratified sample of m positions of g[0, n) (m <= n; one uniform position in
/// each of m strata, so m == n takes every element) into s.key[0, m).
inline void sparse_sample_keys(const float* g, std::size_t n, std::size_t m,
                               nonfinite_policy policy, sparse_scratch& s) {
  s.reserve_keys(m);
  const philox_stream rng(sparse_sample_seed, 0, 0, 0);
  const cpu_isa isa = cpu_best_isa();
  constexpr std::size_t blocks = 256;  // 512 positions a batch
  std::uint32_t w[4 * blocks];
  const bool zero = policy == nonfinite_policy::zero;
  const sparse_strata strata(n, m);
  std::size_t pos[2 * blocks];
  for (std::size_t j0 = 0; j0 < m; j0 += 2 * blocks) {
    const std::size_t count = std::min(2 * blocks, m - j0);
    philox_fill(rng, static_cast<std::uint32_t>(j0 / 2), (count + 1) / 2, w, isa);
    for (std::size_t j = 0; j < count; ++j) {
      pos[j] = static_cast<std::size_t>(
          strata.start(j0 + j) +
          sparse_uniform_below(w[2 * j], w[2 * j + 1], strata.length(j0 + j)));
    }
    for (std::size_t j = 0; j < std::min(count, sparse_prefetch_distance); ++j) {
      sparse_prefetch(g + pos[j]);
    }
    for (std::size_t j = 0; j < count; ++j) {
      if (j + sparse_prefetch_distance < count) {
        sparse_prefetch(g + pos[j + sparse_prefetch_distance]);
      }
      s.key[j0 + j] = zero ? sparse_key_policy<true>(g[pos[j]]) : sparse_key(g[pos[j]]);
    }
  }
}

/// The r-th largest (1 <= r <= m) of s.key[0, m); reorders them.
inline std::int32_t sparse_sample_rank(sparse_scratch& s, std::size_t m, std::size_t r) {
  std::nth_element(s.key.begin(), s.key.begin() + static_cast<std::ptrdiff_t>(r - 1),
                   s.key.begin() + static_cast<std::ptrdiff_t>(m), std::greater<>());
  return s.key[r - 1];
}

/// Sample size for selecting k of n: about 1024 expected sample hits above the k-th
/// largest (count estimates within a few per cent), at most n / 64 positions of a large
/// input, every element of a small one.
inline std::size_t sparse_sample_size(std::size_t n, std::size_t k) {
  if (n <= 65536) return n;
  const double want = 1024.0 * static_cast<double>(n) / static_cast<double>(k);
  const double cap = static_cast<double>(n / 64);
  return static_cast<std::size_t>(std::clamp(std::ceil(want), 4096.0, std::max(cap, 4096.0)));
}

// The candidate pass of sparse_top_k for k of n (0 < k < n) with a sample of m: the sample
// rank r that bounds the k-th largest from below, and how many pairs the pass stores.
struct sparse_top_k_plan {
  std::size_t r;
  std::size_t cap;
};
inline sparse_top_k_plan sparse_top_k_candidates(std::size_t n, std::size_t k, std::size_t m) {
  // Expected sample hits t; 4 standard deviations more, so that fewer than k candidates
  // is rare (a few in 10^5) and costs only the fallback.
  const double t = static_cast<double>(k) * static_cast<double>(m) / static_cast<double>(n);
  const auto r = static_cast<std::size_t>(
      std::min(static_cast<double>(m), std::ceil(t + 4.0 * std::sqrt(t) + 2.0)));
  const double expect = static_cast<double>(r) * static_cast<double>(n) / static_cast<double>(m);
  const auto cap =
      static_cast<std::size_t>(std::max(2.0 * static_cast<double>(k), 2.0 * expect)) + 1024;
  return {r, cap};
}

/// Exact top-k of g[0, n) into s.index / s.value [0, k), in index order; ties to the lower
/// index. Usually one pass: a sample bounds the k-th largest magnitude from below, the pass
/// keeps the candidates above the bound (a few per cent more than k) and nth_element on
/// them finishes. Where the sample misleads (many equal values), the radix selection
/// (three histogram passes) and a last pass that breaks ties by index. Throws as
/// sparse_compact for nonfinite values. `isa`: the compaction's path (tests take each).
inline void sparse_top_k(const float* g, std::size_t n, std::size_t k, nonfinite_policy policy,
                         sparse_scratch& s, const char* call, cpu_isa isa = cpu_best_isa()) {
  if (k == 0) {
    // Still one pass: a nonfinite value is rejected whatever k is.
    if (policy != nonfinite_policy::zero) {
      if (const std::size_t i = sparse_find_nonfinite(g, n); i < n) throw_nonfinite(call, i, g[i]);
    }
    return;
  }
  if (k == n) {
    s.reserve_pairs(n + 16);
    sparse_compact(g, n, {.key = 0}, n, policy, s, call, isa);
    return;
  }
  {
    const std::size_t m = sparse_sample_size(n, k);
    sparse_sample_keys(g, n, m, policy, s);
    const sparse_top_k_plan plan = sparse_top_k_candidates(n, k, m);
    const std::int32_t bound = sparse_sample_rank(s, m, plan.r);
    const sparse_compaction c =
        sparse_compact(g, n, {.key = bound}, plan.cap, policy, s, call, isa);
    if (c.complete() && c.total >= k) {
      sparse_keep_largest(s, c.total, k);
      return;
    }
  }
  // The pass above saw every value: each is finite, or policy is zero.
  const sparse_kth kth = sparse_radix_kth(g, n, k, policy, s);
  s.reserve_pairs(k + 16);
  sparse_compact(g, n, {.key = kth.key, .ties = k - kth.greater}, k, policy, s, call, isa);
}

/// The most scratch a selection takes, element by element: (index, value) pairs, keys and
/// histogram entries; bytes() is what a caller's workspace must hold (8-byte alignment
/// included).
struct sparse_workspace {
  std::size_t pairs = 0;
  std::size_t keys = 0;
  std::size_t histogram = 0;

  std::size_t bytes() const noexcept {
    const std::size_t b = (8 + 4) * pairs + 4 * keys + 8 * histogram;
    return b == 0 ? 0 : b + 7;
  }
  /// Room for this selection and `o` one after the other.
  void cover(const sparse_workspace& o) noexcept {
    pairs = std::max(pairs, o.pairs);
    keys = std::max(keys, o.keys);
    histogram = std::max(histogram, o.histogram);
  }
  /// Binds s to `ws` (at least bytes() bytes, checked by the caller): no allocation until s
  /// is destroyed.
  void bind(sparse_scratch& s, std::span<std::byte> ws) const noexcept {
    if (bytes() == 0) return;
    std::byte* p = ws.data();
    p += (8 - reinterpret_cast<std::uintptr_t>(p) % 8) % 8;
    s.index.borrow(reinterpret_cast<std::uint64_t*>(p), pairs);
    p += 8 * pairs;
    s.histogram.borrow(reinterpret_cast<std::uint64_t*>(p), histogram);
    p += 8 * histogram;
    s.value.borrow(reinterpret_cast<float*>(p), pairs);
    p += 4 * pairs;
    s.key.borrow(reinterpret_cast<std::int32_t*>(p), keys);
  }
};

/// Binds s to the caller's workspace `ws` for an encode of n elements whose selection takes
/// `w`; throws invalid_argument naming both sizes when `ws` holds fewer than w.bytes().
inline void sparse_bind_workspace(const sparse_workspace& w, sparse_scratch& s,
                                  std::span<std::byte> ws, std::size_t n, const char* call) {
  if (ws.size() < w.bytes()) {
    throw_invalid_argument(call, "workspace of " + std::to_string(ws.size()) +
                                     " bytes, an encode of " + std::to_string(n) +
                                     " elements needs " + std::to_string(w.bytes()) +
                                     " (workspace_bytes)");
  }
  w.bind(s, ws);
}

/// What sparse_top_k takes for k of n (k <= n) at the most, whichever way it goes.
inline sparse_workspace sparse_top_k_workspace(std::size_t n, std::size_t k) noexcept {
  if (k == 0) return {};
  if (k == n) return {.pairs = n + 16};
  const std::size_t m = sparse_sample_size(n, k);
  // The candidate pass stores at most min(cap, n) pairs, growing 16 at a time; the radix
  // fallback takes four histograms of 2^11 + 1 bins and k + 16 pairs (k < cap).
  const std::size_t stored = std::min(sparse_top_k_candidates(n, k, m).cap, n);
  return {.pairs = stored + 16, .keys = std::max(m, stored), .histogram = 4 * ((1u << 11) + 1)};
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/sparse_select.hpp — the selection loops of the sparse codecs (threshold,
// top-k, approximate top-k, random-k). Internal: not part of the API.
//
//   gradcomm::detail::sparse_scratch s;  // kept by the codec, reused
//   auto r = gradcomm::detail::sparse_compact(g, n, {.key = t}, n, policy, s, "threshold::encode");
//   // s.index[0, r.stored), s.value[0, r.stored): every i with key(g[i]) >= t, in index order
//
// Magnitudes are compared as their bits: for a float g, `sparse_key(g)` is the bits of |g| as
// a non-negative int32, ordered as |g| is, with ±Inf and NaN at 0x7f800000 and above. Integer
// compares vectorize under SSE2 and have no NaN cases. The compaction tests 16 values with
// one or two vector compares and a mask; a chunk none of which is selected (most chunks, at
// the densities sparsifiers run at) costs nothing more, so the pass runs at memory speed.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// |g| as ordered bits: a non-negative int32; ±Inf is 0x7f800000, NaN above it.
GRADCOMM_HD inline std::int32_t sparse_key(float g) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &g, 4);
  return static_cast<std::int32_t>(u & 0x7fffffffu);
}

/// The smallest key of ±Inf and NaN.
inline constexpr std::int32_t sparse_nonfinite_key = 0x7f800000;

/// The high 64 bits of a × b, with 32-bit pieces (exact; the same on host and device).
GRADCOMM_HD constexpr std::uint64_t mulhi_u64(std::uint64_t a, std::uint64_t b) noexcept {
  const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
  const std::uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
  const std::uint64_t p0 = a_lo * b_lo, p1 = a_lo * b_hi, p2 = a_hi * b_lo, p3 = a_hi * b_hi;
  const std::uint64_t mid = (p0 >> 32) + (p1 & 0xffffffffu) + (p2 & 0xffffffffu);
  return p3 + (p1 >> 32) + (p2 >> 32) + (mid >> 32);
}

/// Asks for the cache line of p ahead of a scattered read (or write); no effect where the
/// compiler has no prefetch. Scattered accesses to a large tensor wait on page walks and
/// misses one after the other otherwise: a few in flight, not dozens.
template <bool Write = false>
inline void sparse_prefetch(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, Write ? 1 : 0);
#else
  (void)p;
#endif
}

/// How far ahead scattered loops prefetch.
inline constexpr std::size_t sparse_prefetch_distance = 16;

/// [0, n) cut into k strata (1 <= k <= n) whose lengths differ by at most one (the first
/// n % k have one more). The divisions happen once, here.
struct sparse_strata {
  std::uint64_t q;  // the shorter length
  std::uint64_t r;  // strata of length q + 1
  GRADCOMM_HD constexpr sparse_strata(std::uint64_t n, std::uint64_t k) noexcept
      : q(n / k), r(n % k) {}
  /// Stratum j's first element.
  GRADCOMM_HD constexpr std::uint64_t start(std::uint64_t j) const noexcept {
    return j * q + (j < r ? j : r);
  }
  /// Stratum j's length.
  GRADCOMM_HD constexpr std::uint64_t length(std::uint64_t j) const noexcept {
    return q + (j < r ? 1 : 0);
  }
};

/// A uniform integer in [0, m) from two Philox words: floor(((w1 << 32) | w0) × m / 2^64).
/// Integer only, so every host and device computes the same value; biased by at most
/// m / 2^64.
GRADCOMM_HD constexpr std::uint64_t sparse_uniform_below(std::uint32_t w0, std::uint32_t w1,
                                                         std::uint64_t m) noexcept {
  return mulhi_u64((static_cast<std::uint64_t>(w1) << 32) | w0, m);
}

/// What the sparse encoders keep between calls, so that an encode allocates only when a
/// selection is larger than every earlier one.
struct sparse_scratch {
  std::vector<std::uint64_t> index;
  std::vector<float> value;
  std::vector<std::int32_t> key;         // candidate or sample keys
  std::vector<std::uint64_t> histogram;  // radix selection

  // Room for at least `pairs` (index, value) pairs; grows by half again at least, so that
  // growing one chunk at a time stays amortized O(1).
  void reserve_pairs(std::size_t pairs) {
    if (index.size() >= pairs) return;
    const std::size_t grown = std::max(pairs, index.size() + index.size() / 2);
    index.resize(grown);
    value.resize(grown);
  }
  void reserve_keys(std::size_t keys) {
    if (key.size() < keys) key.resize(std::max(keys, key.size() + key.size() / 2));
  }
};

[[noreturn]] inline void throw_nonfinite(const char* call, std::size_t i, float v) {
  throw_invalid_argument(call, "non-finite value " + std::to_string(v) + " at index " +
                                   std::to_string(i) +
                                   " (nonfinite_policy::reject; ::zero encodes it as 0)");
}

// The reductions below have AVX2 and AVX-512 clones chosen at run time (the baseline,
// SSE2, has no 32-bit max). Integer results are the same on every path; the RMS sums in the
// same lanes in the same order on every path, and its AVX-512 machines take the AVX2 clone,
// which has no FMA to contract the multiply-add: one sum on every x86 CPU.

inline std::size_t sparse_find_nonfinite_loop(const float* g, std::size_t n) noexcept {
  constexpr std::size_t chunk = 64;
  const std::size_t body = n - n % chunk;
  std::size_t i = 0;
  for (; i < body; i += chunk) {
    std::int32_t top = 0;
    for (std::size_t j = 0; j < chunk; ++j) top = std::max(top, sparse_key(g[i + j]));
    if (top >= sparse_nonfinite_key) break;
  }
  for (; i < n; ++i) {
    if (sparse_key(g[i]) >= sparse_nonfinite_key) return i;
  }
  return n;
}

// The largest key of all values (nonfinite ones included) and of the finite ones.
struct sparse_max_keys {
  std::int32_t all;
  std::int32_t finite;
};
inline sparse_max_keys sparse_max_keys_loop(const float* g, std::size_t n) noexcept {
  std::int32_t all = 0, finite = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int32_t k = sparse_key(g[i]);
    all = std::max(all, k);
    finite = std::max(finite, k >= sparse_nonfinite_key ? 0 : k);
  }
  return {all, finite};
}

// g, or 0 where g is ±Inf or NaN: a select on the bits (a ?: on floats becomes a branch
// under GCC's default -ftrapping-math, and the loop no longer vectorizes).
inline float sparse_finite_or_zero(float g) noexcept {
  std::int32_t b;
  std::memcpy(&b, &g, 4);
  b &= -static_cast<std::int32_t>((b & 0x7fffffff) < sparse_nonfinite_key);
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// The sum of the finite values' g², and the largest key of all values (to find nonfinite
// ones in the same pass). Blocks of 1024 in sixteen f32 lanes (they vectorize without
// reassociating a sum), each block added in double; a block whose f32 sum overflows (|g|
// beyond about 1e17) is summed again in double.
struct sparse_squares {
  double sum;
  std::int32_t top;
};
inline sparse_squares sparse_sum_squares_loop(const float* g, std::size_t n) noexcept {
  constexpr std::size_t lanes = 16, block = 1024;
  std::int32_t tops[lanes] = {};
  double total = 0.0;
  const std::size_t body = n - n % lanes;
  for (std::size_t b = 0; b < body; b += block) {
    const std::size_t e = std::min(body, b + block);
    float lane[lanes] = {};
    for (std::size_t i = b; i < e; i += lanes) {
      for (std::size_t j = 0; j < lanes; ++j) {
        tops[j] = std::max(tops[j], sparse_key(g[i + j]));
        const float v = sparse_finite_or_zero(g[i + j]);
        lane[j] += v * v;
      }
    }
    float s = 0.0f;
    for (float x : lane) s += x;
    if (s <= 3.4e38f) {
      for (float x : lane) total += static_cast<double>(x);
    } else {
      for (std::size_t i = b; i < e; ++i) {
        const double v = sparse_finite_or_zero(g[i]);
        total += v * v;
      }
    }
  }
  std::int32_t top = 0;
  for (std::int32_t x : tops) top = std::max(top, x);
  for (std::size_t i = body; i < n; ++i) {
    top = std::max(top, sparse_key(g[i]));
    const double v = sparse_finite_or_zero(g[i]);
    total += v * v;
  }
  return {total, top};
}

#if GRADCOMM_X86_DISPATCH
GRADCOMM_FLATTEN_AVX2 inline std::size_t sparse_find_nonfinite_avx2(const float* g,
                                                                    std::size_t n) noexcept {
  return sparse_find_nonfinite_loop(g, n);
}
GRADCOMM_FLATTEN_AVX512 inline std::size_t sparse_find_nonfinite_avx512(const float* g,
                                                                        std::size_t n) noexcept {
  return sparse_find_nonfinite_loop(g, n);
}
GRADCOMM_FLATTEN_AVX2 inline sparse_max_keys sparse_max_keys_avx2(const float* g,
                                                                  std::size_t n) noexcept {
  return sparse_max_keys_loop(g, n);
}
GRADCOMM_FLATTEN_AVX512 inline sparse_max_keys sparse_max_keys_avx512(const float* g,
                                                                      std::size_t n) noexcept {
  return sparse_max_keys_loop(g, n);
}
// sparse_sum_squares_loop in AVX2 intrinsics (GCC makes a mess of the sixteen lanes): the
// same lanes, the same order, no FMA, so the same sum.
[[gnu::target("avx2")]] inline sparse_squares sparse_sum_squares_avx2(const float* g,
                                                                      std::size_t n) noexcept {
  constexpr std::size_t lanes = 16, block = 1024;
  const __m256i abs = _mm256_set1_epi32(0x7fffffff);
  const __m256i finite = _mm256_set1_epi32(sparse_nonfinite_key);
  __m256i top0 = _mm256_setzero_si256(), top1 = _mm256_setzero_si256();
  double total = 0.0;
  const std::size_t body = n - n % lanes;
  for (std::size_t b = 0; b < body; b += block) {
    const std::size_t e = std::min(body, b + block);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (std::size_t i = b; i < e; i += lanes) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + i + 8));
      const __m256i k0 = _mm256_and_si256(x0, abs), k1 = _mm256_and_si256(x1, abs);
      top0 = _mm256_max_epi32(top0, k0);
      top1 = _mm256_max_epi32(top1, k1);
      const __m256 v0 = _mm256_castsi256_ps(_mm256_and_si256(x0, _mm256_cmpgt_epi32(finite, k0)));
      const __m256 v1 = _mm256_castsi256_ps(_mm256_and_si256(x1, _mm256_cmpgt_epi32(finite, k1)));
      acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(v0, v0));
      acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(v1, v1));
    }
    float lane[lanes];
    _mm256_storeu_ps(lane, acc0);
    _mm256_storeu_ps(lane + 8, acc1);
    float s = 0.0f;
    for (float x : lane) s += x;
    if (s <= 3.4e38f) {
      for (float x : lane) total += static_cast<double>(x);
    } else {
      for (std::size_t i = b; i < e; ++i) {
        const double v = sparse_finite_or_zero(g[i]);
        total += v * v;
      }
    }
  }
  std::int32_t tops[lanes];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tops), top0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tops + 8), top1);
  std::int32_t top = 0;
  for (std::int32_t x : tops) top = std::max(top, x);
  for (std::size_t i = body; i < n; ++i) {
    top = std::max(top, sparse_key(g[i]));
    const double v = sparse_finite_or_zero(g[i]);
    total += v * v;
  }
  return {total, top};
}
#endif

/// The first index of a ±Inf or NaN in g[0, n), or n.
inline std::size_t sparse_find_nonfinite(const float* g, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_best_isa() == cpu_isa::avx512) return sparse_find_nonfinite_avx512(g, n);
  if (cpu_best_isa() == cpu_isa::avx2) return sparse_find_nonfinite_avx2(g, n);
#endif
  return sparse_find_nonfinite_loop(g, n);
}

/// The largest key of g[0, n) (nonfinite values included) and of its finite values.
inline sparse_max_keys sparse_max_key(const float* g, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_best_isa() == cpu_isa::avx512) return sparse_max_keys_avx512(g, n);
  if (cpu_best_isa() == cpu_isa::avx2) return sparse_max_keys_avx2(g, n);
#endif
  return sparse_max_keys_loop(g, n);
}

/// Σ g² over the finite values of g[0, n) and the largest key of all of them; the sum is
/// the same on every x86 path.
inline sparse_squares sparse_sum_squares(const float* g, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_best_isa() != cpu_isa::portable) return sparse_sum_squares_avx2(g, n);
#endif
  return sparse_sum_squares_loop(g, n);
}

/// Which elements a compaction selects: key > `key`, and key == `key` for the first
/// `ties` of them in index order (all of them by default: key >= `key`).
struct sparse_rule {
  std::int32_t key;
  std::size_t ties = std::numeric_limits<std::size_t>::max();
};

/// The result of a compaction: how many elements the rule selects, and how many of them
/// (the first, in index order) are stored.
struct sparse_compaction {
  std::size_t total;
  std::size_t stored;
  bool complete() const noexcept { return stored == total; }
};

// The key under a policy: ±Inf and NaN as 0 under `zero`, as they are otherwise (then the
// compaction rejects them).
template <bool ZeroNonfinite>
inline std::int32_t sparse_key_policy(float g) noexcept {
  const std::int32_t k = sparse_key(g);
  if constexpr (ZeroNonfinite) {
    return k >= sparse_nonfinite_key ? 0 : k;
  } else {
    return k;
  }
}

/// Which instructions a loop of this header is compiled for (chosen at run time).
enum class sparse_isa : unsigned char { portable, avx2, avx512 };

// Bit j set where the key of g[j] (j < 16) under the policy is >= t (0 <= t).
template <sparse_isa Isa, bool ZeroNonfinite>
inline std::uint32_t sparse_mask16(const float* g, std::int32_t t) noexcept;

template <>
inline std::uint32_t sparse_mask16<sparse_isa::portable, false>(const float* g,
                                                                std::int32_t t) noexcept {
  std::uint32_t m = 0;
  for (unsigned j = 0; j < 16; ++j) m |= static_cast<std::uint32_t>(sparse_key(g[j]) >= t) << j;
  return m;
}
template <>
inline std::uint32_t sparse_mask16<sparse_isa::portable, true>(const float* g,
                                                               std::int32_t t) noexcept {
  std::uint32_t m = 0;
  for (unsigned j = 0; j < 16; ++j) {
    m |= static_cast<std::uint32_t>(sparse_key_policy<true>(g[j]) >= t) << j;
  }
  return m;
}

#if GRADCOMM_X86_DISPATCH
template <>
[[gnu::target("avx2")]] inline std::uint32_t sparse_mask16<sparse_isa::avx2, false>(
    const float* g, std::int32_t t) noexcept {
  const __m256i abs = _mm256_set1_epi32(0x7fffffff), below = _mm256_set1_epi32(t - 1);
  const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g)), abs);
  const __m256i b =
      _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 8)), abs);
  const auto lo = static_cast<std::uint32_t>(
      _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, below))));
  const auto hi = static_cast<std::uint32_t>(
      _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(b, below))));
  return lo | hi << 8;
}
template <>
[[gnu::target("avx2")]] inline std::uint32_t sparse_mask16<sparse_isa::avx2, true>(
    const float* g, std::int32_t t) noexcept {
  const __m256i abs = _mm256_set1_epi32(0x7fffffff), below = _mm256_set1_epi32(t - 1);
  const __m256i finite = _mm256_set1_epi32(sparse_nonfinite_key);
  std::uint32_t m = 0;
  for (unsigned h = 0; h < 2; ++h) {
    __m256i a =
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 8 * h)), abs);
    a = _mm256_andnot_si256(_mm256_cmpgt_epi32(a, _mm256_sub_epi32(finite, _mm256_set1_epi32(1))),
                            a);  // nonfinite -> 0
    m |= static_cast<std::uint32_t>(
             _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, below))))
         << (8 * h);
  }
  return m;
}
// A 16-bit mask as the low bits of a u32, the others surely 0. A workaround for GCC 12
// (wrong code, not a fault of this loop): where the compaction loop runs out of registers
// (seen under -fsanitize=undefined, -O2, AVX-512), GCC spills the u32 zero-extension of the
// mask register with `kmovw k, mem` (2 bytes) and reloads it with `movl` / `tzcnt` /
// `blsr` (4 bytes), so bits 16..31 held stale stack bytes: chunk i visited elements i + 16
// and up, and the loop stored up to 32 pairs where room() had reserved 16 (ASan:
// heap-buffer-overflow). An empty asm makes the value opaque, so that the AND, which GCC
// would otherwise fold away as known, clears those bits whatever the spill did; it costs
// one instruction a chunk with a hit. tests/unit/test_sparse.cpp, TopK.ManyTiesOnEveryPath,
// catches the old code in such a build.
[[gnu::target("avx512f"), gnu::always_inline]] inline std::uint32_t sparse_mask_bits(
    __mmask16 k) noexcept {
  std::uint32_t m = k;
  asm("" : "+r"(m));
  return m & 0xffffu;
}
template <>
[[gnu::target("avx512f")]] inline std::uint32_t sparse_mask16<sparse_isa::avx512, false>(
    const float* g, std::int32_t t) noexcept {
  const __m512i a = _mm512_and_si512(_mm512_loadu_si512(g), _mm512_set1_epi32(0x7fffffff));
  return sparse_mask_bits(_mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(t)));
}
template <>
[[gnu::target("avx512f")]] inline std::uint32_t sparse_mask16<sparse_isa::avx512, true>(
    const float* g, std::int32_t t) noexcept {
  __m512i a = _mm512_and_si512(_mm512_loadu_si512(g), _mm512_set1_epi32(0x7fffffff));
  const __mmask16 bad = _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(sparse_nonfinite_key));
  a = _mm512_mask_mov_epi32(a, bad, _mm512_setzero_si512());
  return sparse_mask_bits(_mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(t)));
}
#endif

// The compaction loop for one instruction set (see sparse_compact).
template <sparse_isa Isa, bool ZeroNonfinite>
inline sparse_compaction sparse_compact_loop(const float* __restrict g, std::size_t n,
                                             sparse_rule rule, std::size_t cap, sparse_scratch& s,
                                             const char* call) {
  const std::int32_t t = rule.key;
  // Nonfinite values must reach the element loop to be rejected, whatever the rule's key.
  const std::int32_t flag_key = ZeroNonfinite ? t : std::min(t, sparse_nonfinite_key);
  std::size_t total = 0, stored = 0, ties = 0;
  std::uint64_t* idx = s.index.data();
  float* val = s.value.data();
  // The element i, which the mask says may be selected.
  const auto visit = [&](std::size_t i) {
    const float v = g[i];
    if constexpr (!ZeroNonfinite) {
      if (sparse_key(v) >= sparse_nonfinite_key) throw_nonfinite(call, i, v);
    }
    const std::int32_t k = sparse_key_policy<ZeroNonfinite>(v);
    const bool eq = k == t;
    const bool sel = k > t || (eq && ties < rule.ties);
    ties += eq;
    total += sel;
    if (stored < cap) {
      // Branch-free: written always, kept when selected.
      idx[stored] = i;
      val[stored] = ZeroNonfinite && k == 0 ? 0.0f : v;
      stored += sel;
    }
  };
  const auto room = [&] {
    if (stored < cap && stored + 16 > s.index.size()) {
      s.reserve_pairs(stored + 16);
      idx = s.index.data();
      val = s.value.data();
    }
  };
  const std::size_t body = n - n % 16;
  for (std::size_t i = 0; i < body; i += 16) {
    std::uint32_t m = sparse_mask16<Isa, ZeroNonfinite>(g + i, flag_key);
    if (m == 0) continue;  // most chunks, at the densities sparsifiers run at
    room();
    do {
      visit(i + static_cast<unsigned>(std::countr_zero(m)));
      m &= m - 1;
    } while (m != 0);
  }
  room();
  for (std::size_t i = body; i < n; ++i) {
    if (sparse_key_policy<ZeroNonfinite>(g[i]) >= flag_key) visit(i);
  }
  return {total, std::min(stored, cap)};
}

template <bool Z>
sparse_compaction sparse_compact_portable(const float* g, std::size_t n, sparse_rule rule,
                                          std::size_t cap, sparse_scratch& s, const char* call) {
  return sparse_compact_loop<sparse_isa::portable, Z>(g, n, rule, cap, s, call);
}
#if GRADCOMM_X86_DISPATCH
template <bool Z>
GRADCOMM_FLATTEN_AVX2 sparse_compaction sparse_compact_avx2(const float* g, std::size_t n,
                                                            sparse_rule rule, std::size_t cap,
                                                            sparse_scratch& s, const char* call) {
  return sparse_compact_loop<sparse_isa::avx2, Z>(g, n, rule, cap, s, call);
}
template <bool Z>
GRADCOMM_FLATTEN_AVX512 sparse_compaction sparse_compact_avx512(const float* g, std::size_t n,
                                                                sparse_rule rule, std::size_t cap,
                                                                sparse_scratch& s,
                                                                const char* call) {
  return sparse_compact_loop<sparse_isa::avx512, Z>(g, n, rule, cap, s, call);
}
#endif

/// The widest of this header's paths the CPU runs.
inline sparse_isa sparse_best_isa() noexcept {
#if GRADCOMM_X86_DISPATCH
  switch (cpu_best_isa()) {
    case cpu_isa::avx512: return sparse_isa::avx512;
    case cpu_isa::avx2: return sparse_isa::avx2;
    case cpu_isa::portable: break;
  }
#endif
  return sparse_isa::portable;
}

/// Stores (i, g[i]) in s.index / s.value, in index order, for every i that `rule` selects,
/// until `cap` are stored; counts all of them. Under nonfinite_policy::zero, ±Inf and NaN
/// count as 0 (and are stored as 0); otherwise the first of them throws invalid_argument
/// naming its index (`pass` acts as `reject`). Grows `s` only when it must. A chunk of 16
/// values none of which is selected costs one or two vector compares.
inline sparse_compaction sparse_compact(const float* g, std::size_t n, sparse_rule rule,
                                        std::size_t cap, nonfinite_policy policy, sparse_scratch& s,
                                        const char* call, sparse_isa isa = sparse_best_isa()) {
  const bool zero = policy == nonfinite_policy::zero;
#if GRADCOMM_X86_DISPATCH
  if (isa == sparse_isa::avx512) {
    return zero ? sparse_compact_avx512<true>(g, n, rule, cap, s, call)
                : sparse_compact_avx512<false>(g, n, rule, cap, s, call);
  }
  if (isa == sparse_isa::avx2) {
    return zero ? sparse_compact_avx2<true>(g, n, rule, cap, s, call)
                : sparse_compact_avx2<false>(g, n, rule, cap, s, call);
  }
#else
  (void)isa;
#endif
  return zero ? sparse_compact_portable<true>(g, n, rule, cap, s, call)
              : sparse_compact_portable<false>(g, n, rule, cap, s, call);
}

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
                        std::int32_t& digit, std::vector<std::uint64_t>& hist) {
  const std::uint32_t bins = 1u << width;
  // Four histograms, so that equal neighbours do not wait on each other's increments; bin
  // `bins` takes the keys outside the prefix.
  if (hist.size() < 4 * (bins + 1)) hist.resize(4 * (bins + 1));
  std::fill(hist.begin(), hist.begin() + 4 * (bins + 1), std::uint64_t{0});
  std::uint64_t* h = hist.data();
  const unsigned top = shift + width;
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (std::size_t j = 0; j < 4; ++j) {
      const auto k = static_cast<std::uint32_t>(sparse_key_policy<ZeroNonfinite>(g[i + j]));
      const bool in = top >= 31 || static_cast<std::int32_t>(k >> top) == prefix;
      const std::uint32_t bin = in ? (k >> shift) & (bins - 1) : bins;
      ++h[j * (bins + 1) + bin];
    }
  }
  for (; i < n; ++i) {
    const auto k = static_cast<std::uint32_t>(sparse_key_policy<ZeroNonfinite>(g[i]));
    const bool in = top >= 31 || static_cast<std::int32_t>(k >> top) == prefix;
    ++h[in ? (k >> shift) & (bins - 1) : bins];
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

/// Exact top-k of g[0, n) into s.index / s.value [0, k), in index order; ties to the lower
/// index. Usually one pass: a sample bounds the k-th largest magnitude from below, the pass
/// keeps the candidates above the bound (a few per cent more than k) and nth_element on
/// them finishes. Where the sample misleads (many equal values), the radix selection
/// (three histogram passes) and a last pass that breaks ties by index. Throws as
/// sparse_compact for nonfinite values. `isa`: the compaction's path (tests take each).
inline void sparse_top_k(const float* g, std::size_t n, std::size_t k, nonfinite_policy policy,
                         sparse_scratch& s, const char* call, sparse_isa isa = sparse_best_isa()) {
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
    // Expected sample hits t; 4 standard deviations more, so that fewer than k candidates
    // is rare (a few in 10^5) and costs only the fallback.
    const double t = static_cast<double>(k) * static_cast<double>(m) / static_cast<double>(n);
    const auto r = static_cast<std::size_t>(
        std::min(static_cast<double>(m), std::ceil(t + 4.0 * std::sqrt(t) + 2.0)));
    const std::int32_t bound = sparse_sample_rank(s, m, r);
    const double expect = static_cast<double>(r) * static_cast<double>(n) / static_cast<double>(m);
    const auto cap =
        static_cast<std::size_t>(std::max(2.0 * static_cast<double>(k), 2.0 * expect)) + 1024;
    const sparse_compaction c = sparse_compact(g, n, {.key = bound}, cap, policy, s, call, isa);
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

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

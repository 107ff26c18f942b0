// gradcomm/codec/detail/sparse_cpu.hpp — the CPU loops that the sparse payload and several
// sparse codecs share: the encoders' scratch, the nonfinite scan, the largest keys, the sum of
// squares and the compaction, portable and AVX2 / AVX-512 behind cpu_dispatch.hpp. Internal:
// not part of the API.
//
//   gradcomm::detail::sparse_scratch s;  // kept by the codec, reused
//   auto r = gradcomm::detail::sparse_compact(g, n, {.key = t}, n, policy, s, "threshold::encode");
//   // s.index[0, r.stored), s.value[0, r.stored): every i with key(g[i]) >= t, in index order
//
// Values are compared by their keys (sparse_math.hpp). The compaction tests 16 values with
// one or two vector compares and a mask; a chunk none of which is selected (most chunks, at
// the densities sparsifiers run at) costs nothing more, so the pass runs at memory speed.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

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

/// A grow-only array of T for the encoders' scratch: its own storage (a vector that grows
/// when a call needs more), or, for one call, the caller's workspace (borrow), which never
/// grows (workspace_bytes sized it). Copies and moves keep each object on its own storage.
template <class T>
class sparse_buffer {
 public:
  sparse_buffer() = default;
  sparse_buffer(const sparse_buffer& o) : own_(o.own_) { point(); }
  sparse_buffer(sparse_buffer&& o) noexcept : own_(std::move(o.own_)) {
    point();
    o.point();
  }
  sparse_buffer& operator=(const sparse_buffer& o) {
    if (this != &o) {
      own_ = o.own_;
      point();
    }
    return *this;
  }
  sparse_buffer& operator=(sparse_buffer&& o) noexcept {
    if (this != &o) {
      own_ = std::move(o.own_);
      point();
      o.point();
    }
    return *this;
  }

  T* data() noexcept { return p_; }
  const T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return size_; }
  T& operator[](std::size_t i) noexcept { return p_[i]; }
  const T& operator[](std::size_t i) const noexcept { return p_[i]; }
  T* begin() noexcept { return p_; }
  T* end() noexcept { return p_ + size_; }

  /// At least n elements (never shrinks). Own storage grows to exactly n; a borrowed
  /// workspace cannot grow: throws logic_error (workspace_bytes was too small, a bug).
  void grow_to(std::size_t n) {
    if (n <= size_) return;
    if (borrowed_) {
      throw std::logic_error("sparse_buffer::grow_to: " + std::to_string(n) +
                             " elements wanted, the workspace holds " + std::to_string(size_));
    }
    own_.resize(n);
    point();
  }
  /// Uses [p, p + n) until release(): no allocation.
  void borrow(T* p, std::size_t n) noexcept {
    p_ = p;
    size_ = n;
    borrowed_ = true;
  }

 private:
  void point() noexcept {
    p_ = own_.data();
    size_ = own_.size();
    borrowed_ = false;
  }
  std::vector<T> own_;
  T* p_ = nullptr;
  std::size_t size_ = 0;
  bool borrowed_ = false;
};

/// What the sparse encoders keep between calls, so that an encode allocates only when a
/// selection is larger than every earlier one; or, bound to a caller's workspace
/// (topk_workspace), what one call uses without allocating.
struct sparse_scratch {
  sparse_buffer<std::uint64_t> index;
  sparse_buffer<float> value;
  sparse_buffer<std::int32_t> key;         // candidate or sample keys
  sparse_buffer<std::uint64_t> histogram;  // radix selection

  // Room for at least `pairs` (index, value) pairs; grows by half again at least, so that
  // growing one chunk at a time stays amortized O(1).
  void reserve_pairs(std::size_t pairs) {
    if (index.size() >= pairs) return;
    const std::size_t grown = std::max(pairs, index.size() + index.size() / 2);
    index.grow_to(grown);
    value.grow_to(grown);
  }
  void reserve_keys(std::size_t keys) {
    if (key.size() < keys) key.grow_to(std::max(keys, key.size() + key.size() / 2));
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

// The sum of the finite values' g², and the largest key of all values (to find nonfinite
// ones in the same pass). Blocks of 1024 in sixteen f32 lanes (they vectorize without
// reassociating a sum), each block added in double; a block whose f32 sum overflows (|g|
// beyond about 1e17) is summed again in double.
struct sparse_squares {
  double sum;
  std::int32_t top;
};
// Adds one block's sixteen f32 lane sums to `total` in double, or, where their f32 sum
// overflows, the block's g[b, e) squared again in double.
inline void sparse_squares_block(const float* lane, const float* g, std::size_t b, std::size_t e,
                                 double& total) noexcept {
  float s = 0.0f;
  for (std::size_t j = 0; j < 16; ++j) s += lane[j];
  if (s <= 3.4e38f) {
    for (std::size_t j = 0; j < 16; ++j) total += static_cast<double>(lane[j]);
  } else {
    for (std::size_t i = b; i < e; ++i) {
      const double v = sparse_finite_or_zero(g[i]);
      total += v * v;
    }
  }
}
// The elements after the sixteen-lane body, and the largest of the lanes' keys.
inline sparse_squares sparse_squares_tail(const std::int32_t* tops, const float* g,
                                          std::size_t body, std::size_t n, double total) noexcept {
  std::int32_t top = 0;
  for (std::size_t j = 0; j < 16; ++j) top = std::max(top, tops[j]);
  for (std::size_t i = body; i < n; ++i) {
    top = std::max(top, sparse_key(g[i]));
    const double v = sparse_finite_or_zero(g[i]);
    total += v * v;
  }
  return {total, top};
}
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
    sparse_squares_block(lane, g, b, e, total);
  }
  return sparse_squares_tail(tops, g, body, n, total);
}

#if GRADCOMM_X86_DISPATCH
// The portable loop `Loop` compiled for AVX2 and for AVX-512 (cpu_dispatch.hpp).
template <auto Loop, class... A>
GRADCOMM_FLATTEN_AVX2 inline auto sparse_avx2(A... a) noexcept {
  return Loop(a...);
}
template <auto Loop, class... A>
GRADCOMM_FLATTEN_AVX512 inline auto sparse_avx512(A... a) noexcept {
  return Loop(a...);
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
    sparse_squares_block(lane, g, b, e, total);
  }
  std::int32_t tops[lanes];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tops), top0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tops + 8), top1);
  return sparse_squares_tail(tops, g, body, n, total);
}
#endif

// The portable loop `Loop`, or its clone for the widest path the CPU runs.
template <auto Loop, class... A>
inline auto sparse_dispatch(A... a) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx512)) return sparse_avx512<Loop>(a...);
  if (cpu_runs(cpu_isa::avx2)) return sparse_avx2<Loop>(a...);
#endif
  return Loop(a...);
}

/// The first index of a ±Inf or NaN in g[0, n), or n.
inline std::size_t sparse_find_nonfinite(const float* g, std::size_t n) noexcept {
  return sparse_dispatch<sparse_find_nonfinite_loop>(g, n);
}

/// The largest key of g[0, n) (nonfinite values included) and of its finite values.
inline sparse_max_keys sparse_max_key(const float* g, std::size_t n) noexcept {
  return sparse_dispatch<sparse_max_keys_loop>(g, n);
}

/// Σ g² over the finite values of g[0, n) and the largest key of all of them; the sum is
/// the same on every x86 path.
inline sparse_squares sparse_sum_squares(const float* g, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
  if (cpu_runs(cpu_isa::avx2)) return sparse_sum_squares_avx2(g, n);
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

// Bit j set where the key of g[j] (j < 16) under the policy is >= t (0 <= t).
template <cpu_isa Isa, bool ZeroNonfinite>
inline std::uint32_t sparse_mask16(const float* g, std::int32_t t) noexcept;

template <>
inline std::uint32_t sparse_mask16<cpu_isa::portable, false>(const float* g,
                                                             std::int32_t t) noexcept {
  std::uint32_t m = 0;
  for (unsigned j = 0; j < 16; ++j) m |= static_cast<std::uint32_t>(sparse_key(g[j]) >= t) << j;
  return m;
}
template <>
inline std::uint32_t sparse_mask16<cpu_isa::portable, true>(const float* g,
                                                            std::int32_t t) noexcept {
  std::uint32_t m = 0;
  for (unsigned j = 0; j < 16; ++j) {
    m |= static_cast<std::uint32_t>(sparse_key_policy<true>(g[j]) >= t) << j;
  }
  return m;
}

#if GRADCOMM_X86_DISPATCH
template <>
[[gnu::target("avx2")]] inline std::uint32_t sparse_mask16<cpu_isa::avx2, false>(
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
[[gnu::target("avx2")]] inline std::uint32_t sparse_mask16<cpu_isa::avx2, true>(
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
[[gnu::target("avx512f")]] inline std::uint32_t sparse_mask16<cpu_isa::avx512, false>(
    const float* g, std::int32_t t) noexcept {
  const __m512i a = _mm512_and_si512(_mm512_loadu_si512(g), _mm512_set1_epi32(0x7fffffff));
  return sparse_mask_bits(_mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(t)));
}
template <>
[[gnu::target("avx512f")]] inline std::uint32_t sparse_mask16<cpu_isa::avx512, true>(
    const float* g, std::int32_t t) noexcept {
  __m512i a = _mm512_and_si512(_mm512_loadu_si512(g), _mm512_set1_epi32(0x7fffffff));
  const __mmask16 bad = _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(sparse_nonfinite_key));
  a = _mm512_mask_mov_epi32(a, bad, _mm512_setzero_si512());
  return sparse_mask_bits(_mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(t)));
}
#endif

// The compaction loop for one instruction set (see sparse_compact).
template <cpu_isa Isa, bool ZeroNonfinite>
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
  return sparse_compact_loop<cpu_isa::portable, Z>(g, n, rule, cap, s, call);
}
#if GRADCOMM_X86_DISPATCH
template <bool Z>
GRADCOMM_FLATTEN_AVX2 sparse_compaction sparse_compact_avx2(const float* g, std::size_t n,
                                                            sparse_rule rule, std::size_t cap,
                                                            sparse_scratch& s, const char* call) {
  return sparse_compact_loop<cpu_isa::avx2, Z>(g, n, rule, cap, s, call);
}
template <bool Z>
GRADCOMM_FLATTEN_AVX512 sparse_compaction sparse_compact_avx512(const float* g, std::size_t n,
                                                                sparse_rule rule, std::size_t cap,
                                                                sparse_scratch& s,
                                                                const char* call) {
  return sparse_compact_loop<cpu_isa::avx512, Z>(g, n, rule, cap, s, call);
}
#endif

/// Stores (i, g[i]) in s.index / s.value, in index order, for every i that `rule` selects,
/// until `cap` are stored; counts all of them. Under nonfinite_policy::zero, ±Inf and NaN
/// count as 0 (and are stored as 0); otherwise the first of them throws invalid_argument
/// naming its index (`pass` acts as `reject`). Grows `s` only when it must. A chunk of 16
/// values none of which is selected costs one or two vector compares.
inline sparse_compaction sparse_compact(const float* g, std::size_t n, sparse_rule rule,
                                        std::size_t cap, nonfinite_policy policy, sparse_scratch& s,
                                        const char* call, cpu_isa isa = cpu_best_isa()) {
  const bool zero = policy == nonfinite_policy::zero;
#if GRADCOMM_X86_DISPATCH
  if (isa == cpu_isa::avx512) {
    return zero ? sparse_compact_avx512<true>(g, n, rule, cap, s, call)
                : sparse_compact_avx512<false>(g, n, rule, cap, s, call);
  }
  if (isa == cpu_isa::avx2) {
    return zero ? sparse_compact_avx2<true>(g, n, rule, cap, s, call)
                : sparse_compact_avx2<false>(g, n, rule, cap, s, call);
  }
#else
  (void)isa;
#endif
  return zero ? sparse_compact_portable<true>(g, n, rule, cap, s, call)
              : sparse_compact_portable<false>(g, n, rule, cap, s, call);
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/sparse_math.hpp — the per-element arithmetic of the sparse codecs
// (threshold, top-k, random-k) and of their payload: a value's key, the stratified uniform
// draw, the gap reader. GRADCOMM_HD: the one specification that the CPU loops and the
// device kernels call. Internal: not part of the API.
//
// Magnitudes are compared as their bits: for a float g, `sparse_key(g)` is the bits of |g| as
// a non-negative int32, ordered as |g| is, with ±Inf and NaN at 0x7f800000 and above. Integer
// compares vectorize under SSE2 and have no NaN cases.
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

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

// g, or 0 where g is ±Inf or NaN: a select on the bits (a ?: on floats becomes a branch
// under GCC's default -ftrapping-math, and the loop no longer vectorizes).
GRADCOMM_HD inline float sparse_finite_or_zero(float g) noexcept {
  std::int32_t b;
  std::memcpy(&b, &g, 4);
  b &= -static_cast<std::int32_t>((b & 0x7fffffff) < sparse_nonfinite_key);
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// The key under a policy: ±Inf and NaN as 0 under `zero`, as they are otherwise (then the
// compaction rejects them).
template <bool ZeroNonfinite>
GRADCOMM_HD inline std::int32_t sparse_key_policy(float g) noexcept {
  const std::int32_t k = sparse_key(g);
  if constexpr (ZeroNonfinite) {
    return k >= sparse_nonfinite_key ? 0 : k;
  } else {
    return k;
  }
}

/// Reads the w-bit gaps of a delta index list (sparse_format.hpp) front to back from `len`
/// bytes, one an element; the caller keeps j w < 8 len.
struct sparse_gap_reader {
  const std::byte* p;
  std::size_t len;
  unsigned w;
  std::uint64_t bit = 0;

  GRADCOMM_HD std::uint64_t next() noexcept {
    const std::size_t byte = static_cast<std::size_t>(bit >> 3);
    std::uint64_t x = 0;
    if (byte + 8 <= len) {
      std::memcpy(&x, p + byte, 8);
    } else {
      std::memcpy(&x, p + byte, len - byte);
    }
    const std::uint64_t d = (x >> (bit & 7)) & ((std::uint64_t{1} << w) - 1);
    bit += w;
    return d;
  }
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/core/philox.hpp — Philox4x32-10, a counter-based RNG identical on host and device.
//
//   gradcomm::philox_stream s(seed, step, rank, bucket);
//   float u = gradcomm::philox_uniform(s.at(i));  // the same u on the CPU and in a kernel
//
// Philox (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
// 128-bit counter and a 64-bit key to 128 random bits with no state between calls, so
// element i of a tensor draws the same number whichever thread, block or processor
// handles it. Stochastic codecs key it by (seed, step, rank, bucket) and count by the
// element index: a payload encoded on a GPU decodes the same on a CPU.
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstdint>

namespace gradcomm {
inline namespace v0 {

/// Four 32-bit words: a Philox counter or one block of output. A plain struct (no
/// std::array) so that kernels can use it.
///
///   gradcomm::u32x4 c{{0, 0, 0, 0}};
struct u32x4 {
  std::uint32_t v[4];
};

/// Two 32-bit words: a Philox key.
///
///   gradcomm::u32x2 k{{0xdeadbeef, 0}};
struct u32x2 {
  std::uint32_t v[2];
};

namespace detail {

// Multipliers and Weyl key increments of Philox4x32 (Random123's PHILOX_M4x32_*, PHILOX_W32_*).
inline constexpr std::uint32_t philox_m0 = 0xD2511F53u;
inline constexpr std::uint32_t philox_m1 = 0xCD9E8D57u;
inline constexpr std::uint32_t philox_w0 = 0x9E3779B9u;
inline constexpr std::uint32_t philox_w1 = 0xBB67AE85u;

GRADCOMM_HD constexpr u32x4 philox4x32_round(u32x4 c, u32x2 k) noexcept {
  // One 64-bit product gives both halves; nvcc turns it into mul.lo / mul.hi.
  const std::uint64_t p0 = std::uint64_t{philox_m0} * c.v[0];
  const std::uint64_t p1 = std::uint64_t{philox_m1} * c.v[2];
  const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
  const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
  return u32x4{{hi1 ^ c.v[1] ^ k.v[0], lo1, hi0 ^ c.v[3] ^ k.v[1], lo0}};
}

}  // namespace detail

/// Philox4x32 with 10 rounds: 128 random bits for one (counter, key).
///
///   constexpr auto r = gradcomm::philox4x32_10({{0, 0, 0, 0}}, {{0, 0}});
///   static_assert(r.v[0] == 0x6627e8d5);  // Random123's known answer
GRADCOMM_HD constexpr u32x4 philox4x32_10(u32x4 counter, u32x2 key) noexcept {
  counter = detail::philox4x32_round(counter, key);
  for (int r = 1; r < 10; ++r) {
    key.v[0] += detail::philox_w0;
    key.v[1] += detail::philox_w1;
    counter = detail::philox4x32_round(counter, key);
  }
  return counter;
}

/// A float in [0, 1) from the top 24 bits of x: (x >> 8) * 2^-24. Every value is exact
/// and 1.0f is never returned (rounding 32 bits to a float could give it).
///
///   bool up = gradcomm::philox_uniform(bits) < frac;  // stochastic rounding
GRADCOMM_HD constexpr float philox_uniform(std::uint32_t x) noexcept {
  return static_cast<float>(x >> 8) * 0x1.0p-24f;
}

/// The random stream of one (seed, step, rank, bucket): word i%4 of Philox block
/// {i/4, step, rank, bucket} under key {lo32(seed), hi32(seed)}. Stochastic codecs draw
/// element i's number as at(i) on the host and in kernels alike. A stream holds 2^34
/// words: indices must stay below 2^34 (the block counter is 32 bits; beyond it the
/// stream repeats).
///
///   gradcomm::philox_stream s(seed, step, rank, bucket);
///   for (std::uint32_t j = 0; j < n / 4; ++j) {
///     gradcomm::u32x4 r = s.block(j);  // words for elements 4j .. 4j+3
///   }
///   std::uint32_t w = s.at(i);          // one element's word
struct philox_stream {
  u32x2 key;
  std::uint32_t step;
  std::uint32_t rank;
  std::uint32_t bucket;

  GRADCOMM_HD constexpr philox_stream(std::uint64_t seed, std::uint32_t step_, std::uint32_t rank_,
                                      std::uint32_t bucket_) noexcept
      : key{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}},
        step(step_),
        rank(rank_),
        bucket(bucket_) {}

  /// Words 4j .. 4j+3 of the stream.
  GRADCOMM_HD constexpr u32x4 block(std::uint32_t j) const noexcept {
    return philox4x32_10(u32x4{{j, step, rank, bucket}}, key);
  }

  /// Word i of the stream (i < 2^34).
  GRADCOMM_HD constexpr std::uint32_t at(std::uint64_t i) const noexcept {
    return block(static_cast<std::uint32_t>(i >> 2)).v[i & 3];
  }
};

}  // namespace v0
}  // namespace gradcomm

// Philox4x32-10 against Random123's known answers; philox_stream keying and uniformity.
#include <gradcomm/core/philox.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <vector>

namespace gc = gradcomm;

namespace {

struct kat {
  gc::u32x4 counter;
  gc::u32x2 key;
  gc::u32x4 expected;
};

// Random123 1.14, examples/kat_vectors: "philox4x32 10".
constexpr kat kats[] = {
    {{{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
    {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
     {{0xffffffff, 0xffffffff}},
     {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
    {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
     {{0xa4093822, 0x299f31d0}},
     {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
};

constexpr bool same(gc::u32x4 a, gc::u32x4 b) {
  return a.v[0] == b.v[0] && a.v[1] == b.v[1] && a.v[2] == b.v[2] && a.v[3] == b.v[3];
}

constexpr bool kats_hold() {
  for (const kat& k : kats)
    if (!same(gc::philox4x32_10(k.counter, k.key), k.expected)) return false;
  return true;
}

// The generator is constexpr: the known answers are checked by the compiler too.
static_assert(kats_hold(), "Philox4x32-10 disagrees with Random123's known answers");
static_assert(gc::philox_uniform(0) == 0.0f);
static_assert(gc::philox_uniform(0xffffffffu) < 1.0f);
static_assert(gc::philox_uniform(0x80000000u) == 0.5f);
static_assert(gc::philox_stream(1, 2, 3, 4).at(5) == gc::philox_stream(1, 2, 3, 4).block(1).v[1]);

}  // namespace

TEST(philox, known_answers) {
  for (const kat& k : kats) {
    const gc::u32x4 r = gc::philox4x32_10(k.counter, k.key);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(r.v[w], k.expected.v[w]) << "word " << w;
  }
}

TEST(philox, stream_layout) {
  // key = {lo32(seed), hi32(seed)}, counter = {i/4, step, rank, bucket}, word i%4.
  const std::uint64_t seed = 0x0123456789abcdefull;
  const gc::philox_stream s(seed, 7, 3, 11);
  for (std::uint64_t i : {0ull, 1ull, 2ull, 3ull, 4ull, 1001ull, (1ull << 34) - 1}) {
    const gc::u32x4 b = gc::philox4x32_10({{static_cast<std::uint32_t>(i / 4), 7, 3, 11}},
                                          {{0x89abcdefu, 0x01234567u}});
    EXPECT_EQ(s.at(i), b.v[i % 4]) << "i = " << i;
  }
  for (std::uint32_t j : {0u, 1u, 12345u, 0xffffffffu}) {
    EXPECT_TRUE(same(s.block(j), gc::philox4x32_10({{j, 7, 3, 11}}, {{0x89abcdefu, 0x01234567u}})));
  }
}

TEST(philox, stream_is_deterministic) {
  const gc::philox_stream a(42, 1, 2, 3), b(42, 1, 2, 3);
  for (std::uint64_t i = 0; i < 4096; ++i) ASSERT_EQ(a.at(i), b.at(i)) << "i = " << i;
}

TEST(philox, streams_differ_by_every_key_part) {
  const std::uint64_t seed = 0x0000000100000002ull;
  const gc::philox_stream streams[] = {
      {seed, 5, 1, 9},
      {seed + 1, 5, 1, 9},             // low half of the seed
      {seed + (1ull << 32), 5, 1, 9},  // high half of the seed
      {seed, 6, 1, 9},                 // step
      {seed, 5, 2, 9},                 // rank
      {seed, 5, 1, 10},                // bucket
  };
  std::vector<std::vector<std::uint32_t>> draws;
  for (const auto& s : streams) {
    std::vector<std::uint32_t> d(64);
    for (std::size_t i = 0; i < d.size(); ++i) d[i] = s.at(i);
    draws.push_back(d);
  }
  for (std::size_t a = 0; a < draws.size(); ++a) {
    for (std::size_t b = a + 1; b < draws.size(); ++b) {
      std::size_t equal = 0;
      for (std::size_t i = 0; i < 64; ++i) equal += draws[a][i] == draws[b][i];
      EXPECT_EQ(equal, 0u) << "streams " << a << " and " << b;
    }
  }
  // And within one stream, no 32-bit word repeats in the first few thousand.
  std::set<std::uint32_t> seen;
  for (std::uint64_t i = 0; i < 4096; ++i) seen.insert(streams[0].at(i));
  EXPECT_EQ(seen.size(), 4096u);
}

TEST(philox, uniform_range) {
  EXPECT_EQ(gc::philox_uniform(0), 0.0f);
  EXPECT_EQ(gc::philox_uniform(0xff), 0.0f);                      // low 8 bits ignored
  EXPECT_EQ(gc::philox_uniform(0x100), 0x1.0p-24f);               // one step
  EXPECT_EQ(gc::philox_uniform(0xffffffffu), 1.0f - 0x1.0p-24f);  // the largest value
  const gc::philox_stream s(2024, 0, 0, 0);
  for (std::uint64_t i = 0; i < 100000; ++i) {
    const float u = gc::philox_uniform(s.at(i));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
  }
}

TEST(philox, uniform_chi_square) {
  // 1e6 draws into 64 bins; chi-square with 63 degrees of freedom exceeds 132 with
  // probability about 1e-6. The seed is fixed, so the result is the same on every run.
  constexpr int bins = 64;
  constexpr std::uint64_t draws = 1000000;
  const gc::philox_stream s(0x5eed, 17, 3, 2);
  std::vector<std::uint64_t> count(bins);
  for (std::uint64_t i = 0; i < draws; ++i) {
    const float u = gc::philox_uniform(s.at(i));
    ++count[static_cast<int>(u * bins)];
  }
  const double expected = static_cast<double>(draws) / bins;
  double chi2 = 0;
  for (std::uint64_t c : count) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 132.0);
  // Too good a fit would be suspicious too (P(chi2 < 22) is about 1e-6 for 63 dof).
  EXPECT_GT(chi2, 22.0);
}

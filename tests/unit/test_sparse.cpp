// Sparse codecs (codec/sparse.hpp): the payload layout and its index coding (delta or bitmap,
// the smaller, at densities from 0 to 100 %), exact top-k against a sort-based reference on
// random and adversarial data (ties, all equal, NaN policy), approximate top-k's count
// tolerance, random-k's shared, uniform indices (chi-square), threshold's rules, the
// residual identity of error feedback, DGC's memory (momentum correction, masking,
// clipping, warm-up, state), the rejection of every malformed payload, and no allocation
// per call.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/sparse.hpp>

#include <gtest/gtest.h>

#include "../support/allocation_counter.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace gc = gradcomm;

using gradcomm_test::g_allocations;  // counts every allocation of this program

namespace {

static_assert(gc::Codec<gc::threshold_codec>);
static_assert(gc::Codec<gc::topk_codec>);
static_assert(gc::Codec<gc::approx_topk_codec>);
static_assert(gc::Codec<gc::randomk_codec>);
static_assert(gc::Codec<gc::error_feedback<gc::topk_codec>>);
static_assert(gc::Codec<gc::dgc_memory<gc::topk_codec>>);
static_assert(gc::Codec<gc::dgc_memory<gc::randomk_codec>>);
static_assert(gc::StochasticCodec<gc::randomk_codec>);
static_assert(gc::StochasticCodec<gc::dgc_memory<gc::randomk_codec>>);
static_assert(!gc::StochasticCodec<gc::topk_codec>);
static_assert(gc::RatioCodec<gc::topk_codec> && gc::RatioCodec<gc::approx_topk_codec> &&
              gc::RatioCodec<gc::randomk_codec> && !gc::RatioCodec<gc::threshold_codec>);
template <class C>
constexpr bool variable_stateless =
    !C::traits.linear && !C::traits.fixed_size && !C::traits.stateful;
static_assert(variable_stateless<gc::threshold_codec> && variable_stateless<gc::topk_codec> &&
              variable_stateless<gc::approx_topk_codec>);
static_assert(!gc::randomk_codec::traits.linear && gc::randomk_codec::traits.fixed_size &&
              !gc::randomk_codec::traits.stateful);
static_assert(gc::dgc_memory<gc::topk_codec>::traits.stateful &&
              !gc::dgc_memory<gc::randomk_codec>::traits.fixed_size);
static_assert(gc::threshold_codec::id == gc::codec_id::threshold &&
              gc::topk_codec::id == gc::codec_id::topk &&
              gc::approx_topk_codec::id == gc::codec_id::topk &&
              gc::randomk_codec::id == gc::codec_id::randomk);
static_assert(gc::sparse_bitmap_bytes(17) == 3 && gc::sparse_delta_bytes(10, 12) == 15 &&
              gc::sparse_gap_bits(1024) == 10 && gc::sparse_gap_bits(1) == 1);

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

using bytes = std::vector<std::byte>;

template <class C>
bytes encode(C& c, const std::vector<float>& g) {
  bytes w(c.max_encoded_bytes(g.size()));
  w.resize(c.encode(g, w));
  return w;
}

template <class T>
T read_at(const bytes& w, std::size_t off) {
  T v;
  std::memcpy(&v, w.data() + off, sizeof v);
  return v;
}
template <class T>
void write_at(bytes& w, std::size_t off, T v) {
  std::memcpy(w.data() + off, &v, sizeof v);
}

// A threshold or top-k payload read field by field, as sparse.hpp describes it (a reader
// of its own, bit by bit, so that it checks the library's packing).
struct parsed {
  std::uint64_t n = 0, k = 0;
  unsigned format = 0, width = 0;
  std::size_t index_bytes = 0;
  std::vector<std::uint64_t> idx;
  std::vector<float> val;
};
parsed parse(const bytes& w) {
  parsed p;
  EXPECT_EQ(read_at<std::uint32_t>(w, 0), gc::wire_magic);
  EXPECT_EQ(read_at<std::uint8_t>(w, 6), static_cast<std::uint8_t>(gc::dtype::f32));
  EXPECT_EQ(read_at<std::uint8_t>(w, 7), 12);
  p.n = read_at<std::uint64_t>(w, 8);
  const auto body = read_at<std::uint64_t>(w, 16);
  p.format = read_at<std::uint8_t>(w, 24);
  p.width = read_at<std::uint8_t>(w, 25);
  EXPECT_EQ(read_at<std::uint16_t>(w, 26), 0);
  p.k = read_at<std::uint64_t>(w, 28);
  p.index_bytes = static_cast<std::size_t>(body - 4 * p.k);
  EXPECT_EQ(w.size(), 36 + body);
  for (std::size_t j = 0; j < p.k; ++j) p.val.push_back(read_at<float>(w, 36 + 4 * j));
  const std::size_t base = 36 + 4 * p.k;
  const auto bit = [&](std::size_t b) {
    return (std::to_integer<unsigned>(w[base + b / 8]) >> (b % 8)) & 1u;
  };
  if (p.format == 0) {
    std::uint64_t at = 0;
    for (std::size_t j = 0; j < p.k; ++j) {
      std::uint64_t d = 0;
      for (unsigned b = 0; b < p.width; ++b) d |= std::uint64_t{bit(j * p.width + b)} << b;
      at = j == 0 ? d : at + d;
      p.idx.push_back(at);
    }
  } else {
    for (std::size_t i = 0; i < p.n; ++i) {
      if (bit(i)) p.idx.push_back(i);
    }
  }
  return p;
}

std::vector<float> gaussian(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> g(n);
  for (auto& x : g) x = d(gen);
  return g;
}

float magnitude(float v) { return std::fabs(v); }

// The reference: a stable sort by decreasing |g| (ties: lower index first), the first k,
// back in index order.
std::vector<std::uint64_t> reference_topk(const std::vector<float>& g, std::size_t k) {
  std::vector<std::uint64_t> order(g.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::uint64_t a, std::uint64_t b) {
    return magnitude(g[a]) > magnitude(g[b]);
  });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const gc::error& e) {
    return e.what();
  }
  return "(no exception)";
}

// ---- payload layout and index coding --------------------------------------------------------

TEST(SparsePayload, DeltaLayoutByteForByte) {
  const std::uint64_t idx[] = {3, 17, 40};
  const float val[] = {0.5f, -2.0f, 1.0f};
  bytes w(gc::sparse_max_encoded_bytes(64, 3));
  w.resize(gc::encode_sparse(gc::codec_id::topk, 64, idx, val, w));
  // Gaps 3, 14, 23: 5 bits each, 15 bits, 2 bytes; the bitmap would take 8.
  ASSERT_EQ(w.size(), 24u + 12 + 12 + 2);
  EXPECT_EQ(read_at<std::uint8_t>(w, 5), static_cast<std::uint8_t>(gc::codec_id::topk));
  EXPECT_EQ(read_at<std::uint64_t>(w, 8), 64u);
  EXPECT_EQ(read_at<std::uint64_t>(w, 16), 14u);
  EXPECT_EQ(read_at<std::uint8_t>(w, 24), 0);  // delta
  EXPECT_EQ(read_at<std::uint8_t>(w, 25), 5);
  EXPECT_EQ(read_at<std::uint64_t>(w, 28), 3u);
  EXPECT_EQ(read_at<float>(w, 36), 0.5f);
  EXPECT_EQ(read_at<float>(w, 40), -2.0f);
  EXPECT_EQ(read_at<float>(w, 44), 1.0f);
  const unsigned packed = 3u | 14u << 5 | 23u << 10;
  EXPECT_EQ(read_at<std::uint16_t>(w, 48), packed);
  const gc::sparse_info s = gc::inspect_sparse(w);
  EXPECT_EQ(s.codec, gc::codec_id::topk);
  EXPECT_EQ(s.count, 64u);
  EXPECT_EQ(s.selected, 3u);
  EXPECT_EQ(s.format, gc::sparse_index_format::delta);
  EXPECT_EQ(s.width, 5u);
  EXPECT_EQ(s.index_bytes, 2u);
  EXPECT_DOUBLE_EQ(s.bits_per_index(), 16.0 / 3);
}

TEST(SparsePayload, BitmapLayoutByteForByte) {
  // Gaps 0, 1 × 7, 8: 4 bits each, 5 bytes; the bitmap of 16 takes 2.
  const std::vector<std::uint64_t> idx = {0, 1, 2, 3, 4, 5, 6, 7, 15};
  const std::vector<float> val(idx.size(), 1.5f);
  bytes w(gc::sparse_max_encoded_bytes(16, idx.size()));
  w.resize(gc::encode_sparse(gc::codec_id::threshold, 16, idx, val, w));
  ASSERT_EQ(w.size(), 24u + 12 + 36 + 2);
  EXPECT_EQ(read_at<std::uint8_t>(w, 5), static_cast<std::uint8_t>(gc::codec_id::threshold));
  EXPECT_EQ(read_at<std::uint8_t>(w, 24), 1);  // bitmap
  EXPECT_EQ(read_at<std::uint8_t>(w, 25), 0);
  EXPECT_EQ(read_at<std::uint8_t>(w, 72), 0xff);
  EXPECT_EQ(read_at<std::uint8_t>(w, 73), 0x80);
  std::vector<float> out(16, 9.0f);
  gc::threshold_codec{}.decode(w, out);
  for (std::size_t i = 0; i < 16; ++i) EXPECT_EQ(out[i], (i < 8 || i == 15) ? 1.5f : 0.0f) << i;
}

TEST(SparsePayload, IndexCodingPicksTheSmallerAndRoundTrips) {
  const std::size_t n = 200003;  // odd: the bitmap has padding bits
  std::mt19937_64 gen(99);
  std::vector<std::uint64_t> all(n);
  std::iota(all.begin(), all.end(), 0);
  struct density {
    const char* name;
    std::size_t k;
  };
  const density ds[] = {{"0", 0},         {"1 element", 1}, {"0.1 %", n / 1000}, {"1 %", n / 100},
                        {"10 %", n / 10}, {"50 %", n / 2},  {"100 %", n}};
  for (const density& d : ds) {
    SCOPED_TRACE(d.name);
    std::shuffle(all.begin(), all.end(), gen);
    std::vector<std::uint64_t> idx(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(d.k));
    std::sort(idx.begin(), idx.end());
    std::vector<float> val(d.k);
    for (std::size_t j = 0; j < d.k; ++j) val[j] = static_cast<float>(j % 97) - 48.5f;
    bytes w(gc::sparse_max_encoded_bytes(n, d.k));
    w.resize(gc::encode_sparse(gc::codec_id::topk, n, idx, val, w));

    // The reference sizes of both forms.
    std::uint64_t max_gap = 0;
    for (std::size_t j = 0; j < d.k; ++j)
      max_gap = std::max(max_gap, idx[j] - (j ? idx[j - 1] : 0));
    const unsigned width =
        d.k == 0 ? 0 : std::max(1u, static_cast<unsigned>(std::bit_width(max_gap)));
    const std::size_t delta = (d.k * width + 7) / 8, bitmap = (n + 7) / 8;
    const bool want_delta = d.k == 0 || delta <= bitmap;
    const parsed p = parse(w);
    EXPECT_EQ(p.format, want_delta ? 0u : 1u);
    EXPECT_EQ(p.width, want_delta ? width : 0u);
    EXPECT_EQ(p.index_bytes, want_delta ? delta : bitmap);
    EXPECT_EQ(p.idx, idx);
    EXPECT_EQ(p.val, val);
    EXPECT_LE(w.size(), gc::sparse_max_encoded_bytes(n, d.k));

    const gc::sparse_info s = gc::inspect_sparse(w);
    EXPECT_EQ(s.selected, d.k);
    if (d.k != 0 && d.k * 1000 / n <= 100) {
      std::printf("[ bits/index ] density %-9s k = %6zu: %s, %.2f bits an index\n", d.name, d.k,
                  want_delta ? "delta " : "bitmap", s.bits_per_index());
    }

    std::vector<float> out(n, 7.0f);
    gc::topk_codec{}.decode(w, out);
    std::vector<float> acc(n, 1.0f);
    gc::topk_codec{}.decode_add(w, acc);
    std::size_t j = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const bool hit = j < d.k && idx[j] == i;
      ASSERT_EQ(out[i], hit ? val[j] : 0.0f) << i;
      ASSERT_EQ(acc[i], hit ? 1.0f + val[j] : 1.0f) << i;
      j += hit;
    }
  }
}

TEST(SparsePayload, TopkBitsPerIndexOnGaussianData) {
  // What the codecs pay for indices on 2^20 Gaussian values.
  const auto g = gaussian(1 << 20, 5);
  for (double r : {0.001, 0.01, 0.1}) {
    gc::topk_codec c({.ratio = r});
    const bytes w = encode(c, g);
    const double bpi = gc::sparse_bits_per_index(w);
    std::printf("[ bits/index ] top-k %5.1f %% of 2^20: %.2f bits an index\n", 100 * r, bpi);
    EXPECT_LT(bpi, std::log2(1.0 / r) + 6.0);
  }
}

TEST(SparsePayload, EncodeSparseRejectsBadSelections) {
  bytes w(gc::sparse_max_encoded_bytes(10, 3));
  const float v3[] = {1, 2, 3};
  const auto run = [&](std::vector<std::uint64_t> idx) {
    return message_of([&] { gc::encode_sparse(gc::codec_id::topk, 10, idx, v3, w); });
  };
  EXPECT_NE(run({1, 5, 3}).find("unsorted index 3 at position 2"), std::string::npos);
  EXPECT_NE(run({1, 5, 5}).find("duplicate index 5"), std::string::npos);
  EXPECT_NE(run({1, 5, 10}).find("index 10 at position 2 out of range"), std::string::npos);
  const std::uint64_t i3[] = {1, 2, 3};
  const float bad[] = {1, nan_f, 3};
  EXPECT_NE(
      message_of([&] { gc::encode_sparse(gc::codec_id::topk, 10, i3, bad, w); }).find("at index 1"),
      std::string::npos);
  EXPECT_NE(message_of([&] {
              gc::encode_sparse(gc::codec_id::sign, 10, i3, v3, w);
            }).find("no sparse payload"),
            std::string::npos);
  bytes small(20);
  EXPECT_NE(
      message_of([&] { gc::encode_sparse(gc::codec_id::topk, 10, i3, v3, small); }).find("buffer"),
      std::string::npos);
}

// ---- exact top-k ----------------------------------------------------------------------------

void expect_topk_matches(const std::vector<float>& g, double ratio) {
  gc::topk_codec c({.ratio = ratio});
  const std::size_t k = gc::sparse_count(g.size(), ratio);
  const bytes w = encode(c, g);
  const parsed p = parse(w);
  ASSERT_EQ(p.k, k);
  const auto want = reference_topk(g, k);
  ASSERT_EQ(p.idx, want) << "n " << g.size() << " ratio " << ratio;
  for (std::size_t j = 0; j < k; ++j) ASSERT_EQ(p.val[j], g[want[j]]);
  std::vector<float> out(g.size(), 3.0f);
  c.decode(w, out);
  std::size_t j = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const bool hit = j < k && want[j] == i;
    ASSERT_EQ(out[i], hit ? g[i] : 0.0f);
    j += hit;
  }
}

TEST(TopK, MatchesSortReferenceOnRandomData) {
  for (std::size_t n : {1u, 2u, 7u, 100u, 1000u, 65537u, 300001u}) {
    const auto g = gaussian(n, static_cast<std::uint32_t>(n));
    for (double r : {0.0001, 0.001, 0.01, 0.1, 0.5, 1.0}) expect_topk_matches(g, r);
  }
  // Heavy tails, and data whose magnitudes grow along the tensor (sample positions matter).
  std::vector<float> g = gaussian(200000, 3);
  const std::vector<float> h = gaussian(200000, 4);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (std::fabs(h[i]) + 0.01f);
  expect_topk_matches(g, 0.01);
  std::vector<float> ramp(150000);
  for (std::size_t i = 0; i < ramp.size(); ++i)
    ramp[i] = (i % 2 ? -1.0f : 1.0f) * static_cast<float>(i) * 1e-3f;
  expect_topk_matches(ramp, 0.01);
  std::reverse(ramp.begin(), ramp.end());
  expect_topk_matches(ramp, 0.03);
}

TEST(TopK, MatchesSortReferenceOnAdversarialData) {
  for (std::size_t n : {1u, 10u, 1000u, 100000u}) {
    SCOPED_TRACE(n);
    expect_topk_matches(std::vector<float>(n, 1.0f), 0.1);   // all equal: ties by index
    expect_topk_matches(std::vector<float>(n, 0.0f), 0.1);   // all zero
    expect_topk_matches(std::vector<float>(n, -2.5f), 0.5);  // all equal, negative
    std::vector<float> levels(n);                            // few distinct magnitudes
    for (std::size_t i = 0; i < n; ++i)
      levels[i] = static_cast<float>(static_cast<int>(i * 7919 % 5) - 2);
    expect_topk_matches(levels, 0.01);
    expect_topk_matches(levels, 0.3);
    std::vector<float> pm(n);  // +x and -x tie
    for (std::size_t i = 0; i < n; ++i)
      pm[i] = (i % 2 ? -1.0f : 1.0f) * static_cast<float>(i / 2 % 11);
    expect_topk_matches(pm, 0.05);
    std::vector<float> spike(n, 1e-30f);  // subnormal-ish floor, one huge value
    spike[n / 2] = 3e38f;
    if (n > 3) spike[n / 3] = -std::numeric_limits<float>::denorm_min();
    expect_topk_matches(spike, 0.001);
    expect_topk_matches(spike, 0.2);
    std::vector<float> zeros_and_signed(n, 0.0f);  // -0 and +0 are equal magnitudes
    for (std::size_t i = 0; i < n; i += 3) zeros_and_signed[i] = -0.0f;
    for (std::size_t i = 0; i < n; i += 101) zeros_and_signed[i] = 1.0f;
    expect_topk_matches(zeros_and_signed, 0.05);
  }
}

TEST(TopK, RadixSelectionIsExact) {
  // The fallback on its own, on every kind of data, against nth_element on the keys.
  for (std::size_t n : {1u, 5u, 4096u, 100003u}) {
    auto g = gaussian(n, 17);
    for (std::size_t i = 0; i < n; i += 3) g[i] = std::round(g[i] * 4.0f);
    for (std::size_t k : {std::size_t{1}, n / 3 + 1, n}) {
      std::vector<std::int32_t> keys(n);
      for (std::size_t i = 0; i < n; ++i) keys[i] = gc::detail::sparse_key(g[i]);
      std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k - 1), keys.end(),
                       std::greater<>());
      const std::int32_t want = keys[k - 1];
      std::size_t greater = 0;
      for (float v : g) greater += gc::detail::sparse_key(v) > want;
      gc::detail::sparse_scratch s;
      const auto got =
          gc::detail::sparse_radix_kth(g.data(), n, k, gc::nonfinite_policy::reject, s);
      EXPECT_EQ(got.key, want);
      EXPECT_EQ(got.greater, greater);
    }
  }
}

TEST(SparseSelect, EveryInstructionSetAgrees) {
  // The compaction and the sum of squares give the same results on every path this CPU has.
  auto g = gaussian(100003, 12);
  g[5] = nan_f;
  g[70000] = -inf_f;
  for (std::size_t i = 3000; i < 4100; ++i) g[i] = 1e20f;  // a block whose f32 sum overflows
  using isa = gc::detail::cpu_isa;
  std::vector<isa> paths = {isa::portable};
  if (gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx2)) paths.push_back(isa::avx2);
  if (gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx512)) paths.push_back(isa::avx512);
  const int key = gc::detail::sparse_key(1.5f);
  gc::detail::sparse_scratch want;
  const auto w =
      gc::detail::sparse_compact(g.data(), g.size(), {.key = key, .ties = 100}, 4000,
                                 gc::nonfinite_policy::zero, want, "test", isa::portable);
  EXPECT_GT(w.total, 4000u);
  EXPECT_EQ(w.stored, 4000u);
  for (isa p : paths) {
    gc::detail::sparse_scratch got;
    const auto c = gc::detail::sparse_compact(g.data(), g.size(), {.key = key, .ties = 100}, 4000,
                                              gc::nonfinite_policy::zero, got, "test", p);
    EXPECT_EQ(c.total, w.total);
    EXPECT_EQ(c.stored, w.stored);
    for (std::size_t j = 0; j < c.stored; ++j) {
      ASSERT_EQ(got.index[j], want.index[j]);
      ASSERT_EQ(got.value[j], want.value[j]);
    }
    EXPECT_NE(message_of([&] {
                gc::detail::sparse_compact(g.data(), g.size(), {.key = key}, 10,
                                           gc::nonfinite_policy::reject, got, "test", p);
              }).find("at index 5"),
              std::string::npos);
  }
  const auto loop = gc::detail::sparse_sum_squares_loop(g.data(), g.size());
  const auto best = gc::detail::sparse_sum_squares(g.data(), g.size());
  EXPECT_EQ(loop.sum, best.sum);
  EXPECT_EQ(loop.top, best.top);
  EXPECT_EQ(loop.top, gc::detail::sparse_key(nan_f));
  EXPECT_GT(loop.sum, 1100.0 * 1e40);
}

TEST(TopK, ManyTiesOnEveryPath) {
  // 100,000 values of a few magnitudes, 1 %: every chunk of 16 has hits. GCC 12 with
  // -fsanitize=undefined read the AVX-512 path's 16-bit masks with 16 stale bits above
  // them (sparse_mask_bits): elements visited twice, pairs stored past the scratch.
  using isa = gc::detail::cpu_isa;
  std::vector<isa> paths = {isa::portable};
  if (gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx2)) paths.push_back(isa::avx2);
  if (gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx512)) paths.push_back(isa::avx512);
  const std::size_t n = 100000, k = 1000;
  for (int levels : {2, 3, 5, 16}) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) {
      g[i] = static_cast<float>(static_cast<int>(i * 7919 % static_cast<std::size_t>(levels)) -
                                levels / 2);
    }
    const auto want = reference_topk(g, k);
    for (isa p : paths) {
      SCOPED_TRACE(testing::Message() << "levels " << levels << " path " << static_cast<int>(p));
      gc::detail::sparse_scratch s;
      gc::detail::sparse_top_k(g.data(), n, k, gc::nonfinite_policy::reject, s, "test", p);
      ASSERT_GE(s.index.size(), k);
      for (std::size_t j = 0; j < k; ++j) {
        ASSERT_EQ(s.index[j], want[j]) << j;
        ASSERT_EQ(s.value[j], g[want[j]]) << j;
      }
    }
  }
}

TEST(TopK, NonfinitePolicy) {
  auto g = gaussian(5000, 8);
  g[1234] = nan_f;
  g[4000] = inf_f;
  for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::pass}) {
    gc::topk_codec c({.ratio = 0.01, .nonfinite = policy});
    bytes w(c.max_encoded_bytes(g.size()), std::byte{0x5a});
    try {
      c.encode(g, w);
      ADD_FAILURE() << "a NaN was encoded";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("at index 1234"), std::string::npos) << e.what();
    }
    for (std::byte b : w) ASSERT_EQ(b, std::byte{0x5a});  // nothing written
    // A small k does not let it through either.
    gc::topk_codec one({.ratio = 1e-6, .nonfinite = policy});
    EXPECT_THROW(encode(one, g), gc::error);
  }
  // Policy zero: NaN and Inf count as 0.
  gc::topk_codec z({.ratio = 0.01, .nonfinite = gc::nonfinite_policy::zero});
  auto clean = g;
  clean[1234] = 0.0f;
  clean[4000] = 0.0f;
  const parsed p = parse(encode(z, g));
  EXPECT_EQ(p.idx, reference_topk(clean, p.k));
  // When k reaches the zeros, they are sent as 0.
  std::vector<float> few = {nan_f, 1.0f, -inf_f, 0.0f};
  gc::topk_codec all({.ratio = 1.0, .nonfinite = gc::nonfinite_policy::zero});
  std::vector<float> out(4);
  all.decode(encode(all, few), out);
  EXPECT_EQ(out, (std::vector<float>{0.0f, 1.0f, 0.0f, 0.0f}));
}

// ---- approximate top-k ----------------------------------------------------------------------

void expect_within_tolerance(const std::vector<float>& g, double ratio, double tol) {
  gc::approx_topk_codec c({.ratio = ratio, .tolerance = tol});
  const bytes w = encode(c, g);
  const parsed p = parse(w);
  const auto [lo, hi] = c.count_bounds(g.size());
  const std::size_t k = gc::sparse_count(g.size(), ratio);
  EXPECT_EQ(lo, k - static_cast<std::size_t>(std::floor(tol * static_cast<double>(k))));
  EXPECT_GE(p.k, lo) << "n " << g.size() << " ratio " << ratio;
  EXPECT_LE(p.k, hi) << "n " << g.size() << " ratio " << ratio;
  EXPECT_LE(w.size(), c.max_encoded_bytes(g.size()));
  // What is sent is a top set: no value left out is larger than one sent.
  std::vector<bool> sent(g.size());
  float least_sent = inf_f;
  for (std::size_t j = 0; j < p.k; ++j) {
    sent[p.idx[j]] = true;
    least_sent = std::min(least_sent, magnitude(p.val[j]));
  }
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (!sent[i]) {
      ASSERT_LE(magnitude(g[i]), least_sent) << i;
    }
  }
  // Either top-k decoder reads it.
  std::vector<float> a(g.size()), b(g.size());
  c.decode(w, a);
  gc::topk_codec{}.decode(w, b);
  EXPECT_EQ(a, b);
}

TEST(ApproxTopK, CountWithinToleranceOnRandomData) {
  const auto g = gaussian(1 << 20, 11);
  for (double r : {0.001, 0.01, 0.05}) {
    for (double tol : {0.02, 0.1, 0.3}) expect_within_tolerance(g, r, tol);
  }
  gc::approx_topk_codec c({.ratio = 0.01});
  encode(c, g);
  EXPECT_EQ(c.last_passes(), 1u) << "the sample's estimate should need no second pass";
  EXPECT_FALSE(c.last_exact());
  std::mt19937 gen(4);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> uni(300000), cauchy(300000);
  for (auto& x : uni) x = u(gen);
  for (auto& x : cauchy) x = u(gen) / (std::fabs(u(gen)) + 1e-6f);
  expect_within_tolerance(uni, 0.01, 0.1);
  expect_within_tolerance(cauchy, 0.01, 0.1);
  for (std::size_t n : {1u, 3u, 1000u, 70000u}) expect_within_tolerance(gaussian(n, 2), 0.01, 0.1);
}

TEST(ApproxTopK, CountWithinToleranceOnAdversarialData) {
  for (std::size_t n : {10u, 1000u, 200000u}) {
    expect_within_tolerance(std::vector<float>(n, 1.0f), 0.01, 0.1);  // every threshold misses
    expect_within_tolerance(std::vector<float>(n, 0.0f), 0.01, 0.0);
    std::vector<float> half_zero = gaussian(n, 3);
    for (std::size_t i = 0; i < n; i += 2) half_zero[i] = 0.0f;
    expect_within_tolerance(half_zero, 0.7, 0.1);  // k beyond the nonzeros
    std::vector<float> levels(n);
    for (std::size_t i = 0; i < n; ++i) levels[i] = static_cast<float>(i * 31 % 7);
    expect_within_tolerance(levels, 0.05, 0.1);
  }
  gc::approx_topk_codec c({.ratio = 0.01});
  encode(c, std::vector<float>(200000, 1.0f));
  EXPECT_TRUE(c.last_exact());
  auto g = gaussian(1000, 1);
  g[10] = nan_f;
  EXPECT_NE(message_of([&] { encode(c, g); }).find("at index 10"), std::string::npos);
}

// ---- random-k -------------------------------------------------------------------------------

TEST(RandomK, SameKeySameIndicesOnEveryRank) {
  const std::size_t n = 100003;
  const gc::stream_key base{.seed = 77, .step = 5, .rank = 0, .bucket = 2};
  std::vector<bytes> payloads;
  std::vector<std::vector<float>> grads;
  for (std::uint32_t rank = 0; rank < 7; ++rank) {
    gc::randomk_codec c({.ratio = 0.01});
    gc::stream_key k = base;
    k.rank = rank;
    c.set_stream(k);
    EXPECT_EQ(c.index_key().rank, 0u);
    grads.push_back(gaussian(n, 100 + rank));
    payloads.push_back(encode(c, grads.back()));
    ASSERT_EQ(payloads.back().size(), c.max_encoded_bytes(n));
    ASSERT_EQ(payloads.back().size(), 24u + 32 + 4 * gc::sparse_count(n, 0.01));
  }
  const std::size_t k = gc::sparse_count(n, 0.01);
  std::vector<std::uint64_t> idx(k);
  gc::randomk_indices(n, k, base, idx);
  std::set<std::uint64_t> distinct(idx.begin(), idx.end());
  EXPECT_EQ(distinct.size(), k);
  EXPECT_LT(*distinct.rbegin(), n);
  for (std::uint32_t rank = 0; rank < 7; ++rank) {
    // Same header and parameters on every rank; the values are each rank's own at the
    // shared indices.
    ASSERT_TRUE(std::equal(payloads[0].begin(), payloads[0].begin() + 56, payloads[rank].begin()));
    std::vector<float> out(n, 5.0f);
    gc::randomk_codec{}.decode(payloads[rank], out);
    std::size_t nonzero = 0;
    for (std::size_t j = 0; j < k; ++j) ASSERT_EQ(out[idx[j]], grads[rank][idx[j]]);
    for (float v : out) nonzero += v != 0.0f;
    EXPECT_EQ(nonzero, k);
  }
  // The device function gives the same indices.
  const gc::philox_stream s(base.seed, base.step, base.rank, base.bucket);
  for (std::size_t j = 0; j < k; j += 97) {
    EXPECT_EQ(gc::randomk_index(n, k, j, s.at(0), s.at(1), s.at(2 * j + 2), s.at(2 * j + 3)),
              idx[j]);
  }
  // Another step, bucket or seed draws other indices; so does the rank when not shared.
  std::vector<std::uint64_t> other(k);
  for (gc::stream_key o :
       {gc::stream_key{77, 6, 0, 2}, gc::stream_key{77, 5, 0, 3}, gc::stream_key{78, 5, 0, 2}}) {
    gc::randomk_indices(n, k, o, other);
    EXPECT_NE(other, idx);
  }
  gc::randomk_codec own({.ratio = 0.01, .shared = false});
  own.set_stream({77, 5, 3, 2});
  EXPECT_EQ(own.index_key().rank, 3u);
  EXPECT_NE(encode(own, grads[0]), payloads[0]);
}

TEST(RandomK, IndicesAreUniformChiSquare) {
  // n not a multiple of k: strata of 27 and 28 elements; the rotation evens them out.
  const std::size_t n = 1000, k = 37, trials = 20000;
  std::vector<std::uint64_t> count(n, 0), idx(k);
  for (std::uint32_t t = 0; t < trials; ++t) {
    gc::randomk_indices(n, k, {.seed = 2024, .step = t}, idx);
    for (std::uint64_t i : idx) ++count[i];
  }
  const double expected = static_cast<double>(trials * k) / n;
  double chi2 = 0.0;
  for (std::uint64_t c : count)
    chi2 += (static_cast<double>(c) - expected) * (static_cast<double>(c) - expected) / expected;
  // 999 degrees of freedom: mean 999, standard deviation 44.7; six of them either way.
  std::printf("[ chi-square ] random-k, n = %zu, k = %zu, %zu draws: %.1f (999 dof)\n", n, k,
              trials, chi2);
  EXPECT_GT(chi2, 999.0 - 6 * 44.7);
  EXPECT_LT(chi2, 999.0 + 6 * 44.7);
  // The strata alone (no rotation) would not pass: first-stratum elements are 28/27 as likely.
}

TEST(RandomK, ScaledIsUnbiased) {
  const std::size_t n = 50, trials = 40000;
  const auto g = gaussian(n, 9);
  gc::randomk_codec c({.ratio = 0.2, .scale = true});
  std::vector<double> mean(n, 0.0);
  std::vector<float> out(n);
  bytes w(c.max_encoded_bytes(n));
  for (std::uint32_t t = 0; t < trials; ++t) {
    c.set_stream({.seed = 1, .step = t});
    c.encode(g, w);
    c.decode(w, out);
    for (std::size_t i = 0; i < n; ++i) mean[i] += out[i];
  }
  for (std::size_t i = 0; i < n; ++i) {
    // Each decoded value is 5 g with probability 1/5: the mean's standard error is 2|g|/sqrt(T).
    EXPECT_NEAR(mean[i] / trials, g[i], 6 * 2 * std::fabs(g[i]) / std::sqrt(double(trials)) + 1e-6)
        << i;
  }
}

TEST(RandomK, NonfinitePolicy) {
  auto g = gaussian(1000, 1);
  g[999] = inf_f;  // almost surely not among the 10 sent: rejected all the same
  gc::randomk_codec c({.ratio = 0.01});
  EXPECT_NE(message_of([&] { encode(c, g); }).find("at index 999"), std::string::npos);
  gc::randomk_codec z({.ratio = 1.0, .nonfinite = gc::nonfinite_policy::zero});
  std::vector<float> out(1000);
  z.decode(encode(z, g), out);
  EXPECT_EQ(out[999], 0.0f);
  EXPECT_EQ(out[5], g[5]);
}

// ---- threshold ------------------------------------------------------------------------------

TEST(Threshold, SelectsAboveEachRule) {
  auto g = gaussian(100001, 21);
  g[7] = 0.0f;
  g[8] = -0.0f;
  double sq = 0.0;
  float top = 0.0f;
  for (float v : g) {
    sq += static_cast<double>(v) * v;
    top = std::max(top, std::fabs(v));
  }
  const float rms = static_cast<float>(2.0 * std::sqrt(sq / static_cast<double>(g.size())));
  struct rule_case {
    gc::threshold_params p;
    float t;
  };
  for (const rule_case& rc :
       {rule_case{{.tau = 1.5f, .rule = gc::threshold_rule::absolute}, 1.5f},
        rule_case{{.tau = 0.5f, .rule = gc::threshold_rule::max_relative},
                  static_cast<float>(0.5 * static_cast<double>(top))},
        rule_case{{.tau = 2.0f, .rule = gc::threshold_rule::rms_relative}, rms},
        rule_case{{.tau = 0.0f, .rule = gc::threshold_rule::absolute}, 0.0f},
        rule_case{{.tau = 1e30f, .rule = gc::threshold_rule::absolute}, 1e30f}}) {
    gc::threshold_codec c(rc.p);
    const parsed p = parse(encode(c, g));
    EXPECT_NEAR(c.last_threshold(), rc.t, 1e-5 * rc.t);
    std::vector<std::uint64_t> want;
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (std::fabs(g[i]) > c.last_threshold()) want.push_back(i);
    }
    EXPECT_EQ(p.idx, want);
  }
  auto bad = g;
  bad[500] = nan_f;
  for (auto rule : {gc::threshold_rule::absolute, gc::threshold_rule::rms_relative}) {
    gc::threshold_codec c({.tau = 1.0f, .rule = rule});
    EXPECT_NE(message_of([&] { encode(c, bad); }).find("at index 500"), std::string::npos);
    gc::threshold_codec z({.tau = 1.0f, .rule = rule, .nonfinite = gc::nonfinite_policy::zero});
    const parsed p = parse(encode(z, bad));
    EXPECT_TRUE(std::find(p.idx.begin(), p.idx.end(), 500u) == p.idx.end());
  }
  EXPECT_THROW(gc::threshold_codec({.tau = -1.0f}), gc::error);
  EXPECT_THROW(gc::threshold_codec({.tau = nan_f}), gc::error);
}

// ---- every codec: sizes, bounds, residual identity, no allocation ------------------------------

template <class C>
void check_sizes(C c) {
  for (std::size_t n : {0u, 1u, 2u, 9u, 1000u, 12345u}) {
    const auto g = gaussian(n, static_cast<std::uint32_t>(n) + 1);
    const bytes w = encode(c, g);
    EXPECT_LE(w.size(), c.max_encoded_bytes(n));
    if (C::traits.fixed_size) {
      EXPECT_EQ(w.size(), c.max_encoded_bytes(n));
    }
    std::vector<float> out(n, 1.0f), acc(n, 2.0f);
    c.decode(w, out);
    c.decode_add(w, acc);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(out[i] == 0.0f || out[i] == g[i] || C::id == gc::codec_id::randomk) << i;
      ASSERT_EQ(acc[i], 2.0f + out[i]) << i;
    }
    // A buffer one byte short of the bound: buffer_too_small, nothing written.
    if (n != 0) {
      bytes small(c.max_encoded_bytes(n) - 1, std::byte{0x33});
      try {
        c.encode(g, small);
        ADD_FAILURE() << "a short buffer was accepted";
      } catch (const gc::error& e) {
        EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
      }
      for (std::byte b : small) ASSERT_EQ(b, std::byte{0x33});
    }
  }
}

TEST(SparseCodecs, SizesZeroOneOddLarge) {
  check_sizes(gc::threshold_codec{});
  check_sizes(gc::topk_codec{{.ratio = 0.1}});
  check_sizes(gc::approx_topk_codec{{.ratio = 0.1}});
  check_sizes(gc::randomk_codec{{.ratio = 0.1}});
  check_sizes(gc::randomk_codec{{.ratio = 0.1, .scale = true}});
}

template <class C>
void check_residual_identity(C inner) {
  const std::size_t n = 30011;
  gc::error_feedback<C> ef(std::move(inner));
  std::vector<float> d(n);
  for (std::uint32_t step = 0; step < 6; ++step) {
    const auto g = gaussian(n, 40 + step);
    const std::vector<float> e0(ef.residual().begin(), ef.residual().end());
    std::vector<float> t(n);
    for (std::size_t i = 0; i < n; ++i) t[i] = g[i] + (e0.empty() ? 0.0f : e0[i]);
    const bytes w = encode(ef, g);
    ef.decode(w, d);
    for (std::size_t i = 0; i < n; ++i) {
      // Exact: a sparsifier sends a value unchanged or not at all.
      ASSERT_EQ(ef.residual()[i] + d[i], t[i]) << "step " << step << " index " << i;
    }
  }
}

TEST(SparseCodecs, ErrorFeedbackResidualPlusDecodedIsInput) {
  check_residual_identity(gc::topk_codec({.ratio = 0.01}));
  check_residual_identity(gc::approx_topk_codec({.ratio = 0.01}));
  check_residual_identity(gc::threshold_codec({.tau = 2.0f}));
  check_residual_identity(gc::randomk_codec({.ratio = 0.05}));
}

template <class C>
void check_no_allocation(C c) {
  const auto g = gaussian(200000, 6);
  bytes w(c.max_encoded_bytes(g.size()));
  std::vector<float> out(g.size());
  c.encode(g, w);  // sizes the scratch
  const long before = g_allocations.load();
  for (int i = 0; i < 3; ++i) {
    const std::size_t b = c.encode(g, w);
    c.decode_add(std::span<const std::byte>(w.data(), b), out);
  }
  EXPECT_EQ(g_allocations.load() - before, 0) << "allocations after the first encode";
}

TEST(SparseCodecs, NoAllocationAfterTheFirstEncode) {
  check_no_allocation(gc::threshold_codec{});
  check_no_allocation(gc::topk_codec{});
  check_no_allocation(gc::approx_topk_codec{});
  check_no_allocation(gc::randomk_codec{});
  check_no_allocation(gc::dgc_memory<gc::topk_codec>(gc::topk_codec{}, {.clip_norm = 10.0f}));
}

// ---- caller-owned workspace (top-k, approximate top-k) -------------------------------------

// encode(in, out, workspace) writes encode(in, out)'s bytes into a workspace of
// workspace_bytes(n) bytes (at an odd address), allocates nothing, and refuses a workspace
// one byte short with invalid_argument naming both sizes.
template <class C>
void check_workspace(C c, const std::vector<float>& g) {
  SCOPED_TRACE(std::to_string(g.size()) + " elements");
  bytes want(c.max_encoded_bytes(g.size())), got(want.size());
  want.resize(c.encode(g, want));
  const std::size_t need = c.workspace_bytes(g.size());
  EXPECT_EQ(gc::workspace_bytes(c, g.size()), need);
  bytes ws(need + 1);
  const std::span<std::byte> w = std::span<std::byte>(ws).subspan(1);
  const long before = g_allocations.load();
  const std::size_t b = c.encode(g, got, w);
  EXPECT_EQ(g_allocations.load() - before, 0) << "allocations with a caller's workspace";
  got.resize(b);
  EXPECT_EQ(got, want);
  if (need == 0) return;
  bytes o(c.max_encoded_bytes(g.size()));
  try {
    c.encode(g, o, w.first(need - 1));
    ADD_FAILURE() << "a workspace one byte short was taken";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    const std::string m = e.what();
    EXPECT_NE(m.find(std::to_string(need - 1) + " bytes"), std::string::npos) << m;
    EXPECT_NE(m.find("needs " + std::to_string(need)), std::string::npos) << m;
  }
}

TEST(TopK, CallerWorkspaceGivesTheSameBytes) {
  std::vector<std::vector<float>> inputs;
  for (std::size_t n : {0, 1, 255, 257, 70000}) inputs.push_back(gaussian(n, 11));
  inputs.push_back(gaussian(300000, 12));
  inputs.push_back(std::vector<float>(100000, 1.5f));  // all ties: the radix selection
  std::vector<float> steps(200000);
  for (std::size_t i = 0; i < steps.size(); ++i) steps[i] = static_cast<float>(i % 7);
  inputs.push_back(steps);
  for (const auto& g : inputs) {
    for (double r : {0.001, 0.01, 0.3, 1.0}) {
      SCOPED_TRACE("ratio " + std::to_string(r));
      check_workspace(gc::topk_codec({.ratio = r}), g);
      check_workspace(gc::approx_topk_codec({.ratio = r}), g);
      check_workspace(gc::approx_topk_codec({.ratio = r, .tolerance = 0.0}), g);
    }
  }
  // Nonfinite values: the same refusal with or without a workspace.
  std::vector<float> bad = gaussian(1000, 3);
  bad[17] = std::numeric_limits<float>::quiet_NaN();
  gc::topk_codec c({.ratio = 0.01});
  bytes o(c.max_encoded_bytes(bad.size())), ws(c.workspace_bytes(bad.size()));
  EXPECT_EQ(message_of([&] { c.encode(bad, o, ws); }), message_of([&] { c.encode(bad, o); }));
}

// ---- malformed payloads ---------------------------------------------------------------------

// Runs decode and decode_add of `c` on `w` for n elements: both must throw decode_error
// whose text holds `what`, and leave the output as it was.
template <class C>
void expect_rejected(const C& c, const bytes& w, std::size_t n, const std::string& what) {
  for (int add = 0; add < 2; ++add) {
    std::vector<float> out(n, 42.0f);
    try {
      if (add) {
        c.decode_add(w, out);
      } else {
        c.decode(w, out);
      }
      ADD_FAILURE() << "accepted; expected \"" << what << "\"";
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos)
          << "\"" << e.what() << "\" does not name \"" << what << "\"";
    }
    for (float v : out) ASSERT_EQ(v, 42.0f) << "a rejected payload wrote to the output";
  }
}

bytes sparse_payload(gc::codec_id id, std::uint64_t n, std::vector<std::uint64_t> idx) {
  std::vector<float> val(idx.size());
  for (std::size_t j = 0; j < idx.size(); ++j) val[j] = 1.0f + static_cast<float>(j);
  bytes w(gc::sparse_max_encoded_bytes(n, idx.size()));
  w.resize(gc::encode_sparse(id, n, idx, val, w));
  return w;
}

template <class C>
void check_rejections(const C& c, gc::codec_id id, gc::codec_id other) {
  const std::size_t n = 100;
  const bytes delta = sparse_payload(id, n, {2, 30, 31, 99});  // gaps 2, 28, 1, 68: 7 bits
  const bytes bitmap = sparse_payload(id, n, [] {
    std::vector<std::uint64_t> v;
    for (std::uint64_t i = 0; i < 60; ++i) v.push_back(i + i / 3);
    return v;
  }());
  ASSERT_EQ(parse(delta).format, 0u);
  ASSERT_EQ(parse(bitmap).format, 1u);
  for (const bytes& good : {delta, bitmap}) {
    std::vector<float> out(n);
    c.decode(good, out);  // valid as they are
    for (std::size_t len = 0; len < good.size(); ++len) {
      expect_rejected(c, bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len)), n,
                      "truncated");
    }
    bytes longer = good;
    longer.push_back(std::byte{0});
    expect_rejected(c, longer, n, "oversized");
    expect_rejected(c, good, n + 1, "element count 100, the output holds 101");
    bytes b = good;
    b[0] = std::byte{0};
    expect_rejected(c, b, n, "bad magic");
    b = good;
    b[4] = std::byte{9};
    expect_rejected(c, b, n, "wire version");
    b = good;
    b[5] = static_cast<std::byte>(other);
    expect_rejected(c, b, n, "codec id");
    b = good;
    b[6] = static_cast<std::byte>(gc::dtype::f16);
    expect_rejected(c, b, n, "dtype");
    b = good;
    b[24] = std::byte{2};
    expect_rejected(c, b, n, "bad index format 2");
    b = good;
    b[27] = std::byte{1};
    expect_rejected(c, b, n, "reserved");
    b = good;
    write_at<std::uint64_t>(b, 28, n + 1);  // count > n
    expect_rejected(c, b, n, "count 101 larger than the element count 100");
    b = good;
    write_at<float>(b, 40, nan_f);
    expect_rejected(c, b, n, "non-finite value nan at position 1");
    b = good;
    write_at<std::uint64_t>(b, 28, parse(good).k - 1);  // a value fewer: sizes disagree
    expect_rejected(c, b, n, "oversized");
  }
  // Delta: widths, duplicates, range, padding.
  bytes b = delta;
  b[25] = std::byte{0};
  expect_rejected(c, b, n, "bad width 0");
  b[25] = std::byte{8};  // 99 needs 7 bits at most
  expect_rejected(c, b, n, "bad width 8");
  b[25] = std::byte{58};
  expect_rejected(c, b, n, "bad width 58");
  const std::size_t gaps = 36 + 4 * 4;  // 28 bits of gaps in 4 bytes
  ASSERT_EQ(parse(delta).width, 7u);
  // Gap 2 (index 1): 0 makes index 1 equal index 0.
  b = delta;
  const auto set_gap = [&](bytes& x, unsigned j, unsigned v) {
    for (unsigned bit = 0; bit < 7; ++bit) {
      const unsigned at = j * 7 + bit;
      auto byte = std::to_integer<unsigned>(x[gaps + at / 8]);
      byte = (byte & ~(1u << (at % 8))) | (((v >> bit) & 1u) << (at % 8));
      x[gaps + at / 8] = static_cast<std::byte>(byte);
    }
  };
  set_gap(b, 1, 0);
  expect_rejected(c, b, n, "duplicate index 2 at position 1");
  b = delta;
  set_gap(b, 3, 70);  // 31 + 70 = 101 >= 100
  expect_rejected(c, b, n, "index 101 at position 3 out of range");
  b = delta;
  set_gap(b, 0, 100);  // the first index itself
  expect_rejected(c, b, n, "index 100 at position 0 out of range");
  // "Unsorted": gaps are unsigned, so a step back cannot be written; the nearest thing, a
  // step past the end that a modular reader would take for a step back, is out of range.
  b = delta;
  set_gap(b, 2, 127);  // 30 + 127 = 157, i.e. 57 "mod 100", below 99
  expect_rejected(c, b, n, "out of range");
  b = delta;
  b.back() |= std::byte{0x80};  // 28 bits in 4 bytes: the top 4 are padding
  expect_rejected(c, b, n, "nonzero padding bits");
  // Bitmap: width, a bit beyond n, counts.
  b = bitmap;
  b[25] = std::byte{3};
  expect_rejected(c, b, n, "bad width 3 for a bitmap");
  b = bitmap;
  b.back() |= std::byte{0x10};  // bit 100
  expect_rejected(c, b, n, "index out of range: the bitmap sets bit 100");
  b = bitmap;
  const std::size_t bits_at = 36 + 4 * 60;
  b[bits_at] &= std::byte{0xfe};  // index 0 gone: 59 set, count 60
  expect_rejected(c, b, n, "the bitmap holds 59 indices, the count says 60");
  // An empty selection with a width.
  bytes empty = sparse_payload(id, n, {});
  empty[25] = std::byte{1};
  expect_rejected(c, empty, n, "bad width 1 for an empty selection");
  // inspect_sparse agrees.
  EXPECT_NO_THROW(gc::inspect_sparse(delta));
  EXPECT_THROW(gc::inspect_sparse(b), gc::decode_error);
}

TEST(SparseDecoders, RejectMalformedPayloads) {
  check_rejections(gc::topk_codec{}, gc::codec_id::topk, gc::codec_id::threshold);
  check_rejections(gc::approx_topk_codec{}, gc::codec_id::topk, gc::codec_id::randomk);
  check_rejections(gc::threshold_codec{}, gc::codec_id::threshold, gc::codec_id::topk);
  // A threshold payload is not a top-k payload.
  expect_rejected(gc::topk_codec{}, sparse_payload(gc::codec_id::threshold, 10, {1}), 10,
                  "codec id 16 (threshold), expected 17 (topk)");
}

TEST(SparseDecoders, RandomKRejectsMalformedPayloads) {
  const std::size_t n = 200;
  gc::randomk_codec c({.ratio = 0.05, .scale = true});
  c.set_stream({.seed = 3, .step = 1});
  const bytes good = encode(c, gaussian(n, 3));
  ASSERT_EQ(good.size(), 24u + 32 + 40);
  for (std::size_t len = 0; len < good.size(); ++len) {
    expect_rejected(c, bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len)), n,
                    "truncated");
  }
  bytes b = good;
  b.push_back(std::byte{1});
  expect_rejected(c, b, n, "oversized");
  expect_rejected(c, good, n - 1, "element count");
  b = good;
  b[5] = static_cast<std::byte>(gc::codec_id::topk);
  expect_rejected(c, b, n, "codec id");
  b = good;
  b[4] = std::byte{0};
  expect_rejected(c, b, n, "wire version");
  b = good;
  b[24 + 20] = std::byte{3};
  expect_rejected(c, b, n, "unknown flags 3");
  b = good;
  b[24 + 22] = std::byte{1};
  expect_rejected(c, b, n, "reserved");
  b = good;
  write_at<std::uint64_t>(b, 24 + 24, n + 1);
  expect_rejected(c, b, n, "count 201 larger than the element count 200");
  b = good;
  write_at<std::uint64_t>(b, 24 + 24, 9);  // 9 values claimed, 10 present
  expect_rejected(c, b, n, "oversized: body of 40 bytes, 9 values take 36");
  b = good;
  write_at<std::uint64_t>(b, 24 + 24, 11);
  expect_rejected(c, b, n, "truncated: body of 40 bytes, 11 values take 44");
  b = good;
  write_at<float>(b, 56 + 4 * 3, -inf_f);
  expect_rejected(c, b, n, "non-finite value -inf at position 3");
  b = good;
  b[7] = std::byte{12};  // params length: the header's body size no longer fits
  expect_rejected(c, b, n, "oversized");
}

// ---- DGC memory -----------------------------------------------------------------------------

TEST(Dgc, WithoutMomentumItIsErrorFeedback) {
  const std::size_t n = 20000;
  gc::dgc_memory<gc::topk_codec> dgc(gc::topk_codec({.ratio = 0.02}), {.momentum = 0.0f});
  gc::error_feedback<gc::topk_codec> ef(gc::topk_codec({.ratio = 0.02}));
  for (std::uint32_t step = 0; step < 5; ++step) {
    const auto g = gaussian(n, step);
    ASSERT_EQ(encode(dgc, g), encode(ef, g)) << step;
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(dgc.accumulated()[i], ef.residual()[i]);
  }
}

TEST(Dgc, MomentumCorrectionAndMasking) {
  const std::size_t n = 10007;
  const float m = 0.9f;
  gc::dgc_memory<gc::topk_codec> dgc(gc::topk_codec({.ratio = 0.01}), {.momentum = m});
  std::vector<float> d(n);
  for (std::uint32_t step = 0; step < 6; ++step) {
    const auto g = gaussian(n, 60 + step);
    std::vector<float> u0(n, 0.0f), v0(n, 0.0f);
    if (dgc.sized()) {
      u0.assign(dgc.momentum().begin(), dgc.momentum().end());
      v0.assign(dgc.accumulated().begin(), dgc.accumulated().end());
    }
    const bytes w = encode(dgc, g);
    dgc.decode(w, d);
    std::size_t sent = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float a = m * u0[i] + g[i];
      const float b = v0[i] + a;
      if (d[i] != 0.0f) {
        ++sent;
        ASSERT_EQ(d[i], b);
        ASSERT_EQ(dgc.momentum()[i], 0.0f) << "momentum factor masking";
        ASSERT_EQ(dgc.accumulated()[i], 0.0f);
      } else {
        ASSERT_EQ(dgc.momentum()[i], a);
        ASSERT_EQ(dgc.accumulated()[i], b);
      }
    }
    EXPECT_EQ(sent, gc::sparse_count(n, 0.01));
    EXPECT_EQ(dgc.step(), step + 1u);
  }
}

TEST(Dgc, LocalGradientClipping) {
  std::vector<float> g(1000, 0.0f);
  g[0] = 30.0f;
  g[1] = 40.0f;  // norm 50
  gc::dgc_memory<gc::topk_codec> dgc(gc::topk_codec({.ratio = 0.001}), {.clip_norm = 5.0f});
  std::vector<float> d(g.size());
  dgc.decode(encode(dgc, g), d);
  EXPECT_FLOAT_EQ(d[1], 4.0f);                  // sent, clipped
  EXPECT_FLOAT_EQ(dgc.accumulated()[0], 3.0f);  // kept, clipped
  EXPECT_FLOAT_EQ(dgc.momentum()[0], 3.0f);
}

TEST(Dgc, WarmupSchedule) {
  const std::size_t n = 100000;
  gc::dgc_memory<gc::approx_topk_codec> dgc(gc::approx_topk_codec({.ratio = 0.001}),
                                            {.warmup_steps = 4, .warmup_ratio = 0.25});
  EXPECT_DOUBLE_EQ(dgc.ratio_at(0), 0.25);
  EXPECT_NEAR(dgc.ratio_at(1), 0.25 * std::pow(0.004, 0.25), 1e-12);
  EXPECT_NEAR(dgc.ratio_at(2), std::sqrt(0.25 * 0.001), 1e-12);
  EXPECT_DOUBLE_EQ(dgc.ratio_at(4), 0.001);
  EXPECT_DOUBLE_EQ(dgc.ratio_at(1000), 0.001);
  std::size_t last = n;
  for (std::uint32_t step = 0; step < 6; ++step) {
    const bytes w = encode(dgc, gaussian(n, step));
    EXPECT_LE(w.size(), dgc.max_encoded_bytes(n));
    const std::size_t k = gc::inspect_sparse(w).selected;
    const auto want = static_cast<double>(gc::sparse_count(n, dgc.ratio_at(step)));
    EXPECT_NEAR(static_cast<double>(k), want, 0.1 * want + 1) << step;
    EXPECT_LE(k, last);
    last = k;
  }
  EXPECT_THROW(gc::dgc_memory<gc::threshold_codec>(gc::threshold_codec{}, {.warmup_steps = 3}),
               gc::error);
}

TEST(Dgc, StateSavesLoadsAndRejectsMalformedBytes) {
  const std::size_t n = 5003;
  const gc::dgc_params p{.momentum = 0.8f, .warmup_steps = 10};
  gc::dgc_memory<gc::topk_codec> a(gc::topk_codec({.ratio = 0.01}), p);
  for (std::uint32_t s = 0; s < 3; ++s) encode(a, gaussian(n, s));
  bytes st(a.state_bytes());
  st.resize(a.save_state(st));
  ASSERT_EQ(st.size(), 32u + 8 * n);
  gc::dgc_memory<gc::topk_codec> b(gc::topk_codec({.ratio = 0.01}), p);
  b.load_state(st);
  EXPECT_EQ(b.step(), 3u);
  for (std::uint32_t s = 3; s < 6; ++s) {
    const auto g = gaussian(n, s);
    ASSERT_EQ(encode(a, g), encode(b, g)) << "step " << s;
  }
  // Malformed states: rejected, b unchanged.
  const auto reject = [&](const bytes& bad, const std::string& what) {
    const std::vector<float> v(b.accumulated().begin(), b.accumulated().end());
    const std::uint64_t step = b.step();
    try {
      b.load_state(bad);
      ADD_FAILURE() << "accepted; expected " << what;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(b.step(), step);
    EXPECT_TRUE(std::equal(v.begin(), v.end(), b.accumulated().begin()));
  };
  for (std::size_t len = 0; len < st.size(); len += (len < 64 ? 1 : 997)) {
    reject(bytes(st.begin(), st.begin() + static_cast<std::ptrdiff_t>(len)), "truncated");
  }
  bytes x = st;
  x.push_back(std::byte{0});
  reject(x, "oversized");
  x = st;
  x[0] = std::byte{0};
  reject(x, "bad magic");
  x = st;
  x[4] = std::byte{2};
  reject(x, "version");
  x = st;
  x[5] = static_cast<std::byte>(gc::codec_id::randomk);
  reject(x, "codec id");
  x = st;
  x[6] = std::byte{5};
  reject(x, "flags");
  x = st;
  x[7] = std::byte{1};
  reject(x, "reserved");
  x = st;
  write_at<float>(x, 32 + 4 * 7, nan_f);
  reject(x, "non-finite u at index 7");
  x = st;
  write_at<float>(x, 32 + 4 * n + 4 * 9, inf_f);
  reject(x, "non-finite v at index 9");
}

TEST(Dgc, AStatefulInnerCodecIsSizedWithTheMemory) {
  // Found by fuzz_dgc_state: an unsized memory around a sized inner codec (what reset()
  // left, and what load_state accepted) encoded only inputs of the inner size; any other
  // threw "input has 17 elements, the residual 10". reset() now resets the inner codec
  // too, and load_state refuses that pair.
  using inner = gc::error_feedback<gc::topk_codec>;
  using dgc_t = gc::dgc_memory<inner>;
  const auto state_of = [](const auto& c) {
    bytes s(c.state_bytes());
    s.resize(c.save_state(s));
    return s;
  };
  dgc_t d(inner(gc::topk_codec({.ratio = 0.2})));
  encode(d, gaussian(10, 1));
  d.reset();
  EXPECT_FALSE(d.inner().sized());
  EXPECT_NO_THROW(encode(d, gaussian(17, 2)));
  EXPECT_EQ(d.size(), 17u);
  // An unsized memory's state with a sized inner state in it.
  const dgc_t fresh(inner(gc::topk_codec({.ratio = 0.2})));
  bytes st = state_of(fresh);
  inner sized_inner(gc::topk_codec({.ratio = 0.2}));
  encode(sized_inner, gaussian(10, 3));
  const bytes is = state_of(sized_inner);
  st.resize(gc::dgc_state_header_bytes);
  st.insert(st.end(), is.begin(), is.end());
  const std::uint64_t inner_bytes = is.size();
  std::memcpy(st.data() + 24, &inner_bytes, 8);
  dgc_t e(inner(gc::topk_codec({.ratio = 0.2})));
  try {
    e.load_state(st);
    ADD_FAILURE() << "accepted an unsized memory around a sized inner codec";
  } catch (const gc::decode_error& x) {
    EXPECT_NE(std::string(x.what()).find("inner state sized for 10"), std::string::npos)
        << x.what();
  }
  EXPECT_NO_THROW(encode(e, gaussian(17, 2)));
}

TEST(Dgc, FailedEncodeLeavesTheStateAlone) {
  const std::size_t n = 1000;
  gc::dgc_memory<gc::topk_codec> dgc(gc::topk_codec({.ratio = 0.05}));
  encode(dgc, gaussian(n, 1));
  const std::vector<float> u(dgc.momentum().begin(), dgc.momentum().end());
  const std::vector<float> v(dgc.accumulated().begin(), dgc.accumulated().end());
  auto g = gaussian(n, 2);
  g[77] = nan_f;
  EXPECT_NE(message_of([&] { encode(dgc, g); }).find("at index 77"), std::string::npos);
  EXPECT_TRUE(std::equal(u.begin(), u.end(), dgc.momentum().begin()));
  EXPECT_TRUE(std::equal(v.begin(), v.end(), dgc.accumulated().begin()));
  EXPECT_EQ(dgc.step(), 1u);
  bytes small(10);
  EXPECT_THROW(dgc.encode(gaussian(n, 3), small), gc::error);
  EXPECT_EQ(dgc.step(), 1u);
}

}  // namespace

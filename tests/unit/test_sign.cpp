// sign_codec (1 bit, mean |g| a block) and ternary_codec (TernGrad): payload layout, known
// answers, the values each decodes to, ternary's unbiasedness and its Philox keying, edge
// cases and the rejection of malformed payloads.
#include <gradcomm/codec/sign.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::Codec<gc::sign_codec>);
static_assert(gc::Codec<gc::ternary_codec>);
static_assert(gc::StochasticCodec<gc::ternary_codec>);
static_assert(!gc::StochasticCodec<gc::sign_codec>);
static_assert(!gc::sign_codec::traits.linear && gc::sign_codec::traits.fixed_size &&
              !gc::sign_codec::traits.stateful);
static_assert(!gc::ternary_codec::traits.linear && gc::ternary_codec::traits.fixed_size &&
              !gc::ternary_codec::traits.stateful);

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float fltmax = std::numeric_limits<float>::max();
constexpr float dmin = std::numeric_limits<float>::denorm_min();

using bytes = std::vector<std::byte>;

template <class C>
constexpr unsigned bits_of = std::is_same_v<C, gc::sign_codec> ? 1 : 2;

template <class C>
bytes encode(const C& c, const std::vector<float>& in) {
  bytes w(c.max_encoded_bytes(in.size()));
  EXPECT_EQ(c.encode(in, w), w.size());
  return w;
}

template <class C>
std::vector<float> decode(const C& c, const bytes& w, std::size_t n) {
  std::vector<float> out(n, -7.0f);
  c.decode(w, out);
  return out;
}

template <class T>
T read_at(const bytes& w, std::size_t off) {
  T v;
  std::memcpy(&v, w.data() + off, sizeof v);
  return v;
}

struct parsed {
  std::uint32_t block = 0;
  std::vector<float> scales;
  std::vector<unsigned> codes;
};

// The payload read field by field, as sign.hpp describes it.
template <class C>
parsed parse(const bytes& w, std::size_t n) {
  constexpr unsigned bits = bits_of<C>;
  parsed p;
  EXPECT_EQ(read_at<std::uint32_t>(w, 0), gc::wire_magic);
  EXPECT_EQ(read_at<std::uint8_t>(w, 4), gc::wire_version);
  EXPECT_EQ(read_at<std::uint8_t>(w, 5), static_cast<std::uint8_t>(C::id));
  EXPECT_EQ(read_at<std::uint8_t>(w, 6), static_cast<std::uint8_t>(gc::dtype::f32));
  EXPECT_EQ(read_at<std::uint8_t>(w, 7), 4);
  EXPECT_EQ(read_at<std::uint64_t>(w, 8), n);
  p.block = read_at<std::uint32_t>(w, 24);
  const std::size_t blocks = (n + p.block - 1) / p.block;
  const std::size_t code_bytes = (n * bits + 7) / 8;
  EXPECT_EQ(read_at<std::uint64_t>(w, 16), 4 * blocks + code_bytes);
  EXPECT_EQ(w.size(), 28 + 4 * blocks + code_bytes);
  for (std::size_t k = 0; k < blocks; ++k) p.scales.push_back(read_at<float>(w, 28 + 4 * k));
  const std::size_t at = 28 + 4 * blocks;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned c = 0;
    for (unsigned t = 0; t < bits; ++t) {
      const std::size_t k = i * bits + t;
      c |= ((std::to_integer<unsigned>(w[at + k / 8]) >> (k % 8)) & 1u) << t;
    }
    p.codes.push_back(c);
  }
  return p;
}

std::vector<float> normal_values(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

}  // namespace

TEST(SignCodec, KnownAnswer) {
  // mean |g| = (0.5 + 1.5 + 0 + 0 + 2) / 5 = 0.8; codes 1 (+, zero and −0 included) and 0 (−),
  // LSB first: 1, 0, 1, 1, 1 -> 0b00011101.
  const std::vector<float> g{0.5f, -1.5f, 0.0f, -0.0f, 2.0f};
  gc::sign_codec c(256);
  const auto w = encode(c, g);
  const std::vector<unsigned> want{0x00, 0x01, 0x00, 0x00,  // block 256
                                   0xcd, 0xcc, 0x4c, 0x3f,  // 0.8f
                                   0x1d};
  ASSERT_EQ(w.size(), 24 + want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(std::to_integer<unsigned>(w[24 + i]), want[i]) << i;
  }
  EXPECT_EQ(decode(c, w, g.size()), (std::vector<float>{0.8f, -0.8f, 0.8f, 0.8f, 0.8f}));
}

TEST(SignCodec, SignTimesMeanAbsOfTheBlock) {
  for (std::uint32_t block : {1u, 5u, 64u, 256u, 10000u}) {
    for (std::size_t n : {1u, 63u, 64u, 65u, 1000u, 4097u}) {
      const auto in = normal_values(n, block + static_cast<unsigned>(n));
      gc::sign_codec c(block);
      const auto w = encode(c, in);
      const auto p = parse<gc::sign_codec>(w, n);
      ASSERT_EQ(p.block, block);
      const auto out = decode(c, w, n);
      for (std::size_t b = 0; b < p.scales.size(); ++b) {
        const std::size_t lo = b * block, hi = std::min<std::size_t>(n, lo + block);
        long double l1 = 0, l1_out = 0;
        for (std::size_t i = lo; i < hi; ++i) {
          l1 += std::fabs(static_cast<long double>(in[i]));
          l1_out += std::fabs(static_cast<long double>(out[i]));
        }
        ASSERT_EQ(p.scales[b], gc::block_mean_abs(in.data() + lo, hi - lo));
        ASSERT_NEAR(p.scales[b], l1 / (hi - lo), l1 / (hi - lo) * 1e-7);
        ASSERT_NEAR(l1_out, l1, l1 * 1e-6) << "the block's L1 norm is kept";
        for (std::size_t i = lo; i < hi; ++i) {
          ASSERT_EQ(p.codes[i], in[i] < 0 ? 0u : 1u);
          ASSERT_EQ(out[i], in[i] < 0 ? -p.scales[b] : p.scales[b]);
        }
      }
    }
  }
}

TEST(TernaryCodec, KnownAnswer) {
  // Values at ±max and 0 take their level whatever the random numbers: q + 1 = 2, 0, 1, 1,
  // packed LSB first: 10 00 01 01 -> 0b01010010 = 0x52.
  const std::vector<float> g{2.5f, -2.5f, 0.0f, -0.0f};
  for (std::uint64_t seed : {0u, 1u, 2u}) {
    gc::ternary_codec c(8);
    c.set_stream({.seed = seed});
    const auto w = encode(c, g);
    const std::vector<unsigned> want{0x08, 0x00, 0x00, 0x00,  // block 8
                                     0x00, 0x00, 0x20, 0x40,  // 2.5f
                                     0x52};
    ASSERT_EQ(w.size(), 24 + want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(std::to_integer<unsigned>(w[24 + i]), want[i]) << i;
    }
    EXPECT_EQ(decode(c, w, g.size()), (std::vector<float>{2.5f, -2.5f, 0.0f, 0.0f}));
  }
}

TEST(TernaryCodec, ValuesAreSignedScaleOrZeroAndUnbiased) {
  constexpr int seeds = 2000;
  auto in = normal_values(300, 3);
  in[7] = 0.0f;
  gc::ternary_codec c(100);
  std::vector<double> sum(in.size()), sum2(in.size());
  for (int s = 0; s < seeds; ++s) {
    c.set_stream({.seed = 1000u + s, .step = 1});
    const auto w = encode(c, in);
    const auto p = parse<gc::ternary_codec>(w, in.size());
    const auto out = decode(c, w, in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
      const float sc = p.scales[i / 100];
      ASSERT_LE(p.codes[i], 2u);
      ASSERT_TRUE(out[i] == 0.0f || out[i] == (in[i] < 0 ? -sc : sc)) << i << " " << out[i];
      const double e = static_cast<double>(out[i]) - in[i];
      sum[i] += e;
      sum2[i] += e * e;
    }
  }
  const auto p = parse<gc::ternary_codec>(encode(c, in), in.size());
  double expected = 0, observed = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const double s = p.scales[i / 100], a = std::fabs(in[i]);
    float m = 0;
    for (std::size_t j = i / 100 * 100; j < i / 100 * 100 + 100; ++j)
      m = std::max(m, std::fabs(in[j]));
    ASSERT_EQ(p.scales[i / 100], m) << "max |g| of the block";
    const double var = s * a - a * a;  // |q| = 1 with probability a / s
    EXPECT_LE(std::fabs(sum[i] / seeds), 5 * std::sqrt(var / seeds) + s * 0x1p-20) << i;
    expected += var;
    observed += sum2[i] / seeds;
  }
  EXPECT_NEAR(observed, expected, 5 * expected / std::sqrt(1.0 * seeds));
}

TEST(TernaryCodec, IsScalarQuantTwoBitStochasticMaxAbs) {
  // Same key, same body: ternary is scalar_quant's 2-bit stochastic levels with its own id
  // and parameters; element i draws philox_stream(key).at(i).
  const auto in = normal_values(5003, 5);
  const gc::stream_key key{.seed = 42, .step = 7, .rank = 2, .bucket = 1};
  for (std::uint32_t block : {1u, 256u, 999u}) {
    gc::ternary_codec t(block);
    t.set_stream(key);
    gc::scalar_quant_codec q(
        {.bits = 2, .block = block, .rounding = gc::quant_rounding::stochastic});
    q.set_stream(key);
    const auto wt = encode(t, in);
    const auto wq = encode(q, in);
    ASSERT_TRUE(std::equal(wt.begin() + 28, wt.end(), wq.begin() + 32, wq.end())) << block;
    const auto p = parse<gc::ternary_codec>(wt, in.size());
    const gc::philox_stream rng(key.seed, key.step, key.rank, key.bucket);
    for (std::size_t i = 0; i < in.size(); ++i) {
      const float u = gc::philox_uniform(rng.at(i));
      ASSERT_EQ(p.codes[i], gc::scalar_quant_stochastic<2>(in[i], p.scales[i / block], u)) << i;
    }
  }
}

TEST(TernaryCodec, RerunsGiveTheSameBytesAndOtherStepsOthers) {
  const auto in = normal_values(4000, 9);
  gc::ternary_codec c(128);
  c.set_stream({.seed = 5, .step = 1, .rank = 0, .bucket = 0});
  const auto a = encode(c, in);
  EXPECT_EQ(encode(c, in), a);
  c.set_stream({.seed = 5, .step = 2, .rank = 0, .bucket = 0});
  EXPECT_NE(encode(c, in), a);
  c.set_stream({.seed = 5, .step = 1, .rank = 1, .bucket = 0});
  EXPECT_NE(encode(c, in), a);
  EXPECT_EQ(c.stream().rank, 1u);
}

template <class C>
class SignFamily : public ::testing::Test {};
using SignCodecs = ::testing::Types<gc::sign_codec, gc::ternary_codec>;
TYPED_TEST_SUITE(SignFamily, SignCodecs);

TYPED_TEST(SignFamily, EdgeCases) {
  TypeParam c(16);
  // n = 0.
  const std::vector<float> none;
  const auto w0 = encode(c, none);
  EXPECT_EQ(w0.size(), 28u);
  std::vector<float> empty;
  c.decode(w0, empty);
  c.decode_add(w0, empty);
  // n = 1 and n not a multiple of the block.
  for (std::size_t n : {1u, 17u, 33u}) {
    const auto in = normal_values(n, static_cast<unsigned>(n));
    const auto w = encode(c, in);
    const auto p = parse<TypeParam>(w, n);
    const auto out = decode(c, w, n);
    ASSERT_EQ(p.scales.size(), (n + 15) / 16);
    for (std::size_t i = 0; i < n; ++i) {
      const float s = p.scales[i / 16];
      ASSERT_TRUE(out[i] == s || out[i] == -s || out[i] == 0.0f);
      ASSERT_TRUE(out[i] == 0.0f || std::signbit(out[i]) == std::signbit(in[i]));
    }
    std::vector<float> acc(n, 1.0f);
    c.decode_add(w, acc);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 1.0f + out[i]);
  }
  // All zeros: scale 0 and exact +0 back.
  const std::vector<float> zeros(20, 0.0f);
  const auto wz = encode(c, zeros);
  for (float s : parse<TypeParam>(wz, zeros.size()).scales) EXPECT_EQ(s, 0.0f);
  for (float v : decode(c, wz, zeros.size())) {
    EXPECT_EQ(v, 0.0f);
    EXPECT_FALSE(std::signbit(v));
  }
  // Subnormals and huge values: finite, signs kept.
  for (const std::vector<float>& in :
       {std::vector<float>{dmin, -dmin, 3 * dmin, -1e-40f, 1e-41f},
        std::vector<float>{1e38f, -1e38f, fltmax, -fltmax, 3e37f, 1.0f}}) {
    const auto w = encode(c, in);
    const auto out = decode(c, w, in.size());
    const float s = parse<TypeParam>(w, in.size()).scales[0];
    EXPECT_GT(s, 0.0f);
    EXPECT_TRUE(std::isfinite(s));
    for (std::size_t i = 0; i < in.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out[i]));
      ASSERT_TRUE(out[i] == 0.0f || std::signbit(out[i]) == std::signbit(in[i])) << i;
    }
  }
}

TYPED_TEST(SignFamily, NonFinitePolicies) {
  std::vector<float> in(40, 0.25f);
  in[3] = -2.0f;
  in[21] = -inf;
  in[30] = std::nanf("");
  for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::pass}) {
    TypeParam c(8, policy);
    bytes w(c.max_encoded_bytes(in.size()));
    try {
      c.encode(in, w);
      FAIL() << "no throw";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("index 21"), std::string::npos) << e.what();
    }
  }
  TypeParam z(8, gc::nonfinite_policy::zero);
  const auto w = encode(z, in);
  const auto p = parse<TypeParam>(w, in.size());
  const auto out = decode(z, w, in.size());
  if constexpr (std::is_same_v<TypeParam, gc::sign_codec>) {
    EXPECT_EQ(p.scales[0], (7 * 0.25f + 2.0f) / 8);
    EXPECT_EQ(p.scales[2], 7 * 0.25f / 8);  // the Inf counts as 0
    EXPECT_EQ(out[21], p.scales[2]);        // and 0 encodes as +
  } else {
    EXPECT_EQ(p.scales[0], 2.0f);
    EXPECT_EQ(p.scales[2], 0.25f);
    EXPECT_EQ(out[21], 0.0f);
    EXPECT_EQ(out[30], 0.0f);
  }
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
}

TYPED_TEST(SignFamily, InvalidBlockAndSmallBuffer) {
  EXPECT_THROW(TypeParam(0), gc::error);
  TypeParam c(10);
  const std::vector<float> in(33, 1.0f);
  bytes w(c.max_encoded_bytes(in.size()) - 1);
  try {
    c.encode(in, w);
    FAIL();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
  }
}

namespace {

template <class C>
void expect_rejected(const C& c, const bytes& w, std::size_t n, const std::string& word) {
  std::vector<float> out(n, 42.0f);
  for (bool add : {false, true}) {
    try {
      if (add) {
        c.decode_add(w, out);
      } else {
        c.decode(w, out);
      }
      ADD_FAILURE() << "no throw for " << word;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos)
          << "wanted '" << word << "' in: " << e.what();
    }
    for (float v : out) ASSERT_EQ(v, 42.0f) << "wrote before rejecting (" << word << ")";
  }
}

template <class C>
bytes build(const std::vector<std::byte>& params, std::uint64_t count, const bytes& body) {
  bytes w(24 + params.size() + body.size());
  gc::wire_writer wr(w, "test");
  gc::write_header(wr, C::id, gc::dtype::f32, count, params, body.size());
  wr.put_bytes(body);
  return w;
}

std::vector<std::byte> block_param(std::uint32_t block) {
  std::vector<std::byte> p;
  for (int k = 0; k < 4; ++k) p.push_back(std::byte((block >> (8 * k)) & 0xff));
  return p;
}

}  // namespace

TYPED_TEST(SignFamily, MalformedPayloadsAreRejected) {
  constexpr unsigned bits = bits_of<TypeParam>;
  TypeParam c(16);
  const auto in = normal_values(45, 13);
  const std::size_t n = in.size();
  const auto w = encode(c, in);
  const std::size_t codes_at = 28 + 4 * 3;
  for (std::size_t len = 0; len < w.size(); ++len) {
    expect_rejected(c, bytes(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(len)), n,
                    "truncated");
  }
  auto longer = w;
  longer.push_back(std::byte{0});
  expect_rejected(c, longer, n, "oversized");
  expect_rejected(c, w, n + 1, "element count");
  auto bad = w;
  bad[0] = std::byte{'X'};
  expect_rejected(c, bad, n, "magic");
  bad = w;
  bad[4] = std::byte{0};
  expect_rejected(c, bad, n, "version");
  bad = w;
  bad[5] = std::byte{static_cast<unsigned char>(
      std::is_same_v<TypeParam, gc::sign_codec> ? gc::codec_id::ternary : gc::codec_id::sign)};
  expect_rejected(c, bad, n, "codec");
  bad = w;
  bad[6] = std::byte{static_cast<unsigned char>(gc::dtype::bf16)};
  expect_rejected(c, bad, n, "dtype");
  const bytes body(w.begin() + 28, w.end());
  expect_rejected(c, build<TypeParam>(block_param(0), n, body), n, "block size 0");
  expect_rejected(c, build<TypeParam>(block_param(8), n, body), n, "body of");
  auto p8 = block_param(16);
  p8.resize(8);
  expect_rejected(c, build<TypeParam>(p8, n, body), n, "parameter bytes");
  for (float s : {-1.0f, -0.0f, std::nanf(""), inf}) {
    bad = w;
    std::memcpy(bad.data() + 28 + 8, &s, 4);  // block 2
    expect_rejected(c, bad, n, std::isfinite(s) ? "negative scale" : "non-finite scale");
    expect_rejected(c, bad, n, "block 2");
  }
  if constexpr (bits == 2) {
    for (std::size_t i : {0u, 30u, 44u}) {
      bad = w;
      bad[codes_at + 2 * i / 8] |= std::byte{3} << (2 * i % 8);  // code 3: no level
      expect_rejected(c, bad, n, "out of range");
      expect_rejected(c, bad, n, "index " + std::to_string(i));
    }
  }
  bad = w;
  bad.back() |= std::byte{0x80};  // 45 codes leave padding bits in the last byte
  expect_rejected(c, bad, n, "padding");
  // Bit flips: rejected before writing, or finite values.
  for (std::size_t k = 0; k < 8 * w.size(); ++k) {
    bad = w;
    bad[k / 8] ^= std::byte{1} << (k % 8);
    std::vector<float> out(n, 42.0f);
    try {
      c.decode(bad, out);
      ASSERT_TRUE(k / 8 >= 24) << "header flip accepted: " << k;  // block sizes may pass
      for (float v : out) ASSERT_TRUE(std::isfinite(v));
    } catch (const gc::decode_error&) {
      for (float v : out) ASSERT_EQ(v, 42.0f);
    }
  }
}

namespace {

// What error feedback's unfused step gives: encode(g + e), then g + e − decode, non-finite
// elements 0.
struct ef_step {
  bytes wire;
  std::vector<float> next;
};
ef_step unfused_step(const gc::sign_codec& c, const std::vector<float>& g,
                     const std::vector<float>& e) {
  std::vector<float> s(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) s[i] = g[i] + e[i];
  ef_step r{encode(c, s), std::vector<float>(g.size())};
  c.decode(r.wire, r.next);
  for (std::size_t i = 0; i < g.size(); ++i) {
    const float d = s[i] - r.next[i];
    r.next[i] = std::isfinite(d) ? d : 0.0f;
  }
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp of an empty vector's null pointer is undefined (UBSan says so).
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

}  // namespace

TEST(SignCodec, EncodeWithResidualIsEncodeDecodeAndSubtract) {
  // Every size and block leaves partial code bytes somewhere (blocks not a multiple of 8,
  // tails); every path (portable, AVX2) must give the unfused step's bytes and bits.
  using gc::detail::cpu_isa;
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 33u, 100u, 257u, 1000u, 4099u}) {
    for (std::uint32_t block : {1u, 3u, 8u, 13u, 32u, 64u, 256u, 1000u}) {
      for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::zero}) {
        const gc::sign_codec c(block, policy);
        auto g = normal_values(n, static_cast<unsigned>(n + block));
        for (auto& v : g) v *= 3.0f;
        const auto e = normal_values(n, static_cast<unsigned>(n * block + 1));
        if (policy == gc::nonfinite_policy::zero && n > 5) {
          g[n / 2] = inf;
          g[n / 3] = std::nanf("");
          g[n - 1] = -inf;
        }
        const ef_step want = unfused_step(c, g, e);
        // The public call (the widest path), with `next` its own buffer and with `next`
        // the residual itself.
        std::vector<float> next(n, -9.0f);
        bytes w(c.max_encoded_bytes(n), std::byte{0x5a});
        ASSERT_EQ(c.encode_with_residual(g, e, w, next), w.size());
        ASSERT_EQ(w, want.wire) << "n " << n << " block " << block;
        ASSERT_TRUE(same_bits(next, want.next)) << "n " << n << " block " << block;
        auto inplace = e;
        bytes w2(w.size());
        c.encode_with_residual(g, inplace, w2, inplace);
        ASSERT_EQ(w2, want.wire);
        ASSERT_TRUE(same_bits(inplace, want.next));
        // Each path on its own.
        for (cpu_isa isa : {cpu_isa::portable, cpu_isa::avx2}) {
          if (!gc::detail::cpu_isa_available(isa)) continue;
          bytes body(w.size() - 28 + 16, std::byte{0xee});
          std::vector<float> nx(n, -9.0f);
          const gc::detail::sign_ef_job j{
              g.data(),
              e.data(),
              nx.data(),
              n,
              block,
              policy,
              body.data(),
              reinterpret_cast<std::uint8_t*>(body.data()) + 4 * ((n + block - 1) / block),
              "test"};
          gc::detail::sign_ef_encode_isa(j, isa);
          for (std::size_t k = w.size() - 28; k < body.size(); ++k) {
            ASSERT_EQ(body[k], std::byte{0xee}) << "wrote past the body";
          }
          ASSERT_TRUE(std::equal(body.begin(),
                                 body.begin() + static_cast<std::ptrdiff_t>(w.size() - 28),
                                 want.wire.begin() + 28))
              << "isa " << static_cast<int>(isa) << " n " << n << " block " << block;
          ASSERT_TRUE(same_bits(nx, want.next))
              << "isa " << static_cast<int>(isa) << " n " << n << " block " << block;
        }
      }
    }
  }
}

TEST(SignCodec, EncodeWithResidualRejectsWhatEncodeRejects) {
  const gc::sign_codec c(8);
  std::vector<float> g(40, 0.5f), e(40, 0.25f), next(40, 7.0f);
  bytes w(c.max_encoded_bytes(40));
  // Sizes that differ.
  std::vector<float> short_e(39);
  EXPECT_THROW(c.encode_with_residual(g, short_e, w, next), gc::error);
  std::vector<float> short_next(39);
  EXPECT_THROW(c.encode_with_residual(g, e, w, short_next), gc::error);
  // A small buffer, before anything is written.
  bytes small(w.size() - 1);
  try {
    c.encode_with_residual(g, e, small, next);
    FAIL() << "no throw";
  } catch (const gc::error& err) {
    EXPECT_EQ(err.code(), gc::errc::buffer_too_small);
  }
  for (float v : next) EXPECT_EQ(v, 7.0f);
  // A non-finite g + e, named by its index; the residual is only read.
  g[21] = -inf;
  const auto e_before = e;
  try {
    c.encode_with_residual(g, e, w, next);
    FAIL() << "no throw";
  } catch (const gc::error& err) {
    EXPECT_EQ(err.code(), gc::errc::invalid_argument);
    EXPECT_NE(std::string(err.what()).find("index 21"), std::string::npos) << err.what();
  }
  EXPECT_EQ(e, e_before);
  // Finite g and e whose sum overflows count as non-finite too.
  std::vector<float> big(16, fltmax);
  std::vector<float> n16(16);
  bytes w16(c.max_encoded_bytes(16));
  EXPECT_THROW(c.encode_with_residual(big, big, w16, n16), gc::error);
}

namespace {

// Finite inputs at the top of f32's range: ±FLT_MAX alternating, ±3e38, magnitudes spread
// up to 3e38, and mixtures with ordinary values (in one block, and block by block).
std::vector<std::vector<float>> near_the_float_range(std::size_t n) {
  constexpr float top = std::numeric_limits<float>::max();
  std::vector<std::vector<float>> out;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 2 ? -top : top;
  out.push_back(v);
  const auto g = normal_values(n, 91);
  for (std::size_t i = 0; i < n; ++i) v[i] = g[i] < 0 ? -3e38f : 3e38f;
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::clamp(g[i] * 1.5e38f, -3e38f, 3e38f);
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 37 == 5 ? (i % 2 ? -top : 3e38f) : g[i];
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = i / 64 % 2 ? std::clamp(g[i] * 5e37f, -3e38f, 3e38f) : g[i];
  }
  out.push_back(v);
  return out;
}

}  // namespace

TEST(SignAndTernary, FiniteInputNearTheFloatRangeDecodesFinite) {
  // A scale is at most FLT_MAX (mean or max |g|, capped) and a value is ±scale or 0, so
  // every payload of finite input decodes finite; the fused error-feedback step refuses
  // g + e that overflows instead of sending it.
  for (std::uint32_t block : {8u, 256u}) {
    gc::sign_codec s(block);
    gc::ternary_codec t(block);
    t.set_stream({.seed = 3});
    for (const auto& in : near_the_float_range(1000)) {
      SCOPED_TRACE(testing::Message() << "block " << block << ", input " << in[0]);
      const auto decodes_finite = [&](const auto& c) {
        const bytes w = encode(c, in);
        std::vector<float> out(in.size(), -7.0f), sum(in.size(), 0.0f);
        c.decode(w, out);
        c.decode_add(w, sum);
        for (std::size_t i = 0; i < in.size(); ++i) {
          ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(sum[i])) << i;
        }
      };
      decodes_finite(s);
      decodes_finite(t);
      const std::vector<float> zero(in.size(), 0.0f);
      std::vector<float> next(in.size());
      bytes w(s.max_encoded_bytes(in.size()));
      s.encode_with_residual(in, zero, w, next);
      for (float x : next) ASSERT_TRUE(std::isfinite(x));
      for (float x : decode(s, w, in.size())) ASSERT_TRUE(std::isfinite(x));
    }
  }
}

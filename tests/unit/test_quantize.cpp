// Scalar quantization: the payload layout against a reference parser, the per-element error
// bound on random and adversarial data for every bit width, stochastic rounding's mean and
// variance, the seed's formula as a known answer, edge cases, the CPU paths against each
// other, and the rejection of malformed payloads.
#include <gradcomm/codec/quantize.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::Codec<gc::scalar_quant_codec>);
static_assert(gc::StochasticCodec<gc::scalar_quant_codec>);
static_assert(!gc::scalar_quant_codec::traits.linear && gc::scalar_quant_codec::traits.fixed_size &&
              !gc::scalar_quant_codec::traits.stateful);
static_assert(gc::scalar_quant_qmax(1) == 1 && gc::scalar_quant_qmax(2) == 1 &&
              gc::scalar_quant_qmax(3) == 3 && gc::scalar_quant_qmax(4) == 7 &&
              gc::scalar_quant_qmax(8) == 127);

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float fltmax = std::numeric_limits<float>::max();
constexpr float dmin = std::numeric_limits<float>::denorm_min();

using bytes = std::vector<std::byte>;

bytes encode(const gc::scalar_quant_codec& c, const std::vector<float>& in) {
  bytes w(c.max_encoded_bytes(in.size()));
  const std::size_t n = c.encode(in, w);
  EXPECT_EQ(n, w.size());
  return w;
}

std::vector<float> decode(const gc::scalar_quant_codec& c, const bytes& w, std::size_t n) {
  std::vector<float> out(n, -7.0f);
  c.decode(w, out);
  return out;
}

// The payload as the format describes it, read field by field.
struct parsed {
  unsigned bits = 0;
  unsigned rule = 0, rounding = 0;
  std::uint32_t block = 0;
  std::vector<float> scales;
  std::vector<std::uint8_t> codes;
};

template <class T>
T read_at(const bytes& w, std::size_t off) {
  T v;
  std::memcpy(&v, w.data() + off, sizeof v);
  return v;
}

parsed parse(const bytes& w, std::size_t n) {
  parsed p;
  EXPECT_EQ(read_at<std::uint32_t>(w, 0), gc::wire_magic);
  EXPECT_EQ(read_at<std::uint8_t>(w, 4), gc::wire_version);
  EXPECT_EQ(read_at<std::uint8_t>(w, 5), static_cast<std::uint8_t>(gc::codec_id::scalar_quant));
  EXPECT_EQ(read_at<std::uint8_t>(w, 6), static_cast<std::uint8_t>(gc::dtype::f32));
  EXPECT_EQ(read_at<std::uint8_t>(w, 7), 8);
  EXPECT_EQ(read_at<std::uint64_t>(w, 8), n);
  p.bits = read_at<std::uint8_t>(w, 24);
  p.rule = read_at<std::uint8_t>(w, 25);
  p.rounding = read_at<std::uint8_t>(w, 26);
  EXPECT_EQ(read_at<std::uint8_t>(w, 27), 0);
  p.block = read_at<std::uint32_t>(w, 28);
  const std::size_t blocks = (n + p.block - 1) / p.block;
  const std::size_t code_bytes = (n * p.bits + 7) / 8;
  EXPECT_EQ(read_at<std::uint64_t>(w, 16), 4 * blocks + code_bytes);
  EXPECT_EQ(w.size(), 32 + 4 * blocks + code_bytes);
  for (std::size_t k = 0; k < blocks; ++k) p.scales.push_back(read_at<float>(w, 32 + 4 * k));
  const std::byte* codes = w.data() + 32 + 4 * blocks;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint8_t c = 0;
    for (unsigned t = 0; t < p.bits; ++t) {  // bit by bit: stream bit k is bit k%8 of byte k/8
      const std::size_t k = i * p.bits + t;
      c |= static_cast<std::uint8_t>(((std::to_integer<unsigned>(codes[k / 8]) >> (k % 8)) & 1)
                                     << t);
    }
    p.codes.push_back(c);
  }
  return p;
}

// Half the level spacing: the deterministic bound.
double half_spacing(float scale, unsigned bits) {
  const double step = gc::scalar_quant_step(scale, bits);
  return bits == 1 ? step : step / 2;
}

// Float rounding on top of the exact bound: the division x / step (half an ulp of t, so
// |x| × 2^-24 in value) and the product q × step (half an ulp of the result, at least
// 2^-150 where it is subnormal).
double slack(double x, double y) { return (std::fabs(x) + std::fabs(y)) * 0x1p-22 + 0x1p-149; }

std::vector<float> normal_values(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// Blocks of hard cases: level midpoints and their neighbours, ±max, zeros, subnormals next
// to large values, several magnitudes.
std::vector<float> adversarial_values(unsigned bits, std::uint32_t block, float top) {
  std::vector<float> v;
  const int qmax = gc::scalar_quant_qmax(bits);
  const float step = gc::scalar_quant_step(top, bits);
  v.push_back(top);
  v.push_back(-top);
  for (int k = -qmax; k < qmax && v.size() < 4 * block; ++k) {
    const float mid = static_cast<float>((k + 0.5) * static_cast<double>(step));
    if (std::fabs(mid) > top) continue;
    v.push_back(mid);
    v.push_back(std::nextafter(mid, inf));
    v.push_back(std::nextafter(mid, -inf));
    v.push_back(static_cast<float>(k * static_cast<double>(step)));
  }
  for (float f : {0.0f, -0.0f, dmin, -dmin, 1e-40f, std::numeric_limits<float>::min(), top * 0.5f,
                  top * 0.25f, top / 3, -top / 7, std::nextafter(top, 0.0f)}) {
    v.push_back(f);
  }
  std::mt19937 gen(bits * 1000 + block);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  while (v.size() % block != 0) v.push_back(top * u(gen));
  std::shuffle(v.begin(), v.end(), gen);
  // Each block must reach `top` so that the step above is the block's.
  for (std::size_t b = 0; b < v.size(); b += block) v[b] = (b / block) % 2 ? top : -top;
  return v;
}

void expect_within_bound(const std::vector<float>& in, const gc::scalar_quant_codec& c,
                         const std::string& what) {
  const auto w = encode(c, in);
  const auto out = decode(c, w, in.size());
  const auto p = parse(w, in.size());
  const unsigned bits = c.params().bits;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float s = p.scales[i / p.block];
    const double err = std::fabs(static_cast<double>(in[i]) - out[i]);
    ASSERT_LE(err, half_spacing(s, bits) + slack(in[i], out[i]))
        << what << " bits " << bits << " block " << p.block << " i " << i << " x " << in[i]
        << " got " << out[i] << " scale " << s;
  }
}

}  // namespace

TEST(ScalarQuantStep, SmallestFloatAtOrAboveScaleOverQmax) {
  std::mt19937 gen(5);
  std::uniform_int_distribution<std::uint32_t> any(0, 0x7f7fffffu);  // finite, >= 0
  std::vector<float> scales{0.0f,   dmin, 2 * dmin, 3 * dmin, 1e-40f,
                            1e-38f, 1.0f, 127.0f,   1e38f,    fltmax};
  for (int i = 0; i < 20000; ++i) {
    const std::uint32_t u = any(gen);
    float f;
    std::memcpy(&f, &u, 4);
    scales.push_back(f);
  }
  for (unsigned bits = 1; bits <= 8; ++bits) {
    const long double qmax = gc::scalar_quant_qmax(bits);
    for (float s : scales) {
      const float step = gc::scalar_quant_step(s, bits);
      ASSERT_TRUE(std::isfinite(step) && step >= 0) << s;
      ASSERT_LE(qmax * step, static_cast<long double>(fltmax)) << s;  // decoding never overflows
      if (s == 0) {
        ASSERT_EQ(step, 0.0f);
        continue;
      }
      const float below = std::nextafter(step, 0.0f);
      if (qmax * step >= s) {
        ASSERT_LT(qmax * below, static_cast<long double>(s)) << "not the smallest: " << s;
      } else {  // only where the smallest would overflow q × step
        ASSERT_GT(qmax * std::nextafter(step, inf), static_cast<long double>(fltmax)) << s;
      }
    }
  }
}

TEST(ScalarQuant, PayloadLayoutMatchesTheFormat) {
  const std::vector<float> in = normal_values(1000, 3);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::uint32_t block : {1u, 7u, 256u, 5000u}) {
      gc::scalar_quant_codec c({.bits = bits, .block = block});
      const auto w = encode(c, in);
      const auto p = parse(w, in.size());
      ASSERT_EQ(p.bits, bits);
      ASSERT_EQ(p.block, block);
      ASSERT_EQ(p.rule, 0u);
      ASSERT_EQ(p.rounding, 0u);
      const int qmax = gc::scalar_quant_qmax(bits);
      const auto out = decode(c, w, in.size());
      for (std::size_t b = 0; b < p.scales.size(); ++b) {
        float m = 0;
        for (std::size_t i = b * block; i < std::min(in.size(), (b + 1) * block); ++i) {
          m = std::max(m, std::fabs(in[i]));
        }
        ASSERT_EQ(p.scales[b], m) << "max-abs scale of block " << b;
      }
      for (std::size_t i = 0; i < in.size(); ++i) {
        const float step = gc::scalar_quant_step(p.scales[i / block], bits);
        const std::uint8_t code = p.codes[i];
        float want;
        if (bits == 1) {
          want = code ? step : -step;
        } else {
          ASSERT_LE(code, 2 * qmax) << i;
          want = static_cast<float>(code - qmax) * step;
        }
        ASSERT_EQ(out[i], want) << "bits " << bits << " i " << i;
      }
    }
  }
}

TEST(ScalarQuant, DeterministicErrorBoundRandom) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::uint32_t block : {1u, 3u, 64u, 256u, 1000u}) {
      for (std::size_t n : {1u, 2u, 255u, 256u, 257u, 1000u, 4099u}) {
        for (auto rule : {gc::quant_scale::max_abs, gc::quant_scale::l2_norm}) {
          gc::scalar_quant_codec c({.bits = bits, .block = block, .scale = rule});
          auto in = normal_values(n, bits * 7919 + block + static_cast<unsigned>(n));
          if (rule == gc::quant_scale::max_abs) {
            expect_within_bound(in, c, "normal");
            for (auto& x : in) x = std::ldexp(x, -130);  // subnormal and tiny values
            expect_within_bound(in, c, "tiny");
            for (auto& x : in) x = std::ldexp(x, 255);  // up to about 1e38
            expect_within_bound(in, c, "huge");
          } else {
            // L2 scales put the levels beyond max |g|: the bound still holds (no clamping).
            expect_within_bound(in, c, "l2");
          }
        }
      }
    }
  }
}

TEST(ScalarQuant, DeterministicErrorBoundAdversarial) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::uint32_t block : {5u, 256u}) {
      for (float top : {1.0f, 3e-3f, 1e-38f, 1e-42f, 7 * dmin, 1e38f, fltmax}) {
        gc::scalar_quant_codec c({.bits = bits, .block = block});
        expect_within_bound(adversarial_values(bits, block, top), c, "adversarial");
      }
    }
  }
}

TEST(ScalarQuant, L2ScaleIsTheNorm) {
  const auto in = normal_values(1000, 11);
  gc::scalar_quant_codec c({.bits = 4, .block = 300, .scale = gc::quant_scale::l2_norm});
  const auto p = parse(encode(c, in), in.size());
  ASSERT_EQ(p.rule, 1u);
  for (std::size_t b = 0; b < p.scales.size(); ++b) {
    long double ss = 0;
    for (std::size_t i = b * 300; i < std::min<std::size_t>(1000, (b + 1) * 300); ++i) {
      ss += static_cast<long double>(in[i]) * in[i];
    }
    EXPECT_NEAR(p.scales[b], std::sqrt(ss), std::sqrt(ss) * 1e-7) << b;
    EXPECT_EQ(p.scales[b],
              gc::block_l2_norm(in.data() + b * 300, std::min<std::size_t>(300, 1000 - b * 300)));
  }
  // Huge values: the norm is capped at the largest float, never Inf.
  std::vector<float> big{3e38f, -3e38f, 3e38f};
  const auto pb = parse(encode(c, big), big.size());
  EXPECT_EQ(pb.scales[0], fltmax);
  const auto out = decode(c, encode(c, big), big.size());
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
}

// The seed computed, for 8 bits, scale = 2^(b−1) / max|g| = 128 / max|g| and
// q = round(g × scale), clamped to ±scale (not to the code range), so max|g| gave q = 128,
// which no 8-bit code holds. We take step = max|g| / 127 (the smallest float at or above it),
// q = round(g / step) within the code range ±127, and send q + 127. Where |g| × 127 / max
// and |g| × 128 / max round alike (here g = k / 128, |k| < 64) the q agree, except at
// ±max|g|: the seed's ±128 is our ±127. Past max / 2 the two steps can part by a level
// (0.75: the seed's 96 / 128, our 95 / 127, nearer 0.75).
TEST(ScalarQuant, KnownAnswerAgainstTheSeedFormula) {
  const std::vector<float> g{1.0f,        -1.0f,        0.0f,       3 / 128.0f, -17 / 128.0f,
                             40 / 128.0f, -63 / 128.0f, 1 / 128.0f, 0.75f};
  gc::scalar_quant_codec c({.bits = 8, .block = 256});
  const auto w = encode(c, g);
  // Parameters: bits 8, rule 0 (max-abs), rounding 0 (nearest), reserved 0, block 256.
  const std::vector<unsigned> params{8, 0, 0, 0, 0x00, 0x01, 0x00, 0x00};
  // Scale 1.0f, then q + 127: 127, −127, 0, 3, −17, 40, −63, 1, 95.
  const std::vector<unsigned> body{0x00, 0x00, 0x80, 0x3f,  // 1.0f
                                   254,  0,    127,  130,  110, 167, 64, 128, 222};
  ASSERT_EQ(w.size(), 24 + params.size() + body.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(std::to_integer<unsigned>(w[24 + i]), params[i]) << "param " << i;
  }
  for (std::size_t i = 0; i < body.size(); ++i) {
    EXPECT_EQ(std::to_integer<unsigned>(w[32 + i]), body[i]) << "body byte " << i;
  }
  // The seed's formula, as it was: scale = 2^(b−1) / max|g|, q clamped to ±scale.
  const double max_abs = 1.0, seed_scale = 128.0 / max_abs;
  for (std::size_t i = 0; i + 1 < g.size(); ++i) {
    const double seed_q = std::clamp(std::round(g[i] * seed_scale), -seed_scale, seed_scale);
    const int ours = std::to_integer<int>(w[36 + i]) - 127;
    if (std::fabs(seed_q) == 128) {
      EXPECT_EQ(ours, seed_q > 0 ? 127 : -127) << i;  // the seed's q does not fit 8 bits
    } else {
      EXPECT_EQ(ours, seed_q) << i;
    }
  }
  EXPECT_EQ(std::round(0.75 * seed_scale), 96);
  EXPECT_EQ(std::to_integer<int>(w[36 + 8]) - 127, 95);
  // Decoded: within half a step (1 / 254) plus rounding; 127 × step is max|g| to an ulp.
  const auto out = decode(c, w, g.size());
  EXPECT_NEAR(out[0], 1.0f, 0x1p-23);
  EXPECT_NEAR(out[1], -1.0f, 0x1p-23);
  EXPECT_EQ(out[2], 0.0f);
  for (std::size_t i = 0; i < g.size(); ++i) {
    EXPECT_LE(std::fabs(out[i] - g[i]), 1.0 / 254 + 0x1p-22) << i;
  }
}

TEST(ScalarQuant, StochasticRoundingIsUnbiasedWithinQsgdVariance) {
  // One block of values on, near and between levels; the scale (so the step) does not
  // depend on the random numbers, so each value's decoded result takes the two levels
  // around it: mean x, variance step² p (1 − p) with p = frac(x / step).
  constexpr int seeds = 1500;
  for (unsigned bits : {1u, 2u, 3u, 4u, 8u}) {
    for (auto rule : {gc::quant_scale::max_abs, gc::quant_scale::l2_norm}) {
      std::vector<float> in = normal_values(200, 17 + bits);
      in[0] = 0.0f;
      in[1] = -0.0f;
      gc::scalar_quant_codec c(
          {.bits = bits, .block = 256, .scale = rule, .rounding = gc::quant_rounding::stochastic});
      std::vector<double> sum(in.size()), sum2(in.size());
      for (int s = 0; s < seeds; ++s) {
        c.set_stream({.seed = static_cast<std::uint64_t>(s), .step = 3, .rank = 1, .bucket = 2});
        const auto out = decode(c, encode(c, in), in.size());
        for (std::size_t i = 0; i < in.size(); ++i) {
          const double e = static_cast<double>(out[i]) - in[i];
          sum[i] += e;
          sum2[i] += e * e;
        }
      }
      const float scale = parse(encode(c, in), in.size()).scales[0];
      const double step = gc::scalar_quant_step(scale, bits);
      double expected_mse = 0, observed_mse = 0, norm2 = 0;
      for (std::size_t i = 0; i < in.size(); ++i) {
        double var;
        if (bits == 1) {
          var = static_cast<double>(step) * step - static_cast<double>(in[i]) * in[i];
        } else {
          const double t = std::fabs(in[i]) / step;
          const double p = t - std::floor(t);
          var = step * step * p * (1 - p);
        }
        // A value's variance is at most a quarter step² (one bit: step², its levels ±step).
        EXPECT_LE(var, step * step * (bits == 1 ? 1.0 : 0.25) * (1 + 1e-12));
        expected_mse += var;
        observed_mse += sum2[i] / seeds;
        norm2 += static_cast<double>(in[i]) * in[i];
        // Unbiased: the mean error within 5 standard errors (plus Philox's 2^-24 grid).
        const double se = std::sqrt(var / seeds);
        EXPECT_LE(std::fabs(sum[i] / seeds), 5 * se + step * 0x1p-20 + 1e-30)
            << "bits " << bits << " i " << i << " x " << in[i];
        if (var == 0) {
          EXPECT_EQ(sum2[i], 0.0) << "values on a level stay there: " << i;
        }
      }
      // The measured variance agrees with the exact one, and the exact one with QSGD's bound
      // E‖Q(v) − v‖² <= min(d / s², √d / s) ‖v‖² (s = qmax levels of the L2 norm).
      EXPECT_NEAR(observed_mse, expected_mse, 5 * expected_mse / std::sqrt(seeds * 1.0) + 1e-12);
      if (rule == gc::quant_scale::l2_norm && bits >= 2) {
        const double s = gc::scalar_quant_qmax(bits), d = static_cast<double>(in.size());
        EXPECT_LE(expected_mse, std::min(d / (s * s), std::sqrt(d) / s) * norm2 * (1 + 1e-6));
        EXPECT_LE(observed_mse, std::min(d / (s * s), std::sqrt(d) / s) * norm2 *
                                    (1 + 5 / std::sqrt(1.0 * seeds)));
      }
    }
  }
}

TEST(ScalarQuant, StochasticCodesUseElementIndexedPhiloxWords) {
  // Element i draws philox_stream(seed, step, rank, bucket).at(i): the contract with the
  // CUDA kernels, checked code by code against the per-element function.
  const std::vector<float> in = normal_values(3001, 23);
  const gc::stream_key key{.seed = 0x123456789abcdefull, .step = 9, .rank = 3, .bucket = 4};
  const gc::philox_stream rng(key.seed, key.step, key.rank, key.bucket);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::uint32_t block : {1u, 100u, 256u}) {
      gc::scalar_quant_codec c(
          {.bits = bits, .block = block, .rounding = gc::quant_rounding::stochastic});
      c.set_stream(key);
      const auto p = parse(encode(c, in), in.size());
      ASSERT_EQ(p.rounding, 1u);
      for (std::size_t i = 0; i < in.size(); ++i) {
        const float step = gc::scalar_quant_step(p.scales[i / block], bits);
        const float u = gc::philox_uniform(rng.at(i));
        std::uint8_t want = 0;
        gc::detail::with_code_bits(
            bits, [&]<unsigned B>() { want = gc::scalar_quant_stochastic<B>(in[i], step, u); });
        ASSERT_EQ(p.codes[i], want) << "bits " << bits << " block " << block << " i " << i;
      }
    }
  }
}

TEST(ScalarQuant, RerunsGiveTheSameBytesAndOtherKeysOthers) {
  const auto in = normal_values(5000, 29);
  gc::scalar_quant_codec c({.bits = 3, .block = 128, .rounding = gc::quant_rounding::stochastic});
  c.set_stream({.seed = 1, .step = 2, .rank = 3, .bucket = 4});
  EXPECT_EQ(c.stream(), (gc::stream_key{.seed = 1, .step = 2, .rank = 3, .bucket = 4}));
  const auto a = encode(c, in);
  EXPECT_EQ(encode(c, in), a);
  gc::scalar_quant_codec copy = c;
  EXPECT_EQ(encode(copy, in), a);
  for (gc::stream_key k : {gc::stream_key{.seed = 1, .step = 3, .rank = 3, .bucket = 4},
                           gc::stream_key{.seed = 2, .step = 2, .rank = 3, .bucket = 4},
                           gc::stream_key{.seed = 1, .step = 2, .rank = 4, .bucket = 4},
                           gc::stream_key{.seed = 1, .step = 2, .rank = 3, .bucket = 5}}) {
    c.set_stream(k);
    EXPECT_NE(encode(c, in), a) << k.seed << " " << k.step << " " << k.rank << " " << k.bucket;
  }
  // Nearest rounding ignores the key.
  gc::scalar_quant_codec d({.bits = 3, .block = 128});
  const auto b = encode(d, in);
  d.set_stream({.seed = 99});
  EXPECT_EQ(encode(d, in), b);
}

TEST(ScalarQuant, EveryCpuPathWritesTheSameBytes) {
  // The portable loops, the AVX2 and the AVX-512 paths (where this CPU has them) and the
  // Philox batches against philox_stream::at.
  using gc::detail::cpu_isa;
  const gc::philox_stream rng(77, 1, 2, 3);
  std::vector<std::uint32_t> words(4 * 1000 + 4);
  for (cpu_isa isa : {cpu_isa::portable, cpu_isa::avx2, cpu_isa::avx512}) {
    if (!gc::detail::cpu_isa_available(isa)) continue;
    for (std::uint32_t first : {0u, 5u, 0xfffffff0u}) {
      for (std::size_t count : {0u, 1u, 31u, 32u, 33u, 1000u}) {
        gc::detail::philox_fill(rng, first, count, words.data(), isa);
        for (std::size_t k = 0; k < 4 * count; ++k) {
          ASSERT_EQ(words[k], rng.at(4 * std::uint64_t{first} + k))
              << "isa " << static_cast<int>(isa) << " first " << first << " k " << k;
        }
      }
    }
  }
  std::vector<float> in = normal_values(10007, 31);
  in[5] = inf;  // policy zero: the sanitizing path too
  in[4000] = std::nanf("");
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (auto rule : {gc::detail::block_scale_rule::max_abs, gc::detail::block_scale_rule::l2_norm,
                      gc::detail::block_scale_rule::mean_abs}) {
      for (bool stochastic : {false, true}) {
        for (std::uint32_t block : {3u, 256u, 2000u}) {
          const std::size_t blocks = (in.size() + block - 1) / block;
          const std::size_t size = 4 * blocks + gc::packed_bytes(in.size(), bits);
          bytes ref;
          for (cpu_isa isa : {cpu_isa::portable, cpu_isa::avx2, cpu_isa::avx512}) {
            if (!gc::detail::cpu_isa_available(isa)) continue;
            bytes body(size + 64, std::byte{0xee});  // beyond `size`: must stay untouched
            const gc::detail::quant_encode_job job{in.data(),
                                                   in.size(),
                                                   block,
                                                   rule,
                                                   gc::nonfinite_policy::zero,
                                                   gc::philox_stream(5, 6, 7, 8),
                                                   body.data(),
                                                   body.data() + 4 * blocks,
                                                   "test",
                                                   isa};
            gc::detail::quant_encode(job, bits, stochastic);
            for (std::size_t k = size; k < body.size(); ++k) {
              ASSERT_EQ(body[k], std::byte{0xee}) << "wrote past the body";
            }
            body.resize(size);
            if (ref.empty()) {
              ref = body;
            } else {
              ASSERT_EQ(body, ref) << "isa " << static_cast<int>(isa) << " bits " << bits
                                   << " stochastic " << stochastic << " block " << block;
            }
            // Decoding on every path too.
            std::vector<float> out(in.size()), want(in.size());
            const gc::detail::quant_body qb{bits, block, ref.data(), ref.data() + 4 * blocks};
            gc::detail::quant_decode(qb, want.data(), in.size(), false, cpu_isa::portable);
            gc::detail::quant_decode(qb, out.data(), in.size(), false, isa);
            ASSERT_EQ(out, want);
            std::vector<float> acc(in.size(), 0.5f), acc_want(in.size(), 0.5f);
            gc::detail::quant_decode(qb, acc_want.data(), in.size(), true, cpu_isa::portable);
            gc::detail::quant_decode(qb, acc.data(), in.size(), true, isa);
            ASSERT_EQ(acc, acc_want);
          }
        }
      }
    }
  }
}

TEST(ScalarQuant, StochasticPathsAgreeOnOddSizesAndBlocks) {
  // The AVX2 path makes the Philox words inside its loop, 32 values (8 blocks) at a time,
  // 128 where it can; runs that start or end inside such a chunk take a partial one. Every
  // size and block here leaves some partial chunk, every path must write the portable bytes.
  using gc::detail::cpu_isa;
  for (std::size_t n : {1u, 7u, 31u, 32u, 33u, 100u, 127u, 128u, 129u, 1000u, 4099u}) {
    auto in = normal_values(n, static_cast<unsigned>(n) + 17);
    if (n > 50) in[n / 2] = std::nanf("");  // policy zero: the sanitizing loops too
    for (std::uint32_t block : {1u, 3u, 7u, 31u, 32u, 33u, 100u, 128u, 256u, 300u}) {
      const std::size_t blocks = (n + block - 1) / block;
      for (unsigned bits : {1u, 2u, 3u, 5u, 8u}) {
        for (auto rule :
             {gc::detail::block_scale_rule::max_abs, gc::detail::block_scale_rule::l2_norm}) {
          const std::size_t size = 4 * blocks + gc::packed_bytes(n, bits);
          bytes ref;
          for (cpu_isa isa : {cpu_isa::portable, cpu_isa::avx2, cpu_isa::avx512}) {
            if (!gc::detail::cpu_isa_available(isa)) continue;
            bytes body(size + 32, std::byte{0xee});
            const gc::detail::quant_encode_job job{in.data(),
                                                   n,
                                                   block,
                                                   rule,
                                                   gc::nonfinite_policy::zero,
                                                   gc::philox_stream(9, 8, 7, 6),
                                                   body.data(),
                                                   body.data() + 4 * blocks,
                                                   "test",
                                                   isa};
            gc::detail::quant_encode(job, bits, true);
            for (std::size_t k = size; k < body.size(); ++k) {
              ASSERT_EQ(body[k], std::byte{0xee}) << "wrote past the body";
            }
            body.resize(size);
            if (ref.empty()) {
              ref = body;
            } else {
              ASSERT_EQ(body, ref) << "isa " << static_cast<int>(isa) << " n " << n << " block "
                                   << block << " bits " << bits;
            }
          }
        }
      }
    }
  }
}

TEST(ScalarQuant, StochasticTiesDoNotRoundUp) {
  // u == frac exactly: the value stays at the lower level (u < frac is false). Values made
  // from the stream's own words: with step 1 (a block whose max is qmax), t = x and x = u
  // gives frac = u; one bit, with step 1, x = 2u − 1 gives p = u.
  using gc::detail::cpu_isa;
  const gc::philox_stream rng(31, 4, 1, 5);
  const std::size_t n = 3000;
  for (unsigned bits : {1u, 4u, 8u}) {
    const float top = static_cast<float>(gc::scalar_quant_qmax(bits));
    std::vector<float> in(n);
    for (std::size_t i = 0; i < n; ++i) {
      const float u = gc::philox_uniform(rng.at(i));
      in[i] = i % 64 == 0 ? top : bits == 1 ? 2 * u - 1 : (i % 2 ? u : -u);
    }
    const std::size_t blocks = (n + 63) / 64, size = 4 * blocks + gc::packed_bytes(n, bits);
    for (cpu_isa isa : {cpu_isa::portable, cpu_isa::avx2, cpu_isa::avx512}) {
      if (!gc::detail::cpu_isa_available(isa)) continue;
      bytes body(size);
      const gc::detail::quant_encode_job job{in.data(),
                                             n,
                                             64,
                                             gc::detail::block_scale_rule::max_abs,
                                             gc::nonfinite_policy::reject,
                                             rng,
                                             body.data(),
                                             body.data() + 4 * blocks,
                                             "test",
                                             isa};
      gc::detail::quant_encode(job, bits, true);
      std::vector<std::uint8_t> codes(n);
      gc::unpack_bits(std::span<const std::byte>(body).subspan(4 * blocks), bits, codes);
      for (std::size_t i = 0; i < n; ++i) {
        if (i % 64 == 0) continue;
        const unsigned want = bits == 1 ? 0u : static_cast<unsigned>(gc::scalar_quant_qmax(bits));
        ASSERT_EQ(codes[i], want) << "isa " << static_cast<int>(isa) << " bits " << bits << " i "
                                  << i << " x " << in[i];
      }
    }
  }
}

#if GRADCOMM_X86_DISPATCH
TEST(ScalarQuant, AvxPhiloxRunsMatchTheStreamUpToItsEnd) {
  // The fused AVX2 loop draws words by element index; near the end of a stream (index 2^34)
  // the 32-bit block counter wraps. Runs there, and at odd offsets, against the portable
  // loop fed philox_stream::at.
  if (!gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx2)) GTEST_SKIP() << "no AVX2";
  const gc::philox_stream rng(0x123456789abcdefull, 3, 1, 4);
  const auto x = normal_values(300, 5);
  for (std::uint64_t first : {std::uint64_t{0}, std::uint64_t{5}, std::uint64_t{1} << 20,
                              (std::uint64_t{1} << 34) - 300, (std::uint64_t{1} << 34) - 129}) {
    for (std::size_t m : {1u, 31u, 32u, 100u, 128u, 129u, 300u}) {
      if (first + m > (std::uint64_t{1} << 34)) continue;
      std::vector<std::uint32_t> words(m);
      for (std::size_t k = 0; k < m; ++k) words[k] = rng.at(first + k);
      std::vector<std::uint8_t> want(m), got(m, 0xee);
      const float step = gc::scalar_quant_step(2.5f, 4);
      gc::detail::quantize_run<4, true, false>(x.data(), m, step, words.data(), want.data());
      gc::detail::quantize_run_philox_avx2<4, false>(x.data(), static_cast<std::size_t>(first), m,
                                                     step, rng, got.data());
      ASSERT_EQ(got, want) << "first " << first << " m " << m;
    }
  }
}
#endif

TEST(ScalarQuant, DecodeAddAddsTheDecodedValues) {
  const auto in = normal_values(777, 37);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    gc::scalar_quant_codec c({.bits = bits, .block = 100});
    const auto w = encode(c, in);
    const auto out = decode(c, w, in.size());
    std::vector<float> acc = normal_values(777, 41);
    const auto before = acc;
    c.decode_add(w, acc);
    for (std::size_t i = 0; i < acc.size(); ++i) ASSERT_EQ(acc[i], before[i] + out[i]) << i;
  }
}

TEST(ScalarQuant, EdgeCases) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (auto rounding : {gc::quant_rounding::nearest, gc::quant_rounding::stochastic}) {
      gc::scalar_quant_codec c({.bits = bits, .block = 16, .rounding = rounding});
      // n = 0: header and parameters only.
      const std::vector<float> none;
      const auto w0 = encode(c, none);
      EXPECT_EQ(w0.size(), 32u);
      std::vector<float> empty;
      c.decode(w0, empty);
      c.decode_add(w0, empty);
      // n = 1, and n not a multiple of the block.
      for (std::size_t n : {1u, 17u, 31u}) {
        auto in = normal_values(n, static_cast<unsigned>(n));
        const auto out = decode(c, encode(c, in), n);
        for (std::size_t i = 0; i < n; ++i) {
          const float s = parse(encode(c, in), n).scales[i / 16];
          const double bound = rounding == gc::quant_rounding::nearest ? half_spacing(s, bits)
                                                                       : 2 * half_spacing(s, bits);
          EXPECT_LE(std::fabs(out[i] - in[i]), bound + slack(in[i], out[i])) << n << " " << i;
        }
      }
      // All zeros: scale 0, exact +0 back, no 0 / 0.
      const std::vector<float> zeros(40, 0.0f);
      const auto wz = encode(c, zeros);
      for (float s : parse(wz, zeros.size()).scales) EXPECT_EQ(s, 0.0f);
      for (float v : decode(c, wz, zeros.size())) {
        EXPECT_EQ(v, 0.0f);
        EXPECT_FALSE(std::signbit(v));
      }
      // Subnormals only, and huge values: finite results within the bound.
      std::vector<float> sub{dmin, -dmin, 3 * dmin, 1e-40f, -1e-41f, 0.0f, 5e-39f};
      std::vector<float> huge{1e38f, -1e38f, fltmax, -fltmax, 3e37f, 1.0f, 0.0f};
      for (const auto& in : {sub, huge}) {
        const auto w = encode(c, in);
        const auto out = decode(c, w, in.size());
        const float s = parse(w, in.size()).scales[0];
        for (std::size_t i = 0; i < in.size(); ++i) {
          ASSERT_TRUE(std::isfinite(out[i]));
          const double bound = rounding == gc::quant_rounding::nearest ? half_spacing(s, bits)
                                                                       : 2 * half_spacing(s, bits);
          EXPECT_LE(std::fabs(static_cast<double>(out[i]) - in[i]), bound + slack(in[i], out[i]))
              << bits << " " << i << " " << in[i] << " -> " << out[i];
        }
      }
    }
  }
}

TEST(ScalarQuant, NonFinitePolicies) {
  std::vector<float> in(40, 0.25f);
  in[3] = 2.0f;
  in[21] = -inf;
  in[30] = std::nanf("");
  in[35] = inf;
  for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::pass}) {
    for (auto rounding : {gc::quant_rounding::nearest, gc::quant_rounding::stochastic}) {
      gc::scalar_quant_codec c({.bits = 4, .block = 8, .rounding = rounding, .nonfinite = policy});
      bytes w(c.max_encoded_bytes(in.size()));
      try {
        c.encode(in, w);
        FAIL() << "no throw";
      } catch (const gc::error& e) {
        EXPECT_EQ(e.code(), gc::errc::invalid_argument);
        EXPECT_NE(std::string(e.what()).find("index 21"), std::string::npos) << e.what();
      }
    }
  }
  auto nan_first = in;
  nan_first[2] = std::nanf("");
  gc::scalar_quant_codec r({.bits = 4, .block = 8});
  bytes w(r.max_encoded_bytes(in.size()));
  try {
    r.encode(nan_first, w);
    FAIL() << "no throw";
  } catch (const gc::error& e) {
    EXPECT_NE(std::string(e.what()).find("index 2"), std::string::npos) << e.what();
  }
  for (auto rounding : {gc::quant_rounding::nearest, gc::quant_rounding::stochastic}) {
    gc::scalar_quant_codec z(
        {.bits = 4, .block = 8, .rounding = rounding, .nonfinite = gc::nonfinite_policy::zero});
    const auto wz = encode(z, in);
    const auto p = parse(wz, in.size());
    EXPECT_EQ(p.scales[0], 2.0f);
    EXPECT_EQ(p.scales[2], 0.25f);  // −Inf left out of block 2's scale
    EXPECT_EQ(p.scales[3], 0.25f);
    EXPECT_EQ(p.scales[4], 0.25f);
    const auto out = decode(z, wz, in.size());
    EXPECT_EQ(out[21], 0.0f);
    EXPECT_EQ(out[30], 0.0f);
    EXPECT_EQ(out[35], 0.0f);
    for (float v : out) EXPECT_TRUE(std::isfinite(v));
  }
}

TEST(ScalarQuant, InvalidParametersAndSmallBuffers) {
  for (unsigned bits : {0u, 9u, 100u}) {
    try {
      gc::scalar_quant_codec c({.bits = bits});
      FAIL() << bits;
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("bit width"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(gc::scalar_quant_codec({.block = 0}), gc::error);
  gc::scalar_quant_codec c({.bits = 5, .block = 10});
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

// Decoders reject `w` (decoding n values) with a decode_error whose text holds `word`, and
// leave the output as it was.
void expect_rejected(const gc::scalar_quant_codec& c, const bytes& w, std::size_t n,
                     const std::string& word) {
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

// A payload built by hand: header fields and parameters as given, body as given.
bytes build(const std::vector<std::byte>& params, std::uint64_t count, const bytes& body,
            std::uint8_t codec = static_cast<std::uint8_t>(gc::codec_id::scalar_quant)) {
  bytes w(24 + params.size() + body.size());
  gc::wire_writer wr(w, "test");
  gc::write_header(wr, static_cast<gc::codec_id>(codec), gc::dtype::f32, count, params,
                   body.size());
  wr.put_bytes(body);
  return w;
}

std::vector<std::byte> sq_params(unsigned bits, unsigned rule, unsigned rounding, unsigned reserved,
                                 std::uint32_t block) {
  std::vector<std::byte> p{std::byte(bits), std::byte(rule), std::byte(rounding),
                           std::byte(reserved)};
  for (int k = 0; k < 4; ++k) p.push_back(std::byte((block >> (8 * k)) & 0xff));
  return p;
}

}  // namespace

TEST(ScalarQuant, MalformedPayloadsAreRejected) {
  const auto in = normal_values(45, 43);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    gc::scalar_quant_codec c({.bits = bits, .block = 16});
    const auto w = encode(c, in);
    const std::size_t n = in.size();
    const std::size_t blocks = 3, scales_at = 32, codes_at = 32 + 4 * blocks;
    // Every truncation.
    for (std::size_t len = 0; len < w.size(); ++len) {
      expect_rejected(c, bytes(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(len)), n,
                      "truncated");
    }
    auto longer = w;
    longer.push_back(std::byte{0});
    expect_rejected(c, longer, n, "oversized");
    expect_rejected(c, w, n + 1, "element count");
    expect_rejected(c, w, n - 1, "element count");
    auto bad = w;
    bad[0] = std::byte{'X'};
    expect_rejected(c, bad, n, "magic");
    bad = w;
    bad[4] = std::byte{2};
    expect_rejected(c, bad, n, "version");
    bad = w;
    bad[5] = std::byte{static_cast<unsigned char>(gc::codec_id::ternary)};
    expect_rejected(c, bad, n, "codec");
    bad = w;
    bad[6] = std::byte{static_cast<unsigned char>(gc::dtype::f16)};
    expect_rejected(c, bad, n, "dtype");
    bad = w;
    bad[6] = std::byte{99};
    expect_rejected(c, bad, n, "dtype");
    const bytes body(w.begin() + 32, w.end());
    for (unsigned b : {0u, 9u, 16u, 255u}) {
      expect_rejected(c, build(sq_params(b, 0, 0, 0, 16), n, body), n, "bad bit width");
    }
    expect_rejected(c, build(sq_params(bits, 2, 0, 0, 16), n, body), n, "bad scale rule");
    expect_rejected(c, build(sq_params(bits, 0, 2, 0, 16), n, body), n, "bad rounding");
    expect_rejected(c, build(sq_params(bits, 0, 0, 1, 16), n, body), n, "reserved");
    expect_rejected(c, build(sq_params(bits, 0, 0, 0, 0), n, body), n, "block size 0");
    expect_rejected(c, build(sq_params(bits, 0, 0, 0, 8), n, body), n, "body of");
    auto short_params = sq_params(bits, 0, 0, 0, 16);
    short_params.pop_back();
    expect_rejected(c, build(short_params, n, body), n, "parameter bytes");
    // A body that disagrees with its parameters.
    auto shorter = body;
    shorter.pop_back();
    expect_rejected(c, build(sq_params(bits, 0, 0, 0, 16), n, shorter), n, "body of");
    // Scales: negative, −0, NaN, ±Inf.
    for (float s : {-1.0f, -0.0f, std::nanf(""), inf, -inf}) {
      bad = w;
      std::memcpy(bad.data() + scales_at + 4, &s, 4);  // block 1
      expect_rejected(c, bad, n, std::isfinite(s) ? "negative scale" : "non-finite scale");
      expect_rejected(c, bad, n, "block 1");
    }
    // Codes: 2^b − 1 has no level (b >= 2), and padding bits must be zero.
    if (bits >= 2) {
      for (std::size_t i : {0u, 9u, 44u}) {
        bad = w;
        for (unsigned t = 0; t < bits; ++t) {
          const std::size_t k = i * bits + t;
          bad[codes_at + k / 8] |= std::byte{1} << (k % 8);
        }
        expect_rejected(c, bad, n, "out of range");
        expect_rejected(c, bad, n, "index " + std::to_string(i));
      }
    }
    if (n * bits % 8 != 0) {
      bad = w;
      bad.back() |= std::byte{0x80};
      expect_rejected(c, bad, n, "padding");
    }
  }
}

TEST(ScalarQuant, BitFlipsAreRejectedOrDecodeInBounds) {
  // No checksum: a flipped code or scale bit may still be a valid payload. Every flip
  // either throws decode_error (before writing) or decodes to finite values; a flip in
  // the header or parameters always throws, except in the two informational parameter
  // bytes (scale rule, rounding), which decode the same, and in the block size, where a
  // block size with as many blocks is a valid payload.
  const auto in = normal_values(37, 47);
  for (unsigned bits : {1u, 3u, 8u}) {
    gc::scalar_quant_codec c({.bits = bits, .block = 16});
    const auto w = encode(c, in);
    const auto good = decode(c, w, in.size());
    for (std::size_t k = 0; k < 8 * w.size(); ++k) {
      auto bad = w;
      bad[k / 8] ^= std::byte{1} << (k % 8);
      std::vector<float> out(in.size(), 42.0f);
      try {
        c.decode(bad, out);
        ASSERT_TRUE(k / 8 >= 25 && k / 8 != 27) << "header flip accepted: " << k;
        if (k / 8 == 25 || k / 8 == 26) {
          ASSERT_EQ(out, good);
        }
        for (float v : out) ASSERT_TRUE(std::isfinite(v));
      } catch (const gc::decode_error&) {
        for (float v : out) ASSERT_EQ(v, 42.0f);
      }
    }
  }
}

namespace {

// Finite inputs at the top of f32's range: ±FLT_MAX alternating, ±3e38, magnitudes spread
// up to 3e38, and mixtures with ordinary values (in one block, and block by block).
std::vector<std::vector<float>> near_the_float_range(std::size_t n) {
  std::vector<std::vector<float>> out;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 2 ? -fltmax : fltmax;
  out.push_back(v);
  const auto g = normal_values(n, 91);
  for (std::size_t i = 0; i < n; ++i) v[i] = g[i] < 0 ? -3e38f : 3e38f;
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::clamp(g[i] * 1.5e38f, -3e38f, 3e38f);
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 37 == 5 ? (i % 2 ? -fltmax : 3e38f) : g[i];
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = i / 64 % 2 ? std::clamp(g[i] * 5e37f, -3e38f, 3e38f) : g[i];
  }
  out.push_back(v);
  return out;
}

}  // namespace

TEST(ScalarQuant, FiniteInputNearTheFloatRangeDecodesFinite) {
  // The step keeps qmax × step <= FLT_MAX (scalar_quant_step), so the largest scale a
  // payload may carry, FLT_MAX, still decodes finite: every width, rule and rounding.
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (auto rule : {gc::quant_scale::max_abs, gc::quant_scale::l2_norm}) {
      for (auto rounding : {gc::quant_rounding::nearest, gc::quant_rounding::stochastic}) {
        for (std::uint32_t block : {8u, 256u}) {
          gc::scalar_quant_codec c(
              {.bits = bits, .block = block, .scale = rule, .rounding = rounding});
          c.set_stream({.seed = 5});
          for (const auto& in : near_the_float_range(1000)) {
            SCOPED_TRACE(testing::Message() << bits << " bits, rule " << static_cast<int>(rule)
                                            << ", block " << block << ", input " << in[0]);
            const bytes w = encode(c, in);
            const auto out = decode(c, w, in.size());
            std::vector<float> sum(in.size(), 0.0f);
            c.decode_add(w, sum);
            for (std::size_t i = 0; i < in.size(); ++i) {
              ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(sum[i])) << i;
            }
          }
        }
      }
    }
  }
}

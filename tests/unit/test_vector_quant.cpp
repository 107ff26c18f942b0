// Vector quantization: the tree search against brute force, every path against the
// portable one, the error against scalar quantization at the same bits a value, edge cases,
// non-finite policies, the learned codebook's schedule and state, and malformed payloads.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/vector_quant.hpp>

#include "../support/workspace.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::Codec<gc::vq_gaussian_codec>);
static_assert(gc::Codec<gc::vq_learned_codec>);
static_assert(!gc::vq_gaussian_codec::traits.linear && gc::vq_gaussian_codec::traits.fixed_size &&
              !gc::vq_gaussian_codec::traits.stateful);
static_assert(!gc::vq_learned_codec::traits.linear && gc::vq_learned_codec::traits.fixed_size &&
              gc::vq_learned_codec::traits.stateful);
static_assert(gc::vq_gaussian_codec::id == gc::codec_id::vector_quant);
static_assert(std::is_same_v<gc::vector_quant_codec<>, gc::vq_gaussian_codec>);
static_assert(gc::Codec<gc::error_feedback<gc::vq_learned_codec>>);

constexpr unsigned dims[] = {2, 4, 8};

std::vector<float> gaussian(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

std::vector<float> laplace(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::exponential_distribution<float> e(1.0f);
  std::bernoulli_distribution s;
  std::vector<float> v(n);
  for (auto& x : v) x = s(gen) ? e(gen) : -e(gen);
  return v;
}

template <class C>
std::vector<std::byte> encode(C& c, const std::vector<float>& in) {
  std::vector<std::byte> wire(c.max_encoded_bytes(in.size()));
  EXPECT_EQ(c.encode(in, wire), wire.size());
  return wire;
}

std::vector<float> decode(const std::vector<std::byte>& wire, std::size_t n) {
  std::vector<float> out(n, -7.0f);
  gc::vq_gaussian_codec().decode(wire, out);
  return out;
}

double mse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = static_cast<double>(a[i]) - b[i];
    s += e * e;
  }
  return a.empty() ? 0 : s / static_cast<double>(a.size());
}

double dist2(const float* a, const float* b, unsigned d) {
  double s = 0;
  for (unsigned k = 0; k < d; ++k) s += (static_cast<double>(a[k]) - b[k]) * (a[k] - b[k]);
  return s;
}

// The portable encode loop (no AVX2), for comparison with what the codec runs.
std::vector<std::byte> encode_portable(const gc::vq_gaussian_codec& c,
                                       const std::vector<float>& in) {
  auto wire = encode(c, in);
  const unsigned dim = c.params().dim;
  const std::size_t block = c.params().block, n = in.size();
  const std::size_t nb = (n + block - 1) / block;
  std::byte* scales = wire.data() + gc::wire_header_bytes + 8;
  auto* codes = reinterpret_cast<std::uint8_t*>(scales + 4 * nb);
  std::fill(scales, wire.data() + wire.size(), std::byte{0xee});
  gc::detail::with_vq_dim(dim, [&]<int D>() {
    EXPECT_EQ(gc::detail::vq_encode_blocks<D>(in.data(), n, block, 0,
                                              gc::detail::vq_gaussian_tables(dim), scales, codes),
              nb);
  });
  return wire;
}

// Symmetric per-block max-abs scalar quantization with `bits` bits a value (and an f32 scale
// a block, as VQ's): the references VQ must beat at the same bits a value.
//  - midrise: 2^b levels, (q + 1/2) · 2m / 2^b − m (symmetric, no zero level; 1 bit: ±m/2);
//  - seed: the seed's formula, round(x · 2^(b−1) / m) clamped to [−2^(b−1), 2^(b−1) − 1];
//  - midtread: 2^b − 1 levels q · m / (2^(b−1) − 1), q in ±(2^(b−1) − 1) (b ≥ 2), which is
//    also codec/quantize.hpp's max-abs nearest rounding.
enum class scalar_kind { midrise, seed, midtread };
std::vector<float> scalar_quantize(const std::vector<float>& x, unsigned bits, scalar_kind kind) {
  std::vector<float> out(x.size());
  const double half = std::ldexp(1.0, static_cast<int>(bits) - 1);
  for (std::size_t b = 0; b < x.size(); b += 256) {
    const std::size_t e = std::min(x.size(), b + 256);
    double m = 0;
    for (std::size_t i = b; i < e; ++i) m = std::max(m, std::fabs(double{x[i]}));
    for (std::size_t i = b; i < e; ++i) {
      if (m == 0) {
        out[i] = 0;
        continue;
      }
      const double v = x[i] / m;
      double q = 0;
      switch (kind) {
        case scalar_kind::midrise:
          q = std::clamp(std::floor((v + 1) * half), 0.0, 2 * half - 1);
          out[i] = static_cast<float>(m * ((q + 0.5) / half - 1));
          break;
        case scalar_kind::seed:
          q = std::clamp(std::nearbyint(v * half), -half, half - 1);
          out[i] = static_cast<float>(q * m / half);
          break;
        case scalar_kind::midtread:
          q = std::nearbyint(v * (half - 1));
          out[i] = static_cast<float>(q * m / (half - 1));
          break;
      }
    }
  }
  return out;
}

std::string defect(const std::vector<std::byte>& wire, std::size_t n, bool add = false) {
  std::vector<float> out(n, 5.0f);
  try {
    if (add) {
      gc::vq_gaussian_codec().decode_add(wire, out);
    } else {
      gc::vq_gaussian_codec().decode(wire, out);
    }
  } catch (const gc::decode_error& e) {
    for (float v : out) EXPECT_EQ(v, 5.0f) << "a rejected payload wrote the output";
    return e.what();
  }
  return "";
}

// Finite inputs at the top of f32's range, n values each: ±FLT_MAX alternating, ±3e38,
// magnitudes spread up to 3e38, and mixtures of those with ordinary values (in one block,
// and block by block).
std::vector<std::vector<float>> near_the_float_range(std::size_t n) {
  constexpr float top = std::numeric_limits<float>::max();
  std::vector<std::vector<float>> out;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 2 ? -top : top;
  out.push_back(v);
  const auto g = gaussian(n, 91);
  for (std::size_t i = 0; i < n; ++i) v[i] = g[i] < 0 ? -3e38f : 3e38f;
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::clamp(g[i] * 1.5e38f, -3e38f, 3e38f);
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 37 == 5 ? (i % 2 ? -top : 3e38f) : g[i];
  out.push_back(v);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = i / 64 % 2 ? std::clamp(g[i] * 5e37f, -3e38f, 3e38f) : g[i];
  out.push_back(v);
  return out;
}

// The largest float s with s × m <= FLT_MAX in exact arithmetic (f32 × f32 is exact in
// double), by bisection on the bits: the bound a decoder must hold scales to.
float largest_safe_scale(float m) {
  constexpr double top = std::numeric_limits<float>::max();
  std::uint32_t lo = 0, hi = 0x7f7fffffu;  // lo safe; find the last safe
  auto safe = [&](std::uint32_t u) {
    float s;
    std::memcpy(&s, &u, 4);
    return static_cast<double>(s) * m <= top;
  };
  if (safe(hi)) return std::numeric_limits<float>::max();
  while (hi - lo > 1) {
    const std::uint32_t mid = lo + (hi - lo) / 2;
    (safe(mid) ? lo : hi) = mid;
  }
  float s;
  std::memcpy(&s, &lo, 4);
  return s;
}

float largest_coordinate(const float* rows, std::size_t count) {
  float m = 0.0f;
  for (std::size_t i = 0; i < count; ++i) m = std::max(m, std::fabs(rows[i]));
  return m;
}

template <class C>
std::vector<std::byte> saved(const C& c) {
  std::vector<std::byte> s(c.state_bytes());
  s.resize(c.save_state(s));
  return s;
}

}  // namespace

class VectorQuant : public ::testing::TestWithParam<unsigned> {};
// Names d2, d4, d8. (Not "d" + std::to_string: GCC 12 warns -Wrestrict on that at -O3.)
INSTANTIATE_TEST_SUITE_P(Dims, VectorQuant, ::testing::ValuesIn(dims), [](const auto& i) {
  return std::string(i.param == 2 ? "d2" : i.param == 4 ? "d4" : "d8");
});

TEST_P(VectorQuant, TreeSearchFindsTheNearestChildOfTheNearestCentroid) {
  const unsigned d = GetParam();
  const gc::vq_tree& tree = gc::detail::vq_gaussian(d);
  const auto& t = gc::detail::vq_gaussian_tables(d);
  const auto y = gaussian(20000 * d, 3, 1.3f);
  std::size_t agree = 0;
  gc::detail::with_vq_dim(d, [&]<int D>() {
    for (std::size_t g = 0; g < y.size() / D; ++g) {
      const float* p = &y[g * D];
      const unsigned code = gc::vq_nearest<D>(p, t);
      ASSERT_LT(code, 256u);
      // In double: the nearest centroid, then its nearest child. The float search may
      // differ only where two distances are within rounding of each other.
      unsigned ci = 0;
      for (unsigned i = 1; i < 16; ++i) {
        if (dist2(p, tree.centroid(i), D) < dist2(p, tree.centroid(ci), D)) ci = i;
      }
      unsigned cj = 0;
      for (unsigned j = 1; j < 16; ++j) {
        if (dist2(p, tree.codeword(16 * ci + j), D) < dist2(p, tree.codeword(16 * ci + cj), D)) {
          cj = j;
        }
      }
      const unsigned want = 16 * ci + cj;
      if (code == want) {
        ++agree;
        continue;
      }
      const double tol = 1e-5 * (1 + dist2(p, tree.codeword(want), D));
      ASSERT_NEAR(dist2(p, tree.centroid(code / 16), D), dist2(p, tree.centroid(ci), D), tol);
    }
  });
  EXPECT_GT(agree, y.size() / d * 999 / 1000);
}

TEST_P(VectorQuant, EveryPathPicksTheSameCodes) {
  const unsigned d = GetParam();
  const gc::vq_gaussian_codec codec({.dim = d, .block = 64});
  // Gaussian and heavy-tailed data, a ragged tail, a group sitting on a codeword (distance
  // 0, where rounding can go below zero) and a far outlier.
  auto in = gaussian(4096 + 3, 5);
  const auto lap = laplace(2048, 6);
  in.insert(in.end(), lap.begin(), lap.end());
  std::vector<float> exact(64, 0.0f);
  for (unsigned k = 0; k < d; ++k) exact[k] = gc::detail::vq_gaussian(d).codeword(77)[k];
  in.insert(in.begin(), exact.begin(), exact.end());
  in[200] = 1e6f;
  const auto wire = encode(codec, in);
  EXPECT_EQ(wire, encode_portable(codec, in));
  // The scalar search against the AVX2 and AVX-512 ones, group by group, one or several
  // registers of groups at a time.
  if (gc::detail::cpu_runs(gc::detail::cpu_isa::avx2)) {
    const auto& t = gc::detail::vq_gaussian_tables(d);
    const auto y = gaussian(8 * 4096, 9, 2.0f);
    const bool avx512 = gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx512);
    gc::detail::with_vq_dim(d, [&]<int D>() {
      for (std::size_t g = 0; g + 64 <= y.size() / D; g += 64) {
        std::uint8_t want[64], got[64];
        for (unsigned l = 0; l < 64; ++l) {
          const float* p = &y[(g + l) * D];
          want[l] = gc::vq_nearest<D>(p, t);
          ASSERT_EQ(gc::detail::vq_nearest_avx2_call<D>(p, t), want[l]) << g + l;
        }
        gc::detail::vq_encode8_avx2_call<D>(&y[g * D], 1.0f, t, got);
        gc::detail::vq_encode8_avx2_call<D, 2>(&y[(g + 8) * D], 1.0f, t, got + 8);
        ASSERT_TRUE(std::equal(got, got + 24, want)) << "avx2, groups from " << g;
        if (avx512) {
          gc::detail::vq_encode16_avx512_call<D>(&y[g * D], 1.0f, t, got);
          gc::detail::vq_encode16_avx512_call<D, 2>(&y[(g + 16) * D], 1.0f, t, got + 16);
          ASSERT_TRUE(std::equal(got, got + 48, want)) << "avx512, groups from " << g;
          gc::detail::vq_encode16_avx512_call<D, 4>(&y[g * D], 1.0f, t, got);
          ASSERT_TRUE(std::equal(got, got + 64, want)) << "avx512 x4, groups from " << g;
        }
      }
    });
  }
}

TEST_P(VectorQuant, EveryBlockLoopWritesThePortableBytes) {
  // The AVX2 and AVX-512 block loops take groups 64, 32, 16 and 8 at a time, then one by
  // one, and the last partial group; blocks and sizes here leave every kind of remainder,
  // blocks whose RMS is outside f32's normal range (normalized in double, one by one), and a
  // non-finite block where the loops stop.
  const unsigned d = GetParam();
  auto in = gaussian(20000 + 5, 21);
  for (std::size_t i = 3000; i < 3100; ++i) in[i] *= 1e-40f;                 // RMS subnormal
  for (std::size_t i = 5000; i < 5400; ++i) in[i] = i % 3 ? 3e38f : -2e38f;  // RMS above 2^126
  in[15000] = std::numeric_limits<float>::infinity();
  for (std::uint32_t block : {8u, 24u, 64u, 136u, 256u, 1000u, 4096u}) {
    if (block % d != 0) continue;
    for (std::size_t n :
         {std::size_t{7}, std::size_t{block}, std::size_t{block} * 3 + d + 1, in.size()}) {
      const std::size_t nb = (n + block - 1) / block;
      const auto& t = gc::detail::vq_gaussian_tables(d);
      gc::detail::with_vq_dim(d, [&]<int D>() {
        // Blocks up to the first non-finite one (left unwritten), then the rest.
        const auto run = [&](auto loop) {
          std::vector<std::byte> scales(4 * nb);
          std::vector<std::uint8_t> codes((n + D - 1) / D);
          const std::size_t stop = loop(0, scales.data(), codes.data());
          if (stop < nb) {
            EXPECT_EQ(loop(stop + 1, scales.data(), codes.data()), nb);
          }
          return std::make_pair(scales, codes);
        };
        const auto want = run([&](std::size_t first, std::byte* sc, std::uint8_t* co) {
          return gc::detail::vq_encode_blocks<D>(in.data(), n, block, first, t, sc, co);
        });
        if (!gc::detail::cpu_runs(gc::detail::cpu_isa::avx2)) return;
        EXPECT_EQ(run([&](std::size_t first, std::byte* sc, std::uint8_t* co) {
                    return gc::detail::vq_encode_blocks_avx2<D>(in.data(), n, block, first, t, sc,
                                                                co);
                  }),
                  want)
            << "avx2, block " << block << " n " << n;
        if (!gc::detail::cpu_isa_available(gc::detail::cpu_isa::avx512)) return;
        EXPECT_EQ(run([&](std::size_t first, std::byte* sc, std::uint8_t* co) {
                    return gc::detail::vq_encode_blocks_avx512<D>(in.data(), n, block, first, t, sc,
                                                                  co);
                  }),
                  want)
            << "avx512, block " << block << " n " << n;
      });
    }
  }
}

TEST_P(VectorQuant, DecodesScaleTimesCodeword) {
  const unsigned d = GetParam();
  const gc::vq_gaussian_codec codec({.dim = d, .block = 128});
  const auto in = gaussian(1000, 2, 3.0f);  // 8 blocks, the last one short; groups too
  const auto wire = encode(codec, in);
  const std::size_t nb = (in.size() + 127) / 128;
  ASSERT_EQ(wire.size(), gc::wire_header_bytes + 8 + 4 * nb + (in.size() + d - 1) / d);
  const auto out = decode(wire, in.size());
  const std::byte* scales = wire.data() + gc::wire_header_bytes + 8;
  const auto* codes = reinterpret_cast<const std::uint8_t*>(scales + 4 * nb);
  for (std::size_t i = 0; i < in.size(); ++i) {
    float s;
    std::memcpy(&s, scales + 4 * (i / 128), 4);
    ASSERT_EQ(out[i], s * gc::detail::vq_gaussian(d).codeword(codes[i / d])[i % d]) << i;
  }
  // The scale is the block's RMS.
  for (std::size_t b = 0; b < nb; ++b) {
    double ss = 0;
    const std::size_t e = std::min(in.size(), 128 * b + 128);
    for (std::size_t i = 128 * b; i < e; ++i) ss += double{in[i]} * in[i];
    float s;
    std::memcpy(&s, scales + 4 * b, 4);
    EXPECT_FLOAT_EQ(s, static_cast<float>(std::sqrt(ss / static_cast<double>(e - 128 * b))));
  }
  std::vector<float> acc(in.size(), 0.5f);
  codec.decode_add(wire, acc);
  for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(acc[i], 0.5f + out[i]) << i;
}

TEST(VectorQuant, BeatsScalarQuantizationAtTheSameBits) {
  // Gaussian data, blocks of 256 with an f32 scale each for every quantizer: 8/d + 1/8 bits a
  // value for VQ, b + 1/8 for scalar. MSE relative to the data's variance.
  const auto x = gaussian(1 << 20, 1);
  double var = 0;
  for (float v : x) var += double{v} * v;
  var /= static_cast<double>(x.size());
  std::printf(
      "bits/value  VQ(d)          VQ learned     scalar midrise  scalar seed  scalar midtread\n");
  for (unsigned bits : {1u, 2u, 4u}) {
    const unsigned d = 8 / bits;
    gc::vq_gaussian_codec vq({.dim = d});
    const double e_vq = mse(decode(encode(vq, x), x.size()), x) / var;
    gc::vq_learned_codec learned({.dim = d});
    const double e_learned = mse(decode(encode(learned, x), x.size()), x) / var;
    const double e_mid = mse(scalar_quantize(x, bits, scalar_kind::midrise), x) / var;
    const double e_seed = mse(scalar_quantize(x, bits, scalar_kind::seed), x) / var;
    // Mid-tread has no 1-bit form (its levels would be 0 alone).
    const double e_tread = bits >= 2 ? mse(scalar_quantize(x, bits, scalar_kind::midtread), x) / var
                                     : std::numeric_limits<double>::infinity();
    std::printf("%u + 0.125   %.5f (d=%u)  %.5f        %.5f         %.5f      %.5f\n", bits, e_vq,
                d, e_learned, e_mid, e_seed, e_tread);
    EXPECT_LT(e_vq, e_mid) << bits;
    EXPECT_LT(e_vq, e_seed) << bits;
    EXPECT_LT(e_vq, e_tread) << bits;
    // And below the best any scalar quantizer does on a Gaussian (Lloyd–Max: 0.3634,
    // 0.1175, 0.009497 at 1, 2, 4 bits), at the same bits.
    const double lloyd_max = bits == 1 ? 0.3634 : bits == 2 ? 0.1175 : 0.009497;
    EXPECT_LT(e_vq, lloyd_max) << bits;
    EXPECT_LT(e_learned, lloyd_max) << bits;
    RecordProperty("vq_mse_" + std::to_string(bits) + "bit", std::to_string(e_vq));
  }
}

TEST_P(VectorQuant, EdgeCases) {
  const unsigned d = GetParam();
  const gc::vq_gaussian_codec codec({.dim = d});
  // n = 0: header and parameters only.
  EXPECT_EQ(encode(codec, {}).size(), gc::wire_header_bytes + 8);
  EXPECT_TRUE(decode(encode(codec, {}), 0).empty());
  // n = 1 and a partial group: the missing coordinates are zeros.
  for (std::size_t n : {1u, 3u, 5u, 257u}) {
    const auto in = gaussian(n, 7 + static_cast<unsigned>(n));
    const auto out = decode(encode(codec, in), n);
    for (std::size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(out[i]));
  }
  // All zeros: scale 0, no 0/0, zeros back.
  std::vector<float> zeros(600, 0.0f);
  for (float v : decode(encode(codec, zeros), zeros.size())) ASSERT_EQ(v, 0.0f);
  // f32 subnormals (normalized in double) and huge values: the same relative error as
  // ordinary data, all finite.
  const auto base = gaussian(1024, 8);
  for (float scale : {1e-40f / 4, 1e-39f, 1e-30f, 1.0f, 1e30f, 1e37f}) {
    std::vector<float> in(base.size());
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = base[i] * scale;
    const auto out = decode(encode(codec, in), in.size());
    double e = 0, s = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out[i])) << scale;
      e += (double{out[i]} - in[i]) * (double{out[i]} - in[i]);
      s += double{in[i]} * in[i];
    }
    const double rel = e / s;
    const double bound = d == 2 ? 0.02 : d == 4 ? 0.15 : 0.45;
    EXPECT_LT(rel, scale < 1e-38f ? 0.6 : bound) << "scale " << scale;  // subnormals: 2^-149 steps
  }
  // One huge outlier among small values: the others keep their scale's precision.
  auto spike = gaussian(256, 9);
  spike[17] = 1e20f;
  const auto out = decode(encode(codec, spike), spike.size());
  EXPECT_GT(out[17], 1e18f);
  EXPECT_TRUE(std::isfinite(out[17]));
}

TEST_P(VectorQuant, NonFinitePolicies) {
  const unsigned d = GetParam();
  auto in = gaussian(1000, 4);
  in[300] = std::nanf("");
  in[700] = -std::numeric_limits<float>::infinity();
  for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::pass}) {
    gc::vq_gaussian_codec c({.dim = d, .nonfinite = policy});
    std::vector<std::byte> wire(c.max_encoded_bytes(in.size()));
    try {
      c.encode(in, wire);
      FAIL() << "expected a throw";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("index 300"), std::string::npos) << e.what();
    }
  }
  gc::vq_gaussian_codec zero({.dim = d, .nonfinite = gc::nonfinite_policy::zero});
  auto zeroed = in;
  zeroed[300] = zeroed[700] = 0.0f;
  EXPECT_EQ(encode(zero, in), encode(zero, zeroed));
  // The learned codec rejects before it learns anything.
  gc::vq_learned_codec learned({.dim = d});
  const auto before = saved(learned);
  std::vector<std::byte> wire(learned.max_encoded_bytes(in.size()));
  EXPECT_THROW(learned.encode(in, wire), gc::error);
  EXPECT_EQ(saved(learned), before);
  gc::vq_learned_codec learned_zero({.dim = d, .nonfinite = gc::nonfinite_policy::zero});
  gc::vq_learned_codec learned_zeroed({.dim = d});
  EXPECT_EQ(encode(learned_zero, in), encode(learned_zeroed, zeroed));
}

TEST(VectorQuant, RejectsBadParameters) {
  for (gc::vector_quant_params p :
       {gc::vector_quant_params{.dim = 3}, gc::vector_quant_params{.dim = 16},
        gc::vector_quant_params{.dim = 8, .block = 12}, gc::vector_quant_params{.block = 4},
        gc::vector_quant_params{.block = 65540}, gc::vector_quant_params{.refresh_interval = 0}}) {
    try {
      gc::vq_learned_codec c(p);
      FAIL() << "no throw for dim " << p.dim << " block " << p.block;
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    }
  }
  std::vector<float> in(100, 1.0f);
  std::vector<std::byte> wire(gc::vq_gaussian_codec().max_encoded_bytes(100) - 1);
  try {
    gc::vq_gaussian_codec().encode(in, wire);
    FAIL();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
  }
}

TEST(VectorQuant, AnyCodecDecodesAnyPayload) {
  const auto in = gaussian(999, 12);
  gc::vq_gaussian_codec d8({.dim = 8, .block = 512});
  gc::vq_learned_codec l2({.dim = 2});
  for (const auto& wire : {encode(d8, in), encode(l2, in)}) {
    std::vector<float> a(in.size()), b(in.size());
    d8.decode(wire, a);
    l2.decode(wire, b);
    EXPECT_EQ(a, b);
  }
}

TEST_P(VectorQuant, LearnedCodebookRefreshesOnSchedule) {
  const unsigned d = GetParam();
  gc::vq_learned_codec c({.dim = d, .refresh_interval = 3});
  EXPECT_EQ(c.carried_codebook_bytes(), 1024u * d);
  const auto x = laplace(1 << 14, 1);
  std::vector<std::vector<float>> books;
  for (int call = 0; call < 7; ++call) {
    const auto wire = encode(c, x);
    const auto& t = c.codebook();
    books.emplace_back(t.fine.begin(), t.fine.begin() + 256 * d);
    // The payload carries the codebook in use, code 0 first.
    ASSERT_EQ(wire[gc::wire_header_bytes + 2], std::byte{1});
    EXPECT_EQ(std::memcmp(wire.data() + gc::wire_header_bytes + 8, t.fine.data(), 1024 * d), 0);
    EXPECT_EQ(c.calls(), static_cast<std::uint64_t>(call + 1));
  }
  // Learned at calls 0, 3 and 6 (warm-started, so each refresh moves it a little more).
  const std::vector<float> gauss(gc::detail::vq_gaussian(d).fine.begin(),
                                 gc::detail::vq_gaussian(d).fine.begin() + 256 * d);
  EXPECT_NE(books[0], gauss);
  EXPECT_EQ(books[1], books[0]);
  EXPECT_EQ(books[2], books[0]);
  EXPECT_NE(books[3], books[2]);
  EXPECT_EQ(books[5], books[3]);
  EXPECT_NE(books[6], books[5]);
}

TEST_P(VectorQuant, WorkspaceEncodeGivesTheSameBytes) {
  const unsigned d = GetParam();
  // The built-in codebook's search needs no scratch.
  const gc::vq_gaussian_codec g({.dim = d});
  EXPECT_EQ(g.workspace_bytes(1 << 16), 0u);
  EXPECT_EQ(gc::workspace_bytes(g, 1 << 16), 0u);
  const auto x = laplace(5000, 2);
  std::vector<std::byte> a(g.max_encoded_bytes(x.size())), b(a.size());
  EXPECT_EQ(g.encode(x, a), g.encode(x, b, std::span<std::byte>{}));
  EXPECT_EQ(a, b);
  // The learned one's refresh: sums, counts and samples, at most vq_learn_samples groups.
  for (const std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{4099}, std::size_t{1} << 17}) {
    gc::vq_learned_codec own({.dim = d, .refresh_interval = 2}),
        given({.dim = d, .refresh_interval = 2});
    const std::size_t need = given.workspace_bytes(n);
    const std::size_t groups = (n + d - 1) / d;
    EXPECT_EQ(need, n == 0 ? 0
                           : alignof(gc::detail::vq_learn_scratch) - 1 +
                                 sizeof(gc::detail::vq_learn_scratch) +
                                 4 * d * std::min<std::size_t>(groups, gc::vq_learn_samples));
    EXPECT_EQ(gc::workspace_bytes(given, n), need);
    std::vector<std::byte> ws(need + 8);
    for (std::size_t call = 0; call < 5; ++call) {
      const auto in = laplace(n, 10 + static_cast<unsigned>(call));
      std::vector<std::byte> p(own.max_encoded_bytes(n)), q(p.size());
      p.resize(own.encode(in, p));
      // Another offset each call: the bytes do not depend on the workspace's address.
      q.resize(given.encode(in, q, std::span<std::byte>(ws.data() + call, need)));
      EXPECT_EQ(p, q) << "n " << n << ", call " << call;
      EXPECT_EQ(saved(own), saved(given));
    }
  }
}

TEST_P(VectorQuant, TooSmallAWorkspaceThrowsNamingBothSizes) {
  gc::vq_learned_codec c({.dim = GetParam()});
  const auto before = saved(c);
  expect_small_workspace_refused(c, std::span<const float>(laplace(3000, 4)));
  EXPECT_EQ(saved(c), before) << "a refused call changes nothing";
}

TEST_P(VectorQuant, LearnedCodebookFitsOtherDistributions) {
  // Heavy tails (Laplace) and a lopsided mixture: the learned codebook beats the Gaussian one.
  const unsigned d = GetParam();
  auto mix = gaussian(1 << 16, 5);
  for (std::size_t i = 0; i < mix.size(); ++i) mix[i] = i % 3 == 0 ? 4 + mix[i] : 0.3f * mix[i];
  for (const auto& x : {laplace(1 << 16, 3), mix}) {
    gc::vq_gaussian_codec g({.dim = d});
    gc::vq_learned_codec l({.dim = d});
    const double eg = mse(decode(encode(g, x), x.size()), x);
    encode(l, x);  // learns
    const double el = mse(decode(encode(l, x), x.size()), x);
    EXPECT_LT(el, eg) << "d " << d;
  }
}

TEST_P(VectorQuant, LearnedStateRoundTrips) {
  const unsigned d = GetParam();
  gc::vq_learned_codec a({.dim = d, .refresh_interval = 2});
  const auto x = laplace(5000, 8);
  encode(a, x);
  const auto state = saved(a);
  ASSERT_EQ(state.size(), a.state_bytes());
  ASSERT_EQ(state.size(), 16 + 4 * 272 * d);
  gc::vq_learned_codec b({.dim = d, .refresh_interval = 2});
  b.load_state(state);
  EXPECT_EQ(saved(b), state);
  EXPECT_EQ(b.calls(), 1u);
  // The same next payloads (call 1: no refresh; call 2: a refresh from the same start).
  const auto y = gaussian(3000, 9);
  EXPECT_EQ(encode(a, y), encode(b, y));
  EXPECT_EQ(encode(a, x), encode(b, x));
  // Small buffer.
  std::vector<std::byte> small(a.state_bytes() - 1);
  EXPECT_THROW(a.save_state(small), gc::error);
}

TEST_P(VectorQuant, MalformedStatesAreRejected) {
  const unsigned d = GetParam();
  gc::vq_learned_codec c({.dim = d});
  encode(c, laplace(3000, 2));
  const auto good = saved(c);
  auto expect_defect = [&](const std::vector<std::byte>& s, const std::string& word) {
    gc::vq_learned_codec t({.dim = d});
    const auto before = saved(t);
    try {
      t.load_state(s);
      ADD_FAILURE() << "no throw for " << word;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
    EXPECT_EQ(saved(t), before) << "a rejected state changed the codec";
  };
  for (std::size_t len = 0; len < good.size(); len += (len < 40 ? 1 : 97)) {
    expect_defect(
        std::vector<std::byte>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len)),
        "truncated");
  }
  auto s = good;
  s.push_back(std::byte{0});
  expect_defect(s, "oversized");
  s = good;
  s[0] = std::byte{'X'};
  expect_defect(s, "magic");
  s = good;
  s[4] = std::byte{2};
  expect_defect(s, "version");
  s = good;
  s[5] = std::byte{static_cast<unsigned char>(d == 2 ? 4 : 2)};
  expect_defect(s, "dim");
  s = good;
  s[6] = std::byte{1};
  expect_defect(s, "reserved");
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), 1e6f}) {
    s = good;
    std::memcpy(s.data() + 16 + 4 * (16 * d + 5), &bad, 4);
    expect_defect(s, "codeword coordinate 5");
    s = good;
    std::memcpy(s.data() + 16 + 4, &bad, 4);
    expect_defect(s, "coarse centroid coordinate 1");
  }
}

TEST_P(VectorQuant, MalformedPayloadsAreRejected) {
  const unsigned d = GetParam();
  const std::size_t n = 100;
  gc::vq_gaussian_codec codec({.dim = d, .block = 32});
  const auto wire = encode(codec, gaussian(n, 3));
  gc::vq_learned_codec lc({.dim = d, .block = 32});
  const auto carried = encode(lc, gaussian(n, 3));
  const std::size_t p = gc::wire_header_bytes;  // parameters
  auto expect_defect = [&](const std::vector<std::byte>& bytes, std::size_t count,
                           const std::string& word) {
    for (bool add : {false, true}) {
      const std::string w = defect(bytes, count, add);
      EXPECT_NE(w.find(word), std::string::npos) << "want \"" << word << "\", got \"" << w << "\"";
    }
  };
  for (const auto* w : {&wire, &carried}) {
    for (std::size_t len = 0; len < w->size(); ++len) {
      expect_defect(
          std::vector<std::byte>(w->begin(), w->begin() + static_cast<std::ptrdiff_t>(len)), n,
          "truncated");
    }
    auto v = *w;
    v.push_back(std::byte{0});
    expect_defect(v, n, "oversized");
    expect_defect(*w, n + 1, "element count");
  }
  auto v = wire;
  v[4] = std::byte{0};
  expect_defect(v, n, "version");
  v = wire;
  v[5] = std::byte{static_cast<unsigned char>(gc::codec_id::scalar_quant)};
  expect_defect(v, n, "codec id");
  v = wire;
  v[6] = static_cast<std::byte>(gc::dtype::f16);
  expect_defect(v, n, "dtype f16");
  // Parameters: their count, each field.
  v = wire;
  v[7] = std::byte{7};
  v.erase(v.begin() + static_cast<std::ptrdiff_t>(p + 7));
  expect_defect(v, n, "7 parameter bytes");
  for (unsigned bad : {0u, 1u, 3u, 16u}) {
    v = wire;
    v[p] = std::byte{static_cast<unsigned char>(bad)};
    expect_defect(v, n, "group dimension " + std::to_string(bad));
  }
  v = wire;
  v[p + 1] = std::byte{4};
  expect_defect(v, n, "codes of 4 bits");
  v = wire;
  v[p + 2] = std::byte{2};
  expect_defect(v, n, "codebook kind 2");
  v = wire;
  v[p + 3] = std::byte{1};
  expect_defect(v, n, "reserved parameter byte");
  for (std::uint32_t bad : {0u, 4u, 34u, 65537u, 0xffffffffu}) {
    if (bad % d == 0 && bad >= 8 && bad <= 65536) continue;
    v = wire;
    std::memcpy(v.data() + p + 4, &bad, 4);
    expect_defect(v, n, "block of " + std::to_string(bad));
  }
  // A valid block that does not fit the body: the body size check names it.
  v = wire;
  const std::uint32_t other = 64;
  std::memcpy(v.data() + p + 4, &other, 4);
  expect_defect(v, n, "body of");
  // The built-in flag on a payload that carries a codebook (and the reverse).
  v = carried;
  v[p + 2] = std::byte{0};
  expect_defect(v, n, "body of");
  v = wire;
  v[p + 2] = std::byte{1};
  expect_defect(v, n, "body of");
  // Scales: negative, -0, ±Inf, NaN.
  const std::size_t s0 = p + 8;
  for (float bad : {-1.0f, -0.0f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    v = wire;
    std::memcpy(v.data() + s0 + 4 * 2, &bad, 4);
    expect_defect(v, n, "scale of block 2");
  }
  // Carried codewords: NaN, Inf, beyond ±65536.
  for (float bad : {std::nanf(""), -std::numeric_limits<float>::infinity(), 70000.0f}) {
    v = carried;
    std::memcpy(v.data() + s0 + 4 * 9, &bad, 4);
    expect_defect(v, n, "codeword coordinate 9");
  }
  // Every single bit flip decodes or throws decode_error (ASan watches the rest).
  for (const auto* w : {&wire, &carried}) {
    for (std::size_t i = 0; i < w->size(); i += (i < 64 ? 1 : 7)) {
      for (int bit = 0; bit < 8; ++bit) {
        v = *w;
        v[i] ^= std::byte{static_cast<unsigned char>(1u << bit)};
        std::vector<float> out(n);
        try {
          gc::vq_gaussian_codec().decode_add(v, out);
          for (float x : out) ASSERT_TRUE(std::isfinite(x)) << "byte " << i << " bit " << bit;
        } catch (const gc::decode_error&) {
        }
      }
    }
  }
}

TEST_P(VectorQuant, FiniteInputNearTheFloatRangeDecodesFinite) {
  // RMS scales of these blocks times the codebook's largest coordinates passed FLT_MAX:
  // payloads decoded to ±Inf. The encoder now holds each scale to what the codewords allow.
  const unsigned d = GetParam();
  for (std::uint32_t block : {8u, 256u}) {
    gc::vq_gaussian_codec g({.dim = d, .block = block});
    gc::vq_learned_codec l({.dim = d, .block = block});
    for (const auto& in : near_the_float_range(1000)) {
      SCOPED_TRACE(testing::Message() << "block " << block << " input " << in[0] << ", " << in[1]);
      const auto payloads = {encode(g, in), encode(l, in)};
      for (const auto& wire : payloads) {
        std::vector<float> out(in.size(), -7.0f), sum(in.size(), 0.0f);
        gc::vq_gaussian_codec().decode(wire, out);
        gc::vq_gaussian_codec().decode_add(wire, sum);
        std::size_t nonfinite = 0, nonzero = 0;
        for (std::size_t i = 0; i < in.size(); ++i) {
          nonfinite += !std::isfinite(out[i]) || !std::isfinite(sum[i]);
          nonzero += out[i] != 0.0f;
        }
        EXPECT_EQ(nonfinite, 0u);
        EXPECT_GT(nonzero, in.size() / 2);
      }
      // Every path clamps alike.
      EXPECT_EQ(encode(g, in), encode_portable(g, in));
    }
  }
}

TEST_P(VectorQuant, ScalesThatWouldOverflowAreRejected) {
  const unsigned d = GetParam();
  const std::size_t n = 100;
  constexpr float inf = std::numeric_limits<float>::infinity();
  gc::vq_gaussian_codec codec({.dim = d, .block = 32});
  const auto wire = encode(codec, gaussian(n, 3));
  const std::size_t s0 = gc::wire_header_bytes + 8;
  const float m = largest_coordinate(gc::detail::vq_gaussian(d).fine.data(), 256u * d);
  const float limit = largest_safe_scale(m);
  EXPECT_EQ(gc::detail::vq_gaussian_tables(d).max_scale, limit);
  auto v = wire;
  for (float s : {limit, 1.0f}) {  // the limit itself decodes, to finite values
    std::memcpy(v.data() + s0 + 4 * 1, &s, 4);
    EXPECT_EQ(defect(v, n), "");
    for (float x : decode(v, n)) ASSERT_TRUE(std::isfinite(x));
  }
  for (float bad : {std::nextafter(limit, inf), std::numeric_limits<float>::max(), 3e38f}) {
    v = wire;
    std::memcpy(v.data() + s0 + 4 * 1, &bad, 4);
    for (bool add : {false, true}) {
      const std::string w = defect(v, n, add);
      EXPECT_NE(w.find("scale of block 1"), std::string::npos) << w;
      EXPECT_NE(w.find("overflows f32"), std::string::npos) << w;
    }
  }
  // A carried codebook with a coordinate of 65536: scales above FLT_MAX / 65536 overflow.
  gc::vq_learned_codec lc({.dim = d, .block = 32});
  auto carried = encode(lc, gaussian(n, 3));
  const float big = 65536.0f;
  std::memcpy(carried.data() + s0 + 4 * 7, &big, 4);
  const std::size_t c0 = s0 + 4 * 256 * d;  // the scales after the codewords
  const float ok = largest_safe_scale(65536.0f);
  std::memcpy(carried.data() + c0, &ok, 4);
  EXPECT_EQ(defect(carried, n), "");
  const float over = std::nextafter(ok, inf);
  std::memcpy(carried.data() + c0, &over, 4);
  EXPECT_NE(defect(carried, n).find("scale of block 0"), std::string::npos);
}

TEST_P(VectorQuant, OrdinaryPayloadsKeepTheirBytes) {
  // Payload bytes of ordinary inputs are promised stable: a hash of the bytes of both
  // codecs, blocks of 8 and 256, on inputs from 1e-40 (subnormal) to 1e37 (an LCG, exact
  // arithmetic, so the inputs are the same everywhere). Recorded before scales were held
  // below FLT_MAX / the largest coordinate, which changes nothing here; the same on the
  // portable, AVX2 and AVX-512 paths.
  const unsigned d = GetParam();
  std::uint64_t h = 0xcbf29ce484222325ull;
  std::uint32_t x = 12345;
  for (float scale : {1e-40f, 1e-3f, 1.0f, 3.0f, 1e30f, 1e37f}) {
    std::vector<float> in(1001);
    for (auto& v : in) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<float>(static_cast<std::int32_t>(x) >> 8) * 0x1p-23f * scale;
    }
    for (std::uint32_t block : {8u, 256u}) {
      gc::vq_gaussian_codec g({.dim = d, .block = block});
      gc::vq_learned_codec l({.dim = d, .block = block});
      for (const auto& wire : {encode(g, in), encode(l, in)}) {
        for (std::byte b : wire) h = (h ^ std::to_integer<std::uint64_t>(b)) * 0x100000001b3ull;
      }
    }
  }
  const std::uint64_t want = d == 2   ? 0xa080dabd20950979ull
                             : d == 4 ? 0xfe50eb904d5af0fcull
                                      : 0x92cc8dfe4234c93cull;
  EXPECT_EQ(h, want) << std::hex << h;
}

TEST(VectorQuant, UnderErrorFeedbackTheLearnedStateTravelsInTheCheckpoint) {
  using ef = gc::error_feedback<gc::vq_learned_codec>;
  ef a(gc::vq_learned_codec({.dim = 4, .refresh_interval = 3}));
  const auto x = laplace(4096, 21);
  std::vector<std::byte> wire(a.max_encoded_bytes(x.size()));
  for (int step = 0; step < 2; ++step) a.encode(x, wire);
  std::vector<std::byte> ckpt(a.state_bytes());
  ckpt.resize(a.save_state(ckpt));
  ef b(gc::vq_learned_codec({.dim = 4, .refresh_interval = 3}));
  b.load_state(ckpt);
  EXPECT_EQ(b.inner().calls(), 2u);
  for (int step = 0; step < 3; ++step) {  // through the next refresh
    std::vector<std::byte> wa(a.max_encoded_bytes(x.size())), wb(wa.size());
    a.encode(x, wa);
    b.encode(x, wb);
    ASSERT_EQ(wa, wb) << step;
  }
}

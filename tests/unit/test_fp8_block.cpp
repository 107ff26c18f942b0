// Block-scaled fp8 (MXFP8): every decoded value against a reference built from the OCP MX
// rule with table-search rounding, the error bounds that follow from the format, edge
// cases, non-finite policies, and the rejection of malformed payloads.
#include <gradcomm/codec/fp8_block.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::Codec<gc::fp8_block_codec>);
static_assert(!gc::fp8_block_codec::traits.linear && gc::fp8_block_codec::traits.fixed_size &&
              !gc::fp8_block_codec::traits.stateful);
static_assert(gc::fp8_block_codec::id == gc::codec_id::fp8_block);
static_assert(gc::fp8_emax(gc::dtype::fp8_e4m3) == 8 && gc::fp8_emax(gc::dtype::fp8_e5m2) == 15);
static_assert(gc::fp8_block_max_scale_code(gc::dtype::fp8_e4m3) == 246);

constexpr gc::dtype e4m3 = gc::dtype::fp8_e4m3;
constexpr gc::dtype e5m2 = gc::dtype::fp8_e5m2;

std::vector<std::byte> encode(const gc::fp8_block_codec& c, const std::vector<float>& in) {
  std::vector<std::byte> wire(c.max_encoded_bytes(in.size()));
  EXPECT_EQ(c.encode(in, wire), wire.size());
  return wire;
}

std::vector<float> decode(const std::vector<std::byte>& wire, std::size_t n) {
  std::vector<float> out(n, -7.0f);
  gc::fp8_block_codec().decode(wire, out);
  return out;
}

// The format's finite non-negative values, increasing (patterns 0 .. largest).
std::vector<double> table(gc::dtype t) {
  std::vector<double> v;
  const unsigned largest = t == e4m3 ? 0x7e : 0x7b;
  for (unsigned b = 0; b <= largest; ++b) {
    const auto p = static_cast<std::uint8_t>(b);
    v.push_back(t == e4m3 ? gc::to_float(gc::fp8_e4m3{p}) : gc::to_float(gc::fp8_e5m2{p}));
  }
  return v;
}

// Nearest value of the table, ties to the even pattern, saturating at the largest.
double round_to_table(double a, const std::vector<double>& t) {
  if (a >= t.back()) return t.back();
  const auto hi = static_cast<std::size_t>(std::lower_bound(t.begin(), t.end(), a) - t.begin());
  if (t[hi] == a) return a;
  const std::size_t lo = hi - 1;
  const double dlo = a - t[lo], dhi = t[hi] - a;
  return dlo < dhi ? t[lo] : dhi < dlo ? t[hi] : (lo % 2 == 0 ? t[lo] : t[hi]);
}

// The decoded values the OCP MX rule gives, computed in double from first principles.
std::vector<float> reference(const std::vector<float>& x, gc::dtype t) {
  const auto tab = table(t);
  const int emax = gc::fp8_emax(t);
  std::vector<float> out(x.size());
  for (std::size_t begin = 0; begin < x.size(); begin += 32) {
    const std::size_t end = std::min(x.size(), begin + 32);
    double amax = 0;
    for (std::size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(double{x[i]}));
    const int e = amax == 0 ? 0 : std::clamp(std::ilogb(amax) - emax + 127, 0, 254);
    for (std::size_t i = begin; i < end; ++i) {
      const double scaled = std::ldexp(double{x[i]}, 127 - e);  // exact in double
      const double q = round_to_table(std::fabs(scaled), tab);
      out[i] = static_cast<float>(std::copysign(std::ldexp(q, e - 127), double{x[i]}));
    }
  }
  return out;
}

std::vector<float> gaussian(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// Values spread over f32's whole range, block by block and within blocks.
std::vector<float> wide(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> block_exp(-140, 120), spread(-30, 6);
  std::vector<float> v(n);
  int be = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 32 == 0) be = block_exp(gen);
    const double m = std::ldexp(mant(gen), std::clamp(be + spread(gen), -149, 127));
    v[i] = static_cast<float>(i % 3 == 0 ? -m : m);
    if (i % 17 == 5) v[i] = 0.0f;
  }
  return v;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(gc::detail::float_bits(got[i]), gc::detail::float_bits(want[i]))
        << "index " << i << ": " << got[i] << " vs " << want[i];
  }
}

std::string what(const std::vector<std::byte>& wire, std::size_t n, bool add = false) {
  std::vector<float> out(n, 5.0f);
  try {
    if (add) {
      gc::fp8_block_codec().decode_add(wire, out);
    } else {
      gc::fp8_block_codec().decode(wire, out);
    }
  } catch (const gc::decode_error& e) {
    for (float v : out) EXPECT_EQ(v, 5.0f) << "a rejected payload wrote the output";
    return e.what();
  }
  return "";
}

}  // namespace

class Fp8Block : public ::testing::TestWithParam<gc::dtype> {};
INSTANTIATE_TEST_SUITE_P(Formats, Fp8Block, ::testing::Values(e4m3, e5m2),
                         [](const auto& i) { return std::string(gc::dtype_name(i.param)); });

TEST(Fp8BlockScale, FollowsTheMxRule) {
  // 3.0: floor(log2 3) = 1, E4M3's emax is 8 -> code 120, scale 2^-7, element 384.
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(3.0f), 8), 120);
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(1.0f), 15), 112);
  EXPECT_EQ(gc::fp8_block_scale_code(0, 8), 0);                                  // all zeros
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(0x1p-120f), 8), 0);  // clamped
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(0x1p-119f), 8), 0);
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(0x1p-118f), 8), 1);
  EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(std::numeric_limits<float>::max()), 8),
            246);
  // Subnormal maxima: floor(log2) from the highest set bit.
  EXPECT_EQ(gc::fp8_block_scale_code(1, 0), 0);  // 2^-149: clamped
  for (int k = -149; k <= 127; ++k) {
    const float v = std::ldexp(1.5f, k);  // 2^-149 * 1.5 rounds to a power of two: fine too
    const int want = std::clamp(std::ilogb(v) - 8 + 127, 0, 254);
    EXPECT_EQ(gc::fp8_block_scale_code(gc::detail::float_bits(v), 8), want) << k;
  }
  EXPECT_EQ(gc::e8m0_to_float(127), 1.0f);
  EXPECT_EQ(gc::e8m0_to_float(0), 0x1p-127f);
  EXPECT_EQ(gc::e8m0_to_float(254), 0x1p127f);
}

TEST(Fp8BlockScale, KnownAnswer) {
  std::vector<float> in(32, 0.0f);
  in[0] = 3.0f;
  in[1] = -0.75f;
  in[2] = 3.5f;  // the block's max: floor(log2) = 1, same scale
  const auto wire = encode(gc::fp8_block_codec(e4m3), in);
  ASSERT_EQ(wire.size(), gc::wire_header_bytes + 1 + 32);
  EXPECT_EQ(std::to_integer<int>(wire[gc::wire_header_bytes]), 120);
  // 3 / 2^-7 = 384 = 1.5 * 2^8: E4M3 0 1111 100 = 0x7c; -0.75 -> -96: 1 1101 100 = 0xec.
  EXPECT_EQ(std::to_integer<int>(wire[gc::wire_header_bytes + 1]), 0x7c);
  EXPECT_EQ(std::to_integer<int>(wire[gc::wire_header_bytes + 2]), 0xec);
  const auto out = decode(wire, 32);
  EXPECT_EQ(out[0], 3.0f);
  EXPECT_EQ(out[1], -0.75f);
  EXPECT_EQ(out[2], 3.5f);
  EXPECT_EQ(out[3], 0.0f);
}

TEST_P(Fp8Block, MatchesTheMxReferenceExactly) {
  const gc::fp8_block_codec codec(GetParam());
  for (std::size_t n : {0u, 1u, 2u, 31u, 32u, 33u, 95u, 1000u, 4099u}) {
    for (const auto& in :
         {gaussian(n, 1 + static_cast<unsigned>(n)), wide(n, 7), gaussian(n, 3, 1e-3f)}) {
      const auto wire = encode(codec, in);
      ASSERT_EQ(wire.size(), gc::wire_header_bytes + n + (n + 31) / 32);
      expect_same_bits(decode(wire, n), reference(in, GetParam()));
    }
  }
}

TEST_P(Fp8Block, ErrorBoundsFollowFromTheFormat) {
  const gc::dtype t = GetParam();
  const double rel = t == e4m3 ? 0x1p-4 : 0x1p-3;
  const double sub_step = t == e4m3 ? 0x1p-9 : 0x1p-16;  // subnormal step, scaled units
  const double largest = t == e4m3 ? 448.0 : 57344.0;    // scaled units
  const int emax = gc::fp8_emax(t);
  const auto in = wide(1 << 14, 11);
  const auto wire = encode(gc::fp8_block_codec(t), in);
  const auto out = decode(wire, in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const int code = std::to_integer<int>(wire[gc::wire_header_bytes + i / 32]);
    const double scale = std::ldexp(1.0, code - 127);
    const double x = in[i], q = out[i], err = std::fabs(x - q);
    if (std::fabs(x) <= largest * scale) {
      ASSERT_LE(err, std::max(rel * std::fabs(x), sub_step / 2 * scale)) << i;
    } else {
      // Clipped: only the block's top octave can be, to the largest value, by < 12.5 %.
      ASSERT_EQ(std::fabs(q), largest * scale) << i;
      ASSERT_LT(std::fabs(x), std::ldexp(scale, emax + 1)) << i;
      ASSERT_LT(err, 0.125 * std::fabs(x)) << i;
    }
  }
}

TEST_P(Fp8Block, DecodeAddAccumulates) {
  const auto in = gaussian(1001, 5);
  const auto wire = encode(gc::fp8_block_codec(GetParam()), in);
  const auto out = decode(wire, in.size());
  std::vector<float> acc(in.size(), 0.25f);
  gc::fp8_block_codec().decode_add(wire, acc);
  for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(acc[i], 0.25f + out[i]) << i;
}

TEST_P(Fp8Block, EdgeCases) {
  const gc::fp8_block_codec codec(GetParam());
  // n = 0: the header alone.
  EXPECT_EQ(encode(codec, {}).size(), gc::wire_header_bytes);
  EXPECT_TRUE(decode(encode(codec, {}), 0).empty());
  // All zeros (no 0/0): scale code 0, zeros back, signs kept.
  std::vector<float> zeros(70, 0.0f);
  zeros[3] = -0.0f;
  auto out = decode(encode(codec, zeros), zeros.size());
  expect_same_bits(out, zeros);
  // f32 subnormals, f32's largest values, one value per block.
  const float denorm = std::numeric_limits<float>::denorm_min();
  const float big = std::numeric_limits<float>::max();
  for (const std::vector<float>& in :
       {std::vector<float>{denorm, -denorm, 3 * denorm, 1e-40f, -2e-39f},
        std::vector<float>{big, -big, big / 3, 1e38f, 1.0f}, std::vector<float>{-1e-30f}}) {
    out = decode(encode(codec, in), in.size());
    expect_same_bits(out, reference(in, GetParam()));
    for (float v : out) EXPECT_TRUE(std::isfinite(v));
  }
  // The largest value is clipped to 1.75 * 2^127 at most, never Inf.
  EXPECT_EQ(decode(encode(codec, {big}), 1)[0], 0x1.cp127f);
  // A value equal to a block's largest representable survives exactly.
  EXPECT_EQ(decode(encode(codec, {448.0f, 1.0f}), 2)[0], 448.0f);
}

TEST_P(Fp8Block, NonFinitePolicies) {
  const gc::dtype t = GetParam();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> in = gaussian(100, 9);
  in[40] = std::nanf("");
  in[70] = -inf;
  std::vector<std::byte> wire(gc::fp8_block_codec(t).max_encoded_bytes(in.size()));
  try {
    gc::fp8_block_codec(t).encode(in, wire);
    FAIL() << "expected a throw";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("index 40"), std::string::npos) << e.what();
  }
  // zero: as if they were zeros.
  auto zeroed = in;
  zeroed[40] = zeroed[70] = 0.0f;
  gc::fp8_block_codec(t, gc::nonfinite_policy::zero).encode(in, wire);
  expect_same_bits(decode(wire, in.size()), reference(zeroed, t));
  // pass: NaN carried (and ±Inf in E5M2), the rest of the block scaled from its finite values.
  const gc::fp8_block_codec pass(t, gc::nonfinite_policy::pass);
  if (t == e4m3) {
    try {
      pass.encode(in, wire);
      FAIL() << "expected a throw";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("index 70"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("no infinities"), std::string::npos) << e.what();
    }
    in[70] = 1.0f;
    zeroed[70] = 1.0f;
  }
  pass.encode(in, wire);
  const auto out = decode(wire, in.size());
  const auto ref = reference(zeroed, t);
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (i == 40) {
      EXPECT_TRUE(std::isnan(out[i]));
    } else if (i == 70 && t == e5m2) {
      EXPECT_EQ(out[i], -inf);
    } else {
      ASSERT_EQ(out[i], ref[i]) << i;
    }
  }
}

TEST_P(Fp8Block, AnyCodecDecodesEitherFormat) {
  const auto in = gaussian(77, 13);
  const auto wire = encode(gc::fp8_block_codec(GetParam()), in);
  std::vector<float> a(in.size()), b(in.size());
  gc::fp8_block_codec(e4m3).decode(wire, a);
  gc::fp8_block_codec(e5m2).decode(wire, b);
  expect_same_bits(a, b);
  EXPECT_EQ(static_cast<gc::dtype>(wire[6]), GetParam());  // the header says which
}

TEST_P(Fp8Block, PortableLoopsMatchTheDispatchedOnes) {
  const auto in = wide(4096 + 19, 21);
  const std::size_t n = in.size();
  const gc::fp8_block_codec codec(GetParam());
  const auto wire = encode(codec, in);
  const std::size_t nb = gc::fp8_block_codec::blocks(n);
  std::vector<std::uint8_t> scales(nb), elems(n);
  std::vector<float> out(n), acc(n, 1.0f), ref(n), ref_acc(n, 1.0f);
  codec.decode_add(wire, acc);
  codec.decode(wire, out);
  using loops = gc::detail::fp8_block_cpu;  // detail/fp8_block_cpu.hpp
  auto run = [&]<gc::dtype E>() {
    EXPECT_EQ(loops::encode_blocks_impl<E>(in.data(), n, 0, scales.data(), elems.data()), nb);
    loops::decode_blocks_impl<E, false>(scales.data(), elems.data(), n, ref.data());
    loops::decode_blocks_impl<E, true>(scales.data(), elems.data(), n, ref_acc.data());
  };
  if (GetParam() == e4m3) {
    run.template operator()<e4m3>();
  } else {
    run.template operator()<e5m2>();
  }
  const auto* body = reinterpret_cast<const std::uint8_t*>(wire.data() + gc::wire_header_bytes);
  EXPECT_TRUE(std::equal(scales.begin(), scales.end(), body));
  EXPECT_TRUE(std::equal(elems.begin(), elems.end(), body + nb));
  expect_same_bits(out, ref);
  expect_same_bits(acc, ref_acc);
}

TEST(Fp8BlockCodec, RejectsOtherElementTypes) {
  for (gc::dtype t : {gc::dtype::f32, gc::dtype::f16, gc::dtype::bf16}) {
    try {
      gc::fp8_block_codec c(t);
      FAIL() << "no throw";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("element dtype"), std::string::npos);
    }
  }
}

TEST(Fp8BlockCodec, SmallOutputBufferIsAnError) {
  std::vector<float> in(40, 1.0f);
  std::vector<std::byte> wire(gc::fp8_block_codec().max_encoded_bytes(40) - 1);
  try {
    gc::fp8_block_codec().encode(in, wire);
    FAIL();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
  }
}

TEST_P(Fp8Block, MalformedPayloadsAreRejected) {
  const std::size_t n = 70;  // three blocks, the last one short
  const auto in = gaussian(n, 17);
  const auto wire = encode(gc::fp8_block_codec(GetParam()), in);
  const std::size_t body = gc::wire_header_bytes;
  auto expect_defect = [&](const std::vector<std::byte>& bytes, std::size_t count,
                           const std::string& word) {
    for (bool add : {false, true}) {
      const std::string w = what(bytes, count, add);
      EXPECT_NE(w.find(word), std::string::npos) << "want \"" << word << "\", got \"" << w << "\"";
    }
  };
  for (std::size_t len = 0; len < wire.size(); ++len) {
    const std::vector<std::byte> t(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(len));
    expect_defect(t, n, "truncated");
  }
  auto longer = wire;
  longer.push_back(std::byte{0});
  expect_defect(longer, n, "oversized");
  expect_defect(wire, n + 1, "element count");
  expect_defect(wire, n - 1, "element count");
  auto v = wire;
  v[4] = std::byte{2};
  expect_defect(v, n, "version");
  v = wire;
  v[5] = std::byte{static_cast<unsigned char>(gc::codec_id::cast)};
  expect_defect(v, n, "codec id");
  v = wire;
  v[0] = std::byte{'X'};
  expect_defect(v, n, "magic");
  for (gc::dtype t : {gc::dtype::f32, gc::dtype::f16, gc::dtype::bf16}) {
    v = wire;
    v[6] = static_cast<std::byte>(t);
    expect_defect(v, n, "element dtype");
  }
  v = wire;
  v[6] = std::byte{9};
  expect_defect(v, n, "invalid dtype");
  // A parameter byte (and the length that announces it).
  v = wire;
  v[7] = std::byte{1};
  v.insert(v.begin() + gc::wire_header_bytes, std::byte{32});
  expect_defect(v, n, "parameter bytes");
  // A body of the wrong size for n, with a header that agrees with the payload.
  v = wire;
  v.push_back(std::byte{0});
  const std::uint64_t bigger = n + 3 + 1;
  std::memcpy(v.data() + 16, &bigger, 8);
  expect_defect(v, n, "body of");
  // Scale codes: E8M0's NaN and codes past the format's largest.
  v = wire;
  v[body + 1] = std::byte{0xff};
  expect_defect(v, n, "NaN scale code 0xff at block 1");
  v = wire;
  v[body + 2] = std::byte{static_cast<unsigned char>(gc::fp8_block_max_scale_code(GetParam()) + 1)};
  expect_defect(v, n, "at block 2 out of range");
  v[body + 2] = std::byte{static_cast<unsigned char>(gc::fp8_block_max_scale_code(GetParam()))};
  EXPECT_EQ(what(v, n), "");  // the largest valid code decodes, to finite values
  // Every single bit flip either decodes or throws decode_error (ASan watches the rest).
  for (std::size_t i = 0; i < wire.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      v = wire;
      v[i] ^= std::byte{static_cast<unsigned char>(1u << bit)};
      std::vector<float> out(n);
      try {
        gc::fp8_block_codec().decode_add(v, out);
      } catch (const gc::decode_error&) {
      }
    }
  }
}

TEST_P(Fp8Block, FiniteInputNearTheFloatRangeDecodesFinite) {
  // The largest scale code (254 − emax) times the largest element is 1.75 · 2^127 <
  // FLT_MAX: ±FLT_MAX, ±3e38 and mixtures with ordinary values all decode finite.
  constexpr float top = std::numeric_limits<float>::max();
  const gc::fp8_block_codec c(GetParam());
  const std::size_t n = 1000;
  const auto g = gaussian(n, 91);
  std::vector<std::vector<float>> inputs;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 2 ? -top : top;
  inputs.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = g[i] < 0 ? -3e38f : 3e38f;
  inputs.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::clamp(g[i] * 1.5e38f, -3e38f, 3e38f);
  inputs.push_back(v);
  for (std::size_t i = 0; i < n; ++i) v[i] = i % 37 == 5 ? (i % 2 ? -top : 3e38f) : g[i];
  inputs.push_back(v);
  for (const auto& in : inputs) {
    const auto w = encode(c, in);
    const auto out = decode(w, n);
    std::vector<float> sum(n, 0.0f);
    c.decode_add(w, sum);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(out[i]) && std::isfinite(sum[i])) << i << " of " << in[0];
      if (std::fabs(in[i]) >= 3e38f) {
        ASSERT_EQ(std::signbit(out[i]), std::signbit(in[i])) << i;
      }
    }
  }
}

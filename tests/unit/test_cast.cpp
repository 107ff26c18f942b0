// The cast codecs (f16, bf16, fp8 E4M3 and E5M2): exact conversions, round-to-nearest-even
// against a table-search reference, fp8 saturation, the codec's payload and its rejection
// of malformed payloads.
#include <gradcomm/codec/cast.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::Codec<gc::bf16_codec>);
static_assert(gc::Codec<gc::f16_codec>);
static_assert(gc::Codec<gc::e4m3_codec>);
static_assert(gc::Codec<gc::e5m2_codec>);
static_assert(gc::bf16_codec::traits.linear && gc::bf16_codec::traits.fixed_size &&
              !gc::bf16_codec::traits.stateful);
static_assert(gc::f16_codec::traits.linear);
// fp8 partial sums would lose too much: decoded and summed in f32 instead.
static_assert(!gc::e4m3_codec::traits.linear && gc::e4m3_codec::traits.fixed_size &&
              !gc::e4m3_codec::traits.stateful);
static_assert(!gc::e5m2_codec::traits.linear && gc::e5m2_codec::traits.fixed_size);
static_assert(gc::e4m3_codec::element_bytes == 1 && gc::bf16_codec::element_bytes == 2);

// What the typed tests need to know of each codec.
template <class C>
struct codec_facts;
template <>
struct codec_facts<gc::bf16_codec> {
  using other = gc::f16_codec;            // another codec id == cast payload of the same size
  static constexpr double rel = 0x1p-8;   // half an ulp, relative
  static constexpr double abs = 0x1p-25;  // below the normal range (none for bf16 here)
  static constexpr float sigma = 100.0f;
};
template <>
struct codec_facts<gc::f16_codec> {
  using other = gc::bf16_codec;
  static constexpr double rel = 0x1p-11;
  static constexpr double abs = 0x1p-25;
  static constexpr float sigma = 100.0f;
};
template <>
struct codec_facts<gc::e4m3_codec> {
  using other = gc::e5m2_codec;
  static constexpr double rel = 0x1p-4;
  static constexpr double abs = 0x1p-10;  // half the subnormal step
  static constexpr float sigma = 40.0f;   // well inside ±448
};
template <>
struct codec_facts<gc::e5m2_codec> {
  using other = gc::e4m3_codec;
  static constexpr double rel = 0x1p-3;
  static constexpr double abs = 0x1p-17;
  static constexpr float sigma = 100.0f;
};

// All finite non-negative values of a 16-bit format in increasing order (bits 0 up
// to the largest finite pattern), as floats.
template <class H>
std::vector<float> finite_table(std::uint16_t largest_finite) {
  std::vector<float> t;
  for (std::uint32_t b = 0; b <= largest_finite; ++b) {
    t.push_back(gc::to_float(H{static_cast<std::uint16_t>(b)}));
  }
  return t;
}

// Reference round-to-nearest-even by search in the table of representable values;
// `overflow` is the threshold at or above which the result is +Inf.
template <class H>
std::uint16_t reference_round(float x, const std::vector<float>& table, double overflow) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= overflow) return sign | (std::is_same_v<H, gc::f16> ? 0x7c00 : 0x7f80);
  const auto it = std::lower_bound(table.begin(), table.end(), static_cast<float>(a));
  auto hi = static_cast<std::size_t>(it - table.begin());
  if (hi < table.size() && table[hi] == static_cast<float>(a)) {
    return sign | static_cast<std::uint16_t>(hi);
  }
  const std::size_t lo = hi - 1;
  if (hi == table.size()) return sign | static_cast<std::uint16_t>(lo);  // below the overflow
  const double dlo = a - table[lo];
  const double dhi = static_cast<double>(table[hi]) - a;
  std::size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | static_cast<std::uint16_t>(pick);
}

std::vector<float> adversarial_inputs(const std::vector<float>& table) {
  std::vector<float> xs;
  std::mt19937 gen(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    float f;
    const std::uint32_t u = bits(gen);
    std::memcpy(&f, &u, 4);
    if (std::isfinite(f)) xs.push_back(f);
  }
  // Exact midpoints between neighbours (ties) and the f32 values either side of them.
  for (std::size_t i = 0; i + 1 < table.size(); i += 7) {
    const double mid = (static_cast<double>(table[i]) + table[i + 1]) / 2;
    const float m = static_cast<float>(mid);
    xs.push_back(m);
    xs.push_back(std::nextafter(m, 0.0f));
    xs.push_back(std::nextafter(m, std::numeric_limits<float>::infinity()));
    xs.push_back(-m);
  }
  for (float v : {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 3e-8f, 6e-8f,
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()}) {
    xs.push_back(v);
  }
  return xs;
}

}  // namespace

TEST(CastConversions, F16RoundTripsEveryPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const gc::f16 h{static_cast<std::uint16_t>(b)};
    const float f = gc::to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(gc::to_float(gc::to_f16(f)))) << b;
    } else {
      EXPECT_EQ(gc::to_f16(f).bits, h.bits) << b;
    }
  }
  EXPECT_EQ(gc::to_float(gc::f16{0x3c00}), 1.0f);
  EXPECT_EQ(gc::to_float(gc::f16{0x7bff}), 65504.0f);
  EXPECT_EQ(gc::to_float(gc::f16{0x0001}), std::ldexp(1.0f, -24));
}

TEST(CastConversions, Bf16RoundTripsEveryPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const gc::bf16 h{static_cast<std::uint16_t>(b)};
    const float f = gc::to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(gc::to_float(gc::to_bf16(f)))) << b;
    } else {
      EXPECT_EQ(gc::to_bf16(f).bits, h.bits) << b;
    }
  }
}

TEST(CastConversions, F16RoundsToNearestEven) {
  const auto table = finite_table<gc::f16>(0x7bff);
  for (float x : adversarial_inputs(table)) {
    ASSERT_EQ(gc::to_f16(x).bits, reference_round<gc::f16>(x, table, 65520.0)) << x;
  }
}

TEST(CastConversions, Bf16RoundsToNearestEven) {
  const auto table = finite_table<gc::bf16>(0x7f7f);
  // bf16's largest finite is 0x7f7f; the midpoint to the next binade rounds up to Inf.
  const double overflow = (static_cast<double>(table.back()) + std::ldexp(1.0, 128)) / 2.0;
  for (float x : adversarial_inputs(table)) {
    ASSERT_EQ(gc::to_bf16(x).bits, reference_round<gc::bf16>(x, table, overflow)) << x;
  }
}

TEST(CastConversions, NonFiniteValuesKeepTheirKind) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(gc::to_f16(inf).bits, 0x7c00);
  EXPECT_EQ(gc::to_f16(-inf).bits, 0xfc00);
  EXPECT_EQ(gc::to_bf16(inf).bits, 0x7f80);
  EXPECT_EQ(gc::to_bf16(-inf).bits, 0xff80);
  EXPECT_TRUE(std::isnan(gc::to_float(gc::to_f16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(gc::to_float(gc::to_bf16(std::nanf("")))));
  EXPECT_EQ(gc::to_f16(1e6f).bits, 0x7c00);            // f16 overflows
  const float big = gc::to_float(gc::to_bf16(1e30f));  // bf16 keeps f32's range
  EXPECT_TRUE(std::isfinite(big));
  EXPECT_LE(std::fabs(big - 1e30f), std::ldexp(1e30, -9));
}

// ---- fp8 ---------------------------------------------------------------------

// The finite non-negative values of an fp8 format, patterns 0 .. largest, increasing.
template <class F>
std::vector<double> fp8_table(std::uint8_t largest) {
  std::vector<double> t;
  for (unsigned b = 0; b <= largest; ++b)
    t.push_back(gc::to_float(F{static_cast<std::uint8_t>(b)}));
  return t;
}

// Reference: round to nearest, ties to the even pattern, by search in the table; at or
// beyond the largest finite value (±Inf included) saturate; NaN -> `nan` with the sign.
template <class F>
std::uint8_t fp8_reference(float x, const std::vector<double>& table, std::uint8_t nan) {
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return sign | nan;
  const double a = std::fabs(static_cast<double>(x));
  const auto largest = static_cast<std::uint8_t>(table.size() - 1);
  if (a >= table.back()) return sign | largest;
  const auto hi =
      static_cast<std::size_t>(std::lower_bound(table.begin(), table.end(), a) - table.begin());
  if (table[hi] == a) return sign | static_cast<std::uint8_t>(hi);
  const std::size_t lo = hi - 1;
  const double dlo = a - table[lo], dhi = table[hi] - a;
  const std::size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | static_cast<std::uint8_t>(pick);
}

// Random f32 patterns, random values over the format's range, every midpoint between
// neighbours (ties) and the floats either side of it, and the boundaries.
std::vector<float> fp8_inputs(const std::vector<double>& table) {
  std::vector<float> xs;
  std::mt19937 gen(11);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 100000; ++i) {
    float f;
    const std::uint32_t u = bits(gen);
    std::memcpy(&f, &u, 4);
    xs.push_back(f);
  }
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(-20, 17);
  for (int i = 0; i < 100000; ++i) {
    const auto v = static_cast<float>(std::ldexp(mant(gen), ex(gen)));
    xs.push_back(i % 2 ? v : -v);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i + 1 < table.size(); ++i) {
    const auto m = static_cast<float>((table[i] + table[i + 1]) / 2);  // exact in f32
    for (float v : {m, std::nextafter(m, 0.0f), std::nextafter(m, inf), table[i] == 0 ? m : -m}) {
      xs.push_back(v);
    }
  }
  // Beyond the largest: half an ulp past it (the would-be tie) and further.
  const double top = table.back(), ulp = table.back() - table[table.size() - 2];
  for (double v : {top, top + ulp / 2, top + ulp, 2 * top, 1e30}) {
    xs.push_back(static_cast<float>(v));
    xs.push_back(std::nextafter(static_cast<float>(v), inf));
    xs.push_back(-static_cast<float>(v));
  }
  for (float v :
       {0.0f, -0.0f, std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
        std::numeric_limits<float>::max(), inf, -inf, std::nanf(""), -std::nanf("")}) {
    xs.push_back(v);
  }
  return xs;
}

TEST(CastConversions, Fp8E4M3DecodesEveryPattern) {
  for (unsigned b = 0; b < 256; ++b) {
    const float f = gc::to_float(gc::fp8_e4m3{static_cast<std::uint8_t>(b)});
    const unsigned e = (b >> 3) & 15u, m = b & 7u;
    if ((b & 0x7fu) == 0x7fu) {
      EXPECT_TRUE(std::isnan(f)) << b;
      continue;
    }
    const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, static_cast<int>(e) - 10);
    EXPECT_EQ(f, (b & 0x80u) ? -mag : mag) << b;
    EXPECT_EQ(std::signbit(f), (b & 0x80u) != 0) << b;
  }
  EXPECT_EQ(gc::to_float(gc::fp8_e4m3{0x7e}), gc::fp8_e4m3_max);
  EXPECT_EQ(gc::to_float(gc::fp8_e4m3{0x01}), 0x1p-9f);
  EXPECT_EQ(gc::to_float(gc::fp8_e4m3{0x08}), 0x1p-6f);
  EXPECT_EQ(gc::to_float(gc::fp8_e4m3{0x38}), 1.0f);
}

TEST(CastConversions, Fp8E5M2DecodesEveryPattern) {
  // E5M2 is the upper byte of an IEEE f16: to_float(f16) is an independent reference.
  for (unsigned b = 0; b < 256; ++b) {
    const float f = gc::to_float(gc::fp8_e5m2{static_cast<std::uint8_t>(b)});
    const float ref = gc::to_float(gc::f16{static_cast<std::uint16_t>(b << 8)});
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(f)) << b;
    } else {
      EXPECT_EQ(f, ref) << b;
      EXPECT_EQ(std::signbit(f), std::signbit(ref)) << b;
    }
  }
  EXPECT_EQ(gc::to_float(gc::fp8_e5m2{0x7b}), gc::fp8_e5m2_max);
  EXPECT_EQ(gc::to_float(gc::fp8_e5m2{0x7c}), std::numeric_limits<float>::infinity());
  EXPECT_EQ(gc::to_float(gc::fp8_e5m2{0xfc}), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(gc::to_float(gc::fp8_e5m2{0x01}), 0x1p-16f);
}

TEST(CastConversions, Fp8RoundTripsEveryPattern) {
  for (unsigned b = 0; b < 256; ++b) {
    const auto p = static_cast<std::uint8_t>(b);
    const float f4 = gc::to_float(gc::fp8_e4m3{p});
    if (std::isnan(f4)) {
      EXPECT_TRUE(std::isnan(gc::to_float(gc::to_fp8_e4m3(f4)))) << b;
    } else {
      EXPECT_EQ(gc::to_fp8_e4m3(f4).bits, p) << b;
    }
    const float f5 = gc::to_float(gc::fp8_e5m2{p});
    if (std::isnan(f5)) {
      EXPECT_TRUE(std::isnan(gc::to_float(gc::to_fp8_e5m2(f5)))) << b;
    } else if (std::isinf(f5)) {
      EXPECT_EQ(gc::to_fp8_e5m2(f5).bits, (b & 0x80u) | 0x7bu) << b;  // saturates
    } else {
      EXPECT_EQ(gc::to_fp8_e5m2(f5).bits, p) << b;
    }
  }
}

TEST(CastConversions, Fp8E4M3RoundsToNearestEven) {
  const auto table = fp8_table<gc::fp8_e4m3>(0x7e);
  for (float x : fp8_inputs(table)) {
    const std::uint8_t got = gc::to_fp8_e4m3(x).bits;
    const std::uint8_t want = fp8_reference<gc::fp8_e4m3>(x, table, 0x7f);
    if (std::isnan(x)) {
      ASSERT_EQ(got & 0x7f, 0x7f) << x;
    } else {
      ASSERT_EQ(got, want) << x;
    }
  }
  EXPECT_EQ(gc::to_fp8_e4m3(0.3f).bits, 0x2a);
  EXPECT_EQ(gc::to_fp8_e4m3(0x1p-10f).bits, 0x00);   // a tie: to even (zero)
  EXPECT_EQ(gc::to_fp8_e4m3(0x1.8p-9f).bits, 0x02);  // 1.5 steps: to even (2)
  EXPECT_EQ(gc::to_fp8_e4m3(0x1.1p0f).bits, 0x38);   // 1 + 1/16: tie to 1.0
  EXPECT_EQ(gc::to_fp8_e4m3(0x1.3p0f).bits, 0x3a);   // 1 + 3/16: tie to 1.25
}

TEST(CastConversions, Fp8E5M2RoundsToNearestEven) {
  const auto table = fp8_table<gc::fp8_e5m2>(0x7b);
  for (float x : fp8_inputs(table)) {
    const std::uint8_t got = gc::to_fp8_e5m2(x).bits;
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(gc::to_float(gc::fp8_e5m2{got}))) << x;
    } else {
      ASSERT_EQ(got, fp8_reference<gc::fp8_e5m2>(x, table, 0x7e)) << x;
    }
  }
  EXPECT_EQ(gc::to_fp8_e5m2(0.3f).bits, 0x35);
  EXPECT_EQ(gc::to_fp8_e5m2(0x1p-17f).bits, 0x00);  // a tie: to even (zero)
  EXPECT_EQ(gc::to_fp8_e5m2(0x1.2p0f).bits, 0x3c);  // 1 + 1/8: tie to 1.0
}

TEST(CastConversions, Fp8Saturates) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float v :
       {448.0f, 449.0f, 463.99f, 464.0f, 480.0f, 1e10f, std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(gc::to_fp8_e4m3(v).bits, 0x7e) << v;
    EXPECT_EQ(gc::to_fp8_e4m3(-v).bits, 0xfe) << v;
  }
  for (float v :
       {57344.0f, 61439.0f, 61440.0f, 65536.0f, 1e10f, std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(gc::to_fp8_e5m2(v).bits, 0x7b) << v;
    EXPECT_EQ(gc::to_fp8_e5m2(-v).bits, 0xfb) << v;
  }
  EXPECT_EQ(gc::to_fp8_e4m3(432.0f).bits, 0x7e);    // the tie 416 | 448: to even (448)
  EXPECT_EQ(gc::to_fp8_e4m3(424.0f).bits, 0x7d);    // 416 + 1/4 ulp: down to 416
  EXPECT_EQ(gc::to_fp8_e5m2(53248.0f).bits, 0x7a);  // the tie 49152 | 57344: to even (49152)
}

TEST(CastConversions, Fp8NaNStaysNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(gc::to_fp8_e4m3(nan).bits, 0x7f);
  EXPECT_EQ(gc::to_fp8_e4m3(-nan).bits, 0xff);
  EXPECT_TRUE(std::isnan(gc::to_float(gc::to_fp8_e5m2(nan))));
  EXPECT_TRUE(std::isnan(gc::to_float(gc::to_fp8_e5m2(-nan))));
  EXPECT_TRUE(
      std::isnan(gc::to_float(gc::to_fp8_e4m3(std::numeric_limits<float>::signaling_NaN()))));
}

template <class C>
class CastCodec : public ::testing::Test {};
using CastCodecs = ::testing::Types<gc::bf16_codec, gc::f16_codec, gc::e4m3_codec, gc::e5m2_codec>;
TYPED_TEST_SUITE(CastCodec, CastCodecs);

TYPED_TEST(CastCodec, RoundTripWithinHalfAnUlp) {
  TypeParam codec;
  for (std::size_t n : {0u, 1u, 2u, 7u, 1001u, 65536u}) {
    std::vector<float> in(n);
    std::mt19937 gen(static_cast<unsigned>(n));
    using facts = codec_facts<TypeParam>;
    std::normal_distribution<float> d(0.0f, facts::sigma);
    for (auto& x : in) x = d(gen);
    std::vector<std::byte> wire(codec.max_encoded_bytes(n));
    ASSERT_EQ(codec.encode(in, wire), gc::wire_header_bytes + TypeParam::element_bytes * n);
    std::vector<float> out(n, -1.0f);
    codec.decode(wire, out);
    // Half an ulp of the format, relative in the normal range, absolute below it.
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_LE(std::fabs(out[i] - in[i]), facts::rel * std::fabs(in[i]) + facts::abs) << i;
    }
    std::vector<float> acc(n, 1.0f);
    codec.decode_add(wire, acc);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 1.0f + out[i]) << i;
  }
}

TYPED_TEST(CastCodec, NonFinitePolicies) {
  std::vector<float> in{1.0f, 2.0f, std::numeric_limits<float>::infinity(), std::nanf("")};
  std::vector<std::byte> wire(TypeParam().max_encoded_bytes(in.size()));
  try {
    TypeParam().encode(in, wire);
    FAIL() << "expected a throw";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("index 2"), std::string::npos) << e.what();
  }
  std::vector<float> out(in.size());
  TypeParam pass(gc::nonfinite_policy::pass);
  if constexpr (TypeParam::wire_dtype == gc::dtype::fp8_e4m3) {
    // No infinities in E4M3: `pass` carries NaN and rejects ±Inf, naming its index.
    try {
      pass.encode(in, wire);
      FAIL() << "expected a throw";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("index 2"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("no infinities"), std::string::npos) << e.what();
    }
    std::vector<float> nan_only{1.0f, -std::nanf(""), 3.0f};
    std::vector<std::byte> w(pass.max_encoded_bytes(3));
    pass.encode(nan_only, w);
    std::vector<float> o(3);
    pass.decode(w, o);
    EXPECT_EQ(o[0], 1.0f);
    EXPECT_TRUE(std::isnan(o[1]));
    EXPECT_EQ(o[2], 3.0f);
  } else {
    pass.encode(in, wire);
    pass.decode(wire, out);
    EXPECT_EQ(out[2], std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(out[3]));
    std::vector<float> neg{-std::numeric_limits<float>::infinity()};
    std::vector<std::byte> w(pass.max_encoded_bytes(1));
    pass.encode(neg, w);
    std::vector<float> o(1);
    pass.decode(w, o);
    EXPECT_EQ(o[0], -std::numeric_limits<float>::infinity());
  }
  TypeParam zero(gc::nonfinite_policy::zero);
  zero.encode(in, wire);
  zero.decode(wire, out);
  EXPECT_EQ(out, (std::vector<float>{1.0f, 2.0f, 0.0f, 0.0f}));
}

TYPED_TEST(CastCodec, SmallOutputBufferIsAnError) {
  std::vector<float> in(10, 1.0f);
  std::vector<std::byte> wire(TypeParam().max_encoded_bytes(10) - 1);
  try {
    TypeParam().encode(in, wire);
    FAIL();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
  }
}

TYPED_TEST(CastCodec, MalformedPayloadsAreRejected) {
  TypeParam codec;
  std::vector<float> in(33, 0.5f);
  std::vector<std::byte> wire(codec.max_encoded_bytes(in.size()));
  codec.encode(in, wire);
  std::vector<float> out(in.size());

  auto expect_defect = [&](std::vector<std::byte> bytes, std::size_t n, const char* word) {
    std::vector<float> o(n);
    try {
      codec.decode(bytes, o);
      ADD_FAILURE() << "no throw for " << word;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
    try {
      codec.decode_add(bytes, o);
      ADD_FAILURE() << "no throw for " << word;
    } catch (const gc::decode_error&) {
    }
  };
  // Every truncation throws.
  for (std::size_t len = 0; len < wire.size(); ++len) {
    std::vector<std::byte> t(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(len));
    EXPECT_THROW(codec.decode(t, out), gc::decode_error) << len;
  }
  auto longer = wire;
  longer.push_back(std::byte{0});
  expect_defect(longer, in.size(), "oversized");
  expect_defect(wire, in.size() + 1, "count");
  // The other format's payload of the same size, same codec id.
  using other = typename codec_facts<TypeParam>::other;
  std::vector<std::byte> w2(other().max_encoded_bytes(in.size()));
  other().encode(in, w2);
  expect_defect(w2, in.size(), "dtype");
  auto bad_codec = wire;
  bad_codec[5] = std::byte{static_cast<unsigned char>(gc::codec_id::sign)};
  expect_defect(bad_codec, in.size(), "codec");
  auto bad_magic = wire;
  bad_magic[0] = std::byte{'X'};
  expect_defect(bad_magic, in.size(), "magic");
  auto bad_version = wire;
  bad_version[4] = std::byte{9};
  expect_defect(bad_version, in.size(), "version");
}

TEST(Fp8CastCodec, SaturatesFiniteValues) {
  std::vector<float> in{1e6f, -1e6f, 500.0f, 448.0f, 0.0f, 1e-30f};
  std::vector<float> out(in.size());
  std::vector<std::byte> wire(gc::e4m3_codec().max_encoded_bytes(in.size()));
  gc::e4m3_codec().encode(in, wire);
  gc::e4m3_codec().decode(wire, out);
  EXPECT_EQ(out, (std::vector<float>{448.0f, -448.0f, 448.0f, 448.0f, 0.0f, 0.0f}));
  gc::e5m2_codec().encode(in, wire);
  gc::e5m2_codec().decode(wire, out);
  EXPECT_EQ(out, (std::vector<float>{57344.0f, -57344.0f, 512.0f, 448.0f, 0.0f, 0.0f}));
}

TEST(Fp8CastCodec, EncodesEveryValueAsTheConversionDoes) {
  // The codec's loop (vectorized) against the element function, on the tie inputs.
  const auto table = fp8_table<gc::fp8_e4m3>(0x7e);
  std::vector<float> in = fp8_inputs(table);
  for (auto& x : in) x = std::isfinite(x) ? x : 1.0f;
  std::vector<std::byte> wire(gc::e4m3_codec().max_encoded_bytes(in.size()));
  gc::e4m3_codec().encode(in, wire);
  for (std::size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(std::to_integer<std::uint8_t>(wire[gc::wire_header_bytes + i]),
              gc::to_fp8_e4m3(in[i]).bits)
        << i;
  }
  gc::e5m2_codec().encode(in, wire);
  for (std::size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(std::to_integer<std::uint8_t>(wire[gc::wire_header_bytes + i]),
              gc::to_fp8_e5m2(in[i]).bits)
        << i;
  }
}

TYPED_TEST(CastCodec, PortableLoopsMatchTheDispatchedOnes) {
  // The codec runs an AVX2 clone where the CPU has AVX2; the portable loops (the ones
  // other CPUs and nvcc's host pass run) must give the same bytes and values.
  const auto table = fp8_table<gc::fp8_e4m3>(0x7e);
  std::vector<float> in = fp8_inputs(table);
  for (auto& x : in) x = std::isfinite(x) ? x : 0.5f;
  in.resize(in.size() - in.size() % 64 + 37);  // a tail the vector loops leave over
  const std::size_t n = in.size();
  using loops = gc::detail::cast_cpu<TypeParam::wire_dtype>;  // detail/cast_cpu.hpp
  TypeParam codec;
  std::vector<std::byte> wire(codec.max_encoded_bytes(n));
  codec.encode(in, wire);
  std::vector<std::byte> body(n * TypeParam::element_bytes);
  EXPECT_FALSE(loops::encode_all_impl(in.data(), body.data(), n));
  EXPECT_TRUE(std::equal(body.begin(), body.end(), wire.begin() + gc::wire_header_bytes));
  std::vector<float> out(n), ref(n), acc(n, 1.0f), ref_acc(n, 1.0f);
  codec.decode(wire, out);
  loops::decode_into_impl(body.data(), ref.data(), n);
  codec.decode_add(wire, acc);
  loops::decode_adding_impl(body.data(), ref_acc.data(), n);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(gc::detail::float_bits(out[i]), gc::detail::float_bits(ref[i])) << i;
    ASSERT_EQ(gc::detail::float_bits(acc[i]), gc::detail::float_bits(ref_acc[i])) << i;
  }
  TypeParam zero(gc::nonfinite_policy::zero);
  in[3] = std::numeric_limits<float>::infinity();
  in[n - 1] = std::nanf("");
  zero.encode(in, wire);
  loops::encode_zeroing_impl(in.data(), body.data(), n);
  EXPECT_TRUE(std::equal(body.begin(), body.end(), wire.begin() + gc::wire_header_bytes));
  EXPECT_TRUE(loops::encode_all_impl(in.data(), body.data(), n));  // saw the non-finite
}

// The f16 / bf16 cast codec: exact conversions, round-to-nearest-even against a
// reference, the codec's payload and its rejection of malformed payloads.
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
static_assert(gc::bf16_codec::traits.linear && gc::bf16_codec::traits.fixed_size &&
              !gc::bf16_codec::traits.stateful);

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

template <class C>
class CastCodec : public ::testing::Test {};
using CastCodecs = ::testing::Types<gc::bf16_codec, gc::f16_codec>;
TYPED_TEST_SUITE(CastCodec, CastCodecs);

TYPED_TEST(CastCodec, RoundTripWithinHalfAnUlp) {
  TypeParam codec;
  for (std::size_t n : {0u, 1u, 2u, 7u, 1001u, 65536u}) {
    std::vector<float> in(n);
    std::mt19937 gen(static_cast<unsigned>(n));
    std::normal_distribution<float> d(0.0f, 100.0f);
    for (auto& x : in) x = d(gen);
    std::vector<std::byte> wire(codec.max_encoded_bytes(n));
    ASSERT_EQ(codec.encode(in, wire), gc::wire_header_bytes + 2 * n);
    std::vector<float> out(n, -1.0f);
    codec.decode(wire, out);
    // Half an ulp of the format: 2^-11 (f16, normal range) or 2^-8 (bf16), relative.
    const double rel =
        TypeParam::wire_dtype == gc::dtype::f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_LE(std::fabs(out[i] - in[i]), rel * std::fabs(in[i]) + std::ldexp(1.0, -25)) << i;
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
  pass.encode(in, wire);
  pass.decode(wire, out);
  EXPECT_TRUE(std::isinf(out[2]));
  EXPECT_TRUE(std::isnan(out[3]));
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
  // The other 16-bit format's payload, same codec id.
  using other =
      std::conditional_t<std::is_same_v<TypeParam, gc::bf16_codec>, gc::f16_codec, gc::bf16_codec>;
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

// error_feedback<Codec>: the residual identity, convergence of the running average, the
// payload being the inner codec's, state save / load (and its rejection of malformed
// bytes), re-sharding that keeps the sum, and no allocation per call.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/core/bitpack.hpp>

#if __has_include(<gradcomm/codec/quantize.hpp>)
#include <gradcomm/codec/quantize.hpp>
#endif
#if __has_include(<gradcomm/codec/sign.hpp>)
#include <gradcomm/codec/sign.hpp>
#endif

#include <gtest/gtest.h>

#include "../support/allocation_counter.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

using gradcomm_test::g_allocations;  // counts every allocation of this program

namespace {

// One bit a value (its sign) and one scale (mean |x|): aggressive enough that error feedback
// matters, as with 1-bit SGD. Test-local, so the test needs no other codec header.
class toy_sign_codec {
 public:
  using value_type = float;
  static constexpr gc::codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr gc::codec_id id = gc::codec_id::sign;

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return gc::wire_header_bytes + 4 + gc::packed_bytes(n, 1);
  }
  std::size_t encode(gc::host_view<const float> in, std::span<std::byte> out) const {
    const std::size_t n = in.size();
    double s = 0.0;
    for (float x : in) s += std::fabs(x);
    gc::wire_writer w(out, "toy_sign_codec::encode");
    gc::write_header(w, id, gc::dtype::f32, n, {}, 4 + gc::packed_bytes(n, 1));
    w.put_f32(n == 0 ? 0.0f : static_cast<float>(s / static_cast<double>(n)));
    auto body = w.take(gc::packed_bytes(n, 1));
    std::fill(body.begin(), body.end(), std::byte{0});
    for (std::size_t i = 0; i < n; ++i) gc::set_code(body.data(), i, 1, in[i] < 0.0f ? 1 : 0);
    return w.position();
  }
  void decode(std::span<const std::byte> payload, gc::host_view<float> out) const {
    float scale;
    const std::byte* body = open(payload, out.size(), scale);
    for (std::size_t i = 0; i < out.size(); ++i) {
      out[i] = gc::get_code(body, i, 1) ? -scale : scale;
    }
  }
  void decode_add(std::span<const std::byte> payload, gc::host_view<float> acc) const {
    float scale;
    const std::byte* body = open(payload, acc.size(), scale);
    for (std::size_t i = 0; i < acc.size(); ++i) {
      acc[i] += gc::get_code(body, i, 1) ? -scale : scale;
    }
  }
  // The context forms (Codec requirement 7): on_host is the host code above.
  std::size_t encode(gc::host_context, gc::host_view<const float> in,
                     std::span<std::byte> out) const {
    return encode(in, out);
  }
  void decode(gc::host_context, std::span<const std::byte> p, gc::host_view<float> out) const {
    decode(p, out);
  }
  void decode_add(gc::host_context, std::span<const std::byte> p, gc::host_view<float> acc) const {
    decode_add(p, acc);
  }

 private:
  static const std::byte* open(std::span<const std::byte> payload, std::size_t n, float& scale) {
    gc::wire_reader r(payload, "toy_sign_codec::decode");
    const gc::wire_header h = gc::read_header(r, id);
    gc::check_count(h, n, "toy_sign_codec::decode");
    if (h.body_bytes != 4 + gc::packed_bytes(n, 1)) {
      throw gc::decode_error("toy_sign_codec::decode", "body size");
    }
    scale = r.get_f32();
    return r.take(gc::packed_bytes(n, 1)).data();
  }
};

// bf16 with a stream key, to check that error_feedback forwards it.
class toy_stochastic_codec : public gc::bf16_codec {
 public:
  void set_stream(gc::stream_key k) noexcept { key_ = k; }
  gc::stream_key stream() const noexcept { return key_; }

 private:
  gc::stream_key key_{};
};

using ef_bf16 = gc::error_feedback<gc::bf16_codec>;
using ef_f16 = gc::error_feedback<gc::f16_codec>;
using ef_sign = gc::error_feedback<toy_sign_codec>;
using ef_nested = gc::error_feedback<ef_bf16>;  // a stateful inner codec

static_assert(gc::Codec<ef_bf16>);
static_assert(gc::Codec<ef_sign>);
static_assert(gc::Codec<ef_nested>);
static_assert(ef_bf16::traits.stateful && ef_bf16::traits.linear && ef_bf16::traits.fixed_size);
static_assert(ef_sign::traits.stateful && !ef_sign::traits.linear && ef_sign::traits.fixed_size);
static_assert(ef_bf16::id == gc::codec_id::cast && ef_sign::id == gc::codec_id::sign);
static_assert(!gc::StochasticCodec<ef_bf16>);
static_assert(gc::StochasticCodec<gc::error_feedback<toy_stochastic_codec>>);
// The residual is mutable state: a const error_feedback cannot encode.
template <class C>
concept encodes_when_const = requires(const C& c, gc::host_view<const float> in,
                                      std::span<std::byte> o) {
  c.encode(in, o);
};
static_assert(encodes_when_const<gc::bf16_codec> && !encodes_when_const<ef_bf16>);

std::vector<float> random_vector(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

template <class C>
std::vector<std::byte> encode_one(C& c, const std::vector<float>& g) {
  std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
  wire.resize(c.encode(g, wire));
  return wire;
}

std::vector<std::byte> saved(const auto& c) {
  std::vector<std::byte> s(c.state_bytes());
  s.resize(c.save_state(s));
  return s;
}

template <class C>
class ErrorFeedback : public ::testing::Test {};
#if __has_include(<gradcomm/codec/quantize.hpp>)
// 4 bits a value, a scale per 64: coarse enough that the residual matters.
struct quant4_codec : gc::scalar_quant_codec {
  quant4_codec() : gc::scalar_quant_codec({.bits = 4, .block = 64}) {}
};
static_assert(gc::Codec<gc::error_feedback<quant4_codec>>);
#define GC_EF_QUANT , quant4_codec
#else
#define GC_EF_QUANT
#endif
#if __has_include(<gradcomm/codec/sign.hpp>)
static_assert(gc::Codec<gc::error_feedback<gc::sign_codec>>);
#define GC_EF_SIGN , gc::sign_codec
#else
#define GC_EF_SIGN
#endif
// The quantizer and the sign codec join where their headers exist.
using Inners =
    ::testing::Types<gc::bf16_codec, gc::f16_codec, toy_sign_codec GC_EF_QUANT GC_EF_SIGN>;
TYPED_TEST_SUITE(ErrorFeedback, Inners);

// residual + D(C(g + e)) == g + e up to the one rounding of the subtraction, and the payload
// is byte for byte what the inner codec makes of g + e.
TYPED_TEST(ErrorFeedback, ResidualPlusDecodedIsInputPlusOldResidual) {
  for (std::size_t n : {0u, 1u, 7u, 1001u, 65536u}) {
    gc::error_feedback<TypeParam> ef;
    TypeParam plain;
    for (unsigned step = 0; step < 4; ++step) {
      const auto g = random_vector(n, 100 * static_cast<unsigned>(n) + step);
      std::vector<float> t(n);
      const auto e_old = ef.residual();
      for (std::size_t i = 0; i < n; ++i) t[i] = g[i] + (step == 0 ? 0.0f : e_old[i]);
      const auto wire = encode_one(ef, g);
      EXPECT_EQ(wire, encode_one(plain, t)) << "n " << n << " step " << step;
      std::vector<float> d(n);
      plain.decode(wire, d);
      ASSERT_EQ(ef.residual().size(), n);
      for (std::size_t i = 0; i < n; ++i) {
        const double res = ef.residual()[i];
        const double err = res + static_cast<double>(d[i]) - static_cast<double>(t[i]);
        ASSERT_LE(std::fabs(err), std::ldexp(std::fabs(res), -24)) << "n " << n << " i " << i;
      }
      // decode and decode_add are the inner codec's.
      std::vector<float> d2(n), acc(n, 1.0f);
      ef.decode(wire, d2);
      ef.decode_add(wire, acc);
      EXPECT_EQ(d2, d);
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 1.0f + d[i]);
    }
  }
}

// EF's point: with a constant gradient the running average of what is sent converges to
// the gradient (sum of decoded = T g - e_T), where the codec alone stays biased.
TYPED_TEST(ErrorFeedback, RunningAverageConvergesToTheGradient) {
  const std::size_t n = 257;
  const auto g = random_vector(n, 5);
  gc::error_feedback<TypeParam> ef(n);
  TypeParam plain;
  std::vector<double> sum(n, 0.0);
  std::vector<float> d(n);
  const int steps = 4000;
  for (int s = 0; s < steps; ++s) {
    plain.decode(encode_one(ef, g), d);
    for (std::size_t i = 0; i < n; ++i) sum[i] += d[i];
  }
  plain.decode(encode_one(plain, g), d);  // what the codec alone sends, every step
  double ef_err = 0.0, plain_err = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double avg = sum[i] / steps;
    // avg - g = -e_T / T, up to the rounding of T residual updates.
    ASSERT_LE(std::fabs(avg - g[i]),
              std::fabs(ef.residual()[i]) / steps + 1e-6 * (1.0 + std::fabs(g[i])))
        << i;
    ef_err = std::max(ef_err, std::fabs(avg - g[i]));
    plain_err = std::max(plain_err, std::fabs(static_cast<double>(d[i]) - g[i]));
  }
  EXPECT_LT(ef_err, plain_err / 10) << "error feedback " << ef_err << ", codec alone " << plain_err;
}

TYPED_TEST(ErrorFeedback, SaveLoadGivesIdenticalBytesAfterwards) {
  const std::size_t n = 333;
  gc::error_feedback<TypeParam> a;
  for (unsigned s = 0; s < 3; ++s) encode_one(a, random_vector(n, s));
  const auto state = saved(a);
  EXPECT_EQ(state.size(), a.state_bytes());
  EXPECT_EQ(state.size(), gc::error_feedback_state_header_bytes + 4 * n);

  gc::error_feedback<TypeParam> b;
  b.load_state(state);
  ASSERT_TRUE(b.sized());
  ASSERT_EQ(b.size(), n);
  EXPECT_EQ(b.residual_norm(), a.residual_norm());
  EXPECT_EQ(saved(b), state);
  for (unsigned s = 3; s < 8; ++s) {
    const auto g = random_vector(n, s);
    ASSERT_EQ(encode_one(a, g), encode_one(b, g)) << s;
  }
  // A fresh codec differs: the residual is what the checkpoint carries.
  gc::error_feedback<TypeParam> fresh;
  const auto g = random_vector(n, 99);
  EXPECT_NE(encode_one(fresh, g), encode_one(a, g));
}

}  // namespace

TEST(ErrorFeedbackState, NestedStatefulInnerRoundTrips) {
  const std::size_t n = 100;
  ef_nested a;
  for (unsigned s = 0; s < 3; ++s) encode_one(a, random_vector(n, s));
  EXPECT_GT(a.inner().residual_norm(), 0.0);
  const auto state = saved(a);
  EXPECT_EQ(state.size(), 2 * (gc::error_feedback_state_header_bytes + 4 * n));
  ef_nested b;
  b.load_state(state);
  EXPECT_EQ(b.inner().residual_norm(), a.inner().residual_norm());
  for (unsigned s = 3; s < 6; ++s) {
    const auto g = random_vector(n, s);
    ASSERT_EQ(encode_one(a, g), encode_one(b, g)) << s;
  }
}

TEST(ErrorFeedbackState, UnsizedAndEmptyRoundTrip) {
  ef_bf16 unsized;
  const auto s0 = saved(unsized);
  EXPECT_EQ(s0.size(), gc::error_feedback_state_header_bytes);
  ef_bf16 b(5);
  b.load_state(s0);
  EXPECT_FALSE(b.sized());
  EXPECT_EQ(b.size(), 0u);

  ef_bf16 empty(0);
  const auto s1 = saved(empty);
  EXPECT_NE(s0, s1);  // sized to 0 is not unsized
  b.load_state(s1);
  EXPECT_TRUE(b.sized());
  EXPECT_EQ(b.size(), 0u);
  std::vector<float> one(1);
  std::vector<std::byte> wire(b.max_encoded_bytes(1));
  EXPECT_THROW(b.encode(one, wire), gc::error);  // sized to 0, handed 1
}

TEST(ErrorFeedbackState, SmallBufferWritesNothing) {
  ef_bf16 a;
  encode_one(a, random_vector(10, 1));
  std::vector<std::byte> out(a.state_bytes() - 1, std::byte{0xAB});
  try {
    a.save_state(out);
    FAIL() << "expected buffer_too_small";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
  }
  for (std::byte b : out) ASSERT_EQ(b, std::byte{0xAB});
}

TEST(ErrorFeedbackState, MalformedStatesAreRejected) {
  ef_bf16 a;
  encode_one(a, random_vector(9, 3));
  const auto good = saved(a);

  ef_bf16 target;
  encode_one(target, random_vector(9, 4));
  const auto before = saved(target);

  auto expect_defect = [&](const std::vector<std::byte>& bytes, const char* word) {
    try {
      target.load_state(bytes);
      ADD_FAILURE() << "no throw for " << word;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
    EXPECT_EQ(saved(target), before) << "a rejected state changed the codec (" << word << ")";
  };

  for (std::size_t len = 0; len < good.size(); ++len) {
    std::vector<std::byte> t(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    EXPECT_THROW(target.load_state(t), gc::decode_error) << len;
  }
  auto longer = good;
  longer.push_back(std::byte{0});
  expect_defect(longer, "oversized");
  auto bad_magic = good;
  bad_magic[0] = std::byte{'X'};
  expect_defect(bad_magic, "magic");
  auto bad_version = good;
  bad_version[4] = std::byte{2};
  expect_defect(bad_version, "version");
  auto bad_codec = good;
  bad_codec[5] = std::byte{static_cast<unsigned char>(gc::codec_id::topk)};
  expect_defect(bad_codec, "codec id");
  auto bad_flags = good;
  bad_flags[6] = std::byte{0x81};
  expect_defect(bad_flags, "flags");
  auto inner_flag = good;  // claims an inner state for a stateless inner codec
  inner_flag[6] = std::byte{3};
  expect_defect(inner_flag, "flags");
  auto reserved = good;
  reserved[7] = std::byte{1};
  expect_defect(reserved, "reserved");
  auto unsized = good;  // unsized, yet 9 elements
  unsized[6] = std::byte{0};
  expect_defect(unsized, "unsized");
  auto inner_bytes = good;  // announces inner state bytes for a stateless inner codec
  inner_bytes[16] = std::byte{4};
  expect_defect(inner_bytes, "inner state");
  auto huge = good;  // an element count whose byte size wraps a 64-bit multiply
  for (int i = 8; i < 16; ++i) huge[static_cast<std::size_t>(i)] = std::byte{0xff};
  expect_defect(huge, "truncated");
  auto nan = good;
  const float q = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan.data() + gc::error_feedback_state_header_bytes + 4 * 2, &q, 4);
  expect_defect(nan, "index 2");
  // Another codec's state.
  ef_sign other;
  encode_one(other, random_vector(9, 3));
  expect_defect(saved(other), "codec id");
  // A plain state handed to a codec whose inner codec is stateful, and the other way.
  ef_nested nested;
  EXPECT_THROW(nested.load_state(good), gc::decode_error);
  encode_one(nested, random_vector(9, 3));
  expect_defect(saved(nested), "flags");
}

TEST(ErrorFeedbackSize, FirstEncodeOrConstructorSizesAndMismatchIsAnError) {
  ef_bf16 ef;
  EXPECT_FALSE(ef.sized());
  encode_one(ef, random_vector(10, 1));
  EXPECT_TRUE(ef.sized());
  EXPECT_EQ(ef.size(), 10u);
  const auto residual = std::vector<float>(ef.residual().begin(), ef.residual().end());
  std::vector<float> g11(11, 1.0f);
  std::vector<std::byte> wire(ef.max_encoded_bytes(11));
  try {
    ef.encode(g11, wire);
    FAIL() << "expected invalid_argument";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("reset()"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(std::equal(residual.begin(), residual.end(), ef.residual().begin()));
  ef.reset();
  EXPECT_FALSE(ef.sized());
  ef.encode(g11, wire);
  EXPECT_EQ(ef.size(), 11u);
  ef.resize(3);
  EXPECT_EQ(ef.size(), 3u);
  EXPECT_EQ(ef.residual_norm(), 0.0);

  ef_bf16 sized(gc::bf16_codec{}, 4);
  EXPECT_TRUE(sized.sized());
  EXPECT_EQ(sized.size(), 4u);
  EXPECT_THROW(sized.encode(g11, wire), gc::error);
}

TEST(ErrorFeedbackEncode, FailedEncodeLeavesTheResidual) {
  ef_bf16 ef;
  const auto g = random_vector(16, 2);
  encode_one(ef, g);
  const auto before = saved(ef);
  std::vector<std::byte> small(ef.max_encoded_bytes(16) - 1);
  EXPECT_THROW(ef.encode(g, small), gc::error);
  EXPECT_EQ(saved(ef), before);
  auto bad = g;
  bad[5] = std::numeric_limits<float>::infinity();  // the default policy rejects it
  std::vector<std::byte> wire(ef.max_encoded_bytes(16));
  EXPECT_THROW(ef.encode(bad, wire), gc::error);
  EXPECT_EQ(saved(ef), before);
  // A first encode that fails leaves the codec unsized: another size may come next.
  ef_bf16 fresh;
  EXPECT_THROW(fresh.encode(bad, wire), gc::error);
  EXPECT_FALSE(fresh.sized());
  const std::vector<float> g3(3, 1.0f);
  EXPECT_NO_THROW(fresh.encode(g3, wire));
  EXPECT_EQ(fresh.size(), 3u);
}

TEST(ErrorFeedbackEncode, NonFiniteResidualIsDropped) {
  gc::error_feedback<gc::bf16_codec> ef{gc::bf16_codec(gc::nonfinite_policy::pass)};
  std::vector<float> g{1.1f, std::numeric_limits<float>::infinity(), std::nanf(""), -3.3f};
  encode_one(ef, g);
  EXPECT_EQ(ef.residual()[1], 0.0f);
  EXPECT_EQ(ef.residual()[2], 0.0f);
  EXPECT_NE(ef.residual()[0], 0.0f);  // 1.1 is not a bf16
  EXPECT_TRUE(std::isfinite(ef.residual_norm()));
}

TEST(ErrorFeedbackEncode, NoAllocationAfterTheFirstCall) {
  const std::size_t n = 4096;
  ef_bf16 ef;
  const auto g = random_vector(n, 8);
  std::vector<std::byte> wire(ef.max_encoded_bytes(n));
  ef.encode(g, wire);
  const long before = g_allocations.load();
  for (int s = 0; s < 10; ++s) ef.encode(g, wire);
  EXPECT_EQ(g_allocations.load(), before);
}

TEST(ErrorFeedbackEncode, ResidualNormAndSetResidual) {
  ef_bf16 ef;
  const std::vector<float> e{3.0f, -4.0f, 0.0f};
  ef.set_residual(e);
  EXPECT_EQ(ef.size(), 3u);
  EXPECT_EQ(ef.residual_norm(), 5.0);
  const std::vector<float> bad{1.0f, std::nanf("")};
  EXPECT_THROW(ef.set_residual(bad), gc::error);
  EXPECT_EQ(ef.size(), 3u);
  // The next encode sends g + e.
  const std::vector<float> g{1.0f, 1.0f, 1.0f};
  std::vector<float> out(3);
  ef.decode(encode_one(ef, g), out);
  EXPECT_EQ(out, (std::vector<float>{4.0f, -3.0f, 1.0f}));
  EXPECT_EQ(ef.residual_norm(), 0.0);
}

TEST(ErrorFeedbackEncode, ForwardsTheStreamKey) {
  gc::error_feedback<toy_stochastic_codec> ef;
  const gc::stream_key k{.seed = 7, .step = 3, .rank = 2, .bucket = 1};
  ef.set_stream(k);
  EXPECT_EQ(ef.stream(), k);
  EXPECT_EQ(ef.inner().stream(), k);
}

TEST(ReshardResiduals, KeepsTheSum) {
  const std::size_t n = 1000;
  for (int old_world : {1, 2, 3, 4, 7, 8}) {
    std::vector<std::vector<float>> old;
    for (int r = 0; r < old_world; ++r) {
      old.push_back(random_vector(n, 50 + static_cast<unsigned>(r), 1e-2f));
    }
    for (int new_world : {1, 2, 3, 4, 7, 8}) {
      const auto fresh = gc::reshard_residuals(old, new_world);
      ASSERT_EQ(fresh.size(), static_cast<std::size_t>(new_world));
      for (std::size_t i = 0; i < n; ++i) {
        double before = 0.0, after = 0.0;
        for (const auto& e : old) before += e[i];
        for (const auto& e : fresh) {
          ASSERT_EQ(e.size(), n);
          ASSERT_EQ(e[i], fresh[0][i]);  // equal shares
          after += e[i];
        }
        // new_world copies of one f32 rounding of before / new_world.
        ASSERT_LE(std::fabs(after - before), std::ldexp(std::fabs(before), -24) * 1.0000001)
            << old_world << " -> " << new_world << " at " << i;
      }
    }
  }
  // Same world size, one rank: unchanged.
  const std::vector<std::vector<float>> one{{1.5f, -2.25f, 0.0f}};
  EXPECT_EQ(gc::reshard_residuals(one, 1), one);
  // Exactly representable shares are exact.
  const std::vector<std::vector<float>> two{{1.0f, 2.0f}, {3.0f, -6.0f}};
  EXPECT_EQ(gc::reshard_residuals(two, 4),
            (std::vector<std::vector<float>>(4, std::vector<float>{1.0f, -1.0f})));
  // n = 0.
  const std::vector<std::vector<float>> empty(3);
  EXPECT_EQ(gc::reshard_residuals(empty, 2), (std::vector<std::vector<float>>(2)));
}

TEST(ReshardResiduals, RejectsBadArguments) {
  const std::vector<std::vector<float>> old{{1.0f}, {2.0f}};
  EXPECT_THROW(gc::reshard_residuals(old, 0), gc::error);
  EXPECT_THROW(gc::reshard_residuals(old, -1), gc::error);
  EXPECT_THROW(gc::reshard_residuals({}, 2), gc::error);
  const std::vector<std::vector<float>> ragged{{1.0f}, {2.0f, 3.0f}};
  EXPECT_THROW(gc::reshard_residuals(ragged, 2), gc::error);
}

TEST(ReshardResiduals, WorksWithCodecState) {
  // Three ranks' codecs, re-sharded onto two: the new residuals sum to the old ones.
  const std::size_t n = 64;
  std::vector<ef_sign> old_ranks(3);
  std::vector<std::vector<float>> old;
  for (unsigned r = 0; r < 3; ++r) {
    encode_one(old_ranks[r], random_vector(n, r));
    old.emplace_back(old_ranks[r].residual().begin(), old_ranks[r].residual().end());
  }
  const auto fresh = gc::reshard_residuals(old, 2);
  std::vector<ef_sign> new_ranks(2);
  for (unsigned r = 0; r < 2; ++r) new_ranks[r].set_residual(fresh[r]);
  for (std::size_t i = 0; i < n; ++i) {
    const double before = static_cast<double>(old[0][i]) + old[1][i] + old[2][i];
    const double after =
        static_cast<double>(new_ranks[0].residual()[i]) + new_ranks[1].residual()[i];
    ASSERT_NEAR(after, before, std::ldexp(std::fabs(before), -23) + 1e-30) << i;
  }
}

// Found by fuzz.error_feedback: a nested state whose inner residual covers another number of
// elements than the outer one was accepted, and the next encode then threw.
TEST(ErrorFeedbackState, NestedStatesOfDifferentSizesAreRejected) {
  using nested = gradcomm::error_feedback<gradcomm::error_feedback<gradcomm::bf16_codec>>;
  nested seven(7), five(5);
  std::vector<float> g7(7, 0.3f), g5(5, 0.3f);
  std::vector<std::byte> w(seven.max_encoded_bytes(7));
  seven.encode(g7, w);
  five.encode(g5, w);
  std::vector<std::byte> s7(seven.state_bytes()), s5(five.state_bytes());
  s7.resize(seven.save_state(s7));
  s5.resize(five.save_state(s5));
  // Outer part of the 7-element state, inner part of the 5-element one.
  const std::size_t outer7 = 24 + 7 * sizeof(float), outer5 = 24 + 5 * sizeof(float);
  std::vector<std::byte> mixed(s7.begin(), s7.begin() + static_cast<std::ptrdiff_t>(outer7));
  mixed.insert(mixed.end(), s5.begin() + static_cast<std::ptrdiff_t>(outer5), s5.end());
  const std::uint64_t inner_bytes = s5.size() - outer5;
  std::memcpy(mixed.data() + 16, &inner_bytes, sizeof inner_bytes);
  nested target(7);
  try {
    target.load_state(mixed);
    FAIL() << "accepted an inconsistent nested state";
  } catch (const gradcomm::decode_error& e) {
    EXPECT_NE(std::string(e.what()).find("inner state sized for 5"), std::string::npos) << e.what();
  }
  std::vector<float> g(7, 0.1f);
  std::vector<std::byte> out(target.max_encoded_bytes(7));
  EXPECT_NO_THROW(target.encode(g, out));  // unchanged by the rejected load
}

static_assert(!gc::ResidualCodec<gc::bf16_codec>);
static_assert(!gc::ResidualCodec<toy_sign_codec>);

#if __has_include(<gradcomm/codec/sign.hpp>)
static_assert(gc::ResidualCodec<gc::sign_codec>);

namespace {
// sign_codec without its fused step: error_feedback takes the unfused path around it.
struct unfused_sign {
  using value_type = float;
  static constexpr gc::codec_traits traits = gc::sign_codec::traits;
  static constexpr gc::codec_id id = gc::sign_codec::id;
  gc::sign_codec c;
  std::size_t max_encoded_bytes(std::size_t n) const noexcept { return c.max_encoded_bytes(n); }
  std::size_t encode(gc::host_view<const float> in, std::span<std::byte> out) const {
    return c.encode(in, out);
  }
  void decode(std::span<const std::byte> p, gc::host_view<float> out) const { c.decode(p, out); }
  void decode_add(std::span<const std::byte> p, gc::host_view<float> acc) const {
    c.decode_add(p, acc);
  }
  std::size_t encode(gc::host_context x, gc::host_view<const float> in,
                     std::span<std::byte> out) const {
    return c.encode(x, in, out);
  }
  void decode(gc::host_context x, std::span<const std::byte> p, gc::host_view<float> out) const {
    c.decode(x, p, out);
  }
  void decode_add(gc::host_context x, std::span<const std::byte> p,
                  gc::host_view<float> acc) const {
    c.decode_add(x, p, acc);
  }
};
static_assert(gc::Codec<unfused_sign> && !gc::ResidualCodec<unfused_sign>);

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}
}  // namespace

TEST(ErrorFeedbackFused, SignGivesTheUnfusedBytesAndResidualStepAfterStep) {
  for (std::size_t n : {1u, 9u, 100u, 1001u, 4096u}) {
    for (std::uint32_t block : {5u, 64u, 256u}) {
      for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::zero}) {
        gc::error_feedback<gc::sign_codec> fused(gc::sign_codec(block, policy));
        gc::error_feedback<unfused_sign> plain(unfused_sign{gc::sign_codec(block, policy)});
        for (unsigned step = 0; step < 5; ++step) {
          auto g = random_vector(n, 1000 * step + static_cast<unsigned>(n + block), 2.0f);
          if (policy == gc::nonfinite_policy::zero && n > 9 && step % 2 == 1) {
            g[n / 2] = std::numeric_limits<float>::infinity();
            g[n / 5] = std::nanf("");
          }
          ASSERT_EQ(encode_one(fused, g), encode_one(plain, g))
              << "n " << n << " block " << block << " step " << step;
          ASSERT_TRUE(same_bits(fused.residual(), plain.residual()))
              << "n " << n << " block " << block << " step " << step;
        }
        EXPECT_EQ(saved(fused).size(), saved(plain).size());
      }
    }
  }
}

TEST(ErrorFeedbackFused, FailedEncodeLeavesTheResidual) {
  gc::error_feedback<gc::sign_codec> ef(gc::sign_codec(16));
  const auto g = random_vector(100, 3);
  encode_one(ef, g);
  const auto before = saved(ef);
  // A non-finite value in a late block: earlier blocks were already done when it is found.
  auto bad = g;
  bad[90] = -std::numeric_limits<float>::infinity();
  std::vector<std::byte> wire(ef.max_encoded_bytes(100));
  EXPECT_THROW(ef.encode(bad, wire), gc::error);
  EXPECT_EQ(saved(ef), before);
  std::vector<std::byte> small(wire.size() - 1);
  EXPECT_THROW(ef.encode(g, small), gc::error);
  EXPECT_EQ(saved(ef), before);
  // A first encode that fails leaves the codec unsized.
  gc::error_feedback<gc::sign_codec> fresh;
  EXPECT_THROW(fresh.encode(bad, wire), gc::error);
  EXPECT_FALSE(fresh.sized());
  EXPECT_NO_THROW(encode_one(fresh, g));
  EXPECT_EQ(fresh.size(), 100u);
}

TEST(ErrorFeedbackFused, NoAllocationAfterTheFirstCall) {
  gc::error_feedback<gc::sign_codec> ef;
  const auto g = random_vector(4096, 8);
  std::vector<std::byte> wire(ef.max_encoded_bytes(g.size()));
  ef.encode(g, wire);
  const long before = g_allocations.load();
  for (int s = 0; s < 10; ++s) ef.encode(g, wire);
  EXPECT_EQ(g_allocations.load(), before);
}
#endif

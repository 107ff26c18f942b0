// Codec requirement 7 (codec/codec.hpp): every codec's calls also take an execution
// context first, and `encode(on_host, ...)`, `decode(on_host, ...)` and
// `decode_add(on_host, ...)` give the bytes and values of the short host calls. Each codec
// runs twice from the same start, once with each form, over several steps (so that
// stateful codecs compare their state too). PowerSGD (needs Eigen) is in test_powersgd.cpp.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/fp8_block.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/codec/vector_quant.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::ExecutionContext<gc::host_context>);
static_assert(gc::host_context::space == gc::memory_space::host);

// Every library codec models Codec, whose requirement 7 asks for the context forms.
static_assert(gc::Codec<gc::identity_codec>);
static_assert(gc::Codec<gc::bf16_codec> && gc::Codec<gc::f16_codec>);
static_assert(gc::Codec<gc::e4m3_codec> && gc::Codec<gc::e5m2_codec>);
static_assert(gc::Codec<gc::fp8_block_codec>);
static_assert(gc::Codec<gc::scalar_quant_codec>);
static_assert(gc::Codec<gc::sign_codec> && gc::Codec<gc::ternary_codec>);
static_assert(gc::Codec<gc::vq_gaussian_codec> && gc::Codec<gc::vq_learned_codec>);
static_assert(gc::Codec<gc::threshold_codec> && gc::Codec<gc::topk_codec>);
static_assert(gc::Codec<gc::approx_topk_codec> && gc::Codec<gc::randomk_codec>);
static_assert(gc::Codec<gc::dgc_memory<gc::topk_codec>>);
static_assert(gc::Codec<gc::error_feedback<gc::sign_codec>>);
static_assert(gc::Codec<gc::error_feedback<gc::topk_codec>>);
static_assert(gc::Codec<gc::error_feedback<gc::dgc_memory<gc::randomk_codec>>>);

// The context forms take what the short forms take: host_views and host containers.
static_assert(requires(gc::bf16_codec c, std::vector<float> g, std::vector<std::byte> w) {
  { c.encode(gc::on_host, g, w) } -> std::same_as<std::size_t>;
  c.decode(gc::on_host, w, g);
  c.decode_add(gc::on_host, w, gc::host_view<float>(g));
});

// Requirement 8: workspace_bytes(c, n) is what a codec declares, 0 where it declares none.
struct declares_workspace : gc::identity_codec {
  std::size_t workspace_bytes(std::size_t n) const { return 8 * n; }
};
static_assert(gc::Codec<declares_workspace>);

TEST(CodecContexts, WorkspaceBytesIsWhatACodecDeclaresElseZero) {
  EXPECT_EQ(gc::workspace_bytes(declares_workspace{}, 100), 800u);
  EXPECT_EQ(gc::workspace_bytes(gc::identity_codec{}, 100), 0u);
  const gc::topk_codec topk({.ratio = 0.01});  // declares it: its selection's scratch
  EXPECT_EQ(gc::workspace_bytes(topk, 100), topk.workspace_bytes(100));
  EXPECT_GT(gc::workspace_bytes(topk, 100), 0u);
}

std::vector<float> seeded(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> g(n);
  for (float& x : g) x = d(rng);
  return g;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp of an empty vector's null pointer is undefined (UBSan says so).
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Runs `short_form` and `with_context` (copies of one codec) for three steps on the same
// inputs, one with the short calls and one with the on_host ones, and compares payloads,
// decoded values and decode_add sums bit for bit.
template <class C>
void expect_same_as_short_form(const std::string& name, C short_form) {
  C with_context = short_form;
  for (std::size_t n : {0u, 1u, 257u, 4096u}) {
    C a = short_form;
    C b = with_context;
    for (unsigned step = 0; step < 3; ++step) {
      SCOPED_TRACE(name + " n=" + std::to_string(n) + " step=" + std::to_string(step));
      const std::vector<float> g = seeded(n, 17 * step + static_cast<unsigned>(n));
      std::vector<std::byte> wa(a.max_encoded_bytes(n)), wb(b.max_encoded_bytes(n));
      wa.resize(a.encode(g, wa));
      wb.resize(b.encode(gc::on_host, g, wb));
      ASSERT_EQ(wa, wb);

      std::vector<float> da(n), db(n);
      a.decode(wa, da);
      b.decode(gc::on_host, wb, db);
      EXPECT_TRUE(same_bits(da, db));

      std::vector<float> sa = seeded(n, 99), sb = sa;
      a.decode_add(wa, sa);
      b.decode_add(gc::on_host, wb, gc::host_view<float>(sb));
      EXPECT_TRUE(same_bits(sa, sb));
    }
  }
}

TEST(CodecContexts, IdentityAndCasts) {
  expect_same_as_short_form("identity", gc::identity_codec{});
  expect_same_as_short_form("bf16", gc::bf16_codec{});
  expect_same_as_short_form("f16", gc::f16_codec{});
  expect_same_as_short_form("e4m3", gc::e4m3_codec{});
  expect_same_as_short_form("e5m2", gc::e5m2_codec{});
}

TEST(CodecContexts, Fp8Block) { expect_same_as_short_form("fp8_block", gc::fp8_block_codec{}); }

TEST(CodecContexts, ScalarQuantization) {
  expect_same_as_short_form("quant4", gc::scalar_quant_codec({.bits = 4}));
  gc::scalar_quant_codec stochastic(
      {.bits = 2, .block = 100, .rounding = gc::quant_rounding::stochastic});
  stochastic.set_stream({.seed = 7, .step = 1});
  expect_same_as_short_form("quant2_stochastic", stochastic);
}

TEST(CodecContexts, SignAndTernary) {
  expect_same_as_short_form("sign", gc::sign_codec{});
  expect_same_as_short_form("ternary", gc::ternary_codec(100));
}

TEST(CodecContexts, VectorQuantization) {
  expect_same_as_short_form("vq_gaussian", gc::vq_gaussian_codec({.dim = 4}));
  expect_same_as_short_form("vq_learned", gc::vq_learned_codec({.dim = 4, .refresh_interval = 2}));
}

TEST(CodecContexts, SparseFormats) {
  expect_same_as_short_form("threshold", gc::threshold_codec{});
  expect_same_as_short_form("topk", gc::topk_codec({.ratio = 0.01}));
  expect_same_as_short_form("approx_topk", gc::approx_topk_codec({.ratio = 0.01}));
  expect_same_as_short_form("randomk", gc::randomk_codec({.ratio = 0.05}));
}

TEST(CodecContexts, DgcAndErrorFeedbackHandTheContextOn) {
  expect_same_as_short_form("dgc_topk",
                            gc::dgc_memory<gc::topk_codec>(gc::topk_codec({.ratio = 0.01}),
                                                           {.momentum = 0.9f, .warmup_steps = 2}));
  expect_same_as_short_form("ef_sign", gc::error_feedback<gc::sign_codec>{});
  expect_same_as_short_form("ef_topk",
                            gc::error_feedback<gc::topk_codec>(gc::topk_codec({.ratio = 0.01})));
  expect_same_as_short_form(
      "ef_quant4", gc::error_feedback<gc::scalar_quant_codec>(gc::scalar_quant_codec({.bits = 4})));
}

}  // namespace

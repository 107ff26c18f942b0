// The codec traits of codec/codec.hpp (T1–T5) and the transport trait of
// transport/transport.hpp (T1): what each library codec and transport declares, and that
// a codec written outside the library, declaring the same traits, is treated by the
// communicators as the library's own (they read traits, never a codec's type).
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <concepts>
#include <cstddef>
#include <span>
#include <vector>

namespace gc = gradcomm;

namespace {

// T1 lossless, T2 linear element, and the value codec they make together.
static_assert(gc::lossless_codec<gc::identity_codec> && !gc::lossless_codec<gc::bf16_codec>);
static_assert(std::same_as<gc::linear_element_t<gc::identity_codec>, float>);
static_assert(std::same_as<gc::linear_element_t<gc::bf16_codec>, gc::bf16>);
static_assert(std::same_as<gc::linear_element_t<gc::f16_codec>, gc::f16>);
static_assert(std::same_as<gc::linear_element_t<gc::e4m3_codec>, void>);
static_assert(std::same_as<gc::linear_element_t<gc::sign_codec>, void>);
static_assert(std::same_as<gc::linear_element_t<gc::error_feedback<gc::bf16_codec>>, gc::bf16>);
static_assert(gc::value_codec<gc::identity_codec>);
// Stateful: its encode must run (the residual), so it is no value codec.
static_assert(!gc::value_codec<gc::error_feedback<gc::identity_codec>>);

// T3 wrappers.
static_assert(gc::wrapper_codec<gc::error_feedback<gc::sign_codec>>);
static_assert(gc::wrapper_codec<gc::dgc_memory<gc::topk_codec>>);
static_assert(!gc::wrapper_codec<gc::sign_codec>);
static_assert(std::same_as<gc::inner_codec_t<gc::error_feedback<gc::sign_codec>>, gc::sign_codec>);

// T4 pull codecs: error feedback's inner one (through nesting), a stateless codec itself,
// none for another stateful codec (the parameter server then sends f32 values).
using ef_sign = gc::error_feedback<gc::sign_codec>;
static_assert(
    std::same_as<decltype(gc::pull_codec_of(std::declval<const ef_sign&>())), gc::sign_codec>);
static_assert(
    std::same_as<decltype(gc::pull_codec_of(std::declval<const gc::error_feedback<ef_sign>&>())),
                 gc::sign_codec>);
static_assert(gc::has_pull_codec<gc::sign_codec> &&
              !gc::has_pull_codec<gc::dgc_memory<gc::topk_codec>>);
static_assert(!gc::has_pull_codec<gc::error_feedback<gc::dgc_memory<gc::topk_codec>>>);
static_assert(std::same_as<gc::parameter_server<ef_sign, gc::local_transport>::pull_codec_type,
                           gc::sign_codec>);
static_assert(std::same_as<gc::parameter_server<gc::dgc_memory<gc::topk_codec>,
                                                gc::local_transport>::pull_codec_type,
                           gc::identity_codec>);

// Transport T1.
static_assert(gc::transport_withdraws_groups<gc::local_transport>);
static_assert(!gc::transport_withdraws_groups<gc::detail::transport_archetype>);

// A codec of a user's: f32 values under its own header layout. Declaring T1 and T2 is
// all the all-reduce needs to reduce it natively, as it reduces identity_codec.
struct user_f32_codec {
  using value_type = float;
  static constexpr gc::codec_traits traits{.linear = true, .fixed_size = true};
  static constexpr gc::codec_id id = gc::codec_id::none;
  static constexpr bool lossless = true;
  using linear_element = float;
  gc::identity_codec c;
  std::size_t max_encoded_bytes(std::size_t n) const { return c.max_encoded_bytes(n); }
  std::size_t encode(gc::host_view<const float> in, std::span<std::byte> out) {
    return c.encode(in, out);
  }
  void decode(std::span<const std::byte> p, gc::host_view<float> out) { c.decode(p, out); }
  void decode_add(std::span<const std::byte> p, gc::host_view<float> acc) { c.decode_add(p, acc); }
  std::size_t encode(gc::host_context x, gc::host_view<const float> in, std::span<std::byte> out) {
    return c.encode(x, in, out);
  }
  void decode(gc::host_context x, std::span<const std::byte> p, gc::host_view<float> out) {
    c.decode(x, p, out);
  }
  void decode_add(gc::host_context x, std::span<const std::byte> p, gc::host_view<float> acc) {
    c.decode_add(x, p, acc);
  }
};
static_assert(gc::value_codec<user_f32_codec>);
static_assert(gc::allreduce<user_f32_codec, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::native);

TEST(codec_traits, pull_codec_of_error_feedback_keeps_the_inner_parameters) {
  const gc::scalar_quant_codec inner({.bits = 3, .block = 64});
  const gc::error_feedback<gc::scalar_quant_codec> ef(inner, 300);
  gc::scalar_quant_codec pull = gc::pull_codec_of(ef);
  std::vector<float> g(300);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
  gc::scalar_quant_codec ref = inner;
  std::vector<std::byte> a(ref.max_encoded_bytes(g.size())), b(pull.max_encoded_bytes(g.size()));
  a.resize(ref.encode(g, a));
  b.resize(pull.encode(g, b));
  EXPECT_EQ(a, b);
}

TEST(codec_traits, residual_norm_of_reads_the_codec_or_gives_zero) {
  EXPECT_EQ(gc::residual_norm_of(gc::sign_codec{}), 0.0);
  gc::error_feedback<gc::sign_codec> ef(gc::sign_codec{}, 4);
  const std::vector<float> g{1.0f, -0.25f, 0.5f, 2.0f};
  std::vector<std::byte> wire(ef.max_encoded_bytes(g.size()));
  ef.encode(g, wire);
  EXPECT_GT(gc::residual_norm_of(ef), 0.0);
  EXPECT_EQ(gc::residual_norm_of(ef), ef.residual_norm());
}

}  // namespace

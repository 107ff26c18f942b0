// Decentralized SGD over compressed gossip cannot diverge at the default consensus step:
// a least-squares problem (each rank i holds A_i, b_i; d = 2000 parameters, 100 rows a
// rank, b_i = A_i x* + noise, seeded) trained for 300 steps of SGD (lr 0.03) on rings of
// 4 and 8 and the exponential graph of 8 (threads, local_transport), with every lossy codec
// at the γ that gossip picks from its compression quality (gossip_default_gamma,
// comm/gossip.hpp; each edge's step lowered where its messages' measured quality is). Before that
// choice (γ = 1 for every codec) top-k 5 % ended at a loss of 1e8 on the ring of 4 and
// random-k 1 % at 1e18; ternary and scaled random-k overflowed.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

// f_i(x) = ‖A_i x − b_i‖² / (2m); the global loss F(x) = mean over ranks of f_i(x).
struct least_squares {
  int ranks;
  std::size_t d, m;
  std::vector<std::vector<float>> a, b;  // a[i]: m × d, row-major

  least_squares(int n, std::size_t d_, std::size_t m_, unsigned seed)
      : ranks(n), d(d_), m(m_), a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> z(0.0f, 1.0f);
    std::vector<float> x_star(d);
    for (auto& v : x_star) v = z(rng);
    for (std::size_t i = 0; i < a.size(); ++i) {
      a[i].resize(m * d);
      b[i].resize(m);
      for (auto& v : a[i]) v = z(rng);
      for (std::size_t r = 0; r < m; ++r) {
        double s = 0.0;
        for (std::size_t c = 0; c < d; ++c) s += a[i][r * d + c] * x_star[c];
        b[i][r] = static_cast<float>(s) + 0.01f * z(rng);
      }
    }
  }

  // f_i(x), and its gradient A_iᵀ(A_i x − b_i) / m into g where g is not null.
  double local(int rank, const float* x, float* g) const {
    const auto i = static_cast<std::size_t>(rank);
    std::vector<float> res(m);
    double f = 0.0;
    for (std::size_t r = 0; r < m; ++r) {
      const float* row = &a[i][r * d];
      float s = 0.0f;
      for (std::size_t c = 0; c < d; ++c) s += row[c] * x[c];
      res[r] = s - b[i][r];
      f += static_cast<double>(res[r]) * res[r];
    }
    if (g != nullptr) {
      std::fill(g, g + d, 0.0f);
      for (std::size_t r = 0; r < m; ++r) {
        const float* row = &a[i][r * d];
        const float k = res[r] / static_cast<float>(m);
        for (std::size_t c = 0; c < d; ++c) g[c] += k * row[c];
      }
    }
    return f / (2.0 * static_cast<double>(m));
  }

  double global(const float* x) const {
    double f = 0.0;
    for (int i = 0; i < ranks; ++i) f += local(i, x, nullptr);
    return f / ranks;
  }
};

struct outcome {
  double initial = 0.0;     // F(0): every rank starts at 0
  double final = 0.0;       // the mean over ranks of F(x_i) after the steps
  float gamma = 0.0f;       // the γ gossip chose
  double omega = 0.0;       // the codec's compression quality
  float last_gamma = 0.0f;  // the smallest step of the last round (rank 0)
  double measured = 0.0;    // the lowest ω̂ of rank 0's edges at the end
};

constexpr int steps = 300;
constexpr float lr = 0.03f;

template <class C, class G = gc::ring_topology>
outcome train(const least_squares& p, const C& codec, std::optional<float> gamma = std::nullopt) {
  std::vector<std::vector<float>> xs(static_cast<std::size_t>(p.ranks),
                                     std::vector<float>(p.d, 0.0f));
  outcome out;
  out.initial = p.global(xs[0].data());
  std::vector<float> gammas(xs.size());
  std::vector<double> omegas(xs.size());
  gc::local_world world(p.ranks);
  world.run([&](gc::local_transport& t) {
    const auto me = static_cast<std::size_t>(t.rank());
    gc::gossip<C, gc::local_transport, G> g(t, {}, codec, gc::sgd{{.lr = lr}},
                                            {.gamma = gamma, .seed = 3});
    std::vector<float>& x = xs[me];
    std::vector<float> grad(p.d);
    for (int s = 0; s < steps; ++s) {
      p.local(t.rank(), x.data(), grad.data());
      g.step(x, grad);
    }
    gammas[me] = g.gamma();
    omegas[me] = g.quality().omega;
    if (me == 0) {
      out.last_gamma = g.last_gamma();
      out.measured = g.measured_quality();
    }
  });
  for (const auto& x : xs) out.final += p.global(x.data());
  out.final /= p.ranks;
  for (std::size_t r = 1; r < xs.size(); ++r) EXPECT_EQ(gammas[r], gammas[0]) << "rank " << r;
  out.gamma = gammas[0];
  out.omega = omegas[0];
  return out;
}

// The loss falls below initial / `factor` and stays finite: on rings of 4 and 8
// (averaging) and on the exponential graph of 8 (push-sum).
template <class G, class C>
void expect_falls_on(const char* graph, int n, const char* name, const C& codec, double factor) {
  const least_squares p(n, 2000, 100, 1);
  const outcome o = train<C, G>(p, codec);
  std::printf(
      "%s of %d  %-10s omega %-8.4g gamma %-8.4g measured omega %-8.4g gamma %-8.4g loss %.4g -> "
      "%.4g (%.3g)\n",
      graph, n, name, o.omega, static_cast<double>(o.gamma), o.measured,
      static_cast<double>(o.last_gamma), o.initial, o.final, o.final / o.initial);
  EXPECT_TRUE(std::isfinite(o.final)) << name << " on the " << graph << " of " << n;
  EXPECT_LT(o.final, o.initial / factor)
      << name << " on the " << graph << " of " << n << " at gamma " << o.gamma << ": " << o.initial
      << " -> " << o.final;
  EXPECT_GT(o.gamma, 0.0f);
  EXPECT_LE(o.gamma, 1.0f);
  EXPECT_GT(o.last_gamma, 0.0f);
  EXPECT_LE(o.last_gamma, o.gamma);
}

template <class C>
void expect_falls(const char* name, const C& codec, double factor, double exp_factor = 0.0) {
  for (int n : {4, 8}) expect_falls_on<gc::ring_topology>("ring", n, name, codec, factor);
  expect_falls_on<gc::exponential_topology>("exp. graph", 8, name, codec,
                                            exp_factor > 0.0 ? exp_factor : factor);
}

}  // namespace

// Lossless and 8-bit codecs (ω ≥ 0.99, γ 1): the loss falls at least a hundredfold.
TEST(GossipConvergence, LosslessAndFineCodecs) {
  expect_falls("none", gc::identity_codec{}, 100.0);
  expect_falls("bf16", gc::bf16_codec{}, 100.0);
  expect_falls("int8", gc::scalar_quant_codec({.bits = 8}), 100.0);
}

// Sign's messages here keep ω ≈ 0.02 of ‖d‖² (its probes promise 0.63): its steps follow
// them down to about 0.04 (gossip.hpp, the measured quality), and the loss falls tenfold
// rather than a thousandfold at the probes' 0.78. The probes' step was stable on this
// problem but let the example's training collapse.
TEST(GossipConvergence, SignAndTernary) {
  expect_falls("sign", gc::sign_codec(), 10.0);
  expect_falls("ternary", gc::ternary_codec(), 100.0);  // unbiased: scaled by its gain
}

// Sparsifiers (ω = k/n, γ ≈ 2ω): at least halved in 300 steps (a ring of 8 at γ = 0.02
// mixes slowly; before, these diverged). Top-k's messages keep more than k/n (ω̂ 0.04 and
// 0.2 here): its step stays the default, which is never raised.
TEST(GossipConvergence, Sparsifiers) {
  expect_falls("top-k 1%", gc::topk_codec({.ratio = 0.01}), 2.0);
  expect_falls("top-k 5%", gc::topk_codec({.ratio = 0.05}), 2.0);
  // Push-sum on the exponential graph of 8 moves each copy every third round: random-k 1 %
  // reaches 0.56 of the start there, at its default step as at that step held fixed.
  expect_falls("random-k 1%", gc::randomk_codec({.ratio = 0.01}), 2.0, 1.5);
  expect_falls("rand-k 5% sc", gc::randomk_codec({.ratio = 0.05, .scale = true}), 2.0);
}

// The default follows the codec; an explicit γ overrides it.
TEST(GossipConvergence, DefaultGammaAndOverride) {
  EXPECT_EQ(gc::gossip_default_gamma(1.0), 1.0f);
  EXPECT_NEAR(gc::gossip_default_gamma(0.05), 2 * 0.05 / 1.05, 1e-7);
  EXPECT_GT(gc::gossip_default_gamma(0.0), 0.0f);
  EXPECT_NEAR(gc::compression_quality_of(gc::topk_codec({.ratio = 0.05}), 2000).omega, 0.05, 1e-6);
  EXPECT_EQ(gc::compression_quality_of(gc::identity_codec{}, 2000).omega, 1.0);
  const auto tern = gc::compression_quality_of(gc::ternary_codec(), 2000);
  EXPECT_LT(tern.gain, 0.9);  // unbiased with variance above ‖x‖²: damped
  EXPECT_GT(tern.omega, 0.2);
  gc::local_world world(4);
  world.run([](gc::local_transport& t) {
    std::vector<float> x(2000, static_cast<float>(t.rank()));
    using topk_gossip = gc::gossip<gc::topk_codec, gc::local_transport, gc::ring_topology>;
    topk_gossip chosen(t, {}, gc::topk_codec({.ratio = 0.05}), {}, {.tag = 1});
    EXPECT_TRUE(std::isnan(chosen.gamma()));  // found when the first round fixes n
    chosen.mix(x);
    EXPECT_NEAR(chosen.gamma(), gc::gossip_default_gamma(0.05), 1e-5);  // ω on a 2⁻²⁰ grid
    topk_gossip forced(t, {}, gc::topk_codec({.ratio = 0.05}), {}, {.gamma = 0.5f, .tag = 2});
    forced.mix(x);
    EXPECT_EQ(forced.gamma(), 0.5f);
    gc::gossip<gc::identity_codec, gc::local_transport, gc::ring_topology> plain(t, {}, {}, {},
                                                                                 {.tag = 3});
    EXPECT_EQ(plain.gamma(), 1.0f);  // lossless: plain gossip
  });
  static_assert(!gc::GossipCodec<gc::dgc_memory<gc::topk_codec>>);
}

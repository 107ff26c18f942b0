// powersgd_codec: the approximation against the SVD's best rank-r error, the round API
// over simulated workers against one worker on the summed gradient, error feedback's
// identity, state save / load, the uncompressed path, the payload's validation, the
// portable and AVX2 loops agreeing to the bit, and no allocation per call.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/powersgd.hpp>

#include "../support/workspace.hpp"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include "../support/allocation_counter.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace gc = gradcomm;

using gradcomm_test::g_allocations;  // counts every allocation of this program

namespace {

static_assert(gc::Codec<gc::powersgd_codec>);
static_assert(gc::TwoRoundCodec<gc::powersgd_codec>);
static_assert(!gc::TwoRoundCodec<gc::bf16_codec>, "one round: no round API");
static_assert(gc::powersgd_codec::traits.two_round && gc::powersgd_codec::traits.stateful);
static_assert(!gc::powersgd_codec::traits.linear && !gc::powersgd_codec::traits.fixed_size);
static_assert(!gc::bf16_codec::traits.two_round, "the trait defaults to false");

static_assert(gc::powersgd_default_shape(0) == gc::powersgd_shape{1, 0});
static_assert(gc::powersgd_default_shape(1) == gc::powersgd_shape{1, 1});
static_assert(gc::powersgd_default_shape(12) == gc::powersgd_shape{3, 4});
static_assert(gc::powersgd_default_shape(16) == gc::powersgd_shape{4, 4});
static_assert(gc::powersgd_default_shape(1000) == gc::powersgd_shape{25, 40});
static_assert(gc::powersgd_default_shape(1009) == gc::powersgd_shape{1, 1009});  // prime
static_assert(gc::powersgd_default_shape(4096u * 4096u) == gc::powersgd_shape{4096, 4096});
static_assert(gc::powersgd_default_shape(std::numeric_limits<std::size_t>::max()).rows > 1);
static_assert(gc::powersgd_compresses({4096, 4096}, 4));
static_assert(!gc::powersgd_compresses({1, 1000}, 1));
static_assert(!gc::powersgd_compresses({4, 4}, 2));  // 2·8 = 16: nothing gained
static_assert(gc::powersgd_compresses({4, 4}, 1));
static_assert(!gc::powersgd_compresses({4, 4}, 0));

std::vector<float> gaussian(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// rows × cols, row-major: U diag(σ) Vᵀ with σ_k = 10 · 2^-k for k < rank, plus Gaussian noise.
std::vector<float> low_rank_matrix(std::size_t rows, std::size_t cols, std::size_t rank,
                                   double noise, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  Eigen::MatrixXd a(rows, rank), b(cols, rank);
  for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = d(gen);
  for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = d(gen);
  const Eigen::MatrixXd u = Eigen::HouseholderQR<Eigen::MatrixXd>(a).householderQ() *
                            Eigen::MatrixXd::Identity(rows, rank);
  const Eigen::MatrixXd v = Eigen::HouseholderQR<Eigen::MatrixXd>(b).householderQ() *
                            Eigen::MatrixXd::Identity(cols, rank);
  Eigen::VectorXd s(rank);
  for (std::size_t k = 0; k < rank; ++k) s[k] = 10.0 * std::pow(0.5, static_cast<double>(k));
  const Eigen::MatrixXd m = u * s.asDiagonal() * v.transpose();
  std::vector<float> out(rows * cols);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < cols; ++j) {
      out[i * cols + j] = static_cast<float>(m(i, j) + noise * d(gen));
    }
  }
  return out;
}

double frobenius(const std::vector<float>& a) {
  double s = 0.0;
  for (float x : a) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}
double distance(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  return std::sqrt(s);
}

// The best rank-r error ‖M − M_r‖_F of each r, from the singular values (Eckart–Young).
std::vector<double> svd_best_errors(const std::vector<float>& m, std::size_t rows,
                                    std::size_t cols) {
  Eigen::MatrixXd a(rows, cols);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < cols; ++j) a(i, j) = m[i * cols + j];
  }
  const Eigen::VectorXd s = Eigen::BDCSVD<Eigen::MatrixXd>(a).singularValues();
  std::vector<double> err(static_cast<std::size_t>(s.size()) + 1, 0.0);
  for (Eigen::Index r = s.size() - 1; r >= 0; --r) {
    err[static_cast<std::size_t>(r)] = std::sqrt(
        err[static_cast<std::size_t>(r) + 1] * err[static_cast<std::size_t>(r) + 1] + s[r] * s[r]);
  }
  return err;
}

std::vector<std::byte> encode(gc::powersgd_codec& c, const std::vector<float>& g) {
  std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
  wire.resize(c.encode(g, wire));
  return wire;
}
std::vector<float> decoded(const gc::powersgd_codec& c, const std::vector<std::byte>& wire,
                           std::size_t n) {
  std::vector<float> out(n);
  c.decode(wire, out);
  return out;
}
std::vector<std::byte> saved(const gc::powersgd_codec& c) {
  std::vector<std::byte> s(c.state_bytes());
  s.resize(c.save_state(s));
  return s;
}

// ---- approximation against the SVD -------------------------------------------------------

TEST(PowerSgd, ErrorFallsWithRankAndReachesTheSvdBest) {
  constexpr std::size_t rows = 256, cols = 192, true_rank = 8;
  const auto m = low_rank_matrix(rows, cols, true_rank, 1e-3, 7);
  const auto best = svd_best_errors(m, rows, cols);
  const double norm = frobenius(m);
  std::printf("\n%zu × %zu, rank-%zu signal (σ_k = 10·2^-k) + N(0, 1e-6) noise; relative errors\n",
              rows, cols, true_rank);
  std::printf("| rank | SVD best | PowerSGD step 1 | step 3 | step 20 | step 20 / SVD |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|\n");
  double previous = std::numeric_limits<double>::infinity();
  for (std::uint32_t r : {1u, 2u, 4u, 8u, 12u}) {
    gc::powersgd_codec c({.rank = r, .rows = rows, .cols = cols, .error_feedback = false});
    double err1 = 0, err3 = 0, err = 0;
    for (int step = 1; step <= 20; ++step) {  // the same matrix: subspace iteration
      err = distance(m, decoded(c, encode(c, m), m.size()));
      if (step == 1) err1 = err;
      if (step == 3) err3 = err;
    }
    const double ratio = err / best[r];
    std::printf("| %u | %.3e | %.3e | %.3e | %.3e | %.4f |\n", r, best[r] / norm, err1 / norm,
                err3 / norm, err / norm, ratio);
    EXPECT_GE(ratio, 1.0 - 1e-4) << "rank " << r << ": better than the SVD's best?";
    EXPECT_LE(ratio, r <= true_rank ? 1.02 : 1.10) << "rank " << r;
    EXPECT_LE(err, err1 * (1 + 1e-6)) << "warm start helps, rank " << r;
    EXPECT_LT(err, previous) << "error falls as the rank grows, rank " << r;
    previous = err;
  }
}

TEST(PowerSgd, ExactlyLowRankIsRecoveredToRounding) {
  constexpr std::size_t rows = 64, cols = 80;
  const auto m = low_rank_matrix(rows, cols, 3, 0.0, 11);
  gc::powersgd_codec c({.rank = 3, .rows = rows, .cols = cols, .error_feedback = false});
  double err = 0;
  for (int step = 0; step < 3; ++step) err = distance(m, decoded(c, encode(c, m), m.size()));
  EXPECT_LT(err / frobenius(m), 1e-5);
}

TEST(PowerSgd, DefaultShapeIsSquarish) {
  gc::powersgd_codec c({.rank = 2});
  const auto g = low_rank_matrix(25, 40, 2, 0.0, 3);  // 1000 elements: viewed as 25 × 40
  EXPECT_EQ(c.shape(1000), (gc::powersgd_shape{25, 40}));
  const auto wire = encode(c, g);
  EXPECT_EQ(c.current_shape(), (gc::powersgd_shape{25, 40}));
  EXPECT_EQ(wire.size(), gc::wire_header_bytes + gc::powersgd_params_bytes + 4 * 2 * (25 + 40));
  EXPECT_EQ(wire.size(), c.max_encoded_bytes(1000));
}

// ---- many workers through the round API ------------------------------------------------

// One step of `codecs` (one per worker) on `g` (one gradient per worker), P and Q summed
// by hand as an all-reduce would; returns each worker's output.
std::vector<std::vector<float>> round_step(std::vector<gc::powersgd_codec>& codecs,
                                           const std::vector<std::vector<float>>& g) {
  const std::size_t w = codecs.size(), n = g[0].size();
  const std::size_t pf = codecs[0].p_floats(n), qf = codecs[0].q_floats(n);
  std::vector<std::vector<float>> p(w, std::vector<float>(pf)), q(w, std::vector<float>(qf));
  for (std::size_t i = 0; i < w; ++i) codecs[i].compute_p(g[i], p[i]);
  std::vector<float> p_sum(pf, 0.0f), q_sum(qf, 0.0f);
  for (std::size_t i = 0; i < w; ++i) {
    for (std::size_t k = 0; k < pf; ++k) p_sum[k] += p[i][k];
  }
  for (std::size_t i = 0; i < w; ++i) {
    p[i] = p_sum;  // every worker receives the same sum
    codecs[i].compute_q(g[i], p[i], q[i]);
  }
  for (std::size_t i = 0; i < w; ++i) {
    for (std::size_t k = 0; k < qf; ++k) q_sum[k] += q[i][k];
  }
  std::vector<std::vector<float>> out(w, std::vector<float>(n));
  for (std::size_t i = 0; i < w; ++i) codecs[i].decompress(g[i], p[i], q_sum, out[i]);
  return out;
}

TEST(PowerSgd, WorkersThroughRoundsEqualOneWorkerOnTheSum) {
  constexpr std::size_t rows = 48, cols = 40, n = rows * cols;
  for (std::size_t workers : {1u, 2u, 3u, 4u}) {
    const gc::powersgd_params params{.rank = 3, .rows = rows, .cols = cols, .seed = 5};
    std::vector<gc::powersgd_codec> codecs(workers, gc::powersgd_codec(params));
    gc::powersgd_codec single(params);
    for (int step = 0; step < 4; ++step) {
      std::vector<std::vector<float>> g;
      std::vector<float> sum(n, 0.0f);
      for (std::size_t w = 0; w < workers; ++w) {
        g.push_back(low_rank_matrix(rows, cols, 5, 0.05, static_cast<unsigned>(100 * step + w)));
        for (std::size_t i = 0; i < n; ++i) sum[i] += g.back()[i];
      }
      const auto out = round_step(codecs, g);
      for (std::size_t w = 1; w < workers; ++w) {
        ASSERT_EQ(std::memcmp(out[w].data(), out[0].data(), 4 * n), 0)
            << "every worker ends with the same bits";
      }
      const auto want = decoded(single, encode(single, sum), n);
      EXPECT_LT(distance(out[0], want), 1e-4 * frobenius(want))
          << workers << " workers, step " << step;
      // The workers' residuals sum to the single worker's (error feedback is linear).
      std::vector<float> e_sum(n, 0.0f);
      for (const auto& c : codecs) {
        for (std::size_t i = 0; i < n; ++i) e_sum[i] += c.residual()[i];
      }
      const std::vector<float> e_one(single.residual().begin(), single.residual().end());
      EXPECT_LT(distance(e_sum, e_one), 1e-4 * frobenius(sum)) << workers << " workers";
      for (const auto& c : codecs) EXPECT_EQ(c.steps(), static_cast<std::uint64_t>(step + 1));
    }
  }
}

TEST(PowerSgd, OneWorkerRoundsAreBitwiseEncodeThenDecode) {
  constexpr std::size_t n = 30 * 50;
  for (bool ef : {false, true}) {
    gc::powersgd_codec a({.rank = 4, .error_feedback = ef}), b({.rank = 4, .error_feedback = ef});
    std::vector<gc::powersgd_codec> rounds{b};
    for (unsigned step = 0; step < 3; ++step) {
      const auto g = gaussian(n, 40 + step);
      const auto want = decoded(a, encode(a, g), n);
      const auto got = round_step(rounds, {g});
      EXPECT_EQ(std::memcmp(got[0].data(), want.data(), 4 * n), 0) << "step " << step;
      EXPECT_EQ(saved(rounds[0]), saved(a)) << "the same state, step " << step;
    }
  }
}

TEST(PowerSgd, DecompressMayWriteOverItsInput) {
  constexpr std::size_t n = 32 * 24;
  gc::powersgd_codec a({.rank = 2}), b({.rank = 2});
  auto g = gaussian(n, 9);
  std::vector<float> p(a.p_floats(n)), q(a.q_floats(n)), out(n);
  auto p2 = p, q2 = q;
  a.compute_p(g, p);
  b.compute_p(g, p2);
  a.compute_q(g, p, q);
  b.compute_q(g, p2, q2);
  a.decompress(g, p, q, out);
  b.decompress(g, p2, q2, g);  // in place
  EXPECT_EQ(g, out);
  EXPECT_EQ(saved(a), saved(b));
}

// Codec requirement 7: the on_host forms of encode, decode, decode_add and the three
// rounds give the short forms' bytes, values and state, step after step.
TEST(PowerSgd, OnHostFormsGiveTheShortFormsResults) {
  constexpr std::size_t n = 32 * 24;
  gc::powersgd_codec a({.rank = 2}), b({.rank = 2});
  for (unsigned step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const auto g = gaussian(n, 20 + step);
    std::vector<std::byte> wa(a.max_encoded_bytes(n)), wb(b.max_encoded_bytes(n));
    wa.resize(a.encode(g, wa));
    wb.resize(b.encode(gc::on_host, g, wb));
    ASSERT_EQ(wa, wb);
    std::vector<float> da(n), db(n), sa = gaussian(n, 5), sb = sa;
    a.decode(wa, da);
    b.decode(gc::on_host, wb, db);
    EXPECT_EQ(std::memcmp(da.data(), db.data(), 4 * n), 0);
    a.decode_add(wa, sa);
    b.decode_add(gc::on_host, wb, sb);
    EXPECT_EQ(std::memcmp(sa.data(), sb.data(), 4 * n), 0);

    std::vector<float> pa(a.p_floats(n)), qa(a.q_floats(n)), oa(n);
    auto pb = pa, qb = qa, ob = oa;
    a.compute_p(g, pa);
    b.compute_p(gc::on_host, g, pb);
    a.compute_q(g, pa, qa);
    b.compute_q(gc::on_host, g, pb, qb);
    a.decompress(g, pa, qa, oa);
    b.decompress(gc::on_host, g, pb, qb, ob);
    EXPECT_EQ(std::memcmp(oa.data(), ob.data(), 4 * n), 0);
    EXPECT_EQ(saved(a), saved(b));
  }
}

TEST(PowerSgd, RoundsOutOfTurnOrOfTheWrongSizeThrow) {
  constexpr std::size_t n = 20 * 30;
  gc::powersgd_codec c({.rank = 2, .rows = 20, .cols = 30});
  const auto g = gaussian(n, 1);
  std::vector<float> p(c.p_floats(n)), q(c.q_floats(n)), out(n);
  EXPECT_EQ(p.size(), 20u * 2);
  EXPECT_EQ(q.size(), 30u * 2);
  auto kind = [](auto f) {
    try {
      f();
    } catch (const gc::error& e) {
      return e.code();
    }
    return std::error_code();
  };
  const auto invalid = gc::make_error_code(gc::errc::invalid_argument);
  EXPECT_EQ(kind([&] { c.compute_q(g, p, q); }), invalid) << "before compute_p";
  EXPECT_EQ(kind([&] { c.decompress(g, p, q, out); }), invalid) << "before compute_q";
  std::vector<float> small(p.size() - 1);
  EXPECT_EQ(kind([&] { c.compute_p(g, small); }), invalid);
  EXPECT_FALSE(c.sized()) << "a failed first call leaves the codec unsized";
  c.compute_p(g, p);
  EXPECT_EQ(kind([&] { c.decompress(g, p, q, out); }), invalid) << "compute_q skipped";
  c.compute_p(g, p);  // starting again is allowed
  EXPECT_EQ(kind([&] { c.compute_q(g, p, small); }), invalid);
  c.compute_p(g, p);
  c.compute_q(g, p, q);
  std::vector<float> bad_q = q;
  bad_q[3] = std::numeric_limits<float>::quiet_NaN();
  const auto before = saved(c);
  EXPECT_EQ(kind([&] { c.decompress(g, p, bad_q, out); }), invalid) << "a NaN in the summed Q";
  EXPECT_EQ(saved(c), before);
  c.decompress(g, p, q, out);
  const auto other = gaussian(n + 1, 2);
  std::vector<float> p_other(c.p_floats(n + 1));
  EXPECT_EQ(kind([&] { c.compute_p(other, p_other); }), invalid) << "another size";
}

// ---- error feedback ---------------------------------------------------------------------

TEST(PowerSgd, ResidualPlusDecodedIsTheInput) {
  constexpr std::size_t rows = 40, cols = 56, n = rows * cols;
  gc::powersgd_codec c({.rank = 2, .rows = rows, .cols = cols});
  std::vector<float> carried(n, 0.0f);  // the residual before the step
  std::vector<double> sent(n, 0.0), given(n, 0.0);
  for (unsigned step = 0; step < 6; ++step) {
    const auto g = gaussian(n, 70 + step);
    const auto d = decoded(c, encode(c, g), n);
    for (std::size_t i = 0; i < n; ++i) {
      const float m = g[i] + carried[i];
      const float sum = c.residual()[i] + d[i];
      // e = fl(m − d): e + d is m up to that one rounding (and the sum's own).
      ASSERT_NEAR(sum, m,
                  2 * std::numeric_limits<float>::epsilon() *
                      std::max({std::fabs(m), std::fabs(d[i]), 1e-30f}))
          << "step " << step << ", element " << i;
      sent[i] += d[i];
      given[i] += g[i];
    }
    carried.assign(c.residual().begin(), c.residual().end());
  }
  // Nothing is lost: what was sent plus what is owed is what was given.
  std::vector<float> a(n), b(n);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(sent[i] + carried[i]);
    b[i] = static_cast<float>(given[i]);
  }
  EXPECT_LT(distance(a, b), 1e-5 * frobenius(b));
}

// The residual is settled in the next step's first pass: reading it in between (which
// settles it at once), copying the codec or failing a step changes no bit of any payload.
TEST(PowerSgd, DeferredResidualChangesNoBits) {
  for (auto [rows, cols, r] :
       {std::tuple<std::size_t, std::size_t, std::size_t>{40, 56, 2}, {30, 50, 6}}) {
    for (auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::zero}) {
      const std::size_t n = rows * cols;
      const gc::powersgd_params params{
          .rank = static_cast<std::uint32_t>(r), .rows = rows, .cols = cols, .policy = policy};
      gc::powersgd_codec a(params), b(params);
      for (unsigned step = 0; step < 5; ++step) {
        const auto g = gaussian(n, 300 + step);
        ASSERT_EQ(encode(a, g), encode(b, g)) << "step " << step;
        double sq = 0;
        for (float e : b.residual()) sq += static_cast<double>(e) * e;  // b settles now
        EXPECT_NEAR(b.residual_norm(), std::sqrt(sq), 1e-12 * std::sqrt(sq));
      }
      // A copy taken while the residual is deferred; then a step that fails.
      gc::powersgd_codec kept = a;
      auto bad = gaussian(n, 400);
      bad[n / 2] = std::numeric_limits<float>::quiet_NaN();
      std::vector<std::byte> wire(a.max_encoded_bytes(n));
      if (policy == gc::nonfinite_policy::reject) {
        EXPECT_THROW(a.encode(bad, wire), gc::error);
        std::vector<float> p(a.p_floats(n));
        EXPECT_THROW(a.compute_p(bad, p), gc::error);
      }
      const auto g = gaussian(n, 401);
      const auto after = encode(a, g);
      EXPECT_EQ(after, encode(kept, g)) << "after a failed step";
      EXPECT_EQ(after, encode(b, g));
      EXPECT_EQ(a.residual_norm(), kept.residual_norm());
      EXPECT_TRUE(std::equal(a.residual().begin(), a.residual().end(), b.residual().begin()));
      EXPECT_EQ(saved(a), saved(b));
    }
  }
}

TEST(PowerSgd, ErrorFeedbackCatchesUpOnAFixedGradient) {
  // A full-rank gradient, sent again and again: the running mean of what is sent tends to
  // it, although each payload has rank 2.
  constexpr std::size_t n = 24 * 24;
  const auto g = gaussian(n, 5);
  gc::powersgd_codec c({.rank = 2});
  std::vector<double> sum(n, 0.0);
  constexpr int steps = 400;
  for (int s = 0; s < steps; ++s) {
    const auto d = decoded(c, encode(c, g), n);
    for (std::size_t i = 0; i < n; ++i) sum[i] += d[i];
  }
  std::vector<float> mean(n);
  for (std::size_t i = 0; i < n; ++i) mean[i] = static_cast<float>(sum[i] / steps);
  EXPECT_LT(distance(mean, g), 0.05 * frobenius(g));
}

TEST(PowerSgd, ZeroGradientDoesNotLoseRank) {
  constexpr std::size_t rows = 64, cols = 48, n = rows * cols;
  gc::powersgd_codec c({.rank = 3, .rows = rows, .cols = cols, .error_feedback = false});
  const std::vector<float> zeros(n, 0.0f);
  const auto d0 = decoded(c, encode(c, zeros), n);
  for (float v : d0) ASSERT_EQ(v, 0.0f);
  for (std::size_t k = 0; k < 3; ++k) {  // the warm start's columns drawn afresh, unit norm
    double s = 0;
    for (std::size_t j = 0; j < cols; ++j) s += std::pow(c.warm_start()[k * cols + j], 2);
    EXPECT_NEAR(s, 1.0, 1e-5) << "column " << k;
  }
  const auto m = low_rank_matrix(rows, cols, 3, 0.0, 8);
  double err = 0;
  for (int step = 0; step < 5; ++step) err = distance(m, decoded(c, encode(c, m), n));
  EXPECT_LT(err / frobenius(m), 1e-5);
}

TEST(PowerSgd, SetResidualThenReshard) {
  constexpr std::size_t n = 16 * 16;
  gc::powersgd_codec c({.rank = 1});
  c.resize(n);
  const auto e = gaussian(n, 3, 0.1f);
  c.set_residual(e);
  EXPECT_TRUE(std::equal(e.begin(), e.end(), c.residual().begin()));
  std::vector<float> bad = e;
  bad[7] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(c.set_residual(bad), gc::error);
  EXPECT_THROW(c.set_residual(std::vector<float>(n - 1)), gc::error);
  gc::powersgd_codec no_ef({.rank = 1, .error_feedback = false});
  no_ef.resize(n);
  EXPECT_THROW(no_ef.set_residual(e), gc::error);
}

// ---- non-finite input -------------------------------------------------------------------

TEST(PowerSgd, NonFiniteInputIsRejectedNamingTheIndexOrZeroed) {
  constexpr std::size_t n = 20 * 20;
  auto g = gaussian(n, 4);
  gc::powersgd_codec c({.rank = 2});
  encode(c, g);  // one step, so that there is a residual to keep
  const auto before = saved(c);
  auto bad = g;
  bad[123] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  try {
    c.encode(bad, wire);
    FAIL() << "a NaN was accepted";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::make_error_code(gc::errc::invalid_argument));
    EXPECT_NE(std::string(e.what()).find("index 123"), std::string::npos) << e.what();
  }
  EXPECT_EQ(saved(c), before) << "a rejected input changes nothing";
  std::vector<float> p(c.p_floats(n));
  EXPECT_THROW(c.compute_p(bad, p), gc::error);

  // Under `zero` a NaN is a 0 (its residual kept).
  gc::powersgd_codec z1({.rank = 2, .policy = gc::nonfinite_policy::zero});
  gc::powersgd_codec z2({.rank = 2, .policy = gc::nonfinite_policy::zero});
  auto zeroed = bad;
  zeroed[123] = 0.0f;
  bad[7] = -std::numeric_limits<float>::infinity();
  zeroed[7] = 0.0f;
  EXPECT_EQ(encode(z1, bad), encode(z2, zeroed));
  EXPECT_EQ(saved(z1), saved(z2));

  // Uncompressed shapes too.
  gc::powersgd_codec u({.rank = 2});
  std::vector<float> v{1.0f, std::numeric_limits<float>::infinity(), 2.0f};
  std::vector<std::byte> w3(u.max_encoded_bytes(3));
  EXPECT_THROW(u.encode(v, w3), gc::error);
  EXPECT_FALSE(u.sized());
}

// ---- uncompressed shapes ----------------------------------------------------------------

TEST(PowerSgd, OneDimensionalAndSmallTensorsGoUncompressed) {
  for (std::size_t n : {0u, 1u, 7u, 101u}) {  // prime or tiny: 1 × n
    gc::powersgd_codec c({.rank = 1});
    EXPECT_FALSE(c.compresses(n)) << n;
    const auto g = gaussian(n, 6);
    const auto wire = encode(c, g);
    EXPECT_EQ(wire.size(), gc::wire_header_bytes + gc::powersgd_params_bytes + 4 * n);
    EXPECT_EQ(decoded(c, wire, n), g) << "exact";
    for (float e : c.residual()) EXPECT_EQ(e, 0.0f);
  }
  // A given shape that rank r does not shrink: 4 × 4 at rank 2 (2·8 = 16).
  gc::powersgd_codec c2({.rank = 2, .rows = 4, .cols = 4});
  EXPECT_FALSE(c2.compresses(16));
  gc::powersgd_codec c1({.rank = 1, .rows = 4, .cols = 4});
  EXPECT_TRUE(c1.compresses(16));
  EXPECT_EQ(encode(c1, gaussian(16, 1)).size(),
            gc::wire_header_bytes + gc::powersgd_params_bytes + 4 * 8);

  // Through the rounds: P is the tensor, Q is empty, the sum is exact.
  std::vector<gc::powersgd_codec> workers(3, gc::powersgd_codec({.rank = 4}));
  std::vector<std::vector<float>> g{{1, 2, 3}, {10, 20, 30}, {100, 200, 300}};
  EXPECT_EQ(workers[0].p_floats(3), 3u);
  EXPECT_EQ(workers[0].q_floats(3), 0u);
  const auto out = round_step(workers, g);
  for (const auto& o : out) EXPECT_EQ(o, (std::vector<float>{111, 222, 333}));
}

TEST(PowerSgd, ShapeAndConstructorErrors) {
  EXPECT_THROW(gc::powersgd_codec({.rank = 0}), gc::error);
  EXPECT_THROW(gc::powersgd_codec({.rank = 1, .rows = 4}), gc::error);
  EXPECT_THROW(
      gc::powersgd_codec({.rank = 1, .rows = std::size_t{1} << 40, .cols = std::size_t{1} << 40}),
      gc::error);
  gc::powersgd_codec c({.rank = 1, .rows = 4, .cols = 5});
  const auto g = gaussian(21, 1);
  std::vector<std::byte> wire(c.max_encoded_bytes(21));
  EXPECT_THROW(c.encode(g, wire), gc::error) << "21 elements in a 4 × 5 shape";
  EXPECT_FALSE(c.sized());
  const auto g20 = gaussian(20, 1);
  std::vector<std::byte> small(c.max_encoded_bytes(20) - 1);
  try {
    c.encode(g20, small);
    FAIL();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::make_error_code(gc::errc::buffer_too_small));
  }
  EXPECT_FALSE(c.sized());
}

// ---- state ------------------------------------------------------------------------------

TEST(PowerSgd, SaveLoadReproducesTheBytes) {
  constexpr std::size_t n = 36 * 28;
  for (bool ef : {true, false}) {
    const gc::powersgd_params params{.rank = 3, .error_feedback = ef, .seed = 99};
    gc::powersgd_codec a(params);
    for (unsigned s = 0; s < 3; ++s) encode(a, gaussian(n, s));
    const auto state = saved(a);
    EXPECT_EQ(a.current_shape(), (gc::powersgd_shape{28, 36}));
    EXPECT_EQ(state.size(), gc::powersgd_state_header_bytes + 4 * (36 * 3 + (ef ? n : 0)));
    gc::powersgd_codec b(params);
    b.load_state(state);
    EXPECT_EQ(saved(b), state);
    EXPECT_EQ(b.steps(), 3u);
    const auto g = gaussian(n, 50);
    EXPECT_EQ(encode(a, g), encode(b, g)) << "the next payload, to the byte";
    EXPECT_EQ(saved(a), saved(b));
  }
  // An unsized state resets.
  gc::powersgd_codec fresh({.rank = 3});
  gc::powersgd_codec used({.rank = 3});
  encode(used, gaussian(n, 1));
  used.load_state(saved(fresh));
  EXPECT_FALSE(used.sized());
  EXPECT_EQ(saved(used), saved(fresh));
  // An uncompressed shape keeps only its (zero) residual.
  gc::powersgd_codec u({.rank = 3});
  encode(u, gaussian(13, 1));
  gc::powersgd_codec u2({.rank = 3});
  u2.load_state(saved(u));
  EXPECT_EQ(saved(u2), saved(u));
}

TEST(PowerSgd, LoadStateRejectsMalformedBytesAndChangesNothing) {
  constexpr std::size_t n = 12 * 10;
  gc::powersgd_codec a({.rank = 2});
  encode(a, gaussian(n, 2));
  const auto good = saved(a);
  auto expect_rejected = [&](std::vector<std::byte> bytes, const char* defect,
                             gc::powersgd_params params = {.rank = 2}) {
    gc::powersgd_codec c(params);
    encode(c, gaussian(n, 3));
    const auto before = saved(c);
    try {
      c.load_state(bytes);
      ADD_FAILURE() << "accepted: " << defect;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(defect), std::string::npos) << e.what();
    }
    EXPECT_EQ(saved(c), before) << defect;
  };
  auto with = [&](std::size_t off, std::uint8_t v) {
    auto b = good;
    b[off] = std::byte{v};
    return b;
  };
  expect_rejected(with(0, 0), "bad magic");
  expect_rejected(with(4, 9), "version");
  expect_rejected(with(5, 0x0f), "flags");
  expect_rejected(with(6, 1), "reserved");
  expect_rejected(with(8, 3), "rank 3");
  expect_rejected(with(16, 121), "shape");  // n = 121: 11 × 11, not 12 × 10
  expect_rejected(with(24, 11), "shape");   // rows
  expect_rejected(with(16, 1), "shape");    // n = 1
  expect_rejected(good, "error feedback", {.rank = 2, .error_feedback = false});
  auto cut = good;
  cut.pop_back();
  expect_rejected(cut, "truncated");
  auto longer = good;
  longer.push_back(std::byte{0});
  expect_rejected(longer, "trailing");
  auto nan_q = good;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan_q.data() + gc::powersgd_state_header_bytes + 4, &nan, 4);
  expect_rejected(nan_q, "non-finite Q at index 1");
  auto long_q = good;
  const float two = 2.0f;
  std::memcpy(long_q.data() + gc::powersgd_state_header_bytes + 4 * 12, &two, 4);  // column 1
  expect_rejected(long_q, "warm start column 1");
  auto inf_e = good;
  const float inf = std::numeric_limits<float>::infinity();
  ASSERT_EQ(good.size(), gc::powersgd_state_header_bytes + 4 * (12 * 2 + n));
  std::memcpy(inf_e.data() + gc::powersgd_state_header_bytes + 4 * (12 * 2 + 5), &inf, 4);
  expect_rejected(inf_e, "non-finite residual at index 5");
  expect_rejected(std::vector<std::byte>(good.begin(), good.begin() + 20), "truncated");
  auto huge = good;
  const std::uint64_t big = std::uint64_t{1} << 50;
  std::memcpy(huge.data() + 16, &big, 8);
  expect_rejected(huge, "truncated");
}

TEST(PowerSgd, LoadStateRefusesAResidualNoPayloadCanCarry) {
  // Every encode checks Σ_k max|P̂_k| · max|Q_k| < 2^127 (psgd_safe_bound), and P̂'s columns
  // are unit vectors: no accepted payload holds a value of 2^127 or more, so a residual
  // element that large is never sent. A state holding 3e38 loaded, and then every encode
  // threw ("Q ... overflows f32") and nothing could ever clear it.
  constexpr std::size_t n = 12 * 10;
  gc::powersgd_codec a({.rank = 2});
  encode(a, gaussian(n, 2));
  const auto good = saved(a);
  const std::size_t e0 = gc::powersgd_state_header_bytes + 4 * 12 * 2;  // the residual
  auto with_residual = [&](std::size_t i, float v) {
    auto b = good;
    std::memcpy(b.data() + e0 + 4 * i, &v, 4);
    return b;
  };
  for (float bad : {3e38f, -3e38f, std::numeric_limits<float>::max(), 0x1p127f}) {
    gc::powersgd_codec c({.rank = 2});
    encode(c, gaussian(n, 3));
    const auto before = saved(c);
    try {
      c.load_state(with_residual(7, bad));
      ADD_FAILURE() << "accepted a residual of " << bad;
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find("residual"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("at index 7"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("2^127"), std::string::npos) << e.what();
    }
    EXPECT_EQ(saved(c), before);
  }
  // Below the bound a state loads, and an encode sends the spike and clears it.
  gc::powersgd_codec c({.rank = 2});
  c.load_state(with_residual(7, std::nextafter(0x1p127f, 0.0f)));
  c.load_state(with_residual(7, 1e38f));
  const auto w = encode(c, std::vector<float>(n, 0.0f));
  std::vector<float> out(n);
  c.decode(w, out);
  EXPECT_NEAR(out[7], 1e38f, 1e33f);
  for (float x : c.residual()) EXPECT_LT(std::fabs(x), 1e34f);
  // set_residual refuses the same values.
  std::vector<float> e(n, 0.0f);
  e[3] = -3e38f;
  try {
    c.set_residual(e);
    ADD_FAILURE() << "set_residual accepted -3e38";
  } catch (const gc::error& x) {
    EXPECT_EQ(x.code(), gc::make_error_code(gc::errc::invalid_argument));
    EXPECT_NE(std::string(x.what()).find("index 3"), std::string::npos) << x.what();
  }
}

// ---- payload validation -----------------------------------------------------------------

struct malformed_case {
  const char* defect;  // a word the error must contain
  std::vector<std::byte> bytes;
  std::size_t n;
};

TEST(PowerSgd, MalformedPayloadsThrowDecodeErrorNamingTheDefect) {
  constexpr std::size_t rows = 10, cols = 12, n = rows * cols;
  gc::powersgd_codec c({.rank = 2, .rows = rows, .cols = cols});
  const auto good = encode(c, gaussian(n, 8));
  gc::powersgd_codec u({.rank = 2});
  const auto raw = encode(u, gaussian(7, 8));
  constexpr std::size_t prm = gc::wire_header_bytes;  // the parameters' offset
  auto put = [](std::vector<std::byte> b, std::size_t off, auto v) {
    std::memcpy(b.data() + off, &v, sizeof v);
    return b;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<malformed_case> cases = {
      {"truncated", std::vector<std::byte>(good.begin(), good.end() - 1), n},
      {"truncated", std::vector<std::byte>(good.begin(), good.begin() + 30), n},
      {"oversized", put(good, good.size() - 4, 0.0f), n},  // placeholder, replaced below
      {"element count", good, n + 1},
      {"rank 0", put(good, prm + 4, std::uint32_t{0}), n},
      {"does not compress", put(good, prm + 4, std::uint32_t{5}), n},  // 5·22 = 110 ... < 120
      {"does not compress", put(good, prm + 4, std::uint32_t{1000}), n},
      {"body of", put(good, prm + 4, std::uint32_t{1}), n},
      {"does not hold", put(good, prm + 8, std::uint64_t{11}), n},
      {"does not hold", put(good, prm + 8, std::uint64_t{0}), n},
      {"does not hold",
       put(put(good, prm + 8, std::uint64_t{1} << 32), prm + 16, std::uint64_t{1} << 32),
       n},  // rows·cols wraps to 0 in 64 bits
      {"does not hold", put(good, prm + 16, std::uint64_t{13}), n},
      {"unknown flags", put(good, prm, std::uint8_t{2}), n},
      {"reserved", put(good, prm + 1, std::uint8_t{1}), n},
      {"rank 2 in an uncompressed", put(good, prm, std::uint8_t{1}), n},
      {"dtype", put(good, 6, std::uint8_t{static_cast<std::uint8_t>(gc::dtype::f16)}), n},
      {"codec id", put(good, 5, std::uint8_t{1}), n},
      {"non-finite P at index 3", put(good, prm + 24 + 12, nan), n},
      {"non-finite Q at index 0", put(good, prm + 24 + 4 * rows * 2, inf), n},
      {"overflows", put(put(good, prm + 24, 1e30f), prm + 24 + 4 * rows * 2, 1e30f), n},
      {"non-finite value at index 2", put(raw, prm + 24 + 8, nan), 7},
      {"shape", put(raw, prm + 8, std::uint64_t{7}), 7},
      {"rank 1 in an uncompressed", put(raw, prm + 4, std::uint32_t{1}), 7},
  };
  cases[2].bytes = good;
  cases[2].bytes.push_back(std::byte{0});
  // 5·(10 + 12) = 110 < 120 compresses: make that case's rank 6 instead (132 ≥ 120).
  cases[5].bytes = put(good, prm + 4, std::uint32_t{6});
  // The parameters announced with another length.
  {
    auto b = good;
    b[7] = std::byte{23};
    cases.push_back({"oversized", b, n});  // one parameter byte fewer: the body runs over
  }
  for (const auto& k : cases) {
    for (bool add : {false, true}) {
      std::vector<float> out(k.n, 42.0f);
      try {
        if (add) {
          c.decode_add(k.bytes, out);
        } else {
          c.decode(k.bytes, out);
        }
        ADD_FAILURE() << "accepted: " << k.defect;
      } catch (const gc::decode_error& e) {
        EXPECT_NE(std::string(e.what()).find(k.defect), std::string::npos)
            << "expected \"" << k.defect << "\" in: " << e.what();
      }
      for (float v : out) ASSERT_EQ(v, 42.0f) << "a rejected payload leaves the output alone";
    }
  }
}

TEST(PowerSgd, DecodeAddOntoZerosIsDecode) {
  constexpr std::size_t n = 20 * 33;
  gc::powersgd_codec c({.rank = 3});
  const auto wire = encode(c, gaussian(n, 12));
  const auto d = decoded(c, wire, n);
  std::vector<float> acc(n, 0.0f);
  c.decode_add(wire, acc);
  EXPECT_EQ(acc, d);
  std::vector<float> ones(n, 1.0f);
  c.decode_add(wire, ones);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(ones[i], 1.0f + d[i]);
}

// ---- the loops ----------------------------------------------------------------------------

// The passes (the dispatched loops) against sums in double: P = M Q (with error feedback
// M = g + e written to m, e settled first where the last step's residual is deferred),
// Q = Mᵀ P̂, out = P̂ Q_outᵀ and the settled residual e <- M − P̂ Qᵀ; with and without a
// residual, deferred or not, under both policies, over shapes with partial blocks of rows,
// partial lanes, and ranks past a group of four.
// got (column-major, r columns) against M F (F: cols × r) or, transposed, Mᵀ F (F: rows ×
// r), each sum in double, within 1e-5 of the sum of the terms' magnitudes.
void expect_product(const std::vector<float>& got, const std::vector<float>& m,
                    const std::vector<float>& f, std::size_t rows, std::size_t cols, std::size_t r,
                    bool transposed, const std::string& what) {
  const std::size_t outer = transposed ? cols : rows, inner = transposed ? rows : cols;
  for (std::size_t k = 0; k < r; ++k) {
    for (std::size_t o = 0; o < outer; ++o) {
      double s = 0, mag = 0;
      for (std::size_t x = 0; x < inner; ++x) {
        const std::size_t i = transposed ? x : o, j = transposed ? o : x;
        const double t = static_cast<double>(m[i * cols + j]) * f[k * inner + x];
        s += t;
        mag += std::fabs(t);
      }
      ASSERT_NEAR(got[k * outer + o], s, 1e-5 * mag + 1e-30) << what << ": " << o << ", " << k;
    }
  }
}

TEST(PowerSgd, PassesMatchSumsInDouble) {
  auto finite_or_zero = [](float v) { return std::isfinite(v) ? v : 0.0f; };
  for (auto [rows, cols, r] : {std::tuple<std::size_t, std::size_t, std::size_t>{37, 301, 3},
                               {13, 40, 5},
                               {9, 17, 8},
                               {64, 64, 4},
                               {5, 33, 1},
                               {3, 16, 9},
                               {12, 7, 2}}) {
    const std::size_t n = rows * cols;
    const auto q = gaussian(cols * r, 23), q_out = gaussian(cols * r, 24);
    const auto p_hat = gaussian(rows * r, 25);
    const auto pp = gaussian(rows * r, 26, 0.3f), pq = gaussian(cols * r, 27, 0.3f);
    for (int mode : {0, 1, 2}) {  // no residual; a residual; a deferred residual
      for (bool zero : {false, true}) {
        const bool has_e = mode > 0, deferred = mode == 2;
        auto g = gaussian(n, 21);
        if (zero) g[n / 3] = std::numeric_limits<float>::infinity();  // zeroed
        const auto e0 = has_e ? gaussian(n, 22, 0.1f) : std::vector<float>();
        const std::string where = std::to_string(rows) + " × " + std::to_string(cols) + ", rank " +
                                  std::to_string(r) + (has_e ? ", e" : "") +
                                  (deferred ? " deferred" : "") + (zero ? ", zero" : "");
        auto e = e0;
        std::vector<float> m(n, -1.0f);  // M as the P pass wrote it (error feedback)
        gc::detail::psgd_pass a;
        a.g = g.data();
        a.e = has_e ? e.data() : nullptr;
        a.m = has_e ? m.data() : nullptr;
        a.pp = deferred ? pp.data() : nullptr;
        a.pq = deferred ? pq.data() : nullptr;
        a.zero = zero;
        a.rows = rows;
        a.cols = cols;
        a.r = r;
        a.q = q.data();
        std::vector<float> p(rows * r, -1.0f), q_got(cols * r, -1.0f), out(n, -1.0f);
        a.p_acc = p.data();
        gc::detail::psgd_p_pass(a);
        ASSERT_EQ(e, e0) << "the P pass leaves e alone, " << where;
        for (std::size_t x = 0; x < n; ++x) {
          const float gi = zero ? finite_or_zero(g[x]) : g[x];
          if (!has_e) {
            m[x] = gi;  // M as the codec defines it
            continue;
          }
          if (!deferred) {  // M = g + e in f32, to the bit
            const float want = zero ? finite_or_zero(gi + e0[x]) : gi + e0[x];
            ASSERT_EQ(m[x], want) << "m " << x << ", " << where;
            continue;
          }
          const std::size_t i = x / cols, j = x % cols;
          double s = e0[x], mag = std::fabs(e0[x]);
          for (std::size_t k = 0; k < r; ++k) {
            const double t = static_cast<double>(pp[k * rows + i]) * pq[k * cols + j];
            s -= t;
            mag += std::fabs(t);
          }
          ASSERT_NEAR(m[x], gi + s, 1e-5 * (mag + std::fabs(gi)) + 1e-30)
              << "m " << i << ", " << j << ", " << where;
        }
        expect_product(p, m, q, rows, cols, r, false, "P " + where);
        gc::detail::psgd_pass b;  // the Q pass and after, from M
        b.g = m.data();
        b.rows = rows;
        b.cols = cols;
        b.r = r;
        b.p = p_hat.data();
        b.q_acc = q_got.data();
        gc::detail::psgd_q_pass(b);
        expect_product(q_got, m, p_hat, rows, cols, r, true, "Q " + where);
        b.q_out = q_out.data();
        b.out = out.data();
        gc::detail::psgd_finish_pass(b);
        auto settled = m;  // the step's residual, deferred against P̂ and Q, then settled
        b.e = settled.data();
        b.pp = p_hat.data();
        b.pq = q.data();
        double norm = 0;
        const double sq = gc::detail::psgd_settle(b, true);
        for (std::size_t i = 0; i < rows; ++i) {
          for (std::size_t j = 0; j < cols; ++j) {
            double s = 0, mag = 0, o = 0, omag = 0;
            for (std::size_t k = 0; k < r; ++k) {
              const double t = static_cast<double>(p_hat[k * rows + i]) * q[k * cols + j];
              const double u = static_cast<double>(p_hat[k * rows + i]) * q_out[k * cols + j];
              s += t;
              mag += std::fabs(t);
              o += u;
              omag += std::fabs(u);
            }
            const std::size_t x = i * cols + j;
            ASSERT_NEAR(out[x], o, 1e-5 * omag + 1e-30)
                << "out " << i << ", " << j << ", " << where;
            const double want = m[x] - s;
            ASSERT_NEAR(settled[x], want, 1e-5 * (mag + std::fabs(m[x])) + 1e-30)
                << "e " << i << ", " << j << ", " << where;
            norm += static_cast<double>(settled[x]) * settled[x];
          }
        }
        EXPECT_NEAR(sq, norm, 1e-12 * norm) << "the settle's Σ e², " << where;
      }
    }
  }
}

#if GRADCOMM_X86_DISPATCH
TEST(PowerSgd, PortableAndAvx2LoopsAgreeToTheBit) {
  if (!gc::detail::cpu_runs(gc::detail::cpu_isa::avx2)) GTEST_SKIP() << "no AVX2 here";
  // Odd sizes: partial tiles, partial vectors, a partial block of rows.
  for (auto [rows, cols, r] :
       {std::tuple<std::size_t, std::size_t, std::size_t>{37, 301, 3}, {8, 8, 1}, {130, 513, 5}}) {
    auto g = gaussian(rows * cols, 1);
    g[rows * cols / 2] = std::numeric_limits<float>::quiet_NaN();  // zeroed under `zero`
    const auto e = gaussian(rows * cols, 2, 0.1f);
    const auto q = gaussian(cols * r, 3);
    const auto q2 = gaussian(cols * r, 4);
    const auto p_hat = gaussian(rows * r, 5);
    for (int mode : {0, 1, 2}) {  // no residual; a residual; a deferred residual
      for (bool zero : {false, true}) {
        auto e1 = e;
        std::vector<float> m1(rows * cols), m2(rows * cols);
        gc::detail::psgd_pass a;
        a.g = g.data();
        a.e = mode > 0 ? e1.data() : nullptr;
        a.m = mode > 0 ? m1.data() : nullptr;
        a.pp = mode == 2 ? p_hat.data() : nullptr;
        a.pq = mode == 2 ? q2.data() : nullptr;
        a.zero = zero;
        a.rows = rows;
        a.cols = cols;
        a.r = r;
        a.q = q.data();
        std::vector<float> p1(rows * r), p2(rows * r);
        a.p_acc = p1.data();
        gc::detail::psgd_p_pass_portable(a);
        a.p_acc = p2.data();
        if (mode > 0) a.m = m2.data();
        gc::detail::psgd_p_pass_avx2(a);
        EXPECT_EQ(std::memcmp(p1.data(), p2.data(), 4 * p1.size()), 0);  // NaNs too
        EXPECT_EQ(std::memcmp(m1.data(), m2.data(), 4 * m1.size()), 0);
        gc::detail::psgd_pass b;
        b.g = mode > 0 ? m1.data() : g.data();
        b.zero = mode == 0 && zero;
        b.rows = rows;
        b.cols = cols;
        b.r = r;
        b.p = p_hat.data();
        std::vector<float> qa(cols * r), qb(cols * r);
        b.q_acc = qa.data();
        gc::detail::psgd_q_pass_portable(b);
        b.q_acc = qb.data();
        gc::detail::psgd_q_pass_avx2(b);
        EXPECT_EQ(std::memcmp(qa.data(), qb.data(), 4 * qa.size()), 0);
        std::vector<float> o1(rows * cols), o2(rows * cols);
        b.q_out = q2.data();
        b.out = o1.data();
        gc::detail::psgd_finish_pass_portable(b);
        b.out = o2.data();
        gc::detail::psgd_finish_pass_avx2(b);
        EXPECT_EQ(o1, o2);
        auto s1 = e, s2 = e;
        b.pp = p_hat.data();
        b.pq = q.data();
        b.e = s1.data();
        const double n1 = gc::detail::psgd_settle_portable(b, true);
        b.e = s2.data();
        const double n2 = gc::detail::psgd_settle_avx2(b, true);
        EXPECT_EQ(s1, s2);
        EXPECT_EQ(n1, n2);
        const auto* pb = reinterpret_cast<const std::byte*>(p_hat.data());
        const auto* qbytes = reinterpret_cast<const std::byte*>(q2.data());
        std::vector<float> d1(rows * cols), d2(rows * cols);
        gc::detail::psgd_decode_portable<false>(pb, qbytes, rows, cols, r, d1.data());
        gc::detail::psgd_decode_avx2<false>(pb, qbytes, rows, cols, r, d2.data());
        EXPECT_EQ(d1, d2);
        EXPECT_EQ(d1, o1) << "decode sums as decompress does";
      }
    }
  }
}
#endif

// ---- allocation ---------------------------------------------------------------------------

TEST(PowerSgd, NothingIsAllocatedOnceSized) {
  constexpr std::size_t rows = 64, cols = 96, n = rows * cols;
  const auto g = gaussian(n, 1);
  gc::powersgd_codec c({.rank = 4, .rows = rows, .cols = cols});
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  std::vector<float> out(n), p(c.p_floats(n)), q(c.q_floats(n));
  c.encode(g, wire);  // sizes the state
  const long before = g_allocations.load();
  for (int s = 0; s < 3; ++s) {
    c.encode(g, wire);
    c.decode(wire, out);
    c.decode_add(wire, out);
    c.compute_p(g, p);
    c.compute_q(g, p, q);
    c.decompress(g, p, q, out);
  }
  EXPECT_EQ(g_allocations.load() - before, 0);
}

// ---- caller-owned workspace ---------------------------------------------------------------

TEST(PowerSgd, WorkspaceEncodeGivesTheSameBytesAndAllocatesNothing) {
  constexpr std::size_t rows = 48, cols = 40, n = rows * cols;
  for (const bool ef : {true, false}) {
    for (const auto policy : {gc::nonfinite_policy::reject, gc::nonfinite_policy::zero}) {
      const gc::powersgd_params p{
          .rank = 3, .rows = rows, .cols = cols, .error_feedback = ef, .seed = 7, .policy = policy};
      gc::powersgd_codec own(p), given(p);
      const std::size_t need = given.workspace_bytes(n);
      EXPECT_EQ(need, 63 + 4 * 3 * (rows + cols));
      EXPECT_EQ(gc::workspace_bytes(given, n), need);
      std::vector<std::byte> ws(need + 8), a(own.max_encoded_bytes(n)), b(a.size());
      for (std::size_t step = 0; step < 4; ++step) {
        const auto g = gaussian(n, 10 + static_cast<unsigned>(step));
        a.resize(own.max_encoded_bytes(n));
        b.resize(a.size());
        a.resize(own.encode(g, a));
        // Another offset each step: the bytes do not depend on the workspace's address.
        const std::span<std::byte> w(ws.data() + step, need);
        const long before = g_allocations.load();
        b.resize(given.encode(g, b, w));
        if (step > 0) {
          EXPECT_EQ(g_allocations.load() - before, 0) << "sized: no allocation";
        }
        EXPECT_EQ(a, b) << "step " << step << (ef ? ", error feedback" : "");
        EXPECT_EQ(saved(own), saved(given)) << "step " << step;
        EXPECT_EQ(own.residual_norm(), given.residual_norm());
      }
      // Under a context too (host_codec_calls), and the state stays the same.
      b.resize(given.max_encoded_bytes(n));
      a.resize(b.size());
      const auto g = gaussian(n, 99);
      a.resize(own.encode(gc::on_host, g, a));
      b.resize(given.encode(g, b, ws));
      EXPECT_EQ(a, b);
    }
  }
  // Shapes that go uncompressed need none; an empty workspace is enough.
  gc::powersgd_codec own({.rank = 1}), given({.rank = 1});
  const auto g = gaussian(1009, 3);  // prime: 1 × 1009
  EXPECT_EQ(given.workspace_bytes(g.size()), 0u);
  std::vector<std::byte> a(own.max_encoded_bytes(g.size())), b(a.size());
  a.resize(own.encode(g, a));
  b.resize(given.encode(g, b, std::span<std::byte>{}));
  EXPECT_EQ(a, b);
}

TEST(PowerSgd, TooSmallAWorkspaceThrowsNamingBothSizes) {
  constexpr std::size_t rows = 32, cols = 24, n = rows * cols;
  gc::powersgd_codec c({.rank = 2, .rows = rows, .cols = cols});
  expect_small_workspace_refused(c, std::span<const float>(gaussian(n, 5)));
  EXPECT_FALSE(c.sized()) << "a refused call sizes nothing";
  EXPECT_EQ(c.steps(), 0u);
}

}  // namespace

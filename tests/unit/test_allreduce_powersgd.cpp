// The allreduce communicator's two-round path (PowerSGD) over threads: the sum of P, then
// of Q; every rank ends with the same bits; a gradient sum of rank at most r is recovered
// once the warm-started power iteration has converged.
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

static_assert(gc::allreduce<gc::powersgd_codec, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::two_round);

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

// Rank q's gradient: the 64 × 96 row-major matrix u_q v_qᵀ (rank 1), so the sum over
// up to 4 ranks has rank at most 4.
float low_rank_value(int q, std::size_t i) {
  const std::size_t row = i / 96, col = i % 96;
  return std::cos(0.1f * static_cast<float>(row * uz(q + 1))) *
         std::sin(0.07f * static_cast<float>(col + uz(q) * 5) + 0.3f);
}

TEST(allreduce_powersgd, recovers_a_low_rank_mean_and_ranks_agree) {
  for (int n : {1, 2, 3, 4}) {
    gc::local_world world(n, 20s);
    std::vector<std::vector<float>> out(uz(n));
    std::vector<double> rel(uz(n));
    world.run([&](gc::local_transport& t) {
      gc::allreduce<gc::powersgd_codec, gc::local_transport> comm(
          t, gc::powersgd_codec({.rank = 4, .seed = 3}));
      std::vector<float> g(64 * 96);
      for (int round = 0; round < 12; ++round) {
        for (std::size_t i = 0; i < g.size(); ++i) g[i] = low_rank_value(t.rank(), i);
        comm.average(g);
      }
      double err = 0, norm = 0;
      for (std::size_t i = 0; i < g.size(); ++i) {
        double mean = 0;
        for (int q = 0; q < n; ++q) mean += low_rank_value(q, i) / n;
        err += (g[i] - mean) * (g[i] - mean);
        norm += mean * mean;
      }
      rel[uz(t.rank())] = std::sqrt(err / norm);
      out[uz(t.rank())] = g;
      // P and Q: (64 + 96) × 4 floats a round, against 6144 f32.
      EXPECT_NEAR(comm.stats(0).ratio, 6144.0 / 640.0, 1e-9);
    });
    for (int q = 0; q < n; ++q) {
      EXPECT_LT(rel[uz(q)], 1e-3) << "n " << n << " rank " << q;
      EXPECT_EQ(out[uz(q)], out[0]) << "n " << n << " rank " << q;
    }
  }
}

// The bucket's statistics carry the residual's norm (PowerSGD keeps it deferred: reading
// it settles it): on one rank, exactly that of a codec run through the same rounds by hand.
TEST(allreduce_powersgd, bucket_stats_carry_the_residual_norm) {
  auto value = [](int q, std::size_t i) {  // full rank: rank 2 leaves a residual
    return std::sin(0.37f * static_cast<float>(i) + static_cast<float>(q)) +
           std::cos(0.011f * static_cast<float>(i * i % 977));
  };
  const gc::powersgd_params params{.rank = 2, .rows = 64, .cols = 96, .seed = 5};
  gc::powersgd_codec ref(params);
  std::vector<float> g(64 * 96), p(ref.p_floats(g.size())), q(ref.q_floats(g.size()));
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = value(0, i);
    ref.compute_p(g, p);
    ref.compute_q(g, p, q);
    ref.decompress(g, p, q, g);
  }
  ASSERT_GT(ref.residual_norm(), 0.0);
  for (int n : {1, 2}) {
    gc::local_world world(n, 20s);
    std::vector<double> norm(uz(n));
    world.run([&](gc::local_transport& t) {
      gc::allreduce<gc::powersgd_codec, gc::local_transport> comm(t, gc::powersgd_codec(params));
      std::vector<float> x(64 * 96);
      for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = value(t.rank(), i);
        comm.average(x);
      }
      norm[uz(t.rank())] = comm.stats(0).residual_norm;
    });
    for (int r = 0; r < n; ++r) {
      if (n == 1) {
        EXPECT_EQ(norm[0], ref.residual_norm());
      } else {
        EXPECT_GT(norm[uz(r)], 0.0) << "rank " << r;
        EXPECT_TRUE(std::isfinite(norm[uz(r)])) << "rank " << r;
      }
    }
  }
}

}  // namespace

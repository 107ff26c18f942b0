// Early training on the all-reduce: sparsity_warmup's ratio per step, warmed_up<C> (the
// sparsifier's ratio follows the schedule, payload bytes with it, every rank alike, state
// round trip) and allreduce_options::uncompressed_steps (PowerSGD's uncompressed first
// rounds: the exact mean, then PowerSGD from a fresh state; the bytes counted).
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/codec/randomk.hpp>
#include <gradcomm/codec/topk.hpp>
#include <gradcomm/codec/warmup.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

using topk_ef = gc::error_feedback<gc::topk_codec>;
using warm_topk = gc::warmed_up<topk_ef>;

static_assert(gc::Codec<warm_topk> && gc::Codec<gc::warmed_up<gc::topk_codec>> &&
              gc::Codec<gc::warmed_up<gc::randomk_codec>>);
static_assert(gc::StochasticCodec<gc::warmed_up<gc::randomk_codec>>);
static_assert(gc::wrapper_codec<warm_topk>);
static_assert(gc::allreduce<warm_topk, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::allgather);

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

float value(int rank, int round, std::size_t i) {
  return std::sin(0.37f * static_cast<float>(i) + 0.9f * static_cast<float>(rank) +
                  0.21f * static_cast<float>(round)) *
         (1.0f + static_cast<float>(i % 7));
}

TEST(sparsity_warmup, ratio_per_step_is_dgcs_schedule) {
  const gc::sparsity_warmup w{.steps_per_stage = 3};
  EXPECT_TRUE(w.enabled());
  EXPECT_EQ(w.steps(), 12u);
  const double want[] = {0.25,     0.25,     0.25,       0.0625,     0.0625,     0.0625, 0.015625,
                         0.015625, 0.015625, 0.00390625, 0.00390625, 0.00390625, 0.001,  0.001};
  for (std::uint64_t s = 0; s < 14; ++s) EXPECT_EQ(w.ratio_at(s, 0.001), want[s]) << "step " << s;
  // Never sparser than the target: a 1 % target ends the warm-up at its third stage.
  EXPECT_EQ(w.ratio_at(6, 0.01), 0.015625);
  EXPECT_EQ(w.ratio_at(9, 0.01), 0.01);
  EXPECT_EQ(w.ratio_at(1000, 0.01), 0.01);
  EXPECT_EQ(w.max_ratio(0.01), 0.25);
  // A target above the first stage: no effect.
  EXPECT_EQ(w.ratio_at(0, 0.5), 0.5);
  // Off.
  const gc::sparsity_warmup off{};
  EXPECT_FALSE(off.enabled());
  EXPECT_EQ(off.steps(), 0u);
  EXPECT_EQ(off.ratio_at(0, 0.01), 0.01);
  EXPECT_EQ(off.max_ratio(0.01), 0.01);
  // Other shapes.
  const gc::sparsity_warmup two{.steps_per_stage = 1, .stages = 2, .first_ratio = 0.5, .factor = 2};
  EXPECT_EQ(two.ratio_at(0, 0.01), 0.5);
  EXPECT_EQ(two.ratio_at(1, 0.01), 0.25);
  EXPECT_EQ(two.ratio_at(2, 0.01), 0.01);
}

TEST(sparsity_warmup, bad_schedules_are_refused) {
  const topk_ef c(gc::topk_codec({.ratio = 0.01}));
  EXPECT_THROW(warm_topk(c, {.steps_per_stage = 1, .first_ratio = 0.0}), gc::error);
  EXPECT_THROW(warm_topk(c, {.steps_per_stage = 1, .first_ratio = 1.5}), gc::error);
  EXPECT_THROW(warm_topk(c, {.steps_per_stage = 1, .factor = 0.5}), gc::error);
  EXPECT_THROW(warm_topk(c, {.steps_per_stage = 1, .factor = INFINITY}), gc::error);
  EXPECT_NO_THROW(warm_topk(c, {.steps_per_stage = 0, .first_ratio = 0.0}));  // off
}

// warmed_up sends what the same codec sends with its ratio set by hand at every step, and
// its bound covers the first stage.
TEST(warmed_up, sends_the_schedules_ratio_at_each_step) {
  const std::size_t n = 4096;
  const gc::sparsity_warmup w{.steps_per_stage = 2};
  warm_topk c(topk_ef(gc::topk_codec({.ratio = 0.01})), w);
  topk_ef ref(gc::topk_codec({.ratio = 0.01}));
  EXPECT_EQ(c.target_ratio(), 0.01);
  EXPECT_EQ(c.max_encoded_bytes(n), gc::topk_codec({.ratio = 0.25}).max_encoded_bytes(n));
  std::vector<float> g(n);
  std::vector<std::byte> a(c.max_encoded_bytes(n)), b(c.max_encoded_bytes(n));
  for (int step = 0; step < 12; ++step) {
    for (std::size_t i = 0; i < n; ++i) g[i] = value(0, step, i);
    EXPECT_EQ(c.ratio(), w.ratio_at(static_cast<std::uint64_t>(step), 0.01));
    ref.inner().set_ratio(w.ratio_at(static_cast<std::uint64_t>(step), 0.01));
    const std::size_t na = c.encode(g, a), nb = ref.encode(g, b);
    ASSERT_EQ(na, nb) << "step " << step;
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(na), b.begin()));
    EXPECT_EQ(c.inner().inner().selected(n),
              gc::sparse_count(n, w.ratio_at(static_cast<std::uint64_t>(step), 0.01)));
  }
  EXPECT_EQ(c.step(), 12u);
  EXPECT_EQ(c.inner().inner().ratio(), 0.01);
}

TEST(warmed_up, state_round_trips) {
  const std::size_t n = 1024;
  warm_topk c(topk_ef(gc::topk_codec({.ratio = 0.01})), {.steps_per_stage = 2});
  std::vector<float> g(n);
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  for (int step = 0; step < 3; ++step) {
    for (std::size_t i = 0; i < n; ++i) g[i] = value(1, step, i);
    c.encode(g, wire);
  }
  std::vector<std::byte> state(c.state_bytes());
  state.resize(c.save_state(state));
  warm_topk d(topk_ef(gc::topk_codec({.ratio = 0.01})), {.steps_per_stage = 2});
  d.load_state(state);
  EXPECT_EQ(d.step(), 3u);
  ASSERT_EQ(d.inner().residual().size(), n);
  EXPECT_TRUE(std::equal(d.inner().residual().begin(), d.inner().residual().end(),
                         c.inner().residual().begin()));
  std::vector<std::byte> bad = state;
  bad[0] = std::byte{0};
  EXPECT_THROW(d.load_state(bad), gc::decode_error);
  EXPECT_THROW(d.load_state(std::span<const std::byte>(state).first(8)), gc::decode_error);
  EXPECT_EQ(d.step(), 3u);
  d.reset();
  EXPECT_EQ(d.step(), 0u);
}

// In the all-reduce: every rank applies the same ratio at the same round (the results are
// the same bits everywhere, the first-start agreement passes), and each round's payload
// bytes are those of the schedule's ratio at that round.
TEST(warmed_up, allreduce_payload_bytes_follow_the_schedule) {
  const int ranks = 4;
  const std::size_t n = 8192;
  const gc::sparsity_warmup w{.steps_per_stage = 2};
  gc::local_world world(ranks, 20s);
  std::vector<std::vector<float>> out(uz(ranks));
  std::vector<std::vector<std::uint64_t>> bytes(uz(ranks));
  std::vector<std::vector<std::size_t>> want(uz(ranks));
  world.run([&](gc::local_transport& t) {
    const warm_topk proto(topk_ef(gc::topk_codec({.ratio = 0.01})), w);
    gc::allreduce<warm_topk, gc::local_transport> comm(t, proto, {.overlap = false});
    warm_topk ref = proto;
    std::vector<float> g(n);
    std::vector<std::byte> wire(ref.max_encoded_bytes(n));
    std::uint64_t before = 0;
    for (int round = 0; round < 10; ++round) {
      for (std::size_t i = 0; i < n; ++i) g[i] = value(t.rank(), round, i);
      want[uz(t.rank())].push_back(ref.encode(g, wire));
      comm.average(g);
      const std::uint64_t now = comm.stats(0).payload_bytes;
      bytes[uz(t.rank())].push_back(now - before);
      before = now;
    }
    out[uz(t.rank())] = g;
  });
  for (int q = 0; q < ranks; ++q) {
    EXPECT_EQ(out[uz(q)], out[0]) << "rank " << q;
    ASSERT_EQ(bytes[uz(q)].size(), want[uz(q)].size());
    for (std::size_t r = 0; r < want[uz(q)].size(); ++r) {
      EXPECT_EQ(bytes[uz(q)][r], want[uz(q)][r]) << "rank " << q << " round " << r;
      const std::size_t k = gc::sparse_count(n, w.ratio_at(r, 0.01));
      EXPECT_GE(bytes[uz(q)][r], 4 * k) << "rank " << q << " round " << r;
    }
    // Stage 0 sends at 25 %, the target 1 %: the bytes fall with the schedule.
    EXPECT_GT(bytes[uz(q)][0], 10 * bytes[uz(q)][9]);
  }
}

// Rank q's 64 × 96 gradient at a round.
float psgd_value(int q, int round, std::size_t i) {
  const std::size_t row = i / 96, col = i % 96;
  return std::cos(0.1f * static_cast<float>(row * uz(q + 1)) + 0.05f * static_cast<float>(round)) *
             std::sin(0.07f * static_cast<float>(col + uz(q) * 5) + 0.3f) +
         0.01f * std::sin(static_cast<float>(i % 31) + static_cast<float>(round));
}

// allreduce_options::uncompressed_steps with PowerSGD: the first W rounds give exactly the
// f32 all-reduce's mean and count n f32 bytes; round W is PowerSGD's first round from a
// fresh state (error feedback zero, the seed's warm start), bit for bit.
TEST(uncompressed_steps, powersgd_sends_the_exact_mean_first) {
  const int ranks = 4, warm = 3, rounds = 6;
  const std::size_t n = 64 * 96;
  const gc::powersgd_params pp{.rank = 2, .seed = 7};
  gc::local_world world(ranks, 20s);
  world.run([&](gc::local_transport& t) {
    gc::allreduce<gc::powersgd_codec, gc::local_transport> comm(t, gc::powersgd_codec(pp),
                                                                {.uncompressed_steps = warm});
    gc::allreduce<gc::identity_codec, gc::local_transport> exact(t);
    gc::allreduce<gc::powersgd_codec, gc::local_transport> fresh(t, gc::powersgd_codec(pp));
    std::vector<float> g(n), e(n), f(n);
    std::uint64_t before = 0;
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t i = 0; i < n; ++i) g[i] = e[i] = f[i] = psgd_value(t.rank(), round, i);
      comm.average(g);
      const std::uint64_t bytes = comm.stats(0).payload_bytes - before;
      before = comm.stats(0).payload_bytes;
      if (round < warm) {
        exact.average(e);
        EXPECT_EQ(g, e) << "round " << round;
        EXPECT_EQ(bytes, n * sizeof(float)) << "round " << round;
        EXPECT_EQ(comm.stats(0).residual_norm, 0.0);
      } else {
        if (round - warm < 2) {  // PowerSGD's first rounds from a fresh codec
          fresh.average(f);
          EXPECT_EQ(g, f) << "round " << round;
        }
        EXPECT_LT(bytes, n * sizeof(float) / 4) << "round " << round;
      }
    }
    EXPECT_EQ(comm.stats(0).rounds, static_cast<std::uint64_t>(rounds));
  });
}

// uncompressed_steps with any codec: top-k with error feedback sends f32 first, then
// starts from a fresh residual.
TEST(uncompressed_steps, topk_with_error_feedback_starts_fresh) {
  const int ranks = 3, warm = 2;
  const std::size_t n = 4096;
  gc::local_world world(ranks, 20s);
  world.run([&](gc::local_transport& t) {
    const topk_ef proto(gc::topk_codec({.ratio = 0.01}));
    gc::allreduce<topk_ef, gc::local_transport> comm(t, proto, {.uncompressed_steps = warm});
    gc::allreduce<gc::identity_codec, gc::local_transport> exact(t);
    gc::allreduce<topk_ef, gc::local_transport> fresh(t, proto);
    std::vector<float> g(n), e(n), f(n);
    for (int round = 0; round < warm + 2; ++round) {
      for (std::size_t i = 0; i < n; ++i) g[i] = e[i] = f[i] = value(t.rank(), round, i);
      comm.average(g);
      if (round < warm) {
        exact.average(e);
        EXPECT_EQ(g, e) << "round " << round;
      } else {
        fresh.average(f);
        EXPECT_EQ(g, f) << "round " << round;
      }
    }
    EXPECT_EQ(comm.stats(0).payload_bytes, warm * n * sizeof(float) + fresh.stats(0).payload_bytes);
  });
}

// The ranks compare uncompressed_steps at the first start like every other option.
TEST(uncompressed_steps, ranks_that_differ_are_named) {
  gc::local_world world(2, 20s);
  std::vector<std::string> reasons(2);
  world.run([&](gc::local_transport& t) {
    gc::allreduce<gc::powersgd_codec, gc::local_transport> comm(
        t, gc::powersgd_codec({.rank = 2, .seed = 1}),
        {.uncompressed_steps = static_cast<std::uint64_t>(t.rank())});
    std::vector<float> g(64 * 96, 1.0f);
    try {
      comm.average(g);
    } catch (const gc::error& e) {
      reasons[uz(t.rank())] = e.what();
    }
  });
  for (const auto& r : reasons)
    EXPECT_NE(r.find("option uncompressed_steps is 0 on rank 0 but 1 on rank 1"), std::string::npos)
        << r;
}

}  // namespace

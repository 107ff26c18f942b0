// Compressed all-reduce by all-gather and decode-add, over the local transport;
// and the Communicator concept.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

namespace gc = gradcomm;

namespace {

// A type with everything a Communicator needs, and types that lack one piece each.
struct model_comm {
  int rank() const { return 0; }
  int size() const { return 1; }
  void step(gc::host_view<float>, gc::host_view<float>) {}
  const gc::traffic_counters& counters() const { return c; }
  gc::traffic_counters c;
};
struct no_step {
  int rank() const { return 0; }
  int size() const { return 1; }
  const gc::traffic_counters& counters() const { return c; }
  gc::traffic_counters c;
};
struct no_counters {
  int rank() const { return 0; }
  int size() const { return 1; }
  void step(gc::host_view<float>, gc::host_view<float>) {}
};
static_assert(gc::Communicator<model_comm>);
static_assert(!gc::Communicator<no_step>);
static_assert(!gc::Communicator<no_counters>);
static_assert(!gc::Communicator<int>);

// A codec missing decode_add is not a Codec, so allgather_decode_add refuses it.
struct no_decode_add {
  using value_type = float;
  static constexpr gc::codec_traits traits{};
  static constexpr gc::codec_id id = gc::codec_id::none;
  std::size_t max_encoded_bytes(std::size_t) const { return 0; }
  std::size_t encode(gc::host_view<const float>, std::span<std::byte>) { return 0; }
  void decode(std::span<const std::byte>, gc::host_view<float>) {}
};
static_assert(!gc::Codec<no_decode_add>);
// A stateful codec must offer its state.
struct stateful_without_state {
  using value_type = float;
  static constexpr gc::codec_traits traits{.stateful = true};
  static constexpr gc::codec_id id = gc::codec_id::none;
  std::size_t max_encoded_bytes(std::size_t) const { return 0; }
  std::size_t encode(gc::host_view<const float>, std::span<std::byte>) { return 0; }
  void decode(std::span<const std::byte>, gc::host_view<float>) {}
  void decode_add(std::span<const std::byte>, gc::host_view<float>) {}
  std::size_t encode(gc::host_context, gc::host_view<const float>, std::span<std::byte>) {
    return 0;
  }
  void decode(gc::host_context, std::span<const std::byte>, gc::host_view<float>) {}
  void decode_add(gc::host_context, std::span<const std::byte>, gc::host_view<float>) {}
};
static_assert(!gc::Codec<stateful_without_state>);

}  // namespace

class AllgatherReduce : public ::testing::TestWithParam<int> {};

TEST_P(AllgatherReduce, ExactSumOfIntegerValuesOnEveryRank) {
  const int ranks = GetParam();
  for (std::size_t n : {0u, 1u, 1001u, 70000u}) {
    gc::local_world world(ranks);
    std::vector<std::vector<float>> out(static_cast<std::size_t>(ranks));
    world.run([&](gc::local_transport& t) {
      const int r = t.rank();
      std::vector<float> g(n);
      for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>((r + 1) * (int(i % 9) - 4));
      gc::bf16_codec codec;
      gc::allgather_workspace ws;
      gc::allgather_decode_add(codec, t, g, ws);
      out[static_cast<std::size_t>(r)] = g;
      // Each rank sent its payload and its size to every other rank.
      const auto s = t.counters().snapshot();
      EXPECT_EQ(s.bytes_sent, static_cast<std::uint64_t>(ranks - 1) *
                                  (codec.max_encoded_bytes(n) + sizeof(std::int64_t)));
    });
    const int tri = ranks * (ranks + 1) / 2;
    for (std::size_t i = 0; i < n; ++i) {
      const float want = static_cast<float>(tri * (int(i % 9) - 4));
      for (int r = 0; r < ranks; ++r) {
        ASSERT_EQ(out[static_cast<std::size_t>(r)][i], want) << "rank " << r << " i " << i;
      }
    }
  }
}

TEST_P(AllgatherReduce, MeanIsBitwiseIdenticalAcrossRanksAndWithinTheBound) {
  const int ranks = GetParam();
  const std::size_t n = 4099;
  std::vector<std::vector<float>> in(static_cast<std::size_t>(ranks), std::vector<float>(n));
  std::mt19937 gen(11);
  std::normal_distribution<float> d;
  for (auto& v : in) {
    for (auto& x : v) x = d(gen);
  }
  std::vector<std::vector<float>> out = in;
  gc::local_world world(ranks);
  world.run([&](gc::local_transport& t) {
    gc::f16_codec codec;
    gc::allgather_workspace ws;
    gc::traffic_counters timing;
    gc::allgather_decode_add(codec, t, out[static_cast<std::size_t>(t.rank())], ws,
                             gc::reduction::mean, &timing);
    EXPECT_GT(timing.snapshot().encode_ns, 0);
  });
  for (std::size_t i = 0; i < n; ++i) {
    double exact = 0, mag = 0;
    for (int r = 0; r < ranks; ++r) {
      exact += in[static_cast<std::size_t>(r)][i];
      mag += std::fabs(in[static_cast<std::size_t>(r)][i]);
    }
    exact /= ranks;
    mag /= ranks;
    // f16: 2^-11 relative per value (2^-25 absolute in the subnormal range), plus the
    // f32 additions and the scaling by 1/N.
    const double bound =
        (std::ldexp(1.0, -11) + ranks * std::ldexp(1.0, -23)) * mag + std::ldexp(1.0, -25);
    ASSERT_LE(std::fabs(out[0][i] - exact), bound) << i;
    for (int r = 1; r < ranks; ++r) {
      ASSERT_EQ(std::memcmp(&out[static_cast<std::size_t>(r)][i], &out[0][i], 4), 0) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, AllgatherReduce, ::testing::Values(1, 2, 3, 4, 7, 8));

TEST(AllgatherReduceFailure, ARankThatThrowsReleasesTheOthers) {
  gc::local_world world(3, std::chrono::seconds(30));
  std::vector<int> peer_seen(3, -2);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(world.run([&](gc::local_transport& t) {
    if (t.rank() == 1) throw std::runtime_error("rank 1 ran out of data");
    std::vector<float> g(100, 1.0f);
    gc::bf16_codec codec;
    gc::allgather_workspace ws;
    try {
      gc::allgather_decode_add(codec, t, g, ws);
    } catch (const gc::peer_error& e) {
      peer_seen[static_cast<std::size_t>(t.rank())] = e.peer();
      throw;
    }
  }),
               std::runtime_error);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_EQ(peer_seen[0], 1);
  EXPECT_EQ(peer_seen[2], 1);
}

// The O(k) sparse all-reduce (comm/detail/allreduce_sparse.hpp) over threads, N = 1..16:
// the result is the dense sum on the kept entries, the owners' residuals plus what was
// applied equal what was contributed exactly over many rounds, every rank ends with the same
// bits, a rank sends at most 6k(N-1)/N values, clustered indices get balanced regions; the
// cost rule's choice in stats(b); and a table of bytes per rank against N.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/randomk.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/detail/allreduce_sparse.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

using ef_topk = gc::error_feedback<gc::topk_codec>;
static_assert(gc::sparse_entry_codec<gc::topk_codec>);
static_assert(gc::sparse_entry_codec<gc::approx_topk_codec>);
static_assert(gc::sparse_entry_codec<gc::threshold_codec>);
static_assert(gc::sparse_entry_codec<ef_topk>);
static_assert(gc::sparse_entry_codec<gc::dgc_memory<gc::topk_codec>>);
static_assert(!gc::sparse_entry_codec<gc::randomk_codec>);  // fixed size: no indices sent
static_assert(!gc::sparse_entry_codec<gc::identity_codec>);
static_assert(!gc::sparse_entry_codec<gc::error_feedback<gc::sign_codec>>);
// The family stays all-gather at compile time; the round's choice is in stats(b).
static_assert(gc::allreduce<ef_topk, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::allgather);

using engine = gc::detail::allreduce_sparse<gc::topk_codec, gc::local_transport>;

// Rank r's value i in round s: integers in [-64, 64], so every sum stays exact in f32.
// `cluster` puts the nonzeros in [n/2, n/2 + n/32) only.
float value(int rank, int round, std::size_t i, std::size_t n, bool cluster) {
  if (cluster && (i < n / 2 || i >= n / 2 + n / 32)) return 0.0f;
  const std::size_t h = (i * 2654435761u + uz(rank) * 40503u + uz(round) * 9973u) % 129;
  return static_cast<float>(static_cast<int>(h) - 64);
}

struct rank_result {
  std::vector<std::vector<float>> out;          // per round
  std::vector<std::vector<float>> contributed;  // per round: the decoded payload
  std::vector<std::vector<float>> residual_before;
  std::vector<std::vector<std::size_t>> regions;
  std::vector<std::size_t> received;
  std::vector<std::uint64_t> sent;  // bytes per round
  std::vector<float> residual;      // after the last round
  std::size_t k = 0;
};

std::vector<rank_result> run_engine(int ranks, std::size_t n, double ratio, int rounds,
                                    bool cluster) {
  gc::local_world world(ranks, 60s);
  std::vector<rank_result> res(uz(ranks));
  world.run([&](gc::local_transport& t) {
    const gc::topk_codec proto({.ratio = ratio});
    engine e(gc::on_host, proto, {n, ranks, t.rank(), 0, gc::sparse_allreduce::reduce_scatter});
    gc::topk_codec mirror = proto;
    rank_result& r = res[uz(t.rank())];
    std::vector<float> in(n), out(n), decoded(n);
    std::vector<std::byte> wire(proto.max_encoded_bytes(n));
    for (int s = 0; s < rounds; ++s) {
      for (std::size_t i = 0; i < n; ++i) in[i] = value(t.rank(), s, i, n, cluster);
      const std::size_t bytes = mirror.encode(gc::host_view<const float>(in), wire);
      mirror.decode(std::span<const std::byte>(wire).first(bytes), gc::host_view<float>(decoded));
      r.contributed.push_back(decoded);
      const auto before = e.owner_residual();
      r.residual_before.emplace_back(before.begin(), before.end());
      if (r.residual_before.back().empty()) r.residual_before.back().assign(n, 0.0f);
      r.k = static_cast<std::size_t>(
          std::count_if(decoded.begin(), decoded.end(), [](float v) { return v != 0.0f; }));
      e.prepare(gc::host_view<const float>(in), static_cast<std::uint32_t>(s), 0);
      const auto snap = t.counters().snapshot();
      gc::detail::round_tally tally;
      e.finish(t, gc::host_view<const float>(in), gc::host_view<float>(out), gc::reduction::sum,
               static_cast<std::uint32_t>(s), 0, tally);
      EXPECT_EQ(tally.path, gc::detail::ar_algorithm::sparse_reduce_scatter);
      r.sent.push_back((t.counters().snapshot() - snap).bytes_sent);
      r.out.push_back(out);
      r.regions.emplace_back(e.regions().begin(), e.regions().end());
      r.received.push_back(e.received_entries());
    }
    const auto fin = e.owner_residual();
    r.residual.assign(fin.begin(), fin.end());
  });
  return res;
}

void check(int ranks, std::size_t n, double ratio, int rounds, bool cluster) {
  SCOPED_TRACE("N = " + std::to_string(ranks) + (cluster ? ", clustered" : ""));
  const auto res = run_engine(ranks, n, ratio, rounds, cluster);
  const auto ur = uz(ranks);
  std::vector<float> contributed(n, 0.0f), applied(n, 0.0f);
  for (int s = 0; s < rounds; ++s) {
    const auto us = uz(s);
    // Every rank: the same bits.
    for (std::size_t q = 1; q < ur; ++q)
      ASSERT_EQ(std::memcmp(res[q].out[us].data(), res[0].out[us].data(), n * sizeof(float)), 0)
          << "round " << s << ": rank " << q << " differs from rank 0";
    const auto& bounds = res[0].regions[us];
    ASSERT_EQ(bounds.size(), ur + 1);
    EXPECT_EQ(bounds.front(), 0u);
    EXPECT_EQ(bounds.back(), n);
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
      float sum = 0.0f;
      for (std::size_t q = 0; q < ur; ++q) sum += res[q].contributed[us][i];
      contributed[i] += sum;
      const float got = res[0].out[us][i];
      applied[i] += got;
      if (got == 0.0f) continue;
      ++kept;
      // The owner's sum: its residual, then every rank's entry.
      const std::size_t owner =
          static_cast<std::size_t>(std::upper_bound(bounds.begin(), bounds.end(), i) -
                                   bounds.begin()) -
          1;
      ASSERT_EQ(got, res[owner].residual_before[us][i] + sum) << "round " << s << " index " << i;
    }
    const std::size_t k = res[0].k;
    // Each owner keeps ceil(k / N) (all ranks have k entries): about k in all.
    EXPECT_LE(kept, ur * ((k + ur - 1) / ur));
    if (ranks > 1) {
      // Values (4-byte words) sent per rank, everything counted.
      for (std::size_t q = 0; q < ur; ++q)
        EXPECT_LE(static_cast<double>(res[q].sent[us]) / 4.0,
                  6.0 * static_cast<double>(k) * (ranks - 1) / ranks)
            << "rank " << q << " round " << s;
      // Balanced regions: the most-loaded owner receives at most twice the mean.
      std::size_t most = 0, all = 0;
      for (std::size_t q = 0; q < ur; ++q) {
        most = std::max(most, res[q].received[us]);
        all += res[q].received[us];
      }
      EXPECT_LE(static_cast<double>(most), 2.0 * static_cast<double>(all) / ranks)
          << "round " << s << ": " << most << " of " << all << " entries at one owner";
    }
  }
  // Nothing lost: residuals + applied == contributed, exactly, after all rounds.
  for (std::size_t i = 0; i < n; ++i) {
    float owed = 0.0f;
    for (std::size_t q = 0; q < ur; ++q) owed += res[q].residual[i];
    ASSERT_EQ(applied[i] + owed, contributed[i]) << "index " << i;
  }
}

TEST(allreduce_sparse, reduce_scatter_is_exact_identical_and_bounded_for_1_to_16_ranks) {
  for (int ranks = 1; ranks <= 16; ++ranks) check(ranks, 32768, 1.0 / 32, 6, false);
}

TEST(allreduce_sparse, clustered_indices_get_balanced_regions) {
  for (int ranks : {2, 3, 4, 8, 13, 16}) check(ranks, 65536, 1.0 / 64, 4, true);
}

TEST(allreduce_sparse, regions_fall_back_to_equal_slices_without_entries) {
  std::vector<std::uint32_t> records(4 * (gc::detail::ar_sparse_samples(4) + 1), 0);
  std::vector<std::size_t> bounds;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> scratch;
  gc::detail::ar_sparse_bounds(records, 4, 4096, bounds, scratch);
  EXPECT_EQ(bounds, (std::vector<std::size_t>{0, 1024, 2048, 3072, 4096}));
}

// The communicator: the cost rule's pick, the override, and the choice in stats(b).
gc::detail::ar_algorithm run_comm(int ranks, std::size_t n, double ratio,
                                  gc::sparse_allreduce choice, std::uint64_t* bytes = nullptr) {
  gc::local_world world(ranks, 120s);
  std::vector<gc::detail::ar_algorithm> alg(uz(ranks));
  std::vector<std::uint64_t> sent(uz(ranks));
  std::vector<std::vector<float>> results(uz(ranks));
  world.run([&](gc::local_transport& t) {
    std::vector<float> g(n);
    gc::allreduce<ef_topk, gc::local_transport> comm(
        t, ef_topk(gc::topk_codec({.ratio = ratio})),
        {.bucket_bytes = n * sizeof(float), .sparse = choice});
    comm.add_tensor(g);
    for (std::size_t i = 0; i < n; ++i) g[i] = value(t.rank(), 0, i, n, false);
    comm.average();
    alg[uz(t.rank())] = comm.stats(0).algorithm;
    sent[uz(t.rank())] = comm.stats(0).wire_bytes;
    results[uz(t.rank())] = g;
  });
  for (int q = 1; q < ranks; ++q) {
    EXPECT_EQ(alg[uz(q)], alg[0]);
    EXPECT_EQ(std::memcmp(results[uz(q)].data(), results[0].data(), n * sizeof(float)), 0);
  }
  if (bytes) {
    std::uint64_t most = 0;
    for (auto s : sent) most = std::max(most, s);
    *bytes = most;
  }
  return alg[0];
}

TEST(allreduce_sparse, the_cost_rule_picks_and_the_option_overrides) {
  using A = gc::detail::ar_algorithm;
  const auto automatic = gc::sparse_allreduce::automatic;
  EXPECT_EQ(run_comm(2, 1 << 16, 0.01, automatic), A::allgather);  // small N
  EXPECT_EQ(run_comm(16, 1 << 16, 0.4, automatic), A::dense);      // density over 1/6
  EXPECT_EQ(run_comm(16, 1 << 20, 0.01, automatic), A::sparse_reduce_scatter);
  EXPECT_EQ(run_comm(2, 1 << 16, 0.01, gc::sparse_allreduce::reduce_scatter),
            A::sparse_reduce_scatter);
  EXPECT_EQ(run_comm(3, 1 << 16, 0.01, gc::sparse_allreduce::dense), A::dense);
  EXPECT_EQ(run_comm(16, 1 << 16, 0.01, gc::sparse_allreduce::allgather), A::allgather);
}

// Bytes per rank against N at 1 % of 1M values (error-feedback top-k, one round).
TEST(allreduce_sparse, bytes_per_rank_table) {
  std::printf("%6s %14s %14s %14s  %s\n", "N", "allgather", "O(k)", "dense", "automatic");
  for (int ranks : {2, 4, 8, 16}) {
    std::uint64_t ag = 0, rs = 0, dn = 0;
    run_comm(ranks, 1 << 20, 0.01, gc::sparse_allreduce::allgather, &ag);
    run_comm(ranks, 1 << 20, 0.01, gc::sparse_allreduce::reduce_scatter, &rs);
    run_comm(ranks, 1 << 20, 0.01, gc::sparse_allreduce::dense, &dn);
    const auto pick = run_comm(ranks, 1 << 20, 0.01, gc::sparse_allreduce::automatic);
    std::printf("%6d %14llu %14llu %14llu  %s\n", ranks, static_cast<unsigned long long>(ag),
                static_cast<unsigned long long>(rs), static_cast<unsigned long long>(dn),
                gc::detail::ar_algorithm_name(pick));
    if (ranks >= 8) {
      EXPECT_LT(rs, ag) << "N = " << ranks;
    }
  }
}

}  // namespace

// Gossip over MPI ranks (run under mpiexec -np 2, 3, 4): the bodies of the threads tests
// (tests/unit/gossip_test_bodies.hpp), unchanged, over mpi_transport — consensus within
// the second-eigenvalue bound with the mean kept, push-sum, compressed (CHOCO) gossip
// with 8-bit codes, and many seeded random matchings without a deadlock; and a rank that
// goes silent mid-run, on the complete graph and on a ring: the others skip it by deadline
// each round, name it, apply the exchanges that land late, and keep the mass (plain,
// compressed and push-sum).
#include "../unit/gossip_test_bodies.hpp"
#include "mpi_gtest_main.hpp"

#include <gradcomm/transport/mpi.hpp>

#include <cstdio>
#include <thread>

namespace {

gc::mpi_transport make() { return gc::mpi_transport(MPI_COMM_WORLD, 20s); }

TEST(MpiGossip, ConsensusWithinTheSpectralBound) {
  auto t = make();
  consensus_body(t, gc::ring_topology{}, 12);
  consensus_body(t, gc::torus_topology{}, 12);
  consensus_body(t, gc::complete_topology{}, 3);
  consensus_body(t, lopsided_graph(t.size()), 12);
}

TEST(MpiGossip, PushSumOnTheExponentialGraph) {
  auto t = make();
  push_sum_body(t, gc::exponential_topology{}, 40, 1e-4);
  push_sum_body(t, gc::exponential_topology{}, 40, 1e-5, gc::scalar_quant_codec({.bits = 8}));
}

TEST(MpiGossip, CompressedGossipConvergesToTheAverage) {
  auto t = make();
  compressed_body(t, gc::ring_topology{}, gc::scalar_quant_codec({.bits = 8}), 1.0f, 80, 1e-5);
}

TEST(MpiGossip, RandomMatchingsNeverDeadlock) {
  auto t = make();
  for (std::uint64_t seed = 1; seed <= 10; ++seed) matching_body(t, seed, 6);
}

// The last rank mixes `leave_after` rounds and then stops talking (a process cannot exit
// under Open MPI without ending the job: it waits for the check instead); the others mix
// `rounds` rounds with a 500 ms deadline; every rank calls settle() at the end (the leaver
// before it stops), so that the exchanges that missed a deadline but completed are applied.
// Checked on every rank, over a second transport with a long deadline: Σ of the stayers'
// numerators = Σ of the starts − what the leaver held when it left (nothing lost or made
// by skipping it), the weights still sum to the ranks, and every stayer that had the
// leaver as a peer after it left names it, silent (not failed), once. On a ring the
// leaver's neighbours, each waiting out two deadlines for it, reach their other neighbours
// late and may be skipped by them for a round (not reported): those exchanges still
// complete (a send over MPI cannot be withdrawn) and are applied late on that end.
template <class C, gc::Topology G>
void silent_peer_body(const G& topo, C codec, int leave_after, int rounds,
                      gc::gossip_options o = {}) {
  constexpr std::size_t d = 24;
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const int leaver = n - 1;
  std::vector<float> x(d);
  double weight = 0;
  std::vector<gc::dropped_peer> dropped;
  // Both transports live to the end: the sends to the leaver that it never received stay
  // on the gossip's communicator.
  gc::mpi_transport check(MPI_COMM_WORLD, 60s);
  gc::mpi_transport t(MPI_COMM_WORLD, 500ms);
  {
    gc::gossip<C, gc::mpi_transport, G> g(t, topo, codec, {}, o);
    std::vector<float> z = start_values(rank, d, 9);
    const int mine = rank == leaver ? leave_after : rounds;
    for (int r = 0; r < mine; ++r) g.mix(z);
    g.settle(z);
    for (std::size_t i = 0; i < d; ++i) x[i] = static_cast<float>(g.weight() * z[i]);
    weight = g.weight();
    dropped.assign(g.dropped().begin(), g.dropped().end());
  }
  std::vector<double> stay(d), left(d);
  for (std::size_t i = 0; i < d; ++i) (rank == leaver ? left : stay)[i] = x[i];
  check.allreduce<double>(stay, stay, gc::reduce_op::sum);
  check.allreduce<double>(left, left, gc::reduce_op::sum);
  for (std::size_t i = 0; i < d; ++i) {
    double start = 0;
    for (int r = 0; r < n; ++r) start += start_values(r, d, 9)[i];
    ASSERT_NEAR(stay[i], start - left[i], 1e-5) << "element " << i;
  }
  EXPECT_NEAR(allreduce_sum(check, weight), n, 1e-9);
  if (rank == leaver) {
    EXPECT_TRUE(dropped.empty());
    return;
  }
  // The first round from leave_after on in which the leaver was this rank's peer.
  std::vector<std::uint64_t> expected;
  for (int r = leave_after; r < rounds && expected.empty(); ++r) {
    const gc::neighbourhood nb = topo.peers(rank, n, static_cast<std::uint64_t>(r));
    if (std::any_of(nb.out.begin(), nb.out.end(),
                    [&](const auto& p) { return p.rank == leaver; }) ||
        std::any_of(nb.in.begin(), nb.in.end(), [&](const auto& p) { return p.rank == leaver; }))
      expected.push_back(static_cast<std::uint64_t>(r));
  }
  std::vector<std::uint64_t> named;
  for (const auto& x : dropped) {
    EXPECT_FALSE(x.failed) << x.reason;
    EXPECT_EQ(x.peer, leaver) << "rank " << rank << " reported a live peer: " << x.reason;
    if (x.peer == leaver) named.push_back(x.round);
  }
  EXPECT_EQ(named, expected) << "rank " << rank;
}

TEST(MpiGossip, SilentPeerIsSkippedNamedAndMassIsKept) {
  silent_peer_body(gc::complete_topology{}, gc::identity_codec{}, 2, 4);
  silent_peer_body(gc::ring_topology{}, gc::identity_codec{}, 2, 5);
}

TEST(MpiGossip, SilentPeerCompressedKeepsMass) {
  silent_peer_body(gc::complete_topology{}, gc::scalar_quant_codec({.bits = 8}), 2, 5);
  silent_peer_body(gc::ring_topology{}, gc::scalar_quant_codec({.bits = 8}), 2, 5);
}

TEST(MpiGossip, SilentPeerPushSumKeepsWeightsAndMass) {
  // The share sent to the silent rank is not taken from home: what it never received
  // is not lost.
  silent_peer_body(gc::complete_topology{}, gc::identity_codec{}, 3, 6,
                   {.rule = gc::mixing_rule::push_sum});
  silent_peer_body(gc::ring_topology{}, gc::identity_codec{}, 3, 6,
                   {.rule = gc::mixing_rule::push_sum});
}

// The last rank of a ring mixes 2 rounds, then sleeps past several deadlines (6 × 300 ms)
// while the others mix 40 rounds; then it comes back (after a barrier on a second
// transport): it mixes the round it left off, and (after another barrier) every rank mixes
// 10 more rounds and settles. The live ranks' 40 rounds take a bounded time (before: a
// deadline each), only the sleeper is named, once, by its neighbours, at most one exchange
// a peer stays open (a ring: late_exchanges() ≤ 2, retired_bytes() ≤ 2 × (two message
// buffers + n values)), nothing is open after settle(), and Σ over all ranks is the start.
template <class C>
void silent_for_many_rounds_body(C codec, gc::gossip_options o = {}) {
  using clock = std::chrono::steady_clock;
  constexpr std::size_t d = 24;
  constexpr int before = 2, quiet = 40, after = 10;
  const auto timeout = 300ms;
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const int silent = n - 1;
  std::vector<float> x(d);
  double weight = 0, quiet_ms = 0;
  std::size_t max_late = 0, max_retired = 0, open = 0;
  std::vector<gc::dropped_peer> dropped;
  gc::mpi_transport check(MPI_COMM_WORLD, 60s);
  gc::mpi_transport t(MPI_COMM_WORLD, timeout);
  {
    gc::gossip<C, gc::mpi_transport, gc::ring_topology> g(t, {}, codec, {}, o);
    std::vector<float> z = start_values(rank, d, 9);
    for (int r = 0; r < before; ++r) g.mix(z);
    if (rank == silent) {
      std::this_thread::sleep_for(6 * timeout);
      check.barrier();
      g.mix(z);  // the round it left off
      check.barrier();
    } else {
      const auto t0 = clock::now();
      for (int r = 0; r < quiet; ++r) {
        g.mix(z);
        max_late = std::max(max_late, g.late_exchanges());
        max_retired = std::max(max_retired, g.retired_bytes());
      }
      quiet_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      check.barrier();
      check.barrier();
    }
    for (int r = 0; r < after; ++r) g.mix(z);
    open = g.settle(z);
    for (std::size_t i = 0; i < d; ++i) x[i] = static_cast<float>(g.weight() * z[i]);
    weight = g.weight();
    dropped.assign(g.dropped().begin(), g.dropped().end());
  }
  std::vector<double> sum(x.begin(), x.end());
  check.allreduce<double>(sum, sum, gc::reduce_op::sum);
  for (std::size_t i = 0; i < d; ++i) {
    double start = 0;
    for (int r = 0; r < n; ++r) start += start_values(r, d, 9)[i];
    ASSERT_NEAR(sum[i], start, 1e-5) << "element " << i;
  }
  EXPECT_NEAR(allreduce_sum(check, weight), n, 1e-9);
  EXPECT_EQ(open, 0u) << "rank " << rank;
  std::vector<std::uint64_t> rounds;
  for (const auto& p : dropped) {
    EXPECT_EQ(p.peer, silent) << "rank " << rank << " dropped a live peer: " << p.reason;
    EXPECT_FALSE(p.failed) << p.reason;
    rounds.push_back(p.round);
  }
  const bool neighbour = rank != silent && (rank == 0 || rank == n - 2);
  EXPECT_EQ(rounds, neighbour ? std::vector<std::uint64_t>{2} : std::vector<std::uint64_t>{})
      << "rank " << rank;
  if (rank == silent) return;
  // The bytes in front of a payload: the settings word, then push-sum's weight or
  // compressed averaging's ω̂.
  const std::size_t extra =
      8 + (o.rule == gc::mixing_rule::push_sum || !gc::lossless_codec<C> ? sizeof(double) : 0);
  EXPECT_LT(quiet_ms, 5.0 * static_cast<double>(timeout.count())) << "rank " << rank;
  EXPECT_LE(max_late, 2u) << "rank " << rank;
  EXPECT_LE(max_retired, 2 * (2 * (extra + codec.max_encoded_bytes(d)) + d * sizeof(float)))
      << "rank " << rank;
  if (rank == 0)
    std::printf("[ silent   ] %d ranks: rank 0's 40 rounds took %.0f ms (deadline %lld ms)\n", n,
                quiet_ms, static_cast<long long>(timeout.count()));
}

TEST(MpiGossip, SilentPeerIsSkippedWithoutWaiting) {
  silent_for_many_rounds_body(gc::identity_codec{});
}

TEST(MpiGossip, SilentPeerIsSkippedWithoutWaitingPushSumCompressed) {
  silent_for_many_rounds_body(gc::identity_codec{}, {.rule = gc::mixing_rule::push_sum});
  silent_for_many_rounds_body(gc::scalar_quant_codec({.bits = 8}));
}

}  // namespace

int main(int argc, char** argv) {
  return gradcomm_test::run_mpi_tests(argc, argv,
                                      [](gc::mpi_transport&) { return RUN_ALL_TESTS(); });
}

// Gossip over MPI ranks (run under mpiexec -np 2, 3, 4): the bodies of the threads tests
// (tests/unit/gossip_test_bodies.hpp), unchanged, over mpi_transport — consensus within
// the second-eigenvalue bound with the mean kept, push-sum, compressed (CHOCO) gossip
// with 8-bit codes, and many seeded random matchings without a deadlock.
#include "../unit/gossip_test_bodies.hpp"
#include "mpi_gtest_main.hpp"

#include <gradcomm/transport/mpi.hpp>

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

}  // namespace

int main(int argc, char** argv) {
  return gradcomm_test::run_mpi_tests(argc, argv,
                                      [](gc::mpi_transport&) { return RUN_ALL_TESTS(); });
}

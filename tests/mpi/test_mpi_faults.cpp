// Faults over MPI (run under mpiexec -np 2, 3, 4): a rank that sleeps past the deadline
// in a ring all-reduce. The others get timeout_error naming it, then free their buffers
// (filled with garbage first, the heap churned) and finalize; the whole run must exit 0:
// nothing MPI still holds after a timeout may point into memory the caller owns.
#include "mpi_gtest_main.hpp"

#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/mpi.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

constexpr auto deadline = std::chrono::milliseconds(300);
// Past the deadline and the grace period of the others' search for the missing rank.
constexpr auto nap = std::chrono::milliseconds(1200);
// Above 64 KiB of floats: the transport's own ring.
constexpr std::size_t ring_elems = 300007;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The rank that sleeps: not rank 0 (which reports) and, from 3 ranks, not the last, so
// that some survivors wait on it only through a neighbour.
int sleeper() { return world_size() >= 3 ? 1 : world_size() - 1; }

// Fills the freed memory's likely successors with garbage: a use after free shows.
void churn_heap() {
  for (int i = 0; i < 8; ++i) {
    std::vector<float> junk(ring_elems + static_cast<std::size_t>(i) * 1000);
    std::fill(junk.begin(), junk.end(), -1.0e30f);
    volatile float sink = junk[junk.size() / 2];
    (void)sink;
  }
}

void expect_names_the_sleeper(const gc::timeout_error& e) {
  EXPECT_EQ(e.peer(), sleeper()) << e.what();
  EXPECT_NE(std::string(e.what()).find("rank " + std::to_string(sleeper())), std::string::npos)
      << e.what();
}

}  // namespace

TEST(MpiFaults, ARingAllreduceTimeoutLeavesNothingInTheCallersMemory) {
  const int me = world_rank();
  {
    gc::mpi_transport t(MPI_COMM_WORLD, deadline);
    auto g = std::make_unique<std::vector<float>>(ring_elems, 1.0f);
    t.barrier();
    if (me == sleeper()) std::this_thread::sleep_for(nap);
    try {
      t.allreduce<float>(*g, *g, gc::reduce_op::sum);
      ADD_FAILURE() << "rank " << me << ": no timeout";
    } catch (const gc::timeout_error& e) {
      if (me != sleeper()) expect_names_the_sleeper(e);
    }
    std::fill(g->begin(), g->end(), -7.0f);
    g.reset();
    churn_heap();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiFaults, AnIdentityAllreduceTimeoutLeavesNothingInTheCallersMemory) {
  const int me = world_rank();
  {
    gc::mpi_transport t(MPI_COMM_WORLD, deadline);
    auto g = std::make_unique<std::vector<float>>(ring_elems, 1.0f);
    {
      gc::allreduce<gc::identity_codec, gc::mpi_transport> ar(t);
      t.barrier();
      if (me == sleeper()) std::this_thread::sleep_for(nap);
      try {
        ar.average(gc::host_view<float>(g->data(), g->size()));
        ADD_FAILURE() << "rank " << me << ": no timeout";
      } catch (const gc::timeout_error& e) {
        if (me != sleeper()) expect_names_the_sleeper(e);
      }
    }
    std::fill(g->begin(), g->end(), -7.0f);
    g.reset();
    churn_heap();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

int main(int argc, char** argv) {
  return gradcomm_test::run_mpi_tests(argc, argv,
                                      [](gc::mpi_transport&) { return RUN_ALL_TESTS(); });
}

// The parameter server over MPI ranks (run under mpiexec -np 3, 4, 5: rank 0 serves, the
// others train): with integer gradients and plain SGD the final parameters are exactly
// the initial ones minus every acknowledged push; the staleness bound holds, checked from
// the recorded versions; a worker that goes silent mid-run (what survives of a stopped
// worker under Open MPI, which ends the job when a process exits) is reported by rank and
// the others finish.
#include "../unit/parameter_server_test_data.hpp"

#include "mpi_gtest_main.hpp"

#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/transport/mpi.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

gc::mpi_transport* sync_transport = nullptr;

using ps_test::initial;
using ps_test::int_grad;

struct silent_exit {};

// Runs the parameter server with `steps` steps per worker (rank `silent` stops after 3
// without a goodbye); returns on every rank the server's final parameters, the sum of the
// acknowledged pushes and the server's log (on rank 0).
template <class C, class P = gc::identity_codec>
void run_and_check(C codec, gc::ps_options opt, int steps, int silent = -1, P pull = {}) {
  auto& sync = *sync_transport;
  const std::size_t n = 301;
  std::vector<float> w = initial(n), g(n);
  std::vector<std::int64_t> acked(n, 0);
  std::vector<gc::ps_update> log;
  std::vector<gc::lost_worker> lost;
  std::uint64_t version = 0;
  try {
    gc::mpi_transport t(MPI_COMM_WORLD, 10s);
    gc::parameter_server<C, gc::mpi_transport, gc::sgd, P> ps(t, codec, pull, opt,
                                                              gc::sgd{{.lr = 1.0f}});
    if (ps.is_server()) {
      ps.serve(w);
      log.assign(ps.updates().begin(), ps.updates().end());
      lost.assign(ps.lost_workers().begin(), ps.lost_workers().end());
      version = ps.version();
    } else {
      for (int step = 0; step < steps; ++step) {
        if (t.rank() == silent && step == 3) throw silent_exit{};  // no goodbye
        for (std::size_t i = 0; i < n; ++i) g[i] = int_grad(t.rank(), ps.clock_count(), i);
        ps.step(w, g);
        for (std::size_t i = 0; i < n; ++i) acked[i] += static_cast<std::int64_t>(g[i]);
      }
    }
  } catch (const silent_exit&) {
  }
  sync.allreduce(std::span<const std::int64_t>(acked), std::span<std::int64_t>(acked),
                 gc::reduce_op::sum);
  sync.broadcast(std::as_writable_bytes(std::span(w)), 0);
  const std::vector<float> w0 = initial(n);
  for (std::size_t i = 0; i < n; ++i)
    ASSERT_EQ(w[i], w0[i] - static_cast<float>(acked[i])) << "element " << i;
  if (sync.rank() != 0) return;
  const int workers = sync.size() - 1;
  const std::uint64_t expected =
      static_cast<std::uint64_t>(steps) * static_cast<std::uint64_t>(workers - (silent > 0)) +
      (silent > 0 ? 3 : 0);
  EXPECT_EQ(version, expected);
  if (silent > 0) {
    ASSERT_EQ(lost.size(), 1u);
    EXPECT_EQ(lost[0].rank, silent);
    EXPECT_EQ(lost[0].updates, 3u);
  } else {
    EXPECT_TRUE(lost.empty());
  }
  if (!opt.record_updates) return;
  // The bound, from the versions: worker j's updates inside the version each gradient read.
  std::vector<std::vector<std::uint64_t>> applied(static_cast<std::size_t>(workers));
  for (const auto& u : log)
    applied[static_cast<std::size_t>(u.worker - 1)].push_back(u.version_applied);
  for (const auto& u : log)
    for (int j = 0; j < workers; ++j) {
      const auto& a = applied[static_cast<std::size_t>(j)];
      const auto seen = static_cast<std::uint64_t>(
          std::upper_bound(a.begin(), a.end(), u.version_seen) - a.begin());
      if (j + 1 == u.worker)
        ASSERT_EQ(seen, u.clock);
      else
        ASSERT_GE(seen + opt.staleness, u.clock) << "worker " << u.worker << " clock " << u.clock;
    }
}

TEST(MpiParameterServer, ExactSumAsynchronous) { run_and_check(gc::identity_codec{}, {}, 40); }

TEST(MpiParameterServer, ExactSumF32PullsAndStalenessBound) {
  for (std::uint64_t s : {std::uint64_t{0}, std::uint64_t{2}})
    run_and_check(gc::identity_codec{},
                  {.staleness = s, .pull = gc::pull_encoding::f32, .record_updates = true}, 30);
}

TEST(MpiParameterServer, QuantizedPullsKeepTheServerExact) {
  // f32 pushes keep the server's sum exact; the pulls are 8-bit deltas.
  static_assert(gc::Communicator<gc::parameter_server<gc::identity_codec, gc::mpi_transport,
                                                      gc::sgd, gc::scalar_quant_codec>>);
  run_and_check(gc::identity_codec{}, {.staleness = 1, .record_updates = true}, 30, -1,
                gc::scalar_quant_codec({.bits = 8}));
}

TEST(MpiParameterServer, SilentWorkerIsReportedAndTheOthersFinish) {
  const int last = sync_transport->size() - 1;
  run_and_check(gc::identity_codec{}, {.staleness = 1, .worker_timeout = 1500ms}, 25, last);
}

}  // namespace

int main(int argc, char** argv) {
  return gradcomm_test::run_mpi_tests(argc, argv, [](gc::mpi_transport& s) {
    sync_transport = &s;
    return RUN_ALL_TESTS();
  });
}

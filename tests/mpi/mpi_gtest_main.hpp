// The main of the multi-process GoogleTest programs: MPI up, only rank 0 prints
// GoogleTest's report, the other ranks print their failures prefixed "[rank r]", and
// every rank exits non-zero when any rank failed, so mpiexec and the ctest test fail.
//
//   int main(int argc, char** argv) {
//     return gradcomm_test::run_mpi_tests(argc, argv, [](gradcomm::mpi_transport&) {
//       return RUN_ALL_TESTS();
//     });
//   }
#pragma once

#include <gradcomm/transport/mpi.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

namespace gradcomm_test {

class rank_failure_printer : public ::testing::EmptyTestEventListener {
 public:
  explicit rank_failure_printer(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::printf("[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                r.line_number(), r.message());
    std::fflush(stdout);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::printf("[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(), info.name());
      std::fflush(stdout);
    }
  }

 private:
  int rank_;
};

// run_mpi_tests' body: MPI up (initialized here unless it is already), the tests run.
template <class Run>
int run_mpi_tests_in(int argc, char** argv, Run run, gradcomm::mpi_threads threads) {
  gradcomm::mpi_environment env(argc, argv, threads);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new rank_failure_printer(rank));
  }
  int mine = 0;
  {
    gradcomm::mpi_transport s(env.world(), std::chrono::seconds(60), threads);
    mine = run(s);
  }
  int worst = 0;
  MPI_Allreduce(&mine, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && worst != 0 && mine == 0)
    std::printf("[  FAILED  ] on another rank: see the [rank r] lines above\n");
  return worst;
}

// Runs `run(sync)` on every rank, `sync` a transport over MPI_COMM_WORLD with a long
// deadline for the tests' own synchronization; returns the worst result of all ranks.
// With `threads` = mpi_threads::caller, MPI is initialized at MPI_THREAD_FUNNELED (the
// transport's one-thread path, what SimGrid's SMPI provides) and `sync` made so.
template <class Run>
int run_mpi_tests(int argc, char** argv, Run run,
                  gradcomm::mpi_threads threads = gradcomm::mpi_threads::any) {
  int provided = MPI_THREAD_SINGLE;
  if (threads == gradcomm::mpi_threads::caller)
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const int worst = run_mpi_tests_in(argc, argv, run, threads);
  if (threads == gradcomm::mpi_threads::caller) MPI_Finalize();  // this function's MPI_Init
  return worst;
}

}  // namespace gradcomm_test

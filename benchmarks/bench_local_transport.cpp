// All-reduce of 64 MiB of f32 over the local transport (2 and 4 ranks as threads),
// beside memcpy of the same 64 MiB measured in the same run.
//
//   ./bench_local_transport --benchmark_counters_tabular=true
//
// bytes_per_second is the f32 input size over the time of one collective (or one
// memcpy); ratio_to_memcpy divides it by memcpy's. bus_GBps is NCCL's "bus
// bandwidth": 2(N-1)/N × the input over the time, what each rank of a ring moves.
#include <gradcomm/transport/local.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace gc = gradcomm;

namespace {

constexpr std::size_t payload_bytes = std::size_t{64} << 20;
constexpr std::size_t payload_floats = payload_bytes / sizeof(float);

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Mean seconds of one memcpy of the payload, measured once per run (after a copy
// that faults the pages in), so every row's ratio uses the same baseline.
double memcpy_baseline_seconds() {
  static const double s = [] {
    std::vector<std::byte> src(payload_bytes, std::byte{1}), dst(payload_bytes);
    std::memcpy(dst.data(), src.data(), payload_bytes);
    constexpr int reps = 10;
    const auto t0 = clock_type::now();
    for (int i = 0; i < reps; ++i) {
      std::memcpy(dst.data(), src.data(), payload_bytes);
      benchmark::ClobberMemory();
    }
    return seconds_since(t0) / reps;
  }();
  return s;
}

void BM_memcpy_64MiB(benchmark::State& state) {
  std::vector<std::byte> src(payload_bytes, std::byte{1}), dst(payload_bytes);
  std::memcpy(dst.data(), src.data(), payload_bytes);
  const double baseline = memcpy_baseline_seconds();
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), payload_bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  const double per_iter = seconds_since(t0) / static_cast<double>(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(payload_bytes));
  state.counters["ratio_to_memcpy"] = baseline / per_iter;  // about 1: the baseline's check
}

// Rank 0 runs on the benchmark's thread; ranks 1..N-1 on threads that live for the
// whole benchmark and follow rank 0's broadcast "go" (1) or "stop" (0) before each
// collective. Only the all-reduce is timed.
void BM_allreduce_local_f32_64MiB(benchmark::State& state) {
  const int ranks = static_cast<int>(state.range(0));
  const double baseline = memcpy_baseline_seconds();
  gc::local_world world(ranks, std::chrono::seconds(60));
  std::vector<std::vector<float>> in(static_cast<std::size_t>(ranks)),
      out(static_cast<std::size_t>(ranks));
  for (auto& v : in) v.assign(payload_floats, 1.0f);
  for (auto& v : out) v.assign(payload_floats, 0.0f);

  std::vector<std::thread> helpers;
  for (int r = 1; r < ranks; ++r) {
    helpers.emplace_back([&, r] {
      auto t = world.transport(r);
      const auto me = static_cast<std::size_t>(r);
      try {
        std::byte go{1};
        for (;;) {
          t.broadcast(std::span<std::byte>(&go, 1), 0);
          if (go == std::byte{0}) break;
          t.allreduce<float>(in[me], out[me], gc::reduce_op::sum);
        }
      } catch (const std::exception& e) {
        t.abort(e.what());  // releases rank 0, which reports it
      }
    });
  }

  auto t = world.transport(0);
  double timed = 0;
  try {
    std::byte go{1};
    for (auto _ : state) {
      t.broadcast(std::span<std::byte>(&go, 1), 0);
      const auto t0 = clock_type::now();
      t.allreduce<float>(in[0], out[0], gc::reduce_op::sum);
      const double s = seconds_since(t0);
      state.SetIterationTime(s);
      timed += s;
    }
    go = std::byte{0};
    t.broadcast(std::span<std::byte>(&go, 1), 0);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    t.abort("the benchmark stopped");
  }
  for (auto& h : helpers) h.join();
  if (out[0][payload_floats - 1] != static_cast<float>(ranks)) state.SkipWithError("wrong sum");

  const auto iters = static_cast<double>(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(payload_bytes));
  if (timed > 0) {
    const double per_iter = timed / iters;
    state.counters["ratio_to_memcpy"] = baseline / per_iter;
    state.counters["bus_GBps"] =
        2.0 * (ranks - 1) / ranks * static_cast<double>(payload_bytes) / per_iter / 1e9;
  }
  state.SetLabel(std::to_string(ranks) + " ranks on " +
                 std::to_string(std::thread::hardware_concurrency()) + " cores");
}

}  // namespace

BENCHMARK(BM_memcpy_64MiB)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_allreduce_local_f32_64MiB)
    ->Arg(2)
    ->Arg(4)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();

BENCHMARK_MAIN();

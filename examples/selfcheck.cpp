// gradcomm_selfcheck: what this build found, and one compressed all-reduce.
//
// Prints the parts the build linked (CUDA, NCCL, MPI) and what they see at run
// time, then runs a bf16-compressed all-reduce of 16 Mi random f32 values over 4
// ranks as threads and checks every rank's result against the exact mean.
// Exits non-zero when the check fails.
#include <gradcomm/gradcomm.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#if GRADCOMM_HAS_CUDA
#include <cuda_runtime_api.h>
#endif
#if GRADCOMM_HAS_NCCL
#include <nccl.h>
#endif
#if GRADCOMM_HAS_MPI
#include <mpi.h>
#endif

namespace {

void report_parts() {
  std::printf("gradcomm %d.%d.%d\n", gradcomm::version.major, gradcomm::version.minor,
              gradcomm::version.patch);
#if GRADCOMM_HAS_CUDA
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int devices = 0;
  const cudaError_t st = cudaGetDeviceCount(&devices);
  if (st != cudaSuccess) devices = 0;
  std::printf("  CUDA : found (runtime %d.%d), %d device(s)%s\n", runtime / 1000,
              (runtime % 1000) / 10, devices,
              st != cudaSuccess ? (std::string(" — ") + cudaGetErrorString(st)).c_str() : "");
#else
  std::printf("  CUDA : not built (no toolkit found, or GRADCOMM_WITH_CUDA=OFF)\n");
#endif
#if GRADCOMM_HAS_NCCL
  int nccl = 0;
  ncclGetVersion(&nccl);
  std::printf("  NCCL : found (%d.%d.%d)\n", nccl / 10000, (nccl % 10000) / 100, nccl % 100);
#else
  std::printf("  NCCL : not built\n");
#endif
#if GRADCOMM_HAS_MPI
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  std::string first(lib, static_cast<std::size_t>(len));
  first = first.substr(0, first.find_first_of(",\n"));
  std::printf("  MPI  : found (%s)\n", first.c_str());
#else
  std::printf("  MPI  : not built\n");
#endif
}

}  // namespace

int main() {
  report_parts();

  constexpr int ranks = 4;
  constexpr std::size_t n = std::size_t{1} << 24;
  // Each rank's gradient and, in double, the exact mean the all-reduce approximates.
  std::vector<std::vector<float>> grads(ranks, std::vector<float>(n));
  std::vector<double> exact(n, 0.0);
  std::vector<double> mean_abs(n, 0.0);
  std::mt19937 gen(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int r = 0; r < ranks; ++r) {
    for (std::size_t i = 0; i < n; ++i) {
      grads[r][i] = normal(gen);
      exact[i] += grads[r][i] / double{ranks};
      mean_abs[i] += std::fabs(grads[r][i]) / double{ranks};
    }
  }

  // Two rounds on each rank's data: the first touches the workspace's memory, the
  // second is timed and checked.
  gradcomm::local_world world(ranks);
  std::vector<gradcomm::traffic_snapshot> traffic(ranks);
  std::vector<std::vector<float>> result(ranks);
  double seconds = 0;
  world.run([&](gradcomm::local_transport& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    gradcomm::bf16_codec codec;
    gradcomm::allgather_workspace ws;
    result[r] = grads[r];
    gradcomm::allgather_decode_add(codec, t, result[r], ws, gradcomm::reduction::mean);
    result[r] = grads[r];
    t.barrier();
    const auto before = t.counters().snapshot();
    const auto t0 = std::chrono::steady_clock::now();
    gradcomm::allgather_decode_add(codec, t, result[r], ws, gradcomm::reduction::mean);
    t.barrier();
    if (r == 0)
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    traffic[r] = t.counters().snapshot() - before;
  });
  grads = std::move(result);

  // bf16 keeps 8 significant bits: rounding to nearest moves each value by at most
  // 2^-8 of itself, so the mean by at most 2^-8 of the mean magnitude; the f32 sum
  // of 4 values adds at most 3 roundings of 2^-24 of the running magnitude.
  const double rel = std::ldexp(1.0, -8) + 4 * std::ldexp(1.0, -24);
  double worst = 0.0;
  bool identical = true;
  std::size_t outside = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (int r = 1; r < ranks; ++r) identical &= grads[r][i] == grads[0][i];
    const double err = std::fabs(grads[0][i] - exact[i]);
    worst = std::max(worst, err);
    if (err > rel * mean_abs[i]) ++outside;
  }
  const double raw = static_cast<double>(n) * sizeof(float);
  std::printf("compressed all-reduce: %d ranks (threads), %zu f32 values, bf16 codec\n", ranks, n);
  std::printf("  bytes sent per rank : %.1f MiB (f32 payloads would be %.1f MiB), ratio %.2fx\n",
              traffic[0].bytes_sent / 1048576.0, raw * (ranks - 1) / 1048576.0,
              raw * (ranks - 1) / traffic[0].bytes_sent);
  std::printf("  max |error| vs exact mean: %.3g; values outside the bf16 bound: %zu\n", worst,
              outside);
  std::printf("  ranks bitwise identical: %s; all-reduce time %.3f s\n", identical ? "yes" : "NO",
              seconds);
  const bool ok = identical && outside == 0;
  std::printf("%s\n", ok ? "selfcheck: OK" : "selfcheck: FAILED");
  return ok ? 0 : 1;
}

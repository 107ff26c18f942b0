// Gossip over the local transport (ranks as threads): rounds to ε-consensus per topology
// beside the rate the mixing matrix promises, and the time and bytes of one round beside
// an all-reduce of the same tensor on the same transport (the baseline).
//
//   ./bench_gossip --benchmark_counters_tabular=true
//
// BM_rounds_to_eps/<topology>/<ranks>: plain gossip (identity_codec) from values in
//   [-1, 1) until ‖x − x̄‖ ≤ ε ‖x₀ − x̄‖ (ε = 1e-4, over all ranks). `rounds` is what it
//   took, `theory` ⌈ln ε / ln rate⌉ with `rate` the per-round contraction of the mixing
//   matrices (computed here by power iteration):
//     static topologies: λ₂ = ‖W − 11ᵀ/n‖₂, a bound for every start;
//     exponential: ‖P − 11ᵀ/n‖₂^(1/T) for P the product of one period of T = ⌈log2 n⌉
//       rounds (0 for n a power of two: T rounds average exactly);
//     random matching: √λ₂(E[W]) (W² = W for a matching), a bound in mean square,
//       E[W] averaged over 4096 rounds.
//   Time is not the point of these rows (each runs once).
// BM_round/<codec>/<topology>/<ranks> and BM_allreduce/<ranks>: one round of mix() on
//   2^20 f32 (4 MiB) a rank against transport.allreduce<float> of the same 4 MiB.
//   bytes_per_second is the tensor size over the time of one round on rank 0;
//   bytes_per_round_per_rank is what rank 0 sent in a round (payload bytes);
//   ratio_to_allreduce divides the all-reduce's time per call (same ranks, same run) by the
//   round's: above 1, the round is faster.
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/transport/local.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gc = gradcomm;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// ---- the rates of the mixing matrices ---------------------------------------------------

using matrix = std::vector<double>;  // n × n, row-major

matrix multiply(const matrix& a, const matrix& b, int n) {
  const auto un = static_cast<std::size_t>(n);
  matrix c(un * un, 0.0);
  for (std::size_t i = 0; i < un; ++i)
    for (std::size_t k = 0; k < un; ++k)
      for (std::size_t j = 0; j < un; ++j) c[i * un + j] += a[i * un + k] * b[k * un + j];
  return c;
}

// ‖M − 11ᵀ/n‖₂ by power iteration on (M − J)ᵀ(M − J) from a start orthogonal to 1.
double norm_without_mean(const matrix& m, int n) {
  const auto un = static_cast<std::size_t>(n);
  if (n == 1) return 0.0;
  matrix a = m;
  for (auto& v : a) v -= 1.0 / n;
  std::vector<double> x(un), y(un);
  std::mt19937 rng(7);
  std::normal_distribution<double> g;
  for (auto& v : x) v = g(rng);
  double sigma2 = 0.0;
  for (int it = 0; it < 2000; ++it) {
    double mean = 0;
    for (double v : x) mean += v / n;
    double len = 0;
    for (auto& v : x) len += (v - mean) * (v - mean);
    len = std::sqrt(len);
    if (len == 0) return 0.0;
    for (auto& v : x) v = (v - mean) / len;
    for (std::size_t i = 0; i < un; ++i) {
      y[i] = 0;
      for (std::size_t j = 0; j < un; ++j) y[i] += a[i * un + j] * x[j];
    }
    for (std::size_t j = 0; j < un; ++j) {
      x[j] = 0;
      for (std::size_t i = 0; i < un; ++i) x[j] += a[i * un + j] * y[i];
    }
    double s = 0;
    for (double v : x) s += v * v;
    sigma2 = std::sqrt(s);  // ‖AᵀA x‖ for a unit x: → σ_max²
  }
  return std::sqrt(sigma2);
}

template <gc::Topology G>
double contraction_rate(const G& topo, int n) {
  if (n == 1) return 0.0;
  if constexpr (std::is_same_v<G, gc::exponential_topology>) {
    const int period = gc::exponential_topology::period(n);
    matrix p = gc::mixing_matrix(topo, n, 0);
    for (int t = 1; t < period; ++t)
      p = multiply(gc::mixing_matrix(topo, n, static_cast<std::uint64_t>(t)), p, n);
    return std::pow(norm_without_mean(p, n), 1.0 / period);
  } else if constexpr (G::time_varying) {
    const auto un = static_cast<std::size_t>(n);
    constexpr int samples = 4096;
    matrix mean(un * un, 0.0);
    for (int t = 0; t < samples; ++t) {
      const matrix w = gc::mixing_matrix(topo, n, static_cast<std::uint64_t>(t));
      for (std::size_t i = 0; i < w.size(); ++i) mean[i] += w[i] / samples;
    }
    return std::sqrt(norm_without_mean(mean, n));
  } else {
    return norm_without_mean(gc::mixing_matrix(topo, n, 0), n);
  }
}

// ---- rounds to ε ---------------------------------------------------------------------------

template <gc::Topology G>
void BM_rounds_to_eps(benchmark::State& state, G topo) {
  constexpr double eps = 1e-4;
  constexpr int max_rounds = 5000;
  constexpr std::size_t d = 256;
  const int n = static_cast<int>(state.range(0));
  int rounds = 0;
  std::uint64_t sent = 0;
  for (auto _ : state) {
    gc::local_world world(n, std::chrono::seconds(60));
    std::vector<int> took(static_cast<std::size_t>(n), -1);
    world.run([&](gc::local_transport& t) {
      std::mt19937 rng(static_cast<unsigned>(t.rank()) + 1);
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      std::vector<float> x(d);
      for (auto& v : x) v = u(rng);
      gc::gossip<gc::identity_codec, gc::local_transport, G> g(t, topo);
      auto disagreement = [&] {
        std::vector<double> m(x.begin(), x.end());
        t.allreduce<double>(m, m, gc::reduce_op::sum);
        double s = 0;
        for (std::size_t i = 0; i < d; ++i) s += (x[i] - m[i] / n) * (x[i] - m[i] / n);
        t.allreduce<double>(std::span<const double>(&s, 1), std::span<double>(&s, 1),
                            gc::reduce_op::sum);
        return std::sqrt(s);
      };
      const double e0 = disagreement();
      int r = 0;
      while (r < max_rounds && disagreement() > eps * e0) {
        g.mix(x);
        ++r;
      }
      took[static_cast<std::size_t>(t.rank())] = r;
      if (t.rank() == 0) sent = g.counters().snapshot().bytes_sent;
    });
    rounds = took[0];
  }
  const double rate = contraction_rate(topo, n);
  state.counters["rounds"] = rounds;
  state.counters["rate"] = rate;
  state.counters["theory"] =
      rate <= 0.0
          ? (G::time_varying && n > 1 ? gc::exponential_topology::period(n) : (n > 1 ? 1 : 0))
          : std::ceil(std::log(eps) / std::log(rate));
  state.counters["bytes_per_round_per_rank"] = rounds > 0 ? static_cast<double>(sent) / rounds : 0;
  state.SetLabel(std::string(topo.name()) + ", eps 1e-4, " + std::to_string(d) + " f32 a rank");
}

// ---- time of a round --------------------------------------------------------------------------

constexpr std::size_t round_floats = std::size_t{1} << 20;

// Runs `ranks` ranks: rank 0 on the benchmark's thread, the others on threads that follow
// rank 0's broadcast "go" (1) or "stop" (0) before each call. Only rank 0's call is timed.
// Returns the mean seconds of rank 0's timed calls.
template <class MakeRank>
double run_timed(benchmark::State& state, int ranks, MakeRank make_rank) {
  gc::local_world world(ranks, std::chrono::seconds(60));
  std::vector<std::thread> helpers;
  for (int r = 1; r < ranks; ++r) {
    helpers.emplace_back([&, r] {
      auto t = world.transport(r);
      try {
        auto call = make_rank(t);
        call();  // warm-up, with rank 0's
        std::byte go{1};
        for (;;) {
          t.broadcast(std::span<std::byte>(&go, 1), 0);
          if (go == std::byte{0}) break;
          call();
        }
      } catch (const std::exception& e) {
        t.abort(e.what());
      }
    });
  }
  auto t = world.transport(0);
  double timed = 0;
  try {
    auto call = make_rank(t);
    std::byte go{1};
    call();  // warm-up: sizes the buffers, faults the pages in
    for (auto _ : state) {
      t.broadcast(std::span<std::byte>(&go, 1), 0);
      const auto t0 = clock_type::now();
      call();
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
  return state.iterations() > 0 ? timed / static_cast<double>(state.iterations()) : 0.0;
}

// Mean seconds of one all-reduce of the tensor on `ranks` ranks, measured once per rank
// count and run, so that every round's ratio uses the same baseline.
double allreduce_seconds(int ranks);

void BM_allreduce(benchmark::State& state) {
  const int ranks = static_cast<int>(state.range(0));
  const std::vector<float> ones(round_floats, 1.0f);
  std::vector<std::vector<float>> out(static_cast<std::size_t>(ranks),
                                      std::vector<float>(round_floats, 0.0f));
  std::uint64_t sent = 0;
  const double per_call = run_timed(state, ranks, [&](gc::local_transport& t) {
    auto& o = out[static_cast<std::size_t>(t.rank())];
    return [&t, &o, &ones, &sent] {
      const auto before = t.counters().snapshot().bytes_sent;
      t.allreduce<float>(ones, o, gc::reduce_op::sum);
      if (t.rank() == 0) sent = t.counters().snapshot().bytes_sent - before;
    };
  });
  state.SetBytesProcessed(state.iterations() *
                          static_cast<std::int64_t>(round_floats * sizeof(float)));
  state.counters["bytes_per_round_per_rank"] = static_cast<double>(sent);
  if (per_call > 0) state.counters["ratio_to_allreduce"] = allreduce_seconds(ranks) / per_call;
  state.SetLabel("transport.allreduce<float>, " + std::to_string(ranks) + " ranks on " +
                 std::to_string(std::thread::hardware_concurrency()) + " cores");
}

double allreduce_seconds(int ranks) {
  static std::map<int, double> cache;
  if (auto it = cache.find(ranks); it != cache.end()) return it->second;
  const std::vector<float> ones(round_floats, 1.0f);
  std::vector<std::vector<float>> out(static_cast<std::size_t>(ranks),
                                      std::vector<float>(round_floats, 0.0f));
  constexpr int reps = 10;
  double total = 0;
  gc::local_world world(ranks, std::chrono::seconds(60));
  world.run([&](gc::local_transport& t) {
    auto& o = out[static_cast<std::size_t>(t.rank())];
    t.allreduce<float>(ones, o, gc::reduce_op::sum);  // warm-up
    for (int i = 0; i < reps; ++i) {
      t.barrier();
      const auto t0 = clock_type::now();
      t.allreduce<float>(ones, o, gc::reduce_op::sum);
      if (t.rank() == 0) total += seconds_since(t0);
    }
  });
  return cache[ranks] = total / reps;
}

template <class C, gc::Topology G>
void BM_round(benchmark::State& state, C codec, G topo, const char* codec_name) {
  const int ranks = static_cast<int>(state.range(0));
  std::vector<std::vector<float>> params(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    auto& p = params[static_cast<std::size_t>(r)];
    p.resize(round_floats);
    std::mt19937 rng(static_cast<unsigned>(r));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : p) v = u(rng);
  }
  using gossip_type = gc::gossip<C, gc::local_transport, G>;
  std::vector<std::unique_ptr<gossip_type>> gossips(static_cast<std::size_t>(ranks));
  const double per_round = run_timed(state, ranks, [&](gc::local_transport& t) {
    const auto me = static_cast<std::size_t>(t.rank());
    gossips[me] = std::make_unique<gossip_type>(t, topo, codec);
    return [g = gossips[me].get(), &p = params[me]] { g->mix(p); };
  });
  const auto c = gossips[0] ? gossips[0]->counters().snapshot() : gc::traffic_snapshot{};
  const auto rounds = gossips[0] ? gossips[0]->round() : 0;
  state.SetBytesProcessed(state.iterations() *
                          static_cast<std::int64_t>(round_floats * sizeof(float)));
  if (rounds > 0)
    state.counters["bytes_per_round_per_rank"] =
        static_cast<double>(c.bytes_sent) / static_cast<double>(rounds);
  if (per_round > 0) state.counters["ratio_to_allreduce"] = allreduce_seconds(ranks) / per_round;
  state.SetLabel(std::string(codec_name) + " on " + std::string(topo.name()) + ", " +
                 std::to_string(ranks) + " ranks on " +
                 std::to_string(std::thread::hardware_concurrency()) + " cores");
}

template <gc::Topology G>
void register_rounds(const char* name, G topo) {
  benchmark::RegisterBenchmark((std::string("BM_rounds_to_eps/") + name).c_str(),
                               [topo](benchmark::State& s) { BM_rounds_to_eps(s, topo); })
      ->Arg(8)
      ->Arg(16)
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
}

template <class C, gc::Topology G>
void register_round(const char* codec_name, C codec, const char* topo_name, G topo) {
  benchmark::RegisterBenchmark((std::string("BM_round/") + codec_name + "/" + topo_name).c_str(),
                               [=](benchmark::State& s) { BM_round(s, codec, topo, codec_name); })
      ->Arg(2)
      ->Arg(4)
      ->Unit(benchmark::kMillisecond)
      ->UseManualTime();
}

}  // namespace

int main(int argc, char** argv) {
  register_rounds("ring", gc::ring_topology{});
  register_rounds("torus", gc::torus_topology{});
  register_rounds("exponential", gc::exponential_topology{});
  register_rounds("random_matching", gc::random_matching_topology{1});
  register_rounds("complete", gc::complete_topology{});

  benchmark::RegisterBenchmark("BM_allreduce", BM_allreduce)
      ->Arg(2)
      ->Arg(4)
      ->Unit(benchmark::kMillisecond)
      ->UseManualTime();
  register_round("identity", gc::identity_codec{}, "ring", gc::ring_topology{});
  register_round("identity", gc::identity_codec{}, "exponential", gc::exponential_topology{});
  register_round("identity", gc::identity_codec{}, "complete", gc::complete_topology{});
  register_round("q8", gc::scalar_quant_codec({.bits = 8}), "ring", gc::ring_topology{});
  register_round("sign", gc::sign_codec(), "ring", gc::ring_topology{});

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

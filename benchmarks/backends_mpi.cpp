// The three backends over MPI ranks in one run — all-reduce, parameter server, gossip — on
// the same ranks and the same tensor: one Markdown table on rank 0 (and CSV with --csv).
//
//   b=$PWD/build/benchmarks/bench_backends_mpi
//   benchmarks/shaped_network.sh --loopback --hosts 4 --build build -- $b        # unshaped
//   sudo benchmarks/shaped_network.sh --hosts 4 --rate 1gbit --build build -- $b --csv s.csv
//   mpirun -np 4 build/benchmarks/bench_backends_mpi --only allreduce_f32,ps_f32 --label plain
//
// (the first is unshaped, TCP over lo; the second runs on 4 namespaces whose links are
// shaped to 1 Gbit/s each way, as root; --label TEXT goes into the table's header.)
//
// Every rank holds --mib MiB (default 16) of f32: n = mib × 2^18 values. The rows (--only
// picks some, comma-separated; every rank runs the same rows in the same order):
//  - allreduce_f32, allreduce_8bit_ef: gradcomm::allreduce<C, mpi_transport> (default
//    options: 4 MiB buckets, mean) with identity_codec and error_feedback<scalar_quant_codec>
//    (8 bits, blocks of 256); step(params, grads) with plain SGD, one untimed warm-up step,
//    then --reps timed steps (grads reloaded before each, untimed). A step's time is the
//    slowest rank's, from a barrier to its return.
//  - ps_f32, ps_8bit_ef: gradcomm::parameter_server<C, mpi_transport> with rank 0 the one
//    server and the N − 1 others workers, asynchronous (unbounded_staleness), plain SGD with
//    lr = 1 on the server; f32 pushes and f32 pulls (identity_codec, pull_encoding::f32), and
//    8-bit pushes with error feedback and 8-bit delta pulls (pull_encoding::codec). Every
//    worker makes one warm-up step, then steps for --seconds (default 20) by its own clock,
//    then finish(); the server's serve() returns after the last goodbye.
//  - gossip_{f32,8bit}_{ring,exponential}: gradcomm::gossip<C, mpi_transport, G>, mix()
//    rounds of the same tensor (ring: averaging; exponential: push-sum), identity_codec and
//    scalar_quant_codec (8 bits; gossip takes no error_feedback wrapper: its public copies
//    are the feedback). One warm-up round, then --reps reps of: one identity all-reduce of
//    the tensor (allreduce<identity_codec>::average, the baseline), then one round, each
//    timed like a step.
//
// Columns:
//   ms / step       all-reduce: median of the timed steps (average + the SGD update);
//                   parameter server: a worker's mean time per step after its warm-up step,
//                   averaged over workers; gossip: median time of a round (mix() alone).
//   gradients / s   gradients applied per second. All-reduce: ranks / (s per step), every
//                   rank's gradient goes into every step. Parameter server: updates the
//                   server applied per second, counted from the moment it had applied as
//                   many updates as there are workers (the warm-up pushes) to the last
//                   goodbye. Gossip: — (a round mixes parameters, it applies no gradient).
//   sent MiB / rank / step  bytes this rank sent per step or round, from the communicator's
//                   counters over the timed calls: the largest over ranks for all-reduce and
//                   gossip (payload bytes for gossip), a worker's push bytes (mean over
//                   workers, headers included) for the parameter server. An identity ring
//                   all-reduce sends 2(N − 1)/N × 4n; the header prints that figure.
//   MiB / update    parameter server only: pushes and replies the server received and sent,
//                   headers included, per update applied (as bench_parameter_server.cpp).
//   all-reduce ms / round ms  gossip only: the median time of the identity all-reduce calls
//                   interleaved with the rounds, over the median round (above 1: the round
//                   is faster) — the all-reduce baseline column's figure is the first.
//   staleness max / mean  parameter server only, in versions, over every update of the row.
//   check           all-reduce: every rank holds the same parameters bit for bit after the
//                   steps ("ranks agree"). Parameter server: the server's final parameters
//                   equal the initial ones minus the sum of every acknowledged push, element
//                   by element ("exact"): the gradients are integers (ps_gradient.hpp, ±127
//                   at the start of each block of 256, so 8-bit pushes are exact too), lr = 1,
//                   and each worker cycles through four of them (g₀, g₁, −g₀, −g₁) precomputed
//                   before the row, so that no time goes into making gradients and the sums
//                   stay small. Gossip: —.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/transport/mpi.hpp>

#include "mpi_bench.hpp"
#include "ps_gradient.hpp"

#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace gc = gradcomm;

namespace {

using mpi_bench::median;
using mpi_bench::timed;
using mpi_bench::usage_error;
using clock_type = mpi_bench::clock_type;

struct options {
  double mib = 16;      // f32 bytes of the tensor per rank, in MiB
  int reps = 5;         // timed steps / rounds per row
  double seconds = 20;  // the parameter server's run per row, per worker
  std::string csv;      // rank 0 writes the rows here as CSV
  std::string only;     // comma-separated row names; empty: all
  std::string label;    // printed in the header (e.g. "4 hosts at 1gbit")
};

constexpr const char* row_names =
    "allreduce_f32 allreduce_8bit_ef ps_f32 ps_8bit_ef gossip_f32_ring "
    "gossip_f32_exponential gossip_8bit_ring gossip_8bit_exponential";

void print_usage(const char* why) {
  std::fprintf(stderr,
               "bench_backends_mpi: %s\n"
               "usage: bench_backends_mpi [--mib M] [--reps K] [--seconds S] [--csv FILE]\n"
               "                          [--only row,row,...] [--label TEXT]\n"
               "rows: %s\n",
               why, row_names);
}

options parse(int argc, char** argv) {
  options o;
  mpi_bench::parse_options(argc, argv,
                           {{"--mib", [&](const char* v) { o.mib = std::atof(v); }},
                            {"--reps", [&](const char* v) { o.reps = std::atoi(v); }},
                            {"--seconds", [&](const char* v) { o.seconds = std::atof(v); }},
                            {"--csv", [&](const char* v) { o.csv = v; }},
                            {"--only", [&](const char* v) { o.only = v; }},
                            {"--label", [&](const char* v) { o.label = v; }}});
  // MPI counts are ints: keep the element count below 2^31.
  if (!(o.mib > 0 && o.mib <= 8000) || o.reps < 1 || !(o.seconds > 0)) {
    throw usage_error{"--mib in (0, 8000], --reps >= 1, --seconds > 0"};
  }
  return o;
}

bool wanted(const options& o, std::string_view name) { return mpi_bench::wanted(o.only, name); }

struct row {
  std::string name;
  double step_s = 0;        // see "ms / step" above
  double grads_per_s = 0;   // 0: not applicable
  double sent_bytes = 0;    // per rank and step or round
  double update_bytes = 0;  // parameter server: per update; 0 otherwise
  double allreduce_s = 0;   // gossip: the interleaved identity all-reduce's median; 0 otherwise
  bool has_staleness = false;
  double max_staleness = 0, mean_staleness = 0;
  double updates = 0, seconds = 0;  // parameter server: updates counted, over seconds
  std::string check = "—";
};

struct world {
  int rank = 0, size = 1;
  std::size_t n = 0;
};

// The largest value over ranks; the mean over the ranks where `take`.
double max_over_ranks(double v) {
  double out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}
double mean_over(double v, bool take) {
  double in[2] = {take ? v : 0.0, take ? 1.0 : 0.0}, out[2] = {};
  MPI_Allreduce(in, out, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out[1] > 0 ? out[0] / out[1] : 0.0;
}

// Whether every rank holds the same bits in `v` (FNV-1a of the bytes, min == max).
bool same_on_all_ranks(const std::vector<float>& v) {
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (std::size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  std::uint64_t lo = 0, hi = 0;
  MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

// The initial parameters of every row: integers in [-6, 6] (exact under integer updates).
std::vector<float> initial_params(std::size_t n) {
  std::vector<float> w(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<float>(static_cast<int>(i % 13) - 6);
  return w;
}

// ---- all-reduce -----------------------------------------------------------------------------

template <class C>
row run_allreduce(const world& wd, const options& o, std::string name, C codec) {
  row r{.name = std::move(name)};
  gc::mpi_transport transport(MPI_COMM_WORLD);
  gc::allreduce<C, gc::mpi_transport> ar(transport, std::move(codec), {}, gc::sgd{{.lr = 0.01f}});
  std::vector<float> params = initial_params(wd.n), grad(wd.n), work(wd.n);
  ps_gradient::fill(wd.rank, 0, grad);
  std::copy(grad.begin(), grad.end(), work.begin());
  ar.step(params, work);  // warm-up
  std::vector<double> t;
  std::uint64_t sent = 0;
  for (int i = 0; i < o.reps; ++i) {
    std::copy(grad.begin(), grad.end(), work.begin());
    const auto before = ar.counters().snapshot().bytes_sent;
    t.push_back(timed([&] { ar.step(params, work); }));
    sent += ar.counters().snapshot().bytes_sent - before;
  }
  r.step_s = median(t);
  r.grads_per_s = wd.size / r.step_s;
  r.sent_bytes = max_over_ranks(static_cast<double>(sent) / o.reps);
  r.check = same_on_all_ranks(params) ? "ranks agree" : "RANKS DIFFER";
  return r;
}

// ---- parameter server -----------------------------------------------------------------------

template <class C, class P>
row run_ps(const world& wd, const options& o, std::string name, C codec, P pull,
           gc::pull_encoding encoding) {
  row r{.name = std::move(name)};
  const std::size_t n = wd.n;
  const std::vector<float> w0 = initial_params(n);
  std::vector<float> w = w0;
  gc::mpi_transport transport(MPI_COMM_WORLD);
  // The server's figures, and this worker's: its step time and push bytes.
  std::array<double, 6> server{};  // updates, seconds, bytes, max stale, mean stale, lost
  double worker_step_s = 0, worker_sent = 0;
  std::vector<std::int64_t> acked(n, 0);
  {
    gc::parameter_server<C, gc::mpi_transport, gc::sgd, P> ps(
        transport, std::move(codec), std::move(pull),
        {.staleness = gc::unbounded_staleness, .pull = encoding}, gc::sgd{{.lr = 1.0f}});
    const auto workers = static_cast<std::uint64_t>(ps.workers());
    MPI_Barrier(MPI_COMM_WORLD);
    if (ps.is_server()) {
      // The rate counts from the moment the warm-up pushes are in (as many updates as
      // workers) to the last goodbye.
      bool warm = false;
      clock_type::time_point t_warm;
      std::uint64_t v_warm = 0;
      ps.serve(w, [&] {
        if (!warm && ps.version() >= workers) {
          warm = true;
          t_warm = clock_type::now();
          v_warm = ps.version();
        }
        return false;
      });
      const auto st = ps.server_stats();
      if (!warm) t_warm = clock_type::now(), v_warm = st.version;
      server = {static_cast<double>(st.version - v_warm),
                std::chrono::duration<double>(clock_type::now() - t_warm).count(),
                static_cast<double>(st.bytes_received + st.bytes_sent) /
                    static_cast<double>(std::max<std::uint64_t>(st.version, 1)),
                static_cast<double>(st.max_staleness),
                st.mean_staleness,
                static_cast<double>(st.lost)};
    } else {
      // Four integer gradients, made before the row: g0, g1, -g0, -g1, push c takes c % 4.
      std::array<std::vector<float>, 4> g;
      for (auto& v : g) v.resize(n);
      ps_gradient::fill(wd.rank, 0, g[0]);
      ps_gradient::fill(wd.rank, 1, g[1]);
      for (std::size_t i = 0; i < n; ++i) g[2][i] = -g[0][i], g[3][i] = -g[1][i];
      std::array<std::int64_t, 4> count{};
      auto step = [&] {
        const std::size_t k = ps.clock_count() % 4;
        ps.step(w, g[k]);
        ++count[k];
      };
      step();  // warm-up
      const auto sent0 = ps.counters().snapshot().bytes_sent;
      const auto t0 = clock_type::now();
      const auto stop_at = t0 + std::chrono::duration_cast<clock_type::duration>(
                                    std::chrono::duration<double>(o.seconds));
      std::uint64_t steps = 0;
      while (clock_type::now() < stop_at) {
        step();
        ++steps;
      }
      worker_step_s = std::chrono::duration<double>(clock_type::now() - t0).count() /
                      std::max<double>(steps, 1);
      worker_sent = static_cast<double>(ps.counters().snapshot().bytes_sent - sent0) /
                    std::max<double>(steps, 1);
      ps.finish();
      for (std::size_t i = 0; i < n; ++i) {
        acked[i] = (count[0] - count[2]) * static_cast<std::int64_t>(g[0][i]) +
                   (count[1] - count[3]) * static_cast<std::int64_t>(g[1][i]);
      }
    }
  }
  // The exact-sum check on the server (rank 0): w == w0 - every acknowledged push.
  MPI_Reduce(wd.rank == 0 ? MPI_IN_PLACE : acked.data(), acked.data(), static_cast<int>(n),
             MPI_INT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  int exact = 1;
  if (wd.rank == 0) {
    for (std::size_t i = 0; i < n && exact; ++i)
      exact = w[i] == w0[i] - static_cast<float>(acked[i]);
  }
  MPI_Bcast(&exact, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(server.data(), static_cast<int>(server.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  r.updates = server[0];
  r.seconds = server[1];
  r.grads_per_s = r.seconds > 0 ? r.updates / r.seconds : 0;
  r.update_bytes = server[2];
  r.has_staleness = true;
  r.max_staleness = server[3];
  r.mean_staleness = server[4];
  r.step_s = mean_over(worker_step_s, wd.rank != 0);
  r.sent_bytes = mean_over(worker_sent, wd.rank != 0);
  r.check = exact ? "exact" : "NOT EXACT";
  if (server[5] > 0) r.check += ", " + std::to_string(static_cast<int>(server[5])) + " lost";
  return r;
}

// ---- gossip ---------------------------------------------------------------------------------

template <class C, class G>
row run_gossip(const world& wd, const options& o, std::string name, C codec, G topology) {
  row r{.name = std::move(name)};
  gc::mpi_transport gossip_transport(MPI_COMM_WORLD), allreduce_transport(MPI_COMM_WORLD);
  gc::gossip<C, gc::mpi_transport, G> g(gossip_transport, std::move(topology), std::move(codec));
  gc::allreduce<gc::identity_codec, gc::mpi_transport> ar(allreduce_transport,
                                                          gc::identity_codec{});
  std::vector<float> x(wd.n), buf(wd.n);
  ps_gradient::fill(wd.rank, 7, x);  // the ranks' values differ: mixing has work to do
  std::copy(x.begin(), x.end(), buf.begin());
  ar.average(buf);  // warm-up of both
  g.mix(x);
  std::vector<double> t_ar, t_round;
  std::uint64_t sent = 0;
  for (int i = 0; i < o.reps; ++i) {
    t_ar.push_back(timed([&] { ar.average(buf); }));
    const auto before = g.counters().snapshot().bytes_sent;
    t_round.push_back(timed([&] { g.mix(x); }));
    sent += g.counters().snapshot().bytes_sent - before;
  }
  r.step_s = median(t_round);
  r.allreduce_s = median(t_ar);
  r.sent_bytes = max_over_ranks(static_cast<double>(sent) / o.reps);
  const double dropped = max_over_ranks(static_cast<double>(g.dropped().size()));
  if (dropped > 0) r.check = std::to_string(static_cast<int>(dropped)) + " peers dropped";
  return r;
}

// ---- the table ------------------------------------------------------------------------------

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

void report(const std::vector<row>& rows, const options& o, const world& wd,
            const std::string& hosts) {
  const double mib = 1 << 20, tensor = 4.0 * static_cast<double>(wd.n);
  std::printf("\n# bench_backends_mpi%s%s: %d ranks on %s\n", o.label.empty() ? "" : " — ",
              o.label.c_str(), wd.size, hosts.c_str());
  std::printf(
      "# %g MiB of f32 a rank (%zu values); all-reduce and gossip: median of %d timed calls "
      "after 1 warm-up; parameter server: 1 server, %d workers, %g s a row, asynchronous\n",
      o.mib, wd.n, o.reps, wd.size - 1, o.seconds);
  std::printf("# an identity ring all-reduce sends 2(N-1)/N x 4n = %.2f MiB a rank\n\n",
              2.0 * (wd.size - 1) / wd.size * tensor / mib);
  std::printf(
      "| row | ms / step | gradients / s | sent MiB / rank / step | MiB / update | all-reduce "
      "ms / round ms | staleness max / mean | check |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
  for (const row& r : rows) {
    const std::string ratio = r.allreduce_s > 0 ? fixed(r.allreduce_s * 1e3, 1) + " / " +
                                                      fixed(r.step_s * 1e3, 1) + " = " +
                                                      fixed(r.allreduce_s / r.step_s, 2)
                                                : "—";
    std::printf("| %s | %.1f | %s | %.2f | %s | %s | %s | %s |\n", r.name.c_str(), r.step_s * 1e3,
                r.grads_per_s > 0 ? fixed(r.grads_per_s, 1).c_str() : "—", r.sent_bytes / mib,
                r.update_bytes > 0 ? fixed(r.update_bytes / mib, 2).c_str() : "—", ratio.c_str(),
                r.has_staleness
                    ? (fixed(r.max_staleness, 0) + " / " + fixed(r.mean_staleness, 2)).c_str()
                    : "—",
                r.check.c_str());
  }
  std::fflush(stdout);
  if (o.csv.empty()) return;
  std::FILE* f = std::fopen(o.csv.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "bench_backends_mpi: cannot write %s\n", o.csv.c_str());
    return;
  }
  std::fprintf(f,
               "label,ranks,mib,row,ms_per_step,gradients_per_s,sent_mib_per_rank_per_step,"
               "mib_per_update,allreduce_ms,allreduce_over_round,max_staleness,mean_staleness,"
               "ps_updates,ps_seconds,check\n");
  for (const row& r : rows) {
    std::fprintf(f, "\"%s\",%d,%g,%s,%.3f,%.3f,%.4f,%.4f,%.3f,%.4f,%g,%.3f,%g,%.3f,\"%s\"\n",
                 o.label.c_str(), wd.size, o.mib, r.name.c_str(), r.step_s * 1e3, r.grads_per_s,
                 r.sent_bytes / mib, r.update_bytes / mib, r.allreduce_s * 1e3,
                 r.allreduce_s > 0 ? r.allreduce_s / r.step_s : 0.0, r.max_staleness,
                 r.mean_staleness, r.updates, r.seconds, r.check.c_str());
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  // The all-reduce's background thread calls MPI while this thread waits: the environment
  // asks for MPI_THREAD_MULTIPLE.
  gc::mpi_environment env(argc, argv);
  world wd;
  MPI_Comm_rank(MPI_COMM_WORLD, &wd.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &wd.size);
  try {
    options o;
    try {
      o = parse(argc, argv);
      if (wd.size < 2) throw usage_error{"run it on 2 ranks or more (mpirun -np N)"};
    } catch (const usage_error& e) {
      if (wd.rank == 0) print_usage(e.why.c_str());
      return 2;
    }
    wd.n = static_cast<std::size_t>(o.mib * (1 << 20) / sizeof(float));
    const std::string hosts = mpi_bench::host_list(wd.rank, wd.size);
    using ef8 = gc::error_feedback<gc::scalar_quant_codec>;
    const gc::scalar_quant_codec q8({.bits = 8, .block = 256});
    std::vector<row> rows;
    if (wanted(o, "allreduce_f32"))
      rows.push_back(run_allreduce(wd, o, "allreduce_f32", gc::identity_codec{}));
    if (wanted(o, "allreduce_8bit_ef"))
      rows.push_back(run_allreduce(wd, o, "allreduce_8bit_ef", ef8(q8)));
    if (wanted(o, "ps_f32"))
      rows.push_back(run_ps(wd, o, "ps_f32", gc::identity_codec{}, gc::identity_codec{},
                            gc::pull_encoding::f32));
    if (wanted(o, "ps_8bit_ef"))
      rows.push_back(run_ps(wd, o, "ps_8bit_ef", ef8(q8), q8, gc::pull_encoding::codec));
    if (wanted(o, "gossip_f32_ring"))
      rows.push_back(
          run_gossip(wd, o, "gossip_f32_ring", gc::identity_codec{}, gc::ring_topology{}));
    if (wanted(o, "gossip_f32_exponential"))
      rows.push_back(run_gossip(wd, o, "gossip_f32_exponential", gc::identity_codec{},
                                gc::exponential_topology{}));
    if (wanted(o, "gossip_8bit_ring"))
      rows.push_back(run_gossip(wd, o, "gossip_8bit_ring", q8, gc::ring_topology{}));
    if (wanted(o, "gossip_8bit_exponential"))
      rows.push_back(run_gossip(wd, o, "gossip_8bit_exponential", q8, gc::exponential_topology{}));
    if (rows.empty()) {
      if (wd.rank == 0) print_usage(("no row matches --only " + o.only).c_str());
      return 2;
    }
    if (wd.rank == 0) report(rows, o, wd, hosts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_backends_mpi: rank %d: %s\n", wd.rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 0;
}

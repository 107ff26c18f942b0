// Compressed all-reduce across MPI ranks, beside plain MPI_Allreduce of f32 in the same run.
//
//   mpirun -np 4 --mca btl tcp,self build/benchmarks/bench_allreduce_mpi --csv out.csv
//   sudo benchmarks/shaped_network.sh --hosts 4 --rate 1gbit   # the same on shaped links
//
// Every rank holds 64 MiB (--mib) of f32 gradients: a Gaussian vector shared by all ranks
// plus Gaussian noise of its own, half as large (the exact mean is computed once with
// MPI_Allreduce in double). Random data has no low-rank or sparse structure: the errors
// of top-k and PowerSGD here are their worst case, not what a model's gradients show.
//
// Each codec row builds a gradcomm::allreduce<Codec, mpi_transport> (default options,
// mean, buckets of --bucket-mib MiB: the library's default 4), makes one untimed call on fresh
// state (its error is the "first call" error), then times --reps calls of average(), each right
// after one call of each baseline — MPI_Allreduce of f32 over the whole buffer, then over pieces of
// the bucket size, each followed by the division by the world size — so that drift on a shared
// machine shows in all three alike. A call's time is the slowest rank's, from a barrier to its
// return. Rank 0 prints a Markdown table (and a CSV file with --csv): the median time, its ratio to
// the median of the baseline calls interleaved with it (the targets apply to the whole-buffer one),
// bytes sent per rank and call as the transport counts them, the codec's compression ratio and the
// relative L2 error ‖x − mean‖ / ‖mean‖ after the first and the last call (error feedback carries
// state from call to call; the input is the same every call). --no-targets prints the targets
// without judging them (unshaped runs).
//
// Under SimGrid's SMPI (built by benchmarks/smpi.sh: smpicxx defines SMPI_SHARED_MALLOC) the
// times are simulated (MPI_Wtime), MPI provides MPI_THREAD_FUNNELED at most, so the transport
// is made with mpi_threads::caller and the communicator runs without overlap (a rank's own
// thread cannot call SMPI); --shared puts the gradient in SMPI's shared memory (one copy,
// read by all ranks: they then hold the same gradient) and skips the exact mean and the
// errors, for rank counts whose private buffers would not fit. The work buffer stays
// private: shared, the ranks' in-place reductions would pile onto one another (the sums
// overflow, and sign_ef refuses the infinities).
//
// The link is measured first — rank 0 → 1 alone, then every rank → its successor at once
// (what a ring all-reduce needs of each host's link), in Gbit/s — and with it the time a
// ring all-reduce of f32 would take at that rate. --link measures it and stops.
//
// --advise checks gradcomm::advise (comm/advise.hpp) against measurement: it runs the advisor
// on the MPI transport with this run's buckets (--mib cut into --bucket-mib buckets) for every
// accuracy class, then measures every candidate codec as a row (as above) and prints, per
// candidate, the model's prediction and the advisor's trial time (its largest bucket alone, scaled
// to the call) beside the measured median, and per class the pick (the
// largest bucket's) beside the measured fastest codec of the class and uncompressed (none:
// gradcomm's own f32 ring). Targets: the pick within 10 % of the fastest of its class, and
// never slower than none.
//
//   mpirun -np 2 build/benchmarks/bench_allreduce_mpi --advise --mib 16 --reps 3 --no-targets
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/advise.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/transport/mpi.hpp>

#include "mpi_bench.hpp"

#include <mpi.h>

#if defined(SMPI_SHARED_MALLOC)
#define GRADCOMM_BENCH_SMPI 1
#else
#define GRADCOMM_BENCH_SMPI 0
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gc = gradcomm;

namespace {

using mpi_bench::host_list;
using mpi_bench::median;
using mpi_bench::timed;
using mpi_bench::usage_error;

struct options {
  double mib = 64;       // f32 gradient bytes per rank, in MiB
  int reps = 5;          // timed calls per row
  int warmup = 1;        // untimed calls per row; the first one's error is reported
  std::string csv;       // rank 0 writes the rows here as CSV
  std::string only;      // comma-separated row names; empty: all
  std::string label;     // printed in the header (e.g. "2 hosts at 1gbit")
  bool targets = true;   // judge the ratios against the targets (shaped links only)
  bool link = false;     // measure the link instead
  bool advise = false;   // check the advisor against measured rows
  double link_mib = 16;  // bytes per link measurement, in MiB
  double bucket_mib = static_cast<double>(gc::allreduce_options{}.bucket_bytes) / (1 << 20);
  bool overlap = true;    // allreduce_options::overlap (off where the transport refuses it)
  double timeout_s = 60;  // the transport's deadline for every wait (wall-clock seconds)
  gc::sparse_allreduce sparse = gc::sparse_allreduce::automatic;  // top-k's algorithm
  bool shared = false;  // SMPI: gradient and work buffer in shared memory, no errors
};

// The MPI thread use of this build: SMPI's ranks cannot call MPI from a thread of theirs.
constexpr gc::mpi_threads bench_threads =
    GRADCOMM_BENCH_SMPI ? gc::mpi_threads::caller : gc::mpi_threads::any;

gc::sparse_allreduce parse_sparse(std::string_view v) {
  if (v == "auto") return gc::sparse_allreduce::automatic;
  if (v == "allgather") return gc::sparse_allreduce::allgather;
  if (v == "reduce_scatter") return gc::sparse_allreduce::reduce_scatter;
  if (v == "dense") return gc::sparse_allreduce::dense;
  throw usage_error{"--sparse takes auto, allgather, reduce_scatter or dense"};
}

// Gbit/s of rank 0 → 1 alone and of every rank → its successor at once (per rank).
struct link_rates {
  double one_way_gbps = 0;
  double ring_gbps = 0;
};

void print_usage(const char* why) {
  std::fprintf(
      stderr,
      "bench_allreduce_mpi: %s\n"
      "usage: bench_allreduce_mpi [--mib M] [--bucket-mib B] [--reps K] [--warmup W] [--csv FILE]\n"
      "                           [--only row,row,...] [--label TEXT] [--no-targets]\n"
      "                           [--no-overlap] [--timeout-s S] [--sparse MODE] [--shared]\n"
      "       bench_allreduce_mpi --link [--link-mib M]\n"
      "       bench_allreduce_mpi --advise [--mib M] [--bucket-mib B] [--reps K] [--label TEXT]\n"
      "rows: mpi_allreduce_f32 (both baselines) identity_f32 bf16 scalar_8bit_ef "
      "sign_ef topk_1pct_ef powersgd_r4 (and fp16, only when named in --only)\n"
      "--sparse: top-k's algorithm, auto (the cost rule), allgather, reduce_scatter or dense\n"
      "--shared: SMPI builds only (benchmarks/smpi.sh), one gradient for all ranks, no errors\n",
      why);
}

options parse(int argc, char** argv) {
  options o;
  mpi_bench::parse_options(argc, argv,
                           {{"--mib", [&](const char* v) { o.mib = std::atof(v); }},
                            {"--reps", [&](const char* v) { o.reps = std::atoi(v); }},
                            {"--warmup", [&](const char* v) { o.warmup = std::atoi(v); }},
                            {"--csv", [&](const char* v) { o.csv = v; }},
                            {"--only", [&](const char* v) { o.only = v; }},
                            {"--label", [&](const char* v) { o.label = v; }},
                            {"--no-targets", [&](const char*) { o.targets = false; }, true},
                            {"--link", [&](const char*) { o.link = true; }, true},
                            {"--advise", [&](const char*) { o.advise = true; }, true},
                            {"--bucket-mib", [&](const char* v) { o.bucket_mib = std::atof(v); }},
                            {"--link-mib", [&](const char* v) { o.link_mib = std::atof(v); }},
                            {"--no-overlap", [&](const char*) { o.overlap = false; }, true},
                            {"--timeout-s", [&](const char* v) { o.timeout_s = std::atof(v); }},
                            {"--sparse", [&](const char* v) { o.sparse = parse_sparse(v); }},
                            {"--shared", [&](const char*) { o.shared = true; }, true}});
  if (o.shared && !GRADCOMM_BENCH_SMPI) throw usage_error{"--shared needs an SMPI build"};
  if (!(o.timeout_s >= 1 && o.timeout_s <= 86400)) throw usage_error{"--timeout-s in [1, 86400]"};
  // MPI counts are ints: keep the element count below 2^31.
  if (!(o.bucket_mib >= 1 && o.bucket_mib <= 1024)) throw usage_error{"--bucket-mib in [1, 1024]"};
  if (!(o.mib > 0 && o.mib <= 8000) || o.reps < 1 || o.warmup < 1 ||
      !(o.link_mib > 0 && o.link_mib <= 8000)) {
    throw usage_error{"--mib and --link-mib in (0, 8000], --reps and --warmup >= 1"};
  }
  return o;
}

// What every row needs: the input, a buffer for the result, the exact mean.
struct workload {
  workload() = default;
  workload(const workload&) = delete;
  workload& operator=(const workload&) = delete;
  workload(workload&&) = default;
  ~workload() {
#if GRADCOMM_BENCH_SMPI
    if (shared) SMPI_SHARED_FREE(grad.data());
#endif
  }
  int rank = 0;
  int size = 1;
  bool shared = false;        // grad in SMPI's shared memory: no exact mean, no errors
  std::span<float> grad;      // this rank's gradient, never changed
  std::span<float> work;      // the buffer each call averages in place
  std::vector<float> own;     // their storage when not shared
  std::vector<double> exact;  // the mean over ranks, in double
  double exact_norm = 0;
  std::size_t bucket_bytes = gc::allreduce_options{}.bucket_bytes;  // --bucket-mib
};

workload make_workload(const options& o, int rank, int size) {
  workload w;
  w.rank = rank;
  w.size = size;
  w.bucket_bytes = static_cast<std::size_t>(o.bucket_mib * (1 << 20));
  const auto n = static_cast<std::size_t>(o.mib * (1 << 20) / sizeof(float));
#if GRADCOMM_BENCH_SMPI
  if (o.shared) {
    // One allocation site: every rank gets the same memory, filled once by rank 0.
    w.shared = true;
    w.grad = {static_cast<float*>(SMPI_SHARED_MALLOC(n * sizeof(float))), n};
    w.own.resize(n);
    w.work = {w.own.data(), n};
    if (rank == 0) {
      std::mt19937_64 gen(12345);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (auto& x : w.grad) x = normal(gen);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return w;
  }
#endif
  w.own.resize(2 * n);
  w.grad = {w.own.data(), n};
  w.work = {w.own.data() + n, n};
  // Gradients of workers agree in part: a shared vector (one seed on every rank) plus
  // this rank's own noise, half as large.
  std::mt19937_64 shared(12345), own(1000 + static_cast<std::uint64_t>(rank));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : w.grad) x = normal(shared);
  for (auto& x : w.grad) x += 0.5f * normal(own);

  // The exact mean, in double, by pieces so that no rank holds a second double copy.
  w.exact.resize(n);
  constexpr std::size_t piece = std::size_t{1} << 20;
  std::vector<double> sum(piece);
  for (std::size_t off = 0; off < n; off += piece) {
    const std::size_t len = std::min(piece, n - off);
    for (std::size_t i = 0; i < len; ++i) sum[i] = w.grad[off + i];
    MPI_Allreduce(MPI_IN_PLACE, sum.data(), static_cast<int>(len), MPI_DOUBLE, MPI_SUM,
                  MPI_COMM_WORLD);
    for (std::size_t i = 0; i < len; ++i) w.exact[off + i] = sum[i] / size;
  }
  double s = 0;
  for (const double x : w.exact) s += x * x;
  w.exact_norm = std::sqrt(s);
  return w;
}

// ‖work − exact‖ / ‖exact‖, the largest over ranks (every rank should hold the same).
double relative_error(const workload& w) {
  if (w.shared) return std::nan("");
  double s = 0;
  for (std::size_t i = 0; i < w.work.size(); ++i) {
    const double d = static_cast<double>(w.work[i]) - w.exact[i];
    s += d * d;
  }
  double local = std::sqrt(s) / w.exact_norm, worst = 0;
  MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

// Whether every rank holds the same bits in `work` (FNV-1a of the bytes, min == max).
bool same_on_all_ranks(const workload& w) {
  if (w.shared) return true;  // one buffer for all: nothing to compare
  std::uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const unsigned char*>(w.work.data());
  for (std::size_t i = 0; i < w.work.size() * sizeof(float); ++i) {
    h = (h ^ p[i]) * 1099511628211ull;
  }
  std::uint64_t lo = 0, hi = 0;
  MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

// The baseline: MPI's own all-reduce of f32 over the whole buffer, then the mean.
void mpi_average(workload& w) {
  MPI_Allreduce(MPI_IN_PLACE, w.work.data(), static_cast<int>(w.work.size()), MPI_FLOAT, MPI_SUM,
                MPI_COMM_WORLD);
  const float inv = 1.0f / static_cast<float>(w.size);
  for (auto& x : w.work) x *= inv;
}

// The second baseline: the same in pieces of the communicator's bucket size, one after
// another, as a trainer that buckets without compressing would. On this machine Open MPI
// runs one 64 MiB MPI_Allreduce several times slower than sixteen of 4 MiB (its
// temporary buffers leave the cache and are faulted in afresh), so part of what the
// communicator gains over the first baseline is bucketing, not compression; the ratio
// to this one separates the two.
void mpi_average_bucketed(workload& w) {
  const std::size_t piece = w.bucket_bytes / sizeof(float);
  const float inv = 1.0f / static_cast<float>(w.size);
  for (std::size_t off = 0; off < w.work.size(); off += piece) {
    const std::size_t len = std::min(piece, w.work.size() - off);
    MPI_Allreduce(MPI_IN_PLACE, w.work.data() + off, static_cast<int>(len), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    for (std::size_t i = off; i < off + len; ++i) w.work[i] *= inv;
  }
}

void reload(workload& w) { std::copy(w.grad.begin(), w.grad.end(), w.work.begin()); }

struct row {
  std::string name;
  double target = 0;  // the ratio to meet on shaped links; 0: none
  double median_s = 0;
  double baseline_s = 0;  // median of the plain MPI_Allreduce calls interleaved with this row
  double bucketed_s = 0;  // the same for the bucketed MPI_Allreduce
  double sent_bytes = 0;  // per rank and call
  double compression = 0;
  double error_first = 0;
  double error_last = 0;
  bool identical = true;
  double encode_s = 0, decode_s = 0, wait_s = 0;  // per rank and call (rank 0's)
  bool model_bytes = false;                       // sent_bytes is the ring model, not a count
  std::string algorithm = "mpi";                  // stats(0).algorithm of the last call
};

// Every baseline call of the run, for the header's drift line.
struct baseline_log {
  std::vector<double> plain, bucketed;
};

// One rep of both baselines, then `op` (timed likewise when given).
template <class Op>
double interleaved_rep(workload& w, baseline_log& log, std::vector<double>& plain,
                       std::vector<double>& bucketed, Op&& op) {
  reload(w);
  plain.push_back(timed([&] { mpi_average(w); }));
  reload(w);
  bucketed.push_back(timed([&] { mpi_average_bucketed(w); }));
  log.plain.push_back(plain.back());
  log.bucketed.push_back(bucketed.back());
  reload(w);
  return timed(op);
}

// The two baseline rows: warm-up, then --reps calls of each, interleaved.
std::vector<row> run_baselines(workload& w, const options& o, baseline_log& log) {
  row plain{.name = "mpi_allreduce_f32"}, bucketed{.name = "mpi_allreduce_f32_bucketed"};
  for (int i = 0; i < o.warmup; ++i) {
    reload(w);
    mpi_average(w);
    if (i == 0) plain.error_first = relative_error(w);
    reload(w);
    mpi_average_bucketed(w);
    if (i == 0) bucketed.error_first = relative_error(w);
  }
  std::vector<double> tp, tb;
  for (int i = 0; i < o.reps; ++i) interleaved_rep(w, log, tp, tb, [] {});
  for (row* r : {&plain, &bucketed}) {
    r->baseline_s = median(tp);
    r->bucketed_s = median(tb);
    // A ring all-reduce sends 2(N − 1)/N of the buffer from every rank.
    r->sent_bytes =
        2.0 * (w.size - 1) / w.size * static_cast<double>(w.work.size() * sizeof(float));
    r->compression = 1;
    r->model_bytes = true;
  }
  plain.median_s = plain.baseline_s;
  bucketed.median_s = bucketed.bucketed_s;
  // One more untimed call of each for the last error and the check that ranks agree.
  reload(w);
  mpi_average(w);
  plain.error_last = relative_error(w);
  plain.identical = same_on_all_ranks(w);
  reload(w);
  mpi_average_bucketed(w);
  bucketed.error_last = relative_error(w);
  bucketed.identical = same_on_all_ranks(w);
  return {plain, bucketed};
}

template <class C>
row run_codec(workload& w, const options& o, baseline_log& log, std::string name, double target,
              C prototype) {
  row r{.name = std::move(name), .target = target};
  gc::mpi_transport transport(
      MPI_COMM_WORLD, std::chrono::milliseconds(static_cast<std::int64_t>(o.timeout_s * 1e3)),
      bench_threads);
  gc::allreduce<C, gc::mpi_transport> ar(transport, std::move(prototype),
                                         {.bucket_bytes = w.bucket_bytes,
                                          .overlap = o.overlap && transport.any_thread(),
                                          .sparse = o.sparse});
  for (int i = 0; i < o.warmup; ++i) {
    reload(w);
    ar.average(w.work);
    if (i == 0) r.error_first = relative_error(w);
  }
  gc::traffic_snapshot moved;  // the communicator's counters over the timed calls only
  std::vector<double> t, plain, bucketed;
  for (int i = 0; i < o.reps; ++i) {
    gc::traffic_snapshot before;
    t.push_back(interleaved_rep(w, log, plain, bucketed, [&] {
      before = ar.counters().snapshot();
      ar.average(w.work);
    }));
    const gc::traffic_snapshot d = ar.counters().snapshot() - before;
    moved.bytes_sent += d.bytes_sent;
    moved.encode_ns += d.encode_ns;
    moved.decode_ns += d.decode_ns;
    moved.wait_ns += d.wait_ns;
  }
  r.median_s = median(t);
  r.baseline_s = median(plain);
  r.bucketed_s = median(bucketed);
  r.error_last = relative_error(w);
  r.identical = same_on_all_ranks(w);
  // Bytes sent per call: the largest over ranks (a root or an uneven split may differ).
  double sent = static_cast<double>(moved.bytes_sent) / o.reps, most = 0;
  MPI_Allreduce(&sent, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  r.sent_bytes = most;
  r.encode_s = moved.encode_seconds() / o.reps;
  r.decode_s = moved.decode_seconds() / o.reps;
  r.wait_s = moved.wait_seconds() / o.reps;
  // The codec's own ratio: f32 bytes over the bytes of this rank's encodings, all buckets
  // and rounds together.
  double f32_bytes = 0, payload = 0;
  for (std::size_t b = 0; b < ar.bucket_count(); ++b) {
    const gc::bucket_stats s = ar.stats(b);
    f32_bytes += 4.0 * static_cast<double>(s.elements) * static_cast<double>(s.rounds);
    payload += static_cast<double>(s.payload_bytes);
  }
  r.compression = payload > 0 ? f32_bytes / payload : 0;
  r.algorithm = gc::detail::ar_algorithm_name(ar.stats(0).algorithm);
  return r;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

// "median ms (min–max)" of one baseline's calls over the whole run.
std::string spread(const std::vector<double>& v) {
  if (v.empty()) return "—";
  return fixed(median(v) * 1e3, 1) + " ms (" +
         fixed(*std::min_element(v.begin(), v.end()) * 1e3, 1) + "–" +
         fixed(*std::max_element(v.begin(), v.end()) * 1e3, 1) + ")";
}

void report(const std::vector<row>& rows, const baseline_log& log, const options& o,
            const workload& w, const std::string& hosts, link_rates link) {
  std::printf("\n# bench_allreduce_mpi%s%s: %d ranks on %s\n", o.label.empty() ? "" : " — ",
              o.label.c_str(), w.size, hosts.c_str());
  std::printf("# %.0f MiB of f32 a rank (%zu values), %d timed calls a row after %d warm-up\n",
              o.mib, w.work.size(), o.reps, o.warmup);
  std::printf("# %s; overlap %s%s\n",
              GRADCOMM_BENCH_SMPI ? "SimGrid SMPI: simulated time (MPI_Wtime)" : "wall-clock time",
              o.overlap && !GRADCOMM_BENCH_SMPI ? "on" : "off",
              w.shared ? "; shared buffers (errors not computed)" : "");
  if (link.ring_gbps > 0) {
    // What a ring all-reduce of f32 would take if it ran at the measured link rate.
    const double ring_bits = 2.0 * (w.size - 1) / w.size * 8.0 * w.work.size() * sizeof(float);
    std::printf(
        "# link (every rank -> the next at once, %.0f MiB): %.3f Gbit/s a rank; "
        "a ring all-reduce of f32 at that rate: %.1f ms\n",
        o.link_mib, link.ring_gbps, ring_bits / (link.ring_gbps * 1e9) * 1e3);
  }
  std::printf(
      "# all %zu calls of each baseline, median (min–max): MPI_Allreduce %s; "
      "bucketed (%zu MiB pieces) %s\n\n",
      log.plain.size(), spread(log.plain).c_str(), w.bucket_bytes >> 20,
      spread(log.bucketed).c_str());
  std::printf(
      "| codec | algorithm | median ms | MPI_Allreduce ms | ratio | target | bucketed MPI ms | "
      "ratio "
      "to bucketed | sent / rank MiB | compression | rel. L2 error (first / last "
      "call) |\n");
  std::printf("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n");
  for (const row& r : rows) {
    const double ratio = r.median_s / r.baseline_s;
    std::string target = "—";
    if (r.target > 0 && !o.targets) {
      target = "(≤ " + fixed(r.target, 2) + " shaped)";
    } else if (r.target > 0) {
      target = "≤ " + fixed(r.target, 2) + (ratio <= r.target ? " met" : " MISSED");
    }
    std::printf("| %s%s | %s | %.1f | %.1f | %.3f | %s | %.1f | %.3f | %s%s | %s | %s / %s |\n",
                r.name.c_str(), r.identical ? "" : " (ranks differ!)", r.algorithm.c_str(),
                r.median_s * 1e3, r.baseline_s * 1e3, ratio, target.c_str(), r.bucketed_s * 1e3,
                r.median_s / r.bucketed_s, fixed(r.sent_bytes / (1 << 20), 2).c_str(),
                r.model_bytes ? " (ring model)" : "",
                r.compression > 0 ? fixed(r.compression, 2).c_str() : "—",
                sci(r.error_first).c_str(), sci(r.error_last).c_str());
  }
  std::fflush(stdout);
  if (o.csv.empty()) return;
  std::FILE* f = std::fopen(o.csv.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "bench_allreduce_mpi: cannot write %s\n", o.csv.c_str());
    return;
  }
  std::fprintf(
      f,
      "label,ranks,mib,link_gbps,codec,median_ms,baseline_ms,ratio,target,bucketed_ms,"
      "ratio_to_bucketed,sent_mib_per_rank,sent_is_model,compression,"
      "rel_l2_error_first,rel_l2_error_last,identical,encode_ms,decode_ms,wait_ms,algorithm,"
      "overlap,simulated\n");
  for (const row& r : rows) {
    std::fprintf(f,
                 "\"%s\",%d,%g,%.3f,%s,%.3f,%.3f,%.4f,%g,%.3f,%.4f,%.4f,%d,%.3f,%.3e,%.3e,%d,%.3f,"
                 "%.3f,%.3f,%s,%d,%d\n",
                 o.label.c_str(), w.size, o.mib, link.ring_gbps, r.name.c_str(), r.median_s * 1e3,
                 r.baseline_s * 1e3, r.median_s / r.baseline_s, r.target, r.bucketed_s * 1e3,
                 r.median_s / r.bucketed_s, r.sent_bytes / (1 << 20), r.model_bytes ? 1 : 0,
                 r.compression, r.error_first, r.error_last, r.identical ? 1 : 0, r.encode_s * 1e3,
                 r.decode_s * 1e3, r.wait_s * 1e3, r.algorithm.c_str(),
                 o.overlap && !GRADCOMM_BENCH_SMPI ? 1 : 0, GRADCOMM_BENCH_SMPI);
  }
  std::fclose(f);
}

// Link rates in Gbit/s: rank 0 → 1 alone, then every rank → (rank + 1) mod N at once.
// Every chunk is posted at once (nonblocking), as a pipelined collective would: a loop
// of blocking 1 MiB exchanges measures the handshakes of MPI's rendezvous protocol
// (about half the rate on a shaped link) rather than the link.
link_rates measure_link(const options& o, int rank, int size) {
  if (size < 2) return {};
  constexpr int chunk = 1 << 20;
  const int chunks = std::max(1, static_cast<int>(o.link_mib * (1 << 20) / chunk));
  const double bits = 8.0 * chunk * chunks;
  std::vector<char> out(static_cast<std::size_t>(chunk) * chunks, 1),
      in(static_cast<std::size_t>(chunk) * chunks);
  std::vector<MPI_Request> reqs;
  auto post_recvs = [&](int from, int tag) {
    for (int i = 0; i < chunks; ++i) {
      reqs.emplace_back();
      MPI_Irecv(in.data() + static_cast<std::size_t>(i) * chunk, chunk, MPI_CHAR, from, tag,
                MPI_COMM_WORLD, &reqs.back());
    }
  };
  auto post_sends = [&](int to, int tag) {
    for (int i = 0; i < chunks; ++i) {
      reqs.emplace_back();
      MPI_Isend(out.data() + static_cast<std::size_t>(i) * chunk, chunk, MPI_CHAR, to, tag,
                MPI_COMM_WORLD, &reqs.back());
    }
  };
  auto wait_all = [&] {
    MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    reqs.clear();
  };
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  // Open the connections first (OpenMPI's TCP transport connects on first use).
  MPI_Sendrecv(out.data(), 1, MPI_CHAR, next, 0, in.data(), 1, MPI_CHAR, prev, 0, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
  MPI_Sendrecv(out.data(), 1, MPI_CHAR, prev, 0, in.data(), 1, MPI_CHAR, next, 0, MPI_COMM_WORLD,
               MPI_STATUS_IGNORE);
  const double one_way = timed([&] {
    if (rank == 0) {
      post_sends(1, 1);
      wait_all();
      MPI_Recv(in.data(), 1, MPI_CHAR, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      post_recvs(0, 1);
      wait_all();
      MPI_Send(out.data(), 1, MPI_CHAR, 0, 2, MPI_COMM_WORLD);
    }
  });
  const double ring = timed([&] {
    post_recvs(prev, 3);
    post_sends(next, 3);
    wait_all();
  });
  return {bits / one_way * 1e-9, bits / ring * 1e-9};
}

// The bucket sizes the all-reduce makes of w.work (one tensor): full buckets of
// bucket_bytes (rounded down to 256 values), then the rest.
std::vector<std::size_t> bucket_sizes(const workload& w) {
  const std::size_t cap = w.bucket_bytes / sizeof(float) / 256 * 256;
  std::vector<std::size_t> sizes;
  for (std::size_t off = 0; off < w.work.size(); off += cap)
    sizes.push_back(std::min(cap, w.work.size() - off));
  return sizes;
}

// --advise: the advisor's picks for every class beside every candidate measured.
void run_advise(workload& w, const options& o, const std::string& hosts) {
  const std::vector<std::size_t> sizes = bucket_sizes(w);
  gc::mpi_transport transport(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  const gc::advice any = gc::advise(transport, sizes, gc::accuracy_class::any);
  const double advise_s = MPI_Wtime() - t0;
  // Each class advised as a user would ask for it: its own probe, codec timing and trial
  // (the trial's candidates depend on the class).
  std::vector<gc::advice> by_class;
  for (auto c : {gc::accuracy_class::lossless, gc::accuracy_class::sixteen_bit,
                 gc::accuracy_class::eight_bit})
    by_class.push_back(gc::advise(transport, sizes, c));
  by_class.push_back(any);
  baseline_log log;
  std::vector<row> rows;
  for (gc::advised_codec c : gc::advised_codecs())
    gc::with_advised_codec(c, [&](auto codec) {
      rows.push_back(
          run_codec(w, o, log, std::string(gc::advised_codec_name(c)), 0, std::move(codec)));
    });
  if (w.rank != 0) return;
  auto measured = [&](gc::advised_codec c) {
    for (const row& r : rows)
      if (r.name == gc::advised_codec_name(c)) return r.median_s;
    return 0.0;
  };
  auto predicted = [&](gc::advised_codec c) {
    double s = 0;
    for (const auto& b : any.buckets)
      for (const auto& p : b.candidates)
        if (p.codec == c) s += p.predicted_s;
    return s;
  };
  auto algorithm = [&](gc::advised_codec c) {
    for (const auto& p : any.largest().candidates)
      if (p.codec == c) return gc::detail::ar_algorithm_name(p.algorithm);
    return "?";
  };
  std::printf("\n# bench_allreduce_mpi --advise%s%s: %d ranks on %s\n",
              o.label.empty() ? "" : " — ", o.label.c_str(), w.size, hosts.c_str());
  std::printf(
      "# %.0f MiB of f32 a rank in %zu buckets of up to %zu MiB; %d timed calls a row after %d "
      "warm-up; the advisor took %.2f s (probe, codec timing and trial; class any)\n",
      o.mib, sizes.size(), w.bucket_bytes >> 20, o.reps, o.warmup, advise_s);
  std::printf("# probed link: α %.1f µs, β %.3f Gbit/s; MPI_Allreduce of f32 (all calls): %s\n\n",
              any.link.latency_s * 1e6, any.link.gbit_per_s(), spread(log.plain).c_str());
  for (const auto& b : by_class.back().buckets)
    if (&b == &by_class.back().buckets.front() || b.values != by_class.back().buckets[0].values)
      std::printf("# any: %s\n", b.why.c_str());
  auto part = [&](gc::advised_codec c, bool wire) {
    double s = 0;
    for (const auto& b : any.buckets)
      for (const auto& p : b.candidates)
        if (p.codec == c) s += wire ? p.wire_s : p.compute_s;
    return s;
  };
  // The trial's time (class any) of the largest bucket alone, scaled to the call's buckets.
  auto trial = [&](gc::advised_codec c) {
    for (const auto& p : any.largest().candidates)
      if (p.codec == c && p.measured_s > 0) {
        char b[32];
        std::snprintf(b, sizeof b, "%.1f",
                      p.measured_s * 1e3 * static_cast<double>(w.work.size()) /
                          static_cast<double>(any.largest().values));
        return std::string(b);
      }
    return std::string("—");
  };
  std::printf(
      "\n| codec | algorithm (largest bucket) | predicted ms (compute + wire) | trial ms | "
      "measured ms | measured / predicted | measured encode + decode ms, in transport ms (rank "
      "0) |\n|---|---|---:|---:|---:|---:|---:|\n");
  for (gc::advised_codec c : gc::advised_codecs()) {
    const row* r = nullptr;
    for (const row& x : rows)
      if (x.name == gc::advised_codec_name(c)) r = &x;
    std::printf("| %s | %s | %.1f (%.1f + %.1f) | %s | %.1f | %.2f | %.1f + %.1f, %.1f |\n",
                gc::advised_codec_name(c).data(), algorithm(c), predicted(c) * 1e3,
                part(c, false) * 1e3, part(c, true) * 1e3, trial(c).c_str(), measured(c) * 1e3,
                measured(c) / std::max(predicted(c), 1e-12), r ? r->encode_s * 1e3 : 0.0,
                r ? r->decode_s * 1e3 : 0.0, r ? r->wait_s * 1e3 : 0.0);
  }
  std::printf(
      "\n| class | pick | pick ms | fastest of class | its ms | pick / fastest | none ms "
      "| pick ≤ 1.10 × fastest | pick ≤ none |\n|---|---|---:|---|---:|---:|---:|---|---|\n");
  const double none_ms = measured(gc::advised_codec::none) * 1e3;
  for (const gc::advice& a : by_class) {
    const gc::advised_codec pick = a.largest().codec;
    gc::advised_codec fastest = gc::advised_codec::none;
    for (gc::advised_codec c : gc::advised_codecs())
      if (gc::advised_codec_class(c) <= a.accuracy && measured(c) < measured(fastest)) fastest = c;
    const double pick_ms = measured(pick) * 1e3, fast_ms = measured(fastest) * 1e3;
    std::printf("| %s | %s | %.1f | %s | %.1f | %.3f | %.1f | %s | %s |\n",
                gc::accuracy_class_name(a.accuracy).data(), gc::advised_codec_name(pick).data(),
                pick_ms, gc::advised_codec_name(fastest).data(), fast_ms, pick_ms / fast_ms,
                none_ms, pick_ms <= 1.10 * fast_ms ? "met" : "MISSED",
                pick_ms <= none_ms ? "met" : "MISSED");
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  // The communicator's background thread calls MPI while this thread waits: the
  // environment asks for MPI_THREAD_MULTIPLE.
  gc::mpi_environment env(argc, argv, bench_threads);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  try {
    options o;
    try {
      o = parse(argc, argv);
    } catch (const usage_error& e) {
      if (rank == 0) print_usage(e.why.c_str());
      return 2;
    }
    const std::string hosts = host_list(rank, size);
    const link_rates link = measure_link(o, rank, size);
    if (o.link) {
      if (rank == 0) {
        std::printf(
            "link: %.0f MiB rank 0 -> 1 alone: %.3f Gbit/s; every rank -> the next at "
            "once: %.3f Gbit/s a rank (%d ranks)\n",
            o.link_mib, link.one_way_gbps, link.ring_gbps, size);
      }
      return 0;
    }
    workload w = make_workload(o, rank, size);
    if (o.advise) {
      run_advise(w, o, hosts);
      return 0;
    }
    std::vector<row> rows;
    baseline_log log;
    if (mpi_bench::wanted(o.only, "mpi_allreduce_f32")) {
      for (row& r : run_baselines(w, o, log)) rows.push_back(std::move(r));
    }
    if (mpi_bench::wanted(o.only, "identity_f32")) {
      rows.push_back(run_codec(w, o, log, "identity_f32", 0, gc::identity_codec{}));
    }
    if (mpi_bench::wanted(o.only, "bf16")) {
      rows.push_back(run_codec(w, o, log, "bf16", 0.60, gc::bf16_codec{}));
    }
    // f16 sums (native, the transport's f16 MPI_Op): only when named in --only, so that the
    // default table stays the one the scripts and results quote.
    if (!o.only.empty() && mpi_bench::wanted(o.only, "fp16")) {
      rows.push_back(run_codec(w, o, log, "fp16", 0.60, gc::f16_codec{}));
    }
    if (mpi_bench::wanted(o.only, "scalar_8bit_ef")) {
      rows.push_back(run_codec(
          w, o, log, "scalar_8bit_ef", 0.36,
          gc::error_feedback<gc::scalar_quant_codec>(gc::scalar_quant_codec({.bits = 8}))));
    }
    if (mpi_bench::wanted(o.only, "sign_ef")) {
      rows.push_back(run_codec(w, o, log, "sign_ef", 0.15,
                               gc::error_feedback<gc::sign_codec>(gc::sign_codec{})));
    }
    if (mpi_bench::wanted(o.only, "topk_1pct_ef")) {
      rows.push_back(
          run_codec(w, o, log, "topk_1pct_ef", 0.15,
                    gc::error_feedback<gc::topk_codec>(gc::topk_codec({.ratio = 0.01}))));
    }
#if defined(GRADCOMM_HAS_EIGEN)
    if (mpi_bench::wanted(o.only, "powersgd_r4")) {
      rows.push_back(run_codec(w, o, log, "powersgd_r4", 0.15, gc::powersgd_codec({.rank = 4})));
    }
#endif
    if (rank == 0 && !rows.empty() && !log.plain.empty()) {
      report(rows, log, o, w, hosts, link);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce_mpi: rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 0;
}

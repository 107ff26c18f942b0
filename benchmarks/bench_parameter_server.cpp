// Load on the parameter server over the local transport (ranks as threads): 1 server and
// W workers (8 by default) pushing for a fixed time, once with f32 pushes and pulls (the
// baseline) and once with 8-bit pushes (error feedback) and 8-bit delta pulls, in the
// same run. A plain program with its own table, not Google Benchmark: one long run per
// row, whose figures are totals, not per-iteration times.
//
//   ./bench_parameter_server                  # 60 s a row: the published figures
//   ./bench_parameter_server --seconds=5 --workers=8 --n=65536 --staleness=3
//
// Columns, per row:
//   updates/s     updates applied by the server per second of the run;
//   grad GB/s     f32 gradient bytes applied per second (updates/s × 4n), and its ratio to
//                 the f32 row;
//   B/update      message bytes per update, pushes and replies (headers included);
//   stale max/mean  staleness in versions (updates applied between the read and the apply);
//   RSS MiB       resident memory of the process 1 s into the row and at its end (from
//                 /proc/self/statm): flat when nothing grows with the number of updates;
//   exact         the server's final parameters equal the initial ones minus the sum of
//                 every acknowledged push, element by element (integer gradients, plain SGD
//                 with lr = 1; the 8-bit pushes are exact too: each block of 256 holds a
//                 ±127, so the level spacing is 1).
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/transport/local.hpp>

#include "ps_gradient.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

namespace gc = gradcomm;
using clock_type = std::chrono::steady_clock;

namespace {

struct settings {
  double seconds = 60;
  int workers = 8;
  std::size_t n = 65536;
  std::uint64_t staleness = gc::unbounded_staleness;
};

double rss_mib() {
  std::ifstream f("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1048576.0;
}

struct row {
  const char* name;
  double seconds = 0, updates = 0, bytes = 0;
  std::uint64_t max_stale = 0;
  double mean_stale = 0, rss_start = 0, rss_end = 0;
  int lost = 0;
  bool exact = false;
};

template <class C, class P>
row run(const char* name, const settings& s, C codec, P pull) {
  row r{name};
  const std::size_t n = s.n;
  std::vector<std::int64_t> acked(n, 0);
  std::vector<float> final_w(n), w0(n);
  for (std::size_t i = 0; i < n; ++i) w0[i] = static_cast<float>(static_cast<int>(i % 13) - 6);
  std::mutex mu;
  gc::local_world world(1 + s.workers, std::chrono::seconds(30));
  const auto start = clock_type::now();
  const auto stop_at = start + std::chrono::duration_cast<clock_type::duration>(
                                   std::chrono::duration<double>(s.seconds));
  world.run([&](gc::local_transport& t) {
    gc::parameter_server<C, gc::local_transport, gc::sgd, P> ps(
        t, codec, pull, {.staleness = s.staleness}, gc::sgd{{.lr = 1.0f}});
    std::vector<float> w = w0;
    if (ps.is_server()) {
      bool sampled = false;
      ps.serve(w, [&] {
        if (!sampled && clock_type::now() - start > std::chrono::seconds(1)) {
          r.rss_start = rss_mib();
          sampled = true;
        }
        return false;
      });
      r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
      r.rss_end = rss_mib();
      if (!sampled) r.rss_start = r.rss_end;
      const auto st = ps.server_stats();
      r.updates = static_cast<double>(st.version);
      r.bytes = static_cast<double>(st.bytes_received + st.bytes_sent);
      r.max_stale = st.max_staleness;
      r.mean_stale = st.mean_staleness;
      r.lost = st.lost;
      std::lock_guard lk(mu);
      final_w = w;
      return;
    }
    std::vector<float> g(n);
    std::vector<std::int64_t> mine(n, 0);
    while (clock_type::now() < stop_at) {
      ps_gradient::fill(t.rank(), ps.clock_count(), g);
      ps.step(w, g);
      for (std::size_t i = 0; i < n; ++i) mine[i] += static_cast<std::int64_t>(g[i]);
    }
    ps.finish();
    std::lock_guard lk(mu);
    for (std::size_t i = 0; i < n; ++i) acked[i] += mine[i];
  });
  r.exact = true;
  for (std::size_t i = 0; i < n; ++i) r.exact &= final_w[i] == w0[i] - static_cast<float>(acked[i]);
  return r;
}

bool arg(const char* a, const char* key, std::string& value) {
  const std::size_t k = std::strlen(key);
  if (std::strncmp(a, key, k) != 0 || a[k] != '=') return false;
  value = a + k + 1;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (arg(argv[i], "--seconds", v)) {
      s.seconds = std::stod(v);
    } else if (arg(argv[i], "--workers", v)) {
      s.workers = std::stoi(v);
    } else if (arg(argv[i], "--n", v)) {
      s.n = std::stoul(v);
    } else if (arg(argv[i], "--staleness", v)) {
      s.staleness = v == "inf" ? gc::unbounded_staleness : std::stoull(v);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--seconds=60] [--workers=8] [--n=65536] [--staleness=inf|s]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf(
      "parameter server, local transport: 1 server, %d workers, n = %zu f32, %.0f s a "
      "row, staleness %s\n",
      s.workers, s.n, s.seconds,
      s.staleness == gc::unbounded_staleness ? "unbounded" : std::to_string(s.staleness).c_str());
  using ef8 = gc::error_feedback<gc::scalar_quant_codec>;
  const gc::scalar_quant_codec q8({.bits = 8, .block = 256});
  const row rows[] = {
      run("f32 push, f32 pull", s, gc::identity_codec{}, gc::identity_codec{}),
      run("8-bit push (EF), 8-bit pull", s, ef8(q8), q8),
  };
  std::printf("%-28s %11s %10s %6s %11s %10s %8s %8s %8s %6s %5s\n", "row", "updates/s",
              "grad GB/s", "ratio", "B/update", "stale max", "mean", "RSS@1s", "RSS end", "exact",
              "lost");
  const double base = rows[0].updates / rows[0].seconds;
  bool ok = true;
  for (const auto& r : rows) {
    const double ups = r.updates / r.seconds;
    std::printf("%-28s %11.0f %10.3f %6.2f %11.0f %10llu %8.2f %8.1f %8.1f %6s %5d\n", r.name, ups,
                ups * 4.0 * static_cast<double>(s.n) / 1e9, ups / base,
                r.updates ? r.bytes / r.updates : 0.0, static_cast<unsigned long long>(r.max_stale),
                r.mean_stale, r.rss_start, r.rss_end, r.exact ? "yes" : "NO", r.lost);
    ok &= r.exact && r.lost == 0;
  }
  return ok ? 0 : 1;
}

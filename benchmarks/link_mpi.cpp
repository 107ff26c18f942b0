// benchmarks/link_mpi.cpp — how a link carries the message patterns of an all-reduce, with
// plain MPI only (no gradcomm): one exchange between rank pairs, the same bytes in exchanges
// one after another (with and without a barrier before each), one way only, and
// MPI_Allreduce of the whole buffer in 1, 4 and 16 calls. It separates what the network (or
// its simulation) does from what gradcomm's transport does. Ranks pair up as r and r ^ 1 (an
// even number of ranks).
//
//   sudo bash benchmarks/shaped_network.sh --hosts 2 -- $PWD/build/benchmarks/bench_link_mpi
//   (add --openmpi-defaults before -- for Open MPI's TCP settings as they come: exchanges
//   in a row then take turns, at half the rate each way; see shaped_network.sh)
//   mpirun -np 2 build/benchmarks/bench_link_mpi --mib 32 --reps 5
//
// Each row: the median over --reps timed runs (after one warm-up) of the slowest rank's
// time, every run starting after a barrier, and the rate each way that it makes of --mib
// MiB (each rank sends --mib MiB in the exchange rows).
//
// --pingpong: instead, the one-way time of a message by size (8 B to 16 MiB; half the
// round trip of rank 0 and 1, median of --reps runs of 10 round trips; others idle), and
// SMPI's latency and bandwidth factors that make a simulated platform move each size as
// this network does (benchmarks/smpi.sh --lat-factor, --bw-factor: the calibration of the
// simulated network by the real one; see pingpong()).
#include "mpi_bench.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

struct options {
  double mib = 32;  // bytes each rank sends in the exchange rows, and half the all-reduce's
  int reps = 3;
  bool pingpong = false;
  double route_us = 50;  // --pingpong: the simulated route's latency (shaped:RATE's 2 x 25 us)
};

// The slowest rank's median time of op() in ms.
template <class Op>
double median_ms(int reps, Op&& op) {
  op();  // warm-up: connections made, buffers touched
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) v.push_back(1e3 * mpi_bench::timed(op));
  return mpi_bench::median(v);
}

// One-way times by message size between ranks 0 and 1, and SMPI's factors from them.
// SMPI's time for a message of s bytes over a route of latency L and bandwidth B is
// L·lat_factor(s) + s / (B·bw_factor(s)), each factor piecewise in s ("s0:f0;s1:f1;...",
// a factor from its size up). The calibration: one latency factor, the measured 8-byte
// one-way time over the route's latency (`route_us`, the platform's); a bandwidth factor
// a size, the rate a message of that size reached beyond the latency over the rate of the
// largest one. SMPI applies a factor to the sizes above its size, up to the next one's;
// each interval gets the factor measured at its upper end (the smaller, as rates fall
// with size: a stream of back-to-back medium messages gets no shaper's burst). So a platform whose
// links carry the rate the all-reduce's pattern measures (every rank to the next at once) moves
// each size as much faster or slower than a large message as the real link does (a token-bucket
// shaper lets a message that fits its burst pass at the line's speed: 2x on shaped_network.sh's
// 1gbit links).
void pingpong(int rank, int size, int reps, double route_us) {
  const std::vector<std::size_t> sizes = {8,        1 << 10,   8 << 10,   32 << 10,
                                          64 << 10, 128 << 10, 256 << 10, 512 << 10,
                                          1 << 20,  2 << 20,   4 << 20,   16 << 20};
  std::vector<char> buf(sizes.back(), 1);
  std::vector<double> one_way;
  for (const std::size_t s : sizes) {
    const int n = static_cast<int>(s);
    auto round_trips = [&] {
      for (int i = 0; i < 10; ++i) {
        if (rank == 0) {
          MPI_Send(buf.data(), n, MPI_BYTE, 1, 3, MPI_COMM_WORLD);
          MPI_Recv(buf.data(), n, MPI_BYTE, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
          MPI_Recv(buf.data(), n, MPI_BYTE, 0, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          MPI_Send(buf.data(), n, MPI_BYTE, 0, 3, MPI_COMM_WORLD);
        }
      }
    };
    one_way.push_back(median_ms(reps, round_trips) / 20.0 * 1e-3);  // seconds
  }
  if (rank != 0) return;
  const double lat = one_way.front();
  // The rate beyond the latency; a size whose time is within 10 % of the latency says
  // nothing of it (factor 1).
  auto beyond = [&](std::size_t i) {
    const double t = one_way[i] - lat;
    return t > 0.1 * lat ? static_cast<double>(sizes[i]) / t : 0.0;
  };
  const double rate = beyond(sizes.size() - 1);
  std::printf(
      "# bench_link_mpi --pingpong — ranks 0 and 1 of %d, one way = half a round trip,\n"
      "# median of %d runs of 10 round trips\n\n",
      size, reps);
  std::printf(
      "| bytes | one way us | Gbit/s | beyond the latency, Gbit/s | SMPI bw factor |\n"
      "|---:|---:|---:|---:|---:|\n");
  std::vector<double> factor(sizes.size());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const double r = beyond(i);
    factor[i] = r > 0 && rate > 0 ? std::clamp(r / rate, 0.25, 8.0) : 1.0;
    std::printf("| %zu | %.1f | %.3f | %.3f | %.2f |\n", sizes[i], one_way[i] * 1e6,
                static_cast<double>(sizes[i]) * 8 / one_way[i] * 1e-9, r * 8e-9, factor[i]);
  }
  std::string bw_factor;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    char piece[64];
    std::snprintf(piece, sizeof piece, "%s%zu:%.3g", i ? ";" : "", i ? sizes[i - 1] : 0, factor[i]);
    bw_factor += piece;
  }
  bw_factor += ";" + std::to_string(sizes.back()) + ":1";
  std::printf("\nlatency %.1f us one way, %.4g Gbit/s beyond it (16 MiB)\n", lat * 1e6,
              rate * 8e-9);
  std::printf("smpi.sh --lat-factor '0:%.3g' --bw-factor '%s'\n", lat * 1e6 / route_us,
              bw_factor.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  options o;
  try {
    mpi_bench::parse_options(argc, argv,
                             {{"--mib", [&](const char* v) { o.mib = std::atof(v); }},
                              {"--reps", [&](const char* v) { o.reps = std::atoi(v); }},
                              {"--pingpong", [&](const char*) { o.pingpong = true; }, true},
                              {"--route-us", [&](const char* v) { o.route_us = std::atof(v); }}});
    if (!(o.mib >= 1 && o.mib <= 1024) || o.reps < 1 || !(o.route_us > 0))
      throw mpi_bench::usage_error{"--mib in [1, 1024], --reps >= 1, --route-us > 0"};
    if (size % 2 != 0) throw mpi_bench::usage_error{"an even number of ranks (pairs r, r ^ 1)"};
  } catch (const mpi_bench::usage_error& e) {
    if (rank == 0)
      std::fprintf(stderr,
                   "bench_link_mpi: %s\nusage: bench_link_mpi [--mib M] [--reps K] [--pingpong]\n",
                   e.why.c_str());
    MPI_Finalize();
    return 2;
  }
  if (o.pingpong) {
    pingpong(rank, size, o.reps, o.route_us);
    MPI_Finalize();
    return 0;
  }
  const int peer = rank ^ 1;
  const auto bytes = static_cast<std::size_t>(o.mib * (1 << 20)) & ~std::size_t{(1 << 20) - 1};
  std::vector<char> out(bytes, 1), in(bytes);
  std::vector<float> sum(2 * bytes / sizeof(float), 1.0f);

  auto exchange = [&](std::size_t at, std::size_t len) {
    MPI_Sendrecv(out.data() + at, static_cast<int>(len), MPI_BYTE, peer, 1, in.data() + at,
                 static_cast<int>(len), MPI_BYTE, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  };
  auto in_pieces = [&](std::size_t piece, bool barrier) {
    return [&, piece, barrier] {
      for (std::size_t at = 0; at < bytes; at += piece) {
        if (barrier) MPI_Barrier(MPI_COMM_WORLD);
        exchange(at, piece);
      }
    };
  };
  struct row {
    std::string what;
    double ms;
    double mib_each_way;
  };
  std::vector<row> rows;
  const double mib = static_cast<double>(bytes) / (1 << 20);
  rows.push_back({"one exchange", median_ms(o.reps, in_pieces(bytes, false)), mib});
  for (std::size_t piece_mib : {4, 1}) {
    const std::size_t piece = piece_mib << 20;
    if (piece >= bytes) continue;
    const std::string n =
        std::to_string(bytes / piece) + " x " + std::to_string(piece_mib) + " MiB";
    rows.push_back({n + " exchanges in a row", median_ms(o.reps, in_pieces(piece, false)), mib});
    rows.push_back(
        {n + " exchanges, a barrier before each", median_ms(o.reps, in_pieces(piece, true)), mib});
    rows.push_back({n + " one way (even rank sends)",
                    median_ms(o.reps,
                              [&] {
                                for (std::size_t at = 0; at < bytes; at += piece) {
                                  if (rank % 2 == 0)
                                    MPI_Send(out.data() + at, static_cast<int>(piece), MPI_BYTE,
                                             peer, 2, MPI_COMM_WORLD);
                                  else
                                    MPI_Recv(in.data() + at, static_cast<int>(piece), MPI_BYTE,
                                             peer, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                                }
                              }),
                    mib});
  }
  // An all-reduce of twice the bytes: a bandwidth-optimal algorithm sends 2(N − 1)/N of
  // it each way (on 2 ranks twice the exchange's bytes).
  for (int calls : {1, 4, 16}) {
    const std::size_t len = sum.size() / static_cast<std::size_t>(calls);
    rows.push_back({"MPI_Allreduce of " + std::to_string(2 * bytes >> 20) + " MiB f32 in " +
                        std::to_string(calls) + (calls == 1 ? " call" : " calls"),
                    median_ms(o.reps,
                              [&] {
                                for (int c = 0; c < calls; ++c)
                                  MPI_Allreduce(MPI_IN_PLACE, sum.data() + c * len,
                                                static_cast<int>(len), MPI_FLOAT, MPI_SUM,
                                                MPI_COMM_WORLD);
                              }),
                    4 * mib * (size - 1) / size});
  }
  if (rank == 0) {
    std::printf("# bench_link_mpi — %d ranks in pairs, %.0f MiB a rank each way, median of %d\n\n",
                size, mib, o.reps);
    std::printf("| pattern | ms | Gbit/s each way |\n|---|---:|---:|\n");
    for (const auto& r : rows)
      std::printf("| %s | %.1f | %.3f |\n", r.what.c_str(), r.ms,
                  r.mib_each_way * 8.0 * (1 << 20) / (r.ms * 1e6));
  }
  MPI_Finalize();
  return 0;
}

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
#include "mpi_bench.hpp"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

struct options {
  double mib = 32;  // bytes each rank sends in the exchange rows, and half the all-reduce's
  int reps = 3;
};

// The slowest rank's median time of op() in ms.
template <class Op>
double median_ms(int reps, Op&& op) {
  op();  // warm-up: connections made, buffers touched
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) v.push_back(1e3 * mpi_bench::timed(op));
  return mpi_bench::median(v);
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
                              {"--reps", [&](const char* v) { o.reps = std::atoi(v); }}});
    if (!(o.mib >= 1 && o.mib <= 1024) || o.reps < 1)
      throw mpi_bench::usage_error{"--mib in [1, 1024], --reps >= 1"};
    if (size % 2 != 0) throw mpi_bench::usage_error{"an even number of ranks (pairs r, r ^ 1)"};
  } catch (const mpi_bench::usage_error& e) {
    if (rank == 0)
      std::fprintf(stderr, "bench_link_mpi: %s\nusage: bench_link_mpi [--mib M] [--reps K]\n",
                   e.why.c_str());
    MPI_Finalize();
    return 2;
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

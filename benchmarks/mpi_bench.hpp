// benchmarks/mpi_bench.hpp — what the MPI benchmark programs (allreduce_mpi.cpp,
// backends_mpi.cpp) share: --only row selection, the median, the slowest rank's time of a
// call, the list of hosts for the table's header, and the command line's walk.
//
//   if (mpi_bench::wanted(o.only, "identity_f32")) t.push_back(mpi_bench::timed([&] { f(); }));
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace mpi_bench {

// A bad command line: main prints it with the usage on rank 0 and exits with status 2.
struct usage_error {
  std::string why;
};

// One command-line option: its name and what it does with its value (the next argument),
// or alone where it is a flag (then `set` gets nullptr).
struct option {
  std::string_view name;
  std::function<void(const char*)> set;
  bool flag = false;
};

// Applies argv[1..] through `table`; throws usage_error for an unknown option or a missing
// value. The caller checks the ranges.
//
//   mpi_bench::parse_options(argc, argv, {{"--mib", [&](const char* v) { o.mib = std::atof(v); }},
//                                         {"--link", [&](const char*) { o.link = true; }, true}});
inline void parse_options(int argc, char** argv, std::initializer_list<option> table) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const auto it =
        std::find_if(table.begin(), table.end(), [&](const option& x) { return x.name == a; });
    if (it == table.end()) throw usage_error{"unknown option " + std::string(a)};
    if (it->flag) {
      it->set(nullptr);
      continue;
    }
    if (i + 1 >= argc) throw usage_error{std::string(a) + " needs a value"};
    it->set(argv[++i]);
  }
}

// Whether row `name` is in the comma-separated list `only` (empty: every row is).
inline bool wanted(std::string_view only, std::string_view name) {
  if (only.empty()) return true;
  while (!only.empty()) {
    const auto comma = only.find(',');
    if (only.substr(0, comma) == name) return true;
    if (comma == std::string_view::npos) break;
    only.remove_prefix(comma + 1);
  }
  return false;
}

using clock_type = std::chrono::steady_clock;

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Seconds of op() on the slowest rank, every rank starting after a barrier. MPI_Wtime, not
// a C++ clock: under SimGrid's SMPI (benchmarks/smpi.sh) it is the simulated time.
template <class Op>
double timed(Op&& op) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  op();
  double local = MPI_Wtime() - t0, slowest = 0;
  MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

// "h0 h1 ..." from every rank's processor name, in rank order (on rank 0; empty elsewhere).
inline std::string host_list(int rank, int size) {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  std::vector<char> all(static_cast<std::size_t>(size) * MPI_MAX_PROCESSOR_NAME);
  MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
             0, MPI_COMM_WORLD);
  std::string out;
  if (rank != 0) return out;
  for (int r = 0; r < size; ++r) {
    if (r) out += ' ';
    out += all.data() + static_cast<std::size_t>(r) * MPI_MAX_PROCESSOR_NAME;
  }
  return out;
}

}  // namespace mpi_bench

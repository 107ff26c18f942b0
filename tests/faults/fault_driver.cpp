// tests/faults/fault_driver.cpp — one trial of the fault-injection script
// (tests/faults/run_faults.sh): a backend over MPI runs a few steps while one rank
// injects a fault at one step. Not a ctest test: the script runs it under mpirun and
// classifies what the other ranks print and how the job ends.
//
//   mpirun -np 4 fault_driver --backend ar_identity --fault sleep --fault-rank 1
//
// Backends: ar_identity (native path: the transport's ring), ar_q8 (scatter-reduce-
// allgather, 8-bit scalar quantization), ar_topk (all-gather of top-k 1 % payloads),
// ar_powersgd (PowerSGD's two all-reduces; needs Eigen), ps (parameter server: rank 0
// serves, the others push), gossip (ring, identity codec). Faults, on --fault-rank at
// the start of step --fault-step: none; early (returns from the backend and exits 0,
// participating no further); sleep (3 × the deadline, then carries on); stop (raises
// SIGSTOP; the script sends SIGCONT); kill (raises SIGKILL).
//
// Every other rank prints one line and exits 0 (4 if a result it returned was wrong):
//   RESULT rank=R outcome=ok|error steps=S kind=timeout_error peer=P elapsed_ms=E check=pass|fail
//   msg=...
// `check`: every result a call returned equals the exact expected value (integer
// gradients: the identity, top-k and parameter-server sums are exact; 8-bit within one
// quantization step; PowerSGD of a rank-4 mean within 1e-3 of it after its warm-up;
// gossip stays within the range of the initial values).
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/mpi.hpp>
#if GRADCOMM_HAS_EIGEN
#include <gradcomm/codec/powersgd.hpp>
#endif

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace gc = gradcomm;
using clock_type = std::chrono::steady_clock;

namespace {

int peer_of(const gc::error& e) {
  if (const auto* t = dynamic_cast<const gc::timeout_error*>(&e)) return t->peer();
  if (const auto* p = dynamic_cast<const gc::peer_error*>(&e)) return p->peer();
  return -2;
}

struct options {
  std::string backend = "ar_identity";
  std::string fault = "none";
  int fault_rank = 1;
  int fault_step = 2;
  int steps = 4;
  int timeout_ms = 500;
  std::string pid_dir;
};

struct outcome {
  bool ok = true;
  bool check = true;
  int steps = 0;
  std::string kind, msg;
  int peer = -2;
  double elapsed_ms = -1;
};

int rank_ = 0, size_ = 1;

// Integer gradients in [-127, 127], ±127 at every block of 256 (8-bit exact).
float grad_value(int rank, int step, std::size_t i) {
  std::uint64_t h =
      (static_cast<std::uint64_t>(rank) << 40) ^ (static_cast<std::uint64_t>(step) << 20) ^ i;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  const int mag = i % 256 == 0 ? 127 : static_cast<int>(h % 128);
  return static_cast<float>((h >> 32) & 1 ? mag : -mag);
}

// Sparse integer gradients: at most 0.5 % of the values are non-zero (top-k 1 % takes all).
float sparse_value(int rank, int step, std::size_t i) {
  const std::size_t j =
      i * 7 + static_cast<std::size_t>(rank) * 13 + static_cast<std::size_t>(step);
  return j % 211 == 0 ? static_cast<float>(1 + static_cast<int>(j % 9)) : 0.0f;
}

float low_rank_value(int q, std::size_t i) {
  const std::size_t row = i / 96, col = i % 96;
  return std::cos(0.1f * static_cast<float>(row * static_cast<std::size_t>(q + 1))) *
         std::sin(0.07f * static_cast<float>(col + static_cast<std::size_t>(q) * 5) + 0.3f);
}

// The fault, on the faulty rank at the start of the faulty step. Returns true for
// "return early".
bool inject(const options& o, int step) {
  if (rank_ != o.fault_rank || step != o.fault_step || o.fault == "none") return false;
  std::printf("FAULT rank=%d fault=%s step=%d\n", rank_, o.fault.c_str(), step);
  std::fflush(stdout);
  if (o.fault == "early") return true;
  if (o.fault == "sleep") std::this_thread::sleep_for(std::chrono::milliseconds(3 * o.timeout_ms));
  if (o.fault == "stop") std::raise(SIGSTOP);
  if (o.fault == "kill") std::raise(SIGKILL);
  return false;
}

// Runs `steps` calls of `one(step)` (which returns whether its result checked out),
// catching the first error.
template <class One>
outcome run_steps(const options& o, One&& one) {
  outcome r;
  for (int s = 0; s < o.steps; ++s) {
    if (inject(o, s)) {
      r.kind = "returned_early";
      return r;
    }
    const auto t0 = clock_type::now();
    try {
      if (!one(s)) r.check = false;
      ++r.steps;
    } catch (const gc::error& e) {
      r.ok = false;
      r.elapsed_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
      r.kind = dynamic_cast<const gc::timeout_error*>(&e)  ? "timeout_error"
               : dynamic_cast<const gc::peer_error*>(&e)   ? "peer_error"
               : dynamic_cast<const gc::decode_error*>(&e) ? "decode_error"
                                                           : "error";
      r.peer = peer_of(e);
      r.msg = e.what();
      return r;
    } catch (const std::exception& e) {
      r.ok = false;
      r.elapsed_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
      r.kind = "std_exception";
      r.msg = e.what();
      return r;
    }
  }
  return r;
}

template <class C>
outcome run_allreduce(const options& o, C codec, std::size_t n,
                      float (*value)(int, int, std::size_t), double tol) {
  gc::mpi_transport t(MPI_COMM_WORLD, std::chrono::milliseconds(o.timeout_ms));
  gc::allreduce<C, gc::mpi_transport> ar(t, std::move(codec));
  auto g = std::make_unique<std::vector<float>>(n);
  outcome r = run_steps(o, [&](int s) {
    for (std::size_t i = 0; i < n; ++i) (*g)[i] = value(rank_, s, i);
    ar.average(gc::host_view<float>(g->data(), n));
    for (std::size_t i = 0; i < n; ++i) {
      float sum = 0;
      for (int q = 0; q < size_; ++q) sum += value(q, s, i);
      const float expected = sum * (1.0f / static_cast<float>(size_));
      if (!(std::fabs((*g)[i] - expected) <= tol)) return false;
    }
    return true;
  });
  std::fill(g->begin(), g->end(), -1e30f);  // then freed: nothing may read it any more
  return r;
}

#if GRADCOMM_HAS_EIGEN
outcome run_powersgd(const options& o) {
  gc::mpi_transport t(MPI_COMM_WORLD, std::chrono::milliseconds(o.timeout_ms));
  gc::allreduce<gc::powersgd_codec, gc::mpi_transport> ar(
      t, gc::powersgd_codec({.rank = 4, .seed = 3}));
  const std::size_t n = 64 * 96;
  std::vector<float> g(n);
  // The warm start needs a few rounds: the first are not checked.
  const int warm = 8;
  options o2 = o;
  o2.steps = o.steps + warm;
  o2.fault_step = o.fault_step + warm;
  return run_steps(o2, [&](int s) {
    for (std::size_t i = 0; i < n; ++i) g[i] = low_rank_value(rank_, i);
    ar.average(g);
    if (s < warm) return true;
    double err = 0, norm = 0;
    for (std::size_t i = 0; i < n; ++i) {
      double mean = 0;
      for (int q = 0; q < size_; ++q) mean += low_rank_value(q, i) / size_;
      err += (g[i] - mean) * (g[i] - mean);
      norm += mean * mean;
    }
    return std::sqrt(err / norm) < 1e-3;
  });
}
#endif

// Rank 0 serves; every worker pushes the same integer gradient G each step (lr 1), so
// the server's parameters are w0 − version × G exactly and a worker's pulled ones
// w0 − k × G for some whole k.
outcome run_ps(const options& o) {
  gc::mpi_transport t(MPI_COMM_WORLD, std::chrono::milliseconds(o.timeout_ms));
  const std::size_t n = 100000;
  std::vector<float> w0(n), grad(n);
  for (std::size_t i = 0; i < n; ++i) {
    w0[i] = static_cast<float>(static_cast<int>(i % 13) - 6);
    grad[i] = grad_value(0, 0, i);
  }
  std::vector<float> w = w0;
  gc::parameter_server<gc::identity_codec, gc::mpi_transport> ps(
      t, gc::identity_codec{}, gc::ps_options{.staleness = gc::unbounded_staleness},
      gc::sgd{{.lr = 1.0f}});
  auto matches = [&](double k) {
    for (std::size_t i = 0; i < n; ++i)
      if (w[i] != w0[i] - static_cast<float>(k) * grad[i]) return false;
    return true;
  };
  if (ps.is_server()) {
    outcome r = run_steps(o, [&](int s) {
      if (s > 0) return true;  // one serve() for the whole run
      ps.serve(w);
      return matches(static_cast<double>(ps.version()));
    });
    return r;
  }
  outcome r = run_steps(o, [&](int) {
    ps.step(w, grad);
    const double k = (w0[0] - w[0]) / grad[0];
    return k == std::round(k) && matches(k);
  });
  if (r.ok && r.kind.empty()) {
    try {
      ps.finish();
    } catch (const gc::error& e) {
      r.ok = false;
      r.kind = "error";
      r.peer = peer_of(e);
      r.msg = e.what();
    }
  }
  return r;
}

outcome run_gossip(const options& o) {
  gc::mpi_transport t(MPI_COMM_WORLD, std::chrono::milliseconds(o.timeout_ms));
  gc::gossip<gc::identity_codec, gc::mpi_transport, gc::ring_topology> g(t, gc::ring_topology{});
  const std::size_t n = 100000;
  auto x = std::make_unique<std::vector<float>>(n);
  float lo = 1e30f, hi = -1e30f;
  for (int q = 0; q < size_; ++q)
    for (std::size_t i = 0; i < 64; ++i) {
      lo = std::min(lo, grad_value(q, 9, i));
      hi = std::max(hi, grad_value(q, 9, i));
    }
  for (std::size_t i = 0; i < n; ++i) (*x)[i] = grad_value(rank_, 9, i % 64);
  outcome r = run_steps(o, [&](int) {
    g.mix(gc::host_view<float>(x->data(), n));
    for (float v : *x)
      if (!(v >= lo - 1e-3f && v <= hi + 1e-3f)) return false;
    return true;
  });
  std::fill(x->begin(), x->end(), -1e30f);
  return r;
}

outcome run(const options& o) {
  if (o.backend == "ar_identity")
    return run_allreduce(o, gc::identity_codec{}, 300007, grad_value, 0.0);
  if (o.backend == "ar_q8")
    return run_allreduce(o, gc::scalar_quant_codec({.bits = 8, .block = 256}), 300007, grad_value,
                         1.0001);
  if (o.backend == "ar_topk")
    return run_allreduce(o, gc::topk_codec({.ratio = 0.01}), 300007, sparse_value, 0.0);
#if GRADCOMM_HAS_EIGEN
  if (o.backend == "ar_powersgd") return run_powersgd(o);
#endif
  if (o.backend == "ps") return run_ps(o);
  if (o.backend == "gossip") return run_gossip(o);
  std::fprintf(stderr, "fault_driver: unknown backend %s\n", o.backend.c_str());
  std::exit(2);
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fault_driver: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--backend")
      o.backend = next();
    else if (a == "--fault")
      o.fault = next();
    else if (a == "--fault-rank")
      o.fault_rank = std::stoi(next());
    else if (a == "--fault-step")
      o.fault_step = std::stoi(next());
    else if (a == "--steps")
      o.steps = std::stoi(next());
    else if (a == "--timeout-ms")
      o.timeout_ms = std::stoi(next());
    else if (a == "--pid-dir")
      o.pid_dir = next();
    else if (a == "--list") {
#if GRADCOMM_HAS_EIGEN
      std::printf("ar_identity ar_q8 ar_topk ar_powersgd ps gossip\n");
#else
      std::printf("ar_identity ar_q8 ar_topk ps gossip\n");
#endif
      return 0;
    } else {
      std::fprintf(stderr, "fault_driver: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  int rc = 0;
  {
    gc::mpi_environment env(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    if (!o.pid_dir.empty()) {
      std::ofstream(o.pid_dir + "/pid." + std::to_string(rank_)) << getpid() << "\n";
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const outcome r = run(o);
    if (!r.check) rc = 4;
    std::printf(
        "RESULT rank=%d outcome=%s steps=%d kind=%s peer=%d elapsed_ms=%.0f check=%s msg=%s\n",
        rank_, r.ok ? "ok" : "error", r.steps, r.kind.empty() ? "-" : r.kind.c_str(), r.peer,
        r.elapsed_ms, r.check ? "pass" : "fail", one_line(r.msg).c_str());
    std::fflush(stdout);
  }  // MPI_Finalize
  return rc;
}

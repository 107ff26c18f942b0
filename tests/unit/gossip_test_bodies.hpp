// The gossip tests' helpers and the bodies that need only a Transport, shared by the
// tests over threads (tests/unit/test_gossip.cpp) and over MPI ranks
// (tests/mpi/test_mpi_gossip.cpp). A test header: included by one file of each program.
#pragma once

#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/transport/local.hpp>

#include "forwarding_transport.hpp"

#include <gtest/gtest.h>
#include <Eigen/Dense>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

// ---- helpers ---------------------------------------------------------------------

// The values rank r starts with: d numbers in [-1, 1), a function of (seed, rank).
std::vector<float> start_values(int rank, std::size_t d, unsigned seed = 1) {
  std::mt19937 rng(seed * 7919u + static_cast<unsigned>(rank));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(d);
  for (auto& v : x) v = u(rng);
  return x;
}

// The mean over ranks, ‖X − 1 x̄ᵀ‖_F and ‖X‖_F (X: the ranks' values as rows), measured
// with the transport's all-reduce.
struct spread {
  std::vector<double> mean;
  double disagreement = 0;
  double norm = 0;
};

template <gc::Transport T>
spread measure(T& t, std::span<const float> x) {
  spread s;
  s.mean.assign(x.begin(), x.end());
  t.template allreduce<double>(s.mean, s.mean, gc::reduce_op::sum);
  for (auto& m : s.mean) m /= t.size();
  double sq[2] = {0, 0};
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double e = x[i] - s.mean[i];
    sq[0] += e * e;
    sq[1] += static_cast<double>(x[i]) * x[i];
  }
  t.template allreduce<double>(std::span<double>(sq), std::span<double>(sq), gc::reduce_op::sum);
  s.disagreement = std::sqrt(sq[0]);
  s.norm = std::sqrt(sq[1]);
  return s;
}

template <gc::Transport T>
double allreduce_sum(T& t, double v) {
  t.template allreduce<double>(std::span<const double>(&v, 1), std::span<double>(&v, 1),
                               gc::reduce_op::sum);
  return v;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

using row_matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// λ = ‖W − 11ᵀ/n‖₂, the largest |eigenvalue| of a symmetric W other than its eigenvalue 1
// for the vector of ones: x_t − x̄ = (W − 11ᵀ/n)^t (x_0 − x̄), so ‖x_t − x̄‖ ≤ λ^t ‖x_0 − x̄‖.
double second_eigenvalue(const std::vector<double>& w, int n) {
  const Eigen::Map<const row_matrix> W(w.data(), n, n);
  const Eigen::MatrixXd M = W - Eigen::MatrixXd::Constant(n, n, 1.0 / n);
  EXPECT_LT((M - M.transpose()).cwiseAbs().maxCoeff(), 1e-15) << "W is not symmetric";
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(M);
  return es.eigenvalues().cwiseAbs().maxCoeff();
}

// A non-regular connected graph on n ranks: a path plus chords from rank 0 to every
// even rank, so degrees differ and uniform 1/(d + 1) weights would not keep the mean.
gc::graph_topology lopsided_graph(int n) {
  std::vector<std::pair<int, int>> edges;
  for (int i = 0; i + 1 < n; ++i) edges.emplace_back(i, i + 1);
  for (int i = 2; i < n; i += 2) edges.emplace_back(0, i);
  return gc::graph_topology(n, edges);
}

// A directed topology that is column stochastic but not row stochastic: rank i sends to
// i + 1, and even ranks to i + 2 as well, each share 1/(out-degree + 1). In-degrees
// differ, so push-sum weights leave 1; the mean is still what push-sum finds.
struct skewed_topology {
  static constexpr bool undirected = false;
  static constexpr bool time_varying = false;
  std::string_view name() const { return "skewed"; }

  static std::vector<int> outs(int i, int n) {
    std::vector<int> o;
    for (int j : {(i + 1) % n, i % 2 == 0 ? (i + 2) % n : (i + 1) % n})
      if (j != i && std::find(o.begin(), o.end(), j) == o.end()) o.push_back(j);
    std::sort(o.begin(), o.end());
    return o;
  }
  gc::neighbourhood peers(int rank, int size, std::uint64_t) const {
    gc::neighbourhood nb;
    const auto mine = outs(rank, size);
    nb.self = 1.0 / static_cast<double>(mine.size() + 1);
    for (int j : mine) nb.out.push_back({j, nb.self});
    for (int j = 0; j < size; ++j) {
      if (j == rank) continue;
      const auto theirs = outs(j, size);
      if (std::find(theirs.begin(), theirs.end(), rank) != theirs.end())
        nb.in.push_back({j, 1.0 / static_cast<double>(theirs.size() + 1)});
    }
    return nb;
  }
};
static_assert(gc::Topology<skewed_topology>);

// A broken topology: rank 0 claims to receive from rank 1, which does not send to it.
struct one_sided_topology {
  static constexpr bool undirected = false;
  static constexpr bool time_varying = false;
  std::string_view name() const { return "one-sided"; }
  gc::neighbourhood peers(int rank, int, std::uint64_t) const {
    gc::neighbourhood nb;
    if (rank == 0) {
      nb.self = 0.5;
      nb.in.push_back({1, 0.5});
    }
    return nb;
  }
};

// identity_codec without its `lossless` flag: gossip treats it as a lossy codec and runs
// CHOCO with public copies, which must then be plain gossip.
struct unflagged_identity {
  using value_type = float;
  static constexpr gc::codec_traits traits = gc::identity_codec::traits;
  static constexpr gc::codec_id id = gc::identity_codec::id;
  std::size_t max_encoded_bytes(std::size_t n) const { return c.max_encoded_bytes(n); }
  std::size_t encode(gc::host_view<const float> in, std::span<std::byte> out) {
    return c.encode(in, out);
  }
  void decode(std::span<const std::byte> p, gc::host_view<float> out) { c.decode(p, out); }
  void decode_add(std::span<const std::byte> p, gc::host_view<float> acc) { c.decode_add(p, acc); }
  std::size_t encode(gc::host_context x, gc::host_view<const float> in, std::span<std::byte> out) {
    return c.encode(x, in, out);
  }
  void decode(gc::host_context x, std::span<const std::byte> p, gc::host_view<float> out) {
    c.decode(x, p, out);
  }
  void decode_add(gc::host_context x, std::span<const std::byte> p, gc::host_view<float> acc) {
    c.decode_add(x, p, acc);
  }
  gc::identity_codec c;
};
static_assert(gc::Codec<unflagged_identity> && !gc::lossless_codec<unflagged_identity>);

// forwarding_transport (forwarding_transport.hpp) is not declared to withdraw whole groups
// and, as MPI, leaves a send posted when its request goes: gossip over it keeps an
// exchange that missed its deadline posted and applies it late.
static_assert(!gc::transport_withdraws_groups<forwarding_transport>);
static_assert(gc::transport_withdraws_groups<gc::local_transport>);

// ---- bodies over any Transport ---------------------------------------------------------

// Plain averaging on a static undirected topology: after every round the disagreement is
// within λ^t of the start (up to rounding), the mean is kept to rounding, nobody drops.
template <gc::Transport T, gc::Topology G>
void consensus_body(T& t, const G& topo, int rounds, std::size_t d = 33) {
  const int n = t.size();
  const double lambda = second_eigenvalue(gc::mixing_matrix(topo, n, 0), n);
  std::vector<float> x = start_values(t.rank(), d);
  const spread s0 = measure(t, x);
  gc::gossip<gc::identity_codec, T, G> g(t, topo);
  EXPECT_EQ(g.rule(), gc::mixing_rule::averaging);
  for (int r = 1; r <= rounds; ++r) {
    g.mix(x);
    const spread s = measure(t, x);
    const double tol = 1e-6 * r * s0.norm;
    EXPECT_LE(s.disagreement, std::pow(lambda, r) * s0.disagreement + tol)
        << topo.name() << ", " << n << " ranks, round " << r << ", lambda " << lambda;
    EXPECT_LE(max_abs_diff(s.mean, s0.mean), 1e-6 * r)
        << topo.name() << ", " << n << " ranks, round " << r << ": the mean moved";
  }
  EXPECT_TRUE(g.dropped().empty());
  EXPECT_EQ(g.round(), static_cast<std::uint64_t>(rounds));
}

// Push-sum: the weights sum to n and the numerators w z to their start after every round;
// the estimates z approach the mean, within `tol` of it after `rounds` rounds.
template <gc::Transport T, gc::Topology G, class C = gc::identity_codec>
void push_sum_body(T& t, const G& topo, int rounds, double tol, C codec = {}, std::size_t d = 40) {
  const int n = t.size();
  std::vector<float> z = start_values(t.rank(), d, 3);
  const spread s0 = measure(t, z);
  gc::gossip<C, T, G> g(t, topo, codec, {}, {.rule = gc::mixing_rule::push_sum});
  EXPECT_EQ(g.rule(), gc::mixing_rule::push_sum);
  std::vector<float> x(d);
  for (int r = 1; r <= rounds; ++r) {
    g.mix(z);
    EXPECT_NEAR(allreduce_sum(t, g.weight()), n, 1e-12 * n) << topo.name() << ", round " << r;
    for (std::size_t i = 0; i < d; ++i) x[i] = static_cast<float>(g.weight() * z[i]);
    const spread sx = measure(t, x);  // the mean of the numerators is kept
    EXPECT_LE(max_abs_diff(sx.mean, s0.mean), 2e-6 * r) << topo.name() << ", round " << r;
  }
  const spread s = measure(t, z);
  EXPECT_LE(s.disagreement, tol * s0.disagreement + 1e-6 * s0.norm)
      << topo.name() << ", " << n << " ranks after " << rounds << " rounds";
  EXPECT_LE(max_abs_diff(s.mean, s0.mean), tol + 1e-5) << topo.name() << ", " << n << " ranks";
  EXPECT_TRUE(g.dropped().empty());
}

// Compressed averaging: the mean is kept to rounding in every round (the public copies of
// both ends agree bit for bit), and after `rounds` rounds every value lies within `tol`
// of the true average.
template <gc::Transport T, gc::Topology G, class C>
void compressed_body(T& t, const G& topo, C codec, float gamma, int rounds, double tol,
                     gc::mixing_rule rule = gc::mixing_rule::automatic, std::size_t d = 1000) {
  std::vector<float> x = start_values(t.rank(), d, 5);
  const spread s0 = measure(t, x);
  gc::gossip<C, T, G> g(t, topo, codec, {}, {.rule = rule, .gamma = gamma, .seed = 11});
  for (int r = 1; r <= rounds; ++r) {
    g.mix(x);
    if (g.rule() == gc::mixing_rule::averaging) {
      const spread s = measure(t, x);
      EXPECT_LE(max_abs_diff(s.mean, s0.mean), 1e-6 * r) << topo.name() << ", round " << r;
    }
  }
  double worst = 0;
  for (std::size_t i = 0; i < d; ++i) worst = std::max(worst, std::abs(x[i] - s0.mean[i]));
  t.template allreduce<double>(std::span<const double>(&worst, 1), std::span<double>(&worst, 1),
                               gc::reduce_op::max);
  EXPECT_LE(worst, tol) << topo.name() << ", " << t.size() << " ranks after " << rounds
                        << " rounds, gamma " << gamma;
  EXPECT_TRUE(g.dropped().empty());
}

// Random matchings (averaging) and the exponential graph (push-sum) for a few rounds:
// no deadlock (a mismatch would time out and show up as a drop), the mean kept.
template <gc::Transport T>
void matching_body(T& t, std::uint64_t seed, int rounds) {
  std::vector<float> x = start_values(t.rank(), 8, static_cast<unsigned>(seed));
  const spread s0 = measure(t, x);
  gc::gossip<gc::identity_codec, T, gc::random_matching_topology> g(
      t, gc::random_matching_topology{seed}, {}, {}, {.tag = 100});
  gc::gossip<gc::identity_codec, T, gc::exponential_topology> p(t, {}, {}, {}, {.tag = 101});
  std::vector<float> z = x;
  for (int r = 0; r < rounds; ++r) {
    g.mix(x);
    p.mix(z);
  }
  EXPECT_TRUE(g.dropped().empty()) << "seed " << seed << ": " << g.dropped().front().reason;
  EXPECT_TRUE(p.dropped().empty()) << "seed " << seed << ": " << p.dropped().front().reason;
  EXPECT_LE(max_abs_diff(measure(t, x).mean, s0.mean), 1e-6 * rounds) << "seed " << seed;
  EXPECT_NEAR(allreduce_sum(t, p.weight()), t.size(), 1e-12 * t.size()) << "seed " << seed;
}

}  // namespace

// gradcomm/comm/topology.hpp — who gossips with whom in round t, and with what weight.
//
//   gradcomm::ring_topology ring;
//   gradcomm::neighbourhood nb = ring.peers(/*rank=*/3, /*size=*/8, /*round=*/0);
//   // nb.self == 1/3; nb.in and nb.out both hold {2, 1/3} and {4, 1/3}
//
// A topology is, for every round t, a mixing matrix W(t) over the ranks: gossip sets
// x_i ← Σ_j W_ij x_j. Each rank sees only its own row and column of it (its
// `neighbourhood`), computed from (rank, size, round) and the topology's own
// parameters (a seed) alone, so every rank agrees on every edge without a message:
// no rank ever waits for a partner that chose someone else.
//
// The topologies here are all doubly stochastic (rows and columns sum to 1), so both
// neighbour averaging and push-sum keep the average:
//
//   topology                  | edges of round t                        | W_ij          | kind
//   ring_topology             | i ± 1                                   | 1/3           |
//   undirected, static torus_topology            | up, down, left, right on a rows × cols  | 1/(d +
//   1)     | undirected, static
//                             | grid, the most square one (prime n: 1×n,|               |
//                             | a ring)                                 |               |
//   exponential_topology      | i → i + 2^(t mod ⌈log2 n⌉) (directed)   | 1/2           | directed,
//   time-varying random_matching_topology  | pairs of a seeded permutation of round t| 1/2 |
//   undirected, time-varying complete_topology         | everyone                                |
//   1/n           | undirected, static graph_topology            | the edges you give | Metropolis–
//   | undirected, static
//                             |                                         | Hastings      |
//
// Small worlds merge coincident edges (a ring of 2 has one neighbour, weight 1/2).
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// One peer of a rank in one round and the weight of the edge.
///
///   gradcomm::peer_weight p{/*rank=*/2, /*weight=*/1.0 / 3};
struct peer_weight {
  int rank;
  double weight;
  friend constexpr bool operator==(const peer_weight&, const peer_weight&) = default;
};

/// Rank i's row and column of round t's mixing matrix W (x_i ← Σ_j W_ij x_j):
///   self: W_ii;
///   in:   the ranks j ≠ i with W_ij > 0 (whose values rank i receives), weight W_ij;
///   out:  the ranks j ≠ i with W_ji > 0 (that receive rank i's value), weight W_ji.
/// Both lists are sorted by rank, without duplicates. On an undirected topology
/// `in == out`.
///
///   gradcomm::neighbourhood nb = topo.peers(rank, size, round);
///   for (auto [j, w] : nb.out) send_share(j, w);
struct neighbourhood {
  double self = 1.0;
  std::vector<peer_weight> in;
  std::vector<peer_weight> out;
};

/// Topology<T>: where gossip sends in round t. Requirements, for `t` a `const T&`:
///  1. `t.peers(int rank, int size, std::uint64_t round)` returns rank's `neighbourhood`
///     of round `round` in a world of `size` ranks; a pure function of its arguments
///     and of t's parameters, so that every rank computes the same matrix;
///  2. the neighbourhoods of all ranks describe one matrix: j is in i's `in` with weight
///     w exactly when i is in j's `out` with weight w (check_mixing_matrix verifies it);
///  3. `t.name()` says which topology it is;
///  4. `T::undirected` (a constant): W(t) is symmetric every round (in == out). Neighbour
///     averaging needs it; push-sum does not;
///  5. `T::time_varying` (a constant): W depends on the round;
///  6. T is copyable (a communicator keeps its own copy).
/// Rows of W must sum to 1 (averaging) and columns to 1 (push-sum); the topologies of
/// this header are doubly stochastic.
///
///   static_assert(gradcomm::Topology<gradcomm::ring_topology>);
template <class T>
concept Topology = std::copy_constructible<T> &&
    requires(const T& t, int rank, int size, std::uint64_t round) {
  { t.peers(rank, size, round) } -> std::same_as<neighbourhood>;
  { t.name() } -> std::convertible_to<std::string_view>;
  typename std::bool_constant<T::undirected>;
  typename std::bool_constant<T::time_varying>;
};

namespace detail {

inline void check_rank_in_world(const char* call, int rank, int size) {
  if (size < 1) throw_invalid_argument(call, "a world of " + std::to_string(size) + " ranks");
  if (rank < 0 || rank >= size)
    throw_invalid_argument(
        call, "rank " + std::to_string(rank) + " of a world of " + std::to_string(size) + " ranks");
}

// The distinct ranks of `ranks` other than `self`, sorted.
inline std::vector<int> distinct_peers(std::vector<int> ranks, int self) {
  std::erase(ranks, self);
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  return ranks;
}

// A regular undirected neighbourhood: every edge and the self loop weigh 1 / (d + 1).
inline neighbourhood uniform_undirected(const std::vector<int>& peers) {
  neighbourhood nb;
  const double w = 1.0 / static_cast<double>(peers.size() + 1);
  nb.self = w;
  for (int p : peers) nb.in.push_back({p, w});
  nb.out = nb.in;
  return nb;
}

inline int wrap(long long v, int n) noexcept {
  const long long m = v % n;
  return static_cast<int>(m < 0 ? m + n : m);
}

}  // namespace detail

/// The ring: rank i averages with i − 1 and i + 1, each weight 1/3 (1/2 with one peer
/// in a world of 2). Undirected, static; λ₂ = (1 + 2 cos(2π/n)) / 3, so consensus takes
/// O(n²) rounds.
///
///   gradcomm::gossip<gradcomm::identity_codec, gradcomm::local_transport,
///                    gradcomm::ring_topology> g(t);
struct ring_topology {
  static constexpr bool undirected = true;
  static constexpr bool time_varying = false;
  std::string_view name() const noexcept { return "ring"; }

  neighbourhood peers(int rank, int size, std::uint64_t /*round*/) const {
    detail::check_rank_in_world("ring_topology::peers", rank, size);
    return detail::uniform_undirected(detail::distinct_peers(
        {detail::wrap(rank - 1LL, size), detail::wrap(rank + 1LL, size)}, rank));
  }
};

/// The 2-D torus: ranks on a rows × cols grid (row-major) with wrap-around, each
/// averaging with up, down, left and right, weight 1/(d + 1) for its d distinct
/// neighbours. The grid is the most square factorisation of n (rows the largest
/// divisor ≤ √n): 16 → 4 × 4, 8 → 2 × 4, a prime n → 1 × n, which is the ring.
/// Undirected, static; the graph is vertex-transitive, so uniform weights are doubly
/// stochastic.
///
///   auto [rows, cols] = gradcomm::torus_topology::shape(12);  // 3 × 4
struct torus_topology {
  static constexpr bool undirected = true;
  static constexpr bool time_varying = false;
  std::string_view name() const noexcept { return "torus"; }

  /// The grid of a world of n ranks: {rows, cols}, rows ≤ cols, rows × cols == n.
  static constexpr std::pair<int, int> shape(int n) noexcept {
    int rows = 1;
    for (int r = 1; static_cast<long long>(r) * r <= n; ++r)
      if (n % r == 0) rows = r;
    return {rows, n / rows};
  }

  neighbourhood peers(int rank, int size, std::uint64_t /*round*/) const {
    detail::check_rank_in_world("torus_topology::peers", rank, size);
    // Plain variables, not a structured binding: C++20 lets a lambda capture a binding,
    // clang before 16 does not.
    const std::pair<int, int> grid = shape(size);
    const int rows = grid.first, cols = grid.second;
    const int r = rank / cols, c = rank % cols;
    auto at = [&](int rr, int cc) {
      return detail::wrap(rr, rows) * cols + detail::wrap(cc, cols);
    };
    return detail::uniform_undirected(
        detail::distinct_peers({at(r - 1, c), at(r + 1, c), at(r, c - 1), at(r, c + 1)}, rank));
  }
};

/// The one-peer exponential graph of Stochastic Gradient Push (Assran et al., 2019): in
/// round t rank i sends to i + 2^k and receives from i − 2^k (mod n), k = t mod ⌈log2 n⌉,
/// keeping half. Directed and time-varying: gossip uses push-sum on it. One message a
/// round each way; for n a power of two, ⌈log2 n⌉ rounds average exactly.
///
///   gradcomm::exponential_topology{}.peers(0, 8, 2).out;  // {{4, 0.5}}
struct exponential_topology {
  static constexpr bool undirected = false;
  static constexpr bool time_varying = true;
  std::string_view name() const noexcept { return "exponential"; }

  /// ⌈log2 n⌉ (0 for n = 1): the period of the cycle of powers of two.
  static constexpr int period(int n) noexcept {
    return n <= 1 ? 0 : static_cast<int>(std::bit_width(static_cast<unsigned>(n - 1)));
  }

  neighbourhood peers(int rank, int size, std::uint64_t round) const {
    detail::check_rank_in_world("exponential_topology::peers", rank, size);
    neighbourhood nb;
    if (size == 1) return nb;
    const int hop = 1 << static_cast<int>(round % static_cast<std::uint64_t>(period(size)));
    nb.self = 0.5;
    nb.out.push_back({detail::wrap(static_cast<long long>(rank) + hop, size), 0.5});
    nb.in.push_back({detail::wrap(static_cast<long long>(rank) - hop, size), 0.5});
    return nb;
  }
};

/// A fresh random perfect matching every round: the ranks of a seeded permutation of
/// round t are paired in order (0 with 1, 2 with 3, ...) and each pair averages, weight
/// 1/2; with n odd the last one sits the round out. Every rank draws the same
/// permutation (Philox keyed by the seed and the round), so partners always agree.
/// Undirected, time-varying.
///
///   gradcomm::random_matching_topology m{/*seed=*/42};
///   int partner = m.partner(rank, size, round);  // -1: sits out
struct random_matching_topology {
  static constexpr bool undirected = true;
  static constexpr bool time_varying = true;
  std::string_view name() const noexcept { return "random_matching"; }

  std::uint64_t seed = 0;

  /// The permutation of round `round` (Fisher–Yates, Philox words).
  std::vector<int> permutation(int size, std::uint64_t round) const {
    std::vector<int> p(static_cast<std::size_t>(std::max(size, 0)));
    for (int i = 0; i < size; ++i) p[static_cast<std::size_t>(i)] = i;
    const philox_stream s(seed, static_cast<std::uint32_t>(round),
                          static_cast<std::uint32_t>(round >> 32), 0x6d617463u /* "ctam" */);
    for (int i = size - 1; i > 0; --i) {
      // A 32-bit word scaled to [0, i]: bias below 2^-24 for any world that fits memory.
      const auto j = static_cast<std::size_t>(
          (static_cast<std::uint64_t>(s.at(static_cast<std::uint64_t>(i))) *
           static_cast<std::uint64_t>(i + 1)) >>
          32);
      std::swap(p[static_cast<std::size_t>(i)], p[j]);
    }
    return p;
  }

  /// rank's partner in round `round`, or -1 when it sits out.
  int partner(int rank, int size, std::uint64_t round) const {
    detail::check_rank_in_world("random_matching_topology::partner", rank, size);
    const std::vector<int> p = permutation(size, round);
    const auto at = static_cast<std::size_t>(std::find(p.begin(), p.end(), rank) - p.begin());
    const std::size_t mate = at ^ 1u;
    return mate < p.size() ? p[mate] : -1;
  }

  neighbourhood peers(int rank, int size, std::uint64_t round) const {
    const int mate = partner(rank, size, round);
    return detail::uniform_undirected(mate < 0 ? std::vector<int>{} : std::vector<int>{mate});
  }
};

/// Everyone with everyone, weight 1/n: one round averages exactly (λ₂ = 0), at n − 1
/// messages a rank. Undirected, static.
///
///   gradcomm::complete_topology{}.peers(0, 4, 0).self;  // 0.25
struct complete_topology {
  static constexpr bool undirected = true;
  static constexpr bool time_varying = false;
  std::string_view name() const noexcept { return "complete"; }

  neighbourhood peers(int rank, int size, std::uint64_t /*round*/) const {
    detail::check_rank_in_world("complete_topology::peers", rank, size);
    std::vector<int> all;
    for (int j = 0; j < size; ++j)
      if (j != rank) all.push_back(j);
    return detail::uniform_undirected(all);
  }
};

/// Any undirected graph you give, with Metropolis–Hastings weights
/// W_ij = 1 / (1 + max(d_i, d_j)) on its edges and W_ii = 1 − Σ_j W_ij: symmetric and
/// doubly stochastic on graphs that are not regular too, so averaging keeps the mean
/// exactly (uniform 1/(d + 1) weights would not). On a regular graph they are the
/// uniform weights. Static; it is for a world of exactly the graph's size.
///
///   gradcomm::graph_topology star(4, {{0, 1}, {0, 2}, {0, 3}});  // the hub weighs 1/4
struct graph_topology {
  static constexpr bool undirected = true;
  static constexpr bool time_varying = false;
  std::string_view name() const noexcept { return "graph"; }

  /// A graph on `size` ranks with the undirected `edges`; duplicates are merged. Throws
  /// invalid_argument for a self loop or a rank outside [0, size).
  graph_topology(int size, const std::vector<std::pair<int, int>>& edges) : adj_() {
    static constexpr const char* call = "graph_topology";
    if (size < 1)
      detail::throw_invalid_argument(call, "a graph of " + std::to_string(size) + " ranks");
    adj_.resize(static_cast<std::size_t>(size));
    for (const auto& [a, b] : edges) {
      if (a < 0 || a >= size || b < 0 || b >= size)
        detail::throw_invalid_argument(call, "edge {" + std::to_string(a) + ", " +
                                                 std::to_string(b) + "} outside a graph of " +
                                                 std::to_string(size) + " ranks");
      if (a == b) detail::throw_invalid_argument(call, "self loop at rank " + std::to_string(a));
      adj_[static_cast<std::size_t>(a)].push_back(b);
      adj_[static_cast<std::size_t>(b)].push_back(a);
    }
    for (std::size_t i = 0; i < adj_.size(); ++i)
      adj_[i] = detail::distinct_peers(std::move(adj_[i]), static_cast<int>(i));
  }

  /// The number of ranks of the graph.
  int size() const noexcept { return static_cast<int>(adj_.size()); }
  /// The neighbours of `rank`, sorted.
  const std::vector<int>& adjacent(int rank) const {
    return adj_.at(static_cast<std::size_t>(rank));
  }

  neighbourhood peers(int rank, int size, std::uint64_t /*round*/) const {
    static constexpr const char* call = "graph_topology::peers";
    detail::check_rank_in_world(call, rank, size);
    if (size != this->size())
      detail::throw_invalid_argument(call, "a graph of " + std::to_string(this->size()) +
                                               " ranks used in a world of " + std::to_string(size));
    neighbourhood nb;
    const auto& mine = adj_[static_cast<std::size_t>(rank)];
    double sum = 0.0;
    for (int j : mine) {
      const std::size_t dj = adj_[static_cast<std::size_t>(j)].size();
      const double w = 1.0 / static_cast<double>(1 + std::max(mine.size(), dj));
      nb.in.push_back({j, w});
      sum += w;
    }
    nb.self = 1.0 - sum;
    nb.out = nb.in;
    return nb;
  }

 private:
  std::vector<std::vector<int>> adj_;
};

static_assert(Topology<ring_topology>);
static_assert(Topology<torus_topology>);
static_assert(Topology<exponential_topology>);
static_assert(Topology<random_matching_topology>);
static_assert(Topology<complete_topology>);
static_assert(Topology<graph_topology>);

/// Round `round`'s mixing matrix of a world of `size` ranks, dense and row-major
/// (W[i × size + j] = W_ij), assembled from every rank's neighbourhood. Throws
/// invalid_argument naming the first rank whose `in` and `out` lists disagree with
/// another rank's (requirement 2 of Topology), or whose lists are unsorted, hold
/// duplicates, the rank itself or a weight that is not positive and finite. For
/// tests, benchmarks and the spectral analysis of a topology: O(size²).
///
///   std::vector<double> w = gradcomm::mixing_matrix(gradcomm::ring_topology{}, 8, 0);
template <Topology G>
std::vector<double> mixing_matrix(const G& topo, int size, std::uint64_t round) {
  static constexpr const char* call = "mixing_matrix";
  if (size < 1)
    detail::throw_invalid_argument(call, "a world of " + std::to_string(size) + " ranks");
  const auto n = static_cast<std::size_t>(size);
  std::vector<double> w(n * n, 0.0), col(n * n, 0.0);  // col: W as the out lists say
  std::vector<bool> seen_in(n * n, false), seen_out(n * n, false);
  auto check_list = [&](int i, const std::vector<peer_weight>& list, const char* which) {
    for (std::size_t k = 0; k < list.size(); ++k) {
      const auto [j, wt] = list[k];
      std::string defect;
      if (j < 0 || j >= size)
        defect = "names rank " + std::to_string(j);
      else if (j == i)
        defect = "names the rank itself";
      else if (!(wt > 0.0) || !std::isfinite(wt))
        defect = "gives rank " + std::to_string(j) + " the weight " + std::to_string(wt);
      else if (k > 0 && list[k - 1].rank >= j)
        defect = "is not sorted by rank without duplicates";
      if (!defect.empty())
        detail::throw_invalid_argument(
            call, std::string(topo.name()) + ": the " + which + " list of rank " +
                      std::to_string(i) + " in round " + std::to_string(round) + " " + defect);
    }
  };
  for (int i = 0; i < size; ++i) {
    const neighbourhood nb = topo.peers(i, size, round);
    check_list(i, nb.in, "in");
    check_list(i, nb.out, "out");
    const auto ui = static_cast<std::size_t>(i);
    w[ui * n + ui] = col[ui * n + ui] = nb.self;
    seen_in[ui * n + ui] = seen_out[ui * n + ui] = true;
    for (const auto& [j, wt] : nb.in) {
      w[ui * n + static_cast<std::size_t>(j)] = wt;
      seen_in[ui * n + static_cast<std::size_t>(j)] = true;
    }
    for (const auto& [j, wt] : nb.out) {
      col[static_cast<std::size_t>(j) * n + ui] = wt;
      seen_out[static_cast<std::size_t>(j) * n + ui] = true;
    }
  }
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j)
      if (i != j && (seen_in[i * n + j] != seen_out[i * n + j] || w[i * n + j] != col[i * n + j]))
        detail::throw_invalid_argument(
            call, std::string(topo.name()) + ", round " + std::to_string(round) + ": rank " +
                      std::to_string(i) + " receives from rank " + std::to_string(j) +
                      " with weight " + std::to_string(w[i * n + j]) + " but rank " +
                      std::to_string(j) + " sends to rank " + std::to_string(i) + " with weight " +
                      std::to_string(col[i * n + j]));
  return w;
}

}  // namespace v0
}  // namespace gradcomm

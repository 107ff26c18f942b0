// gradcomm/comm/detail/allreduce_sparse.hpp — the all-reduce of a sparse-entry codec
// (codec.hpp, T7): each round the cost rule below picks all-gather, dense, or an O(k)
// reduce-scatter that re-sparsifies (Ok-Topk, PPoPP 2022; SparCML), whose bytes per rank
// stay flat in the number of ranks.
//
// The O(k) round, k entries a rank (its payload decoded: its nonzeros):
//  1. every rank all-gathers k and 4N samples of its sorted indices (regular sampling);
//     from them every rank computes the same N regions of the index space, cut so that
//     each receives about Σk / N entries wherever the indices cluster (equal slices when
//     no rank sent anything: the fallback);
//  2. the entry counts per region are exchanged (alltoall), then the entries themselves
//     (alltoallv, 8 bytes an entry: u32 index, f32 value) go to the region's owner;
//  3. the owner sums, in rank order, its residual and the received entries over its
//     region, keeps the `keep` = ceil(ceil(Σk / N) / N) largest sums by magnitude (ties:
//     the lower index) and puts the rest back into its residual, which the next round's
//     sum over that index starts from (error feedback: nothing is lost, it is owed);
//  4. the kept entries are all-gathered (padded to `keep` each, index 0xffffffff) and
//     every rank writes them, in rank order, into its zeroed output: the same bits on
//     every rank.
// A rank sends at most k + keep·(N − 1) entries: with keep ≈ k / N, under 2k + 2k(N − 1)/N
// values (4-byte words), which is ≤ 6k(N − 1)/N for every N ≥ 2, and about 4k(N − 1)/N when
// each rank's entries spread over the regions; the payload size, samples and counts add
// (4(4N + 1) + 16)(N − 1) bytes, small beside k wherever the cost rule picks O(k) (the
// tests count them in). Measured at 1 % of 2^20 values (test_allreduce_sparse's table),
// bytes per rank for N = 2, 4, 8, 16: O(k) 84, 126, 148, 162 kB; all-gather 51, 153,
// 358, 767 kB; dense 4.2, 6.3, 7.3, 7.9 MB. A residual index of a region this rank no longer owns
// stays owed until it owns it again (the sum over ranks of residual + applied is what was
// contributed, exactly, whatever the regions).
//
// The cost rule (bytes a rank sends, each rank from the same all-gathered payload sizes s_r,
// so every rank picks the same): with N ranks, n values, total = Σ s_r and k̂ = Σ s_r / 4 / N
// (a bound on the mean entry count: every entry costs at least 4 bytes, T7),
//   all-gather  (N − 1)/N · total
//   dense       2 (N − 1)/N · 4n                       (a ring all-reduce of f32)
//   O(k)        8 (k̂ (N − 1)/N + keep (N − 1)) + 4(4N + 1)(N − 1) + 8(N − 1)
//               + 3 (N − 1) · ar_sparse_latency_bytes   (its three extra collectives)
// and the cheapest wins, all-gather on a tie with dense and O(k) only where it is strictly
// cheapest. So: all-gather for small N or very sparse payloads (latency), dense above a
// density of about 1/6 (all-gather beyond total > 8n, as before), O(k) in between where N
// is large. allreduce_options::sparse forces one of them.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/detail/allreduce_allgather.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The cost of one more message in the cost rule, in bytes: about 3 µs at 10 Gbit/s.
inline constexpr std::uint64_t ar_sparse_latency_bytes = 4096;

// One entry on the wire of the O(k) round.
struct ar_sparse_entry {
  std::uint32_t index;
  float value;
};
static_assert(sizeof(ar_sparse_entry) == 8);
inline constexpr std::uint32_t ar_sparse_pad = 0xffffffffu;

// Samples of its sorted indices each rank sends to place the region boundaries.
inline constexpr std::size_t ar_sparse_samples(int ranks) noexcept {
  return 4 * static_cast<std::size_t>(ranks);
}

// What each owner keeps of its region's sum: ceil(mean k / N), mean k = ceil(Σk / N).
inline std::size_t ar_sparse_keep(std::uint64_t sum_k, int ranks) noexcept {
  const auto r = static_cast<std::uint64_t>(ranks);
  const std::uint64_t mean = (sum_k + r - 1) / r;
  return static_cast<std::size_t>((mean + r - 1) / r);
}

// The bytes per rank of each algorithm, as the header's cost rule states them.
struct ar_sparse_costs {
  std::uint64_t allgather, dense, reduce_scatter;
};
inline ar_sparse_costs ar_sparse_cost(std::span<const std::size_t> sizes, std::size_t n) {
  const auto r = static_cast<std::uint64_t>(sizes.size());
  std::uint64_t total = 0;
  for (std::size_t s : sizes) total += s;
  if (r <= 1) return {0, 0, 0};
  const std::uint64_t k_mean = total / 4 / r;
  const std::uint64_t keep = ar_sparse_keep(total / 4, static_cast<int>(r));
  const std::uint64_t samples = ar_sparse_samples(static_cast<int>(r));
  return {total * (r - 1) / r, 2 * (r - 1) * 4 * n / r,
          8 * (k_mean * (r - 1) / r + keep * (r - 1)) + 4 * (samples + 1) * (r - 1) + 8 * (r - 1) +
              3 * (r - 1) * ar_sparse_latency_bytes};
}

// The round's algorithm: the forced one, or the cheapest by the cost rule. O(k) needs
// indices that fit 32 bits.
inline ar_algorithm ar_sparse_choose(sparse_allreduce forced, std::span<const std::size_t> sizes,
                                     std::size_t n) {
  const bool fits = n < ar_sparse_pad;
  switch (forced) {
    case sparse_allreduce::allgather: return ar_algorithm::allgather;
    case sparse_allreduce::dense: return ar_algorithm::dense;
    case sparse_allreduce::reduce_scatter:
      return fits ? ar_algorithm::sparse_reduce_scatter : ar_algorithm::allgather;
    case sparse_allreduce::automatic: break;
  }
  if (sizes.size() <= 1) return ar_algorithm::allgather;
  const ar_sparse_costs c = ar_sparse_cost(sizes, n);
  if (fits && c.reduce_scatter < std::min(c.allgather, c.dense))
    return ar_algorithm::sparse_reduce_scatter;
  return c.allgather > c.dense ? ar_algorithm::dense : ar_algorithm::allgather;
}

// The N + 1 region boundaries from every rank's record [k, samples...] (ranks × (S + 1)
// u32): sample j of a rank with k entries stands for its entries [j k / S, (j + 1) k / S);
// region b starts at the first sample (in index order, then rank, then j) whose block's
// middle lies past b Σk / N of the weight. Equal slices (ar_chunk) when Σk is 0.
inline void ar_sparse_bounds(std::span<const std::uint32_t> records, int ranks, std::size_t n,
                             std::vector<std::size_t>& bounds,
                             std::vector<std::pair<std::uint32_t, std::uint64_t>>& scratch) {
  const std::size_t s = ar_sparse_samples(ranks), ur = static_cast<std::size_t>(ranks);
  bounds.assign(ur + 1, 0);
  bounds[ur] = n;
  std::uint64_t sum_k = 0;
  scratch.clear();
  for (std::size_t r = 0; r < ur; ++r) {
    const std::uint64_t k = records[r * (s + 1)];
    sum_k += k;
    if (k == 0) continue;
    for (std::size_t j = 0; j < s; ++j) {
      const std::uint64_t w = (j + 1) * k / s - j * k / s;
      if (w != 0) scratch.emplace_back(records[r * (s + 1) + 1 + j], w);
    }
  }
  if (sum_k == 0) {
    for (std::size_t b = 1; b < ur; ++b) bounds[b] = ar_chunk(n, ranks, static_cast<int>(b)).lo;
    return;
  }
  // Stable: equal indices keep rank and sample order.
  std::stable_sort(scratch.begin(), scratch.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::uint64_t before = 0;  // the weight of the samples before scratch[i]
  std::size_t i = 0;
  for (std::size_t b = 1; b < ur; ++b) {
    // Region b starts at the first sample whose block's middle lies past b Σk / N.
    const std::uint64_t target2 = 2 * b * sum_k / ur;  // twice the target
    while (i < scratch.size() && 2 * before + scratch[i].second < target2)
      before += scratch[i++].second;
    bounds[b] = std::max<std::size_t>(bounds[b - 1], i < scratch.size() ? scratch[i].first : n);
  }
}

// The all-gather engine (prepare, the payload sizes, all-gather and dense rounds) with the
// O(k) round beside them and the cost rule choosing.
template <Codec C, Transport T, class Ctx = host_context>
class allreduce_sparse : public allreduce_allgather<C, T, Ctx> {
  static_assert(sparse_entry_codec<C>, "allreduce_sparse: C must declare sparse_entries (T7)");
  static_assert(std::same_as<Ctx, host_context>,
                "allreduce_sparse: the O(k) round runs on the host only for now");
  using base = allreduce_allgather<C, T, Ctx>;
  using base::ctx_, base::shape_, base::codec_, base::decoder_, base::ws_, base::mine_;

 public:
  // The family stays allgather at compile time (base::algorithm); each round's choice is in
  // the round's tally (st.path).
  using base::base;

  // Finishes the round: `out` receives the reduction; st.path says which algorithm ran.
  template <class Tally>
  void finish(T& t, view_in<Ctx, const float>, view_in<Ctx, float> out, reduction op, std::uint32_t,
              std::uint64_t, Tally& st) {
    const std::size_t total = this->gather_sizes(t);
    const ar_algorithm path = ar_sparse_choose(shape_.sparse, ws_.counts, shape_.n);
    st.path = path;
    if (path == ar_algorithm::sparse_reduce_scatter)
      reduce_scatter(t, std::span<const std::byte>(ws_.local.data(), mine_), out,
                     ar_scale_of(op, shape_.ranks), st);
    else
      this->finish_gathered(t, out, op, total, path == ar_algorithm::dense && shape_.ranks > 1, st);
  }

  double residual_norm() const {
    double s = std::pow(base::residual_norm(), 2);
    for (float e : residual_) s += static_cast<double>(e) * e;
    return std::sqrt(s);
  }

  // The owner's residual over the whole bucket (zeros where it owes nothing; empty before
  // the first O(k) round), for tests and statistics.
  std::span<const float> owner_residual() const noexcept { return residual_; }
  // The last O(k) round's region boundaries (N + 1) and the entries this rank received.
  std::span<const std::size_t> regions() const noexcept { return bounds_; }
  std::size_t received_entries() const noexcept { return received_; }

 private:
  template <class Tally>
  void reduce_scatter(T& t, std::span<const std::byte> mine, view_in<Ctx, float> out, float a,
                      Tally& st) {
    const std::size_t n = shape_.n, ur = static_cast<std::size_t>(shape_.ranks),
                      me = static_cast<std::size_t>(shape_.rank),
                      s = ar_sparse_samples(shape_.ranks);
    if (residual_.size() != n) {
      residual_.assign(n, 0.0f);
      dense_.resize(n);
    }
    // 1. This rank's entries, in index order: its payload's nonzeros.
    entries_.clear();
    {
      scoped_timer d(st.decode_ns);
      decoder_.decode(mine, host_view<float>(dense_.data(), n));
      for (std::size_t i = 0; i < n; ++i)
        if (dense_[i] != 0.0f) entries_.push_back({static_cast<std::uint32_t>(i), dense_[i]});
    }
    const std::size_t k = entries_.size();
    record_.assign(s + 1, 0);
    record_[0] = static_cast<std::uint32_t>(k);
    for (std::size_t j = 0; j < s && k != 0; ++j) record_[1 + j] = entries_[j * k / s].index;
    records_.resize(ur * (s + 1));
    t.allgather(std::as_bytes(std::span<const std::uint32_t>(record_)),
                std::as_writable_bytes(std::span<std::uint32_t>(records_)));
    std::uint64_t sum_k = 0;
    for (std::size_t r = 0; r < ur; ++r) {
      const std::uint32_t kr = records_[r * (s + 1)];
      if (kr > n)
        throw decode_error("allreduce",
                           "rank " + std::to_string(r) + " announced " + std::to_string(kr) +
                               " entries of " + std::to_string(n),
                           shape_.rank);
      sum_k += kr;
    }
    ar_sparse_bounds(records_, shape_.ranks, n, bounds_, samples_);
    // 2. Entries to their regions' owners.
    send_counts_.assign(ur, 0);
    {
      std::size_t at = 0;
      for (std::size_t r = 0; r < ur; ++r) {
        const std::size_t from = at;
        while (at < k && entries_[at].index < bounds_[r + 1]) ++at;
        send_counts_[r] = (at - from) * sizeof(ar_sparse_entry);
      }
    }
    recv_counts_.assign(ur, 0);
    t.alltoall(std::as_bytes(std::span<const std::size_t>(send_counts_)),
               std::as_writable_bytes(std::span<std::size_t>(recv_counts_)));
    std::size_t recv_total = 0;
    const std::size_t region = bounds_[me + 1] - bounds_[me];
    for (std::size_t r = 0; r < ur; ++r) {
      if (recv_counts_[r] % sizeof(ar_sparse_entry) != 0 ||
          recv_counts_[r] / sizeof(ar_sparse_entry) > region)
        throw decode_error("allreduce",
                           "rank " + std::to_string(r) + " announced " +
                               std::to_string(recv_counts_[r]) +
                               " bytes of entries for a region of " + std::to_string(region),
                           shape_.rank);
      recv_total += recv_counts_[r];
    }
    received_ = recv_total / sizeof(ar_sparse_entry);
    inbox_.resize(received_);
    t.alltoallv(std::as_bytes(std::span<const ar_sparse_entry>(entries_)),
                std::span<const std::size_t>(send_counts_),
                std::as_writable_bytes(std::span<ar_sparse_entry>(inbox_)),
                std::span<const std::size_t>(recv_counts_));
    // 3. The owner's sum: its residual, then the received entries in rank order.
    const std::size_t keep = ar_sparse_keep(sum_k, shape_.ranks);
    const std::size_t lo = bounds_[me], hi = bounds_[me + 1];
    kept_.clear();
    {
      scoped_timer d(st.decode_ns);
      float* acc = dense_.data();
      std::copy(residual_.begin() + static_cast<std::ptrdiff_t>(lo),
                residual_.begin() + static_cast<std::ptrdiff_t>(hi), acc + lo);
      std::fill(residual_.begin() + static_cast<std::ptrdiff_t>(lo),
                residual_.begin() + static_cast<std::ptrdiff_t>(hi), 0.0f);
      for (const ar_sparse_entry& e : inbox_) {
        if (e.index < lo || e.index >= hi || !std::isfinite(e.value))
          throw decode_error("allreduce",
                             "an entry at " + std::to_string(e.index) + " outside the region [" +
                                 std::to_string(lo) + ", " + std::to_string(hi) + ") or not finite",
                             shape_.rank);
        acc[e.index] += e.value;
      }
      for (std::size_t i = lo; i < hi; ++i)
        if (acc[i] != 0.0f) kept_.push_back({static_cast<std::uint32_t>(i), acc[i]});
      if (kept_.size() > keep) {
        auto larger = [](const ar_sparse_entry& x, const ar_sparse_entry& y) {
          const float ax = std::fabs(x.value), ay = std::fabs(y.value);
          return ax != ay ? ax > ay : x.index < y.index;
        };
        std::nth_element(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(keep),
                         kept_.end(), larger);
        for (std::size_t j = keep; j < kept_.size(); ++j)
          residual_[kept_[j].index] = kept_[j].value;
        kept_.resize(keep);
        std::sort(kept_.begin(), kept_.end(),
                  [](const auto& x, const auto& y) { return x.index < y.index; });
      }
      kept_.resize(keep, ar_sparse_entry{ar_sparse_pad, 0.0f});
    }
    // 4. Every owner's kept entries to every rank, written in rank order.
    gathered_.resize(keep * ur);
    t.allgather(std::as_bytes(std::span<const ar_sparse_entry>(kept_)),
                std::as_writable_bytes(std::span<ar_sparse_entry>(gathered_)));
    scoped_timer d(st.decode_ns);
    zero(ctx_, out);
    for (std::size_t r = 0; r < ur; ++r)
      for (std::size_t j = 0; j < keep; ++j) {
        const ar_sparse_entry& e = gathered_[r * keep + j];
        if (e.index == ar_sparse_pad) continue;
        if (e.index < bounds_[r] || e.index >= bounds_[r + 1])
          throw decode_error("allreduce",
                             "rank " + std::to_string(r) + " sent an entry at " +
                                 std::to_string(e.index) + " outside its region",
                             shape_.rank);
        out.data()[e.index] = e.value;
      }
    if (a != 1.0f) scale(ctx_, out, a);
  }

  std::size_t received_ = 0;
  // The O(k) round's buffers (host: the index work runs on the host).
  std::vector<float> residual_, dense_;
  std::vector<ar_sparse_entry> entries_, inbox_, kept_, gathered_;
  std::vector<std::uint32_t> record_, records_;
  std::vector<std::size_t> bounds_, send_counts_, recv_counts_;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> samples_;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/comm/detail/allreduce_common.hpp — what the all-reduce's algorithms share: the
// chunks a bucket is cut into, the choice of algorithm from the codec's and transport's
// traits, the shape of one bucket's reduction, stream keys, and the per-round tallies.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

namespace gradcomm {
inline namespace v0 {

/// Which algorithm the buckets of a sparse-entry codec (codec.hpp, T7: top-k, threshold,
/// with or without error feedback or DGC) take each round (allreduce_options::sparse):
/// `automatic` by the cost rule of comm/detail/allreduce_sparse.hpp, or always one of
/// `allgather` (every rank receives every payload), `reduce_scatter` (O(k) per rank:
/// regions summed and re-sparsified by their owners) or `dense` (each rank decodes its
/// payload, the f32 values are all-reduced). Other codecs ignore it.
///
///   gradcomm::allreduce_options o{.sparse = gradcomm::sparse_allreduce::reduce_scatter};
enum class sparse_allreduce : unsigned char { automatic, allgather, reduce_scatter, dense };

namespace detail {

inline constexpr std::size_t allreduce_align = 256;

// Chunk i of n elements cut into `parts`, boundaries on multiples of allreduce_align.
struct ar_range {
  std::size_t lo, hi;
  std::size_t size() const noexcept { return hi - lo; }
};
inline ar_range ar_chunk(std::size_t n, int parts, int i) noexcept {
  const std::size_t units = (n + allreduce_align - 1) / allreduce_align;
  const auto p = static_cast<std::size_t>(parts), ui = static_cast<std::size_t>(i);
  const std::size_t base = units / p, extra = units % p;
  const std::size_t lo = (base * ui + std::min(ui, extra)) * allreduce_align;
  const std::size_t hi = lo + (base + (ui < extra ? 1 : 0)) * allreduce_align;
  return {std::min(lo, n), std::min(hi, n)};
}

template <class T, class E>
concept reduces_natively =
    !std::is_void_v<E> && requires(T & t, std::span<const E> in, std::span<E> out) {
  t.allreduce(in, out, reduce_op::sum);
};

// The algorithms; the last two only as a round's choice of a variable-size codec's bucket
// (bucket_stats::algorithm): dense, the f32 all-reduce of the decoded payloads, and
// sparse_reduce_scatter, the O(k) scheme of comm/detail/allreduce_sparse.hpp.
enum class ar_algorithm {
  native,
  scatter_reduce_allgather,
  allgather,
  two_round,
  dense,
  sparse_reduce_scatter
};

// "allgather", for messages and tables.
inline const char* ar_algorithm_name(ar_algorithm a) noexcept {
  switch (a) {
    case ar_algorithm::native: return "native";
    case ar_algorithm::scatter_reduce_allgather: return "scatter_reduce_allgather";
    case ar_algorithm::allgather: return "allgather";
    case ar_algorithm::two_round: return "two_round";
    case ar_algorithm::dense: return "dense";
    case ar_algorithm::sparse_reduce_scatter: return "sparse_reduce_scatter";
  }
  return "?";
}

template <Codec C, Transport T>
constexpr ar_algorithm algorithm_for() {
  if constexpr (TwoRoundCodec<C>) {
    return ar_algorithm::two_round;
  } else if constexpr (C::traits.linear && reduces_natively<T, linear_element_t<C>>) {
    return ar_algorithm::native;
  } else if constexpr (C::traits.fixed_size) {
    return ar_algorithm::scatter_reduce_allgather;
  } else {
    return ar_algorithm::allgather;
  }
}

// One bucket's reduction: n values over `ranks` ranks, this one `rank`; `id` is the
// bucket's index (it keys the codecs' streams); `sparse` the choice of a sparse-entry
// codec's algorithm (allreduce_options::sparse).
struct ar_shape {
  std::size_t n;
  int ranks, rank;
  std::uint32_t id;
  sparse_allreduce sparse = sparse_allreduce::automatic;
};

// The factor a round's sum is scaled by: 1/ranks for the mean, 1 for the sum.
inline float ar_scale_of(reduction op, int ranks) noexcept {
  return op == reduction::mean ? 1.0f / static_cast<float>(ranks) : 1.0f;
}

// Stream keys: bucket id in the high 16 bits, the stage and the chunk below.
inline std::uint32_t ar_stream_bucket(const ar_shape& s, int stage, int chunk) noexcept {
  return (s.id << 16) | (static_cast<std::uint32_t>(stage) << 15) |
         (static_cast<std::uint32_t>(chunk) & 0x7fffu);
}
template <Codec C>
void ar_set_stream(C& c, const ar_shape& s, std::uint64_t seed, std::uint32_t step,
                   std::uint32_t bucket) {
  if constexpr (StochasticCodec<C>)
    c.set_stream(stream_key{seed, step, static_cast<std::uint32_t>(s.rank), bucket});
}

// The norm of the codecs' error-feedback states together: the root of the sum of their
// ||e||² (0 for codecs without one), `a`'s then `b`'s.
template <Codec C>
double ar_residual_norm(std::span<const C> a, std::span<const C> b = {}) {
  double s = 0.0;
  for (const C& c : a) s += std::pow(residual_norm_of(c), 2);
  for (const C& c : b) s += std::pow(residual_norm_of(c), 2);
  return std::sqrt(s);
}

// A registered tensor: the trainer's buffer and its name (for errors).
struct ar_tensor {
  host_view<float> view;
  std::string name;
};

// Per-round tallies the algorithms add to (the communication thread's own).
struct round_tally {
  std::atomic<std::int64_t> encode_ns{0}, decode_ns{0};
  std::uint64_t dense_rounds = 0;
  std::optional<ar_algorithm> path;  // the round's algorithm where the engine chose one
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

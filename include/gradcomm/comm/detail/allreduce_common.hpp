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
#include <span>
#include <string>
#include <type_traits>

namespace gradcomm {
inline namespace v0 {
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

enum class ar_algorithm { native, scatter_reduce_allgather, allgather, two_round };

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
// bucket's index (it keys the codecs' streams).
struct ar_shape {
  std::size_t n;
  int ranks, rank;
  std::uint32_t id;
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
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

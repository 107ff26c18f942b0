// gradcomm/comm/detail/buckets.hpp — the all-reduce's buckets: the algorithm that
// reduces a bucket of codec C over transport T (bucket_engine), and the segments that map
// registered tensors into a bucket's fused buffer and back.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/detail/allreduce_allgather.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/allreduce_native.hpp>
#include <gradcomm/comm/detail/allreduce_sparse.hpp>
#include <gradcomm/comm/detail/allreduce_sra.hpp>
#include <gradcomm/comm/detail/allreduce_two_round.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/transport/transport.hpp>

#include <cstddef>
#include <span>
#include <type_traits>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The all-gather family's engine: a sparse-entry codec's (codec.hpp, T7) picks all-gather,
// dense or the O(k) reduce-scatter each round (allreduce_sparse.hpp); any other's
// all-gathers, dense past the break-even (allreduce_allgather.hpp).
template <Codec C, Transport T, class Ctx>
using allgather_engine = std::conditional_t<sparse_entry_codec<C>, allreduce_sparse<C, T, Ctx>,
                                            allreduce_allgather<C, T, Ctx>>;

// One bucket's reduction with codec C: the algorithm its traits call for
// (algorithm_for). Each has the same calls: construction (ctx, codec prototype, shape),
// prepare() on the caller's thread (encoding), finish() on the communication thread (the
// transport, decoding), residual_norm().
template <Codec C, Transport T, class Ctx = host_context>
using bucket_engine = std::conditional_t<
    algorithm_for<C, T>() == ar_algorithm::native, allreduce_native<C, T, Ctx>,
    std::conditional_t<
        algorithm_for<C, T>() == ar_algorithm::scatter_reduce_allgather, allreduce_sra<C, T, Ctx>,
        std::conditional_t<algorithm_for<C, T>() == ar_algorithm::two_round,
                           allreduce_two_round<C, T, Ctx>, allgather_engine<C, T, Ctx>>>>;

// tensor[offset, offset + len) ↔ bucket[at, at + len)
struct ar_segment {
  std::size_t tensor, offset, len, at;
};

// The bucket's fused buffer := its segments of the tensors.
template <class Ctx>
void ar_gather(const Ctx& ctx, std::span<const ar_segment> segments,
               std::span<const ar_tensor> tensors, view_in<Ctx, float> fused) {
  for (const ar_segment& s : segments)
    copy(ctx, fused.subview(s.at, s.len),
         view_in<Ctx, const float>(tensors[s.tensor].view.subview(s.offset, s.len)));
}

// The tensors' segments := the bucket's fused buffer.
template <class Ctx>
void ar_scatter(const Ctx& ctx, std::span<const ar_segment> segments,
                std::span<const ar_tensor> tensors, view_in<Ctx, const float> fused) {
  for (const ar_segment& s : segments)
    copy(ctx, tensors[s.tensor].view.subview(s.offset, s.len), fused.subview(s.at, s.len));
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/comm/detail/allreduce_two_round.hpp — the all-reduce of a two-round codec
// (PowerSGD, codec/codec.hpp's TwoRoundCodec): the transport's all-reduce of the factor
// P, then of Q computed from the summed P, then the decompression.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/transport/transport.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// One bucket's reduction in two rounds, through the codec's round API: compute_p(in, P)
// before the first (prepare), compute_q(in, P, Q) between them, decompress(in, P, Q, out)
// after the second.
template <Codec C, Transport T, class Ctx = host_context>
class allreduce_two_round {
 public:
  static constexpr ar_algorithm algorithm = ar_algorithm::two_round;

  allreduce_two_round(const Ctx& ctx, const C& proto, ar_shape shape)
      : ctx_(ctx), shape_(shape), codec_(proto) {
    p_.resize(proto.p_floats(shape.n));
    q_.resize(proto.q_floats(shape.n));
  }

  // Computes the bucket's P factor for this round; returns the bytes of both factors.
  std::size_t prepare(view_in<Ctx, const float> in, std::uint32_t, std::uint64_t) {
    codec_.compute_p(in, view_of(ctx_, p_));
    return (p_.size() + q_.size()) * sizeof(float);
  }

  // Finishes the round: `in` is what prepare() saw, `out` (may be `in`) receives the
  // reduction. Adds computing Q to the encoding time of `st`, the rest to decoding.
  template <class Tally>
  void finish(T& t, view_in<Ctx, const float> in, view_in<Ctx, float> out, reduction op,
              std::uint32_t, std::uint64_t, Tally& st) {
    const float a = ar_scale_of(op, shape_.ranks);
    t.allreduce(std::span<const float>(p_), std::span<float>(p_), reduce_op::sum);
    {
      scoped_timer e(st.encode_ns);
      codec_.compute_q(in, view_of(ctx_, p_), view_of(ctx_, q_));
    }
    t.allreduce(std::span<const float>(q_), std::span<float>(q_), reduce_op::sum);
    scoped_timer d(st.decode_ns);
    codec_.decompress(in, view_in<Ctx, const float>(view_of(ctx_, p_)),
                      view_in<Ctx, const float>(view_of(ctx_, q_)), out);
    if (a != 1.0f) scale(ctx_, out, a);
  }

  double residual_norm() const { return ar_residual_norm(std::span<const C>(&codec_, 1)); }

 private:
  Ctx ctx_;
  ar_shape shape_;
  C codec_;
  staging_buffer<Ctx, float> p_, q_;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

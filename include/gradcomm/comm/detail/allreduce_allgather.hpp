// gradcomm/comm/detail/allreduce_allgather.hpp — the all-reduce of a variable-size
// (sparse) codec: all-gather(v) of the payloads and decode_add in rank order
// (comm/allgather_reduce.hpp's two halves). When the payloads add up to more than the f32
// bucket twice over (the volume of a ring all-reduce of f32), each rank decodes its own
// payload and the dense values are all-reduced instead: same result, fewer bytes.
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

// The all-gather's break-even: a ring all-reduce of f32 moves 2(N−1)/N × 4n bytes per rank;
// the all-gather brings each rank the others' payloads, about (N−1)/N × `total` (the sum of
// every rank's payload bytes). Past it the payloads are decoded and the dense values
// all-reduced instead. The all-reduce asks it each round; the advisor (comm/advise.hpp)
// predicts with it.
constexpr bool ar_allgather_goes_dense(std::size_t total, std::size_t n, int ranks) noexcept {
  return ranks > 1 && total > 2 * n * sizeof(float);
}

template <Codec C, Transport T, class Ctx = host_context>
class allreduce_allgather {
 public:
  static constexpr ar_algorithm algorithm = ar_algorithm::allgather;

  allreduce_allgather(const Ctx& ctx, const C& proto, ar_shape shape)
      : ctx_(ctx), shape_(shape), codec_(proto), decoder_(proto) {
    ws_.local.resize(proto.max_encoded_bytes(shape.n));
  }

  // Encodes `in` (the bucket's values) for round `step`; returns the payload bytes.
  std::size_t prepare(view_in<Ctx, const float> in, std::uint32_t step, std::uint64_t seed) {
    ar_set_stream(codec_, shape_, seed, step, ar_stream_bucket(shape_, 0, 0));
    mine_ = codec_.encode(in, std::span<std::byte>(ws_.local));
    return mine_;
  }

  // Finishes the round: `out` receives the reduction. Adds decoding time to `st`, and a
  // dense round to st.dense_rounds when the payloads went past the break-even.
  template <class Tally>
  void finish(T& t, view_in<Ctx, const float>, view_in<Ctx, float> out, reduction op, std::uint32_t,
              std::uint64_t, Tally& st) {
    const std::size_t total = gather_sizes(t);
    finish_gathered(t, out, op, total, ar_allgather_goes_dense(total, shape_.n, shape_.ranks), st);
  }

  double residual_norm() const { return ar_residual_norm(std::span<const C>(&codec_, 1)); }

 protected:  // allreduce_sparse.hpp adds its O(k) round to these
  // The first half of the round: every rank's payload size (ws_.counts); returns the total.
  std::size_t gather_sizes(T& t) {
    return allgather_payload_sizes(t, mine_, decoder_.max_encoded_bytes(shape_.n), shape_.n, ws_,
                                   "allreduce");
  }

  // The second half: `dense`, each rank decodes its own payload and the dense values are
  // all-reduced (a dense round in st.dense_rounds); otherwise the payloads (`total` bytes)
  // are all-gathered and decoded in rank order.
  template <class Tally>
  void finish_gathered(T& t, view_in<Ctx, float> out, reduction op, std::size_t total, bool dense,
                       Tally& st) {
    const float a = ar_scale_of(op, shape_.ranks);
    const std::size_t n = shape_.n;
    const auto mine = std::span<const std::byte>(ws_.local.data(), mine_);
    if (dense) {
      {
        scoped_timer d(st.decode_ns);
        decoder_.decode(mine, out);
      }
      st.dense_rounds += 1;
      t.allreduce(std::span<const float>(out.data(), n), std::span<float>(out.data(), n),
                  reduce_op::sum);
      scoped_timer d(st.decode_ns);
      if (a != 1.0f) scale(ctx_, out, a);
      return;
    }
    allgather_payloads_decode_add(ctx_, decoder_, t, mine, total, out, ws_, a, st.decode_ns);
  }

  Ctx ctx_;
  ar_shape shape_;
  C codec_, decoder_;
  basic_allgather_workspace<Ctx> ws_;  // ws_.local: this rank's payload
  std::size_t mine_ = 0;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

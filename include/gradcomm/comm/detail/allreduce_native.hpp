// gradcomm/comm/detail/allreduce_native.hpp — the all-reduce of a linear codec whose
// encoded elements the transport sums itself (identity f32 always; f16 / bf16 where the
// transport reduces them): the transport's own all-reduce on the encoded form.
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

// One bucket's reduction by the transport's all-reduce. A value codec (its payload would
// be the values) sums the values as they are; another linear codec encodes, the transport
// sums the payload's body of E elements in place, and the sum is decoded.
template <Codec C, Transport T, class Ctx = host_context>
class allreduce_native {
 public:
  static constexpr ar_algorithm algorithm = ar_algorithm::native;

  allreduce_native(const Ctx& ctx, const C& proto, ar_shape shape)
      : ctx_(ctx), shape_(shape), codec_(proto), decoder_(proto) {
    if constexpr (!value_codec<C>) send_.resize(proto.max_encoded_bytes(shape.n));
  }

  // Encodes `in` (the bucket's values) for round `step`; returns the payload bytes.
  std::size_t prepare(view_in<Ctx, const float> in, std::uint32_t step, std::uint64_t seed) {
    if constexpr (value_codec<C>) {
      return shape_.n * sizeof(float);
    } else {
      ar_set_stream(codec_, shape_, seed, step, ar_stream_bucket(shape_, 0, 0));
      mine_ = codec_.encode(in, std::span<std::byte>(send_));
      return mine_;
    }
  }

  // Finishes the round: `in` is what prepare() saw, `out` (may be `in`) receives the
  // reduction. Adds decoding time to `st`.
  template <class Tally>
  void finish(T& t, view_in<Ctx, const float> in, view_in<Ctx, float> out, reduction op,
              std::uint32_t, std::uint64_t, Tally& st) {
    const std::size_t n = shape_.n;
    const float a = ar_scale_of(op, shape_.ranks);
    if constexpr (value_codec<C>) {  // the payload would be the values: sum them as they are
      t.allreduce(std::span<const float>(in.data(), n), std::span<float>(out.data(), n),
                  reduce_op::sum);
      scoped_timer d(st.decode_ns);
      if (a != 1.0f) scale(ctx_, out, a);
    } else {
      using E = linear_element_t<C>;
      const std::size_t head = mine_ - n * sizeof(E);
      auto body = std::span<E>(reinterpret_cast<E*>(send_.data() + head), n);
      t.allreduce(std::span<const E>(body), body, reduce_op::sum);
      scoped_timer d(st.decode_ns);
      decoder_.decode(std::span<const std::byte>(send_.data(), mine_), out);
      if (a != 1.0f) scale(ctx_, out, a);
    }
  }

  double residual_norm() const { return ar_residual_norm(std::span<const C>(&codec_, 1)); }

 private:
  Ctx ctx_;
  ar_shape shape_;
  C codec_, decoder_;
  staging_buffer<Ctx, std::byte> send_;
  std::size_t mine_ = 0;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

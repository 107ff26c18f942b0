// gradcomm/comm/detail/allreduce_sra.hpp — scatter-reduce-allgather, the all-reduce of a
// fixed-size codec: every rank encodes N chunks (chunk j with its own codec state),
// all-to-all, decode_add the N payloads of its chunk in rank order, re-encode the reduced
// chunk with its own second codec state (its error feedback), all-gather, decode. Each
// rank sends the payload of N-1 chunks twice: 2(N-1)/N of the compressed bucket.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

template <Codec C, Transport T, class Ctx = host_context>
class allreduce_sra {
 public:
  static constexpr ar_algorithm algorithm = ar_algorithm::scatter_reduce_allgather;

  allreduce_sra(const Ctx& ctx, const C& proto, ar_shape shape)
      : ctx_(ctx), shape_(shape), decoder_(proto), reduced_codec_(proto) {
    const int ranks = shape.ranks;
    for (int j = 0; j < ranks; ++j) chunk_codecs_.push_back(proto);
    offsets_.resize(static_cast<std::size_t>(ranks) + 1);
    sizes_.resize(static_cast<std::size_t>(ranks));
    std::size_t at = 0;
    for (int j = 0; j < ranks; ++j) {
      offsets_[static_cast<std::size_t>(j)] = at;
      at += proto.max_encoded_bytes(ar_chunk(shape.n, ranks, j).size());
    }
    offsets_.back() = at;
    send_.resize(at);
  }

  // Encodes the N chunks of `in` (the bucket's values) for round `step`, each with its
  // own codec state; returns the payload bytes.
  std::size_t prepare(view_in<Ctx, const float> in, std::uint32_t step, std::uint64_t seed) {
    std::size_t total = 0;
    for (int j = 0; j < shape_.ranks; ++j) {
      const auto uj = static_cast<std::size_t>(j);
      const ar_range c = ar_chunk(shape_.n, shape_.ranks, j);
      ar_set_stream(chunk_codecs_[uj], shape_, seed, step, ar_stream_bucket(shape_, 0, j));
      sizes_[uj] = chunk_codecs_[uj].encode(
          in.subview(c.lo, c.size()),
          std::span<std::byte>(send_.data() + offsets_[uj], offsets_[uj + 1] - offsets_[uj]));
      total += sizes_[uj];
    }
    return total;
  }

  // Finishes the round: `out` receives the reduction. Adds stage-2 encoding and decoding
  // time to `st`.
  template <class Tally>
  void finish(T& t, view_in<Ctx, const float>, view_in<Ctx, float> out, reduction op,
              std::uint32_t step, std::uint64_t seed, Tally& st) {
    const float a = ar_scale_of(op, shape_.ranks);
    const auto ur = static_cast<std::size_t>(shape_.ranks),
               me = static_cast<std::size_t>(shape_.rank);
    // Fixed size: every rank's payload for a chunk has the size of ours for it.
    const std::size_t mine_size = sizes_[me];
    recv_.resize(std::max(recv_.size(), mine_size * ur));
    counts_.assign(ur, mine_size);
    packed_.resize(std::max(packed_.size(), offsets_.back()));
    // The payloads sit at offsets_ with gaps; alltoallv wants them one after another.
    std::size_t at = 0;
    for (std::size_t j = 0; j < ur; ++j) {
      if (at != offsets_[j])
        copy_overlapping(ctx_, view_of(ctx_, send_).subview(at, sizes_[j]),
                         view_in<Ctx, const std::byte>(send_.data() + offsets_[j], sizes_[j]));
      at += sizes_[j];
    }
    t.alltoallv(std::span<const std::byte>(send_.data(), at), std::span<const std::size_t>(sizes_),
                std::span<std::byte>(recv_.data(), mine_size * ur),
                std::span<const std::size_t>(counts_));
    const ar_range mine = ar_chunk(shape_.n, shape_.ranks, shape_.rank);
    acc_.resize(mine.size());
    const auto acc = view_of(ctx_, acc_);
    zero(ctx_, acc);
    {
      scoped_timer d(st.decode_ns);
      for (std::size_t r = 0; r < ur; ++r)
        decoder_.decode_add(std::span<const std::byte>(recv_.data() + r * mine_size, mine_size),
                            acc);
      if (a != 1.0f) scale(ctx_, acc, a);
    }
    std::size_t reduced;
    {
      scoped_timer e(st.encode_ns);
      ar_set_stream(reduced_codec_, shape_, seed, step, ar_stream_bucket(shape_, 1, shape_.rank));
      reduced =
          reduced_codec_.encode(view_in<Ctx, const float>(acc), std::span<std::byte>(packed_));
    }
    if (reduced != mine_size)
      throw error(make_error_code(errc::internal), "allreduce", shape_.rank,
                  "codec " + std::string(codec_name(C::id)) +
                      " is fixed-size but encoded a chunk in " + std::to_string(reduced) +
                      " bytes, then in " + std::to_string(mine_size));
    // Every chunk's payload size is sizes_[j] (our stage-1 encoding of the same length).
    gathered_.resize(std::max(gathered_.size(), at));
    t.allgatherv(std::span<const std::byte>(packed_.data(), reduced),
                 std::span<std::byte>(gathered_.data(), at), std::span<const std::size_t>(sizes_));
    scoped_timer d(st.decode_ns);
    std::size_t from = 0;
    for (std::size_t j = 0; j < ur; ++j) {
      const ar_range c = ar_chunk(shape_.n, shape_.ranks, static_cast<int>(j));
      decoder_.decode(std::span<const std::byte>(gathered_.data() + from, sizes_[j]),
                      out.subview(c.lo, c.size()));
      from += sizes_[j];
    }
  }

  double residual_norm() const {
    return ar_residual_norm(std::span<const C>(chunk_codecs_),
                            std::span<const C>(&reduced_codec_, 1));
  }

 private:
  Ctx ctx_;
  ar_shape shape_;
  C decoder_, reduced_codec_;
  std::vector<C> chunk_codecs_;                        // chunk j's codec state
  std::vector<std::size_t> offsets_, sizes_, counts_;  // host: what the transport is told
  staging_buffer<Ctx, std::byte> send_, recv_, packed_, gathered_;
  staging_buffer<Ctx, float> acc_;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

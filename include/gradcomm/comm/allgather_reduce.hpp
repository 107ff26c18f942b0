// gradcomm/comm/allgather_reduce.hpp — compressed all-reduce by all-gather(v).
//
//   gradcomm::bf16_codec codec;
//   gradcomm::allgather_workspace ws;
//   gradcomm::allgather_decode_add(codec, transport, grads, ws, gradcomm::reduction::mean);
//
// Every rank encodes its tensor once, the payloads are all-gathered (sizes first,
// then the bytes), and every rank decodes and adds them in rank order 0..N-1, so
// every rank ends with bitwise identical values. Works with any codec (payloads
// may differ in size); each rank sends its payload to N-1 peers, so the traffic
// grows with N: the right algorithm for sparse payloads and small worlds, which
// the all-reduce backend picks from the codec's traits.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// Whether the reduced result is the sum over ranks or its mean.
enum class reduction : unsigned char { sum, mean };

/// Buffers reused across calls: they grow to the largest size seen, then stay. The
/// payloads are staged in the memory of the context `Ctx`; the sizes stay on the host.
template <class Ctx>
struct basic_allgather_workspace {
  detail::staging_buffer<Ctx, std::byte> local;
  detail::staging_buffer<Ctx, std::byte> gathered;
  std::vector<std::int64_t> sizes;
  std::vector<std::size_t> counts;
};
/// The host workspace.
using allgather_workspace = basic_allgather_workspace<host_context>;

namespace detail {

// The first half of the all-gather: every rank's payload size (this rank's is `mine`),
// each checked against `limit` (the codec's bound for n elements), into ws.sizes and
// ws.counts. Returns their total. `call` names the caller in the error.
template <Transport T, class Ctx>
std::size_t allgather_payload_sizes(T& transport, std::size_t mine, std::size_t limit,
                                    std::size_t n, basic_allgather_workspace<Ctx>& ws,
                                    const char* call) {
  const auto ur = static_cast<std::size_t>(transport.size());
  ws.sizes.resize(ur);
  ws.counts.resize(ur);
  const auto mine_i = static_cast<std::int64_t>(mine);
  transport.allgather(std::as_bytes(std::span<const std::int64_t>(&mine_i, 1)),
                      std::as_writable_bytes(std::span<std::int64_t>(ws.sizes)));
  std::size_t total = 0;
  for (std::size_t r = 0; r < ur; ++r) {
    const std::int64_t s = ws.sizes[r];
    if (s < 0 || static_cast<std::uint64_t>(s) > limit)
      throw decode_error(call,
                         "rank " + std::to_string(r) + " announced a payload of " +
                             std::to_string(s) + " bytes, more than " + std::to_string(limit) +
                             " for " + std::to_string(n) + " elements",
                         transport.rank());
    ws.counts[r] = static_cast<std::size_t>(s);
    total += static_cast<std::size_t>(s);
  }
  return total;
}

// The second half: the payloads (this rank's is `mine`; `total` bytes in all, as
// allgather_payload_sizes said) all-gathered into ws.gathered, then out := a × the sum of
// their decodings, added in rank order 0..N-1 (the same bits on every rank). The
// decoding and scaling time goes to `decode_ns`.
template <Codec C, Transport T, class Ctx>
void allgather_payloads_decode_add(const Ctx& ctx, C& decoder, T& transport,
                                   std::span<const std::byte> mine, std::size_t total,
                                   tensor_view<float, Ctx::space> out,
                                   basic_allgather_workspace<Ctx>& ws, float a,
                                   std::atomic<std::int64_t>& decode_ns) {
  ws.gathered.resize(std::max(ws.gathered.size(), total));
  transport.allgatherv(mine, std::span<std::byte>(ws.gathered.data(), total),
                       std::span<const std::size_t>(ws.counts));
  scoped_timer d(decode_ns);
  zero(ctx, out);
  std::size_t from = 0;
  for (std::size_t r = 0; r < ws.counts.size(); ++r) {
    decoder.decode_add(std::span<const std::byte>(ws.gathered.data() + from, ws.counts[r]), out);
    from += ws.counts[r];
  }
  if (a != 1.0f) scale(ctx, out, a);
}

}  // namespace detail

/// Replaces `values` on every rank with the sum (or mean) over ranks of the
/// decoded payloads. Encode and decode time go to `counters` when given.
template <Codec C, Transport T>
void allgather_decode_add(C& codec, T& transport, host_view<float> values, allgather_workspace& ws,
                          reduction op = reduction::sum, traffic_counters* counters = nullptr) {
  const int n_ranks = transport.size();
  const std::size_t n = values.size();

  ws.local.resize(std::max(ws.local.size(), codec.max_encoded_bytes(n)));
  std::size_t mine;
  {
    traffic_counters scratch;
    scoped_timer t(counters ? counters->encode_ns : scratch.encode_ns);
    mine = codec.encode(host_view<const float>(values), std::span<std::byte>(ws.local));
  }
  const std::size_t total = detail::allgather_payload_sizes(
      transport, mine, codec.max_encoded_bytes(n), n, ws, "allgather_decode_add");
  traffic_counters scratch;
  const float a = op == reduction::mean && n_ranks > 1 ? 1.0f / static_cast<float>(n_ranks) : 1.0f;
  detail::allgather_payloads_decode_add(
      on_host, codec, transport, std::span<const std::byte>(ws.local.data(), mine), total, values,
      ws, a, counters ? counters->decode_ns : scratch.decode_ns);
}

}  // namespace v0
}  // namespace gradcomm

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
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// Whether the reduced result is the sum over ranks or its mean.
enum class reduction : unsigned char { sum, mean };

/// Buffers reused across calls: they grow to the largest size seen, then stay.
struct allgather_workspace {
  std::vector<std::byte> local;
  std::vector<std::byte> gathered;
  std::vector<std::int64_t> sizes;
  std::vector<std::size_t> counts;
};

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

  ws.sizes.resize(static_cast<std::size_t>(n_ranks));
  ws.counts.resize(static_cast<std::size_t>(n_ranks));
  const std::int64_t mine_i = static_cast<std::int64_t>(mine);
  transport.allgather(std::as_bytes(std::span<const std::int64_t>(&mine_i, 1)),
                      std::as_writable_bytes(std::span<std::int64_t>(ws.sizes)));
  std::size_t total = 0;
  for (int r = 0; r < n_ranks; ++r) {
    const std::int64_t s = ws.sizes[static_cast<std::size_t>(r)];
    if (s < 0 || static_cast<std::uint64_t>(s) > codec.max_encoded_bytes(n)) {
      throw decode_error("allgather_decode_add",
                         "rank " + std::to_string(r) + " announced a payload of " +
                             std::to_string(s) + " bytes, more than " +
                             std::to_string(codec.max_encoded_bytes(n)) + " for " +
                             std::to_string(n) + " elements",
                         transport.rank());
    }
    ws.counts[static_cast<std::size_t>(r)] = static_cast<std::size_t>(s);
    total += static_cast<std::size_t>(s);
  }
  ws.gathered.resize(std::max(ws.gathered.size(), total));
  transport.allgatherv(std::span<const std::byte>(ws.local.data(), mine),
                       std::span<std::byte>(ws.gathered.data(), total), ws.counts);

  traffic_counters scratch;
  scoped_timer t(counters ? counters->decode_ns : scratch.decode_ns);
  std::fill(values.begin(), values.end(), 0.0f);
  std::size_t offset = 0;
  for (int r = 0; r < n_ranks; ++r) {
    const std::size_t s = ws.counts[static_cast<std::size_t>(r)];
    codec.decode_add(std::span<const std::byte>(ws.gathered.data() + offset, s), values);
    offset += s;
  }
  if (op == reduction::mean && n_ranks > 1) {
    const float inv = 1.0f / static_cast<float>(n_ranks);
    for (float& v : values) v *= inv;
  }
}

}  // namespace v0
}  // namespace gradcomm

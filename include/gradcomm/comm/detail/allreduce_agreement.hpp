// gradcomm/comm/detail/allreduce_agreement.hpp — what the all-reduce's ranks check before
// their first round: fingerprints of their registrations, options and codec settings, and
// where they differ the first difference, named alike on every rank.
//
// Ranks whose registrations, options or codec settings differ would average layer A of one
// rank with layer B of another, or feed one format's payloads to another's decoder. At the
// first start() one all-gather of 32 bytes compares fingerprints; only where they differ do
// the ranks exchange what they hashed, and every rank names the same first difference from
// the same bytes.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The options that shape buckets and rounds, by name, as the ranks compare them.
using ar_option_values = std::vector<std::pair<const char*, std::uint64_t>>;

// FNV-1a, 64 bits: the fingerprint the ranks compare before the first round.
inline std::uint64_t ar_hash(std::span<const std::byte> b) noexcept {
  std::uint64_t h = 14695981039346656037ull;
  for (std::byte x : b) h = (h ^ static_cast<std::uint64_t>(x)) * 1099511628211ull;
  return h;
}

inline std::string ar_hex(std::span<const std::byte> b) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i) s += ' ';
    s += digits[static_cast<unsigned>(b[i]) >> 4];
    s += digits[static_cast<unsigned>(b[i]) & 15];
  }
  return s;
}

// What two ranks' codec probes (the same values encoded by a fresh copy of each rank's
// prototype) say about their settings: the first header field that differs.
inline std::string ar_probe_difference(std::span<const std::byte> a, int ra,
                                       std::span<const std::byte> b, int rb) {
  auto on = [&](const std::string& x, const std::string& y) {
    return x + " on rank " + std::to_string(ra) + " but " + y + " on rank " + std::to_string(rb);
  };
  auto hex = [](std::byte v) { return "0x" + ar_hex(std::span<const std::byte>(&v, 1)); };
  if (a.size() < wire_header_bytes || b.size() < wire_header_bytes)
    return "probe payloads of " + on(std::to_string(a.size()), std::to_string(b.size())) + " bytes";
  auto name = [](std::byte id) { return std::string(codec_name(static_cast<codec_id>(id))); };
  if (a[5] != b[5]) return "codec " + on(name(a[5]), name(b[5]));
  const std::string codec = name(a[5]);
  if (a[6] != b[6])
    return codec + " element dtype " +
           on(std::to_string(static_cast<unsigned>(a[6])),
              std::to_string(static_cast<unsigned>(b[6])));
  const std::size_t pa = static_cast<std::size_t>(a[7]), pb = static_cast<std::size_t>(b[7]);
  const auto params_a = a.subspan(wire_header_bytes, std::min(pa, a.size() - wire_header_bytes));
  const auto params_b = b.subspan(wire_header_bytes, std::min(pb, b.size() - wire_header_bytes));
  const std::string layout = " (" + codec + " parameters [" + ar_hex(params_a) + "] vs [" +
                             ar_hex(params_b) + "]; the codec's header documents their layout)";
  if (pa != pb)
    return codec + " parameter bytes: " + on(std::to_string(pa), std::to_string(pb)) + layout;
  for (std::size_t i = 0; i < params_a.size() && i < params_b.size(); ++i)
    if (params_a[i] != params_b[i])
      return codec + " parameter byte " + std::to_string(i) + ": " +
             on(hex(params_a[i]), hex(params_b[i])) + layout;
  return codec + " payload of the same values: " +
         on(std::to_string(a.size()) + " bytes", std::to_string(b.size()) + " bytes") +
         " or other bytes (state or settings the header does not carry)";
}

// What the ranks must agree on: the options that shape buckets and rounds, then every
// tensor's size and name in registration order.
inline std::vector<std::byte> ar_registration_record(const ar_option_values& options,
                                                     std::span<const ar_tensor> tensors) {
  std::size_t bytes = 8 * (options.size() + 1);
  for (const ar_tensor& t : tensors) bytes += 16 + t.name.size();
  std::vector<std::byte> r(bytes);
  wire_writer w(r, "allreduce::start");
  for (const auto& [name, value] : options) w.put_u64(value);
  w.put_u64(tensors.size());
  for (const ar_tensor& t : tensors) {
    w.put_u64(t.view.size());
    w.put_u64(t.name.size());
    w.put_bytes(std::as_bytes(std::span<const char>(t.name)));
  }
  return r;
}

// The codec's settings as its payloads show them: the same values encoded by a fresh copy
// of the prototype, at the first compressed bucket's size `elements` (empty when 0: no
// compressed bucket).
template <Codec C>
std::vector<std::byte> ar_codec_probe(const C& proto, std::size_t elements, std::uint64_t seed) {
  if (elements == 0) return {};
  std::vector<float> values(elements);
  std::uint32_t x = 0x9e3779b9u;
  for (float& v : values) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<float>(static_cast<std::int32_t>(x >> 8) - (1 << 23)) * 0x1p-23f;
  }
  C c = proto;
  if constexpr (StochasticCodec<C>) c.set_stream(stream_key{seed, 0, 0, 0});
  std::vector<std::byte> out(c.max_encoded_bytes(values.size()));
  out.resize(c.encode(host_view<const float>(values.data(), values.size()), out));
  return out;
}

// The first difference between rank 0's record and probe and another rank's.
inline std::string ar_difference(const ar_option_values& options, std::span<const std::byte> recs,
                                 std::span<const std::size_t> rec_counts,
                                 std::span<const std::byte> probes,
                                 std::span<const std::size_t> probe_counts) {
  struct parsed {
    std::vector<std::uint64_t> options;
    std::vector<std::pair<std::uint64_t, std::string>> tensors;
  };
  auto parse = [&](std::span<const std::byte> b) {
    wire_reader r(b, "allreduce::start");
    parsed p;
    for (std::size_t i = 0; i < options.size(); ++i) p.options.push_back(r.get_u64());
    const std::uint64_t count = r.get_u64();
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::uint64_t size = r.get_u64();
      const auto name = r.take(r.get_u64());
      p.tensors.emplace_back(size,
                             std::string(reinterpret_cast<const char*>(name.data()), name.size()));
    }
    return p;
  };
  std::vector<parsed> ps;
  std::size_t at = 0;
  for (std::size_t c : rec_counts) {
    ps.push_back(parse(recs.subspan(at, c)));
    at += c;
  }
  const parsed& p0 = ps[0];
  for (std::size_t qi = 1; qi < ps.size(); ++qi) {
    const parsed& pq = ps[qi];
    const std::string rq = "rank " + std::to_string(qi);
    for (std::size_t i = 0; i < options.size(); ++i)
      if (pq.options[i] != p0.options[i])
        return std::string("option ") + options[i].first + " is " + std::to_string(p0.options[i]) +
               " on rank 0 but " + std::to_string(pq.options[i]) + " on " + rq;
    if (pq.tensors.size() != p0.tensors.size())
      return "rank 0 registered " + std::to_string(p0.tensors.size()) + " tensors but " + rq +
             " registered " + std::to_string(pq.tensors.size());
    for (std::size_t i = 0; i < p0.tensors.size(); ++i) {
      const auto& [s0, n0] = p0.tensors[i];
      const auto& [sq, nq] = pq.tensors[i];
      if (s0 == sq && n0 == nq) continue;
      auto named = [](const std::string& nm) { return nm.empty() ? "" : " '" + nm + "'"; };
      if (n0 != nq)
        return "the ranks registered other tensors: tensor " + std::to_string(i) + " is" +
               named(n0) + " (" + std::to_string(s0) + " elements) on rank 0 but" + named(nq) +
               " (" + std::to_string(sq) + " elements) on " + rq +
               "; register the same tensors in the same order on every rank";
      return "the ranks registered other tensors: tensor " + std::to_string(i) + named(n0) +
             " has " + std::to_string(s0) + " elements on rank 0 but " + std::to_string(sq) +
             " on " + rq;
    }
  }
  std::vector<std::span<const std::byte>> pr;
  at = 0;
  for (std::size_t c : probe_counts) {
    pr.push_back(probes.subspan(at, c));
    at += c;
  }
  for (std::size_t qi = 1; qi < pr.size(); ++qi)
    if (!std::ranges::equal(pr[qi], pr[0]))
      return "the ranks' codec settings differ: " +
             ar_probe_difference(pr[0], 0, pr[qi], static_cast<int>(qi));
  return "the ranks' fingerprints differ, but not what they hashed";
}

// The agreement itself, one collective (three where the ranks differ) in the same order on
// every rank: true when every rank's `record` and `probe` hash alike; otherwise throws
// invalid_argument naming the first difference (the same text on every rank).
template <Transport T>
bool ar_agree(T& t, const ar_option_values& options, std::span<const std::byte> rec,
              std::span<const std::byte> probe) {
  static constexpr const char* call = "allreduce::start";
  const auto un = static_cast<std::size_t>(t.size());
  const std::uint64_t mine[4] = {ar_hash(rec), ar_hash(probe), rec.size(), probe.size()};
  std::vector<std::uint64_t> all(4 * un);
  t.allgather(std::as_bytes(std::span<const std::uint64_t>(mine)),
              std::as_writable_bytes(std::span<std::uint64_t>(all)));
  bool equal = true;
  for (std::size_t i = 4; i < all.size(); ++i)
    if (all[i] != all[i % 4]) equal = false;
  if (equal) return true;
  std::vector<std::size_t> rec_counts(un), probe_counts(un);
  std::size_t rec_total = 0, probe_total = 0;
  for (std::size_t q = 0; q < un; ++q) {
    rec_counts[q] = static_cast<std::size_t>(all[4 * q + 2]);
    probe_counts[q] = static_cast<std::size_t>(all[4 * q + 3]);
    rec_total += rec_counts[q];
    probe_total += probe_counts[q];
  }
  std::vector<std::byte> recs(rec_total), probes(probe_total);
  t.allgatherv(rec, recs, rec_counts);
  t.allgatherv(probe, probes, probe_counts);
  throw_invalid_argument(call, ar_difference(options, recs, rec_counts, probes, probe_counts),
                         t.rank());
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

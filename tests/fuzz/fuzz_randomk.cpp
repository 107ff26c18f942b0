// Fuzzes randomk_codec (codec/sparse.hpp).
//
// Decoder mode: decode and decode_add on any bytes: malformed payloads throw decode_error and
// leave the output as it was; accepted ones write at most k nonzero values, all finite, at
// the indices the payload's key draws, and decode_add adds exactly decode's values.
// Encoder mode: the fuzzer's floats under a key from the input: k distinct indices below n,
// the values sent are the input's there (times n / k when scaled, saturating at ±FLT_MAX),
// the payload has its fixed size, and a nonfinite value anywhere is rejected
// (invalid_argument) unless the policy is zero.
//
// Input: byte 0 bit 7 chooses the mode.
//   decoder (bit 7 clear): n is the payload's own count (bytes 8..15 of the header) when
//     byte 0 is odd and it is at most 2^16, else bytes 1-2 (little-endian u16); bytes 3..
//     are the payload, ending where the input ends.
//   encoder (bit 7 set): byte 1 the ratio ((byte + 1) / 256), byte 2 the key's seed and
//     step, bit 0 of byte 0 the policy (1: zero), bit 1 scaling, bit 2 a per-rank key;
//     bytes 3.. f32 values.
#include <gradcomm/codec/sparse.hpp>

#include "../support/element_count.hpp"
#include "fuzz_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;
using gradcomm_test::element_count;

namespace {

void fuzz_decoder(std::span<const std::byte> payload, std::size_t n) {
  const gc::randomk_codec codec;  // the key and k come from the payload
  std::vector<float> out(n, 42.0f);
  const bool ok = gradcomm_fuzz::decodes([&] { codec.decode(payload, out); });
  std::vector<float> acc(n, 1.0f);
  const bool ok_add = gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); });
  check(ok == ok_add, "decode and decode_add accept the same payloads");
  if (!ok) {
    for (float v : out) check(v == 42.0f, "a rejected payload leaves the output untouched");
    for (float v : acc) check(v == 1.0f, "a rejected payload leaves the sum untouched");
    return;
  }
  // Accepted: the parameters lie at offset 24 (seed, step, rank, bucket, flags, k).
  const std::byte* p = payload.data() + 24;
  gc::stream_key key;
  std::memcpy(&key.seed, p, 8);
  std::memcpy(&key.step, p + 8, 4);
  std::memcpy(&key.rank, p + 12, 4);
  std::memcpy(&key.bucket, p + 16, 4);
  std::uint64_t k;
  std::memcpy(&k, p + 24, 8);
  check(k <= n, "k <= n");
  std::vector<std::uint64_t> idx(static_cast<std::size_t>(k));
  gc::randomk_indices(n, k, key, idx);
  std::vector<bool> at(n, false);
  for (std::uint64_t i : idx) {
    check(i < n, "indices below n");
    check(!at[i], "distinct indices");
    at[i] = true;
  }
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isfinite(out[i]), "decoded values are finite");
    check(at[i] || out[i] == 0.0f, "nothing decoded off the key's indices");
    check(acc[i] == 1.0f + out[i], "decode_add adds decode's values, nothing else");
  }
}

void fuzz_encoder(const std::uint8_t* data, std::size_t size) {
  const bool zero = (data[0] & 1u) != 0;
  const bool scale = (data[0] & 2u) != 0;
  const bool per_rank = (data[0] & 4u) != 0;
  const double ratio = (data[1] + 1) / 256.0;
  const std::size_t n = (size - 3) / 4;
  std::vector<float> g(n);
  if (n != 0) std::memcpy(g.data(), data + 3, 4 * n);
  const bool nonfinite = std::any_of(g.begin(), g.end(), [](float v) { return !std::isfinite(v); });
  gc::randomk_codec c(
      {.ratio = ratio,
       .scale = scale,
       .shared = !per_rank,
       .nonfinite = zero ? gc::nonfinite_policy::zero : gc::nonfinite_policy::reject});
  const gc::stream_key key{.seed = data[2], .step = data[2] * 7u, .rank = 3, .bucket = 1};
  c.set_stream(key);
  std::vector<std::byte> w(c.max_encoded_bytes(n));
  if (nonfinite && !zero) {
    bool threw = false;
    try {
      c.encode(g, w);
    } catch (const gc::error& e) {
      threw = e.code() == gc::errc::invalid_argument;
    }
    check(threw, "a nonfinite value is rejected with invalid_argument");
    return;
  }
  check(c.encode(g, w) == w.size(), "a fixed-size payload");
  const std::size_t k = c.selected(n);
  std::vector<std::uint64_t> idx(k);
  gc::randomk_indices(n, k, c.index_key(), idx);
  std::vector<bool> at(n, false);
  for (std::uint64_t i : idx) {
    check(i < n && !at[i], "k distinct indices below n");
    at[i] = true;
  }
  const float s = scale && k != 0 ? static_cast<float>(static_cast<double>(n) / k) : 1.0f;
  std::vector<float> out(n, 9.0f);
  check(gradcomm_fuzz::decodes([&] { c.decode(w, out); }), "random-k decodes its own payload");
  for (std::size_t i = 0; i < n; ++i) {
    const float v = std::isfinite(g[i]) ? g[i] : 0.0f;
    float sent = v * s;
    if (!std::isfinite(sent)) sent = std::copysign(std::numeric_limits<float>::max(), sent);
    check(out[i] == (at[i] ? sent : 0.0f), "the values at the key's indices, nothing else");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  if (data[0] & 0x80u) {
    fuzz_encoder(data, size);
    return 0;
  }
  fuzz_decoder(gradcomm_fuzz::as_bytes(data + 3, size - 3), element_count(data, size));
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> s;
  std::vector<float> g(3000);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(static_cast<float>(i) * 0.37f);
  for (double ratio : {0.001, 0.05, 1.0}) {
    for (std::size_t n : {0u, 1u, 37u, 3000u}) {
      gc::randomk_codec c({.ratio = ratio, .scale = n % 2 == 1});
      c.set_stream({.seed = n, .step = 2, .bucket = 1});
      std::vector<std::byte> w(c.max_encoded_bytes(n));
      c.encode(gc::host_view<const float>(g.data(), n), w);
      s.push_back(seed({1, 0, 0}, w));
    }
  }
  std::vector<std::byte> f(4 * 64);
  std::memcpy(f.data(), g.data(), f.size());
  for (std::uint8_t mode : {0x80, 0x82, 0x85, 0x86}) s.push_back(seed({mode, 20, 9}, f));
  return s;
}

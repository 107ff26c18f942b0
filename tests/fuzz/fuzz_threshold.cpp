// Fuzzes threshold_codec (codec/sparse.hpp).
//
// Decoder mode: decode and decode_add on any bytes: malformed payloads throw decode_error and
// leave the output as it was; accepted ones are accepted by inspect_sparse too, hold at most
// k nonzero values, all finite, and decode_add adds exactly decode's values.
// Encoder mode: the fuzzer's floats under every rule: exactly the values with |g| above the
// threshold the encode reports are sent, the payload fits its bound, and a nonfinite value
// is rejected (invalid_argument) unless the policy is zero.
//
// Input: byte 0 bit 7 chooses the mode.
//   decoder (bit 7 clear): n is the payload's own count (bytes 8..15 of the header) when
//     byte 0 is odd and it is at most 2^16, else bytes 1-2 (little-endian u16); bytes 3..
//     are the payload, ending where the input ends.
//   encoder (bit 7 set): bits 1-2 of byte 0 the rule (absolute, max-, RMS-relative; 3 is
//     absolute), bit 0 the policy (1: zero); bytes 1-2 τ × 256 (u16); bytes 3.. f32 values.
#include <gradcomm/codec/sparse.hpp>

#include "../support/element_count.hpp"
#include "fuzz_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;
using gradcomm_test::element_count;

namespace {

void fuzz_decoder(std::span<const std::byte> payload, std::size_t n) {
  const gc::threshold_codec codec;
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
  gc::sparse_info info{};
  check(gradcomm_fuzz::decodes([&] { info = gc::inspect_sparse(payload); }),
        "inspect_sparse accepts what the decoder accepts");
  check(info.codec == gc::codec_id::threshold, "a threshold payload");
  check(info.count == n && info.selected <= n, "k <= n");
  check(info.bits_per_index() >= 0.0, "bits per index");
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isfinite(out[i]), "decoded values are finite");
    check(acc[i] == 1.0f + out[i], "decode_add adds decode's values, nothing else");
    nonzero += out[i] != 0.0f;
  }
  check(nonzero <= info.selected, "at most k nonzero values");
}

void fuzz_encoder(const std::uint8_t* data, std::size_t size) {
  const bool zero = (data[0] & 1u) != 0;
  const unsigned rule_bits = (data[0] >> 1) & 3u;
  const auto rule =
      rule_bits == 3 ? gc::threshold_rule::absolute : static_cast<gc::threshold_rule>(rule_bits);
  const float tau = static_cast<float>(data[1] | data[2] << 8) / 256.0f;
  const std::size_t n = (size - 3) / 4;
  std::vector<float> g(n);
  if (n != 0) std::memcpy(g.data(), data + 3, 4 * n);
  const bool nonfinite = std::any_of(g.begin(), g.end(), [](float v) { return !std::isfinite(v); });

  gc::threshold_codec c(
      {.tau = tau,
       .rule = rule,
       .nonfinite = zero ? gc::nonfinite_policy::zero : gc::nonfinite_policy::reject});
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
  const std::size_t bytes = c.encode(g, w);
  check(bytes <= c.max_encoded_bytes(n), "the payload fits its bound");
  std::vector<float> out(n, 5.0f);
  check(gradcomm_fuzz::decodes([&] { c.decode(std::span(w.data(), bytes), out); }),
        "threshold decodes its own payload");
  const float t = c.last_threshold();
  check(t >= 0.0f, "the threshold is not negative");
  std::size_t want = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const bool in = std::isfinite(g[i]) && std::fabs(g[i]) > t;
    want += in;
    check(out[i] == (in ? g[i] : 0.0f), "sends exactly the values above the threshold");
  }
  check(gc::inspect_sparse(std::span(w.data(), bytes)).selected == want, "k is the count");
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
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] = std::sin(static_cast<float>(i) * 0.37f) * static_cast<float>(i % 13);
  }
  for (float tau : {0.0f, 0.5f, 0.95f, 2.0f}) {
    for (std::size_t n : {0u, 1u, 37u, 3000u}) {
      gc::threshold_codec c({.tau = tau, .rule = gc::threshold_rule::max_relative});
      std::vector<std::byte> w(c.max_encoded_bytes(n));
      w.resize(c.encode(gc::host_view<const float>(g.data(), n), w));
      s.push_back(seed({1, 0, 0}, w));  // bitmap at low thresholds, delta at high ones
    }
  }
  std::vector<std::byte> f(4 * 64);
  std::memcpy(f.data(), g.data(), f.size());
  for (std::uint8_t mode : {0x80, 0x82, 0x84, 0x85}) s.push_back(seed({mode, 0, 2}, f));
  return s;
}

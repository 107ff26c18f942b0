// Fuzzes scalar_quant_codec's decode and decode_add: malformed payloads throw decode_error
// and leave the output as it was; accepted ones decode to finite values, the same through
// both calls.
//
// Input: byte 0 chooses the element count n: odd, the payload's own count (bytes 8..15 of
// the header) when it is at most 2^16, else bytes 1-2; even, bytes 1-2 (little-endian u16).
// Bytes 3.. are the payload, ending where the input ends.
#include <gradcomm/codec/quantize.hpp>

#include "../support/element_count.hpp"
#include "fuzz_support.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;
using gradcomm_test::element_count;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t n = element_count(data, size);
  const auto payload = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  const gc::scalar_quant_codec codec;  // decoders read their parameters from the payload

  // Outputs of exactly n floats: a write past them is an AddressSanitizer report.
  std::vector<float> out(n, 42.0f);
  const bool ok = gradcomm_fuzz::decodes([&] { codec.decode(payload, out); });
  std::vector<float> acc(n, 0.0f);
  const bool ok_add = gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); });
  check(ok == ok_add, "decode and decode_add accept the same payloads");
  if (!ok) {
    for (float v : out) check(v == 42.0f, "a rejected payload leaves the output untouched");
    for (float v : acc) check(v == 0.0f, "a rejected payload leaves the sum untouched");
    return 0;
  }
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isfinite(out[i]), "decoded values are finite");
    check(acc[i] == out[i], "decode_add onto zeros is decode");
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> s;
  std::vector<float> g(300);
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] = std::sin(static_cast<float>(i) * 0.37f) * (i % 50 == 0 ? 100.0f : 1.0f);
  }
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::uint32_t block : {1u, 64u, 256u}) {
      for (auto rounding : {gc::quant_rounding::nearest, gc::quant_rounding::stochastic}) {
        for (std::size_t n : {0u, 1u, 37u, 300u}) {
          gc::scalar_quant_codec c({.bits = bits, .block = block, .rounding = rounding});
          std::vector<std::byte> w(c.max_encoded_bytes(n));
          c.encode(gc::host_view<const float>(g.data(), n), w);
          s.push_back(seed({1, 0, 0}, w));
        }
      }
    }
  }
  return s;
}

// Fuzzes fp8_block_codec's decoder: any bytes decode or throw decode_error, a rejected
// payload leaves the output as it was, decode_add onto zeros agrees with decode, and what
// decodes is finite wherever the element is (a valid scale never overflows).
//
// Input: bytes 0..1 the output length n (u16, little-endian); the payload is the rest and
// ends where the input ends.
#include <gradcomm/codec/fp8_block.hpp>

#include "fuzz_support.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t n = data[0] | std::size_t{data[1]} << 8;
  const auto payload = gradcomm_fuzz::as_bytes(data + 2, size - 2);
  const gc::fp8_block_codec codec;
  constexpr float sentinel = 1234.5f;
  std::vector<float> out(n, sentinel);
  if (!gradcomm_fuzz::decodes([&] { codec.decode(payload, out); })) {
    for (float v : out) check(v == sentinel, "a rejected payload leaves the output alone");
    std::vector<float> acc(n, sentinel);
    check(!gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); }),
          "decode_add rejects what decode rejects");
    for (float v : acc) check(v == sentinel, "a rejected payload leaves the accumulator alone");
    return 0;
  }
  std::vector<float> acc(n, 0.0f);
  check(gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); }),
        "decode_add accepts what decode accepts");
  // The elements follow the header and the ceil(n / 32) scales.
  const std::size_t elems = gc::wire_header_bytes + gc::fp8_block_codec::blocks(n);
  const bool e4m3 = static_cast<gc::dtype>(payload[6]) == gc::dtype::fp8_e4m3;
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isnan(out[i]) ? std::isnan(acc[i]) : acc[i] == out[i], "0 + decode == decode_add");
    const auto e = std::to_integer<std::uint8_t>(payload[elems + i]);
    const float elem = e4m3 ? gc::to_float(gc::fp8_e4m3{e}) : gc::to_float(gc::fp8_e5m2{e});
    check(std::isfinite(elem) == std::isfinite(out[i]), "finite elements decode finite");
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  for (auto t : {gc::dtype::fp8_e4m3, gc::dtype::fp8_e5m2}) {
    for (std::size_t n : {0u, 1u, 33u, 70u}) {
      std::vector<float> g(n);
      for (std::size_t i = 0; i < n; ++i) {
        g[i] = std::ldexp(static_cast<float>(i % 7) - 3.0f, static_cast<int>(i % 40) - 20);
      }
      const gc::fp8_block_codec codec(t);
      std::vector<std::byte> wire(codec.max_encoded_bytes(n));
      codec.encode(g, wire);
      out.push_back(seed({static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8)}, wire));
    }
  }
  return out;
}

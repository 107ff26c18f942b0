// Fuzzes the cast codecs' decoders (f16, bf16, fp8 E4M3, fp8 E5M2): any bytes decode or throw
// decode_error, a rejected payload leaves the output as it was, decode_add onto zeros
// agrees with decode, and an accepted payload re-encodes (nonfinite_policy::pass) to the
// same bytes wherever no NaN is involved.
//
// Input: bytes 0..1 the output length n (u16, little-endian), byte 2 the codec (low two
// bits: f16, bf16, e4m3, e5m2); the payload is the rest and ends where the input ends.
#include <gradcomm/codec/cast.hpp>

#include "fuzz_support.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

namespace {

constexpr float sentinel = 1234.5f;

template <class C>
void one(std::span<const std::byte> payload, std::size_t n) {
  const C codec(gc::nonfinite_policy::pass);
  std::vector<float> out(n, sentinel);
  if (!gradcomm_fuzz::decodes([&] { codec.decode(payload, out); })) {
    for (float v : out) check(v == sentinel, "a rejected payload leaves the output alone");
    std::vector<float> acc(n, sentinel);
    check(!gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); }),
          "decode_add rejects what decode rejects");
    for (float v : acc) check(v == sentinel, "a rejected payload leaves the accumulator alone");
    return;
  }
  std::vector<float> acc(n, 0.0f);
  check(gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); }),
        "decode_add accepts what decode accepts");
  bool nan = false;
  for (std::size_t i = 0; i < n; ++i) {
    nan |= std::isnan(out[i]);
    check(std::isnan(out[i]) ? std::isnan(acc[i]) : acc[i] == out[i], "0 + decode == decode_add");
  }
  if (nan) return;  // NaN payload bits are not kept
  std::vector<std::byte> again(codec.max_encoded_bytes(n));
  check(codec.encode(out, again) == payload.size(), "re-encoded to the same size");
  check(std::memcmp(again.data(), payload.data(), payload.size()) == 0,
        "re-encoded to the same bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t n = data[0] | std::size_t{data[1]} << 8;
  const auto payload = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  switch (data[2] & 3u) {
    case 0: one<gc::f16_codec>(payload, n); break;
    case 1: one<gc::bf16_codec>(payload, n); break;
    case 2: one<gc::e4m3_codec>(payload, n); break;
    default: one<gc::e5m2_codec>(payload, n); break;
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  auto add = [&](auto codec, std::uint8_t which, std::size_t n) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = (static_cast<float>(i % 11) - 5.0f) * 0.37f;
    std::vector<std::byte> wire(codec.max_encoded_bytes(n));
    codec.encode(g, wire);
    out.push_back(
        seed({static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8), which}, wire));
  };
  for (std::size_t n : {0u, 1u, 7u, 40u}) {
    add(gc::f16_codec(), 0, n);
    add(gc::bf16_codec(), 1, n);
    add(gc::e4m3_codec(), 2, n);
    add(gc::e5m2_codec(), 3, n);
  }
  return out;
}

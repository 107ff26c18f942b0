// Fuzzes vector_quant_codec: its decoder (any bytes decode or throw decode_error, a rejected
// payload leaves the output as it was, an accepted one decodes to finite values, decode_add
// onto zeros agrees with decode) and the learned codebook's load_state (rejects, changing
// nothing, or accepts a state that saves back to the same bytes and encodes).
//
// Input: bytes 0..1 the output length n (u16, little-endian); byte 2: bit 0 clear, the rest
// is a payload to decode; set, a state to load into a learned codec of dim 2, 4, 8 (bits
// 1..2: 0, 1, else). The payload or state ends where the input ends.
#include <gradcomm/codec/vector_quant.hpp>

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

void decode(std::span<const std::byte> payload, std::size_t n) {
  const gc::vq_gaussian_codec codec;
  constexpr float sentinel = 1234.5f;
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
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isnan(out[i]) ? std::isnan(acc[i]) : acc[i] == out[i], "0 + decode == decode_add");
    check(std::isfinite(out[i]), "an accepted payload decodes to finite values");
  }
}

std::vector<std::byte> saved(const gc::vq_learned_codec& c) {
  std::vector<std::byte> s(c.state_bytes());
  s.resize(c.save_state(s));
  return s;
}

void load(std::span<const std::byte> state, unsigned dim, std::size_t n) {
  gc::vq_learned_codec c({.dim = dim, .refresh_interval = 2});
  const auto before = saved(c);
  if (!gradcomm_fuzz::decodes([&] { c.load_state(state); })) {
    check(saved(c) == before, "a rejected state changes nothing");
    return;
  }
  const auto again = saved(c);
  check(again.size() == state.size() && std::memcmp(again.data(), state.data(), state.size()) == 0,
        "save_state(load_state(x)) == x");
  n %= 300;
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>(i % 13) * 0.25f - 1.5f;
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  wire.resize(c.encode(g, wire));
  std::vector<float> out(n);
  check(gradcomm_fuzz::decodes([&] { c.decode(wire, out); }), "decodes its own payload");
  for (float v : out) check(std::isfinite(v), "its own payload decodes to finite values");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t n = data[0] | std::size_t{data[1]} << 8;
  const auto rest = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  if (data[2] & 1u) {
    const unsigned sel = (data[2] >> 1) & 3u;
    load(rest, sel == 0 ? 2 : sel == 1 ? 4 : 8, n);
  } else {
    decode(rest, n);
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  for (unsigned dim : {2u, 4u, 8u}) {
    const auto sel = static_cast<std::uint8_t>(dim == 2 ? 1 : dim == 4 ? 3 : 5);
    for (std::size_t n : {0u, 1u, 5u, 100u}) {
      std::vector<float> g(n);
      for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>(i % 9) * 0.3f - 1.2f;
      const auto lo = static_cast<std::uint8_t>(n), hi = static_cast<std::uint8_t>(n >> 8);
      gc::vq_gaussian_codec a({.dim = dim, .block = 32});
      std::vector<std::byte> wire(a.max_encoded_bytes(n));
      a.encode(g, wire);
      out.push_back(seed({lo, hi, 0}, wire));
      gc::vq_learned_codec l({.dim = dim, .block = 16});
      wire.resize(l.max_encoded_bytes(n));
      l.encode(g, wire);
      out.push_back(seed({lo, hi, 0}, wire));
      if (n == 100) out.push_back(seed({0, 0, sel}, saved(l)));
    }
    // Blocks at the top of f32's range: scales at the largest the codebook allows, one
    // mutation away from those a decoder must refuse.
    std::vector<float> g(64);
    for (std::size_t i = 0; i < g.size(); ++i) {
      g[i] = (i % 3 ? 3e38f : -3.4028234e38f) * (i % 5 == 0 ? 0.5f : 1.0f);
    }
    gc::vq_gaussian_codec a({.dim = dim, .block = 16});
    std::vector<std::byte> wire(a.max_encoded_bytes(g.size()));
    a.encode(g, wire);
    out.push_back(seed({64, 0, 0}, wire));
    gc::vq_learned_codec l({.dim = dim, .block = 32});
    wire.resize(l.max_encoded_bytes(g.size()));
    l.encode(g, wire);
    out.push_back(seed({64, 0, 0}, wire));
  }
  return out;
}

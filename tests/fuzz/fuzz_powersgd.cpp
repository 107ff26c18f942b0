// Fuzzes powersgd_codec: its decoders (any bytes decode or throw decode_error, a rejected
// payload leaves the output as it was, decode_add onto zeros agrees with decode, what is
// accepted is finite), its load_state (malformed state changes nothing; accepted state saves
// back to the same bytes and steps on), and its round API fed arbitrary sums (only
// invalid_argument may come out, and what is accepted is finite).
//
// Input: byte 0 selects the mode (low two bits: 0 decode, 1 load_state, 2 rounds; bits 2..3
// the rank − 1; bit 4 switches error feedback off); bytes 1..2 the element count n (u16,
// little-endian); the rest is the payload, the state or the summed factors, ending where the
// input ends. Needs Eigen (tests/fuzz/project finds it).
#include <gradcomm/codec/powersgd.hpp>

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

std::vector<float> gradient(std::size_t n, unsigned salt) {
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) {
    g[i] = static_cast<float>((i * 7 + salt) % 13) * 0.25f - 1.5f;
  }
  return g;
}

std::vector<std::byte> saved(const gc::powersgd_codec& c) {
  std::vector<std::byte> s(c.state_bytes());
  s.resize(c.save_state(s));
  return s;
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

// Runs f(); true when it returned, false when it threw invalid_argument (the answer to bad
// sums); anything else aborts.
template <class F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const gc::error& e) {
    check(e.code() == gc::make_error_code(gc::errc::invalid_argument),
          "the round API throws only invalid_argument");
    return false;
  }
}

void decode(const gc::powersgd_codec& c, std::span<const std::byte> payload, std::size_t n) {
  std::vector<float> out(n, sentinel);
  if (!gradcomm_fuzz::decodes([&] { c.decode(payload, out); })) {
    for (float v : out) check(v == sentinel, "a rejected payload leaves the output alone");
    std::vector<float> acc(n, sentinel);
    check(!gradcomm_fuzz::decodes([&] { c.decode_add(payload, acc); }),
          "decode_add rejects what decode rejects");
    for (float v : acc) check(v == sentinel, "a rejected payload leaves the accumulator alone");
    return;
  }
  check(all_finite(out), "an accepted payload decodes to finite values");
  std::vector<float> acc(n, 0.0f);
  check(gradcomm_fuzz::decodes([&] { c.decode_add(payload, acc); }),
        "decode_add accepts what decode accepts");
  for (std::size_t i = 0; i < n; ++i) check(acc[i] == out[i], "0 + decode == decode_add");
}

void load(gc::powersgd_codec& c, std::span<const std::byte> state) {
  const auto before = saved(c);
  if (!gradcomm_fuzz::decodes([&] { c.load_state(state); })) {
    check(saved(c) == before, "a rejected state changes nothing");
    return;
  }
  const auto again = saved(c);
  check(again.size() == state.size() && std::memcmp(again.data(), state.data(), state.size()) == 0,
        "save_state(load_state(x)) == x");
  for (float e : c.residual()) check(std::isfinite(e), "a loaded residual is finite");
  const std::size_t n = c.size();
  if (!c.sized() || n > (std::size_t{1} << 16)) return;
  const auto g = gradient(n, 3);
  std::vector<std::byte> wire(c.max_encoded_bytes(n));
  // A residual near the top of f32's range (finite, so accepted) makes the factors
  // overflow: invalid_argument, and nothing changes.
  const auto loaded = saved(c);
  if (!accepts([&] { wire.resize(c.encode(g, wire)); })) {
    check(saved(c) == loaded, "a failed encode changes nothing");
    return;
  }
  for (float e : c.residual()) check(std::isfinite(e), "the residual stays finite");
  std::vector<float> out(n);
  check(gradcomm_fuzz::decodes([&] { c.decode(wire, out); }), "decodes its own payload");
  check(all_finite(out), "its own payload is finite");
}

// One step through the rounds, with the sums of P and Q taken from the fuzzer's bytes.
void rounds(gc::powersgd_codec& c, std::span<const std::byte> sums, std::size_t n) {
  const auto g = gradient(n, 5);
  std::vector<float> p(c.p_floats(n)), q(c.q_floats(n)), out(n, sentinel);
  c.compute_p(g, p);
  std::size_t used = 0;
  auto fill = [&](std::vector<float>& v) {
    for (float& x : v) {
      if (used + 4 > sums.size()) break;
      std::memcpy(&x, sums.data() + used, 4);
      used += 4;
    }
  };
  fill(p);
  if (!accepts([&] { c.compute_q(g, p, q); })) return;
  for (float x : p) check(std::isfinite(x), "P̂ is finite");
  fill(q);
  const auto before = saved(c);
  if (!accepts([&] { c.decompress(g, p, q, out); })) {
    check(saved(c) == before, "a rejected sum changes nothing");
    return;
  }
  check(all_finite(out), "an accepted sum gives finite values");
  for (float e : c.residual()) check(std::isfinite(e), "the residual stays finite");
  for (float w : c.warm_start()) check(std::isfinite(w), "the warm start stays finite");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const unsigned mode = data[0] & 3u;
  const gc::powersgd_params params{.rank = ((data[0] >> 2) & 3u) + 1u,
                                   .error_feedback = (data[0] & 0x10u) == 0};
  const std::size_t n = data[1] | std::size_t{data[2]} << 8;
  const auto rest = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  gc::powersgd_codec c(params);
  switch (mode) {
    case 0: decode(c, rest, n); break;
    case 1: load(c, rest); break;
    case 2: rounds(c, rest, n); break;
    default: break;
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  auto add = [&](unsigned mode, unsigned rank, bool ef, std::size_t n,
                 std::span<const std::byte> rest) {
    out.push_back(seed({static_cast<std::uint8_t>(mode | (rank - 1) << 2 | (ef ? 0u : 0x10u)),
                        static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8)},
                       rest));
  };
  for (std::size_t n : {0u, 1u, 7u, 64u, 120u, 600u}) {
    for (unsigned rank : {1u, 2u, 4u}) {
      for (bool ef : {true, false}) {
        gc::powersgd_codec c({.rank = rank, .error_feedback = ef});
        std::vector<std::byte> wire(c.max_encoded_bytes(n));
        wire.resize(c.encode(gradient(n, rank), wire));
        if (ef) add(0, rank, ef, n, wire);
        c.encode(gradient(n, rank + 1), wire);
        add(1, rank, ef, n, saved(c));
      }
      // Plausible sums for the rounds: two workers with this one's gradient.
      gc::powersgd_codec c({.rank = rank});
      const auto g = gradient(n, 5);
      std::vector<float> p(c.p_floats(n)), q(c.q_floats(n));
      c.compute_p(g, p);
      for (float& x : p) x *= 2.0f;
      c.compute_q(g, p, q);
      for (float& x : q) x *= 2.0f;
      std::vector<std::byte> sums;
      for (const auto* v : {&p, &q}) {
        const auto b = std::as_bytes(std::span<const float>(*v));
        sums.insert(sums.end(), b.begin(), b.end());
      }
      add(2, rank, true, n, sums);
    }
  }
  gc::powersgd_codec unsized({.rank = 1});
  add(1, 1, true, 0, saved(unsized));
  return out;
}

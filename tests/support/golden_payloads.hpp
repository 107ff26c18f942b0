// tests/support/golden_payloads.hpp — the machinery of the golden payload tests
// (tests/unit/test_golden_payloads*.cpp): deterministic inputs, running a codec over them
// and hashing what it writes, and comparing against (or printing) a table of digests.
//
//   std::vector<golden_result> got;
//   gc::sign_codec c;
//   got.push_back(run_golden("sign/n=257", c, 257));
//   expect_golden(golden_table, "sign/", got);
#pragma once

#include "sha256.hpp"

#include <gradcomm/codec/codec.hpp>

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gradcomm_test {

/// One row of a golden table: a case's name and the SHA-256 digests (hex) of its payload
/// bytes and of its decoded values.
struct golden_row {
  const char* name;
  const char* payload;
  const char* decoded;
};

/// What running one case gave.
struct golden_result {
  std::string name;
  std::string payload;
  std::string decoded;
};

/// Print mode: GRADCOMM_GOLDEN_PRINT=1 prints table rows instead of comparing.
inline bool golden_print_mode() {
  const char* v = std::getenv("GRADCOMM_GOLDEN_PRINT");
  return v != nullptr && std::string_view(v) == "1";
}

inline std::uint64_t golden_mix(std::uint64_t x) noexcept {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A case's seed: FNV-1a of its name, so that every case sees its own input.
inline std::uint64_t golden_seed(std::string_view name) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

/// n gradient-like floats from integer hashing alone (std:: distributions differ between
/// standard libraries): about normal, sd 1e-3, times a power of two from 1/4 to 4 per block of
/// 256; one value in about 125 an exact 0, 1 in 500 a −0, 1 in 200 ±0.0025 (equal
/// magnitudes: top-k ties), 1 in 200 a bf16 and 1 in 200 an f16 rounding tie (the dropped
/// bits exactly half an ulp), 1 in 333 an outlier 64 times larger.
inline std::vector<float> golden_input(std::uint64_t seed, std::size_t n) {
  constexpr float unit = 1e-3f / 37837.0f;  // a sum of four 16-bit uniforms has sd ~37837
  std::vector<float> v(n);
  const std::uint64_t base = golden_mix(seed);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t h = golden_mix(base + i);
    const std::int32_t s = static_cast<std::int32_t>((h & 0xffff) + ((h >> 16) & 0xffff) +
                                                     ((h >> 32) & 0xffff) + (h >> 48)) -
                           131070;
    const unsigned e = static_cast<unsigned>(golden_mix(base ^ (i / 256 + 1)) % 5);
    float x = static_cast<float>(s) * unit;
    x *= static_cast<float>(1u << e) * 0.25f;  // exact: a power of two
    const unsigned special = static_cast<unsigned>(golden_mix(h) % 1000);
    std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    if (special < 8) {
      x = 0.0f;
    } else if (special < 10) {
      x = -0.0f;
    } else if (special < 15) {
      x = (h & 1) != 0 ? 0.0025f : -0.0025f;
    } else if (special < 20) {
      x = std::bit_cast<float>((bits & 0xffff0000u) | 0x8000u);
    } else if (special < 25) {
      x = std::bit_cast<float>((bits & ~0x1fffu) | 0x1000u);
    } else if (special < 28) {
      x *= 64.0f;
    }
    v[i] = x;
  }
  return v;
}

/// Puts NaN, +Inf and −Inf at a few fixed indices of `v` (for the nonfinite policies).
inline void golden_nonfinite(std::vector<float>& v) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i % 37 == 5) v[i] = std::numeric_limits<float>::quiet_NaN();
    if (i % 53 == 7) v[i] = std::numeric_limits<float>::infinity();
    if (i % 59 == 11) v[i] = -std::numeric_limits<float>::infinity();
  }
}

/// Puts NaN (quiet, and one negative) at a few fixed indices of `v`.
inline void golden_nan(std::vector<float>& v) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i % 37 == 5) v[i] = std::numeric_limits<float>::quiet_NaN();
    if (i % 101 == 9) v[i] = -std::numeric_limits<float>::quiet_NaN();
  }
}

/// The stream key of stochastic cases at `step`.
inline gradcomm::stream_key golden_stream(std::uint32_t step) noexcept {
  return {.seed = 0x601de4ull, .step = step, .rank = 1, .bucket = 2};
}

/// Both digests of a case as they accumulate.
struct golden_digests {
  sha256 payload;
  sha256 decoded;
  void add_payload(std::span<const std::byte> b) { payload.update(b); }
  void add_floats(std::span<const float> f) { decoded.update(std::as_bytes(f)); }
  golden_result finish(std::string name) {
    return {std::move(name), payload.hex_digest(), decoded.hex_digest()};
  }
};

/// Runs `steps` encodes of `codec` on golden inputs of n values (seeded by the name and the
/// step; stochastic codecs keyed by golden_stream(step)). The payload digest covers every
/// step's payload, then the saved state of a stateful codec; the decoded digest covers, per
/// step, decode(payload) and decode_add(payload) onto the step's input.
/// `tweak(in)` may change each input first (e.g. put NaN and ±Inf in); decode_add adds onto
/// the input with its non-finite values zeroed, so that no NaN meets another.
template <class C, class Tweak = void (*)(std::vector<float>&)>
golden_result run_golden(
    std::string name, C& codec, std::size_t n, std::uint32_t steps = 1,
    Tweak tweak = [](std::vector<float>&) {}) {
  golden_digests d;
  const std::uint64_t seed = golden_seed(name);
  std::vector<std::byte> wire(codec.max_encoded_bytes(n));
  std::vector<float> out(n);
  for (std::uint32_t step = 0; step < steps; ++step) {
    std::vector<float> in = golden_input(seed + step, n);
    tweak(in);
    if constexpr (gradcomm::StochasticCodec<C>) codec.set_stream(golden_stream(step));
    const std::size_t bytes = codec.encode(in, wire);
    const std::span<const std::byte> payload(wire.data(), bytes);
    d.add_payload(payload);
    codec.decode(payload, out);
    d.add_floats(out);
    std::vector<float> acc = in;
    for (float& a : acc) a = std::isfinite(a) ? a : 0.0f;
    codec.decode_add(payload, acc);
    d.add_floats(acc);
  }
  if constexpr (C::traits.stateful) {
    std::vector<std::byte> state(codec.state_bytes());
    state.resize(codec.save_state(state));
    d.add_payload(state);
  }
  return d.finish(std::move(name));
}

/// Compares `got` (the cases whose names start with `family`) with the table's rows of that
/// family: every case must have a row with equal digests and every row a case. In print mode
/// prints the rows instead, as C++ table lines.
inline void expect_golden(std::span<const golden_row> table, std::string_view family,
                          const std::vector<golden_result>& got) {
  if (golden_print_mode()) {
    for (const golden_result& r : got) {
      std::printf("    {\"%s\", \"%s\", \"%s\"},\n", r.name.c_str(), r.payload.c_str(),
                  r.decoded.c_str());
    }
    std::fflush(stdout);
    return;
  }
  std::size_t rows = 0;
  for (const golden_row& row : table) {
    if (std::string_view(row.name).substr(0, family.size()) == family) ++rows;
  }
  EXPECT_EQ(rows, got.size()) << "rows of family " << family << " in the table, cases run";
  for (const golden_result& r : got) {
    ASSERT_EQ(std::string_view(r.name).substr(0, family.size()), family) << r.name;
    const golden_row* row = nullptr;
    for (const golden_row& t : table) {
      if (r.name == t.name) row = &t;
    }
    if (row == nullptr) {
      ADD_FAILURE() << "no golden row for " << r.name;
      continue;
    }
    EXPECT_EQ(r.payload, row->payload) << r.name << ": payload bytes changed";
    EXPECT_EQ(r.decoded, row->decoded) << r.name << ": decoded values changed";
  }
}

}  // namespace gradcomm_test

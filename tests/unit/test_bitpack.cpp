// Bit packing against a bit-by-bit reference, the exact byte layout, and malformed input.
#include <gradcomm/core/bitpack.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

static_assert(gc::packed_bytes(0, 3) == 0);
static_assert(gc::packed_bytes(1, 1) == 1);
static_assert(gc::packed_bytes(8, 3) == 3);
static_assert(gc::packed_bytes(10, 3) == 4);
static_assert(gc::packed_bytes(9, 8) == 9);
static_assert(gc::packed_bytes(std::size_t{1} << 61, 8) == std::size_t{1} << 61);  // no overflow

// The specification, one bit at a time: stream bit k is bit k%8 of byte k/8.
std::vector<std::byte> reference_pack(const std::vector<std::uint8_t>& codes, unsigned bits) {
  std::vector<std::byte> out(gc::packed_bytes(codes.size(), bits));
  for (std::size_t i = 0; i < codes.size(); ++i) {
    for (unsigned t = 0; t < bits; ++t) {
      const std::size_t k = i * bits + t;
      if ((codes[i] >> t) & 1) out[k / 8] |= std::byte{1} << (k % 8);
    }
  }
  return out;
}

std::vector<std::uint8_t> random_codes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> c(n);
  for (auto& x : c) x = static_cast<std::uint8_t>(rng());  // all 8 bits: tests masking too
  return c;
}

std::vector<std::uint8_t> masked(std::vector<std::uint8_t> c, unsigned bits) {
  for (auto& x : c) x &= static_cast<std::uint8_t>((1u << bits) - 1);
  return c;
}

std::vector<std::byte> bytes(std::initializer_list<unsigned> v) {
  std::vector<std::byte> out;
  for (unsigned x : v) out.push_back(static_cast<std::byte>(x));
  return out;
}

template <class F>
gc::errc library_errc(F&& f) {
  try {
    f();
  } catch (const gc::error& e) {
    EXPECT_EQ(&e.code().category(), &gc::library_category());
    return static_cast<gc::errc>(e.code().value());
  }
  ADD_FAILURE() << "no gradcomm::error thrown";
  return gc::errc::internal;
}

// Runs f, expects decode_error, returns its what().
template <class F>
std::string decode_failure(F&& f) {
  try {
    f();
  } catch (const gc::decode_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no decode_error thrown";
  return {};
}

constexpr std::size_t sizes[] = {0, 1, 7, 8, 9, 63, 64, 65, 1000, 1001};

}  // namespace

TEST(bitpack, round_trip_every_width_and_size) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::size_t n : sizes) {
      SCOPED_TRACE("bits " + std::to_string(bits) + ", n " + std::to_string(n));
      const auto codes = random_codes(n, static_cast<std::uint32_t>(bits * 7919 + n));
      const auto want = masked(codes, bits);
      const auto ref = reference_pack(want, bits);

      std::vector<std::byte> packed(gc::packed_bytes(n, bits));
      gc::pack_bits(codes, bits, packed);
      ASSERT_EQ(packed, ref);

      std::vector<std::uint8_t> back(n, 0xEE);
      gc::unpack_bits(packed, bits, back);
      ASSERT_EQ(back, want);

      // The per-element helpers agree with the bulk calls.
      std::vector<std::byte> by_element(packed.size());
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(gc::get_code(packed.data(), i, bits), want[i]) << "i = " << i;
        gc::set_code(by_element.data(), i, bits, codes[i]);
      }
      ASSERT_EQ(by_element, ref);
    }
  }
}

TEST(bitpack, set_code_keeps_neighbours) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    const auto codes = masked(random_codes(40, bits), bits);
    auto packed = reference_pack(codes, bits);
    auto want = codes;
    for (std::size_t i = 0; i < codes.size(); i += 3) {
      const auto v = static_cast<std::uint8_t>(~codes[i]);
      gc::set_code(packed.data(), i, bits, v);
      want[i] = static_cast<std::uint8_t>(v & ((1u << bits) - 1));
    }
    EXPECT_EQ(packed, reference_pack(want, bits)) << "bits " << bits;
  }
}

TEST(bitpack, group_helpers) {
  const std::uint8_t codes[8] = {1, 2, 3, 4, 5, 6, 7, 0};
  std::byte out[3];
  gc::pack8<3>(codes, out);
  EXPECT_EQ(std::vector<std::byte>(out, out + 3),
            reference_pack(std::vector<std::uint8_t>(codes, codes + 8), 3));
  std::uint8_t back[8];
  gc::unpack8<3>(out, back);
  EXPECT_EQ(std::vector<std::uint8_t>(back, back + 8), std::vector<std::uint8_t>(codes, codes + 8));
}

TEST(bitpack, exact_layout) {
  // 3-bit codes 5, 3, 7, 1, 6 -> stream bits (k = 0 first)
  //   101 110 111 100 011 | padding 0
  // byte 0 = bits 0..7  = 1,0,1,1,1,0,1,1 = 0xdd
  // byte 1 = bits 8..15 = 1,1,0,0,0,1,1,0 = 0x63
  const std::vector<std::uint8_t> codes = {5, 3, 7, 1, 6};
  std::vector<std::byte> out(2);
  gc::pack_bits(codes, 3, out);
  EXPECT_EQ(out, bytes({0xdd, 0x63}));

  // 1-bit: code i is bit i%8 of byte i/8.
  const std::vector<std::uint8_t> ones = {1, 0, 0, 0, 0, 0, 0, 1, 1};
  std::vector<std::byte> out1(2);
  gc::pack_bits(ones, 1, out1);
  EXPECT_EQ(out1, bytes({0x81, 0x01}));

  // 4-bit: the first code is the low nibble.
  const std::vector<std::uint8_t> nibbles = {0xa, 0x5, 0x3};
  std::vector<std::byte> out4(2);
  gc::pack_bits(nibbles, 4, out4);
  EXPECT_EQ(out4, bytes({0x5a, 0x03}));

  // 2-bit and 8-bit.
  const std::vector<std::uint8_t> pairs = {1, 2, 3, 0, 3};
  std::vector<std::byte> out2(2);
  gc::pack_bits(pairs, 2, out2);
  EXPECT_EQ(out2, bytes({0x39, 0x03}));
  const std::vector<std::uint8_t> whole = {0x12, 0xfe};
  std::vector<std::byte> out8(2);
  gc::pack_bits(whole, 8, out8);
  EXPECT_EQ(out8, bytes({0x12, 0xfe}));
}

TEST(bitpack, masks_large_codes) {
  const std::vector<std::uint8_t> codes = {0xff, 0xfe, 0x09};  // 3 bits each: 7, 6, 1
  std::vector<std::byte> out(2);
  gc::pack_bits(codes, 3, out);
  std::vector<std::uint8_t> back(3);
  gc::unpack_bits(out, 3, back);
  EXPECT_EQ(back, (std::vector<std::uint8_t>{7, 6, 1}));
  EXPECT_EQ(out, bytes({0x77, 0x00}));  // 111 011 10|0 -> no bit leaks into padding
}

TEST(bitpack, writes_exactly_packed_bytes) {
  const auto codes = random_codes(13, 5);
  std::vector<std::byte> out(16, std::byte{0xee});
  gc::pack_bits(codes, 5, out);  // 65 bits -> 9 bytes
  for (std::size_t i = 9; i < out.size(); ++i) EXPECT_EQ(out[i], std::byte{0xee}) << i;
}

TEST(bitpack, caller_mistakes) {
  const std::vector<std::uint8_t> codes(10);
  std::vector<std::byte> out(10);
  EXPECT_EQ(library_errc([&] { gc::pack_bits(codes, 0, out); }), gc::errc::invalid_argument);
  EXPECT_EQ(library_errc([&] { gc::pack_bits(codes, 9, out); }), gc::errc::invalid_argument);
  std::vector<std::uint8_t> back(10);
  EXPECT_EQ(library_errc([&] { gc::unpack_bits(out, 0, back); }), gc::errc::invalid_argument);
  std::vector<std::byte> small(3);  // 10 codes of 3 bits need 4
  EXPECT_EQ(library_errc([&] { gc::pack_bits(codes, 3, small); }), gc::errc::buffer_too_small);
}

TEST(bitpack, malformed_input) {
  const auto codes = random_codes(10, 11);
  std::vector<std::byte> packed(gc::packed_bytes(10, 3));  // 30 bits: 4 bytes, 2 padding bits
  gc::pack_bits(codes, 3, packed);
  std::vector<std::uint8_t> back(10, 0xee);

  std::string w = decode_failure(
      [&] { gc::unpack_bits(std::span<const std::byte>(packed).first(3), 3, back); });
  EXPECT_NE(w.find("truncated"), std::string::npos) << w;
  EXPECT_NE(w.find("4 bytes, got 3"), std::string::npos) << w;

  auto longer = packed;
  longer.push_back(std::byte{0});
  w = decode_failure([&] { gc::unpack_bits(longer, 3, back); });
  EXPECT_NE(w.find("oversized"), std::string::npos) << w;
  EXPECT_NE(w.find("4 bytes, got 5"), std::string::npos) << w;

  for (unsigned bit = 6; bit < 8; ++bit) {
    auto padded = packed;
    padded[3] |= std::byte{1} << bit;
    w = decode_failure([&] { gc::unpack_bits(padded, 3, back); });
    EXPECT_NE(w.find("nonzero padding bits"), std::string::npos) << w;
  }
  EXPECT_EQ(back, std::vector<std::uint8_t>(10, 0xee)) << "a rejected payload wrote codes";

  // No padding at all: every byte value is valid.
  std::vector<std::byte> full(3, std::byte{0xff});
  std::vector<std::uint8_t> eight(8);
  gc::unpack_bits(full, 3, eight);
  EXPECT_EQ(eight, std::vector<std::uint8_t>(8, 7));

  // Zero codes take zero bytes.
  std::vector<std::uint8_t> none;
  gc::unpack_bits({}, 5, none);
  w = decode_failure([&] { gc::unpack_bits(full, 5, none); });
  EXPECT_NE(w.find("oversized"), std::string::npos) << w;
}

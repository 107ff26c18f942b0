// gradcomm/core/bitpack.hpp — packing of 1..8-bit codes into bytes, LSB first.
//
//   std::vector<std::byte> buf(gradcomm::packed_bytes(codes.size(), 3));
//   gradcomm::pack_bits(codes, 3, buf);    // 3-bit codes, tightly packed
//   gradcomm::unpack_bits(buf, 3, codes);  // checks length and padding
//
// Layout: code i occupies stream bits [i*b, (i+1)*b), and stream bit k is bit k%8 of
// byte k/8. The padding bits of the last byte are zero, so a payload has exactly one
// valid encoding and a decoder can reject any other.
//
// Eight codes of b bits fill exactly b bytes, so the loops work on groups of eight
// with a 64-bit word (pack8 / unpack8, usable in kernels too) and handle the tail once.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

static_assert(std::endian::native == std::endian::little,
              "gradcomm's bit packing reads 64-bit words from bytes: it needs a little-endian "
              "machine");

/// Bytes that n codes of `bits` bits occupy: ceil(n * bits / 8), without overflow.
///
///   static_assert(gradcomm::packed_bytes(10, 3) == 4);
GRADCOMM_HD constexpr std::size_t packed_bytes(std::size_t n, unsigned bits) noexcept {
  return n / 8 * bits + (n % 8 * bits + 7) / 8;
}

namespace detail {

// v replicated into every `lane`-bit lane of a 64-bit word.
GRADCOMM_HD constexpr std::uint64_t bitpack_lanes(std::uint64_t v, unsigned lane) noexcept {
  std::uint64_t r = 0;
  for (unsigned s = 0; s < 64; s += lane) r |= v << s;
  return r;
}
GRADCOMM_HD constexpr std::uint64_t bitpack_low_mask(unsigned bits) noexcept {
  return bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
}

// Eight code bytes (one per byte of x, already masked) -> 8*B bits at the bottom.
// Three halving steps, each joining the even and odd neighbours of a lane: codes into
// pairs (16-bit lanes), pairs into quads (32-bit lanes), quads into all eight.
template <unsigned B>
GRADCOMM_HD constexpr std::uint64_t squeeze8(std::uint64_t x) noexcept {
  if constexpr (B == 8) {
    return x;
  } else if constexpr (B == 1) {
    // One multiply gathers bit 0 of byte j into bit 56+j (no two partial products meet).
    return (x * 0x0102040810204080ull) >> 56;
  } else {
    constexpr std::uint64_t m1 = bitpack_lanes(bitpack_low_mask(B), 16);
    constexpr std::uint64_t m2 = bitpack_lanes(bitpack_low_mask(2 * B), 32);
    constexpr std::uint64_t m4 = bitpack_low_mask(4 * B);
    x = (x & m1) | ((x >> 8) & m1) << B;
    x = (x & m2) | ((x >> 16) & m2) << (2 * B);
    return (x & m4) | ((x >> 32) & m4) << (4 * B);
  }
}

// The inverse of squeeze8: 8*B bits (nothing above) -> one code per byte.
template <unsigned B>
GRADCOMM_HD constexpr std::uint64_t spread8(std::uint64_t x) noexcept {
  if constexpr (B == 8) {
    return x;
  } else if constexpr (B == 1) {
    // Copy the byte everywhere, keep bit j in byte j, turn "nonzero" into 1.
    x = (x * 0x0101010101010101ull) & 0x8040201008040201ull;
    return ((x + 0x7F7F7F7F7F7F7F7Full) >> 7) & 0x0101010101010101ull;
  } else {
    constexpr std::uint64_t m4 = bitpack_low_mask(4 * B);
    constexpr std::uint64_t m2 = bitpack_lanes(bitpack_low_mask(2 * B), 32);
    constexpr std::uint64_t m1 = bitpack_lanes(bitpack_low_mask(B), 16);
    x = (x & m4) | ((x >> (4 * B)) & m4) << 32;
    x = (x & m2) | ((x >> (2 * B)) & m2) << 16;
    return (x & m1) | ((x >> B) & m1) << 8;
  }
}

}  // namespace detail

/// Packs codes[0..8) (masked to Bits) into out[0..Bits). One group per thread writes
/// disjoint bytes, so kernels need no atomics.
///
///   gradcomm::pack8<4>(codes + 8 * t, out + 4 * t);
template <unsigned Bits>
GRADCOMM_HD inline void pack8(const std::uint8_t* codes, std::byte* out) noexcept {
  static_assert(Bits >= 1 && Bits <= 8, "codes have 1 to 8 bits");
  constexpr std::uint64_t code_mask = detail::bitpack_lanes(detail::bitpack_low_mask(Bits), 8);
  std::uint64_t x;
  std::memcpy(&x, codes, 8);
  x = detail::squeeze8<Bits>(x & code_mask);
  std::memcpy(out, &x, Bits);
}

/// Unpacks in[0..Bits) into codes[0..8); the inverse of pack8.
///
///   gradcomm::unpack8<4>(in + 4 * t, codes + 8 * t);
template <unsigned Bits>
GRADCOMM_HD inline void unpack8(const std::byte* in, std::uint8_t* codes) noexcept {
  static_assert(Bits >= 1 && Bits <= 8, "codes have 1 to 8 bits");
  std::uint64_t x = 0;
  std::memcpy(&x, in, Bits);
  x = detail::spread8<Bits>(x);
  std::memcpy(codes, &x, 8);
}

/// Code i of a packed stream of `bits`-bit codes (1..8). Reads only the bytes that hold
/// the code.
///
///   std::uint8_t c = gradcomm::get_code(payload, i, 3);
GRADCOMM_HD constexpr std::uint8_t get_code(const std::byte* p, std::size_t i,
                                            unsigned bits) noexcept {
  const std::size_t k = i * bits;
  const unsigned shift = static_cast<unsigned>(k % 8);
  unsigned w = static_cast<unsigned>(p[k / 8]);
  if (shift + bits > 8) w |= static_cast<unsigned>(p[k / 8 + 1]) << 8;  // straddles two bytes
  return static_cast<std::uint8_t>((w >> shift) & ((1u << bits) - 1));
}

/// Sets code i of a packed stream of `bits`-bit codes (1..8) to `code` masked to `bits`,
/// leaving the other codes as they are. A read-modify-write of one or two bytes: threads
/// that share a byte must not call it at once (use pack8 per group of eight instead).
/// Start from a zeroed buffer so that the padding bits stay zero.
///
///   gradcomm::set_code(payload, i, 3, c);
GRADCOMM_HD constexpr void set_code(std::byte* p, std::size_t i, unsigned bits,
                                    std::uint8_t code) noexcept {
  const std::size_t k = i * bits;
  const unsigned shift = static_cast<unsigned>(k % 8);
  const unsigned mask = ((1u << bits) - 1) << shift;
  const unsigned v = (static_cast<unsigned>(code) << shift) & mask;
  p[k / 8] = static_cast<std::byte>((static_cast<unsigned>(p[k / 8]) & ~mask) | v);
  if (shift + bits > 8) {
    p[k / 8 + 1] =
        static_cast<std::byte>((static_cast<unsigned>(p[k / 8 + 1]) & ~(mask >> 8)) | (v >> 8));
  }
}

namespace detail {

// Groups whose 8-byte window at B * g stays inside `bytes` bytes: those can move whole
// 64-bit words (an odd-sized copy of B bytes is several times slower).
template <unsigned B>
constexpr std::size_t wide_groups(std::size_t groups, std::size_t bytes) noexcept {
  if (bytes < 8) return 0;
  const std::size_t fit = (bytes - 8) / B + 1;
  return fit < groups ? fit : groups;
}

template <unsigned B>
void pack_bits_impl(const std::uint8_t* codes, std::size_t n, std::byte* out) noexcept {
  constexpr std::uint64_t code_mask = bitpack_lanes(bitpack_low_mask(B), 8);
  const std::size_t groups = n / 8;
  const std::size_t wide = wide_groups<B>(groups, packed_bytes(n, B));
  std::size_t g = 0;
  // Each 8-byte store spills 8 - B bytes into the next group, which overwrites them.
  for (; g < wide; ++g) {
    std::uint64_t x;
    std::memcpy(&x, codes + 8 * g, 8);
    x = squeeze8<B>(x & code_mask);
    std::memcpy(out + B * g, &x, 8);
  }
  for (; g < groups; ++g) pack8<B>(codes + 8 * g, out + B * g);
  if (const std::size_t rest = n % 8) {
    // Zero codes beyond n make the padding bits zero.
    std::uint8_t tail[8] = {};
    std::memcpy(tail, codes + 8 * groups, rest);
    std::byte packed[8];
    pack8<B>(tail, packed);
    std::memcpy(out + B * groups, packed, (rest * B + 7) / 8);
  }
}

// The caller has checked the length and the padding bits.
template <unsigned B>
void unpack_bits_impl(const std::byte* in, std::size_t n, std::uint8_t* codes) noexcept {
  constexpr std::uint64_t group_mask = bitpack_low_mask(8 * B);
  const std::size_t groups = n / 8;
  const std::size_t wide = wide_groups<B>(groups, packed_bytes(n, B));
  std::size_t g = 0;
  for (; g < wide; ++g) {
    std::uint64_t x;
    std::memcpy(&x, in + B * g, 8);
    x = spread8<B>(x & group_mask);
    std::memcpy(codes + 8 * g, &x, 8);
  }
  for (; g < groups; ++g) unpack8<B>(in + B * g, codes + 8 * g);
  if (const std::size_t rest = n % 8) {
    std::uint64_t x = 0;
    std::memcpy(&x, in + B * groups, (rest * B + 7) / 8);
    std::uint8_t tail[8];
    const std::uint64_t spread = spread8<B>(x);
    std::memcpy(tail, &spread, 8);
    std::memcpy(codes + 8 * groups, tail, rest);
  }
}

inline void check_code_bits(const char* call, unsigned bits) {
  if (bits < 1 || bits > 8)
    throw_invalid_argument(call, "codes have 1 to 8 bits, got " + std::to_string(bits));
}

// Calls f.template operator()<B>() with B = bits (1..8) as a constant.
template <class F>
decltype(auto) with_code_bits(unsigned bits, F&& f) {
  switch (bits) {
    case 1: return f.template operator()<1>();
    case 2: return f.template operator()<2>();
    case 3: return f.template operator()<3>();
    case 4: return f.template operator()<4>();
    case 5: return f.template operator()<5>();
    case 6: return f.template operator()<6>();
    case 7: return f.template operator()<7>();
    default: return f.template operator()<8>();
  }
}

}  // namespace detail

/// Packs `codes` as `bits`-bit codes (1..8) into the first packed_bytes(codes.size(), bits)
/// bytes of `out`; bits of a code above `bits` are ignored. Throws invalid_argument for
/// `bits` outside 1..8 and buffer_too_small when `out` is shorter.
///
///   std::vector<std::byte> out(gradcomm::packed_bytes(codes.size(), 2));
///   gradcomm::pack_bits(codes, 2, out);
inline void pack_bits(std::span<const std::uint8_t> codes, unsigned bits,
                      std::span<std::byte> out) {
  detail::check_code_bits("pack_bits", bits);
  const std::size_t need = packed_bytes(codes.size(), bits);
  if (out.size() < need) detail::throw_buffer_too_small("pack_bits", need, out.size());
  detail::with_code_bits(bits, [&]<unsigned B>() {
    detail::pack_bits_impl<B>(codes.data(), codes.size(), out.data());
  });
}

/// Unpacks `codes.size()` codes of `bits` bits (1..8) from `in`, which must hold exactly
/// packed_bytes(codes.size(), bits) bytes with zero padding bits; otherwise throws
/// decode_error naming the defect ("truncated", "oversized", "nonzero padding bits").
/// Throws invalid_argument for `bits` outside 1..8.
///
///   std::vector<std::uint8_t> codes(n);
///   gradcomm::unpack_bits(body, 2, codes);
inline void unpack_bits(std::span<const std::byte> in, unsigned bits,
                        std::span<std::uint8_t> codes) {
  detail::check_code_bits("unpack_bits", bits);
  const std::size_t need = packed_bytes(codes.size(), bits);
  if (in.size() != need) {
    throw decode_error("unpack_bits", std::string(in.size() < need ? "truncated" : "oversized") +
                                          ": " + std::to_string(codes.size()) + " codes of " +
                                          std::to_string(bits) + " bits take " +
                                          std::to_string(need) + " bytes, got " +
                                          std::to_string(in.size()));
  }
  // Padding first, so that a rejected payload leaves `codes` untouched.
  if (const unsigned used = codes.size() % 8 * bits % 8; used != 0) {
    const auto last = static_cast<unsigned>(in[need - 1]);
    if (last >> used) {
      throw decode_error("unpack_bits", "nonzero padding bits: the last byte (offset " +
                                            std::to_string(need - 1) + ") is " +
                                            std::to_string(last) + ", only its low " +
                                            std::to_string(used) + " bits are code bits");
    }
  }
  detail::with_code_bits(bits, [&]<unsigned B>() {
    detail::unpack_bits_impl<B>(in.data(), codes.size(), codes.data());
  });
}

}  // namespace v0
}  // namespace gradcomm

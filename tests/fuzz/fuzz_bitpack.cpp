// Fuzzes core/bitpack.hpp's unpack_bits (and pack_bits, get_code on what it accepts).
//
// Input: byte 0: bits = (b0 & 7) + 1; bit 3 chooses how the code count n is set: clear,
// n = bytes 1-2 (little-endian u16); set, n fits the packed length, minus (byte 1 % 8) so
// that exact fits, padding and short inputs all occur. Bytes 3.. are the packed stream,
// ending where the input ends.
#include <gradcomm/core/bitpack.hpp>

#include "fuzz_support.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const unsigned bits = (data[0] & 7u) + 1u;
  const auto in = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  std::size_t n;
  if (data[0] & 8u) {
    const std::size_t fit = in.size() * 8 / bits;
    n = fit - std::min<std::size_t>(fit, data[1] % 8u);
  } else {
    n = static_cast<std::size_t>(data[1]) | static_cast<std::size_t>(data[2]) << 8;
  }

  // Codes of exactly n bytes: writing one more is an AddressSanitizer report.
  std::vector<std::uint8_t> codes(n, 0xEE);
  const bool ok = gradcomm_fuzz::decodes([&] { gc::unpack_bits(in, bits, codes); });
  if (!ok) {
    check(std::all_of(codes.begin(), codes.end(), [](std::uint8_t c) { return c == 0xEE; }),
          "a rejected stream leaves the codes untouched");
  } else {
    check(in.size() == gc::packed_bytes(n, bits), "accepted only the exact length");
    for (std::size_t i = 0; i < n; ++i) {
      check(codes[i] < (1u << bits), "code within its bits");
      check(gc::get_code(in.data(), i, bits) == codes[i], "get_code agrees with unpack_bits");
    }
    // One valid encoding: packing the codes gives the stream back.
    std::vector<std::byte> again(in.size());
    gc::pack_bits(codes, bits, again);
    check(in.empty() || std::memcmp(again.data(), in.data(), in.size()) == 0,
          "pack(unpack(x)) == x");
  }

  // The packer on arbitrary code bytes (high bits ignored), and back.
  std::vector<std::uint8_t> raw(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) raw[i] = static_cast<std::uint8_t>(in[i]);
  std::vector<std::byte> packed(gc::packed_bytes(raw.size(), bits));
  gc::pack_bits(raw, bits, packed);
  std::vector<std::uint8_t> back(raw.size());
  check(gradcomm_fuzz::decodes([&] { gc::unpack_bits(packed, bits, back); }),
        "unpack accepts what pack wrote");
  for (std::size_t i = 0; i < raw.size(); ++i) {
    check(back[i] == (raw[i] & ((1u << bits) - 1u)), "unpack(pack(codes)) == codes & mask");
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (std::size_t n : {0u, 1u, 7u, 8u, 13u, 64u, 100u}) {
      std::vector<std::uint8_t> codes(n);
      for (std::size_t i = 0; i < n; ++i) codes[i] = static_cast<std::uint8_t>(i * 37u + bits);
      std::vector<std::byte> packed(gc::packed_bytes(n, bits));
      gc::pack_bits(codes, bits, packed);
      out.push_back(seed({static_cast<std::uint8_t>(bits - 1), static_cast<std::uint8_t>(n & 255),
                          static_cast<std::uint8_t>(n >> 8)},
                         packed));
    }
  }
  return out;
}

// tests/support/element_count.hpp — the element count a decoder fuzz target decodes its
// payload to, chosen by the input's first three bytes (tests/fuzz/fuzz_*.cpp).
//
//   // Input: byte 0 odd: the payload's own count (bytes 8..15 of its header) when it is
//   // at most 2^16, else bytes 1-2; byte 0 even: bytes 1-2 (little-endian u16).
//   // Bytes 3.. are the payload.
//   const std::size_t n = gradcomm_test::element_count(data, size);  // size >= 3
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gradcomm_test {

/// The element count of a fuzz input of `size` >= 3 bytes laid out as above: mostly the
/// payload's own (so that accepted payloads are reached), else the one bytes 1-2 choose
/// (so that counts that disagree with the payload are tried too).
inline std::size_t element_count(const std::uint8_t* data, std::size_t size) {
  const std::size_t chosen = static_cast<std::size_t>(data[1]) | static_cast<std::size_t>(data[2])
                                                                     << 8;
  if ((data[0] & 1u) && size >= 3 + 16) {
    std::uint64_t count;
    std::memcpy(&count, data + 3 + 8, 8);
    if (count <= (1u << 16)) return static_cast<std::size_t>(count);
  }
  return chosen;
}

}  // namespace gradcomm_test

// gradcomm/codec/detail/topk_math.hpp — top-k's per-element arithmetic: the bin of a key in
// one digit of the radix selection of the k-th largest key. GRADCOMM_HD: the CPU histogram
// loops (topk_cpu.hpp) and device kernels bin alike. Internal: not part of the API.
//
//   ++hist[gradcomm::detail::topk_radix_bin(key, 20, 11, 0)];  // the first digit: bits 20..30
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

/// The bin of key k (a sparse_key, 31 bits) in the radix digit of bits [shift, shift +
/// width): those bits where k's bits above shift + width equal `prefix` (all keys when
/// shift + width >= 31), else bin 2^width, which takes the keys outside the prefix.
GRADCOMM_HD constexpr std::uint32_t topk_radix_bin(std::uint32_t k, unsigned shift, unsigned width,
                                                   std::int32_t prefix) noexcept {
  const std::uint32_t bins = 1u << width;
  const unsigned top = shift + width;
  const bool in = top >= 31 || static_cast<std::int32_t>(k >> top) == prefix;
  return in ? (k >> shift) & (bins - 1) : bins;
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

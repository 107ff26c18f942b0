// gradcomm/codec/detail/fp8_block_cpu.hpp — block-scaled fp8's CPU loops: portable and AVX2.
// Internal: not part of the API.
//
//   using loops = gradcomm::detail::fp8_block_cpu;
//   std::size_t b = loops::encode_blocks<gradcomm::dtype::fp8_e4m3>(x, n, 0, scales, elems);
//   // blocks [0, b) written; b < blocks(n): block b holds ±Inf or NaN
//
// The loops call fp8_block_math.hpp's per-block functions; the AVX2 clones are the same
// source compiled for AVX2, chosen at run time (cpu_dispatch.hpp).
#pragma once

#include <gradcomm/codec/detail/cast_math.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/fp8_block_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstddef>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {
namespace detail {

struct fp8_block_cpu {
  static constexpr std::size_t block_size = fp8_block_size;

  // ---- dispatch: the widest path this CPU runs ------------------------------------------

  template <dtype E>
  static std::size_t encode_blocks(const float* src, std::size_t n, std::size_t first,
                                   std::uint8_t* scales, std::uint8_t* elems) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return encode_blocks_avx2<E>(src, n, first, scales, elems);
#endif
    return encode_blocks_impl<E>(src, n, first, scales, elems);
  }
  template <dtype E, bool Add>
  static void decode_blocks(const std::uint8_t* scales, const std::uint8_t* elems, std::size_t n,
                            float* out) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return decode_blocks_avx2<E, Add>(scales, elems, n, out);
#endif
    decode_blocks_impl<E, Add>(scales, elems, n, out);
  }

  // ---- the portable loops -----------------------------------------------------------------

  /// Encodes blocks from `first` on while they are finite; returns the index of the first
  /// block holding ±Inf or NaN (left unwritten), or fp8_block_count(n). The portable loop: the
  /// tests compare it with the clone.
  template <dtype E>
  [[gnu::always_inline]] static inline std::size_t encode_blocks_impl(
      const float* __restrict src, std::size_t n, std::size_t first,
      std::uint8_t* __restrict scales, std::uint8_t* __restrict elems) noexcept {
    const std::size_t nb = fp8_block_count(n);
    for (std::size_t b = first; b < nb; ++b) {
      const std::size_t begin = b * block_size;
      const auto count = static_cast<unsigned>(n - begin < block_size ? n - begin : block_size);
      const float* x = src + begin;
      // A constant trip count (a whole block) vectorizes whole.
      const std::int32_t amax =
          count == block_size ? fp8_block_amax_bits(x, block_size) : fp8_block_amax_bits(x, count);
      if (amax >= 0x7f800000) return b;
      const std::uint8_t code =
          fp8_block_scale_code(static_cast<std::uint32_t>(amax), fp8_format<E>::emax);
      const float inv = fp8_block_inverse_scale(code);
      scales[b] = code;
      std::uint8_t* q = elems + begin;
      if (count == block_size) {
        for (unsigned i = 0; i < block_size; ++i) q[i] = fp8_block_element<E>(x[i], inv);
      } else {
        for (unsigned i = 0; i < count; ++i) q[i] = fp8_block_element<E>(x[i], inv);
      }
    }
    return nb;
  }

  /// Decodes (or, with Add, adds) n values from valid scales and elements.
  template <dtype E, bool Add>
  [[gnu::always_inline]] static inline void decode_blocks_impl(
      const std::uint8_t* __restrict scales, const std::uint8_t* __restrict elems, std::size_t n,
      float* __restrict out) noexcept {
    const std::size_t full = n / block_size;
    for (std::size_t b = 0; b < full; ++b) {
      fp8_block_decode<E, Add>(scales[b], elems + b * block_size, block_size, out + b * block_size);
    }
    if (const std::size_t rest = n % block_size) {
      fp8_block_decode<E, Add>(scales[full], elems + full * block_size, static_cast<unsigned>(rest),
                               out + full * block_size);
    }
  }

  // ---- the AVX2 clones --------------------------------------------------------------------
#if GRADCOMM_X86_DISPATCH
  template <dtype E>
  GRADCOMM_FLATTEN_AVX2 static std::size_t encode_blocks_avx2(const float* src, std::size_t n,
                                                              std::size_t first,
                                                              std::uint8_t* scales,
                                                              std::uint8_t* elems) noexcept {
    return encode_blocks_impl<E>(src, n, first, scales, elems);
  }
  template <dtype E, bool Add>
  GRADCOMM_FLATTEN_AVX2 static void decode_blocks_avx2(const std::uint8_t* scales,
                                                       const std::uint8_t* elems, std::size_t n,
                                                       float* out) noexcept {
    decode_blocks_impl<E, Add>(scales, elems, n, out);
  }
#endif
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

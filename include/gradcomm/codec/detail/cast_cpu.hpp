// gradcomm/codec/detail/cast_cpu.hpp — the cast codecs' CPU loops: portable and AVX2.
// Internal: not part of the API.
//
//   using loops = gradcomm::detail::cast_cpu<gradcomm::dtype::bf16>;
//   bool nonfinite = loops::encode_all(src, body, n);  // the widest path this CPU runs
//
// Each loop calls cast_math.hpp's per-element functions; the AVX2 clones are the same source
// compiled for AVX2, chosen at run time (cpu_dispatch.hpp). The loops take restrict pointers:
// the payload is bytes, which may alias anything.
#pragma once

#include <gradcomm/codec/detail/cast_math.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gradcomm {
inline namespace v0 {
namespace detail {

template <dtype To>
struct cast_cpu {
  using storage = cast_storage<To>;
  using element = typename storage::type;
  static constexpr std::size_t element_bytes = dtype_size(To);

  static void store(std::byte* body, std::size_t i, element e) noexcept {
    std::memcpy(body + i * element_bytes, &e, element_bytes);
  }
  static element load(const std::byte* body, std::size_t i) noexcept {
    element e;
    std::memcpy(&e, body + i * element_bytes, element_bytes);
    return e;
  }

  // ---- dispatch: the widest path this CPU runs ------------------------------------------

  /// Encodes n values (NaN mishandled, fixed by the codec); true where any is ±Inf or NaN.
  static bool encode_all(const float* src, std::byte* body, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return encode_all_avx2(src, body, n);
#endif
    return encode_all_impl(src, body, n);
  }
  /// Encodes n values, ±Inf and NaN as 0.
  static void encode_zeroing(const float* src, std::byte* body, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return encode_zeroing_avx2(src, body, n);
#endif
    encode_zeroing_impl(src, body, n);
  }
  static void decode_into(const std::byte* body, float* dst, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return decode_into_avx2(body, dst, n);
#endif
    decode_into_impl(body, dst, n);
  }
  static void decode_adding(const std::byte* body, float* dst, std::size_t n) noexcept {
#if GRADCOMM_X86_DISPATCH
    if (cpu_runs(cpu_isa::avx2)) return decode_adding_avx2(body, dst, n);
#endif
    decode_adding_impl(body, dst, n);
  }

  // ---- the portable loops (the tests compare them with the clones) ----------------------

  [[gnu::always_inline]] static inline bool encode_all_impl(const float* __restrict src,
                                                            std::byte* __restrict body,
                                                            std::size_t n) noexcept {
    // The largest magnitude's bits tell whether any value is ±Inf or NaN: one max a
    // vector, sharing the |f| the conversion computes anyway.
    std::int32_t largest = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t a = float_bits_i32(src[i]) & 0x7fffffff;
      largest = a > largest ? a : largest;
      store(body, i, storage::from_not_nan(src[i]));
    }
    return largest >= 0x7f800000;
  }
  [[gnu::always_inline]] static inline void encode_zeroing_impl(const float* __restrict src,
                                                                std::byte* __restrict body,
                                                                std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t b = float_bits_i32(src[i]);
      const float v = i32_bits_float(select_i32(is_nonfinite(src[i]), 0, b));
      store(body, i, storage::from(v));
    }
  }
  [[gnu::always_inline]] static inline void decode_into_impl(const std::byte* __restrict body,
                                                             float* __restrict dst,
                                                             std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) dst[i] = to_float(load(body, i));
  }
  [[gnu::always_inline]] static inline void decode_adding_impl(const std::byte* __restrict body,
                                                               float* __restrict dst,
                                                               std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) dst[i] += to_float(load(body, i));
  }

  // ---- the AVX2 clones --------------------------------------------------------------------
#if GRADCOMM_X86_DISPATCH
  GRADCOMM_FLATTEN_AVX2 static bool encode_all_avx2(const float* src, std::byte* body,
                                                    std::size_t n) noexcept {
    return encode_all_impl(src, body, n);
  }
  GRADCOMM_FLATTEN_AVX2 static void encode_zeroing_avx2(const float* src, std::byte* body,
                                                        std::size_t n) noexcept {
    encode_zeroing_impl(src, body, n);
  }
  GRADCOMM_FLATTEN_AVX2 static void decode_into_avx2(const std::byte* body, float* dst,
                                                     std::size_t n) noexcept {
    decode_into_impl(body, dst, n);
  }
  GRADCOMM_FLATTEN_AVX2 static void decode_adding_avx2(const std::byte* body, float* dst,
                                                       std::size_t n) noexcept {
    decode_adding_impl(body, dst, n);
  }
#endif
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/sign.hpp — signs with one scale a block: sign_codec (1 bit a value, as in
// 1-bit Adam and EF-SignSGD) and ternary_codec (TernGrad: {−1, 0, +1} × scale, stochastic).
//
//   gradcomm::error_feedback<gradcomm::sign_codec> c;      // sign wants error feedback
//   gradcomm::ternary_codec t(256);
//   t.set_stream({.seed = 7, .step = it, .rank = r});      // unbiased: no feedback needed
//   std::vector<std::byte> wire(t.max_encoded_bytes(g.size()));
//   wire.resize(t.encode(g, wire));
//   t.decode_add(wire, sum);
//
// Both are block quantizers of codec/quantize.hpp with a fixed bit width and scale rule,
// and share its payload body: after the header (dtype f32) and 4 parameter bytes (u32 block
// size, >= 1), one f32 scale a block (finite, >= 0), then the codes packed LSB first.
//   sign:    code 1 is +scale, 0 is −scale; zero (and −0) encode as +. The scale is the
//            block's mean |g|, so the block's L1 norm is kept: Σ|decoded| = Σ|g|.
//   ternary: 2-bit codes q + 1 (0, 1, 2 for q = −1, 0, +1; code 3 is rejected); the scale
//            is the block's max |g|, and |q| = 1 with probability |g| / scale (Philox,
//            keyed by stream_key, element i drawing philox_stream(...).at(i)), so
//            E[decoded] = g: scalar_quant's 2-bit stochastic max-abs levels.
// NaN and ±Inf follow nonfinite_policy (default reject: encode throws naming the first bad
// index; `pass` acts as `reject`; `zero` encodes them as 0, left out of the scale).
//
// sign_codec offers error feedback's fused step, encode_with_residual (ResidualCodec in
// codec/error_feedback.hpp): one pass a block over g and e computes s = g + e, the block's
// mean |s|, the sign bits and the next residual s − decoded, where encode, decode and the
// residual's update would read and write the whole tensor several times.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#if GRADCOMM_X86_DISPATCH
#include <immintrin.h>
#endif

namespace gradcomm {
inline namespace v0 {

namespace detail {

// sign_codec under error feedback, fused (sign_codec::encode_with_residual): for s = g + e,
// the payload body that encode(s) writes and next = s − decode(that payload), non-finite
// elements 0. Per block two passes over g and e (the second from cache): the scale, then
// codes and residual. The portable loops are the reference; the AVX2 ones do the same
// operations in the same order (no FMA), so they write the same bits.
struct sign_ef_job {
  const float* g;
  const float* e;
  float* next;
  std::size_t n;
  std::uint32_t block;
  nonfinite_policy policy;
  std::byte* scales;    // 4 × blocks bytes
  std::uint8_t* codes;  // packed_bytes(n, 1) bytes
  const char* call;
};

// Names the first non-finite g[i] + e[i] of a block, as quant_encode names the first bad value.
[[noreturn]] GRADCOMM_QUANT_COLD inline void throw_sign_ef_nonfinite(const char* call,
                                                                     const float* g, const float* e,
                                                                     std::size_t base,
                                                                     std::size_t n) {
  std::size_t i = 0;
  while (i + 1 < n && std::isfinite(g[i] + e[i])) ++i;
  throw_invalid_argument(call, "non-finite value " + std::to_string(g[i] + e[i]) + " at index " +
                                   std::to_string(base + i));
}

// Σ |g[i] + e[i]| over one block in lane_sum's order (8 lanes by i % 8, joined in a fixed
// order), and max |s| as bits. Zero: non-finite s read as 0.
template <bool Zero>
inline double sign_ef_sums(const float* g, const float* e, std::size_t len,
                           std::int32_t& max_bits) noexcept {
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int32_t m = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const float s = g[i] + e[i];
    const std::int32_t a = abs_float_bits(float_bits(s));
    m = a > m ? a : m;
    l[i % 8] += std::fabs(static_cast<double>(Zero ? finite_or_zero(s) : s));
  }
  max_bits = m;
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// Element i: its code (1 for s >= 0, zero included) and next[i].
template <bool Zero>
inline unsigned sign_ef_element(const float* g, const float* e, float* next, std::size_t i,
                                float scale) noexcept {
  const float s = g[i] + e[i];
  const unsigned c = (Zero ? finite_or_zero(s) : s) < 0.0f ? 0u : 1u;
  next[i] = finite_or_zero(s - scalar_quant_value<1>(static_cast<std::uint8_t>(c), scale));
  return c;
}

// Elements [from, to) of one code byte (to − 1 < (from / 8 + 1) * 8): their bits replace
// those of the byte, the others stay.
template <bool Zero>
inline void sign_ef_partial_byte(const sign_ef_job& j, std::size_t from, std::size_t to,
                                 float scale) noexcept {
  unsigned byte = j.codes[from / 8];
  for (std::size_t i = from; i < to; ++i) {
    const unsigned bit = 1u << (i % 8);
    byte = (byte & ~bit) | (sign_ef_element<Zero>(j.g, j.e, j.next, i, scale) ? bit : 0u);
  }
  j.codes[from / 8] = static_cast<std::uint8_t>(byte);
}

// Codes and residual of the block [b0, b0 + len): whole code bytes in the middle, partial
// ones at either end.
template <bool Zero>
inline void sign_ef_codes(const sign_ef_job& j, std::size_t b0, std::size_t len,
                          float scale) noexcept {
  const std::size_t end = b0 + len;
  std::size_t i = b0;
  if (i % 8 != 0) {
    const std::size_t to = end < (i / 8 + 1) * 8 ? end : (i / 8 + 1) * 8;
    sign_ef_partial_byte<Zero>(j, i, to, scale);
    i = to;
  }
  for (; i + 8 <= end; i += 8) {
    unsigned byte = 0;
    for (unsigned k = 0; k < 8; ++k)
      byte |= sign_ef_element<Zero>(j.g, j.e, j.next, i + k, scale) << k;
    j.codes[i / 8] = static_cast<std::uint8_t>(byte);
  }
  if (i < end) sign_ef_partial_byte<Zero>(j, i, end, scale);
}

#if GRADCOMM_X86_DISPATCH
[[gnu::target("avx2")]] inline double sign_ef_sums_avx2(const float* g, const float* e,
                                                        std::size_t len,
                                                        std::int32_t& max_bits) noexcept {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  __m256i mx = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 a =
        _mm256_and_ps(_mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_loadu_ps(e + i)), abs_mask);
    mx = _mm256_max_epi32(mx, _mm256_castps_si256(a));
    // |double(s)| == double(|s|): the conversion is exact.
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  }
  alignas(32) double l[8];
  alignas(32) std::int32_t m8[8];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(l + 4, hi);
  _mm256_store_si256(reinterpret_cast<__m256i*>(m8), mx);
  std::int32_t m = 0;
  for (int k = 0; k < 8; ++k) m = m8[k] > m ? m8[k] : m;
  for (std::size_t k = 0; i + k < len; ++k) {
    const float s = g[i + k] + e[i + k];
    const std::int32_t a = abs_float_bits(float_bits(s));
    m = a > m ? a : m;
    l[k] += std::fabs(static_cast<double>(s));
  }
  max_bits = m;
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// 8 elements from i: next[i..i+8) and the 8 code bits.
template <bool Zero>
[[gnu::target("avx2"), gnu::always_inline]] inline unsigned sign_ef_codes8_avx2(
    const sign_ef_job& j, std::size_t i, __m256 scale) noexcept {
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  const __m256 s = _mm256_add_ps(_mm256_loadu_ps(j.g + i), _mm256_loadu_ps(j.e + i));
  __m256 v = s;
  if constexpr (Zero) {
    const __m256i bad =
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(s), exponent), exponent);
    v = _mm256_andnot_ps(_mm256_castsi256_ps(bad), s);
  }
  const __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
  // ±scale: (2c − 1) × scale is exactly scale with its sign flipped for c = 0.
  const __m256 d = _mm256_xor_ps(scale, _mm256_and_ps(neg, _mm256_set1_ps(-0.0f)));
  const __m256 r = _mm256_sub_ps(s, d);
  const __m256i rbad =
      _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(r), exponent), exponent);
  _mm256_storeu_ps(j.next + i, _mm256_andnot_ps(_mm256_castsi256_ps(rbad), r));
  return ~static_cast<unsigned>(_mm256_movemask_ps(neg)) & 0xffu;
}

template <bool Zero>
[[gnu::target("avx2")]] inline void sign_ef_codes_avx2(const sign_ef_job& j, std::size_t b0,
                                                       std::size_t len, float scale) noexcept {
  const std::size_t end = b0 + len;
  std::size_t i = b0;
  if (i % 8 != 0) {
    const std::size_t to = end < (i / 8 + 1) * 8 ? end : (i / 8 + 1) * 8;
    sign_ef_partial_byte<Zero>(j, i, to, scale);
    i = to;
  }
  const __m256 sv = _mm256_set1_ps(scale);
  for (; i + 32 <= end; i += 32) {
    std::uint32_t bits = 0;
    for (unsigned q = 0; q < 4; ++q) bits |= sign_ef_codes8_avx2<Zero>(j, i + 8 * q, sv) << (8 * q);
    std::memcpy(j.codes + i / 8, &bits, 4);
  }
  for (; i + 8 <= end; i += 8)
    j.codes[i / 8] = static_cast<std::uint8_t>(sign_ef_codes8_avx2<Zero>(j, i, sv));
  if (i < end) sign_ef_partial_byte<Zero>(j, i, end, scale);
}
#endif

// Block by block: the scale (one pass), then codes and residual (another). Each block's
// sums are taken one block ahead, so that their chain of dependent additions runs beside
// the previous block's second pass. A block with NaN or Inf throws in its turn (policy
// reject or pass) or reads them as 0 (policy zero).
template <bool Avx2>
inline void sign_ef_encode(const sign_ef_job& j) {
  const std::size_t n = j.n;
  if (n % 8 != 0) j.codes[n / 8] = 0;  // the padding bits
  auto sums = [&j](std::size_t b0, std::int32_t& mb) {
    const std::size_t len = j.n - b0 < j.block ? j.n - b0 : j.block;
#if GRADCOMM_X86_DISPATCH
    if constexpr (Avx2) return sign_ef_sums_avx2(j.g + b0, j.e + b0, len, mb);
#endif
    return sign_ef_sums<false>(j.g + b0, j.e + b0, len, mb);
  };
  std::int32_t next_mb = 0;
  double next_sum = n != 0 ? sums(0, next_mb) : 0.0;
  std::size_t k = 0;
  std::size_t g_prefetched = 0, e_prefetched = 0;  // values below these were prefetched
  for (std::size_t b0 = 0; b0 < n; b0 += j.block, ++k) {
    const std::size_t len = n - b0 < j.block ? n - b0 : j.block;
    // Two streams read, one written: asking 4 KiB ahead measured faster than leaving it
    // to the hardware prefetcher.
    const std::size_t ahead = n - b0 - len < 1024 ? n : b0 + len + 1024;
    g_prefetched = prefetch_values(j.g, g_prefetched, ahead);
    e_prefetched = prefetch_values(j.e, e_prefetched, ahead);
    std::int32_t mb = next_mb;
    double sum = next_sum;
    if (b0 + len < n) next_sum = sums(b0 + len, next_mb);
    const bool zero_nonfinite = mb >= nonfinite_abs_bits;
    if (zero_nonfinite) {
      if (j.policy != nonfinite_policy::zero)
        throw_sign_ef_nonfinite(j.call, j.g + b0, j.e + b0, b0, len);
      sum = sign_ef_sums<true>(j.g + b0, j.e + b0, len, mb);
    }
    // block_mean_abs's scale; scalar_quant_step(scale, 1) is the scale itself.
    const float scale = double_to_scale(sum / static_cast<double>(len));
    store_f32(j.scales + 4 * k, scale);
#if GRADCOMM_X86_DISPATCH
    if constexpr (Avx2) {
      if (zero_nonfinite) {
        sign_ef_codes_avx2<true>(j, b0, len, scale);
      } else {
        sign_ef_codes_avx2<false>(j, b0, len, scale);
      }
      continue;
    }
#endif
    if (zero_nonfinite) {
      sign_ef_codes<true>(j, b0, len, scale);
    } else {
      sign_ef_codes<false>(j, b0, len, scale);
    }
  }
}

#if GRADCOMM_X86_DISPATCH
GRADCOMM_FLATTEN_AVX2 inline void sign_ef_encode_avx2(const sign_ef_job& j) {
  sign_ef_encode<true>(j);
}
#endif

// The fused step on `isa`'s path (portable or AVX2; AVX-512 CPUs take the AVX2 one).
inline void sign_ef_encode_isa(const sign_ef_job& j, cpu_isa isa) {
#if GRADCOMM_X86_DISPATCH
  if (isa != cpu_isa::portable) return sign_ef_encode_avx2(j);
#else
  (void)isa;
#endif
  sign_ef_encode<false>(j);
}

}  // namespace detail

/// 1 bit a value: sign(g) × mean |g| of its block (zero counts as +). Deterministic; not
/// linear, fixed size, stateless. Biased (it keeps L1 norms, not values): pair it with
/// error_feedback.
///
///   gradcomm::sign_codec s(512);  // blocks of 512 values
///   std::vector<std::byte> wire(s.max_encoded_bytes(n));  // about n / 8 + n / 128 bytes
///   wire.resize(s.encode(g, wire));
///   s.decode(wire, out);
class sign_codec : public host_codec_calls<sign_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::sign;
  /// Bytes of codec parameters in the header (the u32 block size).
  static constexpr std::size_t params_bytes = 4;

  /// Throws invalid_argument for block 0.
  explicit sign_codec(std::uint32_t block = 256, nonfinite_policy policy = nonfinite_policy::reject)
      : block_(block), policy_(policy) {
    detail::check_block_size("sign_codec", block);
  }

  std::uint32_t block() const noexcept { return block_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, block_, 1);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    const detail::quant_format f{id,    params,  1, block_, detail::block_scale_rule::mean_abs,
                                 false, policy_, {}};
    return detail::quant_encode_payload(f, in, out, "sign_codec::encode");
  }

  /// Error feedback's step in one pass (ResidualCodec, codec/error_feedback.hpp): with
  /// s[i] = in[i] + residual[i] (f32 sums), writes into `out` the payload encode(s) writes
  /// and into `next` s − decode(that payload), 0 where that is not finite: the same bits as
  /// those calls. Returns the payload's size. Throws buffer_too_small, invalid_argument for
  /// sizes that differ, or invalid_argument naming the first non-finite s (policy reject or
  /// pass); `residual` is only read, so a caller that passes another buffer as `next` keeps
  /// its residual when a call throws (`next` and `out` then hold anything). `next` may be
  /// `residual` itself, not overlap it otherwise.
  ///
  ///   std::vector<float> e(n, 0.0f), next(n);
  ///   wire.resize(s.encode_with_residual(g, e, wire, next));  // sends sign(g + e) × scale
  ///   std::swap(e, next);                                     // e: what is still owed
  std::size_t encode_with_residual(host_view<const float> in, host_view<const float> residual,
                                   std::span<std::byte> out, host_view<float> next) const {
    static constexpr const char* call = "sign_codec::encode_with_residual";
    const std::size_t n = in.size();
    if (residual.size() != n || next.size() != n) {
      detail::throw_invalid_argument(
          call, "input of " + std::to_string(n) + " values, residual of " +
                    std::to_string(residual.size()) + ", next of " + std::to_string(next.size()));
    }
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    wire_writer w(out, call);
    const std::size_t body = detail::quant_body_bytes(n, block_, 1);
    write_header(w, id, dtype::f32, n, params, body);
    std::byte* scales = w.take(body).data();
    const detail::sign_ef_job j{
        in.data(),
        residual.data(),
        next.data(),
        n,
        block_,
        policy_,
        scales,
        reinterpret_cast<std::uint8_t*>(scales + 4 * detail::quant_block_count(n, block_)),
        call};
    detail::sign_ef_encode_isa(j, detail::cpu_best_isa());
    return need;
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(detail::open_block_only(payload, out.size(), id, 1, "sign_codec::decode"),
                         out.data(), out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(
        detail::open_block_only(payload, acc.size(), id, 1, "sign_codec::decode_add"), acc.data(),
        acc.size(), true);
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<sign_codec>::encode;
  using host_codec_calls<sign_codec>::decode;
  using host_codec_calls<sign_codec>::decode_add;

 private:
  std::uint32_t block_;
  nonfinite_policy policy_;
};

/// TernGrad: {−1, 0, +1} × max |g| of the block, 2 bits a value, stochastic and unbiased
/// (|q| = 1 with probability |g| / scale). Not linear, fixed size, stateless.
///
///   gradcomm::ternary_codec t;  // blocks of 256
///   t.set_stream({.seed = 1, .step = it, .rank = r, .bucket = b});
///   wire.resize(t.encode(g, wire));
///   t.decode_add(wire, sum);
class ternary_codec : public host_codec_calls<ternary_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::ternary;
  /// Bytes of codec parameters in the header (the u32 block size).
  static constexpr std::size_t params_bytes = 4;

  /// Throws invalid_argument for block 0.
  explicit ternary_codec(std::uint32_t block = 256,
                         nonfinite_policy policy = nonfinite_policy::reject)
      : block_(block), policy_(policy) {
    detail::check_block_size("ternary_codec", block);
  }

  std::uint32_t block() const noexcept { return block_; }
  nonfinite_policy policy() const noexcept { return policy_; }

  /// Keys the random numbers: a rerun with the same key gives the same bytes.
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, block_, 2);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes];
    std::memcpy(params, &block_, 4);
    const detail::quant_format f{id,   params,  2,   block_, detail::block_scale_rule::max_abs,
                                 true, policy_, key_};
    return detail::quant_encode_payload(f, in, out, "ternary_codec::encode");
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(
        detail::open_block_only(payload, out.size(), id, 2, "ternary_codec::decode"), out.data(),
        out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(
        detail::open_block_only(payload, acc.size(), id, 2, "ternary_codec::decode_add"),
        acc.data(), acc.size(), true);
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<ternary_codec>::encode;
  using host_codec_calls<ternary_codec>::decode;
  using host_codec_calls<ternary_codec>::decode_add;

 private:
  std::uint32_t block_;
  nonfinite_policy policy_;
  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

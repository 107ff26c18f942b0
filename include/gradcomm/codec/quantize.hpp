// gradcomm/codec/quantize.hpp — scalar quantization: 1 to 8 bits a value, one scale a block.
//
//   gradcomm::scalar_quant_codec q({.bits = 4, .block = 256,
//                                   .rounding = gradcomm::quant_rounding::stochastic});
//   q.set_stream({.seed = 42, .step = it, .rank = r, .bucket = b});  // stochastic only
//   std::vector<std::byte> wire(q.max_encoded_bytes(g.size()));
//   wire.resize(q.encode(g, wire));
//   q.decode_add(wire, sum);  // sum += decode(wire)
//
// Levels. With b bits a value is q × step, q an integer in [-qmax, qmax], qmax = 2^(b-1) - 1
// (8 bits: ±127), step = scale / qmax for the value's block, sent as the code q + qmax; the
// code 2^b - 1 is never used. One bit has no zero level: q ∈ {-1, +1} (code 0 / 1), qmax = 1,
// step = scale, so a value is ± scale (zero goes to +). The scale of a block is max |g|
// (levels reach the extremes) or its L2 norm (QSGD: qmax levels of ‖g‖). Rounding is to the
// nearest level (ties to even q), |x − Q(x)| ≤ half the level spacing (step / 2; one bit:
// step), or stochastic and unbiased (E[Q(x)] = x) with Philox numbers keyed by stream_key,
// element i drawing philox_stream(seed, step, rank, bucket).at(i).
//
// Payload (core/wire.hpp): header (dtype f32), 8 parameter bytes
//   u8 bits (1..8), u8 scale rule (quant_scale), u8 rounding (quant_rounding), u8 zero,
//   u32 block size (>= 1),
// then the body: one f32 scale per block (ceil(n / block) of them, each finite and >= 0),
// then the n codes packed at `bits` bits each (core/bitpack.hpp), zero padding bits.
//
// The arithmetic of one block and one element is GRADCOMM_HD (scalar_quant_step,
// scalar_quant_nearest, scalar_quant_stochastic, scalar_quant_value, block_max_abs,
// block_l2_norm: detail/quant_math.hpp): the CUDA kernels call the same functions and write
// the same bytes. The CPU loops, with AVX2 and AVX-512 paths chosen at run time, are
// detail/quant_cpu.hpp's; this header holds the codec, its parameters and its wire format.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/quant_cpu.hpp>
#include <gradcomm/codec/detail/quant_math.hpp>
#include <gradcomm/core/bitpack.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

/// How a block's scale is chosen (one byte in the payload).
///
///   gradcomm::scalar_quant_params p{.scale = gradcomm::quant_scale::l2_norm};  // QSGD
enum class quant_scale : std::uint8_t {
  max_abs = 0,  ///< max |g| of the block: the extreme levels are reached
  l2_norm = 1,  ///< ‖g‖₂ of the block, as QSGD (coarser, unbiased with stochastic rounding)
};

/// How a value is rounded to a level (one byte in the payload).
///
///   gradcomm::scalar_quant_params p{.rounding = gradcomm::quant_rounding::stochastic};
enum class quant_rounding : std::uint8_t {
  nearest = 0,     ///< the nearest level, ties to even q: deterministic
  stochastic = 1,  ///< up or down with the probabilities that make E[Q(x)] = x
};

/// Parameters of scalar_quant_codec; designated initializers read well:
///
///   gradcomm::scalar_quant_codec q({.bits = 2, .block = 512});
struct scalar_quant_params {
  unsigned bits = 8;          ///< bits a value, 1 to 8
  std::uint32_t block = 256;  ///< values that share a scale, >= 1
  quant_scale scale = quant_scale::max_abs;
  quant_rounding rounding = quant_rounding::nearest;
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

namespace detail {

// Scales then codes.
GRADCOMM_HD constexpr std::size_t quant_body_bytes(std::size_t n, std::uint32_t block,
                                                   unsigned bits) noexcept {
  return 4 * quant_block_count(n, block) + packed_bytes(n, bits);
}

// Checked body: decoders call this before they write anything.
template <unsigned B>
void quant_check_codes(const std::byte* codes, std::size_t n, const char* call) {
  const std::size_t bytes = packed_bytes(n, B);
  if (const unsigned used = n % 8 * B % 8; used != 0) {
    const auto last = std::to_integer<unsigned>(codes[bytes - 1]);
    if (last >> used) {
      throw decode_error(call, "nonzero padding bits: the last code byte is " +
                                   std::to_string(last) + ", only its low " + std::to_string(used) +
                                   " bits are code bits");
    }
  }
  if constexpr (B >= 2) {
    // The all-ones code (2^B − 1) has no level. Any? One pass that vectorizes where codes
    // sit whole in bytes, a few shifts a group of 8 elsewhere; then find the first.
    const auto* p = reinterpret_cast<const std::uint8_t*>(codes);
    std::uint64_t any = 0;
    if constexpr (B == 2 || B == 4 || B == 8) {
      std::uint8_t acc = 0;
      for (std::size_t i = 0; i < bytes; ++i) {
        const std::uint8_t b = p[i];
        if constexpr (B == 8) {
          acc |= b == 0xff ? 1 : 0;
        } else if constexpr (B == 4) {
          acc |= static_cast<std::uint8_t>(b & (b >> 1) & (b >> 2) & (b >> 3) & 0x11);
        } else {
          acc |= static_cast<std::uint8_t>(b & (b >> 1) & 0x55);
        }
      }
      any = acc;
    } else {
      constexpr std::uint64_t field_low = bitpack_lanes(1, B) & bitpack_low_mask(8 * B);
      const std::size_t groups = (n + 7) / 8;  // padding codes are 0: never all ones
      const std::size_t wide = wide_groups<B>(groups, bytes);
      for (std::size_t g = 0; g < groups; ++g) {
        std::uint64_t x = 0;
        if (g < wide) {
          std::memcpy(&x, codes + B * g, 8);  // a whole word: the next group's bits go below
          x &= bitpack_low_mask(8 * B);
        } else {
          std::memcpy(&x, codes + B * g, bytes - B * g < B ? bytes - B * g : B);
        }
        std::uint64_t y = x;
        for (unsigned k = 1; k < B; ++k) y &= x >> k;
        any |= y & field_low;
      }
    }
    if (any != 0) {
      for (std::size_t i = 0; i < n; ++i) {
        if (get_code(codes, i, B) == bitpack_low_mask(B)) {
          throw decode_error(call,
                             "code " + std::to_string(bitpack_low_mask(B)) + " at index " +
                                 std::to_string(i) + " is out of range: " + std::to_string(B) +
                                 "-bit codes have " + std::to_string(2 * scalar_quant_qmax(B) + 1) +
                                 " levels, 0 to " + std::to_string(2 * scalar_quant_qmax(B)));
        }
      }
    }
  }
}

inline void quant_check_scales(const std::byte* scales, std::size_t blocks, const char* call) {
  std::uint32_t bad = 0;
  for (std::size_t k = 0; k < blocks; ++k) {
    std::uint32_t u;
    std::memcpy(&u, scales + 4 * k, 4);
    bad |= (u >> 31) | ((u & 0x7f800000u) == 0x7f800000u ? 1u : 0u);
  }
  if (bad == 0) return;
  for (std::size_t k = 0; k < blocks; ++k) {
    const float s = load_f32(scales + 4 * k);
    if (!std::isfinite(s)) {
      throw decode_error(
          call, "non-finite scale " + std::to_string(s) + " in block " + std::to_string(k));
    }
    if (std::signbit(s)) {
      throw decode_error(call,
                         "negative scale " + std::to_string(s) + " in block " + std::to_string(k));
    }
  }
}

// Reads the body of a payload whose header says `bits` and `block` (already range-checked)
// and checks its length, its scales and its codes.
inline quant_body open_quant_body(wire_reader& r, const wire_header& h, unsigned bits,
                                  std::uint32_t block, std::size_t n, const char* call) {
  check_count(h, n, call);
  const std::size_t need = quant_body_bytes(n, block, bits);
  if (h.body_bytes != need) {
    throw decode_error(call, "body of " + std::to_string(h.body_bytes) + " bytes, " +
                                 std::to_string(n) + " values in blocks of " +
                                 std::to_string(block) + " at " + std::to_string(bits) +
                                 " bits need " + std::to_string(need));
  }
  const std::byte* body = r.take(need).data();
  const std::size_t blocks = quant_block_count(n, block);
  quant_body q{bits, block, body, body + 4 * blocks};
  quant_check_scales(q.scales, blocks, call);
  with_code_bits(bits, [&]<unsigned B>() { quant_check_codes<B>(q.codes, n, call); });
  return q;
}

inline void check_block_size(const char* call, std::uint32_t block) {
  if (block == 0) throw_invalid_argument(call, "block size 0: blocks hold at least 1 value");
}

// Philox streams hold 2^34 words (core/philox.hpp): one an element.
inline void check_stochastic_count(const char* call, std::size_t n) {
  if (static_cast<std::uint64_t>(n) > (std::uint64_t{1} << 34)) {
    throw_invalid_argument(call, std::to_string(n) +
                                     " values: stochastic rounding draws one Philox word a "
                                     "value and a stream holds 2^34");
  }
}

inline std::uint32_t get_u32_le(const std::byte* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// What a block quantizer's encode needs beyond the values: shared by scalar_quant_codec,
// sign_codec and ternary_codec.
struct quant_format {
  codec_id id;
  std::span<const std::byte> params;
  unsigned bits;
  std::uint32_t block;
  block_scale_rule rule;
  bool stochastic;
  nonfinite_policy policy;
  stream_key key;
};

GRADCOMM_HD constexpr std::size_t quant_payload_bytes(std::size_t n, std::size_t params_bytes,
                                                      std::uint32_t block, unsigned bits) noexcept {
  return wire_header_bytes + params_bytes + quant_body_bytes(n, block, bits);
}

// Header, parameters, scales, codes; returns the payload's size.
inline std::size_t quant_encode_payload(const quant_format& f, host_view<const float> in,
                                        std::span<std::byte> out, const char* call) {
  const std::size_t n = in.size();
  const std::size_t need = quant_payload_bytes(n, f.params.size(), f.block, f.bits);
  if (out.size() < need) throw_buffer_too_small(call, need, out.size());
  if (f.stochastic) check_stochastic_count(call, n);
  wire_writer w(out, call);
  const std::size_t body = quant_body_bytes(n, f.block, f.bits);
  write_header(w, f.id, dtype::f32, n, f.params, body);
  std::byte* scales = w.take(body).data();
  const quant_encode_job job{
      in.data(), n,
      f.block,   f.rule,
      f.policy,  philox_stream(f.key.seed, f.key.step, f.key.rank, f.key.bucket),
      scales,    scales + 4 * quant_block_count(n, f.block),
      call,      cpu_best_isa()};
  quant_encode(job, f.bits, f.stochastic);
  return need;
}

// The header of a payload whose only parameter is the block size (sign, ternary): checks
// it and the body, which has `bits`-bit codes.
inline quant_body open_block_only(std::span<const std::byte> payload, std::size_t n, codec_id id,
                                  unsigned bits, const char* call) {
  wire_reader r(payload, call);
  const wire_header h = read_header(r, id);
  check_dtype(h, dtype::f32, call);
  if (h.params.size() != 4) {
    throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected 4");
  }
  const std::uint32_t block = get_u32_le(h.params.data());
  if (block == 0) throw decode_error(call, "block size 0");
  return open_quant_body(r, h, bits, block, n, call);
}

}  // namespace detail

/// Scalar quantization (see the top of this header): `bits` bits a value, one f32 scale a
/// block, nearest or stochastic rounding. Not linear, fixed size, stateless. Decoders take
/// their parameters from the payload, so any scalar_quant payload decodes.
///
///   gradcomm::scalar_quant_codec q({.bits = 8});
///   std::vector<std::byte> wire(q.max_encoded_bytes(n));
///   wire.resize(q.encode(g, wire));
///   q.decode(wire, out);  // |out[i] − g[i]| <= step / 2 of i's block
class scalar_quant_codec : public host_codec_calls<scalar_quant_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::scalar_quant;
  /// Bytes of codec parameters in the header.
  static constexpr std::size_t params_bytes = 8;

  /// Throws invalid_argument for bits outside 1..8, block 0, or an unknown enum value.
  explicit scalar_quant_codec(scalar_quant_params p = {}) : p_(p) {
    constexpr const char* call = "scalar_quant_codec";
    if (p.bits < 1 || p.bits > 8) {
      detail::throw_invalid_argument(
          call, "bad bit width " + std::to_string(p.bits) + ": 1 to 8 bits a value");
    }
    detail::check_block_size(call, p.block);
    if (static_cast<unsigned>(p.scale) > 1 || static_cast<unsigned>(p.rounding) > 1) {
      detail::throw_invalid_argument(call, "unknown scale rule or rounding");
    }
  }

  const scalar_quant_params& params() const noexcept { return p_; }

  /// Keys the random numbers of stochastic rounding (ignored when rounding is nearest).
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return detail::quant_payload_bytes(n, params_bytes, p_.block, p_.bits);
  }

  /// Writes the payload of `in` into `out` and returns its size (always max_encoded_bytes).
  /// Throws buffer_too_small, or invalid_argument naming the first NaN / Inf (policy reject
  /// or pass); policy zero encodes them as 0 and leaves them out of the scale.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    std::byte params[params_bytes] = {};
    params[0] = static_cast<std::byte>(p_.bits);
    params[1] = static_cast<std::byte>(p_.scale);
    params[2] = static_cast<std::byte>(p_.rounding);
    std::memcpy(params + 4, &p_.block, 4);
    const detail::quant_format f{id,
                                 params,
                                 p_.bits,
                                 p_.block,
                                 p_.scale == quant_scale::l2_norm
                                     ? detail::block_scale_rule::l2_norm
                                     : detail::block_scale_rule::max_abs,
                                 p_.rounding == quant_rounding::stochastic,
                                 p_.nonfinite,
                                 key_};
    return detail::quant_encode_payload(f, in, out, "scalar_quant_codec::encode");
  }

  /// out = the payload's values. Throws decode_error naming the defect before writing.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::quant_decode(open(payload, out.size(), "scalar_quant_codec::decode"), out.data(),
                         out.size(), false);
  }

  /// acc += the payload's values. Throws decode_error naming the defect before writing.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::quant_decode(open(payload, acc.size(), "scalar_quant_codec::decode_add"), acc.data(),
                         acc.size(), true);
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<scalar_quant_codec>::encode;
  using host_codec_calls<scalar_quant_codec>::decode;
  using host_codec_calls<scalar_quant_codec>::decode_add;

 private:
  static detail::quant_body open(std::span<const std::byte> payload, std::size_t n,
                                 const char* call) {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    check_dtype(h, dtype::f32, call);
    if (h.params.size() != params_bytes) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                   std::to_string(params_bytes));
    }
    const auto bits = std::to_integer<unsigned>(h.params[0]);
    const auto rule = std::to_integer<unsigned>(h.params[1]);
    const auto rounding = std::to_integer<unsigned>(h.params[2]);
    const auto reserved = std::to_integer<unsigned>(h.params[3]);
    const std::uint32_t block = detail::get_u32_le(h.params.data() + 4);
    if (bits < 1 || bits > 8) {
      throw decode_error(call, "bad bit width " + std::to_string(bits) + " (1 to 8)");
    }
    if (rule > 1) throw decode_error(call, "bad scale rule " + std::to_string(rule));
    if (rounding > 1) throw decode_error(call, "bad rounding " + std::to_string(rounding));
    if (reserved != 0) {
      throw decode_error(call, "reserved parameter byte is " + std::to_string(reserved));
    }
    if (block == 0) throw decode_error(call, "block size 0");
    return detail::open_quant_body(r, h, bits, block, n, call);
  }

  scalar_quant_params p_;
  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

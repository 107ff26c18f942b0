// gradcomm/core/wire.hpp — the wire format: header, bounds-checked writer and reader.
//
//   gradcomm::wire_writer w(out, "cast_codec::encode");
//   gradcomm::write_header(w, gradcomm::codec_id::cast, gradcomm::dtype::f16, n, {}, 2 * n);
//   auto body = w.take(2 * n);                               // fill the body in place
//
//   gradcomm::wire_reader r(payload, "cast_codec::decode");
//   auto h = gradcomm::read_header(r, gradcomm::codec_id::cast);  // every field checked
//   gradcomm::check_count(h, out.size(), "cast_codec::decode");
//   auto in = r.take(h.body_bytes);                          // the reader sits at the body
//
// A payload is a 24-byte header, the codec's parameters (up to 255 bytes), then the body,
// all little-endian; its length is exactly 24 + params + body. Header layout:
//
//   offset  0  u32  magic 0x574D4347 (the bytes "GCMW")
//   offset  4  u8   version (wire_version)
//   offset  5  u8   codec id (codec_id)
//   offset  6  u8   element dtype (gradcomm::dtype)
//   offset  7  u8   params_len
//   offset  8  u64  element count
//   offset 16  u64  body bytes
//
// Bytes from the network are never trusted: the reader checks every length before it
// reads, and every defect throws decode_error naming it.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>

namespace gradcomm {
inline namespace v0 {

static_assert(std::endian::native == std::endian::little,
              "gradcomm's wire format is little-endian and this build copies integers as they "
              "lie in memory: it needs a little-endian machine");

/// Codec ids as they appear in the wire header (one byte). Quantizers from 1, sparsifiers
/// from 16, low-rank from 32, containers of other codecs' payloads from 48.
///
///   if (h.codec == gradcomm::codec_id::topk) { ... }
enum class codec_id : std::uint8_t {
  none = 0,
  cast = 1,
  scalar_quant = 2,
  sign = 3,
  ternary = 4,
  fp8_block = 5,
  vector_quant = 6,
  threshold = 16,
  topk = 17,
  randomk = 18,
  powersgd = 32,
  per_tensor = 48,
};

/// The codec's name ("cast", "topk", ...), or "unknown" for a value no codec has.
///
///   std::string_view s = gradcomm::codec_name(gradcomm::codec_id::sign);  // "sign"
constexpr std::string_view codec_name(codec_id c) noexcept {
  switch (c) {
    case codec_id::none: return "none";
    case codec_id::cast: return "cast";
    case codec_id::scalar_quant: return "scalar_quant";
    case codec_id::sign: return "sign";
    case codec_id::ternary: return "ternary";
    case codec_id::fp8_block: return "fp8_block";
    case codec_id::vector_quant: return "vector_quant";
    case codec_id::threshold: return "threshold";
    case codec_id::topk: return "topk";
    case codec_id::randomk: return "randomk";
    case codec_id::powersgd: return "powersgd";
    case codec_id::per_tensor: return "per_tensor";
  }
  return "unknown";
}

/// The first four bytes of every payload: "GCMW" read as a little-endian u32.
inline constexpr std::uint32_t wire_magic = 0x574D4347u;
/// The wire format version this build writes and reads.
inline constexpr std::uint8_t wire_version = 1;
/// Bytes of the fixed header, before the codec parameters.
inline constexpr std::size_t wire_header_bytes = 24;
/// The most parameter bytes a header can announce.
inline constexpr std::size_t wire_max_params_bytes = 255;

/// Writes little-endian values into a caller's buffer, front to back. Writing past the
/// end throws buffer_too_small naming `call` and writes nothing.
///
///   gradcomm::wire_writer w(out, "topk::encode");
///   w.put_u32(k);
///   auto idx = w.take(4 * k);  // fill in place
///   return w.position();       // bytes written
class wire_writer {
 public:
  wire_writer(std::span<std::byte> buffer, const char* call) noexcept : buf_(buffer), call_(call) {}

  void put_u8(std::uint8_t v) { put_raw(&v, 1); }
  void put_u16(std::uint16_t v) { put_raw(&v, 2); }
  void put_u32(std::uint32_t v) { put_raw(&v, 4); }
  void put_u64(std::uint64_t v) { put_raw(&v, 8); }
  void put_i32(std::int32_t v) { put_u32(static_cast<std::uint32_t>(v)); }
  void put_f32(float v) { put_u32(std::bit_cast<std::uint32_t>(v)); }
  void put_f64(double v) { put_u64(std::bit_cast<std::uint64_t>(v)); }
  void put_bytes(std::span<const std::byte> b) {
    if (!b.empty()) put_raw(b.data(), b.size());
  }

  /// The next n bytes, for the caller to fill; the writer moves past them.
  std::span<std::byte> take(std::size_t n) {
    reserve(n);
    auto s = buf_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

  /// Bytes written (or taken) so far.
  std::size_t position() const noexcept { return pos_; }
  /// Bytes left in the buffer.
  std::size_t remaining() const noexcept { return buf_.size() - pos_; }
  /// The call named in errors.
  const char* call() const noexcept { return call_; }

 private:
  void reserve(std::size_t n) const {
    if (n > remaining()) {
      // pos_ + n may not fit in a size_t: report the largest value instead of a wrapped one.
      const std::size_t need = n > std::numeric_limits<std::size_t>::max() - pos_
                                   ? std::numeric_limits<std::size_t>::max()
                                   : pos_ + n;
      detail::throw_buffer_too_small(call_, need, buf_.size());
    }
  }
  void put_raw(const void* p, std::size_t n) {
    reserve(n);
    std::memcpy(buf_.data() + pos_, p, n);
    pos_ += n;
  }

  std::span<std::byte> buf_;
  std::size_t pos_ = 0;
  const char* call_;
};

/// Reads little-endian values from untrusted bytes, front to back. Reading past the end
/// throws decode_error ("truncated: needs 8 bytes at offset 20, 3 left") and reads nothing.
///
///   gradcomm::wire_reader r(payload, "topk::decode");
///   std::uint32_t k = r.get_u32();
///   auto idx = r.take(4 * std::uint64_t{k});  // checked before any offset is computed
///   r.expect_end();
class wire_reader {
 public:
  wire_reader(std::span<const std::byte> bytes, const char* call) noexcept
      : buf_(bytes), call_(call) {}

  std::uint8_t get_u8() { return get_raw<std::uint8_t>(); }
  std::uint16_t get_u16() { return get_raw<std::uint16_t>(); }
  std::uint32_t get_u32() { return get_raw<std::uint32_t>(); }
  std::uint64_t get_u64() { return get_raw<std::uint64_t>(); }
  std::int32_t get_i32() { return static_cast<std::int32_t>(get_u32()); }
  float get_f32() { return std::bit_cast<float>(get_u32()); }
  double get_f64() { return std::bit_cast<double>(get_u64()); }

  /// The next n bytes; the reader moves past them. n is compared with what is left, so
  /// a huge n from a hostile header cannot wrap an offset.
  std::span<const std::byte> take(std::uint64_t n) {
    require(n);
    auto s = buf_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }

  /// Throws decode_error ("oversized: N trailing bytes") unless every byte was read.
  void expect_end() const {
    if (remaining() != 0) {
      throw decode_error(call_, "oversized: " + std::to_string(remaining()) +
                                    " trailing bytes at offset " + std::to_string(pos_));
    }
  }

  /// Bytes read so far.
  std::size_t position() const noexcept { return pos_; }
  /// Bytes left to read.
  std::size_t remaining() const noexcept { return buf_.size() - pos_; }
  /// The call named in errors.
  const char* call() const noexcept { return call_; }

 private:
  void require(std::uint64_t n) const {
    if (n > remaining()) {
      throw decode_error(call_, "truncated: needs " + std::to_string(n) + " bytes at offset " +
                                    std::to_string(pos_) + ", " + std::to_string(remaining()) +
                                    " left");
    }
  }
  template <class T>
  T get_raw() {
    require(sizeof(T));
    T v;
    std::memcpy(&v, buf_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::span<const std::byte> buf_;
  std::size_t pos_ = 0;
  const char* call_;
};

/// A checked header, as read_header returns it. `params` points into the payload.
///
///   auto h = gradcomm::read_header(r, gradcomm::codec_id::scalar_quant);
///   unsigned bits = h.params.empty() ? 0 : std::to_integer<unsigned>(h.params[0]);
struct wire_header {
  std::uint8_t version;
  codec_id codec;
  gradcomm::dtype type;
  std::uint64_t count;
  std::span<const std::byte> params;
  std::uint64_t body_bytes;
};

/// Writes the 24-byte header and the parameters; the caller then writes body_bytes bytes
/// of body. Throws invalid_argument for more than 255 parameter bytes and buffer_too_small
/// (writing nothing) when the header and parameters do not fit.
///
///   const std::byte p[1] = {std::byte{4}};  // e.g. bits per code
///   gradcomm::write_header(w, gradcomm::codec_id::scalar_quant, gradcomm::dtype::f32, n, p, b);
inline void write_header(wire_writer& w, codec_id codec, gradcomm::dtype type, std::uint64_t count,
                         std::span<const std::byte> params, std::uint64_t body_bytes) {
  if (params.size() > wire_max_params_bytes) {
    detail::throw_invalid_argument(w.call(), "codec parameters take " +
                                                 std::to_string(params.size()) +
                                                 " bytes, the wire header allows at most 255");
  }
  // One region for header and parameters: all of it fits or nothing is written.
  wire_writer h(w.take(wire_header_bytes + params.size()), w.call());
  h.put_u32(wire_magic);
  h.put_u8(wire_version);
  h.put_u8(static_cast<std::uint8_t>(codec));
  h.put_u8(static_cast<std::uint8_t>(type));
  h.put_u8(static_cast<std::uint8_t>(params.size()));
  h.put_u64(count);
  h.put_u64(body_bytes);
  h.put_bytes(params);
}

namespace detail {
inline std::string wire_codec_text(std::uint8_t raw) {
  return std::to_string(raw) + " (" + std::string(codec_name(static_cast<codec_id>(raw))) + ")";
}
inline std::string wire_hex_bytes(std::span<const std::byte> b) {
  constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (std::byte x : b) {
    if (!s.empty()) s += ' ';
    s += digits[std::to_integer<unsigned>(x) >> 4];
    s += digits[std::to_integer<unsigned>(x) & 15];
  }
  return s;
}
}  // namespace detail

/// Reads and checks a header: enough bytes, magic, version, codec id == `expected`,
/// dtype, parameters, and that exactly body_bytes bytes follow the parameters (the
/// reader must span the whole payload). Throws decode_error naming the first defect.
/// Afterwards the reader sits at the body.
///
///   gradcomm::wire_reader r(payload, "sign::decode");
///   auto h = gradcomm::read_header(r, gradcomm::codec_id::sign);
///   auto body = r.take(h.body_bytes);
inline wire_header read_header(wire_reader& r, codec_id expected) {
  const char* call = r.call();
  const std::size_t start = r.position();
  const std::span<const std::byte> fixed = r.take(wire_header_bytes);
  wire_reader h(fixed, call);
  if (h.get_u32() != wire_magic) {
    throw decode_error(call, "bad magic: found bytes " + detail::wire_hex_bytes(fixed.first(4)) +
                                 " at offset " + std::to_string(start) +
                                 ", expected 47 43 4d 57 (\"GCMW\")");
  }
  wire_header out{};
  out.version = h.get_u8();
  if (out.version != wire_version) {
    throw decode_error(call, "unsupported wire version " + std::to_string(out.version) +
                                 " (this build reads " + std::to_string(wire_version) + ")");
  }
  const std::uint8_t codec = h.get_u8();
  if (codec != static_cast<std::uint8_t>(expected)) {
    throw decode_error(call, "codec id " + detail::wire_codec_text(codec) + ", expected " +
                                 detail::wire_codec_text(static_cast<std::uint8_t>(expected)));
  }
  out.codec = expected;
  const std::uint8_t type = h.get_u8();
  if (!is_valid_dtype(type)) {
    throw decode_error(call, "invalid dtype " + std::to_string(type) + " in the wire header");
  }
  out.type = static_cast<gradcomm::dtype>(type);
  const std::uint8_t params_len = h.get_u8();
  out.count = h.get_u64();
  out.body_bytes = h.get_u64();
  if (params_len > r.remaining()) {
    throw decode_error(call, "truncated: codec parameters need " + std::to_string(params_len) +
                                 " bytes at offset " + std::to_string(r.position()) + ", " +
                                 std::to_string(r.remaining()) + " left");
  }
  out.params = r.take(params_len);
  // Compared, never added: body_bytes comes from the network.
  if (out.body_bytes > r.remaining()) {
    throw decode_error(call, "truncated: body needs " + std::to_string(out.body_bytes) +
                                 " bytes at offset " + std::to_string(r.position()) + ", " +
                                 std::to_string(r.remaining()) + " left");
  }
  if (out.body_bytes < r.remaining()) {
    throw decode_error(call, "oversized: " + std::to_string(r.remaining() - out.body_bytes) +
                                 " trailing bytes after a body of " +
                                 std::to_string(out.body_bytes) + " bytes");
  }
  return out;
}

/// Throws decode_error unless the header's element count is `expected` (the size of the
/// caller's output), so a decoder never writes past the buffer it was given.
///
///   gradcomm::check_count(h, out.size(), "sign::decode");
inline void check_count(const wire_header& h, std::uint64_t expected, const char* call) {
  if (h.count != expected) {
    throw decode_error(call, "element count " + std::to_string(h.count) + ", the output holds " +
                                 std::to_string(expected));
  }
}

/// Throws decode_error unless the header's dtype is `expected`.
///
///   gradcomm::check_dtype(h, gradcomm::dtype::f16, "cast::decode");
inline void check_dtype(const wire_header& h, gradcomm::dtype expected, const char* call) {
  if (h.type != expected) {
    throw decode_error(call, "dtype " + std::string(dtype_name(h.type)) + ", expected " +
                                 std::string(dtype_name(expected)));
  }
}

}  // namespace v0
}  // namespace gradcomm

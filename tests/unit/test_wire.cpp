// The wire format: writer and reader round trips, the header, and every defect a decoder
// must name (truncation, bad magic, version, codec, dtype, lengths, flipped bits).
#include <gradcomm/core/wire.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

template <class F>
std::string decode_failure(F&& f) {
  try {
    f();
  } catch (const gc::decode_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a decode_error: " << e.what();
    return {};
  }
  ADD_FAILURE() << "no decode_error thrown";
  return {};
}

#define EXPECT_DECODE_ERROR(stmt, word)                                    \
  do {                                                                     \
    const std::string what_ = decode_failure([&] { stmt; });               \
    EXPECT_NE(what_.find(word), std::string::npos) << "what(): " << what_; \
  } while (0)

std::vector<std::byte> bytes(std::initializer_list<unsigned> v) {
  std::vector<std::byte> out;
  for (unsigned x : v) out.push_back(static_cast<std::byte>(x));
  return out;
}

constexpr const char* call = "test::decode";

// A valid payload: header, 3 parameter bytes, a 10-byte body.
std::vector<std::byte> sample_payload(gc::codec_id codec = gc::codec_id::scalar_quant,
                                      gc::dtype type = gc::dtype::f32, std::uint64_t count = 20) {
  const auto params = bytes({4, 0x80, 0x01});
  std::vector<std::byte> p(gc::wire_header_bytes + params.size() + 10);
  gc::wire_writer w(p, "test::encode");
  gc::write_header(w, codec, type, count, params, 10);
  auto body = w.take(10);
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<std::byte>(0xb0 + i);
  EXPECT_EQ(w.remaining(), 0u);
  return p;
}

// What a codec's decoder does with the header: every check, then the body.
std::vector<std::byte> decode_like_a_codec(std::span<const std::byte> payload) {
  gc::wire_reader r(payload, call);
  const gc::wire_header h = gc::read_header(r, gc::codec_id::scalar_quant);
  gc::check_count(h, 20, call);
  gc::check_dtype(h, gc::dtype::f32, call);
  if (h.params.size() != 3) throw gc::decode_error(call, "params size");
  auto body = r.take(h.body_bytes);
  r.expect_end();
  std::vector<std::byte> out(h.params.begin(), h.params.end());
  for (std::byte b : body) out.push_back(b);  // (insert() trips GCC 12's -Warray-bounds)
  return out;
}

}  // namespace

TEST(wire, codec_names) {
  static_assert(gc::codec_name(gc::codec_id::cast) == "cast");
  EXPECT_EQ(gc::codec_name(gc::codec_id::none), "none");
  EXPECT_EQ(gc::codec_name(gc::codec_id::scalar_quant), "scalar_quant");
  EXPECT_EQ(gc::codec_name(gc::codec_id::sign), "sign");
  EXPECT_EQ(gc::codec_name(gc::codec_id::ternary), "ternary");
  EXPECT_EQ(gc::codec_name(gc::codec_id::fp8_block), "fp8_block");
  EXPECT_EQ(gc::codec_name(gc::codec_id::vector_quant), "vector_quant");
  EXPECT_EQ(gc::codec_name(gc::codec_id::threshold), "threshold");
  EXPECT_EQ(gc::codec_name(gc::codec_id::topk), "topk");
  EXPECT_EQ(gc::codec_name(gc::codec_id::randomk), "randomk");
  EXPECT_EQ(gc::codec_name(gc::codec_id::powersgd), "powersgd");
  EXPECT_EQ(gc::codec_name(static_cast<gc::codec_id>(200)), "unknown");
}

TEST(wire, put_get_round_trip) {
  std::vector<std::byte> buf(64);
  gc::wire_writer w(buf, "test::encode");
  w.put_u8(0xab);
  w.put_u16(0xbeef);
  w.put_u32(0xdeadbeef);
  w.put_u64(0x0123456789abcdefull);
  w.put_i32(-123456789);
  w.put_f32(-1.5f);
  w.put_f64(3.141592653589793);
  w.put_f32(std::numeric_limits<float>::quiet_NaN());
  const auto raw = bytes({1, 2, 3});
  w.put_bytes(raw);
  w.put_bytes({});
  auto region = w.take(2);
  region[0] = std::byte{0x55};
  region[1] = std::byte{0x66};
  EXPECT_EQ(w.position(), 1u + 2 + 4 + 8 + 4 + 4 + 8 + 4 + 3 + 2);
  EXPECT_EQ(w.remaining(), buf.size() - w.position());

  // Little-endian on the wire.
  EXPECT_EQ(buf[1], std::byte{0xef});
  EXPECT_EQ(buf[2], std::byte{0xbe});

  gc::wire_reader r(std::span<const std::byte>(buf).first(w.position()), call);
  EXPECT_EQ(r.get_u8(), 0xab);
  EXPECT_EQ(r.get_u16(), 0xbeef);
  EXPECT_EQ(r.get_u32(), 0xdeadbeefu);
  EXPECT_EQ(r.get_u64(), 0x0123456789abcdefull);
  EXPECT_EQ(r.get_i32(), -123456789);
  EXPECT_EQ(r.get_f32(), -1.5f);
  EXPECT_EQ(r.get_f64(), 3.141592653589793);
  EXPECT_TRUE(std::isnan(r.get_f32()));
  auto got = r.take(3);
  EXPECT_EQ(std::vector<std::byte>(got.begin(), got.end()), raw);
  EXPECT_EQ(r.take(0).size(), 0u);
  auto tail = r.take(2);
  EXPECT_EQ(tail[0], std::byte{0x55});
  EXPECT_EQ(tail[1], std::byte{0x66});
  EXPECT_EQ(r.remaining(), 0u);
  r.expect_end();
}

TEST(wire, header_layout_and_round_trip) {
  const auto p = sample_payload(gc::codec_id::scalar_quant, gc::dtype::bf16, 0x1122334455667788);
  ASSERT_EQ(p.size(), 24u + 3 + 10);
  // "GCMW", version 1, codec 2, dtype 2, params_len 3, count, body_bytes.
  const auto expected_header = bytes({'G',  'C',  'M',  'W',  1,  2, 2, 3, 0x88, 0x77, 0x66, 0x55,
                                      0x44, 0x33, 0x22, 0x11, 10, 0, 0, 0, 0,    0,    0,    0});
  EXPECT_EQ(std::vector<std::byte>(p.begin(), p.begin() + 24), expected_header);

  gc::wire_reader r(p, call);
  const gc::wire_header h = gc::read_header(r, gc::codec_id::scalar_quant);
  EXPECT_EQ(h.version, gc::wire_version);
  EXPECT_EQ(h.codec, gc::codec_id::scalar_quant);
  EXPECT_EQ(h.type, gc::dtype::bf16);
  EXPECT_EQ(h.count, 0x1122334455667788u);
  EXPECT_EQ(std::vector<std::byte>(h.params.begin(), h.params.end()), bytes({4, 0x80, 0x01}));
  EXPECT_EQ(h.body_bytes, 10u);
  EXPECT_EQ(r.position(), 27u);  // at the body
  EXPECT_EQ(r.remaining(), 10u);
  EXPECT_EQ(r.take(h.body_bytes)[0], std::byte{0xb0});
  r.expect_end();

  gc::check_count(h, 0x1122334455667788u, call);
  gc::check_dtype(h, gc::dtype::bf16, call);
}

TEST(wire, empty_params_and_body) {
  std::vector<std::byte> p(gc::wire_header_bytes);
  gc::wire_writer w(p, "test::encode");
  gc::write_header(w, gc::codec_id::none, gc::dtype::f32, 0, {}, 0);
  gc::wire_reader r(p, call);
  const auto h = gc::read_header(r, gc::codec_id::none);
  EXPECT_TRUE(h.params.empty());
  EXPECT_EQ(h.body_bytes, 0u);
  r.expect_end();
}

TEST(wire, header_defects) {
  const auto good = sample_payload();

  EXPECT_DECODE_ERROR(decode_like_a_codec(std::span<const std::byte>(good).first(10)),
                      "truncated: needs 24 bytes at offset 0, 10 left");

  auto bad = good;
  bad[0] = std::byte{'X'};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "bad magic: found bytes 58 43 4d 57");

  bad = good;
  bad[4] = std::byte{7};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "unsupported wire version 7 (this build reads 1)");

  EXPECT_DECODE_ERROR(decode_like_a_codec(sample_payload(gc::codec_id::sign)),
                      "codec id 3 (sign), expected 2 (scalar_quant)");
  bad = good;
  bad[5] = std::byte{99};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "codec id 99 (unknown)");

  bad = good;
  bad[6] = std::byte{5};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "invalid dtype 5");

  // params_len beyond the payload.
  bad = good;
  bad[7] = std::byte{200};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "truncated: codec parameters need 200 bytes");

  // body_bytes larger than what follows, and smaller.
  bad = good;
  bad[16] = std::byte{11};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad),
                      "truncated: body needs 11 bytes at offset 27, 10 left");
  bad = good;
  bad[16] = std::byte{9};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "oversized: 1 trailing bytes");
  bad = good;
  bad.push_back(std::byte{0});
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "oversized: 1 trailing bytes");

  // A hostile body length near 2^64 is compared, never added.
  bad = good;
  for (int i = 16; i < 24; ++i) bad[i] = std::byte{0xff};
  EXPECT_DECODE_ERROR(decode_like_a_codec(bad), "truncated: body needs 18446744073709551615");

  EXPECT_DECODE_ERROR(
      decode_like_a_codec(sample_payload(gc::codec_id::scalar_quant, gc::dtype::f32, 21)),
      "element count 21, the output holds 20");
  EXPECT_DECODE_ERROR(
      decode_like_a_codec(sample_payload(gc::codec_id::scalar_quant, gc::dtype::f16)),
      "dtype f16, expected f32");
}

TEST(wire, reader_defects) {
  const auto b = bytes({1, 2, 3, 4, 5});
  gc::wire_reader r(b, call);
  EXPECT_EQ(r.get_u32(), 0x04030201u);
  EXPECT_DECODE_ERROR(r.get_u16(), "truncated: needs 2 bytes at offset 4, 1 left");
  EXPECT_EQ(r.position(), 4u);  // a failed read consumes nothing
  EXPECT_DECODE_ERROR(r.take(std::numeric_limits<std::uint64_t>::max()), "truncated");
  EXPECT_DECODE_ERROR(r.take(std::numeric_limits<std::size_t>::max() - 2), "truncated");
  EXPECT_DECODE_ERROR(r.expect_end(), "oversized: 1 trailing bytes");
  EXPECT_EQ(r.get_u8(), 5);
  EXPECT_DECODE_ERROR(r.get_u8(), "truncated: needs 1 bytes at offset 5, 0 left");
  EXPECT_DECODE_ERROR(r.get_u64(), "truncated");
  EXPECT_DECODE_ERROR(r.get_f64(), "truncated");
  r.expect_end();

  // The call travels in the message.
  const std::string w = decode_failure([&] { r.get_u8(); });
  EXPECT_NE(w.find("test::decode"), std::string::npos) << w;
}

TEST(wire, every_truncation_throws) {
  const auto good = sample_payload();
  ASSERT_NO_THROW(decode_like_a_codec(good));
  for (std::size_t len = 0; len < good.size(); ++len) {
    SCOPED_TRACE("length " + std::to_string(len));
    // A fresh copy of exactly len bytes, so that reading past it is caught by sanitizers too.
    const std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    EXPECT_DECODE_ERROR(decode_like_a_codec(cut), "truncated");
  }
}

TEST(wire, every_header_bit_flip_is_caught_or_harmless) {
  const auto good = sample_payload();
  const auto want = decode_like_a_codec(good);
  std::size_t caught = 0;
  for (std::size_t bit = 0; bit < 8 * gc::wire_header_bytes; ++bit) {
    auto p = good;
    p[bit / 8] ^= std::byte{1} << (bit % 8);
    try {
      EXPECT_EQ(decode_like_a_codec(p), want) << "bit " << bit;
    } catch (const gc::decode_error&) {
      ++caught;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "bit " << bit << ": not a decode_error: " << e.what();
    }
  }
  // Every header field is checked, so here no flip goes unnoticed.
  EXPECT_EQ(caught, 8 * gc::wire_header_bytes);
}

TEST(wire, writer_overflow) {
  std::vector<std::byte> buf(6);
  gc::wire_writer w(buf, "test::encode");
  w.put_u32(1);
  auto expect_too_small = [](auto&& f, const char* needs) {
    try {
      f();
      ADD_FAILURE() << "no error thrown";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
      const std::string what = e.what();
      EXPECT_NE(what.find("test::encode"), std::string::npos) << what;
      EXPECT_NE(what.find(needs), std::string::npos) << what;
    }
  };
  expect_too_small([&] { w.put_u32(2); }, "needs 8 bytes, the buffer has 6");
  expect_too_small([&] { w.put_u64(2); }, "needs 12 bytes");
  expect_too_small([&] { w.take(3); }, "needs 7 bytes");
  expect_too_small([&] { w.take(std::numeric_limits<std::size_t>::max()); }, "needs");
  EXPECT_EQ(w.position(), 4u);  // nothing was written by the failed calls
  w.put_u16(3);
  EXPECT_EQ(w.remaining(), 0u);

  // A header that does not fit writes nothing.
  std::vector<std::byte> small(20, std::byte{0xee});
  gc::wire_writer hw(small, "test::encode");
  expect_too_small([&] { gc::write_header(hw, gc::codec_id::cast, gc::dtype::f16, 1, {}, 2); },
                   "needs 24 bytes");
  EXPECT_EQ(small, std::vector<std::byte>(20, std::byte{0xee}));
  EXPECT_EQ(hw.position(), 0u);

  // More than 255 parameter bytes is a caller mistake.
  std::vector<std::byte> big(1024);
  gc::wire_writer bw(big, "test::encode");
  const std::vector<std::byte> params(256);
  try {
    gc::write_header(bw, gc::codec_id::cast, gc::dtype::f16, 1, params, 0);
    ADD_FAILURE() << "no error thrown";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
  }
}

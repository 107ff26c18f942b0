// Fuzzes core/wire.hpp: read_header against any expected codec id, the reader's operations
// (driven by the bytes themselves) and write_header, which must give back the header read.
//
// Input: byte 0 selects the mode: bit 7 set, a reader walks the raw payload; clear, the
// header is read expecting codec id (byte 0), then a reader walks the body. The payload is
// the rest of the input and ends where the input ends, so AddressSanitizer sees any read
// past it.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/core/wire.hpp>

#include "fuzz_support.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

namespace {

// Reader operations chosen by the bytes being read; a writer mirrors each successful read,
// so that what it wrote must equal what the reader consumed. A read that does not fit
// throws decode_error and moves nothing; a write that does not fit throws
// buffer_too_small and writes nothing.
void walk(std::span<const std::byte> in) {
  gc::wire_reader r(in, "fuzz_wire::walk");
  std::vector<std::byte> mirror(in.size() / 2 + 1, std::byte{0x5A});
  gc::wire_writer w(mirror, "fuzz_wire::walk");
  std::size_t mirrored = 0;  // bytes of `in` the writer holds, from the start
  bool in_sync = true;       // every read so far was written too
  while (r.remaining() > 0) {
    const std::size_t before = r.position();
    const std::size_t wbefore = w.position();
    std::size_t consumed = 0;
    std::span<const std::byte> read;
    const bool ok = gradcomm_fuzz::decodes([&] {
      const unsigned op = r.get_u8();
      const std::size_t start = r.position();
      switch (op % 10) {
        case 0: r.get_u8(); break;
        case 1: r.get_u16(); break;
        case 2: r.get_u32(); break;
        case 3: r.get_u64(); break;
        case 4: r.get_i32(); break;
        case 5: r.get_f32(); break;
        case 6: r.get_f64(); break;
        case 7: r.take(r.get_u8()); break;
        case 8: r.take(r.get_u64()); break;  // huge lengths must be rejected, not wrapped
        default: r.expect_end(); break;
      }
      consumed = r.position() - before;
      read = in.subspan(before, consumed);
      check(start == before + 1, "get_u8 moved one byte");
    });
    check(r.position() + r.remaining() == in.size(), "reader position + remaining == size");
    if (!ok) {
      // A failed read moved only past what it read successfully before the failing one: at
      // most the op byte and a length.
      check(r.position() >= before && r.position() <= before + 9, "failed read moved too far");
      break;
    }
    check(consumed >= 1 && r.position() == before + consumed, "reader moved by what it read");
    if (!in_sync) continue;
    if (consumed <= w.remaining()) {
      if (consumed % 8 == 0 && consumed > 0 && consumed <= 8) {
        std::uint64_t v;
        std::memcpy(&v, read.data(), 8);
        w.put_u64(v);
      } else {
        w.put_bytes(read);
      }
      mirrored += consumed;
      check(w.position() == mirrored, "writer position");
    } else {
      const std::vector<std::byte> unwritten(mirror.begin() + static_cast<std::ptrdiff_t>(wbefore),
                                             mirror.end());
      bool threw = false;
      try {
        w.put_bytes(read);
      } catch (const gc::error& e) {
        threw = e.code() == gc::errc::buffer_too_small;
      }
      check(threw, "an oversized write throws buffer_too_small");
      check(w.position() == wbefore, "a failed write does not move");
      check(std::equal(unwritten.begin(), unwritten.end(),
                       mirror.begin() + static_cast<std::ptrdiff_t>(wbefore)),
            "a failed write writes nothing");
      in_sync = false;
    }
  }
  check(std::memcmp(mirror.data(), in.data(), mirrored) == 0, "the writer mirrors the reader");
}

void header_then_body(gc::codec_id expected, std::span<const std::byte> payload) {
  gc::wire_reader r(payload, "fuzz_wire::header");
  gc::wire_header h{};
  if (!gradcomm_fuzz::decodes([&] { h = gc::read_header(r, expected); })) return;
  check(h.codec == expected, "codec id as expected");
  check(h.version == gc::wire_version, "version");
  check(gc::is_valid_dtype(static_cast<std::uint8_t>(h.type)), "valid dtype");
  check(r.position() == gc::wire_header_bytes + h.params.size(), "reader at the body");
  check(r.remaining() == h.body_bytes, "body is the rest");
  check(h.params.empty() || h.params.data() == payload.data() + gc::wire_header_bytes,
        "params point into the payload");

  // write_header gives back the same header bytes.
  std::vector<std::byte> again(gc::wire_header_bytes + h.params.size());
  gc::wire_writer w(again, "fuzz_wire::header");
  gc::write_header(w, h.codec, h.type, h.count, h.params, h.body_bytes);
  check(w.position() == again.size(), "header size");
  check(std::memcmp(again.data(), payload.data(), again.size()) == 0, "header round trip");

  check(gradcomm_fuzz::decodes([&] { gc::check_count(h, h.count, "fuzz_wire"); }),
        "check_count accepts the count");
  check(!gradcomm_fuzz::decodes([&] { gc::check_count(h, h.count + 1, "fuzz_wire"); }),
        "check_count rejects another count");
  check(gradcomm_fuzz::decodes([&] { gc::check_dtype(h, h.type, "fuzz_wire"); }),
        "check_dtype accepts the dtype");

  walk(r.take(h.body_bytes));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto payload = gradcomm_fuzz::as_bytes(data + 1, size - 1);
  if (data[0] & 0x80) {
    walk(payload);
  } else {
    header_then_body(static_cast<gc::codec_id>(data[0]), payload);
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  for (std::size_t n : {0u, 1u, 5u, 17u}) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = 0.25f * static_cast<float>(i) - 1.0f;
    gc::bf16_codec c;
    std::vector<std::byte> wire(c.max_encoded_bytes(n));
    wire.resize(c.encode(g, wire));
    out.push_back(seed({static_cast<std::uint8_t>(gc::codec_id::cast)}, wire));
  }
  // A header with parameters and a body that drives the walk: u32, take(3), u64, end.
  const std::byte params[3] = {std::byte{4}, std::byte{0}, std::byte{1}};
  const std::vector<std::byte> body = {std::byte{2}, std::byte{1}, std::byte{2}, std::byte{3},
                                       std::byte{4}, std::byte{7}, std::byte{3}, std::byte{9},
                                       std::byte{9}, std::byte{9}, std::byte{3}, std::byte{1},
                                       std::byte{2}, std::byte{3}, std::byte{4}, std::byte{5},
                                       std::byte{6}, std::byte{7}, std::byte{8}, std::byte{9}};
  std::vector<std::byte> wire(gc::wire_header_bytes + sizeof params + body.size());
  gc::wire_writer w(wire, "seeds");
  gc::write_header(w, gc::codec_id::scalar_quant, gc::dtype::f32, 64, params, body.size());
  w.put_bytes(body);
  out.push_back(seed({static_cast<std::uint8_t>(gc::codec_id::scalar_quant)}, wire));
  out.push_back(seed({0x80}, body));
  out.push_back(seed({0x80}, wire));
  return out;
}

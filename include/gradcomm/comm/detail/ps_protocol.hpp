// gradcomm/comm/detail/ps_protocol.hpp — the parameter server's messages and saved
// state: the fixed header every message carries (ps_header: kind, flags or body kind,
// sender, clock, version, count), its framing, the body kinds, the framing of a saved
// state, and the default pull codec (the protocol's f32 values body where C declares none).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

inline constexpr std::uint32_t ps_magic = 0x53504347u;        // "GCPS"
inline constexpr std::uint32_t ps_state_magic = 0x54504347u;  // "GCPT"
inline constexpr std::uint8_t ps_state_version = 1;
inline constexpr std::size_t ps_header_bytes = 40;
inline constexpr std::size_t ps_reason_bytes = 512;  // room for a refusal's reason

enum class ps_kind : std::uint8_t {
  push = 1,
  pull = 2,
  bye = 3,
  ack = 10,        // a push applied now
  duplicate = 11,  // a push of a clock applied before
  pulled = 12,     // a pull
  refused = 13,    // body: the reason
};
inline constexpr std::uint8_t ps_flag_need_values = 1;
enum class ps_body : std::uint8_t { none = 0, values = 1, delta = 2 };

// The fixed header of every message; `who` is the sender's rank.
struct ps_header {
  ps_kind kind{};
  std::uint8_t aux = 0;  // worker → server: flags; server → worker: ps_body
  int who = -1;
  std::uint64_t clock = 0;
  std::uint64_t version = 0;  // push: the version seen; reply: the version sent
  std::uint64_t extra = 0;    // worker → server: n; reply: the least live clock
};

inline void ps_write_header(std::span<std::byte> out, const ps_header& h, const char* call) {
  wire_writer w(out, call);
  w.put_u32(ps_magic);
  w.put_u8(static_cast<std::uint8_t>(h.kind));
  w.put_u8(h.aux);
  w.put_u16(0);
  w.put_u32(static_cast<std::uint32_t>(h.who));
  w.put_u32(0);
  w.put_u64(h.clock);
  w.put_u64(h.version);
  w.put_u64(h.extra);
}

inline ps_header ps_read_header(std::span<const std::byte> in, const char* call) {
  wire_reader r(in, call);
  if (const std::uint32_t m = r.get_u32(); m != ps_magic)
    throw decode_error(call, "not a parameter-server message: magic " + std::to_string(m));
  ps_header h;
  h.kind = static_cast<ps_kind>(r.get_u8());
  h.aux = r.get_u8();
  if (r.get_u16() != 0) throw decode_error(call, "reserved header bytes are not zero");
  h.who = static_cast<int>(r.get_u32());
  if (r.get_u32() != 0) throw decode_error(call, "reserved header bytes are not zero");
  h.clock = r.get_u64();
  h.version = r.get_u64();
  h.extra = r.get_u64();
  return h;
}

// The default pull codec: the one C declares (codec.hpp, T4: error_feedback's inner codec),
// C itself when stateless, otherwise the f32 values (identity_codec, the protocol's own
// body format).
template <class C>
struct ps_pull_codec {
  using type = identity_codec;
  static type make(const C&) { return identity_codec{}; }
};
template <has_pull_codec C>
struct ps_pull_codec<C> {
  using type = decltype(pull_codec_of(std::declval<const C&>()));
  static type make(const C& c) { return pull_codec_of(c); }
};

// u64 length, then the state of `x` (an optimizer or a codec): state_bytes() may be an
// upper bound, so the length written is the one save_state returns.
template <class X>
void ps_put_sized(wire_writer& w, const X& x) {
  std::vector<std::byte> tmp(x.state_bytes());
  const std::size_t used = x.save_state(tmp);
  w.put_u64(used);
  w.put_bytes(std::span<const std::byte>(tmp.data(), used));
}

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/detail/ef_state.hpp — the saved-state framing that error_feedback and
// dgc_memory share: header, f32 buffers, the inner codec's state, and the checked load.
// Internal: not part of the API.
//
//   constexpr gradcomm::detail::ef_state_format<2, 1> fmt{0x47444347u, 1, {"u", "v"}};
//   std::size_t w = fmt.save<Inner>(out, inner, sized, {u, v}, {step}, n, call);
//   auto s = fmt.load(bytes, inner, call);  // checked; inner loaded, nothing else changed
//
// Layout, little-endian (Buffers f32 arrays of n, Words u64 words of the wrapper's own):
//   offset  0  u32 magic, 4 u8 version, 5 u8 inner codec id,
//   offset  6  u8 flags (bit 0 sized, bit 1 holds Inner's state; other bits zero), 7 u8 zero,
//   offset  8  u64 n (0 unless sized), then Words u64 words, then u64 bytes of Inner's state,
//   then the Buffers arrays of n f32 one after the other, then Inner's state; nothing after.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/wire.hpp>

#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// Loads a wrapper's inner codec state (error feedback, DGC memory) into a copy first, so
// that a rejected state leaves the inner codec as it was. An inner codec that is itself
// sized (nested feedback) must cover the wrapper's n elements, and may not be sized when
// the wrapper is not (whose next encode sizes it from the input), or the next encode would
// fail on a state this load accepted.
template <class Inner>
void load_inner_state(Inner& inner, std::span<const std::byte> bytes, bool sized, std::uint64_t n,
                      const char* call) {
  Inner loaded = inner;
  loaded.load_state(bytes);
  if constexpr (requires(const Inner& c) {
                  { c.sized() } -> std::convertible_to<bool>;
                  { c.size() } -> std::convertible_to<std::size_t>;
                }) {
    if (sized && loaded.sized() && loaded.size() != n) {
      throw decode_error(call, "inner state sized for " + std::to_string(loaded.size()) +
                                   " elements, the outer state has " + std::to_string(n));
    }
    if (!sized && loaded.sized()) {
      throw decode_error(call, "inner state sized for " + std::to_string(loaded.size()) +
                                   " elements, the outer state is unsized");
    }
  }
  inner = std::move(loaded);
}

/// A state that ef_state_format::load checked: the inner codec is loaded already, the rest
/// is for the wrapper to take.
template <std::size_t Buffers, std::size_t Words>
struct ef_state_loaded {
  bool sized;
  std::array<std::uint64_t, Words> words;
  std::array<std::vector<float>, Buffers> buffers;
};

/// One wrapper's state format (layout at the top): its magic, its version, and the names of
/// its buffers (for the messages; one buffer is "a <name>", several are "buffers").
template <std::size_t Buffers, std::size_t Words>
struct ef_state_format {
  std::uint32_t magic;
  std::uint8_t version;
  std::array<const char*, Buffers> names;

  /// Bytes before the buffers.
  static constexpr std::size_t header_bytes = 24 + 8 * Words;

  /// Bytes that save writes for buffers of n elements (an upper bound where Inner's
  /// state_bytes is one).
  template <class Inner>
  std::size_t bytes(std::size_t n, const Inner& inner) const {
    std::size_t b = header_bytes + Buffers * n * sizeof(float);
    if constexpr (Inner::traits.stateful) b += inner.state_bytes();
    return b;
  }

  /// Writes the state: each of `buffers` holds n floats. Returns the bytes written; throws
  /// buffer_too_small, writing nothing, when `out` is shorter than bytes(n, inner).
  template <class Inner>
  std::size_t save(std::span<std::byte> out, const Inner& inner, bool sized,
                   std::array<const float*, Buffers> buffers,
                   std::array<std::uint64_t, Words> words, std::size_t n, const char* call) const {
    const std::size_t need = bytes(n, inner);
    if (out.size() < need) throw_buffer_too_small(call, need, out.size());
    wire_writer w(out, call);
    const std::span<std::byte> header = w.take(header_bytes);
    for (const float* b : buffers) w.put_bytes(std::as_bytes(std::span<const float>(b, n)));
    std::uint64_t inner_bytes = 0;
    if constexpr (Inner::traits.stateful) {
      const std::span<std::byte> s = w.take(inner.state_bytes());
      inner_bytes = inner.save_state(s);
    }
    // The header last: it records how many bytes Inner actually wrote.
    wire_writer h(header, call);
    h.put_u32(magic);
    h.put_u8(version);
    h.put_u8(static_cast<std::uint8_t>(Inner::id));
    h.put_u8(static_cast<std::uint8_t>((sized ? 1u : 0u) | (Inner::traits.stateful ? 2u : 0u)));
    h.put_u8(0);
    h.put_u64(n);
    for (std::uint64_t x : words) h.put_u64(x);
    h.put_u64(inner_bytes);
    return header_bytes + Buffers * n * sizeof(float) + static_cast<std::size_t>(inner_bytes);
  }

  /// Checks a state that save wrote and loads Inner's part into `inner`; throws
  /// decode_error naming the defect (truncated, trailing bytes, bad magic or version,
  /// another codec's state, unknown flags, a non-finite value, an inner state of another
  /// size), and then `inner` is unchanged. Allocates at most what `bytes` can hold.
  template <class Inner>
  ef_state_loaded<Buffers, Words> load(std::span<const std::byte> bytes, Inner& inner,
                                       const char* call) const {
    constexpr auto id = static_cast<std::uint8_t>(Inner::id);
    wire_reader r(bytes, call);
    const std::span<const std::byte> fixed = r.take(header_bytes);
    wire_reader h(fixed, call);
    if (h.get_u32() != magic) {
      std::byte m[4];
      std::memcpy(m, &magic, 4);
      std::string text;
      for (std::byte c : m) text += static_cast<char>(c);
      throw decode_error(call, "bad magic: found bytes " + wire_hex_bytes(fixed.first(4)) +
                                   ", expected " + wire_hex_bytes(m) + " (\"" + text + "\")");
    }
    if (const std::uint8_t v = h.get_u8(); v != version) {
      throw decode_error(call, "unsupported state version " + std::to_string(v) +
                                   " (this build reads " + std::to_string(version) + ")");
    }
    if (const std::uint8_t c = h.get_u8(); c != id) {
      throw decode_error(call, "state of codec id " + wire_codec_text(c) + ", this codec is " +
                                   wire_codec_text(id));
    }
    const std::uint8_t flags = h.get_u8();
    constexpr std::uint8_t inner_flag = Inner::traits.stateful ? 2 : 0;
    if ((flags & ~3u) != 0 || (flags & 2u) != inner_flag) {
      throw decode_error(call, "flags " + std::to_string(flags) + ", expected " +
                                   std::to_string(inner_flag) + " or " +
                                   std::to_string(inner_flag | 1));
    }
    if (const std::uint8_t z = h.get_u8(); z != 0) {
      throw decode_error(call, "reserved byte is " + std::to_string(z) + ", expected 0");
    }
    ef_state_loaded<Buffers, Words> s{};
    s.sized = (flags & 1u) != 0;
    const std::uint64_t n = h.get_u64();
    for (std::uint64_t& x : s.words) x = h.get_u64();
    const std::uint64_t inner_bytes = h.get_u64();
    if (!s.sized && n != 0) {
      throw decode_error(call, "an unsized state with " + std::to_string(n) + " elements");
    }
    if (!Inner::traits.stateful && inner_bytes != 0) {
      throw decode_error(
          call, std::to_string(inner_bytes) + " bytes of inner state for a stateless inner codec");
    }
    // Divided, never multiplied: n comes from the bytes.
    if (n > r.remaining() / (Buffers * sizeof(float))) {
      const std::string what = Buffers == 1 ? std::string("a ") + names[0] + " of " : "buffers of ";
      throw decode_error(call, "truncated: " + what + std::to_string(n) + " elements " +
                                   (Buffers == 1 ? "does" : "do") + " not fit in the " +
                                   std::to_string(r.remaining()) + " bytes left");
    }
    const std::span<const std::byte> body = r.take(Buffers * n * sizeof(float));
    if (inner_bytes != r.remaining()) {
      throw decode_error(call,
                         std::string(inner_bytes > r.remaining() ? "truncated" : "oversized") +
                             ": inner state of " + std::to_string(inner_bytes) + " bytes, " +
                             std::to_string(r.remaining()) + " left");
    }
    for (std::size_t b = 0; b < Buffers; ++b) {
      s.buffers[b].resize(static_cast<std::size_t>(n));
      if (n != 0) {
        std::memcpy(s.buffers[b].data(), body.data() + b * n * sizeof(float), n * sizeof(float));
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t b = 0; b < Buffers; ++b) {
        if (!std::isfinite(s.buffers[b][i])) {
          throw decode_error(
              call, std::string("non-finite ") + names[b] + " at index " + std::to_string(i));
        }
      }
    }
    if constexpr (Inner::traits.stateful) {
      load_inner_state(inner, r.take(inner_bytes), s.sized, n, call);
    }
    return s;
  }
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

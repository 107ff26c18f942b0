// gradcomm/core/counters.hpp — traffic and timing counters.
//
//   gradcomm::traffic_counters c;
//   { gradcomm::scoped_timer t(c.encode_ns); codec.encode(in, out); }
//   c.add_sent(bytes);
//   auto s = c.snapshot();  // s.bytes_sent, s.encode_seconds(), ...
//
// Every transport and communicator keeps one and updates it as it works; readers
// take a snapshot at any time from any thread (relaxed atomics: each field is
// exact, the fields of one snapshot are not taken at one instant).
#pragma once

#include <gradcomm/core/config.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace gradcomm {
inline namespace v0 {

/// A plain copy of the counters at one time.
struct traffic_snapshot {
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t messages_sent = 0;
  std::uint64_t messages_received = 0;
  std::int64_t encode_ns = 0;
  std::int64_t decode_ns = 0;
  std::int64_t wait_ns = 0;

  double encode_seconds() const noexcept { return encode_ns * 1e-9; }
  double decode_seconds() const noexcept { return decode_ns * 1e-9; }
  double wait_seconds() const noexcept { return wait_ns * 1e-9; }

  friend traffic_snapshot operator-(traffic_snapshot a, const traffic_snapshot& b) noexcept {
    a.bytes_sent -= b.bytes_sent;
    a.bytes_received -= b.bytes_received;
    a.messages_sent -= b.messages_sent;
    a.messages_received -= b.messages_received;
    a.encode_ns -= b.encode_ns;
    a.decode_ns -= b.decode_ns;
    a.wait_ns -= b.wait_ns;
    return a;
  }
};

/// Bytes and messages sent and received; nanoseconds spent encoding, decoding and
/// waiting. Safe to update and read from several threads.
class traffic_counters {
 public:
  std::atomic<std::uint64_t> bytes_sent{0};
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> messages_sent{0};
  std::atomic<std::uint64_t> messages_received{0};
  std::atomic<std::int64_t> encode_ns{0};
  std::atomic<std::int64_t> decode_ns{0};
  std::atomic<std::int64_t> wait_ns{0};

  /// One message of `bytes` left this rank.
  void add_sent(std::uint64_t bytes, std::uint64_t messages = 1) noexcept {
    bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
    messages_sent.fetch_add(messages, std::memory_order_relaxed);
  }
  /// One message of `bytes` arrived at this rank.
  void add_received(std::uint64_t bytes, std::uint64_t messages = 1) noexcept {
    bytes_received.fetch_add(bytes, std::memory_order_relaxed);
    messages_received.fetch_add(messages, std::memory_order_relaxed);
  }

  traffic_snapshot snapshot() const noexcept {
    constexpr auto r = std::memory_order_relaxed;
    return {bytes_sent.load(r),    bytes_received.load(r),
            messages_sent.load(r), messages_received.load(r),
            encode_ns.load(r),     decode_ns.load(r),
            wait_ns.load(r)};
  }

  void reset() noexcept {
    constexpr auto r = std::memory_order_relaxed;
    bytes_sent.store(0, r);
    bytes_received.store(0, r);
    messages_sent.store(0, r);
    messages_received.store(0, r);
    encode_ns.store(0, r);
    decode_ns.store(0, r);
    wait_ns.store(0, r);
  }
};

/// Adds the time from construction to destruction to one nanosecond counter.
class scoped_timer {
 public:
  explicit scoped_timer(std::atomic<std::int64_t>& into) noexcept
      : into_(into), start_(std::chrono::steady_clock::now()) {}
  scoped_timer(const scoped_timer&) = delete;
  scoped_timer& operator=(const scoped_timer&) = delete;
  ~scoped_timer() {
    auto d = std::chrono::steady_clock::now() - start_;
    into_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(),
                    std::memory_order_relaxed);
  }

 private:
  std::atomic<std::int64_t>& into_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace v0
}  // namespace gradcomm

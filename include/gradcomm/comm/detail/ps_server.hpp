// gradcomm/comm/detail/ps_server.hpp — the parameter server's server role: the shard and
// the optimizer applied on every arrival, one slot per worker (clock, standing, public copy,
// the reply in flight), the staleness gates, the detection of lost workers, the statistics
// and the server's saved state.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/detail/ps_options.hpp>
#include <gradcomm/comm/detail/ps_protocol.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/detail/backoff.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

inline unsigned ps_histogram_bucket(std::uint64_t s) noexcept {
  unsigned b = 0;
  while (s != 0 && b < 23) {
    s >>= 1;
    ++b;
  }
  return b;
}

// The server role of parameter_server<C, T, O, P> on `t` (which must outlive it), with the
// communicator's options, counters and optimizer. On a worker rank it holds nothing.
template <class C, class T, class O, class P>
class ps_server {
  using clock = std::chrono::steady_clock;

 public:
  ps_server(T& t, const ps_options& opt, traffic_counters& counters, const C& proto, const P& pull,
            O& optimizer)
      : t_(&t), opt_(opt), counters_(counters), proto_(proto), pull_(pull), optimizer_(optimizer) {
    if (is_server()) slots_.resize(static_cast<std::size_t>(t.size() - opt.servers));
  }

  // Serves until every worker finished or was lost, or `stop()` returns true.
  template <class Stop>
  void serve(const char* call, host_view<float> params, Stop& stop) {
    server_ready(call, params);
    served_ = true;
    const auto now = clock::now();
    for (auto& s : slots_)
      if (!s.gated) s.last_heard = now;  // a pause between serve() calls is not silence
    if (!rx_) post_receive();
    poll_backoff backoff(std::chrono::microseconds(200), std::chrono::microseconds(10),
                         std::chrono::microseconds(500));
    while (active_workers() > 0 && !stop()) {
      bool got = false;
      try {
        got = t_->test(*rx_);
      } catch (const peer_error& e) {
        // The local transport says so only when every other rank failed.
        lose_all_active(std::string("the transport reports every other rank failed: ") + e.what());
        break;
      } catch (const error& e) {
        if (e.code() != make_error_code(errc::buffer_too_small)) throw;
        on_oversized(e);
        continue;
      }
      if (got) {
        const std::size_t bytes = rx_->received(0);
        int source = -1;
        if constexpr (requires(const typename T::request& q) {
                        { q.source(0) } -> std::convertible_to<int>;
                      })
          source = rx_->source(0);
        ++stats_.messages;
        stats_.bytes_received += bytes;
        counters_.add_received(bytes);
        on_message(std::span<const std::byte>(rx_buf_.data(), bytes), source);
        post_receive();
        backoff.reset();
      } else {
        backoff.pause();
      }
      housekeeping();
    }
    settle_sends();
    std::copy(w_.begin(), w_.end(), params.data() + range_.lo);
  }

  bool served() const noexcept { return served_; }

  ps_server_stats stats() const {
    ps_server_stats s;
    s.version = version_;
    s.replies = stats_.replies;
    s.duplicates = stats_.duplicates;
    s.refused = stats_.refused;
    s.bytes_received = stats_.bytes_received;
    s.bytes_sent = stats_.bytes_sent;
    s.max_staleness = stats_.max_staleness;
    s.mean_staleness = stats_.staleness_n ? static_cast<double>(stats_.staleness_sum) /
                                                static_cast<double>(stats_.staleness_n)
                                          : 0.0;
    s.staleness_histogram = stats_.histogram;
    for (const auto& w : slots_) {
      s.applied.push_back(w.count);
      s.active += w.state == slot_state::active;
      s.finished += w.state == slot_state::finished;
      s.lost += w.state == slot_state::lost;
    }
    return s;
  }

  std::uint64_t version() const noexcept { return version_; }
  std::span<const ps_update> updates() const noexcept { return log_; }
  std::span<const lost_worker> lost_workers() const noexcept { return lost_; }
  host_view<const float> shard_values() const noexcept { return {w_.data(), w_.size()}; }
  host_view<const float> public_copy(int worker_rank) const {
    const auto& s = slot_of(worker_rank, "parameter_server::public_copy");
    return {s.known.data(), s.known.size()};
  }
  std::uint64_t n() const noexcept { return n_; }

  // Bytes of the server's part of a saved state.
  std::size_t state_bytes() const {
    std::size_t b = 8 + 8 + optimizer_.state_bytes();
    for (const auto& s : slots_) b += 16 + s.known.size() * sizeof(float);
    b += w_.size() * sizeof(float);
    return b;
  }

  // The server's part of a saved state: its shard's values and version, the optimizer's
  // state, each worker's clock, standing and public copy.
  void save_state(wire_writer& w) const {
    w.put_u64(version_);
    w.put_bytes(std::as_bytes(std::span<const float>(w_)));
    ps_put_sized(w, optimizer_);
    for (const auto& s : slots_) {
      w.put_u8(static_cast<std::uint8_t>(s.state));
      w.put_u8(s.synced ? 1 : 0);
      w.put_u16(0);
      w.put_u32(0);
      w.put_u64(s.count);
      w.put_bytes(std::as_bytes(std::span<const float>(s.known)));
    }
  }

  // Reads what save_state wrote (after the common header and n); changes nothing on error.
  void load_state(wire_reader& r, std::uint64_t n, const char* call) {
    const auto range = slice_of(static_cast<std::size_t>(n), opt_.servers, rank());
    const std::uint64_t version = r.get_u64();
    if (range.size() > r.remaining() / sizeof(float))
      throw decode_error(call, "truncated shard values", rank());
    std::vector<float> w(range.size());
    if (!w.empty()) std::memcpy(w.data(), r.take(w.size() * sizeof(float)).data(), w.size() * 4);
    O opt = optimizer_;
    opt.load_state(r.take(r.get_u64()));
    std::vector<slot> slots(slots_.size());
    for (auto& s : slots) {
      const auto st = r.get_u8();
      if (st > 2) throw decode_error(call, "worker standing " + std::to_string(st), rank());
      s.state = static_cast<slot_state>(st);
      s.synced = r.get_u8() != 0;
      r.get_u16();
      r.get_u32();
      s.count = r.get_u64();
      if (s.synced && opt_.pull == pull_encoding::codec) {
        if (range.size() > r.remaining() / sizeof(float))
          throw decode_error(call, "truncated public copy", rank());
        s.known.resize(range.size());
        if (!s.known.empty())
          std::memcpy(s.known.data(), r.take(s.known.size() * 4).data(), s.known.size() * 4);
      }
    }
    r.expect_end();
    n_ = n;
    sized_ = true;
    range_ = range;
    version_ = version;
    w_ = std::move(w);
    optimizer_ = std::move(opt);
    slots_ = std::move(slots);
    for (std::size_t k = 0; k < slots_.size(); ++k)
      if (slots_[k].state == slot_state::lost)
        lost_.push_back({worker_rank(k), slots_[k].count, "lost before the checkpoint"});
    size_server_buffers();
  }

 private:
  int rank() const { return t_->rank(); }
  int size() const { return t_->size(); }
  bool is_server() const { return t_->rank() < opt_.servers; }

  enum class slot_state : std::uint8_t { active = 0, finished = 1, lost = 2 };

  // The server's view of one worker.
  struct slot {
    slot_state state = slot_state::active;
    std::uint64_t count = 0;  // pushes applied
    bool gated = false;       // a reply is held by the staleness bound
    bool synced = false;      // `known` holds what the worker holds
    bool need_values = false;
    ps_kind pending_kind = ps_kind::ack;
    std::uint64_t pending_clock = 0;
    clock::time_point last_heard{};
    std::vector<float> known;      // the public copy ŵ (codec pulls)
    std::vector<std::byte> reply;  // the reply in flight
    std::optional<typename T::request> send;
  };

  struct server_tally {
    std::uint64_t replies = 0, duplicates = 0, refused = 0, messages = 0;
    std::uint64_t bytes_received = 0, bytes_sent = 0;
    std::uint64_t max_staleness = 0, staleness_sum = 0, staleness_n = 0;
    std::array<std::uint64_t, 24> histogram{};
  };

  int worker_rank(std::size_t k) const noexcept { return opt_.servers + static_cast<int>(k); }

  const slot& slot_of(int worker_rank, const char* call) const {
    if (!is_server()) throw_invalid_argument(call, "called on a worker rank", rank());
    if (worker_rank < opt_.servers || worker_rank >= size())
      throw_invalid_argument(call, "rank " + std::to_string(worker_rank) + " is not a worker",
                             rank());
    return slots_[static_cast<std::size_t>(worker_rank - opt_.servers)];
  }

  void server_ready(const char* call, host_view<float> params) {
    if (!sized_) {
      n_ = params.size();
      sized_ = true;
      range_ = slice_of(n_, opt_.servers, rank());
      w_.assign(params.data() + range_.lo, params.data() + range_.hi);
      size_server_buffers();
    } else if (params.size() != n_) {
      throw_invalid_argument(
          call, std::to_string(params.size()) + " parameters after " + std::to_string(n_), rank());
    }
  }

  void size_server_buffers() {
    const std::size_t m = range_.size();
    rx_buf_.resize(ps_header_bytes + proto_.max_encoded_bytes(m));
    g_.resize(m);
    d_.resize(m);
    for (auto& s : slots_)
      s.reply.resize(ps_header_bytes +
                     std::max({pull_.max_encoded_bytes(m), identity_codec{}.max_encoded_bytes(m),
                               ps_reason_bytes}));
  }

  void post_receive() {
    rx_.reset();
    const recv_op r[] = {{any_source, opt_.tag, rx_buf_}};
    rx_.emplace(t_->post({}, r));
  }

  int active_workers() const noexcept {
    int a = 0;
    for (const auto& s : slots_) a += s.state == slot_state::active;
    return a;
  }

  // A message longer than the receive buffer: the transport consumed it. Its sender (where
  // the request can say) is declared lost, since it will wait for a reply in vain.
  void on_oversized(const error& e) {
    int source = -1;
    if constexpr (requires(const typename T::request& q) {
                    { q.source(0) } -> std::convertible_to<int>;
                  })
      source = rx_->source(0);
    ++stats_.refused;
    post_receive();
    if (source >= opt_.servers && source < size() &&
        slots_[static_cast<std::size_t>(source - opt_.servers)].state == slot_state::active)
      lose(static_cast<std::size_t>(source - opt_.servers),
           std::string("sent a message longer than any push: ") + e.reason());
    release_gates();
  }

  void on_message(std::span<const std::byte> msg, int source) {
    static constexpr const char* call = "parameter_server::serve";
    ps_header h;
    try {
      h = ps_read_header(msg.first(std::min(msg.size(), ps_header_bytes)), call);
    } catch (const decode_error&) {
      ++stats_.refused;  // not ours or truncated: nobody to answer
      return;
    }
    if (h.who < opt_.servers || h.who >= size() || (source >= 0 && source != h.who)) {
      ++stats_.refused;
      return;
    }
    const auto k = static_cast<std::size_t>(h.who - opt_.servers);
    slot& s = slots_[k];
    if (h.kind == ps_kind::bye) {
      if (s.state == slot_state::active) s.state = slot_state::finished;
      s.gated = false;
      release_gates();
      return;
    }
    if (h.kind != ps_kind::push && h.kind != ps_kind::pull) {
      ++stats_.refused;
      return;
    }
    if (s.state != slot_state::active) {
      refuse(k, h,
             s.state == slot_state::lost ? "this worker was declared lost: " + reason_of(k)
                                         : std::string("this worker said goodbye"));
      return;
    }
    s.last_heard = clock::now();
    if (h.extra != n_) {
      lose(k,
           "it has " + std::to_string(h.extra) + " parameters, the server " + std::to_string(n_));
      refuse(
          k, h,
          "parameter count " + std::to_string(h.extra) + ", the server has " + std::to_string(n_));
      release_gates();
      return;
    }
    if (s.gated) {
      lose(k, "it sent a message while its reply was held");
      refuse(k, h, "a message while a reply is outstanding");
      release_gates();
      return;
    }
    if ((h.aux & ps_flag_need_values) != 0) s.need_values = true;
    if (h.kind == ps_kind::pull) {
      reply(k, ps_kind::pulled, h.clock);
      return;
    }
    if (h.clock < s.count) {  // applied before (a restored worker repeats it)
      ++stats_.duplicates;
      reply(k, ps_kind::duplicate, h.clock);
      return;
    }
    if (h.clock > s.count || h.version > version_) {
      const std::string why = h.clock > s.count
                                  ? "clock " + std::to_string(h.clock) + " after " +
                                        std::to_string(s.count) + " applied pushes"
                                  : "it read version " + std::to_string(h.version) +
                                        " of a shard at version " + std::to_string(version_);
      lose(k, why);
      refuse(k, h, why);
      release_gates();
      return;
    }
    try {
      scoped_timer timer(counters_.decode_ns);
      proto_.decode(msg.subspan(ps_header_bytes), host_view<float>(g_));
    } catch (const decode_error& e) {
      lose(k, "its push did not decode: " + e.reason());
      refuse(k, h, "the push did not decode: " + e.reason());
      release_gates();
      return;
    }
    optimizer_.apply(host_view<float>(w_), host_view<const float>(g_));
    const std::uint64_t stale = version_ - h.version;
    ++version_;
    ++s.count;
    stats_.max_staleness = std::max(stats_.max_staleness, stale);
    stats_.staleness_sum += stale;
    ++stats_.staleness_n;
    ++stats_.histogram[ps_histogram_bucket(stale)];
    if (opt_.record_updates) log_.push_back({h.who, h.clock, h.version, version_});
    s.gated = true;
    s.pending_kind = ps_kind::ack;
    s.pending_clock = h.clock;
    release_gates();
  }

  std::string reason_of(std::size_t k) const {
    for (const auto& l : lost_)
      if (l.rank == worker_rank(k)) return l.reason;
    return "unknown";
  }

  // The least clock among live workers (max when none is left).
  std::uint64_t min_live_clock() const noexcept {
    std::uint64_t m = std::numeric_limits<std::uint64_t>::max();
    for (const auto& s : slots_)
      if (s.state == slot_state::active) m = std::min(m, s.count);
    return m;
  }

  void release_gates() {
    for (;;) {
      const std::uint64_t least = min_live_clock();
      bool any = false;
      for (std::size_t k = 0; k < slots_.size(); ++k) {
        slot& s = slots_[k];
        if (!s.gated || s.state != slot_state::active) continue;
        // Gradient s.count comes next: every live worker must have s.count − s pushes in.
        if (opt_.staleness != unbounded_staleness &&
            least != std::numeric_limits<std::uint64_t>::max() && s.count > opt_.staleness &&
            least < s.count - opt_.staleness)
          continue;
        reply(k, s.pending_kind, s.pending_clock);
        any = true;
      }
      // A reply that found its worker lost changes the least clock: go round again.
      if (!any || min_live_clock() == least) return;
    }
  }

  // Finishes the send of worker k's previous reply, so that its buffer can be reused.
  bool finish_send(std::size_t k) {
    slot& s = slots_[k];
    if (!s.send) return true;
    try {
      t_->wait(*s.send);
      s.send.reset();
      return true;
    } catch (const timeout_error& e) {
      lose(k, std::string("a reply could not be delivered: ") + e.what());
    } catch (const peer_error& e) {
      lose(k, std::string("it failed: ") + e.what());
    }
    return false;
  }

  void post_reply(std::size_t k, std::size_t len) {
    slot& s = slots_[k];
    const send_op op[] = {
        {worker_rank(k), opt_.tag + 1, std::span<const std::byte>(s.reply.data(), len)}};
    try {
      s.send.emplace(t_->post(op, {}));
      ++stats_.replies;
      stats_.bytes_sent += len;
      counters_.add_sent(len);
    } catch (const peer_error& e) {
      lose(k, std::string("it failed: ") + e.what());
    }
  }

  void reply(std::size_t k, ps_kind kind, std::uint64_t clock_echo) {
    static constexpr const char* call = "parameter_server::serve";
    slot& s = slots_[k];
    s.gated = false;
    s.last_heard = clock::now();
    if (!finish_send(k)) return;
    const std::span<std::byte> body = std::span<std::byte>(s.reply).subspan(ps_header_bytes);
    std::size_t len = 0;
    ps_body what = ps_body::delta;
    {
      scoped_timer timer(counters_.encode_ns);
      if (opt_.pull == pull_encoding::f32 || !s.synced || s.need_values) {
        what = ps_body::values;
        len = identity_codec{}.encode(host_view<const float>(w_), body);
        if (opt_.pull == pull_encoding::codec) s.known = w_;
        s.synced = true;
        s.need_values = false;
      } else {
        const float* w = w_.data();
        const float* known = s.known.data();
        float* d = d_.data();
        for (std::size_t i = 0; i < d_.size(); ++i) d[i] = w[i] - known[i];
        if constexpr (StochasticCodec<P>)
          pull_.set_stream({opt_.seed, static_cast<std::uint32_t>(version_),
                            static_cast<std::uint32_t>(worker_rank(k)),
                            static_cast<std::uint32_t>(rank())});
        len = pull_.encode(host_view<const float>(d_), body);
        // The worker adds the same payload to the same bits: the copies stay equal.
        pull_.decode_add(body.first(len), host_view<float>(s.known));
      }
    }
    const std::uint64_t least = min_live_clock();
    ps_write_header(s.reply,
                    {kind, static_cast<std::uint8_t>(what), rank(), clock_echo, version_,
                     least == std::numeric_limits<std::uint64_t>::max() ? 0 : least},
                    call);
    post_reply(k, ps_header_bytes + len);
  }

  void refuse(std::size_t k, const ps_header& h, const std::string& why) {
    static constexpr const char* call = "parameter_server::serve";
    ++stats_.refused;
    slot& s = slots_[k];
    if (s.send) {
      // Never block on a worker that is not listening: refuse only when the line is free.
      try {
        if (!t_->test(*s.send)) return;
      } catch (const std::exception&) {
        return;
      }
      s.send.reset();
    }
    const std::size_t len = std::min(why.size(), ps_reason_bytes);
    ps_write_header(s.reply, {ps_kind::refused, 0, rank(), h.clock, version_, 0}, call);
    if (len) std::memcpy(s.reply.data() + ps_header_bytes, why.data(), len);
    post_reply(k, ps_header_bytes + len);
  }

  void lose(std::size_t k, std::string why) {
    slot& s = slots_[k];
    if (s.state == slot_state::lost) return;
    s.state = slot_state::lost;
    s.gated = false;
    lost_.push_back({worker_rank(k), s.count, std::move(why)});
    if (opt_.on_worker_lost) opt_.on_worker_lost(lost_.back());
  }

  void lose_all_active(const std::string& why) {
    for (std::size_t k = 0; k < slots_.size(); ++k)
      if (slots_[k].state == slot_state::active) lose(k, why);
  }

  // Silence past the deadline, failed deliveries; then the gates those losses open.
  void housekeeping() {
    const auto now = clock::now();
    bool changed = false;
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      slot& s = slots_[k];
      if (s.send) {
        try {
          if (t_->test(*s.send)) s.send.reset();
        } catch (const peer_error& e) {
          s.send.reset();
          if (s.state == slot_state::active) {
            lose(k, std::string("it failed: ") + e.what());
            changed = true;
          }
        } catch (const error&) {
          s.send.reset();
        }
      }
      if (s.state == slot_state::active && !s.gated && now - s.last_heard > opt_.worker_timeout) {
        lose(k, "silent for more than " + std::to_string(opt_.worker_timeout.count()) +
                    " ms (worker_timeout)");
        changed = true;
      }
    }
    if (changed) release_gates();
  }

  // Sends still in flight when serve returns: done ones are dropped; a lost worker's stay
  // (their buffers live as long as this object).
  void settle_sends() {
    for (auto& s : slots_) {
      if (!s.send) continue;
      try {
        if (t_->test(*s.send)) s.send.reset();
      } catch (const std::exception&) {
        s.send.reset();
      }
    }
  }

  T* t_;
  const ps_options& opt_;
  traffic_counters& counters_;
  C proto_;
  P pull_;
  O& optimizer_;
  std::uint64_t n_ = 0;
  bool sized_ = false;
  slice range_{};
  std::vector<float> w_, g_, d_;
  std::uint64_t version_ = 0;
  std::vector<slot> slots_;
  std::vector<std::byte> rx_buf_;
  std::optional<typename T::request> rx_;
  bool served_ = false;
  server_tally stats_;
  std::vector<ps_update> log_;
  std::vector<lost_worker> lost_;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

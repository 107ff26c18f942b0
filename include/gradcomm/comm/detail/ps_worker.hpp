// gradcomm/comm/detail/ps_worker.hpp — the parameter server's worker role: one push codec
// state per shard, the push of a gradient's shards and the pull of the parameters in one
// exchange with every server, the checks on their replies, and the worker's saved state.
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/detail/ps_options.hpp>
#include <gradcomm/comm/detail/ps_protocol.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>
#include <gradcomm/transport/detail/common.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {
namespace detail {

// The worker role of parameter_server<C, T, O, P> on `t` (which must outlive it), with the
// communicator's options and counters. On a server rank it holds nothing.
template <class C, class T, class P>
class ps_worker {
 public:
  ps_worker(T& t, const ps_options& opt, traffic_counters& counters, const C& proto, const P& pull)
      : t_(&t), opt_(opt), counters_(counters), proto_(proto), pull_(pull) {
    if (t.rank() >= opt.servers) {
      push_.assign(static_cast<std::size_t>(opt_.servers), proto_);
      version_seen_.assign(static_cast<std::size_t>(opt_.servers), 0);
    }
  }

  // Pushes grads (each server its shard), waits for every server's acknowledgement and
  // writes the pulled parameters into params.
  void push(const char* call, host_view<float> params, host_view<const float> grads) {
    worker_ready(call, params.size());
    exchange(call, ps_kind::push, params, grads);
    ++clock_;
  }

  // Pulls the parameters without pushing.
  void pull(const char* call, host_view<float> params) {
    worker_ready(call, params.size());
    exchange(call, ps_kind::pull, params, {});
  }

  // Tells every server this worker is done (once).
  void finish(const char* call) {
    if (finished_) return;
    check_usable(call);
    finished_ = true;
    std::vector<std::array<std::byte, ps_header_bytes>> msg(push_.size());
    std::vector<send_op> sends;
    for (int s = 0; s < opt_.servers; ++s) {
      ps_write_header(msg[static_cast<std::size_t>(s)], {ps_kind::bye, 0, rank(), clock_, 0, n_},
                      call);
      sends.push_back({s, opt_.tag, msg[static_cast<std::size_t>(s)]});
    }
    typename T::request req;
    guarded(call, [&] {
      req = t_->post(sends, {});
      t_->wait(req);
    });
    counters_.add_sent(ps_header_bytes * sends.size(), sends.size());
  }

  // Whether the destructor of the communicator says goodbye: not yet done, not broken.
  bool owes_goodbye() const noexcept { return !finished_ && broken_.empty(); }

  std::uint64_t clock_count() const noexcept { return clock_; }
  const C& push_codec(int s) const { return push_.at(static_cast<std::size_t>(s)); }
  std::uint64_t version_seen(int s) const { return version_seen_.at(static_cast<std::size_t>(s)); }
  std::uint64_t n() const noexcept { return n_; }

  // Bytes of the worker's part of a saved state.
  std::size_t state_bytes() const {
    std::size_t b = 8;
    for (const auto& c : push_) {
      b += 16;
      if constexpr (C::traits.stateful) b += c.state_bytes();
    }
    return b;
  }

  // The worker's part of a saved state: its clock (and whether it holds the values), the
  // versions it holds, its codec states.
  void save_state(wire_writer& w) const {
    w.put_u64(clock_ | (got_values_ ? std::uint64_t{1} << 63 : 0));
    for (std::size_t s = 0; s < push_.size(); ++s) {
      w.put_u64(version_seen_[s]);
      if constexpr (C::traits.stateful)
        ps_put_sized(w, push_[s]);
      else
        w.put_u64(0);
    }
  }

  // Reads what save_state wrote (after the common header and n); changes nothing on error.
  void load_state(wire_reader& r, std::uint64_t n, const char* call) {
    const std::uint64_t c = r.get_u64();
    std::vector<std::uint64_t> seen(push_.size());
    std::vector<C> codecs = push_;
    for (std::size_t s = 0; s < push_.size(); ++s) {
      seen[s] = r.get_u64();
      const std::uint64_t cb = r.get_u64();
      if constexpr (C::traits.stateful)
        codecs[s].load_state(r.take(cb));
      else if (cb != 0)
        throw decode_error(call, "codec state for a stateless codec", rank());
    }
    r.expect_end();
    n_ = n;
    sized_ = true;
    clock_ = c & ~(std::uint64_t{1} << 63);
    got_values_ = (c >> 63) != 0;
    version_seen_ = std::move(seen);
    push_ = std::move(codecs);
    size_worker_buffers();
  }

 private:
  int rank() const { return t_->rank(); }

  void check_usable(const char* call) const {
    if (!broken_.empty())
      throw error(make_error_code(errc::invalid_argument), call, rank(),
                  "unusable after an earlier failure: " + broken_);
    if (finished_)
      throw_invalid_argument(call, "this worker already said goodbye (finish())", rank());
  }

  void worker_ready(const char* call, std::size_t n) {
    check_usable(call);
    if (!sized_) {
      n_ = n;
      sized_ = true;
      size_worker_buffers();
    } else if (n != n_) {
      throw_invalid_argument(call, std::to_string(n) + " parameters after " + std::to_string(n_),
                             rank());
    }
  }

  void size_worker_buffers() {
    const auto S = static_cast<std::size_t>(opt_.servers);
    out_.resize(S);
    in_.resize(S);
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t m = slice_of(n_, opt_.servers, static_cast<int>(s)).size();
      out_[s].resize(ps_header_bytes + proto_.max_encoded_bytes(m));
      in_[s].resize(ps_header_bytes +
                    std::max({pull_.max_encoded_bytes(m), identity_codec{}.max_encoded_bytes(m),
                              ps_reason_bytes}));
    }
  }

  void exchange(const char* call, ps_kind kind, host_view<float> params,
                host_view<const float> grads) {
    const auto S = static_cast<std::size_t>(opt_.servers);
    std::vector<send_op> sends(S);
    std::vector<recv_op> recvs(S);
    const std::uint8_t flags = got_values_ ? 0 : ps_flag_need_values;
    for (std::size_t s = 0; s < S; ++s) {
      const auto r = slice_of(n_, opt_.servers, static_cast<int>(s));
      std::size_t len = ps_header_bytes;
      ps_write_header(out_[s], {kind, flags, rank(), clock_, version_seen_[s], n_}, call);
      if (kind == ps_kind::push) {
        if constexpr (StochasticCodec<C>)
          push_[s].set_stream({opt_.seed, static_cast<std::uint32_t>(clock_),
                               static_cast<std::uint32_t>(rank()), static_cast<std::uint32_t>(s)});
        scoped_timer timer(counters_.encode_ns);
        try {
          len += push_[s].encode(grads.subview(r.lo, r.size()),
                                 std::span<std::byte>(out_[s]).subspan(ps_header_bytes));
        } catch (...) {
          // Shards before s were encoded (their feedback moved) but not sent.
          if (s > 0) broken_ = "an encode failed after other shards were encoded";
          throw;
        }
      }
      sends[s] = {static_cast<int>(s), opt_.tag, std::span<const std::byte>(out_[s].data(), len)};
      recvs[s] = {static_cast<int>(s), opt_.tag + 1, in_[s]};
    }
    typename T::request req;
    guarded(call, [&] {
      req = t_->post(sends, recvs);
      t_->wait(req);
    });
    for (std::size_t s = 0; s < S; ++s) {
      counters_.add_sent(sends[s].data.size());
      counters_.add_received(req.received(s));
    }
    // Every server's reply is checked before any is applied: a refusal leaves params alone.
    std::vector<ps_header> hs(S);
    for (std::size_t s = 0; s < S; ++s) {
      const auto bytes = std::span<const std::byte>(in_[s].data(), req.received(s));
      try {
        hs[s] = ps_read_header(bytes.first(std::min(bytes.size(), ps_header_bytes)), call);
      } catch (const decode_error& e) {
        fail(e.reason());
        throw decode_error(call, "reply of server rank " + std::to_string(s) + ": " + e.reason(),
                           rank());
      }
      const auto& h = hs[s];
      const auto body = bytes.subspan(ps_header_bytes);
      if (h.kind == ps_kind::refused) {
        const std::string why(reinterpret_cast<const char*>(body.data()), body.size());
        fail("server rank " + std::to_string(s) + " refused: " + why);
        throw peer_error(call, rank(), static_cast<int>(s),
                         "server rank " + std::to_string(s) + " refused the " +
                             (kind == ps_kind::push ? "push of clock " : "pull at clock ") +
                             std::to_string(clock_) + ": " + why);
      }
      const bool expected_kind = kind == ps_kind::push
                                     ? (h.kind == ps_kind::ack || h.kind == ps_kind::duplicate)
                                     : h.kind == ps_kind::pulled;
      std::string bad;
      if (!expected_kind)
        bad = "message kind " + std::to_string(static_cast<int>(h.kind));
      else if (h.who != static_cast<int>(s))
        bad = "it says it comes from rank " + std::to_string(h.who);
      else if (h.clock != clock_)
        bad = "it answers clock " + std::to_string(h.clock) + ", not " + std::to_string(clock_);
      else if (h.aux != static_cast<std::uint8_t>(ps_body::values) &&
               (h.aux != static_cast<std::uint8_t>(ps_body::delta) || !got_values_))
        bad = "body kind " + std::to_string(h.aux) + (got_values_ ? "" : " before the values");
      if (!bad.empty()) {
        fail(bad);
        throw decode_error(call, "reply of server rank " + std::to_string(s) + ": " + bad, rank());
      }
    }
    for (std::size_t s = 0; s < S; ++s) {
      const auto r = slice_of(n_, opt_.servers, static_cast<int>(s));
      const auto body =
          std::span<const std::byte>(in_[s].data(), req.received(s)).subspan(ps_header_bytes);
      scoped_timer timer(counters_.decode_ns);
      try {
        if (hs[s].aux == static_cast<std::uint8_t>(ps_body::values))
          identity_codec{}.decode(body, params.subview(r.lo, r.size()));
        else
          pull_.decode_add(body, params.subview(r.lo, r.size()));
      } catch (const decode_error& e) {
        fail(e.reason());
        throw decode_error(call, "pull of server rank " + std::to_string(s) + ": " + e.reason(),
                           rank());
      }
      version_seen_[s] = hs[s].version;
    }
    got_values_ = true;
  }

  void fail(std::string why) {
    if (broken_.empty()) broken_ = std::move(why);
  }

  // Runs the post and wait of an exchange with the servers; a failure names the server and
  // leaves this object unusable (a push may or may not have been applied).
  template <class F>
  void guarded(const char* call, F&& f) {
    try {
      scoped_timer timer(counters_.wait_ns);
      f();
    } catch (const timeout_error& e) {
      fail(e.what());
      throw timeout_error(
          call, rank(), e.peer(),
          "server rank " + std::to_string(e.peer()) + " did not answer: " + e.reason());
    } catch (const peer_error& e) {
      fail(e.what());
      throw peer_error(call, rank(), e.peer(),
                       "server rank " + std::to_string(e.peer()) + " failed: " + e.reason());
    } catch (const std::exception& e) {
      fail(e.what());
      throw;
    }
  }

  T* t_;
  const ps_options& opt_;
  traffic_counters& counters_;
  C proto_;
  P pull_;
  std::uint64_t n_ = 0;
  bool sized_ = false;
  std::vector<C> push_;  // one codec state per shard
  std::vector<std::uint64_t> version_seen_;
  std::vector<std::vector<std::byte>> out_, in_;
  std::uint64_t clock_ = 0;
  bool got_values_ = false;
  bool finished_ = false;
  std::string broken_;
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

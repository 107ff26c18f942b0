// gradcomm/comm/allreduce.hpp — the compressed all-reduce communicator: buckets of
// registered gradient tensors, each reduced by the algorithm its codec's traits
// call for, its communication overlapping the encoding of the next bucket.
//
//   using comm_t = gradcomm::allreduce<gradcomm::error_feedback<gradcomm::sign_codec>,
//                                      gradcomm::local_transport>;
//   comm_t comm(transport, {}, {.bucket_bytes = 8 << 20}, gradcomm::sgd{{.lr = 0.05f}});
//   for (auto& layer : model) comm.add_tensor(layer.grad);  // once, same order on every rank
//   ...backward pass...
//   comm.average();                                          // grads := mean over ranks
//
// Algorithms, chosen at compile time:
//  * linear codecs whose encoded elements the transport sums natively (identity f32
//    always; f16 / bf16 where the transport reduces them): the transport's all-reduce on
//    the encoded form;
//  * other fixed-size codecs: scatter-reduce-allgather. Every rank encodes N chunks
//    (chunk j with its own codec state), all-to-all, decode_add the N payloads of its
//    chunk in rank order, re-encodes the reduced chunk with its own second codec state
//    (its error feedback), all-gather, decode. Each rank sends the payload of N-1
//    chunks twice: 2(N-1)/N of the compressed bucket;
//  * variable-size (sparse) codecs: all-gather(v) of the payloads and decode_add in rank
//    order; when the payloads add up to more than the f32 bucket twice over (the volume
//    of a ring all-reduce of f32), each rank decodes its own payload and the dense
//    values are all-reduced instead — same result, fewer bytes;
//  * two-round codecs (PowerSGD): the transport's all-reduce of P, then of Q.
// Every rank ends with bitwise identical values: every reduction that is not the
// transport's own decodes the same payloads in the same order on every rank.
#pragma once

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// How an allreduce communicator cuts and sends its tensors.
///
///   gradcomm::allreduce_options o{.bucket_bytes = 16 << 20, .small_dtype = gradcomm::dtype::bf16};
struct allreduce_options {
  /// f32 bytes a bucket holds at most (rounded down to a multiple of 256 elements).
  std::size_t bucket_bytes = std::size_t{4} << 20;
  /// Registered tensors with fewer elements travel uncompressed, in buckets of their own
  /// (the notice below says how many, once; stats(b).compressed says which buckets).
  std::size_t small_tensor_elems = 1024;
  /// How those travel: dtype::f32 (exact) or dtype::bf16.
  dtype small_dtype = dtype::f32;
  reduction op = reduction::mean;
  /// The seed of the stream keys of stochastic codecs (same on every rank).
  std::uint64_t seed = 0;
  /// Communication on a background thread (start() returns before it finished).
  bool overlap = true;
  /// What the communicator says once, on rank 0: that tensors under small_tensor_elems
  /// travel uncompressed while the codec compresses. Unset, it goes to stderr; a lambda
  /// that does nothing silences it.
  std::function<void(const std::string&)> notice = nullptr;
};

/// What one bucket did, summed over its rounds (`rounds` of them).
///
///   auto s = comm.stats(0);
///   std::printf("%.1f× smaller, %.3f s waiting\n", s.ratio, s.wait_ns * 1e-9);
struct bucket_stats {
  std::size_t elements = 0;         ///< f32 values in the bucket
  bool compressed = true;           ///< false for a bucket of small tensors
  std::uint64_t rounds = 0;         ///< completed reductions
  std::uint64_t wire_bytes = 0;     ///< bytes this rank sent, as its transport counts them
  std::uint64_t payload_bytes = 0;  ///< bytes of this rank's encodings of the bucket
  double ratio = 1.0;               ///< f32 bytes / payload bytes: the format's compression
  std::int64_t encode_ns = 0;
  std::int64_t decode_ns = 0;
  std::int64_t wait_ns = 0;    ///< time in the transport (waiting for peers and moving bytes)
  double residual_norm = 0.0;  ///< ||e|| of this rank's error-feedback states, last round
};

namespace detail {

inline constexpr std::size_t allreduce_align = 256;

// Chunk i of n elements cut into `parts`, boundaries on multiples of allreduce_align.
struct ar_range {
  std::size_t lo, hi;
  std::size_t size() const noexcept { return hi - lo; }
};
inline ar_range ar_chunk(std::size_t n, int parts, int i) noexcept {
  const std::size_t units = (n + allreduce_align - 1) / allreduce_align;
  const auto p = static_cast<std::size_t>(parts), ui = static_cast<std::size_t>(i);
  const std::size_t base = units / p, extra = units % p;
  const std::size_t lo = (base * ui + std::min(ui, extra)) * allreduce_align;
  const std::size_t hi = lo + (base + (ui < extra ? 1 : 0)) * allreduce_align;
  return {std::min(lo, n), std::min(hi, n)};
}

template <class T, class E>
concept reduces_natively =
    !std::is_void_v<E> && requires(T & t, std::span<const E> in, std::span<E> out) {
  t.allreduce(in, out, reduce_op::sum);
};

enum class ar_algorithm { native, scatter_reduce_allgather, allgather, two_round };

template <Codec C, Transport T>
constexpr ar_algorithm algorithm_for() {
  if constexpr (TwoRoundCodec<C>) {
    return ar_algorithm::two_round;
  } else if constexpr (C::traits.linear && reduces_natively<T, linear_element_t<C>>) {
    return ar_algorithm::native;
  } else if constexpr (C::traits.fixed_size) {
    return ar_algorithm::scatter_reduce_allgather;
  } else {
    return ar_algorithm::allgather;
  }
}

inline void scale(float* v, std::size_t n, float s) noexcept {
  for (std::size_t i = 0; i < n; ++i) v[i] *= s;
}

// One bucket's reduction with codec C: the codec states it needs (per chunk, for the
// reduced chunk) and buffers that grow once and stay. prepare() runs on the caller's
// thread (encoding), finish() on the communication thread (the transport, decoding).
template <Codec C, Transport T>
class bucket_engine {
 public:
  static constexpr ar_algorithm algorithm = algorithm_for<C, T>();

  bucket_engine(const C& proto, std::size_t n, int ranks, int rank, std::uint32_t id)
      : n_(n), ranks_(ranks), rank_(rank), id_(id), decoder_(proto) {
    if constexpr (algorithm == ar_algorithm::scatter_reduce_allgather) {
      for (int j = 0; j < ranks; ++j) chunk_codecs_.push_back(proto);
      reduced_codec_.push_back(proto);
      offsets_.resize(static_cast<std::size_t>(ranks) + 1);
      sizes_.resize(static_cast<std::size_t>(ranks));
      std::size_t at = 0;
      for (int j = 0; j < ranks; ++j) {
        offsets_[static_cast<std::size_t>(j)] = at;
        at += proto.max_encoded_bytes(ar_chunk(n, ranks, j).size());
      }
      offsets_.back() = at;
      send_.resize(at);
    } else {
      chunk_codecs_.push_back(proto);
      if constexpr (algorithm == ar_algorithm::two_round) {
        p_.resize(proto.p_floats(n));
        q_.resize(proto.q_floats(n));
      } else if constexpr (!value_codec<C> || algorithm != ar_algorithm::native) {
        send_.resize(proto.max_encoded_bytes(n));
      }
    }
  }

  // Encodes `in` (the bucket's values) for round `step`; returns the payload bytes.
  std::size_t prepare(host_view<const float> in, std::uint32_t step, std::uint64_t seed) {
    if constexpr (algorithm == ar_algorithm::scatter_reduce_allgather) {
      std::size_t total = 0;
      for (int j = 0; j < ranks_; ++j) {
        const auto uj = static_cast<std::size_t>(j);
        const ar_range c = ar_chunk(n_, ranks_, j);
        set_key(chunk_codecs_[uj], seed, step, key_bucket(0, j));
        sizes_[uj] = chunk_codecs_[uj].encode(
            host_view<const float>(in.data() + c.lo, c.size()),
            std::span<std::byte>(send_.data() + offsets_[uj], offsets_[uj + 1] - offsets_[uj]));
        total += sizes_[uj];
      }
      return total;
    } else if constexpr (algorithm == ar_algorithm::two_round) {
      chunk_codecs_[0].compute_p(in, host_view<float>(p_.data(), p_.size()));
      return (p_.size() + q_.size()) * sizeof(float);
    } else if constexpr (value_codec<C> && algorithm == ar_algorithm::native) {
      return n_ * sizeof(float);
    } else {
      set_key(chunk_codecs_[0], seed, step, key_bucket(0, 0));
      mine_ = chunk_codecs_[0].encode(in, std::span<std::byte>(send_));
      return mine_;
    }
  }

  // Finishes the round: `in` is what prepare() saw, `out` (may be `in`) receives the
  // reduction. Adds stage-2 encoding and decoding time to `st`.
  template <class Counters>
  void finish(T& t, host_view<const float> in, host_view<float> out, reduction op,
              std::uint32_t step, std::uint64_t seed, Counters& st) {
    const float inv = op == reduction::mean ? 1.0f / static_cast<float>(ranks_) : 1.0f;
    if constexpr (algorithm == ar_algorithm::native) {
      if constexpr (value_codec<C>) {  // the payload would be the values: sum them as they are
        t.allreduce(std::span<const float>(in.data(), n_), std::span<float>(out.data(), n_),
                    reduce_op::sum);
        scoped_timer d(st.decode_ns);
        if (inv != 1.0f) scale(out.data(), n_, inv);
      } else {
        using E = linear_element_t<C>;
        const std::size_t head = mine_ - n_ * sizeof(E);
        auto body = std::span<E>(reinterpret_cast<E*>(send_.data() + head), n_);
        t.allreduce(std::span<const E>(body), body, reduce_op::sum);
        scoped_timer d(st.decode_ns);
        decoder_.decode(std::span<const std::byte>(send_.data(), mine_), out);
        if (inv != 1.0f) scale(out.data(), n_, inv);
      }
    } else if constexpr (algorithm == ar_algorithm::scatter_reduce_allgather) {
      finish_sra(t, out, inv, step, seed, st);
    } else if constexpr (algorithm == ar_algorithm::two_round) {
      C& c = chunk_codecs_[0];
      t.allreduce(std::span<const float>(p_), std::span<float>(p_), reduce_op::sum);
      {
        scoped_timer e(st.encode_ns);
        c.compute_q(in, host_view<float>(p_.data(), p_.size()),
                    host_view<float>(q_.data(), q_.size()));
      }
      t.allreduce(std::span<const float>(q_), std::span<float>(q_), reduce_op::sum);
      scoped_timer d(st.decode_ns);
      c.decompress(in, host_view<const float>(p_.data(), p_.size()),
                   host_view<const float>(q_.data(), q_.size()), out);
      if (inv != 1.0f) scale(out.data(), n_, inv);
    } else {
      finish_allgather(t, out, inv, st);
    }
  }

  double residual_norm() const {
    double s = 0.0;
    for (const C& c : chunk_codecs_) s += std::pow(residual_norm_of(c), 2);
    for (const C& c : reduced_codec_) s += std::pow(residual_norm_of(c), 2);
    return std::sqrt(s);
  }

 private:
  // Stream keys: bucket id in the high 16 bits, the stage and the chunk below.
  std::uint32_t key_bucket(int stage, int chunk) const noexcept {
    return (id_ << 16) | (static_cast<std::uint32_t>(stage) << 15) |
           (static_cast<std::uint32_t>(chunk) & 0x7fffu);
  }
  void set_key(C& c, std::uint64_t seed, std::uint32_t step, std::uint32_t bucket) const {
    if constexpr (StochasticCodec<C>)
      c.set_stream(stream_key{seed, step, static_cast<std::uint32_t>(rank_), bucket});
  }

  template <class Counters>
  void finish_sra(T& t, host_view<float> out, float inv, std::uint32_t step, std::uint64_t seed,
                  Counters& st) {
    const auto ur = static_cast<std::size_t>(ranks_), me = static_cast<std::size_t>(rank_);
    // Fixed size: every rank's payload for a chunk has the size of ours for it.
    const std::size_t mine_size = sizes_[me];
    recv_.resize(std::max(recv_.size(), mine_size * ur));
    counts_.assign(ur, mine_size);
    packed_.resize(std::max(packed_.size(), offsets_.back()));
    // The payloads sit at offsets_ with gaps; alltoallv wants them one after another.
    std::size_t at = 0;
    for (std::size_t j = 0; j < ur; ++j) {
      if (at != offsets_[j]) std::memmove(send_.data() + at, send_.data() + offsets_[j], sizes_[j]);
      at += sizes_[j];
    }
    t.alltoallv(std::span<const std::byte>(send_.data(), at), std::span<const std::size_t>(sizes_),
                std::span<std::byte>(recv_.data(), mine_size * ur),
                std::span<const std::size_t>(counts_));
    const ar_range mine = ar_chunk(n_, ranks_, rank_);
    acc_.assign(mine.size(), 0.0f);
    {
      scoped_timer d(st.decode_ns);
      for (std::size_t r = 0; r < ur; ++r)
        decoder_.decode_add(std::span<const std::byte>(recv_.data() + r * mine_size, mine_size),
                            host_view<float>(acc_.data(), acc_.size()));
      if (inv != 1.0f) scale(acc_.data(), acc_.size(), inv);
    }
    std::size_t reduced;
    {
      scoped_timer e(st.encode_ns);
      set_key(reduced_codec_[0], seed, step, key_bucket(1, rank_));
      reduced = reduced_codec_[0].encode(host_view<const float>(acc_.data(), acc_.size()),
                                         std::span<std::byte>(packed_));
    }
    if (reduced != mine_size)
      throw error(make_error_code(errc::internal), "allreduce", rank_,
                  "codec " + std::string(codec_name(C::id)) +
                      " is fixed-size but encoded a chunk in " + std::to_string(reduced) +
                      " bytes, then in " + std::to_string(mine_size));
    // Every chunk's payload size is sizes_[j] (our stage-1 encoding of the same length).
    gathered_.resize(std::max(gathered_.size(), at));
    t.allgatherv(std::span<const std::byte>(packed_.data(), reduced),
                 std::span<std::byte>(gathered_.data(), at), std::span<const std::size_t>(sizes_));
    scoped_timer d(st.decode_ns);
    std::size_t from = 0;
    for (std::size_t j = 0; j < ur; ++j) {
      const ar_range c = ar_chunk(n_, ranks_, static_cast<int>(j));
      decoder_.decode(std::span<const std::byte>(gathered_.data() + from, sizes_[j]),
                      host_view<float>(out.data() + c.lo, c.size()));
      from += sizes_[j];
    }
  }

  template <class Counters>
  void finish_allgather(T& t, host_view<float> out, float inv, Counters& st) {
    const auto ur = static_cast<std::size_t>(ranks_);
    ws_.sizes.resize(ur);
    ws_.counts.resize(ur);
    const auto mine = static_cast<std::int64_t>(mine_);
    t.allgather(std::as_bytes(std::span<const std::int64_t>(&mine, 1)),
                std::as_writable_bytes(std::span<std::int64_t>(ws_.sizes)));
    const std::size_t limit = decoder_.max_encoded_bytes(n_);
    std::uint64_t total = 0;
    for (std::size_t r = 0; r < ur; ++r) {
      const std::int64_t s = ws_.sizes[r];
      if (s < 0 || static_cast<std::uint64_t>(s) > limit)
        throw decode_error("allreduce",
                           "rank " + std::to_string(r) + " announced a payload of " +
                               std::to_string(s) + " bytes, more than " + std::to_string(limit) +
                               " for " + std::to_string(n_) + " elements",
                           rank_);
      ws_.counts[r] = static_cast<std::size_t>(s);
      total += static_cast<std::uint64_t>(s);
    }
    // Break-even: a ring all-reduce of f32 moves 2(N-1)/N × 4n bytes per rank; the
    // all-gather brings each rank the others' payloads, about (N-1)/N × total.
    if (ur > 1 && total > 2 * n_ * sizeof(float)) {
      {
        scoped_timer d(st.decode_ns);
        decoder_.decode(std::span<const std::byte>(send_.data(), mine_), out);
      }
      st.dense_rounds += 1;
      t.allreduce(std::span<const float>(out.data(), n_), std::span<float>(out.data(), n_),
                  reduce_op::sum);
      scoped_timer d(st.decode_ns);
      if (inv != 1.0f) scale(out.data(), n_, inv);
      return;
    }
    ws_.gathered.resize(std::max(ws_.gathered.size(), static_cast<std::size_t>(total)));
    t.allgatherv(std::span<const std::byte>(send_.data(), mine_),
                 std::span<std::byte>(ws_.gathered.data(), static_cast<std::size_t>(total)),
                 std::span<const std::size_t>(ws_.counts));
    scoped_timer d(st.decode_ns);
    std::fill(out.begin(), out.end(), 0.0f);
    std::size_t from = 0;
    for (std::size_t r = 0; r < ur; ++r) {
      decoder_.decode_add(std::span<const std::byte>(ws_.gathered.data() + from, ws_.counts[r]),
                          out);
      from += ws_.counts[r];
    }
    if (inv != 1.0f) scale(out.data(), n_, inv);
  }

  std::size_t n_;
  int ranks_, rank_;
  std::uint32_t id_;
  C decoder_;
  std::vector<C> chunk_codecs_, reduced_codec_;
  std::vector<std::size_t> offsets_, sizes_, counts_;
  std::vector<std::byte> send_, recv_, packed_, gathered_;
  std::vector<float> acc_, p_, q_;
  std::size_t mine_ = 0;
  allgather_workspace ws_;
};

// FNV-1a, 64 bits: the fingerprint the ranks compare before the first round.
inline std::uint64_t ar_hash(std::span<const std::byte> b) noexcept {
  std::uint64_t h = 14695981039346656037ull;
  for (std::byte x : b) h = (h ^ static_cast<std::uint64_t>(x)) * 1099511628211ull;
  return h;
}

inline std::string ar_hex(std::span<const std::byte> b) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i) s += ' ';
    s += digits[static_cast<unsigned>(b[i]) >> 4];
    s += digits[static_cast<unsigned>(b[i]) & 15];
  }
  return s;
}

// What two ranks' codec probes (the same values encoded by a fresh copy of each rank's
// prototype) say about their settings: the first header field that differs.
inline std::string ar_probe_difference(std::span<const std::byte> a, int ra,
                                       std::span<const std::byte> b, int rb) {
  auto on = [&](const std::string& x, const std::string& y) {
    return x + " on rank " + std::to_string(ra) + " but " + y + " on rank " + std::to_string(rb);
  };
  auto hex = [](std::byte v) { return "0x" + ar_hex(std::span<const std::byte>(&v, 1)); };
  if (a.size() < wire_header_bytes || b.size() < wire_header_bytes)
    return "probe payloads of " + on(std::to_string(a.size()), std::to_string(b.size())) + " bytes";
  auto name = [](std::byte id) { return std::string(codec_name(static_cast<codec_id>(id))); };
  if (a[5] != b[5]) return "codec " + on(name(a[5]), name(b[5]));
  const std::string codec = name(a[5]);
  if (a[6] != b[6])
    return codec + " element dtype " +
           on(std::to_string(static_cast<unsigned>(a[6])),
              std::to_string(static_cast<unsigned>(b[6])));
  const std::size_t pa = static_cast<std::size_t>(a[7]), pb = static_cast<std::size_t>(b[7]);
  const auto params_a = a.subspan(wire_header_bytes, std::min(pa, a.size() - wire_header_bytes));
  const auto params_b = b.subspan(wire_header_bytes, std::min(pb, b.size() - wire_header_bytes));
  const std::string layout = " (" + codec + " parameters [" + ar_hex(params_a) + "] vs [" +
                             ar_hex(params_b) + "]; the codec's header documents their layout)";
  if (pa != pb)
    return codec + " parameter bytes: " + on(std::to_string(pa), std::to_string(pb)) + layout;
  for (std::size_t i = 0; i < params_a.size() && i < params_b.size(); ++i)
    if (params_a[i] != params_b[i])
      return codec + " parameter byte " + std::to_string(i) + ": " +
             on(hex(params_a[i]), hex(params_b[i])) + layout;
  return codec + " payload of the same values: " +
         on(std::to_string(a.size()) + " bytes", std::to_string(b.size()) + " bytes") +
         " or other bytes (state or settings the header does not carry)";
}

// Per-round tallies the engines add to (the communication thread's own).
struct round_tally {
  std::atomic<std::int64_t> encode_ns{0}, decode_ns{0};
  std::uint64_t dense_rounds = 0;
};

}  // namespace detail

/// C, reduced by the all-reduce in one stage: every rank's payload is all-gathered and
/// each rank decodes and sums them all, where a fixed-size codec's scatter–reduce–
/// allgather encodes the summed chunks a second time (with each rank's own error
/// feedback). The second rounding is small for 8 bits; for a 1-bit code it is a second
/// sign of a sum of signs, and it costs accuracy: the example's MLP on Fashion-MNIST lost
/// 2.5 points after one epoch with it (examples/data_parallel, sign with error feedback on
/// each worker's momentum). The price is bytes: a rank sends (N − 1) payloads of the whole
/// tensor instead of 2(N − 1)/N, N/2 times as much. Everything but the traits (not linear,
/// not fixed size: the all-reduce's choice) is C's: payloads, state, error feedback.
///
///   using sign1 = gradcomm::allgathered<gradcomm::error_feedback<gradcomm::sign_codec>>;
///   gradcomm::allreduce<sign1, gradcomm::local_transport> comm(t, sign1({}));
///   static_assert(decltype(comm)::algorithm == gradcomm::detail::ar_algorithm::allgather);
template <Codec C>
class allgathered : public C {
  static_assert(C::traits.fixed_size && !TwoRoundCodec<C>,
                "gradcomm::allgathered<C>: only a fixed-size codec has a second stage to "
                "skip; others are all-gathered (or summed natively, or in two rounds) already");

 public:
  static constexpr codec_traits traits{
      .linear = false, .fixed_size = false, .stateful = C::traits.stateful};
  explicit allgathered(C c) : C(std::move(c)) {}
};

/// The all-reduce backend. Models `Communicator`. `C` is the codec of the registered
/// tensors (its traits pick the algorithm); tensors under
/// `options.small_tensor_elems` travel as f32 or bf16. `O` is the optimizer step()
/// applies after averaging.
///
/// Threads: start() encodes on the caller's thread; with `options.overlap` the rest of
/// the reduction runs on a communication thread, so bucket i's communication overlaps
/// bucket i+1's encoding and whatever the caller does next. While a handle is
/// outstanding the transport belongs to that thread. Every rank must start buckets in
/// the same order (the order of their collectives). A failed reduction (a peer failed
/// or missed the transport's deadline) is rethrown by its handle's wait(), and every
/// later call rethrows it: the ranks no longer agree on where they are.
///
///   gradcomm::allreduce<gradcomm::bf16_codec, gradcomm::local_transport> comm(t, {});
///   comm.step(params, grads);  // grads := mean over ranks; params -= lr * grads
template <class C, class T, class O = sgd>
class allreduce {
  static_assert(Codec<C>,
                "gradcomm::allreduce<C, T, O>: C must model gradcomm::Codec "
                "(codec/codec.hpp): value_type float, traits, id, max_encoded_bytes, "
                "encode, decode, decode_add");
  static_assert(Transport<T>,
                "gradcomm::allreduce<C, T, O>: T must model gradcomm::Transport "
                "(transport/transport.hpp); check_transport<T>() says what is "
                "missing");
  static_assert(Optimizer<O>,
                "gradcomm::allreduce<C, T, O>: O must model gradcomm::Optimizer "
                "(comm/optimizer.hpp), e.g. gradcomm::sgd or gradcomm::adam");
  static_assert(!TwoRoundCodec<C> || C::traits.stateful,
                "gradcomm::allreduce: a two-round codec keeps its factors between the rounds "
                "and must be stateful");

  using main_engine = detail::bucket_engine<C, T>;
  using f32_engine = detail::bucket_engine<identity_codec, T>;
  using bf16_engine = detail::bucket_engine<bf16_codec, T>;

 public:
  /// The algorithm the registered (large) tensors take with this codec and transport.
  static constexpr detail::ar_algorithm algorithm = main_engine::algorithm;

  /// A handle on one started bucket: wait() finishes it (rethrowing its failure).
  class handle {
   public:
    handle() = default;
    /// Blocks until the bucket's reduction completed; rethrows its error.
    void wait() {
      if (!job_) return;
      std::unique_lock lock(owner_->mutex_);
      owner_->done_cv_.wait(lock, [&] { return job_->done; });
      auto failure = job_->failure;
      job_.reset();
      if (failure) std::rethrow_exception(failure);
    }
    /// Whether wait() would return at once.
    bool ready() const {
      if (!job_) return true;
      std::lock_guard lock(owner_->mutex_);
      return job_->done;
    }

   private:
    friend class allreduce;
    struct job {
      std::size_t bucket;
      bool done = false;
      std::exception_ptr failure;
    };
    handle(allreduce* owner, std::shared_ptr<job> j) : owner_(owner), job_(std::move(j)) {}
    allreduce* owner_ = nullptr;
    std::shared_ptr<job> job_;
  };

  /// `codec` is the prototype every bucket copies (with its parameters; states start
  /// fresh per bucket and chunk). Throws invalid_argument for a bad option.
  allreduce(T& transport, C codec, allreduce_options options = {}, O optimizer = {})
      : t_(&transport), proto_(std::move(codec)), opt_(options), optimizer_(std::move(optimizer)) {
    if (opt_.small_dtype != dtype::f32 && opt_.small_dtype != dtype::bf16)
      detail::throw_invalid_argument("allreduce", "small tensors travel as f32 or bf16, not " +
                                                      std::string(dtype_name(opt_.small_dtype)));
    if (opt_.bucket_bytes / sizeof(float) < detail::allreduce_align)
      detail::throw_invalid_argument(
          "allreduce",
          "buckets of " + std::to_string(opt_.bucket_bytes) + " bytes: at least 1024 are needed");
  }

  /// A default codec and options.
  ///
  ///   gradcomm::allreduce<gradcomm::bf16_codec, gradcomm::local_transport> comm(t);
  explicit allreduce(T& transport) requires std::default_initializable<C>
      : allreduce(transport, C{}) {}

  allreduce(const allreduce&) = delete;
  allreduce& operator=(const allreduce&) = delete;

  ~allreduce() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  int rank() const { return t_->rank(); }
  int size() const { return t_->size(); }

  /// Registers a gradient tensor (the trainer's buffer, which must outlive the
  /// communicator and keep its place); every rank registers the same sizes in the same
  /// order, before the first start(). Returns the tensor's index.
  ///
  ///   for (auto& layer : model) comm.add_tensor(layer.grad, layer.name);
  std::size_t add_tensor(host_view<float> grad, std::string name = {}) {
    std::lock_guard lock(mutex_);
    if (laid_out_)
      detail::throw_invalid_argument("allreduce::add_tensor",
                                     "tensor '" + name + "' registered after the first start()");
    tensors_.push_back({grad, std::move(name)});
    return tensors_.size() - 1;
  }

  /// Buckets the registered tensors make (lays them out on the first call).
  std::size_t bucket_count() {
    layout();
    return buckets_.size();
  }

  /// Starts bucket b: copies its tensors into the bucket, encodes it and hands the rest
  /// to the communication thread (or finishes it here without overlap).
  handle start(std::size_t b) {
    layout();
    rethrow_failure();
    if (!agreed_) agree();
    if (b >= buckets_.size())
      detail::throw_invalid_argument("allreduce::start", "bucket " + std::to_string(b) + " of " +
                                                             std::to_string(buckets_.size()));
    bucket& bk = buckets_[b];
    {
      std::lock_guard lock(mutex_);
      if (bk.in_flight)
        detail::throw_invalid_argument(
            "allreduce::start", "bucket " + std::to_string(b) + " started twice without a wait()");
      bk.in_flight = true;
    }
    try {
      gather(bk);
      std::atomic<std::int64_t> ns{0};
      {
        scoped_timer e(ns);
        bk.pending_payload = visit(bk, [&](auto& eng) {
          return eng.prepare(bk.view(), static_cast<std::uint32_t>(bk.rounds), opt_.seed);
        });
      }
      bk.encode_ns.fetch_add(ns.load(), std::memory_order_relaxed);
      counters_.encode_ns.fetch_add(ns.load(), std::memory_order_relaxed);
    } catch (...) {
      {
        std::lock_guard lock(mutex_);
        bk.in_flight = false;
      }
      rethrow_in_bucket(b);
    }
    auto j = std::make_shared<typename handle::job>();
    j->bucket = b;
    if (!opt_.overlap) {
      run(*j);
      return handle(this, std::move(j));
    }
    {
      std::lock_guard lock(mutex_);
      if (!worker_.joinable()) worker_ = std::thread([this] { work(); });
      queue_.push_back(j);
    }
    work_cv_.notify_one();
    return handle(this, std::move(j));
  }

  /// Reduces every registered tensor (mean or sum over ranks, per options), buckets
  /// pipelined: bucket i+1 encodes while bucket i communicates.
  void average() {
    const std::size_t nb = bucket_count();
    std::vector<handle> hs;
    hs.reserve(nb);
    std::exception_ptr first;
    for (std::size_t b = 0; b < nb; ++b) {
      try {
        hs.push_back(start(b));
      } catch (...) {
        first = std::current_exception();
        break;
      }
    }
    for (auto& h : hs) {
      try {
        h.wait();
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
    if (first) std::rethrow_exception(first);
  }

  /// Reduces one flat buffer in place: on the first call it is registered as the only
  /// tensor (later calls may pass another buffer of the same size).
  ///
  ///   comm.average(grads);  // grads := mean over ranks, the same bits on every rank
  void average(host_view<float> grads) {
    {
      std::lock_guard lock(mutex_);
      if (tensors_.empty()) {
        tensors_.push_back({grads, "grads"});
        implicit_ = true;
      } else if (!implicit_) {
        detail::throw_invalid_argument("allreduce::average",
                                       "tensors were registered: call average() without a buffer");
      } else if (tensors_[0].view.size() != grads.size()) {
        detail::throw_invalid_argument("allreduce::average",
                                       std::to_string(grads.size()) + " gradients after " +
                                           std::to_string(tensors_[0].view.size()));
      } else {
        rebind(grads);
      }
    }
    average();
  }

  /// One training step: average(grads), then the optimizer updates params from them.
  void step(host_view<float> params, host_view<float> grads) {
    if (params.size() != grads.size())
      detail::throw_invalid_argument("allreduce::step",
                                     std::to_string(params.size()) + " parameters but " +
                                         std::to_string(grads.size()) + " gradients");
    if (implicit_ || tensors_.empty())
      average(grads);
    else
      average();
    optimizer_.apply(params, host_view<const float>(grads.data(), grads.size()));
  }

  O& optimizer() noexcept { return optimizer_; }
  const allreduce_options& options() const noexcept { return opt_; }

  /// Bucket b's statistics so far (safe to call while buckets are in flight).
  bucket_stats stats(std::size_t b) const {
    std::lock_guard lock(mutex_);
    if (b >= buckets_.size())
      detail::throw_invalid_argument("allreduce::stats", "bucket " + std::to_string(b) + " of " +
                                                             std::to_string(buckets_.size()));
    const bucket& bk = buckets_[b];
    bucket_stats s;
    s.elements = bk.elements;
    s.compressed = bk.kind == bucket_kind::main;
    s.rounds = bk.rounds;
    s.wire_bytes = bk.wire_bytes;
    s.payload_bytes = bk.payload_bytes;
    s.ratio = bk.payload_bytes ? static_cast<double>(bk.rounds * bk.elements * sizeof(float)) /
                                     static_cast<double>(bk.payload_bytes)
                               : 1.0;
    s.encode_ns = bk.encode_ns.load(std::memory_order_relaxed);
    s.decode_ns = bk.decode_ns.load(std::memory_order_relaxed);
    s.wait_ns = bk.wait_ns;
    s.residual_norm = bk.residual_norm;
    return s;
  }

  /// Totals over all buckets: bytes and messages this rank sent and received, time
  /// encoding, decoding and in the transport.
  const traffic_counters& counters() const noexcept { return counters_; }

  /// Elements of the registered tensors that travel uncompressed (each under
  /// options().small_tensor_elems, as f32 or bf16) while the codec compresses the rest.
  ///
  ///   if (comm.uncompressed_elements() > 0) log("small tensors travel as f32");
  std::size_t uncompressed_elements() {
    layout();
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const bucket& bk : buckets_)
      if (bk.kind != bucket_kind::main) n += bk.elements;
    return n;
  }

  /// Rounds that went dense because the sparse payloads added up past the break-even.
  std::uint64_t dense_fallbacks() const noexcept {
    std::lock_guard lock(mutex_);
    return dense_rounds_;
  }

 private:
  enum class bucket_kind { main, small_f32, small_bf16 };
  struct tensor {
    host_view<float> view;
    std::string name;
  };
  struct segment {
    std::size_t tensor, offset, len, at;  // tensor[offset, offset+len) ↔ bucket[at, at+len)
  };
  struct bucket {
    bucket_kind kind = bucket_kind::main;
    std::size_t elements = 0;
    std::vector<segment> segments;
    std::vector<float> fused;  // empty when one segment covers the bucket
    float* direct = nullptr;   // the tensor's memory when it does
    std::unique_ptr<main_engine> main;
    std::unique_ptr<f32_engine> f32;
    std::unique_ptr<bf16_engine> bf16;
    bool in_flight = false;
    std::uint64_t rounds = 0, wire_bytes = 0, payload_bytes = 0;
    std::size_t pending_payload = 0;
    std::atomic<std::int64_t> encode_ns{0}, decode_ns{0};
    std::int64_t wait_ns = 0;
    double residual_norm = 0.0;

    host_view<float> view() {
      return direct ? host_view<float>(direct, elements) : host_view<float>(fused.data(), elements);
    }
  };

  template <class F>
  static auto visit(bucket& bk, F&& f) {
    switch (bk.kind) {
      case bucket_kind::small_f32: return f(*bk.f32);
      case bucket_kind::small_bf16: return f(*bk.bf16);
      default: return f(*bk.main);
    }
  }

  void rebind(host_view<float> grads) {
    tensors_[0].view = grads;
    for (bucket& bk : buckets_)
      if (bk.direct) bk.direct = grads.data() + bk.segments[0].offset;
  }

  // Cuts the registered tensors into buckets: large tensors in registration order,
  // split at bucket boundaries (multiples of 256 elements); then the small ones.
  void layout() {
    std::lock_guard lock(mutex_);
    if (laid_out_) return;
    laid_out_ = true;
    const std::size_t cap =
        opt_.bucket_bytes / sizeof(float) / detail::allreduce_align * detail::allreduce_align;
    const int ranks = t_->size(), me = t_->rank();
    auto cut = [&](bool small) {
      std::vector<segment> segs;
      std::size_t fill = 0;
      auto close = [&] {
        if (segs.empty()) return;
        auto& bk = buckets_.emplace_back();
        bk.kind = !small ? bucket_kind::main
                         : (opt_.small_dtype == dtype::bf16 ? bucket_kind::small_bf16
                                                            : bucket_kind::small_f32);
        bk.elements = fill;
        bk.segments = std::move(segs);
        segs.clear();
        fill = 0;
      };
      for (std::size_t i = 0; i < tensors_.size(); ++i) {
        const std::size_t n = tensors_[i].view.size();
        if (n == 0 || (n < opt_.small_tensor_elems) != small) continue;
        for (std::size_t off = 0; off < n;) {
          const std::size_t len = std::min(n - off, cap - fill);
          segs.push_back({i, off, len, fill});
          fill += len;
          off += len;
          if (fill == cap) close();
        }
      }
      close();
    };
    cut(false);
    cut(true);
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      bucket& bk = buckets_[b];
      const auto id = static_cast<std::uint32_t>(b);
      if (bk.segments.size() == 1)
        bk.direct = tensors_[bk.segments[0].tensor].view.data() + bk.segments[0].offset;
      else
        bk.fused.resize(bk.elements);
      switch (bk.kind) {
        case bucket_kind::main:
          bk.main = std::make_unique<main_engine>(proto_, bk.elements, ranks, me, id);
          break;
        case bucket_kind::small_f32:
          bk.f32 = std::make_unique<f32_engine>(identity_codec{}, bk.elements, ranks, me, id);
          break;
        case bucket_kind::small_bf16:
          bk.bf16 = std::make_unique<bf16_engine>(bf16_codec{}, bk.elements, ranks, me, id);
          break;
      }
    }
  }

  void gather(bucket& bk) {
    if (bk.direct) return;
    for (const segment& s : bk.segments)
      std::memcpy(bk.fused.data() + s.at, tensors_[s.tensor].view.data() + s.offset,
                  s.len * sizeof(float));
  }
  void scatter(bucket& bk) {
    if (bk.direct) return;
    for (const segment& s : bk.segments)
      std::memcpy(tensors_[s.tensor].view.data() + s.offset, bk.fused.data() + s.at,
                  s.len * sizeof(float));
  }

  void rethrow_failure() {
    std::lock_guard lock(mutex_);
    if (failure_) std::rethrow_exception(failure_);
  }

  // ---- the ranks agree before the first round -----------------------------------------
  // Ranks whose registrations, options or codec settings differ would average layer A of
  // one rank with layer B of another, or feed one format's payloads to another's decoder.
  // At the first start() one all-gather of 32 bytes compares fingerprints; only where they
  // differ do the ranks exchange what they hashed, and every rank names the same first
  // difference from the same bytes. Collectives in the same order on every rank: the
  // first start() of every rank, before any bucket's.
  void agree() {
    static constexpr const char* call = "allreduce::start";
    const int n = t_->size();
    const auto un = static_cast<std::size_t>(n);
    try {
      const std::vector<std::byte> rec = registration_record(), probe = codec_probe();
      const std::uint64_t mine[4] = {detail::ar_hash(rec), detail::ar_hash(probe), rec.size(),
                                     probe.size()};
      std::vector<std::uint64_t> all(4 * un);
      t_->allgather(std::as_bytes(std::span<const std::uint64_t>(mine)),
                    std::as_writable_bytes(std::span<std::uint64_t>(all)));
      if (all_rows_equal(all)) {
        agreed_ = true;
        say_what_travels_uncompressed();
        return;
      }
      std::vector<std::size_t> rec_counts(un), probe_counts(un);
      std::size_t rec_total = 0, probe_total = 0;
      for (std::size_t q = 0; q < un; ++q) {
        rec_counts[q] = static_cast<std::size_t>(all[4 * q + 2]);
        probe_counts[q] = static_cast<std::size_t>(all[4 * q + 3]);
        rec_total += rec_counts[q];
        probe_total += probe_counts[q];
      }
      std::vector<std::byte> recs(rec_total), probes(probe_total);
      t_->allgatherv(rec, recs, rec_counts);
      t_->allgatherv(probe, probes, probe_counts);
      detail::throw_invalid_argument(call, difference(recs, rec_counts, probes, probe_counts),
                                     t_->rank());
    } catch (...) {
      std::lock_guard lock(mutex_);
      if (!failure_) failure_ = std::current_exception();
      throw;
    }
  }

  // Once, on rank 0, where a lossy codec leaves tensors under small_tensor_elems
  // uncompressed: a model of small tensors alone would send f32 without a word.
  void say_what_travels_uncompressed() const {
    if (C::id == codec_id::none || t_->rank() != 0) return;
    std::size_t small = 0, small_values = 0, counted = 0, values = 0;
    for (const tensor& t : tensors_) {
      if (t.view.empty()) continue;
      ++counted;
      values += t.view.size();
      if (t.view.size() < opt_.small_tensor_elems) {
        ++small;
        small_values += t.view.size();
      }
    }
    if (small == 0) return;
    const std::string text =
        "gradcomm: allreduce: " + std::to_string(small) + " of " + std::to_string(counted) +
        " tensors (" + std::to_string(small_values) + " of " + std::to_string(values) +
        " values) are under small_tensor_elems = " + std::to_string(opt_.small_tensor_elems) +
        " and travel uncompressed, as " + std::string(dtype_name(opt_.small_dtype)) +
        "; the codec " + std::string(codec_name(C::id)) +
        " compresses the rest (allreduce_options::small_tensor_elems, small_dtype)";
    if (opt_.notice)
      opt_.notice(text);
    else
      std::fprintf(stderr, "%s\n", text.c_str());
  }

  // "bucket 2 of 5 (1048576 values: 'fc1.weight' [0, 1048576))", for errors.
  std::string bucket_context(std::size_t b) const {
    const bucket& bk = buckets_[b];
    std::string s = "bucket " + std::to_string(b) + " of " + std::to_string(buckets_.size()) +
                    " (" + std::to_string(bk.elements) + " values" +
                    (bk.kind == bucket_kind::main ? "" : ", small tensors uncompressed") + ":";
    const std::size_t shown = std::min<std::size_t>(bk.segments.size(), 3);
    for (std::size_t i = 0; i < shown; ++i) {
      const segment& g = bk.segments[i];
      const std::string& name = tensors_[g.tensor].name;
      s += (i ? ", " : " ") +
           (name.empty() ? "tensor " + std::to_string(g.tensor) : "'" + name + "'") + " [" +
           std::to_string(g.offset) + ", " + std::to_string(g.offset + g.len) + ")";
    }
    if (bk.segments.size() > shown)
      s += " and " + std::to_string(bk.segments.size() - shown) + " more";
    return s + ")";
  }

  // Rethrows the exception in flight with the bucket named in front of its reason, as
  // the same kind of error.
  [[noreturn]] void rethrow_in_bucket(std::size_t b) const {
    const std::string in = bucket_context(b) + ": ";
    try {
      throw;
    } catch (const timeout_error& e) {
      throw timeout_error(e.call(), e.rank(), e.peer(), in + e.reason());
    } catch (const peer_error& e) {
      throw peer_error(e.call(), e.rank(), e.peer(), in + e.reason());
    } catch (const decode_error& e) {
      throw decode_error(e.call(), in + e.reason(), e.rank());
    } catch (const error& e) {
      throw error(e.code(), e.call(), e.rank(), in + e.reason());
    }
  }

  static bool all_rows_equal(const std::vector<std::uint64_t>& all) {
    for (std::size_t i = 4; i < all.size(); ++i)
      if (all[i] != all[i % 4]) return false;
    return true;
  }

  // What the ranks must agree on: the options that shape buckets and rounds, then every
  // tensor's size and name in registration order.
  std::vector<std::byte> registration_record() const {
    const auto options = option_values();
    std::size_t bytes = 8 * (options.size() + 1);
    for (const tensor& t : tensors_) bytes += 16 + t.name.size();
    std::vector<std::byte> r(bytes);
    wire_writer w(r, "allreduce::start");
    for (const auto& [name, value] : options) w.put_u64(value);
    w.put_u64(tensors_.size());
    for (const tensor& t : tensors_) {
      w.put_u64(t.view.size());
      w.put_u64(t.name.size());
      w.put_bytes(std::as_bytes(std::span<const char>(t.name)));
    }
    return r;
  }

  std::vector<std::pair<const char*, std::uint64_t>> option_values() const {
    return {{"bucket_bytes", opt_.bucket_bytes},
            {"small_tensor_elems", opt_.small_tensor_elems},
            {"small_dtype", static_cast<std::uint64_t>(opt_.small_dtype)},
            {"op", static_cast<std::uint64_t>(opt_.op)},
            {"seed", opt_.seed}};
  }

  // The codec's settings as its payloads show them: the same values encoded by a fresh
  // copy of the prototype, at the first compressed bucket's size (empty when none).
  std::vector<std::byte> codec_probe() const {
    const bucket* first = nullptr;
    for (const bucket& bk : buckets_)
      if (bk.kind == bucket_kind::main) {
        first = &bk;
        break;
      }
    if (!first) return {};
    std::vector<float> values(first->elements);
    std::uint32_t x = 0x9e3779b9u;
    for (float& v : values) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<float>(static_cast<std::int32_t>(x >> 8) - (1 << 23)) * 0x1p-23f;
    }
    C c = proto_;
    if constexpr (StochasticCodec<C>) c.set_stream(stream_key{opt_.seed, 0, 0, 0});
    std::vector<std::byte> out(c.max_encoded_bytes(values.size()));
    out.resize(c.encode(host_view<const float>(values.data(), values.size()), out));
    return out;
  }

  // The first difference between rank 0's record and probe and another rank's.
  std::string difference(std::span<const std::byte> recs, std::span<const std::size_t> rec_counts,
                         std::span<const std::byte> probes,
                         std::span<const std::size_t> probe_counts) const {
    struct parsed {
      std::vector<std::uint64_t> options;
      std::vector<std::pair<std::uint64_t, std::string>> tensors;
    };
    const auto options = option_values();
    auto parse = [&](std::span<const std::byte> b) {
      wire_reader r(b, "allreduce::start");
      parsed p;
      for (std::size_t i = 0; i < options.size(); ++i) p.options.push_back(r.get_u64());
      const std::uint64_t count = r.get_u64();
      for (std::uint64_t i = 0; i < count; ++i) {
        const std::uint64_t size = r.get_u64();
        const auto name = r.take(r.get_u64());
        p.tensors.emplace_back(
            size, std::string(reinterpret_cast<const char*>(name.data()), name.size()));
      }
      return p;
    };
    std::vector<parsed> ps;
    std::size_t at = 0;
    for (std::size_t c : rec_counts) {
      ps.push_back(parse(recs.subspan(at, c)));
      at += c;
    }
    const parsed& p0 = ps[0];
    for (std::size_t qi = 1; qi < ps.size(); ++qi) {
      const parsed& pq = ps[qi];
      const std::string rq = "rank " + std::to_string(qi);
      for (std::size_t i = 0; i < options.size(); ++i)
        if (pq.options[i] != p0.options[i])
          return std::string("option ") + options[i].first + " is " +
                 std::to_string(p0.options[i]) + " on rank 0 but " + std::to_string(pq.options[i]) +
                 " on " + rq;
      if (pq.tensors.size() != p0.tensors.size())
        return "rank 0 registered " + std::to_string(p0.tensors.size()) + " tensors but " + rq +
               " registered " + std::to_string(pq.tensors.size());
      for (std::size_t i = 0; i < p0.tensors.size(); ++i) {
        const auto& [s0, n0] = p0.tensors[i];
        const auto& [sq, nq] = pq.tensors[i];
        if (s0 == sq && n0 == nq) continue;
        auto named = [](const std::string& nm) { return nm.empty() ? "" : " '" + nm + "'"; };
        if (n0 != nq)
          return "the ranks registered other tensors: tensor " + std::to_string(i) + " is" +
                 named(n0) + " (" + std::to_string(s0) + " elements) on rank 0 but" + named(nq) +
                 " (" + std::to_string(sq) + " elements) on " + rq +
                 "; register the same tensors in the same order on every rank";
        return "the ranks registered other tensors: tensor " + std::to_string(i) + named(n0) +
               " has " + std::to_string(s0) + " elements on rank 0 but " + std::to_string(sq) +
               " on " + rq;
      }
    }
    std::vector<std::span<const std::byte>> pr;
    at = 0;
    for (std::size_t c : probe_counts) {
      pr.push_back(probes.subspan(at, c));
      at += c;
    }
    for (std::size_t qi = 1; qi < pr.size(); ++qi)
      if (!std::ranges::equal(pr[qi], pr[0]))
        return "the ranks' codec settings differ: " +
               detail::ar_probe_difference(pr[0], 0, pr[qi], static_cast<int>(qi));
    return "the ranks' fingerprints differ, but not what they hashed";
  }

  // Finishes one started bucket on this thread.
  void run(typename handle::job& j) {
    bucket& bk = buckets_[j.bucket];
    std::exception_ptr failure;
    {
      std::lock_guard lock(mutex_);
      failure = failure_;
    }
    if (!failure) {
      const traffic_snapshot before = t_->counters().snapshot();
      detail::round_tally tally;
      try {
        host_view<float> v = bk.view();
        visit(bk, [&](auto& eng) {
          eng.finish(*t_, host_view<const float>(v.data(), v.size()), v, opt_.op,
                     static_cast<std::uint32_t>(bk.rounds), opt_.seed, tally);
        });
        scatter(bk);
      } catch (...) {
        try {
          rethrow_in_bucket(j.bucket);
        } catch (...) {
          failure = std::current_exception();
        }
      }
      const traffic_snapshot d = t_->counters().snapshot() - before;
      const std::int64_t enc = tally.encode_ns.load(), dec = tally.decode_ns.load();
      bk.encode_ns.fetch_add(enc, std::memory_order_relaxed);
      bk.decode_ns.fetch_add(dec, std::memory_order_relaxed);
      counters_.add_sent(d.bytes_sent, d.messages_sent);
      counters_.add_received(d.bytes_received, d.messages_received);
      counters_.encode_ns.fetch_add(enc, std::memory_order_relaxed);
      counters_.decode_ns.fetch_add(dec, std::memory_order_relaxed);
      // Time in the transport: the finish() wall time less its own encoding/decoding is
      // not measured here; the transport's own wait counter is.
      counters_.wait_ns.fetch_add(d.wait_ns, std::memory_order_relaxed);
      const double residual =
          failure ? 0.0 : visit(bk, [](auto& eng) { return eng.residual_norm(); });
      std::lock_guard lock(mutex_);
      bk.wire_bytes += d.bytes_sent;
      bk.wait_ns += d.wait_ns;
      if (!failure) {
        bk.rounds += 1;
        bk.payload_bytes += bk.pending_payload;
        bk.residual_norm = residual;
        dense_rounds_ += tally.dense_rounds;
      }
    }
    std::lock_guard lock(mutex_);
    if (failure && !failure_) failure_ = failure;
    bk.in_flight = false;
    j.failure = failure;
    j.done = true;
    done_cv_.notify_all();
  }

  void work() {
    for (;;) {
      std::shared_ptr<typename handle::job> j;
      {
        std::unique_lock lock(mutex_);
        work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        j = std::move(queue_.front());
        queue_.pop_front();
      }
      run(*j);
    }
  }

  T* t_;
  C proto_;
  allreduce_options opt_;
  O optimizer_;
  std::vector<tensor> tensors_;
  std::deque<bucket> buckets_;  // a deque: buckets hold atomics and never move
  bool laid_out_ = false, implicit_ = false, agreed_ = false;
  traffic_counters counters_;
  std::uint64_t dense_rounds_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<std::shared_ptr<typename handle::job>> queue_;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::thread worker_;
};

// The backend models Communicator over any codec and transport that model their concepts:
// checked here, with the least of each, so that a change that breaks it fails in this
// header and not in a user's code.
static_assert(Communicator<allreduce<detail::codec_archetype, detail::transport_archetype>>);

}  // namespace v0
}  // namespace gradcomm

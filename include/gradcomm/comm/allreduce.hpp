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
//    values are all-reduced instead — same result, fewer bytes. Codecs whose payloads are
//    (index, value) entries (codec.hpp, T7: top-k, threshold) also have an O(k) reduce-
//    scatter that re-sparsifies region by region (comm/detail/allreduce_sparse.hpp), whose
//    bytes per rank stay flat in N; a cost rule picks one of the three each round
//    (allreduce_options::sparse overrides it, stats(b).algorithm shows it);
//  * two-round codecs (PowerSGD): the transport's all-reduce of P, then of Q.
// Every rank ends with bitwise identical values: every reduction that is not the
// transport's own decodes the same payloads in the same order on every rank.
//
// Where the parts are: this header has the public class, its options and statistics;
// comm/detail/buckets.hpp the choice of algorithm per bucket and the tensor segments;
// comm/detail/allreduce_native.hpp, allreduce_sra.hpp, allreduce_allgather.hpp,
// allreduce_sparse.hpp and allreduce_two_round.hpp one algorithm each;
// comm/detail/allreduce_agreement.hpp the check before the first round; comm/detail/buffer_ops.hpp
// the buffer operations the algorithms ask of the execution context.
#pragma once

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/allgather_reduce.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/detail/allreduce_agreement.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/buckets.hpp>
#include <gradcomm/comm/detail/buffer_ops.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
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
  /// Rounds at the start in which every compressed bucket travels as f32 (the exact mean;
  /// the codec is not called, so its error feedback starts at zero after them): PyTorch's
  /// PowerSGD hook's start_powerSGD_iter. 0: compressed from the first round.
  std::uint64_t uncompressed_steps = 0;
  /// What the communicator says once, on rank 0: that tensors under small_tensor_elems
  /// travel uncompressed while the codec compresses. Unset, it goes to stderr; a lambda
  /// that does nothing silences it.
  std::function<void(const std::string&)> notice = nullptr;
  /// The algorithm of a sparse-entry codec's buckets (top-k, threshold; codec.hpp, T7):
  /// `automatic` picks all-gather, dense or the O(k) reduce-scatter each round by the cost
  /// rule of comm/detail/allreduce_sparse.hpp; stats(b).algorithm says which ran.
  sparse_allreduce sparse = sparse_allreduce::automatic;
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
  /// The last round's algorithm (before any: the one the codec's traits call for); a
  /// sparse-entry codec's bucket chooses allgather, dense or sparse_reduce_scatter per round.
  detail::ar_algorithm algorithm = detail::ar_algorithm::allgather;
};

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
    if (opt_.overlap && !transport_any_thread(transport))
      detail::throw_invalid_argument(
          "allreduce",
          "overlap runs the communication on a background thread, and this transport may be "
          "called only from the thread that made it (MPI below MPI_THREAD_SERIALIZED, e.g. "
          "SimGrid's SMPI): set allreduce_options::overlap = false");
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

  /// Says that registered tensor i holds this step's final gradient, and starts every
  /// bucket, in bucket order, whose tensors are all ready: called from the backward pass as
  /// each layer's gradient is written (the order DDP's hooks see), bucket b's communication
  /// overlaps the computation of the gradients of the buckets after it. The buckets start
  /// in index order only (bucket b + 1 waits for b even where its own tensors are ready):
  /// the ranks' collectives then come in the same order however their layers finish. The
  /// step ends with step(params, grads) or average(), which start the buckets not started
  /// yet and wait for all. Tensors registered in the order the backward pass writes them
  /// start earliest. Throws invalid_argument for an index out of range or a tensor said
  /// ready twice in one step.
  ///
  ///   net.backward([&](std::size_t layer) { comm.ready(layer); });  // as gradients land
  ///   comm.step(params, grads);  // the rest of the buckets, then the optimizer
  void ready(std::size_t i) {
    layout();
    if (i >= tensors_.size())
      detail::throw_invalid_argument("allreduce::ready", "tensor " + std::to_string(i) + " of " +
                                                             std::to_string(tensors_.size()));
    if (ready_.empty()) ready_.assign(tensors_.size(), false);
    if (ready_[i])
      detail::throw_invalid_argument(
          "allreduce::ready", "tensor " + std::to_string(i) + " ('" + tensors_[i].name +
                                  "') said ready twice in one step (step() or average() ends "
                                  "a step)");
    ready_[i] = true;
    while (next_ < buckets_.size()) {
      const bucket& bk = buckets_[next_];
      const bool all = std::all_of(bk.segments.begin(), bk.segments.end(),
                                   [&](const segment& s) { return ready_[s.tensor]; });
      if (!all) break;
      started_.push_back(start(next_));
      ++next_;
    }
  }

  /// Buckets that ready() started in this step (0 after step() or average()).
  std::size_t buckets_started() const noexcept { return next_; }

  /// Reduces every registered tensor (mean or sum over ranks, per options), buckets
  /// pipelined: bucket i+1 encodes while bucket i communicates. Buckets ready() started
  /// this step are not started again: average() starts the rest and waits for all.
  void average() {
    const std::size_t nb = bucket_count();
    std::vector<handle> hs = std::move(started_);
    started_.clear();
    const std::size_t from = next_;
    next_ = 0;
    std::fill(ready_.begin(), ready_.end(), false);
    hs.reserve(nb);
    std::exception_ptr first;
    for (std::size_t b = from; b < nb; ++b) {
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
    s.algorithm = bk.algorithm;
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
  using tensor = detail::ar_tensor;
  using segment = detail::ar_segment;
  struct bucket {
    bucket_kind kind = bucket_kind::main;
    std::size_t elements = 0;
    std::vector<segment> segments;
    detail::staging_buffer<host_context, float> fused;  // empty when one segment covers it
    float* direct = nullptr;                            // the tensor's memory when it does
    std::unique_ptr<main_engine> main;
    std::unique_ptr<f32_engine> f32;
    std::unique_ptr<bf16_engine> bf16;
    bool in_flight = false;
    std::uint64_t rounds = 0, wire_bytes = 0, payload_bytes = 0;
    std::size_t pending_payload = 0;
    std::atomic<std::int64_t> encode_ns{0}, decode_ns{0};
    std::int64_t wait_ns = 0;
    double residual_norm = 0.0;
    detail::ar_algorithm algorithm = detail::ar_algorithm::allgather;

    host_view<float> view() {
      return direct ? host_view<float>(direct, elements) : host_view<float>(fused.data(), elements);
    }
  };

  // A compressed bucket's first options.uncompressed_steps rounds take its f32 engine.
  template <class F>
  auto visit(bucket& bk, F&& f) const {
    switch (bk.kind) {
      case bucket_kind::small_f32: return f(*bk.f32);
      case bucket_kind::small_bf16: return f(*bk.bf16);
      default: return bk.rounds < opt_.uncompressed_steps ? f(*bk.f32) : f(*bk.main);
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
      const detail::ar_shape shape{bk.elements, ranks, me, static_cast<std::uint32_t>(b),
                                   opt_.sparse};
      if (bk.segments.size() == 1)
        bk.direct = tensors_[bk.segments[0].tensor].view.data() + bk.segments[0].offset;
      else
        bk.fused.resize(bk.elements);  // staging in the context's memory
      switch (bk.kind) {
        case bucket_kind::main:
          bk.main = std::make_unique<main_engine>(ctx_, proto_, shape);
          if (opt_.uncompressed_steps != 0)
            bk.f32 = std::make_unique<f32_engine>(ctx_, identity_codec{}, shape);
          break;
        case bucket_kind::small_f32:
          bk.f32 = std::make_unique<f32_engine>(ctx_, identity_codec{}, shape);
          break;
        case bucket_kind::small_bf16:
          bk.bf16 = std::make_unique<bf16_engine>(ctx_, bf16_codec{}, shape);
          break;
      }
      bk.algorithm =
          visit(bk, [](auto& eng) { return std::remove_reference_t<decltype(eng)>::algorithm; });
    }
  }

  void gather(bucket& bk) {
    if (!bk.direct) detail::ar_gather(ctx_, bk.segments, tensors_, bk.view());
  }
  void scatter(bucket& bk) {
    if (!bk.direct) detail::ar_scatter(ctx_, bk.segments, tensors_, bk.view());
  }

  void rethrow_failure() {
    std::lock_guard lock(mutex_);
    if (failure_) std::rethrow_exception(failure_);
  }

  // ---- the ranks agree before the first round (comm/detail/allreduce_agreement.hpp) ----
  // Collectives in the same order on every rank: the first start() of every rank, before
  // any bucket's.
  void agree() {
    try {
      const detail::ar_option_values options = option_values();
      const std::vector<std::byte> rec = detail::ar_registration_record(options, tensors_);
      const std::vector<std::byte> probe =
          detail::ar_codec_probe(proto_, probe_elements(), opt_.seed);
      if (detail::ar_agree(*t_, options, rec, probe)) {
        agreed_ = true;
        say_what_travels_uncompressed();
        return;
      }
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

  detail::ar_option_values option_values() const {
    return {{"bucket_bytes", opt_.bucket_bytes},
            {"small_tensor_elems", opt_.small_tensor_elems},
            {"small_dtype", static_cast<std::uint64_t>(opt_.small_dtype)},
            {"op", static_cast<std::uint64_t>(opt_.op)},
            {"seed", opt_.seed},
            {"sparse", static_cast<std::uint64_t>(opt_.sparse)},
            {"uncompressed_steps", opt_.uncompressed_steps}};
  }

  // The size of the first compressed bucket, which the codec probe encodes (0: none).
  std::size_t probe_elements() const {
    for (const bucket& bk : buckets_)
      if (bk.kind == bucket_kind::main) return bk.elements;
    return 0;
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
        if (tally.path)
          bk.algorithm = *tally.path;
        else if (tally.dense_rounds)
          bk.algorithm = detail::ar_algorithm::dense;
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
  host_context ctx_;  // where the buckets' buffers live and their work runs
  C proto_;
  allreduce_options opt_;
  O optimizer_;
  std::vector<tensor> tensors_;
  std::deque<bucket> buckets_;  // a deque: buckets hold atomics and never move
  bool laid_out_ = false, implicit_ = false, agreed_ = false;
  // ready(): the tensors said ready this step, the next bucket to start, and the handles
  // of the buckets it started (the caller's thread only, like start()).
  std::vector<bool> ready_;
  std::size_t next_ = 0;
  std::vector<handle> started_;
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

// examples/data_parallel/train.hpp — the data-parallel training loop, written once for
// every communicator (all-reduce, parameter server, gossip) and every transport.
//
//   data_parallel::worker w(net, data);            // this rank's model and buffers
//   auto rows = data_parallel::train(comm, transport, w, data, cfg, progress);
//   // rows (rank 0 only): one per evaluation (cfg.evals_per_epoch an epoch), with test
//   // accuracy, traffic and timings
//
// Each of the N workers trains on its own shard: after a seeded shuffle of the training
// set (the same permutation on every worker), shard r holds every N-th example from r.
// A step is forward and backward on `batch` examples of the shard, then comm.step(params,
// grads): the communicator's business (average and apply SGD with momentum, for the
// all-reduce). At the end of each epoch the workers compare a checksum of their parameters
// where the backend keeps them identical, sum their traffic and timings, and rank 0
// evaluates on the test set; with cfg.evals_per_epoch = K this happens K times an epoch,
// after each K-th of its steps. With cfg.target_accuracy set, training stops at the first
// evaluation that reaches it (rank 0 tells the others), which is how time to accuracy is
// measured: the rows' wall times added up to that row.
//
// A communicator with server ranks (the parameter server: comm.servers() ranks from 0)
// splits the work: the workers are the other ranks and take the shards; a server serves
// each epoch until every worker's pushes of it are applied (comm.version()), then joins the
// end-of-epoch exchange, so that rank 0 evaluates the server's parameters (the model the
// workers train). Traffic and timings are then means over the workers.
#pragma once

#include "idx.hpp"
#include "mlp.hpp"

#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace data_parallel {

using host_view_f = gradcomm::host_view<float>;

/// What one configuration trains with.
///
///   data_parallel::train_config cfg{.codec = "int8", .comm = "allreduce", .epochs = 2};
struct train_config {
  std::string codec = "none";
  std::string comm = "allreduce";
  std::string topology = "ring";  ///< gossip's
  int epochs = 1;
  std::size_t batch = 64;  ///< examples a worker takes per step
  float lr = 0.02f;
  std::uint64_t seed = 1;
  std::size_t max_steps = 0;     ///< steps in all (over the epochs) at most; 0: no limit
  int evals_per_epoch = 1;       ///< evaluations (and rows) an epoch, after equal parts of it
  double target_accuracy = 0;    ///< stop at the first evaluation reaching it; 0: never
  bool identical_params = true;  ///< check that every worker holds the same parameters
  float input_mean = 0.0f;       ///< inputs are (pixel / 255 − mean) / stddev
  float input_stddev = 1.0f;
  /// > 0: each worker keeps its own momentum u <- m u + g and hands u to comm.step in
  /// place of g (the communicator's optimizer then runs without momentum).
  float worker_momentum = 0.0f;
  /// Early training on the all-reduce (main.cpp): DGC's sparsity warm-up for top-k, this
  /// many steps a stage (gradcomm::sparsity_warmup; 0: off), and steps PowerSGD sends
  /// uncompressed first (allreduce_options::uncompressed_steps; 0: off).
  std::uint64_t topk_warmup_steps = 0;
  std::uint64_t powersgd_warmup_steps = 0;
  std::uint64_t topk_f32_steps = 0;  ///< steps top-k sends f32 first (uncompressed_steps)
  /// The parameter server's pulls (main.cpp, make_ps): "codec" (the push codec's own, on the
  /// change since the worker's last pull), "f32", "bf16", "int8", or "topk-union" (top-k at
  /// workers × the push ratio: the union of the workers' sparse pushes); "auto": the
  /// example's default for the codec (main.cpp, ps_defaults).
  std::string ps_pull = "auto";
  /// The parameter server's top-k pushes: "ef" (the worker's momentum through error
  /// feedback), "dgc" (DGC's memory: momentum correction and factor masking,
  /// gradcomm::dgc_memory), "auto" (main.cpp, ps_defaults).
  std::string ps_push = "auto";
  /// The parameter server's staleness bound (ps_options::staleness): a worker's reply waits
  /// until every worker is within this many pushes of it (0: synchronous); -1: unbounded
  /// (asynchronous); -2 ("auto"): the example's default for the codec (main.cpp,
  /// ps_defaults).
  int ps_staleness = -2;
  /// Gossip's consensus step γ (gossip_options::gamma); 0: the example's default for the
  /// codec (main.cpp, gossip_gamma_for), which is the library's except for top-k;
  /// negative: the library's (gossip_options::gamma unset).
  float gossip_gamma = 0.0f;
  /// The parameter server (DGC pushes) and gossip with top-k: each weight matrix its own
  /// top-k (and error feedback), the biases f32, through gradcomm::per_tensor (main.cpp,
  /// layered); false (the default): one top-k over the whole flat buffer.
  bool per_tensor = false;
  /// The all-reduce starts a bucket as soon as the backward pass has written its tensors
  /// (allreduce::ready, with the layers registered in worker::registered), so that its
  /// communication overlaps the rest of the backward pass; false: every bucket starts
  /// after the backward pass (comm.step). The result is the same bits either way.
  bool overlap_backward = true;
  /// The learning rate over the run: "constant" (lr throughout) or "cosine" (lr · ½(1 +
  /// cos(π s / S)) at step s of S = epochs × steps an epoch, or max_steps: SGDR's annealing
  /// without restarts), set on the communicator's optimizer before each step (the
  /// parameter server's: as its pushes arrive, from its version).
  std::string lr_schedule = "constant";
};

/// One epoch of one configuration: a row of the CSV file. Traffic and timings are means
/// over the workers.
///
///   std::printf("%.2f %%\n", 100 * row.test_accuracy);
struct epoch_result {
  std::string codec, comm;
  int workers = 0, epoch = 0;
  double epochs_done = 0;  ///< epochs trained at this evaluation (e.g. 1.25)
  std::size_t steps = 0;   ///< steps since the row before
  double test_accuracy = 0, test_loss = 0;
  double bytes_sent = 0;  ///< bytes a worker sent
  double ratio = 0;       ///< f32 ring all-reduce bytes / bytes_sent (0 with one worker)
  double compute_s = 0;   ///< forward and backward
  double encode_s = 0, decode_s = 0;
  double wait_s = 0;      ///< in the transport, as its counters say
  double wall_s = 0;      ///< the epoch's steps on rank 0, evaluation excluded
  double train_loss = 0;  ///< mean training loss over the epoch's batches and the workers
};

/// Allocates on 64-byte boundaries: the model's Eigen kernels (AVX-512 under -march=native)
/// handle the floats before the first aligned one apart, so that the sums, and the training's
/// bits, would otherwise depend on where malloc puts a buffer (measured: a run after another
/// configuration in the same process, or with every buffer from the heap, gave other bits).
template <class T>
struct aligned64_allocator {
  using value_type = T;
  static constexpr std::align_val_t alignment{64};
  aligned64_allocator() = default;
  template <class U>
  aligned64_allocator(const aligned64_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), alignment)); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, alignment); }
  template <class U>
  bool operator==(const aligned64_allocator<U>&) const noexcept {
    return true;
  }
};
/// A float buffer on a 64-byte boundary.
using aligned_floats = std::vector<float, aligned64_allocator<float>>;

/// A worker's model (with its activations), its parameter and gradient buffers and a
/// batch buffer, each on a 64-byte boundary (every tensor's offset is a multiple of 16
/// floats, so every tensor is too). One per rank: ranks never share buffers.
///
///   data_parallel::worker w(784, 1024, 10, batch);
struct worker {
  worker(std::size_t in, std::size_t hidden, std::size_t classes, std::size_t batch)
      : net(in, hidden, classes),
        params(net.parameter_count()),
        grads(net.parameter_count()),
        x(batch * in),
        labels(batch) {}
  mlp net;
  aligned_floats params, grads, x;
  std::vector<std::uint8_t> labels;
  /// The communicator's index of each of net.tensors() where the communicator registered
  /// them one by one (the all-reduce's add_tensor, main.cpp); empty where it did not.
  std::vector<std::size_t> registered;
};

/// Rank 0's view of the run: a progress bar on a terminal, nothing otherwise (the caller
/// prints one line an epoch).
///
///   data_parallel::progress bar(isatty(2));
class progress {
 public:
  explicit progress(bool terminal) : terminal_(terminal) {}
  void begin(const std::string& label, int epoch, int epochs, std::size_t steps) {
    label_ = label;
    epoch_ = epoch;
    epochs_ = epochs;
    steps_ = steps;
    last_ = {};
  }
  void update(std::size_t step, double loss) {
    if (!terminal_) return;
    const auto now = std::chrono::steady_clock::now();
    if (step != steps_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int width = 30;
    const int filled = steps_ ? static_cast<int>(width * step / steps_) : width;
    std::fprintf(stderr, "\r%-14s epoch %d/%d [%.*s%*s] %5zu/%zu  loss %.4f", label_.c_str(),
                 epoch_, epochs_, filled, "##############################", width - filled, "",
                 step, steps_, loss);
    std::fflush(stderr);
  }
  /// Clears the bar so that the epoch's line can take its place.
  void end() {
    if (terminal_) std::fprintf(stderr, "\r%*s\r", 100, "");
  }

 private:
  bool terminal_;
  std::string label_;
  int epoch_ = 0, epochs_ = 0;
  std::size_t steps_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

namespace detail {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The epoch's permutation of [0, n): Fisher–Yates on Philox numbers keyed by (seed,
// epoch), the same on every worker and every machine.
inline void shuffle(std::vector<std::uint32_t>& perm, std::uint64_t seed, int epoch) {
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::uint32_t>(i);
  const gradcomm::philox_stream s(seed, static_cast<std::uint32_t>(epoch), 0, 0x53485546u);
  for (std::size_t i = perm.size(); i > 1; --i) {
    const std::uint64_t r = (std::uint64_t{s.at(2 * i)} << 32) | s.at(2 * i + 1);
    std::swap(perm[i - 1], perm[static_cast<std::size_t>(r % i)]);
  }
}

// Pixel byte → network input.
inline std::array<float, 256> input_table(const train_config& cfg) {
  std::array<float, 256> t{};
  for (int v = 0; v < 256; ++v)
    t[static_cast<std::size_t>(v)] =
        (static_cast<float>(v) / 255.0f - cfg.input_mean) / cfg.input_stddev;
  return t;
}

// A checksum of the parameters' bits (FNV-1a over 64-bit words).
inline std::uint64_t checksum(std::span<const float> v) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  std::size_t i = 0;
  for (; i + 2 <= v.size(); i += 2) {
    std::uint64_t w;
    std::memcpy(&w, v.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
  }
  if (i < v.size()) {
    std::uint32_t w;
    std::memcpy(&w, v.data() + i, 4);
    h = (h ^ w) * 0x100000001b3ull;
  }
  return h;
}

}  // namespace detail

/// Rank 0's evaluation: (accuracy, mean loss) of `params` on `set`.
///
///   auto [acc, loss] = data_parallel::evaluate(w, data.test, cfg);
inline std::pair<double, double> evaluate(worker& w, const image_set& set,
                                          const train_config& cfg) {
  const auto table = detail::input_table(cfg);
  const std::size_t pixels = set.rows * set.cols, chunk = 500;
  aligned_floats x(chunk * pixels);
  double loss = 0.0;
  std::size_t correct = 0;
  for (std::size_t from = 0; from < set.count; from += chunk) {
    const std::size_t n = std::min(chunk, set.count - from);
    const std::uint8_t* src = set.pixels.data() + from * pixels;
    for (std::size_t i = 0; i < n * pixels; ++i) x[i] = table[src[i]];
    w.net.evaluate(w.params, x.data(), set.labels.data() + from, n, loss, correct);
  }
  return {static_cast<double>(correct) / static_cast<double>(set.count),
          loss / static_cast<double>(set.count)};
}

namespace detail {
/// The ranks [0, servers) that serve rather than train: comm.servers() where the
/// communicator has servers, else none.
template <class Comm>
int server_ranks(const Comm& comm) {
  if constexpr (requires {
                  { comm.servers() } -> std::convertible_to<int>;
                })
    return comm.servers();
  else
    return 0;
}
}  // namespace detail

/// Trains w.params (already initialised, the same on every rank) for cfg.epochs epochs
/// through `comm` over `t`; returns one row per epoch on rank 0 (nothing elsewhere).
/// `bar` is rank 0's progress display. Throws gradcomm::error (internal) when the
/// parameters of the workers diverge where the backend should keep them identical, and
/// whatever the communicator throws (a peer that failed or missed its deadline).
///
///   auto rows = data_parallel::train(comm, t, w, data, cfg, bar);
template <gradcomm::Communicator Comm, gradcomm::Transport T>
std::vector<epoch_result> train(Comm& comm, T& t, worker& w, const fashion_mnist& data,
                                const train_config& cfg, progress& bar) {
  const int ranks = t.size(), rank = t.rank();
  const int servers = detail::server_ranks(comm), lead = servers;  // lead: the first worker
  const bool serving = rank < servers;
  // Workers, and this rank's shard among them.
  const auto n = static_cast<std::size_t>(ranks - servers);
  const auto r = static_cast<std::size_t>(serving ? 0 : rank - servers);
  const image_set& set = data.train;
  const std::size_t pixels = set.rows * set.cols;
  // Every worker takes the same number of steps (the collectives must match).
  const std::size_t steps_per_epoch = set.count / n / cfg.batch;
  if (steps_per_epoch == 0)
    gradcomm::detail::throw_invalid_argument(
        "data_parallel::train",
        std::to_string(set.count) + " training examples over " + std::to_string(n) +
            " workers do not fill one batch of " + std::to_string(cfg.batch),
        rank);
  const auto table = detail::input_table(cfg);
  const double ring_f32_bytes_per_step = 2.0 * static_cast<double>(n - 1) / static_cast<double>(n) *
                                         4.0 * static_cast<double>(w.params.size());

  // The learning-rate schedule: the optimizer's rate at the start times the factor.
  if (cfg.lr_schedule != "constant" && cfg.lr_schedule != "cosine")
    gradcomm::detail::throw_invalid_argument(
        "data_parallel::train",
        "learning-rate schedule '" + cfg.lr_schedule + "': constant or cosine", rank);
  double total_steps = static_cast<double>(steps_per_epoch) * cfg.epochs;
  if (cfg.max_steps) total_steps = std::min(total_steps, static_cast<double>(cfg.max_steps));
  float base_lr = 0.0f;
  if constexpr (requires { comm.optimizer().settings().lr; })
    base_lr = comm.optimizer().settings().lr;
  auto set_lr = [&](double step) {
    if constexpr (requires { comm.optimizer().settings().lr; }) {
      if (cfg.lr_schedule == "cosine")
        comm.optimizer().settings().lr = static_cast<float>(
            base_lr * 0.5 *
            (1.0 + std::cos(3.141592653589793 * std::min(step / total_steps, 1.0))));
    }
  };

  std::vector<std::uint32_t> perm(set.count);
  std::vector<float> u(cfg.worker_momentum > 0.0f ? w.grads.size() : 0);
  std::vector<epoch_result> rows;
  std::size_t done = 0;
  const auto parts = static_cast<std::size_t>(std::max(cfg.evals_per_epoch, 1));
  bool reached = false;
  for (int epoch = 1; epoch <= cfg.epochs && !reached; ++epoch) {
    std::size_t epoch_steps = steps_per_epoch;
    if (cfg.max_steps) epoch_steps = std::min(epoch_steps, cfg.max_steps - done);
    if (epoch_steps == 0) break;
    detail::shuffle(perm, cfg.seed, epoch);
    if (rank == lead) bar.begin(cfg.codec + "/" + cfg.comm, epoch, cfg.epochs, epoch_steps);
    // Part k of the epoch: its steps [first, last), evaluated after.
    for (std::size_t k = 0; k < parts && !reached; ++k) {
      const std::size_t first = epoch_steps * k / parts, last = epoch_steps * (k + 1) / parts;
      const std::size_t steps = last - first;
      if (steps == 0) continue;

      const gradcomm::traffic_snapshot before = comm.counters().snapshot();
      const auto t0 = std::chrono::steady_clock::now();
      double compute_s = 0.0, loss_sum = 0.0;
      if constexpr (requires(host_view_f p) {
                      comm.serve(p, [] { return true; });
                      { comm.version() } -> std::convertible_to<std::uint64_t>;
                    }) {
        if (serving) {
          // Every worker pushes each shard once a step: this server's shard has seen the
          // part when its version counts all of them.
          const std::uint64_t target = static_cast<std::uint64_t>((done + steps) * n);
          comm.serve(host_view_f(w.params.data(), w.params.size()), [&] {
            const std::uint64_t v = comm.version();
            set_lr(static_cast<double>(v) / static_cast<double>(n));  // a step: n pushes
            return v >= target;
          });
        }
      }
      for (std::size_t s = first; s < last && !serving; ++s) {
        const auto c0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < cfg.batch; ++i) {
          const std::uint32_t e = perm[(s * cfg.batch + i) * n + r];  // shard r: every n-th
          const std::uint8_t* src = set.pixels.data() + std::size_t{e} * pixels;
          float* dst = w.x.data() + i * pixels;
          for (std::size_t j = 0; j < pixels; ++j) dst[j] = table[src[j]];
          w.labels[i] = set.labels[e];
        }
        // As each tensor's gradient lands: the worker's momentum on it, then (the
        // all-reduce, cfg.overlap_backward) its buckets may start communicating while the
        // layers below are computed. The time in ready() (encoding on this thread) is the
        // communicator's, not the computation's.
        double ready_s = 0.0;
        auto landed = [&](std::size_t tensor) {
          const param_tensor& p = w.net.tensors()[tensor];
          if (!u.empty())
            for (std::size_t i = p.offset; i < p.offset + p.size(); ++i)
              w.grads[i] = u[i] = cfg.worker_momentum * u[i] + w.grads[i];
          if constexpr (requires { comm.ready(std::size_t{0}); }) {
            if (cfg.overlap_backward && !w.registered.empty()) {
              const auto r0 = std::chrono::steady_clock::now();
              comm.ready(w.registered[tensor]);
              ready_s += detail::seconds_since(r0);
            }
          }
        };
        loss_sum += w.net.forward_backward(w.params, w.x.data(), w.labels.data(), cfg.batch,
                                           w.grads, landed);
        compute_s += detail::seconds_since(c0) - ready_s;
        set_lr(static_cast<double>(done + (s - first)));
        comm.step(w.params, w.grads);
        if (rank == lead) bar.update(s + 1, loss_sum / static_cast<double>(s - first + 1));
      }
      const double wall_s = detail::seconds_since(t0);
      const gradcomm::traffic_snapshot d = comm.counters().snapshot() - before;
      done += steps;
      const double epochs_done =
          epoch - 1 + static_cast<double>(last) / static_cast<double>(steps_per_epoch);

      if (cfg.identical_params) {
        // Cheap: 8 bytes a worker. All ranks see the same checksums, so all throw together.
        const std::uint64_t mine = detail::checksum(w.params);
        std::vector<std::uint64_t> all(static_cast<std::size_t>(ranks));
        t.allgather(std::as_bytes(std::span<const std::uint64_t>(&mine, 1)),
                    std::as_writable_bytes(std::span<std::uint64_t>(all)));
        for (std::size_t q = 1; q < all.size(); ++q)
          if (all[q] != all[0])
            throw gradcomm::error(make_error_code(gradcomm::errc::internal), "data_parallel::train",
                                  rank,
                                  "after epoch " + std::to_string(epochs_done) +
                                      " the parameters of rank " + std::to_string(q) +
                                      " differ from rank 0's (the all-reduce should leave the same "
                                      "bits on every rank)");
      }
      // Means over the workers of what each saw.
      std::array<double, 7> sums{static_cast<double>(d.bytes_sent),
                                 compute_s,
                                 d.encode_seconds(),
                                 d.decode_seconds(),
                                 d.wait_seconds(),
                                 loss_sum / static_cast<double>(steps),
                                 static_cast<double>(d.bytes_received)};
      if (serving) sums.fill(0.0);  // means over the workers
      t.allreduce(std::span<const double>(sums), std::span<double>(sums), gradcomm::reduce_op::sum);
      double stop = 0.0;  // rank 0's verdict on the target, for everyone
      if (rank == 0) {
        bar.end();
        epoch_result row;
        row.codec = cfg.codec;
        row.comm = cfg.comm;
        row.workers = static_cast<int>(n);
        row.epoch = epoch;
        row.epochs_done = epochs_done;
        row.steps = steps;
        row.bytes_sent = sums[0] / static_cast<double>(n);
        row.ratio = row.bytes_sent > 0
                        ? ring_f32_bytes_per_step * static_cast<double>(steps) / row.bytes_sent
                        : 0.0;
        row.compute_s = sums[1] / static_cast<double>(n);
        row.encode_s = sums[2] / static_cast<double>(n);
        row.decode_s = sums[3] / static_cast<double>(n);
        row.wait_s = sums[4] / static_cast<double>(n);
        row.wall_s = wall_s;
        row.train_loss = sums[5] / static_cast<double>(n);
        std::tie(row.test_accuracy, row.test_loss) = evaluate(w, data.test, cfg);
        std::fprintf(stderr,
                     "%-14s epoch %.4g/%d: test accuracy %6.2f %%, test loss %.4f, train loss "
                     "%.4f, %zu steps in %.1f s; a worker sent %.1f MiB, received %.1f MiB\n",
                     (cfg.codec + "/" + cfg.comm).c_str(), epochs_done, cfg.epochs,
                     100 * row.test_accuracy, row.test_loss, row.train_loss, steps, wall_s,
                     row.bytes_sent / 1048576.0, sums[6] / static_cast<double>(n) / 1048576.0);
        if (cfg.target_accuracy > 0 && row.test_accuracy >= cfg.target_accuracy) stop = 1.0;
        rows.push_back(std::move(row));
      }
      if (cfg.target_accuracy > 0) {
        t.allreduce(std::span<const double>(&stop, 1), std::span<double>(&stop, 1),
                    gradcomm::reduce_op::sum);
        reached = stop > 0.0;
      }
    }
  }
  // A server serves until every worker said it is done; a worker says so.
  if constexpr (requires(host_view_f p) {
                  comm.serve(p);
                  comm.finish();
                }) {
    if (serving)
      comm.serve(host_view_f(w.params.data(), w.params.size()));
    else
      comm.finish();
  }
  return rows;
}

}  // namespace data_parallel

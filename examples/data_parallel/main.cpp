// gradcomm_data_parallel: trains a 784-1024-1024-10 MLP on Fashion-MNIST with N
// data-parallel workers whose gradients travel through a gradcomm communicator, and
// compares codecs side by side.
//
//   gradcomm_data_parallel                        # 4 threads, codecs none and int8
//   gradcomm_data_parallel --codecs none,sign,topk,powersgd --epochs 5 --csv runs.csv
//   mpirun -np 4 gradcomm_data_parallel --transport mpi --codec int8
//   gradcomm_data_parallel --codec auto --accuracy 8bit  # the advisor picks (comm/advise.hpp)
//   gradcomm_data_parallel --codecs none,int8 --evals-per-epoch 4 --target-accuracy 0.85
//       # time to accuracy: each stops at the first evaluation reaching 85 %
//       # (benchmarks/time_to_accuracy.sh runs it on the shaped network)
//
// Codecs (--codec / --codecs): none (f32 as is), bf16, fp16, int8 and int4 (8 and 4 bits,
// blocks of 256, with error feedback), sign (1 bit, blocks of 256, error feedback), topk
// (1 %, error feedback), powersgd (rank 4, its own error feedback), and auto:
// gradcomm::advise (comm/advise.hpp) probes the link, times the codecs and predicts each
// bucket's all-reduce on the transport the run uses, prints one line per bucket (rank 0),
// and the run trains with the pick for the largest bucket within --accuracy (lossless,
// 16bit, 8bit, any; default 8bit): this example has one codec for all buckets. The
// advisor predicts sign's scatter-reduce-allgather; the example runs sign all-gathered on
// the worker's momentum (below), N / 2 times the bytes. On the all-reduce, sign compresses each
// worker's momentum rather than its gradient, in one stage (see compresses_momentum), and
// PowerSGD sends f32 for its first --powersgd-warmup steps (PyTorch's start_powerSGD_iter;
// on by default), and with --topk-warmup N top-k sends 25 %, 6.25 %, 1.5625 % for N steps
// each before its 1 % (DGC's staged sparsity; off by default: see default_topk_warmup);
// --no-warmup, or 0, switches either off. The bytes they cost are in the table's
// sent/worker and ratio. The all-reduce starts its buckets as the backward pass writes their
// layers (allreduce::ready), so the largest layer's communication overlaps the computation
// of the first layer's gradients; --no-overlap starts them after the backward pass.
// Communicators (--comm): allreduce (every codec); ps, the asynchronous parameter server
// (one server rank besides the workers: --workers 4 runs 5 threads; rank 0 serves under
// MPI; the workers keep the momentum, see make_ps, except top-k's), with the worker's error
// feedback on pushes and the change since the last pull, encoded with the server's, on pulls
// (sign's and top-k's pulls as 8-bit and their pushes synchronous, top-k's momentum on the
// server once a round of pushes: ps_defaults, --ps-push, --ps-pull, --ps-staleness);
// gossip over --topology ring|torus|exponential|random|complete, CHOCO-style for lossy
// codecs, which then travel without their own error feedback (the public copies are the
// feedback; top-k's consensus step: gossip_gamma_for, --gossip-gamma). PowerSGD needs
// the all-reduce's two reductions: allreduce only. Workers are threads of this process (--workers)
// or the ranks of an MPI job (--transport mpi, where gradcomm::mpi was built).
//
// Exit status: 0 done; 1 an error (a damaged data file, a configuration that failed — the
// others still run and the table says why); 2 bad options or a backend this build does not
// have; 77 the data set is not installed (nothing ran).
#include "idx.hpp"
#include "mlp.hpp"
#include "train.hpp"

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/dgc.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/per_tensor.hpp>
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/codec/warmup.hpp>
#include <gradcomm/comm/advise.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/local.hpp>

#if GRADCOMM_HAS_MPI && __has_include(<gradcomm/transport/mpi.hpp>)
#include <gradcomm/transport/mpi.hpp>

#include <mpi.h>
#define GRADCOMM_EXAMPLE_MPI 1
#else
#define GRADCOMM_EXAMPLE_MPI 0
#endif

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

namespace {

namespace dp = data_parallel;

constexpr std::size_t input_units = 784, hidden_units = 1024, classes = 10;

/// The communication backends: one line each.
struct backend_info {
  const char* name;
  bool identical_params;  // every worker ends each step with the same parameters
  int servers;            // ranks that serve rather than train
};
constexpr backend_info backends[] = {
    {"allreduce", true, 0},
    {"ps", false, 1},
    {"gossip", false, 0},
};

const backend_info* find_backend(std::string_view name) {
  for (const auto& b : backends)
    if (name == b.name) return &b;
  return nullptr;
}

constexpr const char* codec_names[] = {"none", "bf16", "fp16",     "int8", "int4",
                                       "sign", "topk", "powersgd", "auto"};

using sign_ef = gradcomm::error_feedback<gradcomm::sign_codec>;

/// Calls f with the codec prototype that `name` stands for: one line per codec.
template <class F>
void with_codec(std::string_view name, std::uint64_t seed, F&& f) {
  namespace gc = gradcomm;
  if (name == "none") return f(gc::identity_codec{});
  if (name == "bf16") return f(gc::bf16_codec{});
  if (name == "fp16") return f(gc::f16_codec{});
  if (name == "int8")
    return f(gc::error_feedback<gc::scalar_quant_codec>(gc::scalar_quant_codec({.bits = 8})));
  if (name == "int4")
    return f(gc::error_feedback<gc::scalar_quant_codec>(gc::scalar_quant_codec({.bits = 4})));
  if (name == "sign") return f(sign_ef(gc::sign_codec(256)));
  if (name == "topk") return f(gc::error_feedback<gc::topk_codec>(gc::topk_codec({.ratio = 0.01})));
  if (name == "powersgd") return f(gc::powersgd_codec({.rank = 4, .seed = seed}));
  gc::detail::throw_invalid_argument("data_parallel", "unknown codec '" + std::string(name) + "'");
}

/// Codecs whose all-reduce compresses momentum (1-bit sign): each worker keeps its own
/// momentum u <- 0.9 u + g and sends u through the codec's error feedback, in one stage
/// (gradcomm::allgathered: no second 1-bit rounding of the sums, at N / 2 times the
/// bytes), and the all-reduce applies the mean with SGD without momentum (DGC's
/// momentum correction and 1-bit Adam's compressed momentum, without DGC's masking, which
/// for a dense codec would zero all of u every step). Sign with error feedback on the raw
/// gradient, momentum after the mean, and the partial sums encoded again (the fixed-size
/// scatter-reduce-allgather) lost 3.6 points after one epoch; this loses 0.3 (the
/// convergence script's header has the numbers). Only the all-reduce does this: the
/// parameter server and gossip run sign as before.
template <class C>
constexpr bool compresses_momentum_v = std::is_same_v<C, sign_ef>;

bool compresses_momentum(std::string_view codec) {
  if (codec == "auto") return false;  // said once the advisor picked
  bool r = false;
  with_codec(codec, 0, [&]<class C>(const C&) { r = compresses_momentum_v<C>; });
  return r;
}

/// SGD's momentum, in every configuration.
constexpr float momentum = 0.9f;

/// The communicator's SGD at rate lr: with the momentum, unless the workers keep it
/// (cfg.worker_momentum).
gradcomm::sgd sgd_for(const dp::train_config& cfg, float lr) {
  return gradcomm::sgd({.lr = lr, .momentum = cfg.worker_momentum > 0.0f ? 0.0f : momentum});
}

/// Early training on the all-reduce: the example's defaults, in steps (an epoch is 234
/// steps with 4 workers and batch 64). PowerSGD: f32 for the first 20 steps, then PowerSGD
/// from a zero residual; one epoch reached 84.40 % and 86.02 % (seeds 1, 2) against 84.11 %
/// and 85.62 % without, for 211 MiB more a worker (234.7 against 23.5 MiB an epoch; f32
/// sends 2.44 GiB) (--powersgd-warmup 20|0 --codec powersgd --epochs 1 --seed 1|2). Top-k: off,
/// because it did not pay here: DGC's stages of 25 %, 6.25 % and 1.5625 % (its 0.39 % stage is
/// under the 1 % target, so it sends 1 %) for 10 steps each reached 83.02 % and 84.51 % after one
/// epoch (seeds 1, 2) against 84.80 % and 84.89 % without, for 145 against 71 MiB a
/// worker (--topk-warmup 10 --codec topk --epochs 1 --seed 1|2).
/// Top-k sending f32 first (--topk-f32-warmup N, PowerSGD's way) did not pay either: test
/// accuracy after 0.75 and 1.0 epochs without it 83.40 / 84.80 % (seed 1) and 82.13 / 84.89 %
/// (seed 2); after 20 f32 steps 82.27 / 83.59 % and 82.54 / 84.07 %; after 50 81.51 / 79.96 %
/// and 80.64 / 83.40 % (--codec topk --epochs 2 --evals-per-epoch 4 --topk-f32-warmup 0|20|50
/// --seed 1|2, 2026-12-07): off.
constexpr std::uint64_t default_topk_warmup = 0, default_powersgd_warmup = 20;

/// The all-reduce communicator for the model's gradient buffer. The tensors are
/// registered largest first and a bucket holds exactly the largest one, so the buckets
/// are [W2] (1024 × 1024), [W1; W3] (794 × 1024, weights stacked row on row) and the
/// biases: every bucket is a weight matrix, which is what PowerSGD needs to see (it views
/// a bucket as one matrix). Tensors under 4096 elements (the biases) travel as f32.
/// w.registered maps the model's tensors to these registrations, so that train() says
/// each ready as the backward pass writes it (allreduce::ready): [W2] communicates while
/// the first layer's gradients are computed (--no-overlap: after the backward pass).
/// SGD with momentum 0.9 applies the mean, without momentum where the workers send
/// their momentum (cfg.worker_momentum).
template <class C, gradcomm::Transport T>
auto make_allreduce(T& t, C codec, dp::worker& w, const dp::train_config& cfg) {
  std::vector<dp::param_tensor> order = w.net.tensors();
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.size() > b.size(); });
  gradcomm::allreduce_options o;
  o.bucket_bytes = order.front().size() * sizeof(float);
  o.small_tensor_elems = 4096;
  o.seed = cfg.seed;
  if constexpr (C::traits.two_round)
    o.uncompressed_steps = cfg.powersgd_warmup_steps;
  else if (cfg.codec == "topk")
    o.uncompressed_steps = cfg.topk_f32_steps;
  auto comm =
      std::make_unique<gradcomm::allreduce<C, T>>(t, std::move(codec), o, sgd_for(cfg, cfg.lr));
  const auto& tensors = w.net.tensors();
  w.registered.assign(tensors.size(), 0);
  for (const auto& p : order) {
    const std::size_t k =
        comm->add_tensor(gradcomm::host_view<float>(w.grads.data() + p.offset, p.size()), p.name);
    for (std::size_t t = 0; t < tensors.size(); ++t)
      if (tensors[t].offset == p.offset) w.registered[t] = k;
  }
  return comm;
}

/// The parameter server's defaults for cfg.codec where cfg says "auto" (--ps-pull, --ps-push):
/// Measured, one epoch, 4 workers (gradcomm_data_parallel --comm ps --codec topk|sign
/// --epochs 1 --seed 1 [--ps-push ef|dgc] [--ps-pull codec|f32|int8|topk-union] [--lr ...]):
///  - top-k 1 %, the worker's momentum through error feedback: top-k 1 % pulls of the change
///    82.07 % (82.92 % over seeds 1-3 in the table before), f32 pulls 84.92 %, 8-bit pulls
///    85.12 %, top-k 4 % pulls (workers × 1 %) 84.79 % but 272 s against 37 s (the server's
///    exact top-k over 1.9 M values a reply). DGC's memory on the pushes with the same top-k
///    1 % pulls: 85.09 %, and 85.08 % with seed 2, at top-k's bytes both ways: dgc, codec.
///  - sign: 8-bit pulls at lr 0.01 83.57 % and 83.98 % (seeds 1, 2), at 0.02 84.29 % and
///    81.79 %; f32 pulls at 0.02 82.99 % (seed 1); sign pulls at 0.005 (the table before)
///    82.65 % over seeds 1-3: int8, and benchmarks/convergence.sh runs it at 0.01. A pull
///    then costs a byte a parameter downstream against the push's eighth (the log's
///    "received").
/// With these defaults, benchmarks/convergence.sh --comms ps,gossip (seeds 1-3, one epoch):
/// top-k 84.62 % (84.18-85.24; 82.92 % before), a worker sending 22.9 MiB and receiving
/// 29.9 MiB; sign at 0.01 83.97 % (83.54-84.36; 82.65 % before), 58.5 MiB sent, 427.7 MiB
/// received; uncompressed 85.27 %.
///
/// Staleness (--ps-staleness): sign's pushes go synchronous (0), every other codec's stay
/// asynchronous. Cosine learning rate, lr 0.02, seeds 1-3, against the all-reduce without
/// compression (87.72 % after three epochs, 85.63 % after one): sign asynchronous 86.66 %
/// and 83.83 %, at staleness 1 86.92 % and 83.95 %, synchronous 87.38 % and 84.94 %;
/// top-k (DGC pushes) asynchronous 86.60 %, synchronous 86.70 %, at staleness 1 86.59 %
/// (--comm ps --codec sign|topk --epochs 3|1 --lr-schedule cosine --ps-staleness -1|1|0
/// --seed 1|2|3, 2026-12-07). A 1-bit push is a coarse, biased step whose error feedback
/// pays it back over the next pushes: applied on parameters a few pushes old, from every
/// worker in turn, the repayments land where the error no longer is.
///
/// Top-k's momentum on the server (2026-12-07, sixth session): DGC's pushes stayed 1.0-1.1
/// points short at three epochs whatever the staleness or the pulls (the rows above). Now
/// top-k's workers push their gradient through error feedback (no momentum of their own)
/// and the server keeps the momentum once per round of the workers' pushes
/// (gradcomm::round_momentum_sgd): synchronous, that is the all-reduce's top-k step for
/// step (uncompressed, the two give the same accuracy to the digit: 85.49 %, seed 1, one
/// epoch). Its pulls carry the change since the last pull, and with the momentum on the
/// server that change is dense: 8-bit pulls. Three epochs, cosine rate, seeds 1-3: 87.01,
/// 87.20, 87.47 % (87.23, −0.49 against the all-reduce none; f32 pulls 87.10, 87.25,
/// 87.49; top-k 1 % pulls 86.68 and asynchronous 8-bit pulls 86.77, seed 1); one epoch
/// 84.80, 84.56, 84.91 % (84.76, −0.87; DGC asynchronous 84.25) (--comm ps --codec topk
/// --epochs 3|1 --lr-schedule cosine --ps-push server --ps-staleness 0 --ps-pull
/// int8|f32|codec --seed 1|2|3). The price is downstream: a worker receives 422 MiB an epoch
/// (a byte a parameter) where DGC's top-k pulls sent it 30 MiB; it still sends 23 MiB.
/// Momentum on the server once per push (sgd's, momentum 0.9^(1/4) at a matching rate; an
/// intermediate build, not kept) instead lost 0.56 points uncompressed (84.93 against
/// 85.49 %, seed 1, one epoch). Top-k over each weight matrix on its own (--per-tensor,
/// gradcomm::per_tensor) was worse than over the whole flat buffer: DGC pushes,
/// asynchronous, top-k pulls, one epoch, 82.53, 82.48, 82.36 % (seeds 1-3) against 84.29 %
/// (seed 1) flat, 83.22 against 84.41 % with f32 pulls (--comm ps --codec topk --epochs 1
/// --lr-schedule cosine --ps-push dgc --ps-staleness -1 --ps-pull codec|f32 [--per-tensor]
/// --seed S); gossip on the exponential graph 84.51 against 84.61 % (--comm gossip
/// --topology exponential --codec topk --epochs 1 --lr-schedule cosine [--per-tensor]): the
/// flat top-k spends the bytes where the gradient is largest, across layers.
void ps_defaults(dp::train_config& cfg) {
  const bool sign = cfg.codec == "sign", topk = cfg.codec == "topk";
  if (cfg.ps_pull == "auto") cfg.ps_pull = sign || topk ? "int8" : "codec";
  if (cfg.ps_push == "auto") cfg.ps_push = topk ? "server" : "ef";
  if (cfg.ps_staleness == -2) cfg.ps_staleness = sign || topk ? 0 : -1;
}

/// Gossip's consensus step for a codec (0: the library's default, gossip_default_gamma):
/// top-k 1 % on the exponential graph takes 0.2 where the library's rule gives 0.0198
/// (2ω / (1 + ω), ω = 0.01): one epoch, seed 1, γ 0.1 83.23 %, 0.2 83.80 %, 0.3 83.67 %,
/// 0.5 82.16 %, against 82.81 % over seeds 1-3 at the default (--comm gossip --topology
/// exponential --codec topk --gossip-gamma G --epochs 1 --seed 1). 0.2 is also the largest γ
/// the library found stable for top-k 1 % on least squares (gossip_default_gamma's note):
/// elsewhere, keep the library's. Seeds 1-3 (benchmarks/convergence.sh --comms ps,gossip):
/// top-k 83.81 % (82.81 % before), uncompressed 84.93 %. Sign takes the library's: at the
/// step its probes gave (0.78) it reached 85.00 % after one epoch (seed 1) and 86.66 % after
/// two, then collapsed in the third, to 79.75 % (at lr 0.01: 86.16 % then 73.10 %; at 0.005:
/// 85.67 % then 76.09 %), and this example took 0.2 (constant rate: 85.07 %, 85.98 %,
/// 86.74 %; at 0.1 86.53 % and at 0.05 86.22 % after three). The library now lowers each
/// edge's step to its messages' measured quality (sign's keep ω̂ ≈ 0.04 here: γ ≈ 0.07,
/// comm/gossip.hpp): 87.55, 87.66, 87.51 % on the exponential graph and 87.52, 87.56,
/// 87.69 % on the ring after three epochs (cosine, lr 0.02, seeds 1-3), where 0.2 gave
/// 87.59 % and 87.61 % over the seeds (--comm gossip --topology exponential|ring --codec sign
/// --epochs 3 --lr-schedule cosine --lr 0.02 --gossip-gamma -1|0.2 --seed S, 2026-12-07).
/// On other topologies top-k takes 0.1: on the ring (averaging, not push-sum) at 0.2 it
/// reached 84.30 % and 83.89 % after one and two epochs, then collapsed in the third (28.21 %;
/// seeds 1-3 26.63 %, cosine learning rate), at 0.1 87.31 % and at 0.05 87.36 % after three
/// (--comm gossip --topology ring --codec topk --epochs 3 --lr-schedule cosine --seed 1
/// --gossip-gamma G, 2026-12-07). The library's default for top-k stays 0.0198: its
/// messages keep more than 1 % (ω̂ ≈ 0.04), and the library never raises a step.
float gossip_gamma_for(std::string_view codec, std::string_view topology) {
  if (codec == "topk") return topology == "exponential" ? 0.2f : 0.1f;
  return 0.0f;
}

/// The asynchronous parameter server: rank 0 serves (plain SGD runs there), the others keep
/// their own momentum (u <- 0.9 u + g), push u and pull the parameters, without waiting for
/// each other. The server steps on every push, N times as often as the all-reduce steps on
/// the mean of N gradients: the rate is gradcomm::ps_server_lr(lr, N) = lr / N, the same
/// step per gradient (at lr the run diverges). Top-k and sign: see ps_defaults. Momentum on the
/// server, applied to stale pushes from every worker in turn, lost 1.6 points after one epoch
/// uncompressed (seeds 1-3, 83.88 % against the all-reduce's 85.46 %, spread 2.3 points: this
/// program at commit 09205fa); on the workers it gains 0.15 (85.61 %), and 8-bit pushes 0.27
/// (gradcomm_data_parallel --comm ps --codec none|int8 --epochs 1 --seed 1|2|3).
template <class C, class P, gradcomm::AsyncTransport T, class O = gradcomm::sgd>
auto make_ps(T& t, C codec, P pull, const dp::train_config& cfg, float server_momentum,
             std::type_identity<O> = {}) {
  gradcomm::ps_options o;
  o.servers = 1;
  o.staleness = cfg.ps_staleness < 0 ? gradcomm::unbounded_staleness
                                     : static_cast<std::uint64_t>(cfg.ps_staleness);
  o.seed = cfg.seed;
  o.pull = cfg.ps_pull == "f32" ? gradcomm::pull_encoding::f32 : gradcomm::pull_encoding::codec;
  const int workers = t.size() - o.servers;
  const float lr = gradcomm::ps_server_lr(cfg.lr, workers);
  if constexpr (std::is_same_v<O, gradcomm::round_momentum_sgd>) {
    return std::make_unique<gradcomm::parameter_server<C, T, O, P>>(
        t, std::move(codec), std::move(pull), o,
        O({.lr = lr,
           .momentum = server_momentum,
           .updates_per_round = static_cast<std::uint32_t>(workers)}));
  } else {
    return std::make_unique<gradcomm::parameter_server<C, T, gradcomm::sgd, P>>(
        t, std::move(codec), std::move(pull), o,
        gradcomm::sgd({.lr = lr, .momentum = server_momentum}));
  }
}

/// The model's tensors as per_tensor sees them (gradcomm/codec/per_tensor.hpp): their sizes
/// in the order they lie in the flat buffer, the biases (under the all-reduce's 4096
/// elements) as f32. The parameter server and gossip see one flat buffer; with the layout
/// each weight matrix gets its own top-k, as the all-reduce's buckets do (cfg.per_tensor).
struct tensor_layout {
  std::vector<std::size_t> sizes;
  gradcomm::per_tensor_options options;
};
tensor_layout layered(const dp::worker& w) {
  std::vector<dp::param_tensor> order = w.net.tensors();
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.offset < b.offset; });
  tensor_layout l;
  for (const auto& p : order) l.sizes.push_back(p.size());
  l.options.small_tensor_elems = 4096;
  return l;
}

/// The parameter server's pull codec that cfg.ps_pull names, for push codec C, handed to f;
/// false when it does not apply to C.
template <class C, class F>
bool with_pull_codec(const C& codec, const dp::train_config& cfg, int workers, F&& f) {
  namespace gc = gradcomm;
  if (cfg.ps_pull == "codec" || cfg.ps_pull == "f32") {
    f(gc::detail::ps_pull_codec<C>::make(codec));
    return true;
  }
  if (cfg.ps_pull == "bf16") {
    f(gc::bf16_codec{});
    return true;
  }
  if (cfg.ps_pull == "int8") {
    f(gc::scalar_quant_codec({.bits = 8}));
    return true;
  }
  if constexpr (std::is_same_v<C, gc::error_feedback<gc::topk_codec>>) {
    if (cfg.ps_pull == "topk-union") {
      f(gc::topk_codec({.ratio = std::min(1.0, codec.inner().ratio() * workers)}));
      return true;
    }
  }
  return false;
}

/// Gossip keeps the codec's error feedback in its public copies: the codec travels bare.
template <class C>
auto bare(C codec) {
  if constexpr (requires { typename C::inner_type; } && C::traits.stateful)
    return codec.inner();
  else
    return codec;
}

/// Gossip over topology G: the local SGD step with momentum, then mixing with the
/// neighbours.
template <class G, class B, gradcomm::Transport T>
auto make_gossip_with(T& t, B codec, const dp::train_config& cfg) {
  gradcomm::gossip_options o;
  o.seed = cfg.seed;
  if (cfg.gossip_gamma > 0.0f) o.gamma = cfg.gossip_gamma;
  return std::make_unique<gradcomm::gossip<B, T, G>>(t, G{}, std::move(codec), sgd_for(cfg, cfg.lr),
                                                     o);
}

[[noreturn]] void unsupported(int rank, const std::string& what) {
  throw gradcomm::error(make_error_code(gradcomm::errc::unsupported), "data_parallel", rank, what);
}

/// Builds the communicator cfg.comm names and trains through it: one line per backend.
template <class C, gradcomm::Transport T>
std::vector<dp::epoch_result> run_backend(T& t, C codec, dp::worker& w,
                                          const dp::fashion_mnist& data,
                                          const dp::train_config& cfg, dp::progress& bar) {
  if (cfg.comm == "allreduce") {
    if constexpr (compresses_momentum_v<C>) {
      dp::train_config c = cfg;
      c.worker_momentum = momentum;
      return dp::train(*make_allreduce(t, gradcomm::allgathered<C>(std::move(codec)), w, c), t, w,
                       data, c, bar);
    } else {
      // Top-k's sparsity warm-up (cfg.topk_warmup_steps a stage): the codec in warmed_up.
      if constexpr (gradcomm::detail::reaches_ratio_codec<C>()) {
        if (cfg.topk_warmup_steps != 0) {
          gradcomm::warmed_up<C> warm(std::move(codec), {.steps_per_stage = cfg.topk_warmup_steps});
          return dp::train(*make_allreduce(t, std::move(warm), w, cfg), t, w, data, cfg, bar);
        }
      }
      return dp::train(*make_allreduce(t, std::move(codec), w, cfg), t, w, data, cfg, bar);
    }
  }
  if constexpr (C::traits.two_round) {
    unsupported(t.rank(), cfg.codec + " needs the all-reduce's two reductions (--comm allreduce)");
  } else {
    if (cfg.comm == "ps") {
      if constexpr (gradcomm::AsyncTransport<T>) {
        dp::train_config c = cfg;
        const int workers = t.size() - 1;
        std::vector<dp::epoch_result> rows;
        if constexpr (std::is_same_v<C, gradcomm::error_feedback<gradcomm::topk_codec>>) {
          if (cfg.ps_push == "dgc") {
            // DGC's memory keeps the momentum (and masks it where sent): no momentum on the
            // worker or the server.
            gradcomm::dgc_memory<gradcomm::topk_codec> dgc(codec.inner(), {.momentum = momentum});
            if (cfg.per_tensor) {
              // Each weight matrix its own top-k and DGC memory, the biases f32 (as the
              // all-reduce's buckets): see layered.
              const auto pt = layered(w);
              gradcomm::per_tensor<decltype(dgc)> push(std::move(dgc), pt.sizes, pt.options);
              if (!with_pull_codec(codec, c, workers, [&](auto pull) {
                    gradcomm::per_tensor<decltype(pull)> p(std::move(pull), pt.sizes, pt.options);
                    rows = dp::train(*make_ps(t, std::move(push), std::move(p), c, 0.0f), t, w,
                                     data, c, bar);
                  }))
                unsupported(t.rank(), "--ps-pull " + cfg.ps_pull + " with --codec " + cfg.codec);
              return rows;
            }
            if (!with_pull_codec(codec, c, workers, [&](auto pull) {
                  rows = dp::train(*make_ps(t, std::move(dgc), std::move(pull), c, 0.0f), t, w,
                                   data, c, bar);
                }))
              unsupported(t.rank(), "--ps-pull " + cfg.ps_pull + " with --codec " + cfg.codec);
            return rows;
          }
        }
        if (cfg.ps_push == "server") {
          // The server keeps the momentum, once per round of the workers' pushes
          // (gradcomm::round_momentum_sgd): a push is the worker's gradient through the
          // codec's error feedback, as the all-reduce's codecs compress gradients.
          if (!with_pull_codec(codec, c, workers, [&](auto pull) {
                rows = dp::train(*make_ps(t, std::move(codec), std::move(pull), c, momentum,
                                          std::type_identity<gradcomm::round_momentum_sgd>{}),
                                 t, w, data, c, bar);
              }))
            unsupported(t.rank(), "--ps-pull " + cfg.ps_pull + " with --codec " + cfg.codec);
          return rows;
        }
        c.worker_momentum = momentum;  // see make_ps
        if (!with_pull_codec(codec, c, workers, [&](auto pull) {
              rows = dp::train(*make_ps(t, std::move(codec), std::move(pull), c, 0.0f), t, w, data,
                               c, bar);
            }))
          unsupported(t.rank(), "--ps-pull " + cfg.ps_pull + " with --codec " + cfg.codec);
        return rows;
      } else
        unsupported(t.rank(), "the parameter server needs receive-from-any-source");
    }
    if (cfg.comm == "gossip") {
      auto go = [&]<class G>(std::type_identity<G>) {
        auto run = [&](auto g) {
          auto rows = dp::train(*g, t, w, data, cfg, bar);
          if (t.rank() == 0 && g->quality().omega < 1.0)
            std::fprintf(stderr,
                         "  consensus step in the last round %g (at most %g; the codec's quality "
                         "%g, its messages' %g)\n",
                         static_cast<double>(g->last_gamma()), static_cast<double>(g->gamma()),
                         g->quality().omega, g->measured_quality());
          return rows;
        };
        if constexpr (std::is_same_v<C, gradcomm::error_feedback<gradcomm::topk_codec>>) {
          if (cfg.per_tensor) {
            const auto pt = layered(w);
            return run(make_gossip_with<G>(
                t, gradcomm::per_tensor<gradcomm::topk_codec>(codec.inner(), pt.sizes, pt.options),
                cfg));
          }
        }
        return run(make_gossip_with<G>(t, bare(std::move(codec)), cfg));
      };
      if (cfg.topology == "ring") return go(std::type_identity<gradcomm::ring_topology>{});
      if (cfg.topology == "torus") return go(std::type_identity<gradcomm::torus_topology>{});
      if (cfg.topology == "exponential")
        return go(std::type_identity<gradcomm::exponential_topology>{});
      if (cfg.topology == "random")
        return go(std::type_identity<gradcomm::random_matching_topology>{});
      if (cfg.topology == "complete") return go(std::type_identity<gradcomm::complete_topology>{});
      unsupported(t.rank(), "unknown topology " + cfg.topology);
    }
  }
  unsupported(t.rank(), "unknown communicator " + cfg.comm);
}

/// --codec auto: gradcomm::advise over this run's transport with the all-reduce's
/// compressed buckets (the layout of make_allreduce, read from a communicator that is laid
/// out and never started), its lines on rank 0, and the name of the largest bucket's pick.
/// Collective: every rank calls it before training.
template <gradcomm::Transport T>
std::string advised_codec_for(T& t, dp::worker& w, const dp::train_config& cfg,
                              gradcomm::accuracy_class accuracy) {
  std::vector<std::size_t> sizes;
  {
    auto layout = make_allreduce(t, gradcomm::identity_codec{}, w, cfg);
    for (std::size_t b = 0; b < layout->bucket_count(); ++b)
      if (layout->stats(b).compressed) sizes.push_back(layout->stats(b).elements);
  }
  const gradcomm::advice a = gradcomm::advise(t, sizes, accuracy);
  const std::string pick(gradcomm::advised_codec_name(a.largest().codec));
  if (t.rank() == 0) {
    std::fprintf(stderr,
                 "auto (%s, %d workers): link probed at %.1f µs and %.3f Gbit/s; per bucket:\n",
                 gradcomm::accuracy_class_name(accuracy).data(), t.size(), a.link.latency_s * 1e6,
                 a.link.gbit_per_s());
    for (const auto& b : a.buckets) std::fprintf(stderr, "  %s\n", b.why.c_str());
    std::fprintf(
        stderr,
        "auto: training with %s, the pick for the largest bucket (this example sends "
        "every bucket with one codec)%s\n",
        pick.c_str(),
        compresses_momentum(pick) ? "; sign runs all-gathered on the workers' momentum" : "");
  }
  return pick;
}

/// One configuration on one rank: identical initial parameters, then training.
template <gradcomm::Transport T>
std::vector<dp::epoch_result> run_worker(T& t, const dp::fashion_mnist& data,
                                         const dp::train_config& config, dp::progress& bar,
                                         gradcomm::accuracy_class accuracy) {
  dp::worker w(input_units, hidden_units, classes, config.batch);
  w.net.init(w.params, config.seed);  // Philox-keyed: the same bits on every rank
  dp::train_config cfg = config;
  if (cfg.codec == "auto") {
    if (cfg.comm != "allreduce") unsupported(t.rank(), "--codec auto advises the all-reduce only");
    cfg.codec = advised_codec_for(t, w, cfg, accuracy);
  }
  std::vector<dp::epoch_result> rows;
  with_codec(cfg.codec, cfg.seed,
             [&](auto codec) { rows = run_backend(t, std::move(codec), w, data, cfg, bar); });
  return rows;
}

struct options {
  std::vector<std::string> codecs;
  dp::train_config train{.epochs = 2};  // what every configuration shares (codec: per run)
  std::string transport = "local";
  std::string data = dp::fashion_mnist_default_dir;
  std::string csv;
  int workers = 4;
  std::string accuracy = "8bit";  // --codec auto's class
};

/// One configuration's outcome: its epochs, or why it stopped.
struct config_run {
  std::string codec;
  std::vector<dp::epoch_result> rows;
  std::string failure;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char s[32];
  std::snprintf(s, sizeof s, "%.1f %s", b, units[u]);
  return s;
}

// Totals of one configuration's epochs (accuracy and loss: the last epoch's).
dp::epoch_result total(const std::vector<dp::epoch_result>& rows) {
  dp::epoch_result t = rows.back();
  t.steps = 0;
  t.bytes_sent = t.compute_s = t.encode_s = t.decode_s = t.wait_s = t.wall_s = 0;
  double reference = 0;
  for (const auto& r : rows) {
    t.steps += r.steps;
    t.bytes_sent += r.bytes_sent;
    reference += r.ratio * r.bytes_sent;
    t.compute_s += r.compute_s;
    t.encode_s += r.encode_s;
    t.decode_s += r.decode_s;
    t.wait_s += r.wait_s;
    t.wall_s += r.wall_s;
  }
  t.ratio = t.bytes_sent > 0 ? reference / t.bytes_sent : 0;
  return t;
}

// Rank 0's training time (evaluations excluded) until the first evaluation at or above
// `target`, and the epochs trained then; a negative time where no evaluation reached it.
std::pair<double, double> time_to(const std::vector<dp::epoch_result>& rows, double target) {
  double s = 0;
  for (const auto& r : rows) {
    s += r.wall_s;
    if (r.test_accuracy >= target) return {s, r.epochs_done};
  }
  return {-1.0, 0.0};
}

void print_table(const std::vector<config_run>& runs, const std::string& comm, double target) {
  std::printf("\n%-9s %-9s %7s %6s %6s %8s %9s %12s %7s %9s %8s %8s %7s %7s %8s\n", "codec", "comm",
              "workers", "epochs", "steps", "test acc", "test loss", "sent/worker", "ratio",
              "compute s", "encode s", "decode s", "wait s", "wall s", "step ms");
  for (const auto& run : runs) {
    if (run.rows.empty()) {
      std::printf("%-9s %-9s failed: %s\n", run.codec.c_str(), comm.c_str(),
                  run.failure.empty() ? "no epoch finished" : run.failure.c_str());
      continue;
    }
    const auto& rows = run.rows;
    const dp::epoch_result t = total(rows);
    char ratio[16] = "-";
    if (t.ratio > 0) std::snprintf(ratio, sizeof ratio, "%.1fx", t.ratio);
    std::printf(
        "%-9s %-9s %7d %6d %6zu %6.2f %% %9.4f %12s %7s %9.2f %8.2f %8.2f %7.2f %7.1f %8.1f\n",
        t.codec.c_str(), t.comm.c_str(), t.workers, rows.back().epoch, t.steps,
        100 * t.test_accuracy, t.test_loss, human_bytes(t.bytes_sent).c_str(), ratio, t.compute_s,
        t.encode_s, t.decode_s, t.wait_s, t.wall_s, 1e3 * t.wall_s / static_cast<double>(t.steps));
  }
  std::printf(
      "ratio: bytes an uncompressed f32 ring all-reduce sends / bytes sent; times are means "
      "over the workers, wall is rank 0's training time (evaluation excluded)\n");
  if (target <= 0) return;
  // Time to accuracy: rank 0's training time until the first evaluation at the target.
  double base = -1;
  for (const auto& run : runs)
    if (run.codec == "none" && !run.rows.empty()) base = time_to(run.rows, target).first;
  std::printf("\n%-9s %-9s %10s %8s %10s\n", "codec", "comm", "to target", "epochs", "vs none");
  for (const auto& run : runs) {
    const auto [secs, epochs] = time_to(run.rows, target);
    if (secs < 0) {
      std::printf("%-9s %-9s %10s\n", run.codec.c_str(), comm.c_str(), "not reached");
      continue;
    }
    char vs[16] = "-";
    if (base > 0) std::snprintf(vs, sizeof vs, "%.3f", secs / base);
    std::printf("%-9s %-9s %8.1f s %8.2f %10s\n", run.codec.c_str(), comm.c_str(), secs, epochs,
                vs);
  }
  std::printf(
      "to target: training time (evaluations excluded) until the first evaluation at "
      "%.2f %% test accuracy; vs none: its ratio to the uncompressed configuration's\n",
      100 * target);
}

bool write_csv(const std::string& path, const std::vector<config_run>& runs) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "gradcomm_data_parallel: cannot write %s: %s\n", path.c_str(),
                 std::generic_category().message(errno).c_str());
    return false;
  }
  std::fprintf(f,
               "codec,comm,workers,epoch,steps,test_accuracy,test_loss,train_loss,"
               "bytes_sent_per_worker,ratio,compute_s,encode_s,decode_s,wait_s,wall_s,"
               "epochs_done,train_s\n");
  for (const auto& run : runs) {
    double train_s = 0;  // rank 0's training time so far
    for (const auto& r : run.rows) {
      train_s += r.wall_s;
      std::fprintf(f,
                   "%s,%s,%d,%d,%zu,%.6f,%.6f,%.6f,%.0f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f\n",
                   r.codec.c_str(), r.comm.c_str(), r.workers, r.epoch, r.steps, r.test_accuracy,
                   r.test_loss, r.train_loss, r.bytes_sent, r.ratio, r.compute_s, r.encode_s,
                   r.decode_s, r.wait_s, r.wall_s, r.epochs_done, train_s);
    }
  }
  return std::fclose(f) == 0;
}

// Loads the data set; a missing file ends the program with 77 (nothing to run on).
bool load(const options& o, dp::fashion_mnist& data, dp::train_config& base, bool talk) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    data = dp::load_fashion_mnist(o.data);
  } catch (const gradcomm::decode_error&) {
    throw;
  } catch (const gradcomm::error& e) {
    if (e.code() != std::errc::no_such_file_or_directory) throw;
    if (talk) std::fprintf(stderr, "gradcomm_data_parallel: %s\n", e.what());
    return false;
  }
  // Normalise the inputs with the training set's own mean and standard deviation.
  double sum = 0, sq = 0;
  for (std::uint8_t p : data.train.pixels) {
    const double v = p / 255.0;
    sum += v;
    sq += v * v;
  }
  const double n = static_cast<double>(data.train.pixels.size());
  base.input_mean = static_cast<float>(sum / n);
  base.input_stddev =
      static_cast<float>(std::sqrt(std::max(sq / n - (sum / n) * (sum / n), 1e-12)));
  if (talk)
    std::fprintf(stderr,
                 "Fashion-MNIST from %s: %zu training and %zu test images (%.1f s; inputs "
                 "normalised by mean %.4f, std %.4f)\n",
                 o.data.c_str(), data.train.count, data.test.count, dp::detail::seconds_since(t0),
                 base.input_mean, base.input_stddev);
  return true;
}

int run(const options& o, int rank_hint, int world_size) {
  dp::train_config base = o.train;
  base.identical_params = find_backend(base.comm)->identical_params;
  const bool talk = rank_hint == 0;
  dp::fashion_mnist data;
  int loaded = load(o, data, base, talk) ? 1 : 0;
#if GRADCOMM_EXAMPLE_MPI
  // Every rank must see its data before any of them enters a collective.
  if (o.transport == "mpi")
    MPI_Allreduce(MPI_IN_PLACE, &loaded, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
#endif
  if (!loaded) return 77;

  dp::progress bar(talk && isatty(2));
  std::vector<config_run> runs;
  for (const std::string& codec : o.codecs) {
    dp::train_config cfg = base;
    cfg.codec = codec;
    ps_defaults(cfg);
    if (cfg.gossip_gamma == 0.0f) cfg.gossip_gamma = gossip_gamma_for(codec, cfg.topology);
    if (talk)
      std::fprintf(
          stderr, "%s/%s: %d workers%s (%s), batch %zu per worker, lr %g%s, momentum %g%s\n",
          codec.c_str(), cfg.comm.c_str(), world_size,
          find_backend(cfg.comm)->servers ? " and a server" : "", o.transport.c_str(), cfg.batch,
          static_cast<double>(cfg.lr), cfg.lr_schedule == "cosine" ? " (cosine)" : "",
          static_cast<double>(momentum),
          cfg.comm == "ps" && cfg.ps_push == "server" ? " (on the server, once a round of pushes)"
          : cfg.comm == "ps" || (cfg.comm == "allreduce" && compresses_momentum(codec))
              ? " (on each worker, before the codec)"
              : "");
    if (talk && cfg.comm == "ps")
      std::fprintf(stderr,
                   "  pushes: %s; pulls: %s; staleness: %s (--ps-push, --ps-pull, "
                   "--ps-staleness)\n",
                   codec == "topk" || cfg.ps_push == "server" ? cfg.ps_push.c_str() : "ef",
                   cfg.ps_pull.c_str(),
                   cfg.ps_staleness < 0 ? "unbounded" : std::to_string(cfg.ps_staleness).c_str());
    if (talk && cfg.comm == "gossip" && cfg.gossip_gamma > 0.0f)
      std::fprintf(stderr, "  consensus step %g\n", static_cast<double>(cfg.gossip_gamma));
    if (talk && cfg.comm == "gossip" && cfg.gossip_gamma < 0.0f)
      std::fprintf(stderr, "  consensus step: the library's (--gossip-gamma -1)\n");
    if (talk && cfg.comm == "allreduce" && codec == "topk" && cfg.topk_warmup_steps != 0)
      std::fprintf(stderr, "  warm-up: 25 %%, 6.25 %%, 1.5625 %% for %llu steps each, then 1 %%\n",
                   static_cast<unsigned long long>(cfg.topk_warmup_steps));
    if (talk && cfg.comm == "allreduce" && codec == "topk" && cfg.topk_f32_steps != 0)
      std::fprintf(stderr, "  warm-up: f32 for the first %llu steps\n",
                   static_cast<unsigned long long>(cfg.topk_f32_steps));
    if (talk && cfg.comm == "allreduce" && codec == "powersgd" && cfg.powersgd_warmup_steps != 0)
      std::fprintf(stderr, "  warm-up: f32 for the first %llu steps\n",
                   static_cast<unsigned long long>(cfg.powersgd_warmup_steps));
    config_run& run = runs.emplace_back(config_run{codec, {}, {}});
    if (o.transport == "local") {
      // A configuration that fails (diverges, say) is reported; the next one still runs.
      try {
        gradcomm::local_world world(o.workers + find_backend(o.train.comm)->servers,
                                    std::chrono::minutes(2));
        world.run([&](gradcomm::local_transport& t) {
          auto mine = run_worker(t, data, cfg, bar, gradcomm::parse_accuracy_class(o.accuracy));
          if (t.rank() == 0) run.rows = std::move(mine);
        });
      } catch (const std::exception& e) {
        bar.end();
        run.failure = e.what();
        // A codec meets NaN or Inf where the training diverged.
        if (run.failure.find("non-finite") != std::string::npos)
          run.failure += " (the training diverged: try a smaller --lr)";
        std::fprintf(stderr, "%s/%s failed: %s\n", codec.c_str(), o.train.comm.c_str(),
                     run.failure.c_str());
      }
    }
#if GRADCOMM_EXAMPLE_MPI
    else {
      // A rank that fails here ends the job (main): the others cannot go on without it.
      gradcomm::mpi_transport t(MPI_COMM_WORLD, std::chrono::minutes(2));
      run.rows = run_worker(t, data, cfg, bar, gradcomm::parse_accuracy_class(o.accuracy));
    }
#endif
    if (talk && !o.csv.empty() && !write_csv(o.csv, runs)) return 1;
  }
  if (talk) print_table(runs, o.train.comm, o.train.target_accuracy);
  for (const auto& run : runs)
    if (!run.failure.empty()) return 1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{
      "Trains a 784-1024-1024-10 MLP on Fashion-MNIST with data-parallel workers whose "
      "gradients travel through a gradcomm communicator, one configuration (codec) after "
      "another, and prints a table comparing them."};
  std::string codec;
  std::vector<std::string> all_codecs(std::begin(codec_names), std::end(codec_names));
  std::vector<std::string> all_backends;
  for (const auto& b : backends) all_backends.push_back(b.name);
  auto* one = app.add_option("--codec", codec, "the codec of a single configuration")
                  ->check(CLI::IsMember(all_codecs));
  app.add_option("--codecs", o.codecs,
                 "configurations to run one after another, comma-separated (default none,int8)")
      ->delimiter(',')
      ->check(CLI::IsMember(all_codecs))
      ->excludes(one);
  app.add_option("--accuracy", o.accuracy,
                 "--codec auto: the accuracy class the advisor picks within (lossless: f32; "
                 "16bit: bf16, fp16; 8bit: int8; any: int4, sign, topk, powersgd too)")
      ->check(CLI::IsMember({"lossless", "16bit", "8bit", "any"}))
      ->capture_default_str();
  app.add_option("--comm", o.train.comm, "the communicator")
      ->check(CLI::IsMember(all_backends))
      ->capture_default_str();
  app.add_option("--topology", o.train.topology, "gossip's topology")
      ->check(CLI::IsMember({"ring", "torus", "exponential", "random", "complete"}))
      ->capture_default_str();
  app.add_option("--transport", o.transport,
                 "local: threads of this process; mpi: the ranks of an MPI job (mpirun)")
      ->check(CLI::IsMember({"local", "mpi"}))
      ->capture_default_str();
  app.add_option("--workers", o.workers, "workers (threads) with --transport local")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--epochs", o.train.epochs, "epochs per configuration")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--batch", o.train.batch, "examples per worker and step")
      ->check(CLI::Range(std::size_t{1}, std::size_t{60000}))
      ->capture_default_str();
  app.add_option(
         "--lr", o.train.lr,
         "SGD's learning rate (momentum 0.9; ps, and sign on the all-reduce: on each worker, "
         "before the codec)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lr-schedule", o.train.lr_schedule,
                 "constant, or cosine: lr · ½(1 + cos(π s / S)) at step s of the run's S")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
  app.add_option("--seed", o.train.seed,
                 "seeds the initial parameters, the shuffles and the codecs")
      ->capture_default_str();
  app.add_option("--max-steps", o.train.max_steps,
                 "stop each configuration after this many steps (0: no limit)")
      ->capture_default_str();
  app.add_option("--evals-per-epoch", o.train.evals_per_epoch,
                 "evaluations on the test set an epoch (a row each), after equal parts of it")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--target-accuracy", o.train.target_accuracy,
                 "stop a configuration at the first evaluation reaching this test accuracy (a "
                 "fraction, e.g. 0.85) and report the training time it took (0: train every "
                 "epoch)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  o.train.topk_warmup_steps = default_topk_warmup;
  o.train.powersgd_warmup_steps = default_powersgd_warmup;
  bool no_warmup = false;
  app.add_option("--topk-warmup", o.train.topk_warmup_steps,
                 "all-reduce, top-k: steps of each stage of DGC's sparsity warm-up (25 %, 6.25 %, "
                 "1.5625 %, then 1 %), e.g. 10; 0: off")
      ->capture_default_str();
  app.add_option("--topk-f32-warmup", o.train.topk_f32_steps,
                 "all-reduce, top-k: steps sent uncompressed (f32) before top-k starts; 0: off")
      ->capture_default_str();
  app.add_option("--powersgd-warmup", o.train.powersgd_warmup_steps,
                 "all-reduce, PowerSGD: steps sent uncompressed (f32) before PowerSGD starts; 0: "
                 "off")
      ->capture_default_str();
  app.add_option("--ps-pull", o.train.ps_pull,
                 "ps: what a pull sends: codec (the change since the last pull, through the push "
                 "codec), f32 (the values), bf16 or int8 (the change), topk-union (top-k at "
                 "workers x the push ratio; --codec topk); auto: int8 for sign and top-k, codec "
                 "otherwise")
      ->check(CLI::IsMember({"auto", "codec", "f32", "bf16", "int8", "topk-union"}))
      ->capture_default_str();
  app.add_option("--ps-push", o.train.ps_push,
                 "ps, --codec topk: ef (the worker's momentum through error feedback) or dgc "
                 "(DGC's memory: momentum correction and masking); server (any codec: the "
                 "gradient through error feedback, the momentum on the server once a round of "
                 "pushes); auto: server for top-k, ef otherwise")
      ->check(CLI::IsMember({"auto", "ef", "dgc", "server"}))
      ->capture_default_str();
  app.add_option(
         "--ps-staleness", o.train.ps_staleness,
         "ps: a worker's reply waits until every worker is within this many pushes of "
         "it (0: synchronous); -1: unbounded (asynchronous); -2 (auto): 0 for sign and top-k, "
         "unbounded otherwise")
      ->check(CLI::Range(-2, 1000000))
      ->capture_default_str();
  app.add_option("--gossip-gamma", o.train.gossip_gamma,
                 "gossip: the consensus step in (0, 1]; 0: the example's default (the library's, "
                 "except top-k's: 0.2 on the exponential graph, 0.1 elsewhere); -1: the "
                 "library's (from the codec, lowered where its messages compress worse)")
      ->check(CLI::Range(-1.0f, 1.0f))
      ->capture_default_str();
  app.add_flag("--no-warmup", no_warmup,
               "every warm-up off (--topk-warmup 0 --topk-f32-warmup 0 --powersgd-warmup 0)");
  bool no_overlap = false;
  bool per_tensor = false;
  app.add_flag("--per-tensor", per_tensor,
               "ps (DGC pushes) and gossip, --codec topk: each weight matrix its own top-k, the "
               "biases f32 (gradcomm::per_tensor), not one top-k over the whole flat buffer");
  app.add_flag("--no-overlap", no_overlap,
               "the all-reduce starts its buckets after the backward pass, not as each layer's "
               "gradients land");
  app.add_option("--data", o.data, "folder of the four gzipped IDX files")->capture_default_str();
  app.add_option("--csv", o.csv,
                 "write one row per evaluation (epoch, by default) and configuration to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the help, or the error and a hint
    return rc == 0 ? 0 : 2;
  }
  if (no_warmup)
    o.train.topk_warmup_steps = o.train.topk_f32_steps = o.train.powersgd_warmup_steps = 0;
  if (no_overlap) o.train.overlap_backward = false;
  if (per_tensor) o.train.per_tensor = true;
  if (!codec.empty()) o.codecs = {codec};
  if (o.codecs.empty()) o.codecs = {"none", "int8"};

  if (o.train.topology != "ring" && o.train.comm != "gossip")
    std::fprintf(stderr, "gradcomm_data_parallel: --topology only concerns --comm gossip\n");

  if (o.transport == "mpi") {
#if GRADCOMM_EXAMPLE_MPI
    // Outside the try: MPI_Abort below must run before the environment finalizes MPI.
    std::optional<gradcomm::mpi_environment> env;
    try {
      env.emplace(argc, argv);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gradcomm_data_parallel: %s\n", e.what());
      return 1;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    o.workers = size - find_backend(o.train.comm)->servers;
    if (o.workers < 1) {
      if (rank == 0)
        std::fprintf(stderr, "gradcomm_data_parallel: --comm %s needs more than %d ranks\n",
                     o.train.comm.c_str(), size);
      return 2;
    }
    try {
      const auto t0 = std::chrono::steady_clock::now();
      const int rc = run(o, rank, o.workers);
      if (rc == 0 && rank == 0)
        std::printf("total wall time %.1f s\n", dp::detail::seconds_since(t0));
      return rc;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "gradcomm_data_parallel: rank %d: %s\n", rank, e.what());
      MPI_Abort(MPI_COMM_WORLD, 1);  // the other ranks may be inside a collective
      return 1;
    }
#else
    std::fprintf(stderr,
                 "not available in this build: --transport mpi (configure gradcomm with MPI: "
                 "Debian packages libopenmpi-dev and openmpi-bin)\n");
    return 2;
#endif
  }

  try {
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = run(o, 0, o.workers);
    if (rc == 0) std::printf("total wall time %.1f s\n", dp::detail::seconds_since(t0));
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradcomm_data_parallel: %s\n", e.what());
    return 1;
  }
}

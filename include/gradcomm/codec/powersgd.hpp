// gradcomm/codec/powersgd.hpp — PowerSGD: rank-r compression by one step of power
// iteration with a warm start, and error feedback (Vogels, Karimireddy and Jaggi,
// "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization",
// NeurIPS 2019).
//
//   gradcomm::powersgd_codec c({.rank = 4, .rows = 4096, .cols = 4096});
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));  // P (4096 × 4) and Q (4096 × 4): 512× smaller
//   c.decode(wire, out);             // out = P Qᵀ, the rank-4 approximation of g
//
// The tensor is viewed as a rows × cols matrix M (row-major: element (i, j) is
// in[i·cols + j]). One step computes P = M Q from the previous step's Q (the warm start),
// orthonormalizes P's columns (Householder QR, Eigen), computes Q = Mᵀ P and sends P and
// Q: the approximation P Qᵀ = P Pᵀ M is M projected on the span of P. Repeated over steps
// this is subspace iteration, so the approximation tracks the gradient's top-r singular
// subspace at the cost of two matrix-vector passes a step.
//
// Across workers the sums must happen between the factors (P is summed before Q is
// computed), which one payload cannot express: the codec's traits say two_round, and its
// round API (compute_p, compute_q, decompress) lets an all-reduce sum P, then Q
// (TwoRoundCodec, codec/codec.hpp). encode / decode / decode_add are the single-worker case
// and a valid Codec on their own.
//
// This header holds the class and its wire and state formats; the passes over the matrix
// are in codec/detail/powersgd_cpu.hpp, their arithmetic in codec/detail/powersgd_math.hpp.
//
// Needs Eigen: link gradcomm::eigen (Debian package libeigen3-dev), which defines
// GRADCOMM_HAS_EIGEN=1. Without it this header declares only a stub `powersgd_codec` whose
// use stops compilation with a message saying so.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_EIGEN

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/powersgd_cpu.hpp>
#include <gradcomm/codec/detail/powersgd_math.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// The matrix shape a tensor is viewed as.
struct powersgd_shape {
  std::size_t rows = 0;
  std::size_t cols = 0;
  friend constexpr bool operator==(const powersgd_shape&, const powersgd_shape&) = default;
};

/// The shape a flat tensor of n elements is viewed as when none is given: rows is the
/// largest divisor of n not above √n and cols = n / rows, the squarest exact factoring
/// (no padding). 4096·4096 → 4096 × 4096; 1000 → 25 × 40; a prime n → 1 × n, which no
/// rank compresses (the tensor then goes uncompressed: give the shape where it matters,
/// e.g. out_channels × in_channels·kh·kw for a convolution's weight). n = 0 → 1 × 0.
///
///   auto s = gradcomm::powersgd_default_shape(1000);  // {25, 40}
constexpr powersgd_shape powersgd_default_shape(std::size_t n) noexcept {
  if (n == 0) return {1, 0};
  // floor(√n) by Newton's iteration, from above, without overflow.
  std::size_t root = n, next = n / 2 + 1;
  while (next < root) {
    root = next;
    next = (root + n / root) / 2;
  }
  for (std::size_t rows = root; rows > 1; --rows) {
    if (n % rows == 0) return {rows, n / rows};
  }
  return {1, n};
}

/// Whether rank r gains on a rows × cols matrix: r·(rows + cols) < rows·cols (then also
/// r < min(rows, cols)). rows·cols must fit in a size_t.
///
///   static_assert(gradcomm::powersgd_compresses({4096, 4096}, 4));
///   static_assert(!gradcomm::powersgd_compresses({1, 1000}, 1));  // 1-D
constexpr bool powersgd_compresses(powersgd_shape s, std::uint64_t rank) noexcept {
  const std::size_t a = std::min(s.rows, s.cols), b = std::max(s.rows, s.cols);
  if (rank == 0 || rank >= a) return false;
  // r(a + b) < ab  <=>  r·a < (a − r)·b; both sides fit, as r < a ≤ √(ab).
  return rank * a < (a - rank) * b;
}

/// PowerSGD's settings.
///
///   gradcomm::powersgd_params p{.rank = 2, .rows = 512, .cols = 784};
///   p.error_feedback = false;   // when wrapped in gradcomm::error_feedback instead
struct powersgd_params {
  /// r, the rank of the approximation (at least 1).
  std::uint32_t rank = 4;
  /// The matrix shape; both 0 (the default): powersgd_default_shape(n) of the first input.
  std::size_t rows = 0;
  std::size_t cols = 0;
  /// Built-in error feedback, as in the paper: what a step drops is added to the next
  /// step's input. Needed for convergence; switch it off only to wrap the codec in another
  /// feedback scheme.
  bool error_feedback = true;
  /// Keys the initial Q (Philox): every worker must use the same seed, so that their
  /// P = M Q sum to (Σ M) Q.
  std::uint64_t seed = 0;
  /// NaN and ±Inf in the input (g + e): rejected naming the index (`reject`, and `pass`,
  /// which no low-rank format can honour) or zeroed (`zero`).
  nonfinite_policy policy = nonfinite_policy::reject;
};

/// The first four bytes of a saved powersgd_codec state: "GCPS" read as a little-endian u32.
inline constexpr std::uint32_t powersgd_state_magic = 0x53504347u;
/// The state format version this build writes and reads.
inline constexpr std::uint8_t powersgd_state_version = 1;
/// Bytes of the state header, before Q and the residual.
inline constexpr std::size_t powersgd_state_header_bytes = 48;
/// Bytes of PowerSGD's codec parameters in the wire header.
inline constexpr std::size_t powersgd_params_bytes = 24;
/// The most elements a state that load_state accepts is for (2^40: 4 TiB of f32).
inline constexpr std::uint64_t powersgd_max_state_elements = std::uint64_t{1} << 40;

/// The PowerSGD codec (layouts below). Traits: not linear (two workers' payloads do not
/// sum to the payload of their sum: their factors differ), not fixed size (the payload
/// depends on the shape, not n alone), stateful (the warm start Q and the residual), and
/// two_round: its round API runs PowerSGD across workers.
///
/// One step, from the warm start Q (cols × r) and the residual e:
///   M = g + e;  P = M Q;  [sum P over workers]  P̂ = orthonormal basis of P (Householder QR);
///   Q = Mᵀ P̂;  [sum Q over workers]  out = P̂ Qᵀ;  e ← M − P̂ Q_localᵀ;  warm start ← Q.
/// The residual is this worker's own (the paper's), so the residuals over workers sum to
/// what the summed output still owes. The stored warm start has its columns scaled to unit
/// norm (the span is what matters; it keeps P = M Q far from overflow and underflow), and a
/// column that came out zero (a zero gradient) is drawn afresh from the seed, the same on
/// every worker, so that the iteration never loses rank for good.
///
/// With error feedback the first pass writes M (a second buffer of n floats in the state)
/// and the second reads it; the residual M − P̂ Q_localᵀ is kept deferred, as M and the two
/// factors, and settled in the next step's first pass, which reads the n floats anyway: a
/// step reads g and e once and M once, where settling at once would take a third pass over
/// all of them. Reading the residual (residual(), residual_norm(), save_state) settles it
/// first, in place, to the same bits.
///
/// Tensors whose shape no rank-r factoring shrinks — 1-D ones (rows 1) and those with
/// r(rows + cols) ≥ rows·cols — go uncompressed: the payload carries the n values (with
/// error feedback the residual becomes zero), and in the round API P is the tensor itself
/// and Q is empty.
///
/// Sizing: the shape and state are fixed by the first encode or compute_p (or by resize /
/// load_state); a call with another n throws invalid_argument until reset(). Afterwards no
/// call allocates (Householder QR included, for r < 48).
///
/// Workspace (codec.hpp, Codec requirement 8): encode's scratch is the step's two factors,
/// P (rows·r f32) and this worker's Q (cols·r f32). encode(in, out) keeps them in the
/// codec; encode(in, out, workspace) takes them from the caller's host memory of
/// workspace_bytes(n) bytes instead, with the same payload and state byte for byte. M (the
/// n floats of g + e with error feedback) is no scratch: it becomes the next residual, and
/// stays in the state, as do Eigen's QR storage (rows·r + 3r f32, sized with the state) and
/// the round API's buffers, which are the caller's already.
///
/// Payload (core/wire.hpp; codec id powersgd, dtype f32, count n), parameters 24 bytes:
///
///   offset  0  u8   flags: bit 0 set: uncompressed (the body is the n values); others 0
///   offset  1  u8×3 reserved, zero
///   offset  4  u32  rank r (0 when uncompressed)
///   offset  8  u64  rows
///   offset 16  u64  cols (rows·cols = n; uncompressed: rows 1, cols n)
///
/// then the body: P̂, rows·r f32 column-major (column k at float k·rows), then Q, cols·r
/// f32 column-major; element (i, j) of the tensor, at i·cols + j, is Σ_k P̂(i,k) Q(j,k).
/// Uncompressed: n f32. Decoders check every field, the exact body size, that every value
/// is finite and that P Qᵀ cannot overflow f32, and name the defect in a decode_error.
///
/// State (save_state / load_state), little-endian:
///
///   offset  0  u32  magic 0x53504347 ("GCPS")
///   offset  4  u8   version (powersgd_state_version)
///   offset  5  u8   flags: bit 0 sized, bit 1 error feedback, bit 2 compressed shape
///   offset  6  u16  reserved, zero
///   offset  8  u32  rank
///   offset 12  u32  reserved, zero
///   offset 16  u64  n        (0 unless sized)
///   offset 24  u64  rows
///   offset 32  u64  cols
///   offset 40  u64  steps completed
///   offset 48  Q: cols·r f32 (compressed shapes), then the residual: n f32 (error feedback)
///
///   gradcomm::powersgd_codec c({.rank = 2});         // shape from the first input
///   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
///   wire.resize(c.encode(g, wire));
///   c.decode_add(wire, sum);                          // sum += P̂ Qᵀ
class powersgd_codec : public host_codec_calls<powersgd_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{
      .linear = false, .fixed_size = false, .stateful = true, .two_round = true};
  static constexpr codec_id id = codec_id::powersgd;

  /// Throws invalid_argument for rank 0, one of rows and cols 0 but not the other, or
  /// rows·cols beyond a size_t.
  explicit powersgd_codec(powersgd_params p = {}) : params_(p) {
    static constexpr const char* call = "powersgd_codec::powersgd_codec";
    if (p.rank == 0) detail::throw_invalid_argument(call, "rank 0: the rank must be at least 1");
    if ((p.rows == 0) != (p.cols == 0)) {
      detail::throw_invalid_argument(call, "shape " + std::to_string(p.rows) + " × " +
                                               std::to_string(p.cols) +
                                               ": give both rows and cols, or neither");
    }
    if (p.rows != 0 && p.cols > std::numeric_limits<std::size_t>::max() / 4 / p.rows) {
      detail::throw_invalid_argument(call, "shape " + std::to_string(p.rows) + " × " +
                                               std::to_string(p.cols) + " is too large");
    }
  }

  /// The settings given to the constructor.
  const powersgd_params& params() const noexcept { return params_; }
  /// The rank r.
  std::uint32_t rank() const noexcept { return params_.rank; }

  /// The shape n elements are viewed as: the given one, or powersgd_default_shape(n).
  /// Throws invalid_argument when a given shape does not hold n elements.
  powersgd_shape shape(std::size_t n) const {
    if (sized_ && n == n_) return {rows_, cols_};  // found once, when sized
    if (params_.rows == 0) return powersgd_default_shape(n);
    if (params_.rows * params_.cols != n) {
      detail::throw_invalid_argument("powersgd_codec",
                                     "input has " + std::to_string(n) + " elements, the shape " +
                                         std::to_string(params_.rows) + " × " +
                                         std::to_string(params_.cols) + " holds " +
                                         std::to_string(params_.rows * params_.cols));
    }
    return {params_.rows, params_.cols};
  }

  /// Whether n elements go through the low-rank path (false: uncompressed).
  bool compresses(std::size_t n) const noexcept {
    return shape_fits(n) && powersgd_compresses(shape(n), params_.rank);
  }

  /// Payload bytes for n elements (exact where the shape holds n; else a bound).
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return wire_header_bytes + powersgd_params_bytes + 4 * body_floats(n);
  }

  /// Floats of the first round's buffer: rows·r (P), or n where n goes uncompressed.
  std::size_t p_floats(std::size_t n) const noexcept {
    return compresses(n) ? shape(n).rows * params_.rank : n;
  }
  /// Floats of the second round's buffer: cols·r (Q), or 0 where n goes uncompressed.
  std::size_t q_floats(std::size_t n) const noexcept {
    return compresses(n) ? shape(n).cols * params_.rank : 0;
  }

  // ---- state ------------------------------------------------------------------------

  /// Whether the state has a size (and shape) yet.
  bool sized() const noexcept { return sized_; }
  /// Elements of the tensor the state is for (0 while unsized).
  std::size_t size() const noexcept { return n_; }
  /// The shape in use (rows 0 while unsized).
  powersgd_shape current_shape() const noexcept { return {rows_, cols_}; }
  /// Steps completed (encode or decompress) since sizing.
  std::uint64_t steps() const noexcept { return steps_; }
  /// The residual e (empty without error feedback or while unsized). Settles a deferred
  /// residual first (a pass over the n floats): const, but not to be called concurrently
  /// with another call on this codec. The span lasts until the next step.
  std::span<const float> residual() const noexcept {
    settle(false);
    return residual_;
  }
  /// ‖e‖₂, in double (0 without error feedback or while unsized); settles as residual().
  double residual_norm() const noexcept {
    if (deferred_) return std::sqrt(settle(true));
    double s = 0.0;  // row after row, as the settle pass adds them
    for (std::size_t i = 0; i < residual_.size(); i += cols_) {
      s += detail::psgd_sum_squares(residual_.data() + i, std::min(cols_, residual_.size() - i));
    }
    return std::sqrt(s);
  }
  /// The warm start Q, cols·r f32 column-major (empty while unsized or uncompressed).
  std::span<const float> warm_start() const noexcept { return q_; }

  /// Sizes the state for n elements: the shape, a zero residual, Q drawn from the seed,
  /// step 0. Throws invalid_argument where a given shape does not hold n.
  void resize(std::size_t n) {
    const powersgd_shape s = shape(n);
    const bool low_rank = powersgd_compresses(s, params_.rank);
    const std::size_t r = params_.rank;
    // Everything is allocated before anything changes.
    std::vector<float> q(low_rank ? s.cols * r : 0), q_local(q.size());
    std::vector<std::byte> scratch(low_rank ? factor_scratch_bytes(s) : 0);
    std::vector<float> e(params_.error_feedback ? n : 0, 0.0f);
    const bool fold = low_rank && params_.error_feedback;
    std::vector<float> m(fold ? n : 0), p_deferred(fold ? s.rows * r : 0);
    std::vector<float> q_deferred(fold ? q.size() : 0);
    Eigen::HouseholderQR<Eigen::MatrixXf> qr;
    Eigen::Matrix<float, 1, Eigen::Dynamic> ws;
    if (low_rank) {
      qr = Eigen::HouseholderQR<Eigen::MatrixXf>(static_cast<Eigen::Index>(s.rows),
                                                 static_cast<Eigen::Index>(r));
      ws.resize(static_cast<Eigen::Index>(r));
    }
    n_ = n;
    rows_ = s.rows;
    cols_ = s.cols;
    low_rank_ = low_rank;
    q_ = std::move(q);
    q_local_ = std::move(q_local);
    scratch_ = std::move(scratch);
    residual_ = std::move(e);
    m_ = std::move(m);
    p_deferred_ = std::move(p_deferred);
    q_deferred_ = std::move(q_deferred);
    deferred_ = false;
    qr_ = std::move(qr);
    qr_ws_ = std::move(ws);
    steps_ = 0;
    phase_ = phase::idle;
    sized_ = true;
    for (std::size_t k = 0; k < r && low_rank; ++k) draw_column(k, 0);
  }

  /// Discards the state and its size; the next call sizes it anew.
  void reset() noexcept {
    n_ = rows_ = cols_ = 0;
    low_rank_ = false;
    q_.clear();
    q_local_.clear();
    scratch_.clear();
    residual_.clear();
    m_.clear();
    p_deferred_.clear();
    q_deferred_.clear();
    deferred_ = false;
    steps_ = 0;
    phase_ = phase::idle;
    sized_ = false;
  }

  /// Replaces the residual (e.g. after reshard_residuals, codec/error_feedback.hpp).
  /// Throws invalid_argument without error feedback, for a size other than the state's,
  /// or for a non-finite value or one of magnitude 2^127 or more (as load_state).
  void set_residual(host_view<const float> e) {
    static constexpr const char* call = "powersgd_codec::set_residual";
    if (!params_.error_feedback) detail::throw_invalid_argument(call, "no error feedback");
    if (!sized_ || e.size() != n_) {
      detail::throw_invalid_argument(call, "residual of " + std::to_string(e.size()) +
                                               " elements, the state holds " + std::to_string(n_));
    }
    if (const std::size_t i = detail::psgd_first_unsendable(e.data(), e.size()); i < e.size()) {
      detail::throw_invalid_argument(
          call, std::isfinite(e[i])
                    ? "value " + std::to_string(e[i]) + " at index " + std::to_string(i) +
                          " is at or beyond ±2^127, more than any payload carries"
                    : "non-finite value at index " + std::to_string(i));
    }
    std::copy(e.begin(), e.end(), residual_.begin());
    deferred_ = false;
  }

  // ---- one worker: the Codec --------------------------------------------------------

  /// Encodes one step of `in` into `out` (layout above) and returns the payload's size;
  /// with error feedback the residual becomes (in + e) − decode(payload). Throws
  /// buffer_too_small (before any work), invalid_argument for a size other than the
  /// state's, a non-finite input under `reject` (naming the index) or factors that
  /// overflow f32; then the state is as before. The step's factors go to the codec's own
  /// scratch (sized with the state).
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode_step(in, out, nullptr);
  }

  /// encode with the step's factors in the caller's `workspace` (host memory, at least
  /// workspace_bytes(in.size()) bytes, any alignment; its contents are scratch): the same
  /// payload, residual and warm start, byte for byte. Throws as encode, and invalid_argument
  /// naming both sizes for a smaller workspace, before any work.
  ///
  ///   std::vector<std::byte> ws(c.workspace_bytes(g.size()));
  ///   wire.resize(c.encode(g, wire, ws));
  std::size_t encode(host_view<const float> in, std::span<std::byte> out,
                     std::span<std::byte> workspace) {
    return encode_step(in, out, &workspace);
  }

  /// Bytes of the caller-owned scratch that encode(in, out, workspace) needs for n
  /// elements: P (rows·r f32) and this worker's Q (cols·r f32) of the step, and 63 bytes
  /// so that the factors start on a 64-byte boundary whatever the workspace's address; 0
  /// where n goes uncompressed or no shape holds it.
  std::size_t workspace_bytes(std::size_t n) const noexcept {
    return compresses(n) ? factor_scratch_bytes(shape(n)) : 0;
  }

  /// Overwrites `out` with the payload's tensor. Throws decode_error naming the defect
  /// (header, parameters, shape against out.size(), rank, body size, non-finite factors,
  /// factors whose product overflows); then `out` is untouched. Needs no state: any
  /// powersgd_codec decodes any PowerSGD payload.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    decode_into<false>(payload, out, "powersgd_codec::decode");
  }

  /// Adds the payload's tensor to `acc`; checks as decode.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    decode_into<true>(payload, acc, "powersgd_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<powersgd_codec>::encode;
  using host_codec_calls<powersgd_codec>::decode;
  using host_codec_calls<powersgd_codec>::decode_add;

  // ---- many workers: the round API (TwoRoundCodec) ------------------------------------

  /// Round 1: p (p_floats(n) floats) = (in + e) Q, from the warm start; where n goes
  /// uncompressed, p = in + e. Sizes the state on first use. Starts a step afresh whatever
  /// came before. Throws invalid_argument as encode does, and for p of another size.
  ///
  ///   std::vector<float> p(c.p_floats(g.size())), q(c.q_floats(g.size()));
  ///   c.compute_p(g, p);
  ///   transport.allreduce_sum(p);  // then compute_q
  void compute_p(host_view<const float> in, host_view<float> p) {
    static constexpr const char* call = "powersgd_codec::compute_p";
    check_size(in.size(), call);
    check_floats(p.size(), p_floats(in.size()), "P", call);
    const bool first = prepare(in.size());
    try {
      phase_ = phase::idle;
      if (low_rank_) {
        run_p_pass(in.data(), p.data(), call);
      } else if (load_uncompressed(in.data(), 0, in.size(), p.data())) {
        reject_nonfinite(in.data(), call);
      }
      phase_ = phase::p_done;
    } catch (...) {
      if (first) reset();
      throw;
    }
  }

  /// Round 2: turns the summed P in `p` into P̂ (orthonormal columns, in place: the same on
  /// every worker, since every worker holds the same sum) and writes this worker's
  /// Q = (in + e)ᵀ P̂ into q (q_floats(n) floats); with error feedback it reads the M that
  /// compute_p wrote, so `in` must be what compute_p saw. Where n goes uncompressed, p stays as it
  /// is and q is empty. Throws invalid_argument out of turn (before compute_p), for buffers
  /// of other sizes, a non-finite summed P or an overflowing Q.
  void compute_q(host_view<const float> in, host_view<float> p, host_view<float> q) {
    static constexpr const char* call = "powersgd_codec::compute_q";
    check_turn(phase::p_done, in.size(), call);
    check_floats(p.size(), p_floats(n_), "P", call);
    check_floats(q.size(), q_floats(n_), "Q", call);
    check_finite(p, "summed P", call);
    if (!low_rank_) {
      phase_ = phase::q_done;
      return;
    }
    phase_ = phase::idle;  // a throw below leaves the step to be started again
    orthogonalize(p.data());
    run_q_pass(in.data(), p.data(), q.data(), call);
    std::copy(q.begin(), q.end(), q_local_.begin());
    phase_ = phase::q_done;
  }

  /// Round 3: out = P̂ Qᵀ with the summed Q (bitwise the same on every worker); ends the
  /// step: the residual becomes (in + e) − P̂ Q_localᵀ and the summed Q the next warm
  /// start. Where n goes uncompressed, out = p (the summed tensor) and the residual zero.
  /// `out` may be `in` itself (otherwise no overlap). Throws invalid_argument out of turn,
  /// for buffers of other sizes or a non-finite summed Q; then nothing has changed.
  ///
  ///   c.compute_q(g, p, q);
  ///   transport.allreduce_sum(q);
  ///   c.decompress(g, p, q, g);  // g: the sum over workers of their low-rank parts
  void decompress(host_view<const float> in, host_view<const float> p, host_view<const float> q,
                  host_view<float> out) {
    static constexpr const char* call = "powersgd_codec::decompress";
    check_turn(phase::q_done, in.size(), call);
    check_floats(p.size(), p_floats(n_), "P", call);
    check_floats(q.size(), q_floats(n_), "Q", call);
    check_floats(out.size(), n_, "output", call);
    if (!low_rank_) {
      check_finite(p, "summed tensor", call);
      if (out.data() != p.data()) std::copy(p.begin(), p.end(), out.begin());
      std::fill(residual_.begin(), residual_.end(), 0.0f);
    } else {
      check_finite(q, "summed Q", call);
      if (detail::psgd_product_bound(p.data(), rows_, q.data(), cols_, params_.rank) >=
          detail::psgd_safe_bound) {
        detail::throw_invalid_argument(call, "P̂ Qᵀ with the summed Q overflows f32");
      }
      detail::psgd_pass a = pass_for(in.data());
      a.p = p.data();
      a.q_out = q.data();
      a.out = out.data();
      detail::psgd_finish_pass(a);
      commit_warm_start(q.data());
      defer_residual(p.data(), q_local_.data());
    }
    ++steps_;
    phase_ = phase::idle;
  }

  /// The three rounds under an execution context, with the same results (codec.hpp,
  /// TwoRoundCodec; only on_host today).
  template <ExecutionContext Ctx, class In, class P>
  void compute_p(Ctx ctx, const In& in, P&& p) {
    compute_p(host_input(ctx, in), host_output(ctx, p));
  }
  template <ExecutionContext Ctx, class In, class P, class Q>
  void compute_q(Ctx ctx, const In& in, P&& p, Q&& q) {
    compute_q(host_input(ctx, in), host_output(ctx, p), host_output(ctx, q));
  }
  template <ExecutionContext Ctx, class In, class P, class Q, class Out>
  void decompress(Ctx ctx, const In& in, const P& p, const Q& q, Out&& out) {
    decompress(host_input(ctx, in), host_input(ctx, p), host_input(ctx, q), host_output(ctx, out));
  }

  // ---- checkpoints ------------------------------------------------------------------

  /// Bytes that save_state writes.
  std::size_t state_bytes() const noexcept {
    return powersgd_state_header_bytes + 4 * (q_.size() + residual_.size());
  }

  /// Writes the state (layout above) into `out`; returns the bytes written. Throws
  /// buffer_too_small, writing nothing, when `out` is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const {
    static constexpr const char* call = "powersgd_codec::save_state";
    const std::size_t need = state_bytes();
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    settle(false);
    wire_writer w(out, call);
    w.put_u32(powersgd_state_magic);
    w.put_u8(powersgd_state_version);
    w.put_u8(static_cast<std::uint8_t>((sized_ ? 1u : 0u) | (params_.error_feedback ? 2u : 0u) |
                                       (low_rank_ ? 4u : 0u)));
    w.put_u16(0);
    w.put_u32(params_.rank);
    w.put_u32(0);
    w.put_u64(n_);
    w.put_u64(rows_);
    w.put_u64(cols_);
    w.put_u64(steps_);
    w.put_bytes(std::as_bytes(std::span<const float>(q_)));
    w.put_bytes(std::as_bytes(std::span<const float>(residual_)));
    return w.position();
  }

  /// Replaces the state by one save_state wrote for the same settings (rank, shape, error
  /// feedback). Throws decode_error naming the defect (truncated, trailing bytes, bad
  /// magic or version, unknown flags, another rank or shape, non-finite values, a warm
  /// start whose columns are not of unit norm, a residual element of magnitude 2^127 or
  /// more, which no payload carries, more than powersgd_max_state_elements);
  /// then nothing has changed. Allocates what `bytes` hold, and buffers of rows·r and cols
  /// floats.
  void load_state(std::span<const std::byte> bytes) {
    static constexpr const char* call = "powersgd_codec::load_state";
    wire_reader r(bytes, call);
    const std::span<const std::byte> fixed = r.take(powersgd_state_header_bytes);
    wire_reader h(fixed, call);
    if (h.get_u32() != powersgd_state_magic) {
      throw decode_error(call, "bad magic: found bytes " + detail::wire_hex_bytes(fixed.first(4)) +
                                   ", expected 47 43 50 53 (\"GCPS\")");
    }
    if (const std::uint8_t v = h.get_u8(); v != powersgd_state_version) {
      throw decode_error(call, "unsupported state version " + std::to_string(v) +
                                   " (this build reads " + std::to_string(powersgd_state_version) +
                                   ")");
    }
    const std::uint8_t flags = h.get_u8();
    if ((flags & ~7u) != 0) throw decode_error(call, "unknown flags " + std::to_string(flags));
    const bool sized = (flags & 1u) != 0, ef = (flags & 2u) != 0, low_rank = (flags & 4u) != 0;
    if (ef != params_.error_feedback) {
      throw decode_error(call, std::string("a state ") + (ef ? "with" : "without") +
                                   " error feedback, this codec has " +
                                   (params_.error_feedback ? "it" : "none"));
    }
    const std::uint16_t reserved0 = h.get_u16();
    const std::uint32_t rank = h.get_u32();
    const std::uint32_t reserved1 = h.get_u32();
    if (reserved0 != 0 || reserved1 != 0) throw decode_error(call, "reserved bytes are not zero");
    if (rank != params_.rank) {
      throw decode_error(call, "a state of rank " + std::to_string(rank) +
                                   ", this codec has rank " + std::to_string(params_.rank));
    }
    const std::uint64_t n = h.get_u64(), rows = h.get_u64(), cols = h.get_u64();
    const std::uint64_t steps = h.get_u64();
    if (!sized) {
      if (n != 0 || rows != 0 || cols != 0 || steps != 0 || low_rank) {
        throw decode_error(call, "an unsized state with a size, shape or steps");
      }
      r.expect_end();
      reset();
      return;
    }
    // Divided, never multiplied: n comes from the bytes (and no more than the bytes hold
    // is allocated).
    if (n > r.remaining() / 4 && ef) {
      throw decode_error(call, "truncated: a residual of " + std::to_string(n) +
                                   " elements does not fit in the " +
                                   std::to_string(r.remaining()) + " bytes left");
    }
    // No tensor is this large; the cap bounds the work of checking the shape (√n).
    if (n > powersgd_max_state_elements) {
      throw decode_error(call, "element count " + std::to_string(n) + " is above 2^40");
    }
    const auto count = static_cast<std::size_t>(n);
    if (!shape_fits(count) || shape(count) != powersgd_shape{rows, cols}) {
      throw decode_error(call, "shape " + std::to_string(rows) + " × " + std::to_string(cols) +
                                   " for " + std::to_string(n) +
                                   " elements, this codec views them as " + shape_text(count));
    }
    if (low_rank != powersgd_compresses({rows, cols}, rank)) {
      throw decode_error(call, std::string("the compressed-shape flag is ") +
                                   (low_rank ? "set" : "clear") + " for a " + shape_text(count) +
                                   " matrix of rank " + std::to_string(rank));
    }
    const std::size_t q_floats = low_rank ? static_cast<std::size_t>(cols) * rank : 0;
    const std::size_t e_floats = ef ? count : 0;
    if (q_floats > r.remaining() / 4 || e_floats > r.remaining() / 4 - q_floats) {
      throw decode_error(call, "truncated: Q and the residual need " +
                                   std::to_string(4 * (q_floats + e_floats)) + " bytes, " +
                                   std::to_string(r.remaining()) + " left");
    }
    const std::span<const std::byte> qb = r.take(4 * q_floats);
    const std::span<const std::byte> eb = r.take(4 * e_floats);
    r.expect_end();
    if (const std::size_t i = detail::psgd_first_nonfinite(qb.data(), q_floats); i < q_floats) {
      throw decode_error(call, "non-finite Q at index " + std::to_string(i));
    }
    // The warm start is stored with unit columns (commit_warm_start): anything else is not
    // a state this codec wrote.
    for (std::size_t k = 0; k < (low_rank ? rank : 0); ++k) {
      double sq = 0.0;
      for (std::size_t j = 0; j < cols; ++j) {
        const double v = detail::psgd_load(qb.data(), k * cols + j);
        sq += v * v;
      }
      if (!(std::fabs(sq - 1.0) <= 1e-3)) {
        throw decode_error(call, "warm start column " + std::to_string(k) + " has norm " +
                                     std::to_string(std::sqrt(sq)) + ", expected 1");
      }
    }
    if (const std::size_t i = detail::psgd_first_unsendable(eb.data(), e_floats); i < e_floats) {
      const float v = detail::psgd_load(eb.data(), i);
      if (!std::isfinite(v)) {
        throw decode_error(call, "non-finite residual at index " + std::to_string(i));
      }
      throw decode_error(call, "residual of " + std::to_string(v) + " at index " +
                                   std::to_string(i) +
                                   ": at or beyond ±2^127, more than any payload carries "
                                   "(every encode would overflow f32)");
    }
    powersgd_codec next(params_);
    next.resize(count);
    if (q_floats != 0) std::memcpy(next.q_.data(), qb.data(), qb.size());
    if (e_floats != 0) std::memcpy(next.residual_.data(), eb.data(), eb.size());
    next.steps_ = steps;
    *this = std::move(next);
  }

 private:
  enum class phase : unsigned char { idle, p_done, q_done };

  // The factors' alignment in a workspace (encode's own scratch included).
  static constexpr std::size_t factor_align = 64;

  std::size_t factor_scratch_bytes(powersgd_shape s) const noexcept {
    return factor_align - 1 + 4 * std::size_t{params_.rank} * (s.rows + s.cols);
  }
  // P (rows·r floats) in `ws`, at its first 64-byte boundary; this worker's Q follows.
  static float* factor_scratch(std::span<std::byte> ws) noexcept {
    const auto addr = reinterpret_cast<std::uintptr_t>(ws.data());
    return reinterpret_cast<float*>(ws.data() +
                                    (factor_align - addr % factor_align) % factor_align);
  }

  // One step of encode, the factors in *workspace (checked) or, without one, in scratch_.
  std::size_t encode_step(host_view<const float> in, std::span<std::byte> out,
                          const std::span<std::byte>* workspace) {
    static constexpr const char* call = "powersgd_codec::encode";
    const std::size_t n = in.size();
    check_size(n, call);
    const std::size_t need = max_encoded_bytes(n);
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    if (workspace != nullptr && workspace->size() < workspace_bytes(n)) {
      detail::throw_invalid_argument(call, "workspace of " + std::to_string(workspace->size()) +
                                               " bytes, workspace_bytes(" + std::to_string(n) +
                                               ") is " + std::to_string(workspace_bytes(n)));
    }
    const bool first = prepare(n);
    try {
      phase_ = phase::idle;
      if (!low_rank_) return encode_uncompressed(in, out, call);
      const std::size_t r = params_.rank;
      float* const p = factor_scratch(workspace != nullptr ? *workspace : scratch_);
      float* const q = p + rows_ * r;
      run_p_pass(in.data(), p, call);
      orthogonalize(p);
      run_q_pass(in.data(), p, q, call);
      wire_writer w(out, call);
      write_params(w, n, r, rows_, cols_, 4 * r * (rows_ + cols_));
      w.put_bytes(std::as_bytes(std::span<const float>(p, rows_ * r)));
      w.put_bytes(std::as_bytes(std::span<const float>(q, cols_ * r)));
      commit_warm_start(q);
      defer_residual(p, q);  // against exactly what decode gives
      ++steps_;
      return w.position();
    } catch (...) {
      if (first) reset();
      throw;
    }
  }

  bool shape_fits(std::size_t n) const noexcept {
    return params_.rows == 0 || params_.rows * params_.cols == n;
  }
  std::size_t body_floats(std::size_t n) const noexcept {
    if (!compresses(n)) return n;
    const powersgd_shape s = shape(n);
    return params_.rank * (s.rows + s.cols);
  }
  std::string shape_text(std::size_t n) const {
    if (!shape_fits(n)) return "(no shape holds them)";
    const powersgd_shape s = shape(n);
    return std::to_string(s.rows) + " × " + std::to_string(s.cols);
  }

  // Throws invalid_argument unless n elements fit the state (when sized) and the shape.
  void check_size(std::size_t n, const char* call) const {
    if (sized_ && n != n_) {
      detail::throw_invalid_argument(call, "input has " + std::to_string(n) +
                                               " elements, the state " + std::to_string(n_) +
                                               "; call reset() or resize() to change the size");
    }
    (void)shape(n);
  }
  // Sizes the state on first use (after check_size); returns whether it did.
  bool prepare(std::size_t n) {
    if (sized_) return false;
    resize(n);
    return true;
  }

  void check_turn(phase want, std::size_t n, const char* call) const {
    if (phase_ != want) {
      detail::throw_invalid_argument(
          call, want == phase::p_done ? "out of turn: call compute_p first"
                                      : "out of turn: call compute_p, then compute_q, first");
    }
    if (n != n_) {
      detail::throw_invalid_argument(call, "input has " + std::to_string(n) +
                                               " elements, compute_p had " + std::to_string(n_));
    }
  }
  static void check_floats(std::size_t have, std::size_t want, const char* what, const char* call) {
    if (have != want) {
      detail::throw_invalid_argument(call, std::string(what) + " buffer of " +
                                               std::to_string(have) + " floats, expected " +
                                               std::to_string(want));
    }
  }
  static void check_finite(host_view<const float> v, const char* what, const char* call) {
    if (const std::size_t i = detail::psgd_first_nonfinite(v.data(), v.size()); i < v.size()) {
      detail::throw_invalid_argument(call, std::string(what) + " holds " + std::to_string(v[i]) +
                                               " at index " + std::to_string(i));
    }
  }

  detail::psgd_pass pass_for(const float* g) noexcept {
    detail::psgd_pass a;
    a.g = g;
    a.e = params_.error_feedback ? residual_.data() : nullptr;
    a.zero = params_.policy == nonfinite_policy::zero;
    a.rows = rows_;
    a.cols = cols_;
    a.r = params_.rank;
    return a;
  }

  // The first index where g + e is not finite, or n_.
  std::size_t first_nonfinite_input(const float* g) const noexcept {
    settle(false);
    const float* e = params_.error_feedback ? residual_.data() : nullptr;
    std::size_t i = 0;
    while (i < n_ && std::isfinite(g[i] + (e ? e[i] : 0.0f))) ++i;
    return i;
  }
  [[noreturn]] void reject_nonfinite(const float* g, const char* call) const {
    const std::size_t i = std::min(first_nonfinite_input(g), n_ - 1);
    const std::string what = std::isfinite(g[i])
                                 ? "input plus residual overflows f32 at index "
                                 : "non-finite value " + std::to_string(g[i]) + " at index ";
    detail::throw_invalid_argument(call, what + std::to_string(i));
  }

  // P = (g + e) Q into p (rows·r), checked.
  void run_p_pass(const float* g, float* p, const char* call) {
    detail::psgd_pass a = pass_for(g);
    a.q = q_.data();
    a.p_acc = p;
    if (params_.error_feedback) {
      a.m = m_.data();
      if (deferred_) {
        a.pp = p_deferred_.data();
        a.pq = q_deferred_.data();
      }
    }
    detail::psgd_p_pass(a);
    const std::size_t m = rows_ * params_.rank;
    if (detail::psgd_first_nonfinite(p, m) < m) {
      // A non-finite input makes P non-finite: look for one only now (never under `zero`).
      if (!a.zero && first_nonfinite_input(g) < n_) reject_nonfinite(g, call);
      detail::throw_invalid_argument(call, "the factor P = (g + e) Q overflows f32");
    }
  }

  // Q = (g + e)ᵀ P̂ into q (cols·r), checked; with error feedback from the M that the P
  // pass wrote.
  void run_q_pass(const float* g, const float* p, float* q, const char* call) {
    detail::psgd_pass a = pass_for(g);
    if (params_.error_feedback) {
      a.g = m_.data();
      a.e = nullptr;
      a.zero = false;  // M is finite (zeroed under `zero` already)
    }
    a.p = p;
    a.q_acc = q;
    detail::psgd_q_pass(a);
    const std::size_t m = cols_ * params_.rank;
    if (detail::psgd_first_nonfinite(q, m) < m ||
        detail::psgd_product_bound(p, rows_, q, cols_, params_.rank) >= detail::psgd_safe_bound) {
      detail::throw_invalid_argument(call, "the factor Q = (g + e)ᵀ P overflows f32");
    }
  }

  // Ends a step with error feedback: M becomes the residual's base, deferred against P̂ (p)
  // and this worker's Q (q). No allocation, no throw.
  void defer_residual(const float* p, const float* q) noexcept {
    if (!params_.error_feedback) return;
    residual_.swap(m_);
    std::copy(p, p + p_deferred_.size(), p_deferred_.begin());
    std::copy(q, q + q_deferred_.size(), q_deferred_.begin());
    deferred_ = true;
  }
  // Settles a deferred residual in place (the same bits as settling at once); returns Σ e²
  // where `norm` is set and there was something to settle, else 0.
  double settle(bool norm) const noexcept {
    if (!deferred_) return 0.0;
    detail::psgd_pass a;
    a.e = residual_.data();
    a.rows = rows_;
    a.cols = cols_;
    a.r = params_.rank;
    a.pp = p_deferred_.data();
    a.pq = q_deferred_.data();
    const double s = detail::psgd_settle(a, norm);
    deferred_ = false;
    return s;
  }

  // p (rows × r, column-major) <- the thin Q of its Householder QR: orthonormal columns
  // whatever p's rank (a zero column gives a unit vector, not a NaN). Each column is first
  // scaled by a power of two to a largest magnitude in [1, 2): exact, it leaves the thin Q
  // as it is and keeps the norms far from overflow and underflow. Eigen's QR works in the
  // storage sized by resize(); the public householderQ() product would allocate.
  void orthogonalize(float* p) {
    for (std::size_t k = 0; k < params_.rank; ++k) detail::psgd_pow2_prescale(p + k * rows_, rows_);
    Eigen::Map<Eigen::MatrixXf> pm(p, static_cast<Eigen::Index>(rows_),
                                   static_cast<Eigen::Index>(params_.rank));
    qr_.compute(pm);
    pm.setIdentity();
    qr_.householderQ().applyThisOnTheLeft(pm, qr_ws_);
  }

  // out[0, len) <- g + e over [i0, i0 + len), non-finite values zeroed under `zero`; returns
  // whether a value is non-finite (never under `zero`).
  bool load_uncompressed(const float* g, std::size_t i0, std::size_t len, float* out) const {
    const bool zero = params_.policy == nonfinite_policy::zero;
    const float* e = params_.error_feedback ? residual_.data() + i0 : nullptr;
    bool bad = false;
    for (std::size_t i = 0; i < len; ++i) {
      float v = zero ? detail::psgd_finite_or_zero(g[i0 + i]) : g[i0 + i];
      if (e != nullptr) v += e[i];
      if (zero) v = detail::psgd_finite_or_zero(v);
      bad |= !std::isfinite(v);
      out[i] = v;
    }
    return bad;
  }

  std::size_t encode_uncompressed(host_view<const float> in, std::span<std::byte> out,
                                  const char* call) {
    const std::size_t n = in.size();
    wire_writer w(out, call);
    write_params(w, n, 0, 1, n, 4 * n);
    std::byte* body = w.take(4 * n).data();
    float buf[detail::psgd_tile];  // floats, then bytes: the payload has no float alignment
    for (std::size_t i0 = 0; i0 < n; i0 += detail::psgd_tile) {
      const std::size_t len = std::min(detail::psgd_tile, n - i0);
      if (load_uncompressed(in.data(), i0, len, buf)) reject_nonfinite(in.data(), call);
      std::memcpy(body + 4 * i0, buf, 4 * len);
    }
    std::fill(residual_.begin(), residual_.end(), 0.0f);
    ++steps_;
    return w.position();
  }

  static void write_params(wire_writer& w, std::size_t n, std::uint32_t rank, std::uint64_t rows,
                           std::uint64_t cols, std::uint64_t body_bytes) {
    std::byte params[powersgd_params_bytes] = {};
    wire_writer pw(params, "powersgd_codec::encode");
    pw.put_u8(rank == 0 ? 1 : 0);
    pw.put_u8(0);
    pw.put_u16(0);
    pw.put_u32(rank);
    pw.put_u64(rows);
    pw.put_u64(cols);
    write_header(w, id, dtype::f32, n, params, body_bytes);
  }

  // Column k of the warm start from the seed: uniform in [−1, 1) (no libm call, so every
  // worker draws the same bits), scaled to unit norm.
  void draw_column(std::size_t k, std::uint64_t step) {
    const philox_stream s(params_.seed, static_cast<std::uint32_t>(step),
                          static_cast<std::uint32_t>(step >> 32), static_cast<std::uint32_t>(k));
    float* qk = q_.data() + k * cols_;
    for (std::size_t j = 0; j < cols_; ++j) qk[j] = 2.0f * philox_uniform(s.at(j)) - 1.0f;
    normalize_column(qk);
  }
  // Scales a column to unit norm; returns false for a zero column (left as it is).
  bool normalize_column(float* qk) const noexcept { return detail::psgd_unit_column(qk, cols_); }
  // The warm start <- q (the summed Q), columns at unit norm; a zero column drawn afresh,
  // keyed by the step, the same on every worker.
  void commit_warm_start(const float* q) {
    if (q != q_.data()) std::copy(q, q + q_.size(), q_.begin());
    for (std::size_t k = 0; k < params_.rank; ++k) {
      if (!normalize_column(q_.data() + k * cols_)) draw_column(k, steps_ + 1);
    }
  }

  template <bool Add>
  void decode_into(std::span<const std::byte> payload, host_view<float> out,
                   const char* call) const {
    wire_reader rd(payload, call);
    const wire_header h = read_header(rd, id);
    check_dtype(h, dtype::f32, call);
    check_count(h, out.size(), call);
    if (h.params.size() != powersgd_params_bytes) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                   std::to_string(powersgd_params_bytes));
    }
    wire_reader pr(h.params, call);
    const std::uint8_t flags = pr.get_u8();
    const std::uint8_t z0 = pr.get_u8();
    const std::uint16_t z1 = pr.get_u16();
    const std::uint32_t rank = pr.get_u32();
    const std::uint64_t rows = pr.get_u64(), cols = pr.get_u64();
    if ((flags & ~1u) != 0) throw decode_error(call, "unknown flags " + std::to_string(flags));
    if (z0 != 0 || z1 != 0) throw decode_error(call, "reserved parameter bytes are not zero");
    const std::size_t n = out.size();
    const std::string shape_txt = std::to_string(rows) + " × " + std::to_string(cols);
    if ((flags & 1u) != 0) {
      if (rank != 0) {
        throw decode_error(call, "rank " + std::to_string(rank) + " in an uncompressed payload");
      }
      if (rows != 1 || cols != n) {
        throw decode_error(call, "shape " + shape_txt + " in an uncompressed payload of " +
                                     std::to_string(n) + " elements, expected 1 × " +
                                     std::to_string(n));
      }
      check_body(h.body_bytes, n, call);
      const std::byte* body = rd.take(h.body_bytes).data();
      if (const std::size_t i = detail::psgd_first_nonfinite(body, n); i < n) {
        throw decode_error(call, "non-finite value at index " + std::to_string(i));
      }
      for (std::size_t i = 0; i < n; ++i) {
        if constexpr (Add) {
          out[i] += detail::psgd_load(body, i);
        } else {
          out[i] = detail::psgd_load(body, i);
        }
      }
      return;
    }
    if (rank == 0) throw decode_error(call, "rank 0 in a compressed payload");
    // Divided, never multiplied: rows and cols come from the bytes.
    if (rows == 0 || cols == 0 || n % rows != 0 || n / rows != cols) {
      throw decode_error(call, "shape " + shape_txt + " does not hold the " + std::to_string(n) +
                                   " elements of the output");
    }
    const powersgd_shape s{static_cast<std::size_t>(rows), static_cast<std::size_t>(cols)};
    if (!powersgd_compresses(s, rank)) {
      throw decode_error(call, "rank " + std::to_string(rank) + " does not compress a " +
                                   shape_txt + " matrix (r·(rows + cols) ≥ rows·cols)");
    }
    // r < min(rows, cols): r·(rows + cols) < 2n, no overflow.
    const std::size_t pf = s.rows * rank, qf = s.cols * rank;
    check_body(h.body_bytes, pf + qf, call);
    const std::byte* body = rd.take(h.body_bytes).data();
    if (const std::size_t i = detail::psgd_first_nonfinite(body, pf); i < pf) {
      throw decode_error(call, "non-finite P at index " + std::to_string(i));
    }
    if (const std::size_t i = detail::psgd_first_nonfinite(body + 4 * pf, qf); i < qf) {
      throw decode_error(call, "non-finite Q at index " + std::to_string(i));
    }
    if (detail::psgd_product_bound(body, s.rows, body + 4 * pf, s.cols, rank) >=
        detail::psgd_safe_bound) {
      throw decode_error(call, "factors whose product P Qᵀ overflows f32");
    }
    detail::psgd_decode<Add>(body, body + 4 * pf, s.rows, s.cols, rank, out.data());
  }

  static void check_body(std::uint64_t body_bytes, std::size_t floats, const char* call) {
    if (body_bytes != 4 * static_cast<std::uint64_t>(floats)) {
      throw decode_error(call, "body of " + std::to_string(body_bytes) + " bytes, expected " +
                                   std::to_string(4 * static_cast<std::uint64_t>(floats)));
    }
  }

  powersgd_params params_;
  std::size_t n_ = 0, rows_ = 0, cols_ = 0;
  bool low_rank_ = false;
  bool sized_ = false;
  phase phase_ = phase::idle;
  std::uint64_t steps_ = 0;
  std::vector<float> q_;        // warm start, cols × r
  std::vector<float> q_local_;  // the round API: this worker's Q of the step, cols × r
  // encode's own scratch for P (rows × r) and this worker's Q (cols × r): what a caller's
  // workspace holds instead (workspace_bytes).
  std::vector<std::byte> scratch_;
  // Error feedback, n: the residual, or where deferred_ its base M, the residual being
  // finite_or_zero(M − P̂ Qᵀ) with P̂ = p_deferred_ and Q = q_deferred_ (this worker's).
  // Mutable: reading the residual settles it in place, which changes no value.
  mutable std::vector<float> residual_;
  mutable bool deferred_ = false;
  std::vector<float> m_;           // error feedback: M = g + e of the step in progress, n
  std::vector<float> p_deferred_;  // the last step's P̂, rows × r (error feedback)
  std::vector<float> q_deferred_;  // the last step's own Q, cols × r (error feedback)
  Eigen::HouseholderQR<Eigen::MatrixXf> qr_;
  Eigen::Matrix<float, 1, Eigen::Dynamic> qr_ws_;
};

}  // namespace v0
}  // namespace gradcomm

#else  // GRADCOMM_HAS_EIGEN

namespace gradcomm {
inline namespace v0 {
namespace detail {
template <bool HasEigen = false>
struct powersgd_needs_eigen {
  static_assert(HasEigen,
                "gradcomm::powersgd_codec needs Eigen: link gradcomm::eigen (CMake; Debian package "
                "libeigen3-dev), which defines GRADCOMM_HAS_EIGEN=1");
};
}  // namespace detail
/// Without Eigen (GRADCOMM_HAS_EIGEN 0): a stub whose use stops compilation, saying so.
using powersgd_codec = detail::powersgd_needs_eigen<>;
}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_EIGEN

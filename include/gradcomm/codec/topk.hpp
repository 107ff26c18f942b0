// gradcomm/codec/topk.hpp — topk_codec (the k largest |g|, exact) and approx_topk_codec
// (Deep Gradient Compression's sampled threshold), both writing the sparse payload
// (sparse_format.hpp, codec id topk).
//
//   gradcomm::topk_codec c({.ratio = 0.01});               // the 1 % largest |g|
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));
//   c.decode_add(wire, sum);                               // adds at the indices only
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/detail/topk_cpu.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

namespace gradcomm {
inline namespace v0 {

namespace detail {
/// The caller-workspace calls of a top-k codec D (D's private encode_with(in, out, scratch,
/// workspace) and scratch_needed(n) do the work), brought in by D beside its own encode.
template <class D>
class sparse_workspace_calls {
 public:
  /// encode(in, out)'s bytes, with the caller's `workspace` (at least
  /// workspace_bytes(in.size()) bytes, any alignment) as the scratch: allocates nothing.
  /// Throws invalid_argument naming both sizes when the workspace is smaller, and as
  /// encode otherwise.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out,
                     std::span<std::byte> workspace) {
    sparse_scratch s;
    return static_cast<D&>(*this).encode_with(in, out, s, &workspace);
  }
  /// Bytes of caller-owned scratch an encode of n elements needs (the workspace form of
  /// encode; codec.hpp, Codec requirement 8).
  std::size_t workspace_bytes(std::size_t n) const noexcept {
    return static_cast<const D&>(*this).scratch_needed(n).bytes();
  }
};
}  // namespace detail

/// Parameters of topk_codec.
///
///   gradcomm::topk_codec c({.ratio = 0.001});
struct topk_params {
  double ratio = 0.01;  ///< k = ratio × n (sparse_count), in (0, 1]
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

/// Exact top-k: the k = sparse_count(n, ratio) values of largest |g|, ties to the lower
/// index (as a stable sort by decreasing |g| would take them), as a sparse payload. No full
/// sort: a stratified sample bounds the k-th magnitude from below, one pass keeps the
/// candidates above it (a few per cent more than k) and std::nth_element on those
/// finishes; where the sample misleads (many equal magnitudes) a radix selection on the
/// magnitude bits (three histogram passes) and a pass that breaks ties by index take over.
/// Not linear, not fixed size (the index form depends on the data), stateless.
///
/// NaN and ±Inf: rejected by default (invalid_argument naming the first index); under
/// nonfinite_policy::zero they count as 0 (and are sent as 0 if chosen).
///
/// Scratch: encode(in, out) keeps its scratch in the codec (it allocates only when a
/// selection is larger than every earlier one). encode(in, out, workspace) takes the
/// caller's scratch instead, workspace_bytes(n) bytes for n elements (as CUB's two-phase
/// calls do), and allocates nothing; the bytes are the same.
///
///   std::vector<std::byte> ws(c.workspace_bytes(g.size()));  // once, for this size
///   wire.resize(c.encode(g, wire, ws));
///
///   gradcomm::error_feedback<gradcomm::topk_codec> ef(gradcomm::topk_codec({.ratio = 0.01}));
///   std::vector<std::byte> wire(ef.max_encoded_bytes(n));
///   wire.resize(ef.encode(g, wire));  // what is not sent waits in the residual
class topk_codec : public host_codec_calls<topk_codec>,
                   public detail::sparse_workspace_calls<topk_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = false};
  static constexpr codec_id id = codec_id::topk;
  /// The payload lists (index, value) entries (codec.hpp, T7).
  static constexpr bool sparse_entries = true;

  /// Throws invalid_argument for a ratio outside (0, 1] or an unknown policy.
  explicit topk_codec(topk_params p = {}) : p_(p) {
    detail::sparse_check_ratio("topk_codec", p.ratio);
    detail::sparse_check_policy("topk_codec", p.nonfinite);
  }

  const topk_params& params() const noexcept { return p_; }
  double ratio() const noexcept { return p_.ratio; }
  /// Changes k's ratio (DGC's warm-up does); throws invalid_argument outside (0, 1].
  void set_ratio(double r) {
    detail::sparse_check_ratio("topk_codec::set_ratio", r);
    p_.ratio = r;
  }
  /// The number of values an encode of n elements sends.
  std::size_t selected(std::size_t n) const noexcept { return sparse_count(n, p_.ratio); }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return max_encoded_bytes(n, p_.ratio);
  }
  /// The bound at another ratio (for schedules that change it).
  std::size_t max_encoded_bytes(std::size_t n, double ratio) const noexcept {
    return sparse_max_encoded_bytes(n, sparse_count(n, ratio));
  }

  /// Writes the payload of `in` into `out` (at least max_encoded_bytes(in.size()) bytes)
  /// and returns its size. Throws buffer_too_small, or invalid_argument for a nonfinite
  /// value (policy reject or pass); writes nothing to `out` then.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode_with(in, out, s_, nullptr);
  }

  /// out = the payload's values at their indices, 0 elsewhere; any topk payload (exact or
  /// approximate). Throws decode_error naming the defect before writing anything.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::sparse_decode<false>(payload, id, out, "topk_codec::decode");
  }
  /// acc[i] += value at every index i of the payload, nothing elsewhere.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::sparse_decode<true>(payload, id, acc, "topk_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<topk_codec>::encode;
  /// encode(in, out, workspace) and workspace_bytes(n): sparse_workspace_calls.
  using detail::sparse_workspace_calls<topk_codec>::encode;
  using host_codec_calls<topk_codec>::decode;
  using host_codec_calls<topk_codec>::decode_add;

 private:
  friend class detail::sparse_workspace_calls<topk_codec>;

  // encode into `s`, or into the caller's workspace bound to a fresh `s`.
  std::size_t encode_with(host_view<const float> in, std::span<std::byte> out,
                          detail::sparse_scratch& s, const std::span<std::byte>* workspace) {
    static constexpr const char* call = "topk_codec::encode";
    const std::size_t n = in.size();
    detail::sparse_check_elements(n, call);
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const std::size_t k = selected(n);
    if (workspace != nullptr) {
      detail::sparse_bind_workspace(scratch_needed(n), s, *workspace, n, call);
    }
    detail::sparse_top_k(in.data(), n, k, p_.nonfinite, s, call);
    return detail::sparse_write(id, n, s.index.data(), s.value.data(), k, out, call);
  }

  detail::sparse_workspace scratch_needed(std::size_t n) const noexcept {
    return detail::sparse_top_k_workspace(n, selected(n));
  }

  topk_params p_;
  detail::sparse_scratch s_;  // encode's scratch, kept (the workspace overload uses none)
};

/// Parameters of approx_topk_codec.
///
///   gradcomm::approx_topk_codec c({.ratio = 0.001, .tolerance = 0.2});
struct approx_topk_params {
  double ratio = 0.01;     ///< target k = ratio × n (sparse_count), in (0, 1]
  double tolerance = 0.1;  ///< the count sent stays within k ± floor(tolerance × k); [0, 1)
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

/// Approximate top-k as in Deep Gradient Compression: a threshold estimated from a
/// stratified sample of the magnitudes (about 1000 expected hits above it), then one pass
/// that sends every value at or above it. When the count misses k ± floor(tolerance × k)
/// (rare: the sample's estimate is good to a few per cent), the threshold is re-estimated
/// from the sample and the count just seen, and the pass repeats (three passes at most);
/// after that, or when equal magnitudes make every threshold miss, the exact selection
/// (topk_codec's) sends k. So the count always lands in the tolerance. The payload is
/// topk_codec's (codec id topk): either decoder reads it. Not linear, not fixed size,
/// stateless; NaN and ±Inf as topk_codec.
/// Scratch as topk_codec: its own, or the caller's workspace of workspace_bytes(n) bytes
/// (encode(in, out, workspace), no allocation, the same bytes).
///
///   gradcomm::approx_topk_codec c({.ratio = 0.01});
///   std::vector<std::byte> wire(c.max_encoded_bytes(n));
///   wire.resize(c.encode(g, wire));
///   auto [lo, hi] = c.count_bounds(n);  // lo <= inspect_sparse(wire).selected <= hi
class approx_topk_codec : public host_codec_calls<approx_topk_codec>,
                          public detail::sparse_workspace_calls<approx_topk_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = false};
  static constexpr codec_id id = codec_id::topk;
  /// The payload lists (index, value) entries (codec.hpp, T7).
  static constexpr bool sparse_entries = true;

  /// Throws invalid_argument for a ratio outside (0, 1], a tolerance outside [0, 1) or an
  /// unknown policy.
  explicit approx_topk_codec(approx_topk_params p = {}) : p_(p) {
    constexpr const char* call = "approx_topk_codec";
    detail::sparse_check_ratio(call, p.ratio);
    if (!(p.tolerance >= 0.0 && p.tolerance < 1.0)) {
      detail::throw_invalid_argument(
          call, "tolerance " + std::to_string(p.tolerance) + " outside [0, 1)");
    }
    detail::sparse_check_policy(call, p.nonfinite);
  }

  const approx_topk_params& params() const noexcept { return p_; }
  double ratio() const noexcept { return p_.ratio; }
  /// Changes the target ratio (DGC's warm-up does); throws invalid_argument outside (0, 1].
  void set_ratio(double r) {
    detail::sparse_check_ratio("approx_topk_codec::set_ratio", r);
    p_.ratio = r;
  }

  /// The least and the most values an encode of n elements sends.
  std::pair<std::size_t, std::size_t> count_bounds(std::size_t n) const noexcept {
    return bounds(n, p_.ratio);
  }
  /// Threshold passes over the input the last encode made: 1 usually, up to 3 after
  /// re-estimates (the exact fallback's passes not counted).
  unsigned last_passes() const noexcept { return passes_; }
  /// Whether the last encode fell back to the exact selection.
  bool last_exact() const noexcept { return exact_; }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return max_encoded_bytes(n, p_.ratio);
  }
  /// The bound at another ratio (for schedules that change it).
  std::size_t max_encoded_bytes(std::size_t n, double ratio) const noexcept {
    return sparse_max_encoded_bytes(n, bounds(n, ratio).second);
  }

  /// Writes the payload of `in` into `out` (at least max_encoded_bytes(in.size()) bytes)
  /// and returns its size. Throws buffer_too_small, or invalid_argument for a nonfinite
  /// value (policy reject or pass); writes nothing to `out` then.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode_with(in, out, s_, nullptr);
  }
  /// out = the payload's values at their indices, 0 elsewhere (any topk payload). Throws
  /// decode_error naming the defect before writing anything.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::sparse_decode<false>(payload, id, out, "approx_topk_codec::decode");
  }
  /// acc[i] += value at every index i of the payload, nothing elsewhere.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::sparse_decode<true>(payload, id, acc, "approx_topk_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<approx_topk_codec>::encode;
  /// encode(in, out, workspace) and workspace_bytes(n): sparse_workspace_calls.
  using detail::sparse_workspace_calls<approx_topk_codec>::encode;
  using host_codec_calls<approx_topk_codec>::decode;
  using host_codec_calls<approx_topk_codec>::decode_add;

 private:
  friend class detail::sparse_workspace_calls<approx_topk_codec>;

  // encode into `s`, or into the caller's workspace bound to a fresh `s`.
  std::size_t encode_with(host_view<const float> in, std::span<std::byte> out,
                          detail::sparse_scratch& s, const std::span<std::byte>* workspace) {
    static constexpr const char* call = "approx_topk_codec::encode";
    const std::size_t n = in.size();
    detail::sparse_check_elements(n, call);
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const float* g = in.data();
    const std::size_t k = sparse_count(n, p_.ratio);
    const auto [lo, hi] = count_bounds(n);
    if (workspace != nullptr) {
      detail::sparse_bind_workspace(scratch_needed(n), s, *workspace, n, call);
    }
    passes_ = 0;
    exact_ = false;
    if (k != 0 && k != n) {
      const std::size_t m = detail::sparse_sample_size(n, k);
      detail::sparse_sample_keys(g, n, m, p_.nonfinite, s);
      const double scale = static_cast<double>(m) / static_cast<double>(n);
      std::size_t r = std::clamp<std::size_t>(
          static_cast<std::size_t>(std::llround(static_cast<double>(k) * scale)), 1, m);
      for (int attempt = 0; attempt < 3; ++attempt) {
        // Zeros are never worth a threshold pass: at least the smallest nonzero key.
        const std::int32_t t = std::max<std::int32_t>(1, detail::sparse_sample_rank(s, m, r));
        ++passes_;
        const detail::sparse_compaction c =
            detail::sparse_compact(g, n, {.key = t}, hi, p_.nonfinite, s, call);
        if (c.total >= lo && c.total <= hi) {
          return detail::sparse_write(id, n, s.index.data(), s.value.data(), c.total, out, call);
        }
        // The sample's rank that would have given k, had the count scaled with it.
        const double want = static_cast<double>(r) * static_cast<double>(k) /
                            static_cast<double>(std::max<std::size_t>(c.total, 1));
        const std::size_t next = std::clamp<std::size_t>(
            static_cast<std::size_t>(std::llround(std::min(want, static_cast<double>(m)))), 1, m);
        if (next == r) break;
        r = next;
      }
    }
    exact_ = k != n;
    detail::sparse_top_k(g, n, k, p_.nonfinite, s, call);
    return detail::sparse_write(id, n, s.index.data(), s.value.data(), k, out, call);
  }

  // The threshold passes' sample and pairs, then the exact fallback's.
  detail::sparse_workspace scratch_needed(std::size_t n) const noexcept {
    const std::size_t k = sparse_count(n, p_.ratio);
    detail::sparse_workspace w = detail::sparse_top_k_workspace(n, k);
    if (k != 0 && k != n) {
      w.cover({.pairs = std::min(count_bounds(n).second, n) + 16,
               .keys = detail::sparse_sample_size(n, k)});
    }
    return w;
  }

  std::pair<std::size_t, std::size_t> bounds(std::size_t n, double ratio) const noexcept {
    const std::size_t k = sparse_count(n, ratio);
    const auto slack = static_cast<std::size_t>(std::floor(p_.tolerance * static_cast<double>(k)));
    return {k - slack, std::min(n, k + slack)};
  }

  approx_topk_params p_;
  unsigned passes_ = 0;
  bool exact_ = false;
  detail::sparse_scratch s_;  // encode's scratch, kept (the workspace overload uses none)
};

}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/threshold.hpp — threshold_codec: the values above a threshold (absolute, or
// relative to max |g| or to the RMS), as a sparse payload (sparse_format.hpp).
//
//   gradcomm::threshold_codec c({.tau = 0.05f, .rule = gradcomm::threshold_rule::max_relative});
//   std::vector<std::byte> wire(c.max_encoded_bytes(n));
//   wire.resize(c.encode(g, wire));
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/codec/detail/threshold_math.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

/// What threshold_codec's τ is relative to (the effective threshold is computed per encode).
///
///   gradcomm::threshold_params p{.tau = 0.1f, .rule = gradcomm::threshold_rule::max_relative};
enum class threshold_rule : std::uint8_t {
  absolute = 0,      ///< |g| > τ
  max_relative = 1,  ///< |g| > τ × max |g|
  rms_relative = 2,  ///< |g| > τ × sqrt(mean g²)
};

/// Parameters of threshold_codec. The default (2.5 × RMS) sends about 1.2 % of Gaussian
/// values.
///
///   gradcomm::threshold_codec c({.tau = 1e-3f, .rule = gradcomm::threshold_rule::absolute});
struct threshold_params {
  float tau = 2.5f;  ///< finite, >= 0
  threshold_rule rule = threshold_rule::rms_relative;
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

/// Sends the values with |g| > τ (absolute, or relative to max |g| or to the RMS; computed
/// per encode, then rounded to f32), as a sparse payload (see the top of this header). Not
/// linear, not fixed size (k depends on the data), stateless. Encode is one pass for an
/// absolute τ, two for a relative one.
///
/// NaN and ±Inf follow `nonfinite` (default reject: encode throws invalid_argument naming
/// the first index; `zero` treats them as 0, never sent and left out of max and RMS).
///
///   gradcomm::threshold_codec c({.tau = 0.05f, .rule = gradcomm::threshold_rule::max_relative});
///   std::vector<std::byte> wire(c.max_encoded_bytes(n));  // k can be n: 4.125 n + 36 bytes
///   wire.resize(c.encode(g, wire));
///   c.decode(wire, out);  // g where |g| > τ, 0 elsewhere
class threshold_codec : public host_codec_calls<threshold_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = false};
  static constexpr codec_id id = codec_id::threshold;
  /// The payload lists (index, value) entries (codec.hpp, T7).
  static constexpr bool sparse_entries = true;

  /// Throws invalid_argument for a negative or non-finite τ or an unknown rule or policy.
  explicit threshold_codec(threshold_params p = {}) : p_(p) {
    constexpr const char* call = "threshold_codec";
    if (!(p.tau >= 0.0f) || !std::isfinite(p.tau)) {
      detail::throw_invalid_argument(call,
                                     "tau " + std::to_string(p.tau) + " is not finite and >= 0");
    }
    if (static_cast<unsigned>(p.rule) > 2)
      detail::throw_invalid_argument(call, "unknown threshold_rule");
    detail::sparse_check_policy(call, p.nonfinite);
  }

  const threshold_params& params() const noexcept { return p_; }
  /// The absolute threshold the last encode used.
  float last_threshold() const noexcept { return last_; }

  /// Every value may pass: 36 + 4 n + ceil(n / 8) bytes at most.
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return sparse_max_encoded_bytes(n, n);
  }

  /// Writes the payload of `in` into `out` (at least max_encoded_bytes(in.size()) bytes)
  /// and returns its size. Throws buffer_too_small, or invalid_argument for a nonfinite
  /// value (policy reject or pass); writes nothing to `out` then.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    static constexpr const char* call = "threshold_codec::encode";
    const std::size_t n = in.size();
    detail::sparse_check_elements(n, call);
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const float* g = in.data();
    // A relative τ takes one pass more, which also finds the nonfinite values (the
    // compaction finds them for an absolute one).
    double t = p_.tau;
    std::int32_t top = 0;
    if (p_.rule == threshold_rule::max_relative) {
      const detail::sparse_max_keys m = detail::sparse_max_key(g, n);
      top = m.all;
      t *= static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(m.finite)));
    } else if (p_.rule == threshold_rule::rms_relative) {
      const detail::sparse_squares sq = detail::sparse_sum_squares(g, n);
      top = sq.top;
      if (n != 0) t *= std::sqrt(sq.sum / static_cast<double>(n));
    }
    if (top >= detail::sparse_nonfinite_key && p_.nonfinite != nonfinite_policy::zero) {
      const std::size_t i = detail::sparse_find_nonfinite(g, n);
      detail::throw_nonfinite(call, i, g[i]);
    }
    last_ = static_cast<float>(t);
    const std::int32_t key = detail::threshold_select_key(last_);  // |g| > t
    const detail::sparse_compaction c =
        detail::sparse_compact(g, n, {.key = key}, n, p_.nonfinite, s_, call);
    return detail::sparse_write(id, n, s_.index.data(), s_.value.data(), c.total, out, call);
  }

  /// out = the payload's values at their indices, 0 elsewhere. Throws decode_error naming
  /// the defect before writing anything.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    detail::sparse_decode<false>(payload, id, out, "threshold_codec::decode");
  }
  /// acc[i] += value at every index i of the payload, nothing elsewhere. Throws
  /// decode_error naming the defect before writing anything.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    detail::sparse_decode<true>(payload, id, acc, "threshold_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<threshold_codec>::encode;
  using host_codec_calls<threshold_codec>::decode;
  using host_codec_calls<threshold_codec>::decode_add;

 private:
  threshold_params p_;
  float last_ = 0.0f;
  detail::sparse_scratch s_;
};

}  // namespace v0
}  // namespace gradcomm

// gradcomm/codec/randomk.hpp — randomk_codec: k values at indices drawn from a shared Philox
// key, so that only the key and the values travel; randomk_indices tells which.
//
//   gradcomm::randomk_codec c({.ratio = 0.01});
//   c.set_stream({.seed = 42, .step = it, .bucket = b});  // every rank alike
//   wire.resize(c.encode(g, wire));
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/randomk_cpu.hpp>
#include <gradcomm/codec/detail/randomk_math.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/codec/sparse_format.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

/// Parameter bytes of a random-k payload.
inline constexpr std::size_t randomk_params_bytes = 32;
/// The most values random-k sends (two Philox words a value; a stream holds 2^34).
inline constexpr std::uint64_t randomk_max_selected = (std::uint64_t{1} << 33) - 2;

/// Parameters of randomk_codec.
///
///   gradcomm::randomk_codec c({.ratio = 0.01, .scale = true});  // unbiased
struct randomk_params {
  double ratio = 0.01;  ///< k = ratio × n (sparse_count), in (0, 1]
  bool scale = false;   ///< multiply the values by n / k, so that E[decoded] = g
  bool shared = true;   ///< the indices ignore the key's rank: the same on every rank
  nonfinite_policy nonfinite = nonfinite_policy::reject;  ///< `pass` acts as `reject`
};

/// The k indices random-k sends for n elements under `key` (the key as the payload carries
/// it), in stratum order: ascending but for one wrap-around. Throws invalid_argument for
/// k > n, k > randomk_max_selected or `out` shorter than k.
///
///   std::vector<std::uint64_t> idx(k);
///   gradcomm::randomk_indices(n, k, {.seed = 7, .step = it}, idx);  // the same on every rank
inline void randomk_indices(std::uint64_t n, std::uint64_t k, const stream_key& key,
                            std::span<std::uint64_t> out) {
  static constexpr const char* call = "randomk_indices";
  if (k > n || k > randomk_max_selected || out.size() < k) {
    detail::throw_invalid_argument(call, "k = " + std::to_string(k) +
                                             " of n = " + std::to_string(n) + " into " +
                                             std::to_string(out.size()) + " slots");
  }
  detail::randomk_for_each(n, k, key, nullptr,
                           [&](std::uint64_t j, std::uint64_t i) { out[j] = i; });
}

/// Random-k: k = sparse_count(n, ratio) values at indices drawn from Philox under a
/// stream_key that every rank shares (randomk_index: one uniform position in each of k
/// strata, all rotated by one uniform offset), so only the key and the values travel.
/// Every element is sent with probability exactly k / n (the rotation makes the strata's
/// unequal lengths even out), the k indices are distinct, and ranks with the same key
/// (seed, step, bucket; the rank too when `shared` is off) send the same indices. With
/// `scale`, values are multiplied by n / k: E[decoded] = g (products beyond the f32 range
/// saturate at ±FLT_MAX). Not linear (by the traits' definition), fixed size (56 + 4 k
/// bytes), stateless; a StochasticCodec.
///
/// Payload: header (codec id randomk, dtype f32, count n), 32 parameter bytes
///   offset 0  u64 seed, 8 u32 step, 12 u32 rank (0 when shared), 16 u32 bucket,
///   offset 20 u8 flags (bit 0: scaled; other bits zero), 21 three reserved zero bytes,
///   offset 24 u64 k (<= n, <= randomk_max_selected),
/// then k f32 values (finite), value j at index j of the key's selection.
///
/// NaN and ±Inf anywhere in the input (sent or not) are rejected by default, naming the
/// first index; under nonfinite_policy::zero they are sent as 0.
///
///   gradcomm::randomk_codec c({.ratio = 0.01});
///   c.set_stream({.seed = 42, .step = it, .bucket = b});  // every rank alike
///   std::vector<std::byte> wire(c.max_encoded_bytes(n));
///   wire.resize(c.encode(g, wire));
///   c.decode_add(wire, sum);  // the decoder needs no key: the payload has it
class randomk_codec : public host_codec_calls<randomk_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = true, .stateful = false};
  static constexpr codec_id id = codec_id::randomk;

  /// Throws invalid_argument for a ratio outside (0, 1] or an unknown policy.
  explicit randomk_codec(randomk_params p = {}) : p_(p) {
    detail::sparse_check_ratio("randomk_codec", p.ratio);
    detail::sparse_check_policy("randomk_codec", p.nonfinite);
  }

  const randomk_params& params() const noexcept { return p_; }
  double ratio() const noexcept { return p_.ratio; }
  /// Changes the ratio (DGC's warm-up does); throws invalid_argument outside (0, 1].
  void set_ratio(double r) {
    detail::sparse_check_ratio("randomk_codec::set_ratio", r);
    p_.ratio = r;
  }
  /// The number of values an encode of n elements sends.
  std::size_t selected(std::size_t n) const noexcept { return sparse_count(n, p_.ratio); }

  /// Keys the indices; the communicator sets step (and bucket) before each encode.
  void set_stream(stream_key k) noexcept { key_ = k; }
  stream_key stream() const noexcept { return key_; }
  /// The key the indices are drawn with (and the payload carries): stream() with rank 0
  /// when `shared`.
  stream_key index_key() const noexcept {
    stream_key k = key_;
    if (p_.shared) k.rank = 0;
    return k;
  }

  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    return max_encoded_bytes(n, p_.ratio);
  }
  /// The size at another ratio (for schedules that change it).
  std::size_t max_encoded_bytes(std::size_t n, double ratio) const noexcept {
    return wire_header_bytes + randomk_params_bytes + 4 * sparse_count(n, ratio);
  }

  /// Writes the payload of `in` into `out` and returns its size (max_encoded_bytes).
  /// Throws buffer_too_small, or invalid_argument for a nonfinite value (policy reject or
  /// pass) or k > randomk_max_selected; writes nothing to `out` then.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) const {
    static constexpr const char* call = "randomk_codec::encode";
    const std::size_t n = in.size();
    const std::size_t need = max_encoded_bytes(n);
    detail::sparse_check_out(need, out.size(), call);
    const std::size_t k = selected(n);
    if (k > randomk_max_selected) {
      detail::throw_invalid_argument(call, std::to_string(k) + " values: random-k sends at most " +
                                               std::to_string(randomk_max_selected));
    }
    const float* g = in.data();
    if (p_.nonfinite != nonfinite_policy::zero) {
      if (const std::size_t i = detail::sparse_find_nonfinite(g, n); i < n) {
        detail::throw_nonfinite(call, i, g[i]);
      }
    }
    const stream_key key = index_key();
    std::byte params[randomk_params_bytes] = {};
    std::memcpy(params, &key.seed, 8);
    std::memcpy(params + 8, &key.step, 4);
    std::memcpy(params + 12, &key.rank, 4);
    std::memcpy(params + 16, &key.bucket, 4);
    params[20] = static_cast<std::byte>(p_.scale ? 1 : 0);
    const std::uint64_t k64 = k;
    std::memcpy(params + 24, &k64, 8);
    wire_writer w(out, call);
    write_header(w, id, dtype::f32, n, params, 4 * k64);
    std::byte* values = w.take(4 * k).data();
    const float s = p_.scale && k != 0
                        ? static_cast<float>(static_cast<double>(n) / static_cast<double>(k))
                        : 1.0f;
    detail::randomk_for_each(n, k, key, g, [&](std::uint64_t j, std::uint64_t i) {
      const float v = detail::randomk_value(g[i], s);
      std::memcpy(values + 4 * j, &v, 4);
    });
    return need;
  }

  /// out = the payload's values at its key's indices, 0 elsewhere. Throws decode_error
  /// naming the defect before writing anything.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    run<false>(payload, out, "randomk_codec::decode");
  }
  /// acc[i] += value at every index i of the payload's selection, nothing elsewhere.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    run<true>(payload, acc, "randomk_codec::decode_add");
  }

  /// encode, decode and decode_add under an execution context (codec.hpp, Codec
  /// requirement 7; only on_host today): host_codec_calls.
  using host_codec_calls<randomk_codec>::encode;
  using host_codec_calls<randomk_codec>::decode;
  using host_codec_calls<randomk_codec>::decode_add;

 private:
  template <bool Add>
  static void run(std::span<const std::byte> payload, host_view<float> out, const char* call) {
    wire_reader r(payload, call);
    const wire_header h = read_header(r, id);
    check_dtype(h, dtype::f32, call);
    check_count(h, out.size(), call);
    if (h.params.size() != randomk_params_bytes) {
      throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                   std::to_string(randomk_params_bytes));
    }
    const std::byte* p = h.params.data();
    stream_key key;
    std::memcpy(&key.seed, p, 8);
    std::memcpy(&key.step, p + 8, 4);
    std::memcpy(&key.rank, p + 12, 4);
    std::memcpy(&key.bucket, p + 16, 4);
    if (const auto flags = std::to_integer<unsigned>(p[20]); flags > 1) {
      throw decode_error(call, "unknown flags " + std::to_string(flags) + " (bit 0: scaled)");
    }
    if (p[21] != std::byte{0} || p[22] != std::byte{0} || p[23] != std::byte{0}) {
      throw decode_error(call, "reserved parameter bytes 21..23 are not zero");
    }
    const std::uint64_t k = detail::sparse_get_u64(p + 24);
    if (k > h.count) {
      throw decode_error(call, "count " + std::to_string(k) + " larger than the element count " +
                                   std::to_string(h.count));
    }
    if (k > randomk_max_selected) {
      throw decode_error(call, "count " + std::to_string(k) +
                                   " beyond what a Philox stream draws (" +
                                   std::to_string(randomk_max_selected) + ")");
    }
    if (h.body_bytes != 4 * k) {
      throw decode_error(call, std::string(h.body_bytes < 4 * k ? "truncated" : "oversized") +
                                   ": body of " + std::to_string(h.body_bytes) + " bytes, " +
                                   std::to_string(k) + " values take " + std::to_string(4 * k));
    }
    const std::byte* values = r.take(4 * k).data();
    for (std::uint64_t j = 0; j < k; ++j) {
      const float v = detail::sparse_get_f32(values + 4 * j);
      if (detail::sparse_key(v) >= detail::sparse_nonfinite_key) {
        throw decode_error(
            call, "non-finite value " + std::to_string(v) + " at position " + std::to_string(j));
      }
    }
    float* o = out.data();
    if constexpr (!Add) std::fill(o, o + out.size(), 0.0f);
    detail::randomk_for_each<true>(h.count, k, key, o, [&](std::uint64_t j, std::uint64_t i) {
      const float v = detail::sparse_get_f32(values + 4 * j);
      if constexpr (Add) {
        o[i] += v;
      } else {
        o[i] = v;
      }
    });
  }

  randomk_params p_;
  stream_key key_{};
};

}  // namespace v0
}  // namespace gradcomm

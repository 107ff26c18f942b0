// gradcomm/codec/sparse_format.hpp — the sparse payload of threshold and top-k: its layout,
// its bounds, its checked decoder and its encoder (encode_sparse, inspect_sparse).
//
//   std::vector<std::byte> wire(gradcomm::sparse_max_encoded_bytes(n, k));
//   wire.resize(gradcomm::encode_sparse(gradcomm::codec_id::topk, n, idx, val, wire));
//   double b = gradcomm::sparse_bits_per_index(wire);     // index cost: 11 bits at 1 %
//
// Sparse payload (threshold_codec: codec id threshold; topk_codec and approx_topk_codec:
// codec id topk; core/wire.hpp's header, dtype f32, count n), 12 parameter bytes:
//
//   offset 0  u8   index format: 0 delta, 1 bitmap (sparse_index_format)
//   offset 1  u8   gap width w: delta 1..57 bits (0 iff k = 0); bitmap 0
//   offset 2  u16  reserved, zero
//   offset 4  u64  k, the number of values sent (k <= n)
//
// then the body: k f32 values (finite), in index order, then the indices:
//   delta:  k gaps of w bits, packed LSB first (gap j at stream bits [j w, (j + 1) w), stream
//           bit b is bit b % 8 of byte b / 8), zero padding bits: ceil(k w / 8) bytes. Gap 0
//           is the first index, gap j > 0 the difference to the index before it (>= 1; 0 would
//           be a duplicate). w = bit width of the largest gap (at least 1).
//   bitmap: n bits, bit i set where index i is sent, zero padding bits: ceil(n / 8) bytes.
// The encoder writes whichever is smaller (delta on a tie), per payload. Delta costs the bit
// width of the largest gap an index: for indices spread at random, about log2((n / k) ln k)
// bits (13 at 0.1 %, 11 at 1 %, 7 at 10 % of 2^20); the bitmap costs n / k bits an index, so
// it wins from a density of about 15 %. sparse_bits_per_index tells what a payload paid.
//
// Decoders check the header, the parameters, every length and every index before they write
// anything, and throw decode_error naming the defect: truncation, trailing bytes, another
// codec or version, k > n, a bad width or format, an index >= n, a duplicate index (a zero
// gap), a bitmap whose count differs from k, nonzero padding bits, a non-finite value.
// Unsorted indices cannot be written in either form (gaps are unsigned); encode_sparse
// rejects them from its caller. decode writes zeros where no index is; decode_add adds only
// at the indices.
//
// random-k sends no indices: they follow from a stream_key that every rank shares (the
// payload carries it), so its payload is the key, k and the k values (randomk_codec).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/sparse_cpu.hpp>
#include <gradcomm/codec/detail/sparse_math.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

namespace gradcomm {
inline namespace v0 {

/// How a sparse payload lists its indices (parameter byte 0).
///
///   if (gradcomm::inspect_sparse(wire).format == gradcomm::sparse_index_format::bitmap) { ... }
enum class sparse_index_format : std::uint8_t {
  delta = 0,   ///< sorted indices as gaps of a per-payload bit width
  bitmap = 1,  ///< one bit an element
};

/// Parameter bytes of a threshold or top-k payload.
inline constexpr std::size_t sparse_params_bytes = 12;
/// The widest gap a delta payload may use; so n is at most 2^57 for sparse encoders.
inline constexpr unsigned sparse_max_gap_bits = 57;
/// The most elements a sparse encoder takes (gaps fit sparse_max_gap_bits).
inline constexpr std::uint64_t sparse_max_elements = std::uint64_t{1} << 57;

/// Bytes of a bitmap of n elements: ceil(n / 8).
///
///   static_assert(gradcomm::sparse_bitmap_bytes(17) == 3);
constexpr std::uint64_t sparse_bitmap_bytes(std::uint64_t n) noexcept {
  return n / 8 + (n % 8 != 0 ? 1 : 0);
}

/// Bytes of k gaps of w bits: ceil(k w / 8), without overflow.
///
///   static_assert(gradcomm::sparse_delta_bytes(10, 12) == 15);
constexpr std::uint64_t sparse_delta_bytes(std::uint64_t k, unsigned w) noexcept {
  return k / 8 * w + (k % 8 * w + 7) / 8;
}

/// The widest gap among indices below n: bit width of n - 1, at least 1.
///
///   static_assert(gradcomm::sparse_gap_bits(1024) == 10);
constexpr unsigned sparse_gap_bits(std::uint64_t n) noexcept {
  return n <= 2 ? 1u : static_cast<unsigned>(std::bit_width(n - 1));
}

/// The largest threshold or top-k payload of n elements with at most `max_selected` values:
/// header, parameters, values and the smaller of the two index forms at their widest.
///
///   std::vector<std::byte> wire(gradcomm::sparse_max_encoded_bytes(n, k));
constexpr std::size_t sparse_max_encoded_bytes(std::uint64_t n,
                                               std::uint64_t max_selected) noexcept {
  const std::uint64_t index =
      std::min(sparse_bitmap_bytes(n), sparse_delta_bytes(max_selected, sparse_gap_bits(n)));
  return static_cast<std::size_t>(wire_header_bytes + sparse_params_bytes + 4 * max_selected +
                                  index);
}

/// What a checked threshold or top-k payload holds (inspect_sparse).
///
///   gradcomm::sparse_info s = gradcomm::inspect_sparse(wire);
///   std::printf("%llu of %llu, %.1f bits an index\n", s.selected, s.count, s.bits_per_index());
struct sparse_info {
  codec_id codec;              ///< threshold or topk
  std::uint64_t count;         ///< n, the element count
  std::uint64_t selected;      ///< k, the values sent
  sparse_index_format format;  ///< how the indices are listed
  unsigned width;              ///< gap width (delta), 0 for a bitmap or k = 0
  std::uint64_t index_bytes;   ///< bytes of the index list
  std::uint64_t payload_bytes;
  /// Index bits per value sent (0 when nothing is sent).
  double bits_per_index() const noexcept {
    return selected == 0 ? 0.0
                         : 8.0 * static_cast<double>(index_bytes) / static_cast<double>(selected);
  }
};

namespace detail {

inline std::uint64_t sparse_get_u64(const std::byte* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline float sparse_get_f32(const std::byte* p) noexcept {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// k gaps of w bits (1..57) into exactly sparse_delta_bytes(k, w) bytes at p.
inline void sparse_pack_gaps(const std::uint64_t* idx, std::size_t k, unsigned w,
                             std::byte* p) noexcept {
  std::uint64_t acc = 0, prev = 0;
  unsigned fill = 0;
  std::size_t o = 0;
  for (std::size_t j = 0; j < k; ++j) {
    const std::uint64_t d = idx[j] - prev;
    prev = idx[j];
    acc |= d << fill;
    fill += w;
    if (fill >= 64) {
      std::memcpy(p + o, &acc, 8);
      o += 8;
      fill -= 64;
      // The bits of d that did not fit (w <= 57 and fill was > 7, so the shift is < 64).
      acc = fill == 0 ? 0 : d >> (w - fill);
    }
  }
  std::memcpy(p + o, &acc, (fill + 7) / 8);
}

// Header, parameters, values and indices of a selection whose indices are strictly
// increasing and below n (the callers guarantee it); returns the payload's size. `out` holds
// sparse_max_encoded_bytes(n, k) bytes at least.
inline std::size_t sparse_write(codec_id id, std::uint64_t n, const std::uint64_t* idx,
                                const float* val, std::size_t k, std::span<std::byte> out,
                                const char* call) {
  std::uint64_t gaps = k == 0 ? 0 : idx[0];
  for (std::size_t j = 1; j < k; ++j) gaps |= idx[j] - idx[j - 1];
  const unsigned w = k == 0 ? 0 : std::max(1u, static_cast<unsigned>(std::bit_width(gaps)));
  const std::uint64_t delta = sparse_delta_bytes(k, w), bitmap = sparse_bitmap_bytes(n);
  const bool use_delta = k == 0 || delta <= bitmap;
  const std::uint64_t index_bytes = use_delta ? delta : bitmap;
  std::byte params[sparse_params_bytes] = {};
  params[0] =
      static_cast<std::byte>(use_delta ? sparse_index_format::delta : sparse_index_format::bitmap);
  params[1] = static_cast<std::byte>(use_delta ? w : 0);
  const std::uint64_t k64 = k;
  std::memcpy(params + 4, &k64, 8);
  wire_writer wr(out, call);
  write_header(wr, id, dtype::f32, n, params, 4 * k64 + index_bytes);
  if (k != 0) std::memcpy(wr.take(4 * k).data(), val, 4 * k);
  std::byte* p = wr.take(static_cast<std::size_t>(index_bytes)).data();
  if (use_delta) {
    sparse_pack_gaps(idx, k, w, p);
  } else {
    std::memset(p, 0, static_cast<std::size_t>(index_bytes));
    for (std::size_t j = 0; j < k; ++j) {
      p[idx[j] / 8] |= static_cast<std::byte>(1u << (idx[j] % 8));
    }
  }
  return wr.position();
}

// A payload whose header, parameters and lengths are checked; its indices not yet.
struct sparse_body {
  codec_id codec;
  std::uint64_t n;
  std::uint64_t k;
  sparse_index_format format;
  unsigned width;
  const std::byte* values;
  const std::byte* index;
  std::size_t index_bytes;
};

inline std::string sparse_format_name(sparse_index_format f) {
  return f == sparse_index_format::delta ? "delta" : "bitmap";
}

// Checks everything but the indices and values. `n` is the caller's element count, or null
// to take the payload's.
inline sparse_body sparse_open(std::span<const std::byte> payload, codec_id id,
                               const std::uint64_t* n, const char* call) {
  wire_reader r(payload, call);
  const wire_header h = read_header(r, id);
  check_dtype(h, dtype::f32, call);
  if (n != nullptr) check_count(h, *n, call);
  if (h.params.size() != sparse_params_bytes) {
    throw decode_error(call, std::to_string(h.params.size()) + " parameter bytes, expected " +
                                 std::to_string(sparse_params_bytes));
  }
  sparse_body b{};
  b.codec = id;
  b.n = h.count;
  const auto format = std::to_integer<unsigned>(h.params[0]);
  if (format > 1) {
    throw decode_error(call, "bad index format " + std::to_string(format) + " (0 delta, 1 bitmap)");
  }
  b.format = static_cast<sparse_index_format>(format);
  b.width = std::to_integer<unsigned>(h.params[1]);
  if (h.params[2] != std::byte{0} || h.params[3] != std::byte{0}) {
    throw decode_error(call, "reserved parameter bytes 2..3 are not zero");
  }
  b.k = sparse_get_u64(h.params.data() + 4);
  if (b.k > b.n) {
    throw decode_error(call, "count " + std::to_string(b.k) + " larger than the element count " +
                                 std::to_string(b.n));
  }
  if (b.format == sparse_index_format::bitmap) {
    if (b.width != 0) {
      throw decode_error(call,
                         "bad width " + std::to_string(b.width) + " for a bitmap, expected 0");
    }
  } else if (b.k == 0) {
    if (b.width != 0) {
      throw decode_error(
          call, "bad width " + std::to_string(b.width) + " for an empty selection, expected 0");
    }
  } else {
    const unsigned most = std::min(sparse_gap_bits(b.n), sparse_max_gap_bits);
    if (b.width < 1 || b.width > most) {
      throw decode_error(call, "bad width " + std::to_string(b.width) + ": gaps among " +
                                   std::to_string(b.n) + " elements take 1 to " +
                                   std::to_string(most) + " bits");
    }
  }
  // Divided, never multiplied: k comes from the network.
  if (b.k > h.body_bytes / 4) {
    throw decode_error(call, "truncated: a body of " + std::to_string(h.body_bytes) +
                                 " bytes cannot hold " + std::to_string(b.k) + " values");
  }
  const std::uint64_t index_bytes = b.format == sparse_index_format::delta
                                        ? sparse_delta_bytes(b.k, b.width)
                                        : sparse_bitmap_bytes(b.n);
  const std::uint64_t rest = h.body_bytes - 4 * b.k;
  if (rest != index_bytes) {
    throw decode_error(call, std::string(rest < index_bytes ? "truncated" : "oversized") + ": " +
                                 std::to_string(rest) + " index bytes after " +
                                 std::to_string(b.k) + " values, the " +
                                 sparse_format_name(b.format) + " indices take " +
                                 std::to_string(index_bytes));
  }
  b.values = r.take(4 * b.k).data();
  b.index = r.take(index_bytes).data();
  b.index_bytes = static_cast<std::size_t>(index_bytes);
  return b;
}

// Every value finite, every index in range, no duplicate, the count and the padding right:
// the pass before anything is written.
inline void sparse_check(const sparse_body& b, const char* call) {
  for (std::uint64_t j = 0; j < b.k; ++j) {
    const float v = sparse_get_f32(b.values + 4 * j);
    if (sparse_key(v) >= sparse_nonfinite_key) {
      throw decode_error(
          call, "non-finite value " + std::to_string(v) + " at position " + std::to_string(j));
    }
  }
  if (b.format == sparse_index_format::delta) {
    sparse_gap_reader g{b.index, b.index_bytes, b.width};
    std::uint64_t idx = 0;
    for (std::uint64_t j = 0; j < b.k; ++j) {
      const std::uint64_t d = g.next();
      if (j != 0 && d == 0) {
        throw decode_error(
            call, "duplicate index " + std::to_string(idx) + " at position " + std::to_string(j));
      }
      // Compared, never added: idx < n, so n - idx does not wrap.
      if (d >= b.n - (j == 0 ? 0 : idx)) {
        throw decode_error(call, "index " + std::to_string((j == 0 ? 0 : idx) + d) +
                                     " at position " + std::to_string(j) + " out of range: n is " +
                                     std::to_string(b.n));
      }
      idx = (j == 0 ? 0 : idx) + d;
    }
    if (const unsigned used = static_cast<unsigned>(b.k % 8 * b.width % 8); used != 0) {
      const auto last = std::to_integer<unsigned>(b.index[b.index_bytes - 1]);
      if (last >> used) {
        throw decode_error(
            call, "nonzero padding bits after the last gap (byte " + std::to_string(last) + ")");
      }
    }
  } else {
    std::uint64_t set = 0;
    const std::size_t words = b.index_bytes / 8;
    for (std::size_t i = 0; i < words; ++i) {
      set += static_cast<std::uint64_t>(std::popcount(sparse_get_u64(b.index + 8 * i)));
    }
    for (std::size_t i = 8 * words; i < b.index_bytes; ++i) {
      set += static_cast<std::uint64_t>(std::popcount(std::to_integer<unsigned>(b.index[i])));
    }
    if (const unsigned used = static_cast<unsigned>(b.n % 8); used != 0) {
      const auto last = std::to_integer<unsigned>(b.index[b.index_bytes - 1]);
      if (last >> used) {
        throw decode_error(
            call, "index out of range: the bitmap sets bit " +
                      std::to_string(8 * (b.index_bytes - 1) + used +
                                     static_cast<unsigned>(std::countr_zero(last >> used))) +
                      ", n is " + std::to_string(b.n));
      }
    }
    if (set != b.k) {
      throw decode_error(call, "the bitmap holds " + std::to_string(set) +
                                   " indices, the count says " + std::to_string(b.k));
    }
  }
}

// out[index] = value (Add: +=) for the checked payload b; out has b.n elements. Without Add,
// the other elements become 0.
template <bool Add>
void sparse_scatter(const sparse_body& b, float* out) noexcept {
  if constexpr (!Add) std::fill(out, out + b.n, 0.0f);
  if (b.format == sparse_index_format::delta) {
    // Indices a batch at a time, so that the scattered writes can be prefetched.
    sparse_gap_reader g{b.index, b.index_bytes, b.width};
    constexpr std::size_t batch = 256, ahead = sparse_prefetch_distance;
    std::uint64_t ix[batch];
    std::uint64_t idx = 0;
    for (std::uint64_t j0 = 0; j0 < b.k; j0 += batch) {
      const auto count = static_cast<std::size_t>(std::min<std::uint64_t>(batch, b.k - j0));
      for (std::size_t j = 0; j < count; ++j) {
        idx += g.next();
        ix[j] = idx;
      }
      for (std::size_t j = 0; j < std::min(count, ahead); ++j) sparse_prefetch<true>(out + ix[j]);
      for (std::size_t j = 0; j < count; ++j) {
        if (j + ahead < count) sparse_prefetch<true>(out + ix[j + ahead]);
        const float v = sparse_get_f32(b.values + 4 * (j0 + j));
        if constexpr (Add) {
          out[ix[j]] += v;
        } else {
          out[ix[j]] = v;
        }
      }
    }
  } else {
    std::uint64_t j = 0;
    for (std::size_t byte = 0; byte < b.index_bytes; byte += 8) {
      std::uint64_t x = 0;
      std::memcpy(&x, b.index + byte, std::min<std::size_t>(8, b.index_bytes - byte));
      while (x != 0) {
        const std::size_t i = 8 * byte + static_cast<std::size_t>(std::countr_zero(x));
        x &= x - 1;
        const float v = sparse_get_f32(b.values + 4 * j++);
        if constexpr (Add) {
          out[i] += v;
        } else {
          out[i] = v;
        }
      }
    }
  }
}

template <bool Add>
void sparse_decode(std::span<const std::byte> payload, codec_id id, host_view<float> out,
                   const char* call) {
  const std::uint64_t n = out.size();
  const sparse_body b = sparse_open(payload, id, &n, call);
  sparse_check(b, call);
  sparse_scatter<Add>(b, out.data());
}

inline void sparse_check_elements(std::size_t n, const char* call) {
  if (static_cast<std::uint64_t>(n) > sparse_max_elements) {
    throw_invalid_argument(call,
                           std::to_string(n) + " elements: sparse payloads index at most 2^57");
  }
}

inline void sparse_check_out(std::size_t need, std::size_t have, const char* call) {
  if (have < need) throw_buffer_too_small(call, need, have);
}

}  // namespace detail

/// Checks a threshold or top-k payload completely (as its decoder does) and tells what it
/// holds; throws decode_error naming the first defect. Reads only the payload.
///
///   gradcomm::sparse_info s = gradcomm::inspect_sparse(wire);
///   bool dense_is_cheaper = s.payload_bytes > 4 * s.count;
inline sparse_info inspect_sparse(std::span<const std::byte> payload) {
  static constexpr const char* call = "inspect_sparse";
  // The codec byte picks which id to expect; anything else fails read_header's check.
  codec_id id = codec_id::topk;
  if (payload.size() > 5 &&
      payload[5] == static_cast<std::byte>(static_cast<std::uint8_t>(codec_id::threshold))) {
    id = codec_id::threshold;
  }
  const detail::sparse_body b = detail::sparse_open(payload, id, nullptr, call);
  detail::sparse_check(b, call);
  return {b.codec, b.n, b.k, b.format, b.width, b.index_bytes, payload.size()};
}

/// Index bits per value of a threshold or top-k payload (its index bytes × 8 / k; 0 when it
/// sends nothing). random-k payloads send no indices: 0 bits. Throws as inspect_sparse.
///
///   double b = gradcomm::sparse_bits_per_index(wire);  // e.g. 11 at 1 % density
inline double sparse_bits_per_index(std::span<const std::byte> payload) {
  return inspect_sparse(payload).bits_per_index();
}

/// Writes a threshold or top-k payload (codec id `id`) of n elements from the caller's
/// selection: `indices` strictly increasing and below n, `values` as many, finite. Returns
/// its size. Throws invalid_argument naming the defect (another id, different lengths, an
/// index out of range, unsorted or duplicate, a non-finite value) and buffer_too_small
/// when `out` holds fewer than sparse_max_encoded_bytes(n, indices.size()) bytes.
///
///   const std::uint64_t idx[] = {3, 17, 40};
///   const float val[] = {0.5f, -2.0f, 1.0f};
///   std::vector<std::byte> wire(gradcomm::sparse_max_encoded_bytes(64, 3));
///   wire.resize(gradcomm::encode_sparse(gradcomm::codec_id::topk, 64, idx, val, wire));
inline std::size_t encode_sparse(codec_id id, std::uint64_t n,
                                 std::span<const std::uint64_t> indices,
                                 std::span<const float> values, std::span<std::byte> out) {
  static constexpr const char* call = "encode_sparse";
  if (id != codec_id::threshold && id != codec_id::topk) {
    detail::throw_invalid_argument(
        call, "codec id " + detail::wire_codec_text(static_cast<std::uint8_t>(id)) +
                  " has no sparse payload (threshold or topk)");
  }
  if (n > sparse_max_elements) {
    detail::throw_invalid_argument(
        call, std::to_string(n) + " elements: sparse payloads index at most 2^57");
  }
  if (indices.size() != values.size()) {
    detail::throw_invalid_argument(call, std::to_string(indices.size()) + " indices, " +
                                             std::to_string(values.size()) + " values");
  }
  for (std::size_t j = 0; j < indices.size(); ++j) {
    if (indices[j] >= n) {
      detail::throw_invalid_argument(call, "index " + std::to_string(indices[j]) + " at position " +
                                               std::to_string(j) + " out of range: n is " +
                                               std::to_string(n));
    }
    if (j != 0 && indices[j] <= indices[j - 1]) {
      detail::throw_invalid_argument(
          call, std::string(indices[j] == indices[j - 1] ? "duplicate" : "unsorted") + " index " +
                    std::to_string(indices[j]) + " at position " + std::to_string(j) + " after " +
                    std::to_string(indices[j - 1]));
    }
    if (detail::sparse_key(values[j]) >= detail::sparse_nonfinite_key) {
      detail::throw_nonfinite(call, j, values[j]);
    }
  }
  detail::sparse_check_out(sparse_max_encoded_bytes(n, indices.size()), out.size(), call);
  return detail::sparse_write(id, n, indices.data(), values.data(), indices.size(), out, call);
}

/// k = ratio × n rounded to nearest, at least 1 and at most n (0 for n = 0): how many values
/// top-k, approximate top-k and random-k send.
///
///   std::size_t k = gradcomm::sparse_count(1000, 0.01);  // 10
inline std::size_t sparse_count(std::size_t n, double ratio) noexcept {
  if (n == 0) return 0;
  const double k = std::round(ratio * static_cast<double>(n));
  if (!(k >= 1.0)) return 1;
  if (k >= static_cast<double>(n)) return n;
  return static_cast<std::size_t>(k);
}

namespace detail {
inline void sparse_check_ratio(const char* call, double ratio) {
  if (!(ratio > 0.0 && ratio <= 1.0)) {
    throw_invalid_argument(call, "ratio " + std::to_string(ratio) + " outside (0, 1]");
  }
}
inline void sparse_check_policy(const char* call, nonfinite_policy p) {
  if (static_cast<unsigned>(p) > 2) throw_invalid_argument(call, "unknown nonfinite_policy");
}
}  // namespace detail

}  // namespace v0
}  // namespace gradcomm

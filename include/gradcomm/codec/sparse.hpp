// gradcomm/codec/sparse.hpp — sparsification: threshold, top-k (exact and approximate, as in
// Deep Gradient Compression), random-k, and DGC's memory around any of them.
//
//   gradcomm::topk_codec c({.ratio = 0.01});               // the 1 % largest |g|
//   std::vector<std::byte> wire(c.max_encoded_bytes(g.size()));
//   wire.resize(c.encode(g, wire));
//   c.decode_add(wire, sum);                               // adds at the indices only
//   double b = gradcomm::sparse_bits_per_index(wire);     // index cost: 11 bits at 1 %
//
//   gradcomm::dgc_memory<gradcomm::approx_topk_codec> dgc(
//       gradcomm::approx_topk_codec({.ratio = 0.001}), {.momentum = 0.9f, .warmup_steps = 1000});
//   wire.resize(dgc.encode(g, wire));                     // the payload is approx_topk's
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
//
// Encoders keep their scratch buffers (selected indices and values, sample keys): after the
// first call of a size, an encode allocates only when it selects more than ever before.
// Codecs with scratch are not for use by two threads at once (encode is not const).
#pragma once

#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/detail/cpu_dispatch.hpp>
#include <gradcomm/codec/detail/philox_fill.hpp>
#include <gradcomm/codec/detail/sparse_select.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/philox.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/core/wire.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace gradcomm {
inline namespace v0 {

// ---- the sparse payload -------------------------------------------------------------------

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

// Reads w-bit gaps front to back from `len` bytes; the caller keeps j w < 8 len.
struct sparse_gap_reader {
  const std::byte* p;
  std::size_t len;
  unsigned w;
  std::uint64_t bit = 0;

  std::uint64_t next() noexcept {
    const std::size_t byte = static_cast<std::size_t>(bit >> 3);
    std::uint64_t x = 0;
    if (byte + 8 <= len) {
      std::memcpy(&x, p + byte, 8);
    } else {
      std::memcpy(&x, p + byte, len - byte);
    }
    const std::uint64_t d = (x >> (bit & 7)) & ((std::uint64_t{1} << w) - 1);
    bit += w;
    return d;
  }
};

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

// ---- threshold ----------------------------------------------------------------------------

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
    // |g| > t as keys: key(|g|) >= key(t) + 1; an infinite t selects nothing finite.
    const std::int32_t key = std::min(detail::sparse_key(last_), detail::sparse_nonfinite_key) + 1;
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

// ---- top-k --------------------------------------------------------------------------------

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
///   gradcomm::error_feedback<gradcomm::topk_codec> ef(gradcomm::topk_codec({.ratio = 0.01}));
///   std::vector<std::byte> wire(ef.max_encoded_bytes(n));
///   wire.resize(ef.encode(g, wire));  // what is not sent waits in the residual
class topk_codec : public host_codec_calls<topk_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = false};
  static constexpr codec_id id = codec_id::topk;

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
    static constexpr const char* call = "topk_codec::encode";
    const std::size_t n = in.size();
    detail::sparse_check_elements(n, call);
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const std::size_t k = selected(n);
    detail::sparse_top_k(in.data(), n, k, p_.nonfinite, s_, call);
    return detail::sparse_write(id, n, s_.index.data(), s_.value.data(), k, out, call);
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
  using host_codec_calls<topk_codec>::decode;
  using host_codec_calls<topk_codec>::decode_add;

 private:
  topk_params p_;
  detail::sparse_scratch s_;
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
///
///   gradcomm::approx_topk_codec c({.ratio = 0.01});
///   std::vector<std::byte> wire(c.max_encoded_bytes(n));
///   wire.resize(c.encode(g, wire));
///   auto [lo, hi] = c.count_bounds(n);  // lo <= inspect_sparse(wire).selected <= hi
class approx_topk_codec : public host_codec_calls<approx_topk_codec> {
 public:
  using value_type = float;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = false};
  static constexpr codec_id id = codec_id::topk;

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
    static constexpr const char* call = "approx_topk_codec::encode";
    const std::size_t n = in.size();
    detail::sparse_check_elements(n, call);
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const float* g = in.data();
    const std::size_t k = sparse_count(n, p_.ratio);
    const auto [lo, hi] = count_bounds(n);
    passes_ = 0;
    exact_ = false;
    if (k != 0 && k != n) {
      const std::size_t m = detail::sparse_sample_size(n, k);
      detail::sparse_sample_keys(g, n, m, p_.nonfinite, s_);
      const double scale = static_cast<double>(m) / static_cast<double>(n);
      std::size_t r = std::clamp<std::size_t>(
          static_cast<std::size_t>(std::llround(static_cast<double>(k) * scale)), 1, m);
      for (int attempt = 0; attempt < 3; ++attempt) {
        // Zeros are never worth a threshold pass: at least the smallest nonzero key.
        const std::int32_t t = std::max<std::int32_t>(1, detail::sparse_sample_rank(s_, m, r));
        ++passes_;
        const detail::sparse_compaction c =
            detail::sparse_compact(g, n, {.key = t}, hi, p_.nonfinite, s_, call);
        if (c.total >= lo && c.total <= hi) {
          return detail::sparse_write(id, n, s_.index.data(), s_.value.data(), c.total, out, call);
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
    detail::sparse_top_k(g, n, k, p_.nonfinite, s_, call);
    return detail::sparse_write(id, n, s_.index.data(), s_.value.data(), k, out, call);
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
  using host_codec_calls<approx_topk_codec>::decode;
  using host_codec_calls<approx_topk_codec>::decode_add;

 private:
  std::pair<std::size_t, std::size_t> bounds(std::size_t n, double ratio) const noexcept {
    const std::size_t k = sparse_count(n, ratio);
    const auto slack = static_cast<std::size_t>(std::floor(p_.tolerance * static_cast<double>(k)));
    return {k - slack, std::min(n, k + slack)};
  }

  approx_topk_params p_;
  unsigned passes_ = 0;
  bool exact_ = false;
  detail::sparse_scratch s_;
};

// ---- random-k -----------------------------------------------------------------------------

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

/// Index j (0 <= j < k) of random-k's selection of k among n (1 <= k <= n) for Philox words
/// w[0..4) = {rotation word 0, rotation word 1, stratum word 0, stratum word 1}: [0, n) is
/// cut into k strata of lengths ⌊n/k⌋ or ⌈n/k⌉, one uniform position is drawn in stratum
/// j, and every position is rotated by the same uniform offset (mod n). Integer arithmetic
/// only: hosts and devices agree.
///
///   std::uint64_t i = gradcomm::randomk_index(n, k, j, rot0, rot1, w0, w1);
GRADCOMM_HD constexpr std::uint64_t randomk_index(std::uint64_t n, std::uint64_t k, std::uint64_t j,
                                                  std::uint32_t rot0, std::uint32_t rot1,
                                                  std::uint32_t w0, std::uint32_t w1) noexcept;

namespace detail {
// randomk_index with its divisions and its rotation done once, for loops over j.
struct randomk_layout {
  std::uint64_t n;
  sparse_strata strata;
  std::uint64_t rotation;
  GRADCOMM_HD constexpr randomk_layout(std::uint64_t n_, std::uint64_t k, std::uint32_t rot0,
                                       std::uint32_t rot1) noexcept
      : n(n_), strata(n_, k), rotation(sparse_uniform_below(rot0, rot1, n_)) {}
  GRADCOMM_HD constexpr std::uint64_t index(std::uint64_t j, std::uint32_t w0,
                                            std::uint32_t w1) const noexcept {
    const std::uint64_t pos = strata.start(j) + sparse_uniform_below(w0, w1, strata.length(j));
    return pos < n - rotation ? pos + rotation : pos - (n - rotation);
  }
};
}  // namespace detail

GRADCOMM_HD constexpr std::uint64_t randomk_index(std::uint64_t n, std::uint64_t k, std::uint64_t j,
                                                  std::uint32_t rot0, std::uint32_t rot1,
                                                  std::uint32_t w0, std::uint32_t w1) noexcept {
  return detail::randomk_layout(n, k, rot0, rot1).index(j, w0, w1);
}

namespace detail {
// Calls f(j, index_j) for j in [0, k), in order: the rotation draws words 0 and 1 of the
// key's stream, stratum j words 2j + 2 and 2j + 3. `touch` (null: none) is the array f
// reads (Write: writes) at the indices, prefetched ahead.
template <bool Write = false, class F>
void randomk_for_each(std::uint64_t n, std::uint64_t k, const stream_key& key, const float* touch,
                      F&& f) {
  if (k == 0) return;
  const philox_stream rng(key.seed, key.step, key.rank, key.bucket);
  const u32x4 first = rng.block(0);
  const randomk_layout layout(n, k, first.v[0], first.v[1]);
  const cpu_isa isa = cpu_best_isa();
  constexpr std::uint64_t batch = 1024;  // strata a batch: words 2 j0 + 2 .. 2 j0 + 2049
  std::uint32_t w[4 * (batch / 2 + 1)];
  std::uint64_t ix[batch];
  constexpr std::uint64_t ahead = sparse_prefetch_distance;
  for (std::uint64_t j0 = 0; j0 < k; j0 += batch) {
    const std::uint64_t count = std::min(batch, k - j0);
    // Word 2 j0 + 2 is word 2 of block j0 / 2 (j0 is even).
    philox_fill(rng, static_cast<std::uint32_t>(j0 / 2), static_cast<std::size_t>(count / 2 + 1), w,
                isa);
    for (std::uint64_t j = 0; j < count; ++j) {
      ix[j] = layout.index(j0 + j, w[2 * j + 2], w[2 * j + 3]);
    }
    if (touch != nullptr) {
      for (std::uint64_t j = 0; j < std::min(count, ahead); ++j) {
        sparse_prefetch<Write>(touch + ix[j]);
      }
    }
    for (std::uint64_t j = 0; j < count; ++j) {
      if (touch != nullptr && j + ahead < count) sparse_prefetch<Write>(touch + ix[j + ahead]);
      f(j0 + j, ix[j]);
    }
  }
}
}  // namespace detail

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
      float v = g[i];
      if (detail::sparse_key(v) >= detail::sparse_nonfinite_key) v = 0.0f;  // policy zero
      v *= s;
      // Scaling saturates: a payload never carries an infinity its decoder would reject.
      if (detail::sparse_key(v) >= detail::sparse_nonfinite_key) {
        v = std::copysign(std::numeric_limits<float>::max(), v);
      }
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

// ---- DGC memory ---------------------------------------------------------------------------

/// RatioCodec<C>: a Codec whose share of values sent is a run-time ratio (top-k, approximate
/// top-k, random-k), as DGC's warm-up needs: `ratio()`, `set_ratio(r)` and
/// `max_encoded_bytes(n, r)`, the payload bound at ratio r.
///
///   static_assert(gradcomm::RatioCodec<gradcomm::topk_codec>);
template <class C>
concept RatioCodec = Codec<C> && requires(C& c, const C& cc, double r, std::size_t n) {
  { cc.ratio() } -> std::convertible_to<double>;
  c.set_ratio(r);
  { cc.max_encoded_bytes(n, r) } -> std::same_as<std::size_t>;
};

/// Parameters of dgc_memory (Lin et al., "Deep Gradient Compression", ICLR 2018).
///
///   gradcomm::dgc_params p{.momentum = 0.9f, .clip_norm = 1.0f, .warmup_steps = 2000};
struct dgc_params {
  /// m of the momentum correction u <- m u + g; 0 makes it plain error feedback. The
  /// receiving optimizer must then not apply momentum again.
  float momentum = 0.9f;
  /// Local gradient clipping: g is scaled down to this L2 norm when longer (DGC clips each
  /// rank at thr / sqrt(ranks)); 0: no clipping.
  float clip_norm = 0.0f;
  /// Steps over which the inner codec's ratio falls exponentially from `warmup_ratio` to
  /// its own ratio; 0: no warm-up. Needs a RatioCodec.
  std::uint64_t warmup_steps = 0;
  /// The inner ratio at step 0 of the warm-up (DGC: 25 %), in (0, 1].
  double warmup_ratio = 0.25;
};

/// The first four bytes of a saved dgc_memory state: "GCDG" read as a little-endian u32.
inline constexpr std::uint32_t dgc_state_magic = 0x47444347u;
/// The dgc_memory state format version this build writes and reads.
inline constexpr std::uint8_t dgc_state_version = 1;
/// Bytes of the dgc_memory state header, before the buffers.
inline constexpr std::size_t dgc_state_header_bytes = 32;

/// DGC's memory around a sparsifier `Inner`: an error-feedback variant. Each encode
///   1. clips g to clip_norm (local gradient clipping), when set;
///   2. u <- m u + g (momentum correction: the momentum is accumulated, not the gradient);
///   3. v <- v + u, and sends C(v) with the ratio of the warm-up schedule at this step;
///   4. v <- v - D(C(v)) (what was sent leaves the accumulator), and u <- 0 where D(C(v)) is
///      nonzero (momentum factor masking: sent coordinates stop their stale momentum).
/// The payload is Inner's (decode and decode_add forward). Not linear, not fixed size
/// (the warm-up changes k), stateful: u, v and the step count save and load. With a scaled
/// (unbiased) random-k inside, step 4 over-corrects v: use random-k unscaled here.
///
/// A failed encode (a small buffer, a nonfinite value) leaves the state as it was. After
/// the first encode of a size, encode allocates nothing (beyond what Inner does).
///
/// State layout, little-endian:
///   offset  0  u32 magic 0x47444347 ("GCDG"), 4 u8 version, 5 u8 inner codec id,
///   offset  6  u8 flags (bit 0 sized, bit 1 holds Inner's state), 7 u8 zero,
///   offset  8  u64 n, 16 u64 step, 24 u64 bytes of Inner's state,
///   offset 32  n f32 u (momentum), n f32 v (accumulated), Inner's state.
///
///   gradcomm::dgc_memory<gradcomm::topk_codec> dgc(gradcomm::topk_codec({.ratio = 0.001}),
///                                                  {.momentum = 0.9f, .warmup_steps = 500});
///   std::vector<std::byte> wire(dgc.max_encoded_bytes(n));
///   wire.resize(dgc.encode(g, wire));   // receivers: SGD without momentum
template <Codec Inner>
class dgc_memory {
 public:
  using value_type = float;
  using inner_type = Inner;
  static constexpr codec_traits traits{.linear = false, .fixed_size = false, .stateful = true};
  static constexpr codec_id id = Inner::id;

  /// A default Inner; throws as the other constructor.
  explicit dgc_memory(dgc_params p = {}) requires std::default_initializable<Inner>
      : dgc_memory(Inner{}, p) {}
  /// Throws invalid_argument for a negative or nonfinite momentum or clip_norm, a warm-up
  /// ratio outside (0, 1], or a warm-up around an Inner that is no RatioCodec. The inner
  /// ratio at construction is the one the warm-up ends at.
  explicit dgc_memory(Inner inner, dgc_params p = {}) : inner_(std::move(inner)), p_(p) {
    constexpr const char* call = "dgc_memory";
    if (!(p.momentum >= 0.0f) || !std::isfinite(p.momentum)) {
      detail::throw_invalid_argument(call, "momentum " + std::to_string(p.momentum));
    }
    if (!(p.clip_norm >= 0.0f) || !std::isfinite(p.clip_norm)) {
      detail::throw_invalid_argument(call, "clip_norm " + std::to_string(p.clip_norm));
    }
    if (p.warmup_steps != 0) {
      if constexpr (RatioCodec<Inner>) {
        detail::sparse_check_ratio(call, p.warmup_ratio);
        final_ratio_ = inner_.ratio();
      } else {
        detail::throw_invalid_argument(call, "a warm-up needs an inner codec with a ratio");
      }
    }
  }

  const Inner& inner() const noexcept { return inner_; }
  Inner& inner() noexcept { return inner_; }
  const dgc_params& params() const noexcept { return p_; }

  /// Encodes done so far (the warm-up's clock).
  std::uint64_t step() const noexcept { return step_; }
  bool sized() const noexcept { return sized_; }
  std::size_t size() const noexcept { return u_.size(); }
  /// u, the corrected momentum.
  std::span<const float> momentum() const noexcept { return u_; }
  /// v, the accumulated update not yet sent.
  std::span<const float> accumulated() const noexcept { return v_; }

  /// The inner ratio the warm-up schedule gives at step `t`: warmup_ratio × (final /
  /// warmup_ratio)^(t / warmup_steps) before warmup_steps, the final ratio from then on.
  double ratio_at(std::uint64_t t) const requires RatioCodec<Inner> {
    if (p_.warmup_steps == 0) return inner_.ratio();
    if (t >= p_.warmup_steps) return final_ratio_;
    const double f = static_cast<double>(t) / static_cast<double>(p_.warmup_steps);
    return p_.warmup_ratio * std::pow(final_ratio_ / p_.warmup_ratio, f);
  }

  /// u and v become n zeros; the step count stays.
  void resize(std::size_t n) {
    u_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
    a_.resize(n);
    b_.resize(n);
    sized_ = true;
  }
  /// Forgets u, v, their size and the step count, and a stateful Inner's state (where it
  /// has reset()), so that the next encode sizes both from its input.
  void reset() noexcept {
    u_.clear();
    v_.clear();
    a_.clear();
    b_.clear();
    sized_ = false;
    step_ = 0;
    if constexpr (requires { inner_.reset(); }) inner_.reset();
  }
  /// Replaces u and v (e.g. after re-sharding each with reshard_residuals); throws
  /// invalid_argument for different sizes or a nonfinite value.
  void set_buffers(host_view<const float> u, host_view<const float> v) {
    constexpr const char* call = "dgc_memory::set_buffers";
    if (u.size() != v.size()) {
      detail::throw_invalid_argument(
          call, "u has " + std::to_string(u.size()) + " elements, v " + std::to_string(v.size()));
    }
    for (std::size_t i = 0; i < u.size(); ++i) {
      if (!std::isfinite(u[i]) || !std::isfinite(v[i])) {
        detail::throw_invalid_argument(call, "non-finite value at index " + std::to_string(i));
      }
    }
    u_.assign(u.begin(), u.end());
    v_.assign(v.begin(), v.end());
    a_.resize(u.size());
    b_.resize(u.size());
    sized_ = true;
  }

  /// The largest payload at any step of the schedule.
  std::size_t max_encoded_bytes(std::size_t n) const noexcept {
    if constexpr (RatioCodec<Inner>) {
      if (p_.warmup_steps != 0) {
        return std::max(inner_.max_encoded_bytes(n, p_.warmup_ratio),
                        inner_.max_encoded_bytes(n, final_ratio_));
      }
    }
    return inner_.max_encoded_bytes(n);
  }

  /// Steps 1-4 above; returns the payload's size. Throws buffer_too_small when `out` is
  /// shorter than max_encoded_bytes(n), invalid_argument when in.size() differs from a
  /// sized state, and whatever Inner's encode throws (a nonfinite value); the state is
  /// unchanged then.
  std::size_t encode(host_view<const float> in, std::span<std::byte> out) {
    return encode(on_host, in, out);
  }
  /// encode under an execution context, which the inner codec's calls get too (codec.hpp,
  /// Codec requirement 7; only on_host today).
  template <ExecutionContext Ctx, class In>
  std::size_t encode(Ctx ctx, const In& in, std::span<std::byte> out) {
    return encode(ctx, host_input(ctx, in), out);
  }
  /// The host implementation of both forms of encode.
  std::size_t encode(host_context ctx, host_view<const float> in, std::span<std::byte> out) {
    constexpr const char* call = "dgc_memory::encode";
    const std::size_t n = in.size();
    detail::sparse_check_out(max_encoded_bytes(n), out.size(), call);
    const bool first = !sized_;
    if (first) {
      resize(n);
    } else if (n != u_.size()) {
      detail::throw_invalid_argument(call, "input has " + std::to_string(n) +
                                               " elements, the state " + std::to_string(u_.size()) +
                                               "; call reset() or resize() to change the size");
    }
    const float* g = in.data();
    float clip = 1.0f;
    if (p_.clip_norm > 0.0f) {
      double s = 0.0;
      for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * g[i];
      const double norm = std::sqrt(s);
      if (norm > p_.clip_norm) clip = static_cast<float>(p_.clip_norm / norm);
    }
    const float m = p_.momentum;
    float* u = u_.data();
    float* v = v_.data();
    float* a = a_.data();
    float* b = b_.data();
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = m * u[i] + clip * g[i];
      b[i] = v[i] + a[i];
    }
    if constexpr (RatioCodec<Inner>) {
      if (p_.warmup_steps != 0) inner_.set_ratio(ratio_at(step_));
    }
    std::size_t bytes = 0;
    try {
      bytes = inner_.encode(ctx, host_view<const float>(b, n), out);
    } catch (...) {
      if (first) reset();
      throw;
    }
    try {
      inner_.decode(ctx, std::span<const std::byte>(out.data(), bytes), host_view<float>(v, n));
    } catch (...) {
      // Inner rejected its own bytes (a bug there): nothing is sent, all of it is owed.
      std::copy(b, b + n, v);
      u_.swap(a_);
      ++step_;
      throw;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const float d = v[i];
      v[i] = detail::ef_finite_or_zero(b[i] - d);
      a[i] = d != 0.0f ? 0.0f : a[i];
    }
    u_.swap(a_);
    ++step_;
    return bytes;
  }

  /// Inner's decode: the payload is Inner's.
  void decode(std::span<const std::byte> payload, host_view<float> out) const {
    inner_.decode(payload, out);
  }
  /// Inner's decode_add.
  void decode_add(std::span<const std::byte> payload, host_view<float> acc) const {
    inner_.decode_add(payload, acc);
  }
  /// The inner codec's decode and decode_add under the same context.
  template <ExecutionContext Ctx, class Out>
  void decode(Ctx ctx, std::span<const std::byte> payload, Out&& out) const {
    inner_.decode(ctx, payload, std::forward<Out>(out));
  }
  template <ExecutionContext Ctx, class Acc>
  void decode_add(Ctx ctx, std::span<const std::byte> payload, Acc&& acc) const {
    inner_.decode_add(ctx, payload, std::forward<Acc>(acc));
  }

  /// Forwards the random stream's key to a stochastic Inner.
  void set_stream(stream_key k) requires StochasticCodec<Inner> { inner_.set_stream(k); }
  stream_key stream() const requires StochasticCodec<Inner> { return inner_.stream(); }

  /// Bytes that save_state writes (an upper bound where Inner's state_bytes is one).
  std::size_t state_bytes() const {
    std::size_t s = dgc_state_header_bytes + 2 * u_.size() * sizeof(float);
    if constexpr (Inner::traits.stateful) s += inner_.state_bytes();
    return s;
  }

  /// Writes the state (layout above); returns the bytes written. Throws buffer_too_small,
  /// writing nothing, when `out` is shorter than state_bytes().
  std::size_t save_state(std::span<std::byte> out) const {
    static constexpr const char* call = "dgc_memory::save_state";
    const std::size_t need = state_bytes();
    if (out.size() < need) detail::throw_buffer_too_small(call, need, out.size());
    wire_writer w(out, call);
    const std::span<std::byte> header = w.take(dgc_state_header_bytes);
    w.put_bytes(std::as_bytes(std::span<const float>(u_)));
    w.put_bytes(std::as_bytes(std::span<const float>(v_)));
    std::uint64_t inner_bytes = 0;
    if constexpr (Inner::traits.stateful)
      inner_bytes = inner_.save_state(w.take(inner_.state_bytes()));
    wire_writer h(header, call);
    h.put_u32(dgc_state_magic);
    h.put_u8(dgc_state_version);
    h.put_u8(static_cast<std::uint8_t>(id));
    h.put_u8(static_cast<std::uint8_t>((sized_ ? 1u : 0u) | (Inner::traits.stateful ? 2u : 0u)));
    h.put_u8(0);
    h.put_u64(u_.size());
    h.put_u64(step_);
    h.put_u64(inner_bytes);
    return dgc_state_header_bytes + 2 * u_.size() * sizeof(float) +
           static_cast<std::size_t>(inner_bytes);
  }

  /// Replaces the state by one that save_state wrote. Throws decode_error naming the
  /// defect (truncated, trailing bytes, bad magic or version, another codec's state,
  /// unknown flags, a nonfinite value, an inner state of another size); nothing changes
  /// then. Allocates at most what `bytes` can hold.
  void load_state(std::span<const std::byte> bytes) {
    static constexpr const char* call = "dgc_memory::load_state";
    wire_reader r(bytes, call);
    const std::span<const std::byte> fixed = r.take(dgc_state_header_bytes);
    wire_reader h(fixed, call);
    if (h.get_u32() != dgc_state_magic) {
      throw decode_error(call, "bad magic: found bytes " + detail::wire_hex_bytes(fixed.first(4)) +
                                   ", expected 47 43 44 47 (\"GCDG\")");
    }
    if (const std::uint8_t ver = h.get_u8(); ver != dgc_state_version) {
      throw decode_error(call, "unsupported state version " + std::to_string(ver) +
                                   " (this build reads " + std::to_string(dgc_state_version) + ")");
    }
    if (const std::uint8_t c = h.get_u8(); c != static_cast<std::uint8_t>(id)) {
      throw decode_error(call, "state of codec id " + detail::wire_codec_text(c) +
                                   ", this codec is " +
                                   detail::wire_codec_text(static_cast<std::uint8_t>(id)));
    }
    const std::uint8_t flags = h.get_u8();
    constexpr std::uint8_t inner_flag = Inner::traits.stateful ? 2 : 0;
    if ((flags & ~3u) != 0 || (flags & 2u) != inner_flag) {
      throw decode_error(call, "flags " + std::to_string(flags) + ", expected " +
                                   std::to_string(inner_flag) + " or " +
                                   std::to_string(inner_flag | 1));
    }
    if (const std::uint8_t z = h.get_u8(); z != 0) {
      throw decode_error(call, "reserved byte is " + std::to_string(z) + ", expected 0");
    }
    const bool sized = (flags & 1u) != 0;
    const std::uint64_t n = h.get_u64();
    const std::uint64_t step = h.get_u64();
    const std::uint64_t inner_bytes = h.get_u64();
    if (!sized && n != 0) {
      throw decode_error(call, "an unsized state with " + std::to_string(n) + " elements");
    }
    if (!Inner::traits.stateful && inner_bytes != 0) {
      throw decode_error(
          call, std::to_string(inner_bytes) + " bytes of inner state for a stateless inner codec");
    }
    // Divided, never multiplied: n comes from the bytes.
    if (n > r.remaining() / (2 * sizeof(float))) {
      throw decode_error(call, "truncated: buffers of " + std::to_string(n) +
                                   " elements do not fit in the " + std::to_string(r.remaining()) +
                                   " bytes left");
    }
    const std::span<const std::byte> body = r.take(2 * n * sizeof(float));
    if (inner_bytes != r.remaining()) {
      throw decode_error(call,
                         std::string(inner_bytes > r.remaining() ? "truncated" : "oversized") +
                             ": inner state of " + std::to_string(inner_bytes) + " bytes, " +
                             std::to_string(r.remaining()) + " left");
    }
    std::vector<float> u(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
    if (n != 0) {
      std::memcpy(u.data(), body.data(), n * sizeof(float));
      std::memcpy(v.data(), body.data() + n * sizeof(float), n * sizeof(float));
    }
    for (std::size_t i = 0; i < u.size(); ++i) {
      if (!std::isfinite(u[i]) || !std::isfinite(v[i])) {
        throw decode_error(call, "non-finite " + std::string(std::isfinite(u[i]) ? "v" : "u") +
                                     " at index " + std::to_string(i));
      }
    }
    if constexpr (Inner::traits.stateful) {
      detail::load_inner_state(inner_, r.take(inner_bytes), sized, n, call);
    }
    u_ = std::move(u);
    v_ = std::move(v);
    a_.resize(u_.size());
    b_.resize(u_.size());
    sized_ = sized;
    step_ = step;
  }

 private:
  Inner inner_;
  dgc_params p_;
  double final_ratio_ = 1.0;
  std::vector<float> u_, v_;  // state: momentum, accumulation
  std::vector<float> a_, b_;  // scratch: the new u and v of an encode
  bool sized_ = false;
  std::uint64_t step_ = 0;
};

}  // namespace v0
}  // namespace gradcomm

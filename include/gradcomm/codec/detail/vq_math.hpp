// gradcomm/codec/detail/vq_math.hpp — vector quantization's arithmetic of one group and one block.
// Internal: not part of the API (its public names, vq_tree, vq_search_tables and vq_nearest,
// come with codec/vector_quant.hpp).
//
// The one specification that the CPU loops (codec/detail/vq_cpu.hpp) and the CUDA kernels
// call: a block's scale (its RMS, in double, in a fixed order) and how its values are
// normalized, a group's |y|², the distances to one stage's 16 candidates as a fixed chain of
// fused multiply-adds, and the tree search's code. The codebook tree and the search tables
// it reads are here too, as data.
//
//   const gradcomm::detail::vq_norm n = gradcomm::detail::vq_block_norm<false>(x, 256);
//   std::uint8_t c = gradcomm::vq_nearest<4>(y, tables);
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/convert.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gradcomm {
inline namespace v0 {

/// Bits of a code (one group): 256 codewords.
inline constexpr unsigned vq_code_bits = 8;
/// Codewords in a codebook.
inline constexpr unsigned vq_codewords = 256;
/// Branching of the codebook tree: 16 coarse centroids of 16 codewords each.
inline constexpr unsigned vq_branches = 16;

/// A tree codebook: 16 coarse centroids and 256 codewords in `dim` dimensions; codeword
/// 16·i + j is coarse centroid i's child j. Rows are `dim` floats apart.
///
///   const gradcomm::vq_tree& t = codec.codebook();
///   const float* c = t.codeword(code);  // c[0 .. t.dim)
struct vq_tree {
  unsigned dim = 0;
  std::array<float, vq_branches * 8> coarse{};
  std::array<float, vq_codewords * 8> fine{};

  const float* codeword(unsigned code) const noexcept { return fine.data() + code * dim; }
  const float* centroid(unsigned i) const noexcept { return coarse.data() + i * dim; }
};

/// What the encoder searches: for each of the 17 stages (0: the coarse centroids; 1 + i:
/// centroid i's children), the 16 candidates' |c|² and −2c, coordinate-major, so that one
/// vector holds one coordinate of several candidates.
///
///   gradcomm::vq_search_tables t = gradcomm::vq_search_tables::of(tree);
struct vq_search_tables {
  /// The largest block scale whose products with every codeword coordinate stay finite.
  float max_scale;
  float norm[1 + vq_branches][vq_branches];
  float minus2c[1 + vq_branches][8][vq_branches];
  // The children's tables again, by child j first and coarse centroid i last
  // (fine_norm[j][i] = norm[1 + i][j]), for loops that search 8 groups at once, each in
  // its own subtree: one lookup by i fetches candidate j's values for all 8.
  float fine_norm[vq_branches][vq_branches];
  float fine_minus2c[vq_branches][8][vq_branches];

  static vq_search_tables of(const vq_tree& tree) noexcept {
    vq_search_tables t{};
    t.max_scale = max_scale_of(tree.fine.data(), std::size_t{vq_codewords} * tree.dim);
    auto fill = [&](unsigned stage, const float* rows) {
      for (unsigned j = 0; j < vq_branches; ++j) {
        float nn = 0.0f;
        for (unsigned k = 0; k < tree.dim; ++k) {
          const float c = rows[j * tree.dim + k];
          nn = std::fma(c, c, nn);
          t.minus2c[stage][k][j] = -2.0f * c;  // exact
        }
        t.norm[stage][j] = nn;
      }
    };
    fill(0, tree.coarse.data());
    for (unsigned i = 0; i < vq_branches; ++i) {
      fill(1 + i, tree.fine.data() + i * vq_branches * tree.dim);
    }
    for (unsigned j = 0; j < vq_branches; ++j) {
      for (unsigned i = 0; i < vq_branches; ++i) {
        t.fine_norm[j][i] = t.norm[1 + i][j];
        for (unsigned k = 0; k < 8; ++k) t.fine_minus2c[j][k][i] = t.minus2c[1 + i][k][j];
      }
    }
    return t;
  }

  /// max_scale of `count` codeword coordinates: the largest f32 s with s · max |c| at most
  /// FLT_MAX (f32 products are exact in double, so the comparison is).
  static float max_scale_of(const float* coords, std::size_t count) noexcept {
    constexpr float top = 3.40282347e38f;
    float m = 0.0f;
    for (std::size_t i = 0; i < count; ++i) m = std::fabs(coords[i]) > m ? std::fabs(coords[i]) : m;
    if (!(m > 1.0f)) return top;  // s <= FLT_MAX anyway (and NaN rows never get here)
    float s = static_cast<float>(static_cast<double>(top) / m);
    while (static_cast<double>(s) * m > static_cast<double>(top)) s = std::nextafter(s, 0.0f);
    return s;
  }
};

namespace detail {

GRADCOMM_HD inline float vq_fma(float a, float b, float c) noexcept {
#if GRADCOMM_DEVICE_PASS
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

GRADCOMM_HD inline double vq_sqrt(double x) noexcept {
#if GRADCOMM_DEVICE_PASS
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// A block's scale (its RMS, held to max_scale: vq_search_tables) and how to normalize its
// values. The sum of squares is taken in double, products exact, into 8 interleaved partial
// sums added in a fixed order, so that every path (and a fused multiply-add) gets the same
// bits; it is not finite exactly when the block holds ±Inf or NaN. Blocks whose scale lies
// outside f32's normal range normalize in double.
struct vq_norm {
  double sum_squares;
  float scale;   // RMS as f32: what the payload stores
  float inv;     // 1 / RMS as f32 (0 for an all-zero block)
  double inv_d;  // 1 / RMS
  bool in_f32;   // normalize as x · inv in f32; otherwise in double
};

template <bool Zero>
GRADCOMM_HD inline float vq_load(const float* x, std::size_t i) noexcept {
  if constexpr (Zero) {
    const float v = x[i];
    return (float_bits(v) & 0x7f800000u) == 0x7f800000u ? 0.0f : v;
  } else {
    return x[i];
  }
}

// Zero: ±Inf and NaN read as 0 (nonfinite_policy::zero). A block whose RMS as f32 is above
// max_scale gets max_scale (its values then normalize to at most the largest coordinate).
template <bool Zero>
GRADCOMM_HD inline vq_norm vq_block_norm(const float* x, std::size_t count,
                                         float max_scale = 3.40282347e38f) noexcept {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    for (unsigned l = 0; l < 8; ++l) {
      const double v = vq_load<Zero>(x, i + l);
      acc[l] += v * v;
    }
  }
  for (unsigned l = 0; i + l < count; ++l) {
    const double v = vq_load<Zero>(x, i + l);
    acc[l] += v * v;
  }
  const double ss =
      ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  if (!(ss > 0.0)) return {ss, 0.0f, 0.0f, 0.0, true};  // zeros (NaN too: the caller checks)
  double rms = vq_sqrt(ss / static_cast<double>(count));
  if (static_cast<float>(rms) > max_scale) rms = max_scale;
  const double inv = 1.0 / rms;
  return {ss, static_cast<float>(rms), static_cast<float>(inv), inv,
          rms >= 0x1p-126 && rms <= 0x1p126};
}

template <bool Zero>
GRADCOMM_HD inline float vq_normalize(const float* x, std::size_t i, const vq_norm& n) noexcept {
  const float v = vq_load<Zero>(x, i);
  return n.in_f32 ? v * n.inv : static_cast<float>(static_cast<double>(v) * n.inv_d);
}

// The nearest of one stage's 16 candidates to y (|y|² = yn): a key per candidate, its
// clamped distance's bits with the index in the low 4 bits, and the smallest key.
template <int D>
GRADCOMM_HD inline unsigned vq_pick16(const float* y, float yn, const float* norm,
                                      const float (*minus2c)[vq_branches]) noexcept {
  std::uint32_t best = 0xffffffffu;
  for (unsigned j = 0; j < vq_branches; ++j) {
    float a = norm[j] + yn;
    for (int k = 0; k < D; ++k) a = vq_fma(y[k], minus2c[k][j], a);
    a = a > 0.0f ? a : 0.0f;
    const std::uint32_t key = (float_bits(a) & ~15u) | j;
    best = key < best ? key : best;
  }
  return best & 15u;
}

// |y|², as the encoder defines it: fma chain over the coordinates in order.
template <int D>
GRADCOMM_HD inline float vq_norm2(const float* y) noexcept {
  float yn = 0.0f;
  for (int k = 0; k < D; ++k) yn = vq_fma(y[k], y[k], yn);
  return yn;
}

}  // namespace detail

/// The code of the group y (D normalized values) under `t`: the nearest coarse centroid,
/// then the nearest of its 16 children. The CPU reference; the AVX2 loop and the CUDA
/// kernels pick the same codes.
///
///   std::uint8_t c = gradcomm::vq_nearest<4>(y, tables);
template <int D>
GRADCOMM_HD inline std::uint8_t vq_nearest(const float* y, const vq_search_tables& t) noexcept {
  const float yn = detail::vq_norm2<D>(y);
  const unsigned c = detail::vq_pick16<D>(y, yn, t.norm[0], t.minus2c[0]);
  const unsigned f = detail::vq_pick16<D>(y, yn, t.norm[1 + c], t.minus2c[1 + c]);
  return static_cast<std::uint8_t>(c * vq_branches + f);
}
}  // namespace v0
}  // namespace gradcomm

// Builds the vector quantizer's built-in Gaussian codebooks and prints them as the C++
// header include/gradcomm/codec/detail/vq_codebooks.hpp (a generated file, checked in):
//
//   g++ -std=c++20 -O2 -I include benchmarks/tools/make_codebook.cpp -o make_codebook
//   ./make_codebook > include/gradcomm/codec/detail/vq_codebooks.hpp   # 20 s or so
//
// For each group size d (2, 4, 8): 2^20 groups of N(0, 1) values drawn from Philox (fixed
// seed, Box–Muller), in blocks of 256 normalized by their RMS exactly as the encoder does
// (vector_quant.hpp); Lloyd's k-means, k-means++ seeded, for the 16 coarse centroids, then
// within each coarse cell for its 16 children; then Lloyd iterations of the whole tree with
// the encoder's own tree search (detail::vq_lloyd), so that the codewords are the centroids
// of the cells the encoder really uses. It reports on stderr the mean squared error, per
// value, on 2^18 fresh groups: with the tree search, and with a full search of the same
// 256 codewords. The output depends only on the seed (and on libm's log and cos).
#include <gradcomm/codec/vector_quant.hpp>
#include <gradcomm/core/philox.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

namespace gc = gradcomm;

namespace {

constexpr std::uint64_t seed = 0x6772616463766dULL;  // "gradcvm"
constexpr std::size_t train_groups = std::size_t{1} << 20;
constexpr std::size_t test_groups = std::size_t{1} << 18;
constexpr std::size_t block = 256;
constexpr int flat_iterations = 40;
constexpr unsigned tree_iterations = 10;

// n N(0, 1) values from Philox stream `bucket`, normalized per block of 256 as the encoder
// normalizes them.
std::vector<float> gaussian_samples(std::size_t n, std::uint32_t bucket) {
  const gc::philox_stream s(seed, 0, 0, bucket);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; i += 2) {
    const gc::u32x4 r = s.block(static_cast<std::uint32_t>(i / 2));
    const double u1 = (static_cast<double>(r.v[0] >> 8) + 1.0) * 0x1p-24;  // (0, 1]
    const double u2 = static_cast<double>(r.v[1] >> 8) * 0x1p-24;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    x[i] = static_cast<float>(radius * std::cos(2.0 * M_PI * u2));
    if (i + 1 < n) x[i + 1] = static_cast<float>(radius * std::sin(2.0 * M_PI * u2));
  }
  std::vector<float> y(n);
  for (std::size_t b = 0; b < n; b += block) {
    const std::size_t count = n - b < block ? n - b : block;
    const auto norm = gc::detail::vq_block_norm<false>(x.data() + b, count);
    for (std::size_t i = 0; i < count; ++i) {
      y[b + i] = gc::detail::vq_normalize<false>(x.data() + b, i, norm);
    }
  }
  return y;
}

double distance2(const float* a, const float* b, unsigned d) {
  double s = 0;
  for (unsigned k = 0; k < d; ++k) {
    const double e = static_cast<double>(a[k]) - b[k];
    s += e * e;
  }
  return s;
}

unsigned nearest(const float* y, const std::vector<float>& centers, unsigned d) {
  unsigned best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (unsigned j = 0; j < centers.size() / d; ++j) {
    const double e = distance2(y, centers.data() + j * d, d);
    if (e < best_d) best_d = e, best = j;
  }
  return best;
}

// k centers of the groups (d floats each, m of them): k-means++ seeding from Philox stream
// `bucket`, then Lloyd iterations; an empty cluster keeps its center.
std::vector<float> kmeans(const std::vector<float>& groups, unsigned d, unsigned k,
                          std::uint32_t bucket) {
  const std::size_t m = groups.size() / d;
  const gc::philox_stream s(seed, 1, 0, bucket);
  std::vector<float> centers;
  std::vector<double> dist(m, std::numeric_limits<double>::infinity());
  std::size_t pick = s.at(0) % m;
  for (unsigned c = 0; c < k; ++c) {
    centers.insert(centers.end(), groups.begin() + static_cast<std::ptrdiff_t>(pick * d),
                   groups.begin() + static_cast<std::ptrdiff_t>(pick * d + d));
    double total = 0;
    for (std::size_t i = 0; i < m; ++i) {
      dist[i] = std::min(dist[i], distance2(&groups[i * d], &centers[c * d], d));
      total += dist[i];
    }
    // The next center with probability proportional to the squared distance.
    double target = static_cast<double>(s.at(c + 1) >> 8) * 0x1p-24 * total;
    pick = m - 1;
    for (std::size_t i = 0; i < m; ++i) {
      target -= dist[i];
      if (target < 0) {
        pick = i;
        break;
      }
    }
  }
  std::vector<double> sums(k * d);
  std::vector<std::size_t> counts(k);
  for (int it = 0; it < flat_iterations; ++it) {
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0);
    for (std::size_t i = 0; i < m; ++i) {
      const unsigned c = nearest(&groups[i * d], centers, d);
      ++counts[c];
      for (unsigned q = 0; q < d; ++q) sums[c * d + q] += groups[i * d + q];
    }
    for (unsigned c = 0; c < k; ++c) {
      if (counts[c] == 0) continue;
      for (unsigned q = 0; q < d; ++q) {
        centers[c * d + q] = static_cast<float>(sums[c * d + q] / static_cast<double>(counts[c]));
      }
    }
  }
  return centers;
}

template <int D>
gc::vq_tree train(double& mse_tree, double& mse_full) {
  const std::vector<float> y = gaussian_samples(train_groups * D, D);
  gc::vq_tree tree;
  tree.dim = D;
  const std::vector<float> coarse = kmeans(y, D, gc::vq_branches, 100 + D);
  std::vector<std::vector<float>> cells(gc::vq_branches);
  for (std::size_t i = 0; i < train_groups; ++i) {
    const float* g = &y[i * D];
    auto& cell = cells[nearest(g, coarse, D)];
    cell.insert(cell.end(), g, g + D);
  }
  std::copy(coarse.begin(), coarse.end(), tree.coarse.begin());
  for (unsigned c = 0; c < gc::vq_branches; ++c) {
    const std::vector<float> fine = kmeans(cells[c], D, gc::vq_branches, 200 + 16 * D + c);
    std::copy(fine.begin(), fine.end(), tree.fine.begin() + c * gc::vq_branches * D);
  }
  gc::detail::vq_learn_scratch scratch;
  gc::detail::vq_lloyd<D>(y.data(), train_groups, tree_iterations, tree, scratch);

  const std::vector<float> test = gaussian_samples(test_groups * D, 1000 + D);
  const gc::vq_search_tables t = gc::vq_search_tables::of(tree);
  const std::vector<float> all(tree.fine.begin(), tree.fine.begin() + gc::vq_codewords * D);
  double et = 0, ef = 0;
  for (std::size_t i = 0; i < test_groups; ++i) {
    const float* g = &test[i * D];
    et += distance2(g, tree.codeword(gc::vq_nearest<D>(g, t)), D);
    ef += distance2(g, tree.codeword(nearest(g, all, D)), D);
  }
  mse_tree = et / static_cast<double>(test_groups * D);
  mse_full = ef / static_cast<double>(test_groups * D);
  return tree;
}

void print_array(const char* name, const float* v, unsigned rows, unsigned d) {
  std::printf("inline constexpr float %s[%u * %u] = {\n", name, rows, d);
  for (unsigned r = 0; r < rows; ++r) {
    std::printf("   ");
    for (unsigned k = 0; k < d; ++k) std::printf(" %.9gf,", static_cast<double>(v[r * d + k]));
    std::printf("\n");
  }
  std::printf("};\n");
}

}  // namespace

int main() {
  std::printf(
      "// gradcomm/codec/detail/vq_codebooks.hpp — the vector quantizer's built-in Gaussian\n"
      "// codebooks. Internal. GENERATED by benchmarks/tools/make_codebook.cpp, which says how\n"
      "// to run it; do not edit.\n"
      "//\n"
      "// vq_gaussian_coarse_dD: 16 coarse centroids; vq_gaussian_fine_dD: 256 codewords,\n"
      "// codeword 16 i + j the child j of centroid i; rows of D floats. Mean squared error per\n"
      "// value on unit-variance Gaussian groups (RMS-normalized blocks of 256):\n");
  double mt[3], mf[3];
  const gc::vq_tree t2 = train<2>(mt[0], mf[0]);
  const gc::vq_tree t4 = train<4>(mt[1], mf[1]);
  const gc::vq_tree t8 = train<8>(mt[2], mf[2]);
  const unsigned dims[3] = {2, 4, 8};
  for (int i = 0; i < 3; ++i) {
    std::printf(
        "//   d = %u (%u bit%s a value): %.5f with the encoder's tree search, %.5f searching all\n",
        dims[i], 8 / dims[i], dims[i] == 8 ? "" : "s", mt[i], mf[i]);
    std::fprintf(stderr, "d=%u tree %.5f full %.5f\n", dims[i], mt[i], mf[i]);
  }
  std::printf(
      "#pragma once\n\nnamespace gradcomm {\ninline namespace v0 {\nnamespace detail {\n\n"
      "// One codeword a row.\n// clang-format off\n");
  for (const gc::vq_tree* t : {&t2, &t4, &t8}) {
    char name[64];
    std::snprintf(name, sizeof name, "vq_gaussian_coarse_d%u", t->dim);
    print_array(name, t->coarse.data(), gc::vq_branches, t->dim);
    std::snprintf(name, sizeof name, "vq_gaussian_fine_d%u", t->dim);
    print_array(name, t->fine.data(), gc::vq_codewords, t->dim);
    std::printf("\n");
  }
  std::printf(
      "// clang-format on\n\n}  // namespace detail\n}  // namespace v0\n}  // namespace "
      "gradcomm\n");
}

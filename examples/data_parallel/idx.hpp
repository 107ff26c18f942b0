// examples/data_parallel/idx.hpp — reads the IDX files of (Fashion-)MNIST, gzipped or not.
//
//   auto data = data_parallel::load_fashion_mnist("/usr/share/datasets/fashion-mnist");
//   std::printf("%zu training images of %zu × %zu\n", data.train.count, data.train.rows,
//               data.train.cols);
//
// IDX (LeCun's format): a big-endian u32 magic 0x000008DD (0x08: unsigned bytes, DD: the
// number of dimensions), one big-endian u32 per dimension, then the bytes, nothing after
// them. Images are 3-D (count × rows × cols), labels 1-D (count). Every length, dimension
// and count is checked before anything is allocated from it; a defect throws
// gradcomm::decode_error naming the file, the defect and the Debian package that installs
// intact copies. Needs zlib (Debian package zlib1g-dev).
#pragma once

#include <gradcomm/core/error.hpp>

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace data_parallel {

/// The folder the Debian package dataset-fashion-mnist installs.
inline constexpr const char* fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";
/// What to install when the data set is missing or damaged.
inline constexpr const char* fashion_mnist_hint =
    "the Debian package dataset-fashion-mnist installs it: apt-get install dataset-fashion-mnist";

/// One IDX file's contents: its dimensions and its bytes (row-major).
///
///   data_parallel::idx_array a = data_parallel::read_idx("labels.gz", 1);
///   std::uint8_t first_label = a.bytes[0];
struct idx_array {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> bytes;
};

/// Labelled images: `count` images of rows × cols bytes one after another, and their labels.
///
///   const std::uint8_t* img = split.pixels.data() + i * split.rows * split.cols;
struct image_set {
  std::size_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;
  std::vector<std::uint8_t> labels;
};

/// The two splits of Fashion-MNIST (60000 training, 10000 test images of 28 × 28, 10 classes).
///
///   auto d = data_parallel::load_fashion_mnist(dir);
struct fashion_mnist {
  image_set train, test;
};

namespace detail {

[[noreturn]] inline void idx_defect(const std::string& path, const std::string& defect) {
  throw gradcomm::decode_error("read_idx", path + ": " + defect + " (" + fashion_mnist_hint + ")");
}

struct gz_closer {
  void operator()(gzFile f) const noexcept { gzclose(f); }
};

// Reads exactly out.size() bytes; returns how many it got before the end of the data.
// A damaged gzip stream (bad CRC, bad deflate data) is an error, not a short read.
inline std::size_t gz_read_all(gzFile f, std::span<std::uint8_t> out, const std::string& path) {
  std::size_t got = 0;
  while (got < out.size()) {
    // gzread takes an unsigned count: read in slices well below its limit.
    const auto want = static_cast<unsigned>(std::min<std::size_t>(out.size() - got, 1u << 30));
    const int n = gzread(f, out.data() + got, want);
    if (n < 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      idx_defect(path, std::string("damaged compressed data (zlib: ") + msg + ")");
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  // zlib reports a gzip stream cut short as Z_BUF_ERROR at the end, not as a read error.
  int code = 0;
  gzerror(f, &code);
  if (code != Z_OK && code != Z_BUF_ERROR) {
    const char* msg = gzerror(f, &code);
    idx_defect(path, std::string("damaged compressed data (zlib: ") + msg + ")");
  }
  return got;
}

inline std::uint32_t big_endian_u32(const std::uint8_t* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

}  // namespace detail

/// Reads the IDX file at `path` (gzip-compressed or plain: zlib reads both) and checks
/// that it holds unsigned bytes in `ndims` dimensions, that its data is exactly as long
/// as the dimensions say (neither truncated nor followed by more bytes) and that it holds
/// at most `max_bytes` bytes of data. Throws gradcomm::error (generic category, the
/// errno) when the file cannot be opened, gradcomm::decode_error naming the defect when
/// it is malformed.
///
///   auto labels = data_parallel::read_idx(dir + "/t10k-labels-idx1-ubyte.gz", 1);
inline idx_array read_idx(const std::string& path, unsigned ndims,
                          std::size_t max_bytes = std::size_t{1} << 30) {
  errno = 0;
  std::unique_ptr<gzFile_s, detail::gz_closer> f(gzopen(path.c_str(), "rb"));
  if (!f) {
    const int e = errno != 0 ? errno : ENOMEM;
    throw gradcomm::error(std::error_code(e, std::generic_category()), "read_idx", -1,
                          "cannot open " + path + ": " + std::generic_category().message(e) + " (" +
                              fashion_mnist_hint + ", or pass --data DIR)");
  }
  gzbuffer(f.get(), 1u << 17);

  std::uint8_t magic[4];
  if (const std::size_t got = detail::gz_read_all(f.get(), magic, path); got < 4)
    detail::idx_defect(path, "truncated: " + std::to_string(got) +
                                 " bytes, shorter than the 4-byte IDX magic number");
  const std::uint32_t want_magic = 0x00000800u | ndims;
  if (const std::uint32_t m = detail::big_endian_u32(magic); m != want_magic) {
    char text[64];
    std::snprintf(text, sizeof text, "magic number 0x%08X, expected 0x%08X", m, want_magic);
    std::string why = text;
    if ((m & 0xFFFFFF00u) == 0x00000800u)
      why += " (" + std::to_string(m & 0xFFu) + " dimensions instead of " + std::to_string(ndims) +
             ")";
    else if ((m & 0xFFFF0000u) == 0)
      why += " (element type " + std::to_string((m >> 8) & 0xFFu) + ", not 8: unsigned bytes)";
    else
      why += " (not an IDX file)";
    detail::idx_defect(path, why);
  }

  idx_array a;
  std::vector<std::uint8_t> head(4 * std::size_t{ndims});
  if (const std::size_t got = detail::gz_read_all(f.get(), head, path); got < head.size())
    detail::idx_defect(path, "truncated in the header: " + std::to_string(got) + " of " +
                                 std::to_string(head.size()) + " dimension bytes");
  std::size_t total = 1;
  for (unsigned d = 0; d < ndims; ++d) {
    const std::uint32_t v = detail::big_endian_u32(head.data() + 4 * d);
    a.dims.push_back(v);
    // Checked before the multiplication can overflow and before anything is allocated.
    if (v != 0 && total > max_bytes / v)
      detail::idx_defect(
          path, "dimensions announce more than " + std::to_string(max_bytes) + " bytes of data");
    total *= v;
  }
  a.bytes.resize(total);
  if (const std::size_t got = detail::gz_read_all(f.get(), a.bytes, path); got < total)
    detail::idx_defect(path, "truncated: " + std::to_string(got) + " of " + std::to_string(total) +
                                 " data bytes (the dimensions announce that many)");
  std::uint8_t extra[1];
  if (detail::gz_read_all(f.get(), extra, path) != 0)
    detail::idx_defect(path, "more bytes after the " + std::to_string(total) +
                                 " data bytes that the dimensions announce");
  // All the data came, but a gzip stream cut before its trailer (the CRC) is damaged too.
  int code = Z_OK;
  gzerror(f.get(), &code);
  if (code == Z_BUF_ERROR)
    detail::idx_defect(path, "truncated compressed data: the gzip stream ends before its trailer");
  return a;
}

/// Reads one split: `images` (count × rows × cols) and `labels` (count), and checks that
/// they agree, that the count is `expect_count` (unless 0) and that labels are below
/// `classes`.
///
///   auto test = data_parallel::load_split(dir + "/t10k-images-idx3-ubyte.gz",
///                                         dir + "/t10k-labels-idx1-ubyte.gz", 10000);
inline image_set load_split(const std::string& images, const std::string& labels,
                            std::size_t expect_count = 0, unsigned classes = 10) {
  idx_array im = read_idx(images, 3);
  idx_array lb = read_idx(labels, 1);
  image_set s;
  s.count = im.dims[0];
  s.rows = im.dims[1];
  s.cols = im.dims[2];
  if (expect_count != 0 && s.count != expect_count)
    detail::idx_defect(
        images, std::to_string(s.count) + " images, expected " + std::to_string(expect_count));
  if (lb.dims[0] != s.count)
    detail::idx_defect(labels, std::to_string(lb.dims[0]) + " labels for the " +
                                   std::to_string(s.count) + " images of " + images);
  if (s.rows == 0 || s.cols == 0)
    detail::idx_defect(
        images, "images of " + std::to_string(s.rows) + " × " + std::to_string(s.cols) + " pixels");
  for (std::size_t i = 0; i < lb.bytes.size(); ++i)
    if (lb.bytes[i] >= classes)
      detail::idx_defect(labels, "label " + std::to_string(lb.bytes[i]) + " at index " +
                                     std::to_string(i) + ", expected 0 to " +
                                     std::to_string(classes - 1));
  s.pixels = std::move(im.bytes);
  s.labels = std::move(lb.bytes);
  return s;
}

/// Loads Fashion-MNIST from `dir` (the four gzipped IDX files of the Debian package
/// dataset-fashion-mnist) and checks the shapes: 60000 and 10000 images of 28 × 28.
///
///   auto d = data_parallel::load_fashion_mnist(data_parallel::fashion_mnist_default_dir);
inline fashion_mnist load_fashion_mnist(const std::string& dir) {
  fashion_mnist d;
  d.train =
      load_split(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz", 60000);
  d.test =
      load_split(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz", 10000);
  for (const auto* s : {&d.train, &d.test})
    if (s->rows != 28 || s->cols != 28)
      detail::idx_defect(
          s == &d.train ? dir + "/train-images-idx3-ubyte.gz" : dir + "/t10k-images-idx3-ubyte.gz",
          "images of " + std::to_string(s->rows) + " × " + std::to_string(s->cols) +
              " pixels, expected 28 × 28");
  return d;
}

}  // namespace data_parallel

// The IDX reader of examples/data_parallel (idx.hpp) on small files this test writes:
// intact ones (gzipped and plain) read back as written; truncated, mislabelled and
// inconsistent ones throw gradcomm::decode_error naming the file and the defect; a
// missing file throws gradcomm::error with the errno.
#include "idx.hpp"

#include <gradcomm/core/error.hpp>

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

namespace {

namespace fs = std::filesystem;
using bytes = std::vector<std::uint8_t>;

void put_u32(bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
}

bytes idx(std::uint32_t magic, std::vector<std::uint32_t> dims, bytes data) {
  bytes b;
  put_u32(b, magic);
  for (auto d : dims) put_u32(b, d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

bytes iota_bytes(std::size_t n, std::uint8_t mod = 251) {
  bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i % mod);
  return b;
}

bytes gzip(const bytes& raw) {
  uLongf cap = compressBound(static_cast<uLong>(raw.size())) + 64;
  bytes out(cap);
  z_stream z{};
  // windowBits 15 + 16: a gzip wrapper (header and CRC trailer), as the data set's files.
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  z.next_in = const_cast<Bytef*>(raw.data());
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

class IdxReader : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("gradcomm_idx_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const bytes& b) {
    const fs::path p = dir_ / name;
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return p.string();
  }
  std::string write_gz(const std::string& name, const bytes& raw) { return write(name, gzip(raw)); }

  // The decode_error's message, checking that it names the file and the package.
  static std::string defect_of(const std::string& path, auto&& read) {
    try {
      read();
    } catch (const gradcomm::decode_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path), std::string::npos) << what;
      EXPECT_NE(what.find("apt-get install dataset-fashion-mnist"), std::string::npos) << what;
      return what;
    }
    ADD_FAILURE() << "no decode_error for " << path;
    return {};
  }

  fs::path dir_;
};

TEST_F(IdxReader, ReadsGzippedAndPlainFilesAsWritten) {
  const bytes pixels = iota_bytes(3 * 4 * 5);
  const std::string gz = write_gz("images.gz", idx(0x803, {3, 4, 5}, pixels));
  const std::string raw = write("images", idx(0x803, {3, 4, 5}, pixels));
  for (const auto& path : {gz, raw}) {
    const auto a = data_parallel::read_idx(path, 3);
    EXPECT_EQ(a.dims, (std::vector<std::uint32_t>{3, 4, 5}));
    EXPECT_EQ(a.bytes, pixels);
  }
}

TEST_F(IdxReader, LoadsASplitOfImagesAndLabels) {
  const bytes pixels = iota_bytes(3 * 2 * 2), labels{7, 0, 9};
  const auto im = write_gz("im.gz", idx(0x803, {3, 2, 2}, pixels));
  const auto lb = write_gz("lb.gz", idx(0x801, {3}, labels));
  const auto s = data_parallel::load_split(im, lb, 3);
  EXPECT_EQ(s.count, 3u);
  EXPECT_EQ(s.rows, 2u);
  EXPECT_EQ(s.cols, 2u);
  EXPECT_EQ(s.pixels, pixels);
  EXPECT_EQ(s.labels, labels);
}

TEST_F(IdxReader, EmptyDataIsFine) {
  const auto lb = write_gz("lb.gz", idx(0x801, {0}, {}));
  EXPECT_TRUE(data_parallel::read_idx(lb, 1).bytes.empty());
}

TEST_F(IdxReader, TruncatedDataIsNamed) {
  bytes b = idx(0x803, {3, 2, 2}, iota_bytes(12));
  b.resize(b.size() - 2);
  const auto p = write_gz("short.gz", b);
  const auto what = defect_of(p, [&] { data_parallel::read_idx(p, 3); });
  EXPECT_NE(what.find("truncated: 10 of 12 data bytes"), std::string::npos) << what;
}

TEST_F(IdxReader, TruncatedHeaderIsNamed) {
  bytes b = idx(0x803, {3, 2, 2}, {});
  b.resize(10);  // magic and 1.5 dimensions
  const auto p = write_gz("head.gz", b);
  const auto what = defect_of(p, [&] { data_parallel::read_idx(p, 3); });
  EXPECT_NE(what.find("truncated in the header: 6 of 12"), std::string::npos) << what;

  const auto tiny = write_gz("tiny.gz", {0, 0});
  const auto w2 = defect_of(tiny, [&] { data_parallel::read_idx(tiny, 1); });
  EXPECT_NE(w2.find("shorter than the 4-byte IDX magic"), std::string::npos) << w2;
}

TEST_F(IdxReader, TruncatedGzipStreamIsNamed) {
  const bytes gz = gzip(idx(0x803, {4, 16, 16}, iota_bytes(4 * 16 * 16, 7)));
  // Cut in the deflate data: the data comes short.
  const auto mid =
      write("mid.gz", bytes(gz.begin(), gz.begin() + static_cast<long>(gz.size() / 2)));
  const auto w1 = defect_of(mid, [&] { data_parallel::read_idx(mid, 3); });
  EXPECT_NE(w1.find("truncated"), std::string::npos) << w1;
  // Cut in the 8-byte trailer (CRC and length): every data byte came, the file is damaged.
  const auto tail = write("tail.gz", bytes(gz.begin(), gz.end() - 3));
  const auto w2 = defect_of(tail, [&] { data_parallel::read_idx(tail, 3); });
  EXPECT_NE(w2.find("ends before its trailer"), std::string::npos) << w2;
}

TEST_F(IdxReader, DamagedGzipStreamIsNamed) {
  bytes gz = gzip(idx(0x801, {64}, iota_bytes(64)));
  gz[gz.size() - 6] ^= 0xFF;  // the CRC
  const auto p = write("crc.gz", gz);
  const auto what = defect_of(p, [&] { data_parallel::read_idx(p, 1); });
  EXPECT_NE(what.find("damaged compressed data"), std::string::npos) << what;
}

TEST_F(IdxReader, TrailingBytesAreNamed) {
  bytes b = idx(0x801, {3}, {1, 2, 3});
  b.push_back(4);
  const auto p = write_gz("long.gz", b);
  const auto what = defect_of(p, [&] { data_parallel::read_idx(p, 1); });
  EXPECT_NE(what.find("more bytes after the 3 data bytes"), std::string::npos) << what;
}

TEST_F(IdxReader, WrongMagicIsNamed) {
  // Images where labels are expected: 3 dimensions instead of 1.
  const auto im = write_gz("im.gz", idx(0x803, {1, 1, 1}, {0}));
  auto what = defect_of(im, [&] { data_parallel::read_idx(im, 1); });
  EXPECT_NE(what.find("magic number 0x00000803, expected 0x00000801"), std::string::npos) << what;
  EXPECT_NE(what.find("3 dimensions instead of 1"), std::string::npos) << what;

  // Floats (type 0x0D), not unsigned bytes.
  const auto fl = write_gz("fl.gz", idx(0xD01, {1}, {0, 0, 0, 0}));
  what = defect_of(fl, [&] { data_parallel::read_idx(fl, 1); });
  EXPECT_NE(what.find("element type 13"), std::string::npos) << what;

  // Not IDX at all: a text file.
  const auto txt = write("notes.txt", {'h', 'e', 'l', 'l', 'o', '\n'});
  what = defect_of(txt, [&] { data_parallel::read_idx(txt, 1); });
  EXPECT_NE(what.find("not an IDX file"), std::string::npos) << what;
}

TEST_F(IdxReader, ImpossibleDimensionsAreRejectedBeforeAllocating) {
  const auto p = write_gz("huge.gz", idx(0x803, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {}));
  const auto what = defect_of(p, [&] { data_parallel::read_idx(p, 3); });
  EXPECT_NE(what.find("dimensions announce more than"), std::string::npos) << what;
}

TEST_F(IdxReader, WrongCountsAreNamed) {
  const auto im = write_gz("im.gz", idx(0x803, {3, 2, 2}, iota_bytes(12)));
  const auto lb2 = write_gz("lb2.gz", idx(0x801, {2}, {1, 2}));
  auto what = defect_of(lb2, [&] { data_parallel::load_split(im, lb2); });
  EXPECT_NE(what.find("2 labels for the 3 images"), std::string::npos) << what;

  const auto lb3 = write_gz("lb3.gz", idx(0x801, {3}, {1, 2, 3}));
  what = defect_of(im, [&] { data_parallel::load_split(im, lb3, 60000); });
  EXPECT_NE(what.find("3 images, expected 60000"), std::string::npos) << what;

  const auto bad = write_gz("bad.gz", idx(0x801, {3}, {1, 10, 3}));
  what = defect_of(bad, [&] { data_parallel::load_split(im, bad); });
  EXPECT_NE(what.find("label 10 at index 1, expected 0 to 9"), std::string::npos) << what;
}

TEST_F(IdxReader, MissingFileNamesThePackage) {
  const std::string p = (dir_ / "absent.gz").string();
  try {
    data_parallel::read_idx(p, 1);
    FAIL() << "no error for a missing file";
  } catch (const gradcomm::decode_error& e) {
    FAIL() << "a missing file is not a malformed one: " << e.what();
  } catch (const gradcomm::error& e) {
    EXPECT_EQ(e.code(), std::errc::no_such_file_or_directory);
    const std::string what = e.what();
    EXPECT_NE(what.find(p), std::string::npos) << what;
    EXPECT_NE(what.find("apt-get install dataset-fashion-mnist"), std::string::npos) << what;
  }
}

TEST_F(IdxReader, FashionMnistFolderWithoutTheFiles) {
  EXPECT_THROW(data_parallel::load_fashion_mnist(dir_.string()), gradcomm::error);
}

}  // namespace

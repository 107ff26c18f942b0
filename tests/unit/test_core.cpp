// Core vocabulary: errors, dtypes, tensor views, counters.
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/execution.hpp>
#include <gradcomm/core/tensor.hpp>

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;

TEST(Error, IsASystemErrorWithCallRankAndReason) {
  const gc::error e(gc::make_error_code(gc::errc::invalid_argument), "codec::encode", 3,
                    "block size 0");
  const std::system_error& se = e;
  EXPECT_EQ(se.code(), gc::errc::invalid_argument);
  EXPECT_EQ(&se.code().category(), &gc::library_category());
  EXPECT_EQ(e.call(), "codec::encode");
  EXPECT_EQ(e.rank(), 3);
  EXPECT_EQ(e.reason(), "block size 0");
  const std::string what = e.what();
  EXPECT_NE(what.find("codec::encode"), std::string::npos) << what;
  EXPECT_NE(what.find("rank 3"), std::string::npos) << what;
  EXPECT_NE(what.find("block size 0"), std::string::npos) << what;
}

TEST(Error, NoRankIsLeftOut) {
  const gc::error e(gc::make_error_code(gc::errc::internal), "f", -1, "why");
  EXPECT_EQ(std::string(e.what()).find("rank"), std::string::npos) << e.what();
}

TEST(Error, VendorCategoriesCarryTheVendorCode) {
  const gc::error e(std::error_code(2, gc::cuda_category()), "cudaMalloc", 0,
                    "cudaErrorMemoryAllocation: out of memory");
  EXPECT_STREQ(e.code().category().name(), "cuda");
  EXPECT_EQ(e.code().value(), 2);
  EXPECT_STREQ(gc::nccl_category().name(), "nccl");
  EXPECT_STREQ(gc::mpi_category().name(), "mpi");
  EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos);
}

TEST(Error, KindsAreCatchableAsErrorAndNameThePeer) {
  try {
    throw gc::timeout_error("local_transport::wait", 1, 5, "rank 5 did not arrive in 200 ms");
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::timeout);
    EXPECT_EQ(dynamic_cast<const gc::timeout_error&>(e).peer(), 5);
  }
  try {
    throw gc::peer_error("local_transport::allreduce", 0, 2, "rank 2 failed: boom");
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::peer);
    EXPECT_EQ(dynamic_cast<const gc::peer_error&>(e).peer(), 2);
  }
  try {
    throw gc::decode_error("cast_codec::decode", "truncated: needs 24 bytes, 3 left");
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::decode);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
}

TEST(Error, LibraryCategoryNamesEveryCode) {
  for (int c = 1; c <= 7; ++c) {
    EXPECT_EQ(gc::library_category().message(c).find("unknown"), std::string::npos) << c;
  }
}

TEST(Dtype, SizesNamesAndTags) {
  static_assert(gc::dtype_of<float> == gc::dtype::f32);
  static_assert(gc::dtype_of<const gc::bf16> == gc::dtype::bf16);
  static_assert(gc::dtype_of<gc::f16> == gc::dtype::f16);
  static_assert(gc::dtype_of<gc::fp8_e4m3> == gc::dtype::fp8_e4m3);
  static_assert(gc::dtype_of<gc::fp8_e5m2> == gc::dtype::fp8_e5m2);
  static_assert(!gc::element_type<double> && !gc::element_type<std::uint16_t>);
  EXPECT_EQ(gc::dtype_size(gc::dtype::f32), 4u);
  EXPECT_EQ(gc::dtype_size(gc::dtype::bf16), 2u);
  EXPECT_EQ(gc::dtype_size(gc::dtype::fp8_e5m2), 1u);
  EXPECT_EQ(gc::dtype_name(gc::dtype::fp8_e4m3), "fp8_e4m3");
  for (int raw = 0; raw < 256; ++raw) {
    EXPECT_EQ(gc::is_valid_dtype(static_cast<std::uint8_t>(raw)), raw <= 4) << raw;
  }
}

// Host and device views are different types: a function taking host memory cannot be
// handed a device view, and only host views index.
template <class V>
concept indexable = requires(V v) {
  v[0];
};
template <class F, class V>
concept callable_with = requires(F f, V v) {
  f(v);
};
inline void takes_host(gc::host_view<const float>) {}
using takes_host_t = decltype(&takes_host);

static_assert(indexable<gc::host_view<float>>);
static_assert(!indexable<gc::device_view<float>>);
static_assert(callable_with<takes_host_t, gc::host_view<float>>);
static_assert(callable_with<takes_host_t, std::vector<float>&>);
static_assert(!callable_with<takes_host_t, gc::device_view<float>>);
static_assert(!callable_with<takes_host_t, gc::device_view<const float>>);
static_assert(!std::is_convertible_v<gc::device_view<float>, gc::host_view<float>>);
static_assert(!std::is_convertible_v<gc::host_view<float>, gc::device_view<float>>);
static_assert(!std::is_convertible_v<float*, gc::device_view<float>>);  // explicit only
static_assert(!std::is_convertible_v<gc::host_view<const float>, gc::host_view<float>>);
static_assert(std::is_convertible_v<gc::host_view<float>, gc::host_view<const float>>);
static_assert(std::is_convertible_v<const std::vector<float>&, gc::host_view<const float>>);
static_assert(!std::is_convertible_v<const std::vector<float>&, gc::host_view<float>>);

TEST(TensorView, HostViewsSeeTheirContainer) {
  std::vector<float> v{1, 2, 3, 4, 5};
  gc::host_view<float> h = v;
  EXPECT_EQ(h.size(), 5u);
  EXPECT_EQ(h.size_bytes(), 20u);
  EXPECT_EQ(h.data(), v.data());
  h[2] = 30;
  EXPECT_EQ(v[2], 30);
  auto s = h.subview(1, 3);
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0], 2);
  float sum = 0;
  for (float x : s) sum += x;
  EXPECT_EQ(sum, 2 + 30 + 4);
  EXPECT_EQ(gc::host_view<float>::element_dtype(), gc::dtype::f32);
  EXPECT_TRUE(gc::host_view<float>().empty());
}

TEST(TensorView, TensorRefKeepsTypeAndSpace) {
  std::vector<gc::bf16> v(7);
  const gc::tensor_ref r = gc::host_view<gc::bf16>(v);
  EXPECT_EQ(r.type, gc::dtype::bf16);
  EXPECT_EQ(r.space, gc::memory_space::host);
  EXPECT_EQ(r.size, 7u);
  EXPECT_EQ(r.size_bytes(), 14u);
  int dummy = 0;
  const gc::tensor_ref d = gc::device_view<float>(reinterpret_cast<float*>(&dummy), 1);
  EXPECT_EQ(d.space, gc::memory_space::device);
}

TEST(Counters, SnapshotsAndDifferences) {
  gc::traffic_counters c;
  c.add_sent(100);
  c.add_sent(20, 2);
  c.add_received(7);
  const auto a = c.snapshot();
  EXPECT_EQ(a.bytes_sent, 120u);
  EXPECT_EQ(a.messages_sent, 3u);
  EXPECT_EQ(a.bytes_received, 7u);
  EXPECT_EQ(a.messages_received, 1u);
  c.add_sent(5);
  const auto d = c.snapshot() - a;
  EXPECT_EQ(d.bytes_sent, 5u);
  EXPECT_EQ(d.messages_sent, 1u);
  c.reset();
  EXPECT_EQ(c.snapshot().bytes_sent, 0u);
}

TEST(Counters, TimersAddAndThreadsDoNotLoseCounts) {
  gc::traffic_counters c;
  {
    gc::scoped_timer t(c.wait_ns);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_GE(c.snapshot().wait_ns, 2'000'000);
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i) {
    th.emplace_back([&] {
      for (int k = 0; k < 10000; ++k) c.add_sent(3);
    });
  }
  for (auto& t : th) t.join();
  EXPECT_EQ(c.snapshot().bytes_sent, 4u * 10000u * 3u);
  EXPECT_EQ(c.snapshot().messages_sent, 40000u);
}

static_assert(gc::on_host == gc::host_context{});

TEST(Error, WhatIsExactlyTheDocumentedFormat) {
  const gc::decode_error e("cast_codec::decode", "truncated: needs 24 bytes, 3 left", 2);
  EXPECT_STREQ(e.what(),
               "gradcomm: cast_codec::decode on rank 2: truncated: needs 24 bytes, 3 left "
               "[gradcomm:1]");
}

// The all-reduce refuses what would otherwise be a silent wrong answer: ranks whose
// registrations, options or codec settings differ are stopped at the first start() with
// the same named error on every rank, before any value is touched. Errors of a bucket in
// flight name the bucket and its tensors; tensors that travel uncompressed are said so.
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

struct spec {
  std::size_t elems;
  std::string name;
};

// Runs one average() on `n` ranks with rank r's registration specs(r), codec codec_of(r)
// and options opt_of(r); returns each rank's error reason ("" where none) and checks that
// no registered value changed where an error was raised.
template <class C, class Specs, class CodecOf, class OptOf>
std::vector<std::string> first_step_errors(int n, Specs specs, CodecOf codec_of, OptOf opt_of) {
  gc::local_world world(n, 20s);
  std::vector<std::string> reasons(uz(n));
  world.run([&](gc::local_transport& t) {
    const std::vector<spec> mine = specs(t.rank());
    std::vector<std::vector<float>> ts;
    for (const spec& s : mine) ts.emplace_back(s.elems, static_cast<float>(t.rank() + 1));
    gc::allreduce<C, gc::local_transport> comm(t, codec_of(t.rank()), opt_of(t.rank()));
    for (std::size_t k = 0; k < mine.size(); ++k) comm.add_tensor(ts[k], mine[k].name);
    try {
      comm.average();
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument) << e.what();
      EXPECT_EQ(e.call(), "allreduce::start") << e.what();
      reasons[uz(t.rank())] = e.reason();
      for (const auto& v : ts)
        for (float x : v) ASSERT_EQ(x, static_cast<float>(t.rank() + 1));
      // Later calls keep refusing: the ranks still disagree.
      EXPECT_THROW(comm.average(), gc::error);
    }
  });
  return reasons;
}

gc::allreduce_options defaults(int) { return {}; }

void expect_same_everywhere(const std::vector<std::string>& reasons) {
  ASSERT_FALSE(reasons.empty());
  EXPECT_FALSE(reasons[0].empty()) << "no error";
  for (const std::string& r : reasons) EXPECT_EQ(r, reasons[0]);
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(allreduce_agreement, tensors_registered_in_another_order_are_refused_by_name) {
  // Same sizes, other order on rank 2: layer A would be averaged with layer B.
  for (const int n : {2, 3, 4}) {
    const auto reasons = first_step_errors<gc::identity_codec>(
        n,
        [n](int r) {
          std::vector<spec> s{{5000, "fc1.weight"}, {5000, "fc2.weight"}, {10, "fc2.bias"}};
          if (r == n - 1) std::swap(s[0], s[1]);
          return s;
        },
        [](int) { return gc::identity_codec{}; }, defaults);
    expect_same_everywhere(reasons);
    const std::string& why = reasons[0];
    EXPECT_TRUE(contains(why, "tensor 0")) << why;
    EXPECT_TRUE(contains(why, "'fc1.weight'")) << why;
    EXPECT_TRUE(contains(why, "'fc2.weight'")) << why;
    EXPECT_TRUE(contains(why, "rank " + std::to_string(n - 1))) << why;
  }
}

TEST(allreduce_agreement, sizes_and_counts_that_differ_are_refused) {
  {  // unnamed tensors of other sizes, in another order
    const auto reasons = first_step_errors<gc::identity_codec>(
        3,
        [](int r) {
          return r == 1 ? std::vector<spec>{{5000, ""}, {3000, ""}}
                        : std::vector<spec>{{3000, ""}, {5000, ""}};
        },
        [](int) { return gc::identity_codec{}; }, defaults);
    expect_same_everywhere(reasons);
    EXPECT_EQ(reasons[0],
              "the ranks registered other tensors: tensor 0 has 3000 elements on rank 0 but 5000 "
              "on rank 1")
        << reasons[0];
  }
  {  // one tensor more
    const auto reasons = first_step_errors<gc::identity_codec>(
        2,
        [](int r) {
          std::vector<spec> s{{3000, "a"}, {5000, "b"}};
          if (r == 1) s.push_back({7, "c"});
          return s;
        },
        [](int) { return gc::identity_codec{}; }, defaults);
    expect_same_everywhere(reasons);
    EXPECT_TRUE(contains(reasons[0], "rank 0 registered 2 tensors but rank 1 registered 3"))
        << reasons[0];
  }
}

TEST(allreduce_agreement, codec_settings_that_differ_are_refused_naming_the_setting) {
  // 8 bits on rank 0, 4 on the others: before, "rank 0 sends 552 bytes to rank 3 but rank
  // 3 expects 292".
  const auto reasons = first_step_errors<gc::scalar_quant_codec>(
      4,
      [](int) {
        return std::vector<spec>{{5000, "w"}};
      },
      [](int r) { return gc::scalar_quant_codec({.bits = r == 0 ? 8u : 4u}); }, defaults);
  expect_same_everywhere(reasons);
  const std::string& why = reasons[0];
  EXPECT_TRUE(contains(why, "codec settings")) << why;
  EXPECT_TRUE(contains(why, "scalar_quant")) << why;
  EXPECT_TRUE(contains(why, "parameter byte 0: 0x08 on rank 0 but 0x04 on rank 1")) << why;

  // Top-k with other k: a variable-size codec, compared on the same probe.
  const auto topk = first_step_errors<gc::topk_codec>(
      2,
      [](int) {
        return std::vector<spec>{{4096, "w"}};
      },
      [](int r) { return gc::topk_codec({.ratio = r == 0 ? 0.01 : 0.02}); }, defaults);
  expect_same_everywhere(topk);
  EXPECT_TRUE(contains(topk[0], "codec settings")) << topk[0];
}

TEST(allreduce_agreement, options_that_differ_are_refused_naming_the_option) {
  const auto reasons = first_step_errors<gc::identity_codec>(
      3,
      [](int) {
        return std::vector<spec>{{300000, "w"}, {100, "b"}};
      },
      [](int) { return gc::identity_codec{}; },
      [](int r) {
        gc::allreduce_options o;
        if (r == 2) o.bucket_bytes = 1 << 20;
        return o;
      });
  expect_same_everywhere(reasons);
  EXPECT_EQ(reasons[0], "option bucket_bytes is 4194304 on rank 0 but 1048576 on rank 2")
      << reasons[0];

  const auto seeds = first_step_errors<gc::identity_codec>(
      2,
      [](int) {
        return std::vector<spec>{{3000, "w"}};
      },
      [](int) { return gc::identity_codec{}; },
      [](int r) {
        gc::allreduce_options o;
        o.seed = static_cast<std::uint64_t>(r);
        return o;
      });
  expect_same_everywhere(seeds);
  EXPECT_EQ(seeds[0], "option seed is 0 on rank 0 but 1 on rank 1") << seeds[0];
}

TEST(allreduce_agreement, agreeing_ranks_pay_one_small_allgather_once) {
  gc::local_world world(3, 20s);
  world.run([&](gc::local_transport& t) {
    std::vector<float> a(5000, 1.0f), b(7, 2.0f);
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(t, gc::scalar_quant_codec{},
                                                                    {.overlap = false});
    comm.add_tensor(a, "a");
    comm.add_tensor(b, "b");
    comm.average();
    const auto first = t.counters().snapshot();
    comm.average();
    const auto second = t.counters().snapshot() - first;
    const auto before = t.counters().snapshot();
    comm.average();
    const auto third = t.counters().snapshot() - before;
    // The check ran in the first round only: later rounds send the same messages.
    EXPECT_EQ(second.messages_sent, third.messages_sent);
    EXPECT_EQ(second.bytes_sent, third.bytes_sent);
    EXPECT_LT(second.messages_sent, first.messages_sent);
  });
}

TEST(allreduce_agreement, an_error_in_flight_names_the_bucket_and_its_tensors) {
  // A NaN on rank 1 in tensor 'fc2.weight': its encode refuses it (nonfinite reject).
  gc::local_world world(2, 2s);
  std::vector<std::string> whats(2);
  EXPECT_ANY_THROW(world.run([&](gc::local_transport& t) {
    std::vector<float> a(5000, 1.0f), b(5000, 1.0f);
    if (t.rank() == 1) b[17] = std::numeric_limits<float>::quiet_NaN();
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(t, gc::scalar_quant_codec{},
                                                                    {.bucket_bytes = 5120 * 4});
    comm.add_tensor(a, "fc1.weight");
    comm.add_tensor(b, "fc2.weight");
    try {
      comm.average();
    } catch (const gc::error& e) {
      whats[uz(t.rank())] = e.what();
      throw;
    }
  }));
  EXPECT_TRUE(contains(whats[1], "bucket 0 of 2")) << whats[1];
  EXPECT_TRUE(contains(whats[1], "'fc2.weight'")) << whats[1];
  EXPECT_TRUE(contains(whats[1], "index")) << whats[1];  // the codec's own words stay
}

TEST(allreduce_agreement, tensors_that_travel_uncompressed_are_said_once) {
  gc::local_world world(2, 20s);
  std::vector<std::string> notices;
  std::mutex mu;
  world.run([&](gc::local_transport& t) {
    std::vector<float> a(5000, 1.0f), b(1000, 1.0f), c(10, 1.0f);
    gc::allreduce_options o;
    o.notice = [&](const std::string& s) {
      std::lock_guard lk(mu);
      notices.push_back(s);
    };
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(t, gc::scalar_quant_codec{}, o);
    comm.add_tensor(a, "big");
    comm.add_tensor(b, "small1");
    comm.add_tensor(c, "small2");
    comm.average();
    comm.average();
    EXPECT_EQ(comm.uncompressed_elements(), 1010u);
    EXPECT_TRUE(comm.stats(0).compressed);
    EXPECT_FALSE(comm.stats(1).compressed);
  });
  ASSERT_EQ(notices.size(), 1u);  // rank 0, once
  EXPECT_TRUE(contains(notices[0], "2 of 3 tensors")) << notices[0];
  EXPECT_TRUE(contains(notices[0], "1010 of 6010 values")) << notices[0];
  EXPECT_TRUE(contains(notices[0], "small_tensor_elems = 1024")) << notices[0];
}

TEST(allreduce_agreement, uncompressed_codecs_and_no_small_tensors_say_nothing) {
  gc::local_world world(2, 20s);
  std::atomic<int> notices{0};
  world.run([&](gc::local_transport& t) {
    std::vector<float> a(5000, 1.0f), c(10, 1.0f);
    gc::allreduce_options o;
    o.notice = [&](const std::string&) { notices.fetch_add(1); };
    gc::allreduce<gc::identity_codec, gc::local_transport> plain(t, {}, o);
    plain.add_tensor(a);
    plain.add_tensor(c);
    plain.average();
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> big(t, gc::scalar_quant_codec{}, o);
    big.add_tensor(a);
    big.average();
    EXPECT_EQ(big.uncompressed_elements(), 0u);
  });
  EXPECT_EQ(notices.load(), 0);
}

}  // namespace

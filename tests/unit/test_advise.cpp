// The codec advisor (comm/advise.hpp): the model's picks from injected measurements (fast
// and slow links, every accuracy class, never slower than f32), its errors, and the
// collective parts over local_transport (the probe, the same advice on every rank).
#include <gradcomm/comm/advise.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;
using gc::accuracy_class;
using gc::advised_codec;

namespace {

constexpr accuracy_class all_classes[] = {accuracy_class::lossless, accuracy_class::sixteen_bit,
                                          accuracy_class::eight_bit, accuracy_class::any};

// Every candidate at the same speed (seconds per value for each operation).
gc::codec_speeds uniform_speeds(double s_per_value) {
  gc::codec_speeds s;
  for (advised_codec c : gc::advised_codecs())
    s.rates.push_back({c, 1 << 20, s_per_value, s_per_value, s_per_value});
  return s;
}

const gc::candidate_prediction& candidate(const gc::bucket_advice& b, advised_codec c) {
  for (const auto& p : b.candidates)
    if (p.codec == c) return p;
  throw std::runtime_error("no candidate " + std::string(gc::advised_codec_name(c)));
}

void expect_errc(gc::errc want, auto&& f) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::make_error_code(want)) << e.what();
  }
}

const std::vector<std::size_t> sizes = {std::size_t{1} << 20, 300000, 4096};
constexpr gc::link_model fast_link{.latency_s = 1e-6, .seconds_per_byte = 1.0 / 100e9};
constexpr gc::link_model slow_link{.latency_s = 50e-6, .seconds_per_byte = 8.0 / 1e9};  // 1 Gbit/s

}  // namespace

TEST(Advise, FastLinkAndSlowCodecsPickF32) {
  gc::codec_speeds s = uniform_speeds(20e-9);  // 20 ns a value: slow codecs
  for (auto& r : s.rates)
    if (r.codec == advised_codec::none) r.decode_add_s_per_value = 0.3e-9;  // f32's sum
  for (int ranks : {2, 4, 8})
    for (accuracy_class c : all_classes) {
      const gc::advice a = gc::advise<gc::local_transport>(sizes, ranks, fast_link, s, c);
      ASSERT_EQ(a.buckets.size(), sizes.size());
      for (const auto& b : a.buckets) {
        EXPECT_EQ(b.codec, advised_codec::none) << b.why;
        EXPECT_EQ(b.algorithm, gc::detail::ar_algorithm::native);
        EXPECT_EQ(b.predicted_s, b.f32_s);
        EXPECT_NE(b.why.find("none native"), std::string::npos) << b.why;
        EXPECT_NE(b.why.find(c == accuracy_class::lossless ? " would take " : " vs "),
                  std::string::npos)
            << b.why;
      }
    }
}

TEST(Advise, SlowLinkPicksACompressedCodec) {
  const gc::codec_speeds s = uniform_speeds(0.5e-9);
  for (int ranks : {2, 4, 16}) {
    const gc::advice a =
        gc::advise<gc::local_transport>(sizes, ranks, slow_link, s, accuracy_class::any);
    const auto& big = a.buckets[0];
    EXPECT_NE(big.codec, advised_codec::none) << big.why;
    EXPECT_LT(big.predicted_s, 0.5 * big.f32_s) << big.why;
    EXPECT_NE(big.why.find("bucket 0 (4 MiB): "), std::string::npos) << big.why;
    EXPECT_NE(big.why.find(" vs f32 native "), std::string::npos) << big.why;
    // The 16-bit class on the same link: a half-precision cast, half of f32's bytes.
    const gc::advice h =
        gc::advise<gc::local_transport>(sizes, ranks, slow_link, s, accuracy_class::sixteen_bit);
    EXPECT_TRUE(h.buckets[0].codec == advised_codec::bf16 ||
                h.buckets[0].codec == advised_codec::fp16)
        << h.buckets[0].why;
    const gc::advice e =
        gc::advise<gc::local_transport>(sizes, ranks, slow_link, s, accuracy_class::eight_bit);
    EXPECT_EQ(e.buckets[0].codec, advised_codec::int8) << e.buckets[0].why;
    EXPECT_EQ(e.buckets[0].algorithm, gc::detail::ar_algorithm::scatter_reduce_allgather);
  }
}

TEST(Advise, RespectsEachClassAndNeverLosesToF32) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> lg(-1.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const gc::link_model link{.latency_s = 1e-6 * std::pow(10.0, 2 * lg(rng)),
                              .seconds_per_byte = 1e-10 * std::pow(10.0, 2 * lg(rng))};
    gc::codec_speeds s;
    for (advised_codec c : gc::advised_codecs())
      s.rates.push_back({c, 1 << 20, 1e-9 * std::pow(10.0, lg(rng)), 1e-9 * std::pow(10.0, lg(rng)),
                         1e-9 * std::pow(10.0, lg(rng))});
    const int ranks = 1 + static_cast<int>(rng() % 16);
    for (accuracy_class c : all_classes) {
      const gc::advice a = gc::advise<gc::local_transport>(sizes, ranks, link, s, c);
      for (const auto& b : a.buckets) {
        EXPECT_LE(gc::advised_codec_class(b.codec), c) << b.why;
        EXPECT_LE(b.predicted_s, b.f32_s) << b.why;
        EXPECT_TRUE(std::isfinite(b.predicted_s) && b.predicted_s >= 0) << b.why;
        // The pick is the fastest of the allowed candidates.
        for (const auto& p : b.candidates) {
          EXPECT_EQ(p.allowed, gc::advised_codec_class(p.codec) <= c);
          if (p.allowed) {
            EXPECT_LE(b.predicted_s, p.predicted_s) << b.why;
          }
          EXPECT_NEAR(p.predicted_s, p.compute_s + p.wire_s, 1e-15);
        }
        if (c == accuracy_class::lossless) {
          EXPECT_EQ(b.codec, advised_codec::none);
        }
      }
    }
  }
}

TEST(Advise, OneRankHasNoLinkAndKeepsF32) {
  const gc::advice a = gc::advise<gc::local_transport>(sizes, 1, slow_link, uniform_speeds(1e-9),
                                                       accuracy_class::any);
  for (const auto& b : a.buckets) {
    EXPECT_EQ(b.codec, advised_codec::none) << b.why;
    for (const auto& p : b.candidates) {
      EXPECT_EQ(p.wire_s, 0.0);
      EXPECT_EQ(p.bytes_sent, 0.0);
    }
  }
}

TEST(Advise, AlgorithmsAreTheAllreducesOwn) {
  const gc::advice a = gc::advise<gc::local_transport>(sizes, 4, slow_link, uniform_speeds(1e-9),
                                                       accuracy_class::any);
  const auto& b = a.buckets[0];
  using A = gc::detail::ar_algorithm;
  EXPECT_EQ(candidate(b, advised_codec::none).algorithm, A::native);
  // local_transport sums only native_reduce_type: casts take scatter-reduce-allgather.
  constexpr A bf16_alg = gc::allreduce<gc::bf16_codec, gc::local_transport>::algorithm;
  EXPECT_EQ(candidate(b, advised_codec::bf16).algorithm, bf16_alg);
  EXPECT_EQ(candidate(b, advised_codec::int8).algorithm, A::scatter_reduce_allgather);
  EXPECT_EQ(candidate(b, advised_codec::sign).algorithm, A::scatter_reduce_allgather);
  // Top-k 1 % at 4 ranks: the sparse cost rule's choice (all-gather of 4 × 1 %).
  const gc::detail::ar_algorithm topk = candidate(b, advised_codec::topk).algorithm;
  EXPECT_TRUE(topk == A::allgather || topk == A::sparse_reduce_scatter) << b.why;
  // Fewer bytes for fewer bits, as the model counts them.
  EXPECT_LT(candidate(b, advised_codec::int4).bytes_sent,
            candidate(b, advised_codec::int8).bytes_sent);
  EXPECT_LT(candidate(b, advised_codec::int8).bytes_sent,
            candidate(b, advised_codec::bf16).bytes_sent);
  EXPECT_LT(candidate(b, advised_codec::bf16).bytes_sent,
            candidate(b, advised_codec::none).bytes_sent);
  // A ring all-reduce of f32: 2 (N − 1) / N of the bucket.
  EXPECT_DOUBLE_EQ(candidate(b, advised_codec::none).bytes_sent, 1.5 * 4.0 * (1 << 20));
}

TEST(Advise, MisuseIsANamedError) {
  const gc::codec_speeds s = uniform_speeds(1e-9);
  const std::vector<std::size_t> none;
  expect_errc(gc::errc::invalid_argument,
              [&] { gc::advise<gc::local_transport>(none, 2, slow_link, s); });
  expect_errc(gc::errc::invalid_argument,
              [&] { gc::advise<gc::local_transport>(sizes, 0, slow_link, s); });
  expect_errc(gc::errc::invalid_argument, [&] {
    gc::advise<gc::local_transport>(sizes, 2, slow_link, s, static_cast<accuracy_class>(9));
  });
  expect_errc(gc::errc::invalid_argument, [&] {
    gc::advise<gc::local_transport>(std::vector<std::size_t>{16, 0}, 2, slow_link, s);
  });
  expect_errc(gc::errc::invalid_argument, [&] {
    gc::advise<gc::local_transport>(sizes, 2, {.latency_s = -1, .seconds_per_byte = 1e-9}, s);
  });
  expect_errc(gc::errc::invalid_argument, [&] {
    gc::advise<gc::local_transport>(sizes, 2, {.latency_s = 1e-6, .seconds_per_byte = NAN}, s);
  });
  gc::codec_speeds missing = s;
  missing.rates.pop_back();
  expect_errc(gc::errc::invalid_argument,
              [&] { gc::advise<gc::local_transport>(sizes, 2, slow_link, missing); });
  expect_errc(gc::errc::invalid_argument, [] { gc::parse_accuracy_class("12bit"); });
  for (accuracy_class c : all_classes)
    EXPECT_EQ(gc::parse_accuracy_class(gc::accuracy_class_name(c)), c);
  expect_errc(gc::errc::invalid_argument,
              [] { gc::with_advised_codec(static_cast<advised_codec>(42), [](auto) {}); });
#if !GRADCOMM_HAS_EIGEN
  expect_errc(gc::errc::unsupported,
              [] { gc::with_advised_codec(advised_codec::powersgd, [](auto) {}); });
#endif
}

TEST(Advise, ProbeIsPositiveFiniteAndTheSameOnEveryRank) {
  for (int ranks : {1, 2, 3, 4}) {
    gc::local_world world(ranks, 30s);
    std::vector<gc::link_model> got(static_cast<std::size_t>(ranks));
    world.run([&](gc::local_transport& t) {
      got[static_cast<std::size_t>(t.rank())] =
          gc::probe_link(t, {.probe_reps = 3, .probe_bytes = 256 << 10});
    });
    for (const auto& l : got) {
      if (ranks == 1) {
        EXPECT_EQ(l.latency_s, 0.0);
        EXPECT_EQ(l.seconds_per_byte, 0.0);
        continue;
      }
      EXPECT_TRUE(std::isfinite(l.latency_s) && l.latency_s > 0);
      EXPECT_TRUE(std::isfinite(l.seconds_per_byte) && l.seconds_per_byte > 0);
      EXPECT_EQ(std::memcmp(&l, &got[0], sizeof l), 0) << "ranks disagree";
    }
  }
}

TEST(Advise, EveryRankGetsTheSameAdvice) {
  const std::vector<std::size_t> small = {8192, 3000};
  for (int ranks : {2, 3}) {
    gc::local_world world(ranks, 60s);
    std::vector<gc::advice> got(static_cast<std::size_t>(ranks));
    world.run([&](gc::local_transport& t) {
      got[static_cast<std::size_t>(t.rank())] =
          gc::advise(t, small, accuracy_class::any,
                     {.probe_reps = 2, .probe_bytes = 64 << 10, .codec_reps = 1});
    });
    for (const auto& a : got) {
      ASSERT_EQ(a.buckets.size(), small.size());
      EXPECT_EQ(a.world_size, ranks);
      EXPECT_EQ(std::memcmp(&a.link, &got[0].link, sizeof a.link), 0);
      for (std::size_t b = 0; b < small.size(); ++b) {
        const gc::bucket_advice& x = a.buckets[b];
        EXPECT_EQ(x.codec, got[0].buckets[b].codec);
        EXPECT_EQ(x.predicted_s, got[0].buckets[b].predicted_s);
        EXPECT_EQ(x.measured_s, got[0].buckets[b].measured_s);
        EXPECT_EQ(x.why, got[0].buckets[b].why);
        // The trial ran (default trial_reps): f32 among the tried, and the pick the fastest
        // measured of the tried, so never slower than f32 as measured.
        const double f32 = candidate(x, advised_codec::none).measured_s;
        EXPECT_GT(f32, 0.0);
        EXPECT_GT(x.measured_s, 0.0);
        EXPECT_LE(x.measured_s, f32);
        EXPECT_EQ(x.measured_s, candidate(x, x.codec).measured_s);
        for (const auto& p : x.candidates) {
          if (p.allowed && p.measured_s > 0) {
            EXPECT_LE(x.measured_s, p.measured_s);
          }
        }
        EXPECT_NE(x.why.find("measured"), std::string::npos) << x.why;
      }
    }
  }
}

TEST(Advise, DifferentBucketListsAreAnErrorOnEveryRank) {
  gc::local_world world(2, 30s);
  std::vector<int> codes(2, 0);
  world.run([&](gc::local_transport& t) {
    const std::vector<std::size_t> mine = {4096, t.rank() == 0 ? 1024u : 2048u};
    try {
      gc::advise(t, mine);
    } catch (const gc::error& e) {
      codes[static_cast<std::size_t>(t.rank())] = e.code().value();
    }
  });
  for (int c : codes) EXPECT_EQ(c, static_cast<int>(gc::errc::invalid_argument));
}

TEST(Advise, MeasuredSpeedsArePositiveForEveryCandidate) {
  const std::vector<std::size_t> n = {5000, 1 << 16, 5000};
  const gc::codec_speeds s = gc::measure_codec_speeds(n, {.codec_reps = 1});
  EXPECT_EQ(s.rates.size(), 2 * gc::advised_codecs().size());  // two distinct sizes
  for (const auto& r : s.rates) {
    EXPECT_TRUE(r.encode_s_per_value > 0 && std::isfinite(r.encode_s_per_value));
    EXPECT_TRUE(r.decode_add_s_per_value > 0 && std::isfinite(r.decode_add_s_per_value));
  }
  EXPECT_EQ(s.find(advised_codec::int8, 6000)->values, 5000u);
  EXPECT_EQ(s.find(advised_codec::int8, 1 << 20)->values, std::size_t{1} << 16);
}

// Each pick maps to a codec the all-reduce runs: its mean is close to the exact one.
TEST(Advise, EveryPickRunsInTheAllreduce) {
  for (advised_codec c : gc::advised_codecs()) {
    gc::local_world world(2, 30s);
    std::vector<double> err(2);
    world.run([&](gc::local_transport& t) {
      gc::with_advised_codec(c, [&]<class C>(C codec) {
        gc::allreduce<C, gc::local_transport> ar(t, std::move(codec), {.small_tensor_elems = 0});
        std::vector<float> g(4096), exact(4096);
        for (std::size_t i = 0; i < g.size(); ++i) {
          const float a = std::sin(0.01f * static_cast<float>(i)),
                      b = std::cos(0.013f * static_cast<float>(i));
          g[i] = t.rank() == 0 ? a : b;
          exact[i] = 0.5f * (a + b);
        }
        ar.average(g);
        double d = 0, e = 0;
        for (std::size_t i = 0; i < g.size(); ++i) {
          d += (g[i] - exact[i]) * (g[i] - exact[i]);
          e += exact[i] * exact[i];
        }
        err[static_cast<std::size_t>(t.rank())] = std::sqrt(d / e);
      });
    });
    // One call from fresh state: top-k keeps 1 %, sign one bit; the rest are close.
    const double bound = c == advised_codec::topk || c == advised_codec::sign ? 1.2
                         : c == advised_codec::none                           ? 1e-6
                                                                              : 0.2;
    EXPECT_LE(err[0], bound) << gc::advised_codec_name(c);
    EXPECT_EQ(err[0], err[1]) << gc::advised_codec_name(c);
  }
}

// The trial's choice from measured times: the fastest tried and allowed candidate, untried
// and disallowed ones ignored, the model's pick kept on a tie or when nothing was tried.
TEST(Advise, TrialPicksTheFastestMeasuredOfTheTried) {
  gc::advice a = gc::advise<gc::local_transport>(sizes, 4, slow_link, uniform_speeds(1e-9),
                                                 accuracy_class::eight_bit);
  gc::bucket_advice ba = a.buckets[0];
  ASSERT_NE(ba.codec, advised_codec::none);  // 1 Gbit/s: the model compresses
  const advised_codec model_pick = ba.codec;
  auto set = [&](advised_codec c, double s) {
    for (auto& p : ba.candidates)
      if (p.codec == c) p.measured_s = s;
  };
  // Nothing tried: the model's pick stays.
  gc::detail::advise_pick_measured(ba, 0);
  EXPECT_EQ(ba.codec, model_pick);
  EXPECT_EQ(ba.measured_s, 0.0);
  // bf16 measured fastest of the tried; sign (not allowed at 8 bits) faster still: ignored.
  set(advised_codec::none, 0.030);
  set(model_pick, 0.020);
  set(advised_codec::bf16, 0.015);
  set(advised_codec::sign, 0.001);
  gc::detail::advise_pick_measured(ba, 0);
  EXPECT_EQ(ba.codec, advised_codec::bf16);
  EXPECT_EQ(ba.measured_s, 0.015);
  EXPECT_EQ(ba.algorithm, candidate(ba, advised_codec::bf16).algorithm);
  EXPECT_NE(ba.why.find("bf16"), std::string::npos) << ba.why;
  EXPECT_NE(ba.why.find("15.0 ms measured"), std::string::npos) << ba.why;
  EXPECT_NE(ba.why.find("vs f32"), std::string::npos) << ba.why;
  // f32 measured fastest: f32 is the pick, and the line names what came closest.
  set(advised_codec::none, 0.010);
  gc::detail::advise_pick_measured(ba, 0);
  EXPECT_EQ(ba.codec, advised_codec::none);
  EXPECT_NE(ba.why.find("bf16"), std::string::npos) << ba.why;
  // A tie keeps the current pick.
  set(advised_codec::bf16, 0.010);
  gc::detail::advise_pick_measured(ba, 0);
  EXPECT_EQ(ba.codec, advised_codec::none);
}

// Which candidates the trial runs: the allowed ones predicted close to the pick, with f32
// and the pick always among them.
TEST(Advise, TrialSetIsTheCloseCandidatesAndF32) {
  gc::advice a = gc::advise<gc::local_transport>(sizes, 4, slow_link, uniform_speeds(1e-9),
                                                 accuracy_class::any);
  const gc::bucket_advice& ba = a.buckets[0];
  for (double within : {1.0, 1.5, 4.0, 1e9}) {
    const std::vector<std::size_t> tried = gc::detail::advise_trial_set(ba, within);
    bool has_none = false, has_pick = false;
    for (std::size_t i : tried) {
      const auto& p = ba.candidates[i];
      EXPECT_TRUE(p.allowed);
      has_none |= p.codec == advised_codec::none;
      has_pick |= p.codec == ba.codec;
      if (p.codec != advised_codec::none && p.codec != ba.codec) {
        EXPECT_LE(p.predicted_s, within * ba.predicted_s) << gc::advised_codec_name(p.codec);
      }
    }
    EXPECT_TRUE(has_none && has_pick) << within;
    std::size_t close = 0;
    for (const auto& p : ba.candidates)
      close += p.allowed && (p.codec == advised_codec::none || p.codec == ba.codec ||
                             p.predicted_s <= within * ba.predicted_s);
    EXPECT_EQ(tried.size(), close) << within;
  }
}

TEST(Advise, TrialSettingsOutOfRangeAreANamedErrorOnEveryRank) {
  for (gc::advise_options o :
       {gc::advise_options{.trial_reps = -1}, gc::advise_options{.trial_within = 0.5},
        gc::advise_options{.trial_within = NAN}}) {
    gc::local_world world(2, 30s);
    std::vector<int> codes(2, 0);
    world.run([&](gc::local_transport& t) {
      try {
        gc::advise(t, std::vector<std::size_t>{4096}, accuracy_class::any, o);
      } catch (const gc::error& e) {
        codes[static_cast<std::size_t>(t.rank())] = e.code().value();
      }
    });
    for (int c : codes) EXPECT_EQ(c, static_cast<int>(gc::errc::invalid_argument));
  }
}

// trial_reps 0: the model alone, nothing measured.
TEST(Advise, NoTrialLeavesTheModelsPick) {
  gc::local_world world(2, 60s);
  std::vector<gc::advice> got(2);
  world.run([&](gc::local_transport& t) {
    got[static_cast<std::size_t>(t.rank())] =
        gc::advise(t, std::vector<std::size_t>{8192}, accuracy_class::any,
                   {.probe_reps = 2, .probe_bytes = 64 << 10, .codec_reps = 1, .trial_reps = 0});
  });
  for (const auto& a : got) {
    EXPECT_EQ(a.buckets[0].measured_s, 0.0);
    for (const auto& p : a.buckets[0].candidates) EXPECT_EQ(p.measured_s, 0.0);
    EXPECT_EQ(a.buckets[0].why.find("measured"), std::string::npos) << a.buckets[0].why;
    EXPECT_LE(a.buckets[0].predicted_s, a.buckets[0].f32_s);
  }
}

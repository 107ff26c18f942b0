// The allreduce communicator over threads: exact sums with the identity codec, the
// bounds lossy codecs imply, bitwise identical ranks, the bytes each algorithm sends,
// buckets and overlap, failures named by rank.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/transport/local.hpp>

#include "forwarding_transport.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

const int world_sizes[] = {1, 2, 3, 4, 7, 8};

using ef_sign = gc::error_feedback<gc::sign_codec>;
using ef_topk = gc::error_feedback<gc::topk_codec>;

static_assert(gc::Communicator<gc::allreduce<gc::identity_codec, gc::local_transport>>);
static_assert(gc::Communicator<gc::allreduce<ef_sign, gc::local_transport, gc::adam>>);
static_assert(gc::allreduce<gc::identity_codec, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::native);
// The threads transport has no bf16 sum: bf16 takes scatter-reduce-allgather there.
static_assert(gc::allreduce<gc::bf16_codec, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::scatter_reduce_allgather);
static_assert(gc::allreduce<gc::scalar_quant_codec, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::scatter_reduce_allgather);
static_assert(gc::allreduce<ef_sign, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::scatter_reduce_allgather);
static_assert(gc::allreduce<ef_topk, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::allgather);
// allgathered<C>: a fixed-size codec in one stage.
static_assert(gc::allreduce<gc::allgathered<ef_sign>, gc::local_transport>::algorithm ==
              gc::detail::ar_algorithm::allgather);
static_assert(gc::Codec<gc::allgathered<gc::scalar_quant_codec>>);

// Rank r's value i: small integers, so sums of up to 8 ranks are exact in f32.
float integer_value(int rank, std::size_t tensor, std::size_t i) {
  return static_cast<float>(static_cast<int>((i * 7 + tensor * 3 + uz(rank) * 5) % 17) - 8);
}

// Every rank's final tensors, per rank.
using results = std::vector<std::vector<std::vector<float>>>;

template <class C>
results run_tensors(int n_ranks, const std::vector<std::size_t>& sizes, C proto,
                    gc::allreduce_options opt, int rounds = 1,
                    float (*value)(int, std::size_t, std::size_t) = integer_value) {
  gc::local_world world(n_ranks, 20s);
  results out(uz(n_ranks));
  world.run([&](gc::local_transport& t) {
    std::vector<std::vector<float>> ts(sizes.size());
    gc::allreduce<C, gc::local_transport> comm(t, proto, opt);
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      ts[k].resize(sizes[k]);
      comm.add_tensor(ts[k]);
    }
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t k = 0; k < sizes.size(); ++k)
        for (std::size_t i = 0; i < sizes[k]; ++i) ts[k][i] = value(t.rank(), k, i);
      comm.average();
    }
    out[uz(t.rank())] = ts;
  });
  return out;
}

void expect_identical_ranks(const results& r) {
  for (std::size_t q = 1; q < r.size(); ++q)
    for (std::size_t k = 0; k < r[0].size(); ++k) {
      ASSERT_EQ(r[q][k].size(), r[0][k].size());
      if (r[0][k].empty()) continue;  // memcmp of null pointers is undefined
      EXPECT_EQ(std::memcmp(r[q][k].data(), r[0][k].data(), r[0][k].size() * sizeof(float)), 0)
          << "rank " << q << " tensor " << k << " differs from rank 0";
    }
}

const std::vector<std::size_t> mixed_sizes = {0, 1, 5, 1000, 3000, 257, 20011, 4096};

TEST(allreduce_identity, sums_exactly_over_every_world_size_with_and_without_overlap) {
  for (bool overlap : {true, false}) {
    for (int n : world_sizes) {
      const gc::allreduce_options opt{.bucket_bytes = 16 << 10,  // 4096 values a bucket
                                      .small_tensor_elems = 1024,
                                      .op = gc::reduction::sum,
                                      .overlap = overlap};
      const results r = run_tensors(n, mixed_sizes, gc::identity_codec{}, opt);
      for (std::size_t k = 0; k < mixed_sizes.size(); ++k)
        for (std::size_t i = 0; i < mixed_sizes[k]; ++i) {
          float want = 0;
          for (int q = 0; q < n; ++q) want += integer_value(q, k, i);
          ASSERT_EQ(r[0][k][i], want) << "n " << n << " tensor " << k << " index " << i;
        }
      expect_identical_ranks(r);
    }
  }
}

TEST(allreduce_identity, mean_is_the_exact_sum_times_one_over_n) {
  for (int n : {3, 7}) {
    const results r = run_tensors(n, {5000}, gc::identity_codec{}, {.bucket_bytes = 8 << 10});
    for (std::size_t i = 0; i < 5000; ++i) {
      float sum = 0;
      for (int q = 0; q < n; ++q) sum += integer_value(q, 0, i);
      ASSERT_EQ(r[0][0][i], sum * (1.0f / static_cast<float>(n))) << i;
    }
    expect_identical_ranks(r);
  }
}

float gaussian_value(int rank, std::size_t tensor, std::size_t i) {
  // A cheap deterministic hash to a rough Gaussian (sum of 4 uniforms), scaled per block
  // so that blocks have different ranges.
  std::uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull ^ (tensor + 7) * 0xbf58476d1ce4e5b9ull ^
                    (uz(rank) + 3) * 0x94d049bb133111ebull;
  float s = 0;
  for (int k = 0; k < 4; ++k) {
    h ^= h >> 31;
    h *= 0xd6e8feb86659fd93ull;
    s += static_cast<float>(h >> 40) / static_cast<float>(1 << 24) - 0.5f;
  }
  return s * static_cast<float>(1 + (i / 256) % 5);
}

// Per-element bound of scatter-reduce-allgather with a max-abs scalar quantizer whose
// blocks line up with the chunks: each rank's first encoding errs by at most half a
// step of its block, the mean of those by their mean, the re-encoding of the reduced
// block by half a step of it (its max-abs is at most the exact mean's plus the first
// error).
void check_scalar_quant_bound(unsigned bits, int n) {
  const std::size_t len = 9000, block = 256;
  gc::scalar_quant_codec codec({.bits = bits, .block = block});
  const results r = run_tensors(n, {len}, codec, {.bucket_bytes = 64 << 10}, 1, gaussian_value);
  expect_identical_ranks(r);
  const double levels = std::ldexp(1.0, static_cast<int>(bits) - 1) - 1;
  const double inv = 1.0 / n;
  for (std::size_t b0 = 0; b0 < len; b0 += block) {
    const std::size_t b1 = std::min(len, b0 + block);
    double first = 0, mean_max = 0;
    for (int q = 0; q < n; ++q) {
      double m = 0;
      for (std::size_t i = b0; i < b1; ++i)
        m = std::max(m, std::abs(double(gaussian_value(q, 0, i))));
      first += m / levels / 2 * inv;
    }
    for (std::size_t i = b0; i < b1; ++i) {
      double mean = 0;
      for (int q = 0; q < n; ++q) mean += gaussian_value(q, 0, i) * inv;
      mean_max = std::max(mean_max, std::abs(mean));
    }
    const double bound = first + (mean_max + first) / levels / 2 + 1e-5 * (mean_max + 1);
    for (std::size_t i = b0; i < b1; ++i) {
      double mean = 0;
      for (int q = 0; q < n; ++q) mean += gaussian_value(q, 0, i) * inv;
      ASSERT_LE(std::abs(r[0][0][i] - mean), bound)
          << bits << "-bit, n " << n << ", index " << i << ": bound " << bound;
    }
  }
}

TEST(allreduce_scalar_quant, stays_within_the_two_stage_bound_and_ranks_agree) {
  for (unsigned bits : {8u, 4u, 2u})
    for (int n : world_sizes) check_scalar_quant_bound(bits, n);
}

TEST(allreduce_bf16, stays_within_two_roundings_and_small_tensors_may_travel_as_bf16) {
  for (int n : world_sizes) {
    const std::vector<std::size_t> sizes = {7000, 300};
    const results r = run_tensors(
        n, sizes, gc::bf16_codec{},
        {.bucket_bytes = 16 << 10, .small_tensor_elems = 1024, .small_dtype = gc::dtype::bf16}, 1,
        gaussian_value);
    expect_identical_ranks(r);
    for (std::size_t k = 0; k < sizes.size(); ++k)
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        double mean = 0, abs_mean = 0;
        for (int q = 0; q < n; ++q) {
          mean += gaussian_value(q, k, i) / double(n);
          abs_mean += std::abs(gaussian_value(q, k, i)) / double(n);
        }
        // RNE to bf16 errs by at most 2^-9 relative; twice (chunks, reduced chunk).
        const double first = abs_mean * 0x1p-8;
        const double bound = first + (std::abs(mean) + first) * 0x1p-8 + 1e-6;
        ASSERT_LE(std::abs(r[0][k][i] - mean), bound) << "n " << n << " tensor " << k << " i " << i;
      }
  }
}

float sparse_value(int rank, std::size_t, std::size_t i) {
  // At most 1 % non-zeros a rank, integers: top-k with k = 2 % sends all of them.
  return (i * 13 + uz(rank) * 29) % 131 == 0 ? static_cast<float>(1 + (i + uz(rank)) % 9) : 0.0f;
}

TEST(allreduce_topk, sums_sparse_integer_gradients_exactly_by_allgather) {
  for (int n : world_sizes) {
    const ef_topk codec(gc::topk_codec({.ratio = 0.02}));
    const results r =
        run_tensors(n, {20000, 4100}, codec, {.bucket_bytes = 64 << 10, .op = gc::reduction::sum},
                    1, sparse_value);
    expect_identical_ranks(r);
    for (std::size_t k = 0; k < 2; ++k)
      for (std::size_t i = 0; i < r[0][k].size(); ++i) {
        float want = 0;
        for (int q = 0; q < n; ++q) want += sparse_value(q, k, i);
        ASSERT_EQ(r[0][k][i], want) << "n " << n << " i " << i;
      }
  }
}

// Half of the values of every rank: the payloads add up to about N × 0.53 × 4n bytes,
// past a dense ring's 8n from N = 4 on.
TEST(allreduce_topk, goes_dense_past_the_break_even_with_the_same_result) {
  for (int n : {2, 4, 7}) {
    gc::local_world world(n, 20s);
    std::vector<std::vector<float>> out(uz(n));
    std::vector<std::uint64_t> dense(uz(n));
    world.run([&](gc::local_transport& t) {
      gc::allreduce<ef_topk, gc::local_transport> comm(t, ef_topk(gc::topk_codec({.ratio = 0.5})),
                                                       {.op = gc::reduction::sum});
      std::vector<float> g(6000);
      for (std::size_t i = 0; i < g.size(); ++i)
        g[i] = (i + uz(t.rank())) % 2 == 0 ? static_cast<float>(1 + i % 5) : 0.0f;
      comm.average(g);
      out[uz(t.rank())] = g;
      dense[uz(t.rank())] = comm.dense_fallbacks();
    });
    for (int q = 0; q < n; ++q) {
      EXPECT_EQ(dense[uz(q)], n == 2 ? 0u : 1u) << "n " << n << " rank " << q;
      EXPECT_EQ(out[uz(q)], out[0]);
    }
    for (std::size_t i = 0; i < out[0].size(); ++i) {
      float want = 0;
      for (int q = 0; q < n; ++q) want += (i + uz(q)) % 2 == 0 ? static_cast<float>(1 + i % 5) : 0;
      ASSERT_EQ(out[0][i], want) << i;
    }
  }
}

// With error feedback nothing is lost, only delayed: averaged over rounds of the same
// gradient, the output approaches the exact mean far closer than one round does.
TEST(allreduce_error_feedback, sign_recovers_the_mean_over_rounds) {
  const int n = 4, rounds = 200;
  const std::size_t len = 4096;
  gc::local_world world(n, 20s);
  std::vector<double> err_one(uz(n)), err_avg(uz(n)), norm(uz(n));
  std::vector<std::vector<float>> last(uz(n));
  world.run([&](gc::local_transport& t) {
    gc::allreduce<ef_sign, gc::local_transport> comm(t, ef_sign{});
    std::vector<float> g(len);
    std::vector<double> avg(len, 0.0);
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t i = 0; i < len; ++i) g[i] = gaussian_value(t.rank(), 0, i);
      comm.average(g);
      double e = 0, e1 = 0;
      for (std::size_t i = 0; i < len; ++i) {
        double mean = 0;
        for (int q = 0; q < n; ++q) mean += gaussian_value(q, 0, i) / n;
        avg[i] += g[i] / rounds;
        if (round == 0) e1 += (g[i] - mean) * (g[i] - mean);
        if (round == rounds - 1) e += (avg[i] - mean) * (avg[i] - mean);
      }
      if (round == 0) err_one[uz(t.rank())] = std::sqrt(e1);
      if (round == rounds - 1) err_avg[uz(t.rank())] = std::sqrt(e);
    }
    last[uz(t.rank())] = g;
    norm[uz(t.rank())] = comm.stats(0).residual_norm;
  });
  for (int q = 0; q < n; ++q) {
    EXPECT_LT(err_avg[uz(q)], 0.1 * err_one[uz(q)]) << "rank " << q;
    EXPECT_GT(norm[uz(q)], 0.0);
    EXPECT_EQ(last[uz(q)], last[0]);
  }
}

TEST(allreduce_stochastic, ranks_agree_and_a_rerun_gives_the_same_bits) {
  const gc::scalar_quant_codec codec({.bits = 4, .rounding = gc::quant_rounding::stochastic});
  const gc::allreduce_options opt{.bucket_bytes = 16 << 10, .seed = 42};
  for (int n : {3, 8}) {
    const results a = run_tensors(n, {10000}, codec, opt, 3, gaussian_value);
    const results b = run_tensors(n, {10000}, codec, opt, 3, gaussian_value);
    expect_identical_ranks(a);
    EXPECT_EQ(a[0][0], b[0][0]);
  }
}

// Scatter-reduce-allgather sends the other ranks' chunks once (all-to-all) and this
// rank's reduced chunk to every other rank (all-gather): with N equal chunks of p
// payload bytes, 2(N-1)/N × N·p, headers included.
TEST(allreduce_bytes, scatter_reduce_allgather_sends_what_the_formula_says) {
  for (int n : {2, 3, 4, 7, 8}) {
    for (std::size_t len : {std::size_t{256} * 8 * 56, std::size_t{10007}}) {
      const gc::scalar_quant_codec codec({.bits = 8, .block = 256});
      gc::local_world world(n, 20s);
      std::vector<std::uint64_t> sent(uz(n)), stat(uz(n));
      world.run([&](gc::local_transport& t) {
        gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(t, codec,
                                                                        {.bucket_bytes = 1 << 20});
        std::vector<float> g(len, 1.0f);
        comm.average(g);
        sent[uz(t.rank())] = comm.counters().snapshot().bytes_sent;
        stat[uz(t.rank())] = comm.stats(0).wire_bytes;
      });
      // Chunk j: 256-value units split as evenly as possible, the first ones larger.
      const std::size_t units = (len + 255) / 256;
      std::vector<std::uint64_t> p(uz(n));
      std::uint64_t total = 0;
      for (int j = 0; j < n; ++j) {
        const std::size_t lo =
            std::min(len, (units / uz(n) * uz(j) + std::min(uz(j), units % uz(n))) * 256);
        const std::size_t hi =
            std::min(len, lo + (units / uz(n) + (uz(j) < units % uz(n) ? 1 : 0)) * 256);
        p[uz(j)] = codec.max_encoded_bytes(hi - lo);
        total += p[uz(j)];
      }
      for (int me = 0; me < n; ++me) {
        const std::uint64_t want = total - p[uz(me)] + uz(n - 1) * p[uz(me)];
        EXPECT_EQ(sent[uz(me)], want) << "n " << n << " len " << len << " rank " << me;
        EXPECT_EQ(stat[uz(me)], want);
        if (len % (256 * uz(n)) == 0) {  // equal chunks: exactly 2(N-1)/N of the payload
          EXPECT_EQ(sent[uz(me)] * uz(n), 2 * uz(n - 1) * total);
        }
      }
    }
  }
}

// allgathered<C>: every rank's payload travels once, whole, and every rank decodes all of
// them: the mean of what each rank's codec made of its own gradient (one sign a value
// and one rounding, not a second sign of the sums), the same bits on every rank, and
// (N − 1) payloads (each after its 8-byte size) sent per rank.
TEST(allreduce_allgathered, one_stage_mean_of_the_decoded_payloads_and_its_bytes) {
  const std::size_t len = 10007;
  const gc::sign_codec proto(256);
  for (int n : {2, 3, 4, 7}) {
    const results r =
        run_tensors(n, {len}, gc::allgathered<gc::sign_codec>(proto), {}, 1, gaussian_value);
    expect_identical_ranks(r);
    std::vector<double> want(len, 0.0);
    for (int q = 0; q < n; ++q) {
      std::vector<float> g(len), d(len);
      for (std::size_t i = 0; i < len; ++i) g[i] = gaussian_value(q, 0, i);
      gc::sign_codec c(256);
      std::vector<std::byte> wire(c.max_encoded_bytes(len));
      wire.resize(c.encode(g, wire));
      c.decode(wire, d);
      for (std::size_t i = 0; i < len; ++i) want[i] += d[i] / static_cast<double>(n);
    }
    for (std::size_t i = 0; i < len; ++i)
      ASSERT_NEAR(r[0][0][i], want[i], 1e-6 * (1.0 + std::fabs(want[i])))
          << "n " << n << " i " << i;

    gc::local_world world(n, 20s);
    std::vector<std::uint64_t> sent(uz(n));
    world.run([&](gc::local_transport& t) {
      gc::allreduce<gc::allgathered<gc::sign_codec>, gc::local_transport> comm(
          t, gc::allgathered<gc::sign_codec>(proto));
      std::vector<float> g(len, 1.0f);
      comm.average(g);
      sent[uz(t.rank())] = comm.counters().snapshot().bytes_sent;
    });
    for (int q = 0; q < n; ++q)
      EXPECT_EQ(sent[uz(q)], uz(n - 1) * (8 + proto.max_encoded_bytes(len)))  // size, payload
          << "n " << n;
  }
}

TEST(allreduce_buckets, start_and_wait_per_bucket_equals_average_and_stats_add_up) {
  const int n = 3;
  gc::local_world world(n, 20s);
  std::vector<std::vector<float>> out(uz(n));
  world.run([&](gc::local_transport& t) {
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(
        t, gc::scalar_quant_codec{}, {.bucket_bytes = 8 << 10, .small_tensor_elems = 100});
    std::vector<float> a(5000), b(50), c(3000);
    comm.add_tensor(a, "a");
    comm.add_tensor(b, "b");
    comm.add_tensor(c, "c");
    // 8000 large values in 2048-value buckets, then one bucket of small ones.
    ASSERT_EQ(comm.bucket_count(), 5u);
    EXPECT_THROW(comm.add_tensor(a), gc::error);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = gaussian_value(t.rank(), 0, i);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = gaussian_value(t.rank(), 1, i);
    for (std::size_t i = 0; i < c.size(); ++i) c[i] = gaussian_value(t.rank(), 2, i);
    std::vector<gc::allreduce<gc::scalar_quant_codec, gc::local_transport>::handle> hs;
    for (std::size_t k = comm.bucket_count(); k-- > 0;) {  // any order, the same on every rank
      hs.push_back(comm.start(k));
      (void)comm.stats(k);  // readable while in flight
    }
    for (auto& h : hs) h.wait();
    for (auto& h : hs) EXPECT_TRUE(h.ready());
    std::vector<float> all(a);
    all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), c.begin(), c.end());
    out[uz(t.rank())] = all;
    std::uint64_t wire = 0;
    for (std::size_t k = 0; k < comm.bucket_count(); ++k) {
      const gc::bucket_stats s = comm.stats(k);
      EXPECT_EQ(s.rounds, 1u);
      EXPECT_EQ(s.compressed, k < 4);
      if (k < 4) {
        EXPECT_GT(s.ratio, 3.5);  // 8-bit: about 4× smaller
      }
      EXPECT_GT(s.encode_ns, 0);
      wire += s.wire_bytes;
    }
    EXPECT_EQ(comm.stats(4).elements, 50u);
    EXPECT_EQ(wire, comm.counters().snapshot().bytes_sent);
  });
  for (int q = 1; q < n; ++q) EXPECT_EQ(out[uz(q)], out[0]);
  // The same through average() on fresh communicators.
  const results r =
      run_tensors(n, {5000, 50, 3000}, gc::scalar_quant_codec{},
                  {.bucket_bytes = 8 << 10, .small_tensor_elems = 100}, 1, gaussian_value);
  std::vector<float> all(r[0][0]);
  all.insert(all.end(), r[0][1].begin(), r[0][1].end());
  all.insert(all.end(), r[0][2].begin(), r[0][2].end());
  EXPECT_EQ(all, out[0]);
}

// ready(): buckets start as their tensors are said ready (in bucket order, whatever order
// the tensors come in), the step finishes the rest, and the result is average()'s, bit for
// bit, over several rounds of error feedback; a tensor said ready twice is refused by name.
TEST(allreduce_ready, starts_buckets_as_their_tensors_land_and_equals_average) {
  const int n = 3;
  const std::vector<std::size_t> sizes = {5000, 50, 3000};  // buckets [a a a], [a c], [c c], [b]
  const gc::allreduce_options opt{.bucket_bytes = 8 << 10, .small_tensor_elems = 100};
  const int rounds = 3;
  gc::local_world world(n, 20s);
  results out(uz(n));
  world.run([&](gc::local_transport& t) {
    using ar = gc::allreduce<ef_sign, gc::local_transport>;
    ar comm(t, ef_sign{}, opt);
    std::vector<std::vector<float>> ts(sizes.size());
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      ts[k].resize(sizes[k]);
      comm.add_tensor(ts[k], k == 0 ? "a" : k == 1 ? "b" : "c");
    }
    ASSERT_EQ(comm.bucket_count(), 5u);  // 8050 values: 2048, 2048, 2048, 1856 large; 50 small
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t k = 0; k < sizes.size(); ++k)
        for (std::size_t i = 0; i < sizes[k]; ++i)
          ts[k][i] = gaussian_value(t.rank() + 10 * round, k, i);
      if (round == rounds - 1) {
        // The last round says only a ready: the step starts the rest itself.
        comm.ready(0);
        EXPECT_EQ(comm.buckets_started(), 2u);
        comm.average();
        EXPECT_EQ(comm.buckets_started(), 0u);
        continue;
      }
      comm.ready(1);  // the small tensor: its bucket is last, nothing starts
      EXPECT_EQ(comm.buckets_started(), 0u);
      comm.ready(0);  // a: buckets 0 and 1 hold only a's values; bucket 2 needs c
      EXPECT_EQ(comm.buckets_started(), 2u);
      EXPECT_THROW(comm.ready(0), gc::error);
      EXPECT_THROW(comm.ready(3), gc::error);
      comm.ready(2);  // c: buckets 2, 3 and then the small one
      EXPECT_EQ(comm.buckets_started(), 5u);
      comm.average();  // waits for them
      EXPECT_EQ(comm.buckets_started(), 0u);
    }
    for (std::size_t b = 0; b < comm.bucket_count(); ++b)
      EXPECT_EQ(comm.stats(b).rounds, static_cast<std::uint64_t>(rounds)) << b;
    out[uz(t.rank())] = ts;
  });
  expect_identical_ranks(out);
  // The same rounds through average() alone: the same bits.
  gc::local_world again(n, 20s);
  results ref(uz(n));
  again.run([&](gc::local_transport& t) {
    gc::allreduce<ef_sign, gc::local_transport> comm(t, ef_sign{}, opt);
    std::vector<std::vector<float>> ts(sizes.size());
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      ts[k].resize(sizes[k]);
      comm.add_tensor(ts[k]);
    }
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t k = 0; k < sizes.size(); ++k)
        for (std::size_t i = 0; i < sizes[k]; ++i)
          ts[k][i] = gaussian_value(t.rank() + 10 * round, k, i);
      comm.average();
    }
    ref[uz(t.rank())] = ts;
  });
  EXPECT_EQ(ref[0], out[0]);
}

TEST(allreduce_step, averages_then_applies_the_optimizer) {
  const int n = 4;
  gc::local_world world(n, 20s);
  std::vector<std::vector<float>> out(uz(n));
  world.run([&](gc::local_transport& t) {
    gc::allreduce<gc::identity_codec, gc::local_transport> comm(t, {}, {}, gc::sgd({.lr = 0.5f}));
    std::vector<float> w(3000, 1.0f), g(3000);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(t.rank() * 2);
    comm.step(w, g);  // mean gradient 3: w = 1 - 0.5 * 3
    out[uz(t.rank())] = w;
    std::vector<float> wrong(10);
    EXPECT_THROW(comm.step(wrong, g), gc::error);
  });
  for (int q = 0; q < n; ++q)
    for (float v : out[uz(q)]) ASSERT_EQ(v, -0.5f);
}

TEST(allreduce_failure, a_rank_that_throws_is_named_by_the_others) {
  gc::local_world world(4, 20s);
  std::vector<int> peer(4, -2);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(world.run([&](gc::local_transport& t) {
    gc::allreduce<gc::scalar_quant_codec, gc::local_transport> comm(t, gc::scalar_quant_codec{});
    std::vector<float> g(50000, 1.0f);
    if (t.rank() == 2) {
      std::this_thread::sleep_for(50ms);
      throw std::runtime_error("rank 2 gives up");
    }
    try {
      comm.average(g);
    } catch (const gc::peer_error& e) {
      peer[uz(t.rank())] = e.peer();
      EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
      EXPECT_THROW(comm.average(g), gc::peer_error);  // and later calls too
      throw;
    }
  }),
               std::runtime_error);
  for (int r : {0, 1, 3}) EXPECT_EQ(peer[uz(r)], 2) << r;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

TEST(allreduce_failure, a_rank_that_stalls_times_the_others_out) {
  gc::local_world world(3, 300ms);
  std::vector<int> peer(3, -2);
  EXPECT_THROW(world.run([&](gc::local_transport& t) {
    gc::allreduce<ef_sign, gc::local_transport> comm(t, ef_sign{});
    std::vector<float> g(20000, 1.0f);
    if (t.rank() == 1) {
      std::this_thread::sleep_for(1500ms);  // past the deadline, then leaves
      return;
    }
    try {
      comm.average(g);
    } catch (const gc::timeout_error& e) {
      peer[uz(t.rank())] = e.peer();
      throw;
    }
  }),
               gc::timeout_error);
  EXPECT_EQ(peer[0], 1);
  EXPECT_EQ(peer[2], 1);
}

TEST(allreduce_arguments, bad_options_are_refused) {
  gc::local_world world(1);
  world.run([](gc::local_transport& t) {
    using ar = gc::allreduce<gc::identity_codec, gc::local_transport>;
    EXPECT_THROW(ar(t, {}, {.bucket_bytes = 100}), gc::error);
    EXPECT_THROW(ar(t, {}, {.small_dtype = gc::dtype::f16}), gc::error);
    ar comm(t, {});
    std::vector<float> a(10), b(11);
    comm.average(a);
    EXPECT_THROW(comm.average(b), gc::error);  // another size than the registered buffer
    EXPECT_THROW(comm.start(5), gc::error);
  });
}

// A transport that only its own thread may call (as mpi_transport over SMPI, whose MPI
// provides MPI_THREAD_FUNNELED at most): the all-reduce refuses overlap over it, by name,
// and without overlap reduces exactly as over any transport.
struct caller_thread_transport : forwarding_transport {
  bool any_thread() const noexcept { return false; }
};

TEST(allreduce_arguments, overlap_is_refused_over_a_caller_thread_transport) {
  static_assert(gc::Transport<caller_thread_transport>);
  constexpr int n = 3;
  gc::local_world world(n, 20s);
  world.run([&](gc::local_transport& t) {
    EXPECT_TRUE(gc::transport_any_thread(t));
    caller_thread_transport only_me{{&t}};
    EXPECT_FALSE(gc::transport_any_thread(only_me));
    using ar = gc::allreduce<gc::identity_codec, caller_thread_transport>;
    try {
      ar refused(only_me, {});
      ADD_FAILURE() << "overlap over a caller-thread transport was accepted";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::make_error_code(gc::errc::invalid_argument));
      EXPECT_NE(std::string(e.what()).find("overlap = false"), std::string::npos) << e.what();
    }
    ar comm(only_me, {}, {.op = gc::reduction::sum, .overlap = false});
    std::vector<float> v(5000);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(t.rank() * 10000 + i);
    comm.average(v);
    for (std::size_t i = 0; i < v.size(); ++i)
      ASSERT_EQ(v[i], static_cast<float>(30000 + 3 * i)) << "at " << i;
  });
}

}  // namespace

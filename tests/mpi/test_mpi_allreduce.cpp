// The allreduce communicator over MPI ranks (run under mpiexec -np 2, 3, 4): exact sums
// with the identity codec, every rank ending with the same bits for each algorithm
// (native f32 and bf16 sums, scatter-reduce-allgather, all-gather of sparse payloads, the
// O(k) sparse reduce-scatter), and the bytes scatter-reduce-allgather and O(k) send.
#include "mpi_gtest_main.hpp"

#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/sparse.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/mpi.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

gc::mpi_transport* sync_transport = nullptr;

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

using ef_sign = gc::error_feedback<gc::sign_codec>;
using ef_topk = gc::error_feedback<gc::topk_codec>;

// MPI sums bf16 natively (mpi_transport's own op): bf16 takes the native path here.
static_assert(gc::allreduce<gc::bf16_codec, gc::mpi_transport>::algorithm ==
              gc::detail::ar_algorithm::native);
static_assert(gc::allreduce<gc::identity_codec, gc::mpi_transport>::algorithm ==
              gc::detail::ar_algorithm::native);
static_assert(gc::allreduce<ef_sign, gc::mpi_transport>::algorithm ==
              gc::detail::ar_algorithm::scatter_reduce_allgather);
static_assert(gc::allreduce<ef_topk, gc::mpi_transport>::algorithm ==
              gc::detail::ar_algorithm::allgather);

float integer_value(int rank, std::size_t tensor, std::size_t i) {
  return static_cast<float>(static_cast<int>((i * 7 + tensor * 3 + uz(rank) * 5) % 17) - 8);
}

float wavy_value(int rank, std::size_t tensor, std::size_t i) {
  return std::sin(0.001f * static_cast<float>(i * (rank + 2)) + static_cast<float>(tensor)) *
         static_cast<float>(1 + (i / 256) % 5);
}

float sparse_value(int rank, std::size_t, std::size_t i) {
  return (i * 13 + uz(rank) * 29) % 131 == 0 ? static_cast<float>(1 + (i + uz(rank)) % 9) : 0.0f;
}

// True when every rank holds the same bytes.
bool same_on_all_ranks(const std::vector<float>& mine) {
  auto& s = *sync_transport;
  std::vector<float> all(mine.size() * uz(s.size()));
  s.allgather(std::as_bytes(std::span(mine)), std::as_writable_bytes(std::span(all)));
  for (int r = 1; r < s.size(); ++r)
    if (!mine.empty() &&
        std::memcmp(all.data(), all.data() + uz(r) * mine.size(), mine.size() * 4) != 0)
      return false;
  return true;
}

template <class C>
std::vector<std::vector<float>> run(const std::vector<std::size_t>& sizes, C proto,
                                    gc::allreduce_options opt,
                                    float (*value)(int, std::size_t, std::size_t), int rounds = 1) {
  gc::mpi_transport t(MPI_COMM_WORLD, 20s);
  gc::allreduce<C, gc::mpi_transport> comm(t, proto, opt);
  std::vector<std::vector<float>> ts(sizes.size());
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    ts[k].resize(sizes[k]);
    comm.add_tensor(ts[k]);
  }
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t k = 0; k < sizes.size(); ++k)
      for (std::size_t i = 0; i < sizes[k]; ++i) ts[k][i] = value(t.rank(), k, i);
    comm.average();
  }
  return ts;
}

int ranks() { return sync_transport->size(); }

TEST(MpiAllreduce, IdentitySumsExactlyOverManyBucketsWithAndWithoutOverlap) {
  const std::vector<std::size_t> sizes = {0, 1, 5, 1000, 3000, 257, 20011, 4096};
  for (bool overlap : {true, false}) {
    const auto r = run(sizes, gc::identity_codec{},
                       {.bucket_bytes = 16 << 10, .op = gc::reduction::sum, .overlap = overlap},
                       integer_value);
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        float want = 0;
        for (int q = 0; q < ranks(); ++q) want += integer_value(q, k, i);
        ASSERT_EQ(r[k][i], want) << "tensor " << k << " index " << i;
      }
      EXPECT_TRUE(same_on_all_ranks(r[k])) << k;
    }
  }
}

TEST(MpiAllreduce, Bf16NativeSumIsWithinItsRoundingsAndTheSameOnEveryRank) {
  const auto r = run({30000}, gc::bf16_codec{}, {}, wavy_value);
  EXPECT_TRUE(same_on_all_ranks(r[0]));
  const int n = ranks();
  for (std::size_t i = 0; i < r[0].size(); ++i) {
    double mean = 0, abs_sum = 0;
    for (int q = 0; q < n; ++q) {
      mean += wavy_value(q, 0, i) / double(n);
      abs_sum += std::abs(wavy_value(q, 0, i));
    }
    // Each value rounded once to bf16 and each of the N-1 partial sums once more:
    // at most N half-ulps of the largest partial sum, 2^-8 relative each.
    const double bound = n * abs_sum * 0x1p-8 / n + 1e-6;
    ASSERT_LE(std::abs(r[0][i] - mean), bound) << i;
  }
}

TEST(MpiAllreduce, LossyCodecsEndWithTheSameBitsOnEveryRank) {
  const gc::allreduce_options opt{.bucket_bytes = 32 << 10, .seed = 7};
  EXPECT_TRUE(same_on_all_ranks(run({40000}, gc::scalar_quant_codec{}, opt, wavy_value)[0]));
  EXPECT_TRUE(same_on_all_ranks(
      run({40000}, gc::scalar_quant_codec({.bits = 4, .rounding = gc::quant_rounding::stochastic}),
          opt, wavy_value, 3)[0]));
  EXPECT_TRUE(same_on_all_ranks(run({40000}, ef_sign{}, opt, wavy_value, 3)[0]));
  EXPECT_TRUE(same_on_all_ranks(
      run({40000}, ef_topk(gc::topk_codec({.ratio = 0.01})), opt, wavy_value, 3)[0]));
}

// The O(k) sparse reduce-scatter (comm/detail/allreduce_sparse.hpp), forced: the same bits
// on every rank, its name in stats(b), at most 6k(N-1)/N values (4-byte words) sent per rank
// and round; the cost rule keeps all-gather at this size and world.
TEST(MpiAllreduce, SparseReduceScatterIsTheSameOnEveryRankAndSendsOkPerRank) {
  constexpr std::size_t n = 40000;
  constexpr int rounds = 3;
  for (auto choice : {gc::sparse_allreduce::reduce_scatter, gc::sparse_allreduce::automatic}) {
    gc::mpi_transport t(MPI_COMM_WORLD, 20s);
    gc::allreduce<ef_topk, gc::mpi_transport> comm(
        t, ef_topk(gc::topk_codec({.ratio = 0.01})),
        {.bucket_bytes = n * sizeof(float), .op = gc::reduction::sum, .sparse = choice});
    std::vector<float> g(n);
    comm.add_tensor(g);
    for (int r = 0; r < rounds; ++r) {
      for (std::size_t i = 0; i < n; ++i) g[i] = wavy_value(t.rank(), 0, i);
      comm.average();
      EXPECT_TRUE(same_on_all_ranks(g)) << "round " << r;
    }
    const gc::bucket_stats s = comm.stats(0);
    if (choice == gc::sparse_allreduce::automatic) {
      EXPECT_EQ(s.algorithm, gc::detail::ar_algorithm::allgather);
      continue;
    }
    EXPECT_EQ(s.algorithm, gc::detail::ar_algorithm::sparse_reduce_scatter);
    const double k = 0.01 * n, N = ranks();
    EXPECT_LE(static_cast<double>(s.wire_bytes) / 4.0 / rounds, 6.0 * k * (N - 1) / N);
  }
}

TEST(MpiAllreduce, TopkSumsSparseIntegerGradientsExactly) {
  const auto r = run({20000, 4100}, ef_topk(gc::topk_codec({.ratio = 0.02})),
                     {.op = gc::reduction::sum}, sparse_value);
  for (std::size_t k = 0; k < 2; ++k)
    for (std::size_t i = 0; i < r[k].size(); ++i) {
      float want = 0;
      for (int q = 0; q < ranks(); ++q) want += sparse_value(q, k, i);
      ASSERT_EQ(r[k][i], want) << k << " " << i;
    }
}

TEST(MpiAllreduce, ScatterReduceAllgatherSendsTwoNMinusOneOverNOfThePayload) {
  const int n = ranks();
  const std::size_t len = std::size_t{256} * 12 * 20;  // equal chunks for 2, 3 and 4 ranks
  const gc::scalar_quant_codec codec({.bits = 8, .block = 256});
  gc::mpi_transport t(MPI_COMM_WORLD, 20s);
  gc::allreduce<gc::scalar_quant_codec, gc::mpi_transport> comm(t, codec,
                                                                {.bucket_bytes = 1 << 20});
  std::vector<float> g(len, 1.0f);
  comm.average(g);
  const std::uint64_t chunk = codec.max_encoded_bytes(len / uz(n));
  EXPECT_EQ(comm.counters().snapshot().bytes_sent, 2 * uz(n - 1) * chunk);
  EXPECT_EQ(comm.stats(0).wire_bytes, 2 * uz(n - 1) * chunk);
}

// Before: the last rank averaged layer A with the others' layer B, without a word. Now
// every rank gets the same named error at the first step, and no value changed.
TEST(MpiAllreduce, RanksThatRegisterInAnotherOrderAreRefusedByName) {
  gc::mpi_transport t(MPI_COMM_WORLD, 20s);
  const int n = t.size();
  gc::allreduce<gc::scalar_quant_codec, gc::mpi_transport> comm(t, gc::scalar_quant_codec{});
  std::vector<float> a(5000, 1.0f), b(5000, 2.0f);
  if (t.rank() == n - 1) {
    comm.add_tensor(b, "layer_b");
    comm.add_tensor(a, "layer_a");
  } else {
    comm.add_tensor(a, "layer_a");
    comm.add_tensor(b, "layer_b");
  }
  std::string reason;
  try {
    comm.average();
    ADD_FAILURE() << "no error on rank " << t.rank();
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument) << e.what();
    reason = e.reason();
  }
  EXPECT_EQ(reason,
            "the ranks registered other tensors: tensor 0 is 'layer_a' (5000 elements) "
            "on rank 0 but 'layer_b' (5000 elements) on rank " +
                std::to_string(n - 1) +
                "; register the same tensors in the same order on every rank");
  EXPECT_EQ(a, std::vector<float>(5000, 1.0f));
  EXPECT_EQ(b, std::vector<float>(5000, 2.0f));
}

}  // namespace

int main(int argc, char** argv) {
  return gradcomm_test::run_mpi_tests(argc, argv, [](gc::mpi_transport& s) {
    sync_transport = &s;
    const int rc = RUN_ALL_TESTS();
    sync_transport = nullptr;
    return rc;
  });
}

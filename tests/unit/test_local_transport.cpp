// The local transport: concepts, collectives over world sizes × message sizes,
// point-to-point groups, any-source receive, deadlines, failure propagation and
// traffic counters.
#include <gradcomm/core/dtype.hpp>
#include <gradcomm/transport/local.hpp>
#include <gradcomm/transport/transport.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// ---- concepts ------------------------------------------------------------------

namespace transport_test {

// Declarations only: the concepts look at expressions, never call them.
struct host_space {
  static constexpr gc::memory_space space = gc::memory_space::host;
};
struct no_space {};
template <bool HasWait, bool HasRecvAny, class Space = host_space>
struct declared_transport : Space {
  struct request {
    std::size_t received(std::size_t) const;
  };
  int rank() const;
  int size() const;
  std::chrono::milliseconds timeout() const;
  const gc::traffic_counters& counters() const;
  request post(std::span<const gc::send_op>, std::span<const gc::recv_op>);
  void wait(request&) requires HasWait;
  bool test(request&);
  template <gc::native_reduce_type E>
  void allreduce(std::span<const E>, std::span<E>, gc::reduce_op);
  void allgather(std::span<const std::byte>, std::span<std::byte>);
  void allgatherv(std::span<const std::byte>, std::span<std::byte>, std::span<const std::size_t>);
  void alltoall(std::span<const std::byte>, std::span<std::byte>);
  void alltoallv(std::span<const std::byte>, std::span<const std::size_t>, std::span<std::byte>,
                 std::span<const std::size_t>);
  void broadcast(std::span<std::byte>, int);
  void barrier();
  gc::recv_result recv_any(int, std::span<std::byte>) requires HasRecvAny;
};

}  // namespace transport_test

static_assert(gc::Transport<gc::local_transport>);
static_assert(gc::AsyncTransport<gc::local_transport>);
static_assert(gc::check_async_transport<gc::local_transport>());
static_assert(!gc::Transport<int>);
static_assert(!gc::AsyncTransport<int>);
static_assert(gc::AsyncTransport<transport_test::declared_transport<true, true>>);
static_assert(!gc::Transport<transport_test::declared_transport<false, true>>);  // no wait()
static_assert(gc::Transport<transport_test::declared_transport<true, false>>);
static_assert(!gc::AsyncTransport<transport_test::declared_transport<true, false>>);  // NCCL-like
// Requirement 0: every transport says which memory it moves; local moves host memory.
static_assert(
    !gc::Transport<transport_test::declared_transport<true, true, transport_test::no_space>>);
static_assert(gc::local_transport::space == gc::memory_space::host);
static_assert(gc::detail::transport_archetype::space == gc::memory_space::host);
// A device transport takes device views and orders its work on a device context's stream.
static_assert(gc::Transport<gc::detail::device_transport_archetype>);
static_assert(!gc::AsyncTransport<gc::detail::device_transport_archetype>);
static_assert(
    std::is_same_v<gc::transport_span<std::byte, gc::memory_space::host>, std::span<std::byte>>);
static_assert(std::is_same_v<gc::transport_span<const std::byte, gc::memory_space::device>,
                             gc::const_device_bytes>);
static_assert(std::is_same_v<gc::send_op, gc::basic_send_op<gc::memory_space::host>>);
// What a host transport refuses with its sentence (host_transport_calls): device views and
// device operations, alone or in a range; host bytes and host operations pass.
static_assert(gc::detail::device_memory_arguments<int, gc::device_bytes&>);
static_assert(gc::detail::device_memory_arguments<gc::device_view<const float>, gc::reduce_op>);
static_assert(
    gc::detail::device_memory_arguments<gc::basic_send_op<gc::memory_space::device> (&)[2]>);
static_assert(gc::detail::device_memory_arguments<
              const std::vector<gc::basic_recv_op<gc::memory_space::device>>&>);
static_assert(!gc::detail::device_memory_arguments<gc::host_bytes, std::span<const std::byte>>);
static_assert(!gc::detail::device_memory_arguments<std::vector<gc::send_op>&, gc::recv_op (&)[1]>);
static_assert(!gc::detail::device_memory_arguments<>);
// Host byte views convert to the spans host transports take, temporaries included.
static_assert(std::is_convertible_v<gc::host_bytes, std::span<std::byte>>);
static_assert(std::is_convertible_v<gc::host_bytes, std::span<const std::byte>>);
static_assert(!std::is_convertible_v<gc::const_host_bytes, std::span<std::byte>>);
static_assert(!std::is_convertible_v<gc::device_bytes, std::span<std::byte>>);
static_assert(gc::native_reduce_type<float> && gc::native_reduce_type<std::int64_t>);
static_assert(!gc::native_reduce_type<gc::f16> && !gc::native_reduce_type<unsigned>);

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool under_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool under_tsan = true;
#else
constexpr bool under_tsan = false;
#endif
#else
constexpr bool under_tsan = false;
#endif

constexpr std::size_t message_sizes[] = {0, 1, 1001};

std::size_t uz(int v) { return static_cast<std::size_t>(v); }

template <class T>
std::span<const std::byte> cbytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}
template <class T>
std::span<std::byte> wbytes(std::vector<T>& v) {
  return std::as_writable_bytes(std::span<T>(v));
}

// A byte that says who sent it to whom and where: mistakes in placement show.
std::byte pattern(int from, int to, std::size_t j) {
  return static_cast<std::byte>((from * 31 + to * 7 + static_cast<int>(j % 251)) & 0xff);
}

// Small integers: every sum, max and min over up to 8 ranks is exact in every type.
template <class T>
T value(int rank, std::size_t i) {
  return static_cast<T>(static_cast<int>((static_cast<std::size_t>(rank) * 7 + i * 3) % 23) - 11);
}

template <class T>
T expected(int ranks, std::size_t i, gc::reduce_op op) {
  T acc = value<T>(0, i);
  for (int r = 1; r < ranks; ++r) {
    const T v = value<T>(r, i);
    switch (op) {
      case gc::reduce_op::sum: acc = static_cast<T>(acc + v); break;
      case gc::reduce_op::max: acc = std::max(acc, v); break;
      case gc::reduce_op::min: acc = std::min(acc, v); break;
    }
  }
  return acc;
}

// The slice of `count` elements rank r reduces: sizes differ by at most one,
// the larger ones first.
std::size_t slice_size(std::size_t count, int ranks, int r) {
  return count / uz(ranks) + (uz(r) < count % uz(ranks) ? 1 : 0);
}

class local_transport_world : public ::testing::TestWithParam<int> {};

// ---- collectives over world sizes ---------------------------------------------------

template <class T>
void check_allreduce(gc::local_transport& t) {
  const int ranks = t.size(), me = t.rank();
  for (std::size_t n : message_sizes) {
    for (gc::reduce_op op : {gc::reduce_op::sum, gc::reduce_op::max, gc::reduce_op::min}) {
      std::vector<T> in(n), out(n, T{99});
      for (std::size_t i = 0; i < n; ++i) in[i] = value<T>(me, i);
      t.allreduce<T>(in, out, op);
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(out[i], expected<T>(ranks, i, op)) << "n " << n << " i " << i;
        ASSERT_EQ(in[i], value<T>(me, i));  // out of place leaves the input alone
      }
      std::vector<T> io = in;  // in place: in aliases out
      t.allreduce<T>(io, io, op);
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(io[i], expected<T>(ranks, i, op)) << i;
    }
  }
}

TEST_P(local_transport_world, allreduce_sum_max_min_of_every_type_out_of_place_and_in_place) {
  gc::local_world world(GetParam(), 30s);
  world.run([](gc::local_transport& t) {
    check_allreduce<float>(t);
    check_allreduce<double>(t);
    check_allreduce<std::int32_t>(t);
    check_allreduce<std::int64_t>(t);
  });
}

TEST_P(local_transport_world, allreduce_outputs_are_bitwise_identical_across_ranks) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const std::size_t n = 1001;
    // Values whose sum rounds: the order of additions shows in the bits.
    std::vector<float> f(n);
    std::vector<double> d(n);
    for (std::size_t i = 0; i < n; ++i) {
      f[i] = 0.1f * static_cast<float>(t.rank() + 1) + 1e-3f * static_cast<float>(i) / 3.0f;
      d[i] = 0.1 * (t.rank() + 1) + 1e-7 * static_cast<double>(i) / 3.0;
    }
    t.allreduce<float>(f, f, gc::reduce_op::sum);
    t.allreduce<double>(d, d, gc::reduce_op::sum);
    std::vector<float> all_f(n * uz(ranks));
    std::vector<double> all_d(n * uz(ranks));
    t.allgather(cbytes(f), wbytes(all_f));
    t.allgather(cbytes(d), wbytes(all_d));
    for (int r = 0; r < ranks; ++r) {
      EXPECT_EQ(std::memcmp(all_f.data() + uz(r) * n, f.data(), n * sizeof(float)), 0) << r;
      EXPECT_EQ(std::memcmp(all_d.data() + uz(r) * n, d.data(), n * sizeof(double)), 0) << r;
    }
  });
}

TEST_P(local_transport_world, allgather_places_each_rank_in_order_also_in_place) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    for (std::size_t m : message_sizes) {
      std::vector<std::byte> in(m), out(m * uz(ranks), std::byte{0xEE});
      for (std::size_t j = 0; j < m; ++j) in[j] = pattern(me, 0, j);
      t.allgather(in, out);
      for (int r = 0; r < ranks; ++r)
        for (std::size_t j = 0; j < m; ++j) ASSERT_EQ(out[uz(r) * m + j], pattern(r, 0, j));
      // In place: this rank's input already sits at its place in out.
      std::vector<std::byte> io(m * uz(ranks), std::byte{0xEE});
      std::copy(in.begin(), in.end(), io.begin() + static_cast<std::ptrdiff_t>(uz(me) * m));
      t.allgather(std::span<const std::byte>(io).subspan(uz(me) * m, m), io);
      EXPECT_EQ(io, out);
    }
  });
}

TEST_P(local_transport_world, allgatherv_with_unequal_counts_including_zeros) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    for (std::size_t scale : {std::size_t{0}, std::size_t{1}, std::size_t{37}}) {
      std::vector<std::size_t> counts(uz(ranks));
      std::size_t total = 0;
      for (int r = 0; r < ranks; ++r) total += counts[uz(r)] = (r % 3 == 1) ? 0 : scale * uz(r + 1);
      std::vector<std::byte> in(counts[uz(me)]), out(total, std::byte{0xEE});
      for (std::size_t j = 0; j < in.size(); ++j) in[j] = pattern(me, 1, j);
      t.allgatherv(in, out, counts);
      std::size_t at = 0;
      for (int r = 0; r < ranks; ++r)
        for (std::size_t j = 0; j < counts[uz(r)]; ++j) ASSERT_EQ(out[at++], pattern(r, 1, j));
    }
  });
}

TEST_P(local_transport_world, alltoall_exchanges_equal_chunks) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    for (std::size_t c : message_sizes) {
      std::vector<std::byte> in(c * uz(ranks)), out(c * uz(ranks), std::byte{0xEE});
      for (int q = 0; q < ranks; ++q)
        for (std::size_t j = 0; j < c; ++j) in[uz(q) * c + j] = pattern(me, q, j);
      t.alltoall(in, out);
      for (int q = 0; q < ranks; ++q)
        for (std::size_t j = 0; j < c; ++j) ASSERT_EQ(out[uz(q) * c + j], pattern(q, me, j));
    }
  });
}

TEST_P(local_transport_world, alltoallv_exchanges_chunks_of_per_rank_lengths) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  // from rank a to rank b: zero for some pairs, odd for others
  auto count = [](int a, int b, std::size_t scale) { return uz((a + 2 * b) % 4) * scale; };
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    for (std::size_t scale : {std::size_t{0}, std::size_t{1}, std::size_t{333}}) {
      std::vector<std::size_t> send_counts(uz(ranks)), recv_counts(uz(ranks));
      for (int q = 0; q < ranks; ++q) {
        send_counts[uz(q)] = count(me, q, scale);
        recv_counts[uz(q)] = count(q, me, scale);
      }
      std::vector<std::byte> in, out;
      for (int q = 0; q < ranks; ++q)
        for (std::size_t j = 0; j < send_counts[uz(q)]; ++j) in.push_back(pattern(me, q, j));
      std::size_t total = 0;
      for (std::size_t c : recv_counts) total += c;
      out.assign(total, std::byte{0xEE});
      t.alltoallv(in, send_counts, out, recv_counts);
      std::size_t at = 0;
      for (int q = 0; q < ranks; ++q)
        for (std::size_t j = 0; j < recv_counts[uz(q)]; ++j)
          ASSERT_EQ(out[at++], pattern(q, me, j));
    }
  });
}

TEST_P(local_transport_world, broadcast_from_every_root) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    for (std::size_t m : message_sizes) {
      for (int root = 0; root < ranks; ++root) {
        std::vector<std::byte> buf(m, std::byte{0xEE});
        if (t.rank() == root)
          for (std::size_t j = 0; j < m; ++j) buf[j] = pattern(root, 2, j);
        t.broadcast(buf, root);
        for (std::size_t j = 0; j < m; ++j) ASSERT_EQ(buf[j], pattern(root, 2, j));
      }
    }
  });
}

TEST_P(local_transport_world, barrier_waits_for_every_rank) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  std::atomic<int> arrived{0};
  world.run([&](gc::local_transport& t) {
    for (int round = 0; round < 20; ++round) {
      if ((t.rank() + round) % ranks == 0) std::this_thread::sleep_for(1ms);  // a late rank
      arrived.fetch_add(1);
      t.barrier();
      EXPECT_GE(arrived.load(), ranks * (round + 1));
    }
  });
}

// ---- point-to-point over world sizes ------------------------------------------------

TEST_P(local_transport_world, ring_exchange_in_one_group) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank(), next = (me + 1) % ranks, prev = (me + ranks - 1) % ranks;
    for (std::size_t m : message_sizes) {
      std::vector<std::byte> mine(m), theirs(m + 5, std::byte{0xEE});
      for (std::size_t j = 0; j < m; ++j) mine[j] = pattern(me, next, j);
      const gc::send_op s[] = {{next, 4, mine}};
      const gc::recv_op r[] = {{prev, 4, theirs}};
      auto req = t.post(s, r);
      t.wait(req);
      ASSERT_EQ(req.received(0), m);  // a shorter message than the buffer is fine
      EXPECT_EQ(req.source(0), prev);
      for (std::size_t j = 0; j < m; ++j) ASSERT_EQ(theirs[j], pattern(prev, me, j));
      EXPECT_EQ(theirs[m], std::byte{0xEE});
    }
  });
}

TEST_P(local_transport_world, host_byte_views_go_wherever_spans_do) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank(), next = (me + 1) % ranks, prev = (me + ranks - 1) % ranks;
    std::vector<std::byte> mine(7, pattern(me, next, 0)), theirs(7);
    const gc::const_host_bytes in(mine);
    const gc::host_bytes out(theirs);
    const gc::send_op s[] = {{next, 5, in}};
    const gc::recv_op r[] = {{prev, 5, out}};
    auto req = t.post(s, r);
    t.wait(req);
    EXPECT_EQ(theirs, std::vector<std::byte>(7, pattern(prev, me, 0)));
    std::vector<std::byte> all(7 * uz(ranks));
    t.allgather(in, gc::host_bytes(all));
    for (int q = 0; q < ranks; ++q) EXPECT_EQ(all[7 * uz(q)], pattern(q, (q + 1) % ranks, 0));
    t.broadcast(out, 0);
    EXPECT_EQ(theirs[0], pattern(ranks - 1, 0, 0));  // rank 0's, from rank ranks - 1
  });
}

TEST_P(local_transport_world, all_to_all_point_to_point_in_one_group_does_not_deadlock) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    const std::size_t m = 1001;
    std::vector<std::vector<std::byte>> out(uz(ranks)), in(uz(ranks), std::vector<std::byte>(m));
    std::vector<gc::send_op> sends;
    std::vector<gc::recv_op> recvs;
    // Receives listed first and in reverse order on odd ranks: any order works.
    for (int q = 0; q < ranks; ++q) {
      const int p = me % 2 ? ranks - 1 - q : q;
      recvs.push_back({p, 11, in[uz(p)]});
    }
    for (int q = 0; q < ranks; ++q) {
      out[uz(q)].resize(m);
      for (std::size_t j = 0; j < m; ++j) out[uz(q)][j] = pattern(me, q, j);
      sends.push_back({q, 11, out[uz(q)]});
    }
    auto req = t.post(sends, recvs);
    t.wait(req);
    for (int q = 0; q < ranks; ++q)
      for (std::size_t j = 0; j < m; ++j) ASSERT_EQ(in[uz(q)][j], pattern(q, me, j));
  });
}

TEST_P(local_transport_world, recv_any_takes_every_ranks_message) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    if (me != 0) {
      const std::vector<int> msg(uz(me), me);  // rank r sends r ints
      const gc::send_op s[] = {{0, 21, cbytes(msg)}};
      auto req = t.post(s, {});
      t.wait(req);
      return;
    }
    std::set<int> seen;
    std::vector<int> buf(uz(ranks));
    for (int k = 1; k < ranks; ++k) {
      const gc::recv_result r = t.recv_any(21, wbytes(buf));
      EXPECT_EQ(r.bytes, uz(r.source) * sizeof(int));
      for (int j = 0; j < r.source; ++j) EXPECT_EQ(buf[uz(j)], r.source);
      seen.insert(r.source);
    }
    EXPECT_EQ(seen.size(), uz(ranks - 1));
  });
}

TEST_P(local_transport_world, counters_match_the_formulas) {
  const int ranks = GetParam();
  gc::local_world world(ranks, 30s);
  world.run([&](gc::local_transport& t) {
    const int me = t.rank();
    const auto others = static_cast<std::uint64_t>(ranks - 1);
    auto delta = [&, before = t.counters().snapshot()]() mutable {
      const auto now = t.counters().snapshot();
      const auto d = now - before;
      before = now;
      return d;
    };
    // allreduce: 2(N-1)/N × the input, sent and received, 2(N-1) messages
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1001}, uz(ranks) * 1000}) {
      std::vector<float> g(n, 1.0f);
      t.allreduce<float>(g, g, gc::reduce_op::sum);
      const auto d = delta();
      const std::uint64_t own = slice_size(n, ranks, me);
      const std::uint64_t bytes = (others * own + (n - own)) * sizeof(float);
      EXPECT_EQ(d.bytes_sent, bytes) << n;
      EXPECT_EQ(d.bytes_received, bytes) << n;
      if (n == uz(ranks) * 1000) {
        EXPECT_EQ(d.bytes_sent, 2 * others * 1000 * sizeof(float));
        EXPECT_EQ(d.messages_sent, 2 * others);
        EXPECT_EQ(d.messages_received, 2 * others);
      }
    }
    // allgather and alltoall: (N-1) × the chunk each way
    std::vector<std::byte> in(1001), out(1001 * uz(ranks));
    t.allgather(in, out);
    auto d = delta();
    EXPECT_EQ(d.bytes_sent, others * 1001);
    EXPECT_EQ(d.bytes_received, others * 1001);
    EXPECT_EQ(d.messages_sent, others);
    std::vector<std::byte> a(7 * uz(ranks)), b(7 * uz(ranks));
    t.alltoall(a, b);
    d = delta();
    EXPECT_EQ(d.bytes_sent, others * 7);
    EXPECT_EQ(d.bytes_received, others * 7);
    // broadcast: the root sends to N-1, the others receive once
    std::vector<std::byte> buf(100);
    t.broadcast(buf, 0);
    d = delta();
    EXPECT_EQ(d.bytes_sent, me == 0 ? others * 100 : 0);
    EXPECT_EQ(d.bytes_received, me == 0 ? 0 : 100u);
    t.barrier();
    d = delta();
    EXPECT_EQ(d.bytes_sent + d.bytes_received + d.messages_sent + d.messages_received, 0u);
    // point-to-point: the message bytes, one message each way
    const int next = (me + 1) % ranks, prev = (me + ranks - 1) % ranks;
    std::vector<std::byte> mine(333), theirs(1000);
    const gc::send_op s[] = {{next, 0, mine}};
    const gc::recv_op r[] = {{prev, 0, theirs}};
    auto req = t.post(s, r);
    t.wait(req);
    d = delta();
    EXPECT_EQ(d.bytes_sent, 333u);
    EXPECT_EQ(d.bytes_received, 333u);
    EXPECT_EQ(d.messages_sent, 1u);
    EXPECT_EQ(d.messages_received, 1u);
  });
}

INSTANTIATE_TEST_SUITE_P(world_sizes, local_transport_world, ::testing::Values(1, 2, 3, 4, 7, 8));

// ---- large messages -------------------------------------------------------------------

class local_transport_large : public ::testing::TestWithParam<int> {};

TEST_P(local_transport_large, allreduce_64_mib_of_f32) {
  const int ranks = GetParam();
  // 64 MiB; a sanitizer makes every access slow, so it gets 8 MiB.
  const std::size_t n = (under_tsan ? 8u : 64u) * 1024 * 1024 / sizeof(float);
  gc::local_world world(ranks, 60s);
  world.run([&](gc::local_transport& t) {
    std::vector<float> in(n), out(n);
    for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<float>((i + uz(t.rank())) % 64);
    t.allreduce<float>(in, out, gc::reduce_op::sum);
    for (std::size_t i = 0; i < n; ++i) {
      float want = 0;
      for (int r = 0; r < ranks; ++r) want += static_cast<float>((i + uz(r)) % 64);
      ASSERT_EQ(out[i], want) << i;
    }
    const auto s = t.counters().snapshot();
    EXPECT_EQ(s.bytes_sent, 2 * uz(ranks - 1) * (n / uz(ranks)) * sizeof(float));
  });
}

INSTANTIATE_TEST_SUITE_P(world_sizes, local_transport_large, ::testing::Values(2, 4));

// ---- matching ---------------------------------------------------------------------------

TEST(local_transport_matching, tags_match_separately_and_in_post_order) {
  gc::local_world world(2, 30s);
  world.run([](gc::local_transport& t) {
    const std::vector<char> a{'A'}, b{'B'}, c{'C'}, x{'X'}, y{'Y'};
    if (t.rank() == 0) {
      const gc::send_op s1[] = {{1, 1, cbytes(a)}}, s2[] = {{1, 2, cbytes(b)}},
                        s3[] = {{1, 1, cbytes(c)}};
      auto r1 = t.post(s1, {});
      auto r2 = t.post(s2, {});
      auto r3 = t.post(s3, {});
      t.barrier();  // rank 1 receives while all three are pending
      t.wait(r1);
      t.wait(r2);
      t.wait(r3);
      t.barrier();  // rank 1's receives are posted before these sends
      const gc::send_op s4[] = {{1, 5, cbytes(x)}, {1, 5, cbytes(y)}};
      auto r4 = t.post(s4, {});
      t.wait(r4);
    } else {
      t.barrier();
      std::vector<char> got(3, '?');
      const gc::recv_op r[] = {{0, 2, wbytes(got).subspan(0, 1)},
                               {0, 1, wbytes(got).subspan(1, 1)},
                               {0, 1, wbytes(got).subspan(2, 1)}};
      auto req = t.post({}, r);
      t.wait(req);
      EXPECT_EQ(std::string(got.begin(), got.end()), "BAC");
      std::vector<char> first(1), second(1);
      const gc::recv_op r2[] = {{0, 5, wbytes(first)}, {0, 5, wbytes(second)}};
      auto req2 = t.post({}, r2);
      t.barrier();
      t.wait(req2);
      EXPECT_EQ(first[0], 'X');
      EXPECT_EQ(second[0], 'Y');
    }
  });
}

TEST(local_transport_matching, recv_any_takes_the_earliest_posted_send) {
  gc::local_world world(3, 30s);
  world.run([](gc::local_transport& t) {
    const std::vector<int> msg{t.rank()};
    if (t.rank() == 2) {  // posts first
      const gc::send_op s[] = {{0, 9, cbytes(msg)}};
      auto req = t.post(s, {});
      t.barrier();
      t.barrier();
      t.wait(req);
    } else if (t.rank() == 1) {  // posts second
      t.barrier();
      const gc::send_op s[] = {{0, 9, cbytes(msg)}};
      auto req = t.post(s, {});
      t.barrier();
      t.wait(req);
    } else {
      t.barrier();
      t.barrier();
      std::vector<int> buf(1);
      EXPECT_EQ(t.recv_any(9, wbytes(buf)).source, 2);
      EXPECT_EQ(buf[0], 2);
      EXPECT_EQ(t.recv_any(9, wbytes(buf)).source, 1);
      EXPECT_EQ(buf[0], 1);
    }
  });
}

TEST(local_transport_matching, test_reports_completion_without_blocking) {
  gc::local_world world(2, 30s);
  world.run([](gc::local_transport& t) {
    std::vector<std::byte> buf(64);
    if (t.rank() == 1) {
      const gc::recv_op r[] = {{0, 3, buf}};
      auto req = t.post({}, r);
      EXPECT_FALSE(t.test(req));  // rank 0 sends only after the barrier
      t.barrier();
      while (!t.test(req)) std::this_thread::sleep_for(1ms);
      EXPECT_EQ(req.received(0), 64u);
    } else {
      t.barrier();
      const gc::send_op s[] = {{1, 3, buf}};
      auto req = t.post(s, {});
      t.wait(req);
    }
  });
}

TEST(local_transport_matching, a_message_longer_than_the_buffer_is_an_error_on_the_receiver) {
  gc::local_world world(2, 30s);
  world.run([](gc::local_transport& t) {
    std::vector<std::byte> buf(10);
    if (t.rank() == 0) {
      const gc::send_op s[] = {{1, 3, buf}};
      auto req = t.post(s, {});
      t.wait(req);  // the sender is not told
    } else {
      const gc::recv_op r[] = {{0, 3, std::span<std::byte>(buf).first(4)}};
      auto req = t.post({}, r);
      try {
        t.wait(req);
        ADD_FAILURE() << "no error";
      } catch (const gc::error& e) {
        EXPECT_EQ(e.code(), gc::errc::buffer_too_small);
        EXPECT_EQ(e.rank(), 1);
        const std::string what = e.what();
        EXPECT_NE(what.find("local_transport::wait"), std::string::npos) << what;
        EXPECT_NE(what.find("10 bytes from rank 0 (tag 3)"), std::string::npos) << what;
        EXPECT_NE(what.find("4 bytes"), std::string::npos) << what;
      }
    }
  });
}

// ---- argument checks ----------------------------------------------------------------------

TEST(local_transport_arguments, bad_worlds_ranks_and_peers_are_invalid_arguments) {
  EXPECT_THROW(gc::local_world(0), gc::error);
  EXPECT_THROW(gc::local_world(2, 0ms), gc::error);
  gc::local_world world(2);
  EXPECT_THROW(world.transport(2), gc::error);
  EXPECT_THROW(world.transport(-1), gc::error);
  auto t = world.transport(0);
  std::vector<std::byte> buf(4);
  const gc::send_op s[] = {{5, 0, buf}};
  try {
    (void)t.post(s, {});
    ADD_FAILURE() << "no error";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), gc::errc::invalid_argument);
    EXPECT_EQ(e.call(), "local_transport::post");
    EXPECT_NE(std::string(e.what()).find("rank 5"), std::string::npos) << e.what();
  }
}

TEST(local_transport_arguments, mismatched_collectives_throw_on_every_rank_naming_both) {
  gc::local_world world(3, 30s);
  std::atomic<int> errors{0};
  world.run([&](gc::local_transport& t) {
    // sizes differ
    std::vector<float> g(t.rank() == 0 ? 10 : 11, 1.0f);
    try {
      t.allreduce<float>(g, g, gc::reduce_op::sum);
      ADD_FAILURE() << "no error on rank " << t.rank();
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument);
      EXPECT_EQ(e.call(), "local_transport::allreduce");
      EXPECT_EQ(e.reason(),
                "rank 0 reduces 10 f32 elements (sum) but rank 1 reduces 11 f32 "
                "elements (sum)");
      errors.fetch_add(1);
    }
    // collectives differ
    try {
      if (t.rank() == 2)
        t.barrier();
      else
        t.broadcast(std::as_writable_bytes(std::span<float>(g)), 0);
      ADD_FAILURE() << "no error on rank " << t.rank();
    } catch (const gc::error& e) {
      EXPECT_EQ(e.reason(), "collective #2: rank 0 called broadcast but rank 2 called barrier");
      errors.fetch_add(1);
    }
    // what one rank sends is not what the other expects
    std::vector<std::size_t> sc(3, 1), rc(3, 1);
    if (t.rank() == 1) rc[2] = 2;
    std::vector<std::byte> in(3), out(t.rank() == 1 ? 4 : 3);
    try {
      t.alltoallv(in, sc, out, rc);
      ADD_FAILURE() << "no error on rank " << t.rank();
    } catch (const gc::error& e) {
      EXPECT_EQ(e.reason(),
                "rank 2 sends 1 bytes to rank 1 but rank 1 expects 2 bytes from rank 2");
      errors.fetch_add(1);
    }
    // a rank's own arguments are wrong: every rank hears of it
    try {
      std::vector<std::byte> small(t.rank() == 2 ? 1 : 6);
      t.allgather(std::span<const std::byte>(in).first(2), small);
      ADD_FAILURE() << "no error on rank " << t.rank();
    } catch (const gc::error& e) {
      EXPECT_EQ(e.reason(), "arguments of rank 2: out has 1 bytes, expected 3 ranks x 2 bytes");
      errors.fetch_add(1);
    }
    // the world still works
    std::vector<float> ok(5, 1.0f);
    t.allreduce<float>(ok, ok, gc::reduce_op::sum);
    EXPECT_EQ(ok[4], 3.0f);
  });
  EXPECT_EQ(errors.load(), 12);
}

// Ranks that hand the same vector to a collective would write each other's results (the
// mean of ones came out 1/64 for a user): refused on every rank before any byte moves.
TEST(local_transport_arguments, ranks_sharing_a_buffer_are_refused_on_every_rank) {
  for (const int n : {2, 3, 4}) {
    gc::local_world world(n, 30s);
    std::vector<float> shared(64, 1.0f);
    std::vector<std::vector<float>> own(static_cast<std::size_t>(n), std::vector<float>(64, 1.0f));
    std::atomic<int> errors{0};
    world.run([&](gc::local_transport& t) {
      auto expect_refused = [&](auto&& call, const char* what) {
        try {
          call();
          ADD_FAILURE() << what << ": no error on rank " << t.rank();
        } catch (const gc::error& e) {
          EXPECT_EQ(e.code(), gc::errc::invalid_argument) << e.what();
          EXPECT_NE(e.reason().find("needs buffers of its own"), std::string::npos) << e.what();
          errors.fetch_add(1);
        }
      };
      // every rank reduces the one vector in place
      expect_refused([&] { t.allreduce<float>(shared, shared, gc::reduce_op::sum); }, "in place");
      // the last rank writes into the first rank's input
      auto& mine = own[static_cast<std::size_t>(t.rank())];
      std::span<float> out = t.rank() == t.size() - 1 ? std::span<float>(own[0]) : std::span(mine);
      expect_refused([&] { t.allreduce<float>(mine, out, gc::reduce_op::sum); }, "into an input");
      // nothing was written, and the world still works with buffers of their own
      EXPECT_EQ(shared[0], 1.0f);
      t.allreduce<float>(mine, mine, gc::reduce_op::sum);
      EXPECT_EQ(mine[63], static_cast<float>(t.size()));
    });
    EXPECT_EQ(errors.load(), 2 * n) << n;
  }
}

// Ranks that disagree all throw the same error; one that throws first frees its counts
// while the others may still be reading them (ASan saw a heap-use-after-free here, and one
// message carried a garbage count). The counts a rank publishes are copies of its own.
TEST(local_transport_arguments, a_disagreement_reads_no_counts_a_rank_has_freed) {
  gc::local_world world(4, 30s);
  std::vector<std::string> reasons(4);
  world.run([&](gc::local_transport& t) {
    for (int i = 0; i < 200; ++i) {
      auto sc = std::make_unique<std::vector<std::size_t>>(4, 1);
      auto rc = std::make_unique<std::vector<std::size_t>>(4, 1);
      if (t.rank() == 1) (*rc)[2] = 2;
      std::vector<std::byte> in(4), out(t.rank() == 1 ? 5 : 4);
      try {
        t.alltoallv(in, *sc, out, *rc);
        ADD_FAILURE() << "no error on rank " << t.rank();
      } catch (const gc::error& e) {
        // What this rank passed is gone and its memory scribbled over at once.
        std::fill(sc->begin(), sc->end(), std::size_t{140015548100625});
        std::fill(rc->begin(), rc->end(), std::size_t{140015548100625});
        sc.reset();
        rc.reset();
        EXPECT_EQ(e.reason(),
                  "rank 2 sends 1 bytes to rank 1 but rank 1 expects 2 bytes from rank 2")
            << "round " << i;
      }
    }
  });
}

// ---- deadlines and failures -------------------------------------------------------------------

TEST(local_transport_failure, a_rank_that_never_enters_times_the_others_out) {
  gc::local_world world(4, 200ms);
  std::vector<int> peer(4, -2);
  std::vector<std::string> reason(4);
  const auto t0 = clock_type::now();
  EXPECT_THROW(world.run([&](gc::local_transport& t) {
    if (t.rank() == 1) return;  // never enters
    std::vector<double> g(100, 1.0);
    try {
      t.allreduce<double>(g, g, gc::reduce_op::sum);
    } catch (const gc::timeout_error& e) {
      peer[uz(t.rank())] = e.peer();
      reason[uz(t.rank())] = e.reason();
      EXPECT_EQ(e.rank(), t.rank());
      EXPECT_EQ(e.call(), "local_transport::allreduce");
      throw;
    }
  }),
               gc::timeout_error);
  const auto took = clock_type::now() - t0;
  EXPECT_GE(took, 200ms);
  EXPECT_LT(took, 5s);
  for (int r : {0, 2, 3}) {
    EXPECT_EQ(peer[uz(r)], 1) << r;
    EXPECT_NE(reason[uz(r)].find("rank 1 did not reach step 1"), std::string::npos)
        << reason[uz(r)];
  }
}

TEST(local_transport_failure, a_timeout_lists_every_missing_rank) {
  gc::local_world world(4, 200ms);
  try {
    world.run([&](gc::local_transport& t) {
      if (t.rank() == 1 || t.rank() == 3) return;
      t.barrier();
    });
    ADD_FAILURE() << "no error";
  } catch (const gc::timeout_error& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(e.reason().find("ranks 1, 3 did not reach"), std::string::npos) << e.reason();
  }
}

TEST(local_transport_failure, a_point_to_point_wait_times_out_naming_the_peer) {
  gc::local_world world(2, 200ms);
  std::vector<std::byte> buf(8);
  auto t = world.transport(0);
  const gc::recv_op r[] = {{1, 6, buf}};
  auto req = t.post({}, r);
  const auto t0 = clock_type::now();
  try {
    t.wait(req);
    ADD_FAILURE() << "no error";
  } catch (const gc::timeout_error& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.rank(), 0);
    EXPECT_NE(e.reason().find("receive from rank 1 (tag 6"), std::string::npos) << e.reason();
  }
  EXPECT_GE(clock_type::now() - t0, 200ms);
  EXPECT_GE(t.counters().snapshot().wait_ns, 200'000'000);
}

TEST(local_transport_failure, a_rank_that_throws_releases_the_others_at_once) {
  gc::local_world world(4, 20s);
  std::vector<int> peer(4, -2);
  std::vector<clock_type::duration> took(4);
  const auto t0 = clock_type::now();
  try {
    world.run([&](gc::local_transport& t) {
      if (t.rank() == 2) {
        std::this_thread::sleep_for(50ms);  // the others are waiting by now
        throw std::runtime_error("boom");
      }
      std::vector<float> g(1001, 1.0f);
      try {
        if (t.rank() == 3) {  // blocked on a receive from rank 2
          const gc::recv_op r[] = {{2, 0, wbytes(g)}};
          auto req = t.post({}, r);
          t.wait(req);
        } else {
          t.allreduce<float>(g, g, gc::reduce_op::sum);
        }
      } catch (const gc::peer_error& e) {
        peer[uz(t.rank())] = e.peer();
        took[uz(t.rank())] = clock_type::now() - t0;
        throw;
      }
    });
    ADD_FAILURE() << "no error";
  } catch (const gc::error& e) {
    ADD_FAILURE() << "run rethrew an effect, not the cause: " << e.what();
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom");
  }
  for (int r : {0, 1, 3}) {
    EXPECT_EQ(peer[uz(r)], 2) << r;
    EXPECT_LT(took[uz(r)], 2s) << r;  // well under the 20 s deadline
  }
}

TEST(local_transport_failure, a_failed_rank_is_reported_to_later_calls_too) {
  gc::local_world world(3, 20s);
  std::atomic<int> reported{0};
  EXPECT_THROW(world.run([&](gc::local_transport& t) {
    if (t.rank() == 1) throw std::logic_error("rank 1 gives up");
    std::vector<std::byte> buf(4);
    if (t.rank() == 0) {
      const gc::recv_op r[] = {{1, 0, buf}};
      // post() already throws when rank 1 failed before it, wait() when after
      EXPECT_THROW(
          {
            auto req = t.post({}, r);
            t.wait(req);
          },
          gc::peer_error);
      try {
        const gc::send_op s[] = {{1, 0, buf}};
        (void)t.post(s, {});
        ADD_FAILURE() << "no error";
      } catch (const gc::peer_error& e) {
        EXPECT_EQ(e.peer(), 1);
        EXPECT_EQ(e.call(), "local_transport::post");
        EXPECT_NE(e.reason().find("rank 1 gives up"), std::string::npos) << e.reason();
        reported.fetch_add(1);
      }
    }
    try {
      t.barrier();
    } catch (const gc::peer_error& e) {
      EXPECT_EQ(e.peer(), 1);
      reported.fetch_add(1);
    }
  }),
               std::logic_error);
  EXPECT_EQ(reported.load(), 3);
}

TEST(local_transport_failure, abort_releases_ranks_on_threads_of_the_callers_own) {
  gc::local_world world(2, 20s);
  int seen = -2;
  std::string why;
  std::thread a([&] {
    auto t = world.transport(0);
    try {
      t.barrier();
    } catch (const gc::peer_error& e) {
      seen = e.peer();
      why = e.reason();
    }
  });
  std::thread b([&] {
    auto t = world.transport(1);
    std::this_thread::sleep_for(20ms);
    t.abort("out of memory");
  });
  a.join();
  b.join();
  EXPECT_EQ(seen, 1);
  EXPECT_NE(why.find("out of memory"), std::string::npos) << why;
}

TEST(local_transport_failure, any_rank_may_send_to_recv_any_after_another_failed) {
  gc::local_world world(3, 20s);
  EXPECT_THROW(world.run([](gc::local_transport& t) {
    if (t.rank() == 1) throw std::runtime_error("worker 1 died");
    if (t.rank() == 2) {
      std::this_thread::sleep_for(30ms);  // after rank 1 failed
      const std::vector<int> msg{2};
      const gc::send_op s[] = {{0, 1, cbytes(msg)}};
      auto req = t.post(s, {});
      t.wait(req);
      return;
    }
    std::vector<int> buf(1);
    const auto r = t.recv_any(1, wbytes(buf));
    EXPECT_EQ(r.source, 2);
    EXPECT_EQ(buf[0], 2);
  }),
               std::runtime_error);
}

}  // namespace

// The parameter server over the local transport (ranks as threads): with integer
// gradients and plain SGD the final parameters are exactly the initial ones minus every
// acknowledged push (1 and 2 servers, 1..7 workers, both pull encodings); the staleness
// bound holds, checked from the recorded versions (s = 0, 1, 3); a worker that throws or
// goes silent is reported by rank while the others finish; compressed pulls stay within
// the codec's bound of the server's values and equal the server's public copy bit for bit;
// a checkpoint restored in a new world continues bit for bit; the concepts.
#include "forwarding_transport.hpp"
#include "parameter_server_test_data.hpp"

#include <gradcomm/codec/dgc.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/topk.hpp>
#include <gradcomm/comm/communicator.hpp>
#include <gradcomm/comm/optimizer.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

using ps_f32 = gc::parameter_server<gc::identity_codec, gc::local_transport>;
using ef_quant = gc::error_feedback<gc::scalar_quant_codec>;

static_assert(gc::Communicator<ps_f32>);
static_assert(gc::Communicator<gc::parameter_server<ef_quant, gc::local_transport, gc::adam>>);
static_assert(std::is_same_v<gc::parameter_server<ef_quant, gc::local_transport>::pull_codec_type,
                             gc::scalar_quant_codec>);
static_assert(std::is_same_v<ps_f32::pull_codec_type, gc::identity_codec>);

// A transport that models Transport but not AsyncTransport (no recv_any), as NCCL: the
// compile-fail test tests/compile_fail/parameter_server_without_recv_any.cpp shows the
// parameter server refuses it.
static_assert(gc::Transport<forwarding_transport> && !gc::AsyncTransport<forwarding_transport>);
static_assert(gc::AsyncTransport<gc::local_transport>);

using ps_test::initial;
using ps_test::int_grad;

struct run_result {
  std::vector<float> final_params;    // assembled from the servers' shards
  std::vector<std::int64_t> acked;    // Σ of every acknowledged push, per element
  std::vector<std::uint64_t> pushes;  // acknowledged pushes per worker (index rank − servers)
  std::vector<gc::ps_server_stats> stats;
  std::vector<std::vector<gc::ps_update>> logs;
  std::vector<std::vector<gc::lost_worker>> lost;
  std::vector<int> reported;  // ranks passed to on_worker_lost (any server)
  std::string error;          // what world.run threw, if anything
};

// `servers` servers and `workers` workers; each worker pushes int_grad for `steps` steps
// (before_step(rank, step) runs first and may sleep or throw). lr = 1, plain SGD.
template <class C = gc::identity_codec>
run_result run_ps(int servers, int workers, std::size_t n, int steps, gc::ps_options opt,
                  std::function<void(int, int)> before_step = {},
                  std::chrono::milliseconds timeout = 10s, C codec = {}) {
  run_result res;
  res.final_params.assign(n, 0.0f);
  res.acked.assign(n, 0);
  res.pushes.assign(static_cast<std::size_t>(workers), 0);
  res.stats.resize(static_cast<std::size_t>(servers));
  res.logs.resize(static_cast<std::size_t>(servers));
  res.lost.resize(static_cast<std::size_t>(servers));
  std::mutex mu;
  opt.servers = servers;
  opt.on_worker_lost = [&](const gc::lost_worker& l) {
    std::lock_guard lk(mu);
    res.reported.push_back(l.rank);
  };
  gc::local_world world(servers + workers, timeout);
  try {
    world.run([&](gc::local_transport& t) {
      gc::parameter_server<C, gc::local_transport> ps(t, codec, opt, gc::sgd{{.lr = 1.0f}});
      std::vector<float> w = initial(n);
      if (ps.is_server()) {
        ps.serve(w);
        std::lock_guard lk(mu);
        const auto [lo, hi] = ps.shard(t.rank(), n);
        for (std::size_t i = lo; i < hi; ++i) res.final_params[i] = w[i];
        const auto s = static_cast<std::size_t>(t.rank());
        res.stats[s] = ps.server_stats();
        res.logs[s].assign(ps.updates().begin(), ps.updates().end());
        res.lost[s].assign(ps.lost_workers().begin(), ps.lost_workers().end());
        return;
      }
      std::vector<float> g(n);
      for (int step = 0; step < steps; ++step) {
        if (before_step) before_step(t.rank(), step);
        for (std::size_t i = 0; i < n; ++i) g[i] = int_grad(t.rank(), ps.clock_count(), i);
        ps.step(w, g);
        std::lock_guard lk(mu);
        for (std::size_t i = 0; i < n; ++i) res.acked[i] += static_cast<std::int64_t>(g[i]);
        ++res.pushes[static_cast<std::size_t>(t.rank() - servers)];
      }
    });
  } catch (const std::exception& e) {
    res.error = e.what();
  }
  return res;
}

void expect_exact_sum(const run_result& r, std::size_t n, const std::string& what) {
  const std::vector<float> w0 = initial(n);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (r.final_params[i] != w0[i] - static_cast<float>(r.acked[i]) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " is " << r.final_params[i] << ", expected "
                    << w0[i] - static_cast<float>(r.acked[i]);
  EXPECT_EQ(bad, 0u) << what;
}

// Every update's gradient saw its own worker's earlier updates, and at least clock − s of
// every other worker's: counted from the log (worker j's updates with version_applied ≤
// the version the gradient was computed on).
void expect_staleness_bound(const std::vector<gc::ps_update>& log, int servers, int workers,
                            std::uint64_t s, const std::string& what) {
  std::vector<std::vector<std::uint64_t>> applied(static_cast<std::size_t>(workers));
  for (const auto& u : log)
    applied[static_cast<std::size_t>(u.worker - servers)].push_back(u.version_applied);
  std::size_t bad = 0;
  for (const auto& u : log) {
    for (int j = 0; j < workers; ++j) {
      const auto& a = applied[static_cast<std::size_t>(j)];
      const auto seen = static_cast<std::uint64_t>(
          std::upper_bound(a.begin(), a.end(), u.version_seen) - a.begin());
      if (j + servers == u.worker) {
        if (seen != u.clock && bad++ < 5)
          ADD_FAILURE() << what << ": worker " << u.worker << " clock " << u.clock << " saw "
                        << seen << " of its own updates";
      } else if (seen + s < u.clock && bad++ < 5) {
        ADD_FAILURE() << what << ": worker " << u.worker << " clock " << u.clock << " read version "
                      << u.version_seen << ", which holds only " << seen << " updates of worker "
                      << j + servers << " (bound " << s << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

// Small sleeps that differ by rank and step: the interleavings vary.
void jitter(int rank, int step) {
  const int ms = (rank * 37 + step * 11) % 4;
  if (ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms - 1));
}

TEST(ParameterServer, ExactSumOfAcknowledgedPushes) {
  const std::size_t n = 517;
  for (int workers : {1, 2, 3, 5, 7}) {
    for (auto pull : {gc::pull_encoding::f32, gc::pull_encoding::codec}) {
      const std::string what = std::to_string(workers) + " workers, pull " +
                               (pull == gc::pull_encoding::f32 ? "f32" : "codec");
      const int steps = 30;
      const run_result r = run_ps(1, workers, n, steps, {.pull = pull}, jitter);
      EXPECT_EQ(r.error, "") << what;
      expect_exact_sum(r, n, what);
      EXPECT_EQ(r.stats[0].version, static_cast<std::uint64_t>(workers * steps)) << what;
      EXPECT_EQ(r.stats[0].applied, r.pushes) << what;
      EXPECT_EQ(r.stats[0].duplicates, 0u) << what;
      EXPECT_EQ(r.stats[0].finished, workers) << what;
      EXPECT_EQ(r.stats[0].lost, 0) << what;
    }
  }
}

TEST(ParameterServer, TwoServersShardTheParameters) {
  for (std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{333}}) {
    const run_result r = run_ps(2, 3, n, 20, {.staleness = 1}, jitter);
    EXPECT_EQ(r.error, "") << n;
    expect_exact_sum(r, n, "2 servers, n = " + std::to_string(n));
    for (int s = 0; s < 2; ++s) {
      EXPECT_EQ(r.stats[static_cast<std::size_t>(s)].version, 60u) << "server " << s;
      EXPECT_EQ(r.stats[static_cast<std::size_t>(s)].applied, r.pushes) << "server " << s;
    }
  }
}

TEST(ParameterServer, StalenessBoundFromRecordedVersions) {
  const std::size_t n = 64;
  const int workers = 4, steps = 25;
  for (std::uint64_t s : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{3}}) {
    const std::string what = "s = " + std::to_string(s);
    // Worker 4 is slow: without the bound the others would run ahead of it.
    auto slow = [](int rank, int step) {
      jitter(rank, step);
      if (rank == 4) std::this_thread::sleep_for(2ms);
    };
    const run_result r =
        run_ps(1, workers, n, steps, {.staleness = s, .record_updates = true}, slow);
    EXPECT_EQ(r.error, "") << what;
    ASSERT_EQ(r.logs[0].size(), static_cast<std::size_t>(workers * steps)) << what;
    expect_staleness_bound(r.logs[0], 1, workers, s, what);
    expect_exact_sum(r, n, what);
    std::uint64_t max_stale = 0;
    for (const auto& u : r.logs[0]) max_stale = std::max(max_stale, u.staleness());
    EXPECT_EQ(max_stale, r.stats[0].max_staleness) << what;
    // Synchronous: gradient c is computed on exactly the W·c updates of clocks < c.
    if (s == 0) {
      for (const auto& u : r.logs[0])
        EXPECT_EQ(u.version_seen, u.clock * workers) << what << ", worker " << u.worker;
    }
  }
  // Asynchronous: nothing is held, the fast workers run ahead (the bound would be violated
  // for s = 0), and every push still lands exactly once.
  auto slow = [](int rank, int) {
    if (rank == 4) std::this_thread::sleep_for(3ms);
  };
  const run_result r = run_ps(1, workers, n, steps, {.record_updates = true}, slow);
  EXPECT_EQ(r.error, "");
  expect_exact_sum(r, n, "async");
  EXPECT_GT(r.stats[0].max_staleness, 0u);
}

TEST(ParameterServer, WorkerThatThrowsIsReportedAndTheOthersFinish) {
  const std::size_t n = 100;
  auto killer = [](int rank, int step) {
    if (rank == 2 && step == 5) throw std::runtime_error("worker 2 killed");
  };
  // s = 1: without the loss, the others would wait for rank 2 forever.
  const run_result r = run_ps(1, 3, n, 30, {.staleness = 1, .worker_timeout = 400ms}, killer, 3s);
  EXPECT_NE(r.error.find("worker 2 killed"), std::string::npos) << r.error;
  EXPECT_EQ(r.stats[0].version, 65u) << r.error;
  ASSERT_EQ(r.lost[0].size(), 1u);
  EXPECT_EQ(r.lost[0][0].rank, 2);
  EXPECT_EQ(r.lost[0][0].updates, 5u);
  EXPECT_EQ(r.reported, std::vector<int>{2});
  EXPECT_EQ(r.pushes, (std::vector<std::uint64_t>{30, 5, 30}));
  EXPECT_EQ(r.stats[0].applied, r.pushes);
  EXPECT_EQ(r.stats[0].finished, 2);
  expect_exact_sum(r, n, "a worker killed");
}

TEST(ParameterServer, SilentWorkerIsLostAndItsNextPushRefused) {
  const std::size_t n = 50;
  gc::local_world world(3, 3s);
  std::vector<gc::lost_worker> lost;
  std::uint64_t applied = 0;
  world.run([&](gc::local_transport& t) {
    ps_f32 ps(t, {}, {.staleness = 0, .worker_timeout = 300ms}, gc::sgd{{.lr = 1.0f}});
    std::vector<float> w = initial(n), g(n, 1.0f);
    if (ps.is_server()) {
      ps.serve(w);
      lost.assign(ps.lost_workers().begin(), ps.lost_workers().end());
      applied = ps.version();
      return;
    }
    for (int step = 0; step < 20; ++step) {
      if (t.rank() == 1 && step == 3) {
        std::this_thread::sleep_for(1200ms);  // silent past the deadline
        try {
          ps.step(w, g);
          ADD_FAILURE() << "a lost worker's push was accepted";
        } catch (const gc::peer_error& e) {
          EXPECT_EQ(e.peer(), 0);
          EXPECT_NE(std::string(e.what()).find("declared lost"), std::string::npos) << e.what();
        }
        return;
      }
      ps.step(w, g);
    }
    // Stay in touch (pulls count) until rank 1 has tried again: the server must still serve.
    for (int i = 0; i < 20; ++i) {
      std::this_thread::sleep_for(100ms);
      ps.pull(w);
    }
  });
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0].rank, 1);
  EXPECT_EQ(lost[0].updates, 3u);
  EXPECT_NE(lost[0].reason.find("silent"), std::string::npos) << lost[0].reason;
  EXPECT_EQ(applied, 23u);
}

TEST(ParameterServer, DeadServerIsNamedByTheWorker) {
  gc::local_world world(2, 300ms);
  try {
    world.run([&](gc::local_transport& t) {
      ps_f32 ps(t, {}, {.worker_timeout = 100ms});
      if (ps.is_server()) return;  // never serves
      std::vector<float> w(10), g(10);
      try {
        ps.step(w, g);
        ADD_FAILURE() << "step returned without a server";
      } catch (const gc::timeout_error& e) {
        EXPECT_EQ(e.peer(), 0);
        EXPECT_EQ(e.call(), "parameter_server::step");
      }
      EXPECT_THROW(ps.step(w, g), gc::error);  // unusable after the failure
    });
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  gc::local_world world2(2, 2s);
  EXPECT_THROW(world2.run([&](gc::local_transport& t) {
    ps_f32 ps(t, {}, {.worker_timeout = 100ms});
    if (ps.is_server()) throw std::runtime_error("server down");
    std::vector<float> w(10), g(10);
    try {
      ps.step(w, g);
    } catch (const gc::peer_error& e) {
      EXPECT_EQ(e.peer(), 0);
      throw;
    }
  }),
               std::runtime_error);
}

TEST(ParameterServer, OptionsAreChecked) {
  gc::local_world world(2, 1s);
  world.run([&](gc::local_transport& t) {
    EXPECT_THROW(ps_f32(t, {}, {.servers = 2}), gc::error);
    EXPECT_THROW(ps_f32(t, {}, {.servers = 0}), gc::error);
    EXPECT_THROW(ps_f32(t, {}, {.worker_timeout = 1s}), gc::error);
  });
}

// One worker: the server's values after step k are known exactly (the reference below
// runs sgd's own arithmetic), and the worker's pulled values lie within half a level of
// 8-bit scalar quantization of the delta it was sent.
TEST(ParameterServer, QuantizedPullsWithinTheCodecBound) {
  using ps_t = gc::parameter_server<gc::identity_codec, gc::local_transport, gc::sgd,
                                    gc::scalar_quant_codec>;
  const std::size_t n = 1000, block = 256;
  gc::local_world world(2, 10s);
  world.run([&](gc::local_transport& t) {
    ps_t ps(t, {}, gc::scalar_quant_codec({.bits = 8, .block = 256}), {}, gc::sgd{{.lr = 0.1f}});
    std::vector<float> w(n);
    for (std::size_t i = 0; i < n; ++i) w[i] = std::cos(0.01f * static_cast<float>(i));
    if (ps.is_server()) {
      ps.serve(w);
      return;
    }
    std::vector<float> ref = w, prev = w, g(n);
    const float lr = 0.1f, wd = 0.0f;
    std::size_t bad = 0;
    for (int step = 0; step < 40; ++step) {
      for (std::size_t i = 0; i < n; ++i)
        g[i] = std::sin(0.37f * static_cast<float>(i) + static_cast<float>(step)) *
               static_cast<float>(1 + i % 7);
      ps.step(w, g);
      for (std::size_t i = 0; i < n; ++i) ref[i] -= lr * (g[i] + wd * ref[i]);
      if (step == 0) {
        EXPECT_EQ(w, ref) << "the first pull carries the values";
      } else {
        for (std::size_t b = 0; b < n; b += block) {
          const std::size_t e = std::min(n, b + block);
          float scale = 0.0f;
          for (std::size_t i = b; i < e; ++i) scale = std::max(scale, std::abs(ref[i] - prev[i]));
          const float half = gc::scalar_quant_step(scale, 8) / 2;
          for (std::size_t i = b; i < e; ++i) {
            const float tol = half + 4 * std::numeric_limits<float>::epsilon() * std::abs(ref[i]);
            if (!(std::abs(w[i] - ref[i]) <= tol) && bad++ < 5)
              ADD_FAILURE() << "step " << step << ", element " << i << ": pulled " << w[i]
                            << ", server " << ref[i] << ", bound " << tol;
          }
        }
      }
      prev = w;
    }
    EXPECT_EQ(bad, 0u);
  });
}

// Several workers, 4-bit pulls: every worker's parameters are the server's public copy of
// them, bit for bit (both ends add the same payloads to the same values).
TEST(ParameterServer, WorkerHoldsThePublicCopy) {
  const std::size_t n = 700;
  const int workers = 3;
  using ps_t = gc::parameter_server<ef_quant, gc::local_transport>;
  std::vector<std::vector<float>> held(workers), copies(workers);
  std::vector<float> server;
  gc::local_world world(1 + workers, 10s);
  world.run([&](gc::local_transport& t) {
    ps_t ps(t, ef_quant(gc::scalar_quant_codec({.bits = 4})), {}, gc::sgd{{.lr = 0.05f}});
    std::vector<float> w = initial(n), g(n);
    if (ps.is_server()) {
      ps.serve(w);
      for (int k = 0; k < workers; ++k) {
        const auto c = ps.public_copy(k + 1);
        copies[static_cast<std::size_t>(k)].assign(c.begin(), c.end());
      }
      server = w;
      return;
    }
    for (int step = 0; step < 25; ++step) {
      jitter(t.rank(), step);
      for (std::size_t i = 0; i < n; ++i)
        g[i] = std::sin(0.1f * static_cast<float>(i * static_cast<std::size_t>(t.rank())) +
                        static_cast<float>(step));
      ps.step(w, g);
    }
    held[static_cast<std::size_t>(t.rank() - 1)] = w;
  });
  for (int k = 0; k < workers; ++k) {
    ASSERT_EQ(held[static_cast<std::size_t>(k)].size(), n);
    EXPECT_EQ(held[static_cast<std::size_t>(k)], copies[static_cast<std::size_t>(k)])
        << "worker " << k + 1;
  }
}

// Pushes with error feedback: what the server applied is Σ g minus what the workers still
// owe (their residuals), up to float rounding.
TEST(ParameterServer, ErrorFeedbackPushesOweOnlyTheResidual) {
  const std::size_t n = 300;
  const int workers = 2;
  using ps_t = gc::parameter_server<ef_quant, gc::local_transport>;
  std::vector<double> owed(n, 0.0), pushed(n, 0.0);
  std::vector<float> server;
  std::mutex mu;
  gc::local_world world(1 + workers, 10s);
  world.run([&](gc::local_transport& t) {
    ps_t ps(t, ef_quant(gc::scalar_quant_codec({.bits = 2})), {.pull = gc::pull_encoding::f32},
            gc::sgd{{.lr = 1.0f}});
    std::vector<float> w(n, 0.0f), g(n);
    if (ps.is_server()) {
      ps.serve(w);
      server = w;
      return;
    }
    for (int step = 0; step < 30; ++step) {
      for (std::size_t i = 0; i < n; ++i)
        g[i] = std::cos(0.3f * static_cast<float>(i) + static_cast<float>(step * t.rank()));
      ps.step(w, g);
      std::lock_guard lk(mu);
      for (std::size_t i = 0; i < n; ++i) pushed[i] += g[i];
    }
    std::lock_guard lk(mu);
    const auto e = ps.push_codec(0).residual();
    for (std::size_t i = 0; i < n; ++i) owed[i] += e[i];
  });
  for (std::size_t i = 0; i < n; ++i)
    EXPECT_NEAR(-server[i], pushed[i] - owed[i], 1e-3) << "element " << i;
}

// A checkpoint taken mid-run and restored in a new world continues bit for bit: Adam's
// state, the push residuals and the pull's public copies all travel.
TEST(ParameterServer, CheckpointRestoreContinuesIdentically) {
  const std::size_t n = 257;
  using ps_t = gc::parameter_server<ef_quant, gc::local_transport, gc::adam>;
  const ef_quant codec(gc::scalar_quant_codec({.bits = 4, .block = 64}));
  auto grad = [](const std::vector<float>& w, std::uint64_t clock, std::vector<float>& g) {
    for (std::size_t i = 0; i < w.size(); ++i)
      g[i] = w[i] - 0.5f + 0.1f * std::sin(static_cast<float>(clock + i));
  };
  const gc::adam adam({.lr = 0.02f});
  const int half = 10, steps = 20;
  std::vector<std::byte> server_ckpt, worker_ckpt;
  std::vector<float> worker_at_ckpt, final_server_a, final_worker_a, final_server_b, final_worker_b;
  {
    gc::local_world world(2, 10s);
    world.run([&](gc::local_transport& t) {
      ps_t ps(t, codec, {}, adam);
      std::vector<float> w = initial(n), g(n);
      if (ps.is_server()) {
        ps.serve(w, [&] { return ps.version() >= static_cast<std::uint64_t>(half); });
        server_ckpt.resize(ps.state_bytes());
        server_ckpt.resize(ps.save_state(server_ckpt));
        ps.serve(w);
        final_server_a = w;
        return;
      }
      for (int step = 0; step < steps; ++step) {
        if (step == half) {
          worker_ckpt.resize(ps.state_bytes());
          worker_ckpt.resize(ps.save_state(worker_ckpt));
          worker_at_ckpt = w;
        }
        grad(w, ps.clock_count(), g);
        ps.step(w, g);
      }
      final_worker_a = w;
    });
  }
  {
    gc::local_world world(2, 10s);
    world.run([&](gc::local_transport& t) {
      ps_t ps(t, codec, {}, adam);
      std::vector<float> w(n), g(n);
      if (ps.is_server()) {
        ps.load_state(server_ckpt);
        EXPECT_EQ(ps.version(), static_cast<std::uint64_t>(half));
        ps.serve(w);
        final_server_b = w;
        return;
      }
      ps.load_state(worker_ckpt);
      EXPECT_EQ(ps.clock_count(), static_cast<std::uint64_t>(half));
      w = worker_at_ckpt;
      for (int step = half; step < steps; ++step) {
        grad(w, ps.clock_count(), g);
        ps.step(w, g);
      }
      final_worker_b = w;
    });
  }
  ASSERT_EQ(final_server_a.size(), n);
  EXPECT_EQ(final_server_a, final_server_b);
  EXPECT_EQ(final_worker_a, final_worker_b);
  EXPECT_NE(final_server_a, initial(n));
  // A state of the other role, or garbage, is refused. (The worker's destructor says
  // goodbye to a server that does not serve: it gives up after the short timeout.)
  gc::local_world world(2, 300ms);
  world.run([&](gc::local_transport& t) {
    ps_t ps(t, codec, {}, adam);
    const auto& wrong = ps.is_server() ? worker_ckpt : server_ckpt;
    EXPECT_THROW(ps.load_state(wrong), gc::decode_error);
    std::vector<std::byte> cut(wrong.begin(), wrong.begin() + 30);
    EXPECT_THROW(ps.load_state(cut), gc::decode_error);
  });
}

// A restored worker that repeats a clock the server applied gets it acknowledged without a
// second application.
TEST(ParameterServer, RepeatedClockIsNotAppliedTwice) {
  const std::size_t n = 20;
  std::vector<std::byte> worker_ckpt;
  std::uint64_t version = 0;
  std::vector<float> server;
  gc::local_world world(2, 5s);
  world.run([&](gc::local_transport& t) {
    ps_f32 ps(t, {}, {}, gc::sgd{{.lr = 1.0f}});
    std::vector<float> w(n, 0.0f), g(n, 1.0f);
    if (ps.is_server()) {
      ps.serve(w);
      version = ps.version();
      server = w;
      return;
    }
    ps.step(w, g);
    worker_ckpt.resize(ps.state_bytes());
    worker_ckpt.resize(ps.save_state(worker_ckpt));
    ps.step(w, g);
    ps.step(w, g);
    ps.load_state(worker_ckpt);  // back to clock 1: clocks 1 and 2 again
    ps.step(w, g);
    ps.step(w, g);
    EXPECT_EQ(w, std::vector<float>(n, -3.0f));
    ps.step(w, g);  // clock 3: new
  });
  EXPECT_EQ(version, 4u);
  EXPECT_EQ(server, std::vector<float>(n, -4.0f));
}

}  // namespace

// ps_server_lr: with staleness 0 and plain SGD, a round of N workers' pushes at
// ps_server_lr(lr, N) is the all-reduce's step w ← w − lr · mean(g). Worker k's loss is the
// quadratic ½ a_k ‖w − c_k‖² (gradient a_k (w − c_k)); after 12 rounds, far from the
// minimum, the parameters depend on the rate: at lr (N times too long) or lr / N² they miss
// the reference by far more than the tolerance.
TEST(ParameterServer, ServerRateMakesARoundTheAllReduceStep) {
  const std::size_t n = 16;
  const int workers = 4, rounds = 12;
  const float lr = 0.2f;
  auto a = [](int k) { return 0.5f + 0.25f * static_cast<float>(k); };
  auto c = [](int k, std::size_t i) {
    return static_cast<float>((static_cast<int>(i) * 7 + k * 3) % 11) - 5.0f;
  };
  auto grad = [&](int k, const std::vector<float>& w, std::vector<float>& g) {
    for (std::size_t i = 0; i < n; ++i) g[i] = a(k) * (w[i] - c(k, i));
  };
  // The all-reduce's rounds, in double.
  std::vector<double> ref(n, 1.0);
  for (int r = 0; r < rounds; ++r) {
    std::vector<double> mean(n, 0.0);
    for (int k = 0; k < workers; ++k)
      for (std::size_t i = 0; i < n; ++i) mean[i] += a(k) * (ref[i] - c(k, i)) / workers;
    for (std::size_t i = 0; i < n; ++i) ref[i] -= lr * mean[i];
  }
  auto run = [&](float server_lr) {
    std::vector<float> out(n);
    gc::local_world world(1 + workers, 10s);
    world.run([&](gc::local_transport& t) {
      ps_f32 ps(t, {}, {.staleness = 0, .pull = gc::pull_encoding::f32},
                gc::sgd{{.lr = server_lr}});
      std::vector<float> w(n, 1.0f), g(n);
      if (ps.is_server()) {
        ps.serve(w);
        out = w;
        return;
      }
      for (int r = 0; r < rounds; ++r) {
        grad(t.rank() - 1, w, g);
        ps.step(w, g);
      }
    });
    double err = 0.0;
    for (std::size_t i = 0; i < n; ++i) err = std::max(err, std::abs(out[i] - ref[i]));
    return err;
  };
  EXPECT_LT(run(gc::ps_server_lr(lr, workers)), 1e-4);
  // The test can tell a wrong rule: the plain rate and lr / N² land far from the reference.
  EXPECT_GT(run(lr), 0.1);
  EXPECT_GT(run(lr / (workers * workers)), 0.1);
}

TEST(ParameterServer, ServerRateRefusesBadArguments) {
  EXPECT_FLOAT_EQ(gc::ps_server_lr(0.02f, 4), 0.005f);
  EXPECT_FLOAT_EQ(gc::ps_server_lr(0.02f, 1), 0.02f);
  for (int workers : {0, -3}) {
    try {
      (void)gc::ps_server_lr(0.02f, workers);
      ADD_FAILURE() << workers << " workers accepted";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument) << workers;
    }
  }
  for (float lr : {0.0f, -0.1f, std::numeric_limits<float>::quiet_NaN(),
                   std::numeric_limits<float>::infinity()}) {
    try {
      (void)gc::ps_server_lr(lr, 4);
      ADD_FAILURE() << "lr " << lr << " accepted";
    } catch (const gc::error& e) {
      EXPECT_EQ(e.code(), gc::errc::invalid_argument) << lr;
    }
  }
}

// Top-k pushes through DGC's memory (the momentum on the worker, masked where sent; plain
// SGD on the server at ps_server_lr) with top-k pulls at workers × the push ratio, as the
// example runs top-k: on the quadratic Σ_k ½ ‖w − c_k‖² the server's parameters approach
// the minimum (the mean of the c_k) and every worker holds its public copy bit for bit.
// Measured without the jitter: 0.03 of the starting distance after 200 steps at lr 0.005,
// 0.10 at 0.02 (each worker's own c_k keeps its memory pushing against the others': a
// floor that the rate sets); pulls that were never applied would push w away instead.
TEST(ParameterServer, DgcTopkPushesAndSparsePullsTrainAQuadratic) {
  const std::size_t n = 1000;
  const int workers = 3, steps = 200;
  using dgc_topk = gc::dgc_memory<gc::topk_codec>;
  using ps_t = gc::parameter_server<dgc_topk, gc::local_transport, gc::sgd, gc::topk_codec>;
  auto c = [](int k, std::size_t i) {
    return std::sin(0.37f * static_cast<float>(i) + static_cast<float>(k));
  };
  auto distance = [&](const std::vector<float>& w) {
    double d = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double mean = 0.0;
      for (int k = 0; k < workers; ++k) mean += c(k, i) / workers;
      d += (w[i] - mean) * (w[i] - mean);
    }
    return std::sqrt(d);
  };
  std::vector<std::vector<float>> held(workers), copies(workers);
  std::vector<float> server;
  gc::local_world world(1 + workers, 10s);
  world.run([&](gc::local_transport& t) {
    ps_t ps(t, dgc_topk(gc::topk_codec({.ratio = 0.05}), {.momentum = 0.9f}),
            gc::topk_codec({.ratio = 0.05 * workers}), {},
            gc::sgd{{.lr = gc::ps_server_lr(0.005f, workers)}});
    std::vector<float> w(n, 2.0f), g(n);
    if (ps.is_server()) {
      ps.serve(w);
      for (int k = 0; k < workers; ++k) {
        const auto p = ps.public_copy(k + 1);
        copies[static_cast<std::size_t>(k)].assign(p.begin(), p.end());
      }
      server = w;
      return;
    }
    const int k = t.rank() - 1;
    for (int step = 0; step < steps; ++step) {
      jitter(t.rank(), step);
      for (std::size_t i = 0; i < n; ++i) g[i] = w[i] - c(k, i);
      ps.step(w, g);
    }
    held[static_cast<std::size_t>(k)] = w;
  });
  const double start = distance(std::vector<float>(n, 2.0f)), end = distance(server);
  EXPECT_LT(end, 0.3 * start) << "from " << start;
  for (int k = 0; k < workers; ++k)
    EXPECT_EQ(held[static_cast<std::size_t>(k)], copies[static_cast<std::size_t>(k)])
        << "worker " << k + 1;
}

// The server's momentum once per round of pushes (round_momentum_sgd with the workers'
// count): synchronous workers pushing their gradients at ps_server_lr move the parameters
// as the all-reduce's heavy ball on the mean gradient does, step for step, to rounding.
TEST(ParameterServer, RoundMomentumOnTheServerIsTheAllReducesHeavyBall) {
  const std::size_t n = 40;
  const int workers = 3, steps = 25;
  const float lr = 0.1f, mu = 0.9f;
  // Worker k's gradient at w: w − target_k, a quadratic's, so that the run depends on
  // where every step lands.
  auto grad = [](int k, const std::vector<float>& w, std::vector<float>& g) {
    for (std::size_t i = 0; i < w.size(); ++i)
      g[i] = w[i] - std::sin(0.3f * static_cast<float>(i) + static_cast<float>(k));
  };
  std::vector<float> server;
  gc::local_world world(1 + workers, 10s);
  world.run([&](gc::local_transport& t) {
    gc::parameter_server<gc::identity_codec, gc::local_transport, gc::round_momentum_sgd> ps(
        t, {}, {.staleness = 0, .pull = gc::pull_encoding::f32},
        gc::round_momentum_sgd({.lr = gc::ps_server_lr(lr, workers),
                                .momentum = mu,
                                .updates_per_round = static_cast<std::uint32_t>(workers)}));
    std::vector<float> w = initial(n), g(n);
    if (ps.is_server()) {
      ps.serve(w);
      server = w;
      return;
    }
    for (int step = 0; step < steps; ++step) {
      jitter(t.rank(), step);
      grad(t.rank(), w, g);
      ps.step(w, g);
    }
  });
  // The all-reduce's step: v ← μ v + mean(g), w ← w − lr v.
  std::vector<float> w = initial(n), v(n, 0.0f), g(n), mean(n);
  for (int step = 0; step < steps; ++step) {
    std::fill(mean.begin(), mean.end(), 0.0f);
    for (int k = 1; k <= workers; ++k) {
      grad(k, w, g);
      for (std::size_t i = 0; i < n; ++i) mean[i] += g[i] / workers;
    }
    for (std::size_t i = 0; i < n; ++i) {
      v[i] = mu * v[i] + mean[i];
      w[i] -= lr * v[i];
    }
  }
  ASSERT_EQ(server.size(), n);
  for (std::size_t i = 0; i < n; ++i) EXPECT_NEAR(server[i], w[i], 1e-4) << "element " << i;
  // Not plain SGD's: without the momentum the run ends elsewhere.
  std::vector<float> plain = initial(n);
  for (int step = 0; step < steps; ++step) {
    std::fill(mean.begin(), mean.end(), 0.0f);
    for (int k = 1; k <= workers; ++k) {
      grad(k, plain, g);
      for (std::size_t i = 0; i < n; ++i) mean[i] += g[i] / workers;
    }
    for (std::size_t i = 0; i < n; ++i) plain[i] -= lr * mean[i];
  }
  double apart = 0.0;
  for (std::size_t i = 0; i < n; ++i) apart = std::max(apart, std::abs(double{plain[i]} - w[i]));
  EXPECT_GT(apart, 1e-2);
}

TEST(ParameterServer, RoundMomentumStateAndSettings) {
  EXPECT_THROW(gc::round_momentum_sgd({.updates_per_round = 0}), gc::error);
  EXPECT_THROW(gc::round_momentum_sgd({.momentum = 1.0f}), gc::error);
  gc::round_momentum_sgd a({.lr = 0.05f, .momentum = 0.9f, .updates_per_round = 3});
  std::vector<float> w(17, 1.0f), g(17);
  for (int u = 0; u < 7; ++u) {
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(static_cast<float>(i + u));
    a.apply(gc::host_view<float>(w), gc::host_view<const float>(g));
  }
  std::vector<std::byte> st(a.state_bytes());
  st.resize(a.save_state(st));
  gc::round_momentum_sgd b({.lr = 0.05f, .momentum = 0.9f, .updates_per_round = 3});
  b.load_state(st);
  EXPECT_EQ(b.updates(), 7u);
  std::vector<float> wa = w, wb = w;
  for (int u = 7; u < 12; ++u) {
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::cos(static_cast<float>(i + u));
    a.apply(gc::host_view<float>(wa), gc::host_view<const float>(g));
    b.apply(gc::host_view<float>(wb), gc::host_view<const float>(g));
  }
  EXPECT_EQ(wa, wb);
  // Another optimizer's state, and a truncated one, are refused and change nothing.
  gc::sgd s({.lr = 0.1f, .momentum = 0.9f});
  s.apply(gc::host_view<float>(w), gc::host_view<const float>(g));
  std::vector<std::byte> other(s.state_bytes());
  other.resize(s.save_state(other));
  EXPECT_THROW(b.load_state(other), gc::decode_error);
  EXPECT_THROW(b.load_state(std::span<const std::byte>(st).first(st.size() - 1)), gc::decode_error);
  EXPECT_EQ(b.updates(), 12u);
  // A call on another size is an error, not a silent reset.
  std::vector<float> w2(5), g2(5);
  EXPECT_THROW(b.apply(gc::host_view<float>(w2), gc::host_view<const float>(g2)), gc::error);
}

// per_tensor<C>: a codec applied tensor by tensor over a flat buffer — each tensor its own
// k and error feedback, small tensors as f32, a payload whose framing and layout a decoder
// checks (decode_error naming the defect, acc untouched), an encode that changes nothing
// when it throws, state round trips, and the parameter server and gossip running on it.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/per_tensor.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/randomk.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/topk.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/comm/parameter_server.hpp>
#include <gradcomm/comm/topology.hpp>
#include <gradcomm/transport/local.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

namespace gc = gradcomm;
using namespace std::chrono_literals;

namespace {

using topk_ef = gc::error_feedback<gc::topk_codec>;
using pt_topk = gc::per_tensor<gc::topk_codec>;
using pt_topk_ef = gc::per_tensor<topk_ef>;

static_assert(gc::Codec<pt_topk> && gc::Codec<pt_topk_ef> &&
              gc::Codec<gc::per_tensor<gc::scalar_quant_codec>>);
static_assert(!pt_topk::traits.stateful && pt_topk_ef::traits.stateful);
static_assert(gc::StochasticCodec<gc::per_tensor<gc::randomk_codec>>);
// The parameter server pulls with per_tensor of the inner codec (the server's public
// copies are the feedback).
static_assert(
    std::same_as<decltype(gc::pull_codec_of(std::declval<const pt_topk_ef&>())), pt_topk>);

// Three tensors: a large one with large values, a small one, and one with values a
// thousand times smaller than the first's.
const std::vector<std::size_t> layout = {1000, 10, 200};

std::vector<float> values(int round = 0) {
  std::vector<float> v;
  for (std::size_t i = 0; i < 1000; ++i)
    v.push_back(10.0f * std::sin(0.37f * static_cast<float>(i) + 0.3f * static_cast<float>(round)));
  for (std::size_t i = 0; i < 10; ++i) v.push_back(0.5f + static_cast<float>(i));
  for (std::size_t i = 0; i < 200; ++i)
    v.push_back(0.01f * std::cos(0.11f * static_cast<float>(i) + static_cast<float>(round)));
  return v;
}

std::vector<std::byte> encode(auto& c, const std::vector<float>& v) {
  std::vector<std::byte> wire(c.max_encoded_bytes(v.size()));
  wire.resize(c.encode(gc::host_view<const float>(v), wire));
  return wire;
}

std::vector<float> decode(const auto& c, const std::vector<std::byte>& wire, std::size_t n) {
  std::vector<float> out(n, -7.0f);
  c.decode(wire, gc::host_view<float>(out));
  return out;
}

TEST(PerTensor, EachTensorSendsItsOwnShareAndSmallOnesGoAsF32) {
  const gc::topk_codec topk({.ratio = 0.1});
  pt_topk c(topk, layout, {.small_tensor_elems = 50});
  EXPECT_EQ(c.total(), 1210u);
  EXPECT_FALSE(c.small(0));
  EXPECT_TRUE(c.small(1));
  EXPECT_FALSE(c.small(2));
  const std::vector<float> v = values();
  const auto wire = encode(c, v);
  const std::vector<float> got = decode(c, wire, v.size());

  // What top-k 10 % gives each large tensor alone, and the small one exactly.
  std::size_t at = 0, bytes = gc::wire_header_bytes + gc::per_tensor_params_bytes;
  for (std::size_t t = 0; t < layout.size(); ++t) {
    const std::vector<float> part(v.begin() + static_cast<std::ptrdiff_t>(at),
                                  v.begin() + static_cast<std::ptrdiff_t>(at + layout[t]));
    std::vector<float> want = part;
    if (t != 1) {
      gc::topk_codec alone = topk;
      const auto w = encode(alone, part);
      want = decode(alone, w, part.size());
      bytes += 8 + w.size();
    } else {
      bytes += 8 + gc::identity_codec{}.max_encoded_bytes(part.size());
    }
    std::size_t kept = 0;
    for (std::size_t i = 0; i < part.size(); ++i) {
      EXPECT_EQ(got[at + i], want[i]) << "tensor " << t << ", element " << i;
      kept += got[at + i] != 0.0f;
    }
    const std::size_t want_kept[] = {100, 10, 20};  // a flat top-k keeps none of tensor 2's
    EXPECT_EQ(kept, want_kept[t]) << "tensor " << t;
    at += layout[t];
  }
  EXPECT_EQ(wire.size(), bytes);
  EXPECT_LE(wire.size(), c.max_encoded_bytes(v.size()));

  // The flat top-k over the same values spends all 121 on the large tensor.
  gc::topk_codec flat({.ratio = 0.1});
  const auto fw = encode(flat, v);
  const std::vector<float> fg = decode(flat, fw, v.size());
  for (std::size_t i = 1010; i < v.size(); ++i) EXPECT_EQ(fg[i], 0.0f) << i;

  // decode_add adds exactly what decode gives.
  std::vector<float> acc(v.size(), 1.0f);
  c.decode_add(wire, gc::host_view<float>(acc));
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(acc[i], 1.0f + got[i]) << i;
}

TEST(PerTensor, ErrorFeedbackIsKeptPerTensor) {
  pt_topk_ef c(topk_ef(gc::topk_codec({.ratio = 0.05})), layout, {.small_tensor_elems = 50});
  // Over rounds, what was sent plus what is owed is what went in, tensor by tensor.
  std::vector<double> in(c.total(), 0.0), sent(c.total(), 0.0);
  for (int round = 0; round < 6; ++round) {
    const std::vector<float> v = values(round);
    const auto wire = encode(c, v);
    const std::vector<float> got = decode(c, wire, v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      in[i] += v[i];
      sent[i] += got[i];
    }
  }
  std::size_t at = 0;
  for (std::size_t t = 0; t < layout.size(); ++t) {
    if (t == 1) {
      EXPECT_EQ(c.codec(t).residual().size(), 0u) << "a small tensor never uses its codec";
    } else {
      const auto e = c.codec(t).residual();
      ASSERT_EQ(e.size(), layout[t]);
      for (std::size_t i = 0; i < layout[t]; ++i)
        EXPECT_NEAR(sent[at + i] + e[i], in[at + i], 1e-3) << "tensor " << t << ", " << i;
    }
    at += layout[t];
  }
  EXPECT_GT(c.residual_norm(), 0.0);
}

TEST(PerTensor, MalformedPayloadsAreNamedAndLeaveAccUntouched) {
  pt_topk c(gc::topk_codec({.ratio = 0.1}), layout, {.small_tensor_elems = 50});
  const std::vector<float> v = values();
  const auto wire = encode(c, v);
  auto expect_refused = [&](const pt_topk& d, const std::vector<std::byte>& bytes,
                            const std::string& says, const std::string& what) {
    std::vector<float> acc(d.total(), 3.0f);
    try {
      d.decode_add(bytes, gc::host_view<float>(acc));
      ADD_FAILURE() << what << ": accepted";
    } catch (const gc::decode_error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << what << ": " << e.what();
    }
    for (float a : acc) ASSERT_EQ(a, 3.0f) << what << ": acc changed";
    std::vector<float> out(d.total(), 3.0f);
    EXPECT_THROW(d.decode(bytes, gc::host_view<float>(out)), gc::decode_error) << what;
    for (float a : out) ASSERT_EQ(a, 3.0f) << what << ": decode's output changed";
  };
  // Every truncation.
  for (std::size_t len = 0; len < wire.size(); ++len)
    expect_refused(
        c, std::vector<std::byte>(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(len)),
        "", "truncated to " + std::to_string(len));
  // A byte too many.
  auto longer = wire;
  longer.push_back(std::byte{0});
  expect_refused(c, longer, "", "one trailing byte");
  // Another layout decoding it: sizes, count, threshold, inner codec.
  expect_refused(
      pt_topk(gc::topk_codec({.ratio = 0.1}), {1000, 10, 100, 100}, {.small_tensor_elems = 50}),
      wire, "4", "four tensors");
  expect_refused(
      pt_topk(gc::topk_codec({.ratio = 0.1}), {1000, 110, 100}, {.small_tensor_elems = 50}), wire,
      "tensor 1", "other sizes");
  expect_refused(pt_topk(gc::topk_codec({.ratio = 0.1}), layout, {.small_tensor_elems = 5}), wire,
                 "threshold", "another threshold");
  {
    gc::per_tensor<gc::sign_codec> s(gc::sign_codec{}, layout);
    std::vector<float> acc(s.total(), 3.0f);
    EXPECT_THROW(s.decode_add(wire, gc::host_view<float>(acc)), gc::decode_error);
    for (float a : acc) ASSERT_EQ(a, 3.0f);
  }
  // The last tensor's payload swapped for a valid top-k payload of 199 values (the frame
  // stays consistent): the first two tensors decode into the scratch, acc stays untouched.
  {
    std::size_t at = gc::wire_header_bytes + gc::per_tensor_params_bytes;
    for (int k = 0; k < 2; ++k) {
      std::uint64_t len = 0;
      std::memcpy(&len, wire.data() + at, 8);
      at += 8 + len;
    }
    gc::topk_codec other({.ratio = 0.1});
    const auto part = encode(other, std::vector<float>(199, 1.0f));
    std::vector<std::byte> bad(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(at));
    const std::uint64_t len = part.size();
    bad.resize(at + 8);
    std::memcpy(bad.data() + at, &len, 8);
    bad.insert(bad.end(), part.begin(), part.end());
    const std::uint64_t body = bad.size() - gc::wire_header_bytes - gc::per_tensor_params_bytes;
    std::memcpy(bad.data() + 16, &body, 8);  // the header's body bytes
    expect_refused(c, bad, "tensor 2", "tensor 2 holds 199 values");
  }
  // An output of another size.
  std::vector<float> out(c.total() + 1);
  EXPECT_THROW(c.decode(wire, gc::host_view<float>(out)), gc::decode_error);
}

TEST(PerTensor, AnEncodeThatThrowsChangesNothing) {
  pt_topk_ef c(topk_ef(gc::topk_codec({.ratio = 0.05})), layout);
  pt_topk_ef twin = c;
  const std::vector<float> v = values();
  encode(c, v);
  encode(twin, v);
  // A NaN in the last tensor: refused before the first tensor's feedback moves.
  std::vector<float> nan = values(1);
  nan[1205] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::byte> wire(c.max_encoded_bytes(nan.size()));
  try {
    c.encode(gc::host_view<const float>(nan), wire);
    ADD_FAILURE() << "a NaN was encoded";
  } catch (const gc::error& e) {
    EXPECT_EQ(e.code(), make_error_code(gc::errc::invalid_argument));
    EXPECT_NE(std::string(e.what()).find("index 1205"), std::string::npos) << e.what();
  }
  // Too small a buffer, and the wrong size.
  std::vector<std::byte> small(wire.size() - 1);
  EXPECT_THROW(c.encode(gc::host_view<const float>(v), small), gc::error);
  const std::vector<float> shorter(v.begin(), v.end() - 1);
  EXPECT_THROW(c.encode(gc::host_view<const float>(shorter), wire), gc::error);
  // The states are the twin's: the next encode gives the same bytes.
  const std::vector<float> next = values(2);
  EXPECT_EQ(encode(c, next), encode(twin, next));
  // Layouts refused at construction.
  EXPECT_THROW(pt_topk(gc::topk_codec({.ratio = 0.1}), {}), gc::error);
  EXPECT_THROW(pt_topk(gc::topk_codec({.ratio = 0.1}), {10, 0, 3}), gc::error);
}

TEST(PerTensor, StateRoundTripsAndBadStateIsRefused) {
  pt_topk_ef c(topk_ef(gc::topk_codec({.ratio = 0.05})), layout, {.small_tensor_elems = 50});
  for (int r = 0; r < 3; ++r) encode(c, values(r));
  std::vector<std::byte> st(c.state_bytes());
  st.resize(c.save_state(st));
  pt_topk_ef d(topk_ef(gc::topk_codec({.ratio = 0.05})), layout, {.small_tensor_elems = 50});
  d.load_state(st);
  EXPECT_EQ(encode(c, values(3)), encode(d, values(3)));

  pt_topk_ef fresh(topk_ef(gc::topk_codec({.ratio = 0.05})), layout, {.small_tensor_elems = 50});
  const pt_topk_ef before = fresh;
  for (std::size_t len = 0; len < st.size(); len += 7) {
    EXPECT_THROW(fresh.load_state(std::span<const std::byte>(st).first(len)), gc::decode_error)
        << len;
  }
  auto other = st;
  other[8] = std::byte{2};  // two tensors
  EXPECT_THROW(fresh.load_state(other), gc::decode_error);
  pt_topk_ef again = before;
  EXPECT_EQ(encode(fresh, values(3)), encode(again, values(3)));
}

TEST(PerTensor, StochasticTensorsDrawTheirOwnStreams) {
  gc::per_tensor<gc::randomk_codec> c(gc::randomk_codec({.ratio = 0.1}), {100, 100});
  c.set_stream({.seed = 5, .step = 1});
  EXPECT_EQ(c.stream().seed, 5u);
  const std::vector<float> v(200, 1.0f);
  const std::vector<float> got = decode(c, encode(c, v), v.size());
  bool differ = false;
  for (std::size_t i = 0; i < 100; ++i) differ |= (got[i] != 0.0f) != (got[100 + i] != 0.0f);
  EXPECT_TRUE(differ) << "both tensors kept the same indices";
}

// The parameter server with per-tensor top-k pushes (error feedback) and pulls: the server
// applied Σ g minus what the workers still owe, and each worker holds its public copy.
TEST(PerTensor, ParameterServerAppliesWhatWasPushed) {
  const int workers = 2;
  using ps_t = gc::parameter_server<pt_topk_ef, gc::local_transport>;
  const std::size_t n = 1210;
  std::vector<double> owed(n, 0.0), pushed(n, 0.0);
  std::vector<float> server;
  std::mutex mu;
  gc::local_world world(1 + workers, 10s);
  world.run([&](gc::local_transport& t) {
    ps_t ps(
        t, pt_topk_ef(topk_ef(gc::topk_codec({.ratio = 0.05})), layout, {.small_tensor_elems = 50}),
        {.pull = gc::pull_encoding::f32}, gc::sgd{{.lr = 1.0f}});
    std::vector<float> w(n, 0.0f);
    if (ps.is_server()) {
      ps.serve(w);
      server = w;
      return;
    }
    for (int step = 0; step < 20; ++step) {
      std::vector<float> g = values(step * t.rank());
      ps.step(w, g);
      std::lock_guard lk(mu);
      for (std::size_t i = 0; i < n; ++i) pushed[i] += g[i];
    }
    std::lock_guard lk(mu);
    std::size_t at = 0;
    for (std::size_t k = 0; k < layout.size(); ++k) {
      const auto e = ps.push_codec(0).codec(k).residual();
      for (std::size_t i = 0; i < e.size(); ++i) owed[at + i] += e[i];
      at += layout[k];
    }
  });
  ASSERT_EQ(server.size(), n);
  for (std::size_t i = 0; i < n; ++i)
    EXPECT_NEAR(-server[i], pushed[i] - owed[i], 1e-2) << "element " << i;
}

// Gossip on a ring of 4 with per-tensor top-k: the replicas reach consensus on the mean.
TEST(PerTensor, GossipAveragesThroughIt) {
  const int ranks = 4;
  std::vector<std::vector<float>> end(ranks);
  gc::local_world world(ranks, 10s);
  world.run([&](gc::local_transport& t) {
    gc::gossip<pt_topk, gc::local_transport, gc::ring_topology> g(
        t, gc::ring_topology{},
        pt_topk(gc::topk_codec({.ratio = 0.2}), layout, {.small_tensor_elems = 50}), {},
        {.rule = gc::mixing_rule::averaging, .gamma = 0.3f, .seed = 11});
    std::vector<float> w = values(t.rank());
    for (int round = 0; round < 400; ++round) g.mix(w);
    EXPECT_TRUE(g.dropped().empty());
    end[static_cast<std::size_t>(t.rank())] = w;
  });
  std::vector<double> mean(end[0].size(), 0.0);
  for (int r = 0; r < ranks; ++r) {
    const std::vector<float> v = values(r);
    for (std::size_t i = 0; i < v.size(); ++i) mean[i] += v[i] / ranks;
  }
  for (int r = 0; r < ranks; ++r)
    for (std::size_t i = 0; i < mean.size(); ++i)
      ASSERT_NEAR(end[static_cast<std::size_t>(r)][i], mean[i], 1e-3)
          << "rank " << r << ", element " << i;
}

// The all-reduce with a bucket that is exactly the layout (one buffer): every rank ends
// with the mean of the ranks' per-tensor payloads.
TEST(PerTensor, AllReduceOfABucketThatIsTheLayout) {
  const int ranks = 3;
  std::vector<std::vector<float>> out(ranks);
  gc::local_world world(ranks, 10s);
  world.run([&](gc::local_transport& t) {
    const pt_topk proto(gc::topk_codec({.ratio = 0.1}), layout, {.small_tensor_elems = 50});
    gc::allreduce<pt_topk, gc::local_transport> comm(t, proto, {.overlap = false});
    std::vector<float> g = values(t.rank());
    comm.average(g);
    out[static_cast<std::size_t>(t.rank())] = g;
  });
  std::vector<float> want(out[0].size(), 0.0f);
  for (int r = 0; r < ranks; ++r) {
    pt_topk c(gc::topk_codec({.ratio = 0.1}), layout, {.small_tensor_elems = 50});
    const std::vector<float> v = values(r);
    const auto d = decode(c, encode(c, v), v.size());
    for (std::size_t i = 0; i < d.size(); ++i) want[i] += d[i];
  }
  for (int r = 0; r < ranks; ++r)
    for (std::size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(out[static_cast<std::size_t>(r)][i], want[i] / ranks, 1e-5)
          << "rank " << r << ", element " << i;
}

}  // namespace

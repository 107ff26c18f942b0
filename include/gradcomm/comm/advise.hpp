// gradcomm/comm/advise.hpp — the codec advisor: from the measured link, the codecs' measured
// speeds on this machine, the bucket sizes and the world size, it predicts the time of each
// bucket's all-reduce for every candidate codec (and the algorithm the all-reduce would run
// for it) and picks, per bucket, the fastest within the accuracy class the user allows.
//
//   std::vector<std::size_t> sizes{1 << 20, 1 << 20, 300000};  // values a bucket
//   auto a = gradcomm::advise(transport, sizes, gradcomm::accuracy_class::eight_bit);
//   if (transport.rank() == 0) for (auto& b : a.buckets) std::puts(b.why.c_str());
//   gradcomm::with_advised_codec(a.largest().codec, [&](auto codec) { train(codec); });
//
// The model (α-β; every term is per bucket of n f32 values over N ranks; α the latency of
// one message and β the seconds per byte of one rank's link while every rank sends, both
// measured by probe_link; e, d, a a codec's measured seconds per value to encode, decode
// and decode_add (measure_codec_speeds); P(m) the codec's payload bound for m values,
// max_encoded_bytes):
//   ring(B, s)   = 2(N−1)α + 2(N−1)/N·B·β + (N−1)/N·n·s       (a ring all-reduce of B bytes
//                                                               whose sum costs s a value)
//   native       f32: ring(4n, a_f32);  f16 / bf16 (where the transport sums them):
//                e·n + ring(2n, e + a) + d·n                   (the sum converts and rounds)
//   scatter–reduce–allgather (fixed-size codecs; c = the largest chunk, ar_chunk):
//                e·n + a·n + e·c + d·n + 2(N−1)(α + P(c)β)
//   all-gather   e·n + (N−1)(α + P(n)β) + N·a·n; dense instead where N·P(n) > 8n (the
//                all-reduce's break-even: e·n + d·n + ring(4n, a_f32))
//   sparse (top-k; codec.hpp T7): the all-reduce's own cost rule (allreduce_sparse.hpp,
//                ar_sparse_choose on N payloads of P(n)) picks all-gather, dense or the O(k)
//                reduce-scatter; O(k): e·n + d·n + 4(N−1)α + bytes·β, bytes by that rule
//   two-round (PowerSGD rank r): e·n + d·n + ring(4·p_floats, 0) + ring(4·q_floats, 0),
//                e and d its encode (P and Q) and decode (P·Qᵀ)
// Each rank's sums and decodes of its chunks are counted once (a rank works on its own
// chunk while the others work on theirs). The all-reduce overlaps a bucket's encoding
// with the previous bucket's communication; the model does not (a bucket's time alone),
// so a sum over buckets overestimates a call where encoding is a large part of it.
//
// The pick: the lowest predicted time among the candidates of the allowed class and the
// classes above it (lossless ⊂ 16-bit ⊂ 8-bit ⊂ any); f32 is always a candidate, so a
// codec predicted to lose to uncompressed is never picked. Then the trial (advise(t, ...)
// only, advise_options::trial_reps > 0, more than one rank): the allowed candidates
// predicted within trial_within × the pick's time, and f32, are run, for each distinct
// bucket size, through allreduce<C, T> on this transport (the buckets of that size in one
// call, overlapped where the transport allows it; one untimed call, then trial_reps timed
// ones on gradient-like data, each after a barrier; a candidate's time is the slowest
// rank's median, per bucket) and the fastest measured becomes the pick: the model narrows the
// field, the transport decides between codecs it cannot tell apart (on shared cores the model's
// error is larger than the gaps between sign, top-k and PowerSGD; benchmarks/results/advise.md).
// Candidates: none (f32), bf16, fp16, int8 and int4 (scalar quantization, blocks of 256, error
// feedback), sign (blocks of 256, error feedback), top-k 1 % (error feedback), and PowerSGD rank 4
// for `any` where Eigen is present (GRADCOMM_HAS_EIGEN).
#pragma once

#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/codec.hpp>
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/codec/topk.hpp>
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/comm/detail/allreduce_allgather.hpp>
#include <gradcomm/comm/detail/allreduce_common.hpp>
#include <gradcomm/comm/detail/allreduce_sparse.hpp>
#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>
#include <gradcomm/transport/transport.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// How much accuracy the user gives up for speed: each class allows its codecs and those
/// of the classes before it (lossless: f32 only; 16-bit: bf16, fp16; 8-bit: int8; any:
/// int4, sign, top-k, PowerSGD).
///
///   auto c = gradcomm::parse_accuracy_class("8bit");  // accuracy_class::eight_bit
enum class accuracy_class : unsigned char { lossless, sixteen_bit, eight_bit, any };

/// "lossless", "16bit", "8bit", "any".
///
///   std::puts(gradcomm::accuracy_class_name(gradcomm::accuracy_class::any).data());
constexpr std::string_view accuracy_class_name(accuracy_class c) noexcept {
  switch (c) {
    case accuracy_class::lossless: return "lossless";
    case accuracy_class::sixteen_bit: return "16bit";
    case accuracy_class::eight_bit: return "8bit";
    case accuracy_class::any: return "any";
  }
  return "?";
}

/// The class a name stands for; throws gradcomm::error (errc::invalid_argument) for
/// another name.
///
///   auto c = gradcomm::parse_accuracy_class(argv[1]);
inline accuracy_class parse_accuracy_class(std::string_view name) {
  for (auto c : {accuracy_class::lossless, accuracy_class::sixteen_bit, accuracy_class::eight_bit,
                 accuracy_class::any})
    if (name == accuracy_class_name(c)) return c;
  detail::throw_invalid_argument(
      "parse_accuracy_class",
      "unknown accuracy class '" + std::string(name) + "' (lossless, 16bit, 8bit, any)");
}

/// The advisor's candidate codecs (with_advised_codec builds each).
///
///   if (a.largest().codec == gradcomm::advised_codec::none) log("f32 wins here");
enum class advised_codec : unsigned char { none, bf16, fp16, int8, int4, sign, topk, powersgd };

/// "none", "bf16", "fp16", "int8", "int4", "sign", "topk", "powersgd".
///
///   std::string s(gradcomm::advised_codec_name(c));
constexpr std::string_view advised_codec_name(advised_codec c) noexcept {
  switch (c) {
    case advised_codec::none: return "none";
    case advised_codec::bf16: return "bf16";
    case advised_codec::fp16: return "fp16";
    case advised_codec::int8: return "int8";
    case advised_codec::int4: return "int4";
    case advised_codec::sign: return "sign";
    case advised_codec::topk: return "topk";
    case advised_codec::powersgd: return "powersgd";
  }
  return "?";
}

/// The accuracy class a candidate belongs to.
///
///   bool ok = gradcomm::advised_codec_class(c) <= gradcomm::accuracy_class::eight_bit;
constexpr accuracy_class advised_codec_class(advised_codec c) noexcept {
  switch (c) {
    case advised_codec::none: return accuracy_class::lossless;
    case advised_codec::bf16:
    case advised_codec::fp16: return accuracy_class::sixteen_bit;
    case advised_codec::int8: return accuracy_class::eight_bit;
    default: return accuracy_class::any;
  }
}

/// The candidates this build has, in order (PowerSGD only with Eigen).
///
///   for (auto c : gradcomm::advised_codecs()) std::puts(gradcomm::advised_codec_name(c).data());
inline std::span<const advised_codec> advised_codecs() noexcept {
  static constexpr advised_codec all[] = {
      advised_codec::none, advised_codec::bf16, advised_codec::fp16, advised_codec::int8,
      advised_codec::int4, advised_codec::sign, advised_codec::topk, advised_codec::powersgd};
  return std::span<const advised_codec>(all, GRADCOMM_HAS_EIGEN ? 8 : 7);
}

/// Calls f with the codec prototype a pick stands for (what allreduce<C, T> takes); `seed`
/// seeds PowerSGD's first Q. Throws gradcomm::error (errc::unsupported) for PowerSGD
/// without Eigen, invalid_argument for a value outside the enum.
///
///   gradcomm::with_advised_codec(pick, [&]<class C>(C codec) {
///     gradcomm::allreduce<C, gradcomm::local_transport> comm(t, std::move(codec));
///   });
template <class F>
decltype(auto) with_advised_codec(advised_codec c, F&& f, std::uint64_t seed = 0) {
  switch (c) {
    case advised_codec::none: return f(identity_codec{});
    case advised_codec::bf16: return f(bf16_codec{});
    case advised_codec::fp16: return f(f16_codec{});
    case advised_codec::int8:
      return f(error_feedback<scalar_quant_codec>(scalar_quant_codec({.bits = 8})));
    case advised_codec::int4:
      return f(error_feedback<scalar_quant_codec>(scalar_quant_codec({.bits = 4})));
    case advised_codec::sign: return f(error_feedback<sign_codec>(sign_codec(256)));
    case advised_codec::topk: return f(error_feedback<topk_codec>(topk_codec({.ratio = 0.01})));
    case advised_codec::powersgd:
#if GRADCOMM_HAS_EIGEN
      return f(powersgd_codec({.rank = 4, .seed = seed}));
#else
      (void)seed;
      throw error(make_error_code(errc::unsupported), "with_advised_codec", -1,
                  "PowerSGD needs Eigen (GRADCOMM_HAS_EIGEN)");
#endif
  }
  detail::throw_invalid_argument("with_advised_codec",
                                 "no candidate codec " + std::to_string(static_cast<int>(c)));
}

/// The link as the model sees it: α, the latency of one message, and β, the seconds per
/// byte of one rank's link while every rank sends (probe_link measures both).
///
///   gradcomm::link_model slow{.latency_s = 50e-6, .seconds_per_byte = 8.0 / 1e9};  // 1 Gbit/s
struct link_model {
  double latency_s = 0;
  double seconds_per_byte = 0;
  /// The bandwidth, in Gbit/s (0 for a link of infinite speed).
  double gbit_per_s() const noexcept {
    return seconds_per_byte > 0 ? 8.0 / seconds_per_byte * 1e-9 : 0.0;
  }
};

/// One codec's measured speed, in seconds per value, at `values` values a call.
///
///   gradcomm::codec_rate r{gradcomm::advised_codec::int8, 1 << 20, 1e-9, 1e-9, 1.5e-9};
struct codec_rate {
  advised_codec codec = advised_codec::none;
  std::size_t values = 0;
  double encode_s_per_value = 0;
  double decode_s_per_value = 0;
  double decode_add_s_per_value = 0;
};

/// The measured speeds of the candidates (measure_codec_speeds), or injected ones.
///
///   gradcomm::codec_speeds s{{{gradcomm::advised_codec::none, 0, 0, 0, 1e-10}}};
struct codec_speeds {
  std::vector<codec_rate> rates;
  /// The rate of codec c measured at the size nearest n (by ratio), or null.
  const codec_rate* find(advised_codec c, std::size_t n) const noexcept {
    const codec_rate* best = nullptr;
    double gap = std::numeric_limits<double>::infinity();
    for (const codec_rate& r : rates) {
      if (r.codec != c) continue;
      const double g = std::abs(std::log(static_cast<double>(std::max<std::size_t>(r.values, 1)) /
                                         static_cast<double>(std::max<std::size_t>(n, 1))));
      if (g < gap) {
        gap = g;
        best = &r;
      }
    }
    return best;
  }
};

/// What the model predicts for one candidate on one bucket.
struct candidate_prediction {
  advised_codec codec = advised_codec::none;
  detail::ar_algorithm algorithm = detail::ar_algorithm::native;
  double predicted_s = 0;  ///< compute_s + wire_s
  double compute_s = 0;    ///< encoding, decoding and summing
  double wire_s = 0;       ///< latency and bytes on the link
  double bytes_sent = 0;   ///< per rank, by the model
  bool allowed = false;    ///< within the accuracy class asked for
  /// The trial's time a bucket (the slowest rank's median call over the buckets of this
  /// size, divided by their number); 0 when the candidate was not tried.
  double measured_s = 0;
};

/// The advice for one bucket: its pick, the f32 baseline's prediction, every candidate's,
/// and one line saying why.
struct bucket_advice {
  std::size_t values = 0;
  advised_codec codec = advised_codec::none;
  detail::ar_algorithm algorithm = detail::ar_algorithm::native;
  double predicted_s = 0;
  double f32_s = 0;       ///< uncompressed (none, the native ring)
  double measured_s = 0;  ///< the pick's trial time (0: picked by the model alone)
  std::vector<candidate_prediction> candidates;
  /// "bucket 0 (4 MiB): int8 scatter_reduce_allgather 2.1 ms predicted vs f32 native 9.8 ms"
  std::string why;
};

/// What advise() returns: the same on every rank.
///
///   for (const auto& b : a.buckets) std::puts(b.why.c_str());
struct advice {
  accuracy_class accuracy = accuracy_class::eight_bit;
  int world_size = 1;
  link_model link;
  codec_speeds speeds;  ///< the measurements the model ran on (advise<T> again with another class)
  std::vector<bucket_advice> buckets;
  /// The advice of the largest bucket (the first of them on a tie): the pick for a trainer
  /// with one codec for all buckets.
  const bucket_advice& largest() const {
    if (buckets.empty()) detail::throw_invalid_argument("advice::largest", "no buckets");
    const bucket_advice* b = &buckets[0];
    for (const bucket_advice& x : buckets)
      if (x.values > b->values) b = &x;
    return *b;
  }
  /// The sum of the picks' predicted times.
  double predicted_s() const noexcept {
    double s = 0;
    for (const bucket_advice& b : buckets) s += b.predicted_s;
    return s;
  }
};

/// How long and how hard advise() measures.
///
///   gradcomm::advise(t, sizes, gradcomm::accuracy_class::any, {.probe_reps = 9});
struct advise_options {
  int probe_reps = 5;                              ///< timed exchanges of each probe size
  std::size_t probe_bytes = std::size_t{2} << 20;  ///< the large probe message (the small: 8 B)
  int codec_reps = 3;                              ///< timed calls of each codec operation
  /// Codecs are timed on at most this many values (their rate per value is taken as it is
  /// for larger buckets).
  std::size_t max_timed_values = std::size_t{1} << 22;
  /// Bytes of inputs and codec states the timed calls cycle through (up to 8 copies of a
  /// bucket): calls on one cache-warm buffer run faster than a step's buckets do.
  std::size_t cold_bytes = std::size_t{32} << 20;
  std::uint64_t seed = 0;
  /// Timed all-reduces of each tried candidate in the trial (advise(t, ...)); 0: no trial,
  /// the model alone picks.
  int trial_reps = 3;
  /// The candidates tried: those allowed and predicted within this factor of the model's
  /// pick (at least 1).
  double trial_within = 2.0;
};

namespace detail {

inline void advise_check(std::span<const std::size_t> buckets, int world_size,
                         accuracy_class accuracy, const char* call) {
  if (buckets.empty()) throw_invalid_argument(call, "no buckets to advise on");
  for (std::size_t i = 0; i < buckets.size(); ++i)
    if (buckets[i] == 0)
      throw_invalid_argument(call, "bucket " + std::to_string(i) + " holds no values");
  if (world_size < 1)
    throw_invalid_argument(call, "world size " + std::to_string(world_size) + " (at least 1)");
  if (static_cast<unsigned>(accuracy) > static_cast<unsigned>(accuracy_class::any))
    throw_invalid_argument(
        call, "unknown accuracy class " + std::to_string(static_cast<unsigned>(accuracy)));
}

inline double advise_seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::string advise_bytes_text(std::size_t bytes) {
  char s[32];
  if (bytes >= (std::size_t{1} << 20))
    std::snprintf(s, sizeof s, "%.3g MiB", static_cast<double>(bytes) / (1 << 20));
  else
    std::snprintf(s, sizeof s, "%.3g KiB", static_cast<double>(bytes) / 1024);
  return s;
}

inline std::string advise_ms_text(double s) {
  char b[32];
  if (s < 1e-3)
    std::snprintf(b, sizeof b, "%.1f µs", s * 1e6);
  else
    std::snprintf(b, sizeof b, s < 0.01 ? "%.2f ms" : "%.1f ms", s * 1e3);
  return b;
}

// The model of the header's comment for codec C over transport T.
template <Transport T, Codec C>
candidate_prediction advise_predict(const C& codec, advised_codec which, std::size_t n, int ranks,
                                    const link_model& link, const codec_rate& r,
                                    const codec_rate& f32) {
  candidate_prediction p;
  p.codec = which;
  p.algorithm = algorithm_for<C, T>();
  const double N = ranks, dn = static_cast<double>(n), alpha = link.latency_s,
               beta = link.seconds_per_byte;
  const double e = r.encode_s_per_value, d = r.decode_s_per_value, a = r.decode_add_s_per_value;
  double compute = 0, wire = 0, bytes = 0;
  auto ring = [&](double b, double sum_s_per_value) {
    if (ranks > 1) {
      const double sent = 2 * (N - 1) / N * b;
      wire += 2 * (N - 1) * alpha + sent * beta;
      bytes += sent;
      compute += (N - 1) / N * dn * sum_s_per_value;
    }
  };
  auto dense = [&] {
    compute += (e + d) * dn;
    ring(4 * dn, f32.decode_add_s_per_value);
  };
  constexpr ar_algorithm algorithm = algorithm_for<C, T>();
  if constexpr (algorithm == ar_algorithm::native) {
    if constexpr (value_codec<C>) {
      ring(4 * dn, f32.decode_add_s_per_value);
    } else {
      using E = linear_element_t<C>;
      compute += (e + d) * dn;
      ring(static_cast<double>(sizeof(E)) * dn, e + a);
    }
  } else if constexpr (algorithm == ar_algorithm::scatter_reduce_allgather) {
    const std::size_t c = ar_chunk(n, ranks, 0).size();
    const double pc = static_cast<double>(codec.max_encoded_bytes(c));
    compute += (e + a + d) * dn + e * static_cast<double>(c);
    if (ranks > 1) {
      wire += 2 * (N - 1) * (alpha + pc * beta);
      bytes += 2 * (N - 1) * pc;
    }
  } else if constexpr (algorithm == ar_algorithm::two_round) {
    compute += (e + d) * dn;
    ring(4.0 * static_cast<double>(codec.p_floats(n)), 0);
    ring(4.0 * static_cast<double>(codec.q_floats(n)), 0);
  } else {  // the all-gather family
    const std::size_t pn = codec.max_encoded_bytes(n);
    ar_algorithm path = ar_algorithm::allgather;
    std::uint64_t rs_bytes = 0;
    if constexpr (sparse_entry_codec<C>) {
      const std::vector<std::size_t> sizes(static_cast<std::size_t>(ranks), pn);
      path = ar_sparse_choose(sparse_allreduce::automatic, sizes, n);
      rs_bytes = ar_sparse_cost(sizes, n).reduce_scatter;
    } else if (ar_allgather_goes_dense(static_cast<std::size_t>(ranks) * pn, n, ranks)) {
      path = ar_algorithm::dense;
    }
    p.algorithm = path;
    if (path == ar_algorithm::dense) {
      dense();
    } else if (path == ar_algorithm::sparse_reduce_scatter) {
      compute += (e + d) * dn;
      wire += 4 * (N - 1) * alpha + static_cast<double>(rs_bytes) * beta;
      bytes += static_cast<double>(rs_bytes);
    } else {
      compute += e * dn + N * a * dn;
      if (ranks > 1) {
        wire += (N - 1) * (alpha + static_cast<double>(pn) * beta);
        bytes += (N - 1) * static_cast<double>(pn);
      }
    }
  }
  p.compute_s = compute;
  p.wire_s = wire;
  p.predicted_s = compute + wire;
  p.bytes_sent = bytes;
  return p;
}

// "int8 scatter_reduce_allgather"
inline std::string advise_label(const candidate_prediction& p) {
  return std::string(advised_codec_name(p.codec)) + " " + ar_algorithm_name(p.algorithm);
}

// A deterministic input for timing codecs, gradient-like: symmetric about 0, nearly
// Gaussian (a sum of four uniforms), so that selections (top-k) see the spread they see in
// training.
inline void advise_fill(std::vector<float>& v, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
  auto uniform = [&] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
  };
  for (float& x : v) x = static_cast<float>(uniform() + uniform() + uniform() + uniform() - 2.0);
}

// Makes candidate `i` bucket `b`'s pick and writes the line that says why: its time
// (measured in the trial, else predicted) against f32's, or against what came closest.
inline void advise_choose(bucket_advice& ba, std::size_t b, std::size_t i) {
  const candidate_prediction& best = ba.candidates[i];
  ba.codec = best.codec;
  ba.algorithm = best.algorithm;
  ba.predicted_s = best.predicted_s;
  ba.measured_s = best.measured_s;
  const bool trial = best.measured_s > 0;
  auto time_of = [&](const candidate_prediction& p) {
    return trial && p.measured_s > 0 ? advise_ms_text(p.measured_s) + " measured"
                                     : advise_ms_text(p.predicted_s) + " predicted";
  };
  ba.why = "bucket " + std::to_string(b) + " (" + advise_bytes_text(ba.values * sizeof(float)) +
           "): " + advise_label(best) + " " + time_of(best);
  if (trial) ba.why += " (" + advise_ms_text(best.predicted_s) + " predicted)";
  if (best.codec == advised_codec::none) {
    // Say what came closest, so that the user sees by how much compression lost (in a
    // class that allows none, what the fastest codec outside it would take).
    const candidate_prediction *next = nullptr, *lossy = nullptr;
    auto key = [&](const candidate_prediction& p) {
      return trial && p.measured_s > 0 ? p.measured_s : p.predicted_s;
    };
    for (const candidate_prediction& p : ba.candidates) {
      if (p.codec == advised_codec::none) continue;
      if (p.allowed && (!next || key(p) < key(*next))) next = &p;
      if (!lossy || p.predicted_s < lossy->predicted_s) lossy = &p;
    }
    if (next)
      ba.why += " vs " + advise_label(*next) + " " + time_of(*next);
    else if (lossy)
      ba.why += " (lossless; " + advise_label(*lossy) + " would take " +
                advise_ms_text(lossy->predicted_s) + ")";
  } else {
    const candidate_prediction& f32 = ba.candidates[0];
    ba.why += " vs f32 " + std::string(ar_algorithm_name(f32.algorithm)) + " " + time_of(f32);
  }
}

// The candidates of `ba` the trial runs: allowed, predicted within `within` × the model's
// pick, and always the pick and f32 (so that a pick measured slower than uncompressed
// cannot stay the pick).
inline std::vector<std::size_t> advise_trial_set(const bucket_advice& ba, double within) {
  std::vector<std::size_t> out;
  const double limit = ba.predicted_s * std::max(within, 1.0);
  for (std::size_t i = 0; i < ba.candidates.size(); ++i) {
    const candidate_prediction& p = ba.candidates[i];
    if (p.allowed &&
        (p.codec == ba.codec || p.codec == advised_codec::none || p.predicted_s <= limit))
      out.push_back(i);
  }
  return out;
}

// After the trial: the fastest measured candidate becomes bucket `b`'s pick (the model's
// pick on a tie). Candidates with measured_s == 0 were not tried and are not considered;
// none tried leaves the model's pick.
inline void advise_pick_measured(bucket_advice& ba, std::size_t b) {
  std::size_t best = ba.candidates.size();
  for (std::size_t i = 0; i < ba.candidates.size(); ++i) {
    const candidate_prediction& p = ba.candidates[i];
    if (!p.allowed || !(p.measured_s > 0)) continue;
    if (best == ba.candidates.size() || p.measured_s < ba.candidates[best].measured_s ||
        (p.measured_s == ba.candidates[best].measured_s && p.codec == ba.codec))
      best = i;
  }
  if (best < ba.candidates.size()) advise_choose(ba, b, best);
}

// The trial (see the header): for each distinct bucket size, the candidates of
// advise_trial_set run through allreduce<C, T>; every rank runs the same candidates in the
// same order (the advice is the same on every rank) and takes the slowest rank's medians.
template <Transport T>
void advise_trials(T& t, advice& a, const advise_options& options) {
  std::vector<std::size_t> sizes;
  for (const bucket_advice& b : a.buckets)
    if (std::find(sizes.begin(), sizes.end(), b.values) == sizes.end()) sizes.push_back(b.values);
  for (std::size_t n : sizes) {
    const auto first = std::find_if(a.buckets.begin(), a.buckets.end(),
                                    [&](const bucket_advice& b) { return b.values == n; });
    const std::vector<std::size_t> tried = advise_trial_set(*first, options.trial_within);
    std::vector<double> times(first->candidates.size(), 0.0);
    // Every bucket of this size in one call, as a step runs them (one after another, each
    // bucket's encoding overlapping the one before's communication where the transport
    // lets a thread of the all-reduce call it).
    const auto count = static_cast<std::size_t>(std::count_if(
        a.buckets.begin(), a.buckets.end(), [&](const bucket_advice& b) { return b.values == n; }));
    std::vector<float> data(n * count), work(n * count);
    advise_fill(data, options.seed + n + 104729 * static_cast<std::uint64_t>(t.rank()));
    for (std::size_t i : tried) {
      with_advised_codec(
          first->candidates[i].codec,
          [&](auto codec) {
            using C = decltype(codec);
            allreduce_options ao;
            ao.bucket_bytes = (n + 255) / 256 * 256 * sizeof(float);  // buckets of ~n values
            ao.overlap = transport_any_thread(t);
            ao.seed = options.seed;
            ao.notice = [](const std::string&) {};
            allreduce<C, T> ar(t, std::move(codec), ao);
            const host_view<float> v(work.data(), work.size());
            work = data;
            ar.average(v);  // untimed: connections, buffers, codec state
            std::vector<double> ts;
            for (int r = 0; r < options.trial_reps; ++r) {
              work = data;
              t.barrier();
              const auto t0 = std::chrono::steady_clock::now();
              ar.average(v);
              ts.push_back(advise_seconds_since(t0));
            }
            std::sort(ts.begin(), ts.end());
            times[i] = ts[ts.size() / 2] / static_cast<double>(count);
          },
          options.seed);
    }
    t.allreduce(std::span<const double>(times), std::span<double>(times), reduce_op::max);
    for (std::size_t b = 0; b < a.buckets.size(); ++b) {
      if (a.buckets[b].values != n) continue;
      for (std::size_t i = 0; i < times.size(); ++i)
        a.buckets[b].candidates[i].measured_s = times[i];
      advise_pick_measured(a.buckets[b], b);
    }
  }
}

}  // namespace detail

/// The model's prediction for every candidate and bucket and the pick per bucket, from
/// given measurements (the deterministic part of advise; tests inject the link and the
/// speeds). `T` is the transport the all-reduce will run over: it decides whether f16 /
/// bf16 are summed natively. `speeds` needs a rate for every candidate of advised_codecs().
/// Throws gradcomm::error (errc::invalid_argument) for an empty bucket list, a bucket of
/// no values, world_size < 1, an unknown class, a negative or non-finite measurement, or a
/// candidate without a rate.
///
///   auto a = gradcomm::advise<gradcomm::local_transport>(sizes, 4, link, speeds,
///                                                       gradcomm::accuracy_class::any);
template <Transport T>
advice advise(std::span<const std::size_t> bucket_values, int world_size, const link_model& link,
              const codec_speeds& speeds, accuracy_class accuracy = accuracy_class::eight_bit) {
  static constexpr const char* call = "advise";
  detail::advise_check(bucket_values, world_size, accuracy, call);
  auto bad = [](double x) { return !std::isfinite(x) || x < 0; };
  if (bad(link.latency_s) || bad(link.seconds_per_byte))
    detail::throw_invalid_argument(call, "the link model needs finite, non-negative α and β");
  for (const codec_rate& r : speeds.rates)
    if (bad(r.encode_s_per_value) || bad(r.decode_s_per_value) || bad(r.decode_add_s_per_value))
      detail::throw_invalid_argument(call, std::string("the speeds of ") +
                                               std::string(advised_codec_name(r.codec)) +
                                               " need finite, non-negative rates");
  advice out;
  out.accuracy = accuracy;
  out.world_size = world_size;
  out.link = link;
  out.speeds = speeds;
  for (std::size_t b = 0; b < bucket_values.size(); ++b) {
    const std::size_t n = bucket_values[b];
    bucket_advice ba;
    ba.values = n;
    const codec_rate* f32 = speeds.find(advised_codec::none, n);
    if (!f32) detail::throw_invalid_argument(call, "no speeds for none (f32)");
    for (advised_codec c : advised_codecs()) {
      const codec_rate* r = speeds.find(c, n);
      if (!r)
        detail::throw_invalid_argument(
            call, "no speeds for candidate " + std::string(advised_codec_name(c)));
      with_advised_codec(c, [&](const auto& codec) {
        using C = std::remove_cvref_t<decltype(codec)>;
        candidate_prediction p =
            detail::advise_predict<T, C>(codec, c, n, world_size, link, *r, *f32);
        p.allowed = advised_codec_class(c) <= accuracy;
        ba.candidates.push_back(p);
      });
    }
    std::size_t best = 0;  // none: always allowed
    for (std::size_t i = 0; i < ba.candidates.size(); ++i)
      if (ba.candidates[i].allowed &&
          ba.candidates[i].predicted_s < ba.candidates[best].predicted_s)
        best = i;
    ba.f32_s = ba.candidates[0].predicted_s;
    detail::advise_choose(ba, b, best);
    out.buckets.push_back(std::move(ba));
  }
  return out;
}

/// The link's α and β measured through the transport (collective: every rank calls it at
/// the same point of its sequence of collectives). Every rank sends to its successor and
/// receives from its predecessor at once, `probe_reps` times an 8-byte message and a
/// `probe_bytes` one; α is the median time of the small exchange, β the median extra time
/// of the large one per extra byte; each is the largest over the ranks, so that every rank
/// returns the same. One rank: no link, {0, 0}.
///
///   gradcomm::link_model l = gradcomm::probe_link(transport);
template <Transport T>
link_model probe_link(T& t, const advise_options& options = {}) {
  static_assert(T::space == memory_space::host,
                "gradcomm::probe_link: the probe's buffers are host memory");
  const int ranks = t.size(), me = t.rank();
  if (ranks <= 1) return {};
  if (options.probe_reps < 1 || options.probe_bytes < 1024)
    detail::throw_invalid_argument("probe_link", "probe_reps >= 1 and probe_bytes >= 1024", me);
  const int next = (me + 1) % ranks, prev = (me + ranks - 1) % ranks;
  constexpr int tag = 0x6164;  // 'ad'
  std::vector<std::byte> out(options.probe_bytes, std::byte{1}), in(options.probe_bytes);
  auto exchange = [&](std::size_t bytes) {
    send_op s[] = {{next, tag, std::span<const std::byte>(out.data(), bytes)}};
    recv_op r[] = {{prev, tag, std::span<std::byte>(in.data(), bytes)}};
    auto req = t.post(s, r);
    t.wait(req);
  };
  auto median_time = [&](std::size_t bytes) {
    exchange(bytes);  // connections open on first use
    std::vector<double> times;
    for (int i = 0; i < options.probe_reps; ++i) {
      t.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      exchange(bytes);
      times.push_back(detail::advise_seconds_since(t0));
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };
  const std::size_t small = 8, large = options.probe_bytes;
  const double ts = median_time(small), tl = median_time(large);
  double m[2] = {ts, std::max(tl - ts, tl * 1e-3) / static_cast<double>(large - small)};
  t.allreduce(std::span<const double>(m), std::span<double>(m), reduce_op::max);
  return {m[0], m[1]};
}

/// Each candidate's encode, decode and decode_add speed on this machine, timed on one
/// buffer of each distinct size in `bucket_values` (sizes above max_timed_values are timed
/// at that many), the mean of max(`codec_reps`, copies) calls cycling through copies of the
/// buffer and the codec (cold_bytes in all) after one untimed call on each (the mean, not the
/// fastest: on a machine whose cores are shared, a short call that runs undisturbed says
/// less about a training step's share of the CPU than the mean does). Local: no
/// transport, so ranks differ; advise(t, ...) takes the slowest rank's rates.
///
///   gradcomm::codec_speeds s = gradcomm::measure_codec_speeds(std::vector<std::size_t>{1 << 20});
inline codec_speeds measure_codec_speeds(std::span<const std::size_t> bucket_values,
                                         const advise_options& options = {}) {
  if (options.codec_reps < 1 || options.max_timed_values < 1)
    detail::throw_invalid_argument("measure_codec_speeds",
                                   "codec_reps >= 1 and max_timed_values >= 1");
  std::vector<std::size_t> sizes;
  for (std::size_t n : bucket_values)
    if (n > 0) sizes.push_back(std::min(n, options.max_timed_values));
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  codec_speeds out;
  std::vector<std::vector<float>> inputs, accs;
  std::vector<std::byte> wire;
  for (std::size_t n : sizes) {
    // Copies enough to stream through options.cold_bytes (input and error-feedback state:
    // 8 bytes a value), so that the timed calls run from memory as a step's buckets do.
    const std::size_t copies = std::clamp<std::size_t>(options.cold_bytes / (8 * n) + 1, 1, 8);
    inputs.assign(copies, std::vector<float>(n));
    accs.assign(copies, std::vector<float>(n, 0.0f));
    for (std::size_t k = 0; k < copies; ++k)
      detail::advise_fill(inputs[k], options.seed + n + 7919 * k);
    const int calls = std::max<int>(options.codec_reps, static_cast<int>(copies));
    for (advised_codec c : advised_codecs()) {
      with_advised_codec(
          c,
          [&](auto proto) {
            using C = decltype(proto);
            std::vector<C> codecs(copies, proto);
            wire.resize(proto.max_encoded_bytes(n));
            for (std::size_t k = 0; k < copies; ++k) {  // untimed: first touch of the states
              const std::size_t bytes = codecs[k].encode(
                  host_view<const float>(inputs[k].data(), n), std::span<std::byte>(wire));
              codecs[k].decode_add(std::span<const std::byte>(wire.data(), bytes),
                                   host_view<float>(accs[k].data(), n));
            }
            double te = 0, td = 0, ta = 0;
            for (int i = 0; i < calls; ++i) {
              const std::size_t k = static_cast<std::size_t>(i) % copies;
              const host_view<float> o(accs[k].data(), n);
              auto t0 = std::chrono::steady_clock::now();
              const std::size_t bytes = codecs[k].encode(
                  host_view<const float>(inputs[k].data(), n), std::span<std::byte>(wire));
              te += detail::advise_seconds_since(t0);
              const std::span<const std::byte> payload(wire.data(), bytes);
              t0 = std::chrono::steady_clock::now();
              codecs[k].decode(payload, o);
              td += detail::advise_seconds_since(t0);
              t0 = std::chrono::steady_clock::now();
              codecs[k].decode_add(payload, o);
              ta += detail::advise_seconds_since(t0);
            }
            const double per = static_cast<double>(calls) * static_cast<double>(n);
            out.rates.push_back({c, n, te / per, td / per, ta / per});
          },
          options.seed);
    }
  }
  return out;
}

/// Measures and advises (collective: every rank calls it with the same bucket sizes at the
/// same point of its sequence of collectives): probe_link, then measure_codec_speeds on
/// each rank, the slowest rank's rates taken everywhere, then the model (advise above) for
/// `t.size()` ranks, then the trial (the header; advise_options::trial_reps 0 skips it):
/// the candidates predicted close to the pick run through allreduce<C, T> and the fastest
/// measured is picked (candidate_prediction::measured_s, bucket_advice::measured_s). Every
/// rank returns the same advice. Bucket lists that differ between ranks are an error on
/// every rank (errc::invalid_argument), found before the probe; so are trial_reps < 0 and a
/// trial_within below 1 or not finite.
///
///   auto a = gradcomm::advise(t, sizes, gradcomm::accuracy_class::sixteen_bit);
template <Transport T>
advice advise(T& t, std::span<const std::size_t> bucket_values,
              accuracy_class accuracy = accuracy_class::eight_bit,
              const advise_options& options = {}) {
  static constexpr const char* call = "advise";
  detail::advise_check(bucket_values, t.size(), accuracy, call);
  if (options.trial_reps < 0 || !(options.trial_within >= 1.0) ||
      !std::isfinite(options.trial_within))
    detail::throw_invalid_argument(call, "trial_reps >= 0 and a finite trial_within >= 1",
                                   t.rank());
  // The ranks agree on the bucket list first: its length and an FNV-1a hash, min and max.
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t n : bucket_values) h = (h ^ static_cast<std::uint64_t>(n)) * 1099511628211ull;
  const auto count = static_cast<std::int64_t>(bucket_values.size());
  const auto hash = static_cast<std::int64_t>(h & 0x7fffffffffffffffull);
  std::int64_t hi[2] = {count, hash}, lo[2] = {count, hash};
  t.allreduce(std::span<const std::int64_t>(hi), std::span<std::int64_t>(hi), reduce_op::max);
  t.allreduce(std::span<const std::int64_t>(lo), std::span<std::int64_t>(lo), reduce_op::min);
  if (hi[0] != lo[0] || hi[1] != lo[1])
    detail::throw_invalid_argument(call, "the ranks hold different bucket lists", t.rank());
  const link_model link = probe_link(t, options);
  codec_speeds speeds = measure_codec_speeds(bucket_values, options);
  std::vector<double> rates;
  for (const codec_rate& r : speeds.rates) {
    rates.push_back(r.encode_s_per_value);
    rates.push_back(r.decode_s_per_value);
    rates.push_back(r.decode_add_s_per_value);
  }
  t.allreduce(std::span<const double>(rates), std::span<double>(rates), reduce_op::max);
  for (std::size_t i = 0; i < speeds.rates.size(); ++i) {
    speeds.rates[i].encode_s_per_value = rates[3 * i];
    speeds.rates[i].decode_s_per_value = rates[3 * i + 1];
    speeds.rates[i].decode_add_s_per_value = rates[3 * i + 2];
  }
  advice a = advise<T>(bucket_values, t.size(), link, speeds, accuracy);
  if (options.trial_reps > 0 && t.size() > 1) detail::advise_trials(t, a, options);
  return a;
}

}  // namespace v0
}  // namespace gradcomm

// Fuzzes the top-k codecs (codec/sparse.hpp).
//
// Decoder mode: topk_codec's and approx_topk_codec's decode and decode_add on any bytes:
// malformed payloads throw decode_error and leave the output as it was; accepted ones are
// accepted by inspect_sparse too, hold at most k nonzero values, all finite, and decode_add
// adds exactly decode's values.
// Encoder mode: exact top-k of the fuzzer's floats agrees with a sort-based reference
// (ties to the lower index), approximate top-k's count stays within its tolerance and
// sends a top set, and a nonfinite value is rejected (invalid_argument) unless the policy
// is zero.
//
// Input: byte 0 bit 7 chooses the mode.
//   decoder (bit 7 clear): n is the payload's own count (bytes 8..15 of the header) when
//     byte 0 is odd and it is at most 2^16, else bytes 1-2 (little-endian u16); bytes 3..
//     are the payload, ending where the input ends.
//   encoder (bit 7 set): byte 1 gives the ratio ((byte + 1) / 256), byte 2 the tolerance
//     (byte / 256) and bit 0 of byte 0 the nonfinite policy (1: zero); bytes 3.. are f32
//     values (a trailing partial value is ignored).
#include <gradcomm/codec/sparse.hpp>

#include "../support/element_count.hpp"
#include "fuzz_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;
using gradcomm_test::element_count;

namespace {

template <class C>
void fuzz_decoder(const C& codec, std::span<const std::byte> payload, std::size_t n) {
  // Outputs of exactly n floats: a write past them is an AddressSanitizer report.
  std::vector<float> out(n, 42.0f);
  const bool ok = gradcomm_fuzz::decodes([&] { codec.decode(payload, out); });
  std::vector<float> acc(n, 1.0f);
  const bool ok_add = gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); });
  check(ok == ok_add, "decode and decode_add accept the same payloads");
  if (!ok) {
    for (float v : out) check(v == 42.0f, "a rejected payload leaves the output untouched");
    for (float v : acc) check(v == 1.0f, "a rejected payload leaves the sum untouched");
    return;
  }
  gc::sparse_info info{};
  check(gradcomm_fuzz::decodes([&] { info = gc::inspect_sparse(payload); }),
        "inspect_sparse accepts what the decoder accepts");
  check(info.count == n, "the payload's count is the output's");
  check(info.selected <= n, "k <= n");
  std::size_t nonzero = 0;
  for (std::size_t i = 0; i < n; ++i) {
    check(std::isfinite(out[i]), "decoded values are finite");
    check(acc[i] == 1.0f + out[i], "decode_add adds decode's values, nothing else");
    nonzero += out[i] != 0.0f;
  }
  check(nonzero <= info.selected, "at most k nonzero values");
}

std::vector<std::size_t> reference_topk(const std::vector<float>& g, std::size_t k, bool zero) {
  std::vector<float> mag(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    mag[i] = zero && !std::isfinite(g[i]) ? 0.0f : std::fabs(g[i]);
  }
  std::vector<std::size_t> order(g.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return mag[a] > mag[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

void fuzz_encoder(const std::uint8_t* data, std::size_t size) {
  const double ratio = (data[1] + 1) / 256.0;
  const double tolerance = data[2] / 256.0;
  const bool zero = (data[0] & 1u) != 0;
  const auto policy = zero ? gc::nonfinite_policy::zero : gc::nonfinite_policy::reject;
  const std::size_t n = (size - 3) / 4;
  std::vector<float> g(n);
  if (n != 0) std::memcpy(g.data(), data + 3, 4 * n);
  const bool nonfinite = std::any_of(g.begin(), g.end(), [](float v) { return !std::isfinite(v); });

  gc::topk_codec exact({.ratio = ratio, .nonfinite = policy});
  gc::approx_topk_codec approx({.ratio = ratio, .tolerance = tolerance, .nonfinite = policy});
  std::vector<std::byte> w(std::max(exact.max_encoded_bytes(n), approx.max_encoded_bytes(n)));
  if (nonfinite && !zero) {
    for (int which = 0; which < 2; ++which) {
      bool threw = false;
      try {
        if (which == 0) {
          exact.encode(g, w);
        } else {
          approx.encode(g, w);
        }
      } catch (const gc::error& e) {
        threw = e.code() == gc::errc::invalid_argument;
      }
      check(threw, "a nonfinite value is rejected with invalid_argument");
    }
    return;
  }
  const std::size_t k = gc::sparse_count(n, ratio);
  std::size_t bytes = exact.encode(g, w);
  check(bytes <= exact.max_encoded_bytes(n), "the payload fits its bound");
  std::vector<float> out(n, 5.0f);
  check(gradcomm_fuzz::decodes([&] { exact.decode(std::span(w.data(), bytes), out); }),
        "exact top-k decodes its own payload");
  const gc::sparse_info info = gc::inspect_sparse(std::span(w.data(), bytes));
  check(info.selected == k, "exact top-k sends k values");
  const std::vector<std::size_t> want = reference_topk(g, k, zero);
  std::vector<bool> sent(n, false);
  for (std::size_t i : want) sent[i] = true;
  for (std::size_t i = 0; i < n; ++i) {
    const float expect = sent[i] && std::isfinite(g[i]) ? g[i] : 0.0f;
    check(out[i] == expect, "exact top-k agrees with the sort-based reference");
  }

  bytes = approx.encode(g, w);
  check(bytes <= approx.max_encoded_bytes(n), "the approximate payload fits its bound");
  check(gradcomm_fuzz::decodes([&] { approx.decode(std::span(w.data(), bytes), out); }),
        "approximate top-k decodes its own payload");
  const gc::sparse_info a = gc::inspect_sparse(std::span(w.data(), bytes));
  const auto [lo, hi] = approx.count_bounds(n);
  check(a.selected >= lo && a.selected <= hi, "the approximate count is within its tolerance");
  // A top set: no value left out is larger than one sent. Zeros out are either left out
  // or sent as 0 (magnitude 0): neither breaks the comparison.
  float least_sent = INFINITY, most_unsent = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float m = std::isfinite(g[i]) ? std::fabs(g[i]) : 0.0f;
    if (out[i] != 0.0f) {
      least_sent = std::min(least_sent, m);
    } else {
      most_unsent = std::max(most_unsent, m);
    }
  }
  check(least_sent >= most_unsent, "approximate top-k sends a top set");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  if (data[0] & 0x80u) {
    fuzz_encoder(data, size);
    return 0;
  }
  const std::size_t n = element_count(data, size);
  const auto payload = gradcomm_fuzz::as_bytes(data + 3, size - 3);
  fuzz_decoder(gc::topk_codec{}, payload, n);
  fuzz_decoder(gc::approx_topk_codec{}, payload, n);
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> s;
  std::vector<float> g(3000);
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] = std::sin(static_cast<float>(i) * 0.37f) * static_cast<float>(i % 13);
  }
  for (double ratio : {0.001, 0.01, 0.3, 0.9}) {
    for (std::size_t n : {0u, 1u, 37u, 3000u}) {
      gc::topk_codec c({.ratio = ratio});
      std::vector<std::byte> w(c.max_encoded_bytes(n));
      w.resize(c.encode(gc::host_view<const float>(g.data(), n), w));
      s.push_back(seed({1, 0, 0}, w));  // delta at low ratios, bitmap at high ones
    }
  }
  for (std::uint8_t r : {0, 2, 40, 255}) {
    std::vector<std::byte> f(4 * 64);
    std::memcpy(f.data(), g.data(), f.size());
    s.push_back(seed({0x80, r, 26}, f));
    s.push_back(seed({0x81, r, 0}, f));
  }
  return s;
}

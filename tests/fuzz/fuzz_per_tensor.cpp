// Fuzzes per_tensor<C> (codec/per_tensor.hpp) over a fixed layout of three tensors (40, 3
// and 60 elements; tensors under 10 elements as f32).
//
// Decoder mode: per_tensor<topk_codec>'s and per_tensor<scalar_quant_codec>'s decode and
// decode_add on any bytes: malformed payloads throw decode_error and leave the output and
// the sum as they were; accepted ones: decode_add adds exactly decode's values.
// Encoder mode: the fuzzer's floats (103 of them, zeros where the input runs out) through
// per_tensor<topk_codec> give, tensor by tensor, what top-k of that tensor alone gives and
// the small tensor exactly; a nonfinite value is rejected with invalid_argument.
//
// Input: byte 0 bit 7 chooses the mode.
//   decoder (bit 7 clear): bytes 1.. are the payload.
//   encoder (bit 7 set): byte 1 gives the ratio ((byte + 1) / 256); bytes 2.. are f32 values.
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/codec/per_tensor.hpp>
#include <gradcomm/codec/quantize.hpp>
#include <gradcomm/codec/sparse.hpp>

#include "fuzz_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

namespace {

const std::vector<std::size_t> layout = {40, 3, 60};
constexpr std::size_t total = 103;
constexpr gc::per_tensor_options opts{.small_tensor_elems = 10};

template <class C>
void fuzz_decoder(const C& codec, std::span<const std::byte> payload) {
  std::vector<float> out(total, 42.0f);
  const bool ok = gradcomm_fuzz::decodes([&] { codec.decode(payload, out); });
  std::vector<float> acc(total, 1.0f);
  const bool ok_add = gradcomm_fuzz::decodes([&] { codec.decode_add(payload, acc); });
  check(ok == ok_add, "decode and decode_add accept the same payloads");
  if (!ok) {
    for (float v : out) check(v == 42.0f, "a rejected payload leaves the output untouched");
    for (float v : acc) check(v == 1.0f, "a rejected payload leaves the sum untouched");
    return;
  }
  for (std::size_t i = 0; i < total; ++i)
    check(acc[i] == 1.0f + out[i] || (std::isnan(acc[i]) && std::isnan(out[i])),
          "decode_add adds decode's values, nothing else");
}

void fuzz_encoder(const std::uint8_t* data, std::size_t size) {
  const double ratio = (data[1] + 1) / 256.0;
  std::vector<float> g(total, 0.0f);
  std::memcpy(g.data(), data + 2, std::min(4 * total, size - 2) / 4 * 4);
  const bool nonfinite = std::any_of(g.begin(), g.end(), [](float v) { return !std::isfinite(v); });
  gc::per_tensor<gc::topk_codec> c(gc::topk_codec({.ratio = ratio}), layout, opts);
  std::vector<std::byte> w(c.max_encoded_bytes(total));
  if (nonfinite) {
    bool threw = false;
    try {
      c.encode(gc::host_view<const float>(g), w);
    } catch (const gc::error& e) {
      threw = e.code() == gc::errc::invalid_argument;
    }
    check(threw, "a nonfinite value is rejected with invalid_argument");
    return;
  }
  const std::size_t bytes = c.encode(gc::host_view<const float>(g), w);
  check(bytes <= c.max_encoded_bytes(total), "the payload fits its bound");
  std::vector<float> out(total, 5.0f);
  check(gradcomm_fuzz::decodes([&] { c.decode(std::span(w.data(), bytes), out); }),
        "per_tensor decodes its own payload");
  std::size_t at = 0;
  for (std::size_t t = 0; t < layout.size(); ++t) {
    const gc::host_view<const float> part(g.data() + at, layout[t]);
    std::vector<float> want(part.begin(), part.end());
    if (layout[t] >= opts.small_tensor_elems) {
      gc::topk_codec alone({.ratio = ratio});
      std::vector<std::byte> aw(alone.max_encoded_bytes(layout[t]));
      aw.resize(alone.encode(part, aw));
      alone.decode(aw, gc::host_view<float>(want));
    }
    for (std::size_t i = 0; i < layout[t]; ++i)
      check(out[at + i] == want[i], "each tensor decodes to what its own codec gives");
    at += layout[t];
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  if (data[0] & 0x80u) {
    fuzz_encoder(data, size);
    return 0;
  }
  const auto payload = gradcomm_fuzz::as_bytes(data + 1, size - 1);
  fuzz_decoder(gc::per_tensor<gc::topk_codec>(gc::topk_codec({.ratio = 0.1}), layout, opts),
               payload);
  fuzz_decoder(
      gc::per_tensor<gc::scalar_quant_codec>(gc::scalar_quant_codec({.bits = 4}), layout, opts),
      payload);
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> s;
  std::vector<float> g(total);
  for (std::size_t i = 0; i < g.size(); ++i)
    g[i] = std::sin(static_cast<float>(i) * 0.37f) * static_cast<float>(i % 13);
  for (double ratio : {0.01, 0.3, 0.9}) {
    gc::per_tensor<gc::topk_codec> c(gc::topk_codec({.ratio = ratio}), layout, opts);
    std::vector<std::byte> w(c.max_encoded_bytes(total));
    w.resize(c.encode(gc::host_view<const float>(g), w));
    s.push_back(seed({0}, w));
  }
  {
    gc::per_tensor<gc::scalar_quant_codec> c(gc::scalar_quant_codec({.bits = 4}), layout, opts);
    std::vector<std::byte> w(c.max_encoded_bytes(total));
    w.resize(c.encode(gc::host_view<const float>(g), w));
    s.push_back(seed({0}, w));
  }
  std::vector<std::byte> f(4 * total);
  std::memcpy(f.data(), g.data(), f.size());
  for (std::uint8_t r : {0, 25, 255}) s.push_back(seed({0x80, r}, f));
  return s;
}

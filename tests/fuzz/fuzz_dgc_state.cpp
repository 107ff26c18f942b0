// Fuzzes dgc_memory's load_state: malformed state bytes throw decode_error and change
// nothing; accepted ones save back to the same bytes, hold finite buffers, and carry on: one
// encode from the loaded state keeps them finite, decodes, and saves a state that loads.
//
// Input: byte 0 selects the codec (even: dgc_memory<topk_codec>; odd: dgc_memory around
// error_feedback<topk_codec>, whose inner codec is stateful, so that the inner state's
// bytes are fuzzed too); byte 1 the warm-up (bit 0 set: 3 steps from ratio 0.5, which the
// state's step count then drives); the rest is the state, ending where the input ends.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/sparse.hpp>

#include "fuzz_support.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

namespace gc = gradcomm;
using gradcomm_fuzz::check;

namespace {

// Non-finite sums are zeroed, never thrown at: only decode_error may escape here.
const gc::topk_params topk{.ratio = 0.25, .nonfinite = gc::nonfinite_policy::zero};
using plain_dgc = gc::dgc_memory<gc::topk_codec>;
using nested_dgc = gc::dgc_memory<gc::error_feedback<gc::topk_codec>>;

template <class D>
D make(bool warmup) {
  const gc::dgc_params p{.momentum = 0.9f, .warmup_steps = warmup ? 3u : 0u, .warmup_ratio = 0.5};
  if constexpr (std::is_same_v<D, plain_dgc>) {
    return D(gc::topk_codec(topk), p);
  } else {
    return D(gc::error_feedback<gc::topk_codec>(gc::topk_codec(topk)), {.momentum = 0.9f});
  }
}

template <class D>
std::vector<std::byte> saved(const D& d) {
  std::vector<std::byte> s(d.state_bytes());
  s.resize(d.save_state(s));
  return s;
}

template <class D>
void check_finite(const D& d, const char* what) {
  for (float x : d.momentum()) check(std::isfinite(x), what);
  for (float x : d.accumulated()) check(std::isfinite(x), what);
}

template <class D>
void one(std::span<const std::byte> state, bool warmup) {
  D d = make<D>(warmup);
  const auto before = saved(d);
  if (!gradcomm_fuzz::decodes([&] { d.load_state(state); })) {
    check(saved(d) == before, "a rejected state changes nothing");
    return;
  }
  const auto again = saved(d);
  check(again.size() == state.size() && std::memcmp(again.data(), state.data(), state.size()) == 0,
        "save_state(load_state(x)) == x");
  check_finite(d, "loaded buffers are finite");

  // Carry on from the loaded state: one step, small gradients. (An unsized state takes its
  // size from this input.)
  const std::size_t n = d.sized() ? d.size() : 17;
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>(i % 7) * 0.125f - 0.375f;
  std::vector<std::byte> wire(d.max_encoded_bytes(n));
  wire.resize(d.encode(g, wire));
  check_finite(d, "buffers stay finite");
  std::vector<float> out(n);
  check(gradcomm_fuzz::decodes([&] { d.decode(wire, out); }), "decodes its own payload");
  for (float x : out) check(std::isfinite(x), "its payload decodes finite");
  D e = make<D>(warmup);
  const auto next = saved(d);
  check(gradcomm_fuzz::decodes([&] { e.load_state(next); }), "the next state loads");
  check(saved(e) == next, "and saves back to the same bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const auto state = gradcomm_fuzz::as_bytes(data + 2, size - 2);
  const bool warmup = (data[1] & 1u) != 0;
  if (data[0] & 1u) {
    one<nested_dgc>(state, warmup);
  } else {
    one<plain_dgc>(state, warmup);
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  auto add = [&](std::uint8_t which, std::uint8_t warmup, auto d, std::size_t n, int steps) {
    std::vector<float> g(n);
    std::vector<std::byte> wire(d.max_encoded_bytes(n));
    for (int s = 0; s < steps; ++s) {
      for (std::size_t i = 0; i < n; ++i) g[i] = 0.1f * static_cast<float>(i % 11) - 0.01f * s;
      d.encode(g, wire);
    }
    out.push_back(seed({which, warmup}, saved(d)));
  };
  for (std::uint8_t w : {0, 1}) {
    add(0, w, make<plain_dgc>(w != 0), 0, 0);  // unsized
    add(1, w, make<nested_dgc>(w != 0), 0, 0);
    for (std::size_t n : {1u, 5u, 33u}) {
      add(0, w, make<plain_dgc>(w != 0), n, 2);
      add(1, w, make<nested_dgc>(w != 0), n, 2);
    }
  }
  return out;
}

// Fuzzes error_feedback's load_state: malformed state bytes throw decode_error and change
// nothing; accepted ones save back to the same bytes and encode without trouble.
//
// Input: byte 0 selects the codec (even: error_feedback<bf16_codec>; odd: the same nested
// in another error_feedback, whose inner codec is stateful); the rest is the state, ending
// where the input ends.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/error_feedback.hpp>

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

// Non-finite inputs are zeroed, never thrown at: only decode_error may escape here.
using plain_ef = gc::error_feedback<gc::bf16_codec>;
using nested_ef = gc::error_feedback<plain_ef>;

template <class EF>
EF make() {
  const plain_ef plain{gc::bf16_codec(gc::nonfinite_policy::zero)};
  if constexpr (std::is_same_v<EF, plain_ef>) {
    return plain;
  } else {
    return nested_ef(plain);
  }
}

template <class EF>
std::vector<std::byte> saved(const EF& ef) {
  std::vector<std::byte> s(ef.state_bytes());
  s.resize(ef.save_state(s));
  return s;
}

template <class EF>
void one(std::span<const std::byte> state) {
  EF ef = make<EF>();
  const auto before = saved(ef);
  if (!gradcomm_fuzz::decodes([&] { ef.load_state(state); })) {
    check(saved(ef) == before, "a rejected state changes nothing");
    return;
  }
  const auto again = saved(ef);
  check(again.size() == state.size() && std::memcmp(again.data(), state.data(), state.size()) == 0,
        "save_state(load_state(x)) == x");
  for (float e : ef.residual()) check(std::isfinite(e), "loaded residual is finite");

  // Carry on from the loaded state: one step, small gradients (no overflow of g + e).
  const std::size_t n = ef.size();
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<float>(i % 7) * 0.125f - 0.375f;
  std::vector<std::byte> wire(ef.max_encoded_bytes(n));
  wire.resize(ef.encode(g, wire));
  for (float e : ef.residual()) check(std::isfinite(e), "residual stays finite");
  std::vector<float> out(n);
  check(gradcomm_fuzz::decodes([&] { ef.decode(wire, out); }), "decodes its own payload");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto state = gradcomm_fuzz::as_bytes(data + 1, size - 1);
  if (data[0] & 1u) {
    one<nested_ef>(state);
  } else {
    one<plain_ef>(state);
  }
  return 0;
}

std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() {
  std::vector<bytes> out;
  auto add = [&](std::uint8_t which, auto& ef, std::size_t n, int steps) {
    std::vector<float> g(n);
    std::vector<std::byte> wire(ef.max_encoded_bytes(n));
    for (int s = 0; s < steps; ++s) {
      for (std::size_t i = 0; i < n; ++i) g[i] = 0.1f * static_cast<float>(i + 1) + 0.01f * s;
      ef.encode(g, wire);
    }
    out.push_back(seed({which}, saved(ef)));
  };
  plain_ef unsized;
  out.push_back(seed({0}, saved(unsized)));
  nested_ef nested_unsized;
  out.push_back(seed({1}, saved(nested_unsized)));
  for (std::size_t n : {0u, 1u, 5u, 33u}) {
    plain_ef p;
    add(0, p, n, 2);
    nested_ef q;
    add(1, q, n, 2);
  }
  return out;
}

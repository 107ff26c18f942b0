// tests/fuzz/fuzz_support.hpp — what the fuzz targets share: the one accepted exception,
// checks that abort, and the seed corpus.
//
//   #include "fuzz_support.hpp"
//
//   extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
//     const auto payload = gradcomm_fuzz::as_bytes(data, size);  // ends where the input ends
//     std::vector<float> out(16);
//     if (gradcomm_fuzz::decodes([&] { codec.decode(payload, out); })) {
//       gradcomm_fuzz::check(std::isfinite(out[0]), "decoded a finite value");
//     }
//     return 0;
//   }
//   std::vector<gradcomm_fuzz::bytes> gradcomm_fuzz::seeds() { return {valid payloads}; }
//
// A target that defines gradcomm_fuzz::seeds() gets those inputs as its starting corpus:
// run with GRADCOMM_FUZZ_WRITE_SEEDS=<dir>, the program writes them there and exits
// (seed_writer.cpp, linked into every target, does it; ctest does it before each run).
#pragma once

#include <gradcomm/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <span>
#include <vector>

namespace gradcomm_fuzz {

/// One input of the fuzzer, as it lies in a corpus file.
using bytes = std::vector<std::uint8_t>;

/// Valid inputs to start the corpus from; defined by each target that has them.
std::vector<bytes> seeds();

/// Aborts, so that libFuzzer reports the input, unless `ok`.
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "gradcomm fuzz: check failed: %s\n", what);
    std::abort();
  }
}

/// Runs f(). Returns true when it returned, false when it threw gradcomm::decode_error (the
/// one accepted outcome for malformed bytes); any other exception aborts with its what().
template <class F>
bool decodes(F&& f) {
  try {
    f();
    return true;
  } catch (const gradcomm::decode_error&) {
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradcomm fuzz: unexpected exception (not decode_error): %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "gradcomm fuzz: unexpected exception of unknown type\n");
    std::abort();
  }
}

/// The fuzzer's bytes as std::bytes.
inline std::span<const std::byte> as_bytes(const std::uint8_t* data, std::size_t size) noexcept {
  return {reinterpret_cast<const std::byte*>(data), size};
}

/// A seed: `prefix` (the target's selector bytes) then `payload`.
inline bytes seed(std::initializer_list<std::uint8_t> prefix, std::span<const std::byte> payload) {
  bytes s(prefix);
  for (std::byte b : payload) s.push_back(static_cast<std::uint8_t>(b));
  return s;
}

}  // namespace gradcomm_fuzz

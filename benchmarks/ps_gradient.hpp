// benchmarks/ps_gradient.hpp — the gradients of the parameter-server benchmarks
// (bench_parameter_server.cpp, backends_mpi.cpp): integers in [-127, 127], ±127 at the
// start of every block of 256, random signs. 8-bit scalar_quant (blocks of 256) sends them
// exactly (each block's level spacing is 1), and plain SGD with lr = 1 sums them exactly
// in f32 while the sums stay below 2^24, so the server's final parameters can be checked
// element by element against the sum of every acknowledged push.
//
//   ps_gradient::fill(rank, clock, g);
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ps_gradient {

inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

// Worker `rank`'s gradient at push `clock`, into g (its size is the tensor's).
inline void fill(int rank, std::uint64_t clock, std::vector<float>& g) {
  const std::uint64_t key = mix(static_cast<std::uint64_t>(rank) << 40 ^ clock);
  for (std::size_t i = 0; i < g.size(); ++i) {
    const std::uint64_t h = mix(key + i);
    const int mag = i % 256 == 0 ? 127 : static_cast<int>(h % 128);
    g[i] = static_cast<float>((h >> 32) & 1 ? mag : -mag);
  }
}

}  // namespace ps_gradient

// tests/unit/parameter_server_test_data.hpp — the data of the parameter-server tests over
// threads and MPI: integer-valued gradients and initial parameters, so that plain SGD with
// lr = 1 sums them exactly and the final parameters can be checked element by element.
//
//   float g = ps_test::int_grad(rank, clock, i);   // in [-4, 4]
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ps_test {

/// Worker `rank`'s gradient element i at push `clock`: an integer in [-4, 4].
inline float int_grad(int rank, std::uint64_t clock, std::size_t i) {
  return static_cast<float>(
             static_cast<int>((static_cast<std::size_t>(rank) * 131 + clock * 31 + i * 7) % 9)) -
         4.0f;
}

/// The initial parameters: integers in [-5, 5].
inline std::vector<float> initial(std::size_t n) {
  std::vector<float> w(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<float>(static_cast<int>(i % 11) - 5);
  return w;
}

}  // namespace ps_test

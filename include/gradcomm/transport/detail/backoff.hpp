// gradcomm/transport/detail/backoff.hpp — polling with a backoff, for transports and
// communicators that wait by polling rather than blocking.
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>

// Whether a long wait sleeps (1) or only yields (0). Under a simulator that runs every rank
// on one thread (SimGrid's SMPI, benchmarks/smpi.sh builds with 0) a real sleep stops the
// whole simulation and buys nothing: the simulated time does not move during it.
#ifndef GRADCOMM_POLL_SLEEPS
#define GRADCOMM_POLL_SLEEPS 1
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

// Yields while the wait is young (latency), then sleeps in steps doubling from
// `first_nap` up to `max_nap` (other ranks may share the cores). reset() when the
// wait made progress. The defaults are the MPI transport's.
class poll_backoff {
 public:
  using clock = std::chrono::steady_clock;

  poll_backoff() = default;
  poll_backoff(clock::duration yield_for, std::chrono::microseconds first_nap,
               std::chrono::microseconds max_nap) noexcept
      : yield_for_(yield_for), first_nap_(first_nap), max_nap_(max_nap) {}

  void pause() {
    if (!GRADCOMM_POLL_SLEEPS || clock::now() - start_ < yield_for_) {
      std::this_thread::yield();
      return;
    }
    nap_ = nap_.count() == 0 ? first_nap_ : std::min(nap_ * 2, max_nap_);
    std::this_thread::sleep_for(nap_);
  }
  void reset() noexcept {
    start_ = clock::now();
    nap_ = std::chrono::microseconds(0);
  }

 private:
  clock::duration yield_for_ = std::chrono::milliseconds(1);
  std::chrono::microseconds first_nap_{20};
  std::chrono::microseconds max_nap_{500};
  clock::time_point start_ = clock::now();
  std::chrono::microseconds nap_{0};
};

}  // namespace detail
}  // namespace v0
}  // namespace gradcomm

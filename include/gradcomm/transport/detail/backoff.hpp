// gradcomm/transport/detail/backoff.hpp — polling with a backoff, for transports and
// communicators that wait by polling rather than blocking.
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>
#if defined(SMPI_HELPERS_H)
#include <time.h>
#endif

// Whether a long wait sleeps (1) or only yields (0).
#ifndef GRADCOMM_POLL_SLEEPS
#define GRADCOMM_POLL_SLEEPS 1
#endif

// Built by SimGrid's smpicxx (which force-includes smpi/smpi_helpers.h), every rank is an
// actor of one simulation on one thread: a real sleep would stop the whole simulation and
// move no simulated time, and the real clock says nothing of the simulated one. There the
// back-off reads SMPI's clock and naps in simulated time (smpi_clock_gettime,
// smpi_usleep), so a simulated wait takes the back-off of a real one (yield for the first
// millisecond, then naps of 20 µs to 0.5 ms) and SMPI simulates one poll per nap instead of
// one per microsecond (benchmarks/smpi.sh).
#if defined(SMPI_HELPERS_H) && !defined(GRADCOMM_POLL_SIMULATED)
#define GRADCOMM_POLL_SIMULATED 1
#endif
#ifndef GRADCOMM_POLL_SIMULATED
#define GRADCOMM_POLL_SIMULATED 0
#endif

namespace gradcomm {
inline namespace v0 {
namespace detail {

// Yields while the wait is young (latency), then sleeps in steps doubling from
// `first_nap` up to `max_nap` (other ranks may share the cores). reset() when the
// wait made progress. The defaults are the MPI transport's.
class poll_backoff {
 public:
#if GRADCOMM_POLL_SIMULATED
  // The simulated clock: SMPI's clock_gettime (time since the simulation started).
  struct clock {
    using duration = std::chrono::nanoseconds;
    using rep = duration::rep;
    using period = duration::period;
    using time_point = std::chrono::time_point<clock>;
    static constexpr bool is_steady = true;
    static time_point now() noexcept {
      timespec ts{};
      smpi_clock_gettime(CLOCK_MONOTONIC, &ts);
      return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
    }
  };
#else
  using clock = std::chrono::steady_clock;
#endif

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
#if GRADCOMM_POLL_SIMULATED
    smpi_usleep(static_cast<useconds_t>(nap_.count()));
#else
    std::this_thread::sleep_for(nap_);
#endif
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

// gradcomm/comm/communicator.hpp — the Communicator concept.
//
//   template <gradcomm::Communicator Comm>
//   void train(Comm& comm, std::vector<float>& w, std::vector<float>& g) {
//     for (int step = 0; step < steps; ++step) {
//       compute_gradients(w, g);
//       comm.step(w, g);   // all-reduce, parameter server or gossip: same call
//     }
//   }
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/counters.hpp>
#include <gradcomm/core/tensor.hpp>

#include <concepts>

namespace gradcomm {
inline namespace v0 {

/// Communicator<C>: one of the three backends a training loop is written against.
/// Requirements:
///  1. `c.rank()` and `c.size()`: this worker's rank and the number of workers;
///  2. `c.step(params, grads)` does what one training step needs of the network
///     and leaves `params` updated: the all-reduce averages `grads` and applies
///     the local optimizer; the parameter server pushes `grads`, the server steps
///     and `params` receives the fresh values; gossip steps locally and mixes
///     `params` with neighbours. On every backend the call is bounded by the
///     transport's deadline and reports a failed or silent peer by rank;
///  3. `c.counters()`: bytes and messages on the wire and the time spent encoding,
///     decoding and waiting, readable at any time.
/// The lower-level calls of each backend (`average`, `push`/`pull`, `mix`) stay
/// public on the backend's own type.
template <class C>
concept Communicator = requires(C& c, const C& cc, host_view<float> params,
                                host_view<float> grads) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  c.step(params, grads);
  { cc.counters() } -> std::convertible_to<const traffic_counters&>;
};

}  // namespace v0
}  // namespace gradcomm

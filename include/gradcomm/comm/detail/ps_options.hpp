// gradcomm/comm/detail/ps_options.hpp — the parameter server's settings and reports:
// ps_options, pull_encoding, unbounded_staleness, lost_worker, ps_update, ps_server_stats
// (public names; comm/parameter_server.hpp is the header to include).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// No staleness bound: the asynchronous parameter server (replies go at once).
///
///   gradcomm::ps_options o{.staleness = gradcomm::unbounded_staleness};
inline constexpr std::uint64_t unbounded_staleness = std::numeric_limits<std::uint64_t>::max();

/// What a pull sends: the change since the worker's last pull encoded with the pull codec
/// (the server keeps a public copy per worker), or the shard's values as f32.
///
///   gradcomm::ps_options o{.pull = gradcomm::pull_encoding::f32};
enum class pull_encoding : unsigned char { codec, f32 };

/// A worker the server declared lost: its rank, the updates of it that were applied (all of
/// them acknowledged or about to be: none is undone) and why.
///
///   for (const auto& l : ps.lost_workers()) log(l.rank, l.reason);
struct lost_worker {
  int rank = -1;
  std::uint64_t updates = 0;
  std::string reason;
};

/// Settings of a parameter_server; the same on every rank.
///
///   gradcomm::ps_options o{.servers = 2, .staleness = 0, .worker_timeout =
///   std::chrono::seconds(5)};
struct ps_options {
  /// Ranks [0, servers) serve, one shard each; the others are workers.
  int servers = 1;
  /// The bound s: a worker at clock c waits until every live worker reached c − s. 0 is
  /// synchronous; unbounded_staleness asynchronous.
  std::uint64_t staleness = unbounded_staleness;
  pull_encoding pull = pull_encoding::codec;
  /// Silence after which a worker is declared lost; 0: half the transport's timeout. Must be
  /// shorter than the transport's timeout (a worker held that long would time out itself).
  std::chrono::milliseconds worker_timeout{0};
  /// Pushes travel under `tag`, replies under `tag + 1` (below 32767 for MPI).
  int tag = 29000;
  /// The seed of stochastic codecs' streams: (seed, clock, worker, shard) keys a push,
  /// (seed, version, worker, shard) a pull.
  std::uint64_t seed = 0;
  /// Keep every applied update in updates() (memory grows with the run: for tests).
  bool record_updates = false;
  /// Called on the server's thread when it declares a worker lost.
  std::function<void(const lost_worker&)> on_worker_lost = nullptr;
};

/// One applied update: worker `worker` (its rank), its push number `clock`, the version of
/// the parameters its gradient was computed on and the version it produced (the shard's
/// update count after it). Staleness = version_applied − 1 − version_seen.
///
///   for (const auto& u : ps.updates()) max_stale = std::max(max_stale, u.staleness());
struct ps_update {
  int worker = -1;
  std::uint64_t clock = 0;
  std::uint64_t version_seen = 0;
  std::uint64_t version_applied = 0;
  std::uint64_t staleness() const noexcept { return version_applied - 1 - version_seen; }
};

/// What a server did so far.
///
///   auto s = ps.server_stats();
///   std::printf("%llu updates, staleness max %llu mean %.2f\n", s.version, s.max_staleness,
///               s.mean_staleness);
struct ps_server_stats {
  std::uint64_t version = 0;         ///< updates applied to this shard
  std::uint64_t replies = 0;         ///< acknowledgements and pulls sent
  std::uint64_t duplicates = 0;      ///< pushes of a clock already applied (not applied again)
  std::uint64_t refused = 0;         ///< pushes refused (lost worker, clock gap, bad payload)
  std::uint64_t bytes_received = 0;  ///< message bytes of pushes, pulls and goodbyes
  std::uint64_t bytes_sent = 0;      ///< message bytes of replies
  std::uint64_t max_staleness = 0;   ///< in versions: updates applied between read and apply
  double mean_staleness = 0.0;
  /// Bucket 0 counts staleness 0, bucket b ≥ 1 staleness in [2^(b−1), 2^b); the last
  /// bucket everything above.
  std::array<std::uint64_t, 24> staleness_histogram{};
  std::vector<std::uint64_t> applied;  ///< updates applied per worker (index rank − servers)
  int active = 0;                      ///< workers still training
  int finished = 0;                    ///< workers that said goodbye
  int lost = 0;                        ///< workers declared lost
};

}  // namespace v0
}  // namespace gradcomm

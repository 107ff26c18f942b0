// gradcomm/transport/mpi/environment.hpp — mpi_environment: MPI initialized for the
// program's lifetime. Include <gradcomm/transport/mpi.hpp>.
#pragma once

#include <gradcomm/core/config.hpp>

#if GRADCOMM_HAS_MPI

#include <gradcomm/core/error.hpp>
#include <gradcomm/transport/detail/mpi_state.hpp>

#include <mpi.h>

#include <string>

namespace gradcomm {
inline namespace v0 {

/// Initializes MPI for the program's lifetime, or finds it initialized: RAII around
/// MPI_Init_thread (requesting MPI_THREAD_MULTIPLE) and MPI_Finalize. It finalizes only
/// what it initialized, so a trainer that owns MPI may still construct one. Throws
/// gradcomm::error (unsupported) when MPI provides less than MPI_THREAD_SERIALIZED,
/// unless constructed with mpi_threads::caller (only this thread will call MPI).
/// Destroy every mpi_transport before it.
///
///   int main(int argc, char** argv) {
///     gradcomm::mpi_environment env(argc, argv);
///     gradcomm::mpi_transport t(env.world());
///     ...
///   }  // t is destroyed, then env calls MPI_Finalize
class mpi_environment {
 public:
  /// Initializes MPI with the program's arguments (MPI may take its own out of them).
  ///
  ///   gradcomm::mpi_environment env(argc, argv);
  mpi_environment(int& argc, char**& argv) { init(&argc, &argv); }
  /// The same, for a program that calls MPI from this thread only (SimGrid's SMPI, whose
  /// MPI_Init_thread provides MPI_THREAD_FUNNELED at most): any thread level is accepted.
  ///
  ///   gradcomm::mpi_environment env(argc, argv, gradcomm::mpi_threads::caller);
  mpi_environment(int& argc, char**& argv, mpi_threads threads) : threads_(threads) {
    init(&argc, &argv);
  }
  /// Initializes MPI without arguments.
  ///
  ///   gradcomm::mpi_environment env;
  mpi_environment() { init(nullptr, nullptr); }
  /// The same, from this thread only (mpi_threads::caller: any thread level is accepted).
  ///
  ///   gradcomm::mpi_environment env(gradcomm::mpi_threads::caller);
  explicit mpi_environment(mpi_threads threads) : threads_(threads) { init(nullptr, nullptr); }
  mpi_environment(const mpi_environment&) = delete;
  mpi_environment& operator=(const mpi_environment&) = delete;
  ~mpi_environment() {
    if (owns_ && detail::mpi_usable()) MPI_Finalize();
  }

  /// MPI_COMM_WORLD, for constructing a transport.
  ///
  ///   gradcomm::mpi_transport t(env.world());
  MPI_Comm world() const noexcept { return MPI_COMM_WORLD; }
  /// The thread level MPI provides (MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE; with
  /// mpi_threads::caller possibly less).
  ///
  ///   bool any_thread = env.thread_level() == MPI_THREAD_MULTIPLE;
  int thread_level() const noexcept { return level_; }
  /// Whether this object initialized MPI (and will finalize it).
  ///
  ///   if (!env.initialized_here()) log("MPI was initialized by the trainer");
  bool initialized_here() const noexcept { return owns_; }

 private:
  void init(int* argc, char*** argv) {
    static constexpr const char* call = "mpi_environment";
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin) throw error(make_error_code(errc::unsupported), call, -1, "MPI was finalized already");
    if (init) {
      detail::mpi_check(MPI_Query_thread(&level_), call, "MPI_Query_thread", -1);
    } else {
      detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &level_), call,
                        "MPI_Init_thread", -1);
      owns_ = true;
    }
    if (level_ < MPI_THREAD_SERIALIZED && threads_ == mpi_threads::any) {
      if (owns_) MPI_Finalize();
      owns_ = false;
      throw error(make_error_code(errc::unsupported), call, -1,
                  "MPI provides " + detail::mpi_thread_level_text(level_));
    }
  }

  int level_ = MPI_THREAD_SINGLE;
  bool owns_ = false;
  mpi_threads threads_ = mpi_threads::any;
};

}  // namespace v0
}  // namespace gradcomm

#endif  // GRADCOMM_HAS_MPI

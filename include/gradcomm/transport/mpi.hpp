// gradcomm/transport/mpi.hpp — the `mpi` transport: the ranks of an MPI communicator,
// one process each, over MPI's non-blocking point-to-point and MPI-3 collectives.
//
//   int main(int argc, char** argv) {
//     gradcomm::mpi_environment env(argc, argv);  // MPI_Init_thread ... MPI_Finalize
//     gradcomm::mpi_transport t(env.world());     // a private dup of MPI_COMM_WORLD
//     std::vector<float> g(1000, float(t.rank()));
//     t.allreduce<float>(g, g, gradcomm::reduce_op::sum);  // in place
//   }                                             // run with: mpirun -np 4 ./train
//
// Needs MPI: link gradcomm::mpi (CMake; Debian packages libopenmpi-dev and
// openmpi-bin), which defines GRADCOMM_HAS_MPI=1. Without it this header declares only
// stubs whose use stops compilation with a message saying so, and never includes mpi.h.
//
// How it works:
//  - The transport works on its own MPI_Comm_dup of the communicator it is given (the
//    trainer's tags and collectives never meet ours) with MPI_ERRORS_RETURN: every MPI
//    return code is checked and becomes a gradcomm::error in mpi_category() naming the
//    call, the MPI function and the rank.
//  - Nothing ever blocks inside MPI: every wait polls (MPI_Testsome, MPI_Test) with a
//    short backoff (yield for the first millisecond, then sleeps of 20 µs growing to
//    0.5 ms) until its deadline, so a peer that never arrives gives a timeout_error.
//  - Sends are MPI_Isend. Receives are matched by this transport, in the order they
//    were posted, with MPI_Improbe and then received with MPI_Imrecv: the length of a
//    message is known before a byte lands, so a message longer than its buffer is
//    received aside and reported (gradcomm::error, buffer_too_small) instead of being
//    truncated by MPI. Open MPI 4.1's shared-memory single-copy path (CMA) writes a
//    truncated message past the end of the receive buffer (measured with 4.1.4: a 2 MiB
//    message received into a 1 MiB buffer overwrote the 1 MiB after it, and so did
//    8000- and 70000-byte ones), so MPI's own truncation is not safe to rely on. An
//    unmatched receive lives only in this transport, which is also why a timed-out
//    receive can be withdrawn without MPI_Cancel.
//  - Collectives are the non-blocking MPI-3 ones (MPI_Ireduce, MPI_Iallreduce, MPI_Iallgather(v),
//    MPI_Ialltoall(v), MPI_Ibcast, MPI_Ibarrier) waited on with the same deadline. f16
//    and bf16 sums use an MPI_Op of this transport on a 2-byte type: each combine
//    widens to float, adds and rounds back to nearest even (core/convert.hpp); f16 eight at
//    a time with F16C where the CPU has it (checked at run time; the same bits), which
//    made an 8 Mi-value f16 all-reduce on 2 ranks here 7.8-8.5 ms where it took 51-55 ms
//    (bf16: 10-11.5 ms; loopback, quiet machine, 2026-12-07; a program timing
//    t.allreduce<f16>, median of 5). `mpirun -np 2 bench_allreduce_mpi --only bf16,fp16
//    --mib 16 --reps 5 --no-targets` shows it through the all-reduce: fp16 5.2-5.4 ms, bf16
//    6.2-6.7 ms (the fp16 row runs only when named).
//  - All-reduces under 64 KiB: MPI_Iallreduce, whose every rank must get the same bits.
//    MPI does not promise that of an all-reduce; Open MPI's (libnbc: a binomial reduce and
//    broadcast for small messages, a ring for large ones) gives it, SimGrid's SMPI did not
//    (its ranks' sums differed in the last bits). So with any MPI but Open MPI the
//    transport runs MPI_Ireduce to rank 0 and then MPI_Ibcast of its result instead
//    (GRADCOMM_MPI_SMALL_ALLREDUCE: 0 MPI_Iallreduce, 1 reduce and broadcast; a build may
//    set it). Two of this transport's collectives cost more than one: 4 ranks on this
//    2-core machine's loopback, 16 to 16,000 floats, took 100–260 µs an all-reduce against
//    40–130 µs (2 ranks: the same, 6–36 µs; quiet machine, 2026-12-07).
//  - All-reduces of 64 KiB and more on two ranks or more are this transport's own ring
//    (reduce-scatter, then all-gather: 2(N-1) steps, each a send to the next rank and
//    a receive from the previous one, in messages of at most 512 KiB so that reducing
//    one overlaps receiving the next), on the point-to-point machinery above and a third
//    private communicator, so its messages never meet the user's tags. Open MPI's
//    MPI_Iallreduce (libnbc) does not use a bandwidth-optimal algorithm for large
//    messages, nor does it for user-defined ops such as the f16/bf16 sums.
//  - When a collective times out, the rank asks the others which collective they are
//    in, over a second private communicator (a few bytes, only on this path): ranks
//    inside any call of their transport answer at once, so the ranks that did not
//    reach the collective are named. The answers are awaited for half the timeout (at
//    most 2 s), so a collective's timeout_error comes about 1.5 × timeout() after it
//    started. A rank that gives up tells the others whom it blamed, so that a rank
//    timing out after it names that rank, not the one that merely waited on it.
//  - Every collective is checked across ranks (kind, element type, op, count, root,
//    all-gather(v) counts, the all-to-all(v) send/receive count matrix) by a small
//    MPI_Iallgather of fixed-size records on a fourth private communicator; ranks
//    that disagree all throw invalid_argument naming the ranks and sizes, before any
//    data moves. A shape every rank agreed on twice gets a communicator of its own (at
//    most 64): from then on it is posted at once, beside its check, so the steady
//    state adds no round trip, and a collective of another shape can never match it
//    (different communicators); the check still names a rank that passes another one.
//  - Collectives (MPI's and the ring) read and write only the transport's stage
//    buffers, copied from the input and to the output: what a collective that timed
//    out leaves with MPI (a send nobody received, a collective a rank never joined) is
//    the transport's memory, left to MPI for good, never the caller's, who may free
//    its buffers and finalize.
#pragma once

#include <gradcomm/core/config.hpp>

// mpi_environment, then mpi_transport (whose private members live in
// transport/detail/mpi_*.hpp). Without MPI they are the stubs below.
#include <gradcomm/transport/mpi/environment.hpp>
#include <gradcomm/transport/mpi/transport.hpp>

#if !GRADCOMM_HAS_MPI

namespace gradcomm {
inline namespace v0 {
namespace detail {
template <bool HasMpi = false>
struct mpi_needs_mpi {
  static_assert(HasMpi,
                "gradcomm::mpi_transport and gradcomm::mpi_environment need MPI: link "
                "gradcomm::mpi (CMake; Debian packages libopenmpi-dev and openmpi-bin), which "
                "defines GRADCOMM_HAS_MPI=1");
};
}  // namespace detail
/// Without MPI (GRADCOMM_HAS_MPI 0): a stub whose use stops compilation, saying so.
using mpi_transport = detail::mpi_needs_mpi<>;
/// Without MPI (GRADCOMM_HAS_MPI 0): a stub whose use stops compilation, saying so.
using mpi_environment = detail::mpi_needs_mpi<>;
}  // namespace v0
}  // namespace gradcomm

#endif  // !GRADCOMM_HAS_MPI

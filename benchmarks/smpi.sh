#!/usr/bin/env bash
# benchmarks/smpi.sh — the all-reduce benchmark (bench_allreduce_mpi), the library's real MPI
# code, built with SimGrid's smpicxx and run by smpirun over a simulated platform of N hosts,
# one rank a host: 2 to 1,024 ranks on this one machine, in one process. No root.
#
#   benchmarks/smpi.sh --platform ethernet1g --ranks 64 -- --mib 16 --reps 3
#   benchmarks/smpi.sh --platform shaped:1gbit --ranks 4 --cores 2 -- --mib 16  # validation
#   benchmarks/smpi.sh --platform rail400g --ranks 1024 -- --mib 8 --reps 1 --shared
#   benchmarks/smpi.sh --build-only
#
# Needs Debian's simgrid and libsimgrid-dev (SimGrid 3.32: smpicxx, smpirun); not in
# cmake/bootstrap.sh's list. Builds into build-smpi/ (its own folder: smpicxx is the compiler,
# the header-only library needs only -std=c++20 -I include; PowerSGD's row where Eigen is
# installed) when a source or header is newer than the program. Writes the platform
# (benchmarks/smpi/platform.sh: what each KIND is, latencies and their sources) and the
# hostfile into that folder, then prints the benchmark's table (--csv FILE: its CSV too).
#
# What is real and what is modelled:
#   * real: the library's code and MPI calls — the codecs encode and decode real data, the
#     transport posts its sends, receives, probes and non-blocking collectives, the
#     communicator picks its algorithm; payload bytes travel (copied by SMPI) and are decoded
#     and checked. SMPI's own collectives stand in for Open MPI's: the blocking ones
#     (MPI_Allreduce, the baseline) by Open MPI's tuned choice by size
#     (--cfg=smpi/coll-selector:ompi); the transport's non-blocking ones (MPI_Iallreduce /
#     Iallgather(v) / Ialltoall(v)) by SMPI's own implementations, which the selector does not
#     seem to reach: at 64 ranks on the fat-trees and the rail they cost many times the
#     blocking ones (benchmarks/results/smpi.md, the projection).
#   * modelled: the network (SimGrid's flow model: links' bandwidth shared max-min between
#     flows, latency a link, the SMPI piecewise bandwidth and latency factors for message
#     sizes); and the time of computation: SMPI measures the CPU time each rank spends between
#     MPI calls on this machine (ranks run one at a time, each alone on a core) and scales it
#     by this core's declared speed (1Gf) over the simulated host's speed (--speed, or
#     --cores C: C cores shared by N ranks, as in shaped_network.sh's runs). Times printed are
#     simulated (MPI_Wtime). Each MPI_Test and MPI_Iprobe counts 1 us (a real one costs
#     0.1-1 us), and that time does not grow while a poll keeps failing: SMPI's default
#     (smpi/grow-injected-times, 100 us doubling) made the transport's polling waits, not
#     the network, the time of a call (sign_ef on 2 ranks: 622 ms against 42 ms).
#   * --shared (a benchmark option): the gradient (read-only) comes from SMPI_SHARED_MALLOC,
#     one copy for all ranks, and the exact mean and the errors are not computed, so that
#     1,024 ranks fit in memory; the work buffer and the library's own buffers (payloads,
#     received payloads) stay private and real. Every rank then holds the same gradient.
#
# What SMPI cannot run, and the workarounds. SMPI 3.32 lacks MPI_Improbe / MPI_Mrecv /
# MPI_Imrecv and MPI_Comm_idup (it aborts): the transport probes with MPI_Iprobe and
# receives with MPI_Irecv wherever MPI runs below MPI_THREAD_SERIALIZED (one thread: no other
# can take the probed message first), and the build sets GRADCOMM_MPI_HAS_COMM_IDUP=0 (the
# transport's agreed collective shapes get no communicator of their own; each collective
# waits for its agreement check). MPI_COMM_WORLD has no error handler to restore (skipped).
# The transport's waits back off as on a real machine (yield for the first millisecond, then
# naps of 20 us to 0.5 ms) on SMPI's clock, napping in simulated time (smpi_usleep;
# transport/detail/backoff.hpp sees smpicxx's smpi_helpers.h): a real sleep would halt the
# whole simulation (one thread runs every rank) and move no simulated time.
# A rank is a simulated actor, not a thread; a
# thread that the rank starts cannot call MPI (SMPI's MPI_Init_thread provides
# MPI_THREAD_FUNNELED at most, MPI_Query_thread says MPI_THREAD_SINGLE). The all-reduce's
# overlap runs communication on a background thread, so under SMPI the benchmark makes its
# transport with gradcomm::mpi_threads::caller (mpi_transport then accepts any thread level
# and its any_thread() is false) and sets allreduce_options::overlap = false (the all-reduce
# refuses overlap over such a transport, by name). Each bucket is then encoded, sent and
# decoded in turn: no overlap of encoding with communication, in the simulation alone.
# The transport's deadlines are wall-clock, and a wall-clock second of a big simulation is
# little simulated time: the script passes --timeout-s 3600 unless given one.
#
# Options:
#   --platform K   ethernet1g | fattree25g | fattree100g | rail400g | shaped:RATE (default
#                  ethernet1g; see benchmarks/smpi/platform.sh)
#   --ranks N      simulated hosts and ranks (default 4)
#   --speed S      each host's compute speed, SimGrid units, this core being 1Gf (default 1Gf)
#   --cores C      instead of --speed: N ranks share C cores like this machine (S = min(1, C/N))
#   --build DIR    the build folder (default build-smpi/)
#   --csv FILE     passed to the benchmark (--csv FILE)
#   --timeout S    wall-clock limit for smpirun, in seconds (default 1800)
#   --lat-factor F, --bw-factor F
#                  SMPI's latency and bandwidth factors by message size ("0:f0;s1:f1;...", a
#                  factor from its size up; default SMPI's own, calibrated on Grid'5000's
#                  clusters). For the validation, the calibration that bench_link_mpi
#                  --pingpong prints, measured on the real network (benchmarks/results/smpi.md)
#   --cfg NAME:VALUE
#                  any other SimGrid setting, passed to smpirun as --cfg=NAME:VALUE
#   --poll-us U    simulated microseconds each MPI_Test / MPI_Iprobe takes (default 1; more
#                  makes big runs faster: fewer polls to simulate, each wait up to U us longer)
#   --build-only   build and stop
#   -- ARGS        the benchmark's own options (bench_allreduce_mpi --help)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

platform=ethernet1g
ranks=4
speed=1Gf
cores=
build=$repo/build-smpi
csv=
timeout_s=1800
build_only=0
poll_us=1
cfgs=()  # --cfg settings for smpirun (the factors and --cfg)
args=()

usage() {
  sed -n '2,/^set -eu/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -eu/d' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --platform) [ $# -ge 2 ] || usage; platform=$2; shift 2 ;;
    --ranks) [ $# -ge 2 ] || usage; ranks=$2; shift 2 ;;
    --speed) [ $# -ge 2 ] || usage; speed=$2; shift 2 ;;
    --cores) [ $# -ge 2 ] || usage; cores=$2; shift 2 ;;
    --build) [ $# -ge 2 ] || usage; build=$2; shift 2 ;;
    --csv) [ $# -ge 2 ] || usage; csv=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --poll-us) [ $# -ge 2 ] || usage; poll_us=$2; shift 2 ;;
    --lat-factor) [ $# -ge 2 ] || usage; cfgs+=("--cfg=smpi/lat-factor:$2"); shift 2 ;;
    --bw-factor) [ $# -ge 2 ] || usage; cfgs+=("--cfg=smpi/bw-factor:$2"); shift 2 ;;
    --cfg) [ $# -ge 2 ] || usage; cfgs+=("--cfg=$2"); shift 2 ;;
    --) shift; args=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "smpi.sh: unknown option $1" >&2; usage ;;
  esac
done
case $ranks in ''|*[!0-9]*) echo "smpi.sh: --ranks takes a number" >&2; exit 2 ;; esac
if [ "$ranks" -lt 1 ] || [ "$ranks" -gt 4096 ]; then
  echo "smpi.sh: --ranks must be 1 to 4096" >&2
  exit 2
fi
for tool in smpicxx smpirun; do
  command -v $tool > /dev/null || {
    echo "smpi.sh: $tool not found: install simgrid and libsimgrid-dev (SimGrid 3.32)" >&2
    exit 2
  }
done

# Build when the program is missing or older than a source or header it may include, or
# than this script (its flags). -O3, as the Release build (CMake's) compiles the real runs:
# at -O2 the codecs' loops ran slower, and SMPI charges the measured time to the ranks.
mkdir -p "$build"
bench=$build/bench_allreduce_mpi
src=$repo/benchmarks/allreduce_mpi.cpp
if [ ! -x "$bench" ] || [ "$0" -nt "$bench" ] ||
  [ -n "$(find "$src" "$repo/benchmarks/mpi_bench.hpp" "$repo/include" \
    -newer "$bench" -name '*.[ch]pp' -print -quit)" ]; then
  extra=()
  if [ -f /usr/include/eigen3/Eigen/Core ]; then
    extra=(-DGRADCOMM_HAS_EIGEN=1 -isystem /usr/include/eigen3)
  fi
  echo "smpi.sh: building $bench with smpicxx" >&2
  smpicxx -std=c++20 -O3 -DNDEBUG -Wall -Wextra -I "$repo/include" -DGRADCOMM_HAS_MPI=1 \
    -DGRADCOMM_MPI_HAS_COMM_IDUP=0 \
    "${extra[@]}" "$src" -o "$bench.tmp"
  mv "$bench.tmp" "$bench"
fi
[ "$build_only" = 1 ] && exit 0

if [ -n "$cores" ]; then
  speed=$(awk -v c="$cores" -v n="$ranks" 'BEGIN { s = c / n; if (s > 1) s = 1; printf "%.6gGf", s }')
fi

# Platform and hostfile: rank r on host h<r>, except on the rails (rank 8·node + k on rail k).
plat=$build/platform-$platform-$ranks.xml
plat=${plat/:/-}
hostfile=$build/hostfile-$platform-$ranks
hostfile=${hostfile/:/-}
"$here/smpi/platform.sh" "$platform" "$ranks" "$speed" > "$plat"
if [ "$platform" = rail400g ]; then
  awk -v n="$ranks" 'BEGIN { p = n / 8; for (r = 0; r < n; r++) print "h" (r % 8) * p + int(r / 8) }' \
    > "$hostfile"
else
  awk -v n="$ranks" 'BEGIN { for (r = 0; r < n; r++) print "h" r }' > "$hostfile"
fi

bargs=()
have_timeout=0
for a in "${args[@]}"; do [ "$a" = --timeout-s ] && have_timeout=1; done
[ "$have_timeout" = 1 ] || bargs+=(--timeout-s 3600)
[ -n "$csv" ] && bargs+=(--csv "$csv")
# smpirun passes arguments on unquoted: the label has no spaces.
label="SMPI:$platform,$ranks-ranks,host-speed:$speed"
echo "smpi.sh: $label; platform $plat" >&2
timeout "$timeout_s" smpirun -np "$ranks" -platform "$plat" -hostfile "$hostfile" \
  --cfg=smpi/host-speed:1Gf --cfg=smpi/coll-selector:ompi \
  --cfg=smpi/grow-injected-times:no --cfg=smpi/test:${poll_us}e-6 --cfg=smpi/iprobe:${poll_us}e-6 \
  "${cfgs[@]}" --cfg=smpi/display-timing:yes --log=xbt_cfg.thres:warning --log=smpi_config.thres:error --log=smpi_coll.thres:warning --log=smpi_colls.thres:warning \
  "$bench" --label "$label" --no-targets "${bargs[@]}" "${args[@]}"

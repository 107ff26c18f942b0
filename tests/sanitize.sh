#!/bin/sh
# The unit and MPI tests under AddressSanitizer and UndefinedBehaviorSanitizer (ctest label
# "sanitize"), every report fatal, built by GCC or clang in a build folder of their own.
#
#   sh tests/sanitize.sh gcc      # g++,     build-sanitize-gcc (what CI runs)
#   sh tests/sanitize.sh clang    # clang++, build-sanitize-clang
#   sh tests/sanitize.sh both     # one after the other
#
# Environment: JOBS (default: number of cores), SANITIZERS (default address,undefined),
# CTEST_ARGS (extra ctest arguments, e.g. -R local_transport). Needs what
# cmake/bootstrap.sh installs (clang and libclang-rt-14-dev for clang's runtimes).
set -eu
cd "$(dirname "$0")/.."
which=${1:-gcc}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
sanitizers=${SANITIZERS:-address,undefined}

run_one() {
  case "$1" in
    gcc) cxx=g++ ;;
    clang) cxx=$(command -v clang++-14 || command -v clang++) ;;
    *) echo "usage: sh tests/sanitize.sh gcc|clang|both" >&2; exit 2 ;;
  esac
  build=build-sanitize-$1
  # -O1: fast enough to run, still close to what users build; no CUDA, benchmarks,
  # examples or fuzzers (the fuzzers carry their own sanitizers).
  cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DGRADCOMM_SANITIZE="$sanitizers" \
    -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_NCCL=OFF -DGRADCOMM_BUILD_BENCHMARKS=OFF \
    -DGRADCOMM_BUILD_EXAMPLES=OFF -DGRADCOMM_FUZZ=OFF -DGRADCOMM_INSTALL=OFF
  cmake --build "$build" -j "$jobs"
  # Every report ends the test with a non-zero status; stacks are printed.
  # shellcheck disable=SC2086
  ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_stack_use_after_return=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$build" -L sanitize --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
}

case "$which" in
  both) run_one gcc; run_one clang ;;
  *) run_one "$which" ;;
esac

#!/bin/sh
# gradcomm's set-up, in one place: installs the Debian packages that are missing,
# configures and builds, then runs what was asked.
#
#   sh cmake/bootstrap.sh example   # build, then train the example (examples/data_parallel)
#   sh cmake/bootstrap.sh test      # build, then run the whole test suite (CI), then the
#                                   # unit and MPI tests under ASan + UBSan (GCC and clang)
#
# Works on a fresh Debian 12 machine as root (or with sudo). CUDA and NCCL are
# not Debian packages this script installs: where a toolkit is present (e.g.
# under /usr/local/cuda) the GPU parts are built, elsewhere they switch off.
# Environment: BUILD_DIR (default build), JOBS (default: number of cores),
# CMAKE_ARGS (extra configure arguments).
set -eu

mode=${1:-example}
case "$mode" in
  example | test) ;;
  *) echo "usage: sh cmake/bootstrap.sh example|test" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# What the build, the tests and the examples use, by Debian package name.
# libeigen3-dev makes gradcomm::eigen (PowerSGD, the example's model). clang and
# libclang-rt-14-dev (libFuzzer, ASan, UBSan; clang only recommends it) build the fuzz
# tests. The example reads Fashion-MNIST (dataset-fashion-mnist) with zlib and parses
# its options with CLI11.
packages="g++ cmake ninja-build libgtest-dev libgmock-dev libbenchmark-dev \
libopenmpi-dev openmpi-bin libeigen3-dev clang-format clang libclang-rt-14-dev \
dataset-fashion-mnist zlib1g-dev libcli11-dev"

missing=""
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
if [ -n "$missing" ]; then
  echo "gradcomm: installing missing Debian packages:$missing"
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "gradcomm: run as root (or install sudo) to install:$missing" >&2
    exit 1
  fi
  $sudo apt-get update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $missing
fi

# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"

case "$mode" in
  example)
    # The self-check (what the build found, one compressed all-reduce checked exactly),
    # then the library's main job: 4 workers train an MLP on Fashion-MNIST, uncompressed
    # and 8-bit with error feedback side by side (about 30 s on 2 cores).
    "$build/examples/gradcomm_selfcheck"
    exec "$build/examples/gradcomm_data_parallel" ;;
  test)
    ctest --test-dir "$build" --output-on-failure -j "$jobs"
    # Then the unit and MPI tests again under AddressSanitizer and UndefinedBehaviorSanitizer
    # (label "sanitize"), built by GCC in a build folder of its own (tests/sanitize.sh).
    # GRADCOMM_SANITIZE_WITH=gcc|clang|both|none picks (default gcc: clang's build and run
    # of the same tests took about 20 of CI's 79 minutes on 2 cores; clang's ASan and UBSan
    # still run every decoder through the fuzz tests of the suite above).
    case "${GRADCOMM_SANITIZE_WITH:-gcc}" in
      none) ;;
      *) JOBS=$jobs sh tests/sanitize.sh "${GRADCOMM_SANITIZE_WITH:-gcc}" ;;
    esac ;;
esac

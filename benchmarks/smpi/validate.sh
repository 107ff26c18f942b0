#!/usr/bin/env bash
# benchmarks/smpi/validate.sh — SMPI against the real network, in one command: on N hosts of
# benchmarks/shaped_network.sh (root: namespaces and tc) it runs the all-reduce benchmark
# and bench_link_mpi --pingpong, then the same benchmark under SMPI (benchmarks/smpi.sh) on
# the shaped:RATE platform calibrated by that ping-pong (its latency and its rate by message
# size: --lat-factor, --bw-factor) at the link rate the real run measured for the
# all-reduce's pattern (every rank to the next at once; the CSV's link_gbps), the hosts'
# speed 2/N of a core (--cores 2: N ranks share this machine's 2 cores), and prints the two
# side by side (benchmarks/smpi/compare.sh).
#
#   sudo benchmarks/smpi/validate.sh --hosts 4 --rate 500mbit --out val4
#
# Options: --hosts N (default 2), --rate R (tc units, default 1gbit), --cores C (default 2),
# --build DIR (default build: bench_allreduce_mpi and bench_link_mpi), --out DIR (default
# smpi-validation), -- ARGS for bench_allreduce_mpi on both sides (default --mib 16 --reps 3;
# --no-overlap is always added: SMPI cannot overlap). Writes DIR/real.csv, DIR/pingpong.txt,
# DIR/smpi.csv, their logs and DIR/compare.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
hosts=2
rate=1gbit
cores=2
build=$repo/build
out=smpi-validation
args=(--mib 16 --reps 3)
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --cores) cores=$2; shift 2 ;;
    --build) build=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -eu/d' >&2; exit 0 ;;
    *) echo "validate.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for p in bench_allreduce_mpi bench_link_mpi; do
  [ -x "$build/benchmarks/$p" ] || {
    echo "validate.sh: $build/benchmarks/$p not found: build it first" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/real.csv" "$out/smpi.csv"

echo "validate.sh: the real run, $hosts hosts at $rate" >&2
flock /tmp/gcnet.lock bash "$repo/benchmarks/shaped_network.sh" --hosts "$hosts" --rate "$rate" \
  -- "$build/benchmarks/bench_allreduce_mpi" "${args[@]}" --no-overlap --no-targets \
  --csv "$out/real.csv" > "$out/real.log" 2>&1 || { echo "validate.sh: see $out/real.log" >&2; exit 1; }
echo "validate.sh: the ping-pong (calibration)" >&2
flock /tmp/gcnet.lock bash "$repo/benchmarks/shaped_network.sh" --hosts "$hosts" --rate "$rate" \
  -- "$build/benchmarks/bench_link_mpi" --pingpong --reps 5 > "$out/pingpong.txt" 2>&1 ||
  { echo "validate.sh: see $out/pingpong.txt" >&2; exit 1; }

line=$(grep "^smpi.sh --lat-factor" "$out/pingpong.txt")
lat=$(echo "$line" | sed -E "s/.*--lat-factor '([^']*)'.*/\1/")
bw=$(echo "$line" | sed -E "s/.*--bw-factor '([^']*)'.*/\1/")
# The link rate the real run measured (Gbit/s, the CSV's link_gbps) as tc-style Mbit.
gbps=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; ++i) if ($i == "link_gbps") c = i - NF; next }
                { print $(NF + c); exit }' "$out/real.csv")
mbit=$(awk -v g="$gbps" 'BEGIN { printf "%d", g * 1000 + 0.5 }')
echo "validate.sh: SMPI on shaped:${mbit}mbit (the real run's link), latency factor $lat" >&2
bash "$repo/benchmarks/smpi.sh" --platform "shaped:${mbit}mbit" --ranks "$hosts" --cores "$cores" \
  --lat-factor "$lat" --bw-factor "$bw" --csv "$out/smpi.csv" -- "${args[@]}" \
  > "$out/smpi.log" 2>&1 || { echo "validate.sh: see $out/smpi.log" >&2; exit 1; }
bash "$here/compare.sh" "$out/real.csv" "$out/smpi.csv" | tee "$out/compare.md"

#!/usr/bin/env bash
# benchmarks/time_to_accuracy.sh — time to accuracy on the shaped network: the example
# data-parallel loop (examples/data_parallel) under MPI, one rank a simulated host
# (benchmarks/shaped_network.sh: network namespaces, each host's link shaped both ways),
# uncompressed and each codec through the all-reduce, each stopped at the first
# evaluation reaching the target test accuracy. Reports rank 0's training time to the
# target (evaluations excluded) and its ratio to the uncompressed run, as a Markdown table.
# Root only (namespaces, tc), like shaped_network.sh.
#
#   sudo bash benchmarks/time_to_accuracy.sh                     # 4 hosts, 1gbit, 85 %
#   sudo bash benchmarks/time_to_accuracy.sh --hosts 2 --target 0.84 --codecs none,int8
#
# Options: --hosts N (default 4), --rate R (default 1gbit), --target A (a fraction; default
# 0.85), --codecs LIST (default none,bf16,int8,sign,topk,powersgd), --epochs E (the most
# each may train; default 4), --evals-per-epoch K (default 4: the time is known to a
# quarter of an epoch), --seed S (default 1), --lr L (default 0.02, the example's, for
# every codec), --example-args "ARGS" (more options for the example, e.g. "--no-overlap"),
# --build DIR (default build), --out DIR (default time-to-accuracy). Writes
# DIR/runs.csv and DIR/run.log (the example's CSV: a row an evaluation, with the training
# time so far) and DIR/time_to_accuracy.md. One mpirun runs every codec, one after another,
# on the same namespaces (shaped_network.sh first checks the set-up and measures the link).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
hosts=4
rate=1gbit
target=0.85
codecs=none,bf16,int8,sign,topk,powersgd
epochs=4
evals=4
seed=1
lr=0.02
build=build
out=time-to-accuracy
extra=
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) hosts=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --codecs) codecs=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --evals-per-epoch) evals=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --example-args) extra=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "time_to_accuracy.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

build=$(cd "$build" && pwd)
prog=$build/examples/gradcomm_data_parallel
if [ ! -x "$prog" ]; then
  echo "time_to_accuracy.sh: $prog not found: build first (sh cmake/bootstrap.sh example)" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "time_to_accuracy.sh: $codecs (lr $lr) on $hosts hosts at $rate, each to $target" >&2
if ! bash "$here/shaped_network.sh" --hosts "$hosts" --rate "$rate" --build "$build" \
  -- "$prog" --transport mpi --codecs "$codecs" --epochs "$epochs" \
  --evals-per-epoch "$evals" --target-accuracy "$target" --seed "$seed" --lr "$lr" \
  --csv "$out/runs.csv" $extra >"$out/run.log" 2>&1; then
  echo "time_to_accuracy.sh: the run failed (see $out/run.log)" >&2
fi
grep '^shaped_network.sh: link' "$out/run.log" >&2 || true

# Columns of the example's CSV: codec,comm,workers,epoch,steps,test_accuracy,...,
# bytes_sent_per_worker (9),...,wall_s (15),epochs_done (16),train_s (17).
md=$out/time_to_accuracy.md
{
  printf '| codec | reached %.0f %% after (epochs) | training time to it (s) | vs none | MiB sent per worker to it |\n' \
    "$(awk -v t="$target" 'BEGIN { print 100 * t }')"
  printf '|---|---:|---:|---:|---:|\n'
} >"$md"
# A codec's first evaluation at the target: epochs, training time, MiB sent up to it.
reached() {
  [ -f "$out/runs.csv" ] || return 0
  awk -F, -v c="$1" -v t="$target" '
    NR > 1 && $1 == c { mib += $9 / 1048576 }
    NR > 1 && $1 == c && $6 >= t { printf "%s %s %.1f", $16, $17, mib; exit }' "$out/runs.csv"
}
base=$(reached none | awk '{ print $2 }')  # the uncompressed time, wherever none ran
for codec in $(echo "$codecs" | tr ',' ' '); do
  row=$(reached "$codec")
  if [ -z "$row" ]; then
    printf '| %s | not within %s epochs | - | - | - |\n' "$codec" "$epochs" >>"$md"
    continue
  fi
  set -- $row
  vs=$( [ -n "$base" ] && awk -v a="$2" -v b="$base" 'BEGIN { printf "%.3f", a / b }' || echo -)
  printf '| %s | %.2f | %.1f | %s | %s |\n' "$codec" "$1" "$2" "$vs" "$3" >>"$md"
done
echo "learning rate $lr, seed $seed, $hosts hosts at $rate, evaluations $evals an epoch" >>"$md"
cat "$md"

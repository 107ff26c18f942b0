#!/usr/bin/env bash
# tests/faults/run_faults.sh — fault injection over MPI: for every backend of
# fault_driver (the all-reduce's algorithm paths, the parameter server, gossip) and every
# fault (a rank that returns early, sleeps past the deadline, is stopped with SIGSTOP and
# continued later, is killed with SIGKILL), N trials under mpirun; prints a Markdown
# table of outcomes per (backend × fault).
#
#   cmake --build build --target fault_driver
#   tests/faults/run_faults.sh --build build --trials 10
#
# Options: --build DIR (default build), --trials N (10), --np N (4), --fault-rank R (1),
# --timeout-ms T (the transport's deadline, 500), --hang-s S (a trial still running after
# S seconds is killed and counted as a hang, 60), --backends "a b", --faults "a b",
# --keep DIR (keep every trial's output there).
#
# Outcomes, from the other ranks' RESULT lines and the job's end:
#   named error: every other rank that did not finish raised a gradcomm error naming a
#                rank, within the bound (1.5 × deadline, the collectives' documented
#                time to an error, + 1 s), and the job exited 0;
#   late/unnamed: as above but later than the bound or naming no rank;
#   clean exit:  every other rank finished every step with checked results (the
#                parameter server and gossip carry on without a lost rank) and the job
#                exited 0;
#   hang:        still running after --hang-s (killed);
#   crash:       a signal (segfault, abort) or a rank without a RESULT line;
#   wrong answer: a call returned a result that differs from the exact expected one;
#   mpirun ended the job: Open MPI saw a rank die (SIGKILL) and killed the others itself
#                (its own behaviour, not the library's: no rank gets to report).
set -u
build=build
trials=10
np=4
fault_rank=1
timeout_ms=500
hang_s=60
backends=""
faults="early sleep stop kill"
keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --trials) trials=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    --fault-rank) fault_rank=$2; shift 2 ;;
    --timeout-ms) timeout_ms=$2; shift 2 ;;
    --hang-s) hang_s=$2; shift 2 ;;
    --backends) backends=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "run_faults.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
driver=$build/tests/faults/fault_driver
if [ ! -x "$driver" ]; then
  echo "run_faults.sh: $driver not built (cmake --build $build --target fault_driver)" >&2
  exit 2
fi
[ -n "$backends" ] || backends=$($driver --list)
mpirun_flags=""
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  mpirun_flags="--oversubscribe"
  [ "$(id -u)" = 0 ] && mpirun_flags="$mpirun_flags --allow-run-as-root"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -n "$keep" ] && mkdir -p "$keep"
# The bound of a named error, in ms.
bound_ms=$(( timeout_ms * 3 / 2 + 1000 ))
# A stopped rank stays stopped this long (past the deadline and the others' errors).
stop_s=$(awk -v t="$timeout_ms" 'BEGIN { printf "%.1f", 4 * t / 1000 }')

# Continues a rank that stopped itself (SIGSTOP) after stop_s seconds.
continue_stopped() {
  local dir=$1 pidfile=$1/pid.$fault_rank pid state
  for _ in $(seq 1 600); do [ -s "$pidfile" ] && break; sleep 0.1; done
  pid=$(cat "$pidfile" 2>/dev/null) || return
  for _ in $(seq 1 600); do
    state=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || return
    [ "$state" = T ] && break
    sleep 0.05
  done
  sleep "$stop_s"
  kill -CONT "$pid" 2>/dev/null
}

# One trial: prints its outcome.
trial() {
  local backend=$1 fault=$2 n=$3 dir=$work/$1.$2.$3 out rc t0 t1
  mkdir -p "$dir"
  out=$dir/out
  t0=$(date +%s.%N)
  [ "$fault" = stop ] && continue_stopped "$dir" &
  timeout -s KILL "$hang_s" mpirun $mpirun_flags -np "$np" "$driver" --backend "$backend" \
    --fault "$fault" --fault-rank "$fault_rank" --timeout-ms "$timeout_ms" \
    --pid-dir "$dir" > "$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  wait 2>/dev/null
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  echo "rc=$rc wall_s=$wall" >> "$out"
  [ -n "$keep" ] && cp "$out" "$keep/$backend.$fault.$n.txt"
  # mpirun passes on a killed rank's status (137) too: a hang is a trial that ran out.
  if awk -v w="$wall" -v h="$hang_s" 'BEGIN { exit !(w >= h - 0.5) }'; then echo hang; return; fi
  if [ "$fault" = kill ] && grep -Eq "rank $fault_rank .*(exited on signal 9|killed by signal 9)" "$out"; then
    # Open MPI ends the job; say whether every other rank had named its error first.
    local named_first=1
    for r in $(seq 0 $((np - 1))); do
      [ "$r" = "$fault_rank" ] && continue
      grep -Eq "^RESULT rank=$r outcome=error .* peer=[0-9]+ " "$out" || named_first=0
    done
    if [ "$named_first" = 1 ]; then echo mpirun_ended_after_named; else echo mpirun_ended; fi
    return
  fi
  if grep -Eq "Segmentation fault|signal 11|signal 6|Aborted|Process received signal|core dumped|free\(\)|double free|corrupted" "$out"; then
    echo crash; return
  fi
  local survivors=0 results=0 wrong=0 errors=0 named=0 late=0
  for r in $(seq 0 $((np - 1))); do
    [ "$fault" != none ] && [ "$r" = "$fault_rank" ] && continue
    survivors=$((survivors + 1))
    line=$(grep -m1 "^RESULT rank=$r " "$out") || continue
    results=$((results + 1))
    case "$line" in *check=fail*) wrong=$((wrong + 1)) ;; esac
    case "$line" in
      *outcome=error*)
        errors=$((errors + 1))
        peer=$(sed -E 's/.* peer=(-?[0-9]+) .*/\1/' <<< "$line")
        ms=$(sed -E 's/.* elapsed_ms=(-?[0-9.]+) .*/\1/' <<< "$line")
        if [ "$peer" -ge 0 ] && awk -v m="$ms" -v b="$bound_ms" 'BEGIN { exit !(m <= b) }'; then
          named=$((named + 1))
        else
          late=$((late + 1))
        fi ;;
    esac
  done
  if [ "$wrong" -gt 0 ]; then echo wrong; return; fi
  if [ "$results" -lt "$survivors" ] || { [ "$rc" != 0 ] && [ "$rc" != 4 ]; }; then echo crash; return; fi
  if [ "$errors" = 0 ]; then echo clean; return; fi
  if [ "$late" -gt 0 ]; then echo late; return; fi
  echo named
}

outcomes="named late clean hang crash wrong mpirun_ended mpirun_ended_after_named"
declare -A count
rows=()
for backend in $backends; do
  for fault in $faults; do
    rows+=("$backend $fault")
    for o in $outcomes; do count["$backend.$fault.$o"]=0; done
    for n in $(seq 1 "$trials"); do
      o=$(trial "$backend" "$fault" "$n")
      count["$backend.$fault.$o"]=$(( ${count["$backend.$fault.$o"]} + 1 ))
      echo "  $backend $fault trial $n: $o" >&2
    done
  done
done

echo
echo "Fault injection over MPI: $np ranks, the fault on rank $fault_rank at step 2 of 4," \
  "deadline $timeout_ms ms, $trials trials each (bound of a named error: ${bound_ms} ms;" \
  "stopped ranks continued after ${stop_s} s; hang: still running after ${hang_s} s)."
echo
echo "| backend / path | fault | named error ≤ bound | late or unnamed error | clean exit | hang | crash | wrong answer | mpirun ended the job (of which after every other rank named its error) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
  set -- $row
  line="| $1 | $2 |"
  for o in named late clean hang crash wrong; do line="$line ${count["$1.$2.$o"]} |"; done
  ended=$(( ${count["$1.$2.mpirun_ended"]} + ${count["$1.$2.mpirun_ended_after_named"]} ))
  line="$line $ended (${count["$1.$2.mpirun_ended_after_named"]}) |"
  echo "$line"
done

#!/usr/bin/env bash
# benchmarks/smpi/compare.sh — the validation table: bench_allreduce_mpi's CSV from a real
# run (benchmarks/shaped_network.sh) beside its CSV from SMPI (benchmarks/smpi.sh), row by
# row (codec and algorithm), with SMPI's time against the real one and a mark where it is
# outside ±20 %.
#
#   benchmarks/smpi/compare.sh shaped4.csv smpi4.csv
set -eu
[ $# -eq 2 ] || { echo "usage: compare.sh REAL.csv SMPI.csv" >&2; exit 2; }
for f in "$1" "$2"; do [ -r "$f" ] || { echo "compare.sh: cannot read $f" >&2; exit 2; }; done
awk -F, '
  # The label (field 1) is quoted and may hold commas: count fields from the right.
  FNR == 1 { for (i = 1; i <= NF; ++i) col[$i] = i - NF; next }
  {
    key = $(NF + col["codec"]) " · " $(NF + col["algorithm"])
    ms = $(NF + col["median_ms"])
    if (FILENAME == ARGV[1]) { real[key] = ms; order[++n] = key; ranks = $(NF + col["ranks"]) }
    else sim[key] = ms
  }
  END {
    printf "| ranks | codec · algorithm | real ms | SMPI ms | SMPI vs real |\n|---:|---|---:|---:|---:|\n"
    bad = 0
    for (i = 1; i <= n; ++i) {
      k = order[i]
      if (!(k in sim)) { printf "| %d | %s | %.1f | — | — |\n", ranks, k, real[k]; continue }
      d = 100 * (sim[k] - real[k]) / real[k]
      mark = (d > 20 || d < -20) ? " ✗" : ""
      if (mark != "") ++bad
      printf "| %d | %s | %.1f | %.1f | %+.0f %%%s |\n", ranks, k, real[k], sim[k], d, mark
    }
    printf "\n%d of %d rows outside ±20 %%\n", bad, n
  }' "$1" "$2"

#!/usr/bin/env bash
# benchmarks/smpi/project.sh — the projection table: time per all-reduce of a model's whole
# gradient, from benchmarks/smpi.sh runs of bench_allreduce_mpi (their --csv files).
#
#   benchmarks/smpi/project.sh --params 1.5e9 results/*.csv > table.md
#   benchmarks/smpi/project.sh --extrapolate 256,1024 results/*.csv   # and beyond what ran
#   benchmarks/smpi/project.sh --png smpi.png results/*.csv          # and a plot (gnuplot)
#
# Each CSV row timed one call over --mib MiB a rank, in buckets, one after another (SMPI
# runs without overlap). A model of P f32 parameters is P·4 / (mib MiB) such calls' worth of
# buckets, so the row's median time is scaled by that factor: exact for the bucketed rows
# (the same bucket repeated) and for mpi_allreduce_f32_bucketed (MPI_Allreduce of one bucket
# at a time, as a trainer that buckets without compressing); the whole-buffer
# mpi_allreduce_f32 row is left out (its latency terms would be scaled too). Prints one
# Markdown table a platform: a row per codec and algorithm, a column per rank count,
# seconds per all-reduce of the whole gradient, and in brackets the ratio to MPI_Allreduce
# of f32 (bucketed) on the same platform and rank count.
#
# --extrapolate N,N,...: rank counts that did not run get a value in italics, a straight
# line in N through the row's two largest rank counts that ran (a first-order model: every
# algorithm here has a term flat in N — the ring's and the reduce-scatter's bytes — and
# terms growing with N — latency steps, all-to-all messages, all-gathered payloads).
#
# --png FILE: also a gnuplot PNG, one panel a platform, seconds against ranks (log-log), a
# line a row (dashed where extrapolated).
set -eu
params=1.5e9
extra=
png=
while [ $# -gt 0 ]; do
  case $1 in
    --params) params=$2; shift 2 ;;
    --extrapolate) extra=$2; shift 2 ;;
    --png) png=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: project.sh [--params P] [--extrapolate N,...] [--png F] CSV..." >&2; exit 2; }
dat=$(mktemp -d /tmp/smpi-project.XXXXXX)
trap 'rm -rf "$dat"' EXIT
for f in "$@"; do tail -n +2 "$f"; done | awk -v params="$params" -v extra="$extra" -v dat="$dat" '
# Splits a CSV line with quoted fields (the label) into f[1..n].
function split_csv(line, f,    n, q, c, i, cur) {
  n = 0; q = 0; cur = ""
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (c == "\"") { q = !q; continue }
    if (c == "," && !q) { f[++n] = cur; cur = ""; continue }
    cur = cur c
  }
  f[++n] = cur
  return n
}
{
  split_csv($0, f)
  label = f[1]; ranks = f[2]; mib = f[3]; codec = f[5]; ms = f[6]; algo = f[21]
  if (codec == "mpi_allreduce_f32") next
  # label: SMPI:<platform>,<N>-ranks,host-speed:<S>
  plat = label; sub(/^SMPI:/, "", plat); sub(/,.*/, "", plat)
  speed = label; sub(/.*host-speed:/, "", speed)
  if (speed != "1Gf") plat = plat ", host speed " speed
  name = codec (algo != "" && algo != "mpi" ? " · " algo : "")
  if (codec == "mpi_allreduce_f32_bucketed") name = "MPI_Allreduce f32 (4 MiB pieces)"
  s = ms / 1000 * params * 4 / (mib * 1048576)
  key = plat SUBSEP name SUBSEP ranks
  t[key] = s
  if (!(plat in seenp)) { seenp[plat] = 1; plats[++np] = plat }
  if (!((plat, name) in seenr)) { seenr[plat, name] = 1; rows[plat, ++nr[plat]] = name }
  if (!(ranks in seenn)) { seenn[ranks] = 1; ns[++nn] = ranks + 0 }
}
END {
  ne = split(extra, ex, ",")
  for (e = 1; e <= ne; e++) if (!((ex[e] + 0) in seenn)) { seenn[ex[e] + 0] = 1; ns[++nn] = ex[e] + 0 }
  for (i = 1; i <= nn; i++) for (j = i + 1; j <= nn; j++) if (ns[j] < ns[i]) { x = ns[i]; ns[i] = ns[j]; ns[j] = x }
  base = "MPI_Allreduce f32 (4 MiB pieces)"
  for (p = 1; p <= np; p++) {
    pl = plats[p]
    printf "\n**%s** — seconds per all-reduce of %g f32 gradients (ratio to MPI_Allreduce f32)\n\n", pl, params
    printf "| codec · algorithm |"; for (i = 1; i <= nn; i++) printf " %d ranks |", ns[i]; printf "\n"
    printf "|---|"; for (i = 1; i <= nn; i++) printf "---:|"; printf "\n"
    for (r = 1; r <= nr[pl]; r++) fit(pl, rows[pl, r])
    for (r = 1; r <= nr[pl]; r++) {
      name = rows[pl, r]
      printf "| %s |", name
      for (i = 1; i <= nn; i++) {
        k = pl SUBSEP name SUBSEP ns[i]; b = pl SUBSEP base SUBSEP ns[i]
        if (!(k in t)) { printf " — |"; continue }
        o = (k in fitted) ? "*" : ""
        if (name != base && (b in t)) printf " %s%.2f (%.2f)%s |", o, t[k], t[k] / t[b], o
        else printf " %s%.2f%s |", o, t[k], o
        # For the plot: platform, row, ranks, seconds, extrapolated.
        printf "%s\t%s\t%d\t%g\t%d\n", pl, name, ns[i], t[k], (k in fitted) > (dat "/points.tsv")
      }
      printf "\n"
    }
  }
}
# Fills the extrapolated rank counts of one row: the line through its two largest measured.
function fit(pl, name,    i, n1, n2, k, x) {
  n1 = n2 = 0
  for (i = 1; i <= nn; i++) {
    k = pl SUBSEP name SUBSEP ns[i]
    if ((k in t) && !(k in fitted)) { n1 = n2; n2 = ns[i] }
  }
  if (n1 == 0) return
  for (i = 1; i <= nn; i++) {
    x = ns[i]; k = pl SUBSEP name SUBSEP x
    if (x <= n2 || (k in t)) continue
    t[k] = t[pl SUBSEP name SUBSEP n2] + (t[pl SUBSEP name SUBSEP n2] - t[pl SUBSEP name SUBSEP n1]) * (x - n2) / (n2 - n1)
    fitted[k] = 1
  }
}'

[ -n "$png" ] || exit 0
command -v gnuplot > /dev/null || { echo "project.sh: gnuplot not found (Debian gnuplot-nox)" >&2; exit 2; }
# One data file a platform and row (gnuplot blocks: measured, then the extrapolated tail).
awk -F'\t' -v dat="$dat" -v png="$png" '
{
  if (!($1 in pi)) { pi[$1] = ++np; pn[np] = $1 }
  if (!($2 in ci)) ci[$2] = ++nc  # one colour a row name in every panel
  if (!(($1, $2) in ri)) { ri[$1, $2] = ++nr[$1]; title[$1, nr[$1]] = $2; col[$1, nr[$1]] = ci[$2] }
  f = dat "/" pi[$1] "_" ri[$1, $2] ".dat"
  print $3, $4, $5 > f
}
END {
  g = dat "/plot.gp"
  print "set terminal pngcairo size 1400,1000 font \",10\"" > g
  print "set output \"" png "\"" > g
  print "set termoption noenhanced; set logscale xy; set grid; set key left top font \",8\"" > g
  print "set xlabel \"ranks\"; set ylabel \"s per all-reduce of the whole gradient\"" > g
  print "set xrange [10:2000]; set multiplot layout 2,2" > g
  for (p = 1; p <= np; p++) {
    printf "set title \"%s\"\nplot ", pn[p] > g
    for (r = 1; r <= nr[pn[p]]; r++) {
      f = dat "/" p "_" r ".dat"
      printf "%s\"%s\" using 1:($3==0?$2:1/0) with linespoints lw 2 lc %d title \"%s\", \"%s\" using 1:2 with lines dt 2 lc %d notitle", (r > 1 ? ", " : ""), f, col[pn[p], r], title[pn[p], r], f, col[pn[p], r] > g
    }
    print "" > g
  }
  print "unset multiplot" > g
}' "$dat/points.tsv"
gnuplot "$dat/plot.gp"
echo "project.sh: wrote $png" >&2

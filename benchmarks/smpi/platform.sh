#!/usr/bin/env bash
# benchmarks/smpi/platform.sh — writes a SimGrid platform (XML) of N hosts, one MPI rank a
# host, for benchmarks/smpi.sh (smpirun -platform FILE).
#
#   benchmarks/smpi/platform.sh ethernet1g 64 > p.xml               # host speed 1 Gf
#   benchmarks/smpi/platform.sh fattree100g 1024 2Gf > p.xml        # hosts twice as fast
#   benchmarks/smpi/platform.sh shaped:250mbit 8 0.25Gf > p.xml     # like shaped_network.sh
#
# KIND is one of:
#   ethernet1g    1 Gbit/s Ethernet, every host on one non-blocking switch. Latency 50 us end
#                 to end (two 25 us host links): MPI over TCP on 1 GbE measures 40-60 us for a
#                 small message one way (NetPIPE / OSU latency on commodity NICs; the kernel's
#                 TCP stack dominates, the wire and a store-and-forward switch add ~10 us).
#   fattree25g    25 Gbit/s Ethernet (RoCE v2), a two-level fat-tree with full bisection:
#                 leaves of 16 hosts, 16 spines. 1 us a link, 2.5 us host to host through a
#                 leaf (ConnectX-4/5 RoCE: 1.5-2.5 us MPI latency; a leaf or spine switch adds
#                 0.3-0.6 us), up to 4 us through a spine.
#   fattree100g   100 Gbit/s InfiniBand EDR, the same fat-tree; 0.5 us a link, 1.1-2 us host
#                 to host (OSU latency on EDR: about 1.1 us; a switch hop about 0.1-0.2 us).
#   rail400g      400 Gbit/s NDR InfiniBand, rail-optimized: hosts are GPUs, 8 a node, GPU k of
#                 every node on rail (leaf) switch k, the rails joined by spines with full
#                 bisection; 0.5 us a link (NDR MPI latency about 1 us). The hostfile that
#                 smpi.sh writes puts rank 8·node + k on rail k, as on such clusters. NVLink
#                 inside a node is not modelled: ranks of one node talk over their NICs, so
#                 intra-node hops are pessimistic (NVLink moves 3.6 Tbit/s a way, 9x more).
#   shaped:RATE   what benchmarks/shaped_network.sh builds: every host on one bridge, its link
#                 shaped to RATE (tc units: 1gbit, 250mbit) each way; 25 us a link (veth pairs,
#                 a bridge and TCP between namespaces: about 50 us one way, measured with the
#                 same order as ping's 0.1 ms round trip here). For the validation.
# N is the number of hosts (ranks). The fat-trees need N a multiple of 16 above 16 (smaller N:
# one leaf of N hosts), rail400g a multiple of 8. Every link is full duplex (SPLITDUPLEX).
#
# SPEED is each host's compute speed in SimGrid units (default 1Gf). smpi.sh declares this
# machine's core as 1Gf (--cfg=smpi/host-speed:1Gf), so SPEED says how much faster than one
# core here a simulated host runs the code between MPI calls (encode, decode, sums): 1Gf as
# fast, 0.25Gf four times slower (8 ranks sharing 2 cores in the shaped runs).
set -eu

usage() {
  echo "usage: platform.sh ethernet1g|fattree25g|fattree100g|rail400g|shaped:RATE N [SPEED]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
kind=$1
n=$2
speed=${3:-1Gf}
case $n in ''|*[!0-9]*) usage ;; esac
[ "$n" -ge 1 ] || usage

# tc's rate units as SimGrid's (bit/s: kbit, mbit, gbit -> kbps, Mbps, Gbps).
tc_rate() {
  case $1 in
    *gbit) echo "${1%gbit}Gbps" ;;
    *mbit) echo "${1%mbit}Mbps" ;;
    *kbit) echo "${1%kbit}kbps" ;;
    *) echo "platform.sh: rate $1: give it as Ngbit, Nmbit or Nkbit" >&2; exit 2 ;;
  esac
}

header() {
  echo "<?xml version='1.0'?>"
  echo '<!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd">'
  echo '<platform version="4.1">'
  echo "<!-- benchmarks/smpi/platform.sh $kind $n $speed -->"
}

# One switch: a cluster whose backbone carries every link at once (non-blocking).
one_switch() {  # bw lat_per_link
  header
  echo '<zone id="world" routing="Full">'
  echo "  <cluster id=\"c\" prefix=\"h\" suffix=\"\" radical=\"0-$((n - 1))\" speed=\"$speed\""
  echo "           bw=\"$1\" lat=\"$2\" sharing_policy=\"SPLITDUPLEX\""
  echo "           bb_bw=\"100Tbps\" bb_lat=\"0us\" bb_sharing_policy=\"FATPIPE\"/>"
  echo '</zone>'
  echo '</platform>'
}

# Two-level fat-tree, full bisection: `per_leaf` hosts a leaf, as many spines.
fat_tree() {  # bw lat_per_link per_leaf
  local per_leaf=$3
  [ "$n" -lt "$per_leaf" ] && per_leaf=$n
  if [ $((n % per_leaf)) -ne 0 ]; then
    echo "platform.sh: $kind needs N a multiple of $per_leaf (N = $n)" >&2
    exit 2
  fi
  local leaves=$((n / per_leaf))
  header
  echo '<zone id="world" routing="Full">'
  echo "  <cluster id=\"c\" prefix=\"h\" suffix=\"\" radical=\"0-$((n - 1))\" speed=\"$speed\""
  echo "           bw=\"$1\" lat=\"$2\" sharing_policy=\"SPLITDUPLEX\" topology=\"FAT_TREE\""
  echo "           topo_parameters=\"2;$per_leaf,$leaves;1,$per_leaf;1,1\"/>"
  echo '</zone>'
  echo '</platform>'
}

case $kind in
  ethernet1g) one_switch 1Gbps 25us ;;
  fattree25g) fat_tree 25Gbps 1us 16 ;;
  fattree100g) fat_tree 100Gbps 0.5us 16 ;;
  rail400g)
    if [ $((n % 8)) -ne 0 ]; then
      echo "platform.sh: rail400g needs N a multiple of 8 (N = $n)" >&2
      exit 2
    fi
    # Leaves are the 8 rails, N/8 hosts (GPU k of each node) on each; host index k·(N/8) + node.
    n_rails=8
    per_rail=$((n / n_rails))
    header
    echo '<zone id="world" routing="Full">'
    echo "  <cluster id=\"c\" prefix=\"h\" suffix=\"\" radical=\"0-$((n - 1))\" speed=\"$speed\""
    echo "           bw=\"400Gbps\" lat=\"0.5us\" sharing_policy=\"SPLITDUPLEX\" topology=\"FAT_TREE\""
    echo "           topo_parameters=\"2;$per_rail,$n_rails;1,$per_rail;1,1\"/>"
    echo '</zone>'
    echo '</platform>'
    ;;
  shaped:*) one_switch "$(tc_rate "${kind#shaped:}")" 25us ;;
  *) usage ;;
esac

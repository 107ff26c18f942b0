#!/usr/bin/env bash
# benchmarks/shaped_network.sh — N simulated hosts on this one machine, each behind a
# link shaped to a given rate both ways, and an MPI program run across them (by default
# the all-reduce benchmark, bench_allreduce_mpi). Root only (network namespaces, tc).
#
#   sudo benchmarks/shaped_network.sh --hosts 4 --rate 1gbit             # the codec table
#   sudo benchmarks/shaped_network.sh --hosts 2 -- /bin/hostname          # any program
#   benchmarks/shaped_network.sh --loopback --hosts 4                     # unshaped, no root
#   sudo benchmarks/shaped_network.sh --cleanup-only                      # after a crash
#
# What it builds (every name starts with gcnet-, nothing else is touched):
#   * network namespaces gcnet-h0 .. gcnet-h<N-1> (the hosts) and gcnet-br (the switch:
#     a Linux bridge, so the root namespace gets no interface, address or route);
#   * per host a veth pair: gcnet-eth in the host (address 10.213.0.<K+1>/24, a subnet
#     that exists only inside these namespaces), gcnet-p<K> on the bridge;
#   * on both ends of each pair a tbf qdisc: rate R, burst max(64 KB, 1 ms of R), a queue
#     of 20 ms of R (shorter queues cost a lone TCP flow rate here: 0.77 R at 2 ms), so
#     each host sends at R and receives at R. This kernel has no netem: bandwidth can be
#     shaped, latency cannot. The CPUs carry every byte through veths, the bridge and tc:
#     on 2 cores about 2 Gbit/s in all is simulated faithfully (at 1 Gbit/s a ring
#     exchange measured 0.93-0.96 Gbit/s a host on 2 hosts and on 4).
#   * /etc/netns/gcnet-h<K>/hosts, so that the hosts' names resolve inside them, and a
#     temporary folder /tmp/gcnet.XXXXXX (hostfile).
# mpirun runs inside gcnet-h0 (hostname gcnet-h0) and starts its daemons on the others
# through benchmarks/netns_rsh.sh (`ip netns exec` + a UTS namespace with the host's
# name), with --mca btl tcp,self, --bind-to none and --mca mpi_yield_when_idle 1 (more
# ranks than cores). Before the program it checks the set-up end to end (every rank
# reports a distinct host) and measures the link with `bench_allreduce_mpi --link`.
# A trap tears everything down on exit, error, Ctrl-C or SIGTERM (ending what still runs
# in the namespaces); the script refuses to start while anything named gcnet- exists
# (--cleanup removes it first). --loopback runs the same program unshaped, as plain
# mpirun -np N over TCP on lo (or shared memory with --shm), targets shown unjudged.
#
# Open MPI's TCP transport is run with messages up to 4 MiB sent eagerly and longer ones in
# 256 KiB fragments (--openmpi-defaults: as it comes). With its defaults, a message over
# 64 KiB waits for the receiver's go-ahead (rendezvous), and that small reply queues on the
# peer's one connection behind all the data the peer is sending, in one fragment of up to
# the whole message: two ranks exchanging at once then mostly take turns, each way at half
# the rate (32 MiB both ways measured 0.48 Gbit/s each way, one way 0.96; blocking sockets
# between the same namespaces, one connection or two, 0.95 both ways), and so do MPI's own
# all-reduces and gradcomm's ring. bench_link_mpi shows the difference.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

hosts=2
rate=1gbit
build=$repo/build
cleanup_first=0
cleanup_only=0
loopback=0
verify=1
timeout_s=900
queue_ms=20
btl=tcp,self
csv=
tcp_defaults=0
cmd=()

usage() {
  cat >&2 <<EOF
usage: shaped_network.sh [--hosts N] [--rate R] [--queue-ms Q] [--build DIR] [--csv FILE]
                         [--timeout S] [--no-verify] [--cleanup] [--loopback [--shm]]
                         [--openmpi-defaults] [-- PROGRAM ARGS...]
       shaped_network.sh --cleanup-only
  --hosts N      simulated hosts, one MPI rank each (2 to 32; default 2)
  --rate R       each host's link rate, each way, in tc's units (default 1gbit)
  --queue-ms Q   each tbf's queue, in milliseconds of R (default 20; at least 2 bursts)
  --build DIR    the build folder holding benchmarks/bench_allreduce_mpi (default build/)
  --csv FILE     passed to the default program (bench_allreduce_mpi --csv FILE)
  --timeout S    limit for the program, in seconds (default 900)
  --no-verify    skip the host check and the link measurement
  --cleanup      remove leftovers of an earlier run (gcnet-*) first, then run
  --cleanup-only remove those leftovers and exit
  --loopback     no namespaces: plain mpirun -np N on this host, TCP over lo, unshaped
  --shm          with --loopback: shared memory (btl vader,self) instead of TCP
  --openmpi-defaults  Open MPI's TCP settings as they come (default: eager up to 4 MiB,
                 256 KiB fragments; see the top of this script)
  PROGRAM ARGS   what mpirun starts on every host (default: bench_allreduce_mpi)
EOF
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --hosts) [ $# -ge 2 ] || usage; hosts=$2; shift 2 ;;
    --rate) [ $# -ge 2 ] || usage; rate=$2; shift 2 ;;
    --build) [ $# -ge 2 ] || usage; build=$2; shift 2 ;;
    --csv) [ $# -ge 2 ] || usage; csv=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --queue-ms) [ $# -ge 2 ] || usage; queue_ms=$2; shift 2 ;;
    --no-verify) verify=0; shift ;;
    --cleanup) cleanup_first=1; shift ;;
    --cleanup-only) cleanup_only=1; shift ;;
    --loopback) loopback=1; shift ;;
    --shm) btl=vader,self; shift ;;
    --openmpi-defaults) tcp_defaults=1; shift ;;
    --) shift; cmd=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "shaped_network.sh: unknown option $1" >&2; usage ;;
  esac
done
case $hosts in
  ''|*[!0-9]*) echo "shaped_network.sh: --hosts takes a number" >&2; exit 2 ;;
esac
if [ "$hosts" -lt 2 ] || [ "$hosts" -gt 32 ]; then
  echo "shaped_network.sh: --hosts must be 2 to 32" >&2
  exit 2
fi

bench=$build/benchmarks/bench_allreduce_mpi
default_cmd=0
if [ ${#cmd[@]} -eq 0 ] && [ "$cleanup_only" = 0 ]; then
  if [ ! -x "$bench" ]; then
    echo "shaped_network.sh: $bench not found: build it (cmake --build $build" \
      "--target bench_allreduce_mpi) or give --build DIR or a program after --" >&2
    exit 2
  fi
  default_cmd=1
fi
# The default program, its table labelled with the set-up.
default_program() {  # label
  cmd=("$bench" --label "$1")
  [ -z "$csv" ] || cmd+=(--csv "$csv")
}

# Options every mpirun here shares: more ranks than cores, so ranks yield when idle.
mpi_common=(--allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1)
# Open MPI's TCP transport: no rendezvous below 4 MiB (and a header's room), long messages
# in 256 KiB fragments, so that a peer's replies never wait behind a whole message (top).
tcp_tuning=(--mca btl_tcp_eager_limit 4195328 --mca btl_tcp_rndv_eager_limit 4195328
  --mca btl_tcp_rdma_pipeline_frag_size 262144)
if [ "$tcp_defaults" = 1 ]; then
  tcp_tuning=()
  echo "shaped_network.sh: Open MPI's TCP settings as they come (--openmpi-defaults)" >&2
fi

# ---- loopback: no namespaces -----------------------------------------------------------
if [ "$loopback" = 1 ]; then
  net=()
  if [ "$btl" = tcp,self ]; then
    net=(--mca btl_tcp_if_include lo "${tcp_tuning[@]}")
  fi
  echo "shaped_network.sh: loopback: mpirun -np $hosts, btl $btl, unshaped" >&2
  if [ "$default_cmd" = 1 ]; then
    default_program "loopback ($btl), $hosts ranks, unshaped"
    cmd+=(--no-targets)  # the targets are for shaped links
  fi
  exec timeout --foreground "$timeout_s" mpirun "${mpi_common[@]}" -np "$hosts" --mca btl "$btl" \
    --mca oob_tcp_if_include lo "${net[@]}" "${cmd[@]}"
fi

# ---- the shaped network ----------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
  echo "shaped_network.sh: needs root (network namespaces, tc); --loopback does not" >&2
  exit 2
fi

prefix=gcnet-
subnet=10.213.0
bridge_ns=${prefix}br
host_ns() { echo "${prefix}h$1"; }
host_ip() { echo "$subnet.$(($1 + 1))"; }

leftovers() {
  ip netns list | sed -n "s/^\(${prefix}[A-Za-z0-9-]*\).*/\1/p"
  [ ! -d /etc/netns ] || find /etc/netns -mindepth 1 -maxdepth 1 -name "${prefix}*"
}

# Ends what still runs inside a namespace of ours (only this script starts anything
# there), then deletes the namespace: its veths, bridge and qdiscs go with it.
remove_ns() {
  local ns=$1 pids
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # one pid a word
    kill $pids 2>/dev/null || true
    sleep 1
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  fi
  ip netns delete "$ns" 2>/dev/null || true
}

teardown() {
  local ns
  for ns in $(ip netns list | sed -n "s/^\(${prefix}[A-Za-z0-9-]*\).*/\1/p"); do
    remove_ns "$ns"
  done
  rm -rf /etc/netns/"$prefix"*
  if [ "${made_etc_netns:-0}" = 1 ]; then rmdir /etc/netns 2>/dev/null || true; fi
  [ -z "${tmp:-}" ] || rm -rf "$tmp"
}

if [ "$cleanup_only" = 1 ] || [ "$cleanup_first" = 1 ]; then
  found=$(leftovers)
  if [ -n "$found" ]; then
    echo "shaped_network.sh: removing" "$(echo "$found" | tr "\n" " ")" >&2
    teardown
  fi
  [ "$cleanup_only" = 0 ] || exit 0
fi
found=$(leftovers)
if [ -n "$found" ]; then
  echo "shaped_network.sh: these exist already:" "$(echo "$found" | tr "\n" " ")" >&2
  echo "  another run may be using them; if not, remove them with --cleanup-only" >&2
  exit 1
fi

# From here on everything named gcnet- is ours: the trap removes it, whatever happens.
made_etc_netns=0
[ -d /etc/netns ] || made_etc_netns=1
tmp=
on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  teardown
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
tmp=$(mktemp -d /tmp/gcnet.XXXXXX)

# The rate in bits per second, from tc's notation (bit, kbit, mbit, gbit, tbit; bps = bytes).
rate_bits() {
  local v=$1 num unit
  num=$(echo "$v" | sed -n 's/^\([0-9][0-9.]*\)[A-Za-z]*$/\1/p')
  unit=$(echo "$v" | sed -n 's/^[0-9][0-9.]*\([A-Za-z]*\)$/\1/p' | tr '[:upper:]' '[:lower:]')
  [ -n "$num" ] || { echo "shaped_network.sh: bad --rate '$v'" >&2; return 1; }
  case $unit in
    ''|bit) awk -v n="$num" 'BEGIN { printf "%.0f", n }' ;;
    kbit) awk -v n="$num" 'BEGIN { printf "%.0f", n * 1e3 }' ;;
    mbit) awk -v n="$num" 'BEGIN { printf "%.0f", n * 1e6 }' ;;
    gbit) awk -v n="$num" 'BEGIN { printf "%.0f", n * 1e9 }' ;;
    tbit) awk -v n="$num" 'BEGIN { printf "%.0f", n * 1e12 }' ;;
    bps) awk -v n="$num" 'BEGIN { printf "%.0f", n * 8 }' ;;
    kbps) awk -v n="$num" 'BEGIN { printf "%.0f", n * 8e3 }' ;;
    mbps) awk -v n="$num" 'BEGIN { printf "%.0f", n * 8e6 }' ;;
    gbps) awk -v n="$num" 'BEGIN { printf "%.0f", n * 8e9 }' ;;
    *) echo "shaped_network.sh: unknown rate unit in '$v'" >&2; return 1 ;;
  esac
}
bits=$(rate_bits "$rate")
burst=$(awk -v b="$bits" 'BEGIN { x = b / 8 / 1000; if (x < 65536) x = 65536; printf "%.0f", x }')
queue=$(awk -v b="$bits" -v burst="$burst" -v ms="$queue_ms" 'BEGIN { x = b / 8 * ms / 1000; if (x < 2 * burst) x = 2 * burst; printf "%.0f", x }')

shape() {  # namespace device
  tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst "$burst" limit "$queue"
}

ip netns add "$bridge_ns"
ip -n "$bridge_ns" link set lo up
ip netns exec "$bridge_ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$bridge_ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
ip -n "$bridge_ns" link add ${prefix}br0 type bridge forward_delay 0 stp_state 0
ip -n "$bridge_ns" link set ${prefix}br0 up
: >"$tmp/hostfile"
printf '127.0.0.1 localhost\n' >"$tmp/hosts"
for ((k = 0; k < hosts; ++k)); do
  printf '%s %s\n' "$(host_ip $k)" "$(host_ns $k)" >>"$tmp/hosts"
done
for ((k = 0; k < hosts; ++k)); do
  ns=$(host_ns $k)
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
  ip -n "$bridge_ns" link add ${prefix}p$k type veth peer name ${prefix}eth netns "$ns"
  ip -n "$bridge_ns" link set ${prefix}p$k master ${prefix}br0
  ip -n "$bridge_ns" link set ${prefix}p$k up
  ip -n "$ns" addr add "$(host_ip $k)/24" dev ${prefix}eth
  ip -n "$ns" link set ${prefix}eth up
  shape "$ns" ${prefix}eth            # host → switch: what the host sends
  shape "$bridge_ns" ${prefix}p$k     # switch → host: what the host receives
  mkdir -p /etc/netns/"$ns"
  cp "$tmp/hosts" /etc/netns/"$ns"/hosts
  printf '%s slots=1\n' "$(host_ip $k)" >>"$tmp/hostfile"
done
echo "shaped_network.sh: $hosts hosts ($(host_ip 0) .. $(host_ip $((hosts - 1))))" \
  "on bridge ${prefix}br0 in namespace $bridge_ns; tbf rate $rate burst $burst B limit $queue B" \
  "on both ends of every link" >&2

# mpirun inside gcnet-h0, under that host's name; daemons on the others through the agent.
mpirun_hosts() {  # np timeout program args...
  local np=$1 limit=$2
  shift 2
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
  ip netns exec "$(host_ns 0)" unshare --uts timeout --foreground "$limit" sh -c \
    'hostname "$0" && exec "$@"' "$(host_ns 0)" \
    mpirun "${mpi_common[@]}" -np "$np" --map-by node --hostfile "$tmp/hostfile" \
    --mca plm_rsh_agent "$here/netns_rsh.sh" --mca plm_rsh_no_tree_spawn 1 \
    --mca btl tcp,self --mca btl_tcp_if_include "$subnet.0/24" "${tcp_tuning[@]}" \
    --mca oob_tcp_if_include "$subnet.0/24" "$@"
}

if [ "$verify" = 1 ]; then
  # Every rank on a host of its own, each host with its own name.
  names=$(mpirun_hosts "$hosts" 120 hostname | sort)
  distinct=$(echo "$names" | sort -u | grep -c "^${prefix}h" || true)
  echo "shaped_network.sh: ranks run on:" "$(echo "$names" | tr "\n" " ")" >&2
  if [ "$distinct" != "$hosts" ]; then
    echo "shaped_network.sh: expected $hosts distinct hosts, got $distinct" >&2
    exit 1
  fi
  if [ -x "$bench" ]; then
    link=$(mpirun_hosts "$hosts" 300 "$bench" --link --link-mib 32 | sed -n 's/^link: //p')
    echo "shaped_network.sh: link (shaped at $rate): $link" >&2
  else
    echo "shaped_network.sh: $bench not built: link rate not measured" >&2
  fi
fi

if [ "$default_cmd" = 1 ]; then
  default_program "$hosts hosts, $rate each way"
fi
# In the background, so that a signal to this script runs the trap at once (a foreground
# child would be waited for first); the trap ends what runs in the namespaces.
mpirun_hosts "$hosts" "$timeout_s" "${cmd[@]}" &
wait $!

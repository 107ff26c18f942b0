#!/bin/sh
# benchmarks/netns_rsh.sh — the "remote shell" through which OpenMPI's mpirun starts its
# daemons on the simulated hosts that shaped_network.sh builds (network namespaces
# gcnet-h0 .. gcnet-hN-1 on this one machine). Root only.
#
#   mpirun --mca plm_rsh_agent benchmarks/netns_rsh.sh --hostfile hosts ...   # as ssh
#   benchmarks/netns_rsh.sh 10.213.0.2 hostname                                # prints gcnet-h1
#
# Called as `netns_rsh.sh [options] HOST COMMAND...`, like ssh: options (words before HOST
# that start with '-') are ignored, HOST is a namespace's IPv4 address or its name
# (gcnet-hK), and COMMAND's words are joined with spaces and run by sh, as a remote
# shell would, inside that network namespace and in a UTS namespace of its own whose
# hostname is the namespace's name, so that MPI sees N hosts.
set -eu

prefix=gcnet-h
while [ $# -gt 0 ]; do
  case $1 in
    -*) shift ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "netns_rsh.sh: usage: netns_rsh.sh [options] HOST COMMAND..." >&2
  exit 255
fi
host=$1
shift

# HOST → namespace: a name of ours as it is, an address by looking it up in each of ours.
ns=
case $host in
  "$prefix"[0-9]*) ns=$host ;;
  *)
    for n in $(ip netns list | sed -n "s/^\(${prefix}[0-9][0-9]*\).*/\1/p"); do
      if ip -n "$n" -4 -o addr show | grep -q "inet $host/"; then
        ns=$n
        break
      fi
    done
    ;;
esac
if [ -z "$ns" ] || ! ip netns list | grep -q "^$ns\b"; then
  echo "netns_rsh.sh: no namespace $prefix* holds host '$host'" >&2
  exit 255
fi

# ssh hands the remote shell one string: join the words the same way.
# shellcheck disable=SC2016 # $1 and $2 are the inner shell's
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && eval "$2"' netns_rsh "$ns" "$*"

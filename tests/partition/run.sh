#!/usr/bin/env bash
# tests/partition/run.sh [--long] [scenario ...]: network partitions between three Tally replicas,
# each in its own network namespace ("pod"), driven by the official Node client from a fourth.
#
# Creates a switch namespace holding a bridge, and four pods (r0, r1, r2: replicas at
# 10.77.0.1-3:3000; c: the client at 10.77.0.100), each joined to the bridge by a veth pair.
# Faults are iptables rules inside the pods (partitions, one-way partitions, random loss with
# -m statistic; this kernel has no netem), kill -9, SIGSTOP, and clock skew (faketime). The
# scenarios and the checker are in partition.js; each prints acknowledged transfers, lost ones
# (must be 0), the longest time without service while a majority could talk to the client, and
# PASS or FAIL against the scenario's threshold. Last line: "N passed, N failed".
#
# Needs root (network namespaces). Installs iproute2, iptables and faketime from apt when absent,
# and tests/node's npm packages (the official client) when missing. Every namespace, process and
# file it made is removed on exit, however it ends.
#
#   --long                   each scenario runs longer and flaps more (by hand; ~4x CI time)
#   TALLY_BIN=path           server binary (default ./tally)
#   TALLY_PARTITION_KEEP=1   keep the work directory (data files and replica logs)
#   TALLY_PARTITION_TIMEOUT  bound on the whole run in seconds (default 600)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
TALLY=${TALLY_BIN:-$root/tally}

finish() { echo "$1 passed, $2 failed"; [ "$2" -eq 0 ] && [ "$1" -gt 0 ]; exit $?; }

if [ "$(id -u)" -ne 0 ]; then echo "tests/partition needs root (network namespaces)"; finish 0 1; fi

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v faketime >/dev/null || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    >/tmp/tally-partition-apt.log 2>&1 || { tail -5 /tmp/tally-partition-apt.log; finish 0 1; }
fi
if ! command -v node >/dev/null; then echo "node is not installed"; finish 0 1; fi
if [ ! -d "$root/tests/node/node_modules/tigerbeetle-node" ]; then
  echo "installing tests/node dependencies (npm ci)"
  (cd "$root/tests/node" && npm ci --no-audit --no-fund) || { echo "npm ci failed"; finish 0 1; }
fi
if [ ! -x "$TALLY" ]; then
  echo "building ./tally"
  make -C "$root" tally >/dev/null || { echo "make failed"; finish 0 1; }
fi

# Names unique to this run, so that two runs (or a stale one) never share a namespace.
P="tp$$"
PODS="r0 r1 r2 c"
WORK=$(mktemp -d /tmp/tally-partition.XXXXXX)
driver=""

cleanup() {
  [ -n "$driver" ] && kill -TERM "$driver" 2>/dev/null && wait "$driver" 2>/dev/null
  # Whatever still runs inside a pod (a replica, the client) ends with its namespace.
  for pod in $PODS sw; do
    for pid in $(ip netns pids "$P-$pod" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$P-$pod" 2>/dev/null
  done
  if [ -n "${TALLY_PARTITION_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

setup() {
  ip netns add "$P-sw" || return 1
  ip -n "$P-sw" link add br0 type bridge && ip -n "$P-sw" link set br0 up || return 1
  local i=0 pod ipaddr
  for pod in $PODS; do
    case $pod in c) ipaddr=10.77.0.100 ;; *) ipaddr=10.77.0.$((i + 1)) ;; esac
    i=$((i + 1))
    ip netns add "$P-$pod" &&
      ip link add "$P$pod" type veth peer name "$P$pod-s" &&
      ip link set "$P$pod" netns "$P-$pod" &&
      ip link set "$P$pod-s" netns "$P-sw" &&
      ip -n "$P-sw" link set "$P$pod-s" master br0 &&
      ip -n "$P-sw" link set "$P$pod-s" up &&
      ip -n "$P-$pod" link set "$P$pod" name eth0 &&
      ip -n "$P-$pod" addr add "$ipaddr/24" dev eth0 &&
      ip -n "$P-$pod" link set eth0 up &&
      ip -n "$P-$pod" link set lo up || return 1
  done
}
if ! setup; then echo "could not create the network namespaces"; finish 0 1; fi

TALLY_BIN="$TALLY" TALLY_PARTITION_NS="$P" TALLY_PARTITION_WORK="$WORK" \
  timeout -k 10 "${TALLY_PARTITION_TIMEOUT:-600}" node "$root/tests/partition/partition.js" "$@" &
driver=$!
wait "$driver"; rc=$?
driver=""
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "the suite did not finish within ${TALLY_PARTITION_TIMEOUT:-600} s"; finish 0 1
fi
exit $rc

#!/usr/bin/env bash
# bench/run.sh [--runs=N] [--transfers=N] [--accounts=N] [--clients=N] [--quick]
#
# Every speed claim, measured side by side in one go, printed as one table:
#   1. the ledger alone (build/release/bench/ledger_bench, if bench/ledger_bench.c exists);
#   2. `tally benchmark` against 1 replica through the C client, batches of 8189;
#   3. the same workload through the official Node client (tigerbeetle-node 0.16.66, bench/node);
#   4. 1-transfer requests (round-trip latency), C client and Node client;
#   5. 3 replicas on loopback, batches of 8189: `tally benchmark` (C client), then the Node client.
# Throughput is the median over --runs runs (default 3), each against a freshly formatted
# server; the latencies shown are those of the median run. Others may share the machine: compare
# rows of one run of this script, not numbers across runs. Every step is bounded by `timeout`,
# and servers and temporary files are removed on exit (also on Ctrl-C).
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

RUNS=3; TRANSFERS=1000000; ACCOUNTS=10000; CLIENTS=2; ROUND_TRIPS=20000
for arg in "$@"; do
  case $arg in
    --runs=*) RUNS=${arg#*=} ;;
    --transfers=*) TRANSFERS=${arg#*=} ;;
    --accounts=*) ACCOUNTS=${arg#*=} ;;
    --clients=*) CLIENTS=${arg#*=} ;;
    --quick) RUNS=1; TRANSFERS=200000; ROUND_TRIPS=2000 ;;
    *) echo "usage: bench/run.sh [--runs=N] [--transfers=N] [--accounts=N] [--clients=N] [--quick]" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d /tmp/tally-bench.XXXXXX)
export TMPDIR=$WORK # tally benchmark's own temporary server lives here too
CLUSTER_PIDS=()
cleanup() {
  stop_server >/dev/null 2>&1
  [ ${#CLUSTER_PIDS[@]} -gt 0 ] && kill -9 "${CLUSTER_PIDS[@]}" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ROWS=()
row() { ROWS+=("$(printf '| %-44s | %-12s | %13s | %9s | %9s | %9s | %s' "$@")"); }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
# VARIANT=<name> builds into build/<name>/ (optimised like release) to stay clear of other builds.
VARIANT=${VARIANT:-release}
TALLY=build/$VARIANT/tally
echo "building $TALLY..."
JOBS=$(nproc 2>/dev/null || echo 2)
if ! timeout 600 make -j"$JOBS" VARIANT="$VARIANT" "$TALLY" >"$WORK/build.log" 2>&1; then tail -20 "$WORK/build.log"; exit 1; fi

# median <numbers...>
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
field() { # field <file> <regex with one group>: the first match's group
  sed -nE "s/$2/\\1/p" "$1" | head -1
}

# --- 1. The ledger alone -------------------------------------------------------------------
if [ -f bench/ledger_bench.c ]; then
  echo "ledger micro-benchmark..."
  if timeout 600 make -j"$JOBS" VARIANT="$VARIANT" build/"$VARIANT"/bench/ledger_bench >>"$WORK/build.log" 2>&1 &&
     timeout 300 build/"$VARIANT"/bench/ledger_bench >"$WORK/ledger.out" 2>&1; then
    sed 's/^/  /' "$WORK/ledger.out"
    tps=$(field "$WORK/ledger.out" '^median: ([0-9]+) transfers\/s.*')
    row "ledger alone (ledger_bench, no network/disk)" "-" "${tps:-?}" "-" "-" "-" "one core, execute() only"
  else
    tail -5 "$WORK/ledger.out" 2>/dev/null; row "ledger alone (ledger_bench)" "-" "failed" "-" "-" "-" "see output above"
  fi
else
  row "ledger alone (ledger_bench)" "-" "n/a" "-" "-" "-" "bench/ledger_bench.c not there yet"
fi

# record_run <runs-file> <output>: notes a successful run (its transfers/s, its output file).
record_run() {
  local tps; tps=$(field "$2" '^transfers: [0-9]+ transfers in [0-9.]+ s = ([0-9]+) transfers\/s.*')
  echo "$tps $2" >>"$1"
  echo "  run: $tps transfers/s, $(grep '^transfers: batch latency' "$2" | cut -d' ' -f4-)"
}
# runs_row <runs-file> <label> <client> [rss]: the table row of the median run (with the
# server's memory when asked); sets ROW_MEDIAN.
runs_row() {
  local file=$1 label=$2 client=$3 rss=${4:-} all m mout notes
  ROW_MEDIAN=
  if [ ! -s "$file" ]; then row "$label" "$client" "failed" "-" "-" "-" ""; return; fi
  all=$(awk '{ print $1 }' "$file" | tr '\n' ' ')
  m=$(median $all)
  mout=$(awk -v m="$m" '$1 == m { print $2; exit }' "$file")
  notes="runs: ${all% }"
  if [ -n "$rss" ]; then
    local rss0 rss1
    rss0=$(field "$mout" '^server memory at start: rss=([0-9]+) KiB.*')
    rss1=$(field "$mout" '^server memory at end: rss=([0-9]+) KiB.*')
    notes="server rss $((rss0 / 1024))->$((rss1 / 1024)) MiB; $notes"
  fi
  row "$label" "$client" "$m" "$(field "$mout" '^transfers: batch latency p50=([0-9.]+) ms.*')" \
    "$(field "$mout" '^transfers: batch latency .* p99=([0-9.]+) ms.*')" \
    "$(field "$mout" '^transfers: batch latency .* p100=([0-9.]+) ms.*')" "$notes"
  ROW_MEDIAN=$m
}

# --- 2. and 4. tally benchmark: C client ---------------------------------------------------
# c_runs <key> <label> <runs> <flags...>: runs `tally benchmark` (its own server each time),
# adds a row; <key> names the files.
c_runs() {
  local key=$1 label=$2 runs=$3; shift 3
  local i out
  for i in $(seq 1 "$runs"); do
    out=$WORK/c-$key-$i.out
    if ! timeout 600 "$TALLY" benchmark "$@" >"$out" 2>&1; then
      echo "  run $i FAILED:"; tail -5 "$out" | sed 's/^/    /'; continue
    fi
    record_run "$WORK/c-$key.runs" "$out"
  done
  runs_row "$WORK/c-$key.runs" "$label" "C (tally)" rss
  [ -n "$ROW_MEDIAN" ] && C_TPS[$key]=$ROW_MEDIAN
}
declare -A C_TPS NODE_TPS
echo "tally benchmark, 1 replica, batch 8189, $CLIENTS clients, $TRANSFERS transfers, $RUNS runs..."
c_runs batch "1 replica, batch 8189" "$RUNS" --accounts="$ACCOUNTS" --transfers="$TRANSFERS" --batch=8189 --clients="$CLIENTS"
echo "tally benchmark, 1 replica, 1 transfer per request, 1 client, $ROUND_TRIPS requests..."
c_runs single "1 replica, 1 transfer/request (round trip)" 1 --accounts="$ACCOUNTS" --transfers="$ROUND_TRIPS" --batch=1 --clients=1 --query-count=10

# --- 3. and 4. The official Node client -----------------------------------------------------
node_runs() { # node_runs <key> <label> <runs> <flags...>: a fresh server per run
  local key=$1 label=$2 runs=$3; shift 3
  local i out
  for i in $(seq 1 "$runs"); do
    out=$WORK/node-$key-$i.out
    if ! start_server "$TALLY" "$WORK/node-server" >/dev/null 2>&1; then echo "  run $i: server did not start"; continue; fi
    (cd bench/node && timeout 600 node bench.js --address=127.0.0.1:"$SERVER_PORT" "$@") >"$out" 2>&1; local rc=$?
    stop_server >/dev/null 2>&1; rm -rf "$WORK/node-server"
    if [ $rc -ne 0 ] || ! grep -q '^verify: ok' "$out"; then echo "  run $i FAILED:"; tail -5 "$out" | sed 's/^/    /'; continue; fi
    record_run "$WORK/node-$key.runs" "$out"
  done
  runs_row "$WORK/node-$key.runs" "$label" "Node 0.16.66"
  [ -n "$ROW_MEDIAN" ] && NODE_TPS[$key]=$ROW_MEDIAN
}
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [ ! -d bench/node/node_modules/tigerbeetle-node ]; then
    echo "npm ci in bench/node..."
    (cd bench/node && timeout 300 npm ci --no-audit --no-fund) >"$WORK/npm.log" 2>&1 || tail -5 "$WORK/npm.log"
  fi
  echo "official Node client, same workload..."
  node_runs batch "1 replica, batch 8189" "$RUNS" --accounts="$ACCOUNTS" --transfers="$TRANSFERS" --batch=8189 --clients="$CLIENTS"
  echo "official Node client, 1 transfer per request..."
  node_runs single "1 replica, 1 transfer/request (round trip)" 1 --accounts="$ACCOUNTS" --transfers="$ROUND_TRIPS" --batch=1 --clients=1
else
  row "1 replica, batch 8189" "Node 0.16.66" "n/a" "-" "-" "-" "node/npm not installed"
fi

# --- 5. Three replicas ----------------------------------------------------------------------
# cluster_start <dir>: formats and starts three replicas on free ports, waits for a primary.
# Sets CLUSTER_ADDRESSES and CLUSTER_PIDS.
cluster_start() {
  local dir=$1 i base; base=$(port_base 3)
  mkdir -p "$dir"
  CLUSTER_ADDRESSES="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
  CLUSTER_PIDS=()
  for i in 0 1 2; do
    "$TALLY" format --cluster=0 --replica=$i --replica-count=3 "$dir/$i.tally" 2>>"$dir/log" || return 1
  done
  for i in 0 1 2; do
    "$TALLY" start --addresses="$CLUSTER_ADDRESSES" "$dir/$i.tally" 2>>"$dir/log$i" &
    CLUSTER_PIDS+=($!)
  done
  for i in $(seq 1 100); do
    grep -q "primary of view" "$dir"/log? 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
cluster_stop() {
  kill -TERM "${CLUSTER_PIDS[@]}" 2>/dev/null
  wait "${CLUSTER_PIDS[@]}" 2>/dev/null
  rm -f "$1"/*.tally
}
c3_runs() { # c3_runs <c|node> <label> <runs> <flags...>: a fresh cluster per run
  local client=$1 label=$2 runs=$3; shift 3
  local i out dir rc
  for i in $(seq 1 "$runs"); do
    dir=$WORK/c3-$client-$i; out=$WORK/c3-$client-$i.out
    if ! cluster_start "$dir"; then
      echo "  run $i: the cluster did not start"; cluster_stop "$dir"; continue
    fi
    if [ "$client" = c ]; then
      timeout 600 "$TALLY" benchmark --addresses="$CLUSTER_ADDRESSES" "$@" >"$out" 2>&1; rc=$?
    else
      (cd bench/node && timeout 600 node bench.js --address="$CLUSTER_ADDRESSES" "$@") >"$out" 2>&1; rc=$?
      grep -q '^verify: ok' "$out" || rc=1
    fi
    cluster_stop "$dir"
    if [ $rc -ne 0 ]; then echo "  run $i FAILED:"; tail -5 "$out" | sed 's/^/    /'; continue; fi
    record_run "$WORK/c3-$client.runs" "$out"
  done
  if [ "$client" = c ]; then runs_row "$WORK/c3-c.runs" "$label" "C (tally)"
  else runs_row "$WORK/c3-node.runs" "$label" "Node 0.16.66"; fi
}
echo "tally benchmark, 3 replicas on loopback, batch 8189, $CLIENTS clients, $TRANSFERS transfers, $RUNS runs..."
c3_runs c "3 replicas, batch 8189" "$RUNS" --accounts="$ACCOUNTS" --transfers="$TRANSFERS" --batch=8189 --clients="$CLIENTS"
if [ -d bench/node/node_modules/tigerbeetle-node ]; then
  echo "official Node client, 3 replicas on loopback, same workload..."
  c3_runs node "3 replicas, batch 8189" "$RUNS" --accounts="$ACCOUNTS" --transfers="$TRANSFERS" --batch=8189 --clients="$CLIENTS"
fi

echo
printf '| %-44s | %-12s | %13s | %9s | %9s | %9s | %s\n' "workload" "client" "transfers/s" "p50 ms" "p99 ms" "p100 ms" "notes"
printf '|%s|%s|%s|%s|%s|%s|%s\n' "----------------------------------------------" "--------------" "---------------" "-----------" "-----------" "-----------" "------"
printf '%s\n' "${ROWS[@]}"
key=batch
if [ -n "${C_TPS[$key]:-}" ] && [ -n "${NODE_TPS[$key]:-}" ] && [ "${NODE_TPS[$key]}" -gt 0 ]; then
  echo
  echo "C client / Node client throughput, batch 8189: $(awk -v c="${C_TPS[$key]}" -v n="${NODE_TPS[$key]}" 'BEGIN { printf "%.2f", c / n }')x"
fi
echo "(latency columns: per request; for batch 8189 a request is one batch, for 1 transfer/request it is the round trip)"

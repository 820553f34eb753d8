#!/usr/bin/env bash
# bench/io_backends.sh [--rounds=N] [--transfers=N] [--round-trips=N] [--accounts=N] [--clients=N]
#
# The two I/O backends side by side: `tally benchmark` against one replica (its own, freshly
# formatted each run) with TALLY_IO=io_uring and TALLY_IO=epoll, alternating backends within each
# round so that whatever else the machine is doing falls on both alike. Two workloads: batches of
# 8189 transfers (throughput) and 1-transfer requests from one client (round trips). Prints the
# median of the rounds per backend and the ratio epoll / io_uring. Every run is bounded by
# `timeout`; temporary files are removed on exit. Others may share the machine: compare the rows
# of one run of this script, not numbers across runs.
set -u
cd "$(dirname "$0")/.."

ROUNDS=3; TRANSFERS=1000000; ROUND_TRIPS=20000; ACCOUNTS=10000; CLIENTS=2
for arg in "$@"; do
  case $arg in
    --rounds=*) ROUNDS=${arg#*=} ;;
    --transfers=*) TRANSFERS=${arg#*=} ;;
    --round-trips=*) ROUND_TRIPS=${arg#*=} ;;
    --accounts=*) ACCOUNTS=${arg#*=} ;;
    --clients=*) CLIENTS=${arg#*=} ;;
    *) echo "usage: bench/io_backends.sh [--rounds=N] [--transfers=N] [--round-trips=N] [--accounts=N] [--clients=N]" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d /tmp/tally-io-backends.XXXXXX)
export TMPDIR=$WORK # tally benchmark's own server and data file live here
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

VARIANT=${VARIANT:-release}
TALLY=build/$VARIANT/tally
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
echo "building $TALLY..."
if ! timeout 600 make -j"$(nproc)" VARIANT="$VARIANT" "$TALLY" >"$WORK/build.log" 2>&1; then tail -20 "$WORK/build.log"; exit 1; fi
if ! TALLY_IO=io_uring "$TALLY" version >/dev/null 2>&1 ||
   ! TALLY_IO=io_uring timeout 30 "$TALLY" benchmark --accounts=10 --transfers=10 >"$WORK/probe.out" 2>&1; then
  echo "io_uring is not available here: nothing to compare"; tail -5 "$WORK/probe.out"; exit 1
fi

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
field() { sed -nE "s/$2/\\1/p" "$1" | head -1; }

# run <backend> <workload> <round> <benchmark flags...>: one run; appends "tps p50 p99" to
# $WORK/<backend>-<workload>.runs.
run() {
  local backend=$1 workload=$2 round=$3; shift 3
  local out=$WORK/$backend-$workload-$round.out
  if ! TALLY_IO=$backend timeout 600 "$TALLY" benchmark "$@" >"$out" 2>&1 || ! grep -q '^verify: ok' "$out"; then
    echo "  $backend $workload round $round FAILED:"; tail -5 "$out" | sed 's/^/    /'; return
  fi
  local tps p50 p99
  tps=$(field "$out" '^transfers: [0-9]+ transfers in [0-9.]+ s = ([0-9]+) transfers\/s.*')
  p50=$(field "$out" '^transfers: batch latency p50=([0-9.]+) ms.*')
  p99=$(field "$out" '^transfers: batch latency .* p99=([0-9.]+) ms.*')
  echo "$tps $p50 $p99" >>"$WORK/$backend-$workload.runs"
  printf '  round %s %-8s %-6s %9s transfers/s p50=%s ms p99=%s ms\n' "$round" "$backend" "$workload" "$tps" "$p50" "$p99"
}

for round in $(seq 1 "$ROUNDS"); do
  # Alternate which backend goes first, so neither always runs on a warmer machine.
  if [ $((round % 2)) -eq 1 ]; then order="io_uring epoll"; else order="epoll io_uring"; fi
  for backend in $order; do
    run "$backend" batch "$round" --accounts="$ACCOUNTS" --transfers="$TRANSFERS" --batch=8189 --clients="$CLIENTS" --query-count=10
    run "$backend" single "$round" --accounts="$ACCOUNTS" --transfers="$ROUND_TRIPS" --batch=1 --clients=1 --query-count=10
  done
done

# column <backend> <workload> <1|2|3>: the median of that column over the rounds
column() { [ -s "$WORK/$1-$2.runs" ] && median $(awk -v c="$3" '{ print $c }' "$WORK/$1-$2.runs") || echo "-"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "medians of $ROUNDS rounds, 1 replica, tally benchmark (C client):"
echo
printf '| %-46s | %12s | %12s | %15s |\n' "workload" "io_uring" "epoll" "epoll / io_uring"
printf '| %-46s | %12s | %12s | %15s |\n' "---" "---:" "---:" "---:"
for workload in batch single; do
  if [ $workload = batch ]; then label="batches of 8189, $CLIENTS clients"; unit=" transfers/s"; else label="1 transfer per request, 1 client"; unit=" requests/s"; fi
  u=$(column io_uring $workload 1); e=$(column epoll $workload 1)
  printf '| %-46s | %12s | %12s | %15s |\n' "$label$unit" "$u" "$e" "$(ratio "$e" "$u")"
  u=$(column io_uring $workload 2); e=$(column epoll $workload 2)
  printf '| %-46s | %12s | %12s | %15s |\n' "  p50 latency ms" "$u" "$e" "$(ratio "$e" "$u")"
  u=$(column io_uring $workload 3); e=$(column epoll $workload 3)
  printf '| %-46s | %12s | %12s | %15s |\n' "  p99 latency ms" "$u" "$e" "$(ratio "$e" "$u")"
done

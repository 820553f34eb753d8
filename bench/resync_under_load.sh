#!/usr/bin/env bash
# bench/resync_under_load.sh: how long a re-formatted replica takes to rejoin a loaded cluster
# while clients keep writing (the seed deployment's "delete the PVC" advice, under traffic).
#
# Starts three replicas on loopback, preloads transfers with `tally benchmark` (batches of 8189),
# starts a steady load of small requests, kills replica 2, re-formats its data file, restarts it,
# and reports how many state syncs it needed and when it installed its first and last one.
# Bounded: the load runs LOAD_SECONDS and everything is stopped at the end.
#
#   PRELOAD=500000 LOAD_SECONDS=40 LOAD_CLIENTS=4 LOAD_BATCH=10 bench/resync_under_load.sh
#   (LOAD_CLIENTS=0: no load, the time to copy and install alone; RESYNC_LOG=<file>: keep the
#   re-formatted replica's log there)
set -u
cd "$(dirname "$0")/.."
PRELOAD=${PRELOAD:-500000}
LOAD_SECONDS=${LOAD_SECONDS:-40}
LOAD_CLIENTS=${LOAD_CLIENTS:-4}
LOAD_BATCH=${LOAD_BATCH:-10}
PRELOAD_BATCH=${PRELOAD_BATCH:-8189}
PORT=${PORT:-4001}
DIR=$(mktemp -d /tmp/tally-resync.XXXXXX)
ADDRESSES="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
start_replica() { # start_replica <index> <log>
  ./tally start --addresses="$ADDRESSES" "$DIR/0_$1.tally" >"$2" 2>&1 &
  PIDS[$1]=$!
}

make -s tally >/dev/null || exit 1
for i in 0 1 2; do ./tally format --cluster=0 --replica=$i --replica-count=3 "$DIR/0_$i.tally" 2>/dev/null; done
for i in 0 1 2; do start_replica $i "$DIR/replica-$i.log"; done
sleep 2
timeout 300 ./tally benchmark --addresses="$ADDRESSES" --accounts=10000 --transfers="$PRELOAD" \
  --batch="$PRELOAD_BATCH" --clients=2 2>&1 | grep -E '^transfers:|^error' || { echo "preload failed"; exit 1; }

if [ "$LOAD_CLIENTS" -gt 0 ]; then
  timeout "$LOAD_SECONDS" ./tally benchmark --addresses="$ADDRESSES" --accounts=100 \
    --transfers=1000000000 --batch="$LOAD_BATCH" --clients="$LOAD_CLIENTS" >"$DIR/load.out" 2>&1 &
else # no load: the time to copy and install alone
  (sleep "$LOAD_SECONDS"; echo "requests=0") >"$DIR/load.out" &
fi
load_pid=$!
sleep 3
kill -9 "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null
rm -f "$DIR/0_2.tally"
./tally format --cluster=0 --replica=2 --replica-count=3 "$DIR/0_2.tally" 2>/dev/null
restarted=$(date +%s.%N)
start_replica 2 "$DIR/replica-2-again.log"
wait "$load_pid"
load_ended=$(date +%s.%N)
sleep 2

log="$DIR/replica-2-again.log"
seconds_between() { # seconds from $1 to $2 (awk: bc is not on every machine)
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'
}
since() { # seconds from the restart to the time stamp of a log line
  local t; t=$(cut -c1-23 <<<"$1" | sed 's/T/ /'); seconds_between "$restarted" "$(date -ud "$t" +%s.%N)"
}
first=$(grep -m1 'state sync installed' "$log"); last=$(grep 'state sync installed' "$log" | tail -1)
echo "load: $(grep -o 'requests=[0-9]*' "$DIR/load.out") in ${LOAD_SECONDS} s, $LOAD_CLIENTS clients, $LOAD_BATCH transfers per request"
echo "re-formatted replica: $(grep -c 'state sync started' "$log") state syncs"
started=$(grep -m1 'state sync started' "$log")
[ -n "$started" ] && echo "  first copy started $(since "$started") s after its restart"
[ -n "$first" ] && echo "  first installed $(since "$first") s after its restart: ${first##*info  }"
[ -n "$last" ] && echo "  last installed $(since "$last") s after its restart: ${last##*info  }"
echo "  the load ended $(seconds_between "$restarted" "$load_ended") s after its restart"
copied=$(grep -o 'state sync installed.* bytes_copied=[0-9]*' "$log" | sed 's/.*bytes_copied=//' |
  awk '{ s += $1 } END { printf "%.1f", s / 1e6 }')
echo "  bytes copied by its installed syncs: ${copied} MB"
caught=$(grep -m1 'caught up with the cluster' "$log")
[ -n "$caught" ] && echo "  first caught up $(since "$caught") s after its restart: ${caught##*info  }"
for i in 0 1 2; do ./tally inspect --live "$DIR/0_$i.tally" 2>/dev/null | grep -m1 '(in use)' | sed "s/^/  replica $i: /"; done
[ -n "${RESYNC_LOG:-}" ] && cp "$log" "$RESYNC_LOG" && echo "  its log: $RESYNC_LOG"

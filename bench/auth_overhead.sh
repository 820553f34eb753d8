#!/usr/bin/env bash
# bench/auth_overhead.sh: what replica authentication (--cluster-key-file) costs, measured side
# by side in one run: the same three-replica cluster on loopback, without and with a cluster key,
# loaded by the same `tally benchmark` run (batches of 8189, and one transfer per request).
# Alternates the two modes ROUNDS times and prints each run and the ratio of the medians.
#
#   TRANSFERS=1000000 ROUNDS=3 bench/auth_overhead.sh
set -u
cd "$(dirname "$0")/.."
TRANSFERS=${TRANSFERS:-1000000}
SMALL=${SMALL:-20000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-4301}
DIR=$(mktemp -d /tmp/tally-auth.XXXXXX)
ADDRESSES="127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
make -s tally >/dev/null || exit 1
./tally keygen "$DIR/key"

run_mode() { # run_mode <none|key>: prints "<batched transfers/s> <small requests/s>"
  local flags=() i
  [ "$1" = key ] && flags=(--cluster-key-file="$DIR/key")
  rm -f "$DIR"/0_*.tally
  for i in 0 1 2; do ./tally format --cluster=0 --replica=$i --replica-count=3 "$DIR/0_$i.tally" 2>/dev/null; done
  for i in 0 1 2; do
    ./tally start --addresses="$ADDRESSES" "${flags[@]}" "$DIR/0_$i.tally" >"$DIR/replica-$i.log" 2>&1 &
    PIDS[$i]=$!
  done
  sleep 2
  local big small
  big=$(timeout 300 ./tally benchmark --addresses="$ADDRESSES" --transfers="$TRANSFERS" \
        --query-count=0 2>&1 | awk '/^transfers: .* transfers\/s/ { for (k = 1; k <= NF; k++) if ($k == "=") print $(k + 1) }' | head -1)
  small=$(timeout 300 ./tally benchmark --addresses="$ADDRESSES" --transfers="$SMALL" --batch=1 \
          --clients=1 --query-count=0 2>&1 | awk '/^transfers: .* transfers\/s/ { for (k = 1; k <= NF; k++) if ($k == "=") print $(k + 1) }' | head -1)
  for i in 0 1 2; do kill "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done
  PIDS=()
  echo "${big:-0} ${small:-0}"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: >"$DIR/none"; : >"$DIR/key.txt"
for round in $(seq 1 "$ROUNDS"); do
  for mode in none key; do
    result=$(run_mode $mode)
    echo "round=$round mode=$mode batched_transfers_per_s=${result% *} single_requests_per_s=${result#* }"
    if [ $mode = none ]; then echo "$result" >>"$DIR/none"; else echo "$result" >>"$DIR/key.txt"; fi
  done
done
nb=$(cut -d' ' -f1 "$DIR/none" | median); kb=$(cut -d' ' -f1 "$DIR/key.txt" | median)
ns=$(cut -d' ' -f2 "$DIR/none" | median); ks=$(cut -d' ' -f2 "$DIR/key.txt" | median)
echo "median batched: no key $nb, key $kb transfers/s, ratio $(awk -v a="$kb" -v b="$nb" 'BEGIN { printf "%.2f", a / b }')"
echo "median 1 transfer/request: no key $ns, key $ks requests/s, ratio $(awk -v a="$ks" -v b="$ns" 'BEGIN { printf "%.2f", a / b }')"

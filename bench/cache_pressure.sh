#!/usr/bin/env bash
# bench/cache_pressure.sh [--cache=SIZE] [--transfers=N] [--slice=N] [--id-order=random|sequential]
#                         [--tally=PATH]
#
# Why it exists: memory is fixed by --cache while the data grows, so a replica eventually holds
# more index blocks than its block cache (docs/storage.md, "Filter pages"): with random ids the
# id maps' filters alone need about 1.8 MiB of cache per million transfers. This loads one fresh
# replica with --cache=SIZE continuously (no restarts, the page cache kept), in slices, and
# prints per slice: the create rate, the grid blocks and 4 KiB filter pages read past the block
# cache per transfer (metrics), and RSS. A small cache shows at tens of millions what the
# default 512 MiB meets past 170 M random transfers. Stops early when the disk has under 12 GiB
# free; the server and its files are removed at exit.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

CACHE=32MiB; TRANSFERS=32000000; SLICE=4000000; ORDER=random; TALLY=build/release/tally
for arg in "$@"; do
  case $arg in
    --cache=*) CACHE=${arg#*=} ;;
    --transfers=*) TRANSFERS=${arg#*=} ;;
    --slice=*) SLICE=${arg#*=} ;;
    --id-order=*) ORDER=${arg#*=} ;;
    --tally=*) TALLY=${arg#*=} ;;
    *) echo "usage: bench/cache_pressure.sh [--cache=SIZE] [--transfers=N] [--slice=N] [--id-order=random|sequential] [--tally=PATH]" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d /tmp/tally-cache-pressure.XXXXXX)
cleanup() { stop_server >/dev/null 2>&1; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

CLIENT=build/release/bench/scale_client
timeout 600 make -j"$(nproc)" build/release/tally "$CLIENT" >"$WORK/build.log" 2>&1 ||
  { tail -20 "$WORK/build.log"; exit 1; }
MPORT=$(port_base) || exit 1
start_server "$TALLY" "$WORK" --cache="$CACHE" --metrics-address="127.0.0.1:$MPORT" || exit 1
ADDR="127.0.0.1:$SERVER_PORT"
"$CLIENT" ready --addresses="$ADDR" --timeout-ms=60000 >/dev/null || exit 1
metric() { curl -s -m 5 "http://127.0.0.1:$MPORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

echo "one replica, --cache=$CACHE, $ORDER ids, loaded continuously in slices of $SLICE ($TALLY)"
echo
echo "| stored | create/s | blocks read per transfer | filter pages read per transfer | RSS MiB |"
echo "| ---: | ---: | ---: | ---: | ---: |"
first=0; flags=--create-accounts
blocks_before=0; pages_before=0
while [ "$first" -lt "$TRANSFERS" ]; do
  if [ "$(df -k --output=avail "$WORK" | tail -1)" -lt $((12 * 1024 * 1024)) ]; then
    echo; echo "stopped: under 12 GiB free on the data file's disk"; break
  fi
  count=$((TRANSFERS - first < SLICE ? TRANSFERS - first : SLICE))
  if ! "$CLIENT" load --addresses="$ADDR" --first="$first" --count="$count" $flags \
    --id-order="$ORDER" --deadline-ms=3600000 >"$WORK/load.out" 2>&1; then
    echo; echo "load failed: $(tail -2 "$WORK/load.out")"; exit 1
  fi
  rate=$(grep -o 'transfers_per_second=[0-9]*' "$WORK/load.out" | cut -d= -f2)
  blocks=$(metric tally_grid_blocks_read_total); pages=$(metric tally_grid_filter_pages_read_total)
  rss=$(( $(awk '/VmRSS/ { print $2 }' "/proc/$SERVER_PID/status") / 1024 ))
  first=$((first + count)); flags=
  awk -v s="$first" -v r="$rate" -v b=$((blocks - blocks_before)) -v p=$((pages - pages_before)) \
    -v c="$count" -v m="$rss" 'BEGIN { printf "| %d | %d | %.3f | %.3f | %d |\n", s, r, b / c, p / c, m }'
  blocks_before=$blocks; pages_before=$pages
done

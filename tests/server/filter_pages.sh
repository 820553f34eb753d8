#!/usr/bin/env bash
# tests/server/filter_pages.sh <tally> <scale_client>: new transfer ids checked against key
# filters whose index blocks do not fit the block cache (docs/storage.md, "Filter pages").
# A replica with the smallest cache (--cache=4MiB) takes 1.5 M transfers with random ids; the
# id map's index blocks (about 2.7 MiB) then share 3 MiB of blocks with every other tree's, so
# most new ids are ruled out of a table by reading 4 KiB pages of its filter. Checked: the
# pages were read (metrics), every one of 12 requests re-sending stored ids across the whole
# range is refused with `exists` for all 8189 (a page that wrongly ruled an id out would let it
# be created twice), and new ids after them are still created.
set -u
TALLY=${1:?usage: tests/server/filter_pages.sh <tally> <scale_client>}
CLIENT=${2:?usage: tests/server/filter_pages.sh <tally> <scale_client>}
cd "$(dirname "$0")/../.."
. tests/lib.sh
PASSED=0; FAILED=0
ok() { echo "ok $1"; PASSED=$((PASSED + 1)); }
bad() { echo "FAIL $1"; FAILED=$((FAILED + 1)); }
WORK=$(mktemp -d /tmp/tally-filter-pages.XXXXXX)
trap 'stop_server >/dev/null 2>&1; rm -rf "$WORK"' EXIT
STORED=1500000
BATCH=8189

metric() { # metric <name>: its value in a scrape, or nothing
  curl -s -m 5 "http://127.0.0.1:$MPORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'
}

MPORT=$(port_base) || { echo "no free port"; echo "0 passed, 1 failed"; exit 1; }
start_server "$TALLY" "$WORK" --cache=4MiB --metrics-address="127.0.0.1:$MPORT" ||
  { echo "0 passed, 1 failed"; exit 1; }
ADDR="127.0.0.1:$SERVER_PORT"
"$CLIENT" ready --addresses="$ADDR" --timeout-ms=30000 >/dev/null ||
  { bad "the replica answers"; echo "$PASSED passed, $FAILED failed"; exit 1; }

if "$CLIENT" load --addresses="$ADDR" --first=0 --count=$STORED --create-accounts \
  --id-order=random --seed=11 --deadline-ms=300000 >"$WORK/load.out" 2>&1; then
  ok "$STORED transfers with random ids created ($(grep -o 'transfers_per_second=[0-9]*' "$WORK/load.out"))"
else
  bad "$STORED transfers with random ids created: $(tail -2 "$WORK/load.out")"
fi

pages=$(metric tally_grid_filter_pages_read_total)
if [ -n "$pages" ] && [ "$pages" -gt 0 ]; then
  ok "filter pages read past the cache: $pages (blocks read: $(metric tally_grid_blocks_read_total))"
else
  bad "filter pages read past the cache: '${pages}' (the test no longer reaches them)"
fi

# Stored ids again, 12 requests spread over the whole range: each is refused whole.
refused=0
for k in $(seq 0 11); do
  first=$(( k * (STORED - BATCH) / 11 ))
  "$CLIENT" load --addresses="$ADDR" --first=$first --count=$BATCH --id-order=random --seed=11 \
    --deadline-ms=60000 >"$WORK/again-$k.out" 2>&1
  if grep -q "request 0: $BATCH events rejected, the first index=0 result=46" "$WORK/again-$k.out"; then
    refused=$((refused + 1))
  else
    echo "  ids $first..$((first + BATCH - 1)) again: $(tail -1 "$WORK/again-$k.out")"
  fi
done
if [ $refused -eq 12 ]; then
  ok "12 x $BATCH stored ids sent again: every one refused with exists"
else
  bad "stored ids sent again: $refused of 12 requests refused whole with exists"
fi

if "$CLIENT" load --addresses="$ADDR" --first=$STORED --count=200000 --id-order=random \
  --seed=11 --deadline-ms=120000 >"$WORK/more.out" 2>&1; then
  ok "200000 new ids after them created"
else
  bad "200000 new ids after them created: $(tail -2 "$WORK/more.out")"
fi

if stop_server; then ok "the replica stopped cleanly"; else bad "the replica stopped cleanly"; fi
echo "$PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]

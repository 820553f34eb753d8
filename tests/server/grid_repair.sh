#!/usr/bin/env bash
# tests/server/grid_repair.sh <tally> <tool dir>: a damaged grid block on one replica of a
# 3-replica cluster is repaired from its peers (docs/storage.md, "Damaged blocks").
#
#   1. Three replicas (--development) under load through replica 0; then replica 2 is killed
#      (kill -9) and one byte of a table data block of its checkpoint is flipped: the block of
#      the account id tree, which executing the journal's transfers after a restart reads.
#   2. Replica 2 is started again. It must meet the damaged block, say so, restart itself in
#      place (the same pid), start without state and copy a peer's checkpoint (state sync), but
#      only the blocks it lacks (at least the damaged one, fewer than the checkpoint has), and
#      then serve: a load through its own port is acknowledged; its /metrics counts the repair
#      (tally_grid_repairs_total 1, kept across the restart), a healthy replica's says 0.
#   3. Stopped, its file must be whole again (`tally inspect` finds no damage) and all three
#      files must give one digest; every acknowledged transfer is found.
# Bounded: every wait has a limit; the script kills what it started. Last line: "N passed, N
# failed".
set -u
tally=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tools=$(cd "$2" && pwd)
dir=$(mktemp -d /tmp/tally-grid-repair.XXXXXX)
pids=()
cleanup() {
  local p; for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
. "$(dirname "$0")/checks.sh"

base=$(port_base 13)
addresses="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
declare -a rpid
start_replica() { # start_replica <index>
  "$tally" start --addresses=$addresses --metrics-address=127.0.0.1:$((base + 10 + $1)) \
    "$dir/0_$1.tally" >>"$dir/replica$1.log" 2>&1 &
  rpid[$1]=$!; pids+=($!)
}
for i in 0 1 2; do
  "$tally" format --cluster=0 --replica=$i --replica-count=3 --development "$dir/0_$i.tally" 2>/dev/null ||
    { fail "format"; finish; }
done
for i in 0 1 2; do start_replica $i; done
# A new cluster elects its first primary once all three are up; a request before that is lost.
for _ in $(seq 1 100); do
  grep -q "primary of view" "$dir"/replica?.log 2>/dev/null && break; sleep 0.1
done

# 1. Load (the first run waits for the cluster's first primary), then replica 2 goes.
: >"$dir/acknowledged"
load() { # load <port> <requests> <first id>
  timeout 120 "$tools/load" "$1" "$2" "$3" >"$dir/load.out" 2>&1; local rc=$?
  echo "$3 $(sed -n 's/^acknowledged=\([0-9]*\).*/\1/p' "$dir/load.out")" >>"$dir/acknowledged"
  return $rc
}
if load $base 300 1000000; then pass "300 requests acknowledged by the cluster"
else fail "first load: $(tail -1 "$dir/load.out")"; finish; fi
kill -9 ${rpid[2]}; wait ${rpid[2]} 2>/dev/null
info=$("$tally" inspect --json "$dir/0_2.tally")
checkpoint_op=$(json "$info" checkpoint_op); grid=$(json "$info" grid_offset)
block=$(grep -o '{"tree":1,[^}]*}' <<<"$info" | grep -o '"first_data_block":[0-9]*' | cut -d: -f2)
if [ -n "$block" ] && [ "${checkpoint_op:-0}" -gt 0 ]; then
  pass "replica 2 killed at checkpoint op $checkpoint_op; damaging its grid block $block"
else fail "no checkpoint or no account id table on replica 2: $info"; finish; fi
flip "$dir/0_2.tally" $(( grid + (block - 1) * 65536 + 100 ))
"$tally" inspect "$dir/0_2.tally" >"$dir/inspect-damaged.out" 2>&1; rc=$?
grep -q "grid block $block .*is damaged.*copies a peer's checkpoint (grid repair)" "$dir/inspect-damaged.out" &&
  [ $rc -eq 3 ] && pass "inspect names the damaged block, says it is repaired from a peer, exit 3" ||
  { fail "inspect on the damaged file: exit $rc"; cat "$dir/inspect-damaged.out"; }

# 2. The restart: the damage is met, repaired from a peer, and the replica serves.
pid_before=
start_replica 2; pid_before=${rpid[2]}
repaired=0
for _ in $(seq 1 300); do
  grep -q "state sync installed" "$dir/replica2.log" && { repaired=1; break; }
  kill -0 ${rpid[2]} 2>/dev/null || break
  sleep 0.1
done
grep -qE "the state cannot be read: .*grid block $block \(table data\): checksum mismatch" "$dir/replica2.log" &&
  pass "replica 2 names the damaged block: $(grep -o "grid block $block .*" "$dir/replica2.log" | head -1)" ||
  fail "replica 2 does not name the damaged block"
grep -q "grid repair: restarting" "$dir/replica2.log" && grep -q "checkpoint is not trusted" "$dir/replica2.log" &&
  grep -q "starting without state" "$dir/replica2.log" && pass "replica 2 restarted itself without state" ||
  fail "replica 2 did not restart itself without state"
if [ $repaired -eq 1 ] && kill -0 $pid_before 2>/dev/null; then
  pass "replica 2 copied a peer's checkpoint in the same process: $(grep -o "state sync installed.*" "$dir/replica2.log" | head -1)"
else fail "replica 2 was not repaired within 30 s (alive: $(kill -0 $pid_before 2>/dev/null && echo yes || echo no))"; tail -20 "$dir/replica2.log"; fi
# Only what it lacked was copied: the damaged block (and what changed since its checkpoint).
installed=$(grep -o "state sync installed.*" "$dir/replica2.log" | head -1)
blocks=$(sed -n 's/.* blocks=\([0-9]*\).*/\1/p' <<<"$installed")
copied=$(sed -n 's/.*blocks_copied=\([0-9]*\).*/\1/p' <<<"$installed")
[ -n "$copied" ] && [ "$copied" -ge 1 ] && [ "$copied" -lt "${blocks:-0}" ] &&
  pass "replica 2 copied $copied of the checkpoint's $blocks blocks, finding the rest whole here" ||
  fail "replica 2's copy: '$installed' (expected 1 <= blocks_copied < blocks)"
if load $((base + 2)) 100 2000000; then pass "a load through replica 2's port is acknowledged"
else fail "load through replica 2: $(tail -1 "$dir/load.out")"; fi
repairs=$(curl -s -m 2 "http://127.0.0.1:$((base + 12))/metrics" | sed -n 's/^tally_grid_repairs_total \([0-9]*\)$/\1/p')
[ "$repairs" = 1 ] && pass "replica 2's /metrics: tally_grid_repairs_total 1" ||
  fail "replica 2's tally_grid_repairs_total is '${repairs}', expected 1"
repairs=$(curl -s -m 2 "http://127.0.0.1:$((base + 10))/metrics" | sed -n 's/^tally_grid_repairs_total \([0-9]*\)$/\1/p')
[ "$repairs" = 0 ] && pass "replica 0's /metrics: tally_grid_repairs_total 0" ||
  fail "replica 0's tally_grid_repairs_total is '${repairs}', expected 0"
if load $base 200 3000000; then pass "the cluster goes on (200 more requests)"
else fail "load after the repair: $(tail -1 "$dir/load.out")"; fi
sleep 2 # replica 2 catches up with the last commits

# 3. Whole again, and identical.
for i in 0 1 2; do kill -TERM ${rpid[$i]}; done
for i in 0 1 2; do timeout 20 tail --pid=${rpid[$i]} -f /dev/null; done
"$tally" inspect "$dir/0_2.tally" >"$dir/inspect-after.out" 2>&1; rc=$?
[ $rc -eq 0 ] && pass "replica 2's file has no damage after the repair" ||
  { fail "inspect after the repair: exit $rc"; cat "$dir/inspect-after.out"; }
commit=$(for i in 0 1 2; do "$tally" inspect --json "$dir/0_$i.tally" 2>/dev/null |
  sed -n 's/.*"checkpoint_op":\([0-9]*\).*/\1/p' | head -1; done | sort -n | tail -1)
for i in 0 1 2; do echo "replica $i: $("$tools/digest" "$dir/0_$i.tally" "$commit" 2>&1)"; done >"$dir/digests"
digests=$(sed 's/^replica [0-9]: //' "$dir/digests" | sort -u | wc -l)
if [ -n "$commit" ] && [ "$digests" -eq 1 ]; then pass "the three data files give one digest at op $commit"
else fail "data files differ at op $commit ($digests digests)"; cat "$dir/digests"; fi
for i in 0 1 2; do : >"$dir/replica$i.log"; start_replica $i; done
for _ in $(seq 1 100); do
  grep -q "primary of view" "$dir"/replica?.log 2>/dev/null && break; sleep 0.1
done
missing=0
while read -r id n; do
  [ -n "$n" ] && [ "$n" -gt 0 ] || continue
  timeout 60 "$tools/check_transfers" $base "$id" $((n * 10)) >"$dir/check.out" 2>&1 || { missing=1; cat "$dir/check.out"; }
done <"$dir/acknowledged"
[ $missing -eq 0 ] && pass "every acknowledged transfer is found" || fail "acknowledged transfers missing"
finish

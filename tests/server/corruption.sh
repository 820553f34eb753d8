#!/usr/bin/env bash
# tests/server/corruption.sh <tally> <load tool>: torn and corrupt writes in every zone of a
# data file, and what `start` must do about each (docs: README "Data file"):
#   WAL head damaged            -> truncated with a log line naming the op; serves
#   an older WAL entry damaged  -> refuses to start, names the op and the zone, file untouched
#   one superblock copy damaged -> starts from another copy
#   all superblock copies       -> refuses to start, file untouched
#   checkpoint root damaged     -> refuses to start, names the block and zone, file untouched
#   a table block damaged       -> start opens the checkpoint (it reads root, manifest and free
#                                  set only) but stops on the block at the first read (the
#                                  journal's replay reads it), naming it; file untouched
# and, before each start, that `tally inspect` says so: the damage it finds and its exit status
# (0 intact, 3 damaged but start succeeds, 1 start fails); `inspect --verify` on the intact file.
set -u
ulimit -c 0 2>/dev/null # a replica that stops on a damaged block aborts: no core files
tally=$1; load=$2
dir=$(mktemp -d /tmp/tally-corrupt.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill -9 $pid 2>/dev/null; rm -rf "$dir"' EXIT
. "$(dirname "$0")/checks.sh"
ok() { passed=$((passed + 1)); } # counts quietly: its failures say enough
port=$(port_base)

start_bg() { # start_bg <file>: starts, waits for "listening on" or exit
  : >"$dir/log"
  "$tally" start --addresses=127.0.0.1:$port "$1" >>"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$dir/log" && return 0
    kill -0 $pid 2>/dev/null || { wait $pid; pid=; return 1; }
    sleep 0.1
  done
  return 1
}
# inspect_says <what> <file> <exit status> <pattern>: inspect's verdict and damage line.
inspect_says() {
  "$tally" inspect "$2" >"$dir/inspect.out" 2>&1; local rc=$?
  [ $rc -eq "$3" ] && ok || { fail "$1: inspect exit $rc, expected $3"; cat "$dir/inspect.out"; }
  grep -qE "$4" "$dir/inspect.out" && ok || { fail "$1: inspect does not say /$4/"; cat "$dir/inspect.out"; }
}
stop_kill() { kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; pid=; }

# A file with a checkpoint and journal entries after it: 300 requests cross op 256.
"$tally" format --cluster=0 --replica=0 --replica-count=1 "$dir/base.tally" 2>/dev/null
start_bg "$dir/base.tally" || { echo "cannot start"; cat "$dir/log"; exit 1; }
"$load" $port 300 1 >"$dir/load.out" || fail "load"
stop_kill
info=$("$tally" inspect --json "$dir/base.tally")
op_max=$(json "$info" op_max); checkpoint_op=$(json "$info" checkpoint_op)
headers=$(json "$info" wal_headers_offset); prepares=$(json "$info" wal_prepares_offset)
grid=$(json "$info" grid_offset); root=$(json "$info" root_block)
# The account id tree's (tree 1) first data block: replaying the journal's transfers reads it.
ids_block=$(grep -o '{"tree":1,[^}]*}' <<<"$info" | grep -o '"first_data_block":[0-9]*' | cut -d: -f2)
[ "$checkpoint_op" -ge 256 ] && [ "$op_max" -gt "$checkpoint_op" ] && ok || fail "setup: checkpoint_op=$checkpoint_op op_max=$op_max"
[ -n "$root" ] && [ "$root" -gt 0 ] && [ -n "$ids_block" ] && [ "$ids_block" -gt 0 ] && ok || fail "setup: root=$root ids_block=$ids_block"
inspect_says "intact" "$dir/base.tally" 0 "^verdict: intact"
"$tally" inspect --verify "$dir/base.tally" >"$dir/verify.out" 2>&1 && grep -q "^verify: ok at checkpoint op $checkpoint_op: 16 accounts" "$dir/verify.out" &&
  ok || { fail "inspect --verify"; cat "$dir/verify.out"; }

# 1. The head's prepare body torn: truncated, logged, serves; commit = head - 1.
cp "$dir/base.tally" "$dir/f.tally"
flip "$dir/f.tally" $(( prepares + (op_max % 1024) * 1048576 + 300 ))
inspect_says "head" "$dir/f.tally" 3 "^damage: journal op $op_max \(zone wal prepares\) is damaged at the head"
if start_bg "$dir/f.tally"; then
  grep -q "journal head truncated.*op=$op_max" "$dir/log" && ok || fail "head: no truncation line"
  grep -q "recovered .*commit=$(( op_max - 1 ))" "$dir/log" && ok || fail "head: wrong commit"
  "$load" $port 5 100000 >/dev/null && ok || fail "head: does not serve after truncation"
  stop_kill
else fail "head: did not start"; cat "$dir/log"; fi

# 1b. The head's header torn instead.
cp "$dir/base.tally" "$dir/f.tally"
flip "$dir/f.tally" $(( headers + (op_max % 1024) * 256 + 100 ))
inspect_says "head header" "$dir/f.tally" 3 "^damage: journal slot $(( op_max % 1024 )) has a damaged header outside"
if start_bg "$dir/f.tally"; then
  grep -q "recovered .*commit=$(( op_max - 1 ))" "$dir/log" && ok || fail "head header: wrong commit"
  stop_kill
else fail "head header: did not start"; fi

# 2. An older journal entry (after the checkpoint, before the head): refuse, name op and zone.
for zone in headers prepares; do
  cp "$dir/base.tally" "$dir/f.tally"
  victim=$(( op_max - 5 ))
  if [ $zone = headers ]; then flip "$dir/f.tally" $(( headers + (victim % 1024) * 256 + 100 ))
  else flip "$dir/f.tally" $(( prepares + (victim % 1024) * 1048576 + 300 )); fi
  inspect_says "older $zone" "$dir/f.tally" 1 "^damage: journal op $victim \(zone wal $zone\) is damaged .*start fails"
  before=$(cksum <"$dir/f.tally")
  if start_bg "$dir/f.tally"; then fail "older $zone: started anyway"; stop_kill; else
    grep -q "^error: .*op $victim.*zone wal $zone" "$dir/log" && ok || { fail "older $zone: message"; cat "$dir/log"; }
  fi
  [ "$(cksum <"$dir/f.tally")" = "$before" ] && ok || fail "older $zone: file changed"
done

# 3. One superblock copy damaged: starts from another.
cp "$dir/base.tally" "$dir/f.tally"
flip "$dir/f.tally" 1000
inspect_says "one copy" "$dir/f.tally" 3 "^damage: superblock copy 0 fails its checksum"
if start_bg "$dir/f.tally"; then
  grep -q "superblock copy invalid" "$dir/log" && ok || fail "one copy: no warning"
  grep -q "recovered .*commit=$op_max" "$dir/log" && ok || fail "one copy: wrong commit"
  stop_kill
else fail "one copy: did not start"; fi

# 4. Every superblock copy damaged.
cp "$dir/base.tally" "$dir/f.tally"
for copy in 0 1 2 3; do flip "$dir/f.tally" $(( copy * 4096 + 1000 )); done
inspect_says "all copies" "$dir/f.tally" 1 "^verdict: start would fail"
before=$(cksum <"$dir/f.tally")
if start_bg "$dir/f.tally"; then fail "all copies: started"; stop_kill; else
  grep -q "^error: .*every superblock copy fails its checksum" "$dir/log" && ok || fail "all copies: message"
fi
[ "$(cksum <"$dir/f.tally")" = "$before" ] && ok || fail "all copies: file changed"

# 5. The current checkpoint (64 KiB LSM blocks in the grid): its root block, then a table's
# data block (the account ids', which the journal's replay reads).
for what in root table; do
  cp "$dir/base.tally" "$dir/f.tally"
  address=$root; [ $what = table ] && address=$ids_block
  flip "$dir/f.tally" $(( grid + (address - 1) * 65536 + 10 ))
  if [ $what = root ]; then
    pattern="^damage: checkpoint root block $address is damaged: checksum mismatch .*\(zone grid\); a single replica cannot start without it"
    message="^error: .*not valid \(zone grid\).*grid block $address \(root\): checksum mismatch"
  else
    pattern="^damage: checkpoint grid block $address \(table data of tree 1\) is damaged: checksum mismatch .*\(zone grid\)"
    message="error.*the state cannot be read: .*grid block $address \(table data\): checksum mismatch"
  fi
  inspect_says "checkpoint $what" "$dir/f.tally" 1 "$pattern"
  before=$(cksum <"$dir/f.tally")
  if start_bg "$dir/f.tally"; then fail "checkpoint $what: started"; stop_kill; else
    grep -qE "$message" "$dir/log" && ok || { fail "checkpoint $what: message"; cat "$dir/log"; }
  fi
  [ "$(cksum <"$dir/f.tally")" = "$before" ] && ok || fail "checkpoint $what: file changed"
done
# inspect --verify does not run on a damaged checkpoint (the ledger would stop on the block).
"$tally" inspect --verify "$dir/f.tally" >"$dir/verify.out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "^verify: not run, the checkpoint is damaged" "$dir/verify.out" && ok ||
  { fail "inspect --verify on a damaged table block: exit $rc"; cat "$dir/verify.out"; }

# 6. The undamaged file still recovers everything.
if start_bg "$dir/base.tally"; then
  grep -q "recovered checkpoint_op=$checkpoint_op .*commit=$op_max" "$dir/log" && ok || fail "base: wrong recovery"
  stop_kill
else fail "base: did not start"; fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]

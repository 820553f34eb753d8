#!/usr/bin/env bash
# bench/background_latency.sh [--transfers=N] [--id-order=random|sequential] [--clients=N]
#                             [--cache=SIZE] [--keep=DIR]
#
# Why it exists: issue 10 asks that checkpoints cost what changed since the last one and that
# batch latency p99 during checkpoints and background work (compaction) stay within 2x of p99
# without them. A checkpoint runs on the replica's loop after its op commits (every tree's
# memtable flushed to a table, the manifest log's new blocks, the free set's changed chunks,
# the root); a memtable that fills is flushed to a table on the loop after its op; merges run
# on the compaction worker beside the loop, and the loop waits for the worker when its grants
# run ahead of the merge (lsm/tree.c, job_grant). This loads one fresh replica with `tally
# benchmark --latency-log` (each create request's op and latency) and the server's debug log
# (the ops it checkpointed at, and per op: memtables flushed, the loop's wait for the worker,
# whether the worker was merging: "op executed"), and sorts each request by what ran on the
# loop while it waited. With C clients (one request in flight each) the request answered by op
# N was sent during op N-C, so it waited for the ends of ops N-C..N-1, where checkpoints,
# flushes and waits run. Classes, first match:
#   - checkpoint: a checkpoint op among N-C..N-1;
#   - flush or wait: a memtable flush or a wait for the worker among N-C..N-1;
#   - neither: none of these (the worker may be merging: past a few million transfers it
#     is during nearly every request, so requests with no background work at all are too few
#     for a p99, and its effect is measured on the ops instead, below).
# It prints count, p50, p99 and max per class and the p99 ratios to "neither", over the whole
# load and over its second half alone (the classes are not spread evenly over the load); then
# the create ops' own execution time on the loop, by what ran in them: a flush or a wait, the
# worker merging alone, or nothing (quiet); then per checkpoint its time and blocks written.
# --keep=DIR copies the server's log and the latency log there for a closer look.
# TALLY_BIN=<path> runs that binary instead of building build/release/tally (to compare two).
# Bounded by timeouts; the server and its files are removed at exit.
set -u
cd "$(dirname "$0")/.."
. tests/lib.sh

TRANSFERS=10000000; ORDER=random; CLIENTS=2; CACHE=; KEEP=
for arg in "$@"; do
  case $arg in
    --transfers=*) TRANSFERS=${arg#*=} ;;
    --id-order=*) ORDER=${arg#*=} ;;
    --clients=*) CLIENTS=${arg#*=} ;;
    --cache=*) CACHE=${arg#*=} ;;
    --keep=*) KEEP=${arg#*=} ;;
    *) echo "usage: bench/background_latency.sh [--transfers=N] [--id-order=random|sequential] [--clients=N] [--cache=SIZE] [--keep=DIR]" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d /tmp/tally-bglat.XXXXXX)
cleanup() { stop_server >/dev/null 2>&1; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

TALLY=${TALLY_BIN:-build/release/tally}
if [ -z "${TALLY_BIN:-}" ]; then
  timeout 600 make -j"$(nproc)" "$TALLY" >"$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; exit 1; }
fi
extra=()
[ -n "$CACHE" ] && extra+=(--cache="$CACHE")
TALLY_LOG=debug start_server "$TALLY" "$WORK" "${extra[@]}" || exit 1
echo "loading $TRANSFERS transfers ($ORDER ids, $CLIENTS clients) into one replica..."
timeout 7200 "$TALLY" benchmark --addresses="127.0.0.1:$SERVER_PORT" --transfers="$TRANSFERS" \
  --id-order="$ORDER" --clients="$CLIENTS" --query-count=0 --latency-log="$WORK/latency.log" \
  >"$WORK/bench.out" 2>&1
rc=$?
grep -E "^transfers:" "$WORK/bench.out"
stop_server
[ -n "$KEEP" ] && { mkdir -p "$KEEP" && cp "$WORK/server.log" "$WORK/latency.log" "$KEEP/"; }
[ $rc -eq 0 ] || { echo "benchmark failed:"; tail -5 "$WORK/bench.out"; exit 1; }

sed -nE 's/.*checkpoint started op=([0-9]+) .*serialize_us=([0-9]+) .*tables=([0-9]+) blocks_written=([0-9]+) manifest_blocks_written=([0-9]+) manifest_blocks=([0-9]+).*/\1 \2 \3 \4 \5 \6/p' \
  "$WORK/server.log" >"$WORK/checkpoints"
[ -s "$WORK/checkpoints" ] || { echo "no checkpoint lines in the server's log"; exit 1; }

sed -nE 's/.*op executed op=([0-9]+) operation=([0-9]+) begin_us=([0-9]+) took_us=([0-9]+) flushes=([0-9]+) values_compacted=[0-9]+ compaction_wait_us=([0-9]+) worker_merging=([0-9]+).*/\1 \2 \3 \4 \5 \6 \7/p' \
  "$WORK/server.log" >"$WORK/ops"
[ -s "$WORK/ops" ] || { echo "no 'op executed' lines in the server's log"; exit 1; }

# Each request's class by the ops it waited for (req_<class>, and late_<class> for the second
# half of the load); each create op's own class by what ran in it (op_<class>).
requests=$(wc -l <"$WORK/latency.log")
awk -v clients="$CLIENTS" -v cps="$WORK/checkpoints" -v ops="$WORK/ops" -v dir="$WORK" \
    -v half=$((requests / 2)) '
  BEGIN {
    while ((getline line < cps) > 0) { split(line, f, " "); cp[f[1]] = 1 }
    while ((getline line < ops) > 0) {
      split(line, f, " "); op = f[1]
      if (f[5] > 0 || f[6] > 0) loop[op] = 1
      if (f[2] == 139) { # create_transfers: its own time
        own = (op in loop) ? "loop" : f[7] > 0 ? "worker" : "quiet"
        print (f[4] / 1000.0) > (dir "/op_" own)
      }
    }
  }
  {
    n = $1; class = "neither"
    for (k = 1; k <= clients; k++) if ((n - k) in cp) class = "checkpoint"
    if (class == "neither") for (k = 1; k <= clients; k++) if ((n - k) in loop) class = "loop"
    ms = $2 / 1000.0
    print ms > (dir "/req_" class)
    if (NR > half) print ms > (dir "/late_" class)
  }
' "$WORK/latency.log"
stats() { # stats <file>: count p50 p99 max (ms)
  sort -n "$1" | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "0 - - -"; exit }
    p50 = v[int((NR * 50 + 99) / 100)]; p99 = v[int((NR * 99 + 99) / 100)]
    printf "%d %.1f %.1f %.1f\n", NR, p50, p99, v[NR] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
name() { case $1 in loop) echo "flush or wait" ;; *) echo "$1" ;; esac; }
table() { # table <prefix> <what> <baseline class> <classes...>
  local prefix=$1 what=$2 base=$3 class n p50 p99 max base_p99; shift 3
  for class in "$@"; do touch "$WORK/$prefix$class"; done
  read -r _ _ base_p99 _ < <(stats "$WORK/$prefix$base")
  echo "| $what | count | p50 ms | p99 ms | max ms | p99 / $(name "$base") p99 |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for class in "$@"; do
    read -r n p50 p99 max < <(stats "$WORK/$prefix$class")
    echo "| $(name "$class") | $n | $p50 | $p99 | $max | $(ratio "$p99" "$base_p99") |"
  done
}
echo
echo "Create requests by what ran on the loop while they waited (a checkpoint op among the"
echo "$CLIENTS before theirs; else a memtable flush or a wait for the compaction worker there; else"
echo "neither), over the whole load and its second half (issue 10 asks for at most 2):"
echo
table req_ "create requests" neither checkpoint loop neither
echo
table late_ "second half" neither checkpoint loop neither
echo
echo "Create ops' own execution on the loop, by what ran in them (flush or wait; else the"
echo "compaction worker merging meanwhile; else nothing):"
echo
table op_ "create ops" quiet loop worker quiet
echo
read -r _ cp_p50 _ cp_max < <(awk '{ print $2 / 1000.0 }' "$WORK/checkpoints" >"$WORK/cp_ms"; stats "$WORK/cp_ms")
awk -v p50="$cp_p50" -v max="$cp_max" '{ n++; w += $4; if ($4 > wmax) wmax = $4; m += $5; if ($5 > mmax) mmax = $5
       if (n == 1) { t1 = $3; mb1 = $6 } tn = $3; mbn = $6 }
  END {
    printf "checkpoints: %d; on the loop p50 %s ms, max %s ms\n", n, p50, max
    printf "blocks each wrote itself (manifest log, free set, root): mean %.1f, max %d; of them the manifest log'"'"'s: mean %.1f, max %d\n", w / n, wmax, m / n, mmax
    printf "tables listed: %d at the first checkpoint, %d at the last (manifest log blocks: %d, %d)\n", t1, tn, mb1, mbn
  }' "$WORK/checkpoints"

#!/usr/bin/env bash
# bench/scale.sh: what every cost of a Tally replica does as its ledger grows (issue 10), side
# by side with TigerBeetle 0.16.68 when TB_BIN is set.
#
# Why it exists: a ledger keeps every transfer for years, so the figures that matter are not
# those of an empty server but how throughput, latency, memory, disk and restart time change
# as the stored count grows. This script loads N transfers step by step into one fresh
# single-replica server and, after each step, measures:
#
#   create/s, batch p99   the step's load: batches of 8189 from 2 sessions (bench/scale_client)
#   lookup p99            1000 lookups of one random stored transfer each, one at a time, after
#                         a restart with the page cache dropped: a cold cache
#   query p99             100 query_transfers of one user_data_128 value (exactly 10 results,
#                         limit 10) among everything stored, page cache dropped before
#   RSS, peak RSS         VmRSS and VmHWM (the peak since its last start, i.e. the previous
#                         step's restart and this step's load) after the step's load; RSS again
#                         after the restart, lookups and queries
#   data file             allocated bytes (du --block-size=1), and per stored transfer
#   restart s             SIGTERM to exit, plus start to the first answered read of a stored
#                         transfer (the page cache dropped in between); --kill9 adds start to
#                         first read after a kill -9 right after the load (before the SIGTERM)
#
# Every figure comes from the same client program (bench/scale_client.c) for both servers, and
# every transfer read back is compared field by field with what was sent. While one server is
# measured the other is paused (SIGSTOP), so each has the machine to itself. Each id order
# (sequential, random) is a separate run from freshly formatted data files.
#
# usage: bench/scale.sh [--transfers=N] [--step=N] [--id-order=sequential|random|both]
#                       [--tb-transfers=N] [--accounts=N] [--clients=N] [--lookups=N]
#                       [--queries=N] [--kill9] [--time-limit=MINUTES] [--tally-flags='...']
#   --transfers     transfers to store (default 100000000), loaded in steps of --step
#                   (default 10000000); use small values for a smoke run
#   --tb-transfers  with TB_BIN, TigerBeetle is loaded up to this many (default 30000000; it
#                   needs ~1.5 KiB of disk per transfer), fewer if the disk cannot hold them
#   --time-limit    the whole run stops after this many minutes (default 240), printing what
#                   it measured so far
#   --tally-flags   extra flags for `tally start`, e.g. '--transfers-max=120000000'
#   TB_BIN=/work/shared/reference/tigerbeetle-0.16.68 adds TigerBeetle, and a Tally / TB row
#   per step it holds. VARIANT=release picks build/<variant>/. TMPDIR picks where data files go.
#
# The Markdown tables go to stdout at the end (also after a failure, the time limit or Ctrl-C,
# with what was measured); progress and each row as it is measured go to stderr. Servers and
# data files are removed at exit. Dropping the page cache needs root; without it, "cold" means
# only "just restarted".
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

TRANSFERS=100000000
STEP=10000000
ORDERS=(sequential random)
TB_TRANSFERS=30000000
ACCOUNTS=10000
CLIENTS=2
LOOKUPS=1000
QUERIES=100
KILL9=0
TIME_LIMIT_MIN=240
TALLY_FLAGS=()

usage() {
  sed -n '/^# usage:/,/^# The Markdown/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

parse_args() {
  local arg
  for arg in "$@"; do
    case $arg in
      --transfers=*) TRANSFERS=${arg#*=} ;;
      --step=*) STEP=${arg#*=} ;;
      --id-order=both) ORDERS=(sequential random) ;;
      --id-order=sequential | --id-order=random) ORDERS=("${arg#*=}") ;;
      --tb-transfers=*) TB_TRANSFERS=${arg#*=} ;;
      --accounts=*) ACCOUNTS=${arg#*=} ;;
      --clients=*) CLIENTS=${arg#*=} ;;
      --lookups=*) LOOKUPS=${arg#*=} ;;
      --queries=*) QUERIES=${arg#*=} ;;
      --kill9) KILL9=1 ;;
      --time-limit=*) TIME_LIMIT_MIN=${arg#*=} ;;
      --tally-flags=*) read -ra TALLY_FLAGS <<<"${arg#*=}" ;;
      *) usage ;;
    esac
  done
  local n
  for n in "$TRANSFERS" "$STEP" "$TB_TRANSFERS" "$ACCOUNTS" "$CLIENTS" "$LOOKUPS" "$QUERIES" \
    "$TIME_LIMIT_MIN"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "error: '$n' is not a number" >&2; usage; }
  done
  if ((STEP < 10 || TRANSFERS < STEP || LOOKUPS < 1 || QUERIES < 1)); then
    echo "error: need 10 <= --step <= --transfers, --lookups >= 1, --queries >= 1" >&2
    exit 2
  fi
}

# ---- Small helpers -------------------------------------------------------------------------

note() { echo "# $(date +%T) $*" >&2; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
seconds_left() { echo $((DEADLINE_S - $(date +%s))); }
gib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1073741824 }'; }
# kv <text> <key>: the value of the first ` key=value` (or `: key=value`) in the text.
kv() { sed -nE "s/.*[ :]$2=([^ ]+).*/\\1/p" <<<"$1" | head -1; }

drop_page_cache() {
  ((DROP_CACHES)) || return 0
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# bounded <seconds> <output file> <command...>: runs the command under `timeout` in the
# background and waits for it, so that Ctrl-C and the EXIT trap interrupt it at once (bash
# would run a trap only after a foreground command finished). Returns the command's status;
# when it timed out, the output's last line says so.
bounded() {
  local seconds=$1 out=$2 rc=0
  shift 2
  if ((seconds > 0)); then
    timeout --kill-after=10 "$seconds" "$@" >"$out" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    ((rc == 124)) || return $rc
  else
    : >"$out"
  fi
  if (($(seconds_left) <= 0)); then
    echo "stopped by the time limit (--time-limit=$TIME_LIMIT_MIN minutes)" >>"$out"
  else
    echo "timed out after $seconds s" >>"$out"
  fi
  return 124
}

alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# ---- Servers: "tally" and "tb", one replica each, state in associative arrays ---------------

declare -A BIN FILE LOG PORT PID STOPPED
CHILD=

. tests/lib.sh # port_base: a free port below the ephemeral range

server_format() {
  local s=$1
  mkdir -p "$WORK/$s"
  FILE[$s]=$WORK/$s/0_0.$([ "$s" = tally ] && echo tally || echo tigerbeetle)
  LOG[$s]=$WORK/$s/server.log
  "${BIN[$s]}" format --cluster=0 --replica=0 --replica-count=1 "${FILE[$s]}" >>"${LOG[$s]}" 2>&1
}

# server_launch <server>: starts it in the background; it gets SIGTERM if this script dies.
# Disowned, so that bash reaps it without a "Killed" line when the kill -9 restart kills it.
server_launch() {
  local s=$1 flags=()
  [ "$s" = tally ] && flags=("${TALLY_FLAGS[@]}")
  $PDEATHSIG "${BIN[$s]}" start --addresses="127.0.0.1:${PORT[$s]}" "${flags[@]}" "${FILE[$s]}" \
    >>"${LOG[$s]}" 2>&1 &
  PID[$s]=$!
  disown "${PID[$s]}"
}

# server_ready <server> <stored>: waits until a client is answered (and transfer 0 read back).
server_ready() {
  local s=$1 stored=$2 left
  left=$(seconds_left)
  ((left < 900)) || left=900
  bounded "$left" "$WORK/ready.out" "$CLIENT" ready --addresses="127.0.0.1:${PORT[$s]}" \
    --pid="${PID[$s]}" --stored="$stored" --id-order="$ORDER" --accounts="$ACCOUNTS" \
    --timeout-ms=$((left * 1000))
}

# server_stop <server> <signal>: signals it and waits (at most 120 s, then SIGKILL).
server_stop() {
  local s=$1 signal=$2 pid=${PID[$1]:-} waited=0
  [ -n "$pid" ] || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true # a paused server would not act on SIGTERM
  while alive "$pid" && ((waited < 12000)); do
    sleep 0.01
    waited=$((waited + 1))
  done
  if alive "$pid"; then
    note "$s ignored SIG$signal for 120 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  PID[$s]=
}

# signal_others <STOP|CONT> <server>: pauses (or resumes) the servers other than this one, so
# each is measured alone: idle, a TigerBeetle replica uses ~7 % of a core here, Tally ~0.5 %.
# Both carry on unharmed after a pause of minutes (tried: no client is connected meanwhile).
signal_others() {
  local signal=$1 me=$2 s
  for s in "${!PID[@]}"; do
    [ "$s" = "$me" ] || [ -z "${PID[$s]}" ] || kill "-$signal" "${PID[$s]}" 2>/dev/null || true
  done
}

# server_first_start <server>: format and start on a free port (another port if it fails).
server_first_start() {
  local s=$1 attempt
  server_format "$s"
  for attempt in 1 2 3; do
    PORT[$s]=$(port_base)
    server_launch "$s"
    if server_ready "$s" 0; then
      note "$s started on port ${PORT[$s]} (pid ${PID[$s]}), $(kv "$(cat "$WORK/ready.out")" seconds) s"
      return 0
    fi
    server_stop "$s" KILL
    note "$s did not start (attempt $attempt): $(tail -1 "$WORK/ready.out")"
  done
  tail -20 "${LOG[$s]}" >&2
  return 1
}

memory_kib() { sed -nE "s/^$2:[[:space:]]*([0-9]+) kB/\\1/p" "/proc/$1/status" 2>/dev/null || echo 0; }
data_bytes() { du --block-size=1 "${FILE[$1]}" | cut -f1; }

# ---- Disk -----------------------------------------------------------------------------------

# Generous estimates, so that a run refuses up front rather than fill the disk: Tally today
# ~150 B per transfer over its 1.15 GiB of journal (issue 10's 10 M run), the LSM aims at
# <= 500; TigerBeetle ~1.5 KiB per transfer over its 1.06 GiB file.
declare -A DISK_FIXED=([tally]=$((1300 * 1048576)) [tb]=$((1200 * 1048576)))
declare -A DISK_PER_TRANSFER=([tally]=600 [tb]=2048)
DISK_RESERVE=$((2 * 1073741824)) # left free for everything else on the machine

disk_free() { df --output=avail -B1 "$WORK_ROOT" | tail -1 | tr -d ' '; }
disk_need() { echo $((DISK_FIXED[$1] + DISK_PER_TRANSFER[$1] * $2)); }

# Refuses when Tally's N will not fit; lowers (or drops) TigerBeetle's share to what fits.
check_disk() {
  local free need_tally fit
  free=$(disk_free)
  need_tally=$(disk_need tally "$TRANSFERS")
  if ((need_tally + DISK_RESERVE > free)); then
    echo "error: $TRANSFERS transfers need about $(gib "$need_tally") GiB for Tally's data file" \
      "(estimate: 1.3 GiB + ${DISK_PER_TRANSFER[tally]} B per transfer) plus" \
      "$(gib $DISK_RESERVE) GiB spare, but $WORK_ROOT has $(gib "$free") GiB free;" \
      "use a smaller --transfers or set TMPDIR to a larger disk" >&2
    exit 1
  fi
  echo "disk: $(gib "$free") GiB free in $WORK_ROOT; Tally needs up to $(gib "$need_tally") GiB"
  ((${#SERVERS[@]} > 1)) || return 0
  fit=$(((free - need_tally - DISK_RESERVE - DISK_FIXED[tb]) / DISK_PER_TRANSFER[tb]))
  # TigerBeetle stops at the end of a step: its last step is a whole one unless it is Tally's.
  TB_MAX=$TRANSFERS
  ((TB_TRANSFERS >= TRANSFERS)) || TB_MAX=$((TB_TRANSFERS / STEP * STEP))
  if ((fit < TB_MAX)); then
    TB_MAX=$((fit > 0 ? fit / STEP * STEP : 0))
    ((TB_MAX == 0)) || echo "TigerBeetle limited to $TB_MAX transfers: at" \
      "${DISK_PER_TRANSFER[tb]} B per transfer no more fits next to Tally's data file"
  fi
  if ((TB_MAX == 0)); then
    echo "TigerBeetle skipped: not even one step of $STEP transfers fits (--tb-transfers=$TB_TRANSFERS," \
      "${DISK_PER_TRANSFER[tb]} B per transfer next to Tally's data file in $(gib "$free") GiB)"
    SERVERS=(tally)
    return 0
  fi
  echo "disk: TigerBeetle loaded up to $TB_MAX transfers, needs up to $(gib "$(disk_need tb "$TB_MAX")") GiB"
}

# step_fits <server> <stored> <count>: the step's growth (at the larger of the estimate and the
# bytes per transfer measured so far, plus a quarter) fits in the free space.
step_fits() {
  local s=$1 stored=$2 count=$3 per=${DISK_PER_TRANSFER[$1]} measured free
  if ((stored > 0)); then
    measured=$(($(data_bytes "$s") / stored))
    ((measured < per)) || per=$measured
  fi
  free=$(disk_free)
  ((count * per * 5 / 4 + DISK_RESERVE <= free)) && return 0
  STOP_REASON="disk: the next $count transfers need about $(gib $((count * per * 5 / 4))) GiB, $(gib "$free") GiB free"
  return 1
}

# ---- One step ---------------------------------------------------------------------------------
# Each part sets STOP_REASON and returns 1 when this server cannot go on.

# load_transfers <server> <stored> <count>: sets TPS and BATCH_P99.
load_transfers() {
  local s=$1 stored=$2 count=$3 out=$WORK/step.out accounts=() load
  ((stored > 0)) || accounts=(--create-accounts)
  note "$s: loading transfers $stored..$((stored + count - 1)) ($ORDER ids)"
  if ! bounded "$(seconds_left)" "$out" "$CLIENT" load --addresses="127.0.0.1:${PORT[$s]}" \
    --first="$stored" --count="$count" "${accounts[@]}" --id-order="$ORDER" \
    --accounts="$ACCOUNTS" --clients="$CLIENTS"; then
    STOP_REASON="load of $stored..$((stored + count - 1)) failed: $(tail -1 "$out")"
    tail -5 "${LOG[$s]}" >&2
    return 1
  fi
  load=$(grep '^load:' "$out")
  TPS=$(kv "$load" transfers_per_second)
  BATCH_P99=$(kv "$load" batch_p99_ms)
}

# restart_timed <server> <stored> <TERM|KILL>: stops the server with the signal, drops the page
# cache, starts it again; sets RESTART_MS to the stop's time plus the start's to the first
# answered read of a stored transfer (the cache drop, a cost of this script, is left out).
restart_timed() {
  local s=$1 stored=$2 signal=$3 t0 t1 t2
  note "$s: restart (SIG$signal)"
  t0=$(now_ms)
  server_stop "$s" "$signal"
  t1=$(now_ms)
  drop_page_cache
  t2=$(now_ms)
  server_launch "$s"
  if ! server_ready "$s" "$stored"; then
    STOP_REASON="no answer after SIG$signal and a restart: $(tail -1 "$WORK/ready.out")"
    tail -5 "${LOG[$s]}" >&2
    return 1
  fi
  RESTART_MS=$(($(now_ms) - t2 + t1 - t0))
}

# read_cold <server> <stored> <lookup|query> <count>: sets READ_P99 (ms), the page cache
# dropped first.
read_cold() {
  local s=$1 stored=$2 kind=$3 count=$4 out=$WORK/step.out
  drop_page_cache
  if ! bounded "$(seconds_left)" "$out" "$CLIENT" "$kind" --addresses="127.0.0.1:${PORT[$s]}" \
    --stored="$stored" --count="$count" --id-order="$ORDER" --accounts="$ACCOUNTS"; then
    STOP_REASON="${kind}s failed: $(tail -1 "$out")"
    return 1
  fi
  READ_P99=$(kv "$(grep "^$kind:" "$out")" p99_ms)
}

# run_step <server> <stored> <count>: loads transfers stored..stored+count-1, measures, and
# appends a result line (tab-separated, the columns of print_row) to $RESULTS.
run_step() {
  local s=$1 total=$(($2 + $3)) rss hwm bytes restart kill9=- lookup query
  load_transfers "$s" "$2" "$3" || return 1
  rss=$(memory_kib "${PID[$s]}" VmRSS)
  hwm=$(memory_kib "${PID[$s]}" VmHWM)
  bytes=$(data_bytes "$s")
  # kill -9 first, while the journal since the last checkpoint is the load's: a crash right
  # after it. Then the clean restart.
  if ((KILL9)); then
    restart_timed "$s" "$total" KILL || return 1
    kill9=$RESTART_MS
  fi
  restart_timed "$s" "$total" TERM || return 1
  restart=$RESTART_MS
  read_cold "$s" "$total" lookup "$LOOKUPS" || return 1
  lookup=$READ_P99
  read_cold "$s" "$total" query "$QUERIES" || return 1
  query=$READ_P99
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ORDER" "$total" "$s" "$TPS" \
    "$BATCH_P99" "$lookup" "$query" "$((rss / 1024))" "$((hwm / 1024))" \
    "$(($(memory_kib "${PID[$s]}" VmRSS) / 1024))" "$bytes" "$restart" "$kill9" >>"$RESULTS"
  print_row "$(tail -1 "$RESULTS")" >&2
}

# ---- The table ----------------------------------------------------------------------------------

# Groups of three digits, as the README writes numbers.
group() { sed -E ':a; s/^([0-9]+)([0-9]{3})/\1 \2/; ta' <<<"$1"; }
# fmt <printf format> <awk expression>
fmt() { awk "BEGIN { printf \"$1\", $2 }"; }

table_header() {
  local head="| stored | server | create/s | batch p99 ms | cold lookup p99 ms | query p99 ms | RSS MiB | peak RSS MiB | RSS after restart MiB | data file GiB | disk B/transfer | restart s |"
  local rule="| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  ((KILL9)) && head+=" restart after kill -9 s |" && rule+=" ---: |"
  echo "$head"
  echo "$rule"
}

# print_row <result line>: one table row of a result line (see run_step).
print_row() {
  local order stored s tps p99 lookup query rss hwm rss_after bytes restart kill9 cells
  IFS=$'\t' read -r order stored s tps p99 lookup query rss hwm rss_after bytes restart kill9 <<<"$1"
  cells=("$(group "$stored")" "$([ "$s" = tally ] && echo Tally || echo "TigerBeetle 0.16.68")"
    "$(group "$tps")" "$(fmt %.1f "$p99")" "$(fmt %.2f "$lookup")" "$(fmt %.2f "$query")"
    "$(group "$rss")" "$(group "$hwm")" "$(group "$rss_after")" "$(fmt %.2f "$bytes / 1073741824")"
    "$(group $((bytes / stored)))" "$(fmt %.1f "$restart / 1000")")
  ((KILL9)) && cells+=("$(fmt %.1f "$kill9 / 1000")")
  printf '| %s ' "${cells[@]}"
  echo "|"
}

# ratio_row <Tally's result line> <TigerBeetle's>: Tally / TigerBeetle, column by column.
ratio_row() {
  local a b
  IFS=$'\t' read -ra a <<<"$1"
  IFS=$'\t' read -ra b <<<"$2"
  local cells=("$(group "${a[1]}")" "Tally / TigerBeetle") i last=11
  ((KILL9)) && last=12
  for ((i = 3; i <= last; i++)); do
    cells+=("$(awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN { if (y + 0 > 0) printf "%.2f", x / y; else printf "-" }')")
    # The data file's bytes give two columns (GiB and per transfer) with the same ratio.
    ((i == 10)) && cells+=("${cells[-1]}")
  done
  printf '| %s ' "${cells[@]}"
  echo "|"
}

# The tables of everything measured so far, one per id order, with a Tally / TigerBeetle row
# under each step both servers reached.
print_tables() {
  [ -s "$RESULTS" ] || return 0
  local order line tally_line first_tps last_tps last_stored
  for order in "${ORDERS[@]}"; do
    grep -q "^$order"$'\t' "$RESULTS" || continue
    echo
    echo "### $order ids"
    echo
    table_header
    tally_line=
    while IFS= read -r line; do
      [[ $line == "$order"$'\t'* ]] || continue
      print_row "$line"
      case $line in
        *$'\t'tally$'\t'*) tally_line=$line ;;
        *$'\t'tb$'\t'*) [ -n "$tally_line" ] && [ "$(cut -f2 <<<"$tally_line")" = "$(cut -f2 <<<"$line")" ] &&
          ratio_row "$tally_line" "$line" ;;
      esac
    done <"$RESULTS"
    first_tps=$(awk -F'\t' -v o="$order" '$1 == o && $3 == "tally" { print $4; exit }' "$RESULTS")
    last_tps=$(awk -F'\t' -v o="$order" '$1 == o && $3 == "tally" { t = $4 } END { print t }' "$RESULTS")
    last_stored=$(awk -F'\t' -v o="$order" '$1 == o && $3 == "tally" { n = $2 } END { print n }' "$RESULTS")
    if [ -n "$first_tps" ]; then
      echo
      echo "Tally's create/s at $(group "$last_stored") stored: $(fmt %.0f "100 * $last_tps / $first_tps") % of the first step's."
    fi
  done
  if [ -s "$NOTES" ]; then
    echo
    cat "$NOTES"
  fi
}

# ---- The run ------------------------------------------------------------------------------------

cleanup() {
  local status=$? s
  set +e
  trap - EXIT INT TERM
  [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  for s in "${!PID[@]}"; do server_stop "$s" TERM; done
  case $status in
    130 | 143) echo "- interrupted (exit status $status): the tables hold the steps finished before" >>"$NOTES" ;;
  esac
  print_tables
  rm -rf "$WORK"
  exit "$status"
}

# run_order <id order>: fresh servers, then every step: Tally's, then TigerBeetle's while it can.
run_order() {
  ORDER=$1
  local s stored=0 count
  STOPPED=()
  for s in "${SERVERS[@]}"; do
    if ! server_first_start "$s"; then
      echo "- $ORDER ids, $s: did not start" >>"$NOTES"
      STOPPED[$s]=1
    fi
  done
  while ((stored < TRANSFERS)); do
    count=$((TRANSFERS - stored < STEP ? TRANSFERS - stored : STEP))
    for s in "${SERVERS[@]}"; do
      [ -z "${STOPPED[$s]:-}" ] || continue
      if [ "$s" = tb ] && ((stored + count > TB_MAX)); then
        server_stop tb TERM
        STOPPED[tb]=1
        continue
      fi
      STOP_REASON=
      if (($(seconds_left) <= 0)); then
        STOP_REASON="the time limit (--time-limit=$TIME_LIMIT_MIN minutes) was reached"
      fi
      signal_others STOP "$s"
      if [ -n "$STOP_REASON" ] || ! step_fits "$s" "$stored" "$count" || ! run_step "$s" "$stored" "$count"; then
        note "$s stopped in the step from $stored to $((stored + count)) stored: $STOP_REASON"
        echo "- $ORDER ids, $s stopped in the step from $stored to $((stored + count)) stored: $STOP_REASON" >>"$NOTES"
        server_stop "$s" TERM
        STOPPED[$s]=1
      fi
      signal_others CONT "$s"
    done
    stored=$((stored + count))
    [ ${#STOPPED[@]} -lt ${#SERVERS[@]} ] || break
  done
  for s in "${SERVERS[@]}"; do server_stop "$s" TERM; done
  rm -rf "${WORK:?}/tally" "${WORK:?}/tb"
}

print_machine() {
  local cmd
  cmd=$(printf ' %q' "$0" "$@")
  [ -z "${TB_BIN:-}" ] || cmd="TB_BIN=$TB_BIN$cmd"
  echo "## bench/scale.sh"
  echo
  echo "command: \`${cmd# }\`"
  echo
  echo "machine: $(nproc) cores ($(sed -nE 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1))," \
    "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, Linux $(uname -r)," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg) at start, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "tally: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ modified)')," \
    "build/$VARIANT; start flags: ${TALLY_FLAGS[*]:-(defaults)}"
  ((${#SERVERS[@]} == 1)) || echo "TigerBeetle: $TB_BIN"
  echo "workload: $TRANSFERS transfers in steps of $STEP, $ACCOUNTS accounts, batches of up to 8189" \
    "from $CLIENTS sessions; $LOOKUPS cold lookups and $QUERIES queries per step;" \
    "page cache $([ "$DROP_CACHES" = 1 ] && echo dropped || echo 'NOT dropped (not root)') before restarts, lookups and queries"
}

main() {
  parse_args "$@"
  VARIANT=${VARIANT:-release}
  WORK_ROOT=${TMPDIR:-/tmp}
  SERVERS=(tally)
  TB_MAX=0
  BIN[tally]=build/$VARIANT/tally
  CLIENT=build/$VARIANT/bench/scale_client
  if [ -n "${TB_BIN:-}" ]; then
    [ -x "$TB_BIN" ] || { echo "error: TB_BIN=$TB_BIN is not an executable" >&2; exit 2; }
    BIN[tb]=$TB_BIN
    SERVERS=(tally tb)
  fi
  DROP_CACHES=0
  if [ -w /proc/sys/vm/drop_caches ] && (echo 1 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    DROP_CACHES=1
  fi
  PDEATHSIG=
  if setpriv --help 2>/dev/null | grep -q pdeathsig; then PDEATHSIG="setpriv --pdeathsig TERM"; fi
  DEADLINE_S=$(($(date +%s) + TIME_LIMIT_MIN * 60))

  WORK=$(mktemp -d "$WORK_ROOT/tally-scale.XXXXXX")
  RESULTS=$WORK/results.tsv
  NOTES=$WORK/notes.md
  : >"$RESULTS"
  : >"$NOTES"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  print_machine "$@"
  check_disk
  note "building build/$VARIANT/tally and $CLIENT"
  if ! bounded 900 "$WORK/build.log" make -j"$(nproc)" VARIANT="$VARIANT" "${BIN[tally]}" "$CLIENT"; then
    tail -20 "$WORK/build.log" >&2
    exit 1
  fi
  local order
  for order in "${ORDERS[@]}"; do
    note "run with $order ids"
    table_header >&2
    run_order "$order"
  done
  [ ! -s "$NOTES" ] || exit 1
}

main "$@"

# tests/server/checks.sh: the counting, reporting and data-file helpers the server test scripts
# share (sourced, not run). Why: each script counted its checks and damaged files with its own
# copy of these lines.
#   pass <what> / fail <what>  count a check and print "ok <what>" / "FAIL <what>"
#   finish                     prints "N passed, N failed" and exits 0 only if none failed
#   json <text> <key>          the first number of "<key>":<number> in a JSON text
#   flip <file> <offset>       inverts one byte of a file in place
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh" # port_base
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }
json() { grep -o "\"$2\":[0-9]*" <<<"$1" | head -1 | cut -d: -f2; }
flip() {
  local byte; byte=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "$(printf '\\%03o' $(( byte ^ 0xFF )))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

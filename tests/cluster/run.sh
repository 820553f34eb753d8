#!/usr/bin/env bash
# Runs the process-level cluster tests (tests/cluster/*.test.js): three `tally start` processes on
# loopback driven by the official Node client (tests/node's package and harness). The runner is
# tests/run_node.sh (it installs tests/node/node_modules with `npm ci`, builds ./tally if
# missing, and prints "N passed, N failed" last); here one file at a time, tests in order.
# Extra arguments select test files or --test-name-pattern=... options.
#
#   TALLY_BIN=path               server binary (default: ./tally)
#   TALLY_CLUSTER_RESUME_MS=n    writes must resume within n ms of kill -9 of the primary (1000)
#   TALLY_CLUSTER_FREEZE_MS=n    ... and of SIGSTOP of the primary (3000)
#   TALLY_CLUSTER_KEEP=1         keep each cluster's directory (data files, replica logs)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
TALLY_NODE_TEST_DIR="$root/tests/cluster" NODE_TEST_CONCURRENCY=1 TALLY_NODE_TIMEOUT=1200 \
  exec "$root/tests/run_node.sh" "$@"

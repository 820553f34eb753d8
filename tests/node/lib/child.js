'use strict';
// Runs one client scenario in its own process:  node child.js <scenario-module> <name> <json-args>
//
// The official client is native code that aborts the whole process on a reply it cannot accept
// (exit 134 or 7) and never times out on its own. So every scenario runs here, in a child process
// of the test, with a bounded wait on every client call; the parent applies a hard kill timeout and
// treats any exit other than a clean 0 as a failure.
//
// Output protocol on stdout, one line each:
//   @@EVENT@@ {"name": ..., "data": ...}   progress marks the parent may wait for
//   @@RESULT@@ {"ok": true, "result": ...} or {"ok": false, "error": "..."}   exactly once, last
// BigInts are written as decimal strings.

const fs = require('fs');
const path = require('path');
const assert = require('assert');
const tb = require('tigerbeetle-node');

const clients = [];

function json(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

function line(text) {
  fs.writeSync(1, text + '\n'); // synchronous, so nothing is lost on process.exit
}

function emit(name, data) { line('@@EVENT@@ ' + json({ name, data })); }

// Rejects with a clear message if the promise does not settle within ms. The client itself never
// gives up on a request, so every await on it goes through here.
function within(promise, ms, label) {
  let timer;
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${label} did not complete within ${ms} ms`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

// Resolves to { settled: false } if the promise is still pending after ms, without failing.
function settlesWithin(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve({ settled: false }), ms); });
  const done = Promise.resolve(promise).then((value) => ({ settled: true, value }), (error) => ({ settled: true, error }));
  return Promise.race([done, timeout]).finally(() => clearTimeout(timer));
}

function connect(args, overrides = {}) {
  const client = tb.createClient({
    cluster_id: BigInt(overrides.cluster ?? args.cluster ?? 0),
    replica_addresses: [overrides.address ?? args.address],
  });
  clients.push(client);
  return client;
}

function finish(payload, code) {
  line('@@RESULT@@ ' + json(payload));
  // Leave at once: client.destroy() would wait for requests that may never complete.
  process.exit(code);
}

async function main() {
  const [modulePath, name, argsText] = process.argv.slice(2);
  const args = JSON.parse(argsText || '{}');
  const scenarios = require(path.resolve(modulePath));
  const scenario = scenarios[name];
  if (typeof scenario !== 'function') throw new Error(`no scenario ${name} in ${modulePath}`);
  const ctx = { args, tb, assert, connect, within, settlesWithin, emit };
  const result = await scenario(ctx);
  finish({ ok: true, result: result === undefined ? null : result }, 0);
}

process.on('unhandledRejection', (e) => finish({ ok: false, error: `unhandled rejection: ${e && e.stack || e}` }, 1));
main().catch((e) => finish({ ok: false, error: String(e && e.stack || e) }, 1));

'use strict';
// Why this file exists: the everyday path of the official Node client (tigerbeetle-node 0.16.66)
// against Tally must behave exactly like TigerBeetle 0.16.68: a new client registers and its first
// request completes; accounts and transfers round-trip field for field with zero/updated balances
// and increasing timestamps; ordinary failures come back with the right result codes; re-sending
// the same create_transfers reports `exists` and counts nothing twice; and the server keeps
// serving, then stops cleanly on SIGTERM. Each client runs in a child process (lib/child.js) so
// that a client abort on a malformed reply is a test failure, not a crashed test runner.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { startServer } = require('../lib/server');
const { runScenario, assertClean, assertServerAlive } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/basic.js');
let server;
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 20000, ...opts });

before(async () => { server = await startServer(); }, { timeout: 30000 });
after(async () => { if (server) await server.stop(); });

test('register: a new client registers and its first request completes', { timeout: 30000 }, async (t) => {
  const r = assertClean(await run('register'));
  t.diagnostic(`first request completed ${r.firstMs} ms after createClient, the second took ${r.secondMs} ms`);
  // The first request goes out ~0.6 s after createClient (wire-protocol.md 4.1); allow slack.
  assert.ok(r.firstMs < 5000, `first request took ${r.firstMs} ms`);
  assertServerAlive(server);
});

test('create accounts and look them up: every field, zero balances, increasing timestamps', { timeout: 30000 }, async () => {
  assertClean(await run('accounts'));
  assertServerAlive(server);
});

test('create transfers, look them up, balances afterwards', { timeout: 30000 }, async () => {
  assertClean(await run('transfers'));
  assertServerAlive(server);
});

test('result codes of ordinary failures (exists, id_must_not_be_zero, accounts_must_be_different, ...)', { timeout: 30000 }, async () => {
  assertClean(await run('resultCodes'));
  assertServerAlive(server);
});

test('idempotent retry: the same create_transfers twice gives exists and counts once', { timeout: 30000 }, async () => {
  assertClean(await run('idempotentRetry'));
  assertServerAlive(server);
});

test('server still serving after all of the above', { timeout: 30000 }, async (t) => {
  assertServerAlive(server);
  assertClean(await run('stillServing'));
  assertServerAlive(server);
  t.diagnostic(`server peak RSS (VmHWM): ${server.peakRssKiB()} KiB`);
});

test('server stops cleanly on SIGTERM', { timeout: 30000 }, async () => {
  const s = server;
  server = null;
  const exit = await s.stop(10000);
  assert.ok(!exit.forced, `server did not exit within 10 s of SIGTERM; log: ${s.logTail(2000)}`);
  assert.deepStrictEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit status; log: ${s.logTail(2000)}`);
});

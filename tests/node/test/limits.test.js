'use strict';
// Why this file exists: 8189 events is the largest batch the official client sends (a request of
// exactly 1 MiB, and 8189 lookups give a 1 MiB reply); Tally must accept and execute it in full.
// 8190 is refused by the client itself (it throws "Too much data provided on this batch.") and
// must leave the server untouched. A 1 MiB request interleaved with small merged requests from
// other clients checks large-frame handling under concurrent traffic.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { startServer } = require('../lib/server');
const { runScenario, assertClean, assertServerAlive } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/limits.js');
let server;
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 40000, ...opts });

before(async () => {
  server = await startServer();
  assertClean(await run('setup'));
}, { timeout: 60000 });
after(async () => { if (server) await server.stop(); });

test('8189 accounts and 8189 transfers in one request each all succeed', { timeout: 60000 }, async () => {
  assertClean(await run('max8189'));
  assertServerAlive(server);
});

test('8190 events are refused by the client locally; the server is unaffected', { timeout: 60000 }, async () => {
  const r = assertClean(await run('over8190'));
  assert.match(r.errT, /Too much data provided on this batch/);
  assertServerAlive(server);
});

test('a 1 MiB request interleaved with small merged requests from other clients', { timeout: 60000 }, async () => {
  assertClean(await run('mixedSizes'));
  assertServerAlive(server);
});

test('server still serving after all of the above', { timeout: 30000 }, async (t) => {
  assertServerAlive(server);
  assertClean(await run('stillServing'));
  assertServerAlive(server);
  t.diagnostic(`server peak RSS (VmHWM): ${server.peakRssKiB()} KiB`);
});

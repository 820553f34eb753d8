'use strict';
// Why this file exists: a client configured with another cluster id must get nothing from the
// server (TigerBeetle drops such messages and closes the connection), so its requests stay
// pending; the client process must not crash, nothing it sent may take effect, and correct
// clients must be served meanwhile and afterwards.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { startServer } = require('../lib/server');
const { runScenario, spawnScenario, assertClean, assertServerAlive } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/cluster.js');
let server;
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 20000, ...opts });

before(async () => { server = await startServer(); }, { timeout: 30000 });
after(async () => { if (server) await server.stop(); });

test('a correct client works before', { timeout: 30000 }, async () => {
  assertClean(await run('rightCluster', { round: 0 }));
});

test('a cluster-1 client gets no reply within 3 s and does not crash; a correct client is served meanwhile', { timeout: 30000 }, async () => {
  const wrong = spawnScenario(SCENARIOS, 'wrongCluster', { address: server.address, cluster: 1, waitMs: 3000 }, { timeoutMs: 15000 });
  // While the wrong client keeps retrying, a correct one works.
  assertClean(await run('rightCluster', { round: 1 }));
  const r = assertClean(await wrong.done);
  assert.deepStrictEqual(r, { create: 'pending', lookup: 'pending' }, 'the cluster-1 client got no reply');
  assertServerAlive(server);
});

test('server still serving after all of the above', { timeout: 30000 }, async (t) => {
  assertServerAlive(server);
  assertClean(await run('rightCluster', { round: 2 }));
  assertServerAlive(server);
  t.diagnostic(`server peak RSS (VmHWM): ${server.peakRssKiB()} KiB`);
});

test('server stops cleanly on SIGINT', { timeout: 30000 }, async () => {
  const s = server;
  server = null;
  const exit = await s.stop(10000, 'SIGINT');
  assert.ok(!exit.forced, `server did not exit within 10 s of SIGINT; log: ${s.logTail(2000)}`);
  assert.deepStrictEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit status; log: ${s.logTail(2000)}`);
});

'use strict';
// Why this file exists: TigerBeetle serves many client sessions at once (up to 64 sessions), each
// with one request in flight. 32 concurrent client instances in one process, and then 4 processes
// of 8 clients each, all send interleaved create_transfers and lookups; every request must
// succeed and the final balances must be exactly the sum of what was sent, with every transfer
// present once. More than 64 sessions are registered over the file in total, so old sessions are
// evicted along the way without disturbing the live ones.

const { test, before, after } = require('node:test');
const { startServer } = require('../lib/server');
const { runScenario, spawnScenario, assertClean, assertServerAlive } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/concurrency.js');
let server;
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 40000, ...opts });

const ONE = { hub: 1, base: 1000, clients: 32, idBase: 1000000, processes: 1 };
const MULTI = { hub: 2, base: 2000, clients: 8, idBase: 2000000, processes: 4 };

before(async () => { server = await startServer(); }, { timeout: 30000 });
after(async () => { if (server) await server.stop(); });

test('32 concurrent clients in one process, final balances exact', { timeout: 60000 }, async (t) => {
  assertClean(await run('setup', ONE));
  const r = assertClean(await run('manyClients', ONE));
  t.diagnostic(`32 clients x 5 requests done in ${r.elapsedMs} ms (slowest first reply ${r.firstReplyMaxMs} ms)`);
  assertClean(await run('verify', { groups: [ONE] }));
  assertServerAlive(server);
});

test('4 processes x 8 clients concurrently, final balances exact', { timeout: 60000 }, async () => {
  assertClean(await run('setup', MULTI));
  const per = MULTI.clients * 5 * 10; // transfers per process (REQUESTS x PER_REQUEST per client)
  const runs = [];
  for (let p = 0; p < MULTI.processes; p++) {
    runs.push(spawnScenario(SCENARIOS, 'manyClients', { address: server.address, ...MULTI, idBase: MULTI.idBase + p * per }, { timeoutMs: 40000 }).done);
  }
  for (const r of await Promise.all(runs)) assertClean(r);
  assertClean(await run('verify', { groups: [ONE, MULTI] }));
  assertServerAlive(server);
});

test('server still serving after all of the above', { timeout: 30000 }, async (t) => {
  assertServerAlive(server);
  assertClean(await run('stillServing', { hub: ONE.hub, other: MULTI.hub }));
  assertServerAlive(server);
  t.diagnostic(`server peak RSS (VmHWM): ${server.peakRssKiB()} KiB`);
});

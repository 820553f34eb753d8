'use strict';
// Why this file exists: clients disappear and connections break. A client killed (SIGKILL) while
// its 1 MiB request is on the wire or being executed must not disturb the server: the batch takes
// effect entirely or not at all, and new clients carry on. When a connection is cut after the
// server received a request but before the reply got through, or in the middle of the request,
// or when the reply is lost on a live connection, the official client retransmits the same
// request on its own; the server must apply it exactly once (replaying the cached reply, so every
// event reports success rather than `exists`) and keep the session working. A small TCP proxy
// (lib/proxy.js) between client and server does the cutting.

const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { startServer } = require('../lib/server');
const { startProxy } = require('../lib/proxy');
const { runScenario, spawnScenario, assertClean, assertServerAlive, describeRun } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/disconnect.js');
const CREATE_TRANSFERS = 139;
let server;
const proxies = [];
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 30000, ...opts });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// P/Q balances moved by the proxy tests, checked at the end.
const pq = { pDebits: 0n, qCredits: 0n, passed: 0 };

before(async () => {
  server = await startServer();
  assertClean(await run('setup'));
}, { timeout: 30000 });
after(async () => {
  for (const p of proxies) await p.close();
  if (server) await server.stop();
});

test('clients killed (SIGKILL) with a 1 MiB request in flight; a new client continues', { timeout: 60000 }, async (t) => {
  const idBases = [];
  // Killed by the test a few ms after the request was handed to the client, and killed from
  // inside a few µs after that (before, while or after the request is on the wire).
  const kills = [
    ...[0, 2, 10, 50].map((ms) => ({ parentDelayMs: ms })),
    ...[0, 20, 100, 300, 1000, 3000].map((us) => ({ selfKillAfterUs: us })),
  ];
  for (let i = 0; i < kills.length; i++) {
    const idBase = 1000000 * (i + 1);
    idBases.push(idBase);
    const { parentDelayMs, selfKillAfterUs } = kills[i];
    const s = spawnScenario(SCENARIOS, 'bigRequestThenHang', { address: server.address, idBase, selfKillAfterUs }, { timeoutMs: 20000 });
    if (parentDelayMs !== undefined) {
      try {
        await s.waitFor('sent', 15000);
      } catch (e) {
        s.child.kill('SIGKILL');
        const r = await s.done;
        assert.fail(`${e.message}\n${describeRun(r)}`);
      }
      if (parentDelayMs) await sleep(parentDelayMs);
      s.child.kill('SIGKILL');
    }
    const r = await s.done;
    assert.strictEqual(r.signal, 'SIGKILL', `the client process was still running when killed: ${describeRun(r)}`);
    assertServerAlive(server);
  }
  const r = assertClean(await run('afterKills', { idBases }));
  t.diagnostic(`killed batches applied: ${kills.map((k, i) => `${k.parentDelayMs !== undefined ? `${k.parentDelayMs} ms` : `self ${k.selfKillAfterUs} µs`}=${r.applied[i]}`).join(', ')}`);
  assertServerAlive(server);
});

async function proxyCase(t, mode, idBase, count) {
  const proxy = await startProxy({ host: '127.0.0.1', port: server.port }, { mode, operation: CREATE_TRANSFERS });
  proxies.push(proxy);
  const r = await run('throughProxy', { proxy: proxy.address, idBase, count });
  try {
    assertClean(r);
  } finally {
    await proxy.close();
  }
  t.diagnostic(`request completed after ${r.result.retryMs} ms; ${proxy.stats.connections} connection(s); target request sent ${proxy.targetSends()} times`);
  assert.ok(proxy.stats.cut, `the proxy did its ${mode}`);
  assert.ok(proxy.targetSends() >= 2, `the client retransmitted the request (seen ${proxy.targetSends()} times)`);
  if (mode !== 'swallow-reply') assert.ok(proxy.stats.connections >= 2, `the client reconnected (${proxy.stats.connections} connections)`);
  pq.pDebits += 7n * BigInt(count);
  pq.qCredits += 7n * BigInt(count);
  pq.passed++;
  assertServerAlive(server);
}

test('connection cut after the request, before the reply: the client retries, applied exactly once', { timeout: 30000 }, async (t) => {
  await proxyCase(t, 'cut-before-reply', 30000000, 10);
});

test('connection cut in the middle of a 1 MiB request: the client retries, applied exactly once', { timeout: 30000 }, async (t) => {
  await proxyCase(t, 'cut-mid-request', 31000000, 8189);
});

test('reply lost on a live connection: the client retransmits, the server replays the reply', { timeout: 30000 }, async (t) => {
  await proxyCase(t, 'swallow-reply', 32000000, 3);
});

test('server still serving after all of the above', { timeout: 30000 }, async (t) => {
  assertServerAlive(server);
  // Exact P/Q totals only if every proxy case passed (otherwise just P debits == Q credits).
  const expectPQ = pq.passed === 3 ? { pDebits: pq.pDebits.toString(), qCredits: pq.qCredits.toString() } : null;
  assertClean(await run('stillServing', { expectPQ }));
  assertServerAlive(server);
  t.diagnostic(`server peak RSS (VmHWM): ${server.peakRssKiB()} KiB`);
});

'use strict';
// Why this file exists: every operation end to end through the official client, beyond create
// and lookup: get_account_transfers (every filter flag, limits, ranges, invalid filters),
// get_account_balances (history), query_accounts and query_transfers, and two-phase transfers:
// partial post, void, posting twice, and a pending timeout that only the server's own pulse
// can expire (the conformance corpus cannot cover timeouts, as it is recorded without them).

const { test, before, after } = require('node:test');
const { startServer } = require('../lib/server');
const { runScenario, assertClean, assertServerAlive } = require('../lib/run');

const SCENARIOS = require.resolve('../scenarios/operations.js');
let server;
const run = (name, args = {}, opts = {}) => runScenario(SCENARIOS, name, { address: server.address, ...args }, { timeoutMs: 30000, ...opts });

before(async () => { server = await startServer(); }, { timeout: 30000 });
after(async () => { if (server) await server.stop(); });

test('queries: account transfers and balances, query accounts and transfers', { timeout: 40000 }, async () => {
  assertClean(await run('queries'));
  assertServerAlive(server);
});

test('two-phase: partial post, void, post twice, and expiry of a 1 s timeout by the pulse', { timeout: 40000 }, async () => {
  assertClean(await run('twoPhase'));
  assertServerAlive(server);
});

'use strict';
// Scenarios for test/concurrency.test.js: many client sessions at once.

const { ms, account, transfer, range, accountsById, checkBalances } = require('./util');

const REQUESTS = 5; // requests per client
const PER_REQUEST = 10; // transfers per request

// Accounts: one hub per group, and one account per client.
async function setup(ctx) {
  const { hub, base, clients } = ctx.args;
  const client = ctx.connect(ctx.args);
  const accs = [account(hub), ...range(base, clients).map((id) => account(id))];
  ctx.assert.deepStrictEqual(await ctx.within(client.createAccounts(accs), ms.register, 'createAccounts'), []);
  return null;
}

// `clients` client instances in this process, started together. Client k (account base+k) sends
// REQUESTS create_transfers of PER_REQUEST transfers of amount k+1 to the hub, each followed by a
// lookup of its own account, sequentially per client, all clients concurrently.
async function manyClients(ctx) {
  const { assert } = ctx;
  const { hub, base, clients: n, idBase } = ctx.args;
  const clients = [];
  for (let k = 0; k < n; k++) clients.push(ctx.connect(ctx.args));
  const t0 = Date.now();
  const firstReplyMs = [];
  async function run(k) {
    const client = clients[k];
    const own = BigInt(base) + BigInt(k);
    const amount = BigInt(k + 1);
    for (let r = 0; r < REQUESTS; r++) {
      const ids = range(BigInt(idBase) + BigInt((k * REQUESTS + r) * PER_REQUEST), PER_REQUEST);
      const res = await ctx.within(client.createTransfers(ids.map((id) => transfer(id, own, hub, amount))), ms.big, `client ${k} request ${r}`);
      if (r === 0) firstReplyMs.push(Date.now() - t0);
      assert.deepStrictEqual(res, [], `client ${k} request ${r}: all transfers created`);
      const [acc] = await ctx.within(client.lookupAccounts([own]), ms.big, `client ${k} lookup ${r}`);
      const mine = amount * BigInt((r + 1) * PER_REQUEST);
      if ((ctx.args.processes || 1) === 1) assert.strictEqual(acc.debits_posted, mine, `client ${k}: own debits after request ${r}`);
      else assert.ok(acc.debits_posted >= mine, `client ${k}: own debits after request ${r} (${acc.debits_posted}) include its own ${mine}`);
    }
  }
  await Promise.all(clients.map((_c, k) => run(k)));
  return { elapsedMs: Date.now() - t0, firstReplyMaxMs: Math.max(...firstReplyMs) };
}

// Final balances: every client account debited exactly REQUESTS*PER_REQUEST*(k+1), the hub
// credited with the sum over all groups, and every transfer present exactly once.
async function verify(ctx) {
  const { assert } = ctx;
  const { groups } = ctx.args; // [{ hub, base, clients, idBase, processes }]
  const client = ctx.connect(ctx.args);
  for (const g of groups) {
    const per = REQUESTS * PER_REQUEST;
    const ids = range(g.base, g.clients);
    const acc = await accountsById(ctx, client, [g.hub, ...ids], `lookupAccounts group ${g.hub}`);
    let total = 0n;
    for (let p = 0; p < (g.processes || 1); p++) {
      for (let k = 0; k < g.clients; k++) {
        // In a multi-process group, process p's client k uses account base + k and amount k+1;
        // accounts are shared between processes (each process adds its own transfers).
        total += BigInt(per) * BigInt(k + 1);
      }
    }
    for (let k = 0; k < g.clients; k++) {
      checkBalances(assert, acc.get(ids[k]), { dP: BigInt(per * (g.processes || 1)) * BigInt(k + 1) }, `group ${g.hub} account ${ids[k]}`);
    }
    checkBalances(assert, acc.get(BigInt(g.hub)), { cP: total }, `group ${g.hub} hub`);
    const count = g.clients * per * (g.processes || 1);
    let found = 0;
    for (let off = 0; off < count; off += 8189) {
      const chunk = range(BigInt(g.idBase) + BigInt(off), Math.min(8189, count - off));
      found += (await ctx.within(client.lookupTransfers(chunk), ms.big, 'lookupTransfers')).length;
    }
    assert.strictEqual(found, count, `group ${g.hub}: every transfer exists`);
  }
  return null;
}

async function stillServing(ctx) {
  const client = ctx.connect(ctx.args);
  const { hub, other } = ctx.args;
  ctx.assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(999999999n, hub, other, 1n)]), ms.register, 'createTransfers (final)'), []);
  const acc = await accountsById(ctx, client, [hub, other]);
  ctx.assert.strictEqual(acc.get(BigInt(hub)).debits_posted, 1n);
  return null;
}

module.exports = { setup, manyClients, verify, stillServing };

'use strict';
// Scenarios for test/cluster.test.js: a client configured for another cluster id.

const { ms, account, transfer, accountsById, checkBalances } = require('./util');

const A = 1n, B = 2n;

// A client of cluster `args.cluster` (not the server's): its register never completes, so its
// requests stay pending. It must not crash; it reports whether anything settled within waitMs.
async function wrongCluster(ctx) {
  const client = ctx.connect(ctx.args);
  const create = ctx.settlesWithin(client.createAccounts([account(777n)]), ctx.args.waitMs);
  const lookup = ctx.settlesWithin(client.lookupAccounts([A]), ctx.args.waitMs);
  const [c, l] = await Promise.all([create, lookup]);
  const describe = (r) => (r.settled ? (r.error ? `rejected: ${r.error.message}` : `resolved: ${JSON.stringify(r.value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`) : 'pending');
  return { create: describe(c), lookup: describe(l) };
}

// A correct client of cluster 0: creates accounts and a transfer, checks the wrong cluster's
// account 777 was never created.
async function rightCluster(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const { round } = ctx.args;
  if (round === 0) {
    assert.deepStrictEqual(await ctx.within(client.createAccounts([account(A), account(B)]), ms.register, 'createAccounts'), []);
  }
  assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(100n + BigInt(round), A, B, 10n)]), ms.register, 'createTransfers'), []);
  const acc = await accountsById(ctx, client, [A, B]);
  checkBalances(assert, acc.get(A), { dP: 10n * BigInt(round + 1) }, 'account A');
  checkBalances(assert, acc.get(B), { cP: 10n * BigInt(round + 1) }, 'account B');
  assert.deepStrictEqual(await ctx.within(client.lookupAccounts([777n]), ms.call, 'lookupAccounts 777'), [], 'the other cluster\'s account was never created');
  return null;
}

module.exports = { wrongCluster, rightCluster };

'use strict';
// Scenarios for test/disconnect.test.js: clients that vanish mid-request, and connections cut by
// a proxy so that the client reconnects and retries on its own.

const { ms, account, transfer, range, accountsById, checkBalances } = require('./util');

const A = 1n, B = 2n, P = 3n, Q = 4n;
const BIG = 8189;

async function setup(ctx) {
  const client = ctx.connect(ctx.args);
  ctx.assert.deepStrictEqual(await ctx.within(client.createAccounts([account(A), account(B), account(P), account(Q)]), ms.register, 'createAccounts'), []);
  return null;
}

// Registers, then starts a 1 MiB create_transfers and announces it; the parent SIGKILLs this
// process while the request is on the wire or being executed.
async function bigRequestThenHang(ctx) {
  const client = ctx.connect(ctx.args);
  await ctx.within(client.lookupAccounts([A]), ms.register, 'register');
  const trs = range(BigInt(ctx.args.idBase), BIG).map((id) => transfer(id, A, B, 1n));
  const pending = client.createTransfers(trs);
  if (ctx.args.selfKillAfterUs !== undefined) {
    // Kill this process from inside, a few microseconds after handing the request to the client
    // (its IO thread sends it meanwhile), to hit the request before, during or after sending.
    const end = process.hrtime.bigint() + BigInt(ctx.args.selfKillAfterUs) * 1000n;
    while (process.hrtime.bigint() < end) { /* spin */ }
    process.kill(process.pid, 'SIGKILL');
  }
  ctx.emit('sent', null);
  await ctx.within(pending, ms.big, 'createTransfers (the parent should have killed this process)');
  ctx.emit('replied', null);
  await new Promise((resolve) => setTimeout(resolve, 60000));
  return null;
}

// After killed clients: each killed batch took effect entirely or not at all, balances equal the
// transfers that exist, and new work from a new client succeeds.
async function afterKills(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const applied = [];
  for (const idBase of ctx.args.idBases) {
    const got = await ctx.within(client.lookupTransfers(range(BigInt(idBase), BIG)), ms.big, `lookupTransfers ${idBase}`);
    assert.ok(got.length === 0 || got.length === BIG, `batch ${idBase}: all or nothing, found ${got.length} of ${BIG}`);
    applied.push(got.length === BIG);
  }
  const acc0 = await accountsById(ctx, client, [A, B], 'lookupAccounts (register)');
  const n = BigInt(applied.filter(Boolean).length * BIG);
  checkBalances(assert, acc0.get(A), { dP: n }, 'account A');
  checkBalances(assert, acc0.get(B), { cP: n }, 'account B');
  // The new client keeps working.
  assert.deepStrictEqual(await ctx.within(client.createTransfers(range(90000000n, 100).map((id) => transfer(id, A, B, 1n))), ms.call, 'createTransfers after kills'), []);
  const acc = await accountsById(ctx, client, [A, B]);
  checkBalances(assert, acc.get(A), { dP: n + 100n }, 'account A after new transfers');
  return { applied };
}

// Goes through the proxy: one create_transfers whose connection the proxy cuts. The client must
// reconnect and retransmit on its own, and the transfers must be applied exactly once: the
// results are all ok (not `exists`), each transfer exists once, balances moved once.
async function throughProxy(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args, { address: ctx.args.proxy });
  const acc0 = await accountsById(ctx, client, [P, Q], 'lookupAccounts via proxy');
  const ids = range(BigInt(ctx.args.idBase), ctx.args.count);
  const t0 = Date.now();
  const res = await ctx.within(client.createTransfers(ids.map((id) => transfer(id, P, Q, 7n))), 20000, 'createTransfers via proxy (cut)');
  const retryMs = Date.now() - t0;
  assert.deepStrictEqual(res, [], 'the retried request reports success for every event (executed once, reply replayed)');
  const got = await ctx.within(client.lookupTransfers(ids), ms.call, 'lookupTransfers via proxy');
  assert.strictEqual(got.length, ids.length, 'every transfer exists');
  const acc = await accountsById(ctx, client, [P, Q]);
  const moved = 7n * BigInt(ids.length);
  assert.strictEqual(acc.get(P).debits_posted - acc0.get(P).debits_posted, moved, 'P debited exactly once');
  assert.strictEqual(acc.get(Q).credits_posted - acc0.get(Q).credits_posted, moved, 'Q credited exactly once');
  // The session keeps working after the reconnect.
  assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(BigInt(ctx.args.idBase) + 100000n, Q, P, 1n)]), ms.call, 'createTransfers after reconnect'), []);
  return { retryMs };
}

async function stillServing(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const acc = await accountsById(ctx, client, [A, B, P, Q], 'lookupAccounts (final)');
  const { expectPQ } = ctx.args;
  assert.strictEqual(acc.get(P).debits_posted, acc.get(Q).credits_posted, 'P debits == Q credits');
  assert.strictEqual(acc.get(Q).debits_posted, acc.get(P).credits_posted, 'Q debits == P credits');
  if (expectPQ) {
    assert.strictEqual(acc.get(P).debits_posted, BigInt(expectPQ.pDebits), 'P debits');
    assert.strictEqual(acc.get(Q).credits_posted, BigInt(expectPQ.qCredits), 'Q credits');
  }
  assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(20000000n, B, A, 1n)]), ms.call, 'createTransfers (final)'), []);
  return null;
}

module.exports = { setup, bigRequestThenHang, afterKills, throughProxy, stillServing };

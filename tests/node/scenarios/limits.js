'use strict';
// Scenarios for test/limits.test.js: the largest batches the client sends (8189 events, a 1 MiB
// request) and the first batch size it refuses locally (8190).

const { ms, account, transfer, range, accountsById, checkBalances } = require('./util');

const A = 1n, B = 2n;
const MAX = 8189;
const ACC_BASE = 100000n; // 8189 accounts
const TR_BASE = 1000000n; // 8189 transfers
const OVER_BASE = 2000000n; // the refused 8190

async function setup(ctx) {
  const client = ctx.connect(ctx.args);
  ctx.assert.deepStrictEqual(await ctx.within(client.createAccounts([account(A), account(B)]), ms.register, 'createAccounts'), []);
  return null;
}

// 8189 accounts in one request, then 8189 transfers in one request; all succeed, and 8189 ids can
// be looked up in one request (a 1 MiB reply).
async function max8189(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const accs = range(ACC_BASE, MAX).map((id, i) => account(id, { user_data_32: i }));
  assert.deepStrictEqual(await ctx.within(client.createAccounts(accs), ms.big, 'createAccounts x8189'), [], 'all 8189 accounts created');
  const gotAccs = await ctx.within(client.lookupAccounts(accs.map((a) => a.id)), ms.big, 'lookupAccounts x8189');
  assert.strictEqual(gotAccs.length, MAX, 'all 8189 accounts found');
  for (let i = 0; i < MAX; i++) {
    if (gotAccs[i].id !== accs[i].id || gotAccs[i].user_data_32 !== i) assert.fail(`account #${i}: got id ${gotAccs[i].id} user_data_32 ${gotAccs[i].user_data_32}`);
    if (i > 0 && gotAccs[i].timestamp !== gotAccs[i - 1].timestamp + 1n) assert.fail(`account #${i}: timestamp ${gotAccs[i].timestamp} does not follow ${gotAccs[i - 1].timestamp} (one batch gets consecutive timestamps)`);
  }

  const trs = range(TR_BASE, MAX).map((id, i) => transfer(id, A, B, BigInt(i + 1)));
  assert.deepStrictEqual(await ctx.within(client.createTransfers(trs), ms.big, 'createTransfers x8189'), [], 'all 8189 transfers created');
  const got = await ctx.within(client.lookupTransfers(trs.map((t) => t.id)), ms.big, 'lookupTransfers x8189');
  assert.strictEqual(got.length, MAX, 'all 8189 transfers found');
  for (let i = 0; i < MAX; i++) {
    const t = got[i];
    if (t.id !== trs[i].id || t.amount !== trs[i].amount || t.debit_account_id !== A || t.credit_account_id !== B) {
      assert.fail(`transfer #${i}: got id ${t.id} amount ${t.amount} ${t.debit_account_id}->${t.credit_account_id}`);
    }
    if (i > 0 && t.timestamp !== got[i - 1].timestamp + 1n) assert.fail(`transfer #${i}: timestamp ${t.timestamp} does not follow ${got[i - 1].timestamp}`);
  }
  const sum = BigInt(MAX) * BigInt(MAX + 1) / 2n;
  const acc = await accountsById(ctx, client, [A, B]);
  checkBalances(assert, acc.get(A), { dP: sum }, 'account A');
  checkBalances(assert, acc.get(B), { cP: sum }, 'account B');
  return { sum: sum.toString() };
}

// Calls the client with too many events; returns the error message, failing if it was accepted.
async function refused(ctx, fn, label) {
  let error = null;
  try {
    const r = await ctx.within(Promise.resolve().then(fn), ms.call, label);
    ctx.assert.fail(`${label} was accepted: ${JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)).slice(0, 200)}`);
  } catch (e) {
    if (e.code === 'ERR_ASSERTION' || /^timeout:/.test(e.message)) throw e;
    error = e.message;
  }
  return error;
}

// 8190 events: the client throws locally; nothing reaches the server; the same client carries on.
async function over8190(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const before = await accountsById(ctx, client, [A, B]); // registers the client first
  const trs = range(OVER_BASE, MAX + 1).map((id) => transfer(id, A, B, 1n));
  const errT = await refused(ctx, () => client.createTransfers(trs), 'createTransfers x8190');
  assert.match(errT, /Too much data/i, 'createTransfers x8190 error message');
  const errA = await refused(ctx, () => client.createAccounts(range(3000000n, MAX + 1).map((id) => account(id))), 'createAccounts x8190');
  assert.match(errA, /Too much data/i, 'createAccounts x8190 error message');
  const errL = await refused(ctx, () => client.lookupAccounts(range(1n, MAX + 1)), 'lookupAccounts x8190');
  // The same client still works, and none of the refused events exist.
  const none = await ctx.within(client.lookupTransfers([OVER_BASE, OVER_BASE + 1n, OVER_BASE + BigInt(MAX)]), ms.call, 'lookupTransfers after refusal');
  assert.deepStrictEqual(none, [], 'none of the refused transfers exist');
  const noneA = await ctx.within(client.lookupAccounts([3000000n, 3000000n + BigInt(MAX)]), ms.call, 'lookupAccounts after refusal');
  assert.deepStrictEqual(noneA, [], 'none of the refused accounts exist');
  const after = await accountsById(ctx, client, [A, B]);
  assert.deepStrictEqual(after, before, 'balances unchanged');
  // A transfer of exactly 8189 from the same client still goes through.
  const ok = range(OVER_BASE, MAX).map((id) => transfer(id, A, B, 1n));
  assert.deepStrictEqual(await ctx.within(client.createTransfers(ok), ms.big, 'createTransfers x8189 after refusal'), []);
  const acc = await accountsById(ctx, client, [A, B]);
  assert.strictEqual(acc.get(A).debits_posted - before.get(A).debits_posted, BigInt(MAX));
  return { errT, errA, errL };
}

// A 1 MiB request from one client while other clients send small ones (merging and large frames
// interleaved on the server), then check the totals.
async function mixedSizes(ctx) {
  const { assert } = ctx;
  const big = ctx.connect(ctx.args);
  const small = [ctx.connect(ctx.args), ctx.connect(ctx.args)];
  const acc0 = await accountsById(ctx, big, [A, B]);
  const base = 4000000n;
  const bigBatch = range(base, MAX).map((id) => transfer(id, A, B, 1n));
  const calls = [ctx.within(big.createTransfers(bigBatch), ms.big, 'big createTransfers')];
  for (let k = 0; k < small.length; k++) {
    for (let j = 0; j < 10; j++) {
      // Several calls queued on one client at once: the client merges them into multi-batch requests.
      calls.push(ctx.within(small[k].createTransfers([transfer(base + 100000n + BigInt(k * 100 + j), B, A, 1n)]), ms.big, `small createTransfers ${k}/${j}`));
    }
  }
  const results = await Promise.all(calls);
  for (const r of results) assert.deepStrictEqual(r, []);
  const acc = await accountsById(ctx, big, [A, B]);
  assert.strictEqual(acc.get(A).debits_posted - acc0.get(A).debits_posted, BigInt(MAX));
  assert.strictEqual(acc.get(A).credits_posted - acc0.get(A).credits_posted, 20n);
  assert.strictEqual(acc.get(B).credits_posted - acc0.get(B).credits_posted, BigInt(MAX));
  assert.strictEqual(acc.get(B).debits_posted - acc0.get(B).debits_posted, 20n);
  return null;
}

async function stillServing(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const sum = BigInt(MAX) * BigInt(MAX + 1) / 2n + BigInt(MAX) * 2n;
  const acc = await accountsById(ctx, client, [A, B], 'lookupAccounts (final)');
  checkBalances(assert, acc.get(A), { dP: sum, cP: 20n }, 'account A');
  checkBalances(assert, acc.get(B), { cP: sum, dP: 20n }, 'account B');
  assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(9n, B, A, 5n)]), ms.call, 'createTransfers (final)'), []);
  return null;
}

module.exports = { setup, max8189, over8190, mixedSizes, stillServing };

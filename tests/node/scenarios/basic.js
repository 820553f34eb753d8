'use strict';
// Scenarios for test/basic.test.js: register, accounts, transfers, result codes, idempotency.
// Each runs in a fresh child process with a fresh client (so a fresh session).

const { ms, account, transfer, range, checkTimestamp, checkIncreasing, accountsById, checkBalances } = require('./util');

// Accounts used by this file (ledger 700 unless noted).
const A = 1001n, B = 1002n, C = 1003n, D = 1004n;
const U128 = (1n << 128n) - 2n; // any value is allowed in user_data_128, even near the maximum
const U64 = (1n << 64n) - 1n;
const U32 = 0xFFFFFFFF;

const ACCOUNTS = [
  account(A, { user_data_128: U128, user_data_64: 1n, user_data_32: 2, code: 11, flags: 0 }),
  account(B, { user_data_128: 3n, user_data_64: U64, user_data_32: U32, code: 12, flags: 0x08 /* history */ }),
  account(C, { user_data_128: 0n, user_data_64: 0n, user_data_32: 0, code: 65535, flags: 0x04 /* credits_must_not_exceed_debits */ }),
];
// C may not have credits above its debits: fund it first by a debit (A <- C) so credits fit.
const TRANSFERS = [
  transfer(5001n, A, B, 100n, { user_data_128: 77n, user_data_64: 88n, user_data_32: 99, code: 1 }),
  transfer(5002n, C, A, 50n, { code: 2 }),
  transfer(5003n, B, C, 30n, { code: 3, user_data_64: U64 }),
];
// Expected balances after TRANSFERS (debits_posted, credits_posted).
const AFTER_TRANSFERS = new Map([[A, { dP: 100n, cP: 50n }], [B, { dP: 30n, cP: 100n }], [C, { dP: 50n, cP: 30n }]]);

// The client is created, registers, and its first request completes.
async function register(ctx) {
  const t0 = Date.now();
  const client = ctx.connect(ctx.args);
  const found = await ctx.within(client.lookupAccounts([123456789n]), ms.register, 'first request (register + lookupAccounts)');
  ctx.assert.deepStrictEqual(found, [], 'lookup of a missing account on an empty ledger');
  const firstMs = Date.now() - t0;
  // The second request goes out at once over the registered session.
  const t1 = Date.now();
  const again = await ctx.within(client.lookupTransfers([1n, 2n]), ms.call, 'second request');
  ctx.assert.deepStrictEqual(again, []);
  return { firstMs, secondMs: Date.now() - t1 };
}

function checkAccount(ctx, got, want, what) {
  const { assert } = ctx;
  for (const f of ['id', 'user_data_128', 'user_data_64', 'user_data_32', 'reserved', 'ledger', 'code', 'flags']) {
    assert.strictEqual(got[f], want[f], `${what}: field ${f}`);
  }
  checkBalances(assert, got, {}, what);
  checkTimestamp(assert, got.timestamp, what);
}

async function accounts(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const before = BigInt(Date.now()) * 1000000n;
  // Two requests: a batch of two, then a batch of one.
  assert.deepStrictEqual(await ctx.within(client.createAccounts(ACCOUNTS.slice(0, 2)), ms.register, 'createAccounts #1'), []);
  assert.deepStrictEqual(await ctx.within(client.createAccounts(ACCOUNTS.slice(2)), ms.call, 'createAccounts #2'), []);
  // Lookup in a scrambled order, with a missing id: results come in request order, missing left out.
  const got = await ctx.within(client.lookupAccounts([C, 999999n, A, B]), ms.call, 'lookupAccounts');
  assert.deepStrictEqual(got.map((a) => a.id), [C, A, B], 'found accounts in request order, missing id left out');
  const byId = new Map(got.map((a) => [a.id, a]));
  for (const want of ACCOUNTS) checkAccount(ctx, byId.get(want.id), want, `account ${want.id}`);
  const created = ACCOUNTS.map((w) => byId.get(w.id));
  checkIncreasing(assert, created, 'accounts in creation order');
  // Timestamps are wall-clock nanoseconds (TigerBeetle's cluster time); allow generous skew.
  const after = BigInt(Date.now()) * 1000000n;
  const hour = 3600n * 1000000000n;
  for (const a of created) {
    assert.ok(a.timestamp > before - hour && a.timestamp < after + hour, `account ${a.id}: timestamp ${a.timestamp} is near the wall clock`);
  }
  // The same lookup again returns identical objects.
  const again = await ctx.within(client.lookupAccounts([C, A, B]), ms.call, 'lookupAccounts again');
  assert.deepStrictEqual(again, got.filter(Boolean));
  return { timestamps: created.map((a) => a.timestamp) };
}

async function transfers(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const accBefore = await accountsById(ctx, client, [A, B, C]);
  const results = await ctx.within(client.createTransfers(TRANSFERS), ms.call, 'createTransfers');
  assert.deepStrictEqual(results, [], 'all transfers created');
  const got = await ctx.within(client.lookupTransfers([5003n, 5001n, 424242n, 5002n]), ms.call, 'lookupTransfers');
  assert.deepStrictEqual(got.map((t) => t.id), [5003n, 5001n, 5002n], 'found transfers in request order');
  const byId = new Map(got.map((t) => [t.id, t]));
  for (const want of TRANSFERS) {
    const t = byId.get(want.id);
    for (const f of ['id', 'debit_account_id', 'credit_account_id', 'amount', 'pending_id', 'user_data_128', 'user_data_64', 'user_data_32', 'timeout', 'ledger', 'code', 'flags']) {
      assert.strictEqual(t[f], want[f], `transfer ${want.id}: field ${f}`);
    }
    checkTimestamp(assert, t.timestamp, `transfer ${want.id}`);
  }
  const created = TRANSFERS.map((w) => byId.get(w.id));
  checkIncreasing(assert, created, 'transfers in creation order');
  // One batch of 3 gets 3 consecutive timestamps (ledger-semantics.md 2.2).
  assert.strictEqual(created[2].timestamp - created[0].timestamp, 2n, 'one batch gets consecutive timestamps');
  const latestAccount = [...accBefore.values()].reduce((m, a) => (a.timestamp > m ? a.timestamp : m), 0n);
  assert.ok(created[0].timestamp > latestAccount, 'transfers are timestamped after the accounts');
  // Balances.
  const acc = await accountsById(ctx, client, [A, B, C]);
  for (const [id, want] of AFTER_TRANSFERS) checkBalances(assert, acc.get(id), want, `account ${id}`);
  // Balances changed, nothing else did.
  for (const id of [A, B, C]) {
    const x = acc.get(id), y = accBefore.get(id);
    for (const f of ['user_data_128', 'user_data_64', 'user_data_32', 'ledger', 'code', 'flags', 'timestamp']) {
      assert.strictEqual(x[f], y[f], `account ${id}: ${f} unchanged by transfers`);
    }
  }
  return { timestamps: created.map((t) => t.timestamp) };
}

async function resultCodes(ctx) {
  const { assert, tb } = ctx;
  const AE = tb.CreateAccountError;
  const TE = tb.CreateTransferError;
  const client = ctx.connect(ctx.args);
  const accResults = await ctx.within(client.createAccounts([
    ACCOUNTS[0], // identical to an existing account
    account(0n), // id zero
    account(D), // fine
    account(1005n, { ledger: 0 }), // ledger zero
    account(1006n, { code: 0 }), // code zero
    { ...ACCOUNTS[1], ledger: 701 }, // same id, another ledger
    account(1007n, { debits_posted: 5n }), // balances must be zero
  ]), ms.register, 'createAccounts with failures');
  assert.deepStrictEqual(accResults, [
    { index: 0, result: AE.exists },
    { index: 1, result: AE.id_must_not_be_zero },
    { index: 3, result: AE.ledger_must_not_be_zero },
    { index: 4, result: AE.code_must_not_be_zero },
    { index: 5, result: AE.exists_with_different_ledger },
    { index: 6, result: AE.debits_posted_must_be_zero },
  ], 'createAccounts results (only failures, ascending index)');
  const accs = await ctx.within(client.lookupAccounts([D, 1005n, 1006n, 1007n]), ms.call, 'lookupAccounts');
  assert.deepStrictEqual(accs.map((a) => a.id), [D], 'only the valid account was created');

  const trResults = await ctx.within(client.createTransfers([
    TRANSFERS[0], // identical to an existing transfer
    transfer(0n, A, B, 1n), // id zero
    transfer(6001n, A, A, 1n), // same account on both sides
    transfer(6002n, 777777n, B, 1n), // debit account does not exist
    transfer(6003n, A, D, 4n), // fine
    transfer(6004n, A, B, 1n, { ledger: 701 }), // ledger differs from the accounts'
    transfer(6005n, 0n, B, 1n), // debit account id zero
    { ...TRANSFERS[1], amount: 51n }, // same id, another amount
    transfer(6006n, A, B, 1n, { flags: 0x01 }), // linked chain: fine on its own, but ...
    transfer(6007n, A, A, 1n), // ... the next one fails, so the chain fails
  ]), ms.call, 'createTransfers with failures');
  assert.deepStrictEqual(trResults, [
    { index: 0, result: TE.exists },
    { index: 1, result: TE.id_must_not_be_zero },
    { index: 2, result: TE.accounts_must_be_different },
    { index: 3, result: TE.debit_account_not_found },
    { index: 5, result: TE.transfer_must_have_the_same_ledger_as_accounts },
    { index: 6, result: TE.debit_account_id_must_not_be_zero },
    { index: 7, result: TE.exists_with_different_amount },
    { index: 8, result: TE.linked_event_failed },
    { index: 9, result: TE.accounts_must_be_different },
  ], 'createTransfers results (only failures, ascending index)');
  const trs = await ctx.within(client.lookupTransfers([6001n, 6002n, 6003n, 6004n, 6005n, 6006n, 6007n]), ms.call, 'lookupTransfers');
  assert.deepStrictEqual(trs.map((t) => t.id), [6003n], 'only the valid transfer was created');
  // Balances: only transfer 6003 (A -> D, 4) was added.
  const acc = await accountsById(ctx, client, [A, B, C, D]);
  checkBalances(assert, acc.get(A), { dP: 104n, cP: 50n }, 'account A');
  checkBalances(assert, acc.get(B), AFTER_TRANSFERS.get(B), 'account B');
  checkBalances(assert, acc.get(C), AFTER_TRANSFERS.get(C), 'account C');
  checkBalances(assert, acc.get(D), { cP: 4n }, 'account D');
  return null;
}

// The same create_transfers twice: the second time every event reports `exists`, and balances
// count the transfers once. Then once more from a different client (another session).
async function idempotentRetry(ctx) {
  const { assert, tb } = ctx;
  const client = ctx.connect(ctx.args);
  const batch = range(7000n, 5).map((id) => transfer(id, B, D, 3n, { user_data_64: id }));
  const acc0 = await accountsById(ctx, client, [B, D]);
  assert.deepStrictEqual(await ctx.within(client.createTransfers(batch), ms.call, 'createTransfers first'), []);
  const exists = batch.map((_t, index) => ({ index, result: tb.CreateTransferError.exists }));
  assert.deepStrictEqual(await ctx.within(client.createTransfers(batch), ms.call, 'createTransfers again'), exists, 'second time: exists for every event');
  const other = ctx.connect(ctx.args);
  assert.deepStrictEqual(await ctx.within(other.createTransfers(batch), ms.register, 'createTransfers from another client'), exists, 'another client: exists for every event');
  const acc1 = await accountsById(ctx, client, [B, D]);
  assert.strictEqual(acc1.get(B).debits_posted - acc0.get(B).debits_posted, 15n, 'B debited once (5 x 3)');
  assert.strictEqual(acc1.get(D).credits_posted - acc0.get(D).credits_posted, 15n, 'D credited once (5 x 3)');
  const trs = await ctx.within(client.lookupTransfers(batch.map((t) => t.id)), ms.call, 'lookupTransfers');
  assert.strictEqual(trs.length, 5);
  return null;
}

// Everything created by the scenarios above, still there and unchanged, and new work succeeds.
async function stillServing(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const acc = await accountsById(ctx, client, [A, B, C, D], 'lookupAccounts (final)');
  checkBalances(assert, acc.get(A), { dP: 104n, cP: 50n }, 'account A');
  checkBalances(assert, acc.get(B), { dP: 45n, cP: 100n }, 'account B');
  checkBalances(assert, acc.get(C), { dP: 50n, cP: 30n }, 'account C');
  checkBalances(assert, acc.get(D), { cP: 19n }, 'account D');
  assert.deepStrictEqual(await ctx.within(client.createTransfers([transfer(8001n, D, A, 19n)]), ms.call, 'createTransfers (final)'), []);
  const acc2 = await accountsById(ctx, client, [A, D]);
  checkBalances(assert, acc2.get(D), { dP: 19n, cP: 19n }, 'account D after the final transfer');
  const all = await ctx.within(client.lookupTransfers([5001n, 5002n, 5003n, 6003n, ...range(7000n, 5), 8001n]), ms.call, 'lookupTransfers (final)');
  assert.strictEqual(all.length, 10, 'every transfer created in this file exists');
  return null;
}

module.exports = { register, accounts, transfers, resultCodes, idempotentRetry, stillServing };

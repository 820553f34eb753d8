'use strict';
// Scenarios for test/operations.test.js: the four query operations and two-phase transfers,
// including a pending timeout that the server's pulse expires, through the official client.

const { ms, account, transfer, accountsById, checkBalances } = require('./util');

const LEDGER = 900;
const A = 9001n, B = 9002n, C = 9003n;
const FLAG_HISTORY = 0x08;
const T_PENDING = 0x02, T_POST = 0x04, T_VOID = 0x08;
const F_DEBITS = 0x1, F_CREDITS = 0x2, F_REVERSED = 0x4;
const Q_REVERSED = 0x1;

function filter(over) {
  return {
    account_id: 0n, user_data_128: 0n, user_data_64: 0n, user_data_32: 0, code: 0,
    timestamp_min: 0n, timestamp_max: 0n, limit: 8189, flags: F_DEBITS | F_CREDITS, ...over,
  };
}

function query(over) {
  return {
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0, ledger: 0, code: 0,
    timestamp_min: 0n, timestamp_max: 0n, limit: 8189, flags: 0, ...over,
  };
}

async function setup(ctx, client) {
  const accounts = [
    account(A, { ledger: LEDGER, flags: FLAG_HISTORY, user_data_64: 11n, code: 5 }),
    account(B, { ledger: LEDGER, flags: FLAG_HISTORY, user_data_64: 11n, code: 6 }),
    account(C, { ledger: LEDGER, user_data_64: 12n, code: 5 }),
  ];
  ctx.assert.deepStrictEqual(await ctx.within(client.createAccounts(accounts), ms.register, 'createAccounts'), []);
  // Five transfers A->B (amounts 1..5, user_data_32 = i), then two B->C.
  const ts = [];
  for (let i = 1; i <= 5; i++) ts.push(transfer(90000n + BigInt(i), A, B, BigInt(i), { ledger: LEDGER, code: 7, user_data_32: i }));
  ts.push(transfer(90006n, B, C, 10n, { ledger: LEDGER, code: 8 }));
  ts.push(transfer(90007n, B, C, 20n, { ledger: LEDGER, code: 8, user_data_128: 42n }));
  ctx.assert.deepStrictEqual(await ctx.within(client.createTransfers(ts), ms.call, 'createTransfers'), []);
  return ts;
}

async function queries(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  await setup(ctx, client);
  const ids = (list) => list.map((t) => t.id);

  // get_account_transfers: debits and credits of B, ascending, then reversed, then limited.
  let got = await ctx.within(client.getAccountTransfers(filter({ account_id: B })), ms.call, 'getAccountTransfers B');
  assert.deepStrictEqual(ids(got), [90001n, 90002n, 90003n, 90004n, 90005n, 90006n, 90007n]);
  got = await ctx.within(client.getAccountTransfers(filter({ account_id: B, flags: F_CREDITS })), ms.call, 'credits only');
  assert.deepStrictEqual(ids(got), [90001n, 90002n, 90003n, 90004n, 90005n]);
  got = await ctx.within(client.getAccountTransfers(filter({ account_id: B, flags: F_DEBITS | F_REVERSED, limit: 1 })), ms.call, 'debits reversed limit 1');
  assert.deepStrictEqual(ids(got), [90007n]);
  got = await ctx.within(client.getAccountTransfers(filter({ account_id: B, user_data_128: 42n })), ms.call, 'user_data_128 filter');
  assert.deepStrictEqual(ids(got), [90007n]);
  const all = await ctx.within(client.getAccountTransfers(filter({ account_id: A })), ms.call, 'A all');
  got = await ctx.within(client.getAccountTransfers(filter({ account_id: A, timestamp_min: all[1].timestamp, timestamp_max: all[3].timestamp })), ms.call, 'timestamp range');
  assert.deepStrictEqual(ids(got), [90002n, 90003n, 90004n]);
  // An invalid filter (limit 0, or no account) gives an empty result, not an error.
  got = await ctx.within(client.getAccountTransfers(filter({ account_id: A, limit: 0 })), ms.call, 'limit 0');
  assert.deepStrictEqual(got, []);

  // get_account_balances: A has history; balances after each of its transfers.
  const balances = await ctx.within(client.getAccountBalances(filter({ account_id: A })), ms.call, 'getAccountBalances A');
  assert.deepStrictEqual(balances.map((b) => b.debits_posted), [1n, 3n, 6n, 10n, 15n]);
  assert.deepStrictEqual(balances.map((b) => b.timestamp), all.map((t) => t.timestamp));
  got = await ctx.within(client.getAccountBalances(filter({ account_id: C })), ms.call, 'getAccountBalances C (no history)');
  assert.deepStrictEqual(got, []);

  // query_accounts and query_transfers.
  let accounts = await ctx.within(client.queryAccounts(query({ ledger: LEDGER, user_data_64: 11n })), ms.call, 'queryAccounts');
  assert.deepStrictEqual(accounts.map((a) => a.id), [A, B]);
  accounts = await ctx.within(client.queryAccounts(query({ ledger: LEDGER, code: 5, flags: Q_REVERSED })), ms.call, 'queryAccounts reversed');
  assert.deepStrictEqual(accounts.map((a) => a.id), [C, A]);
  let transfers = await ctx.within(client.queryTransfers(query({ ledger: LEDGER, code: 8 })), ms.call, 'queryTransfers');
  assert.deepStrictEqual(ids(transfers), [90006n, 90007n]);
  transfers = await ctx.within(client.queryTransfers(query({ ledger: LEDGER, user_data_32: 3 })), ms.call, 'queryTransfers user_data_32');
  assert.deepStrictEqual(ids(transfers), [90003n]);
  transfers = await ctx.within(client.queryTransfers(query({ ledger: LEDGER, limit: 2, flags: Q_REVERSED })), ms.call, 'queryTransfers newest 2');
  assert.deepStrictEqual(ids(transfers), [90007n, 90006n]);
  return { balances: balances.length };
}

async function twoPhase(ctx) {
  const { assert } = ctx;
  const client = ctx.connect(ctx.args);
  const P = 9101n, Q = 9102n;
  assert.deepStrictEqual(await ctx.within(client.createAccounts([
    account(P, { ledger: LEDGER }), account(Q, { ledger: LEDGER }),
  ]), ms.register, 'createAccounts'), []);
  const results = await ctx.within(client.createTransfers([
    transfer(91001n, P, Q, 100n, { ledger: LEDGER, flags: T_PENDING }),
    transfer(91002n, P, Q, 50n, { ledger: LEDGER, flags: T_PENDING }),
    transfer(91003n, P, Q, 1n, { ledger: LEDGER, flags: T_PENDING, timeout: 1 }),
  ]), ms.call, 'pending transfers');
  assert.deepStrictEqual(results, []);
  let acc = await accountsById(ctx, client, [P, Q]);
  checkBalances(assert, acc.get(P), { dp: 151n }, 'P while pending');
  checkBalances(assert, acc.get(Q), { cp: 151n }, 'Q while pending');
  // Post 60 of the first (partial), void the second.
  assert.deepStrictEqual(await ctx.within(client.createTransfers([
    transfer(91011n, 0n, 0n, 60n, { ledger: 0, code: 0, pending_id: 91001n, flags: T_POST }),
    transfer(91012n, 0n, 0n, 0n, { ledger: 0, code: 0, pending_id: 91002n, flags: T_VOID }),
  ]), ms.call, 'post and void'), []);
  acc = await accountsById(ctx, client, [P, Q]);
  checkBalances(assert, acc.get(P), { dp: 1n, dP: 60n }, 'P after post/void');
  // Posting the first again: already posted (33).
  let again = await ctx.within(client.createTransfers([
    transfer(91013n, 0n, 0n, 1n, { ledger: 0, code: 0, pending_id: 91001n, flags: T_POST }),
  ]), ms.call, 'post again');
  assert.deepStrictEqual(again, [{ index: 0, result: 33 }]);
  // The third has a 1 s timeout: the server's pulse expires it and releases its amount.
  const deadline = Date.now() + 8000;
  for (;;) {
    acc = await accountsById(ctx, client, [P]);
    if (acc.get(P).debits_pending === 0n) break;
    assert.ok(Date.now() < deadline, 'the pending transfer with a 1 s timeout expired within 8 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  checkBalances(assert, acc.get(P), { dP: 60n }, 'P after expiry');
  again = await ctx.within(client.createTransfers([
    transfer(91014n, 0n, 0n, 1n, { ledger: 0, code: 0, pending_id: 91003n, flags: T_POST }),
  ]), ms.call, 'post expired');
  assert.deepStrictEqual(again, [{ index: 0, result: 35 }], 'pending_transfer_expired');
  return {};
}

module.exports = { queries, twoPhase };

'use strict';
// Builders and checks shared by the client scenarios (they run inside child.js).

const MAX63 = (1n << 63n) - 1n;
const ms = { register: 5000, call: 10000, big: 30000 };

function account(id, over = {}) {
  return {
    id: BigInt(id),
    debits_pending: 0n, debits_posted: 0n, credits_pending: 0n, credits_posted: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0,
    reserved: 0, ledger: 700, code: 10, flags: 0, timestamp: 0n,
    ...over,
  };
}

function transfer(id, debit, credit, amount, over = {}) {
  return {
    id: BigInt(id), debit_account_id: BigInt(debit), credit_account_id: BigInt(credit),
    amount: BigInt(amount), pending_id: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0,
    timeout: 0, ledger: 700, code: 1, flags: 0, timestamp: 0n,
    ...over,
  };
}

// [id, id+1, ..., id+n-1] as BigInts.
function range(id, n) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = BigInt(id) + BigInt(i);
  return out;
}

function checkTimestamp(assert, ts, what) {
  assert.equal(typeof ts, 'bigint', `${what}: timestamp is a bigint`);
  assert.ok(ts > 0n && ts <= MAX63, `${what}: timestamp ${ts} is within 1..2^63-1`);
}

// Asserts that timestamps are strictly increasing in the given order.
function checkIncreasing(assert, list, what) {
  for (let i = 1; i < list.length; i++) {
    assert.ok(list[i].timestamp > list[i - 1].timestamp,
      `${what}: timestamp of #${i} (${list[i].timestamp}) is after #${i - 1} (${list[i - 1].timestamp})`);
  }
}

// lookupAccounts for the given ids; asserts every id was found; returns a Map id -> account.
async function accountsById(ctx, client, ids, label = 'lookupAccounts') {
  const found = await ctx.within(client.lookupAccounts(ids.map(BigInt)), ms.call, label);
  const map = new Map(found.map((a) => [a.id, a]));
  for (const id of ids) ctx.assert.ok(map.has(BigInt(id)), `${label}: account ${id} exists`);
  return map;
}

// Asserts the four balances of an account.
function checkBalances(assert, acc, { dp = 0n, dP = 0n, cp = 0n, cP = 0n }, what) {
  assert.deepStrictEqual(
    { debits_pending: acc.debits_pending, debits_posted: acc.debits_posted, credits_pending: acc.credits_pending, credits_posted: acc.credits_posted },
    { debits_pending: BigInt(dp), debits_posted: BigInt(dP), credits_pending: BigInt(cp), credits_posted: BigInt(cP) },
    `${what}: balances`);
}

module.exports = { MAX63, ms, account, transfer, range, checkTimestamp, checkIncreasing, accountsById, checkBalances };

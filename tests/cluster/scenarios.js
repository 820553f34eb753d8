'use strict';
// Client scenarios for the cluster tests (cluster.test.js). Each runs in its own child process
// through tests/node/lib/child.js, so a client that aborts on a reply it cannot accept fails the
// test instead of the runner, and every call is bounded by ctx.within.
//
// Every transfer moves 1 from account A to account B, so the balances must equal the number of
// transfers that exist, and every transfer the cluster acknowledged must exist.

const fs = require('fs');
const { account, transfer, range } = require('../node/scenarios/util');

const A = 1n, B = 2n;
const LOOKUP_CHUNK = 200; // below the --development batch limit (253 per request)

function client(ctx, addresses) {
  return ctx.tb.createClient({ cluster_id: BigInt(ctx.args.cluster ?? 0), replica_addresses: addresses ?? ctx.args.addresses });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function createAccounts(ctx, c, timeoutMs) {
  const res = await ctx.within(c.createAccounts([account(A), account(B)]), timeoutMs, 'createAccounts');
  // 21 = exists: a retry of the writer after the accounts were made.
  ctx.assert.ok(res.every((r) => r.result === 21), `createAccounts: ${JSON.stringify(res)}`);
}

// Writes batches of `batch` transfers A->B back to back (a pause of `pauseMs` between), until the
// file `stopFile` exists. Before each request it emits `attempt` {first, count, sentAt}, after
// its reply `ack` {first, count, sentAt, ackedAt} (times from Date.now()). Every reply must be
// all-ok: the client retries a request on its own, and a retry must get the original reply.
async function writer(ctx) {
  const { assert } = ctx;
  const { batch = 50, pauseMs = 2, requestTimeoutMs = 20000, stopFile } = ctx.args;
  const c = client(ctx);
  await createAccounts(ctx, c, requestTimeoutMs);
  ctx.emit('ready', { at: Date.now() });
  let next = BigInt(ctx.args.idBase ?? 1000000);
  let batches = 0;
  while (!fs.existsSync(stopFile)) {
    const first = next;
    next += BigInt(batch);
    const sentAt = Date.now();
    ctx.emit('attempt', { first, count: batch, sentAt });
    const res = await ctx.within(c.createTransfers(range(first, batch).map((id) => transfer(id, A, B, 1n))),
      requestTimeoutMs, `createTransfers ${first}+${batch} (sent ${new Date(sentAt).toISOString()})`);
    const ackedAt = Date.now();
    assert.deepStrictEqual(res, [], `createTransfers ${first}+${batch}: every transfer created exactly once`);
    ctx.emit('ack', { first, count: batch, sentAt, ackedAt });
    batches++;
    if (pauseMs > 0) await sleep(pauseMs);
  }
  return { batches, next };
}

// Looks up every attempted transfer. Every acknowledged one must exist (an attempted one that was
// never acknowledged may or may not), and the balances must equal the transfers found.
async function verify(ctx) {
  const { assert } = ctx;
  const { attempted, acked, timeoutMs = 20000 } = ctx.args; // [[first, count], ...] as strings
  const c = client(ctx);
  const ackedSet = new Set();
  for (const [first, count] of acked) for (const id of range(BigInt(first), count)) ackedSet.add(id);
  const ids = [];
  for (const [first, count] of attempted) ids.push(...range(BigInt(first), count));
  let found = 0;
  const missing = [];
  for (let i = 0; i < ids.length; i += LOOKUP_CHUNK) {
    const chunk = ids.slice(i, i + LOOKUP_CHUNK);
    const got = await ctx.within(c.lookupTransfers(chunk), timeoutMs, `lookupTransfers ${chunk[0]}+${chunk.length}`);
    const have = new Set(got.map((t) => t.id));
    for (const t of got) {
      assert.strictEqual(t.debit_account_id, A);
      assert.strictEqual(t.credit_account_id, B);
      assert.strictEqual(t.amount, 1n);
    }
    found += got.length;
    for (const id of chunk) if (ackedSet.has(id) && !have.has(id)) missing.push(id);
  }
  assert.deepStrictEqual(missing.slice(0, 20).map(String), [], `${missing.length} acknowledged transfers are missing`);
  const accs = await ctx.within(c.lookupAccounts([A, B]), timeoutMs, 'lookupAccounts');
  const a = accs.find((x) => x.id === A);
  const b = accs.find((x) => x.id === B);
  assert.ok(a && b, 'accounts A and B exist');
  assert.strictEqual(a.debits_posted, BigInt(found), 'A debited once per transfer that exists');
  assert.strictEqual(b.credits_posted, BigInt(found), 'B credited once per transfer that exists');
  assert.strictEqual(a.credits_posted + a.debits_pending + b.debits_posted + b.credits_pending, 0n);
  return { attempted: ids.length, acknowledged: ackedSet.size, found };
}

// A client that knows only one replica's address: it must be served whichever replica it is.
async function singleAddress(ctx) {
  const { assert } = ctx;
  const { address, idBase, timeoutMs = 15000 } = ctx.args;
  const c = client(ctx, [address]);
  const t0 = Date.now();
  await createAccounts(ctx, c, timeoutMs);
  const firstMs = Date.now() - t0;
  const ids = range(BigInt(idBase), 20);
  assert.deepStrictEqual(await ctx.within(c.createTransfers(ids.slice(0, 10).map((id) => transfer(id, A, B, 1n))), timeoutMs, 'createTransfers #1'), []);
  assert.deepStrictEqual(await ctx.within(c.createTransfers(ids.slice(10).map((id) => transfer(id, A, B, 1n))), timeoutMs, 'createTransfers #2'), []);
  const got = await ctx.within(c.lookupTransfers(ids), timeoutMs, 'lookupTransfers');
  assert.strictEqual(got.length, ids.length, 'every transfer of this client is found');
  const accs = await ctx.within(c.lookupAccounts([A, B]), timeoutMs, 'lookupAccounts');
  assert.strictEqual(accs.length, 2);
  return { firstMs, totalMs: Date.now() - t0, debits: accs.find((x) => x.id === A).debits_posted };
}

module.exports = { writer, verify, singleAddress };

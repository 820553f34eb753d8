'use strict';
// The client pod's program (tests/deploy): the official Node client, given the client Service's
// name and resolving it as the connector does (connector-example.js).
//
//   node client.js write <replicas> <idBase> <batch>
//     Creates accounts A and B (or finds them), then writes batches of transfers A->B back to back
//     until stdin says "stop". Transfer id i carries amount 1 + i % 7 and user_data_64 i, so
//     "exactly as sent" can be checked from the id alone. One JSON line per event: ready,
//     attempt {first,count}, ack {first,count}, error {message} (a failed batch is counted and the
//     writer goes on with a new batch; nothing is retried by hand).
//   node client.js verify <replicas> <attempted.json>
//     Looks up every attempted transfer and the two accounts; prints {"ev":"verify",...}.
const fs = require('fs');
const tb = require('tigerbeetle-node');
const { resolveReplicaAddresses } = require('./connector-example.js');

const A = 1n, B = 2n, LEDGER = 700, CODE = 10;
const LOOKUP_CHUNK = 4000;

const out = (o) => process.stdout.write(JSON.stringify(o, (k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
const amountOf = (id) => 1n + (id % 7n);

function account(id) {
  return { id, debits_pending: 0n, debits_posted: 0n, credits_pending: 0n, credits_posted: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0, reserved: 0, ledger: LEDGER, code: CODE,
    flags: 0, timestamp: 0n };
}

function transfer(id) {
  return { id, debit_account_id: A, credit_account_id: B, amount: amountOf(id), pending_id: 0n,
    user_data_128: 0n, user_data_64: id, user_data_32: 0, timeout: 0, ledger: LEDGER, code: CODE,
    flags: 0, timestamp: 0n };
}

async function client(replicas) {
  return tb.createClient({ cluster_id: 0n, replica_addresses: await resolveReplicaAddresses(replicas) });
}

async function write(replicas, idBase, batch) {
  const c = await client(replicas);
  let stop = false;
  process.stdin.on('data', (d) => { if (d.toString().includes('stop')) stop = true; });
  process.stdin.on('end', () => { stop = true; });
  const res = await c.createAccounts([account(A), account(B)]);
  // 21: exists (a retried run); anything else is a failure of the setup.
  if (!res.every((r) => r.result === 21)) throw new Error(`createAccounts: ${JSON.stringify(res)}`);
  out({ ev: 'ready' });
  let next = BigInt(idBase);
  while (!stop) {
    const first = next;
    next += BigInt(batch);
    const ts = [];
    for (let i = 0n; i < BigInt(batch); i++) ts.push(transfer(first + i));
    out({ ev: 'attempt', first, count: batch });
    try {
      const r = await c.createTransfers(ts);
      if (r.length !== 0) out({ ev: 'error', first, message: `createTransfers: ${JSON.stringify(r.slice(0, 3))}` });
      else out({ ev: 'ack', first, count: batch });
    } catch (e) {
      out({ ev: 'error', first, message: String(e && e.message || e) });
    }
  }
  c.destroy();
}

async function verify(replicas, file) {
  const { attempted, acked } = JSON.parse(fs.readFileSync(file, 'utf8'));
  const c = await client(replicas);
  const ackedSet = new Set();
  for (const [first, count] of acked) for (let i = 0n; i < BigInt(count); i++) ackedSet.add(BigInt(first) + i);
  const ids = [];
  for (const [first, count] of attempted) for (let i = 0n; i < BigInt(count); i++) ids.push(BigInt(first) + i);
  let found = 0, sum = 0n, wrong = 0;
  const missing = [];
  for (let i = 0; i < ids.length; i += LOOKUP_CHUNK) {
    const chunk = ids.slice(i, i + LOOKUP_CHUNK);
    const got = await c.lookupTransfers(chunk);
    const have = new Set();
    for (const t of got) {
      have.add(t.id);
      const want = transfer(t.id);
      for (const k of Object.keys(want)) {
        if (k !== 'timestamp' && t[k] !== want[k]) { wrong++; break; }
      }
      sum += t.amount;
    }
    found += got.length;
    for (const id of chunk) if (ackedSet.has(id) && !have.has(id)) missing.push(id);
  }
  const accs = await c.lookupAccounts([A, B]);
  const a = accs.find((x) => x.id === A), b = accs.find((x) => x.id === B);
  c.destroy();
  out({ ev: 'verify', attempted: ids.length, acknowledged: ackedSet.size, found, lost: missing.length,
    lost_ids: missing.slice(0, 10), wrong, sum,
    a_debits: a ? a.debits_posted : null, b_credits: b ? b.credits_posted : null,
    others: a && b ? a.credits_posted + a.debits_pending + a.credits_pending + b.debits_posted + b.debits_pending + b.credits_pending : null });
}

const [mode, ...args] = process.argv.slice(2);
const run = mode === 'write' ? write(args[0], args[1], Number(args[2])) : verify(args[0], args[1]);
run.then(() => process.exit(0), (e) => { out({ ev: 'fatal', message: String(e && e.stack || e) }); process.exit(1); });

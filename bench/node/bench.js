// bench/node/bench.js: the `tally benchmark` transfer workload through the official client.
//
//   node bench.js --address=127.0.0.1:3000[,127.0.0.1:3001,...] [--accounts=10000] [--transfers=1000000]
//                 [--batch=8189] [--clients=4] [--hot-accounts=pareto|uniform]
//
// Creates the accounts, then the transfers in batches of --batch, with --clients client
// instances side by side (one request in flight each, as the protocol allows), each batch
// generated just before it is submitted, as the C benchmark does. Checks that no event failed
// and that total debits equal total credits equal the amount sent. Prints the same lines as
// `tally benchmark`: "transfers: N transfers in S s = R transfers/s" and the batch latency
// percentiles. Ids carry a random prefix so reruns against one server never collide.
'use strict';
const tb = require('tigerbeetle-node');
const crypto = require('crypto');

function flags() {
  const out = { address: '3000', accounts: 10000, transfers: 1000000, batch: 8189, clients: 4,
                'hot-accounts': 'pareto', cluster: '0' };
  for (const arg of process.argv.slice(2)) {
    const m = /^--([a-z-]+)=(.*)$/.exec(arg);
    if (!m || !(m[1] in out)) { console.error(`error: unknown argument ${arg}`); process.exit(2); }
    out[m[1]] = typeof out[m[1]] === 'number' ? Number(m[2]) : m[2];
  }
  return out;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil((sorted.length * p) / 100);
  return sorted[Math.max(rank, 1) - 1];
}

async function main() {
  const f = flags();
  const prefix = (crypto.randomBytes(8).readBigUInt64LE() >> 1n | 1n) << 64n;
  const accountId = (i) => prefix | BigInt(i + 1);
  const pick = f['hot-accounts'] === 'uniform'
    ? () => Math.floor(Math.random() * f.accounts)
    : () => Math.min(f.accounts - 1, Math.floor(f.accounts * Math.random() ** 7));
  const clients = [];
  for (let i = 0; i < f.clients; i++) {
    clients.push(tb.createClient({ cluster_id: BigInt(f.cluster), replica_addresses: f.address.split(',') }));
  }

  const account = (i) => ({
    id: accountId(i), debits_pending: 0n, debits_posted: 0n, credits_pending: 0n,
    credits_posted: 0n, user_data_128: 0n, user_data_64: BigInt(i), user_data_32: 0, reserved: 0,
    ledger: 1, code: 1, flags: 0, timestamp: 0n,
  });
  let failed = 0;
  for (let first = 0; first < f.accounts; first += f.batch) {
    const batch = [];
    for (let i = first; i < Math.min(f.accounts, first + f.batch); i++) batch.push(account(i));
    failed += (await clients[0].createAccounts(batch)).length;
  }
  console.log(`accounts: ${f.accounts} created`);

  let next = 0;
  let amountSent = 0n;
  const latencies = [];
  const makeBatch = () => {
    const batch = [];
    const end = Math.min(f.transfers, next + f.batch);
    for (; next < end; next++) {
      const debit = pick();
      let credit = pick();
      if (credit === debit) credit = (debit + 1) % f.accounts;
      const amount = BigInt(1 + Math.floor(Math.random() * 1000));
      amountSent += amount;
      batch.push({
        id: prefix | BigInt(next + 1), debit_account_id: accountId(debit),
        credit_account_id: accountId(credit), amount, pending_id: 0n, user_data_128: 0n,
        user_data_64: BigInt(next), user_data_32: 0, timeout: 0, ledger: 1, code: 1, flags: 0,
        timestamp: 0n,
      });
    }
    return batch;
  };
  const start = process.hrtime.bigint();
  await Promise.all(clients.map(async (client) => {
    while (next < f.transfers) {
      const batch = makeBatch();
      const sent = process.hrtime.bigint();
      failed += (await client.createTransfers(batch)).length;
      latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
    }
  }));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  latencies.sort((a, b) => a - b);
  console.log(`transfers: ${f.transfers} transfers in ${seconds.toFixed(3)} s = ` +
              `${Math.round(f.transfers / seconds)} transfers/s (${latencies.length} requests)`);
  console.log(`transfers: batch latency p50=${percentile(latencies, 50).toFixed(3)} ms ` +
              `p90=${percentile(latencies, 90).toFixed(3)} ms p99=${percentile(latencies, 99).toFixed(3)} ms ` +
              `p100=${percentile(latencies, 100).toFixed(3)} ms`);

  let debits = 0n, credits = 0n;
  for (let first = 0; first < f.accounts; first += f.batch) {
    const ids = [];
    for (let i = first; i < Math.min(f.accounts, first + f.batch); i++) ids.push(accountId(i));
    for (const a of await clients[0].lookupAccounts(ids)) {
      debits += a.debits_posted;
      credits += a.credits_posted;
    }
  }
  const ok = failed === 0 && debits === amountSent && credits === amountSent;
  console.log(`verify: ${ok ? 'ok' : 'FAILED'} failed_events=${failed} sum_debits=${debits} ` +
              `sum_credits=${credits} amount_sent=${amountSent}`);
  // destroy() waits for requests in flight; every one has finished here.
  for (const client of clients) client.destroy();
  process.exit(ok ? 0 : 1);
}

main().catch((error) => { console.error(`error: ${error.message}`); process.exit(1); });

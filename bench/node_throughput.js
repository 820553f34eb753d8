#!/usr/bin/env node
'use strict';
// Throughput of one Tally replica through the official Node client (tigerbeetle-node 0.16.66,
// installed by tests/run_node.sh or `npm ci --prefix tests/node`).
//
//   node bench/node_throughput.js [--address=HOST:PORT] [--single-seconds=5] [--batch-seconds=10]
//                                 [--accounts=10000] [--clients=1]
//
// Without --address it formats a data file in a temporary directory, starts ./tally (or
// $TALLY_BIN) on a free port, and reports the server's peak RSS (VmHWM) at the end.
// Measures:
//   (a) requests/s: each client sends one-transfer create_transfers requests back to back
//   (b) transfers/s: each client sends 8189-transfer create_transfers requests back to back
// Transfers go between pseudo-random distinct accounts, amount 1. Results are checked: any
// failed transfer aborts the run. Prints one JSON object on the last line.

const path = require('path');

const REPO = path.resolve(__dirname, '..');
const tb = require(path.join(REPO, 'tests/node/node_modules/tigerbeetle-node'));
const { startServer } = require(path.join(REPO, 'tests/node/lib/server'));

const args = Object.fromEntries(process.argv.slice(2).map((a) => {
  const m = /^--([^=]+)=(.*)$/.exec(a);
  if (!m) { console.error(`bad argument ${a}`); process.exit(2); }
  return [m[1], m[2]];
}));
const SINGLE_S = Number(args['single-seconds'] ?? 5);
const BATCH_S = Number(args['batch-seconds'] ?? 10);
const ACCOUNTS = Number(args.accounts ?? 10000);
const CLIENTS = Number(args.clients ?? 1);
const BATCH = 8189;

// Nothing in the client times out: bound the whole run.
const deadline = setTimeout(() => { console.error('benchmark timed out'); process.exit(1); }, (SINGLE_S + BATCH_S + 60) * 1000);
deadline.unref();

function within(promise, ms, label) {
  let timer;
  return Promise.race([promise, new Promise((_r, reject) => { timer = setTimeout(() => reject(new Error(`timeout: ${label}`)), ms); })])
    .finally(() => clearTimeout(timer));
}

let seed = 12345;
function rand(n) { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; }

function transfer(id) {
  const d = rand(ACCOUNTS);
  let c = rand(ACCOUNTS - 1);
  if (c >= d) c++;
  return {
    id, debit_account_id: BigInt(d + 1), credit_account_id: BigInt(c + 1), amount: 1n, pending_id: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0, timeout: 0, ledger: 1, code: 1, flags: 0, timestamp: 0n,
  };
}

function percentile(sorted, p) { return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null; }

async function main() {
  let server = null;
  let address = args.address;
  if (!address) {
    server = await startServer();
    address = server.address;
  }
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) clients.push(tb.createClient({ cluster_id: 0n, replica_addresses: [address] }));
  try {
    // Accounts.
    for (let base = 0; base < ACCOUNTS; base += BATCH) {
      const n = Math.min(BATCH, ACCOUNTS - base);
      const accs = [];
      for (let i = 0; i < n; i++) {
        accs.push({
          id: BigInt(base + i + 1), debits_pending: 0n, debits_posted: 0n, credits_pending: 0n, credits_posted: 0n,
          user_data_128: 0n, user_data_64: 0n, user_data_32: 0, reserved: 0, ledger: 1, code: 1, flags: 0, timestamp: 0n,
        });
      }
      const res = await within(clients[0].createAccounts(accs), 30000, 'createAccounts');
      if (res.length) throw new Error(`createAccounts failed: ${JSON.stringify(res.slice(0, 3))}`);
    }
    await Promise.all(clients.map((c) => within(c.lookupAccounts([1n]), 10000, 'register')));
    let nextId = 1n << 64n;

    // (a) one transfer per request.
    const lat = [];
    let requests = 0;
    let t0 = process.hrtime.bigint();
    let end = t0 + BigInt(SINGLE_S * 1e9);
    await Promise.all(clients.map(async (c) => {
      while (process.hrtime.bigint() < end) {
        const s = process.hrtime.bigint();
        const res = await within(c.createTransfers([transfer(nextId++)]), 10000, 'createTransfers x1');
        if (res.length) throw new Error(`createTransfers failed: ${JSON.stringify(res)}`);
        lat.push(Number(process.hrtime.bigint() - s) / 1e3);
        requests++;
      }
    }));
    const singleSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    lat.sort((x, y) => x - y);

    // (b) 8189 transfers per request.
    let batches = 0;
    const batchLat = [];
    t0 = process.hrtime.bigint();
    end = t0 + BigInt(BATCH_S * 1e9);
    await Promise.all(clients.map(async (c) => {
      while (process.hrtime.bigint() < end) {
        const batch = new Array(BATCH);
        for (let i = 0; i < BATCH; i++) batch[i] = transfer(nextId++);
        const s = process.hrtime.bigint();
        const res = await within(c.createTransfers(batch), 30000, 'createTransfers x8189');
        batchLat.push(Number(process.hrtime.bigint() - s) / 1e6);
        if (res.length) throw new Error(`createTransfers failed: ${JSON.stringify(res.slice(0, 3))}`);
        batches++;
      }
    }));
    const batchSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    batchLat.sort((x, y) => x - y);

    const out = {
      clients: CLIENTS,
      accounts: ACCOUNTS,
      single: {
        requests, seconds: +singleSeconds.toFixed(2), requests_per_second: Math.round(requests / singleSeconds),
        latency_us_p50: Math.round(percentile(lat, 0.5)), latency_us_p99: Math.round(percentile(lat, 0.99)),
      },
      batch: {
        batches, transfers: batches * BATCH, seconds: +batchSeconds.toFixed(2),
        transfers_per_second: Math.round(batches * BATCH / batchSeconds),
        request_ms_p50: +percentile(batchLat, 0.5).toFixed(2), request_ms_p99: +percentile(batchLat, 0.99).toFixed(2),
      },
      server_peak_rss_mib: server ? +(server.peakRssKiB() / 1024).toFixed(1) : null,
    };
    console.log(`(a) ${out.single.requests_per_second} requests/s with one transfer each (p50 ${out.single.latency_us_p50} µs, p99 ${out.single.latency_us_p99} µs)`);
    console.log(`(b) ${out.batch.transfers_per_second} transfers/s in batches of ${BATCH} (p50 ${out.batch.request_ms_p50} ms per request)`);
    if (server) console.log(`(c) server peak RSS (VmHWM) ${out.server_peak_rss_mib} MiB`);
    console.log(JSON.stringify(out));
  } finally {
    for (const c of clients) { try { c.destroy(); } catch (_) { /* ignore */ } }
    if (server) await server.stop();
  }
}

main().then(() => process.exit(0), (e) => { console.error(e && e.stack || e); process.exit(1); });

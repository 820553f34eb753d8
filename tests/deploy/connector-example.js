'use strict';
// tests/deploy/connector-example.js: how an application (the connector) reaches a Tally cluster
// in Kubernetes through the client Service, with the official Node client.
//
//   TIGERBEETLE_CLUSTER_ID=0 TIGERBEETLE_REPLICAS=tally.tally.svc.cluster.local node connector-example.js
//
// Three things the Node client needs that a Kubernetes setting does not give it as it is:
//   - IP literals: the client rejects a host name ("Invalid replica address."), so each
//     TIGERBEETLE_REPLICAS entry is resolved here first (dns.lookup: /etc/hosts, then the
//     cluster DNS). The Service's ClusterIP is one address, and any ready replica behind it
//     serves the client (a backup forwards to the primary), so one entry is enough.
//   - a port: an entry without one gets 3000, the port of the Service in deploy/kubernetes.
//   - a BigInt cluster id: `cluster_id: 0` (a JS number) is refused; BigInt(process.env...) works
//     for the whole u128 range, which a Number cannot hold.
// The cluster id must be the manifests' TALLY_CLUSTER ("0"); the replica count does not matter to
// the client. Resolving happens once, at start: if the Service were re-created with another IP,
// restart the application (a ClusterIP does not change while the Service exists).
const dns = require('node:dns/promises');
const net = require('node:net');
const { createClient, AccountFlags, CreateAccountError, CreateTransferError } = require('tigerbeetle-node');

const DEFAULT_PORT = 3000;

// "host[:port]" or "[v6]:port" or "v6" -> "ip:port" (or "[v6]:port"), for every entry.
async function resolveReplicaAddresses(list) {
  const out = [];
  for (const raw of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    let host = raw, port = DEFAULT_PORT;
    const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(raw);
    if (bracket) { host = bracket[1]; port = bracket[2] ? Number(bracket[2]) : DEFAULT_PORT; }
    else if (!net.isIPv6(raw) && raw.includes(':')) { host = raw.slice(0, raw.lastIndexOf(':')); port = Number(raw.slice(raw.lastIndexOf(':') + 1)); }
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad port in replica address '${raw}'`);
    const ip = net.isIP(host) ? host : (await dns.lookup(host)).address;
    out.push(net.isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`);
  }
  if (out.length === 0) throw new Error('TIGERBEETLE_REPLICAS is empty');
  return out;
}

async function connect() {
  const clusterId = BigInt(process.env.TIGERBEETLE_CLUSTER_ID || '0');
  const addresses = await resolveReplicaAddresses(process.env.TIGERBEETLE_REPLICAS || 'tally.tally.svc.cluster.local');
  return { client: createClient({ cluster_id: clusterId, replica_addresses: addresses }), addresses };
}

// Every field of an account and a transfer is given: the client throws on a missing one
// (e.g. "debits_pending must be a BigInt").
function account(id, ledger, code, flags = 0) {
  return { id, debits_pending: 0n, debits_posted: 0n, credits_pending: 0n, credits_posted: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0, reserved: 0, ledger, code, flags, timestamp: 0n };
}

function transfer(id, debit, credit, amount, ledger, code) {
  return { id, debit_account_id: debit, credit_account_id: credit, amount, pending_id: 0n,
    user_data_128: 0n, user_data_64: 0n, user_data_32: 0, timeout: 0, ledger, code, flags: 0, timestamp: 0n };
}

async function main() {
  const { client, addresses } = await connect();
  console.log(`replica_addresses=${addresses.join(',')}`);
  // Ids unique to this run, so the example can run again against the same cluster.
  const base = BigInt(Date.now()) * 1000n;
  const [a, b] = [base + 1n, base + 2n];
  const accountErrors = await client.createAccounts([
    account(a, 1, 1),
    account(b, 1, 1, AccountFlags.debits_must_not_exceed_credits),
  ]);
  for (const e of accountErrors) throw new Error(`create_accounts[${e.index}]: ${CreateAccountError[e.result]}`);
  const transferErrors = await client.createTransfers([transfer(base + 10n, a, b, 250n, 1, 1)]);
  for (const e of transferErrors) throw new Error(`create_transfers[${e.index}]: ${CreateTransferError[e.result]}`);
  const [got] = await client.lookupTransfers([base + 10n]);
  const accounts = await client.lookupAccounts([a, b]);
  client.destroy();
  if (!got || got.amount !== 250n) throw new Error('lookup_transfers did not return the transfer');
  const credited = accounts.find((x) => x.id === b);
  if (!credited || credited.credits_posted !== 250n) throw new Error('account b was not credited 250');
  console.log(`ok: transfer ${got.id} of ${got.amount} from ${a} to ${b}; b credits_posted=${credited.credits_posted}`);
}

module.exports = { resolveReplicaAddresses, DEFAULT_PORT };
if (require.main === module) main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });

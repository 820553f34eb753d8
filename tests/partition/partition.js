'use strict';
// The partition suite's driver (started by tests/partition/run.sh, which creates the pods).
//
// For each scenario: three fresh data files, a replica in each pod r0..r2, the client pod's
// writer (client.js) writing transfers back to back, then the scenario's faults. Afterwards the
// faults are healed, every replica runs again, and the checks run:
//   - lost: acknowledged transfers that the cluster does not return (must be 0); each one found
//     must be exactly as sent, and the accounts' balances must equal the sum of those found;
//   - identical: every replica's data file, executed to the same op, has the same ledger and the
//     same hash chain (tests/server/digest);
//   - unavailable: the longest time without an acknowledgement while a majority of replicas could
//     talk to one another and to the client (a scenario marks the windows where none could),
//     which must stay under the scenario's threshold.
// Prints one line per scenario and, last, "N passed, N failed". Arguments: --long (longer
// faults, more flapping), and scenario names to run only those.

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { spawn, spawnSync, execFileSync } = require('child_process');
const { runAsync } = require('../node/lib/spawn');

const ROOT = path.resolve(__dirname, '..', '..');
const TALLY = process.env.TALLY_BIN || path.join(ROOT, 'tally');
const DIGEST = path.join(ROOT, 'build', 'release', 'tests', 'server', 'digest');
const NS = process.env.TALLY_PARTITION_NS;
const WORK = process.env.TALLY_PARTITION_WORK;
const IPS = ['10.77.0.1', '10.77.0.2', '10.77.0.3'];
const CLIENT_IP = '10.77.0.100';
const ADDRESSES = IPS.map((ip) => `${ip}:3000`).join(',');
const FAKETIME_LIB = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';

const args = process.argv.slice(2);
const LONG = args.includes('--long');
const only = args.filter((a) => !a.startsWith('--'));
const D = LONG ? 24000 : 6000; // how long a fault lasts

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const pod = (name) => `${NS}-${name}`;

function iptables(podName, ...rule) {
  execFileSync('ip', ['netns', 'exec', pod(podName), 'iptables', '-w', ...rule], { stdio: 'pipe' });
}

class Replica {
  constructor(run, index, skew) {
    this.run = run;
    this.index = index;
    this.skew = skew; // faketime offset of the realtime clock, e.g. "+30s", or null
    this.file = path.join(run.dir, `0_${index}.tally`);
    this.logFile = path.join(run.dir, `replica-${index}.log`);
    this.child = null;
    this.exited = true;
    this.log = '';
  }

  format() {
    execFileSync(TALLY, ['format', '--cluster=0', `--replica=${this.index}`, '--replica-count=3',
      '--development', this.file], { stdio: 'pipe', timeout: 60000 });
  }

  append(text) {
    this.log = (this.log + text).slice(-4194304);
    fs.appendFileSync(this.logFile, text);
  }

  async start() {
    const env = { ...process.env };
    if (this.skew) {
      // Only the realtime clock (the cluster timestamps) is skewed; timeouts keep real time.
      Object.assign(env, { LD_PRELOAD: FAKETIME_LIB, FAKETIME: this.skew, FAKETIME_DONT_FAKE_MONOTONIC: '1' });
    }
    const argv = ['netns', 'exec', pod(`r${this.index}`), TALLY, 'start', `--addresses=${ADDRESSES}`,
      '--development', this.file];
    this.append(`---- start ${new Date().toISOString()} skew=${this.skew}\n`);
    const child = spawn('ip', argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.exited = false;
    this.current = '';
    this.exit = new Promise((resolve) => child.on('exit', (code, signal) => {
      this.exited = true;
      this.append(`---- exited code=${code} signal=${signal} ${new Date().toISOString()}\n`);
      resolve();
    }));
    const take = (d) => { this.current += d.toString(); this.append(d.toString()); };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline && !this.exited && !this.current.includes('listening on')) await sleep(20);
    if (!this.current.includes('listening on')) throw new Error(`replica ${this.index} did not start: ${this.log.slice(-2000)}`);
  }

  // `ip netns exec` execs the server, so the child's pid is the server's.
  signal(sig) { if (!this.exited) this.child.kill(sig); }

  async kill() {
    if (this.exited) return;
    this.child.kill('SIGKILL');
    await Promise.race([this.exit, sleep(10000)]);
  }
}

class Run {
  constructor(name, skews) {
    this.name = name;
    this.dir = path.join(WORK, name);
    fs.mkdirSync(this.dir, { recursive: true });
    this.replicas = [0, 1, 2].map((i) => new Replica(this, i, skews ? skews[i] : null));
    this.acks = []; // times of acknowledgements
    this.attempted = [];
    this.acked = [];
    this.windows = []; // { at, serve }: from `at` on, the cluster must serve (or need not)
    this.events = [];
    this.stopped = new Set();
    this.writer = null;
    this.writerError = null;
  }

  note(text) { this.events.push(`${((Date.now() - this.t0) / 1000).toFixed(1)}s ${text}`); }

  // From now on a majority can (true) or cannot (false) talk to each other and the client.
  serve(yes) { this.windows.push({ at: Date.now(), serve: yes }); this.note(yes ? 'majority connected' : 'no majority'); }

  // The primary as the logs tell it: the highest view started or joined, mod 3.
  view() {
    let view = 0;
    for (const r of this.replicas) {
      for (const m of r.log.matchAll(/(?:primary of view|joining view) view=(\d+)/g)) view = Math.max(view, Number(m[1]));
    }
    return view;
  }

  primary() { return this.view() % 3; }

  // Waits (bounded) until every replica has joined the newest view: a replica cut off for a
  // while may take seconds to hear of it after a heal (TCP retransmission backoff; see README).
  async settle(timeoutMs = 15000) {
    const deadline = Date.now() + timeoutMs;
    const joined = (r) => Math.max(-1, ...[...r.log.matchAll(/(?:primary of view|joining view|view change started) view=(\d+)/g)].map((m) => Number(m[1])));
    while (Date.now() < deadline && !this.replicas.every((r) => r.exited || joined(r) >= this.view())) await sleep(100);
    this.note(`settled in view ${this.view()}`);
  }

  backups() { return [0, 1, 2].filter((i) => i !== this.primary()); }

  // Waits until a view newer than `view` has a primary (bounded), and returns its index.
  async newPrimary(view, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && this.view() <= view) await sleep(50);
    return this.primary();
  }

  // Drops every packet between replica i and every other pod.
  isolate(i) {
    iptables(`r${i}`, '-A', 'INPUT', '-s', '10.77.0.0/24', '-j', 'DROP');
    iptables(`r${i}`, '-A', 'OUTPUT', '-d', '10.77.0.0/24', '-j', 'DROP');
    this.note(`isolate r${i}`);
  }

  // Drops every packet between replicas a and b.
  cut(a, b) {
    iptables(`r${a}`, '-A', 'OUTPUT', '-d', IPS[b], '-j', 'DROP');
    iptables(`r${a}`, '-A', 'INPUT', '-s', IPS[b], '-j', 'DROP');
    this.note(`cut r${a} - r${b}`);
  }

  // Drops the packets replica `from` sends to `to` (a replica index, or 'c'); the other way works.
  cutOneWay(from, to) {
    iptables(`r${from}`, '-A', 'OUTPUT', '-d', to === 'c' ? CLIENT_IP : IPS[to], '-j', 'DROP');
    this.note(`cut r${from} -> ${to === 'c' ? 'client' : `r${to}`}`);
  }

  // Each pod drops this fraction of the packets it receives.
  loss(p) {
    for (const name of ['r0', 'r1', 'r2', 'c']) {
      iptables(name, '-A', 'INPUT', '-m', 'statistic', '--mode', 'random', '--probability', String(p), '-j', 'DROP');
    }
    this.note(`loss ${p}`);
  }

  heal() {
    for (const name of ['r0', 'r1', 'r2', 'c']) { iptables(name, '-F', 'INPUT'); iptables(name, '-F', 'OUTPUT'); }
    this.note('heal');
  }

  async kill(i) { await this.replicas[i].kill(); this.note(`kill -9 r${i}`); }
  async restart(i) { await this.replicas[i].start(); this.note(`restart r${i}`); }
  freeze(i) { this.replicas[i].signal('SIGSTOP'); this.stopped.add(i); this.note(`SIGSTOP r${i}`); }
  thaw(i) { this.replicas[i].signal('SIGCONT'); this.stopped.delete(i); this.note(`SIGCONT r${i}`); }

  async startCluster() {
    for (const r of this.replicas) r.format();
    await Promise.all(this.replicas.map((r) => r.start()));
  }

  startWriter(idBase) {
    const child = spawn('ip', ['netns', 'exec', pod('c'), 'node', path.join(__dirname, 'client.js'),
      'write', ADDRESSES, String(idBase), '20'], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.writer = child;
    this.writerExit = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    let stderr = '';
    child.stderr.on('data', (d) => { stderr = (stderr + d.toString()).slice(-4000); });
    this.writerStderr = () => stderr;
    let ready;
    const readyP = new Promise((resolve) => { ready = resolve; });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let e;
      try { e = JSON.parse(line); } catch (_) { return; }
      if (e.ev === 'ready') ready(true);
      else if (e.ev === 'attempt') this.attempted.push([e.first, e.count]);
      else if (e.ev === 'ack') { this.acked.push([e.first, e.count]); this.acks.push(Date.now()); }
      else if (e.ev === 'error') { this.writerError = e.message; ready(false); }
    });
    this.writerExit.then(() => ready(false));
    return Promise.race([readyP, sleep(30000).then(() => false)]);
  }

  async stopWriter(timeoutMs = 30000) {
    if (!this.writer) return true;
    try { this.writer.stdin.write('stop\n'); this.writer.stdin.end(); } catch (_) { /* gone */ }
    const code = await Promise.race([this.writerExit, sleep(timeoutMs).then(() => 'timeout')]);
    if (code === 'timeout') { this.writer.kill('SIGKILL'); await this.writerExit; return false; }
    return code === 0;
  }

  // The longest time (ms) without an acknowledgement inside the windows where the cluster must
  // serve. A window that starts in the middle of a gap counts from its start.
  // The gap is kept in this.worstGap ({ from, to } in seconds since t0) for the report.
  unavailableMs(end) {
    let worst = 0;
    const gap = (from, to) => {
      if (to - from <= worst) return;
      worst = to - from;
      this.worstGap = { from: (from - this.t0) / 1000, to: (to - this.t0) / 1000 };
    };
    for (let k = 0; k < this.windows.length; k++) {
      if (!this.windows[k].serve) continue;
      const s = this.windows[k].at;
      const e = k + 1 < this.windows.length ? this.windows[k + 1].at : end;
      let last = s;
      for (const t of this.acks) {
        if (t <= s) continue;
        if (t > e) break;
        gap(last, t);
        last = t;
      }
      gap(last, e);
    }
    return worst;
  }

  // Asynchronous (runAsync, not spawnSync): the replicas' output pipes are read by this
  // process's event loop, and a replica whose pipe fills blocks in its next log write.
  async verify() {
    const file = path.join(this.dir, 'attempted.json');
    fs.writeFileSync(file, JSON.stringify({ attempted: this.attempted, acked: this.acked }));
    const r = await runAsync('ip', ['netns', 'exec', pod('c'), 'node', path.join(__dirname, 'client.js'),
      'verify', ADDRESSES, file], { timeout: 60000 });
    const line = (r.stdout || '').trim().split('\n').pop();
    try { return JSON.parse(line); } catch (_) { return { ev: 'error', message: `verify: ${r.status} ${r.stderr}` }; }
  }

  inspect(i) {
    const r = spawnSync(TALLY, ['inspect', '--json', '--live', this.replicas[i].file], { encoding: 'utf8', timeout: 20000 });
    try {
      const j = JSON.parse(r.stdout);
      return { head: Math.max(j.wal ? j.wal.op_max : 0, j.checkpoint_op || 0), checkpoint: j.checkpoint_op || 0 };
    } catch (_) { return { head: 0, checkpoint: 0 }; }
  }

  // Waits (bounded) until every replica's journal reaches the same op, stops them, and compares
  // their state at the lowest op all of them have. Returns null or what differs.
  async identical() {
    const deadline = Date.now() + 15000;
    let heads;
    do {
      await sleep(500);
      heads = [0, 1, 2].map((i) => this.inspect(i));
    } while (Date.now() < deadline && new Set(heads.map((h) => h.head)).size > 1);
    for (const r of this.replicas) await r.kill();
    heads = [0, 1, 2].map((i) => this.inspect(i));
    const target = Math.min(...heads.map((h) => h.head));
    const digests = this.replicas.map((r) => {
      const d = spawnSync(DIGEST, [r.file, String(target)], { encoding: 'utf8', timeout: 60000 });
      return d.status === 0 ? d.stdout.trim() : `error: ${(d.stderr || '').trim()}`;
    });
    if (new Set(digests).size === 1 && !digests[0].startsWith('error')) return { ok: true, op: target };
    return { ok: false, op: target, digests, heads };
  }

  async destroy() {
    for (const i of this.stopped) this.replicas[i].signal('SIGCONT');
    if (this.writer && this.writer.exitCode === null) this.writer.kill('SIGKILL');
    for (const r of this.replicas) await r.kill();
    try { this.heal(); } catch (_) { /* pods gone */ }
    if (!process.env.TALLY_PARTITION_KEEP) {
      for (const r of this.replicas) fs.rmSync(r.file, { force: true });
    }
  }
}

// ---- scenarios: each gets a running cluster with a writer, and marks where no majority was ----

const scenarios = [
  {
    name: 'isolate-primary', threshold: 2.0,
    async run(s) {
      for (let k = 0; k < (LONG ? 3 : 1); k++) {
        const view = s.view();
        s.isolate(s.primary());
        await s.newPrimary(view);
        await sleep(D);
        s.heal();
        await sleep(2000);
      }
    },
  },
  {
    // A backup falls behind (cut off), and just after it is back the primary is cut off: the
    // new primary's only partner must catch up (state sync) before anything commits.
    name: 'lagging-backup-then-primary', threshold: 2.0,
    async run(s) {
      for (let k = 0; k < (LONG ? 4 : 2); k++) {
        const b = s.backups()[k % 2];
        s.isolate(b);
        await sleep(3000);
        s.heal();
        await sleep(300);
        const view = s.view();
        s.isolate(s.primary());
        await s.newPrimary(view);
        await sleep(D / 2);
        s.heal();
        await sleep(2000);
        await s.settle();
      }
    },
  },
  {
    name: 'isolate-backup', threshold: 2.0,
    async run(s) {
      s.isolate(s.backups()[0]);
      await sleep(D);
      s.heal();
    },
  },
  {
    // The primary reaches one backup only; the backups reach each other.
    name: 'primary-reaches-one-backup', threshold: 2.0,
    async run(s) {
      const p = s.primary();
      s.cut(p, s.backups()[0]);
      await sleep(D);
      s.heal();
    },
  },
  {
    name: 'one-way', threshold: 2.0,
    async run(s) {
      // The primary hears everyone and nobody hears it.
      let p = s.primary();
      for (const j of [0, 1, 2]) if (j !== p) s.cutOneWay(p, j);
      s.cutOneWay(p, 'c');
      await sleep(D);
      s.heal();
      await sleep(2000);
      // Then the backups' messages to the primary are lost, the primary's arrive.
      p = s.primary();
      for (const j of [0, 1, 2]) if (j !== p) s.cutOneWay(j, p);
      await sleep(D);
      s.heal();
    },
  },
  {
    name: 'loss', threshold: 3.0,
    async run(s) {
      s.loss(0.1);
      await sleep(2 * D);
      s.heal();
    },
  },
  {
    // A different replica (or pair) cut off every 1.5 s; a majority is always connected.
    name: 'flapping', threshold: 2.0,
    async run(s) {
      const until = Date.now() + 2 * D;
      let k = 0;
      while (Date.now() < until) {
        if (k % 2 === 0) s.isolate(k % 3); else s.cut((k + 1) % 3, (k + 2) % 3);
        k++;
        await sleep(1500);
        s.heal();
        await sleep(500);
      }
    },
  },
  {
    // The primary is cut off, the new primary is killed (no majority), then the partition heals
    // while it is dead: the old primary and the remaining backup must serve on their own. The
    // dead replica comes back late.
    name: 'kill-during-partition', threshold: 2.0,
    async run(s) {
      const old = s.primary();
      const view = s.view();
      s.isolate(old);
      const p = await s.newPrimary(view);
      await sleep(2000);
      s.serve(false);
      await s.kill(p);
      await sleep(3000);
      s.heal();
      s.serve(true);
      await sleep(D);
      await s.restart(p);
    },
  },
  {
    name: 'sigstop-primary', threshold: 2.0,
    async run(s) {
      const p = s.primary();
      s.freeze(p);
      await sleep(D);
      s.thaw(p);
    },
  },
  {
    // Realtime clocks 30 s apart (faketime); the primary is isolated twice.
    name: 'clock-skew', threshold: 2.0, skews: [null, '+30s', '-30s'],
    async run(s) {
      for (let k = 0; k < 2; k++) {
        const view = s.view();
        s.isolate(s.primary());
        await s.newPrimary(view);
        await sleep(D / 2);
        s.heal();
        await sleep(2000);
      }
    },
  },
];

async function runScenario(sc, index) {
  const s = new Run(sc.name, sc.skews);
  const result = { name: sc.name, acknowledged: 0, lost: null, unavailable: null, problems: [] };
  try {
    await s.startCluster();
    if (!(await s.startWriter(1000000 * (index + 1)))) throw new Error(`the writer did not start: ${s.writerError || s.writerStderr()}`);
    s.t0 = Date.now();
    s.note(`t0 is ${new Date(s.t0).toISOString()}`);
    await sleep(1500);
    s.serve(true);
    await sc.run(s);
    // Everything heals and every replica runs again; the cluster must keep serving.
    s.heal();
    for (const i of [...s.stopped]) s.thaw(i);
    for (const r of s.replicas) if (r.exited) await s.restart(r.index);
    await sleep(3000);
    const end = Date.now();
    if (!(await s.stopWriter())) result.problems.push(`the writer did not finish: ${s.writerError || s.writerStderr().slice(-500)}`);
    result.unavailable = s.unavailableMs(end) / 1000;
    const v = await s.verify();
    if (v.ev !== 'verify') {
      result.problems.push(v.message);
    } else {
      result.acknowledged = v.acknowledged;
      result.lost = v.lost;
      if (v.lost > 0) result.problems.push(`${v.lost} acknowledged transfers lost, e.g. ${v.lost_ids.join(' ')}`);
      if (v.wrong > 0) result.problems.push(`${v.wrong} transfers differ from what was sent`);
      if (v.a_debits !== v.sum || v.b_credits !== v.sum || v.others !== '0') {
        result.problems.push(`balances: A debits ${v.a_debits}, B credits ${v.b_credits}, transfers found sum to ${v.sum}`);
      }
    }
    const same = await s.identical();
    if (!same.ok) result.problems.push(`replicas differ at op ${same.op}: ${JSON.stringify(same)}`);
    result.op = same.op;
    if (result.unavailable > sc.threshold) {
      const g = s.worstGap;
      result.problems.push(`unavailable ${result.unavailable.toFixed(2)} s > ${sc.threshold} s (from ${g.from.toFixed(1)}s to ${g.to.toFixed(1)}s)`);
    }
  } catch (e) {
    result.problems.push(String(e && e.stack || e));
  }
  await s.destroy();
  result.events = s.events;
  result.pass = result.problems.length === 0;
  const u = result.unavailable === null ? '?' : result.unavailable.toFixed(2);
  const g = s.worstGap ? ` worst_gap=${s.worstGap.from.toFixed(1)}s-${s.worstGap.to.toFixed(1)}s` : '';
  console.log(`${result.pass ? 'PASS' : 'FAIL'} ${sc.name}: acknowledged=${result.acknowledged} lost=${result.lost ?? '?'} ` +
    `unavailable_s=${u} threshold_s=${sc.threshold} ops=${result.op ?? '?'}${g}`);
  if (result.pass && process.env.TALLY_PARTITION_KEEP) console.log(`  events: ${s.events.join('; ')}`);
  if (!result.pass) {
    for (const p of result.problems) console.log(`  ${p}`);
    console.log(`  events: ${s.events.join('; ')}`);
    // CI keeps nothing but this output (and shows only its head and tail when long): each
    // replica's warnings and view changes around the worst gap, else its last few.
    const g = s.worstGap;
    const from = g ? s.t0 + g.from * 1000 - 1000 : 0;
    const to = g ? s.t0 + g.to * 1000 + 500 : 0;
    for (const r of s.replicas) {
      const all = r.log.split('\n').filter((l) => / (warn|error) |view=|state sync/.test(l));
      const near = all.filter((l) => { const t = Date.parse(l.slice(0, 24)); return t >= from && t <= to; });
      const lines = near.length > 0 ? near.slice(0, 10) : all.slice(-6);
      for (const l of lines) console.log(`  replica ${r.index}: ${l.slice(0, 240)}`);
    }
    console.log(`  logs: ${s.dir}`);
  }
  return result;
}

async function main() {
  if (!NS || !WORK) throw new Error('run tests/partition/run.sh, which creates the network namespaces');
  let passed = 0, failed = 0;
  const chosen = scenarios.filter((sc) => only.length === 0 || only.includes(sc.name));
  if (chosen.length === 0) throw new Error(`no such scenario: ${only.join(' ')}; known: ${scenarios.map((x) => x.name).join(' ')}`);
  for (let k = 0; k < chosen.length; k++) {
    const r = await runScenario(chosen[k], k);
    if (r.pass) passed++; else failed++;
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

process.on('SIGTERM', () => process.exit(143));
main().catch((e) => { console.log(String(e && e.stack || e)); console.log('0 passed, 1 failed'); process.exit(1); });

'use strict';
// Test helper: a cluster of `tally start` processes on loopback, one data file each.
//
// new Cluster().start() formats replica_count files (--development, so they are small) in a
// fresh temporary directory, picks free ports, starts every replica with the same --addresses
// list and resolves once each logs "listening on". Replicas can then be killed (any signal),
// frozen (SIGSTOP) and thawed, restarted, or re-formatted. Every wait is bounded; a process-exit
// hook SIGKILLs whatever is still running and removes the directory, so a failed or cancelled
// test leaves nothing behind. TALLY_CLUSTER_KEEP=1 keeps the directory (data files and logs).

const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawn, spawnSync } = require('child_process');
const { freePort, TALLY, tail } = require('../../node/lib/server');

const live = new Set(); // clusters not yet destroyed
process.on('exit', () => { for (const c of live) c.destroySync(); });
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(sig, () => process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGHUP' ? 1 : 15)));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Replica {
  constructor(cluster, index) {
    this.cluster = cluster;
    this.index = index;
    this.file = path.join(cluster.dir, `0_${index}.tally`);
    this.logFile = path.join(cluster.dir, `replica-${index}.log`);
    this.child = null;
    this.exited = null;
    this.exitPromise = Promise.resolve(null);
    this.log = ''; // every incarnation, the last 1 MiB
    this.current = ''; // this incarnation's first lines
    this.stopped = false; // SIGSTOP sent, no SIGCONT yet
  }

  alive() { return this.child !== null && this.exited === null; }

  append(text) {
    this.log = (this.log + text).slice(-1048576);
    this.current = (this.current + text).slice(-65536);
    try { fs.appendFileSync(this.logFile, text); } catch (_) { /* directory gone */ }
  }

  format() {
    const args = ['format', `--cluster=${this.cluster.clusterId}`, `--replica=${this.index}`,
      `--replica-count=${this.cluster.count}`, ...(this.cluster.development ? ['--development'] : []), this.file];
    const r = spawnSync(TALLY, args, { encoding: 'utf8', timeout: 60000 });
    if (r.error) throw new Error(`tally format replica ${this.index}: ${r.error.message}`);
    if (r.status !== 0) throw new Error(`tally format replica ${this.index} exited ${r.status}: ${tail(r.stderr + r.stdout)}`);
  }

  // Starts the process; resolves when it logs "listening on <its address>", rejects (after
  // killing it) if it exits first or stays silent for timeoutMs.
  async start(timeoutMs = 15000) {
    if (this.alive()) throw new Error(`replica ${this.index} is already running`);
    const args = ['start', `--addresses=${this.cluster.addresses.join(',')}`,
      ...(this.cluster.development ? ['--development'] : []), this.file];
    this.current = '';
    this.append(`---- start ${new Date().toISOString()} ${TALLY} ${args.join(' ')}\n`);
    const child = spawn(TALLY, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.exited = null;
    this.stopped = false;
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = { code, signal };
        this.append(`---- exited code=${code} signal=${signal} ${new Date().toISOString()}\n`);
        resolve(this.exited);
      });
    });
    child.stdout.on('data', (d) => this.append(d.toString()));
    child.stderr.on('data', (d) => this.append(d.toString()));
    const want = `listening on ${this.cluster.addresses[this.index]}`;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.current.includes(want)) return;
      if (this.exited) break;
      await sleep(20);
    }
    const why = this.exited ? `exited ${JSON.stringify(this.exited)}` : `did not log "${want}" within ${timeoutMs} ms`;
    await this.kill('SIGKILL');
    throw new Error(`replica ${this.index} ${why}: ${this.logTail(3000)}`);
  }

  // Sends `signal`; for SIGKILL/SIGTERM waits (bounded) until the process is gone.
  async kill(signal = 'SIGKILL', timeoutMs = 10000) {
    if (!this.alive()) return this.exited;
    if (signal === 'SIGSTOP') {
      // Returns once the process is really stopped (state T in /proc), so that nothing it
      // does afterwards can be mistaken for work done before the freeze.
      this.child.kill('SIGSTOP');
      this.stopped = true;
      const deadline = Date.now() + 2000;
      while (Date.now() < deadline && this.procState() !== 'T') await sleep(1);
      return null;
    }
    if (signal === 'SIGCONT') { this.child.kill('SIGCONT'); this.stopped = false; return null; }
    this.child.kill(signal);
    if (this.stopped && signal !== 'SIGKILL') this.child.kill('SIGCONT');
    const timer = setTimeout(() => { try { this.child.kill('SIGKILL'); } catch (_) { /* gone */ } }, timeoutMs);
    const exit = await this.exitPromise;
    clearTimeout(timer);
    return exit;
  }

  procState() {
    try { return /\) (\S) /.exec(fs.readFileSync(`/proc/${this.child.pid}/stat`, 'utf8'))[1]; } catch (_) { return null; }
  }

  // `tally inspect --json --live` of the data file: --live reads it while the replica runs
  // (without it inspect refuses a held file) and takes no lock, so it never fails a restart.
  inspect() {
    const r = spawnSync(TALLY, ['inspect', '--json', '--live', this.file], { encoding: 'utf8', timeout: 20000 });
    try { return JSON.parse(r.stdout); } catch (e) { return { error: `inspect: ${r.status} ${r.stderr || e.message}` }; }
  }

  // How far the data file has got: the highest op journaled, checkpointed or recorded committed.
  progress() {
    const j = this.inspect();
    return Math.max(j.wal ? j.wal.op_max : 0, j.commit || 0, j.checkpoint_op || 0);
  }

  logTail(n = 3000) { return tail(this.log, n); }
}

class Cluster {
  constructor({ count = 3, clusterId = 0, development = true } = {}) {
    this.count = count;
    this.clusterId = clusterId;
    this.development = development;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-cluster-'));
    this.replicas = [];
    this.addresses = [];
    live.add(this);
  }

  async start() {
    if (!fs.existsSync(TALLY)) throw new Error(`${TALLY} does not exist (run make)`);
    for (let i = 0; i < this.count; i++) this.addresses.push(`127.0.0.1:${await freePort()}`);
    if (new Set(this.addresses).size !== this.count) throw new Error(`ports collided: ${this.addresses}`);
    for (let i = 0; i < this.count; i++) this.replicas.push(new Replica(this, i));
    for (const r of this.replicas) r.format();
    await Promise.all(this.replicas.map((r) => r.start()));
    return this;
  }

  replica(i) { return this.replicas[i]; }

  // The primary as the replicas' logs tell it: the highest view any replica logged as started
  // ("primary of view view=V") or joined ("joining view view=V"), modulo the replica count.
  // View 0 (replica 0) if none.
  view() {
    let view = 0;
    for (const r of this.replicas) {
      for (const m of r.log.matchAll(/(?:primary of view|joining view) view=(\d+)/g)) view = Math.max(view, Number(m[1]));
    }
    return view;
  }

  primary() { return this.view() % this.count; }

  backups() { return this.replicas.map((r) => r.index).filter((i) => i !== this.primary()); }

  // Waits until replica i's data file has reached every other running replica's progress (the
  // cluster must be idle: no writer running). Returns { ms, progress } or throws with details.
  async waitCaughtUp(i, timeoutMs = 20000) {
    const t0 = Date.now();
    let last = null;
    while (Date.now() - t0 < timeoutMs) {
      const progress = this.replicas.map((r) => (r.alive() ? r.progress() : null));
      last = progress;
      const others = progress.filter((p, k) => k !== i && p !== null);
      const target = Math.max(0, ...others);
      if (progress[i] !== null && target > 0 && progress[i] >= target) return { ms: Date.now() - t0, progress };
      await sleep(200);
    }
    throw new Error(`replica ${i} did not catch up within ${timeoutMs} ms: progress (max of journal op, commit, checkpoint op) per replica ${JSON.stringify(last)}`);
  }

  logs(n = 2000) {
    return this.replicas.map((r) => `---- replica ${r.index} (${r.alive() ? 'running' : `exited ${JSON.stringify(r.exited)}`}):\n${r.logTail(n)}`).join('\n');
  }

  // Kills everything and removes the directory (unless TALLY_CLUSTER_KEEP is set).
  async destroy() {
    await Promise.all(this.replicas.map((r) => r.kill('SIGKILL')));
    this.removeDir();
    live.delete(this);
  }

  destroySync() {
    for (const r of this.replicas) if (r.alive()) { try { r.child.kill('SIGKILL'); } catch (_) { /* gone */ } }
    this.removeDir();
    live.delete(this);
  }

  removeDir() {
    if (process.env.TALLY_CLUSTER_KEEP) {
      process.stderr.write(`cluster directory kept: ${this.dir}\n`);
      return;
    }
    try { fs.rmSync(this.dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
  }
}

module.exports = { Cluster, sleep };

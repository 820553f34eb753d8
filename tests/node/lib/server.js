'use strict';
// Test helper: runs one Tally replica for a test file.
//
// startServer() formats a fresh data file in a new temporary directory, starts `tally start` on a
// free port and resolves once the server logs "listening on". stop() ends it with SIGTERM (SIGKILL
// after a grace period) and removes the temporary directory. A process-exit hook kills any server
// still running, so a crashed or cancelled test file never leaves a server or a 1 GiB file behind.

const fs = require('fs');
const os = require('os');
const net = require('net');
const path = require('path');
const { spawn, spawnSync } = require('child_process');

const REPO = path.resolve(__dirname, '..', '..', '..');
const TALLY = process.env.TALLY_BIN || path.join(REPO, 'tally');

const live = new Set(); // servers not yet stopped, for the exit hook
process.on('exit', () => {
  for (const s of live) {
    try { s.child.kill('SIGKILL'); } catch (_) { /* gone */ }
    try { fs.rmSync(s.dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
  }
});
// The test runner ends a timed-out or interrupted file with a signal: run the exit hooks first.
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(sig, () => process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGHUP' ? 1 : 15)));
}

// A port free right now, below the kernel's ephemeral range: inside it, an outgoing
// connection of any process can take the port while a replica is down for a restart, and the
// replica then cannot listen again (a cluster missing a replica from the start never elects
// its first primary). Tries random ports, binding each once.
function ephemeralLow() {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  } catch (e) {
    return 32768;
  }
}

function tryListen(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

async function freePort() {
  const low = ephemeralLow();
  if (low <= 11000) throw new Error(`the ephemeral port range starts at ${low}: no room below`);
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10000 + Math.floor(Math.random() * (low - 10000));
    if (await tryListen(port)) return port;
  }
  throw new Error('no free port below the ephemeral range after 200 tries');
}

function tail(text, n = 4000) {
  return text.length > n ? '…' + text.slice(-n) : text;
}

class Server {
  constructor(dir, file, port, child) {
    this.dir = dir;
    this.file = file;
    this.port = port;
    this.address = `127.0.0.1:${port}`;
    this.child = child;
    this.pid = child.pid;
    this.log = ''; // stderr + stdout, the last 256 KiB
    this.exited = null; // { code, signal } once the process has ended
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => { this.exited = { code, signal }; resolve(this.exited); });
    });
    const keep = (d) => { this.log = (this.log + d.toString()).slice(-262144); };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
  }

  alive() { return this.exited === null; }

  logTail(n) { return tail(this.log, n); }

  // Peak resident set size in KiB (VmHWM), or null if the process is gone.
  peakRssKiB() {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${this.pid}/status`, 'utf8'));
      return m ? Number(m[1]) : null;
    } catch (_) { return null; }
  }

  // `signal` (SIGTERM by default), then SIGKILL after graceMs. Resolves to { code, signal, forced }.
  async stop(graceMs = 5000, signal = 'SIGTERM') {
    let forced = false;
    if (this.alive()) {
      try { this.child.kill(signal); } catch (_) { /* gone */ }
      const timer = setTimeout(() => { forced = true; try { this.child.kill('SIGKILL'); } catch (_) { /* gone */ } }, graceMs);
      await this.exitPromise;
      clearTimeout(timer);
    }
    live.delete(this);
    try { fs.rmSync(this.dir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
    return { ...this.exited, forced };
  }
}

function formatDataFile(file, cluster = 0) {
  const r = spawnSync(TALLY, ['format', `--cluster=${cluster}`, '--replica=0', '--replica-count=1', file],
    { encoding: 'utf8', timeout: 30000 });
  if (r.error) throw new Error(`tally format: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`tally format exited ${r.status} ${r.signal || ''}: ${tail(r.stderr + r.stdout)}`);
}

// Starts a server on a fresh data file. Retries with another port if the chosen one was taken in
// the meantime. Rejects (never hangs) if the server does not log "listening on" within timeoutMs.
async function startServer({ cluster = 0, timeoutMs = 10000 } = {}) {
  if (!fs.existsSync(TALLY)) throw new Error(`${TALLY} does not exist (run make)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-node-'));
  const file = path.join(dir, '0_0.tally');
  try {
    formatDataFile(file, cluster);
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  let lastError = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(TALLY, ['start', `--addresses=127.0.0.1:${port}`, file],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new Server(dir, file, port, child);
    live.add(server);
    const ok = await new Promise((resolve) => {
      const timer = setTimeout(() => { child.stderr.off('data', check); resolve(false); }, timeoutMs);
      function check() {
        if (server.log.includes(`listening on 127.0.0.1:${port}`)) {
          clearTimeout(timer); child.stderr.off('data', check); resolve(true);
        }
      }
      child.stderr.on('data', check);
      server.exitPromise.then(() => { clearTimeout(timer); child.stderr.off('data', check); resolve(false); });
      check();
    });
    if (ok) return server;
    lastError = new Error(`tally start on port ${port} ${server.alive() ? `did not log "listening on" within ${timeoutMs} ms`
      : `exited (${JSON.stringify(server.exited)})`}: ${server.logTail(2000)}`);
    try { child.kill('SIGKILL'); } catch (_) { /* gone */ }
    await server.exitPromise;
    live.delete(server);
    if (!/address already in use|EADDRINUSE/i.test(server.log)) break;
  }
  fs.rmSync(dir, { recursive: true, force: true });
  throw lastError;
}

module.exports = { startServer, freePort, TALLY, REPO, tail };

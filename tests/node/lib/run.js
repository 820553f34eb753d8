'use strict';
// Test helper, parent side: spawns a scenario (see child.js) and collects what it reported.
//
// Every child has a hard kill timeout, so a hung client cannot hang the test; every child still
// running when the test file ends is killed by the exit hook.

const path = require('path');
const assert = require('assert');
const { spawn } = require('child_process');
const { tail } = require('./server');

const CHILD = path.join(__dirname, 'child.js');
const children = new Set();
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch (_) { /* gone */ } } });

// Starts a scenario. Returns { child, done, waitFor }:
//   done     resolves (never rejects) to { code, signal, timedOut, ok, result, error, stdout, stderr, events }
//   waitFor(name, ms) resolves with the data of the first @@EVENT@@ of that name, rejects on
//            timeout or if the child exits first.
function spawnScenario(module, name, args = {}, { timeoutMs = 20000 } = {}) {
  const child = spawn(process.execPath, [CHILD, module, name, JSON.stringify(args)],
    { stdio: ['ignore', 'pipe', 'pipe'], cwd: path.join(__dirname, '..') });
  children.add(child);
  let stdout = '';
  let stderr = '';
  let pending = '';
  const events = [];
  const waiters = [];
  let result = null;
  let exited = false;
  const onLine = (l) => {
    if (l.startsWith('@@EVENT@@ ')) {
      const ev = JSON.parse(l.slice(10));
      events.push(ev);
      for (const w of waiters.slice()) if (w.name === ev.name) w.resolve(ev.data);
    } else if (l.startsWith('@@RESULT@@ ')) {
      result = JSON.parse(l.slice(11));
    }
  };
  child.stdout.on('data', (d) => {
    const s = d.toString();
    stdout = (stdout + s).slice(-65536);
    pending += s;
    let i;
    while ((i = pending.indexOf('\n')) >= 0) { onLine(pending.slice(0, i)); pending = pending.slice(i + 1); }
  });
  child.stderr.on('data', (d) => { stderr = (stderr + d.toString()).slice(-65536); });

  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; try { child.kill('SIGKILL'); } catch (_) { /* gone */ } }, timeoutMs);
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      exited = true;
      clearTimeout(timer);
      children.delete(child);
      if (pending) onLine(pending);
      for (const w of waiters.slice()) w.reject(new Error(`scenario ${name} exited (code ${code}, signal ${signal}) before event ${w.name}; stderr: ${tail(stderr, 2000)}`));
      resolve({
        name, code, signal, timedOut, events, stdout, stderr,
        ok: !!(result && result.ok), result: result && result.result, error: result && result.error,
      });
    });
  });

  function waitFor(evName, ms = 10000) {
    const seen = events.find((e) => e.name === evName);
    if (seen) return Promise.resolve(seen.data);
    if (exited) return Promise.reject(new Error(`scenario ${name} already exited before event ${evName}`));
    return new Promise((resolve, reject) => {
      const w = { name: evName };
      const t = setTimeout(() => { remove(); reject(new Error(`scenario ${name}: no event ${evName} within ${ms} ms`)); }, ms);
      const remove = () => { clearTimeout(t); const i = waiters.indexOf(w); if (i >= 0) waiters.splice(i, 1); };
      w.resolve = (d) => { remove(); resolve(d); };
      w.reject = (e) => { remove(); reject(e); };
      waiters.push(w);
    });
  }
  return { child, done, waitFor };
}

function runScenario(module, name, args, opts) {
  return spawnScenario(module, name, args, opts).done;
}

function describeRun(r) {
  return `scenario ${r.name}: exit code ${r.code}, signal ${r.signal}${r.timedOut ? ', KILLED AFTER TIMEOUT' : ''}` +
    `${r.error ? `\nerror: ${r.error}` : ''}\nstderr: ${tail(r.stderr, 3000)}\nstdout: ${tail(r.stdout, 1500)}`;
}

// The child ran to the end, reported success and exited 0 without a signal (no client abort).
function assertClean(r) {
  assert.ok(!r.timedOut && r.signal === null && r.code === 0 && r.ok, describeRun(r));
  return r.result;
}

// A server that is still running, with a failure message carrying its log.
function assertServerAlive(server) {
  assert.ok(server.alive(), `server exited ${JSON.stringify(server.exited)}; log: ${server.logTail(3000)}`);
}

module.exports = { spawnScenario, runScenario, assertClean, assertServerAlive, describeRun };

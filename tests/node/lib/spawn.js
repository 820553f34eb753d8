'use strict';
// Test helper: runs a command to completion without blocking the caller's event loop.
//
// Why not spawnSync: the deploy and partition harnesses read their replicas' output pipes in
// their own event loop (as a kubelet reads a container's output). A synchronous run of a minute
// let those pipes fill, and every replica then blocked in its next log write.

const { spawn } = require('child_process');

// Resolves (never rejects) to spawnSync's result: { status, stdout, stderr }. After `timeout`
// ms (if given) the command is killed with SIGKILL and status is null.
function runAsync(cmd, args, { timeout, env } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: env || process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = timeout ? setTimeout(() => child.kill('SIGKILL'), timeout) : null;
    child.on('close', (status) => { if (timer) clearTimeout(timer); resolve({ status, stdout, stderr }); });
  });
}

module.exports = { runAsync };

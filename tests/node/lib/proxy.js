'use strict';
// Test helper: a TCP proxy between one client and the server that misbehaves once, on purpose,
// for the first request of a chosen operation (the "target"):
//
//   'cut-before-reply'  forward the whole request, then close both connections as soon as the
//                       server starts answering (the reply is lost; the server did execute it)
//   'cut-mid-request'   forward only the first half of the request, then close both connections
//                       (the server never got the whole request)
//   'swallow-reply'     forward the request, drop the server's reply, keep the connection open
//
// The client then retransmits the same request on its own (after ~0.6 s), on a new connection for
// the two 'cut' modes. Frames from the client are parsed (size at offset 96, command at 114,
// request number at 192, operation at 196) so the target can be recognised.

const net = require('net');

const HEADER = 256;
const SIZE_MAX = 1048576;
const COMMAND_REQUEST = 5;

class Proxy {
  constructor(target, { mode, operation }) {
    this.target = target; // { host, port }
    this.mode = mode;
    this.operation = operation;
    this.server = null;
    this.sockets = new Set();
    this.stats = { connections: 0, requests: [], cut: false, swallowed: 0 };
    this.targetRequest = null; // request number of the target, once seen
  }

  start() {
    return new Promise((resolve, reject) => {
      this.server = net.createServer((c) => this.onConnection(c));
      this.server.on('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        this.address = `127.0.0.1:${this.port}`;
        resolve(this);
      });
    });
  }

  close() {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  // How many times the target request (same number) went through the proxy.
  targetSends() {
    return this.stats.requests.filter((r) => r.request === this.targetRequest && r.operation === this.operation).length;
  }

  onConnection(c) {
    this.stats.connections++;
    const u = net.connect(this.target.port, this.target.host);
    this.sockets.add(c);
    this.sockets.add(u);
    c.setNoDelay(true);
    u.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let armed = false; // 'cut-before-reply' / 'swallow-reply': the next server bytes are the reply to drop
    let dead = false;
    const kill = () => {
      dead = true;
      c.destroy();
      u.destroy();
    };
    c.on('close', () => { this.sockets.delete(c); u.destroy(); });
    u.on('close', () => { this.sockets.delete(u); c.destroy(); });
    c.on('error', () => {});
    u.on('error', () => {});

    c.on('data', (data) => {
      if (dead) return;
      buf = Buffer.concat([buf, data]);
      while (buf.length >= HEADER) {
        const size = buf.readUInt32LE(96);
        if (size < HEADER || size > SIZE_MAX) { // not a frame we understand: pass everything on
          u.write(buf);
          buf = Buffer.alloc(0);
          return;
        }
        if (buf.length < size) return;
        const frame = buf.subarray(0, size);
        buf = buf.subarray(size);
        this.onFrame(frame, u, { kill, arm: () => { armed = true; }, freeze: () => { dead = true; } });
        if (dead) return;
      }
    });

    u.on('data', (data) => {
      if (dead) return;
      if (armed) {
        if (this.mode === 'cut-before-reply') {
          this.stats.cut = true;
          kill();
          return;
        }
        // 'swallow-reply': drop the whole reply frame (it may span several chunks).
        this.swallowLeft = this.swallowLeft || data.readUInt32LE(96);
        const take = Math.min(this.swallowLeft, data.length);
        this.swallowLeft -= take;
        data = data.subarray(take);
        if (this.swallowLeft === 0) { armed = false; this.stats.cut = true; this.stats.swallowed++; }
        if (data.length === 0) return;
      }
      c.write(data);
    });
  }

  onFrame(frame, u, conn) {
    const command = frame[114];
    if (command === COMMAND_REQUEST) {
      const operation = frame[196];
      const request = frame.readUInt32LE(192);
      this.stats.requests.push({ operation, request, size: frame.length });
      if (!this.stats.cut && !this.armedOnce && operation === this.operation) {
        this.targetRequest = request;
        this.armedOnce = true;
        if (this.mode === 'cut-mid-request') {
          u.write(frame.subarray(0, frame.length >> 1));
          this.stats.cut = true;
          conn.freeze(); // forward nothing more in either direction
          // Give the half frame time to reach the server, then close both sides.
          setTimeout(conn.kill, 100);
          return;
        }
        conn.arm();
      }
    }
    u.write(frame);
  }
}

async function startProxy(target, opts) {
  return new Proxy(target, opts).start();
}

module.exports = { startProxy };

'use strict';
// tests/deploy/pods.js: plays the rendered StatefulSet the way a kubelet would, in the network
// namespaces that tests/deploy/run.sh created, and runs the scenarios. Runs inside the "node"
// namespace, so its probes come from the node's address, as a kubelet's do.
//
// What is taken from the rendered manifests (nothing about the pods is written here twice):
//   - the StatefulSet: name, replicas, serviceName, the init and main containers' command, args,
//     env (value, and fieldRef metadata.name / metadata.namespace), volumeMounts, ports, probes,
//     securityContext.runAsUser, terminationGracePeriodSeconds;
//   - the headless Service: the pods' DNS names, written to every pod's hosts file (the pod
//     records' A records, as the cluster DNS would serve them, not-ready pods included since the
//     Service publishes them);
//   - the client Service: its name resolves to a ClusterIP in the client pods' hosts files, and
//     the ClusterIP is an iptables DNAT to the ready pods (kube-proxy's rules: a random choice
//     among the ready endpoints per new connection, rewritten when readiness changes);
//   - the NetworkPolicy: its ingress and egress rules, turned into iptables rules in each replica
//     pod for the pods that exist here (their labels and namespaces);
//   - the PodDisruptionBudget: a pod is taken away only while the budget allows it.
// Containers run with tests/deploy/pod-exec.sh: the image's root file system (unpacked from the
// image built by deploy/build-image.sh) read-only, the volumes bound, user 65532, and io_uring
// forbidden by a seccomp filter (as RuntimeDefault).
//
// Scenarios, under load from the official Node client in the client pod (through the Service):
// cold start, rolling restart, a pod rescheduled with a new IP address, a PVC deleted, a replica
// down for longer than its journal covers; then the single-replica overlay. Prints one line per
// check and "N passed, N failed" last.
const fs = require('fs');
const path = require('path');
const http = require('http');
const readline = require('readline');
const { spawn, spawnSync, execFileSync } = require('child_process');
const { runAsync } = require('../node/lib/spawn');
const YAML = require('yaml');

const E = process.env;
const NS = E.DEPLOY_NS; // prefix of the network namespaces
const WORK = E.DEPLOY_WORK;
const ROOTFS = E.DEPLOY_ROOTFS;
const NO_IO_URING = E.DEPLOY_NO_IO_URING;
const DIGEST = E.DEPLOY_DIGEST;
const HERE = __dirname;
const NODE_IP = '10.78.0.254';
const CLUSTER_IP = '10.96.0.10';
const CLIENT_IPS = { client: '10.78.0.100', stranger: '10.78.0.101' };
const CLUSTER_DOMAIN = 'cluster.local';
const JOURNAL_SLOTS = Number(E.DEPLOY_JOURNAL_SLOTS || 1024);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Date.now();
let passed = 0, failed = 0;
const results = [];
function check(ok, what) {
  if (ok) passed++; else failed++;
  console.log(`${ok ? 'ok' : 'FAIL'} ${what}`);
  return ok;
}
function sh(netns, args, opts = {}) {
  return execFileSync('ip', ['netns', 'exec', `${NS}-${netns}`, ...args], { stdio: 'pipe', timeout: 20000, ...opts }).toString();
}

// ---- the rendered manifests ----

function load(file) {
  const objs = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8')).map((d) => d.toJS()).filter(Boolean);
  const one = (kind, pred = () => true) => objs.find((o) => o.kind === kind && pred(o));
  const sts = one('StatefulSet');
  return {
    sts,
    headless: one('Service', (o) => o.spec.clusterIP === 'None'),
    service: one('Service', (o) => o.spec.clusterIP !== 'None'),
    netpol: one('NetworkPolicy'),
    pdb: one('PodDisruptionBudget'),
    namespace: sts.metadata.namespace,
  };
}

// ---- pods ----

class Pod {
  constructor(cluster, ordinal, ip) {
    this.cluster = cluster;
    this.ordinal = ordinal;
    this.name = `${cluster.m.sts.metadata.name}-${ordinal}`;
    this.netns = `r${ordinal}`;
    this.ip = ip;
    this.labels = cluster.m.sts.spec.template.metadata.labels;
    this.pvc = path.join(cluster.dir, `pvc-${this.name}`);
    this.logFile = path.join(cluster.dir, `${this.name}.log`);
    this.log = '';
    this.main = null; // the running main container's child process
    this.ready = false;
    this.started = false;
    this.probeTimer = null;
    this.restarts = 0;
  }

  fqdn() { return `${this.name}.${this.cluster.m.headless.metadata.name}.${this.cluster.m.namespace}.svc.${CLUSTER_DOMAIN}`; }

  append(text) { this.log += text; fs.appendFileSync(this.logFile, text); }

  env(container) {
    const env = { PATH: '/bin', HOSTNAME: this.name };
    for (const e of container.env || []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom && e.valueFrom.fieldRef) {
        const f = e.valueFrom.fieldRef.fieldPath;
        env[e.name] = f === 'metadata.name' ? this.name : f === 'metadata.namespace' ? this.cluster.m.namespace : '';
      }
    }
    return env;
  }

  // The container's argv under ip netns exec + unshare + pod-exec.sh, with its volumes.
  argv(container) {
    const spec = this.cluster.m.sts.spec.template.spec;
    const uid = String((container.securityContext || {}).runAsUser || spec.securityContext.runAsUser);
    const mounts = [];
    for (const vm of container.volumeMounts || []) {
      const vol = spec.volumes ? spec.volumes.find((v) => v.name === vm.name) : null;
      let src;
      if (vm.name === 'data') src = this.pvc; // the volumeClaimTemplate's claim for this pod
      else if (vol && vol.secret) src = this.cluster.secretDir(vol.secret.secretName);
      else throw new Error(`volume ${vm.name}: not modelled`);
      fs.mkdirSync(path.join(ROOTFS, vm.mountPath), { recursive: true }); // the runtime's mount point
      mounts.push(src, vm.mountPath, vm.readOnly ? 'ro' : 'rw');
    }
    // The kubelet's /etc/hosts and /etc/resolv.conf (ip netns exec bound the pod's own over /etc).
    mounts.push('/etc/hosts', '/etc/hosts', 'ro', '/etc/resolv.conf', '/etc/resolv.conf', 'ro');
    const cmd = [...(container.command || []), ...(container.args || [])];
    return ['netns', 'exec', `${NS}-${this.netns}`, 'unshare', '-m', '-u', path.join(HERE, 'pod-exec.sh'),
      ROOTFS, this.name, uid, ...mounts, '--', ...cmd];
  }

  spawn(container) {
    const child = spawn('ip', this.argv(container), { env: { ...this.env(container), NO_IO_URING }, stdio: ['ignore', 'pipe', 'pipe'] });
    const take = (d) => this.append(d.toString());
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.exited = new Promise((resolve) => child.on('exit', (code, signal) => { child.exitCode2 = code; resolve({ code, signal }); }));
    return child;
  }

  // Init containers to completion, in order, then the main container and its probes.
  async create() {
    const spec = this.cluster.m.sts.spec.template.spec;
    fs.mkdirSync(this.pvc, { recursive: true });
    fs.chownSync(this.pvc, 0, Number(spec.securityContext.fsGroup)); // fsGroup on the volume
    fs.chmodSync(this.pvc, 0o2775);
    this.created = now();
    for (const c of spec.initContainers || []) {
      this.append(`---- init container ${c.name} ${new Date().toISOString()}\n`);
      const child = this.spawn(c);
      const timer = setTimeout(() => child.kill('SIGKILL'), 60000);
      const { code } = await child.exited;
      clearTimeout(timer);
      if (code !== 0) throw new Error(`${this.name}: init container ${c.name} exited ${code}: ${this.log.slice(-1000)}`);
    }
    const main = spec.containers[0];
    this.append(`---- container ${main.name} ${new Date().toISOString()}\n`);
    this.main = this.spawn(main);
    this.startedAt = now();
    this.ready = false;
    this.started = false;
    this.cluster.endpoints();
    this.probes(main);
  }

  port(container, p) {
    if (typeof p === 'number') return p;
    return container.ports.find((x) => x.name === p).containerPort;
  }

  probe(container, pr) {
    const port = this.port(container, pr.httpGet.port);
    return new Promise((resolve) => {
      const req = http.get({ host: this.ip, port, path: pr.httpGet.path, timeout: (pr.timeoutSeconds || 1) * 1000 }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode >= 200 && res.statusCode < 400));
      });
      req.on('timeout', () => { req.destroy(); resolve(false); });
      req.on('error', () => resolve(false));
    });
  }

  // The kubelet's probe loops: startup until it succeeds (then readiness and liveness), each at
  // its period, with its thresholds. A liveness failure restarts the container (counted).
  probes(container) {
    const main = this.main;
    const loop = async (pr, onResult) => {
      let fails = 0, oks = 0;
      await sleep((pr.initialDelaySeconds || 0) * 1000);
      while (this.main === main && main.exitCode2 === undefined) {
        const ok = await this.probe(container, pr);
        if (ok) { oks++; fails = 0; } else { fails++; oks = 0; }
        if (onResult(ok, oks, fails) === 'stop') return;
        await sleep((pr.periodSeconds || 10) * 1000);
      }
    };
    const sp = container.startupProbe;
    loop(sp, (ok, oks, fails) => {
      if (ok) {
        this.started = true;
        loop(container.readinessProbe, (ok2, oks2, fails2) => {
          if (ok2 && oks2 >= (container.readinessProbe.successThreshold || 1) && !this.ready) { this.ready = true; this.cluster.endpoints(); }
          if (!ok2 && fails2 >= (container.readinessProbe.failureThreshold || 3) && this.ready) { this.ready = false; this.cluster.endpoints(); }
        });
        loop(container.livenessProbe, (ok3, oks3, fails3) => {
          if (!ok3 && fails3 >= (container.livenessProbe.failureThreshold || 3)) {
            this.restarts++;
            this.append(`---- liveness failed: the kubelet would restart the container\n`);
            return 'stop';
          }
        });
        return 'stop';
      }
      if (fails >= sp.failureThreshold) { this.append('---- startup probe failed\n'); return 'stop'; }
    });
  }

  // kubectl delete pod: not ready at once (removed from the Service's endpoints), SIGTERM, and
  // SIGKILL after terminationGracePeriodSeconds. Returns how long the container took to stop.
  async delete() {
    this.ready = false;
    this.cluster.endpoints();
    const main = this.main;
    this.main = null;
    if (!main || main.exitCode2 !== undefined) return 0;
    const t = now();
    main.kill('SIGTERM');
    const grace = (this.cluster.m.sts.spec.template.spec.terminationGracePeriodSeconds || 30) * 1000;
    const r = await Promise.race([main.exited, sleep(grace).then(() => null)]);
    if (r === null) { main.kill('SIGKILL'); await main.exited; this.append('---- killed after the grace period\n'); }
    this.append(`---- deleted (stopped in ${now() - t} ms)\n`);
    return now() - t;
  }

  async waitReady(timeoutMs) {
    const deadline = now() + timeoutMs;
    while (now() < deadline && !this.ready) {
      if (this.main && this.main.exitCode2 !== undefined) throw new Error(`${this.name} exited: ${this.log.slice(-1500)}`);
      await sleep(50);
    }
    if (!this.ready) throw new Error(`${this.name} not ready after ${timeoutMs} ms: ${this.log.slice(-1500)}`);
    return now();
  }

  metrics() {
    return new Promise((resolve) => {
      const req = http.get({ host: this.ip, port: 9100, path: '/metrics', timeout: 2000 }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve(body));
      });
      req.on('timeout', () => { req.destroy(); resolve(''); });
      req.on('error', () => resolve(''));
    });
  }

  async metric(name) {
    const m = new RegExp(`^${name} (\\d+)`, 'm').exec(await this.metrics());
    return m ? Number(m[1]) : null;
  }

  rssKb() {
    if (!this.main || this.main.exitCode2 !== undefined) return null;
    const s = fs.readFileSync(`/proc/${this.main.pid}/status`, 'utf8');
    return { rss: Number(/VmRSS:\s+(\d+)/.exec(s)[1]), hwm: Number(/VmHWM:\s+(\d+)/.exec(s)[1]) };
  }
}

// ---- the cluster: pods, DNS, the Service's endpoints, the NetworkPolicy ----

class Cluster {
  constructor(name, manifests) {
    this.m = manifests;
    this.dir = path.join(WORK, name);
    fs.mkdirSync(this.dir, { recursive: true });
    const n = manifests.sts.spec.replicas;
    this.pods = [];
    for (let i = 0; i < n; i++) this.pods.push(new Pod(this, i, `10.78.0.${i + 1}`));
    // The other pods of this model: namespace and labels, as the NetworkPolicy sees them.
    this.others = [
      { netns: 'client', ip: CLIENT_IPS.client, namespace: 'connector', labels: { 'tally-client': 'true' } },
      { netns: 'stranger', ip: CLIENT_IPS.stranger, namespace: 'connector', labels: {} },
    ];
  }

  secretDir(name) {
    const dir = path.join(WORK, `secret-${name}`);
    if (!fs.existsSync(dir)) {
      // kubectl create secret generic tally-cluster-key --from-file=cluster.key (made with tally keygen)
      fs.mkdirSync(dir, { recursive: true });
      execFileSync(path.join(ROOTFS, 'tally'), ['keygen', path.join(dir, 'cluster.key')], { stdio: 'pipe' });
      const spec = this.m.sts.spec.template.spec;
      const vol = spec.volumes.find((v) => v.secret && v.secret.secretName === name);
      fs.chownSync(path.join(dir, 'cluster.key'), 0, Number(spec.securityContext.fsGroup));
      fs.chmodSync(path.join(dir, 'cluster.key'), vol.secret.defaultMode || 0o644);
    }
    return dir;
  }

  // The cluster DNS, as hosts files: every pod's record (the headless Service publishes not-ready
  // pods too) and the client Service's ClusterIP. Written in place: ip netns exec bound the file.
  dns() {
    const ns = this.m.namespace;
    const lines = ['127.0.0.1 localhost'];
    for (const p of this.pods) lines.push(`${p.ip} ${p.fqdn()} ${p.name}.${this.m.headless.metadata.name}.${ns}.svc`);
    lines.push(`${CLUSTER_IP} ${this.m.service.metadata.name}.${ns}.svc.${CLUSTER_DOMAIN} ${this.m.service.metadata.name}.${ns}.svc`);
    const text = lines.join('\n') + '\n';
    for (const netns of ['r0', 'r1', 'r2', 'client', 'stranger']) {
      const f = `/etc/netns/${NS}-${netns}/hosts`;
      const fd = fs.openSync(f, 'r+');
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, text, 0);
      fs.closeSync(fd);
    }
  }

  // kube-proxy: the ClusterIP's port DNATs to a random ready endpoint per new connection; with no
  // ready endpoint, connections are rejected.
  endpoints() {
    try { this.updateEndpoints(); } catch (e) { this.note(`endpoints: ${e.message}`); check(false, `kube-proxy rules: ${e.message}`); }
  }

  updateEndpoints() {
    const port = this.m.service.spec.ports[0];
    // publishNotReadyAddresses: every pod whose container runs is an endpoint, ready or not.
    const ready = this.m.service.spec.publishNotReadyAddresses
      ? this.pods.filter((p) => p.main && p.main.exitCode2 === undefined) : this.pods.filter((p) => p.ready);
    const key = ready.map((p) => p.ip).join(',');
    if (key === this.endpointsKey) return;
    this.endpointsKey = key;
    const target = port.targetPort === 'replica' ? 3000 : Number(port.targetPort);
    for (const o of this.others) {
      const ipt = (...a) => sh(o.netns, ['iptables', '-w', ...a]);
      ipt('-t', 'nat', '-F', 'SVC');
      ipt('-F', 'SVCREJECT');
      if (ready.length === 0) ipt('-A', 'SVCREJECT', '-d', CLUSTER_IP, '-p', 'tcp', '--dport', String(port.port), '-j', 'REJECT');
      ready.forEach((p, k) => {
        const rest = ready.length - k;
        const stat = rest > 1 ? ['-m', 'statistic', '--mode', 'random', '--probability', (1 / rest).toFixed(5)] : [];
        ipt('-t', 'nat', '-A', 'SVC', '-p', 'tcp', ...stat, '-j', 'DNAT', '--to-destination', `${p.ip}:${target}`);
      });
    }
    this.note(`endpoints [${ready.map((p) => p.name).join(' ')}]`);
  }

  note(text) { (this.events = this.events || []).push(`${((now() - (this.t0 || now())) / 1000).toFixed(1)}s ${text}`); }

  // The NetworkPolicy, as iptables rules in each replica pod (a CNI's job).
  policy() {
    const np = this.m.netpol;
    const container = this.m.sts.spec.template.spec.containers[0];
    const portOf = (p) => (typeof p.port === 'number' ? p.port : container.ports.find((x) => x.name === p.port).containerPort);
    const all = [...this.pods.map((p) => ({ ip: p.ip, namespace: this.m.namespace, labels: p.labels })), ...this.others];
    const matches = (sel, labels) => Object.entries((sel && sel.matchLabels) || {}).every(([k, v]) => labels[k] === v);
    const peers = (rule) => all.filter((x) => (rule.from || rule.to || []).some((peer) => {
      if (peer.ipBlock) return false;
      const nsOk = peer.namespaceSelector ? matches(peer.namespaceSelector, { 'kubernetes.io/metadata.name': x.namespace }) : x.namespace === this.m.namespace;
      const podOk = peer.podSelector ? matches(peer.podSelector, x.labels) : true;
      return nsOk && podOk;
    }));
    for (const p of this.pods) {
      const ipt = (...a) => sh(p.netns, ['iptables', '-w', ...a]);
      for (const chain of ['INPUT', 'OUTPUT']) {
        ipt('-F', chain);
        ipt('-A', chain, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT');
        ipt('-A', chain, chain === 'INPUT' ? '-i' : '-o', 'lo', '-j', 'ACCEPT');
      }
      ipt('-A', 'INPUT', '-s', NODE_IP, '-j', 'ACCEPT'); // the kubelet's probes
      for (const rule of np.spec.ingress || []) {
        for (const peer of peers(rule)) {
          for (const port of rule.ports) ipt('-A', 'INPUT', '-s', peer.ip, '-p', (port.protocol || 'TCP').toLowerCase(), '--dport', String(portOf(port)), '-j', 'ACCEPT');
        }
      }
      for (const rule of np.spec.egress || []) {
        for (const peer of peers(rule)) {
          for (const port of rule.ports) ipt('-A', 'OUTPUT', '-d', peer.ip, '-p', (port.protocol || 'TCP').toLowerCase(), '--dport', String(portOf(port)), '-j', 'ACCEPT');
        }
      }
      ipt('-A', 'INPUT', '-j', 'DROP');
      ipt('-A', 'OUTPUT', '-j', 'DROP');
    }
  }

  // The PodDisruptionBudget: may one more pod be taken away now?
  disruptionAllowed() {
    const n = this.pods.length;
    const maxUnavailable = this.m.pdb.spec.maxUnavailable;
    const ready = this.pods.filter((p) => p.ready).length;
    return n - ready < maxUnavailable;
  }

  // Moves a pod's network namespace to a new address (a pod rescheduled elsewhere).
  readdress(pod, ip) {
    sh(pod.netns, ['ip', 'addr', 'flush', 'dev', 'eth0']);
    sh(pod.netns, ['ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    pod.ip = ip;
    this.dns();
    this.policy();
  }

  async destroy() {
    if (this.writer && this.writer.exitCode === null) this.writer.kill('SIGKILL');
    for (const p of this.pods) await p.delete();
  }

  // ---- the load: client.js in the client pod ----

  startWriter(idBase) {
    this.attempted = []; this.acked = []; this.acks = []; this.errors = [];
    const svc = `${this.m.service.metadata.name}.${this.m.namespace}.svc.${CLUSTER_DOMAIN}`;
    const child = spawn('ip', ['netns', 'exec', `${NS}-client`, 'node', path.join(HERE, 'client.js'), 'write', svc, String(idBase), '20'],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    this.writer = child;
    this.writerExit = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    let stderr = '';
    child.stderr.on('data', (d) => { stderr = (stderr + d.toString()).slice(-4000); });
    let ready;
    const readyP = new Promise((resolve) => { ready = resolve; });
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let e;
      try { e = JSON.parse(line); } catch (_) { return; }
      if (e.ev === 'ready') ready(true);
      else if (e.ev === 'attempt') this.attempted.push([e.first, e.count]);
      else if (e.ev === 'ack') { this.acked.push([e.first, e.count]); this.acks.push(now()); }
      else if (e.ev === 'error') this.errors.push({ at: now(), message: e.message });
      else if (e.ev === 'fatal') { this.errors.push({ at: now(), message: e.message }); ready(false); }
    });
    this.writerExit.then(() => ready(false));
    this.writerStderr = () => stderr;
    return Promise.race([readyP, sleep(60000).then(() => false)]);
  }

  async stopWriter() {
    try { this.writer.stdin.write('stop\n'); this.writer.stdin.end(); } catch (_) { /* gone */ }
    const code = await Promise.race([this.writerExit, sleep(30000).then(() => 'timeout')]);
    if (code === 'timeout') { this.writer.kill('SIGKILL'); return false; }
    return code === 0;
  }

  // Over [from, to]: acknowledgements, client errors, and the longest time without an ack.
  window(from, to) {
    let last = from, gap = 0, acks = 0;
    for (const t of this.acks) {
      if (t <= from) continue;
      if (t > to) break;
      gap = Math.max(gap, t - last);
      last = t;
      acks++;
    }
    gap = Math.max(gap, to - last);
    return { acks, errors: this.errors.filter((e) => e.at >= from && e.at <= to).length, gap_s: gap / 1000 };
  }

  async verify() {
    const file = path.join(this.dir, 'attempted.json');
    fs.writeFileSync(file, JSON.stringify({ attempted: this.attempted, acked: this.acked }));
    const svc = `${this.m.service.metadata.name}.${this.m.namespace}.svc.${CLUSTER_DOMAIN}`;
    const r = await runAsync('ip', ['netns', 'exec', `${NS}-client`, 'node', path.join(HERE, 'client.js'), 'verify', svc, file],
      { timeout: 120000 });
    const line = (r.stdout || '').trim().split('\n').pop();
    try { return JSON.parse(line); } catch (_) { return { ev: 'error', message: `verify: ${r.status} ${r.stderr}` }; }
  }

  async primary() {
    for (const p of this.pods) if ((await p.metric('tally_is_primary')) === 1) return p;
    return null;
  }
}

// Can `from` (a netns) open a TCP connection to ip:port within a second?
async function reaches(from, ip, port) {
  const js = `const s=require('net').connect(${port},'${ip}');s.setTimeout(1000);s.on('connect',()=>{console.log('open');process.exit(0)});s.on('timeout',()=>{console.log('timeout');process.exit(0)});s.on('error',(e)=>{console.log(e.code);process.exit(0)});`;
  const r = await runAsync('ip', ['netns', 'exec', `${NS}-${from}`, 'node', '-e', js], { timeout: 10000 });
  return (r.stdout || '').trim();
}

// ---- scenarios ----

async function scenarios(manifests, timings) {
  const c = new Cluster('three', manifests);
  try {
    c.dns();
    c.policy();
    c.endpoints();
    // 1. cold start: every pod at once (podManagementPolicy: Parallel), then the first write.
    const t0 = now();
    c.t0 = t0;
    check(manifests.sts.spec.podManagementPolicy === 'Parallel', 'podManagementPolicy is Parallel');
    await Promise.all(c.pods.map((p) => p.create()));
    const tInit = now();
    await Promise.all(c.pods.map((p) => p.waitReady(60000)));
    const tReady = now();
    if (!(await c.startWriter(1000000))) throw new Error(`the writer did not start: ${c.errors.map((e) => e.message).join('; ')} ${c.writerStderr()}`);
    while (c.acks.length === 0 && now() - t0 < 60000) await sleep(20);
    const tServe = c.acks[0];
    timings.cold_start = { init_s: (tInit - t0) / 1000, all_ready_s: (tReady - t0) / 1000, first_ack_s: (tServe - t0) / 1000 };
    check(c.pods.every((p) => /formatting replica/.test(p.log)), 'cold start: each init container formatted its data file');
    check(c.pods.every((p) => /io_uring unavailable \(EPERM\): using the epoll backend/.test(p.log)), 'cold start: io_uring forbidden (RuntimeDefault), every replica on the epoll backend');
    check(tServe !== undefined, `cold start: serving ${((tServe - t0) / 1000).toFixed(2)} s after the pods were created (init done ${timings.cold_start.init_s} s, all ready ${timings.cold_start.all_ready_s} s)`);
    await sleep(3000);

    // The NetworkPolicy, seen from outside: the labelled client and the node reach the replicas,
    // an unlabelled pod reaches neither the replica port nor metrics (through the Service either).
    const p0 = c.pods[0];
    check((await reaches('client', p0.ip, 3000)) === 'open', 'network policy: a pod labelled tally-client reaches the replica port');
    const strangerReplica = await reaches('stranger', p0.ip, 3000);
    const strangerService = await reaches('stranger', CLUSTER_IP, 3000);
    const strangerMetrics = await reaches('stranger', p0.ip, 9100);
    check(strangerReplica === 'timeout' && strangerService === 'timeout' && strangerMetrics === 'timeout',
      `network policy: an unlabelled pod is dropped (replica port: ${strangerReplica}, through the Service: ${strangerService}, metrics: ${strangerMetrics})`);
    check((await reaches('client', p0.ip, 9100)) === 'timeout', 'network policy: a client pod does not reach metrics');

    // The connector's side: the Service's name resolved to its one address, port 3000 by default.
    const ex = await runAsync('ip', ['netns', 'exec', `${NS}-client`, 'node', path.join(HERE, 'connector-example.js')],
      { timeout: 60000, env: { ...process.env, TIGERBEETLE_CLUSTER_ID: '0', TIGERBEETLE_REPLICAS: `tally.${manifests.namespace}.svc.${CLUSTER_DOMAIN}` } });
    check(ex.status === 0 && /^ok: /m.test(ex.stdout), `connector example against the three replicas: ${(ex.stdout.trim() || ex.stderr.trim()).split('\n').join('; ')}`);

    // 2. rolling restart: what `kubectl rollout restart` does: highest ordinal first, each pod
    // deleted only when the PDB allows it, the next only once it is ready again.
    let from = now();
    const stops = [];
    for (const p of [...c.pods].reverse()) {
      const deadline = now() + 60000;
      while (!c.disruptionAllowed() && now() < deadline) await sleep(100);
      if (!c.disruptionAllowed()) throw new Error('rolling restart: the PDB never allowed the next pod');
      c.note(`rollout: delete ${p.name}`);
      stops.push(await p.delete());
      await p.create();
      await p.waitReady(60000);
      c.note(`rollout: ${p.name} ready`);
    }
    await sleep(2000);
    let w = c.window(from, now());
    timings.rolling_restart = { s: (now() - from) / 1000, client_errors: w.errors, unavailable_s: w.gap_s, acks: w.acks, stop_ms: stops };
    check(w.errors === 0, `rolling restart: ${w.errors} client errors, longest time without an ack ${w.gap_s.toFixed(2)} s, ${w.acks} batches acknowledged, took ${timings.rolling_restart.s.toFixed(1)} s (SIGTERM to exit: ${stops.join(', ')} ms)`);

    // 3. a pod deleted and rescheduled with a new IP address: its DNS record changes, the others
    // re-resolve its name when they reconnect.
    from = now();
    const moved = c.pods[1];
    const oldIp = moved.ip;
    await moved.delete();
    c.readdress(moved, '10.78.0.21');
    await moved.create();
    const tReady3 = await moved.waitReady(60000);
    await sleep(2000);
    w = c.window(from, now());
    timings.new_ip = { ready_s: (tReady3 - from) / 1000, client_errors: w.errors, unavailable_s: w.gap_s };
    const peersConnected = await Promise.all(c.pods.filter((p) => p !== moved).map(async (p) => /tally_peer_connected\{peer="1"\} 1/.test(await p.metrics())));
    check(peersConnected.every(Boolean) && w.errors === 0,
      `new IP address: ${moved.name} ${oldIp} -> ${moved.ip} ready after ${timings.new_ip.ready_s.toFixed(2)} s; both peers connected to it again; ${w.errors} client errors, longest gap ${w.gap_s.toFixed(2)} s`);

    // 4. a PVC deleted: the pod comes back with an empty volume; the init container formats, the
    // replica starts fresh and copies its state from the others before it is ready.
    from = now();
    const wiped = c.pods[2];
    await wiped.delete();
    fs.rmSync(wiped.pvc, { recursive: true, force: true });
    c.note(`pvc of ${wiped.name} deleted`);
    const logBefore = wiped.log.length;
    await wiped.create();
    const tReady4 = await wiped.waitReady(120000);
    w = c.window(from, now());
    const syncs = await wiped.metric('tally_state_syncs_installed_total');
    timings.pvc_wipe = { rejoin_s: (tReady4 - from) / 1000, state_syncs: syncs, client_errors: w.errors, unavailable_s: w.gap_s };
    check(/formatting replica/.test(wiped.log.slice(logBefore)) && w.errors === 0,
      `PVC deleted: ${wiped.name} formatted again and ready (rejoined) ${timings.pvc_wipe.rejoin_s.toFixed(2)} s after its pod was deleted (state syncs installed: ${syncs}); ${w.errors} client errors`);

    // 5. a replica down for longer than its journal covers: the others move more than
    // JOURNAL_SLOTS ops past it before it returns; it must copy a checkpoint to catch up.
    from = now();
    const down = (await c.primary()) || c.pods[0];
    const opBefore = await down.metric('tally_op');
    await down.delete();
    c.note(`${down.name} down at op ${opBefore}`);
    const other = c.pods.find((p) => p !== down);
    const deadline5 = now() + 120000;
    let opNow = opBefore;
    while (now() < deadline5) {
      opNow = (await other.metric('tally_op')) || opNow;
      if (opNow > opBefore + JOURNAL_SLOTS + 100) break;
      await sleep(200);
    }
    const tBack = now();
    const logBefore5 = down.log.length;
    await down.create();
    const tReady5 = await down.waitReady(120000);
    w = c.window(from, now());
    const synced = /state sync|sync/i.test(down.log.slice(logBefore5));
    timings.journal_overrun = { down_s: (tBack - from) / 1000, ops_behind: opNow - opBefore, rejoin_s: (tReady5 - tBack) / 1000,
      client_errors: w.errors, unavailable_s: w.gap_s };
    check(opNow > opBefore + JOURNAL_SLOTS && w.errors === 0,
      `down longer than its journal: ${down.name} away ${timings.journal_overrun.down_s.toFixed(1)} s, ${opNow - opBefore} ops behind (journal ${JOURNAL_SLOTS}); ready ${timings.journal_overrun.rejoin_s.toFixed(2)} s after its return${synced ? ' (state sync in its log)' : ''}; ${w.errors} client errors, longest gap ${w.gap_s.toFixed(2)} s`);

    // Memory of the replicas after all this (for the resources in statefulset.yaml).
    timings.rss_kb = c.pods.map((p) => p.rssKb());

    // Nothing acknowledged lost.
    await sleep(1000);
    const writerOk = await c.stopWriter();
    const v = await c.verify();
    const balanced = v.ev === 'verify' && v.a_debits === v.sum && v.b_credits === v.sum && v.others === '0';
    check(writerOk && v.ev === 'verify' && v.lost === 0 && v.wrong === 0 && balanced,
      `nothing acknowledged lost: ${v.acknowledged} transfers acknowledged, ${v.found} found of ${v.attempted} attempted, lost ${v.lost}, changed ${v.wrong}, balances ${balanced ? 'equal' : 'DIFFER from'} the sum of transfers${v.ev !== 'verify' ? ` (${v.message})` : ''}`);
    check(c.errors.length === 0, `client errors over the whole run: ${c.errors.length}${c.errors.length ? ` (${c.errors[0].message})` : ''}`);

    // Every replica's data file executes to the same ledger.
    if (DIGEST) {
      await sleep(1500);
      for (const p of c.pods) await p.delete();
      const files = c.pods.map((p) => fs.readdirSync(p.pvc).filter((f) => f.endsWith('.tally')).map((f) => path.join(p.pvc, f))[0]);
      const heads = files.map((f) => {
        const j = JSON.parse(spawnSync(path.join(ROOTFS, 'tally'), ['inspect', '--json', f], { encoding: 'utf8' }).stdout || '{}');
        return Math.max(j.wal ? j.wal.op_max : 0, j.checkpoint_op || 0);
      });
      const op = Math.min(...heads);
      const digests = files.map((f) => { const d = spawnSync(DIGEST, [f, String(op)], { encoding: 'utf8', timeout: 120000 }); return d.status === 0 ? d.stdout.trim() : `error ${d.stderr}`; });
      check(new Set(digests).size === 1 && !digests[0].startsWith('error'), `the three data files execute to the same ledger at op ${op}`);
    }
  } catch (e) {
    check(false, `scenarios: ${e && e.stack || e}`);
  } finally {
    console.log(`events: ${(c.events || []).join('; ')}`);
    await c.destroy();
  }
}

// The single-replica overlay: one pod, --development, serving the connector example.
async function single(manifests, timings) {
  const c = new Cluster('single', manifests);
  try {
    c.dns();
    c.policy();
    c.endpoints();
    const t0 = now();
    await c.pods[0].create();
    await c.pods[0].waitReady(30000);
    timings.single_replica_ready_s = (now() - t0) / 1000;
    const r = await runAsync('ip', ['netns', 'exec', `${NS}-client`, 'node', path.join(HERE, 'connector-example.js')],
      { timeout: 60000, env: { ...process.env, TIGERBEETLE_CLUSTER_ID: '0', TIGERBEETLE_REPLICAS: `tally.${manifests.namespace}.svc.${CLUSTER_DOMAIN}` } });
    timings.single_replica_rss_kb = c.pods[0].rssKb();
    check(r.status === 0 && /^ok: /m.test(r.stdout), `single-replica overlay: ready in ${timings.single_replica_ready_s.toFixed(2)} s; the connector example through the Service: ${(r.stdout.trim() || r.stderr.trim()).split('\n').pop()}`);
    check(/development=1|batch_size_limit=32512/.test(c.pods[0].log), 'single-replica overlay: the data file has --development zones');
  } catch (e) {
    check(false, `single-replica overlay: ${e && e.stack || e}`);
  } finally {
    await c.destroy();
  }
}

async function main() {
  const timings = {};
  const base = load(path.join(WORK, 'rendered', 'base.yaml'));
  const only = process.argv.slice(2);
  if (only.length === 0 || only.includes('three')) await scenarios(base, timings);
  if (only.length === 0 || only.includes('single')) await single(load(path.join(WORK, 'rendered', 'single-replica.yaml')), timings);
  console.log(`timings: ${JSON.stringify(timings)}`);
  fs.writeFileSync(path.join(WORK, 'timings.json'), JSON.stringify(timings, null, 1));
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

process.on('SIGTERM', () => process.exit(143));
main().catch((e) => { console.log(String(e && e.stack || e)); console.log(`${passed} passed, ${failed + 1} failed`); process.exit(1); });

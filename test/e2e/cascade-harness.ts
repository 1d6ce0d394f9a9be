// Multi-process harness for relay chains (issue 7): one `geomirror site` process per site, and a
// WAN emulator proxy (test/wanem/proxy.ts) in front of every site that receives writes, so each
// hop gets its own latency and can be partitioned. Each site gets its own copy of the cluster
// file in which the OTHER sites' listen addresses are their proxies, so an upstream dials the
// proxy while the site itself listens on its real port. Helpers shared with the fan-out harness
// (writer, plans, hashes) come from harness.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, createWriteStream, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fetchStatus } from '../../src/cli/status.js';
import { adminCredentials, adminRequest, type AdminCredentials } from '../../src/cli/admin-client.js';
import type { SiteStatus } from '../../src/site/status.js';
import { WanProxy } from '../wanem/proxy.js';
import { loadConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';
import { fastLinkEnv, freePort, sha256, sleep, stopGraceMs, statusPollMs, waitMsMax } from './harness.js';

const bin = join(resolve(import.meta.dirname, '../..'), 'bin/geomirror.mjs');

export interface CascadeSite {
  name: string;
  role: 'primary' | 'relay' | 'mirror';
  /** Primary: its direct targets. */
  mirrors?: string[];
  /** Relay: next site. */
  forward?: string;
  relayAck?: 'cached' | 'end-to-end';
  /** Relay: keep a copy (claim 18). Mirrors and the primary always have storage. */
  storage?: boolean;
  cacheBytes?: number;
}

export interface CascadeOptions {
  sites: CascadeSite[];
  volumeBytes?: number;
  cacheBytes?: number;
  /** One-way latency of every hop's proxy. */
  hopLatencyMs?: number;
  env?: Record<string, string>;
}

interface Proc {
  spec: CascadeSite;
  admin: string;
  port: number;
  logPath: string;
  storagePath: string | undefined;
  configPath: string;
  child: ChildProcess | undefined;
  exited: Promise<void> | undefined;
  lives: number;
}

export class CascadeCluster {
  readonly dir = mkdtempSync(join(tmpdir(), 'geomirror-cascade-'));
  readonly procs = new Map<string, Proc>();
  /** Proxy in front of each site that listens (keyed by that site). */
  readonly proxies = new Map<string, WanProxy>();
  nbdPort = 0;
  readonly volumeBytes: number;

  private constructor(private readonly opts: CascadeOptions) {
    this.volumeBytes = opts.volumeBytes ?? 64 * 1024 * 1024;
  }

  static async create(opts: CascadeOptions): Promise<CascadeCluster> {
    const c = new CascadeCluster(opts);
    await c.setup();
    return c;
  }

  private async setup(): Promise<void> {
    writeFileSync(join(this.dir, 'cluster.key'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    this.nbdPort = await freePort();
    for (const s of this.opts.sites) {
      const cacheBytes = s.cacheBytes ?? this.opts.cacheBytes ?? 32 * 1024 * 1024;
      const cachePath = join(this.dir, `${s.name}.cache`);
      closeSync(openSync(cachePath, 'w'));
      truncateSync(cachePath, cacheBytes);
      const hasStorage = s.role !== 'relay' || s.storage === true;
      const storagePath = hasStorage ? join(this.dir, `${s.name}.img`) : undefined;
      if (storagePath) {
        closeSync(openSync(storagePath, 'w'));
        truncateSync(storagePath, this.volumeBytes);
      }
      const port = s.role === 'primary' ? 0 : await freePort();
      this.procs.set(s.name, { spec: s, admin: `127.0.0.1:${await freePort()}`, port, logPath: join(this.dir, `${s.name}.log`), storagePath, configPath: join(this.dir, `${s.name}.yaml`), child: undefined, exited: undefined, lives: 0 });
      if (port !== 0) {
        this.proxies.set(s.name, await WanProxy.start({ targetHost: '127.0.0.1', targetPort: port, oneWayLatencyMs: this.opts.hopLatencyMs ?? 0 }));
      }
    }
    for (const p of this.procs.values()) writeFileSync(p.configPath, this.configFor(p.spec.name));
    // As geomirror start does on first run: one cluster CA and every site's certificate (the
    // per-site files share the key's folder, so they share the CA).
    const first = [...this.procs.values()][0];
    if (first) {
      const config = loadConfig(first.configPath);
      await preparePki(config);
      this.creds = adminCredentials(config);
    }
  }

  /** How the harness authenticates to the sites' admin ports (the cluster's CA and key). */
  creds: AdminCredentials = { cluster: '' };

  /** GET /metrics of a site over its authenticated admin HTTPS ('' when it does not answer). */
  async metricsText(name: string): Promise<string> {
    const [host, port] = this.proc(name).admin.split(':');
    const r = await adminRequest({ host: host!, port: Number(port), method: 'GET', path: '/metrics', site: name, creds: this.creds, timeoutMs: 5000, bodyCharsMax: 16 << 20 }).catch(() => undefined);
    return r?.code === 200 ? r.body : '';
  }

  /** The cluster file as `self` sees it: other sites are reached through their proxies. */
  private configFor(self: string): string {
    const lines = [`cluster: cascade`, `secret: file:./cluster.key`, `volume: { name: vol0, size: ${this.volumeBytes}, blockSize: 4096 }`, `sites:`];
    for (const p of this.procs.values()) {
      const s = p.spec;
      const cacheBytes = s.cacheBytes ?? this.opts.cacheBytes ?? 32 * 1024 * 1024;
      const port = s.name === self ? p.port : this.proxies.get(s.name)?.port;
      const parts = [`role: ${s.role}`, `admin: ${p.admin}`, `cache: { device: "loopback:./${s.name}.cache", size: ${cacheBytes} }`];
      if (p.storagePath) parts.push(`storage: ["loopback:./${s.name}.img"]`);
      if (s.role === 'primary') parts.push(`nbd: 127.0.0.1:${this.nbdPort}`, `mirrors: [${(s.mirrors ?? []).join(', ')}]`, `on-mirror-loss: block`);
      else parts.push(`listen: 127.0.0.1:${port}`);
      if (s.role === 'relay') parts.push(`forward: ${s.forward}`, `relay-ack: ${s.relayAck ?? 'cached'}`);
      lines.push(`  ${s.name}: { ${parts.join(', ')} }`);
    }
    return `${lines.join('\n')}\n`;
  }

  proc(name: string): Proc {
    const p = this.procs.get(name);
    if (p === undefined) throw new Error(`no site ${name} in this cascade (${[...this.procs.keys()].join(', ')})`);
    return p;
  }

  proxy(name: string): WanProxy {
    const p = this.proxies.get(name);
    if (p === undefined) throw new Error(`no proxy in front of ${name}`);
    return p;
  }

  spawn(name: string): void {
    const p = this.proc(name);
    if (p.child !== undefined) throw new Error(`site ${name} is already running`);
    const log = createWriteStream(p.logPath, { flags: 'a' });
    log.write(`----- life ${++p.lives} -----\n`);
    const child = spawn(process.execPath, [bin, 'site', '--config', p.configPath, '--site', name], {
      cwd: this.dir,
      env: { ...process.env, ...(this.opts.env ?? fastLinkEnv), GEOMIRROR_LOG_FORMAT: 'json', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    p.child = child;
    p.exited = new Promise((r) => child.once('exit', (code, signal) => {
      log.end(`----- exited code=${code} signal=${signal} -----\n`);
      r();
    }));
  }

  async start(): Promise<void> {
    for (const name of this.procs.keys()) this.spawn(name);
    await Promise.all([...this.procs.keys()].map((n) => this.waitStatus(n, (s) => s.state !== 'starting', 'runtime up')));
  }

  async status(name: string): Promise<SiteStatus | undefined> {
    const r = await fetchStatus({ name, admin: this.proc(name).admin, site: name }, 2_000, this.creds);
    return 'status' in r ? r.status : undefined;
  }

  async waitStatus(name: string, pred: (s: SiteStatus) => boolean, what: string, timeoutMs = waitMsMax): Promise<SiteStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: SiteStatus | undefined;
    for (;;) {
      const p = this.proc(name);
      if (p.child === undefined || p.child.exitCode !== null) throw new Error(`waiting for ${name}: ${what}, but the site is not running\n${this.logTail(name)}`);
      last = (await this.status(name)) ?? last;
      if (last !== undefined && pred(last)) return last;
      if (Date.now() > deadline) throw new Error(`site ${name}: no "${what}" within ${timeoutMs} ms; last /status: ${JSON.stringify(last)}`);
      await sleep(statusPollMs);
    }
  }

  /** Every link of the topology up, the primary in sync with its first hops. */
  async waitLinked(): Promise<void> {
    for (const p of this.procs.values()) {
      const s = p.spec;
      if (s.role === 'primary') {
        const n = s.mirrors?.length ?? 0;
        await this.waitStatus(s.name, (st) => st.peers.length === n && st.peers.every((x) => x.link === 'up' && x.sync === 'in-sync'), 'first hops linked and in sync');
      } else if (s.role === 'relay') {
        await this.waitStatus(s.name, (st) => st.peers.some((x) => x.relation === 'downstream' && x.link === 'up'), 'downstream linked');
      }
    }
  }

  /** Every relay has nothing left for its downstream and the primary is in sync. */
  async waitDrained(timeoutMs = waitMsMax): Promise<void> {
    for (const p of this.procs.values()) {
      if (p.spec.role === 'primary') {
        await this.waitStatus(p.spec.name, (st) => st.state === 'in-sync' && st.cache.entries === 0 && st.peers.every((x) => x.sync === 'in-sync'), 'in sync with an empty cache', timeoutMs);
      } else if (p.spec.role === 'relay') {
        await this.waitStatus(p.spec.name, (st) => st.cache.entries === 0 && st.peers.some((x) => x.relation === 'downstream' && x.relay?.lagWrites === 0 && x.link === 'up'), 'relay cache drained', timeoutMs);
      } else {
        await this.waitStatus(p.spec.name, (st) => st.cache.entries === 0, 'mirror cache drained', timeoutMs);
      }
    }
  }

  async kill9(name: string): Promise<void> {
    const p = this.proc(name);
    p.child?.kill('SIGKILL');
    await p.exited;
    p.child = undefined;
  }

  async restart(name: string): Promise<void> {
    this.spawn(name);
    await this.waitStatus(name, (s) => s.state !== 'starting', 'runtime up');
  }

  hash(name: string): string {
    const p = this.proc(name);
    if (p.storagePath === undefined) throw new Error(`${name} keeps no copy`);
    return sha256(readFileSync(p.storagePath));
  }

  logText(name: string): string {
    try {
      return readFileSync(this.proc(name).logPath, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(name: string, lines = 40): string {
    return `--- ${name} log ---\n${this.logText(name).split('\n').slice(-lines).join('\n')}`;
  }

  dumpLogs(): string {
    return [...this.procs.keys()].map((n) => this.logTail(n, 60)).join('\n');
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.procs.values()].map(async (p) => {
      const child = p.child;
      if (child === undefined) return;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), stopGraceMs);
        await p.exited;
        clearTimeout(t);
      }
      p.child = undefined;
    }));
    await Promise.all([...this.proxies.values()].map((x) => x.close()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

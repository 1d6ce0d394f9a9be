// Multi-process acceptance harness (issue 5 "Acceptance"): a cluster file on loopback files in a
// temp dir, one `geomirror site` process per site (so `kill -9` hits exactly one site), logs
// captured to files, /status polling with bounded waits, and an NBD writer that records which
// writes the primary acked so a test can say what each replica must hold.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, closeSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fetchStatus } from '../../src/cli/status.js';
import { adminCredentials, adminRequest, type AdminCredentials } from '../../src/cli/admin-client.js';
import type { SiteStatus } from '../../src/site/status.js';
import { Cmd } from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/raw-client.js';
import { WanProxy } from '../wanem/proxy.js';
import { loadConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';

const repoRoot = resolve(import.meta.dirname, '../..');
const bin = join(repoRoot, 'bin/geomirror.mjs');

/** Bound on every wait of the harness; a test that needs longer is broken, not slow. */
export const waitMsMax = 60_000;
/** How often /status is polled: short, so a brief `resyncing` is seen. */
export const statusPollMs = 20;
/** Time a site gets to stop on SIGTERM before it is killed. */
export const stopGraceMs = 5_000;

/** Link timing for kill tests, passed to each site through the env hooks of src/site/roles.ts. */
export const fastLinkEnv = {
  GEOMIRROR_HEARTBEAT_MS: '100',
  GEOMIRROR_LINK_TIMEOUT_MS: '600',
  GEOMIRROR_MIRROR_LOSS_GRACE_MS: '300',
};

import { freePort } from '../net/helpers.js';
import { prepareLoopbackCluster } from '../../src/site/prepare.js';

export { freePort };

export interface ClusterOptions {
  volumeBytes?: number;
  cacheBytes?: number;
  onMirrorLoss?: 'block' | 'degrade';
  mirrors?: string[];
  /** Extra environment of every site process; default fastLinkEnv (short link timing). */
  env?: Record<string, string>;
  /** Extra node flags of every site process (say --cpu-prof for a bench). */
  nodeArgs?: string[];
  /** A standby site of this name (`standby-for: local`, issue 10); '' (default): none. */
  standby?: string;
  /** A witness site of this name (issue 10: breaks ties in small clusters); '' (default): none. It holds no data. */
  witness?: string;
  /** The standby's failover-timeout. */
  failoverTimeoutMs?: number;
  /**
   * Route every site-to-site connection through its own WAN proxy (one per dialer -> listener
   * pair, via the sites' `connect:` keys), so a test can cut single links (cut, isolate, heal).
   */
  proxies?: boolean;
  /**
   * The storage device string of each site, given the sparse volume-sized file made for it (say
   * `block:` and a loop device over that file); default `loopback:` of the file.
   */
  storage?: (site: string, imagePath: string) => string;
  /** Give the primary a listen address even without a standby (tests that dial it). */
  primaryListen?: boolean;
  /**
   * A cascade leg (issue 7) beside the fan-out: relay `name` (with a copy of its own) is one
   * more target of the primary and forwards to mirror `leaf`.
   */
  relay?: { name: string; leaf: string };
  /**
   * Several volumes (issue 20): the file gets `volumes:` instead of `volume:`, every site one
   * file per volume (NAME-VOLUME.img, through `{volume}` in its storage string) and one cache
   * file per consistency group (made as geomirror start makes them).
   */
  volumes?: { name: string; sizeBytes: number; group?: string }[];
  /**
   * etcd as the failover arbiter (issue 20 item 3): `coordinator:` with these endpoints and
   * lease TTL, and per site its own endpoints (`coordinator-endpoints`, say through a proxy).
   */
  coordinator?: { endpoints: string[]; leaseTtl: string; prefix?: string; siteEndpoints?: Record<string, string[]> };
}

export interface SiteProc {
  name: string;
  admin: string;
  logPath: string;
  storagePath: string;
  child: ChildProcess | undefined;
  exited: Promise<number | null> | undefined;
  /** Every life of this site, for the failure dump. */
  lives: number;
}

export class Cluster {
  readonly dir: string;
  readonly configPath: string;
  readonly sites = new Map<string, SiteProc>();
  readonly volumeBytes: number;
  nbdPort = 0;
  readonly listenPorts = new Map<string, number>();
  readonly names: string[];

  private constructor(readonly opts: Required<Omit<ClusterOptions, 'relay' | 'volumes' | 'coordinator'>> & Pick<ClusterOptions, 'relay' | 'volumes' | 'coordinator'>) {
    this.dir = mkdtempSync(join(tmpdir(), 'geomirror-e2e-'));
    this.configPath = join(this.dir, 'cluster.yaml');
    this.volumeBytes = opts.volumeBytes;
    this.names = ['local', ...(opts.standby ? [opts.standby] : []), ...opts.mirrors, ...(opts.relay ? [opts.relay.name, opts.relay.leaf] : []), ...(opts.witness ? [opts.witness] : [])];
  }

  /** The sites the primary sends to itself: its mirrors, the relay, the standby (not the relay's leaf, not the witness). */
  get primaryTargets(): string[] {
    return this.names.filter((n) => n !== 'local' && n !== this.opts.witness && n !== this.opts.relay?.leaf);
  }

  /** The standby's NBD port (its export goes live read-write when it is promoted). */
  standbyNbdPort = 0;
  /** `from->to` -> the proxy that connection goes through (opts.proxies). */
  readonly proxies = new Map<string, WanProxy>();

  /** Who dials whom: the primary its mirrors and standby; the standby the mirrors and, once promoted, the old primary. */
  private dialPairs(): [string, string][] {
    const sb = this.opts.standby;
    const pairs: [string, string][] = this.names.filter((n) => n !== 'local' && n !== this.opts.relay?.leaf).map((n) => ['local', n]);
    if (this.opts.relay) pairs.push([this.opts.relay.name, this.opts.relay.leaf]);
    if (sb) for (const n of this.names) if (n !== sb) pairs.push([sb, n]);
    return pairs;
  }

  /** Black-holes the connections between `a` and `b`, both directions (needs opts.proxies). */
  cut(a: string, b: string): void {
    const ps = [this.proxies.get(`${a}->${b}`), this.proxies.get(`${b}->${a}`)].filter((p): p is WanProxy => p !== undefined);
    if (ps.length === 0) throw new Error(`no proxied link between ${a} and ${b} (Cluster.create({ proxies: true }))`);
    for (const p of ps) p.partition();
  }

  /** Cuts `a` off from every other site. */
  isolate(a: string): void {
    for (const n of this.names) if (n !== a && (this.proxies.has(`${a}->${n}`) || this.proxies.has(`${n}->${a}`))) this.cut(a, n);
  }

  /** Ends every partition: black-holed connections are reset, new ones flow. */
  heal(): void {
    for (const p of this.proxies.values()) p.heal();
  }

  static async create(options: ClusterOptions = {}): Promise<Cluster> {
    const c = new Cluster({ volumeBytes: 64 * 1024 * 1024, cacheBytes: 32 * 1024 * 1024, onMirrorLoss: 'degrade', mirrors: ['east', 'west'], env: fastLinkEnv, nodeArgs: [], standby: '', witness: '', failoverTimeoutMs: 1500, proxies: false, storage: (name) => `loopback:./${name}.img`, primaryListen: false, ...options });
    await c.writeFiles();
    return c;
  }

  private async writeFiles(): Promise<void> {
    const o = this.opts;
    writeFileSync(join(this.dir, 'cluster.key'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    this.nbdPort = await freePort();
    for (const n of this.names) if (n !== 'local') this.listenPorts.set(n, await freePort());
    // The old primary listens too once there is a standby: the promoted standby dials it.
    if (o.standby || o.primaryListen) this.listenPorts.set('local', await freePort());
    if (o.proxies) {
      for (const [from, to] of this.dialPairs()) {
        this.proxies.set(`${from}->${to}`, await WanProxy.start({ targetHost: '127.0.0.1', targetPort: this.listenPorts.get(to)! }));
      }
    }
    const connectOf = (name: string): string => {
      const entries = [...this.proxies].filter(([k]) => k.startsWith(`${name}->`)).map(([k, p]) => `${k.split('->')[1]}: 127.0.0.1:${p.port}`);
      return entries.length > 0 ? `, connect: { ${entries.join(', ')} }` : '';
    };
    const volumeLines = o.volumes === undefined
      ? [`volume: { name: vol0, size: ${o.volumeBytes}, blockSize: 4096 }`]
      : ['volumes:', ...o.volumes.map((v) => `  - { name: ${v.name}, size: ${v.sizeBytes}${v.group ? `, group: ${v.group}` : ''} }`)];
    const co = o.coordinator;
    const coordOf = (name: string): string => (co?.siteEndpoints?.[name] !== undefined ? `, coordinator-endpoints: [${co.siteEndpoints[name]!.join(', ')}]` : '');
    const lines = [`cluster: e2e`, `secret: file:./cluster.key`, ...volumeLines];
    if (co) lines.push(`coordinator: { etcd: [${co.endpoints.join(', ')}], lease-ttl: ${co.leaseTtl}${co.prefix ? `, prefix: ${co.prefix}` : ''} }`);
    lines.push('sites:');
    for (const name of this.names) {
      const admin = `127.0.0.1:${await freePort()}`;
      if (name === o.witness) {
        lines.push(`  ${name}: { role: witness, listen: 127.0.0.1:${this.listenPorts.get(name)}, admin: ${admin}${connectOf(name)} }`);
        this.sites.set(name, { name, admin, logPath: join(this.dir, `${name}.log`), storagePath: '', child: undefined, exited: undefined, lives: 0 });
        continue;
      }
      const cache = join(this.dir, `${name}.cache`);
      const storage = o.volumes === undefined ? join(this.dir, `${name}.img`) : this.volumePath(name, o.volumes[0]!.name);
      if (o.volumes === undefined) {
        closeSync(openSync(cache, 'w'));
        truncateSync(cache, o.cacheBytes);
        closeSync(openSync(storage, 'w'));
        truncateSync(storage, o.volumeBytes);
      }
      const storageText = o.volumes === undefined ? o.storage(name, storage) : `loopback:./${name}-{volume}.img`;
      const common = `admin: ${admin}, cache: { device: "loopback:./${name}.cache", size: ${o.cacheBytes} }, storage: ["${storageText}"]`;
      const listen = this.listenPorts.has(name) ? `listen: 127.0.0.1:${this.listenPorts.get(name)}, ` : '';
      if (name === 'local') {
        const targets = [...o.mirrors, ...(o.relay ? [o.relay.name] : [])];
        lines.push(`  local: { role: primary, ${listen}nbd: 127.0.0.1:${this.nbdPort}, ${common}, mirrors: [${targets.join(', ')}], on-mirror-loss: ${o.onMirrorLoss}${connectOf(name)}${coordOf(name)} }`);
      } else if (name === o.relay?.name) {
        lines.push(`  ${name}: { role: relay, ${listen}forward: ${o.relay.leaf}, ${common}${connectOf(name)} }`);
      } else if (name === o.standby) {
        this.standbyNbdPort = await freePort();
        lines.push(`  ${name}: { role: standby, standby-for: local, failover-timeout: ${o.failoverTimeoutMs}ms, ${listen}nbd: 127.0.0.1:${this.standbyNbdPort}, ${common}${connectOf(name)}${coordOf(name)} }`);
      } else {
        lines.push(`  ${name}: { role: mirror, ${listen}${common}${connectOf(name)} }`);
      }
      this.sites.set(name, { name, admin, logPath: join(this.dir, `${name}.log`), storagePath: storage, child: undefined, exited: undefined, lives: 0 });
    }
    writeFileSync(this.configPath, `${lines.join('\n')}\n`);
    // As geomirror start does on first run: the cluster CA and every site's certificate.
    const config = loadConfig(this.configPath);
    if (o.volumes !== undefined) prepareLoopbackCluster(config);
    await preparePki(config);
    this.creds = adminCredentials(config);
  }

  /** How the harness authenticates to the sites' admin ports (the cluster's CA and key). */
  creds: AdminCredentials = { cluster: '' };

  site(name: string): SiteProc {
    const s = this.sites.get(name);
    if (s === undefined) throw new Error(`no site ${name} in this test cluster (${this.names.join(', ')})`);
    return s;
  }

  /** Spawns one site process; its stdout/stderr append to <dir>/<name>.log. */
  spawn(name: string): SiteProc {
    const s = this.site(name);
    if (s.child !== undefined) throw new Error(`site ${name} is already running (pid ${s.child.pid})`);
    const log = createWriteStream(s.logPath, { flags: 'a' });
    log.write(`----- life ${++s.lives} -----\n`);
    const child = spawn(process.execPath, [...this.opts.nodeArgs, bin, 'site', '--config', this.configPath, '--site', name], {
      cwd: this.dir,
      env: { ...process.env, ...this.opts.env, GEOMIRROR_LOG_FORMAT: 'json', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    s.child = child;
    s.exited = new Promise((r) =>
      child.once('exit', (code, signal) => {
        log.end(`----- exited code=${code} signal=${signal} -----\n`);
        r(code);
      }),
    );
    return s;
  }

  async start(names: readonly string[] = this.names): Promise<void> {
    for (const n of names) this.spawn(n);
    await Promise.all(names.map((n) => this.waitReady(n)));
  }

  /** Waits until the site's /status answers with the runtime up (not `starting`). */
  async waitReady(name: string): Promise<SiteStatus> {
    return this.waitStatus(name, (s) => s.state !== 'starting', 'runtime up');
  }

  async status(name: string): Promise<SiteStatus | undefined> {
    const r = await fetchStatus({ name, admin: this.site(name).admin, site: name }, 2_000, this.creds);
    return 'status' in r ? r.status : undefined;
  }

  /** GET /metrics of a site over its authenticated admin HTTPS ('' when it does not answer). */
  async metricsText(name: string): Promise<string> {
    const [host, port] = this.site(name).admin.split(':');
    const r = await adminRequest({ host: host!, port: Number(port), method: 'GET', path: '/metrics', site: name, creds: this.creds, timeoutMs: 5000, bodyCharsMax: 16 << 20 }).catch(() => undefined);
    return r?.code === 200 ? r.body : '';
  }

  /** Polls /status until `pred` holds; fails naming `what` and the last status seen. */
  async waitStatus(name: string, pred: (s: SiteStatus) => boolean, what: string, timeoutMs = waitMsMax, seen?: (s: SiteStatus) => void): Promise<SiteStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: SiteStatus | undefined;
    for (;;) {
      const s = this.site(name);
      if (s.child === undefined) throw new Error(`waiting for ${name}: ${what}, but the site is not running`);
      if (s.child.exitCode !== null) throw new Error(`waiting for ${name}: ${what}, but the site exited with code ${s.child.exitCode}\n${this.logTail(name)}`);
      last = (await this.status(name)) ?? last;
      if (last !== undefined) {
        seen?.(last);
        if (pred(last)) return last;
      }
      if (Date.now() > deadline) throw new Error(`site ${name}: no "${what}" within ${timeoutMs} ms; last /status: ${JSON.stringify(last)}`);
      await sleep(statusPollMs);
    }
  }

  /** The primary says every mirror is in sync with its link up (and a relay has passed everything to its leaf). */
  async waitInSync(timeoutMs = waitMsMax, seen?: (s: SiteStatus) => void): Promise<SiteStatus> {
    const mirrors = this.primaryTargets.length;
    const st = await this.waitStatus('local', (s) => s.state === 'in-sync' && s.peers.length === mirrors && s.peers.every((p) => p.sync === 'in-sync' && p.link === 'up'), 'every mirror in sync', timeoutMs, seen);
    const relay = this.opts.relay;
    if (relay) {
      await this.waitStatus(relay.name, (s) => s.peers.some((p) => p.relation === 'downstream' && p.link === 'up' && p.relay?.lagWrites === 0), `${relay.leaf} linked and nothing left for it`, timeoutMs);
      await this.waitStatus(relay.leaf, (s) => s.cache.entries === 0 && s.peers.some((p) => p.name === relay.name && p.link === 'up'), `${relay.leaf} drained`, timeoutMs);
    }
    return st;
  }

  async kill9(name: string): Promise<void> {
    const s = this.site(name);
    if (s.child === undefined) throw new Error(`kill -9 ${name}: not running`);
    s.child.kill('SIGKILL');
    await s.exited;
    s.child = undefined;
  }

  async restart(name: string): Promise<SiteStatus> {
    this.spawn(name);
    return this.waitReady(name);
  }

  /** Clean stop of one site (SIGTERM, SIGKILL after stopGraceMs). */
  async stop(name: string): Promise<void> {
    const s = this.site(name);
    const child = s.child;
    if (child === undefined) return;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), stopGraceMs);
      await s.exited;
      clearTimeout(t);
    }
    s.child = undefined;
  }

  /** Rewrites the primary's on-mirror-loss in the cluster file; takes effect at its next start. */
  setOnMirrorLoss(policy: 'block' | 'degrade'): void {
    const text = readFileSync(this.configPath, 'utf8');
    writeFileSync(this.configPath, text.replace(/on-mirror-loss: \w+/, `on-mirror-loss: ${policy}`));
    this.opts.onMirrorLoss = policy;
  }

  /** True when every site process is alive. */
  get allRunning(): boolean {
    return [...this.sites.values()].every((s) => s.child !== undefined && s.child.exitCode === null && s.child.signalCode === null);
  }

  /** SIGTERM every running site, SIGKILL what is left after stopGraceMs. */
  async stopAll(): Promise<void> {
    await Promise.all(this.names.map((n) => this.stop(n)));
  }

  logText(name: string): string {
    try {
      return readFileSync(this.site(name).logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** JSON log records of a site (lines that are not JSON, e.g. stderr, are skipped). */
  logRecords(name: string): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const line of this.logText(name).split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* a line cut by kill -9 */
      }
    }
    return out;
  }

  logTail(name: string, lines = 40): string {
    return `--- ${name} log (last ${lines} lines) ---\n${this.logText(name).split('\n').slice(-lines).join('\n')}`;
  }

  dumpLogs(): string {
    return this.names.map((n) => this.logTail(n, 80)).join('\n');
  }

  /** With several volumes: the file of volume `volume` at site `name`. */
  volumePath(name: string, volume: string): string {
    return join(this.dir, `${name}-${volume}.img`);
  }

  storage(name: string): Buffer {
    return readFileSync(this.site(name).storagePath);
  }

  hash(name: string): string {
    return sha256(this.storage(name));
  }

  async destroy(): Promise<void> {
    await this.stopAll();
    await Promise.all([...this.proxies.values()].map((p) => p.close()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---- NBD writer ---------------------------------------------------------------------------

/** Seeded PRNG (mulberry32): the same seed gives the same writes. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface PlannedWrite {
  /** Issue order. */
  index: number;
  offsetBytes: number;
  data: Buffer;
}

/**
 * Seeded writes of mixed sizes (4 KiB .. 1 MiB, block aligned) over a volume, `totalBytes` in
 * all. Offsets are drawn from a small hot area part of the time so writes overlap often.
 */
export function planWrites(seed: number, volumeBytes: number, totalBytes: number, blockBytes = 4096): PlannedWrite[] {
  const rnd = prng(seed);
  const out: PlannedWrite[] = [];
  const sizesBlocks = [1, 1, 2, 4, 8, 16, 64, 256]; // 4 KiB .. 1 MiB
  const volBlocks = volumeBytes / blockBytes;
  const pool = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < pool.length; i += 4) pool.writeUInt32LE((rnd() * 0x100000000) >>> 0, i);
  let sum = 0;
  while (sum < totalBytes) {
    const blocks = sizesBlocks[Math.floor(rnd() * sizesBlocks.length)]!;
    const hot = rnd() < 0.3;
    const spanBlocks = hot ? Math.min(volBlocks, 512) : volBlocks; // hot: the first 2 MiB
    const startBlock = Math.floor(rnd() * (spanBlocks - blocks + 1));
    // Distinct content, cheaply: each block is a slice of a seeded pool at a seeded offset,
    // stamped with the write index and block number, so no two writes' blocks are equal.
    const data = Buffer.alloc(blocks * blockBytes);
    for (let b = 0; b < blocks; b++) {
      const from = Math.floor(rnd() * (pool.length - blockBytes) / 8) * 8;
      pool.copy(data, b * blockBytes, from, from + blockBytes);
      data.writeUInt32LE(out.length, b * blockBytes);
      data.writeUInt32LE(startBlock + b, b * blockBytes + 4);
    }
    out.push({ index: out.length, offsetBytes: startBlock * blockBytes, data });
    sum += data.length;
  }
  return out;
}

/** Applies writes in order to `base` (a copy) or a zeroed image: the expected replica content. */
export function applyWrites(base: number | Buffer, writes: readonly PlannedWrite[]): Buffer {
  const img = typeof base === 'number' ? Buffer.alloc(base) : Buffer.from(base);
  for (const w of writes) w.data.copy(img, w.offsetBytes);
  return img;
}

interface Pending {
  resolve(): void;
  reject(err: Error): void;
}

/**
 * An NBD client that keeps up to `depth` writes in flight, never two overlapping ones at once
 * (so the order of overlapping writes is the issue order and "expected" is well defined), and
 * records each write as acked when its reply arrives.
 */
export class NbdWriter {
  private cookieNext = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private closed: Error | undefined;
  /** Writes the server replied OK to, by index. */
  readonly acked = new Set<number>();
  /** Writes sent (acked or not). */
  readonly issued: PlannedWrite[] = [];

  private constructor(private readonly client: RawClient) {
    void this.readLoop();
  }

  static async connect(port: number, exportName = 'vol0'): Promise<NbdWriter> {
    const c = await RawClient.connect(port);
    await c.handshake();
    await c.go(exportName);
    return new NbdWriter(c);
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const r = await this.client.readSimpleReply();
        const p = this.pending.get(r.cookie);
        if (p === undefined) throw new Error(`NBD reply for unknown cookie ${r.cookie}`);
        this.pending.delete(r.cookie);
        if (r.error === 0) p.resolve();
        else p.reject(new Error(`NBD error ${r.error}`));
      }
    } catch (err) {
      this.closed = err as Error;
      for (const p of this.pending.values()) p.reject(this.closed);
      this.pending.clear();
    }
  }

  private request(cmd: number, offsetBytes = 0, payload?: Buffer, length = 0): Promise<void> {
    if (this.closed) return Promise.reject(this.closed);
    const cookie = this.cookieNext++;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(cookie, { resolve, reject });
      this.client.sendRequest(cmd, { cookie, offset: offsetBytes, ...(payload ? { payload } : { length }) });
    });
  }

  write(w: PlannedWrite): Promise<void> {
    this.issued.push(w);
    return this.request(Cmd.WRITE, w.offsetBytes, w.data).then(() => {
      this.acked.add(w.index);
    });
  }

  flush(): Promise<void> {
    return this.request(Cmd.FLUSH);
  }

  get inflight(): number {
    return this.pending.size;
  }

  close(): void {
    this.client.close();
  }

  /**
   * Sends `writes` keeping up to `depth` in flight, none overlapping another in flight. Stops
   * issuing when `stop()` turns true (writes in flight are still awaited unless `abandon`). Resolves
   * with the errors seen (a killed primary fails what was in flight).
   */
  async run(writes: readonly PlannedWrite[], depth: number, hooks: { afterAck?: (w: PlannedWrite, ackedCount: number) => void | Promise<void>; stop?: () => boolean } = {}): Promise<Error[]> {
    const inflight = new Map<number, PlannedWrite>();
    const errors: Error[] = [];
    let wake: (() => void) | undefined;
    const overlaps = (w: PlannedWrite) => {
      for (const o of inflight.values()) if (w.offsetBytes < o.offsetBytes + o.data.length && o.offsetBytes < w.offsetBytes + w.data.length) return true;
      return false;
    };
    let next = 0;
    let acked = 0;
    while (next < writes.length || inflight.size > 0) {
      const stopping = hooks.stop?.() === true || errors.length > 0;
      while (!stopping && next < writes.length && inflight.size < depth && !overlaps(writes[next]!)) {
        const w = writes[next++]!;
        inflight.set(w.index, w);
        this.write(w).then(
          async () => {
            acked++;
            await hooks.afterAck?.(w, acked);
            inflight.delete(w.index);
            wake?.();
          },
          (err: Error) => {
            errors.push(err);
            inflight.delete(w.index);
            wake?.();
          },
        );
      }
      if (inflight.size === 0) {
        if (stopping) break;
        continue;
      }
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
    return errors;
  }
}

/**
 * What a replica may hold after a crash, checked per block: the data of the last acked write to
 * that block, or of any unacked write issued after it that covers the block (it may have
 * landed); a block no acked write covered may also still hold what it held before (`base`, default
 * zero). Returns the first few mismatches, described.
 */
export function checkAckedWrites(image: Buffer, issued: readonly PlannedWrite[], acked: ReadonlySet<number>, base?: Buffer, blockBytes = 4096, mismatchesMax = 5): string[] {
  const blocks = image.length / blockBytes;
  const lastAcked = new Int32Array(blocks).fill(-1);
  const writesByBlock = new Map<number, PlannedWrite[]>();
  const byIssue = [...issued].sort((a, b) => a.index - b.index);
  for (const w of byIssue) {
    const b0 = w.offsetBytes / blockBytes;
    for (let b = b0; b < b0 + w.data.length / blockBytes; b++) {
      if (acked.has(w.index)) lastAcked[b] = w.index;
      let list = writesByBlock.get(b);
      if (list === undefined) writesByBlock.set(b, (list = []));
      list.push(w);
    }
  }
  const problems: string[] = [];
  const zero = Buffer.alloc(blockBytes);
  for (const [b, list] of writesByBlock) {
    const got = image.subarray(b * blockBytes, (b + 1) * blockBytes);
    const la = lastAcked[b]!;
    const candidates = list.filter((w) => w.index >= la && (w.index === la || !acked.has(w.index)));
    const before = base ? base.subarray(b * blockBytes, (b + 1) * blockBytes) : zero;
    const ok = candidates.some((w) => got.equals(w.data.subarray(b * blockBytes - w.offsetBytes, (b + 1) * blockBytes - w.offsetBytes))) || (la === -1 && got.equals(before));
    if (!ok) {
      problems.push(`block ${b} (byte ${b * blockBytes}): holds none of ${la === -1 ? 'its old content or' : `acked write #${la} or`} the unacked writes after it (${candidates.filter((w) => w.index !== la).map((w) => `#${w.index}`).join(', ') || 'none'})`);
      if (problems.length >= mismatchesMax) break;
    }
  }
  return problems;
}

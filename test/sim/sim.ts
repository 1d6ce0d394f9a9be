// Deterministic simulator (TigerBeetle's VOPR, FoundationDB-style): drives the REAL core state
// machines (src/core/primary.ts, mirror.ts, relay.ts) through the PRODUCTION executor
// (src/site/executor.ts, via test/sim/world.ts) under a seeded network (per-link delay,
// FIFO within a link, reordering across links, connection resets with reconnect, partitions
// and heals), seeded crashes and restarts (process kill and power cut) and a seeded host
// workload (mixed sizes, overlaps, FUA, flushes). Every run replays exactly from its seed.
//
// Checks (issue 5 item 9):
//  - no CoreAssertionError fired;
//  - at every host FLUSH completion, every write acked before the flush was issued survives a
//    power cut (storage durable image + battery-backed cache replay) at the primary and at every
//    mirror in sync throughout the flush;
//  - after the faults stop (heal, restart, resync): every replica is byte-identical, and every
//    block holds the last host-acked write to it or a write issued after that one;
//  - every host read returns, per block, the last write acked before it was issued or a later one
//    (also while the primary's own copy is not whole and reads are served by the mirrors).
//
// Storage faults (issue 16 items 2, 3): single write errors and outages (every write, read and
// flush fails for a while) at any site that keeps a copy, the primary included; what the
// storage missed is reported back as stale once it recovers (hal/array.ts does that), also after
// a crash; and journal damage at a restart: an entry lost from the middle of the journal,
// reported by range (or as unknown: the whole copy) until the journal moves on.

import { Prng } from '../../hal/prng.js';
import type { Executor, ExecutorEnv, ExecutorPorts } from '../../src/site/executor.js';
import { Mirror } from '../../src/core/mirror.js';
import { Primary } from '../../src/core/primary.js';
import { Relay, type RelayAckMode } from '../../src/core/relay.js';
import {
  CoreAssertionError,
  defaultLimits,
  type CoreAction,
  type CoreEvent,
  type HostError,
  type Limits,
  type MirrorLossPolicy,
  type PeerId,
  type PeerMsg,
  type Role,
  type ByteRange,
  type SenseInfo,
} from '../../src/core/types.js';
import { SimCache, SimDisk, SimPersist } from './models.js';
import { Scheduler, SimLife, startHeartbeats, tearPendingWrites, type SimDelays } from './world.js';

export interface SimOptions {
  readonly seed: number;
  /** Host operations to issue. */
  readonly hostOps?: number;
  /** Print a readable trace line per event and action. */
  readonly trace?: (line: string) => void;
  /** Turn faults off (for a baseline). */
  readonly faults?: boolean;
  /**
   * fanout (default): primary -> 1..3 mirrors. chain: local -> r1 -> r2 -> remote (issue 7).
   * mixed: local -> east directly, and local -> r1 -> r2 -> west.
   */
  readonly topology?: Topology;
  /** Storage outages at every site with a copy, journal damage at restarts, host reads (issue 16). */
  readonly storageFaults?: boolean;
  /** Tests swap the executor for a deliberately broken one (executor-mutation.test.ts). */
  readonly makeExecutor?: (core: Role, ports: ExecutorPorts, env: ExecutorEnv) => Executor;
  /**
   * Storage flush after this many performed writes at every site, in place of the seeded draw
   * (which is still made: the rest of the seed's schedule draws the same numbers). For runs at
   * the product's default (`defaultLimits.flushAfterWritesMax`) or any other value.
   */
  readonly flushAfterWritesMax?: number;
}

export type Topology = 'fanout' | 'chain' | 'mixed';

export interface SimResult {
  readonly seed: number;
  readonly ok: boolean;
  readonly failures: string[];
  readonly stats: Record<string, number | string>;
}

const blockBytes = 512;

function outageSense(site: PeerId, op: string): SenseInfo {
  return { key: 0x2, asc: 0x04, ascq: 0, message: `${site} storage ${op}: not ready, no member of the array answers (simulated outage)` };
}

// ---------------------------------------------------------------------------------------------
// Sites

interface Site {
  readonly name: PeerId;
  readonly role: 'primary' | 'mirror' | 'relay';
  core: Primary | Mirror | Relay | undefined;
  /** Relays: where they forward, their ack mode, whether they keep a copy (claim 18). */
  readonly relay?: { downstream: PeerId; ackMode: RelayAckMode; storage: boolean };
  /** Bumped at every crash: completions of a previous life are discarded. */
  life: number;
  /** The running process life (core + production executor), undefined while crashed. */
  run: SimLife | undefined;
  readonly disk: SimDisk;
  readonly cache: SimCache;
  readonly persist: SimPersist;
  crashes: number;
  /** The storage fails every operation until then (an outage). */
  outageUntilMs: number;
  /** Ranges whose writes failed: reported as stale once the storage works again (survives a crash, as the array's state file). */
  stale: ByteRange[];
  /** What the journal lost to damage: reported at every start until the journal moves. */
  lost: { ranges: ByteRange[]; unknown: boolean } | undefined;
}

interface Link {
  readonly a: PeerId; // upstream (primary or relay)
  readonly b: PeerId; // downstream (mirror or relay); links are keyed by it (one upstream each)
  connected: boolean;
  conn: number;
  partitioned: boolean;
  baseDelayMs: number;
  lastDeliverMs: Record<string, number>;
  reconnectPending: boolean;
}

interface HostWrite {
  readonly id: number;
  readonly offsetBytes: number;
  readonly blocks: number;
  readonly fua: boolean;
  readonly payload: Uint8Array;
  status: 'new' | 'pending' | 'acked' | 'failed' | 'unknown';
  /** Submission order at the primary (a busy-rejected write is resubmitted later, after others). */
  order: number;
  ackedAtMs: number;
}

export function runSim(opts: SimOptions): SimResult {
  return new Sim(opts).run();
}

class Sim {
  private readonly prng: Prng;
  private readonly seed: number;
  private orderNext = 1;
  private readonly sched = new Scheduler();
  private readonly sites = new Map<PeerId, Site>();
  private readonly links = new Map<PeerId, Link>();
  private readonly failures: string[] = [];
  private readonly trace: ((line: string) => void) | undefined;
  private readonly faults: boolean;
  private readonly volumeBytes: number;
  private readonly limits: Limits;
  private readonly policy: MirrorLossPolicy;
  /** The primary's direct targets (mirrors or first relays). */
  private readonly mirrorNames: PeerId[];
  /** Every site but the primary. */
  private readonly others: PeerId[];
  /** Sites behind each direct target (the leg), the target included. */
  private readonly legs = new Map<PeerId, PeerId[]>();
  private readonly topology: Topology;
  private readonly hostOps: number;
  private readonly qd: number;
  /** Chance that a mirror's storage write fails with a MEDIUM ERROR (0 in most seeds). */
  private readonly mirrorWriteErrorRate: number;
  /** Storage outages, journal damage and host reads are part of this run. */
  private readonly storageFaults: boolean;
  // host
  private readonly writes: HostWrite[] = [];
  private readonly byHostId = new Map<number, { kind: 'write'; w: HostWrite } | { kind: 'flush'; issuedAtMs: number; syncAtIssue: PeerId[]; ackedBefore: HostWrite[] } | { kind: 'read'; offsetBytes: number; lengthBytes: number; ackedBefore: HostWrite[] }>();
  private hostIdNext = 1;
  private issued = 0;
  private outstanding = 0;
  private readonly retry: number[] = [];
  private workloadDone = false;
  private busyUntilMs = 0;
  private stopped = false;
  private readonly makeExecutor: SimOptions['makeExecutor'];
  private readonly stats = { writeErrors: 0, acked: 0, failedBusy: 0, flushes: 0, crashes: 0, powerCuts: 0, resets: 0, partitions: 0, degraded: 0, resyncs: 0, events: 0, outages: 0, damaged: 0, reads: 0, readsByMirror: 0, repaired: 0, unrecoverable: 0 };

  constructor(opts: SimOptions) {
    this.prng = new Prng(opts.seed);
    this.seed = opts.seed;
    this.trace = opts.trace;
    this.faults = opts.faults ?? true;
    this.makeExecutor = opts.makeExecutor;
    const p = this.prng;
    this.volumeBytes = (32 + p.int(4) * 32) * blockBytes; // 16..64 KiB: small, so writes overlap a lot
    this.policy = p.chance(0.25) ? 'block' : 'degrade';
    this.topology = opts.topology ?? 'fanout';
    // upstream -> downstream edges; relays are the sites that both receive and forward.
    let edges: [PeerId, PeerId][];
    if (this.topology === 'chain') {
      edges = [['local', 'r1'], ['r1', 'r2'], ['r2', 'remote']];
    } else if (this.topology === 'mixed') {
      edges = [['local', 'east'], ['local', 'r1'], ['r1', 'r2'], ['r2', 'west']];
    } else {
      const mirrorCount = 1 + p.int(3);
      edges = ['east', 'west', 'north'].slice(0, mirrorCount).map((m) => ['local', m]);
    }
    this.mirrorNames = edges.filter(([a]) => a === 'local').map(([, b]) => b);
    this.others = edges.map(([, b]) => b);
    for (const m of this.mirrorNames) {
      const leg = [m];
      for (let cur = m; ; ) {
        const next = edges.find(([a]) => a === cur)?.[1];
        if (next === undefined) break;
        leg.push(next);
        cur = next;
      }
      this.legs.set(m, leg);
    }
    this.hostOps = opts.hostOps ?? 80 + p.int(120);
    this.qd = 1 + p.int(16);
    // Storage outages, journal damage, host reads, and write errors behind relays (issue 16):
    // opt-in (--storage-faults, SimOptions.storageFaults) until every topology runs clean with them.
    const storageFaults = opts.storageFaults ?? process.env.SIM_STORAGE_FAULTS === '1';
    this.mirrorWriteErrorRate = p.chance(0.2) && (this.topology === 'fanout' || storageFaults) ? 0.01 : 0;
    this.storageFaults = opts.faults !== false && storageFaults && p.chance(0.5);
    this.limits = {
      ...defaultLimits,
      inflightWritesMax: 2 + p.int(8),
      inflightBytesMax: 8 * 1024 + p.int(4) * 4096,
      hostQueueWritesMax: 4 + p.int(8),
      cacheBytesMax: 0, // set below: never below inflightBytesMax
      regionBytes: [1024, 2048, 4096][p.int(3)]!,
      resyncBytesPerSecMax: 64 * 1024 + p.int(4) * 128 * 1024,
      resyncInflightRegionsMax: 1 + p.int(3),
      mirrorLossGraceMs: 20 + p.int(300),
      heartbeatIntervalMs: 100,
      // Sometimes flush rarely, so caches hold acked writes for long (replay over resync data).
      flushIntervalMs: p.chance(0.3) ? 1000 + p.int(3000) : 20 + p.int(80),
      flushAfterWritesMax: p.chance(0.3) ? 1000 : 1 + p.int(12),
      seqReserveChunk: BigInt(4 + p.int(30)),
      flushesInflightMax: 1 + p.int(4),
      mirrorReceiveQueueMax: 64,
      mirrorResyncQueueMax: 8,
      tickMs: 5,
    };
    this.limits = { ...this.limits, cacheBytesMax: this.limits.inflightBytesMax + p.int(4) * 8192, ...(opts.flushAfterWritesMax !== undefined ? { flushAfterWritesMax: opts.flushAfterWritesMax } : {}) };
    const meta = { epoch: 1n, seqReserved: 1n };
    for (const name of ['local', ...this.others]) {
      const downstream = edges.find(([a]) => a === name)?.[1];
      const relay = name !== 'local' && downstream !== undefined
        ? { downstream, ackMode: (p.chance(0.5) ? 'cached' : 'end-to-end') as RelayAckMode, storage: p.chance(0.3) }
        : undefined;
      this.sites.set(name, {
        name, role: name === 'local' ? 'primary' : relay !== undefined ? 'relay' : 'mirror', core: undefined, life: 0,
        ...(relay !== undefined ? { relay } : {}),
        disk: new SimDisk(this.volumeBytes, blockBytes), cache: new SimCache(), persist: new SimPersist(meta),
        run: undefined, crashes: 0, outageUntilMs: 0, stale: [], lost: undefined,
      });
    }
    for (const [a, m] of edges) {
      this.links.set(m, { a, b: m, connected: false, conn: 0, partitioned: false, baseDelayMs: 0.2 + p.float() * 10, lastDeliverMs: {}, reconnectPending: false });
    }
  }

  private log(line: string): void {
    if (this.trace !== undefined) this.trace(`${this.sched.now.toFixed(3).padStart(10)} ${line}`);
  }

  private fail(msg: string): void {
    this.failures.push(msg);
    this.log(`FAIL ${msg}`);
    this.stopped = true;
  }

  run(): SimResult {
    this.log(`seed: volume ${this.volumeBytes} B, topology ${this.topology} ${[...this.links.values()].map((l) => `${l.a}->${l.b}`).join(' ')} relays ${JSON.stringify([...this.sites.values()].filter((x) => x.relay).map((x) => ({ name: x.name, ...x.relay })))}, policy ${this.policy}, qd ${this.qd}, ops ${this.hostOps}, limits ${JSON.stringify(this.limits, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))}`);
    for (const s of this.sites.values()) this.startSite(s);
    for (const l of this.links.values()) this.connect(l);
    this.sched.at(1, () => this.pump());
    if (this.faults) this.scheduleFault();
    const simEndMs = 600_000;
    let steps = 0;
    while (!this.stopped && this.sched.runOne()) {
      steps++;
      if (this.sched.now > simEndMs) {
        this.fail(`did not converge within ${simEndMs} ms of simulated time: ${this.describe()}`);
        break;
      }
      if (this.workloadDone && this.outstanding === 0 && this.retry.length === 0 && this.converged()) break;
    }
    this.stats.events = steps;
    if (this.failures.length === 0) this.finalChecks();
    return { seed: this.seed, ok: this.failures.length === 0, failures: this.failures, stats: { ...this.stats, policy: this.policy, topology: this.topology, mirrors: this.mirrorNames.length, simMs: Math.round(this.sched.now) } };
  }

  private describe(): string {
    const p = this.sites.get('local')!.core as Primary | undefined;
    const relays = [...this.sites.values()].filter((s) => s.role === 'relay').map((s) => (s.core as Relay | undefined)?.status());
    return JSON.stringify({ primary: p?.status(), relays, outstanding: this.outstanding, issued: this.issued }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  }

  // ---------------------------------------------------------------------------------------------
  // Site lifecycle

  private startSite(s: Site): void {
    const cfgBase = { self: s.name, volumeBytes: this.volumeBytes, blockBytes, limits: this.limits };
    const core = s.role === 'primary'
      ? new Primary({ ...cfgBase, mirrors: this.mirrorNames, onMirrorLoss: this.policy })
      : s.relay !== undefined
        ? new Relay({ ...cfgBase, ...s.relay })
        : new Mirror(cfgBase);
    s.core = core;
    const p = this.prng;
    const delays: SimDelays = {
      cacheMs: () => 0.05 + p.float(),
      writeMs: () => 0.1 + p.float() * 4,
      readMs: () => 0.1 + p.float() * 3,
      flushMs: () => 0.5 + p.float() * 8,
      // A bitmap/meta update is an fsync: usually quick, sometimes very slow (heavy tail).
      persistMs: () => 0.05 + p.float() * (p.chance(0.1) ? 40 : 2),
    };
    const run = new SimLife(this.sched, s, delays, core, {
      send: (peer, msg) => this.send(s.name, peer, msg),
      close: (peer) => {
        const l = this.linkBetween(s.name, peer);
        if (l !== undefined) this.reset(l);
      },
      ack: (id, error, data) => this.onHostAck(id, error, data),
      log: (level, event, fields) => {
        if (event === 'mirror_degraded') this.stats.degraded++;
        if (event === 'mirror_resync_start') this.stats.resyncs++;
        if (event === 'local_copy_repaired') this.stats.repaired++;
        if (event === 'local_regions_unrecoverable') this.stats.unrecoverable++;
        if (this.trace !== undefined) this.log(`${s.name} LOG ${level} ${event} ${JSON.stringify(fields, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
      },
      fatal: (err) => this.fail(err instanceof CoreAssertionError ? `assertion fired at ${s.name}: ${err.message}` : `exception at ${s.name}: ${err.stack ?? err.message}`),
      ...(this.trace !== undefined ? { observe: (a: CoreAction) => { if (a.type !== 'log') this.log(`${s.name} -> ${fmtAction(a)}`); } } : {}),
      writeFault: (offsetBytes, payload) => {
        if (this.inOutage(s)) {
          s.stale.push({ offsetBytes, lengthBytes: payload.byteLength });
          return { sense: outageSense(s.name, 'write') };
        }
        if (this.holdsCopy(s) && this.faults && !this.workloadDone && p.chance(this.mirrorWriteErrorRate)) {
          this.stats.writeErrors++;
          // The array fails its member and probes it; once it answers, the write is reported stale.
          s.stale.push({ offsetBytes, lengthBytes: payload.byteLength });
          this.outage(s, 1 + p.int(40));
          return { sense: { key: 0x3, asc: 0x0c, ascq: 0, message: `${s.name}.img at byte ${offsetBytes}: write error (simulated)` } };
        }
        return undefined;
      },
      storageFault: (op) => (this.inOutage(s) ? outageSense(s.name, op) : undefined),
      staleRecorded: (ranges) => {
        s.stale = s.stale.filter((x) => !ranges.some((r) => r.offsetBytes <= x.offsetBytes && x.offsetBytes + x.lengthBytes <= r.offsetBytes + r.lengthBytes));
      },
      journalMoved: () => {
        s.lost = undefined;
      },
    }, this.makeExecutor);
    s.run = run;
    this.deliver(s, { type: 'start', recovered: { meta: s.persist.meta, cacheEntries: s.cache.list(), dirtyRegions: s.persist.dirtyRegions(), ...(s.lost ? { lost: s.lost } : {}) } });
    if (s.stale.length > 0 && !this.inOutage(s)) this.deliver(s, { type: 'storageRecovered', ranges: [...s.stale], unknown: false });
    const tick = (): void => {
      if (!run.live || this.stopped) return;
      this.deliver(s, { type: 'tick' });
      this.sched.at(this.sched.now + this.limits.tickMs, tick);
    };
    this.sched.at(this.sched.now + this.limits.tickMs, tick);
  }

  private crash(s: Site, powerCut: boolean): void {
    if (s.core === undefined) return;
    this.log(`CRASH ${s.name}${powerCut ? ' (power cut)' : ' (kill -9)'}`);
    this.stats.crashes++;
    if (powerCut) this.stats.powerCuts++;
    s.core = undefined;
    s.life++;
    s.crashes++;
    // In-flight storage writes: each block landed or not.
    tearPendingWrites(s.run!, s.disk, this.prng);
    s.run!.end();
    s.run = undefined;
    s.cache.crash(this.prng);
    s.persist.crash(this.prng);
    if (this.storageFaults && this.holdsCopy(s) && this.prng.chance(0.2)) this.damageJournal(s);
    if (powerCut) s.disk.powerCut(this.prng);
    for (const l of this.links.values()) if (l.a === s.name || l.b === s.name) this.reset(l, false);
    if (s.role === 'primary') {
      // The host's connection died with it: every outstanding operation has an unknown outcome.
      for (const [id, op] of this.byHostId) {
        if (op.kind === 'write' && op.w.status === 'pending') op.w.status = 'unknown';
        this.byHostId.delete(id);
      }
      this.outstanding = 0;
    }
    this.sched.at(this.sched.now + 20 + this.prng.int(400), () => this.restart(s));
  }

  private restart(s: Site): void {
    if (this.stopped || s.core !== undefined) return;
    this.log(`RESTART ${s.name}`);
    this.startSite(s);
    for (const l of this.links.values()) if (l.a === s.name || l.b === s.name) this.connect(l);
    if (s.role === 'primary') this.pump();
  }

  // ---------------------------------------------------------------------------------------------
  // Network

  private connect(l: Link): void {
    l.reconnectPending = false;
    if (this.stopped || l.connected || l.partitioned) return;
    const a = this.sites.get(l.a)!;
    const b = this.sites.get(l.b)!;
    if (a.core === undefined || b.core === undefined) return;
    l.connected = true;
    l.conn++;
    l.lastDeliverMs = {};
    this.log(`LINK UP ${l.a}<->${l.b} conn ${l.conn}`);
    this.deliver(a, { type: 'peerUp', peer: l.b });
    if (l.connected) this.deliver(b, { type: 'peerUp', peer: l.a });
    // The link's own heartbeats, both ways (src/net/link.ts): each end hears the other as peerHeard.
    const hbLink = { get conn() { return l.conn; }, get up() { return l.connected; } };
    for (const [x, y] of [[a, b], [b, a]] as const) {
      startHeartbeats(this.sched, hbLink, () => ({ life: x.run, name: x.name }), () => ({ life: y.run }), this.limits.heartbeatIntervalMs, () => this.deliverTime(l, x.name, y.name));
    }
  }

  private linkBetween(x: PeerId, y: PeerId): Link | undefined {
    const l = this.links.get(y);
    if (l !== undefined && l.a === x) return l;
    const m = this.links.get(x);
    return m !== undefined && m.a === y ? m : undefined;
  }

  /** FIFO within a link direction; links differ, so messages reorder across links. */
  private deliverTime(l: Link, from: PeerId, to: PeerId): number {
    const dir = `${from}>${to}`;
    const t = Math.max(l.lastDeliverMs[dir] ?? 0, this.sched.now + l.baseDelayMs + this.prng.float() * 3);
    l.lastDeliverMs[dir] = t;
    return t;
  }

  /** A TCP reset: in-flight messages are lost, both ends notice, a reconnect follows unless partitioned. */
  private reset(l: Link, reconnect = true): void {
    if (!l.connected) return;
    l.connected = false;
    l.conn++;
    this.stats.resets++;
    this.log(`LINK DOWN ${l.a}<->${l.b}`);
    for (const n of [l.a, l.b]) {
      const s = this.sites.get(n)!;
      if (s.core !== undefined) this.deliver(s, { type: 'peerDown', peer: n === l.a ? l.b : l.a });
    }
    if (reconnect) this.scheduleReconnect(l);
  }

  private scheduleReconnect(l: Link): void {
    if (l.reconnectPending) return;
    l.reconnectPending = true;
    this.sched.at(this.sched.now + 5 + this.prng.int(100), () => this.connect(l));
  }

  private send(from: PeerId, to: PeerId, msg: PeerMsg): void {
    const down = this.links.get(to);
    const l = down !== undefined && down.a === from ? down : this.links.get(from);
    if (l === undefined || !l.connected) return;
    const conn = l.conn;
    const t = this.deliverTime(l, from, to);
    this.sched.at(t, () => {
      if (l.conn !== conn || !l.connected) return;
      const s = this.sites.get(to)!;
      this.deliver(s, { type: 'recv', peer: from, msg });
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Faults

  private scheduleFault(): void {
    this.sched.at(this.sched.now + 10 + this.prng.int(150), () => {
      if (this.stopped || this.workloadDone) return;
      this.injectFault();
      this.scheduleFault();
    });
  }

  private injectFault(): void {
    const p = this.prng;
    const r = p.int(100);
    const links = [...this.links.values()];
    const l = links[p.int(links.length)]!;
    if (r < 35) {
      this.reset(l);
    } else if (r < 50) {
      if (l.partitioned) return;
      this.stats.partitions++;
      this.log(`PARTITION ${l.a}<->${l.b}`);
      l.partitioned = true;
      this.reset(l, false);
      this.sched.at(this.sched.now + 10 + p.int(600), () => this.heal(l));
    } else if (r < 75) {
      const mirrors = this.others.map((n) => this.sites.get(n)!);
      this.crash(mirrors[p.int(mirrors.length)]!, p.chance(0.3));
    } else if (r < 90) {
      this.crash(this.sites.get('local')!, p.chance(0.3));
    } else if (r < 95 && this.storageFaults) {
      const copies = [...this.sites.values()].filter((x) => this.holdsCopy(x));
      this.outage(copies[p.int(copies.length)]!, 5 + p.int(300));
    }
    // else: a quiet spell
  }

  private inOutage(s: Site): boolean {
    return this.sched.now < s.outageUntilMs;
  }

  /** The storage of `s` fails every operation for `ms`; then what it missed is reported stale (hal/array.ts). */
  private outage(s: Site, ms: number): void {
    if (this.inOutage(s)) return;
    this.stats.outages++;
    s.outageUntilMs = this.sched.now + ms;
    this.log(`OUTAGE ${s.name} storage for ${ms} ms`);
    const life = s.life;
    this.sched.at(s.outageUntilMs, () => {
      this.log(`STORAGE BACK ${s.name} (stale ${JSON.stringify(s.stale)})`);
      if (s.life === life && s.stale.length > 0) this.deliver(s, { type: 'storageRecovered', ranges: [...s.stale], unknown: false });
    });
  }

  /** At a crash: one entry of the journal is damaged (lost, by range; sometimes not even that). */
  private damageJournal(s: Site): void {
    const entries = [...s.cache.entries.entries()];
    if (entries.length === 0) return;
    const [k, e] = entries[this.prng.int(entries.length)]!;
    s.cache.entries.delete(k);
    this.stats.damaged++;
    const unknown = this.prng.chance(0.1);
    const ranges = [...(s.lost?.ranges ?? []), { offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes }];
    s.lost = { ranges: unknown ? [] : ranges, unknown: unknown || s.lost?.unknown === true };
    this.log(`DAMAGE ${s.name} journal entry e${e.epoch}s${e.seq} @${e.offsetBytes}+${e.lengthBytes}${unknown ? ' (unnamed)' : ''}`);
  }

  private heal(l: Link): void {
    if (!l.partitioned) return;
    this.log(`HEAL ${l.a}<->${l.b}`);
    l.partitioned = false;
    this.connect(l);
  }

  // ---------------------------------------------------------------------------------------------
  // Event delivery and action execution

  private deliver(s: Site, ev: CoreEvent): void {
    if (s.run === undefined || this.stopped) return;
    if (this.trace !== undefined && ev.type !== 'tick') this.log(`${s.name} <- ${fmtEvent(ev)}`);
    s.run.feed(ev);
  }

  // ---------------------------------------------------------------------------------------------
  // Host workload

  private primary(): Primary | undefined {
    return this.sites.get('local')!.core as Primary | undefined;
  }

  private pump(): void {
    const primary = this.sites.get('local')!;
    while (!this.stopped && primary.core !== undefined && this.outstanding < this.qd && this.sched.now >= this.busyUntilMs) {
      const retryId = this.retry.shift();
      if (retryId !== undefined) {
        const w = this.writes[retryId]!;
        this.submitWrite(w);
        continue;
      }
      if (this.issued >= this.hostOps) {
        this.workloadDone = true;
        return;
      }
      this.issued++;
      if (this.prng.chance(0.12)) this.submitFlush();
      else if (this.storageFaults && this.prng.chance(0.15)) this.submitRead();
      else this.submitWrite(this.newWrite());
    }
  }

  private newWrite(): HostWrite {
    const p = this.prng;
    const volumeBlocks = this.volumeBytes / blockBytes;
    const blocks = p.chance(0.7) ? 1 + p.int(4) : 1 + p.int(16);
    const hot = p.chance(0.5);
    const span = hot ? Math.min(volumeBlocks, 12) : volumeBlocks;
    const first = Math.min(p.int(span), volumeBlocks - blocks);
    const id = this.writes.length + 1; // write id 0 means "never written" (zeroes)
    const payload = new Uint8Array(blocks * blockBytes);
    for (let i = 0; i < blocks; i++) fillBlock(payload.subarray(i * blockBytes, (i + 1) * blockBytes), id, first + i);
    const w: HostWrite = { id, offsetBytes: first * blockBytes, blocks, fua: p.chance(0.1), payload, status: 'new', ackedAtMs: -1, order: 0 };
    this.writes.push(w);
    return w;
  }

  private submitWrite(w: HostWrite): void {
    const hostId = this.hostIdNext++;
    w.status = 'pending';
    w.order = this.orderNext++;
    this.outstanding++;
    this.byHostId.set(hostId, { kind: 'write', w });
    this.deliver(this.sites.get('local')!, { type: 'hostWrite', id: hostId, offsetBytes: w.offsetBytes, lengthBytes: w.payload.byteLength, fua: w.fua, payload: w.payload });
  }

  private submitFlush(): void {
    const hostId = this.hostIdNext++;
    this.outstanding++;
    this.stats.flushes++;
    const syncAtIssue = [...(this.primary()?.inSyncMirrors() ?? [])];
    this.byHostId.set(hostId, { kind: 'flush', issuedAtMs: this.sched.now, syncAtIssue, ackedBefore: this.writes.filter((w) => w.status === 'acked') });
    this.deliver(this.sites.get('local')!, { type: 'hostFlush', id: hostId });
  }

  /** A host read: from local storage where the primary says its copy is whole and it works, else through the core (a mirror serves it). */
  private submitRead(): void {
    const p = this.prng;
    const volumeBlocks = this.volumeBytes / blockBytes;
    const blocks = 1 + p.int(8);
    const offsetBytes = p.int(volumeBlocks - blocks + 1) * blockBytes;
    const lengthBytes = blocks * blockBytes;
    const hostId = this.hostIdNext++;
    this.outstanding++;
    this.stats.reads++;
    this.byHostId.set(hostId, { kind: 'read', offsetBytes, lengthBytes, ackedBefore: this.writes.filter((w) => w.status === 'acked') });
    const s = this.sites.get('local')!;
    const primary = this.primary()!;
    if (primary.readable(offsetBytes, lengthBytes) && !this.inOutage(s)) {
      const data = s.disk.read(offsetBytes, lengthBytes);
      const life = s.life;
      this.sched.at(this.sched.now + 0.1 + p.float(), () => {
        if (s.life === life) this.onHostAck(hostId, undefined, data);
      });
      return;
    }
    this.stats.readsByMirror++;
    this.deliver(s, { type: 'hostRead', id: hostId, offsetBytes, lengthBytes });
  }

  private onHostAck(hostId: number, error: HostError | undefined, data?: Uint8Array): void {
    const op = this.byHostId.get(hostId);
    if (op === undefined) {
      this.fail(`host ack for unknown or already completed host op ${hostId}`);
      return;
    }
    this.byHostId.delete(hostId);
    this.outstanding--;
    if (op.kind === 'read') {
      if (error === undefined) {
        const img = new Uint8Array(this.volumeBytes);
        img.set(data ?? new Uint8Array(0), op.offsetBytes);
        const err = data?.byteLength !== op.lengthBytes ? `read of ${op.offsetBytes}+${op.lengthBytes} returned ${data?.byteLength} bytes` : this.checkImage(img, op.ackedBefore, `host read of ${op.offsetBytes}+${op.lengthBytes}`, op.offsetBytes, op.lengthBytes);
        if (err !== undefined) this.fail(err);
      } else if (error.kind !== 'busy' && error.kind !== 'io') {
        this.fail(`read of ${op.offsetBytes}+${op.lengthBytes} failed: ${error.message}`);
      }
    } else if (op.kind === 'write') {
      if (error?.kind === 'busy') {
        this.stats.failedBusy++;
        op.w.status = 'new';
        this.retry.push(op.w.id - 1);
        // Backpressure: the host backs off before trying again.
        this.busyUntilMs = this.sched.now + 1 + this.prng.float() * 4;
        this.sched.at(this.busyUntilMs, () => this.pump());
      } else if (error?.kind === 'io' && ((this.mirrorWriteErrorRate > 0 && this.policy === 'block') || this.storageFaults || this.mirrorWriteErrorRate > 0)) {
        // A storage error reached the host (under `block` a mirror's; or the primary's own with
        // no mirror holding the write): the data may still be on some sites, so the write's
        // outcome is unknown to the checker.
        op.w.status = 'unknown';
      } else if (error !== undefined) {
        this.fail(`write ${op.w.id} failed: ${error.message}`);
      } else {
        op.w.status = 'acked';
        op.w.ackedAtMs = this.sched.now;
        this.stats.acked++;
      }
    } else if (error === undefined) {
      this.checkFlush(op.syncAtIssue, op.ackedBefore);
    } else if (error.kind !== 'busy' && !(error.kind === 'io' && (this.mirrorWriteErrorRate > 0 || this.storageFaults))) {
      this.fail(`flush failed: ${error.message}`);
    }
    // Pace the host a little so the network and faults interleave with the workload.
    this.sched.at(this.sched.now + this.prng.float() * 2, () => this.pump());
  }

  // ---------------------------------------------------------------------------------------------
  // Checks

  /** After a FLUSH: every write acked before it survives a power cut at every in-sync site. */
  private checkFlush(syncAtIssue: PeerId[], ackedBefore: HostWrite[]): void {
    const primary = this.primary();
    if (primary === undefined) return;
    const nowInSync = new Set(primary.inSyncMirrors());
    // A leg through relays is as in sync as its first hop: the relay never degrades its
    // downstream, it only blocks (and answers a flush once the far end answered).
    const sites = ['local', ...syncAtIssue.filter((m) => nowInSync.has(m)).flatMap((m) => this.legs.get(m)!)];
    for (const name of sites) {
      const s = this.sites.get(name)!;
      if (!this.holdsCopy(s)) continue;
      const image = this.powerLossImage(s);
      // The primary's suspect regions are not its to keep: the mirrors hold them (detach).
      const skip = name === 'local' ? primary.suspectRanges() : [];
      const err = this.checkImage(image, ackedBefore, `after flush at ${name}`, 0, this.volumeBytes, skip);
      if (err !== undefined) return this.fail(err);
    }
  }

  /** What a site would hold after a power cut now: the durable disk plus the cache replayed. */
  private powerLossImage(s: Site): Uint8Array {
    const img = s.disk.durable.slice();
    for (const e of s.cache.list()) img.set(e.payload, e.offsetBytes);
    return img;
  }

  /** Every block holds the newest of `acked` that touches it, or a write issued after it. */
  private checkImage(img: Uint8Array, acked: HostWrite[], where: string, fromBytes = 0, lengthBytes = this.volumeBytes, skip: readonly ByteRange[] = []): string | undefined {
    const volumeBlocks = this.volumeBytes / blockBytes;
    const lastAcked = new Int32Array(volumeBlocks); // submission order, 0 = none
    const lastAckedId = new Int32Array(volumeBlocks);
    for (const w of acked) {
      const first = w.offsetBytes / blockBytes;
      for (let b = first; b < first + w.blocks; b++) {
        if (w.order > lastAcked[b]!) {
          lastAcked[b] = w.order;
          lastAckedId[b] = w.id;
        }
      }
    }
    for (let b = fromBytes / blockBytes; b < (fromBytes + lengthBytes) / blockBytes; b++) {
      if (skip.some((r) => r.offsetBytes <= b * blockBytes && b * blockBytes < r.offsetBytes + r.lengthBytes)) continue;
      const blk = img.subarray(b * blockBytes, (b + 1) * blockBytes);
      const id = blockWriteId(blk, b);
      if (id === undefined) return `${where}: block ${b} holds bytes no host write produced (torn or misplaced data)`;
      const order = id === 0 ? 0 : this.writes[id - 1]!.order;
      if (order < lastAcked[b]!) return `${where}: block ${b} holds write ${id} but later write ${lastAckedId[b]} was acked (lost acked write)`;
      if (id > 0) {
        const w = this.writes[id - 1]!;
        const first = w.offsetBytes / blockBytes;
        if (b < first || b >= first + w.blocks) return `${where}: block ${b} holds write ${id} which never touched it`;
      }
    }
    return undefined;
  }

  private converged(): boolean {
    const p = this.primary();
    if (p === undefined || !p.quiescent()) return false;
    for (const n of this.others) {
      const m = this.sites.get(n)!.core;
      if (m === undefined || m instanceof Primary || !m.quiescent()) return false;
    }
    return true;
  }

  /** Mirrors, and relays with storage (claim 18), hold a full copy of the volume. */
  private holdsCopy(s: Site): boolean {
    return s.role !== 'relay' || s.relay?.storage === true;
  }

  private finalChecks(): void {
    const acked = this.writes.filter((w) => w.status === 'acked');
    const ref = this.sites.get('local')!;
    const err = this.checkImage(ref.disk.cur, acked, 'primary after convergence');
    if (err !== undefined) return this.fail(err);
    for (const n of this.others) {
      if (!this.holdsCopy(this.sites.get(n)!)) continue;
      const d = this.sites.get(n)!.disk.cur;
      for (let i = 0; i < d.byteLength; i += blockBytes) {
        if (!sameBlock(d, ref.disk.cur, i)) {
          return this.fail(`replica ${n} differs from the primary at block ${i / blockBytes}: write ${blockWriteId(d.subarray(i, i + blockBytes), i / blockBytes)} vs ${blockWriteId(ref.disk.cur.subarray(i, i + blockBytes), i / blockBytes)}`);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Block contents: every block of write `id` carries (id, block number) plus a filler derived
// from both, so a checker can tell which write a block came from and that it is whole.

function fillBlock(blk: Uint8Array, id: number, block: number): void {
  const dv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
  dv.setUint32(0, id);
  dv.setUint32(4, block);
  const c = (id * 31 + block * 7) & 0xff;
  blk.set(ramp.subarray(c + 8, c + blk.byteLength), 8); // blk[i] = (c + i) & 0xff
}

const ramp = Uint8Array.from({ length: 2 * blockBytes + 256 }, (_v, j) => j & 0xff);

function blockWriteId(blk: Uint8Array, block: number): number | undefined {
  const dv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
  const id = dv.getUint32(0);
  // The models tear writes at block granularity, so a sample of each block's bytes is enough
  // to tell which write it came from (and keeps 500 seeds inside the test budget).
  if (id === 0) {
    for (let i = 4; i < blk.byteLength; i += 29) if (blk[i] !== 0) return undefined;
    return 0;
  }
  if (dv.getUint32(4) !== block) return undefined;
  for (let i = 8; i < blk.byteLength; i += 29) if (blk[i] !== ((id * 31 + block * 7 + i) & 0xff)) return undefined;
  if (blk[blk.byteLength - 1] !== ((id * 31 + block * 7 + blk.byteLength - 1) & 0xff)) return undefined;
  return id;
}

function sameBlock(a: Uint8Array, b: Uint8Array, off: number): boolean {
  for (let i = off; i < off + blockBytes; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Trace formatting

function fmtMsg(m: PeerMsg): string {
  switch (m.type) {
    case 'write': return `write e${m.epoch} s${m.seq} @${m.offsetBytes}+${m.lengthBytes}${m.fua ? ' fua' : ''}`;
    case 'resyncData': return `resyncData #${m.resyncId} @${m.offsetBytes}+${m.payload.byteLength}`;
    case 'readData': return `readData #${m.readId} ${m.sense === undefined ? `${m.payload.byteLength} bytes` : m.sense.message}`;
    default: return JSON.stringify(m, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  }
}

function fmtEvent(ev: CoreEvent): string {
  switch (ev.type) {
    case 'recv': return `recv from ${ev.peer}: ${fmtMsg(ev.msg)}`;
    case 'hostWrite': return `hostWrite #${ev.id} @${ev.offsetBytes}+${ev.lengthBytes}${ev.fua ? ' fua' : ''}`;
    case 'storageRead': return `storageRead op${ev.opId}`;
    case 'start': return `start (cache ${ev.recovered.cacheEntries.length} entries, meta epoch ${ev.recovered.meta.epoch} seqReserved ${ev.recovered.meta.seqReserved}, dirty ${JSON.stringify([...ev.recovered.dirtyRegions])})`;
    default: return JSON.stringify(ev, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  }
}

function fmtAction(a: CoreAction): string {
  switch (a.type) {
    case 'send': return `send ${a.peer}: ${fmtMsg(a.msg)}`;
    case 'cacheAppend': return `cacheAppend op${a.opId} e${a.entry.epoch} s${a.entry.seq} @${a.entry.offsetBytes}+${a.entry.lengthBytes}`;
    case 'storageWrite': return `storageWrite op${a.opId} @${a.offsetBytes}+${a.payload.byteLength}${a.fua ? ' fua' : ''}`;
    case 'cacheDrop': return `cacheDrop ${a.entries.map((e) => `e${e.epoch}s${e.seq}`).join(',')}`;
    default: return JSON.stringify(a, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  }
}

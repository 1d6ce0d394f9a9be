// One life of a replicating site (primary, mirror, relay, standby): its core (src/site/cores.ts),
// the executor that turns the core's actions into I/O (src/site/executor.ts) over the site's
// devices (src/site/devices.ts) and links (src/site/peers.ts), the host API the NBD export sits on
// (src/site/host-api.ts), and the status it reports (src/site/status-view.ts). This file only
// wires them together and tells the runtime around it (src/site/roles.ts) when a failover changed
// what this site may do: a following standby was promoted, or the primary this site is was fenced.
//
// Claims: 10-12 (primary: cache on receipt, fan out, wait for every ack, drop, ack the host),
// 11 and 17 (mirror: cache, perform, ack), 4 (reads from the primary's own storage).
import { performance } from 'node:perf_hooks';
import { regionCount } from '../core/regions.js';
import { defaultLimits, type CoreEvent, type Epoch, type Limits, type Recovered } from '../core/types.js';
import { siteBitmapKeys } from '../core/bitmap-keys.js';
import type { LogLevel } from '../core/types.js';
import { chooseCore, type ActingRole, type CoreSite, type SiteCore } from './cores.js';
import { JournalPortImpl, statePort, storagePort, type SiteDevices } from './devices.js';
import { Executor } from './executor.js';
import { HostApi, HostIoError } from './host-api.js';
import type { Logger } from './log.js';
import { freshMeta } from './persist.js';
import { Peers } from './peers.js';
import { RoleChangeError } from './role-change.js';
import { EtcdCoordinator } from './coordinator.js';
import type { SiteContext, SiteRuntime } from './context.js';
import type { FailoverRecord, SiteStatus } from './status.js';
import { siteStatus } from './status-view.js';
import type { ClusterConfig, SiteConfig } from './config.js';

export { openSiteDevices, type SiteDevices } from './devices.js';
export { HostIoError, hostWriteChunkBytesMax } from './host-api.js';
export type { ActingRole } from './cores.js';

/** What the runtime around a Replica is told when a failover changes this site's role. */
export interface ReplicaHooks {
  /** A following standby finished its promotion: it now serves host writes (open the export). */
  onPromoted?(): void;
  /** The primary core saw a newer epoch: this site must stop acting as primary (issue 10 item 4). */
  onFenced?(epoch: Epoch): void;
  /** A demoted primary (acting mirror) adopted the epoch of the site promoted after it: it may follow that site as its standby now. */
  onNewPrimary?(epoch: Epoch): void;
}

export interface ReplicaOptions {
  limits?: Partial<Limits>;
  /** Link timing (tests shorten these). */
  heartbeatIntervalMs?: number;
  linkTimeoutMs?: number;
}

/** What of a site's configuration decides its core. */
function coreSite(config: ClusterConfig, site: SiteConfig, storage: boolean): CoreSite {
  if (site.role === 'witness') throw new Error(`sites.${site.name}.role: a witness runs no replication core`);
  return {
    name: site.name, role: site.role, mirrors: site.mirrors, witnesses: site.witnesses, relayAck: site.relayAck, onMirrorLoss: site.onMirrorLoss,
    failoverTimeoutMs: site.failoverTimeoutMs, storage, failover: Object.values(config.sites).some((x) => x.role === 'standby'),
    upstreams: upstreamsOf(config, site.name),
    arbiter: config.coordinator !== undefined ? 'external' : 'vote',
    ...(site.forward !== undefined ? { forward: site.forward } : {}),
    ...(site.standbyFor !== undefined ? { standbyFor: site.standbyFor } : {}),
    ...(site.standby !== undefined ? { standby: site.standby } : {}),
  };
}

/**
 * The sites the cluster file allows to be `name`'s upstream (issue 17 item 3): a primary or
 * standby that lists it (a promoted standby fans out to its old primary too), a relay that
 * forwards to it.
 */
export function upstreamsOf(config: ClusterConfig, name: string): string[] {
  return Object.values(config.sites).filter((s) =>
    ((s.role === 'primary' || s.role === 'standby') && (s.mirrors.includes(name) || s.standby === name || s.standbyFor === name))
    || (s.role === 'relay' && s.forward === name)).map((s) => s.name);
}

export class Replica {
  readonly acting: ActingRole;
  readonly host: HostApi;
  private readonly sc: SiteCore;
  private readonly exec: Executor;
  private readonly peers: Peers;
  private readonly journalPort: JournalPortImpl;
  private readonly limits: Limits;
  /** etcd as the failover arbiter (issue 20 item 3), on the primary and its standby only. */
  private readonly coord: EtcdCoordinator | undefined;
  private promotedSeen = false;
  private fencedSeen = false;
  private ticker: NodeJS.Timeout | undefined;
  private stopped = false;
  private fatal: Error | undefined;
  private readonly t0 = performance.now();
  private readonly startedAt = Date.now();
  private doneResolve!: () => void;
  private doneReject!: (err: Error) => void;
  readonly done = new Promise<void>((res, rej) => {
    this.doneResolve = res;
    this.doneReject = rej;
  });

  constructor(
    private readonly ctx: SiteContext,
    private readonly dev: SiteDevices,
    opts: ReplicaOptions = {},
    private readonly hooks: ReplicaHooks = {},
  ) {
    const { site, config, metrics } = ctx;
    const written = metrics.tally('write');
    const heartbeatIntervalMs = opts.heartbeatIntervalMs ?? defaultLimits.heartbeatIntervalMs;
    this.limits = { ...defaultLimits, cacheBytesMax: dev.journal.capacityBytes, heartbeatIntervalMs, ...(site.resyncBytesPerSec ? { resyncBytesPerSecMax: site.resyncBytesPerSec } : {}), ...opts.limits };
    if (this.limits.inflightBytesMax > this.limits.cacheBytesMax) this.limits = { ...this.limits, inflightBytesMax: Math.floor(this.limits.cacheBytesMax / 2) };
    this.sc = chooseCore(coreSite(config, site, dev.array !== undefined), dev.initialMeta, { volumeBytes: config.volume.sizeBytes, blockBytes: config.volume.blockSize, limits: this.limits });
    this.acting = this.sc.acting;
    this.journalPort = new JournalPortImpl(dev.journal, () => metrics.ioError(dev.journal.device.name, 'write'));
    this.peers = new Peers(ctx, {
      timing: { ...(opts.heartbeatIntervalMs ? { heartbeatIntervalMs: opts.heartbeatIntervalMs } : {}), ...(opts.linkTimeoutMs ? { linkTimeoutMs: opts.linkTimeoutMs } : {}) },
      heartbeatState: () => this.sc.core.heartbeat(),
      status: () => this.status(),
      feed: (ev) => this.feed(ev),
      nowMs: () => this.nowMs(),
      statusReply: (peer, requestId, entries) => {
        if (peer === this.partner()) this.coord?.standbyReply(requestId, entries);
      },
    });
    this.coord = this.coordinator();
    const hostAck = metrics.hostAckLatencySeconds.seriesOf({});
    this.host = new HostApi({
      name: site.name,
      feed: (ev) => this.feed(ev),
      readable: (offsetBytes, lengthBytes) => this.sc.readable(offsetBytes, lengthBytes),
      hostRoom: () => (this.sc.takesHostWrites ? (this.exec.busy ? 0 : this.sc.hostQueueFree()) : undefined),
      acting: () => this.acting,
      down: () => (this.fatal ? `site ${site.name} stopped: ${this.fatal.message}` : this.stopped ? `site ${site.name} is stopping` : undefined),
      readBlocks: (offsetBytes, lengthBytes) => {
        const array = this.array();
        return array.read(offsetBytes / array.blockSizeBytes, lengthBytes / array.blockSizeBytes);
      },
      nowMs: () => this.nowMs(),
      acked: (ms) => hostAck.observe(ms / 1000),
      wrote: (bytes) => {
        written.writes++;
        written.bytes += bytes;
      },
      flushed: () => metrics.writesTotal.inc({ op: 'flush' }),
    });
    this.exec = new Executor(this.sc.core, {
      journal: this.journalPort,
      storage: dev.array === undefined ? undefined : storagePort(dev.array, (op) => metrics.ioError(dev.array!.name, op)),
      state: statePort(dev.meta, dev.bitmaps, (msg, fields) => this.log.warn(fields, msg)),
      peers: this.peers,
      host: this.host,
    }, {
      nowMs: () => this.nowMs(),
      defer: (fn) => setImmediate(fn),
      log: (level, event, fields) => this.logCore(level, event, fields),
      fatal: (err) => this.die(err),
    });
    this.exec.onIdle = () => {
      this.watchRole();
      this.host.unpark();
    };
    this.done.catch(() => undefined);
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  /** The other site of the primary/standby pair (whom the coordinator's holder asks about etcd). */
  private partner(): string | undefined {
    const { site } = this.ctx;
    return site.role === 'primary' ? site.standby : site.role === 'standby' ? site.standbyFor : undefined;
  }

  /**
   * The etcd session of this life (src/site/coordinator.ts): the acting primary holds the
   * group's key, a following standby campaigns for it. It proves; the core decides.
   */
  private coordinator(): EtcdCoordinator | undefined {
    const { config, site } = this.ctx;
    const c = config.coordinator;
    if (c === undefined || (this.acting !== 'primary' && this.acting !== 'standby')) return undefined;
    return new EtcdCoordinator({
      config: c, endpoints: site.coordinatorEndpoints ?? c.endpoints, cluster: config.cluster, group: this.ctx.group?.name ?? config.volume.name, site: site.name,
      mode: this.acting === 'primary' ? 'holder' : 'candidate', log: this.log,
      hooks: {
        epoch: () => this.sc.core.heartbeat().epoch,
        mayCampaign: () => !this.fatal && !this.stopped && this.sc.phase() === 'following' && this.sc.notPromotable() === undefined,
        authority: (held, reason) => this.feed({ type: 'authority', held, reason }),
        granted: (epoch, revision) => this.feed({ type: 'arbiterGranted', epoch, revision }),
        newerEpoch: (epoch) => this.feed({ type: 'arbiterEpoch', epoch }),
        askStandby: (requestId) => {
          const p = this.partner();
          return p !== undefined && this.peers.requestStatus(p, requestId);
        },
      },
    });
  }

  /** Planned demotion with a coordinator: give the group's key up now, so the standby wins it at once. */
  async releaseCoordinator(): Promise<void> {
    await this.coord?.release();
  }

  private nowMs(): number {
    return performance.now() - this.t0;
  }

  private feed(ev: CoreEvent): void {
    if (!this.fatal) this.exec.feed(ev);
  }

  /** The storage array; the core of a storage-less relay never issues storage actions. */
  private array() {
    if (this.dev.array === undefined) throw new Error(`site ${this.ctx.site.name} has no storage (a cache-only relay); list storage to keep a copy`);
    return this.dev.array;
  }

  get blockSizeBytes(): number {
    return this.array().blockSizeBytes;
  }

  private logCore(level: LogLevel, event: string, fields: Record<string, unknown>): void {
    const out = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, typeof v === 'bigint' ? v.toString() : v]));
    this.log[level]({ event, ...out }, event.replaceAll('_', ' '));
  }

  async start(): Promise<void> {
    const { site, config } = this.ctx;
    const meta = this.dev.initialMeta;
    const peers = this.sc.bitmapPeers;
    if (peers.length > 0 && meta !== freshMeta) {
      // A mirror this primary never kept a bitmap for (added to the cluster file, or its disk
      // replaced and its state files removed) holds none of the volume yet: it owes a full
      // initial sync before it counts as in sync. A primary's first life starts from blank
      // volumes everywhere, so there nothing is owed.
      const all = Array.from({ length: regionCount(config.volume.sizeBytes, this.limits.regionBytes) }, (_, i) => i);
      for (const p of peers) {
        if (await this.dev.bitmaps.has(p)) continue;
        this.log.warn({ event: 'new-mirror-full-sync', peer: p, bytes: config.volume.sizeBytes }, `${p} is new to ${site.name} (no dirty bitmap kept for it): it gets a full initial sync of the volume`);
        await this.dev.bitmaps.set(p, all);
      }
    }
    // Besides the peers' bitmaps: this site's own suspect regions, the primary's lost-journal
    // regions, a standby's copies of its primary's bits (issue 16 items 2-4), and the failover
    // tail a resync dropped (heldKey, src/core/upstream.ts).
    const dirtyRegions = await this.dev.bitmaps.load([...peers, ...this.sc.copyPeers, ...siteBitmapKeys]);
    const cacheEntries = this.journalPort.recovered(this.dev.recoveredEntries);
    if (cacheEntries.length > 0) this.log.info({ event: 'cache-replay', entries: cacheEntries.length }, `replaying ${cacheEntries.length} write(s) left in the cache`);
    const lost = this.journalDamage();
    this.feed({ type: 'start', recovered: { meta, cacheEntries, dirtyRegions, ...(lost ? { lost } : {}) } });
    const array = this.dev.array;
    if (array !== undefined) {
      // Ranges the storage missed while it was down (hal/array.ts), now and whenever it recovers.
      const stale = (): void => {
        const ranges = array.staleRanges();
        if (ranges.length > 0) this.feed({ type: 'storageRecovered', ranges, unknown: false });
      };
      this.dev.watchStale(stale);
      stale();
    }
    await this.peers.listen();
    for (const peer of this.sc.dials) this.peers.dial(peer);
    this.ticker = setInterval(() => this.feed({ type: 'tick' }), this.limits.tickMs);
    await this.coord?.start();
  }

  /** What the cache journal lost to damage, logged with the fix, as the core's Recovered.lost (undefined: nothing). */
  private journalDamage(): Recovered['lost'] {
    const d = this.dev.damage;
    if (d.tornTailEntries > 0) this.log.info({ event: 'cache-torn-tail', entries: d.tornTailEntries, bytes: d.tornTailBytes }, `the cache journal ends in ${d.tornTailEntries} entr${d.tornTailEntries === 1 ? 'y' : 'ies'} cut by a crash mid-append (never acknowledged): dropped`);
    if (d.lost.length === 0 && d.unknownLost === 0) return undefined;
    const ranges = d.lost.map((l) => ({ offsetBytes: l.offsetBytes, lengthBytes: l.lengthBytes }));
    this.log.error(
      { event: 'cache-damage', lost: d.lost.length, unknownLost: d.unknownLost, ranges: ranges.slice(0, 16).map((r) => `${r.offsetBytes}+${r.lengthBytes}`) },
      `the cache journal ${this.ctx.site.cache?.device.text ?? ''} is damaged: ${d.lost.length} acknowledged write(s) lost${d.unknownLost > 0 ? `, ${d.unknownLost} more that cannot be named (this site's whole copy is resynced)` : ''}; every other entry is replayed, and the lost ranges are repaired from this site's peers before its copy counts as whole`,
    );
    return { ranges, unknown: d.unknownLost > 0 };
  }

  /** Tells the runtime when a failover changed what this site may do (promotion, fencing). */
  private watchRole(): void {
    if (this.fatal || this.stopped) return;
    if (!this.promotedSeen && this.sc.phase() === 'primary') {
      this.promotedSeen = true;
      this.failoverHistory(); // fixes the promotion's wall-clock time now
      // The promoted standby fans out to the old primary too: dial it (it listens; if it is
      // alive, our epoch fences it and it comes back as a mirror).
      for (const peer of this.sc.dialOnPromotion) {
        try {
          this.peers.dial(peer);
        } catch (err) {
          this.log.error({ event: 'dial-failed', peer, err: (err as Error).message }, `cannot dial the old primary: ${(err as Error).message}`);
        }
      }
      this.ctx.metrics.failoversTotal.inc({ kind: 'promoted' });
      this.hooks.onPromoted?.();
    }
    const fencedBy = this.sc.fencedBy();
    if (fencedBy !== undefined && !this.fencedSeen) {
      this.fencedSeen = true;
      this.ctx.metrics.failoversTotal.inc({ kind: 'fenced' });
      this.hooks.onFenced?.(fencedBy);
    }
    if (this.acting === 'mirror' && this.dev.initialMeta.acting === 'mirror' && !this.fencedSeen) {
      const epoch = this.sc.status().epoch;
      if (epoch > this.dev.initialMeta.epoch) {
        this.fencedSeen = true; // once
        this.hooks.onNewPrimary?.(epoch);
      }
    }
  }

  /** Planned switchover (`geomirror promote`): a following standby promotes itself now. */
  promote(reason: string, force = false): void {
    const name = this.ctx.site.name;
    const phase = this.sc.phase();
    if (phase === undefined) throw new RoleChangeError(`${name} runs as ${this.acting}; only a following standby can be promoted`);
    if (phase !== 'following') throw new RoleChangeError(`${name} is already ${phase === 'primary' ? 'the primary' : 'being promoted'}`);
    if (this.coord !== undefined) {
      throw new RoleChangeError(`${name} takes over when it wins the coordinator's key ${this.coord.primaryKey} in etcd (the vote and a manual promote are not used with coordinator:): it does so by itself once the primary's lease expires, or at once after geomirror demote --site ${this.partner()} releases it`);
    }
    if (this.fatal) throw new RoleChangeError(`${name} stopped: ${this.fatal.message}`);
    const risk = this.sc.notPromotable();
    if (risk !== undefined && !force) throw new RoleChangeError(`${risk}; to accept that, geomirror promote --site ${name} --force`);
    this.exec.run(this.sc.promote(reason, this.nowMs(), force));
  }

  /** Nothing in flight: every host write acked by every in-sync site and out of the cache. */
  quiescent(): boolean {
    return this.sc.core.quiescent();
  }

  /**
   * Records the role this site acts in from now on: `standby` (fenced, or a demoted primary that
   * learned who was promoted: it follows that site) or `mirror` (demoted, waiting for the next
   * primary). Durable when it resolves; the meta store applies saves in issue order, so none the
   * core issued earlier lands after it.
   */
  async persistActing(acting: 'standby' | 'mirror', epoch: Epoch): Promise<void> {
    const cur = this.sc.status();
    const s = cur.role === 'standby' ? cur.inner : cur;
    const seqReserved = s.role === 'primary' ? s.seqNext : 1n;
    await this.dev.meta.save({ epoch: epoch > s.epoch ? epoch : s.epoch, seqReserved, acting });
  }

  private die(err: Error): void {
    if (this.fatal) return;
    this.fatal = err;
    this.log.error({ event: 'core-assertion', err: err.message, stack: err.stack }, `replication core stopped: ${err.message}`);
    this.host.failAll(new HostIoError('io', `site ${this.ctx.site.name} stopped: ${err.message}`));
    this.doneReject(err);
  }

  // ---- status --------------------------------------------------------------------------------

  status(): SiteStatus {
    const occ = this.dev.journal.occupancy();
    const st = siteStatus({
      config: this.ctx.config, site: this.ctx.site, acting: this.acting, core: this.sc.status(),
      cache: { usedBytes: occ.bytes, capacityBytes: occ.capacityBytes, entries: occ.entries },
      linkOf: (peer) => this.peers.linkOf(peer), fatal: this.fatal !== undefined, nowMs: this.nowMs(),
      failovers: this.failoverHistory(), pid: process.pid, uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000), regionBytes: this.limits.regionBytes,
      devices: [
        ...(this.dev.array?.memberStatus() ?? []).map((m) => ({ device: m.name, health: m.state === 'failed' ? ('failed' as const) : ('ok' as const), ...(m.error !== undefined ? { error: m.error } : {}) })),
        { device: this.dev.journal.device.name, health: 'ok' as const },
      ],
    });
    return this.coord !== undefined ? { ...st, coordinator: this.coord.status() } : st;
  }

  private readonly historyBase: FailoverRecord[] = [];
  private readonly promotionWallTimes = new Map<number, string>();
  private readonly historyExtra: FailoverRecord[] = [];

  /** Failovers this site took part in, oldest first: earlier lives (the history file) and this one. */
  failoverHistory(): FailoverRecord[] {
    const top = this.sc.status();
    const now = this.nowMs();
    // The core keeps monotonic times; each is turned into wall-clock time once, so repeated
    // status answers agree on when a promotion happened.
    const promotions: FailoverRecord[] =
      top.role === 'standby'
        ? top.promotions.map((p) => {
            let at = this.promotionWallTimes.get(p.atMs);
            if (at === undefined) this.promotionWallTimes.set(p.atMs, (at = new Date(Date.now() - (now - p.atMs)).toISOString()));
            return { at, kind: 'promoted' as const, site: this.ctx.site.name, fromEpoch: Number(p.fromEpoch), toEpoch: Number(p.toEpoch), lastSeq: p.seqReceived.toString(), reason: p.reason, ...(p.revision !== undefined ? { revision: p.revision.toString() } : {}) };
          })
        : [];
    return [...this.historyBase, ...promotions, ...this.historyExtra].sort((a, b) => a.at.localeCompare(b.at));
  }

  /** Loaded by the runtime from the history file at start. */
  setHistory(records: FailoverRecord[]): void {
    this.historyBase.splice(0, this.historyBase.length, ...records);
  }

  /** A failover event of this life that the core does not record itself (fenced, demoted). */
  addHistory(r: FailoverRecord): void {
    this.historyExtra.push(r);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    await this.coord?.stop();
    await this.peers.stop(`site ${this.ctx.site.name} is stopping`);
    // Writes still pending stay in the cache journal and are replayed at the next start.
    this.host.failAll(new HostIoError('io', `site ${this.ctx.site.name} is stopping`));
    this.exec.kill();
    await this.dev.array?.flush().catch(() => undefined);
    await this.dev.array?.close().catch(() => undefined);
    await this.dev.journal.close().catch(() => undefined);
    await this.dev.bitmaps.close().catch(() => undefined);
    this.doneResolve();
  }
}

export function runtimeStatus(r: Replica): SiteRuntime {
  return { status: () => r.status(), stop: () => r.stop(), done: r.done };
}

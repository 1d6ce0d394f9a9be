// The executor: runs one pure core role (src/core primary or mirror) against real devices and
// sockets. It feeds the role events (host writes, frames, device completions, ticks) and carries
// out the actions it returns, keeping the contract written at the top of src/core/types.ts:
// actions start in list order; cacheAppend completions arrive in issue order (the journal
// resolves appends in order); cacheDrop is applied before the next action; a send on a down link
// is dropped (the core re-sends after the next peerUp).
//
// Claims: 10-12 (primary: cache on receipt, fan out, wait for every ack, drop, ack the host),
// 11 and 17 (mirror: cache, perform, ack), 4 (reads from the primary's own storage).
import { performance } from 'node:perf_hooks';
import { CacheJournal, CacheEntryFlags, type EntryHandle } from '../../hal/cache.js';
import { openCacheDevice } from '../../hal/cachedev.js';
import { DiskArray } from '../../hal/array.js';
import { openBlockDevice } from '../../hal/devstring.js';
import { SenseError, type BlockDevice } from '../../hal/blockdev.js';
import { Primary, type PrimaryStatus } from '../core/primary.js';
import { Mirror, type MirrorStatus } from '../core/mirror.js';
import { Relay, type RelayStatus } from '../core/relay.js';
import { Standby } from '../core/standby.js';
import { defaultLimits, type CacheEntry, type CoreAction, type CoreEvent, type Epoch, type HostError, type Limits, type Meta, type PeerId, type PeerMsg, type Recovered, type SenseInfo } from '../core/types.js';
import { Dialer, LinkServer, type Link } from '../net/index.js';
import { payloadBytesMax } from '../wire/index.js';
import type { SiteContext, SiteRuntime } from './run.js';
import { fileBitmapStore, fileMetaStore, freshMeta, memoryBitmapStore, memoryMetaStore, type BitmapStore, type MetaStore } from './persist.js';
import { regionCount } from '../core/regions.js';
import { toWire, volumeId } from './peerwire.js';
import type { FailoverRecord, PeerStatus, SiteStatus, SiteState } from './status.js';
import type { Logger } from './log.js';
import { AckTimer } from './ack-timer.js';
import { RoleChangeError } from './role-change.js';
import { decodeOrClose, sendOrClose, statusReplyEntries } from './linkio.js';

/** Largest piece of a host write handed to the core: one WRITE frame's payload. */
export const hostWriteChunkBytesMax = payloadBytesMax;
/** Link send queue: above the core's in-flight bound, so a link never refuses a send the window allowed. */
const linkSendQueueBytesMax = 96 * 1024 * 1024;

interface HostWaiter {
  resolve(): void;
  reject(err: Error): void;
  startedMs: number;
}

/** A host-side failure the NBD layer maps to an errno. */
export class HostIoError extends Error {
  constructor(
    readonly kind: HostError['kind'],
    message: string,
    readonly sense?: SenseInfo,
  ) {
    super(message);
    this.name = 'HostIoError';
  }
}

/** What the runtime around a Replica is told when a failover changes this site's role. */
export interface ReplicaHooks {
  /** A following standby finished its promotion: it now serves host writes (open the export). */
  onPromoted?(): void;
  /** The primary core saw a newer epoch: this site must stop acting as primary (issue 10 item 4). */
  onFenced?(epoch: Epoch): void;
}

/** The core a site runs in this life: its configured role, or the one a failover left it in. */
export type ActingRole = 'primary' | 'mirror' | 'relay' | 'standby';

export interface ReplicaOptions {
  limits?: Partial<Limits>;
  /** Link timing (tests shorten these). */
  heartbeatIntervalMs?: number;
  linkTimeoutMs?: number;
}

/** The opened devices of one site: the cache journal, the storage array, the persistent records. */
export interface SiteDevices {
  journal: CacheJournal;
  recoveredEntries: { handle: EntryHandle; payload: Buffer }[];
  /** Undefined only for a relay without storage (a cache-only relay point, claim 20). */
  array: DiskArray | undefined;
  members: BlockDevice[];
  meta: MetaStore;
  /** The meta record as this life found it: its `acting` decides which core runs (issue 10). */
  initialMeta: Meta;
  bitmaps: BitmapStore;
}

export async function openSiteDevices(ctx: SiteContext, regionCount: number): Promise<SiteDevices> {
  const { site, config } = ctx;
  if (!site.cache) throw new Error(`sites.${site.name}.cache: a ${site.role} needs a cache`);
  const cacheDev = await openCacheDevice(site.cache.device.text, { sizeBytes: site.cache.sizeBytes, create: true });
  const { journal, recovered } = await CacheJournal.open(cacheDev);
  const members: BlockDevice[] = [];
  try {
    for (const d of site.storage) {
      members.push(await openBlockDevice(d.text, { blockSizeBytes: config.volume.blockSize, blockCount: config.volume.blockCount, create: true, baseDir: config.dir }));
    }
  } catch (err) {
    await Promise.all(members.map((m) => m.close().catch(() => undefined)));
    await journal.close().catch(() => undefined);
    throw err;
  }
  const log = ctx.log;
  // No cache here: the core drives the journal itself (it decides when an entry may go).
  const array = members.length === 0 && site.role === 'relay' ? undefined : await DiskArray.open({ name: `${site.name} storage`, members, logger: log });
  const statePath = site.cache.device.kind === 'loopback' ? site.cache.device.path : undefined;
  const meta = statePath ? fileMetaStore(`${statePath}.meta`) : memoryMetaStore();
  const bitmaps = statePath ? fileBitmapStore(`${statePath}.dirty-`, regionCount) : memoryBitmapStore();
  let initialMeta: Meta;
  try {
    initialMeta = await meta.load();
  } catch (err) {
    await Promise.all(members.map((m) => m.close().catch(() => undefined)));
    await journal.close().catch(() => undefined);
    throw err;
  }
  return { journal, recoveredEntries: recovered, array, members, meta, initialMeta, bitmaps };
}

function entryKey(epoch: bigint, seq: bigint): string {
  return `${epoch}:${seq}`;
}

function senseInfo(err: unknown): SenseInfo {
  if (err instanceof SenseError) return { key: err.key, asc: err.asc, ascq: err.ascq, message: err.message };
  return { key: 0x4, asc: 0x44, ascq: 0, message: (err as Error)?.message ?? String(err) };
}

/**
 * One site's replication runtime for the primary or mirror role. Owns the role, the devices, the
 * links and the tick timer; `volume` (primary only) is the host API the NBD export sits on.
 */
export class Replica {
  readonly role: Primary | Mirror | Relay | Standby;
  readonly acting: ActingRole;
  /** The mirrors a Primary core (configured or promoted) fans out to. */
  private readonly primaryMirrors: readonly string[];
  private promotedSeen = false;
  private fencedSeen = false;
  private readonly limits: Limits;
  private readonly handles = new Map<string, EntryHandle>();
  private readonly hostOps = new Map<number, HostWaiter>();
  private hostIdNext = 1;
  private readonly parked: (() => void)[] = [];
  private readonly links = new Map<PeerId, Link>();
  /** Send-to-ack timing and in-flight count per peer, for /metrics only (the core keeps the real window). */
  private readonly ackTimer = new AckTimer();
  private readonly dialers: Dialer[] = [];
  private server: LinkServer | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private readonly queue: CoreEvent[] = [];
  private feeding = false;
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
    private readonly opts: ReplicaOptions = {},
    private readonly hooks: ReplicaHooks = {},
  ) {
    const { site, config } = ctx;
    const heartbeatIntervalMs = opts.heartbeatIntervalMs ?? defaultLimits.heartbeatIntervalMs;
    this.limits = { ...defaultLimits, cacheBytesMax: dev.journal.capacityBytes, heartbeatIntervalMs, ...(site.resyncBytesPerSec ? { resyncBytesPerSecMax: site.resyncBytesPerSec } : {}), ...opts.limits };
    if (this.limits.inflightBytesMax > this.limits.cacheBytesMax) this.limits = { ...this.limits, inflightBytesMax: Math.floor(this.limits.cacheBytesMax / 2) };
    const common = { self: site.name, volumeBytes: config.volume.sizeBytes, blockBytes: config.volume.blockSize, limits: this.limits };
    if (site.role === 'relay' && site.forward === undefined) throw new Error(`sites.${site.name}.forward: a relay needs the next site of its chain`);
    const acting = dev.initialMeta.acting;
    if (site.role === 'relay') {
      this.acting = 'relay';
      this.primaryMirrors = [];
      this.role = new Relay({ ...common, downstream: site.forward!, ackMode: site.relayAck, storage: dev.array !== undefined });
    } else if (site.role === 'mirror' || (acting === 'mirror' && site.role === 'primary')) {
      // A fenced or demoted old primary comes back as a mirror of whoever is primary now. (A site
      // the file now calls a standby follows as a standby even if a failover left it a mirror:
      // that is how roles are swapped back after a failover, see docs/ARCHITECTURE.md.)
      this.acting = 'mirror';
      this.primaryMirrors = [];
      this.role = new Mirror(common);
    } else if (site.role === 'primary') {
      this.acting = 'primary';
      this.primaryMirrors = site.mirrors;
      this.role = new Primary({ ...common, mirrors: site.mirrors, onMirrorLoss: site.onMirrorLoss, ...(site.standby ? { standby: site.standby } : {}) });
    } else if (site.role === 'standby') {
      const old = site.standbyFor!;
      if (acting === 'primary') {
        // Promoted in an earlier life (meta.acting): the primary of the persisted epoch, fanning
        // out to the old primary and the mirrors; the bitmaps hold what each is still owed.
        this.acting = 'primary';
        this.primaryMirrors = [old, ...site.mirrors];
        this.role = new Primary({ ...common, mirrors: this.primaryMirrors, onMirrorLoss: site.onMirrorLoss });
      } else {
        if (!(site.failoverTimeoutMs > heartbeatIntervalMs)) throw new Error(`sites.${site.name}.failover-timeout: ${site.failoverTimeoutMs} ms must exceed the heartbeat interval (${heartbeatIntervalMs} ms), or a live primary looks lost between two heartbeats`);
        this.acting = 'standby';
        this.primaryMirrors = [old, ...site.mirrors];
        this.role = new Standby({
          ...common, primary: old, mirrors: site.mirrors, ...(site.witnesses[0] ? { witness: site.witnesses[0] } : {}),
          failoverTimeoutMs: site.failoverTimeoutMs, queryIntervalMs: Math.max(20, Math.min(500, Math.floor(site.failoverTimeoutMs / 4))), onMirrorLoss: site.onMirrorLoss,
        });
      }
    } else {
      throw new Error(`sites.${site.name}.role: a ${site.role} site runs no replication core`);
    }
    this.done.catch(() => undefined);
  }

  /** The core that takes host writes now, if any: a Primary, or a Standby (busy until promoted). */
  private hostCore(): Primary | Standby | undefined {
    return this.role instanceof Primary || this.role instanceof Standby ? this.role : undefined;
  }

  /** Whether the core knows `peer` (a primary's link to a witness carries heartbeats only). */
  private coreKnows(peer: PeerId): boolean {
    if (this.role instanceof Primary) return this.primaryMirrors.includes(peer);
    if (this.role instanceof Standby) return this.primaryMirrors.includes(peer) || this.ctx.site.witnesses.includes(peer);
    return true;
  }

  /** Heartbeats the core is told about: from the peers it feeds, or from the upstream it follows. */
  private feedsHeartbeat(peer: PeerId): boolean {
    const r = this.role;
    if (r instanceof Primary) return this.primaryMirrors.includes(peer);
    if (r instanceof Relay) return peer === this.ctx.site.forward;
    if (r instanceof Standby) return r.phaseNow() === 'primary' ? this.primaryMirrors.includes(peer) : r.followedUpstream() === peer;
    return r.status().upstream === peer;
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  /** The storage array; the core of a storage-less relay never issues storage actions. */
  private get array(): DiskArray {
    if (this.dev.array === undefined) throw new Error(`site ${this.ctx.site.name} has no storage (a cache-only relay); list storage to keep a copy`);
    return this.dev.array;
  }

  private nowMs(): number {
    return performance.now() - this.t0;
  }

  async start(): Promise<void> {
    const { site, config } = this.ctx;
    const meta = this.dev.initialMeta;
    const peers = this.role instanceof Primary ? this.primaryMirrors : [];
    if (this.role instanceof Primary && meta !== freshMeta) {
      // A mirror this primary never kept a bitmap for is new to it (added to the cluster file,
      // or its disk replaced and its state files removed): it holds none of the volume yet, so
      // it owes a full initial sync before it counts as in sync. A primary's first life starts
      // from blank volumes everywhere, so there nothing is owed.
      const all = Array.from({ length: regionCount(config.volume.sizeBytes, this.limits.regionBytes) }, (_, i) => i);
      for (const p of peers) {
        if (await this.dev.bitmaps.has(p)) continue;
        this.log.warn({ event: 'new-mirror-full-sync', peer: p, bytes: config.volume.sizeBytes }, `${p} is new to ${site.name} (no dirty bitmap kept for it): it gets a full initial sync of the volume`);
        await this.dev.bitmaps.set(p, all);
      }
    }
    const dirtyRegions = await this.dev.bitmaps.load(peers);
    const cacheEntries: CacheEntry[] = [];
    for (const r of this.dev.recoveredEntries) {
      const h = r.handle;
      this.handles.set(entryKey(h.epoch, h.seq), h);
      cacheEntries.push({ epoch: h.epoch, seq: h.seq, offsetBytes: h.offsetBytes, lengthBytes: r.payload.byteLength, fua: (h.flags & CacheEntryFlags.FUA) !== 0, payload: r.payload });
    }
    cacheEntries.sort((a, b) => (a.epoch === b.epoch ? (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0) : a.epoch < b.epoch ? -1 : 1));
    if (cacheEntries.length > 0) this.log.info({ event: 'cache-replay', entries: cacheEntries.length }, `replaying ${cacheEntries.length} write(s) left in the cache`);
    const recovered: Recovered = { meta, cacheEntries, dirtyRegions };
    this.feed({ type: 'start', recovered });

    const timing = {
      ...(this.opts.heartbeatIntervalMs ? { heartbeatIntervalMs: this.opts.heartbeatIntervalMs } : {}),
      ...(this.opts.linkTimeoutMs ? { linkTimeoutMs: this.opts.linkTimeoutMs } : {}),
      sendQueueBytesMax: linkSendQueueBytesMax,
      heartbeatState: () => this.heartbeatState(),
      logger: { info: (o: object, m: string) => this.log.info(o, m), warn: (o: object, m: string) => this.log.warn(o, m) },
    };
    // Every site with a listen address accepts authenticated peers (a mirror's upstream dials in).
    if (site.listen) {
      this.server = new LinkServer({ cluster: config.cluster, site: site.name, secret: this.ctx.secret, security: this.ctx.linkSecurity, peers: config.siteNames.filter((n) => n !== site.name), host: site.listen.host, port: site.listen.port, ...timing });
      this.server.on('link', (link) => this.attach(link));
      this.server.on('refused', (r) => this.ctx.metrics.framesRefusedTotal.inc({ reason: r.code === undefined ? 'transport' : String(r.code) }));
      await this.server.listen();
    }
    // The primary dials its mirrors (and the witnesses, for heartbeats); a relay dials the next
    // site of its chain (`forward:`); a standby dials the mirrors and witnesses it asks when the
    // primary goes silent, and the old primary once it is promoted.
    const dialTargets =
      this.role instanceof Primary ? [...this.primaryMirrors, ...site.witnesses]
      : this.role instanceof Standby ? [...site.mirrors, ...site.witnesses]
      : this.role instanceof Relay && site.forward !== undefined ? [site.forward]
      : [];
    this.timing = timing;
    for (const peer of dialTargets) this.dial(peer);
    this.ticker = setInterval(() => this.feed({ type: 'tick' }), this.limits.tickMs);
  }

  private timing: ConstructorParameters<typeof Dialer>[0] extends infer T ? Partial<T> : never = {};

  private dial(peer: PeerId): void {
    const { site, config } = this.ctx;
    const target = config.sites[peer]!;
    const addr = site.connect[peer] ?? target.listen;
    if (!addr) throw new Error(`sites.${peer}.listen: ${target.role} ${peer} has no listen address for ${site.name} to dial (or give sites.${site.name}.connect.${peer})`);
    const d = new Dialer({ ...this.timing, cluster: config.cluster, site: site.name, secret: this.ctx.secret, security: this.ctx.linkSecurity, peer, host: addr.host, port: addr.port, backoffMsMin: 50, backoffMsMax: 2000 });
    d.on('link', (link) => this.attach(link));
    this.ctx.metrics.setLinkState(peer, 'connecting');
    d.start();
    this.dialers.push(d);
    this.dialed.add(peer);
  }

  private readonly dialed = new Set<PeerId>();

  private heartbeatState(): { epoch: bigint; lastSeq: bigint } {
    const top = this.role.status();
    const s = top.role === 'standby' ? top.inner : top;
    return s.role === 'primary' ? { epoch: s.epoch, lastSeq: s.seqNext - 1n } : { epoch: s.epoch, lastSeq: s.seqAcked };
  }

  private attach(link: Link): void {
    const peer = link.peer;
    if (peer === undefined || this.stopped) {
      link.close();
      return;
    }
    const old = this.links.get(peer);
    if (old && old !== link) old.close(undefined, `replaced by a new connection from ${peer}`);
    this.links.set(peer, link);
    this.ctx.metrics.setLinkState(peer, 'up');
    this.log.info({ event: 'link-up', peer, remote: link.remote }, `link to ${peer} up`);
    if (this.coreKnows(peer)) this.feed({ type: 'peerUp', peer });
    link.on('message', (m) => {
      if (m.type === 'STATUS_REQUEST') {
        // A peer (or `npm run conformance`) asks how this site is doing: answer from status().
        sendOrClose(link, { type: 'STATUS_REPLY', requestId: m.requestId, entries: statusReplyEntries(this.status()) });
        return;
      }
      const msg = decodeOrClose(link, m, peer);
      if (msg === undefined || !this.coreKnows(peer)) return;
      if (msg.type === 'ack') this.ackTimer.acked(peer, msg.seq, this.nowMs(), (ms) => this.ctx.metrics.ackLatencySeconds.observe({ peer }, ms / 1000));
      else if (msg.type === 'write' && this.role instanceof Mirror) {
        this.ctx.metrics.writesTotal.inc({ op: 'replicated' });
        this.ctx.metrics.writeBytesTotal.inc({ op: 'replicated' }, msg.lengthBytes);
      }
      this.feed({ type: 'recv', peer, msg });
    });
    link.on('heartbeat', (hb, rttMs) => {
      if (rttMs !== undefined) this.ctx.metrics.linkRttSeconds.set({ peer }, rttMs / 1000);
      // The link measured RTT; tell the core. A primary shows it per mirror; a mirror or a
      // following standby learns from it when it last heard its upstream (failover detection,
      // claim 13 v: "when did you last hear the primary?").
      if (this.feedsHeartbeat(peer)) this.feed({ type: 'recv', peer, msg: { type: 'heartbeat', epoch: hb.epoch, sentMs: this.nowMs() - (rttMs ?? 0), seqAcked: hb.lastSeq, reply: true } });
    });
    link.once('close', (info) => {
      if (this.links.get(peer) !== link) return;
      this.links.delete(peer);
      this.ackTimer.forget(peer);
      this.ctx.metrics.setLinkState(peer, this.dialed.has(peer) ? 'connecting' : 'down');
      this.log.warn({ event: 'link-down', peer, reason: info.reason }, `link to ${peer} down: ${info.reason}`);
      if (this.coreKnows(peer)) this.feed({ type: 'peerDown', peer });
    });
  }

  /** Feeds one event and executes the actions; events arriving meanwhile queue (no re-entry). */
  private feed(ev: CoreEvent): void {
    if (this.fatal) return;
    this.queue.push(ev);
    if (this.feeding) return;
    this.feeding = true;
    try {
      for (let e = this.queue.shift(); e !== undefined; e = this.queue.shift()) {
        const actions = this.role.step(e, this.nowMs());
        for (const a of actions) this.execute(a);
      }
    } catch (err) {
      this.die(err as Error);
    } finally {
      this.feeding = false;
    }
    this.watchRole();
    this.unpark();
  }

  /** Tells the runtime when a failover changed what this site may do (promotion, fencing). */
  private watchRole(): void {
    if (this.fatal || this.stopped) return;
    const r = this.role;
    if (r instanceof Standby && !this.promotedSeen && r.phaseNow() === 'primary') {
      this.promotedSeen = true;
      this.failoverHistory(); // fixes the promotion's wall-clock time now
      // The promoted standby fans out to the old primary too: dial it (it listens; if it is
      // alive, our epoch fences it and it comes back as a mirror).
      try {
        this.dial(this.ctx.site.standbyFor!);
      } catch (err) {
        this.log.error({ event: 'dial-failed', peer: this.ctx.site.standbyFor, err: (err as Error).message }, `cannot dial the old primary: ${(err as Error).message}`);
      }
      this.ctx.metrics.failoversTotal.inc({ kind: 'promoted' });
      this.hooks.onPromoted?.();
    }
    const fencedBy = r instanceof Primary || r instanceof Standby ? r.fencedBy() : undefined;
    if (fencedBy !== undefined && !this.fencedSeen) {
      this.fencedSeen = true;
      this.ctx.metrics.failoversTotal.inc({ kind: 'fenced' });
      this.hooks.onFenced?.(fencedBy);
    }
  }

  /** Planned switchover (`geomirror promote`): a following standby promotes itself now. */
  promote(reason: string, force = false): void {
    const r = this.role;
    if (!(r instanceof Standby)) throw new RoleChangeError(`${this.ctx.site.name} runs as ${this.acting}; only a following standby can be promoted`);
    if (r.phaseNow() !== 'following') throw new RoleChangeError(`${this.ctx.site.name} is already ${r.phaseNow() === 'primary' ? 'the primary' : 'being promoted'}`);
    if (this.fatal) throw new RoleChangeError(`${this.ctx.site.name} stopped: ${this.fatal.message}`);
    const risk = r.notPromotable();
    if (risk !== undefined && !force) throw new RoleChangeError(`${risk}; to accept that, geomirror promote --site ${this.ctx.site.name} --force`);
    try {
      for (const a of r.promote(reason, this.nowMs(), force)) this.execute(a);
    } catch (err) {
      this.die(err as Error);
    }
    this.watchRole();
  }

  /** Nothing in flight: every host write acked by every in-sync site and out of the cache. */
  quiescent(): boolean {
    return this.role.quiescent();
  }

  /**
   * Records that this site acts as a mirror from now on (fenced or demoted). Durable when it
   * resolves; the meta store applies saves in issue order, so none the core issued earlier
   * lands after it.
   */
  async persistActingMirror(epoch: Epoch): Promise<void> {
    const cur = this.role.status();
    const s = cur.role === 'standby' ? cur.inner : cur;
    const seqReserved = s.role === 'primary' ? s.seqNext : 1n;
    await this.dev.meta.save({ epoch: epoch > s.epoch ? epoch : s.epoch, seqReserved, acting: 'mirror' });
  }

  private die(err: Error): void {
    if (this.fatal) return;
    this.fatal = err;
    this.log.error({ event: 'core-assertion', err: err.message, stack: err.stack }, `replication core stopped: ${err.message}`);
    for (const w of this.hostOps.values()) w.reject(new HostIoError('io', `site ${this.ctx.site.name} stopped: ${err.message}`));
    this.hostOps.clear();
    this.doneReject(err);
  }

  private execute(a: CoreAction): void {
    switch (a.type) {
      case 'cacheAppend': {
        const e = a.entry;
        this.dev.journal.append({ volume: volumeId, epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, flags: e.fua ? CacheEntryFlags.FUA : 0 }, e.payload).then(
          (h) => {
            this.handles.set(entryKey(e.epoch, e.seq), h);
            this.feed({ type: 'cacheAppended', opId: a.opId });
          },
          (err) => this.feed({ type: 'cacheAppended', opId: a.opId, sense: senseInfo(err) }),
        );
        break;
      }
      case 'cacheDrop':
        for (const e of a.entries) {
          const k = entryKey(e.epoch, e.seq);
          const h = this.handles.get(k);
          if (h === undefined) continue; // its append failed: nothing to drop
          this.handles.delete(k);
          this.dev.journal.markDone(h);
        }
        break;
      case 'storageWrite': {
        const lba = a.offsetBytes / this.array.blockSizeBytes;
        this.array.write(lba, a.payload, { fua: a.fua }).then(
          () => this.feed({ type: 'storageWritten', opId: a.opId }),
          (err) => this.feed({ type: 'storageWritten', opId: a.opId, sense: senseInfo(err) }),
        );
        break;
      }
      case 'storageRead': {
        const bs = this.array.blockSizeBytes;
        this.array.read(a.offsetBytes / bs, a.lengthBytes / bs).then(
          (data) => this.feed({ type: 'storageRead', opId: a.opId, data }),
          (err) => this.feed({ type: 'storageRead', opId: a.opId, sense: senseInfo(err) }),
        );
        break;
      }
      case 'storageFlush':
        this.array.flush().then(
          () => this.feed({ type: 'storageFlushed', opId: a.opId }),
          (err) => this.feed({ type: 'storageFlushed', opId: a.opId, sense: senseInfo(err) }),
        );
        break;
      case 'send': {
        const link = this.links.get(a.peer);
        if (link === undefined || link.state !== 'established') break; // contract 4: dropped
        if (a.msg.type === 'ack') {
          // Cumulative acks coalesce: the newest one sent by the end of this event-loop phase
          // covers every earlier one (one frame, not one per completed write). Never reordered:
          // any other message to the peer first flushes the ack it would overtake.
          this.deferAck(a.peer, link, a.msg);
          break;
        }
        this.flushAck(a.peer);
        const frame = toWire(a.msg, this.ctx.site.name);
        if (frame === undefined) break;
        try {
          link.send(frame);
          if (a.msg.type === 'write') this.ackTimer.sent(a.peer, a.msg.seq, a.msg.lengthBytes, this.nowMs());
        } catch (err) {
          link.close(undefined, (err as Error).message);
        }
        break;
      }
      case 'ackHost': {
        const w = this.hostOps.get(a.id);
        if (w === undefined) break;
        this.hostOps.delete(a.id);
        if (a.error === undefined) {
          this.ctx.metrics.hostAckLatencySeconds.observe((this.nowMs() - w.startedMs) / 1000);
          w.resolve();
        } else {
          w.reject(new HostIoError(a.error.kind, a.error.message, a.error.kind === 'io' ? a.error.sense : undefined));
        }
        break;
      }
      case 'bitmapSet':
        this.dev.bitmaps.set(a.peer, a.regions).then(
          () => this.feed({ type: 'bitmapPersisted', opId: a.opId }),
          (err) => this.die(new Error(`dirty bitmap for ${a.peer} could not be persisted: ${(err as Error).message}`)),
        );
        break;
      case 'bitmapClear':
        this.dev.bitmaps.clear(a.peer, a.regions).catch((err) => this.log.warn({ event: 'bitmap-clear-failed', peer: a.peer, err: (err as Error).message }, 'dirty bitmap clear failed (costs only a resync)'));
        break;
      case 'metaPersist':
        this.dev.meta.save(a.meta).then(
          () => this.feed({ type: 'metaPersisted', opId: a.opId }),
          (err) => this.die(new Error(`site meta record could not be persisted: ${(err as Error).message}`)),
        );
        break;
      case 'log': {
        const fields = Object.fromEntries(Object.entries(a.fields).map(([k, v]) => [k, typeof v === 'bigint' ? v.toString() : v]));
        this.log[a.level]({ event: a.event, ...fields }, a.event.replaceAll('_', ' '));
        break;
      }
    }
  }

  private readonly pendingAcks = new Map<PeerId, { link: Link; msg: Extract<PeerMsg, { type: 'ack' }> }>();
  private acksScheduled = false;

  private deferAck(peer: PeerId, link: Link, msg: Extract<PeerMsg, { type: 'ack' }>): void {
    this.pendingAcks.set(peer, { link, msg });
    if (this.acksScheduled) return;
    this.acksScheduled = true;
    setImmediate(() => {
      this.acksScheduled = false;
      for (const peer of [...this.pendingAcks.keys()]) this.flushAck(peer);
    });
  }

  private flushAck(peer: PeerId): void {
    const p = this.pendingAcks.get(peer);
    if (p === undefined) return;
    this.pendingAcks.delete(peer);
    if (p.link.state !== 'established' || this.links.get(peer) !== p.link) return; // the link went: contract 4
    try {
      p.link.send(toWire(p.msg, this.ctx.site.name)!);
    } catch (err) {
      p.link.close(undefined, (err as Error).message);
    }
  }

  // ---- host API (primary) --------------------------------------------------------------------

  /** Writes `data` at `offsetBytes` through replication; resolves when every in-sync site executed it. */
  async write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let at = 0; at < data.byteLength; at += hostWriteChunkBytesMax) {
      const piece = data.subarray(at, Math.min(data.byteLength, at + hostWriteChunkBytesMax));
      parts.push(this.submit((id) => ({ type: 'hostWrite', id, offsetBytes: offsetBytes + at, lengthBytes: piece.byteLength, fua, payload: piece })));
    }
    await Promise.all(parts);
    this.ctx.metrics.writesTotal.inc({ op: 'write' });
    this.ctx.metrics.writeBytesTotal.inc({ op: 'write' }, data.byteLength);
  }

  /** Barrier: every write acked before this call is durable on every in-sync site's storage. */
  async flush(): Promise<void> {
    await this.submit((id) => ({ type: 'hostFlush', id }));
    this.ctx.metrics.writesTotal.inc({ op: 'flush' });
  }

  /** Reads come from this site's own storage (claim 4). */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const bs = this.array.blockSizeBytes;
    return this.array.read(offsetBytes / bs, lengthBytes / bs);
  }

  get blockSizeBytes(): number {
    return this.array.blockSizeBytes;
  }

  /** Host operations wait here (not in the core) while the core's host queue is full: backpressure. */
  private submit(make: (id: number) => CoreEvent): Promise<void> {
    if (this.fatal) return Promise.reject(new HostIoError('io', `site ${this.ctx.site.name} stopped: ${this.fatal.message}`));
    if (this.stopped) return Promise.reject(new HostIoError('io', `site ${this.ctx.site.name} is stopping`));
    const core = this.hostCore();
    if (core === undefined) return Promise.reject(new HostIoError('fenced', `site ${this.ctx.site.name} runs as a ${this.acting}; host writes go to the primary`));
    return new Promise<void>((resolve, reject) => {
      const go = () => {
        const id = this.hostIdNext++;
        this.hostOps.set(id, {
          resolve,
          reject: (err) => {
            if (err instanceof HostIoError && err.kind === 'busy') this.parked.push(go); // the core said "queue full": wait for room
            else reject(err);
          },
          startedMs: this.nowMs(),
        });
        this.feed(make(id));
      };
      if (this.parked.length > 0 || core.hostQueueFree() <= 0) this.parked.push(go);
      else go();
    });
  }

  private unpark(): void {
    const core = this.hostCore();
    if (core === undefined || this.feeding) return;
    while (this.parked.length > 0 && core.hostQueueFree() > 0 && !this.fatal) this.parked.shift()!();
  }

  // ---- status --------------------------------------------------------------------------------

  status(): SiteStatus {
    const { config, site } = this.ctx;
    const top = this.role.status();
    const s = top.role === 'standby' ? top.inner : top;
    const occ = this.dev.journal.occupancy();
    const m = this.ctx.metrics;
    m.cacheUsedBytes.set(occ.bytes);
    m.cacheEntries.set(occ.entries);
    m.epoch.set(Number(s.epoch));
    let state: SiteState = 'in-sync';
    let peers: PeerStatus[] = [];
    let lastSeqAcked: bigint;
    let resyncPercent: number | undefined;
    if (s.role === 'primary') {
      const ps = s as PrimaryStatus;
      lastSeqAcked = ps.mirrors.reduce((min, x) => (x.sync === 'inSync' && x.seqAcked < min ? x.seqAcked : min), ps.seqNext - 1n);
      peers = ps.mirrors.map((x) => {
        const sync = x.sync === 'inSync' ? 'in-sync' : x.sync;
        const inflight = this.ackTimer.inflight(x.peer);
        m.inflightWrites.set({ peer: x.peer }, inflight.writes);
        m.inflightBytes.set({ peer: x.peer }, inflight.bytes);
        // What a resync still has to copy: every dirty region of a mirror not in sync.
        m.resyncRemainingBytes.set({ peer: x.peer }, x.sync === 'inSync' ? 0 : x.dirtyRegions * this.limits.regionBytes);
        m.setSyncState(x.peer, sync);
        m.resyncProgressRatio.set({ peer: x.peer }, x.sync === 'inSync' ? 1 : (x.resyncPercent ?? 0) / 100);
        return {
          name: x.peer,
          relation: 'mirror' as const,
          link: x.link === 'down' ? ('connecting' as const) : ('up' as const),
          ...(x.rttMs !== undefined ? { rttMs: x.rttMs } : {}),
          sync,
          ...(x.resyncPercent !== undefined ? { resyncPercent: x.resyncPercent } : {}),
          lastSeqAcked: x.seqAcked.toString(),
        };
      });
      if (ps.mirrors.some((x) => x.sync === 'resyncing')) {
        state = 'resyncing';
        const r = ps.mirrors.filter((x) => x.sync === 'resyncing').map((x) => x.resyncPercent ?? 0);
        resyncPercent = Math.min(...r);
      } else if (ps.mirrors.some((x) => x.sync === 'degraded')) state = 'degraded';
      m.inflightWrites.set({ peer: 'all' }, ps.writesInflight);
      m.inflightBytes.set({ peer: 'all' }, ps.bytesInflight);
    } else if (s.role === 'relay') {
      lastSeqAcked = s.seqAcked;
      peers = this.relayPeers(s);
    } else {
      const ms = s as MirrorStatus;
      lastSeqAcked = ms.seqAcked;
      const up = ms.upstream ?? (top.role === 'standby' ? this.ctx.site.standbyFor : undefined);
      if (up) {
        const link = this.links.get(up);
        peers = [{ name: up, relation: top.role === 'standby' ? 'primary' : 'upstream', link: link ? 'up' : 'down', ...(link?.rttMs !== undefined ? { rttMs: link.rttMs } : {}) }];
      }
    }
    m.lastSeqAcked.set(Number(lastSeqAcked));
    if (this.fatal) state = 'stopping';
    // The role this site acts as now: a failover can make a standby the primary and an old
    // primary a mirror (issue 10 item 6); `configuredRole` keeps what the cluster file says.
    const role = top.role === 'standby' ? (top.phase === 'primary' ? 'primary' : 'standby') : this.acting;
    for (const r of ['primary', 'mirror', 'relay', 'standby'] as const) m.actingRole.set({ acting: r }, r === role ? 1 : 0);
    const fencedBy = s.role === 'primary' ? s.fencedBy : undefined;
    const failovers = this.failoverHistory();
    for (const f of failovers) {
      m.failoverLastTimestampSeconds.set({ kind: f.kind }, Date.parse(f.at) / 1000);
      m.failoverLastSeq.set({ kind: f.kind }, Number(f.lastSeq));
    }
    return {
      cluster: config.cluster,
      site: site.name,
      role,
      ...(role !== site.role ? { configuredRole: site.role } : {}),
      ...(fencedBy !== undefined ? { fencedBy: Number(fencedBy) } : {}),
      ...(top.role === 'standby'
        ? {
            standby: {
              phase: top.phase,
              primary: site.standbyFor!,
              failoverTimeoutMs: site.failoverTimeoutMs,
              inSync: top.inSyncConfirmed,
              ...(top.lastHeardPrimaryMs !== undefined ? { lastHeardPrimaryMsAgo: Math.round(this.nowMs() - top.lastHeardPrimaryMs) } : {}),
            },
          }
        : {}),
      failovers,
      volume: config.volume.name,
      epoch: Number(s.epoch),
      lastSeqAcked: lastSeqAcked.toString(),
      state,
      ...(resyncPercent !== undefined ? { resyncPercent } : {}),
      cache: { usedBytes: occ.bytes, capacityBytes: occ.capacityBytes, entries: occ.entries },
      peers,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
    };
  }

  /** Per hop: the upstream, and the downstream with what this relay holds for it (issue 7 item 4). */
  private relayPeers(rs: RelayStatus): PeerStatus[] {
    const m = this.ctx.metrics;
    const down = rs.downstream;
    m.inflightWrites.set({ peer: down }, rs.lagWrites);
    m.inflightBytes.set({ peer: down }, rs.lagBytes);
    m.relayLagSeconds?.set({ peer: down }, rs.lagMs / 1000);
    m.relayOldestUnackedSeq?.set({ peer: down }, rs.oldestUnackedSeq === undefined ? 0 : Number(rs.oldestUnackedSeq));
    const linkOf = (peer: string) => {
      const l = this.links.get(peer);
      return { link: l ? ('up' as const) : ('down' as const), ...(l?.rttMs !== undefined ? { rttMs: l.rttMs } : {}) };
    };
    const peers: PeerStatus[] = [];
    if (rs.upstream) peers.push({ name: rs.upstream, relation: 'upstream', ...linkOf(rs.upstream), lastSeqAcked: rs.seqAcked.toString() });
    peers.push({
      name: down, relation: 'downstream', ...linkOf(down), lastSeqAcked: rs.seqAckedDownstream.toString(),
      inflightWrites: rs.lagWrites,
      relay: {
        ackMode: rs.ackMode, cachedEntries: rs.cacheEntries, cachedBytes: rs.cacheBytes,
        ...(rs.oldestUnackedSeq !== undefined ? { oldestUnackedSeq: rs.oldestUnackedSeq.toString() } : {}),
        lagWrites: rs.lagWrites, lagBytes: rs.lagBytes, lagMs: Math.round(rs.lagMs),
      },
    });
    return peers;
  }

  private readonly historyBase: FailoverRecord[] = [];
  private readonly promotionWallTimes = new Map<number, string>();
  private readonly historyExtra: FailoverRecord[] = [];

  /** Failovers this site took part in, oldest first: earlier lives (the history file) and this one. */
  failoverHistory(): FailoverRecord[] {
    const top = this.role.status();
    const now = this.nowMs();
    // The core keeps monotonic times; each is turned into wall-clock time once, so repeated
    // status answers agree on when a promotion happened.
    const promotions: FailoverRecord[] =
      top.role === 'standby'
        ? top.promotions.map((p) => {
            let at = this.promotionWallTimes.get(p.atMs);
            if (at === undefined) this.promotionWallTimes.set(p.atMs, (at = new Date(Date.now() - (now - p.atMs)).toISOString()));
            return { at, kind: 'promoted' as const, site: this.ctx.site.name, fromEpoch: Number(p.fromEpoch), toEpoch: Number(p.toEpoch), lastSeq: p.seqReceived.toString(), reason: p.reason };
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
    for (const d of this.dialers) d.stop();
    for (const l of this.links.values()) l.close(undefined, `site ${this.ctx.site.name} is stopping`);
    await this.server?.close();
    // Writes still pending stay in the cache journal and are replayed at the next start.
    for (const w of this.hostOps.values()) w.reject(new HostIoError('io', `site ${this.ctx.site.name} is stopping`));
    this.hostOps.clear();
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

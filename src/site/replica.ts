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
import { defaultLimits, type CacheEntry, type CoreAction, type CoreEvent, type HostError, type Limits, type PeerId, type PeerMsg, type Recovered, type SenseInfo } from '../core/types.js';
import { Dialer, LinkServer, type Link } from '../net/index.js';
import { payloadBytesMax } from '../wire/index.js';
import type { SiteContext, SiteRuntime } from './run.js';
import { fileBitmapStore, fileMetaStore, memoryBitmapStore, memoryMetaStore, type BitmapStore, type MetaStore } from './persist.js';
import { fromWire, toWire, volumeId } from './peerwire.js';
import type { PeerStatus, SiteStatus, SiteState } from './status.js';
import type { Logger } from './log.js';
import { AckTimer } from './ack-timer.js';

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
  return { journal, recoveredEntries: recovered, array, members, meta, bitmaps };
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
  readonly role: Primary | Mirror | Relay;
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
  ) {
    const { site, config } = ctx;
    this.limits = { ...defaultLimits, cacheBytesMax: dev.journal.capacityBytes, ...opts.limits };
    if (this.limits.inflightBytesMax > this.limits.cacheBytesMax) this.limits = { ...this.limits, inflightBytesMax: Math.floor(this.limits.cacheBytesMax / 2) };
    const common = { self: site.name, volumeBytes: config.volume.sizeBytes, blockBytes: config.volume.blockSize, limits: this.limits };
    if (site.role === 'relay' && site.forward === undefined) throw new Error(`sites.${site.name}.forward: a relay needs the next site of its chain`);
    this.role =
      site.role === 'primary' ? new Primary({ ...common, mirrors: site.mirrors, onMirrorLoss: site.onMirrorLoss })
      : site.role === 'relay' ? new Relay({ ...common, downstream: site.forward!, ackMode: site.relayAck, storage: dev.array !== undefined })
      : new Mirror(common);
    this.done.catch(() => undefined);
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
    const meta = await this.dev.meta.load();
    const peers = this.role instanceof Primary ? site.mirrors : [];
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
      this.server = new LinkServer({ cluster: config.cluster, site: site.name, secret: this.ctx.secret, peers: config.siteNames.filter((n) => n !== site.name), host: site.listen.host, port: site.listen.port, ...timing });
      this.server.on('link', (link) => this.attach(link));
      this.server.on('refused', (r) => this.ctx.metrics.framesRefusedTotal.inc({ reason: r.code === undefined ? 'transport' : String(r.code) }));
      await this.server.listen();
    }
    // The primary dials its mirrors; a relay dials the next site of its chain (`forward:`).
    const dialTargets = this.role instanceof Primary ? site.mirrors : this.role instanceof Relay && site.forward !== undefined ? [site.forward] : [];
    {
      for (const peer of dialTargets) {
        const target = config.sites[peer]!;
        if (!target.listen) throw new Error(`sites.${peer}.listen: mirror ${peer} has no listen address for ${site.name} to dial`);
        const d = new Dialer({ cluster: config.cluster, site: site.name, secret: this.ctx.secret, peer, host: target.listen.host, port: target.listen.port, backoffMsMin: 50, backoffMsMax: 2000, ...timing });
        d.on('link', (link) => this.attach(link));
        this.ctx.metrics.setLinkState(peer, 'connecting');
        d.start();
        this.dialers.push(d);
      }
    }
    this.ticker = setInterval(() => this.feed({ type: 'tick' }), this.limits.tickMs);
  }

  private heartbeatState(): { epoch: bigint; lastSeq: bigint } {
    const s = this.role.status();
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
    this.feed({ type: 'peerUp', peer });
    link.on('message', (m) => {
      if (m.type === 'STATUS_REQUEST') {
        // A peer (or `npm run conformance`) asks how this site is doing: answer from status().
        const st = this.status();
        const entries: [string, string][] = [
          ['site', st.site], ['role', st.role], ['epoch', String(st.epoch)], ['lastSeqAcked', st.lastSeqAcked],
          ['state', st.state], ['cacheEntries', String(st.cache.entries)],
        ];
        try {
          link.send({ type: 'STATUS_REPLY', requestId: m.requestId, entries });
        } catch (err) {
          link.close(undefined, (err as Error).message);
        }
        return;
      }
      let msg;
      try {
        msg = fromWire(m, peer);
      } catch (err) {
        link.close(undefined, (err as Error).message);
        return;
      }
      if (msg === undefined) return;
      if (msg.type === 'ack') this.ackTimer.acked(peer, msg.seq, this.nowMs(), (ms) => this.ctx.metrics.ackLatencySeconds.observe({ peer }, ms / 1000));
      else if (msg.type === 'write' && this.role instanceof Mirror) {
        this.ctx.metrics.writesTotal.inc({ op: 'replicated' });
        this.ctx.metrics.writeBytesTotal.inc({ op: 'replicated' }, msg.lengthBytes);
      }
      this.feed({ type: 'recv', peer, msg });
    });
    link.on('heartbeat', (hb, rttMs) => {
      if (rttMs !== undefined) this.ctx.metrics.linkRttSeconds.set({ peer }, rttMs / 1000);
      // The link measured RTT; tell the primary's core (status shows it per mirror). A mirror's
      // core learns liveness from the frames themselves.
      if (this.role instanceof Primary || (this.role instanceof Relay && peer === this.ctx.site.forward)) this.feed({ type: 'recv', peer, msg: { type: 'heartbeat', epoch: hb.epoch, sentMs: this.nowMs() - (rttMs ?? 0), seqAcked: hb.lastSeq, reply: true } });
    });
    link.once('close', (info) => {
      if (this.links.get(peer) !== link) return;
      this.links.delete(peer);
      this.ackTimer.forget(peer);
      this.ctx.metrics.setLinkState(peer, this.role instanceof Primary || peer === this.ctx.site.forward ? 'connecting' : 'down');
      this.log.warn({ event: 'link-down', peer, reason: info.reason }, `link to ${peer} down: ${info.reason}`);
      this.feed({ type: 'peerDown', peer });
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
    this.unpark();
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
    const primary = this.role as Primary;
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
      if (this.parked.length > 0 || primary.hostQueueFree() <= 0) this.parked.push(go);
      else go();
    });
  }

  private unpark(): void {
    if (!(this.role instanceof Primary) || this.feeding) return;
    while (this.parked.length > 0 && this.role.hostQueueFree() > 0 && !this.fatal) this.parked.shift()!();
  }

  // ---- status --------------------------------------------------------------------------------

  status(): SiteStatus {
    const { config, site } = this.ctx;
    const s = this.role.status();
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
        if (x.resyncPercent !== undefined) m.resyncProgressRatio.set({ peer: x.peer }, x.resyncPercent / 100);
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
      if (ms.upstream) {
        const link = this.links.get(ms.upstream);
        peers = [{ name: ms.upstream, relation: 'upstream', link: link ? 'up' : 'down', ...(link?.rttMs !== undefined ? { rttMs: link.rttMs } : {}) }];
      }
    }
    m.lastSeqAcked.set(Number(lastSeqAcked));
    if (this.fatal) state = 'stopping';
    return {
      cluster: config.cluster,
      site: site.name,
      role: site.role,
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

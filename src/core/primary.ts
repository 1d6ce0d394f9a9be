// The primary's mirror controller (claims 10-12, 4): pure state machine, events in, actions out.
//
// Write path, as encoded in the actions it returns:
//   hostWrite -> (window slot) seq assigned -> cacheAppend (12 v)
//   cacheAppended -> send `write` to every in-sync mirror at once (10 ii) + storageWrite locally (4)
//   each mirror's cumulative `ack` (received AND executed: 10 iii, 11) + local storageWritten
//     -> ackHost (10 iv)
//   the entry leaves the cache (12 vi) once it is acked everywhere AND the local storage write is
//   durable (FUA or a later storageFlush). Dropping it before the local flush would let a power cut
//   lose an acked write from the primary's own storage while the mirrors hold it; keeping it until
//   then lets the battery-backed cache cover the gap, and replay repairs the storage.
//
// Mirror loss: `block` keeps host acks waiting for the mirror; `degrade` (default) marks the
// mirror degraded after Limits.mirrorLossGraceMs, records the regions it misses in a persistent
// bitmap (bitmapSet completes before the host ack that depends on it) and resyncs them in the
// background when the mirror returns, then puts it back in sync.
//
// Resync correctness: a resync read of region R is ordered in the same overlap queue as local
// writes, so it sees exactly the writes queued before it. A write that lands in R while R is being
// resynced re-dirties R ("touched"), and R is sent again. While a mirror is not in sync it gets
// no writes at all, only resync data, so the two streams never interleave on its link.

import { OverlapQueue } from './overlap.js';
import { regionCount, regionRange, regionsOf } from './regions.js';
import {
  assert,
  type CacheEntry,
  type CoreAction,
  type CoreEvent,
  type Epoch,
  type HostError,
  type HostOpId,
  type Limits,
  type LogLevel,
  type MirrorLossPolicy,
  type OpId,
  type PeerId,
  type PeerMsg,
  type Recovered,
  type Role,
  type SenseInfo,
  type Seq,
} from './types.js';
import { periodicFlushDue } from './flush.js';

export interface PrimaryConfig {
  readonly self: PeerId;
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly mirrors: readonly PeerId[];
  readonly onMirrorLoss: MirrorLossPolicy;
  readonly limits: Limits;
  /**
   * The standby of this primary (issue 10), if any: never degraded for being unreachable, even
   * under `degrade`, so every host-acked write is on it and its promotion loses none (claim 13).
   * A storage failure on it still degrades it (it cannot hold the write).
   */
  readonly standby?: PeerId;
}

interface Entry {
  readonly epoch: Epoch;
  readonly seq: Seq;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  readonly payload: Uint8Array;
  readonly hostId: HostOpId | undefined;
  cacheOp: OpId | undefined;
  cached: boolean;
  inCache: boolean;
  stored: boolean;
  durable: boolean;
  sense: SenseInfo | undefined;
  /** In-sync mirrors this write was (or will be, after a reconnect) sent to and not yet acked by. */
  readonly waitingMirrors: Set<PeerId>;
  /** bitmapSet ops that must be durable before the host ack (degraded mirrors miss this write). */
  readonly bitmapWaits: Set<OpId>;
  done: boolean;
}

interface ResyncRead {
  readonly mirror: PeerId;
  readonly resyncId: bigint;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

type LocalOp = { kind: 'write'; entry: Entry } | { kind: 'read'; read: ResyncRead };

interface HostFlush {
  readonly id: HostOpId;
  readonly upTo: Seq;
  stage: 'waitWrites' | 'flushing';
  readonly flushId: bigint;
  localDone: boolean;
  readonly waitingMirrors: Set<PeerId>;
  sense: SenseInfo | undefined;
}

type HostOp =
  | { kind: 'write'; id: HostOpId; offsetBytes: number; lengthBytes: number; fua: boolean; payload: Uint8Array }
  | { kind: 'flush'; id: HostOpId };

export type MirrorSync = 'inSync' | 'degraded' | 'resyncing';
export type LinkState = 'down' | 'joining' | 'ready';

interface MirrorState {
  readonly peer: PeerId;
  link: LinkState;
  sync: MirrorSync;
  downSinceMs: number;
  degradedAtMs: number;
  /** region -> pending bitmapSet op, or 'set' once durable. */
  readonly dirty: Map<number, OpId | 'set'>;
  /** resyncId -> region being read / sent / awaiting its ack. */
  readonly inflight: Map<bigint, { region: number; touched: boolean }>;
  tokensBytes: number;
  lastRefillMs: number;
  regionsDone: number;
  /** Last 10% step of resync progress that was logged. */
  progressDecile: number;
  seqAcked: Seq;
  rttMs: number | undefined;
  lastHeardMs: number | undefined;
}

export interface PrimaryStatus {
  readonly role: 'primary';
  readonly epoch: Epoch;
  readonly fenced: boolean;
  /** The newer epoch that fenced this primary, if one did. */
  readonly fencedBy: Epoch | undefined;
  readonly seqNext: Seq;
  readonly writesInflight: number;
  readonly bytesInflight: number;
  readonly hostQueued: number;
  readonly cacheEntries: number;
  readonly cacheBytes: number;
  readonly mirrors: readonly {
    peer: PeerId;
    link: LinkState;
    sync: MirrorSync;
    seqAcked: Seq;
    dirtyRegions: number;
    resyncPercent: number | undefined;
    rttMs: number | undefined;
  }[];
}

export class Primary implements Role {
  private readonly lim: Limits;
  private out: CoreAction[] = [];
  private nowMs = 0;
  private started = false;
  private epoch: Epoch = 0n;
  private fenced: Epoch | undefined;
  private seqNext: Seq = 0n;
  private seqReserved: Seq = 0n;
  private reserveOp: OpId | undefined;
  private opNext: OpId = 1;
  private flushIdNext = 1n;
  private resyncIdNext = 1n;

  /** Every write in the cache, in seq order (the journal's view). */
  private entries: Entry[] = [];
  private readonly byCacheOp = new Map<OpId, Entry>();
  private readonly localOps = new Map<OpId, LocalOp>();
  private readonly overlap: OverlapQueue<LocalOp>;
  private writesInflight = 0;
  private bytesInflight = 0;
  private cacheBytes = 0;
  private readonly hostQueue: HostOp[] = [];
  private readonly flushes: HostFlush[] = [];
  private unflushed: Entry[] = [];
  private localFlush: { opId: OpId; covers: Entry[]; waiters: HostFlush[] } | undefined;
  private flushWaiters: HostFlush[] = [];
  private lastFlushMs = 0;
  private lastHeartbeatMs = 0;
  private readonly mirrors = new Map<PeerId, MirrorState>();
  private readonly bitmapWaiters = new Map<OpId, Entry[]>();

  constructor(private readonly cfg: PrimaryConfig) {
    this.lim = cfg.limits;
    assert(cfg.volumeBytes > 0 && cfg.volumeBytes % cfg.blockBytes === 0, `volume size ${cfg.volumeBytes} is not a whole number of ${cfg.blockBytes}-byte blocks`);
    assert(this.lim.inflightBytesMax <= this.lim.cacheBytesMax, 'inflightBytesMax must not exceed cacheBytesMax');
    assert(!cfg.mirrors.includes(cfg.self), `primary ${cfg.self} lists itself as a mirror`);
    // Local ops: every in-flight write plus replayed entries plus resync reads.
    this.overlap = new OverlapQueue(1 << 20);
    for (const peer of cfg.mirrors) {
      this.mirrors.set(peer, {
        peer, link: 'down', sync: 'inSync', downSinceMs: 0, degradedAtMs: 0, dirty: new Map(), inflight: new Map(),
        tokensBytes: 0, lastRefillMs: 0, regionsDone: 0, progressDecile: 0, seqAcked: 0n, rttMs: undefined, lastHeardMs: undefined,
      });
    }
  }

  /** Host writes the site may submit now without getting `busy` (for pacing the NBD reader). */
  hostQueueFree(): number {
    return this.lim.hostQueueWritesMax - this.hostQueue.length;
  }

  step(ev: CoreEvent, nowMs: number): CoreAction[] {
    assert(nowMs >= this.nowMs, `time went backwards: ${nowMs} < ${this.nowMs}`);
    this.nowMs = nowMs;
    this.out = [];
    assert(this.started || ev.type === 'start', `primary ${this.cfg.self}: event ${ev.type} before start`);
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': this.onTick(); break;
      case 'hostWrite': this.onHostWrite(ev); break;
      case 'hostFlush': this.onHostFlush(ev.id); break;
      case 'peerUp': this.onPeerUp(ev.peer); break;
      case 'peerDown': this.onPeerDown(ev.peer); break;
      case 'recv': this.onRecv(ev.peer, ev.msg); break;
      case 'cacheAppended': this.onCacheAppended(ev.opId, ev.sense); break;
      case 'storageWritten': this.onStorageDone(ev.opId, undefined, ev.sense); break;
      case 'storageRead': this.onStorageDone(ev.opId, ev.data, ev.sense); break;
      case 'storageFlushed': this.onStorageFlushed(ev.opId, ev.sense); break;
      case 'bitmapPersisted': this.onBitmapPersisted(ev.opId); break;
      case 'metaPersisted': this.onMetaPersisted(ev.opId); break;
    }
    this.afterStep();
    const out = this.out;
    this.out = [];
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Start and replay

  private onStart(rec: Recovered): void {
    assert(!this.started, 'primary started twice (a restart is a new instance)');
    this.started = true;
    this.epoch = rec.meta.epoch;
    this.seqReserved = rec.meta.seqReserved;
    this.seqNext = rec.meta.seqReserved;
    this.lastFlushMs = this.nowMs;
    for (const [peer, regions] of rec.dirtyRegions) {
      const m = this.mirrors.get(peer);
      if (m === undefined) {
        this.log('warn', 'bitmap_unknown_mirror', { peer, regions: regions.length, fix: 'the mirror was removed from the cluster file; its bitmap is ignored' });
        continue;
      }
      for (const r of regions) m.dirty.set(r, 'set');
      if (m.dirty.size > 0) m.sync = 'degraded';
    }
    for (const m of this.mirrors.values()) m.downSinceMs = this.nowMs;
    for (const ce of rec.cacheEntries) this.replay(ce);
    this.log('info', 'primary_start', {
      epoch: this.epoch, seqNext: this.seqNext, replayed: rec.cacheEntries.length,
      degraded: [...this.mirrors.values()].filter((m) => m.sync !== 'inSync').map((m) => m.peer),
    });
  }

  /** A cache entry from before the restart: re-send to mirrors and re-perform locally (issue 5 item 5). */
  private replay(ce: CacheEntry): void {
    assert(ce.epoch <= this.epoch, `cache holds epoch ${ce.epoch} newer than this site's epoch ${this.epoch}`);
    assert(ce.epoch < this.epoch || ce.seq < this.seqReserved, `cache seq ${ce.seq} is not below the persisted reservation ${this.seqReserved}`);
    const e = this.newEntry(ce.epoch, ce.seq, ce.offsetBytes, ce.lengthBytes, ce.fua, ce.payload, undefined);
    e.cached = true;
    e.inCache = true;
    if (ce.epoch < this.epoch) {
      // A write of an older epoch: its seq means nothing to mirrors now. Re-perform it locally
      // and dirty it for every mirror, which is always safe.
      for (const m of this.mirrors.values()) {
        if (m.sync === 'inSync') m.sync = 'degraded';
        this.dirtyFor(m, e);
      }
      this.queueLocalWrite(e);
      return;
    }
    this.fanOut(e);
  }

  // -------------------------------------------------------------------------------------------
  // Host operations

  private onHostWrite(w: Extract<CoreEvent, { type: 'hostWrite' }>): void {
    const bad = this.validateWrite(w.offsetBytes, w.lengthBytes, w.payload);
    if (bad !== undefined) {
      this.ackHost(w.id, { kind: 'io', message: bad, sense: { key: 0x5, asc: 0x21, ascq: 0, message: bad } });
      return;
    }
    if (this.fenced !== undefined) {
      this.ackHost(w.id, this.fencedError());
      return;
    }
    if (this.hostQueue.length >= this.lim.hostQueueWritesMax) {
      this.ackHost(w.id, { kind: 'busy', message: `host queue full (${this.lim.hostQueueWritesMax} operations waiting for mirror acks); retry after an ack` });
      return;
    }
    this.hostQueue.push({ kind: 'write', id: w.id, offsetBytes: w.offsetBytes, lengthBytes: w.lengthBytes, fua: w.fua, payload: w.payload });
  }

  private validateWrite(offsetBytes: number, lengthBytes: number, payload: Uint8Array): string | undefined {
    const b = this.cfg.blockBytes;
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes % b !== 0) return `write offset ${offsetBytes} is not a multiple of the ${b}-byte block size`;
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes <= 0 || lengthBytes % b !== 0) return `write length ${lengthBytes} is not a positive multiple of the ${b}-byte block size`;
    if (payload.byteLength !== lengthBytes) return `write payload is ${payload.byteLength} bytes but the request says ${lengthBytes}`;
    if (offsetBytes + lengthBytes > this.cfg.volumeBytes) return `write of ${lengthBytes} bytes at ${offsetBytes} runs past the end of the ${this.cfg.volumeBytes}-byte volume`;
    if (lengthBytes > this.lim.inflightBytesMax) return `write of ${lengthBytes} bytes exceeds inflightBytesMax ${this.lim.inflightBytesMax}; split it`;
    return undefined;
  }

  private onHostFlush(id: HostOpId): void {
    if (this.fenced !== undefined) {
      this.ackHost(id, this.fencedError());
      return;
    }
    if (this.hostQueue.length >= this.lim.hostQueueWritesMax) {
      this.ackHost(id, { kind: 'busy', message: `host queue full (${this.lim.hostQueueWritesMax} operations); retry after an ack` });
      return;
    }
    this.hostQueue.push({ kind: 'flush', id });
  }

  private fencedError(): HostError {
    return { kind: 'fenced', message: `this site was primary for epoch ${this.epoch} but a peer is at epoch ${this.fenced}; it no longer accepts writes (another site was promoted)` };
  }

  /** Moves host operations from the queue into the window, in arrival order. */
  private admit(): void {
    while (this.hostQueue.length > 0) {
      const op = this.hostQueue[0]!;
      if (op.kind === 'flush') {
        if (this.flushes.length >= this.lim.flushesInflightMax) return;
        this.hostQueue.shift();
        const f: HostFlush = { id: op.id, upTo: this.seqNext - 1n, stage: 'waitWrites', flushId: this.flushIdNext++, localDone: false, waitingMirrors: new Set(), sense: undefined };
        this.flushes.push(f);
        continue;
      }
      if (this.writesInflight >= this.lim.inflightWritesMax) return;
      if (this.bytesInflight + op.lengthBytes > this.lim.inflightBytesMax) return;
      if (this.cacheBytes + op.lengthBytes > this.lim.cacheBytesMax) return;
      if (this.seqNext >= this.seqReserved) {
        this.reserveSeqs();
        return;
      }
      this.hostQueue.shift();
      const e = this.newEntry(this.epoch, this.seqNext++, op.offsetBytes, op.lengthBytes, op.fua, op.payload, op.id);
      e.cacheOp = this.opNext++;
      e.inCache = true;
      this.byCacheOp.set(e.cacheOp, e);
      // Claim 12 (v): into the cache first; nothing is sent or performed until it is there.
      this.out.push({ type: 'cacheAppend', opId: e.cacheOp, entry: { epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload } });
    }
  }

  private reserveSeqs(): void {
    if (this.reserveOp !== undefined) return;
    this.reserveOp = this.opNext++;
    this.out.push({ type: 'metaPersist', opId: this.reserveOp, meta: { epoch: this.epoch, seqReserved: this.seqNext + this.lim.seqReserveChunk } });
  }

  private onMetaPersisted(opId: OpId): void {
    assert(opId === this.reserveOp, `metaPersisted for unknown op ${opId}`);
    this.reserveOp = undefined;
    this.seqReserved = this.seqNext + this.lim.seqReserveChunk;
  }

  private newEntry(epoch: Epoch, seq: Seq, offsetBytes: number, lengthBytes: number, fua: boolean, payload: Uint8Array, hostId: HostOpId | undefined): Entry {
    const last = this.entries[this.entries.length - 1];
    assert(last === undefined || last.epoch < epoch || (last.epoch === epoch && last.seq < seq), `seq ${seq} of epoch ${epoch} does not follow ${last?.seq} of epoch ${last?.epoch}`);
    const e: Entry = {
      epoch, seq, offsetBytes, lengthBytes, fua, payload, hostId, cacheOp: undefined, cached: false, inCache: false, stored: false, durable: false,
      sense: undefined, waitingMirrors: new Set(), bitmapWaits: new Set(), done: false,
    };
    this.entries.push(e);
    this.writesInflight++;
    this.bytesInflight += lengthBytes;
    this.cacheBytes += lengthBytes;
    return e;
  }

  private onCacheAppended(opId: OpId, sense: SenseInfo | undefined): void {
    const e = this.byCacheOp.get(opId);
    assert(e !== undefined, `cacheAppended for unknown op ${opId}`);
    this.byCacheOp.delete(opId);
    if (sense !== undefined) {
      // Not in the cache, so never sent or performed: fail it and let it go.
      this.log('error', 'cache_append_failed', { seq: e.seq, message: sense.message });
      e.inCache = false;
      e.cached = e.stored = e.durable = true;
      e.sense = sense;
      this.tryComplete(e);
      return;
    }
    e.cached = true;
    this.fanOut(e);
  }

  /** Claim 10 (ii): to every in-sync mirror at once; claim 4: perform locally. */
  private fanOut(e: Entry): void {
    for (const m of this.mirrors.values()) {
      if (m.sync === 'inSync') {
        e.waitingMirrors.add(m.peer);
        if (m.link === 'ready') this.send(m.peer, this.writeMsg(e));
      } else {
        this.dirtyFor(m, e);
      }
    }
    this.queueLocalWrite(e);
  }

  private writeMsg(e: Entry): PeerMsg {
    return { type: 'write', epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload };
  }

  private queueLocalWrite(e: Entry): void {
    const op: LocalOp = { kind: 'write', entry: e };
    if (this.overlap.insert(e.offsetBytes, e.lengthBytes, op)) this.issueLocal(op);
  }

  private issueLocal(op: LocalOp): void {
    const opId = this.opNext++;
    this.localOps.set(opId, op);
    if (op.kind === 'write') {
      this.out.push({ type: 'storageWrite', opId, offsetBytes: op.entry.offsetBytes, payload: op.entry.payload, fua: op.entry.fua });
    } else {
      this.out.push({ type: 'storageRead', opId, offsetBytes: op.read.offsetBytes, lengthBytes: op.read.lengthBytes });
    }
  }

  private onStorageDone(opId: OpId, data: Uint8Array | undefined, sense: SenseInfo | undefined): void {
    const op = this.localOps.get(opId);
    assert(op !== undefined, `storage completion for unknown op ${opId}`);
    this.localOps.delete(opId);
    for (const next of this.overlap.complete(op)) this.issueLocal(next);
    if (op.kind === 'read') {
      this.onResyncRead(op.read, data, sense);
      return;
    }
    const e = op.entry;
    e.stored = true;
    if (sense !== undefined) {
      this.log('error', 'local_write_failed', { seq: e.seq, offsetBytes: e.offsetBytes, message: sense.message });
      e.sense ??= sense;
      e.durable = true; // nothing of it to keep durable; the host gets the error
    } else if (e.fua) {
      e.durable = true;
    } else {
      this.unflushed.push(e);
    }
    this.tryComplete(e);
  }

  /** Host ack once every in-sync mirror acked, the local write is done, and missed regions are persisted as dirty. */
  private tryComplete(e: Entry): void {
    if (e.done || !e.cached || !e.stored || e.waitingMirrors.size > 0 || e.bitmapWaits.size > 0) return;
    e.done = true;
    this.writesInflight--;
    this.bytesInflight -= e.lengthBytes;
    assert(this.writesInflight >= 0 && this.bytesInflight >= 0, 'in-flight accounting went negative');
    if (e.hostId !== undefined) {
      this.ackHost(e.hostId, e.sense === undefined ? undefined : { kind: 'io', message: e.sense.message, sense: e.sense });
    }
  }

  private ackHost(id: HostOpId, error: HostError | undefined): void {
    this.out.push(error === undefined ? { type: 'ackHost', id } : { type: 'ackHost', id, error });
  }

  // -------------------------------------------------------------------------------------------
  // Flush (barrier) and cache drop

  private progressFlushes(): void {
    if (this.flushes.length === 0) return;
    let firstOpen: Seq | undefined;
    for (const e of this.entries) {
      if (!e.done && e.epoch === this.epoch) {
        firstOpen = e.seq;
        break;
      }
    }
    for (const f of this.flushes) {
      if (f.stage === 'waitWrites' && (firstOpen === undefined || firstOpen > f.upTo)) {
        f.stage = 'flushing';
        this.flushWaiters.push(f);
        for (const m of this.mirrors.values()) {
          if (m.sync !== 'inSync') continue;
          f.waitingMirrors.add(m.peer);
          if (m.link === 'ready') this.send(m.peer, { type: 'flush', epoch: this.epoch, flushId: f.flushId, seq: f.upTo });
        }
      }
    }
    for (let i = 0; i < this.flushes.length; ) {
      const f = this.flushes[i]!;
      if (f.stage === 'flushing' && f.localDone && f.waitingMirrors.size === 0) {
        this.flushes.splice(i, 1);
        this.ackHost(f.id, f.sense === undefined ? undefined : { kind: 'io', message: f.sense.message, sense: f.sense });
      } else {
        i++;
      }
    }
  }

  private maybeLocalFlush(): void {
    if (this.localFlush !== undefined) return;
    const n = this.unflushed.length;
    const due =
      this.flushWaiters.length > 0 ||
      periodicFlushDue(this.lim, n, this.cacheBytes, this.nowMs, this.lastFlushMs);
    if (!due) return;
    const opId = this.opNext++;
    this.localFlush = { opId, covers: this.unflushed, waiters: this.flushWaiters };
    this.unflushed = [];
    this.flushWaiters = [];
    this.out.push({ type: 'storageFlush', opId });
  }

  private onStorageFlushed(opId: OpId, sense: SenseInfo | undefined): void {
    const lf = this.localFlush;
    assert(lf !== undefined && lf.opId === opId, `storageFlushed for unknown op ${opId}`);
    this.localFlush = undefined;
    this.lastFlushMs = this.nowMs;
    if (sense !== undefined) {
      this.log('error', 'local_flush_failed', { message: sense.message });
      this.unflushed.unshift(...lf.covers); // still not durable: keep them cached
    } else {
      for (const e of lf.covers) e.durable = true;
    }
    for (const f of lf.waiters) {
      f.localDone = true;
      if (sense !== undefined) f.sense ??= sense;
    }
  }

  /** Claim 12 (vi): drop, in seq order, entries acked everywhere and durable locally. */
  private dropPrefix(): void {
    let n = 0;
    while (n < this.entries.length && this.entries[n]!.done && this.entries[n]!.durable) n++;
    if (n === 0) return;
    const gone = this.entries.splice(0, n);
    for (const e of gone) this.cacheBytes -= e.lengthBytes;
    assert(this.cacheBytes >= 0, 'cache accounting went negative');
    const keys = gone.filter((e) => e.inCache).map((e) => ({ epoch: e.epoch, seq: e.seq }));
    if (keys.length > 0) this.out.push({ type: 'cacheDrop', entries: keys });
  }

  private afterStep(): void {
    if (!this.started) return;
    this.admit();
    this.progressFlushes();
    this.maybeLocalFlush();
    this.dropPrefix();
    // Admission may have been waiting for cache space freed by the drop.
    this.admit();
  }

  // -------------------------------------------------------------------------------------------
  // Links and messages

  private mirror(peer: PeerId): MirrorState | undefined {
    const m = this.mirrors.get(peer);
    if (m === undefined) this.log('warn', 'unknown_peer', { peer, fix: 'only mirrors listed in the primary\'s `mirrors:` may connect' });
    return m;
  }

  private onPeerUp(peer: PeerId): void {
    const m = this.mirror(peer);
    if (m === undefined) return;
    m.link = 'joining';
    this.send(peer, { type: 'epoch', epoch: this.epoch });
  }

  private onPeerDown(peer: PeerId): void {
    const m = this.mirror(peer);
    if (m === undefined || m.link === 'down') return;
    m.link = 'down';
    m.downSinceMs = this.nowMs;
    // Resync regions in flight stay dirty; reads still queued locally finish and are discarded.
    m.inflight.clear();
    if (m.sync === 'resyncing') m.sync = 'degraded';
    this.log('warn', 'mirror_link_down', { peer, sync: m.sync, policy: this.cfg.onMirrorLoss });
  }

  private onRecv(peer: PeerId, msg: PeerMsg): void {
    if (msg.type === 'lastHeardQuery') {
      // Failover detection (claim 13 v): read-only, answered whatever the asker's epoch (never a
      // reason to fence). The primary hears itself: age 0, unless it is fenced already.
      this.send(peer, { type: 'lastHeardAnswer', epoch: this.epoch, queryId: msg.queryId, heardAgoMs: this.fenced === undefined ? 0 : -1, seqReceived: this.seqNext - 1n });
      return;
    }
    const m = this.mirror(peer);
    if (m === undefined) return;
    m.lastHeardMs = this.nowMs;
    if (msg.epoch > this.epoch) {
      this.fence(msg.epoch, peer);
      return;
    }
    if (msg.epoch < this.epoch && msg.type === 'heartbeat') return; // RTT only: a mirror's heartbeats carry its epoch until it adopts ours
    if (msg.epoch < this.epoch) {
      // Fencing (issue 10 item 4): an old primary that speaks to the new one learns the epoch.
      // A `fence` is never answered, so two sites cannot ping-pong.
      if (msg.type !== 'fence') this.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.cfg.self} is primary of epoch ${this.epoch}; frames of epoch ${msg.epoch} are refused` });
      this.log('warn', 'stale_epoch_message', { peer, type: msg.type, epoch: msg.epoch, ours: this.epoch });
      return;
    }
    switch (msg.type) {
      case 'resyncRequest': this.onJoin(m, msg.seqReceived); break;
      case 'ack': this.onAck(m, msg.seq); break;
      case 'writeStatus': this.onWriteStatus(m, msg.seq, msg.sense); break;
      case 'flushAck': this.onFlushAck(m, msg.flushId, msg.sense); break;
      case 'resyncAck': this.onResyncAck(m, msg.resyncId, msg.sense); break;
      case 'heartbeat':
        if (msg.reply) m.rttMs = this.nowMs - msg.sentMs;
        m.seqAcked = msg.seqAcked > m.seqAcked ? msg.seqAcked : m.seqAcked;
        break;
      case 'fence': this.fence(msg.epoch, peer); break;
      default:
        this.log('warn', 'unexpected_message', { peer, type: msg.type, fix: 'a mirror sent a message only an upstream site may send; check roles in the cluster file' });
    }
  }

  private fence(epoch: Epoch, peer: PeerId): void {
    if (this.fenced !== undefined && this.fenced >= epoch) return;
    this.fenced = epoch;
    this.log('error', 'fenced', { peer, epoch, ours: this.epoch, effect: 'host writes are refused from now on' });
    for (const op of this.hostQueue.splice(0)) this.ackHost(op.id, this.fencedError());
  }

  /** The mirror answered our `epoch` with what it holds: bring it up to date. */
  private onJoin(m: MirrorState, seqReceived: Seq): void {
    if (m.link !== 'joining') {
      this.log('warn', 'unexpected_resync_request', { peer: m.peer, link: m.link });
      return;
    }
    m.link = 'ready';
    if (m.sync !== 'inSync') {
      this.startResync(m);
      return;
    }
    // Re-send, in seq order, what it has not received (the link reset lost it).
    let resent = 0;
    for (const e of this.entries) {
      if (e.cached && e.epoch === this.epoch && e.seq > seqReceived && e.waitingMirrors.has(m.peer)) {
        this.send(m.peer, this.writeMsg(e));
        resent++;
      }
    }
    for (const f of this.flushes) {
      if (f.stage === 'flushing' && f.waitingMirrors.has(m.peer)) this.send(m.peer, { type: 'flush', epoch: this.epoch, flushId: f.flushId, seq: f.upTo });
    }
    this.log('info', 'mirror_joined', { peer: m.peer, seqReceived, resent });
    // After the resent writes on the same ordered link: it holds (or is about to) every write.
    this.send(m.peer, { type: 'inSync', epoch: this.epoch, seq: this.seqNext - 1n });
  }

  private startResync(m: MirrorState): void {
    m.sync = 'resyncing';
    m.progressDecile = 0;
    m.lastRefillMs = this.nowMs;
    this.log('info', 'mirror_resync_start', { peer: m.peer, dirtyRegions: m.dirty.size, regionBytes: this.lim.regionBytes });
    this.maybeInSync(m);
  }

  private onAck(m: MirrorState, seq: Seq): void {
    if (seq > m.seqAcked) m.seqAcked = seq;
    for (const e of this.entries) {
      if (e.epoch !== this.epoch) continue;
      if (e.seq > seq) break;
      if (e.waitingMirrors.delete(m.peer)) this.tryComplete(e);
    }
  }

  /**
   * A mirror could not perform a write: it no longer holds the volume, whatever the policy, so
   * it is degraded (its missed regions go to the bitmap and a resync repairs them). Under
   * `block` the host also gets the error, since the strict guarantee was not met for that write.
   */
  private onWriteStatus(m: MirrorState, seq: Seq, sense: SenseInfo): void {
    this.log('error', 'mirror_write_failed', { peer: m.peer, seq, message: sense.message });
    if (this.cfg.onMirrorLoss === 'block') {
      const e = this.entries.find((x) => x.epoch === this.epoch && x.seq === seq);
      if (e !== undefined && !e.done) e.sense ??= sense;
    }
    this.degrade(m, `write ${seq} failed on its storage: ${sense.message}`);
  }

  private onFlushAck(m: MirrorState, flushId: bigint, sense: SenseInfo | undefined): void {
    const f = this.flushes.find((x) => x.flushId === flushId);
    if (f === undefined) return; // a re-sent flush acked twice
    if (sense !== undefined) {
      this.log('error', 'mirror_flush_failed', { peer: m.peer, message: sense.message });
      if (this.cfg.onMirrorLoss === 'block') f.sense ??= sense;
      this.degrade(m, `flush failed: ${sense.message}`);
    }
    f.waitingMirrors.delete(m.peer);
  }

  // -------------------------------------------------------------------------------------------
  // Degrade, dirty bitmap, resync

  private degrade(m: MirrorState, reason: string): void {
    if (m.sync !== 'inSync') return;
    m.sync = 'degraded';
    m.degradedAtMs = this.nowMs;
    m.regionsDone = 0;
    let missed = 0;
    for (const e of this.entries) {
      if (e.waitingMirrors.delete(m.peer)) {
        this.dirtyFor(m, e);
        missed++;
        this.tryComplete(e);
      }
    }
    for (const f of this.flushes) f.waitingMirrors.delete(m.peer);
    this.log('warn', 'mirror_degraded', { peer: m.peer, reason, writesMissed: missed, dirtyRegions: m.dirty.size });
  }

  /** Records that mirror `m` misses write `e`; the host ack waits until the bits are durable. */
  private dirtyFor(m: MirrorState, e: Entry): void {
    const fresh: number[] = [];
    for (const r of regionsOf(e.offsetBytes, e.lengthBytes, this.lim.regionBytes)) {
      const fl = m.inflight;
      for (const v of fl.values()) if (v.region === r) v.touched = true;
      const st = m.dirty.get(r);
      if (st === undefined) fresh.push(r);
      else if (st !== 'set') this.waitBitmap(e, st);
    }
    if (fresh.length === 0) return;
    const opId = this.opNext++;
    for (const r of fresh) m.dirty.set(r, opId);
    this.waitBitmap(e, opId);
    this.out.push({ type: 'bitmapSet', opId, peer: m.peer, regions: fresh });
  }

  private waitBitmap(e: Entry, opId: OpId): void {
    e.bitmapWaits.add(opId);
    const list = this.bitmapWaiters.get(opId);
    if (list === undefined) this.bitmapWaiters.set(opId, [e]);
    else list.push(e);
  }

  private onBitmapPersisted(opId: OpId): void {
    for (const m of this.mirrors.values()) {
      for (const [r, st] of m.dirty) if (st === opId) m.dirty.set(r, 'set');
    }
    const waiters = this.bitmapWaiters.get(opId) ?? [];
    this.bitmapWaiters.delete(opId);
    for (const e of waiters) {
      e.bitmapWaits.delete(opId);
      this.tryComplete(e);
    }
  }

  private onTick(): void {
    for (const m of this.mirrors.values()) {
      if (this.cfg.onMirrorLoss === 'degrade' && m.peer !== this.cfg.standby && m.sync === 'inSync' && m.link !== 'ready' && this.nowMs - m.downSinceMs >= this.lim.mirrorLossGraceMs) {
        this.degrade(m, `unreachable for ${Math.round(this.nowMs - m.downSinceMs)} ms (grace ${this.lim.mirrorLossGraceMs} ms)`);
      }
      // Degraded while still connected (its storage failed): retry a resync after the grace period.
      if (m.sync === 'degraded' && m.link === 'ready' && this.nowMs - m.degradedAtMs >= this.lim.mirrorLossGraceMs) this.startResync(m);
      if (m.sync === 'resyncing' && m.link === 'ready') this.resyncSome(m);
    }
    if (this.nowMs - this.lastHeartbeatMs >= this.lim.heartbeatIntervalMs) {
      this.lastHeartbeatMs = this.nowMs;
      for (const m of this.mirrors.values()) {
        if (m.link === 'ready') this.send(m.peer, { type: 'heartbeat', epoch: this.epoch, sentMs: this.nowMs, seqAcked: m.seqAcked, reply: false });
      }
    }
  }

  /** Background resync, rate-limited by a token budget refilled per tick. */
  private resyncSome(m: MirrorState): void {
    const burstBytes = Math.max(this.lim.regionBytes, this.lim.resyncInflightRegionsMax * this.lim.regionBytes);
    m.tokensBytes = Math.min(burstBytes, m.tokensBytes + ((this.nowMs - m.lastRefillMs) * this.lim.resyncBytesPerSecMax) / 1000);
    m.lastRefillMs = this.nowMs;
    while (m.inflight.size < this.lim.resyncInflightRegionsMax && m.tokensBytes >= this.lim.regionBytes) {
      const region = this.pickRegion(m);
      if (region === undefined) break;
      m.tokensBytes -= this.lim.regionBytes;
      const resyncId = this.resyncIdNext++;
      m.inflight.set(resyncId, { region, touched: false });
      const range = regionRange(region, this.cfg.volumeBytes, this.lim.regionBytes);
      const op: LocalOp = { kind: 'read', read: { mirror: m.peer, resyncId, offsetBytes: range.offsetBytes, lengthBytes: range.lengthBytes } };
      if (this.overlap.insert(range.offsetBytes, range.lengthBytes, op)) this.issueLocal(op);
    }
  }

  private pickRegion(m: MirrorState): number | undefined {
    const busy = new Set<number>();
    for (const v of m.inflight.values()) busy.add(v.region);
    for (const r of m.dirty.keys()) if (!busy.has(r)) return r;
    return undefined;
  }

  private onResyncRead(read: ResyncRead, data: Uint8Array | undefined, sense: SenseInfo | undefined): void {
    const m = this.mirrors.get(read.mirror)!;
    const slot = m.inflight.get(read.resyncId);
    if (slot === undefined) return; // abandoned (link reset); the region is still dirty
    if (sense !== undefined || data === undefined) {
      this.log('error', 'resync_read_failed', { peer: m.peer, offsetBytes: read.offsetBytes, message: sense?.message });
      m.inflight.delete(read.resyncId);
      return;
    }
    assert(data.byteLength === read.lengthBytes, `resync read returned ${data.byteLength} bytes, expected ${read.lengthBytes}`);
    this.send(m.peer, { type: 'resyncData', epoch: this.epoch, resyncId: read.resyncId, offsetBytes: read.offsetBytes, payload: data });
  }

  private onResyncAck(m: MirrorState, resyncId: bigint, sense: SenseInfo | undefined): void {
    const slot = m.inflight.get(resyncId);
    if (slot === undefined) return;
    m.inflight.delete(resyncId);
    if (sense !== undefined) {
      this.log('error', 'mirror_resync_write_failed', { peer: m.peer, region: slot.region, message: sense.message });
      return;
    }
    if (!slot.touched) {
      const st = m.dirty.get(slot.region);
      if (st !== undefined) {
        m.dirty.delete(slot.region);
        m.regionsDone++;
        this.out.push({ type: 'bitmapClear', peer: m.peer, regions: [slot.region] });
      }
    }
    const percent = Math.floor((100 * m.regionsDone) / Math.max(1, m.regionsDone + m.dirty.size));
    if (m.dirty.size > 0 && Math.floor(percent / 10) > m.progressDecile) {
      m.progressDecile = Math.floor(percent / 10);
      this.log('info', 'mirror_resync_progress', { peer: m.peer, percent, regionsDone: m.regionsDone, regionsLeft: m.dirty.size });
    }
    this.maybeInSync(m);
  }

  private maybeInSync(m: MirrorState): void {
    if (m.sync !== 'resyncing' || m.dirty.size > 0 || m.inflight.size > 0) return;
    m.sync = 'inSync';
    this.log('info', 'mirror_in_sync', { peer: m.peer, regionsResynced: m.regionsDone });
    if (m.link === 'ready') this.send(m.peer, { type: 'inSync', epoch: this.epoch, seq: this.seqNext - 1n });
    m.regionsDone = 0;
  }

  // -------------------------------------------------------------------------------------------

  private send(peer: PeerId, msg: PeerMsg): void {
    this.out.push({ type: 'send', peer, msg });
  }

  private log(level: LogLevel, event: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, fields: { site: this.cfg.self, ...fields } });
  }

  /** The newer epoch that fenced this primary, if one did (cheap: the site checks it after every step). */
  fencedBy(): Epoch | undefined {
    return this.fenced;
  }

  /** Mirrors that hold every host-acked write (the checker's and status's notion of "in sync"). */
  inSyncMirrors(): PeerId[] {
    return [...this.mirrors.values()].filter((m) => m.sync === 'inSync').map((m) => m.peer);
  }

  /** True when nothing is pending anywhere: no host op, no cache entry, every mirror in sync. */
  quiescent(): boolean {
    return this.hostQueue.length === 0 && this.entries.length === 0 && this.flushes.length === 0 && this.localOps.size === 0 &&
      [...this.mirrors.values()].every((m) => m.sync === 'inSync' && m.link === 'ready');
  }

  status(): PrimaryStatus {
    const regionsTotal = regionCount(this.cfg.volumeBytes, this.lim.regionBytes);
    return {
      role: 'primary', epoch: this.epoch, fenced: this.fenced !== undefined, fencedBy: this.fenced, seqNext: this.seqNext,
      writesInflight: this.writesInflight, bytesInflight: this.bytesInflight, hostQueued: this.hostQueue.length,
      cacheEntries: this.entries.length, cacheBytes: this.cacheBytes,
      mirrors: [...this.mirrors.values()].map((m) => ({
        peer: m.peer, link: m.link, sync: m.sync, seqAcked: m.seqAcked, dirtyRegions: m.dirty.size,
        resyncPercent: m.sync === 'resyncing'
          ? Math.floor((100 * m.regionsDone) / Math.max(1, Math.min(regionsTotal, m.regionsDone + m.dirty.size)))
          : undefined,
        rttMs: m.rttMs,
      })),
    };
  }
}

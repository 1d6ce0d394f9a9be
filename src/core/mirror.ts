// A remote mirror site's disk array controller (claims 11, 17, 2): pure state machine.
//
//   recv write -> cacheAppend + storageWrite (overlap-ordered, in seq order)
//   both done  -> cumulative `ack` upstream (received AND executed: claim 10 iii)
//   the entry leaves the cache once acked AND durable on storage (FUA or a later storageFlush):
//   a power cut can lose unflushed storage blocks, and the battery-backed cache replay restores
//   them, so the cache keeps an entry until storage no longer needs it.
//   recv flush -> once every write up to its seq is performed: storageFlush -> flushAck.
//   recv resyncData -> applied once the cache is empty (so no replay of an older cached write can
//   ever land on top of it) as a FUA storage write -> resyncAck.
//
// Duplicates (seq <= the highest seq received in this epoch) are ignored; older epochs are
// refused with `fence`. On restart the cache is replayed onto storage first.
//
// Extension points: a relay (claims 20, 21) is this receive pipeline plus a downstream sender:
// it acks upstream when `cached` (relay-ack: cached) or when the downstream ack arrives
// (end-to-end), forwards each entry once cached, and counts "downstream acked" as one more
// condition in `droppable`. A standby is this class plus a promote step that persists a new
// epoch and hands its state (epoch, seqReceived) to a Primary.

import { OverlapQueue } from './overlap.js';
import {
  assert,
  type CacheEntry,
  type CoreAction,
  type CoreEvent,
  type Epoch,
  type Limits,
  type LogLevel,
  type OpId,
  type PeerId,
  type PeerMsg,
  type Recovered,
  type Role,
  type SenseInfo,
  type Seq,
} from './types.js';
import { periodicFlushDue } from './flush.js';

export interface MirrorConfig {
  readonly self: PeerId;
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly limits: Limits;
}

interface MEntry extends CacheEntry {
  cached: boolean;
  stored: boolean;
  durable: boolean;
  sense: SenseInfo | undefined;
}

interface ResyncItem {
  readonly peer: PeerId;
  readonly resyncId: bigint;
  readonly offsetBytes: number;
  readonly payload: Uint8Array;
}

type LocalOp = { kind: 'write'; entry: MEntry } | { kind: 'resync'; item: ResyncItem };

interface FlushReq {
  readonly peer: PeerId;
  readonly flushId: bigint;
  readonly upTo: Seq;
}

type WriteMsg = Extract<PeerMsg, { type: 'write' }>;

export interface MirrorStatus {
  readonly role: 'mirror';
  readonly epoch: Epoch;
  readonly upstream: PeerId | undefined;
  readonly seqReceived: Seq;
  readonly seqAcked: Seq;
  readonly cacheEntries: number;
  readonly cacheBytes: number;
  readonly resyncQueued: number;
  readonly lastHeardUpstreamMs: number | undefined;
  /** Writes that failed on this site's storage and await a resync (their writeStatus is re-sent on every join). */
  readonly failedWrites: number;
}

export class Mirror implements Role {
  private readonly lim: Limits;
  private out: CoreAction[] = [];
  private nowMs = 0;
  private started = false;
  private epoch: Epoch = 0n;
  private seqReserved: Seq = 0n;
  private pendingEpoch: { epoch: Epoch; opId: OpId; peer: PeerId } | undefined;
  private seqReceived: Seq = 0n;
  private seqAcked: Seq = 0n;
  private opNext: OpId = 1;
  private upstream: PeerId | undefined;
  private lastHeardUpstreamMs: number | undefined;
  /**
   * Writes this site failed to perform. The cumulative ack stops below the first of them, and
   * their writeStatus is re-sent on every join until resync data shows the upstream got it
   * (a status lost with a link reset must not turn into a silent ack).
   */
  private failed: MEntry[] = [];

  private entries: MEntry[] = [];
  private cacheBytes = 0;
  private readonly cacheOps = new Map<OpId, MEntry>();
  private readonly localOps = new Map<OpId, LocalOp>();
  private readonly overlap: OverlapQueue<LocalOp>;
  private readonly receiveQueue: WriteMsg[] = [];
  private readonly resyncQueue: ResyncItem[] = [];
  private flushReqs: FlushReq[] = [];
  private flushWaiters: FlushReq[] = [];
  private unflushed: MEntry[] = [];
  private localFlush: { opId: OpId; covers: MEntry[]; waiters: FlushReq[] } | undefined;
  private lastFlushMs = 0;

  constructor(private readonly cfg: MirrorConfig) {
    this.lim = cfg.limits;
    this.overlap = new OverlapQueue(1 << 20);
  }

  step(ev: CoreEvent, nowMs: number): CoreAction[] {
    assert(nowMs >= this.nowMs, `time went backwards: ${nowMs} < ${this.nowMs}`);
    this.nowMs = nowMs;
    this.out = [];
    assert(this.started || ev.type === 'start', `mirror ${this.cfg.self}: event ${ev.type} before start`);
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': break;
      case 'peerUp': break; // wait for the upstream's `epoch`
      case 'peerDown':
        if (ev.peer === this.upstream) this.upstream = undefined;
        break;
      case 'recv': this.onRecv(ev.peer, ev.msg); break;
      case 'cacheAppended': this.onCacheAppended(ev.opId, ev.sense); break;
      case 'storageWritten': this.onStorageWritten(ev.opId, ev.sense); break;
      case 'storageFlushed': this.onStorageFlushed(ev.opId, ev.sense); break;
      case 'metaPersisted': this.onMetaPersisted(ev.opId); break;
      case 'hostWrite':
      case 'hostFlush':
        this.out.push({ type: 'ackHost', id: ev.id, error: { kind: 'fenced', message: `${this.cfg.self} is a mirror; host writes go to the primary` } });
        break;
      case 'storageRead':
      case 'bitmapPersisted':
        assert(false, `mirror ${this.cfg.self}: unexpected ${ev.type} (a mirror issues no reads or bitmap writes)`);
    }
    this.afterStep();
    const out = this.out;
    this.out = [];
    return out;
  }

  private onStart(rec: Recovered): void {
    assert(!this.started, 'mirror started twice (a restart is a new instance)');
    this.started = true;
    this.epoch = rec.meta.epoch;
    this.seqReserved = rec.meta.seqReserved;
    this.lastFlushMs = this.nowMs;
    // Claim 17 / issue 5 item 5: replay the cache onto storage before serving anyone.
    for (const ce of rec.cacheEntries) {
      this.accept(ce, true);
      if (ce.epoch === this.epoch && ce.seq > this.seqReceived) this.seqReceived = ce.seq;
    }
    this.log('info', 'mirror_start', { epoch: this.epoch, replayed: rec.cacheEntries.length, seqReceived: this.seqReceived });
  }

  private onRecv(peer: PeerId, msg: PeerMsg): void {
    if (msg.type === 'lastHeardQuery') {
      // Failover detection (claim 13 v): read-only, so answered whatever the asker's epoch.
      const heardAgoMs = this.lastHeardUpstreamMs === undefined ? -1 : this.nowMs - this.lastHeardUpstreamMs;
      this.send(peer, { type: 'lastHeardAnswer', epoch: this.epoch, queryId: msg.queryId, heardAgoMs, seqReceived: this.seqReceived });
      return;
    }
    if (msg.type === 'epoch') {
      this.onEpoch(peer, msg.epoch);
      return;
    }
    if (msg.epoch < this.epoch) {
      this.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.cfg.self} is at epoch ${this.epoch}; frames of epoch ${msg.epoch} are refused` });
      this.log('warn', 'fenced_stale_sender', { peer, type: msg.type, epoch: msg.epoch, ours: this.epoch });
      return;
    }
    if (peer !== this.upstream || msg.epoch > this.epoch) {
      this.log('warn', 'unexpected_sender', { peer, type: msg.type, epoch: msg.epoch, upstream: this.upstream, fix: 'a peer must announce its epoch before sending' });
      return;
    }
    this.lastHeardUpstreamMs = this.nowMs;
    switch (msg.type) {
      case 'write': this.onWrite(msg); break;
      case 'flush':
        this.flushReqs.push({ peer, flushId: msg.flushId, upTo: msg.seq });
        break;
      case 'resyncData':
        assert(this.resyncQueue.length < this.lim.mirrorResyncQueueMax, `resync queue full (${this.lim.mirrorResyncQueueMax}): upstream exceeded resyncInflightRegionsMax`);
        this.resyncQueue.push({ peer, resyncId: msg.resyncId, offsetBytes: msg.offsetBytes, payload: msg.payload });
        break;
      case 'heartbeat':
        if (!msg.reply) this.send(peer, { type: 'heartbeat', epoch: this.epoch, sentMs: msg.sentMs, seqAcked: this.seqAcked, reply: true });
        break;
      case 'inSync':
        break; // only a standby acts on it (src/core/standby.ts: its promotion guard)
      default:
        this.log('warn', 'unexpected_message', { peer, type: msg.type, fix: 'only an upstream site sends this to a mirror' });
    }
  }

  private onEpoch(peer: PeerId, epoch: Epoch): void {
    if (epoch < this.epoch) {
      this.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.cfg.self} is at epoch ${this.epoch}; ${peer} speaks for ${epoch}` });
      this.log('warn', 'fenced_stale_upstream', { peer, epoch, ours: this.epoch });
      return;
    }
    if (epoch > this.epoch) {
      // Fencing: the new epoch is durable before we act on it.
      if (this.pendingEpoch !== undefined && this.pendingEpoch.epoch >= epoch) return;
      const opId = this.opNext++;
      this.pendingEpoch = { epoch, opId, peer };
      this.out.push({ type: 'metaPersist', opId, meta: { epoch, seqReserved: this.seqReserved } });
      return;
    }
    this.join(peer);
  }

  private onMetaPersisted(opId: OpId): void {
    const p = this.pendingEpoch;
    assert(p !== undefined && p.opId === opId, `metaPersisted for unknown op ${opId}`);
    this.pendingEpoch = undefined;
    this.log('info', 'epoch_adopted', { epoch: p.epoch, previous: this.epoch, upstream: p.peer });
    this.epoch = p.epoch;
    this.seqReceived = 0n;
    this.seqAcked = 0n;
    this.join(p.peer);
  }

  private join(peer: PeerId): void {
    this.upstream = peer;
    this.lastHeardUpstreamMs = this.nowMs;
    this.send(peer, { type: 'resyncRequest', epoch: this.epoch, seqReceived: this.seqReceived });
    for (const e of this.failed) this.send(peer, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense! });
    if (this.seqAcked > 0n) this.send(peer, { type: 'ack', epoch: this.epoch, seq: this.seqAcked });
  }

  private onWrite(w: WriteMsg): void {
    if (w.seq <= this.seqReceived) {
      this.log('debug', 'duplicate_write_ignored', { seq: w.seq, seqReceived: this.seqReceived });
      return;
    }
    const bad = this.validate(w.offsetBytes, w.lengthBytes, w.payload.byteLength);
    assert(bad === undefined, `write ${w.seq} from upstream: ${bad}`);
    this.seqReceived = w.seq;
    assert(this.receiveQueue.length < this.lim.mirrorReceiveQueueMax, `receive queue full (${this.lim.mirrorReceiveQueueMax} writes): upstream exceeded its window`);
    this.receiveQueue.push(w);
  }

  private validate(offsetBytes: number, lengthBytes: number, payloadBytes: number): string | undefined {
    const b = this.cfg.blockBytes;
    if (offsetBytes % b !== 0 || lengthBytes % b !== 0 || lengthBytes <= 0) return `range ${offsetBytes}+${lengthBytes} is not whole ${b}-byte blocks`;
    if (offsetBytes + lengthBytes > this.cfg.volumeBytes) return `range ${offsetBytes}+${lengthBytes} runs past the ${this.cfg.volumeBytes}-byte volume`;
    if (payloadBytes !== lengthBytes) return `payload is ${payloadBytes} bytes, header says ${lengthBytes}`;
    return undefined;
  }

  /** Moves received writes into the cache while it has room (backpressure: acks wait otherwise). */
  private admit(): void {
    while (this.receiveQueue.length > 0) {
      const w = this.receiveQueue[0]!;
      if (this.entries.length > 0 && this.cacheBytes + w.lengthBytes > this.lim.cacheBytesMax) return;
      this.receiveQueue.shift();
      this.accept(w, false);
    }
  }

  /** Claim 11: to the cache and to storage (storage in overlap order). */
  private accept(ce: CacheEntry, replayed: boolean): void {
    const e: MEntry = { epoch: ce.epoch, seq: ce.seq, offsetBytes: ce.offsetBytes, lengthBytes: ce.lengthBytes, fua: ce.fua, payload: ce.payload, cached: replayed, stored: false, durable: false, sense: undefined };
    this.entries.push(e);
    this.cacheBytes += e.lengthBytes;
    if (!replayed) {
      const opId = this.opNext++;
      this.cacheOps.set(opId, e);
      this.out.push({ type: 'cacheAppend', opId, entry: { epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload } });
    }
    const op: LocalOp = { kind: 'write', entry: e };
    if (this.overlap.insert(e.offsetBytes, e.lengthBytes, op)) this.issueLocal(op);
  }

  private issueLocal(op: LocalOp): void {
    const opId = this.opNext++;
    this.localOps.set(opId, op);
    if (op.kind === 'write') this.out.push({ type: 'storageWrite', opId, offsetBytes: op.entry.offsetBytes, payload: op.entry.payload, fua: op.entry.fua });
    else this.out.push({ type: 'storageWrite', opId, offsetBytes: op.item.offsetBytes, payload: op.item.payload, fua: true });
  }

  private onCacheAppended(opId: OpId, sense: SenseInfo | undefined): void {
    const e = this.cacheOps.get(opId);
    assert(e !== undefined, `cacheAppended for unknown op ${opId}`);
    this.cacheOps.delete(opId);
    e.cached = true;
    if (sense !== undefined) {
      this.log('error', 'cache_append_failed', { seq: e.seq, message: sense.message });
      e.sense ??= sense;
    }
  }

  private onStorageWritten(opId: OpId, sense: SenseInfo | undefined): void {
    const op = this.localOps.get(opId);
    assert(op !== undefined, `storageWritten for unknown op ${opId}`);
    this.localOps.delete(opId);
    for (const next of this.overlap.complete(op)) this.issueLocal(next);
    if (op.kind === 'resync') {
      if (sense !== undefined) this.log('error', 'resync_write_failed', { offsetBytes: op.item.offsetBytes, message: sense.message });
      this.send(op.item.peer, sense === undefined
        ? { type: 'resyncAck', epoch: this.epoch, resyncId: op.item.resyncId }
        : { type: 'resyncAck', epoch: this.epoch, resyncId: op.item.resyncId, sense });
      return;
    }
    const e = op.entry;
    e.stored = true;
    if (sense !== undefined) {
      this.log('error', 'storage_write_failed', { seq: e.seq, offsetBytes: e.offsetBytes, message: sense.message });
      e.sense ??= sense;
      e.durable = true;
    } else if (e.fua) {
      e.durable = true;
    } else {
      this.unflushed.push(e);
    }
  }

  /** Cumulative ack of the performed prefix; a failed write is reported per write and stops the ack below it. */
  private advanceAck(): void {
    let ack = this.seqAcked;
    for (const e of this.entries) {
      if (e.epoch !== this.epoch || e.seq <= this.seqAcked) continue;
      if (!e.cached || !e.stored) break;
      if (e.sense !== undefined) {
        if (!this.failed.includes(e)) {
          this.failed.push(e);
          if (this.upstream !== undefined) this.send(this.upstream, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense });
        }
        break;
      }
      ack = e.seq;
    }
    if (ack === this.seqAcked) return;
    this.seqAcked = ack;
    if (this.upstream !== undefined) this.send(this.upstream, { type: 'ack', epoch: this.epoch, seq: ack });
  }

  private progressFlushReqs(): void {
    if (this.flushReqs.length === 0) return;
    let firstOpen: Seq | undefined;
    for (const e of this.entries) {
      if (e.epoch === this.epoch && !e.stored) {
        firstOpen = e.seq;
        break;
      }
    }
    const q = this.receiveQueue[0];
    if (q !== undefined && (firstOpen === undefined || q.seq < firstOpen)) firstOpen = q.seq;
    const keep: FlushReq[] = [];
    for (const f of this.flushReqs) {
      if (firstOpen === undefined || firstOpen > f.upTo) this.flushWaiters.push(f);
      else keep.push(f);
    }
    this.flushReqs = keep;
  }

  private maybeLocalFlush(): void {
    if (this.localFlush !== undefined) return;
    const n = this.unflushed.length;
    const resyncWaiting = this.resyncQueue.length > 0 && n > 0;
    const due =
      this.flushWaiters.length > 0 || resyncWaiting ||
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
      this.log('error', 'storage_flush_failed', { message: sense.message });
      this.unflushed.unshift(...lf.covers);
    } else {
      for (const e of lf.covers) e.durable = true;
    }
    for (const f of lf.waiters) {
      this.send(f.peer, sense === undefined
        ? { type: 'flushAck', epoch: this.epoch, flushId: f.flushId }
        : { type: 'flushAck', epoch: this.epoch, flushId: f.flushId, sense });
    }
  }

  /** Drop, in order, entries that are acked (or of an older epoch) and durable on storage. */
  private dropPrefix(): void {
    let n = 0;
    for (; n < this.entries.length; n++) {
      const e = this.entries[n]!;
      const acked = e.epoch < this.epoch || e.seq <= this.seqAcked;
      if (!acked || !e.durable || !e.cached) break;
    }
    if (n === 0) return;
    const gone = this.entries.splice(0, n);
    for (const e of gone) this.cacheBytes -= e.lengthBytes;
    assert(this.cacheBytes >= 0, 'cache accounting went negative');
    this.out.push({ type: 'cacheDrop', entries: gone.map((e) => ({ epoch: e.epoch, seq: e.seq })) });
  }

  /**
   * Resync data is applied only once every cached write is performed and durable, and those
   * entries then leave the cache first, so a later replay can never overwrite resync data with
   * older data. Resync only comes after the upstream degraded this site, which put every write
   * it had not seen acked into its bitmap: un-acked entries (failed ones too) are superseded.
   */
  private applyResync(): void {
    if (this.resyncQueue.length === 0 || this.receiveQueue.length > 0) return;
    if (this.entries.some((e) => !e.cached || !e.stored || !e.durable)) return; // maybeLocalFlush is due
    if (this.entries.length > 0) {
      const gone = this.entries.splice(0);
      this.cacheBytes = 0;
      this.out.push({ type: 'cacheDrop', entries: gone.map((e) => ({ epoch: e.epoch, seq: e.seq })) });
    }
    this.failed = [];
    while (this.resyncQueue.length > 0) {
      const item = this.resyncQueue.shift()!;
      const bad = this.validate(item.offsetBytes, item.payload.byteLength, item.payload.byteLength);
      assert(bad === undefined, `resync data from ${item.peer}: ${bad}`);
      const op: LocalOp = { kind: 'resync', item };
      if (this.overlap.insert(item.offsetBytes, item.payload.byteLength, op)) this.issueLocal(op);
    }
  }

  private afterStep(): void {
    if (!this.started) return;
    this.admit();
    this.advanceAck();
    this.progressFlushReqs();
    this.maybeLocalFlush();
    this.dropPrefix();
    this.admit();
    this.applyResync();
  }

  private send(peer: PeerId, msg: PeerMsg): void {
    this.out.push({ type: 'send', peer, msg });
  }

  private log(level: LogLevel, event: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, fields: { site: this.cfg.self, ...fields } });
  }

  quiescent(): boolean {
    return this.entries.length === 0 && this.receiveQueue.length === 0 && this.resyncQueue.length === 0 && this.localOps.size === 0;
  }

  /**
   * Everything received is settled on storage: performed and durable, or failed for good (a
   * failed write waits for a resync that a promotion will never get; its data is lost, which
   * only a forced promotion accepts). A standby takes over from this state (standby.ts step b).
   */
  settled(): boolean {
    return this.receiveQueue.length === 0 && this.resyncQueue.length === 0 && this.localOps.size === 0 &&
      this.entries.every((e) => this.failed.includes(e) || (e.cached && e.stored && e.durable));
  }

  /**
   * Once settled(), hands every remaining entry out of the cache (a cacheDrop). A promoted
   * standby must not leave old-epoch entries in its journal: a replay after a restart would
   * re-perform them over newer writes of its own epoch.
   */
  releaseSettled(): CoreAction[] {
    assert(this.settled(), `mirror ${this.cfg.self}: releaseSettled() before settled()`);
    const gone = this.entries.splice(0);
    this.failed = [];
    this.cacheBytes = 0;
    return gone.length === 0 ? [] : [{ type: 'cacheDrop', entries: gone.map((e) => ({ epoch: e.epoch, seq: e.seq })) }];
  }

  status(): MirrorStatus {
    return {
      role: 'mirror', epoch: this.epoch, upstream: this.upstream, seqReceived: this.seqReceived, seqAcked: this.seqAcked,
      cacheEntries: this.entries.length, cacheBytes: this.cacheBytes, resyncQueued: this.resyncQueue.length,
      lastHeardUpstreamMs: this.lastHeardUpstreamMs, failedWrites: this.failed.length,
    };
  }
}

// A relay point of a wide-area cascade (claims 14, 18, 20, 21): pure state machine.
//
// Towards its upstream (the primary or the previous relay) it is a mirror: the upstream announces
// its `epoch`, the relay answers `resyncRequest{seqReceived}` and sends cumulative `ack`s.
// Towards its one downstream (the next relay or the remote mirror, claim 17) it is a sender like
// the primary: it announces the epoch, re-sends what the downstream's join answer says it lacks,
// and keeps the origin's (epoch, seq) on every forwarded write, so a chain is transparent.
//
//   recv write   -> cacheAppend (20 a)  [+ storageWrite when the relay holds a copy, claim 18]
//   cached       -> forward downstream (20 c), in seq order, inside a bounded window
//                -> `relay-ack: cached` (the claim, default): ack upstream (20 b) once cached
//                   and, with storage, performed (decision: an ack from a relay with a copy
//                   means the same as a mirror's, "cached AND executed", claim 10 iii; a relay
//                   without storage acks once cached, which is the claim's "acks after caching")
//                -> `relay-ack: end-to-end`: ack upstream only once the downstream acked too
//   downstream cumulative ack covers it (and its local copy is durable) -> cacheDrop (21)
//
// Backpressure: the cache holds every write the downstream has not acked. When it is full, new
// writes wait in the receive queue un-acked, so the upstream's window fills and it keeps its own
// entries: nothing is ever dropped. A downstream outage therefore fills the cache, then pushes
// back; when the link heals the cache drains in seq order.
//
// Restart: the cache journal is replayed; every replayed entry is forwarded again after the
// downstream's join answer, which ignores duplicates (seq <= what it received).
//
// FLUSH: forwarded downstream once every write up to its seq has been sent on the link (links
// are FIFO, so it arrives after them); answered upstream once the downstream answered and, with
// storage, the relay's own storage was flushed.
//
// Resync data (the upstream degraded this leg and repairs it) passes through: forwarded once the
// relay's cache is drained downstream (so a re-sent cached write can never land on top of
// resync data), and the downstream's resyncAck is passed back up.
//
// Known limits (documented, not handled):
//  - Under `cached`, a storage failure at a site behind the relay is reported upstream
//    (writeStatus) and the upstream degrades the leg, but the failed write was already acked by
//    the relay, so its region is not in the upstream's dirty bitmap and a resync does not
//    repair it; the relay's cache then stays pinned behind the failed write. (`end-to-end` does
//    not have this gap.)
//  - An epoch change (failover) while the relay still holds older-epoch entries that the
//    downstream has not acked: they can no longer be forwarded (the downstream would fence
//    them) and are dropped with a warning; the promoted primary's resync must cover them.

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

export type RelayAckMode = 'cached' | 'end-to-end';

export interface RelayConfig {
  readonly self: PeerId;
  /** The next site of the chain (`forward:`): a relay or the remote mirror. */
  readonly downstream: PeerId;
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly ackMode: RelayAckMode;
  /** Claim 18: the relay also performs each write on its own storage and holds a full copy. */
  readonly storage: boolean;
  readonly limits: Limits;
}

interface REntry extends CacheEntry {
  readonly receivedMs: number;
  cached: boolean;
  /** Performed on the relay's own storage (always true without storage). */
  stored: boolean;
  durable: boolean;
  sense: SenseInfo | undefined;
  /** Sent on the current downstream link. */
  sent: boolean;
  downAcked: boolean;
}

interface FlushReq {
  readonly flushId: bigint;
  readonly upTo: Seq;
  sentDown: boolean;
  downDone: boolean;
  localDone: boolean;
  localQueued: boolean;
  sense: SenseInfo | undefined;
}

interface ResyncItem {
  /** The upstream's id (answered upstream). */
  readonly resyncId: bigint;
  /** Our id on the downstream link: unique across upstream sessions and relay restarts. */
  readonly downId: bigint;
  readonly offsetBytes: number;
  readonly payload: Uint8Array;
  sentDown: boolean;
  downDone: boolean;
  /** With storage the region is also written to the relay's own copy (claim 18). */
  localIssued: boolean;
  localDone: boolean;
  sense: SenseInfo | undefined;
  /**
   * Sent down in an upstream session that has since ended: never answered upstream, but it
   * still occupies the downstream's resync queue until answered, so it counts in the window.
   */
  orphan: boolean;
}

type LocalOp = { kind: 'write'; entry: REntry } | { kind: 'resync'; item: ResyncItem };

type WriteMsg = Extract<PeerMsg, { type: 'write' }>;
type DownLink = 'down' | 'joining' | 'ready';

export interface RelayStatus {
  readonly role: 'relay';
  readonly epoch: Epoch;
  readonly ackMode: RelayAckMode;
  readonly upstream: PeerId | undefined;
  readonly downstream: PeerId;
  readonly downstreamLink: DownLink;
  readonly seqReceived: Seq;
  /** Highest seq acked upstream. */
  readonly seqAcked: Seq;
  /** Highest seq the downstream acked. */
  readonly seqAckedDownstream: Seq;
  readonly cacheEntries: number;
  readonly cacheBytes: number;
  /** Oldest seq in the cache the downstream has not acked (undefined: nothing behind). */
  readonly oldestUnackedSeq: Seq | undefined;
  /** Lag of the downstream behind this relay: writes, payload bytes, age of the oldest (ms). */
  readonly lagWrites: number;
  readonly lagBytes: number;
  readonly lagMs: number;
  readonly receiveQueued: number;
  readonly resyncQueued: number;
  readonly rttMs: number | undefined;
  readonly lastHeardUpstreamMs: number | undefined;
}

export class Relay implements Role {
  private readonly lim: Limits;
  private out: CoreAction[] = [];
  private nowMs = 0;
  private started = false;
  private epoch: Epoch = 0n;
  private seqReserved: Seq = 0n;
  private pendingEpoch: { epoch: Epoch; opId: OpId; peer: PeerId } | undefined;
  private seqReceived: Seq = 0n;
  private seqAcked: Seq = 0n;
  private downAcked: Seq = 0n;
  private opNext: OpId = 1;
  private upstream: PeerId | undefined;
  private lastHeardUpstreamMs: number | undefined;
  private downLink: DownLink = 'down';
  private rttMs: number | undefined;
  private lastHeartbeatMs = 0;
  /** Every write in the cache (not yet droppable), in seq order. */
  private entries: REntry[] = [];
  private cacheBytes = 0;
  private readonly receiveQueue: WriteMsg[] = [];
  private readonly cacheOps = new Map<OpId, REntry>();
  private readonly storageOps = new Map<OpId, LocalOp>();
  private readonly overlap: OverlapQueue<LocalOp>;
  private unflushed: REntry[] = [];
  private localFlush: { opId: OpId; covers: REntry[]; waiters: FlushReq[] } | undefined;
  private lastFlushMs = 0;
  private flushes: FlushReq[] = [];
  private resyncs: ResyncItem[] = [];
  private readonly failedReported = new Set<Seq>();
  /**
   * Resync ids towards the downstream are `life << 32 | n`, where `life` is a counter persisted
   * (in the meta record's seqReserved, which a relay has no other use for) at every start, so
   * a late resyncAck from a previous life or session can never match a new region.
   */
  private life: bigint | undefined;
  private lifeOp: OpId | undefined;
  private downResyncNext = 1n;

  constructor(private readonly cfg: RelayConfig) {
    this.lim = cfg.limits;
    assert(cfg.volumeBytes > 0 && cfg.volumeBytes % cfg.blockBytes === 0, `volume size ${cfg.volumeBytes} is not a whole number of ${cfg.blockBytes}-byte blocks`);
    assert(cfg.downstream !== cfg.self, `relay ${cfg.self} forwards to itself`);
    this.overlap = new OverlapQueue(1 << 20);
  }

  step(ev: CoreEvent, nowMs: number): CoreAction[] {
    assert(nowMs >= this.nowMs, `time went backwards: ${nowMs} < ${this.nowMs}`);
    this.nowMs = nowMs;
    this.out = [];
    assert(this.started || ev.type === 'start', `relay ${this.cfg.self}: event ${ev.type} before start`);
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': this.onTick(); break;
      case 'peerUp':
        // Upstream: wait for its `epoch`. Downstream: we speak first.
        if (ev.peer === this.cfg.downstream) this.downUp();
        break;
      case 'peerDown':
        if (ev.peer === this.upstream) this.upstream = undefined;
        if (ev.peer === this.cfg.downstream) this.downDown();
        break;
      case 'recv':
        if (ev.peer === this.cfg.downstream) this.onRecvDown(ev.msg);
        else this.onRecvUp(ev.peer, ev.msg);
        break;
      case 'cacheAppended': this.onCacheAppended(ev.opId, ev.sense); break;
      case 'storageWritten': this.onStorageWritten(ev.opId, ev.sense); break;
      case 'storageFlushed': this.onStorageFlushed(ev.opId, ev.sense); break;
      case 'metaPersisted': this.onMetaPersisted(ev.opId); break;
      case 'hostWrite':
      case 'hostFlush':
        this.out.push({ type: 'ackHost', id: ev.id, error: { kind: 'fenced', message: `${this.cfg.self} is a relay; host writes go to the primary` } });
        break;
      case 'storageRead':
      case 'bitmapPersisted':
        assert(false, `relay ${this.cfg.self}: unexpected ${ev.type} (a relay issues no reads or bitmap writes)`);
    }
    this.afterStep();
    const out = this.out;
    this.out = [];
    return out;
  }

  private onStart(rec: Recovered): void {
    assert(!this.started, 'relay started twice (a restart is a new instance)');
    this.started = true;
    this.epoch = rec.meta.epoch;
    this.seqReserved = rec.meta.seqReserved;
    this.lastFlushMs = this.nowMs;
    // Replay: every entry goes downstream again (duplicates are ignored there) and, with
    // storage, is performed again on the relay's own copy.
    for (const ce of rec.cacheEntries) {
      this.accept(ce, true);
      if (ce.epoch === this.epoch && ce.seq > this.seqReceived) this.seqReceived = ce.seq;
    }
    const stale = this.entries.filter((e) => e.epoch < this.epoch);
    for (const e of stale) e.downAcked = true; // see "Known limits": an older epoch cannot go down
    if (stale.length > 0) this.log('warn', 'relay_stale_epoch_entries', { entries: stale.length, fix: 'the promoted primary must resync this leg' });
    this.seqReserved += 1n;
    this.lifeOp = this.opNext++;
    this.out.push({ type: 'metaPersist', opId: this.lifeOp, meta: { epoch: this.epoch, seqReserved: this.seqReserved } });
    this.log('info', 'relay_start', { epoch: this.epoch, replayed: rec.cacheEntries.length, seqReceived: this.seqReceived, downstream: this.cfg.downstream, ackMode: this.cfg.ackMode, storage: this.cfg.storage });
  }

  // -------------------------------------------------------------------------------------------
  // Upstream side (the relay is a mirror to it)

  private onRecvUp(peer: PeerId, msg: PeerMsg): void {
    if (msg.type === 'lastHeardQuery') {
      // Failover detection (claim 13 v): read-only, answered whatever the asker's epoch.
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
        if (!this.flushes.some((f) => f.flushId === msg.flushId)) {
          assert(this.flushes.length < this.lim.flushesInflightMax * 4, `relay flush queue full: upstream exceeded flushesInflightMax ${this.lim.flushesInflightMax}`);
          this.flushes.push({ flushId: msg.flushId, upTo: msg.seq, sentDown: false, downDone: false, localDone: !this.cfg.storage, localQueued: false, sense: undefined });
        }
        break;
      case 'resyncData':
        assert(this.resyncs.length < this.lim.mirrorResyncQueueMax, `relay resync queue full (${this.lim.mirrorResyncQueueMax}): upstream exceeded resyncInflightRegionsMax`);
        if (this.resyncs.some((r) => !r.orphan && r.resyncId === msg.resyncId)) break;
        this.resyncs.push({ resyncId: msg.resyncId, downId: 0n, orphan: false, offsetBytes: msg.offsetBytes, payload: msg.payload, sentDown: false, downDone: false, localIssued: !this.cfg.storage, localDone: !this.cfg.storage, sense: undefined });
        break;
      case 'heartbeat':
        if (!msg.reply) this.send(peer, { type: 'heartbeat', epoch: this.epoch, sentMs: msg.sentMs, seqAcked: this.seqAcked, reply: true });
        break;
      case 'inSync':
        break; // meaningful to a standby only; a relay's downstream is told by the relay's own state
      default:
        this.log('warn', 'unexpected_message', { peer, type: msg.type, fix: 'only an upstream site sends this to a relay' });
    }
  }

  private onEpoch(peer: PeerId, epoch: Epoch): void {
    if (epoch < this.epoch) {
      this.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.cfg.self} is at epoch ${this.epoch}; ${peer} speaks for ${epoch}` });
      this.log('warn', 'fenced_stale_upstream', { peer, epoch, ours: this.epoch });
      return;
    }
    if (epoch > this.epoch) {
      if (this.pendingEpoch !== undefined && this.pendingEpoch.epoch >= epoch) return;
      const opId = this.opNext++;
      this.pendingEpoch = { epoch, opId, peer };
      this.out.push({ type: 'metaPersist', opId, meta: { epoch, seqReserved: this.seqReserved } });
      return;
    }
    this.join(peer);
  }

  private onMetaPersisted(opId: OpId): void {
    if (opId === this.lifeOp) {
      this.lifeOp = undefined;
      this.life = this.seqReserved;
      return;
    }
    const p = this.pendingEpoch;
    assert(p !== undefined && p.opId === opId, `metaPersisted for unknown op ${opId}`);
    this.pendingEpoch = undefined;
    this.log('info', 'epoch_adopted', { epoch: p.epoch, previous: this.epoch, upstream: p.peer });
    const stale = this.entries.filter((e) => e.epoch < p.epoch && !e.downAcked);
    if (stale.length > 0) this.log('warn', 'relay_stale_epoch_entries', { entries: stale.length, fix: 'the promoted primary must resync this leg' });
    for (const e of this.entries) if (e.epoch < p.epoch) e.downAcked = true;
    this.epoch = p.epoch;
    this.seqReceived = 0n;
    this.seqAcked = 0n;
    this.downAcked = 0n;
    this.flushes = [];
    this.resyncs = [];
    this.failedReported.clear();
    // The downstream must hear the new epoch before anything of it.
    if (this.downLink !== 'down') this.downUp();
    this.join(p.peer);
  }

  private join(peer: PeerId): void {
    // Flush ids belong to one upstream session (a restarted primary counts from 1 again): the
    // upstream re-sends every flush it still waits for, so answering an old one could complete
    // a new flush early.
    this.flushes = [];
    // Resync ids too are per upstream session; the upstream resends every region still dirty.
    // Regions already sent down become orphans (see ResyncItem.orphan); the rest are forgotten.
    this.resyncs = this.resyncs.filter((r) => r.sentDown && !r.downDone);
    for (const r of this.resyncs) r.orphan = true;
    this.upstream = peer;
    this.lastHeardUpstreamMs = this.nowMs;
    this.send(peer, { type: 'resyncRequest', epoch: this.epoch, seqReceived: this.seqReceived });
    for (const e of this.entries) {
      if (e.sense !== undefined && e.epoch === this.epoch) this.send(peer, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense });
    }
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
    assert(this.receiveQueue.length < this.lim.mirrorReceiveQueueMax, `relay receive queue full (${this.lim.mirrorReceiveQueueMax} writes): upstream exceeded its window`);
    this.receiveQueue.push(w);
  }

  private validate(offsetBytes: number, lengthBytes: number, payloadBytes: number): string | undefined {
    const b = this.cfg.blockBytes;
    if (offsetBytes % b !== 0 || lengthBytes % b !== 0 || lengthBytes <= 0) return `range ${offsetBytes}+${lengthBytes} is not whole ${b}-byte blocks`;
    if (offsetBytes + lengthBytes > this.cfg.volumeBytes) return `range ${offsetBytes}+${lengthBytes} runs past the ${this.cfg.volumeBytes}-byte volume`;
    if (payloadBytes !== lengthBytes) return `payload is ${payloadBytes} bytes, header says ${lengthBytes}`;
    return undefined;
  }

  /** Bounded cache: admit while there is room; otherwise the write waits un-acked (backpressure). */
  private admit(): void {
    while (this.receiveQueue.length > 0) {
      const w = this.receiveQueue[0]!;
      if (this.entries.length > 0 && this.cacheBytes + w.lengthBytes > this.lim.cacheBytesMax) return;
      this.receiveQueue.shift();
      this.accept(w, false);
    }
  }

  /** Claim 20 (a): into the cache; claim 18: and onto the relay's own storage when it has one. */
  private accept(ce: CacheEntry, replayed: boolean): void {
    const e: REntry = {
      epoch: ce.epoch, seq: ce.seq, offsetBytes: ce.offsetBytes, lengthBytes: ce.lengthBytes, fua: ce.fua, payload: ce.payload,
      receivedMs: this.nowMs, cached: replayed, stored: !this.cfg.storage, durable: !this.cfg.storage, sense: undefined, sent: false,
      // Re-sent by the upstream after our restart, but the downstream already acked it (acks
      // only grow, so it would never be acked again).
      downAcked: ce.epoch === this.epoch && ce.seq <= this.downAcked,
    };
    this.entries.push(e);
    this.cacheBytes += e.lengthBytes;
    if (!replayed) {
      const opId = this.opNext++;
      this.cacheOps.set(opId, e);
      this.out.push({ type: 'cacheAppend', opId, entry: { epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload } });
    }
    const op: LocalOp = { kind: 'write', entry: e };
    if (this.cfg.storage && this.overlap.insert(e.offsetBytes, e.lengthBytes, op)) this.issueStorage(op);
  }

  private issueStorage(op: LocalOp): void {
    const opId = this.opNext++;
    this.storageOps.set(opId, op);
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
    const op = this.storageOps.get(opId);
    assert(op !== undefined, `storageWritten for unknown op ${opId}`);
    this.storageOps.delete(opId);
    for (const next of this.overlap.complete(op)) this.issueStorage(next);
    if (op.kind === 'resync') {
      op.item.localDone = true;
      if (sense !== undefined) {
        this.log('error', 'resync_write_failed', { offsetBytes: op.item.offsetBytes, message: sense.message });
        op.item.sense ??= sense;
      }
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

  /** Cumulative ack upstream (20 b): the acked prefix depends on the ack mode. */
  private advanceAck(): void {
    let ack = this.seqAcked;
    for (const e of this.entries) {
      if (e.epoch !== this.epoch || e.seq <= this.seqAcked) continue;
      if (!e.cached || !e.stored) break;
      if (e.sense !== undefined) {
        if (!this.failedReported.has(e.seq)) {
          this.failedReported.add(e.seq);
          if (this.upstream !== undefined) this.send(this.upstream, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense });
        }
        break;
      }
      if (this.cfg.ackMode === 'end-to-end' && !e.downAcked) break;
      ack = e.seq;
    }
    if (ack === this.seqAcked) return;
    this.seqAcked = ack;
    if (this.upstream !== undefined) this.send(this.upstream, { type: 'ack', epoch: this.epoch, seq: ack });
  }

  // -------------------------------------------------------------------------------------------
  // Downstream side (the relay is a sender to it)

  private downUp(): void {
    this.downLink = 'joining';
    for (const e of this.entries) e.sent = false;
    for (const f of this.flushes) f.sentDown = false;
    // A downstream forgets queued resync data when it rejoins us: orphans are gone, the rest is re-sent.
    this.resyncs = this.resyncs.filter((r) => !r.orphan);
    for (const r of this.resyncs) r.sentDown = false;
    this.send(this.cfg.downstream, { type: 'epoch', epoch: this.epoch });
  }

  private downDown(): void {
    if (this.downLink === 'down') return;
    this.downLink = 'down';
    for (const e of this.entries) e.sent = false;
    for (const f of this.flushes) f.sentDown = false;
    this.resyncs = this.resyncs.filter((r) => !r.orphan);
    for (const r of this.resyncs) r.sentDown = false;
    this.log('warn', 'relay_downstream_down', { peer: this.cfg.downstream, cached: this.entries.length, oldestUnacked: this.oldestUnacked()?.seq });
  }

  private onRecvDown(msg: PeerMsg): void {
    if (msg.type === 'fence' || msg.epoch > this.epoch) {
      this.log('error', 'relay_downstream_ahead', { peer: this.cfg.downstream, epoch: msg.epoch, ours: this.epoch, fix: 'the downstream follows a newer primary; this relay waits for its upstream to announce that epoch' });
      return;
    }
    if (msg.epoch < this.epoch) return; // an answer from before our epoch change
    switch (msg.type) {
      case 'resyncRequest': this.onDownJoin(msg.seqReceived); break;
      case 'ack': this.onDownAck(msg.seq); break;
      case 'writeStatus':
        // The write is lost at the downstream: tell the upstream so it degrades this leg.
        this.log('error', 'downstream_write_failed', { peer: this.cfg.downstream, seq: msg.seq, message: msg.sense.message });
        if (this.upstream !== undefined) this.send(this.upstream, msg);
        break;
      case 'flushAck':
        // Downstream flush ids are the flush's seq: "everything up to seq is durable there" means
        // the same in every session of this epoch, so a late answer can never mislead.
        for (const f of this.flushes) {
          if (f.upTo !== msg.flushId) continue;
          f.downDone = true;
          if (msg.sense !== undefined) f.sense ??= msg.sense;
        }
        break;
      case 'resyncAck': {
        const r = this.resyncs.find((x) => x.sentDown && x.downId === msg.resyncId);
        if (r === undefined) return;
        r.downDone = true;
        if (msg.sense !== undefined) r.sense ??= msg.sense;
        break;
      }
      case 'heartbeat':
        if (msg.reply) this.rttMs = this.nowMs - msg.sentMs;
        if (msg.seqAcked > this.downAcked) this.onDownAck(msg.seqAcked);
        break;
      default:
        this.log('warn', 'unexpected_message', { peer: this.cfg.downstream, type: msg.type, fix: 'the downstream sent a message only an upstream site may send; check forward: in the cluster file' });
    }
  }

  private onDownJoin(seqReceived: Seq): void {
    if (this.downLink !== 'joining') {
      this.log('warn', 'unexpected_resync_request', { peer: this.cfg.downstream, link: this.downLink });
      return;
    }
    this.downLink = 'ready';
    // What the downstream already holds counts as sent (its ack follows); the rest is re-sent.
    let resend = 0;
    for (const e of this.entries) {
      if (e.epoch === this.epoch && e.seq <= seqReceived) e.sent = true;
      else if (!e.downAcked) resend++;
    }
    this.log('info', 'relay_downstream_joined', { peer: this.cfg.downstream, seqReceived, resend });
  }

  private onDownAck(seq: Seq): void {
    if (seq > this.downAcked) this.downAcked = seq;
    for (const e of this.entries) {
      if (e.epoch !== this.epoch) continue;
      if (e.seq > seq) break;
      e.downAcked = true;
    }
  }

  /** Claim 20 (c): forward cached entries in seq order, at most a window's worth un-acked. */
  private pumpDown(): void {
    if (this.downLink !== 'ready') return;
    let writes = 0;
    let bytes = 0;
    for (const e of this.entries) {
      if (e.sent && !e.downAcked) {
        writes++;
        bytes += e.lengthBytes;
      }
    }
    for (const e of this.entries) {
      if (e.sent || e.downAcked || e.epoch !== this.epoch) continue;
      if (!e.cached) break; // 20 (a) before (c); and keep seq order on the link
      if (writes >= this.lim.inflightWritesMax || (writes > 0 && bytes + e.lengthBytes > this.lim.inflightBytesMax)) break;
      e.sent = true;
      writes++;
      bytes += e.lengthBytes;
      this.send(this.cfg.downstream, { type: 'write', epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload });
    }
    // Flushes follow every write they cover on the (FIFO) link.
    for (const f of this.flushes) {
      if (f.sentDown || f.downDone) continue;
      if (this.receiveQueue.some((w) => w.seq <= f.upTo)) continue;
      if (this.entries.some((e) => e.epoch === this.epoch && e.seq <= f.upTo && !e.sent && !e.downAcked)) continue;
      f.sentDown = true;
      this.send(this.cfg.downstream, { type: 'flush', epoch: this.epoch, flushId: f.upTo, seq: f.upTo });
    }
    // Resync data only once the cache is empty (every entry went down, and with storage is
    // durable here), so no cached write can be re-sent or replayed over it.
    if (this.entries.length > 0 || this.receiveQueue.length > 0 || this.life === undefined) return;
    let inflight = this.resyncs.filter((r) => r.sentDown && !r.downDone).length;
    for (const r of this.resyncs) {
      if (r.orphan) continue;
      if (!r.localIssued) {
        r.localIssued = true;
        const op: LocalOp = { kind: 'resync', item: r };
        if (this.overlap.insert(r.offsetBytes, r.payload.byteLength, op)) this.issueStorage(op);
      }
      if (r.sentDown) continue;
      // The downstream's resync queue holds at most this many regions from us (orphans included).
      if (inflight >= this.lim.resyncInflightRegionsMax) break;
      inflight++;
      r.sentDown = true;
      if (r.downId === 0n) (r as { downId: bigint }).downId = (this.life << 32n) | this.downResyncNext++;
      this.send(this.cfg.downstream, { type: 'resyncData', epoch: this.epoch, resyncId: r.downId, offsetBytes: r.offsetBytes, payload: r.payload });
    }
  }

  /** A region is repaired once the downstream and (with storage) this relay wrote it. */
  private finishResyncs(): void {
    for (let i = 0; i < this.resyncs.length; ) {
      const r = this.resyncs[i]!;
      if (!r.downDone || !r.localDone) {
        i++;
        continue;
      }
      this.resyncs.splice(i, 1);
      if (!r.orphan && this.upstream !== undefined) {
        this.send(this.upstream, r.sense === undefined
          ? { type: 'resyncAck', epoch: this.epoch, resyncId: r.resyncId }
          : { type: 'resyncAck', epoch: this.epoch, resyncId: r.resyncId, sense: r.sense });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Flush and drop

  private progressFlushes(): void {
    if (this.flushes.length === 0) return;
    if (this.cfg.storage) {
      let firstUnstored: Seq | undefined;
      for (const e of this.entries) {
        if (e.epoch === this.epoch && !e.stored) {
          firstUnstored = e.seq;
          break;
        }
      }
      const q = this.receiveQueue[0];
      if (q !== undefined && (firstUnstored === undefined || q.seq < firstUnstored)) firstUnstored = q.seq;
      for (const f of this.flushes) {
        if (!f.localDone && !f.localQueued && (firstUnstored === undefined || firstUnstored > f.upTo)) {
          f.localQueued = true;
          this.flushWaiters.push(f);
        }
      }
    }
    for (let i = 0; i < this.flushes.length; ) {
      const f = this.flushes[i]!;
      if (f.downDone && f.localDone) {
        this.flushes.splice(i, 1);
        if (this.upstream !== undefined) {
          this.send(this.upstream, f.sense === undefined
            ? { type: 'flushAck', epoch: this.epoch, flushId: f.flushId }
            : { type: 'flushAck', epoch: this.epoch, flushId: f.flushId, sense: f.sense });
        }
      } else {
        i++;
      }
    }
  }

  private flushWaiters: FlushReq[] = [];

  private maybeLocalFlush(): void {
    if (!this.cfg.storage || this.localFlush !== undefined) return;
    const n = this.unflushed.length;
    const due =
      this.flushWaiters.length > 0 || (this.resyncs.length > 0 && n > 0) ||
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
      f.localDone = true;
      if (sense !== undefined) f.sense ??= sense;
    }
  }

  /** Claim 21: drop, in order, entries the downstream acked, acked upstream, and durable here. */
  private dropPrefix(): void {
    let n = 0;
    for (; n < this.entries.length; n++) {
      const e = this.entries[n]!;
      const ackedUp = e.epoch < this.epoch || e.seq <= this.seqAcked;
      if (!e.downAcked || !ackedUp || !e.cached || !e.durable || !e.stored) break;
    }
    if (n === 0) return;
    const gone = this.entries.splice(0, n);
    for (const e of gone) this.cacheBytes -= e.lengthBytes;
    assert(this.cacheBytes >= 0, 'relay cache accounting went negative');
    this.out.push({ type: 'cacheDrop', entries: gone.map((e) => ({ epoch: e.epoch, seq: e.seq })) });
  }

  private onTick(): void {
    if (this.nowMs - this.lastHeartbeatMs >= this.lim.heartbeatIntervalMs) {
      this.lastHeartbeatMs = this.nowMs;
      if (this.downLink === 'ready') this.send(this.cfg.downstream, { type: 'heartbeat', epoch: this.epoch, sentMs: this.nowMs, seqAcked: this.downAcked, reply: false });
    }
  }

  private afterStep(): void {
    if (!this.started) return;
    this.admit();
    this.advanceAck();
    this.pumpDown();
    this.progressFlushes();
    this.maybeLocalFlush();
    this.dropPrefix();
    this.admit();
    this.advanceAck();
    this.pumpDown();
    this.finishResyncs();
  }

  private send(peer: PeerId, msg: PeerMsg): void {
    this.out.push({ type: 'send', peer, msg });
  }

  private log(level: LogLevel, event: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, fields: { site: this.cfg.self, ...fields } });
  }

  private oldestUnacked(): REntry | undefined {
    return this.entries.find((e) => !e.downAcked);
  }

  /** Nothing held: every write went all the way down, no flush or resync pending. */
  quiescent(): boolean {
    return this.entries.length === 0 && this.receiveQueue.length === 0 && this.resyncs.length === 0 && this.flushes.length === 0 && this.storageOps.size === 0;
  }

  status(): RelayStatus {
    let lagWrites = 0;
    let lagBytes = 0;
    for (const e of this.entries) {
      if (!e.downAcked) {
        lagWrites++;
        lagBytes += e.lengthBytes;
      }
    }
    for (const w of this.receiveQueue) {
      lagWrites++;
      lagBytes += w.lengthBytes;
    }
    const oldest = this.oldestUnacked();
    return {
      role: 'relay', epoch: this.epoch, ackMode: this.cfg.ackMode, upstream: this.upstream, downstream: this.cfg.downstream, downstreamLink: this.downLink,
      seqReceived: this.seqReceived, seqAcked: this.seqAcked, seqAckedDownstream: this.downAcked,
      cacheEntries: this.entries.length, cacheBytes: this.cacheBytes, oldestUnackedSeq: oldest?.seq,
      lagWrites, lagBytes, lagMs: oldest === undefined ? 0 : this.nowMs - oldest.receivedMs,
      receiveQueued: this.receiveQueue.length, resyncQueued: this.resyncs.length, rttMs: this.rttMs, lastHeardUpstreamMs: this.lastHeardUpstreamMs,
    };
  }
}

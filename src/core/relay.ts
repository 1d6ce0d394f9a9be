// A relay point of a wide-area cascade (claims 14, 18, 20, 21): pure state machine. (This file
// runs past 450 lines: a relay is a mirror to its upstream and a sender to its downstream, and
// its flush and resync passthrough ties both sides to the same items; the halves it shares with
// other roles, the local store and the upstream side, are files of their own.)
//
// Towards its upstream (the primary or the previous relay) it is a mirror: the shared upstream
// side (src/core/upstream.ts) answers the `epoch` with `resyncRequest{seqReceived}`, validates
// every frame and sends cumulative `ack`s. Its own copy (claim 18) and its cache are the shared
// local store (src/core/local-store.ts).
// Towards its one downstream (the next relay or the remote mirror, claim 17) it is a sender like
// the primary: it announces the epoch, re-sends what the downstream's join answer says it lacks,
// and keeps the origin's (epoch, seq) on every forwarded write, so a chain is transparent.
//
//   recv write   -> cacheAppend (20 a)  [then storageWrite when the relay holds a copy, claim 18]
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
// A storage failure at a site behind the relay: its writeStatus is passed up (the upstream
// degrades the leg) and, because under `cached` the relay acked that write already, so it is in
// no dirty bitmap upstream, the relay also names its range (resyncRequest): the upstream resyncs
// it through the relay. The relay's own suspect regions (src/core/suspect.ts) are named the same.
//
// Known limits (documented, not handled):
//  - An epoch change (failover) while the relay still holds older-epoch entries that the
//    downstream has not acked: they can no longer be forwarded (the downstream would fence
//    them) and are dropped with a warning; the promoted primary's resync must cover them.

import { CoreIO, CoreRole, repeatLogIntervalMs, type OpOwner } from './io.js';
import { LocalStore, storeEntry, type StoreEntry } from './local-store.js';
import { serveRead, startSuspect, storageRecovered } from './suspect.js';
import { Upstream, type UpstreamConfig } from './upstream.js';
import { assert, type CacheEntry, type Completion, type CoreEvent, type Epoch, type HeartbeatState, type Limits, type Recovered } from './types.js';
import type { OpId, PeerId, PeerMsg, SenseInfo, Seq } from './types.js';

export type RelayAckMode = 'cached' | 'end-to-end';

export interface RelayConfig extends UpstreamConfig {
  /** The next site of the chain (`forward:`): a relay or the remote mirror. */
  readonly downstream: PeerId;
  readonly ackMode: RelayAckMode;
  /** Claim 18: the relay also performs each write on its own storage and holds a full copy. */
  readonly storage: boolean;
}

interface REntry extends StoreEntry {
  readonly receivedMs: number;
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

type DownLink = 'down' | 'joining' | 'ready';

/** A readRequest a relay without a copy passes down (issue 16 item 3): answered with the downstream's data. */
interface ReadItem {
  readonly upId: bigint;
  readonly downId: bigint;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  sentDown: boolean;
}

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

export class Relay extends CoreRole implements OpOwner {
  private readonly store: LocalStore<REntry>;
  private readonly up: Upstream<REntry>;
  private readonly lim: Limits;
  private downAcked: Seq = 0n;
  private downLink: DownLink = 'down';
  private rttMs: number | undefined;
  private flushes: FlushReq[] = [];
  private resyncs: ResyncItem[] = [];
  private reads: ReadItem[] = [];
  /**
   * Resync ids towards the downstream are `life << 32 | n`, where `life` is a counter persisted
   * (in the meta record's seqReserved, which a relay has no other use for) at every start, so
   * a late resyncAck from a previous life or session can never match a new region.
   */
  private life: bigint | undefined;
  private lifeOp: OpId | undefined;
  private downResyncNext = 1n;

  constructor(private readonly cfg: RelayConfig) {
    super(new CoreIO(cfg.self));
    this.lim = cfg.limits;
    assert(cfg.volumeBytes > 0 && cfg.volumeBytes % cfg.blockBytes === 0, () => `volume size ${cfg.volumeBytes} is not a whole number of ${cfg.blockBytes}-byte blocks`);
    assert(cfg.downstream !== cfg.self, () => `relay ${cfg.self} forwards to itself`);
    // Claim 20 (a): into the cache; claim 18: with storage, performed once cached.
    this.store = new LocalStore<REntry>(this.io, { limits: cfg.limits, volumeBytes: cfg.volumeBytes, storage: cfg.storage, performWhenCached: true });
    this.up = new Upstream(this.io, cfg, this.store, {
      entry: (w) => this.entry(w, false),
      onFlush: (peer, m) => this.onFlush(peer, m.flushId, m.seq),
      onResyncData: (peer, m) => {
        if (this.resyncs.some((r) => !r.orphan && r.resyncId === m.resyncId) || !this.up.resyncRoom(peer, this.resyncs.length)) return;
        this.resyncs.push({ resyncId: m.resyncId, downId: 0n, orphan: false, offsetBytes: m.offsetBytes, payload: m.payload, sentDown: false, downDone: false, localIssued: !cfg.storage, localDone: !cfg.storage, sense: undefined });
      },
      // inSync is meaningful to a standby only; a relay's downstream is told by the relay's own state
      onEpochAdopted: (epoch) => this.onEpochAdopted(epoch),
      // The committed watermark goes down the chain: the far end keeps the same tail.
      onCommitted: (seq) => {
        if (this.downLink === 'ready') this.io.send(this.cfg.downstream, { type: 'ack', epoch: this.up.epoch, seq });
      },

      // With a copy the relay serves reads itself; without one it passes them down.
      onReadRequest: (peer, m) => {
        if (cfg.storage) serveRead(this.io, this.store, this.up, peer, m);
        else if (this.reads.length >= this.lim.resyncInflightRegionsMax * 4) this.io.refuse(peer, 'window_exceeded', `${this.reads.length} read requests already pending`);
        else this.reads.push({ upId: m.readId, downId: 0n, offsetBytes: m.offsetBytes, lengthBytes: m.lengthBytes, sentDown: false });
      },
      onJoin: () => {
        // Flush ids belong to one upstream session (a restarted primary counts from 1 again): the
        // upstream re-sends every flush it still waits for, so answering an old one could complete
        // a new flush early.
        this.flushes = [];
        // Resync ids too are per upstream session; the upstream resends every region still dirty.
        // Regions already sent down become orphans (see ResyncItem.orphan); the rest are forgotten.
        this.resyncs = this.resyncs.filter((r) => r.sentDown && !r.downDone);
        for (const r of this.resyncs) r.orphan = true;
        this.reads = []; // the upstream asks again in its new session
      },
    });
  }

  private entry(ce: CacheEntry, replayed: boolean): REntry {
    return {
      ...storeEntry(ce, replayed), receivedMs: this.io.nowMs, sent: false,
      // Re-sent by the upstream after our restart, but the downstream already acked it (acks
      // only grow, so it would never be acked again).
      downAcked: ce.epoch === this.up.epoch && ce.seq <= this.downAcked,
    };
  }

  protected onEvent(ev: Exclude<CoreEvent, Completion>): void {
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': break;
      case 'storageRecovered': if (this.cfg.storage) storageRecovered(this.io, this.store, this.up, ev, this.cfg.volumeBytes, this.lim.regionBytes); break;
      case 'peerUp':
        // Upstream: wait for its `epoch`. Downstream: we speak first.
        if (ev.peer === this.cfg.downstream) this.downUp();
        break;
      case 'peerDown':
        this.up.peerDown(ev.peer);
        if (ev.peer === this.cfg.downstream) this.downDown();
        break;
      case 'peerHeard':
        if (ev.peer === this.cfg.downstream) this.onDownHeard(ev.epoch, ev.lastSeq, ev.rttMs);
        else this.up.peerHeard(ev.peer, ev.epoch);
        break;
      case 'recv':
        if (ev.peer === this.cfg.downstream) this.onRecvDown(ev.msg);
        else this.up.recv(ev.peer, ev.msg);
        break;
      case 'hostWrite':
      case 'hostFlush':
      case 'hostRead': this.refuseHost(ev.id, 'a relay'); break;
    }
  }

  private onStart(rec: Recovered): void {
    const cached = rec.cacheEntries;
    this.up.start(rec.meta);
    // With or without a copy: a journal that lost entries lost writes the downstream may never
    // have got (a cached relay acks them upstream before they go down), so their regions are
    // named upstream at every join until a resync through this relay covered them.
    startSuspect(this.io, this.store, rec, this.cfg.volumeBytes, this.lim.regionBytes);
    // Replay: every entry goes downstream again (duplicates are ignored there) and, with
    // storage, is performed again on the relay's own copy.
    this.up.replay(cached, (ce) => this.entry(ce, true));
    const stale = this.store.entries.filter((e) => e.epoch < this.up.epoch);
    for (const e of stale) e.downAcked = true; // see "Known limits": an older epoch cannot go down
    if (stale.length > 0) this.io.log('warn', 'relay_stale_epoch_entries', { entries: stale.length, fix: 'the promoted primary must resync this leg' });
    this.up.seqReserved += 1n;
    this.lifeOp = this.io.op(this);
    this.io.push({ type: 'metaPersist', opId: this.lifeOp, meta: { epoch: this.up.epoch, seqReserved: this.up.seqReserved } });
    this.io.log('info', 'relay_start', { epoch: this.up.epoch, replayed: cached.length, seqReceived: this.up.seqReceived, downstream: this.cfg.downstream, ackMode: this.cfg.ackMode, storage: this.cfg.storage });
  }

  /** The life counter is durable: downstream resync ids of this life are unique. */
  onDone(ev: Completion): void {
    assert(ev.type === 'metaPersisted' && ev.opId === this.lifeOp, () => `relay ${this.cfg.self}: ${ev.type} for unknown op ${ev.opId}`);
    this.lifeOp = undefined;
    this.life = this.up.seqReserved;
  }

  // -------------------------------------------------------------------------------------------
  // Upstream side (the relay is a mirror to it)

  private onFlush(peer: PeerId, flushId: bigint, upTo: Seq): void {
    if (this.flushes.some((f) => f.flushId === flushId)) return;
    if (this.flushes.length >= this.lim.flushesInflightMax * 4) {
      this.io.refuse(peer, 'window_exceeded', `${this.flushes.length} flushes already pending: upstream exceeded flushesInflightMax ${this.lim.flushesInflightMax}`);
      return;
    }
    const f: FlushReq = { flushId, upTo, sentDown: false, downDone: false, localDone: !this.cfg.storage, sense: undefined };
    this.flushes.push(f);
    if (this.cfg.storage) {
      this.store.flushWhenStored(this.up.epoch, upTo, (sense) => {
        f.localDone = true;
        if (sense !== undefined) f.sense ??= sense;
      });
    }
  }

  private onEpochAdopted(epoch: Epoch): void {
    const stale = this.store.entries.filter((e) => e.epoch < epoch && !e.downAcked);
    if (stale.length > 0) this.io.log('warn', 'relay_stale_epoch_entries', { entries: stale.length, fix: 'the promoted primary must resync this leg' });
    for (const e of this.store.entries) if (e.epoch < epoch) e.downAcked = true;
    this.downAcked = 0n;
    this.flushes = [];
    this.resyncs = [];
    // The downstream must hear the new epoch before anything of it.
    if (this.downLink !== 'down') this.downUp();
  }

  private readonly accept = (e: REntry): void => this.store.journal(e);

  // -------------------------------------------------------------------------------------------
  // Downstream side (the relay is a sender to it)

  private downUp(): void {
    this.downLink = 'joining';
    this.resetDownSession();
    this.io.send(this.cfg.downstream, { type: 'epoch', epoch: this.up.epoch });
  }

  private downDown(): void {
    if (this.downLink === 'down') return;
    this.downLink = 'down';
    this.resetDownSession();
    this.io.log('warn', 'relay_downstream_down', { peer: this.cfg.downstream, cached: this.store.entries.length, oldestUnacked: this.oldestUnacked()?.seq });
  }

  /** A new (or lost) downstream link: nothing counts as sent; a downstream forgets queued resync data when it rejoins. */
  private resetDownSession(): void {
    for (const e of this.store.entries) e.sent = false;
    for (const f of this.flushes) f.sentDown = false;
    this.resyncs = this.resyncs.filter((r) => !r.orphan);
    for (const r of this.resyncs) r.sentDown = false;
    for (const r of this.reads) r.sentDown = false;
  }

  private onDownHeard(epoch: Epoch, lastSeq: Seq, rttMs: number | undefined): void {
    if (epoch !== this.up.epoch) return; // a downstream of another epoch: its frames say so (onRecvDown)
    if (rttMs !== undefined) this.rttMs = rttMs;
    if (lastSeq > this.downAcked) this.onDownAck(lastSeq);
  }

  private onRecvDown(msg: PeerMsg): void {
    if (msg.type === 'fence' || msg.epoch > this.up.epoch) {
      this.io.log('error', 'relay_downstream_ahead', { peer: this.cfg.downstream, epoch: msg.epoch, ours: this.up.epoch, fix: 'the downstream follows a newer primary; this relay waits for its upstream to announce that epoch' });
      return;
    }
    if (msg.epoch < this.up.epoch) return; // an answer from before our epoch change
    switch (msg.type) {
      case 'resyncRequest': this.onDownJoin(msg.seqReceived); break;
      case 'ack': this.onDownAck(msg.seq); break;
      case 'writeStatus': {
        // The write is lost at the downstream: tell the upstream so it degrades this leg, and
        // name its range (issue 16 item 8: acked already under `cached`, it is in no bitmap).
        this.io.logLimited(`downstream_write_failed:${this.cfg.downstream}`, repeatLogIntervalMs, 'error', 'downstream_write_failed', { peer: this.cfg.downstream, seq: msg.seq, message: msg.sense.message });
        if (this.up.upstream !== undefined) this.io.send(this.up.upstream, msg);
        const e = this.store.entries.find((x) => x.epoch === msg.epoch && x.seq === msg.seq);
        if (e !== undefined) this.up.report([{ offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes }]);
        break;
      }
      case 'flushAck':
        // Downstream flush ids are the flush's seq: "everything up to seq is durable there" means
        // the same in every session of this epoch, so a late answer can never mislead.
        for (const f of this.flushes) {
          if (f.upTo !== msg.flushId) continue;
          f.downDone = true;
          if (msg.sense !== undefined) f.sense ??= msg.sense;
        }
        break;
      case 'readData': {
        const i = this.reads.findIndex((x) => x.sentDown && x.downId === msg.readId);
        if (i < 0) return;
        const r = this.reads.splice(i, 1)[0]!;
        if (this.up.upstream !== undefined) this.io.send(this.up.upstream, msg.sense === undefined ? { type: 'readData', epoch: this.up.epoch, readId: r.upId, payload: msg.payload } : { type: 'readData', epoch: this.up.epoch, readId: r.upId, payload: msg.payload, sense: msg.sense });
        break;
      }
      case 'resyncAck': {
        const r = this.resyncs.find((x) => x.sentDown && x.downId === msg.resyncId);
        if (r === undefined) return;
        r.downDone = true;
        if (msg.sense !== undefined) r.sense ??= msg.sense;
        // Without a copy here, the downstream holding the region is what makes it whole.
        else if (!this.cfg.storage) this.store.clearSuspect(this.store.regionsWithin(r.offsetBytes, r.payload.byteLength));
        break;
      }
      default:
        this.io.log('warn', 'unexpected_message', { peer: this.cfg.downstream, type: msg.type, fix: 'the downstream sent a message only an upstream site may send; check forward: in the cluster file' });
    }
  }

  private onDownJoin(seqReceived: Seq): void {
    if (this.downLink !== 'joining') {
      this.io.log('warn', 'unexpected_resync_request', { peer: this.cfg.downstream, link: this.downLink });
      return;
    }
    this.downLink = 'ready';
    // The origin's committed watermark goes down the chain (issue 16 item 4: the far end keeps the same tail).
    if (this.cfg.keepTail === true) this.io.send(this.cfg.downstream, { type: 'ack', epoch: this.up.epoch, seq: this.up.committed });
    // What the downstream already holds counts as sent (its ack follows); the rest is re-sent.
    let resend = 0;
    for (const e of this.store.entries) {
      if (e.epoch === this.up.epoch && e.seq <= seqReceived) e.sent = true;
      else if (!e.downAcked) resend++;
    }
    this.io.log('info', 'relay_downstream_joined', { peer: this.cfg.downstream, seqReceived, resend });
  }

  private onDownAck(seq: Seq): void {
    if (seq > this.downAcked) this.downAcked = seq;
    for (const e of this.store.entries) {
      if (e.epoch !== this.up.epoch) continue;
      if (e.seq > seq) break;
      e.downAcked = true;
    }
  }

  /** Claim 20 (c): forward cached entries in seq order, at most a window's worth un-acked. */
  private pumpDown(): void {
    if (this.downLink !== 'ready') return;
    let writes = 0;
    let bytes = 0;
    const entries = this.store.entries;
    for (const e of entries) {
      if (e.sent && !e.downAcked) {
        writes++;
        bytes += e.lengthBytes;
      }
    }
    for (const e of entries) {
      if (e.sent || e.downAcked || e.epoch !== this.up.epoch) continue;
      if (!e.cached) break; // 20 (a) before (c); and keep seq order on the link
      if (writes >= this.lim.inflightWritesMax || (writes > 0 && bytes + e.lengthBytes > this.lim.inflightBytesMax)) break;
      e.sent = true;
      writes++;
      bytes += e.lengthBytes;
      this.io.send(this.cfg.downstream, { type: 'write', epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload, payloadCrc: e.payloadCrc });
    }
    // Flushes follow every write they cover on the (FIFO) link.
    for (const f of this.flushes) {
      if (f.sentDown || f.downDone) continue;
      if (this.store.queuedEntries().some((w) => w.seq <= f.upTo)) continue;
      if (entries.some((e) => e.epoch === this.up.epoch && e.seq <= f.upTo && !e.sent && !e.downAcked)) continue;
      f.sentDown = true;
      this.io.send(this.cfg.downstream, { type: 'flush', epoch: this.up.epoch, flushId: f.upTo, seq: f.upTo });
    }
    // Reads passed down go once every write to their range the relay holds has been acked by the
    // downstream (then its storage holds them, and the read is ordered after them there).
    for (const r of this.reads) {
      if (r.sentDown || this.life === undefined) continue;
      const end = r.offsetBytes + r.lengthBytes;
      const pending = (e: REntry): boolean => !e.downAcked && e.offsetBytes < end && r.offsetBytes < e.offsetBytes + e.lengthBytes;
      if (entries.some(pending) || this.store.queuedEntries().some(pending)) continue;
      r.sentDown = true;
      if (r.downId === 0n) (r as { downId: bigint }).downId = (this.life << 32n) | this.downResyncNext++;
      this.io.send(this.cfg.downstream, { type: 'readRequest', epoch: this.up.epoch, readId: r.downId, offsetBytes: r.offsetBytes, lengthBytes: r.lengthBytes });
    }
    // Resync data only once every cached write went down (and with storage is durable here); the
    // ones kept as a failover's tail leave the cache first, so none can be re-sent or replayed
    // over it (the upstream resyncing this leg tracks what it owes).
    if (this.store.queuedCount > 0 || this.life === undefined || this.resyncs.length === 0) return;
    if (entries.length > 0) {
      if (!entries.every((e) => e.downAcked && e.cached && e.stored && e.durable)) return;
      this.store.dropAll();
    }
    let inflight = this.resyncs.filter((r) => r.sentDown && !r.downDone).length;
    for (const r of this.resyncs) {
      if (r.orphan) continue;
      if (!r.localIssued) {
        r.localIssued = true;
        this.store.writeRegion(r.offsetBytes, r.payload, (sense) => {
          r.localDone = true;
          if (sense !== undefined) r.sense ??= sense;
          else this.store.clearSuspect(this.store.regionsWithin(r.offsetBytes, r.payload.byteLength));
        });
      }
      if (r.sentDown) continue;
      // The downstream's resync queue holds at most this many regions from us (orphans included).
      if (inflight >= this.lim.resyncInflightRegionsMax) break;
      inflight++;
      r.sentDown = true;
      if (r.downId === 0n) (r as { downId: bigint }).downId = (this.life << 32n) | this.downResyncNext++;
      this.io.send(this.cfg.downstream, { type: 'resyncData', epoch: this.up.epoch, resyncId: r.downId, offsetBytes: r.offsetBytes, payload: r.payload });
    }
  }

  /**
   * Removes the flushes or resync regions that the downstream and (with storage) this relay both
   * completed, answering each upstream (an orphan region of an ended session is not answered).
   */
  private finish<T extends FlushReq | ResyncItem>(items: T[], answer: (t: T) => PeerMsg | undefined): void {
    for (let i = 0; i < items.length; ) {
      const t = items[i]!;
      if (!t.downDone || !t.localDone) {
        i++;
        continue;
      }
      items.splice(i, 1);
      const msg = answer(t);
      if (msg !== undefined && this.up.upstream !== undefined) this.io.send(this.up.upstream, msg);
    }
  }

  private readonly flushAnswer = (f: FlushReq): PeerMsg => (f.sense === undefined
    ? { type: 'flushAck', epoch: this.up.epoch, flushId: f.flushId }
    : { type: 'flushAck', epoch: this.up.epoch, flushId: f.flushId, sense: f.sense });

  private readonly resyncAnswer = (r: ResyncItem): PeerMsg | undefined => (r.orphan ? undefined : r.sense === undefined
    ? { type: 'resyncAck', epoch: this.up.epoch, resyncId: r.resyncId }
    : { type: 'resyncAck', epoch: this.up.epoch, resyncId: r.resyncId, sense: r.sense });

  private readonly ackReady = (e: StoreEntry): boolean => this.cfg.ackMode !== 'end-to-end' || (e as REntry).downAcked;
  /** Claim 21: an entry goes once the downstream acked it and it was acked upstream (and is durable here), and no failover may need it. */
  private readonly mayGo = (e: REntry): boolean => e.downAcked && this.up.mayGo(e);

  afterStep(): void {
    if (!this.started) return;
    this.store.admit(this.accept);
    this.up.advanceAck(this.store.entries, this.ackReady);
    this.pumpDown();
    this.finish(this.flushes, this.flushAnswer);
    this.store.maybeFlush(this.resyncs.length > 0);
    this.store.dropPrefix(this.mayGo);
    this.store.admit(this.accept);
    this.up.advanceAck(this.store.entries, this.ackReady);
    this.pumpDown();
    this.finish(this.resyncs, this.resyncAnswer);
  }

  private oldestUnacked(): REntry | undefined {
    return this.store.entries.find((e) => !e.downAcked);
  }

  heartbeat(): HeartbeatState {
    return { epoch: this.up.epoch, lastSeq: this.up.seqAcked };
  }

  /** Nothing held: every write went all the way down, no flush or resync pending. */
  quiescent(): boolean {
    return this.store.quiescent((e) => e.downAcked && this.up.kept(e)) && this.resyncs.length === 0 && this.flushes.length === 0;
  }

  status(): RelayStatus {
    let lagWrites = 0;
    let lagBytes = 0;
    for (const e of this.store.entries) {
      if (!e.downAcked) {
        lagWrites++;
        lagBytes += e.lengthBytes;
      }
    }
    for (const w of this.store.queuedEntries()) {
      lagWrites++;
      lagBytes += w.lengthBytes;
    }
    const oldest = this.oldestUnacked();
    return {
      role: 'relay', epoch: this.up.epoch, ackMode: this.cfg.ackMode, upstream: this.up.upstream, downstream: this.cfg.downstream, downstreamLink: this.downLink,
      seqReceived: this.up.seqReceived, seqAcked: this.up.seqAcked, seqAckedDownstream: this.downAcked,
      cacheEntries: this.store.entries.length, cacheBytes: this.store.cacheBytes, oldestUnackedSeq: oldest?.seq,
      lagWrites, lagBytes, lagMs: oldest === undefined ? 0 : this.io.nowMs - oldest.receivedMs,
      receiveQueued: this.store.queuedCount, resyncQueued: this.resyncs.length, rttMs: this.rttMs, lastHeardUpstreamMs: this.up.lastHeardMs,
    };
  }
}

// A remote mirror site's disk array controller (claims 11, 17, 2): pure state machine, the
// composition of the upstream side (src/core/upstream.ts: epoch, join, validation, cumulative
// ack) and the local store (src/core/local-store.ts: journal, ordered storage, durability).
//
//   recv write -> cacheAppend; once cached -> storageWrite (overlap-ordered, in seq order)
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

import { CoreIO, CoreRole } from './io.js';
import { LocalStore, storeEntry, type StoreEntry } from './local-store.js';
import { regionsOf } from './regions.js';
import { serveRead, startSuspect, storageRecovered } from './suspect.js';
import { heldKey, Upstream, type UpstreamConfig } from './upstream.js';
import { assert, type Completion, type CoreEvent, type Epoch, type HeartbeatState, type PeerId, type Recovered, type Seq } from './types.js';

export type MirrorConfig = UpstreamConfig;

interface ResyncItem {
  readonly peer: PeerId;
  /** The upstream session it arrived in (Upstream.session): never applied or answered in a later one. */
  readonly session: number;
  readonly resyncId: bigint;
  readonly offsetBytes: number;
  readonly payload: Uint8Array;
}

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

export class Mirror extends CoreRole {
  private readonly store: LocalStore<StoreEntry>;
  private readonly up: Upstream<StoreEntry>;
  private readonly resyncQueue: ResyncItem[] = [];

  /** `io`: a standby passes its own, so both of its inner cores share one op id space. */
  constructor(private readonly cfg: MirrorConfig, io?: CoreIO) {
    super(io ?? new CoreIO(cfg.self));
    // Claims 11, 17: into the cache, then onto storage (in overlap order).
    this.store = new LocalStore(this.io, { limits: cfg.limits, volumeBytes: cfg.volumeBytes, storage: true, performWhenCached: true });
    this.up = new Upstream(this.io, cfg, this.store, {
      entry: (w) => storeEntry(w, false),
      onFlush: (peer, f) => this.store.flushWhenStored(f.epoch, f.seq, (sense) => {
        this.io.send(peer, sense === undefined ? { type: 'flushAck', epoch: this.up.epoch, flushId: f.flushId } : { type: 'flushAck', epoch: this.up.epoch, flushId: f.flushId, sense });
      }),
      onResyncData: (peer, r) => {
        if (this.up.resyncRoom(peer, this.resyncQueue.length)) this.resyncQueue.push({ peer, session: this.up.session, resyncId: r.resyncId, offsetBytes: r.offsetBytes, payload: r.payload });
      },
      // Resync data of an ended session is dropped unapplied: the upstream resends what is still dirty.
      onJoin: () => {
        this.resyncQueue.length = 0;
      },
      onReadRequest: (peer, m) => serveRead(this.io, this.store, this.up, peer, m),
    });
  }

  protected onEvent(ev: Exclude<CoreEvent, Completion>): void {
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': break;
      case 'storageRecovered': storageRecovered(this.io, this.store, this.up, ev, this.cfg.volumeBytes, this.cfg.limits.regionBytes); break;
      case 'peerUp': break; // wait for the upstream's `epoch`
      case 'peerDown': this.up.peerDown(ev.peer); break;
      case 'peerHeard': this.up.peerHeard(ev.peer, ev.epoch); break;
      case 'recv': this.up.recv(ev.peer, ev.msg); break;
      case 'hostWrite':
      case 'hostFlush':
      case 'hostRead': this.refuseHost(ev.id, 'a mirror'); break;
    }
  }

  private onStart(rec: Recovered): void {
    this.up.start(rec.meta);
    startSuspect(this.io, this.store, rec, this.cfg.volumeBytes, this.cfg.limits.regionBytes);
    this.up.replay(rec.cacheEntries, (ce) => storeEntry(ce, true));
    this.up.recoverHeld(this.cfg.keepTail === true ? rec.dirtyRegions.get(heldKey) ?? [] : []);
    this.io.log('info', 'mirror_start', { epoch: this.up.epoch, replayed: rec.cacheEntries.length, seqReceived: this.up.seqReceived, suspectRegions: this.store.suspect.size });
  }

  private readonly accept = (e: StoreEntry): void => this.store.journal(e);

  /**
   * Resync data is applied only once every cached write is performed and durable, and those
   * entries then leave the cache first, so a later replay can never overwrite resync data with
   * older data. Resync only comes after the upstream degraded this site, which put every write
   * it had not seen acked into its bitmap: un-acked entries (failed ones too) are superseded.
   */
  private applyResync(): void {
    if (this.resyncQueue.length === 0 || this.store.queuedCount > 0) return;
    if (this.store.entries.some((e) => !e.cached || !e.stored || !e.durable)) return; // the store flushes first (urgent)
    // A failover's tail (keepTail): what the dropped entries and the resync data wrote may be
    // above the committed watermark; it stays part of the tail without its entries.
    // Recorded durably first (the entries are its only record); until then, this waits (the
    // bitmapSet's completion is a step, and its epilogue comes back here).
    const rb = this.cfg.limits.regionBytes;
    const held = this.up.holdForResync([
      ...this.store.entries.flatMap((e) => regionsOf(e.offsetBytes, e.lengthBytes, rb)),
      ...this.resyncQueue.flatMap((item) => regionsOf(item.offsetBytes, item.payload.byteLength, rb)),
    ]);
    if (!held) return;
    this.store.dropAll();
    this.up.failed = [];
    for (const item of this.resyncQueue.splice(0)) {
      this.store.writeRegion(item.offsetBytes, item.payload, (sense) => {
        // The region holds the upstream's content now: regions it covers are no longer suspect.
        if (sense === undefined) this.store.clearSuspect(this.store.regionsWithin(item.offsetBytes, item.payload.byteLength));
        if (item.session !== this.up.session) return;
        this.io.send(item.peer, sense === undefined
          ? { type: 'resyncAck', epoch: this.up.epoch, resyncId: item.resyncId }
          : { type: 'resyncAck', epoch: this.up.epoch, resyncId: item.resyncId, sense });
      });
    }
  }

  /** The per-step epilogue (a standby calls it after `handle`). */
  afterStep(): void {
    if (!this.started) return;
    this.store.admit(this.accept);
    this.up.advanceAck(this.store.entries);
    this.store.maybeFlush(this.resyncQueue.length > 0);
    this.store.dropPrefix((e) => this.up.mayGo(e));
    this.store.admit(this.accept);
    this.applyResync();
  }

  heartbeat(): HeartbeatState {
    return { epoch: this.up.epoch, lastSeq: this.up.seqAcked };
  }

  /** Ms since the upstream was last heard (or since this life began): the failover vote's question. */
  heardAgoMs(): number {
    return this.up.heardAgoMs();
  }

  /** Regions of every write this site holds in its journal or received (a promotion's divergent tail). */
  heldRegions(): number[] {
    const rb = this.cfg.limits.regionBytes;
    const out = new Set<number>();
    for (const e of [...this.store.entries, ...this.store.queuedEntries()]) for (const r of regionsOf(e.offsetBytes, e.lengthBytes, rb)) out.add(r);
    for (const r of this.up.resyncHeldRegions()) out.add(r);
    return [...out];
  }

  quiescent(): boolean {
    return this.store.quiescent(this.up.kept) && this.resyncQueue.length === 0;
  }

  /**
   * Everything received is settled on storage: performed and durable, or failed for good (a
   * failed write waits for a resync that a promotion will never get; its data is lost, which
   * only a forced promotion accepts). A standby takes over from this state (standby.ts step b).
   */
  settled(): boolean {
    return this.resyncQueue.length === 0 && this.store.settled();
  }

  /**
   * Once settled(), hands every remaining entry out of the cache (a cacheDrop). A promoted
   * standby must not leave old-epoch entries in its journal: a replay after a restart would
   * re-perform them over newer writes of its own epoch. The tail held without entries goes too
   * (its '@held' bits): the promotion owes it to every other site already.
   */
  releaseSettled(): void {
    assert(this.settled(), () => `mirror ${this.cfg.self}: releaseSettled() before settled()`);
    this.store.dropAll();
    this.up.failed = [];
    this.up.forgetHeld();
  }

  status(): MirrorStatus {
    return {
      role: 'mirror', epoch: this.up.epoch, upstream: this.up.upstream, seqReceived: this.up.seqReceived, seqAcked: this.up.seqAcked,
      cacheEntries: this.store.entries.length, cacheBytes: this.store.cacheBytes, resyncQueued: this.resyncQueue.length,
      lastHeardUpstreamMs: this.up.lastHeardMs, failedWrites: this.up.failed.length,
    };
  }
}

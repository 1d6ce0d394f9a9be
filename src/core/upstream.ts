// The side of a site that faces its upstream (the primary, or the relay before it): shared by
// the mirror and the relay, and by a following standby through its inner mirror. Pure.
//
//   epoch     the upstream announces `epoch` on every new link; an older one is fenced, a newer
//             one is persisted (metaPersist) before anything of it is acted on (fencing, claim 13)
//   join      the answer: resyncRequest{seqReceived}, every write that failed here (again, until a
//             resync supersedes it), and the cumulative ack so far
//   validate  every frame from the upstream is checked here, once: sender, epoch, ranges against
//             the volume, payload length. A frame that fails is refused: logged with the peer's
//             name and its link closed (closePeer); nothing of it reaches the local store
//   ack       cumulative, in seq order, of the prefix that is cached and performed (claims 10 iii,
//             11, 17); a write that failed here is reported per write (writeStatus) and stops the
//             ack below it (a status lost with a link reset is repeated at the next join)
//   liveness  when the upstream was last heard (frames of its epoch and its heartbeats), which a
//             standby's failover vote asks every site (claim 13 v)
//   tail      (issue 16 item 4) the upstream's own `ack` says which writes every in-sync site
//             acked (committed); the writes above it stay in the journal even once acked and
//             durable here, because a failover may have to reconcile them. When a newer epoch is
//             adopted, the writes of older epochs still held are named (as ranges) in the join's
//             resyncRequest, and let go once the new upstream says `inSync`: it accounted for them.
//
// The role around it decides what a valid write, flush, resync region or inSync does.

import type { CoreIO, OpOwner } from './io.js';
import { firstAbove, type LocalStore, type StoreEntry } from './local-store.js';
import { coarsenRanges, rangesOfRegions, regionsOf } from './regions.js';
import { assert, peerRangesMax, peerReadBytesMax, type ByteRange, type SenseInfo, type CacheEntry, type Completion, type CoreConfig, type Epoch, type Meta, type OpId, type PeerId, type PeerMsg, type Seq } from './types.js';

type Msg<T extends PeerMsg['type']> = Extract<PeerMsg, { type: T }>;

/** What the role does with the upstream's frames once they passed validation (a write goes to the local store). */
export interface UpstreamHooks<E extends StoreEntry> {
  /** The role's entry for a write received from the upstream (queued in the local store). */
  entry(w: CacheEntry): E;
  onFlush(peer: PeerId, f: Msg<'flush'>): void;
  onResyncData(peer: PeerId, r: Msg<'resyncData'>): void;
  onInSync?(peer: PeerId, m: Msg<'inSync'>): void;
  /** A newer epoch is durable here and about to be joined: forget the old epoch's sessions. */
  onEpochAdopted?(epoch: Epoch): void;
  /** A (re)join with `peer` begins: per-session state (flush and resync ids) starts over. */
  onJoin?(peer: PeerId): void;
  /** The upstream's committed watermark moved (a relay passes it on). */
  onCommitted?(seq: Seq): void;
  /** The upstream asks for bytes of this site's copy (issue 16 item 3: it repairs its own, or serves a host read). */
  onReadRequest?(peer: PeerId, m: Msg<'readRequest'>): void;
}

export interface UpstreamConfig extends CoreConfig {
  /**
   * The sites the cluster file allows to be this site's upstream (issue 17 item 3): the primary
   * and standby that list it, the relay that forwards to it. Undefined: any (tests).
   */
  readonly upstreams?: readonly PeerId[];
  /**
   * The cluster can fail over (it has a standby): keep the writes above the upstream's committed
   * watermark (zero after a start, until the upstream says more) even once acked and durable.
   */
  readonly keepTail?: boolean;
}

const u64Max = (1n << 64n) - 1n;

/**
 * keepTail: the bitmap key of the regions held as tail without journal entries (holdForResync),
 * so a restart still names them: a standby that forgot them would, once promoted, leave the
 * other mirrors' copies of those regions as they were (its tail is what it resyncs to them).
 */
export const heldKey = '@held';

/** The most epochs a site accepts to move forward at once (promotions it missed while down). */
export const epochStepMax = 1024n;

export class Upstream<E extends StoreEntry> implements OpOwner {
  epoch: Epoch = 0n;
  seqReserved: Seq = 0n;
  /** Highest seq of `epoch` received (writes arrive in seq order on the ordered link). */
  seqReceived: Seq = 0n;
  /** Highest seq of `epoch` acked upstream. */
  seqAcked: Seq = 0n;
  upstream: PeerId | undefined;
  lastHeardMs: number | undefined;
  /** Writes that failed here and await a resync; their writeStatus is repeated at every join. */
  failed: StoreEntry[] = [];
  /** The upstream's committed watermark in this epoch: every write up to it is acked by every in-sync site. */
  committed: Seq = 0n;
  /**
   * Counts joins: resync data and read requests belong to the session they arrived in, and an
   * answer is never sent into a later one (a restarted upstream numbers its ids from 1 again, so
   * a late answer could match a new request: issue 16 item 8).
   */
  session = 0;

  /** Writes of older epochs held here have been accounted for by this epoch's upstream (it said inSync). */
  private tailAccounted = true;
  /**
   * keepTail: regions whose content here may hold writes above the committed watermark with no
   * journal entry left to show it: the tail entries a resync dropped, and the regions resync
   * data wrote (issue 16 item 4; they are part of a promotion's divergent tail like the
   * journal's). Each is released once the committed watermark passes the upstream's last seq
   * at the `inSync` that ended the resync (undefined: that inSync has not come yet). Recorded
   * under `heldKey` before the entries are dropped; a restart finds them there and names them
   * at the join like an older epoch's tail (recoverHeld), until the upstream says inSync.
   */
  private readonly resyncHeld = new Map<number, Seq | undefined>();
  /** The same, from an older epoch: named at the join like its journal tail, until its upstream says inSync. */
  private readonly resyncHeldOlder = new Set<number>();
  /** Regions recorded under `heldKey`: durably ('set') or on the way (the bitmapSet's op). */
  private readonly heldRecorded = new Map<number, OpId | 'set'>();
  /** Completes the bitmapSet ops of `heldKey` (this class's own onDone takes the meta record's). */
  private readonly heldOwner: OpOwner = {
    onDone: (ev) => {
      assert(ev.type === 'bitmapPersisted', () => `${this.io.self}: ${ev.type} for a held-regions op ${ev.opId}`);
      for (const [r, u] of this.heldRecorded) if (u === ev.opId) this.heldRecorded.set(r, 'set');
    },
  };
  private startMs = 0;
  private pendingEpoch: { epoch: Epoch; opId: OpId; peer: PeerId } | undefined;

  constructor(
    private readonly io: CoreIO,
    private readonly cfg: UpstreamConfig,
    private readonly store: LocalStore<E>,
    private readonly hooks: UpstreamHooks<E>,
  ) {}

  start(meta: Meta): void {
    this.startMs = this.io.nowMs;
    this.epoch = meta.epoch;
    this.seqReserved = meta.seqReserved;
  }

  /**
   * Claim 17: the journal's entries from before the restart are performed again, before anyone
   * is served; what they hold of the current epoch is what this site says it received.
   */
  replay(cached: readonly CacheEntry[], entry: (ce: CacheEntry) => E): void {
    for (const ce of cached) {
      const e = entry(ce);
      this.store.adopt(e);
      this.store.perform(e);
      if (e.epoch === this.epoch && e.seq > this.seqReceived) this.seqReceived = e.seq;
    }
    // Writes of an older epoch (this site adopted a newer one, or was fenced as its primary):
    // the upstream of this epoch must reconcile them, so they are named at the next join.
    if (this.store.entries.some((e) => e.epoch < this.epoch)) this.tailAccounted = false;
  }

  peerDown(peer: PeerId): void {
    if (peer === this.upstream) this.upstream = undefined;
  }

  /** The link heard `peer`'s heartbeat: the upstream of our epoch is alive. */
  peerHeard(peer: PeerId, epoch: Epoch): void {
    if (peer === this.upstream && epoch === this.epoch) this.lastHeardMs = this.io.nowMs;
  }

  /**
   * Ms since the upstream was last heard; never in this life: ms since this life began (all this
   * site can vouch for). A site that just restarted must not count as "silent for ages" in a
   * failover vote (issue 16 item 8): a primary it has not yet reached may be alive.
   */
  heardAgoMs(): number {
    return this.io.nowMs - (this.lastHeardMs ?? this.startMs);
  }

  /** A frame from `peer`. Returns false when it was not for this side (the caller may route it elsewhere). */
  recv(peer: PeerId, msg: PeerMsg): void {
    if (msg.type === 'lastHeardQuery') {
      // Failover detection (claim 13 v): read-only, so answered whatever the asker's epoch.
      this.io.send(peer, { type: 'lastHeardAnswer', epoch: this.epoch, queryId: msg.queryId, heardAgoMs: this.heardAgoMs(), seqReceived: this.seqReceived });
      return;
    }
    if (msg.type === 'epoch') {
      this.onEpoch(peer, msg.epoch);
      return;
    }
    if (msg.epoch < this.epoch) {
      this.io.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.io.self} is at epoch ${this.epoch}; frames of epoch ${msg.epoch} are refused` });
      this.io.log('warn', 'fenced_stale_sender', { peer, type: msg.type, epoch: msg.epoch, ours: this.epoch });
      return;
    }
    if (peer !== this.upstream || msg.epoch > this.epoch) {
      this.io.log('warn', 'unexpected_sender', { peer, type: msg.type, epoch: msg.epoch, upstream: this.upstream, fix: 'a peer must announce its epoch before sending' });
      return;
    }
    this.lastHeardMs = this.io.nowMs;
    switch (msg.type) {
      case 'write': this.onWrite(peer, msg); break;
      case 'flush': this.hooks.onFlush(peer, msg); break;
      case 'resyncData': {
        const bad = this.badRange(msg.offsetBytes, msg.payload.byteLength, msg.payload.byteLength);
        if (bad !== undefined) this.io.refuse(peer, 'bad_frame', `resync data #${msg.resyncId}: ${bad}`);
        else this.hooks.onResyncData(peer, msg);
        break;
      }
      case 'inSync':
        if (!this.tailAccounted) {
          this.tailAccounted = true;
          const older = [...this.resyncHeldOlder];
          this.resyncHeldOlder.clear();
          this.releaseHeld(older);
          this.io.log('info', 'tail_accounted', { peer, epoch: this.epoch });
        }
        for (const [r, at] of this.resyncHeld) if (at === undefined) this.resyncHeld.set(r, msg.seq);
        this.hooks.onInSync?.(peer, msg);
        break;
      case 'ack':
        // The upstream's committed watermark (issue 16 item 4): writes up to it may go.
        if (msg.seq > this.committed) this.committed = msg.seq;
        if (this.resyncHeld.size > 0) {
          const released: number[] = [];
          for (const [r, at] of this.resyncHeld) {
            if (at === undefined || at > this.committed) continue;
            this.resyncHeld.delete(r);
            released.push(r);
          }
          this.releaseHeld(released);
        }
        this.hooks.onCommitted?.(msg.seq);
        break;
      case 'readRequest': {
        const bad = msg.lengthBytes > peerReadBytesMax ? `read of ${msg.lengthBytes} bytes exceeds ${peerReadBytesMax}` : this.badRange(msg.offsetBytes, msg.lengthBytes, msg.lengthBytes);
        if (bad !== undefined) this.io.refuse(peer, 'bad_frame', `read request #${msg.readId}: ${bad}`);
        else if (this.hooks.onReadRequest === undefined) this.io.send(peer, { type: 'readData', epoch: this.epoch, readId: msg.readId, payload: new Uint8Array(0), sense: noCopy(this.io.self) });
        else this.hooks.onReadRequest(peer, msg);
        break;
      }
      default:
        this.io.log('warn', 'unexpected_message', { peer, type: msg.type, fix: 'only an upstream site sends this to a mirror' });
    }
  }

  private onWrite(peer: PeerId, w: Msg<'write'>): void {
    if (w.seq <= this.seqReceived) {
      this.io.log('debug', 'duplicate_write_ignored', { seq: w.seq, seqReceived: this.seqReceived });
      return;
    }
    const bad = w.seq === u64Max ? 'seq 2^64-1 leaves no room for a next write' : this.badRange(w.offsetBytes, w.lengthBytes, w.payload.byteLength);
    if (bad !== undefined) {
      this.io.refuse(peer, 'bad_frame', `write ${w.seq}: ${bad}`);
      return;
    }
    const lim = this.cfg.limits;
    if (this.store.queuedCount >= lim.mirrorReceiveQueueMax) {
      this.io.refuse(peer, 'window_exceeded', `${this.store.queuedCount} writes already wait for cache space (mirrorReceiveQueueMax ${lim.mirrorReceiveQueueMax}): upstream exceeded its window`);
      return;
    }
    this.seqReceived = w.seq;
    this.store.enqueue(this.hooks.entry(w));
  }

  /** Whether one more resync region fits (`queued` of them wait); refuses the upstream otherwise. */
  resyncRoom(peer: PeerId, queued: number): boolean {
    const max = this.cfg.limits.mirrorResyncQueueMax;
    if (queued < max) return true;
    this.io.refuse(peer, 'window_exceeded', `${queued} resync regions already queued (mirrorResyncQueueMax ${max}): upstream exceeded resyncInflightRegionsMax`);
    return false;
  }

  /** Why a peer's range is not a whole-block range of this volume (undefined: it is). */
  badRange(offsetBytes: number, lengthBytes: number, payloadBytes: number): string | undefined {
    const b = this.cfg.blockBytes;
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes % b !== 0 || lengthBytes % b !== 0 || lengthBytes <= 0) return `range ${offsetBytes}+${lengthBytes} is not whole ${b}-byte blocks`;
    if (offsetBytes + lengthBytes > this.cfg.volumeBytes) return `range ${offsetBytes}+${lengthBytes} runs past the ${this.cfg.volumeBytes}-byte volume`;
    if (payloadBytes !== lengthBytes) return `payload is ${payloadBytes} bytes, header says ${lengthBytes}`;
    return undefined;
  }

  private onEpoch(peer: PeerId, epoch: Epoch): void {
    // Role authorisation (issue 17 item 3): only a configured upstream announces epochs here, and
    // an epoch moves forward by promotions, a few at a time, never to the end of the range.
    const ups = this.cfg.upstreams;
    if (ups !== undefined && !ups.includes(peer)) {
      this.io.refuse(peer, 'not_upstream', `${peer} announced epoch ${epoch}, but the cluster file makes only ${ups.join(', ') || 'no site'} an upstream of ${this.io.self}`);
      return;
    }
    if (epoch > this.epoch + epochStepMax) {
      this.io.refuse(peer, 'bad_frame', `${peer} announced epoch ${epoch}, ${epoch - this.epoch} past this site's ${this.epoch}: more than ${epochStepMax} promotions at once is not a failover`);
      return;
    }
    if (epoch < this.epoch) {
      this.io.send(peer, { type: 'fence', epoch: this.epoch, reason: `${this.io.self} is at epoch ${this.epoch}; ${peer} speaks for ${epoch}` });
      this.io.log('warn', 'fenced_stale_upstream', { peer, epoch, ours: this.epoch });
      return;
    }
    if (epoch > this.epoch) {
      // Fencing: the new epoch is durable before we act on it.
      if (this.pendingEpoch !== undefined && this.pendingEpoch.epoch >= epoch) return;
      const opId = this.io.op(this);
      this.pendingEpoch = { epoch, opId, peer };
      this.io.push({ type: 'metaPersist', opId, meta: { epoch, seqReserved: this.seqReserved } });
      return;
    }
    this.join(peer);
  }

  onDone(ev: Completion): void {
    const p = this.pendingEpoch;
    assert(ev.type === 'metaPersisted' && p !== undefined && p.opId === ev.opId, () => `${this.io.self}: ${ev.type} for unknown op ${ev.opId}`);
    this.pendingEpoch = undefined;
    this.io.log('info', 'epoch_adopted', { epoch: p.epoch, previous: this.epoch, upstream: p.peer });
    this.epoch = p.epoch;
    this.seqReceived = 0n;
    this.seqAcked = 0n;
    this.committed = 0n;
    this.failed = []; // writes of the old epoch: the new primary resyncs what they touched
    for (const r of this.resyncHeld.keys()) this.resyncHeldOlder.add(r);
    this.resyncHeld.clear();
    this.tailAccounted = !this.store.entries.some((e) => e.epoch < p.epoch) && this.resyncHeldOlder.size === 0;
    this.hooks.onEpochAdopted?.(p.epoch);
    this.join(p.peer);
  }

  private join(peer: PeerId): void {
    this.session++;
    this.hooks.onJoin?.(peer);
    this.upstream = peer;
    this.lastHeardMs = this.io.nowMs;
    // What this site knows it may not hold: an older epoch's tail, and its suspect regions
    // (lost journal entries, storage that missed writes): the upstream resyncs them.
    const ranges = coarsenRanges(rangesOfRegions([...this.tailRegions(), ...this.store.suspect.keys()], this.cfg.volumeBytes, this.cfg.limits.regionBytes), peerRangesMax);
    this.io.send(peer, ranges.length > 0 ? { type: 'resyncRequest', epoch: this.epoch, seqReceived: this.seqReceived, ranges } : { type: 'resyncRequest', epoch: this.epoch, seqReceived: this.seqReceived });
    for (const e of this.failed) this.io.send(peer, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense! });
    if (this.seqAcked > 0n) this.io.send(peer, { type: 'ack', epoch: this.epoch, seq: this.seqAcked });
  }

  /**
   * Mid-session: this site found `ranges` of its copy may be wrong (its storage came back after
   * missing writes, or a write it acked could not be stored): the upstream resyncs them. With no
   * upstream now, the next join names them (they are suspect in the store).
   */
  report(ranges: readonly ByteRange[]): void {
    if (this.upstream === undefined || ranges.length === 0) return;
    this.io.send(this.upstream, { type: 'resyncRequest', epoch: this.epoch, seqReceived: this.seqReceived, ranges: coarsenRanges(ranges, peerRangesMax) });
  }

  /**
   * Cumulative ack of the prefix of `entries` that is cached and performed (and, for a relay in
   * end-to-end mode, whatever else `ready` asks). A write that failed here is reported once
   * (writeStatus, so the upstream degrades this site) and passed only once its regions are
   * durably suspect here (they are named at every join until a resync repairs them): the ack
   * means "executed, or reported failed and owed by a resync", and a site behind a relay is not
   * pinned behind its failure (issue 16 item 8).
   */
  advanceAck(entries: readonly StoreEntry[], ready?: (e: StoreEntry) => boolean): void {
    let ack = this.seqAcked;
    // From the first entry past the ack (entries are in (epoch, seq) order, LocalStore.track):
    // a scan from the head cost O(journal) per received chunk, and the journal holds every
    // write until the next storage flush (thousands at 4 KiB).
    for (let i = firstAbove(entries, this.epoch, this.seqAcked); i < entries.length; i++) {
      const e = entries[i]!;
      if (e.epoch !== this.epoch || e.seq <= this.seqAcked) continue;
      if (!e.cached || !e.stored) break;
      if (e.sense !== undefined) {
        if (!this.failed.includes(e)) {
          this.failed.push(e);
          if (this.upstream !== undefined) this.io.send(this.upstream, { type: 'writeStatus', epoch: e.epoch, seq: e.seq, sense: e.sense });
        }
        if (!this.store.suspectRecorded(e)) break;
      }
      if (ready !== undefined && !ready(e)) break;
      ack = e.seq;
    }
    if (ack === this.seqAcked) return;
    this.seqAcked = ack;
    if (this.upstream !== undefined) this.io.send(this.upstream, { type: 'ack', epoch: this.epoch, seq: ack });
  }

  /** Whether `e` has been acked upstream (or belongs to an older epoch, which no one will ack). */
  acked(e: StoreEntry): boolean {
    return e.epoch < this.epoch || e.seq <= this.seqAcked;
  }

  /** Whether `e` must stay in the journal: above the committed watermark, or of an older epoch not yet accounted for. */
  retained(e: StoreEntry): boolean {
    return e.epoch < this.epoch ? !this.tailAccounted : this.cfg.keepTail === true && e.seq > this.committed;
  }

  /** Acked upstream, and kept only as part of a tail a failover may have to reconcile. */
  readonly kept = (e: StoreEntry): boolean => this.acked(e) && this.retained(e);

  /** Acked upstream and no longer part of a tail a failover may have to reconcile. */
  mayGo(e: StoreEntry): boolean {
    return this.acked(e) && !this.retained(e);
  }

  /**
   * keepTail: a resync is about to drop the journal's entries and write the upstream's copy in
   * `regions`: both may hold writes above the committed watermark. True when it may go ahead:
   * the regions are held, and recorded durably under `heldKey` (the dropped entries were the
   * only record of them). False: the record is on its way; ask again once it completed.
   */
  holdForResync(regions: Iterable<number>): boolean {
    if (this.cfg.keepTail !== true) return true;
    const all = [...new Set(regions)];
    const fresh = all.filter((r) => !this.heldRecorded.has(r));
    if (fresh.length > 0) {
      const opId = this.io.op(this.heldOwner);
      for (const r of fresh) this.heldRecorded.set(r, opId);
      this.io.push({ type: 'bitmapSet', opId, peer: heldKey, regions: fresh.sort((a, b) => a - b) });
    }
    if (all.some((r) => this.heldRecorded.get(r) !== 'set')) return false;
    for (const r of all) this.resyncHeld.set(r, undefined);
    return true;
  }

  /** At start: the regions recorded under `heldKey` are a tail of an unknown epoch, named at the join until the upstream says inSync. */
  recoverHeld(regions: readonly number[]): void {
    if (regions.length === 0) return;
    for (const r of regions) {
      this.resyncHeldOlder.add(r);
      this.heldRecorded.set(r, 'set');
    }
    this.tailAccounted = false;
  }

  /**
   * A promotion recorded this site's tail as every other site's dirty regions, durably, before
   * the new epoch (standby.ts): the tail is owed there now, and the `heldKey` record has nothing
   * left to say. Its bits go (not durably: a stale bit costs one resync if this site follows
   * again). A record still on its way stays, with the same cost.
   */
  forgetHeld(): void {
    this.resyncHeld.clear();
    this.resyncHeldOlder.clear();
    this.releaseHeld([...this.heldRecorded.keys()]);
  }

  /** Regions no longer held in either set: their `heldKey` bits go (not durably: a stale bit costs a resync of that region at the next join). */
  private releaseHeld(regions: Iterable<number>): void {
    const gone: number[] = [];
    for (const r of regions) {
      if (this.resyncHeld.has(r) || this.resyncHeldOlder.has(r) || this.heldRecorded.get(r) !== 'set') continue;
      this.heldRecorded.delete(r);
      gone.push(r);
    }
    if (gone.length > 0) this.io.push({ type: 'bitmapClear', peer: heldKey, regions: gone.sort((a, b) => a - b) });
  }

  /** Regions held as tail without journal entries (holdForResync), this epoch's and older ones. */
  resyncHeldRegions(): number[] {
    return [...new Set([...this.resyncHeld.keys(), ...this.resyncHeldOlder])];
  }

  /** The regions of the writes of older epochs held here: what a new upstream must reconcile. */
  tailRegions(): number[] {
    if (this.tailAccounted) return [];
    const regions: number[] = [...this.resyncHeldOlder];
    const rb = this.cfg.limits.regionBytes;
    for (const e of this.store.entries) if (e.epoch < this.epoch) regions.push(...regionsOf(e.offsetBytes, e.lengthBytes, rb));
    return regions;
  }
}

/** The answer of a site that keeps no copy of its own (a cache-only relay) to a read request. */
function noCopy(self: PeerId): SenseInfo {
  return { key: 0x5, asc: 0x20, ascq: 0, message: `${self} keeps no copy of the volume (a cache-only relay)` };
}


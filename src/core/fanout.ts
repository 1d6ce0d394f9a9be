// The primary's side towards its mirrors (claims 10, 12): one state per mirror, and everything
// that is decided per mirror. Pure; part of the Primary (src/core/primary.ts), which owns the
// host side and the journal entries and hands each cached entry to `fanOut`. (It runs past 450
// lines: every per-mirror decision, link, ack, degrade, dirty bits and their standby copies,
// resync and block-level repair sources, lives here on purpose, so one file answers "what does
// the primary owe mirror M".)
//
//   link      peerUp -> announce `epoch`; the mirror's resyncRequest{seqReceived} is the join:
//             an in-sync mirror gets, in seq order, what it has not received (a reset lost it),
//             and `inSync`; a mirror that is not in sync is resynced first
//   ack       a mirror's cumulative ack removes it from the waiting set of every write up to it
//             (claim 10 iii); the host ack follows when no one is left (the primary decides)
//   loss      `block` keeps host acks waiting for the mirror; `degrade` (default) marks it
//             degraded after Limits.mirrorLossGraceMs, and every write it misses goes into its
//             persistent dirty bitmap (bitmapSet is durable before the host ack that depends on
//             it). A storage failure on the mirror degrades it under either policy. The standby
//             (PrimaryConfig.standby) is never degraded for being unreachable: every host-acked
//             write is on it, which is what makes its promotion lose nothing (claim 13).
//   resync    when a degraded mirror is back, its dirty regions are read from local storage and
//             sent (RESYNC_DATA / RESYNC_ACK), rate-limited by a token budget refilled per tick;
//             then it is in sync again and told so (`inSync`, a standby's promotion guard).
//
// Resync correctness: a resync read of region R is ordered in the local store's overlap queue
// with local writes, so it sees exactly the writes queued before it. A write that lands in R
// while R is being resynced re-dirties R ("touched"), and R is sent again. While a mirror is not
// in sync it gets no writes at all, only resync data, so the two streams never interleave.

import { backoffMs, repeatLogIntervalMs, type CoreIO, type OpOwner } from './io.js';
import { firstAbove, type LocalStore, type StoreEntry } from './local-store.js';
import { badRanges, blocksIn, MissedBlocks, rangesOfRegions, regionCount, regionRange, regionsOf, regionsOfRanges } from './regions.js';
import { assert, peerRangesMax, type ByteRange, type Completion, type Epoch, type HostOpId, type Limits, type MirrorLossPolicy, type OpId, type PeerId, type PeerMsg, type SenseInfo, type Seq } from './types.js';

/** A write as the primary tracks it: the local store's entry plus who it still waits for. */
export interface PrimaryEntry extends StoreEntry {
  readonly hostId: HostOpId | undefined;
  /**
   * In-sync mirrors this write was (or will be, after a reconnect) sent to and not yet acked by,
   * as a mask of their MirrorState.bit: no Set per host write on the hot path (issue 18).
   */
  waitingMask: number;
  /**
   * bitmapSet ops that must be durable before the host ack (degraded mirrors miss this write):
   * a count, the ops' waiter lists (Fanout.bitmapWaiters) say which; no Set per host write.
   */
  bitmapWaits: number;
  /** The standby's copies of those bits that must be durable there too (issue 16 item 4); a count, as above (copy.waiters). */
  copyWaits: number;
  /** Completed: acked to the host (or failed to it). */
  done: boolean;
  /** Mirrors that acked it (a write whose local storage write failed is acked to the host only if one did). */
  ackedBy: number;
  /** A mirror failed it under `block`: the host gets this error. */
  mirrorSense?: SenseInfo;
  /** Mirrors that missed it (their dirty bitmaps name its regions). */
  missedBy?: PeerId[];
}

/** A host FLUSH as the fan-out sees it: which mirrors still owe their flushAck. */
export interface FanoutFlush {
  readonly flushId: bigint;
  readonly upTo: Seq;
  stage: 'waitWrites' | 'flushing';
  readonly waitingMirrors: Set<PeerId>;
  sense: SenseInfo | undefined;
  /** Mirrors that answered it OK (flushAck without an error): its writes are durable there. */
  answered?: Set<PeerId>;
}

/** What the fan-out needs from the primary around it. */
export interface FanoutHost {
  readonly epoch: Epoch;
  /** The last seq assigned (what an in-sync mirror is told it holds). */
  lastSeq(): Seq;
  readonly flushes: readonly FanoutFlush[];
  /** `e` lost a reason to wait (a mirror acked or was degraded, a bitmap became durable). */
  tryComplete(e: PrimaryEntry): void;
  /** A mirror's newer epoch: this primary is stale. */
  /** A peer speaks of a newer epoch (fences the primary, or is refused if no promotion moves that far). */
  newerEpoch(epoch: Epoch, peer: PeerId, what: string): void;
  /** A mirror joined at our epoch: it confirms our authority (issue 16 item 1). */
  joined(peer: PeerId): void;
}

export interface FanoutConfig {
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly mirrors: readonly PeerId[];
  readonly onMirrorLoss: MirrorLossPolicy;
  readonly standby?: PeerId;
  /**
   * When the standby's protection starts (it is never degraded for being unreachable from then
   * on): `start` (default) at once, unless its bitmap says it is owed regions (then once it is
   * in sync); `inSync` only once it is in sync in this life (a promoted primary: its standby is
   * the old primary, likely dead, and must not block host writes until it is back and whole).
   */
  readonly standbyArm?: 'start' | 'inSync';
  /**
   * The cluster can fail over (it has a standby): mirrors are told the committed watermark
   * (at their join and when it moves, per tick) and keep the tail above it (issue 16 item 4).
   */
  readonly failover?: boolean;
  readonly limits: Limits;
}

export type MirrorSync = 'inSync' | 'degraded' | 'resyncing';
export type LinkState = 'down' | 'joining' | 'ready';

export interface MirrorState {
  readonly peer: PeerId;
  /** This mirror's bit in PrimaryEntry.waitingMask (one of 31: config's fanoutMirrorsMax). */
  readonly bit: number;
  link: LinkState;
  sync: MirrorSync;
  downSinceMs: number;
  degradedAtMs: number;
  /** region -> pending bitmapSet op, or 'set' once durable. */
  readonly dirty: Map<number, OpId | 'set'>;
  /**
   * For dirty regions made dirty by writes it missed in this life: which blocks (the primary's
   * repair of its own copy may read the other blocks from it, src/core/repair.ts). A dirty
   * region without an entry: unknown, every block.
   */
  readonly missed: Map<number, MissedBlocks>;
  /** resyncId -> region being read / sent / awaiting its ack. */
  readonly inflight: Map<bigint, { region: number; touched: boolean }>;
  tokensBytes: number;
  lastRefillMs: number;
  regionsDone: number;
  /** Last 10% step of resync progress that was logged. */
  progressDecile: number;
  /** Resync bytes this mirror acked in this life (status, metrics), and in the current resync since `resyncStartMs`. */
  resyncedBytes: number;
  resyncRunBytes: number;
  resyncStartMs: number;
  /** Consecutive failed resync regions (its storage or ours failed), and when resync may go on (backoff, capped). */
  resyncFailures: number;
  resyncRetryAtMs: number;
  /** Highest seq the mirror acked (its acks and heartbeats), for status. */
  seqAcked: Seq;
  /** Highest seq whose ack was applied to the waiting entries (the O(acked) cursor of onAck). */
  ackCursor: Seq;
  rttMs: number | undefined;
}

/** Backoff of a mirror's resync after a failed region: doubling from the min to the max. */
export const resyncRetryMsMin = 100;
export const resyncRetryMsMax = 10_000;

export class Fanout implements OpOwner {
  readonly mirrors = new Map<PeerId, MirrorState>();
  private readonly lim: Limits;
  private readonly bitmapWaiters = new Map<OpId, PrimaryEntry[]>();
  private resyncIdNext = 1n;
  /** Dirty bits sent to the standby and not yet confirmed durable there: resent when it rejoins. */
  private readonly copies = new Map<bigint, { readonly peer: PeerId; readonly ranges: ByteRange[]; readonly waiters: PrimaryEntry[] }>();
  private copyIdNext = 1n;
  /** The committed watermark last sent to the mirrors. */
  private committedSent: Seq = 0n;
  /** The standby is protected (never degraded for being unreachable): see FanoutConfig.standbyArm. */
  private standbyArmed = false;
  /** Every other mirror's dirty bits were copied to the standby in this life (sayInSync). */
  private standbyCopiedAll = false;

  constructor(
    private readonly io: CoreIO,
    private readonly cfg: FanoutConfig,
    private readonly store: LocalStore<PrimaryEntry>,
    private readonly host: FanoutHost,
  ) {
    this.lim = cfg.limits;
    assert(cfg.mirrors.length <= 31, `fan-out to ${cfg.mirrors.length} mirrors: at most 31 (one bit each in waitingMask)`);
    for (const [i, peer] of cfg.mirrors.entries()) {
      this.mirrors.set(peer, {
        peer, bit: 1 << i, link: 'down', sync: 'inSync', downSinceMs: 0, degradedAtMs: 0, dirty: new Map(), missed: new Map(), inflight: new Map(),
        tokensBytes: 0, lastRefillMs: 0, regionsDone: 0, progressDecile: 0, resyncedBytes: 0, resyncRunBytes: 0, resyncStartMs: 0, resyncFailures: 0, resyncRetryAtMs: 0, seqAcked: 0n, ackCursor: 0n, rttMs: undefined,
      });
    }
  }

  /** The persisted bitmaps: a mirror with dirty regions starts degraded. */
  start(dirtyRegions: ReadonlyMap<PeerId, readonly number[]>): void {
    for (const [peer, regions] of dirtyRegions) {
      const m = this.mirrors.get(peer);
      if (m === undefined) {
        // The site's own bitmaps ('@local' suspect regions, '@lost' journal losses) are the repair's.
        if (peer.startsWith('@')) continue;
        this.io.log('warn', 'bitmap_unknown_mirror', { peer, regions: regions.length, fix: 'the mirror was removed from the cluster file; its bitmap is ignored' });
        continue;
      }
      for (const r of regions) m.dirty.set(r, 'set');
      if (m.dirty.size > 0) m.sync = 'degraded';
    }
    for (const m of this.mirrors.values()) m.downSinceMs = this.io.nowMs;
    const sb = this.cfg.standby === undefined ? undefined : this.mirrors.get(this.cfg.standby);
    this.standbyArmed = sb !== undefined && this.cfg.standbyArm !== 'inSync' && sb.dirty.size === 0;
  }

  /** Claim 10 (ii): to every in-sync mirror at once; a mirror not in sync gets the regions dirtied. */
  fanOut(e: PrimaryEntry): void {
    for (const m of this.mirrors.values()) {
      if (m.sync === 'inSync') {
        e.waitingMask |= m.bit;
        if (m.link === 'ready') this.io.send(m.peer, writeMsg(e));
      } else {
        this.dirtyFor(m, e);
      }
    }
  }

  /** A write of an older epoch replayed at start: its seq means nothing to mirrors now; dirty it for every mirror. */
  dirtyForAll(e: PrimaryEntry): void {
    for (const m of this.mirrors.values()) {
      if (m.sync === 'inSync') m.sync = 'degraded';
      this.dirtyFor(m, e);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Links and messages

  peerUp(peer: PeerId): void {
    const m = this.mirrors.get(peer);
    if (m === undefined) return; // a witness: the link carries heartbeats only
    m.link = 'joining';
    this.io.send(peer, { type: 'epoch', epoch: this.host.epoch });
  }

  peerDown(peer: PeerId): void {
    const m = this.mirrors.get(peer);
    if (m === undefined || m.link === 'down') return;
    m.link = 'down';
    m.downSinceMs = this.io.nowMs;
    // Resync regions in flight stay dirty; reads still queued locally finish and are discarded.
    m.inflight.clear();
    if (m.sync === 'resyncing') m.sync = 'degraded';
    this.io.log('warn', 'mirror_link_down', { peer, sync: m.sync, policy: this.cfg.onMirrorLoss });
  }

  peerHeard(peer: PeerId, epoch: Epoch, lastSeq: Seq, rttMs: number | undefined): void {
    const m = this.mirrors.get(peer);
    if (m === undefined) return;
    if (epoch > this.host.epoch) {
      this.host.newerEpoch(epoch, peer, 'heartbeat');
      return;
    }
    if (epoch < this.host.epoch) return; // a mirror not yet at our epoch: nothing it says applies
    if (rttMs !== undefined) m.rttMs = rttMs;
    // A heartbeat's last seq is information only, and only up to what was assigned.
    if (lastSeq > m.seqAcked && lastSeq <= this.host.lastSeq()) m.seqAcked = lastSeq;
  }

  /** A frame of our epoch from a mirror (the primary checked the epoch). */
  recv(peer: PeerId, msg: PeerMsg): void {
    const m = this.mirrors.get(peer);
    if (m === undefined) {
      this.io.log('warn', 'unknown_peer', { peer, type: msg.type, fix: 'only mirrors listed in the primary\'s `mirrors:` may connect' });
      return;
    }
    switch (msg.type) {
      case 'resyncRequest': {
        const bad = badRanges(msg.ranges ?? [], this.cfg.volumeBytes, peerRangesMax);
        if (bad !== undefined) this.io.refuse(peer, 'bad_frame', `resync request: ${bad}`);
        else this.onJoin(m, msg.seqReceived, msg.ranges ?? []);
        break;
      }
      case 'peerDirtyAck': this.onCopyAck(m, msg.id); break;
      case 'ack': this.onAck(m, msg.seq); break;
      case 'writeStatus': this.onWriteStatus(m, msg.seq, msg.sense); break;
      case 'flushAck': this.onFlushAck(m, msg.flushId, msg.sense); break;
      case 'resyncAck': this.onResyncAck(m, msg.resyncId, msg.sense); break;
      default:
        this.io.log('warn', 'unexpected_message', { peer, type: msg.type, fix: 'a mirror sent a message only an upstream site may send; check roles in the cluster file' });
    }
  }

  /**
   * The mirror answered our `epoch` with what it holds: bring it up to date. Ranges it names
   * (a failover's divergent tail, its own lost ranges) are dirty for it first; mid-session, a
   * resyncRequest only names new such ranges.
   */
  private onJoin(m: MirrorState, seqReceived: Seq, ranges: readonly ByteRange[]): void {
    if (m.link !== 'joining') {
      if (m.link === 'ready' && ranges.length > 0) {
        this.reported(m, ranges, true);
        if (m.sync === 'degraded') this.startResync(m);
      } else {
        this.io.log('warn', 'unexpected_resync_request', { peer: m.peer, link: m.link });
      }
      return;
    }
    m.link = 'ready';
    this.host.joined(m.peer);
    if (ranges.length > 0) this.reported(m, ranges, false);
    if (m.peer === this.cfg.standby) this.resendCopies();
    if (m.sync !== 'inSync') {
      this.startResync(m);
      return;
    }
    // Re-send, in seq order, what it has not received (the link reset lost it).
    let resent = 0;
    for (const e of this.store.entries) {
      if (e.cached && e.epoch === this.host.epoch && e.seq > seqReceived && (e.waitingMask & m.bit) !== 0) {
        this.io.send(m.peer, writeMsg(e));
        resent++;
      }
    }
    for (const f of this.host.flushes) {
      if (f.stage === 'flushing' && f.waitingMirrors.has(m.peer)) this.io.send(m.peer, { type: 'flush', epoch: this.host.epoch, flushId: f.flushId, seq: f.upTo });
    }
    this.io.log('info', 'mirror_joined', { peer: m.peer, seqReceived, resent });
    this.sayInSync(m);
  }

  /**
   * After the writes it was missing, on the same ordered link: it holds (or is about to) every
   * write. Where the cluster can fail over, the committed watermark goes first (the mirror
   * learns from it that it keeps a tail above it).
   */
  private sayInSync(m: MirrorState): void {
    if (m.peer === this.cfg.standby && !this.standbyArmed) {
      this.standbyArmed = true;
      this.io.log('info', 'standby_armed', { peer: m.peer, effect: 'it holds every acked write; from now on it is never degraded for being unreachable, so it can take over' });
    }
    // The standby that can take over must know what every other mirror misses now, not only
    // what is marked from here on (a failed-back or new standby holds no copies yet): without
    // them, its promotion would call a stale mirror in sync. Once per life: it keeps its copies
    // durably, and every later mark waits for its copy.
    if (m.peer === this.cfg.standby && !this.standbyCopiedAll) {
      this.standbyCopiedAll = true;
      for (const o of this.mirrors.values()) {
        if (o === m) continue;
        const regions = [...o.dirty.keys()].sort((a, b) => a - b);
        for (let i = 0; i < regions.length; i += peerRangesMax) this.copyToStandby(o.peer, regions.slice(i, i + peerRangesMax), undefined);
      }
    }
    if (this.cfg.failover === true) this.io.send(m.peer, { type: 'ack', epoch: this.host.epoch, seq: this.committedSent });
    this.io.send(m.peer, { type: 'inSync', epoch: this.host.epoch, seq: this.host.lastSeq() });
    // A FLUSH on its way waits for every mirror in sync when it completes, also one that is in
    // sync again after it was sent (degraded meanwhile with nothing missed, or resynced): its
    // answer means "durable on every mirror in sync" (through a relay, the far end: seed 16333
    // of the chain acked a FLUSH the far end never saw).
    for (const f of this.host.flushes) {
      if (f.stage !== 'flushing' || f.waitingMirrors.has(m.peer) || f.answered?.has(m.peer) === true) continue;
      f.waitingMirrors.add(m.peer);
      this.io.send(m.peer, { type: 'flush', epoch: this.host.epoch, flushId: f.flushId, seq: f.upTo });
    }
  }

  /**
   * A mirror says its copy may differ in `ranges`: they are dirty for it (it is degraded if it
   * was in sync). `exact`: the ranges are what it misses, block for block (mid-session reports:
   * its storage came back, a write failed behind a relay), not rounded to its suspect regions.
   */
  private reported(m: MirrorState, ranges: readonly ByteRange[], exact: boolean): void {
    const regions = regionsOfRanges(ranges, this.lim.regionBytes);
    if (regions.length === 0) return;
    this.io.log('warn', 'mirror_reports_ranges', { peer: m.peer, regions: regions.length, sync: m.sync });
    if (m.sync === 'inSync') this.degrade(m, `it reports ${regions.length} region(s) its copy may not hold`);
    if (exact) for (const r of ranges) if (r.lengthBytes > 0) this.noteMissed(m, r.offsetBytes, r.lengthBytes);
    this.markDirty(m, regions, undefined);
  }

  /** Records, per region, the blocks of a range `m` misses (see MirrorState.missed). */
  private noteMissed(m: MirrorState, offsetBytes: number, lengthBytes: number): void {
    const rb = this.lim.regionBytes;
    for (const r of regionsOf(offsetBytes, lengthBytes, rb)) {
      let set = m.missed.get(r);
      if (set === undefined) {
        if (m.dirty.has(r)) continue; // dirty for reasons unknown at block level: every block
        m.missed.set(r, (set = new MissedBlocks(Math.ceil(regionRange(r, this.cfg.volumeBytes, rb).lengthBytes / this.cfg.blockBytes))));
      }
      const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, offsetBytes, lengthBytes);
      for (let b = from; b < to; b++) set.add(b);
    }
  }

  /** The committed watermark (every write up to it acked by every in-sync site) goes to the in-sync mirrors when it moved (per tick). */
  committed(seq: Seq): void {
    if (this.cfg.failover !== true || seq <= this.committedSent) return;
    this.committedSent = seq;
    for (const m of this.mirrors.values()) {
      if (m.sync === 'inSync' && m.link === 'ready') this.io.send(m.peer, { type: 'ack', epoch: this.host.epoch, seq });
    }
  }

  /** Cumulative: every write of our epoch up to `seq` is executed there. O(writes newly acked). */
  private onAck(m: MirrorState, seq: Seq): void {
    // An ack of a seq this primary never assigned is a broken peer, not progress: believing it
    // would move the cursor past real writes that then wait for this mirror for good.
    if (seq > this.host.lastSeq()) {
      this.io.refuse(m.peer, 'bad_frame', `${m.peer} acked seq ${seq}, beyond the last seq assigned (${this.host.lastSeq()})`);
      return;
    }
    if (seq > m.seqAcked) m.seqAcked = seq;
    if (seq <= m.ackCursor) return;
    const entries = this.store.entries;
    for (let i = firstAbove(entries, this.host.epoch, m.ackCursor); i < entries.length; i++) {
      const e = entries[i]!;
      if (e.seq > seq) break;
      if ((e.waitingMask & m.bit) !== 0) {
        e.waitingMask &= ~m.bit;
        e.ackedBy++;
        this.host.tryComplete(e);
      }
    }
    m.ackCursor = seq;
  }

  /**
   * A mirror could not perform a write: it no longer holds the volume, whatever the policy, so
   * it is degraded (its missed regions go to the bitmap and a resync repairs them). Under
   * `block` the host also gets the error, since the strict guarantee was not met for that write.
   */
  private onWriteStatus(m: MirrorState, seq: Seq, sense: SenseInfo): void {
    this.io.logLimited(`mirror_write_failed:${m.peer}`, repeatLogIntervalMs, 'error', 'mirror_write_failed', { peer: m.peer, seq, message: sense.message });
    if (this.cfg.onMirrorLoss === 'block') {
      const e = this.store.entries.find((x) => x.epoch === this.host.epoch && x.seq === seq);
      if (e !== undefined && !e.done) e.mirrorSense ??= sense;
    }
    this.degrade(m, `write ${seq} failed on its storage: ${sense.message}`);
  }

  private onFlushAck(m: MirrorState, flushId: bigint, sense: SenseInfo | undefined): void {
    const f = this.host.flushes.find((x) => x.flushId === flushId);
    if (f === undefined) return; // a re-sent flush acked twice
    if (sense !== undefined) {
      this.io.logLimited(`mirror_flush_failed:${m.peer}`, repeatLogIntervalMs, 'error', 'mirror_flush_failed', { peer: m.peer, message: sense.message });
      if (this.cfg.onMirrorLoss === 'block') f.sense ??= sense;
      this.degrade(m, `flush failed: ${sense.message}`);
    }
    f.waitingMirrors.delete(m.peer);
    if (sense === undefined) (f.answered ??= new Set()).add(m.peer);
  }

  /** A host flush's barrier reached every write it covers: to every in-sync mirror. */
  sendFlush(f: FanoutFlush): void {
    for (const m of this.mirrors.values()) {
      if (m.sync !== 'inSync') continue;
      f.waitingMirrors.add(m.peer);
      if (m.link === 'ready') this.io.send(m.peer, { type: 'flush', epoch: this.host.epoch, flushId: f.flushId, seq: f.upTo });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Degrade and the dirty bitmap

  private degrade(m: MirrorState, reason: string): void {
    if (m.sync !== 'inSync') return;
    m.sync = 'degraded';
    m.degradedAtMs = this.io.nowMs;
    m.regionsDone = 0;
    let missed = 0;
    for (const e of this.store.entries) {
      if ((e.waitingMask & m.bit) !== 0) {
        e.waitingMask &= ~m.bit;
        this.dirtyFor(m, e);
        missed++;
        this.host.tryComplete(e);
      }
    }
    for (const f of this.host.flushes) f.waitingMirrors.delete(m.peer);
    if (m.peer === this.cfg.standby) this.dropCopies();
    this.io.log('warn', 'mirror_degraded', { peer: m.peer, reason, writesMissed: missed, dirtyRegions: m.dirty.size });
  }

  /**
   * Regions of the local copy became suspect (a write there failed, or the storage came back
   * having lost writes). A resync read of them already picked was queued behind those writes
   * and may return what they left: it is sent again ("touched"). Checking the region at the
   * resync's ack is not enough: a repair from the journal can make it whole again before then.
   */
  localSuspect(regions: readonly number[]): void {
    for (const m of this.mirrors.values()) this.touch(m, regions);
  }

  /** Resyncs of `m` in flight over `regions` are sent again once acked: what they read may lack a write there. */
  private touch(m: MirrorState, regions: readonly number[]): void {
    for (const v of m.inflight.values()) if (regions.includes(v.region)) v.touched = true;
  }

  /** Records that mirror `m` misses write `e`; the host ack waits until the bits are durable. */
  private dirtyFor(m: MirrorState, e: PrimaryEntry): void {
    const regions = regionsOf(e.offsetBytes, e.lengthBytes, this.lim.regionBytes);
    // A region being resynced that this write lands in is sent again ("touched").
    this.touch(m, regions);
    this.noteMissed(m, e.offsetBytes, e.lengthBytes);
    (e.missedBy ??= []).push(m.peer);
    this.markDirty(m, regions, e);
  }

  /**
   * Persists `regions` dirty for `m` (bitmapSet) and has the standby keep a copy (peerDirty);
   * write `e`, if given, waits for both to be durable before its host ack.
   */
  private markDirty(m: MirrorState, regions: readonly number[], e: PrimaryEntry | undefined): void {
    const fresh: number[] = [];
    for (const r of regions) {
      const st = m.dirty.get(r);
      if (st === undefined) fresh.push(r);
      else if (st !== 'set' && e !== undefined) this.waitBitmap(e, st);
    }
    if (fresh.length === 0) return;
    const opId = this.io.op(this);
    for (const r of fresh) m.dirty.set(r, opId);
    if (e !== undefined) this.waitBitmap(e, opId);
    this.io.push({ type: 'bitmapSet', opId, peer: m.peer, regions: fresh });
    this.copyToStandby(m.peer, fresh, e);
  }

  /** The standby keeps a copy of every mirror's dirty bits (while it is in sync: only then could it be promoted). */
  private copyToStandby(peer: PeerId, regions: readonly number[], e: PrimaryEntry | undefined): void {
    const sb = this.cfg.standby === undefined ? undefined : this.mirrors.get(this.cfg.standby);
    if (sb === undefined || sb.peer === peer || sb.sync !== 'inSync') return;
    const id = this.copyIdNext++;
    const ranges = rangesOfRegions(regions, this.cfg.volumeBytes, this.lim.regionBytes);
    const copy = { peer, ranges, waiters: [] as PrimaryEntry[] };
    this.copies.set(id, copy);
    if (e !== undefined) {
      e.copyWaits++;
      copy.waiters.push(e);
    }
    if (sb.link === 'ready') this.io.send(sb.peer, { type: 'peerDirty', epoch: this.host.epoch, id, peer, ranges });
  }

  private resendCopies(): void {
    for (const [id, c] of this.copies) this.io.send(this.cfg.standby!, { type: 'peerDirty', epoch: this.host.epoch, id, peer: c.peer, ranges: c.ranges });
  }

  private onCopyAck(m: MirrorState, id: bigint): void {
    const c = this.copies.get(id);
    if (c === undefined || m.peer !== this.cfg.standby) return;
    this.copies.delete(id);
    for (const e of c.waiters) {
      e.copyWaits--;
      this.host.tryComplete(e);
    }
  }

  /** The standby is no longer in sync (it could not be promoted): nothing waits for its copies any more. */
  private dropCopies(): void {
    const waiters = [...this.copies.values()].flatMap((c) => c.waiters);
    this.copies.clear();
    for (const e of waiters) {
      e.copyWaits = 0;
      this.host.tryComplete(e);
    }
  }

  private waitBitmap(e: PrimaryEntry, opId: OpId): void {
    e.bitmapWaits++;
    const list = this.bitmapWaiters.get(opId);
    if (list === undefined) this.bitmapWaiters.set(opId, [e]);
    else list.push(e);
  }

  /** A bitmapSet is durable: its regions count as set, and the writes waiting on it may complete. */
  onDone(ev: Completion): void {
    assert(ev.type === 'bitmapPersisted', () => `${this.io.self}: ${ev.type} for a bitmap op ${ev.opId}`);
    for (const m of this.mirrors.values()) {
      for (const [r, st] of m.dirty) if (st === ev.opId) m.dirty.set(r, 'set');
    }
    const waiters = this.bitmapWaiters.get(ev.opId) ?? [];
    this.bitmapWaiters.delete(ev.opId);
    for (const e of waiters) {
      e.bitmapWaits--;
      this.host.tryComplete(e);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Resync

  tick(): void {
    for (const m of this.mirrors.values()) {
      if (this.cfg.onMirrorLoss === 'degrade' && (m.peer !== this.cfg.standby || !this.standbyArmed) && m.sync === 'inSync' && m.link !== 'ready' && this.io.nowMs - m.downSinceMs >= this.lim.mirrorLossGraceMs) {
        this.degrade(m, `unreachable for ${Math.round(this.io.nowMs - m.downSinceMs)} ms (grace ${this.lim.mirrorLossGraceMs} ms)`);
      }
      // Degraded while still connected (its storage failed): retry a resync after the grace period.
      if (m.sync === 'degraded' && m.link === 'ready' && this.io.nowMs - m.degradedAtMs >= this.lim.mirrorLossGraceMs) this.startResync(m);
      if (m.sync === 'resyncing' && m.link === 'ready' && this.io.nowMs >= m.resyncRetryAtMs) this.resyncSome(m);
    }
  }

  private startResync(m: MirrorState): void {
    m.sync = 'resyncing';
    m.progressDecile = 0;
    m.lastRefillMs = this.io.nowMs;
    m.resyncStartMs = this.io.nowMs;
    m.resyncRunBytes = 0;
    this.io.log('info', 'mirror_resync_start', { peer: m.peer, dirtyRegions: m.dirty.size, regionBytes: this.lim.regionBytes });
    this.maybeInSync(m);
  }

  /** Background resync, rate-limited by a token budget refilled per tick. */
  private resyncSome(m: MirrorState): void {
    const burstBytes = Math.max(this.lim.regionBytes, this.lim.resyncInflightRegionsMax * this.lim.regionBytes);
    m.tokensBytes = Math.min(burstBytes, m.tokensBytes + ((this.io.nowMs - m.lastRefillMs) * this.lim.resyncBytesPerSecMax) / 1000);
    m.lastRefillMs = this.io.nowMs;
    while (m.inflight.size < this.lim.resyncInflightRegionsMax && m.tokensBytes >= this.lim.regionBytes) {
      const region = this.pickRegion(m);
      if (region === undefined) break;
      m.tokensBytes -= this.lim.regionBytes;
      const resyncId = this.resyncIdNext++;
      m.inflight.set(resyncId, { region, touched: false });
      const range = regionRange(region, this.cfg.volumeBytes, this.lim.regionBytes);
      this.store.readRegion(range.offsetBytes, range.lengthBytes, (data, sense) => this.onResyncRead(m, resyncId, range.offsetBytes, data, sense));
    }
  }

  /** A dirty region to resync next: never one of the primary's own suspect regions (src/core/repair.ts repairs those first). */
  private pickRegion(m: MirrorState): number | undefined {
    const busy = new Set<number>();
    for (const v of m.inflight.values()) busy.add(v.region);
    for (const r of m.dirty.keys()) if (!busy.has(r) && !this.store.suspect.has(r)) return r;
    return undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Reads from the mirrors (the primary's own copy is not whole: src/core/repair.ts)

  /**
   * A mirror to read `offsetBytes+lengthBytes` from: its link is up, it acked every write there
   * that was cached (its storage holds them), and for every region of the range `holds` accepts
   * what it misses there (undefined: nothing). In-sync mirrors first.
   */
  readSource(offsetBytes: number, lengthBytes: number, exclude: ReadonlySet<PeerId>, holds: (r: number, missed: MissedBlocks | 'all' | undefined) => boolean): PeerId | 'wait' | undefined {
    const regions = regionsOf(offsetBytes, lengthBytes, this.lim.regionBytes);
    let fallback: PeerId | undefined;
    let wait = false;
    for (const m of this.mirrors.values()) {
      if (m.link !== 'ready' || exclude.has(m.peer) || !regions.every((r) => holds(r, this.missedIn(m, r)))) continue;
      // It holds them once it acked the writes there it has in flight: not a source yet, but
      // not a reason to give up either (`wait`: ask again at the next tick).
      if (!this.caughtUp(m, offsetBytes, lengthBytes)) {
        wait = true;
        continue;
      }
      if (m.sync === 'inSync') return m.peer;
      fallback ??= m.peer;
    }
    return fallback ?? (wait ? 'wait' : undefined);
  }

  /**
   * Write `e` failed everywhere (the host got the error: no copy holds it): the mirrors that
   * missed it miss nothing there because of it, so they may serve those blocks again.
   */
  unmiss(e: PrimaryEntry): void {
    for (const peer of e.missedBy ?? []) {
      const m = this.mirrors.get(peer);
      if (m === undefined) continue;
      for (const r of regionsOf(e.offsetBytes, e.lengthBytes, this.lim.regionBytes)) {
        const set = m.missed.get(r);
        if (set === undefined) continue;
        const [from, to] = blocksIn(r, this.lim.regionBytes, this.cfg.blockBytes, e.offsetBytes, e.lengthBytes);
        for (let b = from; b < to; b++) set.forget(b);
      }
    }
  }

  /** Whether any mirror's link is down (a source may come back). */
  anyDown(): boolean {
    for (const m of this.mirrors.values()) if (m.link !== 'ready') return true;
    return false;
  }

  /**
   * What `m` misses of region `r`: nothing (undefined), the blocks of the writes it missed in
   * this life, or every block ('all': dirty for a reason known only by region).
   */
  missedOf(peer: PeerId, r: number): MissedBlocks | 'all' | undefined {
    const m = this.mirrors.get(peer);
    return m === undefined ? 'all' : this.missedIn(m, r);
  }

  private missedIn(m: MirrorState, r: number): MissedBlocks | 'all' | undefined {
    if (!m.dirty.has(r)) return undefined;
    return m.missed.get(r) ?? 'all';
  }

  /** Whether `m` acked every cached write overlapping the range (its storage holds them). */
  private caughtUp(m: MirrorState, offsetBytes: number, lengthBytes: number): boolean {
    return !this.store.entries.some((e) => (e.waitingMask & m.bit) !== 0 && e.offsetBytes < offsetBytes + lengthBytes && offsetBytes < e.offsetBytes + e.lengthBytes);
  }

  /** Regions the primary's journal lost, repaired from `source`: every other mirror may differ there. */
  dirtyForOthers(regions: readonly number[], source: PeerId | undefined): void {
    for (const m of this.mirrors.values()) {
      if (m.peer === source) continue;
      if (m.sync === 'inSync') this.degrade(m, `the primary's journal lost writes to ${regions.length} region(s) it may hold differently`);
      this.markDirty(m, regions, undefined);
    }
  }

  private onResyncRead(m: MirrorState, resyncId: bigint, offsetBytes: number, data: Uint8Array | undefined, sense: SenseInfo | undefined): void {
    if (!m.inflight.has(resyncId)) return; // abandoned (link reset); the region is still dirty
    if (sense !== undefined || data === undefined) {
      m.inflight.delete(resyncId);
      this.resyncFailed(m, 'resync_read_failed', { offsetBytes, message: sense?.message });
      return;
    }
    this.io.send(m.peer, { type: 'resyncData', epoch: this.host.epoch, resyncId, offsetBytes, payload: data });
  }

  private onResyncAck(m: MirrorState, resyncId: bigint, sense: SenseInfo | undefined): void {
    const slot = m.inflight.get(resyncId);
    if (slot === undefined) return;
    m.inflight.delete(resyncId);
    if (sense !== undefined) {
      this.resyncFailed(m, 'mirror_resync_write_failed', { region: slot.region, message: sense.message });
      return;
    }
    m.resyncFailures = 0;
    // The region became suspect here after it was picked (a local write to it failed before the
    // read ran): what was sent may lack that write, so the region stays dirty for the mirror.
    if (!slot.touched && !this.store.suspect.has(slot.region)) {
      const st = m.dirty.get(slot.region);
      if (st !== undefined) {
        m.dirty.delete(slot.region);
        m.missed.delete(slot.region);
        m.regionsDone++;
        const bytes = regionRange(slot.region, this.cfg.volumeBytes, this.lim.regionBytes).lengthBytes;
        m.resyncedBytes += bytes;
        m.resyncRunBytes += bytes;
        this.io.push({ type: 'bitmapClear', peer: m.peer, regions: [slot.region] });
        const sb = this.cfg.standby === undefined ? undefined : this.mirrors.get(this.cfg.standby);
        if (sb !== undefined && sb.peer !== m.peer && sb.link === 'ready') this.io.send(sb.peer, { type: 'peerClean', epoch: this.host.epoch, peer: m.peer, ranges: [regionRange(slot.region, this.cfg.volumeBytes, this.lim.regionBytes)] });
      }
    }
    const percent = Math.floor((100 * m.regionsDone) / Math.max(1, m.regionsDone + m.dirty.size));
    if (m.dirty.size > 0 && Math.floor(percent / 10) > m.progressDecile) {
      m.progressDecile = Math.floor(percent / 10);
      this.io.log('info', 'mirror_resync_progress', { peer: m.peer, percent, regionsDone: m.regionsDone, regionsLeft: m.dirty.size });
    }
    this.maybeInSync(m);
  }

  /** A resync region failed (a device here or there): the region stays dirty; the resync of `m` pauses (backoff, capped). */
  private resyncFailed(m: MirrorState, event: string, fields: Record<string, unknown>): void {
    m.resyncFailures++;
    m.resyncRetryAtMs = this.io.nowMs + backoffMs(m.resyncFailures, resyncRetryMsMin, resyncRetryMsMax);
    this.io.logLimited(`${event}:${m.peer}`, repeatLogIntervalMs, 'error', event, { peer: m.peer, ...fields, failures: m.resyncFailures, retryInMs: Math.round(m.resyncRetryAtMs - this.io.nowMs) });
  }

  private maybeInSync(m: MirrorState): void {
    if (m.sync !== 'resyncing' || m.dirty.size > 0 || m.inflight.size > 0) return;
    m.sync = 'inSync';
    this.io.log('info', 'mirror_in_sync', { peer: m.peer, regionsResynced: m.regionsDone });
    if (m.link === 'ready') this.sayInSync(m);
    m.regionsDone = 0;
  }

  /** Resync progress of `m` in percent (undefined unless resyncing). */
  resyncPercent(m: MirrorState): number | undefined {
    if (m.sync !== 'resyncing') return undefined;
    const regionsTotal = regionCount(this.cfg.volumeBytes, this.lim.regionBytes);
    return Math.floor((100 * m.regionsDone) / Math.max(1, Math.min(regionsTotal, m.regionsDone + m.dirty.size)));
  }

  /** Bytes per second of the resync running to `m` (its average so far); undefined unless resyncing. */
  resyncRate(m: MirrorState): number | undefined {
    if (m.sync !== 'resyncing') return undefined;
    const ms = this.io.nowMs - m.resyncStartMs;
    return ms <= 0 ? 0 : (m.resyncRunBytes * 1000) / ms;
  }

  allInSync(): boolean {
    for (const m of this.mirrors.values()) if (m.sync !== 'inSync' || m.link !== 'ready') return false;
    return true;
  }
}

export function writeMsg(e: StoreEntry): PeerMsg {
  return { type: 'write', epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes, fua: e.fua, payload: e.payload, payloadCrc: e.payloadCrc };
}

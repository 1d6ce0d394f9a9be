// The primary's own copy when it is not whole (issue 16 items 2, 3, 8; DRBD's on-io-error
// detach): pure, part of the Primary (src/core/primary.ts), next to its fan-out.
//
//   suspect   regions of the local copy that may be wrong are recorded by the local store
//             (bitmap `localSuspectKey`): a local storage write that failed, ranges the storage
//             missed while it was down (storageRecovered), entries the journal lost to damage
//   serve     a host read of a suspect range (or one the local storage failed) is read from a
//             mirror that holds every acked write there (hostRead -> readRequest -> readData),
//             trying the next such mirror if one fails; no such mirror: the read fails (EIO)
//   good      per suspect region, the blocks known right locally: written here successfully
//             since the region became suspect, or repaired. A region all good is clean.
//   repair    the other blocks are read from a mirror that holds them (it missed no write to
//             them, at block level for the writes it missed in this life) and written locally,
//             except blocks a host write reached meanwhile (they are newer: "touched") or will
//             reach (their local write is on its way); at most resyncInflightRegionsMax at once,
//             paced by a backoff after failures. With no mirror at all, or none that can serve a
//             region once every mirror is connected and caught up for a grace period, the local
//             copy stands: logged as an error (`local_regions_unrecoverable`).
//   lost      a journal entry lost to damage may also be on some mirrors and not others (it
//             may not have been acked): once its region is repaired from one mirror, it is
//             dirty for every other mirror (bitmap `lostKey` until then), so all copies agree
//
// The fan-out never resyncs a mirror from a suspect region (Fanout.pickRegion), and the host ack
// of a write whose local storage write failed waits until its region is recorded suspect and
// then needs one mirror to hold it (Primary.tryComplete).
//
// A mirror is a source for a range when its link is up, it misses no write to the blocks wanted,
// and it acked every write there that was cached before the request (its storage holds them:
// a mirror acks only once performed, and it serves the read ordered after them).

import { backoffMs, repeatLogIntervalMs, type CoreIO, type OpOwner } from './io.js';
import type { Fanout, PrimaryEntry } from './fanout.js';
import type { MissedBlocks } from './regions.js';
import type { LocalStore } from './local-store.js';
import { blocksIn, BlockSet, rangesOfRegions, regionRange, regionsOf } from './regions.js';
import { suspectRegions } from './suspect.js';
import { assert, localSuspectKey, type ByteRange, type Completion, type Epoch, type HostError, type HostOpId, type Limits, type PeerId, type PeerMsg, type Recovered } from './types.js';

/** The bitmap key of lost-journal regions that, once repaired, are dirtied for the other mirrors. */
export const lostKey = '@lost';

/** Backoff of the repair after a failed or voided region read. */
export const repairRetryMsMin = 100;
export const repairRetryMsMax = 10_000;

export interface RepairHost {
  readonly epoch: Epoch;
  ackHost(id: HostOpId, error: HostError | undefined, data?: Uint8Array): void;
}

export interface RepairConfig {
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly limits: Limits;
}

type Read =
  | { readonly kind: 'repair'; readonly region: number; readonly source: PeerId; readonly take: BlockSet; readonly touched: BlockSet }
  | { readonly kind: 'host'; readonly id: HostOpId; readonly offsetBytes: number; readonly lengthBytes: number; readonly tried: Set<PeerId>; source: PeerId };

export class LocalRepair implements OpOwner {
  private readonly reads = new Map<bigint, Read>();
  /** Host reads whose mirror holds the range but still has writes there in flight (retried per tick). */
  private readonly waitingHostReads: Extract<Read, { kind: 'host' }>[] = [];
  private readIdNext = 1n;
  /** Regions being written locally with repair data. */
  private readonly writing = new Set<number>();
  /** Per suspect region: the blocks known right locally (see the header). */
  private readonly good = new Map<number, BlockSet>();
  /** Consecutive ticks in which some suspect region had no source while every mirror was up. */
  private stuckTicks = 0;
  /** Lost-journal regions: once repaired from one mirror, dirty for the others. */
  private readonly lost = new Set<number>();
  private failures = 0;
  private retryAtMs = 0;
  private repaired = 0;

  constructor(
    private readonly io: CoreIO,
    private readonly cfg: RepairConfig,
    private readonly store: LocalStore<PrimaryEntry>,
    private readonly fan: Fanout,
    private readonly host: RepairHost,
  ) {}

  /** First event of a life: the recorded suspect and lost regions, and what the journal lost now. */
  start(rec: Recovered): void {
    const rb = this.cfg.limits.regionBytes;
    this.store.start(rec.dirtyRegions.get(localSuspectKey) ?? []);
    for (const r of rec.dirtyRegions.get(lostKey) ?? []) this.lost.add(r);
    const lost = rec.lost;
    if (lost === undefined || (lost.ranges.length === 0 && !lost.unknown)) return;
    const regions = suspectRegions(lost.ranges, lost.unknown, this.cfg.volumeBytes, rb);
    this.io.log('error', 'journal_damage', {
      lostRanges: lost.ranges.length, unknown: lost.unknown, regions: regions.length,
      effect: 'writes are missing from the primary\'s journal: their regions are read back from a mirror that holds them, then resynced to the others',
    });
    const fresh = regions.filter((r) => !this.lost.has(r));
    for (const r of fresh) this.lost.add(r);
    if (fresh.length > 0) this.io.push({ type: 'bitmapSet', opId: this.io.op(this), peer: lostKey, regions: fresh });
    this.store.markSuspect(regions);
  }

  /** Only bitmapSet of `lostKey` completes here; nothing waits on it (the suspect record covers the window). */
  onDone(ev: Completion): void {
    assert(ev.type === 'bitmapPersisted', () => `${this.io.self}: ${ev.type} for a repair op ${ev.opId}`);
  }

  /** The local storage came back and names what it missed. */
  storageRecovered(ranges: readonly ByteRange[], unknown: boolean): void {
    const regions = suspectRegions(ranges, unknown, this.cfg.volumeBytes, this.cfg.limits.regionBytes);
    // The repair writes that failed while it was away failed because it was away: the repair
    // starts again now, not after their backoff (a mirror that holds the regions whole now
    // may miss writes there later, and then no copy has every block).
    this.failures = 0;
    this.retryAtMs = 0;
    if (regions.length === 0) return;
    this.io.log('warn', 'storage_recovered', { regions: regions.length, unknown, effect: 'the regions it missed are read back from the mirrors' });
    this.store.markSuspect(regions, () => this.io.push({ type: 'storageStaleRecorded', ranges }));
  }

  /** A write was cached (it goes to the mirrors now): a region read out for repair there must not get its blocks. */
  cached(e: PrimaryEntry): void {
    if (this.reads.size === 0) return;
    const rb = this.cfg.limits.regionBytes;
    for (const rd of this.reads.values()) {
      if (rd.kind !== 'repair' || !regionsOf(e.offsetBytes, e.lengthBytes, rb).includes(rd.region)) continue;
      const [from, to] = blocksIn(rd.region, rb, this.cfg.blockBytes, e.offsetBytes, e.lengthBytes);
      for (let b = from; b < to; b++) rd.touched.add(b);
    }
  }

  /** A write's local storage write completed (`ok`) or failed: its blocks in suspect regions are right here, or not. */
  stored(e: PrimaryEntry, ok: boolean): void {
    if (this.store.suspect.size === 0) return;
    const rb = this.cfg.limits.regionBytes;
    const done: number[] = [];
    for (const r of regionsOf(e.offsetBytes, e.lengthBytes, rb)) {
      if (!this.store.suspect.has(r)) continue;
      const good = this.goodOf(r);
      const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, e.offsetBytes, e.lengthBytes);
      // A journal entry replayed at start may be older than the entry the journal lost there:
      // it does not make those blocks right (only a host write of this life, or the repair, does).
      const vouches = ok && !(e.hostId === undefined && this.lost.has(r));
      for (let b = from; b < to; b++) {
        if (vouches) good.add(b);
        else if (!ok) good.delete(b);
      }
      if (good.full() && this.store.suspect.get(r) === 'set') done.push(r);
    }
    if (done.length > 0) this.finish(done, undefined);
  }

  private goodOf(r: number): BlockSet {
    let g = this.good.get(r);
    if (g === undefined) this.good.set(r, (g = new BlockSet(Math.ceil(regionRange(r, this.cfg.volumeBytes, this.cfg.limits.regionBytes).lengthBytes / this.cfg.blockBytes))));
    return g;
  }

  // -------------------------------------------------------------------------------------------
  // Host reads served by the mirrors

  /** Whether the host may read this range from local storage now (else it comes here: `hostRead`). */
  readable(offsetBytes: number, lengthBytes: number): boolean {
    return this.store.readableNow(offsetBytes, lengthBytes);
  }

  /**
   * A host read the site did not serve from storage: from the local copy, ordered after the
   * writes pending there, where it is whole (and the storage answers); else from a mirror.
   */
  hostRead(id: HostOpId, offsetBytes: number, lengthBytes: number): void {
    const rd: Read = { kind: 'host', id, offsetBytes, lengthBytes, tried: new Set(), source: '' };
    if (this.store.isSuspect(offsetBytes, lengthBytes)) {
      this.sendHostRead(rd);
      return;
    }
    this.store.readRegion(offsetBytes, lengthBytes, (data, sense) => {
      if (sense === undefined && data !== undefined && !this.store.isSuspect(offsetBytes, lengthBytes)) this.host.ackHost(id, undefined, data);
      else this.sendHostRead(rd);
    });
  }

  private sendHostRead(rd: Extract<Read, { kind: 'host' }>): void {
    const rb = this.cfg.limits.regionBytes;
    const source = this.fan.readSource(rd.offsetBytes, rd.lengthBytes, rd.tried, (r, missed) => {
      if (missed === undefined) return true;
      if (missed === 'all') return false;
      const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, rd.offsetBytes, rd.lengthBytes);
      for (let b = from; b < to; b++) if (missed.has(b)) return false;
      return true;
    });
    if (source === 'wait') {
      // The mirror that holds it still has writes there in flight: served once it acked them.
      this.waitingHostReads.push(rd);
      return;
    }
    if (source === undefined) {
      const why = rd.tried.size === 0 ? 'no mirror that holds it is reachable' : `the mirrors that hold it failed the read (${[...rd.tried].join(', ')})`;
      const message = `${this.io.self}: its own copy of ${rd.offsetBytes}+${rd.lengthBytes} is not whole (its storage failed or is being repaired) and ${why}`;
      this.io.logLimited('host_read_unserved', repeatLogIntervalMs, 'error', 'host_read_unserved', { offsetBytes: rd.offsetBytes, lengthBytes: rd.lengthBytes, message });
      this.host.ackHost(rd.id, { kind: 'io', message, sense: { key: 0x3, asc: 0x11, ascq: 0, message } });
      return;
    }
    rd.tried.add(source);
    rd.source = source;
    const readId = this.readIdNext++;
    this.reads.set(readId, rd);
    this.io.send(source, { type: 'readRequest', epoch: this.host.epoch, readId, offsetBytes: rd.offsetBytes, lengthBytes: rd.lengthBytes });
  }

  // -------------------------------------------------------------------------------------------
  // Repair

  /** Per tick: read suspect regions back from the mirrors (paced, capped, backed off after failures). */
  tick(): void {
    if (this.waitingHostReads.length > 0) for (const rd of this.waitingHostReads.splice(0)) this.sendHostRead(rd);
    if (this.store.suspect.size === 0 || this.io.nowMs < this.retryAtMs) return;
    const busy = new Set<number>(this.writing);
    for (const rd of this.reads.values()) if (rd.kind === 'repair') busy.add(rd.region);
    let inflight = busy.size;
    const rb = this.cfg.limits.regionBytes;
    const sourceless: number[] = [];
    for (const [r, st] of this.store.suspect) {
      if (inflight >= this.cfg.limits.resyncInflightRegionsMax) break;
      if (st !== 'set' || busy.has(r)) continue;
      const range = regionRange(r, this.cfg.volumeBytes, rb);
      // Writes to it not yet cached would reach the mirror after the request: wait for them.
      if (this.store.entries.some((e) => !e.cached && overlaps(e, range)) || this.store.queuedEntries().some((e) => overlaps(e, range))) continue;
      const good = this.goodOf(r);
      if (good.full()) {
        this.finish([r], undefined);
        continue;
      }
      // A mirror that holds some block this copy lacks (the best: all of them); the blocks it
      // missed too stay for another mirror, or are given up once none can serve them.
      const takeFrom = (missed: MissedBlocks | 'all' | undefined): BlockSet | undefined => {
        if (missed === 'all') return undefined;
        const t = new BlockSet(good.blocks);
        for (let b = 0; b < good.blocks; b++) if (!good.has(b) && !(missed?.has(b) ?? false)) t.add(b);
        return t.size === 0 ? undefined : t;
      };
      const source = this.fan.readSource(range.offsetBytes, range.lengthBytes, new Set(), (_r, missed) => takeFrom(missed) !== undefined);
      if (source === 'wait') continue; // a mirror that holds it has writes there in flight
      const take = source === undefined ? undefined : takeFrom(this.fan.missedOf(source, r));
      if (source === undefined || take === undefined) {
        sourceless.push(r);
        continue;
      }
      const readId = this.readIdNext++;
      this.reads.set(readId, { kind: 'repair', region: r, source, take, touched: new BlockSet(good.blocks) });
      this.io.send(source, { type: 'readRequest', epoch: this.host.epoch, readId, offsetBytes: range.offsetBytes, lengthBytes: range.lengthBytes });
      inflight++;
    }
    this.checkStuck(sourceless);
  }

  /**
   * Regions no mirror can serve: with no mirror at all, given up at once; otherwise only once
   * every mirror has been connected and caught up for mirrorLossGraceMs (a mirror that comes
   * back may hold them).
   */
  private checkStuck(sourceless: number[]): void {
    if (sourceless.length === 0 || (this.fan.mirrors.size > 0 && (this.fan.anyDown() || this.reads.size > 0 || this.writing.size > 0))) {
      this.stuckTicks = 0;
      return;
    }
    if (this.fan.mirrors.size > 0 && ++this.stuckTicks * this.cfg.limits.tickMs < this.cfg.limits.mirrorLossGraceMs) return;
    this.stuckTicks = 0;
    this.giveUp(sourceless);
  }

  /** No mirror holds these regions: the local copy stands (logged as an error: data may be lost). */
  private giveUp(regions: number[]): void {
    const ranges = rangesOfRegions(regions, this.cfg.volumeBytes, this.cfg.limits.regionBytes);
    this.io.log('error', 'local_regions_unrecoverable', {
      regions: regions.length, ranges: ranges.slice(0, 16).map((x) => `${x.offsetBytes}+${x.lengthBytes}`),
      effect: 'no mirror holds these regions whole (each missed writes there that this copy lacks too): the primary\'s own copy is kept as it is and resynced to the mirrors; writes it lost there are gone',
    });
    this.finish(regions, undefined);
  }

  /** A repaired region (from `source`, or given up): clean locally; a lost one is dirty for every other mirror. */
  private finish(regions: readonly number[], source: PeerId | undefined): void {
    const lostNow = regions.filter((r) => this.lost.has(r));
    if (lostNow.length > 0) {
      this.fan.dirtyForOthers(lostNow, source);
      for (const r of lostNow) this.lost.delete(r);
      this.io.push({ type: 'bitmapClear', peer: lostKey, regions: lostNow });
    }
    this.store.clearSuspect(regions);
    for (const r of regions) if (!this.store.suspect.has(r)) this.good.delete(r);
  }

  onReadData(peer: PeerId, m: Extract<PeerMsg, { type: 'readData' }>): void {
    const rd = this.reads.get(m.readId);
    if (rd === undefined || rd.source !== peer) return; // answered after its link reset, or not ours
    this.reads.delete(m.readId);
    if (rd.kind === 'host') {
      if (m.sense === undefined && m.payload.byteLength === rd.lengthBytes) this.host.ackHost(rd.id, undefined, m.payload);
      else this.sendHostRead(rd); // the next mirror that holds it
      return;
    }
    const rb = this.cfg.limits.regionBytes;
    const range = regionRange(rd.region, this.cfg.volumeBytes, rb);
    if (m.sense !== undefined || m.payload.byteLength !== range.lengthBytes) {
      this.failed(rd.region, peer, m.sense?.message ?? `${m.payload.byteLength} bytes, expected ${range.lengthBytes}`);
      return;
    }
    if (!this.store.suspect.has(rd.region)) return;
    // The blocks to take from the mirror: not right here already, not reached by a host write
    // since the request (newer), not about to be written here by one (its write is on its way).
    const good = this.goodOf(rd.region);
    const skip = new BlockSet(good.blocks);
    for (let b = 0; b < good.blocks; b++) if (!rd.take.has(b) || good.has(b) || rd.touched.has(b)) skip.add(b);
    for (const e of this.store.entries) {
      if (!e.cached || e.stored || !overlaps(e, range)) continue;
      const [from, to] = blocksIn(rd.region, rb, this.cfg.blockBytes, e.offsetBytes, e.lengthBytes);
      for (let b = from; b < to; b++) skip.add(b);
    }
    const runs: [number, number][] = [];
    for (let b = 0; b < skip.blocks; b++) {
      if (skip.has(b)) continue;
      const last = runs[runs.length - 1];
      if (last !== undefined && last[1] === b) last[1] = b + 1;
      else runs.push([b, b + 1]);
    }
    if (runs.length === 0) return; // every block is newer here: a later tick sees whether all are good
    this.writing.add(rd.region);
    let left = runs.length;
    let failure: string | undefined;
    const bb = this.cfg.blockBytes;
    for (const [from, to] of runs) {
      this.store.writeRegion(range.offsetBytes + from * bb, m.payload.subarray(from * bb, Math.min(to * bb, range.lengthBytes)), (sense) => {
        if (sense !== undefined) failure ??= sense.message;
        else for (let b = from; b < to; b++) good.add(b);
        if (--left > 0) return;
        this.writing.delete(rd.region);
        if (failure !== undefined) {
          this.failed(rd.region, this.io.self, failure);
          return;
        }
        this.failures = 0;
        if (!good.full()) return; // blocks this mirror missed too, or a host write failed here meanwhile: another round
        this.repaired++;
        this.finish([rd.region], peer);
        if (this.store.suspect.size === 0) this.io.log('info', 'local_copy_repaired', { regions: this.repaired });
      });
    }
  }

  private failed(region: number, peer: PeerId, message: string): void {
    this.failures++;
    this.retryAtMs = this.io.nowMs + backoffMs(this.failures, repairRetryMsMin, repairRetryMsMax);
    this.io.logLimited('local_repair_failed', repeatLogIntervalMs, 'warn', 'local_repair_failed', { region, peer, message, failures: this.failures, retryInMs: Math.round(this.retryAtMs - this.io.nowMs) });
  }

  /** A link went down: its reads are gone; host reads go to the next mirror, repairs are read again later. */
  peerDown(peer: PeerId): void {
    for (const [id, rd] of this.reads) {
      if (rd.source !== peer) continue;
      this.reads.delete(id);
      if (rd.kind === 'host') this.sendHostRead(rd);
    }
  }

  /** For status: suspect regions of the local copy, and how many repairs are out. */
  status(): { suspectRegions: number; repairing: number } {
    let repairing = this.writing.size;
    for (const rd of this.reads.values()) if (rd.kind === 'repair') repairing++;
    return { suspectRegions: this.store.suspect.size, repairing };
  }
}

function overlaps(e: { offsetBytes: number; lengthBytes: number }, r: ByteRange): boolean {
  return e.offsetBytes < r.offsetBytes + r.lengthBytes && r.offsetBytes < e.offsetBytes + e.lengthBytes;
}

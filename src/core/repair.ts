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
//   journaled a region made suspect only by storage writes that failed here is recorded so
//             (bitmap `journaledKey`) and the journal keeps those writes (`keeps`) while the
//             cache has room: then what this copy lacks there is exactly what the journal
//             holds. A restart forgets which blocks were good and which blocks each mirror
//             missed, so without it a region a mirror also missed writes in has no source
//             (issue 16, sim: 16 of 20000 fan-out seeds lost an acked write that way); with it,
//             the blocks no journal entry covers are good at once and the replay writes the
//             others. Any other cause (the storage's own report, journal damage, the journal
//             letting the writes go when the cache fills) marks it uncovered (`uncoveredKey`,
//             durable before the cause is acted on: before the storage forgets its report,
//             before the journal drops the writes). The journal lets them go only where the
//             mirrors hold every block this copy lacks; where it holds the only copy of acked
//             writes they stay pinned, even with the cache full, until written back (`keeps`).
//
// The fan-out never resyncs a mirror from a suspect region (Fanout.pickRegion), and the host ack
// of a write whose local storage write failed waits until its region is recorded suspect and
// then needs one mirror to hold it (Primary.tryComplete).
//
// A mirror is a source for a range when its link is up, it misses no write to the blocks wanted,
// and it acked every write there that was cached before the request (its storage holds them:
// a mirror acks only once performed, and it serves the read ordered after them).

import { afterOps, backoffMs, repeatLogIntervalMs, type CoreIO, type OpOwner } from './io.js';
import type { Fanout, PrimaryEntry } from './fanout.js';
import type { MissedBlocks } from './regions.js';
import type { LocalStore } from './local-store.js';
import { blocksIn, BlockSet, rangesOfRegions, regionRange, regionsOf } from './regions.js';
import { suspectRegions } from './suspect.js';
import { assert, localSuspectKey, type ByteRange, type Completion, type Epoch, type HostError, type HostOpId, type Limits, type OpId, type PeerId, type PeerMsg, type Recovered } from './types.js';

/** The bitmap key of lost-journal regions that, once repaired, are dirtied for the other mirrors. */
export const lostKey = '@lost';
/** The bitmap key of suspect regions whose missing writes the journal holds (see the header). */
export const journaledKey = '@journaled';
/** The bitmap key of journaled regions that lost that property (see the header). */
export const uncoveredKey = '@uncovered';

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
  /** How many times the local storage came back (storageRecovered): a write issued before the last one failed because the storage was away. */
  private recoveries = 0;
  private repaired = 0;
  /** Suspect regions recorded journaled (bitmap `journaledKey`, see the header). */
  private readonly journaled = new Set<number>();
  /**
   * Suspect regions with a cause the journal does not hold: persisted (`uncoveredKey`; an op
   * until durable) where they were journaled, else only known here (they never were).
   */
  private readonly uncovered = new Map<number, OpId | 'set'>();

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
    if (lost !== undefined && (lost.ranges.length > 0 || lost.unknown)) {
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
    this.trustJournaled(rec);
  }

  /**
   * At start: a suspect region recorded journaled, never uncovered and not lost holds every
   * block right except those the journal's entries cover, which their replay writes (stored()
   * counts each as it lands). Every other suspect region is repaired from the mirrors.
   */
  private trustJournaled(rec: Recovered): void {
    const rb = this.cfg.limits.regionBytes;
    // Records of regions that are clean now (their clears need not be durable) mean nothing.
    const staleJournaled = (rec.dirtyRegions.get(journaledKey) ?? []).filter((r) => !this.store.suspect.has(r));
    const staleUncovered = (rec.dirtyRegions.get(uncoveredKey) ?? []).filter((r) => !this.store.suspect.has(r));
    if (staleJournaled.length > 0) this.io.push({ type: 'bitmapClear', peer: journaledKey, regions: staleJournaled });
    if (staleUncovered.length > 0) this.io.push({ type: 'bitmapClear', peer: uncoveredKey, regions: staleUncovered });
    for (const r of rec.dirtyRegions.get(journaledKey) ?? []) if (this.store.suspect.has(r)) this.journaled.add(r);
    for (const r of rec.dirtyRegions.get(uncoveredKey) ?? []) if (this.store.suspect.has(r)) this.uncovered.set(r, 'set');
    let trusted = 0;
    for (const r of this.store.suspect.keys()) {
      if (!this.journaled.has(r) || this.uncovered.has(r) || this.lost.has(r)) {
        this.uncovered.set(r, 'set');
        continue;
      }
      const good = this.goodOf(r);
      const replayed = new BlockSet(good.blocks);
      for (const ce of rec.cacheEntries) {
        if (!regionsOf(ce.offsetBytes, ce.lengthBytes, rb).includes(r)) continue;
        const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, ce.offsetBytes, ce.lengthBytes);
        for (let b = from; b < to; b++) replayed.add(b);
      }
      for (let b = 0; b < good.blocks; b++) if (!replayed.has(b)) good.add(b);
      trusted++;
    }
    if (trusted > 0) this.io.log('info', 'local_regions_journaled', { regions: trusted, effect: 'what this copy lacks there is in the journal: its replay repairs them, no mirror needed' });
  }

  /**
   * Whether the journal keeps `e` past its host ack (the primary's drop rule): a write its
   * storage failed, while a region of it is suspect and journaled. When the cache is 3/4 full
   * those regions are marked uncovered first, and `e` goes once that is durable: but only
   * regions where the mirrors hold every block this copy lacks. Elsewhere the journal holds
   * the only copy of acked writes (a mirror missed writes there too): they stay, pinned like a
   * controller's cache that cannot destage, until the journal's repair writes them back
   * (tick), even if the cache fills and host writes wait (sim seeds 3137 and 11014: the
   * journal let them go under cache pressure just before its repair ran, and they were lost).
   */
  keeps(e: PrimaryEntry): boolean {
    if (e.sense === undefined || !e.inCache || this.store.suspect.size === 0) return false;
    const wanted: number[] = [];
    let keep = false;
    for (const r of regionsOf(e.offsetBytes, e.lengthBytes, this.cfg.limits.regionBytes)) {
      if (!this.store.suspect.has(r) || !this.journaled.has(r)) continue;
      const u = this.uncovered.get(r);
      if (u === 'set') continue;
      keep = true;
      if (u === undefined) wanted.push(r);
    }
    if (keep && wanted.length > 0 && this.store.cacheBytes * 4 > this.cfg.limits.cacheBytesMax * 3) {
      const held = wanted.filter((r) => this.mirrorsHold(r));
      if (held.length > 0) this.uncover(held, undefined);
      if (held.length < wanted.length) {
        const pinned = wanted.filter((r) => !held.includes(r));
        this.io.logLimited('journal_pinned', repeatLogIntervalMs, 'warn', 'journal_pinned', {
          regions: pinned.length, ranges: rangesOfRegions(pinned, this.cfg.volumeBytes, this.cfg.limits.regionBytes).slice(0, 16).map((x) => `${x.offsetBytes}+${x.lengthBytes}`),
          effect: 'the cache is 3/4 full, but the journal holds the only copy of acked writes there (the local storage failed them and no mirror holds them): they stay until the local storage takes them back; host writes wait once the cache is full',
          fix: 'bring the local storage back (or replace the failing device); the journal then writes them back and the cache drains',
        });
      }
    }
    return keep;
  }

  /** Whether, for every block of region `r` this copy lacks, some mirror missed no write to it (it may be down: the repair waits for it). */
  private mirrorsHold(r: number): boolean {
    const good = this.goodOf(r);
    for (let b = 0; b < good.blocks; b++) {
      if (good.has(b)) continue;
      let held = false;
      for (const peer of this.fan.mirrors.keys()) {
        const missed = this.fan.missedOf(peer, r);
        if (missed === undefined || (missed !== 'all' && !missed.has(b))) {
          held = true;
          break;
        }
      }
      if (!held) return false;
    }
    return true;
  }

  /** Persists `regions` uncovered where they were journaled; `then` runs once that is durable. */
  private uncover(regions: readonly number[], then: (() => void) | undefined): void {
    const persist: number[] = [];
    const waitOn = new Set<OpId>();
    for (const r of regions) {
      const u = this.uncovered.get(r);
      if (u === undefined && this.journaled.has(r)) persist.push(r);
      else if (u === undefined) this.uncovered.set(r, 'set'); // never journaled: nothing to persist
      else if (u !== 'set') waitOn.add(u);
    }
    if (persist.length > 0) {
      const opId = this.io.op(this);
      for (const r of persist) this.uncovered.set(r, opId);
      this.io.push({ type: 'bitmapSet', opId, peer: uncoveredKey, regions: persist });
      waitOn.add(opId);
    }
    if (then !== undefined) afterOps(waitOn, (opId) => this.uncoverWaits.get(opId) ?? this.uncoverWaits.set(opId, []).get(opId)!, then);
  }

  private readonly uncoverWaits = new Map<OpId, (() => void)[]>();

  /** Only bitmapSet of `lostKey` completes here; nothing waits on it (the suspect record covers the window). */
  onDone(ev: Completion): void {
    assert(ev.type === 'bitmapPersisted', () => `${this.io.self}: ${ev.type} for a repair op ${ev.opId}`);
    for (const [r, u] of this.uncovered) if (u === ev.opId) this.uncovered.set(r, 'set');
    const waits = this.uncoverWaits.get(ev.opId);
    this.uncoverWaits.delete(ev.opId);
    for (const w of waits ?? []) w();
  }

  /** The local storage came back and names what it missed. */
  storageRecovered(ranges: readonly ByteRange[], unknown: boolean): void {
    const regions = suspectRegions(ranges, unknown, this.cfg.volumeBytes, this.cfg.limits.regionBytes);
    // The repair writes that failed while it was away failed because it was away: the repair
    // starts again now, not after their backoff (a mirror that holds the regions whole now
    // may miss writes there later, and then no copy has every block).
    this.failures = 0;
    this.retryAtMs = 0;
    this.recoveries++;
    if (regions.length === 0) return;
    this.io.log('warn', 'storage_recovered', { regions: regions.length, unknown, effect: 'the regions it missed are read back from the mirrors' });
    // What it missed in a region suspect and journaled is what failed there (those writes the
    // journal keeps; a failed repair write there carried blocks right either way); anywhere
    // else, or when it cannot say what it missed, the region is uncovered: durably so before
    // the storage forgets its report.
    // (A region still being recorded suspect for a failed write counts: the report may come
    // before that record completes. So does a range a journal entry holds whose storage write
    // failed or is still on its way: the report may also come before that write's failure.)
    const held = (x: ByteRange): boolean => this.store.entries.some((e) => e.inCache && (!e.stored || e.sense !== undefined) && e.offsetBytes <= x.offsetBytes && x.offsetBytes + x.lengthBytes <= e.offsetBytes + e.lengthBytes);
    const loose = new Set<number>();
    if (!unknown) for (const x of ranges) if (!held(x)) for (const r of regionsOf(x.offsetBytes, x.lengthBytes, this.cfg.limits.regionBytes)) loose.add(r);
    const uncovered = unknown ? regions : regions.filter((r) => !(this.store.suspect.has(r) && !this.uncovered.has(r)) && loose.has(r));
    const rb = this.cfg.limits.regionBytes;
    for (const x of ranges) {
      for (const r of regionsOf(x.offsetBytes, x.lengthBytes, rb)) {
        const good = this.good.get(r);
        if (good === undefined) continue;
        const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, x.offsetBytes, x.lengthBytes);
        for (let b = from; b < to; b++) good.delete(b);
      }
    }
    if (unknown) for (const r of regions) this.good.delete(r);
    let left = 2;
    const both = (): void => {
      if (--left === 0) this.io.push({ type: 'storageStaleRecorded', ranges });
    };
    this.uncover(uncovered, both);
    this.store.markSuspect(regions, both);
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
    // Failed (its regions are durably suspect by now): a region no other cause made suspect is journaled.
    // Every other block of such a region is right here (the loop below takes this write's out).
    if (!ok && e.inCache) {
      const fresh = regionsOf(e.offsetBytes, e.lengthBytes, rb).filter((r) => this.store.suspect.has(r) && !this.journaled.has(r) && !this.uncovered.has(r));
      for (const r of fresh) {
        this.journaled.add(r);
        const good = this.goodOf(r);
        for (let b = 0; b < good.blocks; b++) good.add(b);
      }
      if (fresh.length > 0) this.io.push({ type: 'bitmapSet', opId: this.io.op(this), peer: journaledKey, regions: fresh });
    }
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
      // Journaled: the blocks it lacks are in the journal's failed writes, written back from there.
      if (this.journaled.has(r) && !this.uncovered.has(r) && !this.lost.has(r)) {
        const fromJournal = this.repairFromJournal(r, range, good);
        if (fromJournal === 'wait') continue;
        if (fromJournal === 'writing') {
          inflight++;
          continue;
        }
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

  /** The newest journal entry covering each block of region `r` (undefined: none). */
  private newestCovering(r: number, range: ByteRange, blocks: number): (PrimaryEntry | undefined)[] {
    const rb = this.cfg.limits.regionBytes;
    const owner = new Array<PrimaryEntry | undefined>(blocks).fill(undefined);
    const entries = this.store.entries;
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]!;
      if (!overlaps(e, range)) continue;
      const [from, to] = blocksIn(r, rb, this.cfg.blockBytes, e.offsetBytes, e.lengthBytes);
      for (let b = from; b < to; b++) owner[b] ??= e;
    }
    return owner;
  }

  /**
   * Writes back, from the journal, the blocks of a journaled region whose newest write failed
   * here ('writing'); 'wait' while a newer write there is on its way to storage; 'none' when
   * the journal holds none of the blocks it lacks (then the mirrors are asked).
   */
  private repairFromJournal(r: number, range: ByteRange, good: BlockSet): 'writing' | 'wait' | 'none' {
    const owner = this.newestCovering(r, range, good.blocks);
    const runs: { e: PrimaryEntry; from: number; to: number }[] = [];
    for (let b = 0; b < good.blocks; b++) {
      if (good.has(b)) continue;
      const e = owner[b];
      if (e === undefined) continue;
      if (!e.stored) return 'wait';
      if (e.sense === undefined || !e.inCache) continue;
      const last = runs[runs.length - 1];
      if (last !== undefined && last.e === e && last.to === b) last.to = b + 1;
      else runs.push({ e, from: b, to: b + 1 });
    }
    if (runs.length === 0) return 'none';
    this.writing.add(r);
    const bb = this.cfg.blockBytes;
    const issuedIn = this.recoveries;
    let left = runs.length;
    let failure: string | undefined;
    for (const run of runs) {
      const at = range.offsetBytes + run.from * bb;
      const end = Math.min(range.offsetBytes + run.to * bb, range.offsetBytes + range.lengthBytes);
      this.store.writeRegion(at, run.e.payload.subarray(at - run.e.offsetBytes, end - run.e.offsetBytes), (sense) => {
        if (sense !== undefined) failure ??= sense.message;
        else {
          // Only where it is still the newest write (one that came meanwhile counts for itself).
          const now = this.newestCovering(r, range, good.blocks);
          for (let b = run.from; b < run.to; b++) if (now[b] === run.e) good.add(b);
        }
        if (--left > 0) return;
        this.writing.delete(r);
        if (failure !== undefined) {
          this.failed(r, this.io.self, failure, issuedIn !== this.recoveries);
          return;
        }
        this.failures = 0;
        if (!good.full() || this.store.suspect.get(r) !== 'set') return;
        this.repaired++;
        this.finish([r], undefined);
        if (this.store.suspect.size === 0) this.io.log('info', 'local_copy_repaired', { regions: this.repaired, from: 'journal' });
      });
    }
    return 'writing';
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
    const clean = regions.filter((r) => !this.store.suspect.has(r));
    for (const r of clean) this.good.delete(r);
    // Clean: whatever these records said no longer matters (a stale one describes a region
    // that was right when it was cleared, so neither needs to be durable).
    const wasJournaled = clean.filter((r) => this.journaled.delete(r));
    const wasUncovered = clean.filter((r) => this.uncovered.delete(r));
    if (wasJournaled.length > 0) this.io.push({ type: 'bitmapClear', peer: journaledKey, regions: wasJournaled });
    if (wasUncovered.length > 0) this.io.push({ type: 'bitmapClear', peer: uncoveredKey, regions: wasUncovered });
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
    const issuedIn = this.recoveries;
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
          this.failed(rd.region, this.io.self, failure, issuedIn !== this.recoveries);
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

  /**
   * A repair failed: the next ones wait a backoff. Not for a local write issued before the
   * storage last came back (`beforeRecovery`): it failed because the storage was away, and
   * storageRecovered started the repair again at once (sim seed 81279: such a write, failing
   * 3 ms after the recovery, held every repair back 200 ms, until the one mirror holding a
   * region was gone).
   */
  private failed(region: number, peer: PeerId, message: string, beforeRecovery = false): void {
    if (!beforeRecovery) {
      this.failures++;
      this.retryAtMs = this.io.nowMs + backoffMs(this.failures, repairRetryMsMin, repairRetryMsMax);
    }
    this.io.logLimited('local_repair_failed', repeatLogIntervalMs, 'warn', 'local_repair_failed', { region, peer, message, failures: this.failures, retryInMs: Math.max(0, Math.round(this.retryAtMs - this.io.nowMs)) });
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

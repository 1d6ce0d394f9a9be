// A site's own copy of the volume (claims 2, 4, 11, 16, 17, 18): the one implementation, used
// by every role (primary, mirror, relay; a standby through its inner cores). Pure: it returns
// actions through the role's CoreIO and takes their completions back. (It runs past 450 lines:
// it is the one place every role's journal, ordering, durability and suspect regions live, and
// splitting it would spread one invariant, journal before storage, over several files.)
//
// What it owns:
//  - the journal view: every write in the battery-backed cache, in seq order (`entries`), the
//    cache byte bound, and an admission queue for writes that arrived while the cache was full
//    (backpressure: they wait un-acked, nothing is dropped);
//  - storage ordering: overlapping storage operations (entry writes, resync region writes and
//    reads) never reorder; disjoint ones run together (OverlapQueue). Nothing else in the
//    system orders overlapping writes: the disk array below is plain RAID-1;
//  - durability: a performed write is durable once FUA or a later storage flush covers it;
//    flush barriers ("everything of epoch E up to seq S is stored, then flushed") and the
//    periodic flush that bounds how long the cache holds performed writes;
//  - dropping: an entry leaves the cache, in seq order, once the role says it may go (acked
//    everywhere, acked upstream, forwarded) AND it is cached, stored and durable (claims 12 vi,
//    21). Dropping before the local flush would let a power cut lose an acked write from this
//    site's storage while peers hold it; keeping it until then lets the cache replay repair it.
//
// Journal first, then storage, for every role (claims 11, 12 v, 17: "writes the request to the
// cache, then performs it"): a role performs an entry only once its append completed. So every
// write that may have touched storage is in the journal, and a crash never leaves RAID-1 members
// disagreeing about a write nobody can replay (the write hole an array journal exists for); a
// replay re-performs each cached entry on every member. What the roles decide: what else happens
// once an entry is cached (a primary fans it out first), and when an entry may go.

import { afterOps, backoffMs, repeatLogIntervalMs, type CoreIO, type OpOwner } from './io.js';
import { OverlapQueue } from './overlap.js';
import { rangesOfRegions, regionRange, regionsOf } from './regions.js';
import { assert, localSuspectKey, type ByteRange, type CacheEntry, type Completion, type Epoch, type Limits, type OpId, type SenseInfo, type Seq } from './types.js';

/** One write in the journal, as the local store tracks it. Roles extend it with their own state. */
export interface StoreEntry extends CacheEntry {
  /** The journal append completed (successfully, or failed: `sense`). */
  cached: boolean;
  /** The journal holds it, so a cacheDrop must name it (false when its append failed). */
  inCache: boolean;
  /** The storage write completed (or failed), or this site keeps no copy. */
  stored: boolean;
  /** On stable storage (FUA or flushed), or nothing of it to keep (it failed). */
  durable: boolean;
  /** Why it failed here (journal append or storage write), if it did. */
  sense: SenseInfo | undefined;
}

/** A store entry for `ce`: fresh (to be journaled), or replayed from the journal (cached already). */
export function storeEntry(ce: CacheEntry, replayed: boolean): StoreEntry {
  return {
    epoch: ce.epoch, seq: ce.seq, offsetBytes: ce.offsetBytes, lengthBytes: ce.lengthBytes, fua: ce.fua, payload: ce.payload, payloadCrc: ce.payloadCrc,
    cached: replayed, inCache: replayed, stored: false, durable: false, sense: undefined,
  };
}

export interface LocalStoreConfig {
  readonly limits: Limits;
  readonly volumeBytes: number;
  /** False for a cache-only relay (claim 20 without 18): entries count as stored and durable at once. */
  readonly storage: boolean;
  /**
   * Perform each entry as soon as its append completed (mirrors and relays). A primary sets it
   * false: it fans an entry out first and performs it itself (its onCached hook).
   */
  readonly performWhenCached: boolean;
}

export interface LocalStoreHooks<E> {
  /** The journal append of `e` completed; `e.sense` is set when it failed. */
  onCached?(e: E): void;
  /** The storage write of `e` completed; `e.sense` is set when it failed. */
  onStored?(e: E): void;
  /**
   * `regions` of this copy are marked suspect: a read of them queued or in flight may return
   * what a failed or lost write left there, even if the region is whole again by the time
   * the read's result is used.
   */
  onSuspect?(regions: readonly number[]): void;
}

type RegionDone = (sense: SenseInfo | undefined) => void;
type ReadDone = (data: Uint8Array | undefined, sense: SenseInfo | undefined) => void;

type LocalOp<E> =
  | { readonly kind: 'entry'; readonly entry: E }
  | { readonly kind: 'regionWrite'; readonly offsetBytes: number; readonly payload: Uint8Array; readonly done: RegionDone }
  | { readonly kind: 'regionRead'; readonly offsetBytes: number; readonly lengthBytes: number; readonly done: ReadDone };

type Op<E> =
  | { readonly kind: 'append'; readonly entry: E }
  | { readonly kind: 'local'; readonly op: LocalOp<E> }
  | { readonly kind: 'flush' }
  | { readonly kind: 'suspect'; readonly done: (() => void)[] };

interface Barrier {
  readonly epoch: Epoch;
  readonly upTo: Seq;
  readonly done: RegionDone;
}

/** Backoff of a failed storage flush before the next try: doubling from the min to the max. */
export const storageRetryMsMin = 50;
export const storageRetryMsMax = 5_000;

/** Local storage ops a store may have queued or in flight (every window bound upstream of it is far below). */
const localOpsMax = 1 << 20;

export class LocalStore<E extends StoreEntry> implements OpOwner {
  /** Every write in the journal, in seq order. */
  readonly entries: E[] = [];
  /** Payload bytes of `entries` (the cache bound, Limits.cacheBytesMax). */
  cacheBytes = 0;
  /** Writes received while the cache was full: admitted in order as it drains. */
  private readonly queued: E[] = [];
  private readonly overlap = new OverlapQueue<LocalOp<E>>(localOpsMax);
  private readonly ops = new Map<OpId, Op<E>>();
  private localInflight = 0;
  private unflushed: E[] = [];
  /** Bytes of the writes in `unflushed` (the flush-by-bytes rule). */
  private unflushedBytes = 0;
  private flushing: { opId: OpId; covers: E[]; waiters: Barrier[] } | undefined;
  /** Barriers waiting for every write they cover to be stored. */
  private barriers: Barrier[] = [];
  /** Barriers whose writes are stored: the next storage flush answers them. */
  private ready: Barrier[] = [];
  private lastFlushMs = 0;
  /**
   * Regions of this site's own copy that may be wrong (issue 16 items 2, 3): lost journal
   * entries, storage writes that failed, writes missed while the storage was down. Persisted
   * (bitmap `localSuspectKey`); the role gets them repaired from its peers, then clears them.
   * A region maps to the op that persists it until that is durable.
   */
  readonly suspect = new Map<number, OpId | 'set'>();
  private suspectOps = 0;
  /** Consecutive failed storage flushes, and when the next may be tried (backoff, capped). */
  private flushFailures = 0;
  private flushRetryAtMs = 0;

  constructor(
    private readonly io: CoreIO,
    private readonly cfg: LocalStoreConfig,
    private readonly hooks: LocalStoreHooks<E> = {},
  ) {}

  /** First event of a life: the periodic flush counts from now; the suspect regions persisted before. */
  start(suspect: readonly number[] = []): void {
    this.lastFlushMs = this.io.nowMs;
    for (const r of suspect) this.suspect.set(r, 'set');
  }

  // -------------------------------------------------------------------------------------------
  // Suspect regions of this site's own copy

  /** Marks `regions` suspect (persisted); `done` runs once every one of them is durably recorded. */
  markSuspect(regions: readonly number[], done?: () => void): void {
    this.hooks.onSuspect?.(regions);
    const fresh: number[] = [];
    const waitOn = new Set<OpId>();
    for (const r of regions) {
      const st = this.suspect.get(r);
      if (st === undefined) fresh.push(r);
      else if (st !== 'set') waitOn.add(st);
    }
    if (fresh.length > 0) {
      const opId = this.io.op(this);
      for (const r of fresh) this.suspect.set(r, opId);
      this.ops.set(opId, { kind: 'suspect', done: [] });
      this.suspectOps++;
      this.io.push({ type: 'bitmapSet', opId, peer: localSuspectKey, regions: fresh });
      waitOn.add(opId);
    }
    if (done !== undefined) afterOps(waitOn, (opId) => (this.ops.get(opId) as { done: (() => void)[] }).done, done);
  }

  /** The regions hold the right data again (repaired from a peer): no longer suspect. */
  clearSuspect(regions: readonly number[]): void {
    const gone = regions.filter((r) => this.suspect.get(r) === 'set');
    for (const r of gone) this.suspect.delete(r);
    if (gone.length > 0) this.io.push({ type: 'bitmapClear', peer: localSuspectKey, regions: gone });
  }

  /** Whether every region of `e` is durably recorded suspect (a failed write may be passed then). */
  suspectRecorded(e: StoreEntry): boolean {
    for (const r of regionsOf(e.offsetBytes, e.lengthBytes, this.cfg.limits.regionBytes)) if (this.suspect.get(r) !== 'set') return false;
    return true;
  }

  /**
   * Whether a read of the range may go straight to storage now: no byte of it is suspect and no
   * storage op on it is pending (a journal replay after a restart re-performs acked writes).
   */
  readableNow(offsetBytes: number, lengthBytes: number): boolean {
    return !this.isSuspect(offsetBytes, lengthBytes) && (this.overlap.size === 0 || !this.overlap.overlaps(offsetBytes, lengthBytes));
  }

  /** Whether any byte of the range lies in a suspect region. */
  isSuspect(offsetBytes: number, lengthBytes: number): boolean {
    if (this.suspect.size === 0) return false;
    for (const r of regionsOf(offsetBytes, lengthBytes, this.cfg.limits.regionBytes)) if (this.suspect.has(r)) return true;
    return false;
  }

  /** The suspect regions as coalesced byte ranges (what a site names to its upstream). */
  suspectRanges(): ByteRange[] {
    return rangesOfRegions(this.suspect.keys(), this.cfg.volumeBytes, this.cfg.limits.regionBytes);
  }

  /** Regions wholly inside a range (a resync region or a repair that covered them). */
  regionsWithin(offsetBytes: number, lengthBytes: number): number[] {
    const rb = this.cfg.limits.regionBytes;
    return regionsOf(offsetBytes, lengthBytes, rb).filter((r) => {
      const range = regionRange(r, this.cfg.volumeBytes, rb);
      return range.offsetBytes >= offsetBytes && range.offsetBytes + range.lengthBytes <= offsetBytes + lengthBytes;
    });
  }

  // -------------------------------------------------------------------------------------------
  // Journal

  /** Whether a write of `bytes` may enter the cache now (an empty cache takes any one write). */
  fits(bytes: number): boolean {
    return this.entries.length === 0 || this.cacheBytes + bytes <= this.cfg.limits.cacheBytesMax;
  }

  /** Appends `e` to the journal (completion: hooks.onCached, where the role performs it). */
  journal(e: E): void {
    this.track(e);
    e.inCache = true;
    const opId = this.io.op(this);
    this.ops.set(opId, { kind: 'append', entry: e });
    this.io.push({ type: 'cacheAppend', opId, entry: e });
  }

  /** Takes an entry replayed from the journal at start (already cached). */
  adopt(e: E): void {
    assert(e.cached && e.inCache, () => `replayed entry s${e.seq} must be cached`);
    this.track(e);
  }

  private track(e: E): void {
    const last = this.entries[this.entries.length - 1];
    assert(last === undefined || last.epoch < e.epoch || (last.epoch === e.epoch && last.seq < e.seq), () => `seq ${e.seq} of epoch ${e.epoch} does not follow ${last?.seq} of epoch ${last?.epoch}`);
    this.entries.push(e);
    this.cacheBytes += e.lengthBytes;
  }

  /** Queues a received write that waits for cache space (admitted in order by admit()). */
  enqueue(e: E): void {
    this.queued.push(e);
  }

  get queuedCount(): number {
    return this.queued.length;
  }

  /**
   * Suspect regions are being recorded: nothing new enters the journal until they are durable
   * (a journal that reports lost entries reports them until appends move past them).
   */
  get recording(): boolean {
    return this.suspectOps > 0;
  }

  /** Moves queued writes into the cache while it has room; `accept` journals (and performs) each. */
  admit(accept: (e: E) => void): void {
    if (this.suspectOps > 0) return;
    while (this.queued.length > 0 && this.fits(this.queued[0]!.lengthBytes)) accept(this.queued.shift()!);
  }

  /** The writes waiting for cache space, oldest first. */
  queuedEntries(): readonly E[] {
    return this.queued;
  }

  // -------------------------------------------------------------------------------------------
  // Storage

  /** Performs `e` on storage once no earlier overlapping op is pending (completion: hooks.onStored). */
  perform(e: E): void {
    assert(e.cached && e.sense === undefined, () => `${this.io.self}: s${e.seq} performed before its journal append completed`);
    if (!this.cfg.storage) {
      e.stored = true;
      e.durable = true;
      return;
    }
    this.queueLocal({ kind: 'entry', entry: e });
  }

  /** Writes a region (resync data) durably (FUA), ordered with every write before it. */
  writeRegion(offsetBytes: number, payload: Uint8Array, done: RegionDone): void {
    assert(this.cfg.storage, 'writeRegion on a site without storage');
    this.queueLocal({ kind: 'regionWrite', offsetBytes, payload, done });
  }

  /** Reads a region (a resync source): it sees exactly the writes queued before it. */
  readRegion(offsetBytes: number, lengthBytes: number, done: ReadDone): void {
    assert(this.cfg.storage, 'readRegion on a site without storage');
    this.queueLocal({ kind: 'regionRead', offsetBytes, lengthBytes, done });
  }

  private queueLocal(op: LocalOp<E>): void {
    const offset = op.kind === 'entry' ? op.entry.offsetBytes : op.offsetBytes;
    const length = op.kind === 'entry' ? op.entry.lengthBytes : op.kind === 'regionWrite' ? op.payload.byteLength : op.lengthBytes;
    if (this.overlap.insert(offset, length, op)) this.issue(op);
  }

  private issue(op: LocalOp<E>): void {
    const opId = this.io.op(this);
    this.ops.set(opId, { kind: 'local', op });
    this.localInflight++;
    if (op.kind === 'entry') this.io.push({ type: 'storageWrite', opId, offsetBytes: op.entry.offsetBytes, payload: op.entry.payload, fua: op.entry.fua });
    else if (op.kind === 'regionWrite') this.io.push({ type: 'storageWrite', opId, offsetBytes: op.offsetBytes, payload: op.payload, fua: true });
    else this.io.push({ type: 'storageRead', opId, offsetBytes: op.offsetBytes, lengthBytes: op.lengthBytes });
  }

  /** Storage operations queued or in flight (overlap-ordered), and the flush if one runs. */
  get busy(): boolean {
    return this.overlap.size > 0 || this.flushing !== undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Completions

  onDone(ev: Completion): void {
    const op = this.ops.get(ev.opId);
    assert(op !== undefined, () => `${this.io.self}: ${ev.type} for unknown store op ${ev.opId}`);
    this.ops.delete(ev.opId);
    const sense = 'sense' in ev ? ev.sense : undefined;
    if (op.kind === 'append') {
      assert(ev.type === 'cacheAppended', () => `op ${ev.opId} is a cacheAppend, completed as ${ev.type}`);
      this.onAppended(op.entry, sense);
    } else if (op.kind === 'suspect') {
      assert(ev.type === 'bitmapPersisted', () => `op ${ev.opId} is a bitmapSet, completed as ${ev.type}`);
      this.suspectOps--;
      for (const [r, st] of this.suspect) if (st === ev.opId) this.suspect.set(r, 'set');
      for (const d of op.done) d();
    } else if (op.kind === 'flush') {
      assert(ev.type === 'storageFlushed', () => `op ${ev.opId} is a storageFlush, completed as ${ev.type}`);
      this.onFlushed(ev.opId, sense);
    } else {
      assert(ev.type === 'storageWritten' || ev.type === 'storageRead', () => `op ${ev.opId} is a storage op, completed as ${ev.type}`);
      this.localInflight--;
      for (const next of this.overlap.complete(op.op)) this.issue(next);
      this.onLocalDone(op.op, ev.type === 'storageRead' ? ev.data : undefined, sense);
    }
  }

  private onAppended(e: E, sense: SenseInfo | undefined): void {
    e.cached = true;
    if (sense !== undefined) {
      // Not in the cache, so never performed: nothing of it to wait for.
      this.io.log('error', 'cache_append_failed', { seq: e.seq, message: sense.message });
      e.inCache = false;
      e.sense ??= sense;
      e.stored = true;
      e.durable = true;
      // A received write this copy misses (a primary fails it to the host instead: no one has it).
      if (this.cfg.storage && this.cfg.performWhenCached) this.markSuspect(regionsOf(e.offsetBytes, e.lengthBytes, this.cfg.limits.regionBytes));
    } else if (this.cfg.performWhenCached) {
      this.perform(e);
    }
    this.hooks.onCached?.(e);
  }

  private onLocalDone(op: LocalOp<E>, data: Uint8Array | undefined, sense: SenseInfo | undefined): void {
    if (op.kind === 'regionWrite') {
      if (sense !== undefined) this.io.logLimited('resync_write_failed', repeatLogIntervalMs, 'error', 'resync_write_failed', { offsetBytes: op.offsetBytes, message: sense.message });
      op.done(sense);
      return;
    }
    if (op.kind === 'regionRead') {
      if (sense === undefined) assert(data !== undefined && data.byteLength === op.lengthBytes, () => `storage read returned ${data?.byteLength} bytes, expected ${op.lengthBytes}`);
      op.done(sense === undefined ? data : undefined, sense);
      return;
    }
    const e = op.entry;
    if (sense !== undefined) {
      this.io.logLimited('storage_write_failed', repeatLogIntervalMs, 'error', 'storage_write_failed', { seq: e.seq, offsetBytes: e.offsetBytes, message: sense.message });
      e.sense ??= sense;
      // This copy misses the write: its regions are suspect until a peer repairs them, and the
      // role hears of the failure (to report it, or to ack the host through its mirrors) only
      // once that is durable, so no restart can forget it.
      this.markSuspect(regionsOf(e.offsetBytes, e.lengthBytes, this.cfg.limits.regionBytes), () => {
        e.stored = true;
        e.durable = true; // nothing of it to keep durable
        this.hooks.onStored?.(e);
      });
      return;
    }
    e.stored = true;
    if (e.fua) {
      e.durable = true;
    } else {
      this.unflushed.push(e);
      this.unflushedBytes += e.lengthBytes;
    }
    this.hooks.onStored?.(e);
  }

  private onFlushed(opId: OpId, sense: SenseInfo | undefined): void {
    const f = this.flushing;
    assert(f !== undefined && f.opId === opId, () => `storageFlushed for unknown op ${opId}`);
    this.flushing = undefined;
    this.lastFlushMs = this.io.nowMs;
    if (sense !== undefined) {
      // Still not durable: keep them cached, and try again after a backoff (never at once: a
      // device that keeps failing must not turn the site into a loop of flushes and log lines).
      this.flushFailures++;
      this.flushRetryAtMs = this.io.nowMs + backoffMs(this.flushFailures, storageRetryMsMin, storageRetryMsMax);
      this.io.logLimited('storage_flush_failed', repeatLogIntervalMs, 'error', 'storage_flush_failed', { message: sense.message, failures: this.flushFailures, retryInMs: Math.round(this.flushRetryAtMs - this.io.nowMs) });
      this.unflushed.unshift(...f.covers);
      for (const e of f.covers) this.unflushedBytes += e.lengthBytes;
    } else {
      if (this.flushFailures > 0) this.io.log('info', 'storage_flush_recovered', { failures: this.flushFailures });
      this.flushFailures = 0;
      for (const e of f.covers) e.durable = true;
    }
    for (const b of f.waiters) b.done(sense);
  }

  // -------------------------------------------------------------------------------------------
  // Flush barriers and the periodic flush

  /** Calls `done` once every write of `epoch` up to `upTo` is stored and a flush covering them completed. */
  flushWhenStored(epoch: Epoch, upTo: Seq, done: RegionDone): void {
    assert(this.cfg.storage, 'flush barrier on a site without storage');
    this.barriers.push({ epoch, upTo, done });
  }

  /** Issues a storage flush when one is due: a barrier waits, `urgent` and anything is unflushed, or the periodic rule. */
  maybeFlush(urgent = false): void {
    if (!this.cfg.storage) return;
    if (this.barriers.length > 0) this.promoteBarriers();
    if (this.flushing !== undefined || this.io.nowMs < this.flushRetryAtMs) return;
    const n = this.unflushed.length;
    const lim = this.cfg.limits;
    const periodic = n > 0 && (n >= lim.flushAfterWritesMax || this.unflushedBytes >= lim.flushAfterBytesMax || this.io.nowMs - this.lastFlushMs >= lim.flushIntervalMs || this.cacheBytes * 2 >= lim.cacheBytesMax);
    if (!(this.ready.length > 0 || (urgent && n > 0) || periodic)) return;
    const opId = this.io.op(this);
    this.ops.set(opId, { kind: 'flush' });
    this.flushing = { opId, covers: this.unflushed, waiters: this.ready };
    this.unflushed = [];
    this.unflushedBytes = 0;
    this.ready = [];
    this.io.push({ type: 'storageFlush', opId });
  }

  private promoteBarriers(): void {
    const keep: Barrier[] = [];
    for (const b of this.barriers) {
      if (this.storedUpTo(b.epoch, b.upTo)) this.ready.push(b);
      else keep.push(b);
    }
    this.barriers = keep;
  }

  /** Every write of `epoch` up to `upTo` that this store has (journaled or queued) is stored. */
  private storedUpTo(epoch: Epoch, upTo: Seq): boolean {
    for (const e of this.entries) {
      if (e.epoch === epoch && !e.stored) return e.seq > upTo;
    }
    const q = this.queued[0];
    return q === undefined || q.seq > upTo;
  }

  get unflushedCount(): number {
    return this.unflushed.length;
  }

  // -------------------------------------------------------------------------------------------
  // Dropping (claims 12 vi, 21)

  /** Drops, in seq order, the prefix of entries the role lets go that are cached, stored and durable. */
  dropPrefix(mayGo: (e: E) => boolean): void {
    // Not while suspect regions are being recorded: a drop may move the journal's head past
    // entries it reports lost, and then the report would be gone before its record.
    if (this.suspectOps > 0) return;
    let n = 0;
    for (; n < this.entries.length; n++) {
      const e = this.entries[n]!;
      if (!e.cached || !e.stored || !e.durable || !mayGo(e)) break;
    }
    if (n > 0) this.drop(this.entries.splice(0, n));
  }

  /** Whether every entry is settled: cached, stored and durable (a failed one counts: it has nothing left to do). */
  settled(): boolean {
    return this.queued.length === 0 && this.localInflight === 0 && this.entries.every((e) => e.cached && e.stored && e.durable);
  }

  /** Drops every entry (once settled(): resync data supersedes them, or a promotion ends their epoch). */
  dropAll(): void {
    assert(this.entries.every((e) => e.cached && e.stored && e.durable), () => `${this.io.self}: dropAll() with entries still on their way`);
    if (this.entries.length > 0) this.drop(this.entries.splice(0));
  }

  private drop(gone: E[]): void {
    for (const e of gone) {
      this.cacheBytes -= e.lengthBytes;
      // Out of the journal's view, nothing reads its bytes again (a resend, a forward, a repair
      // from the journal all look among `entries`; a replay after a crash reads the journal
      // device): the site may reuse the buffer (issue 18 item 3, hal/payload-pool.ts).
      if (e.payload.byteLength > 0) this.io.push({ type: 'payloadDone', payload: e.payload });
    }
    assert(this.cacheBytes >= 0, 'cache accounting went negative');
    const keys = gone.filter((e) => e.inCache).map((e) => ({ epoch: e.epoch, seq: e.seq }));
    if (keys.length > 0) this.io.push({ type: 'cacheDrop', entries: keys });
  }

  /**
   * Nothing queued or in flight on storage, no region of this copy suspect, and every entry still journaled is one the role only
   * keeps (`kept`: a failover's tail waiting for its watermark), not one with work left.
   */
  quiescent(kept: (e: E) => boolean = () => false): boolean {
    return this.suspect.size === 0 && this.queued.length === 0 && this.localInflight === 0 && this.entries.every((e) => e.cached && e.durable && kept(e));
  }
}

/** Index of the first entry of `epoch` with a seq above `seq` (entries are in (epoch, seq) order). */
export function firstAbove(entries: readonly StoreEntry[], epoch: Epoch, seq: Seq): number {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const e = entries[mid]!;
    if (e.epoch < epoch || (e.epoch === epoch && e.seq <= seq)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The battery-backed cache: a bounded ring journal of pending write requests on a cache device
// (hal/cachedev.ts). DESIGN.md "Battery-backed cache". A site writes every request here before
// it acknowledges or forwards it, and drops the entry once the request is executed (mirror) or
// acknowledged downstream (relay, primary); on restart it replays what is still here.
//
// Claims served: 2, 4, 9 (a cache at every site), 11, 16, 17 (write the request to the cache,
// then perform it on storage), 12 and 21 (remove the request from the cache on acknowledgement),
// 18, 20 (relay cache).
//
// Model: hypercore's old oplog: each entry is a checksummed header plus a checksummed payload,
// replayed in order from the persisted head. Unlike the oplog, an unreadable entry is not simply
// the end: every entry carries a watermark (the jseq below which every entry had completed when
// it was written) and names the entry before it, so replay tells damage in the middle (reported
// by range, replay goes on) from a torn tail (cut: never acknowledged). The byte format is in
// hal/cache-format.ts, replay in hal/cache-replay.ts.
//
// Why the ring can be trusted at replay:
//   - Every entry carries a journal sequence number `jseq` (one per append, never reused within
//     a generation) and the `generation` it was written in (one per open). Replay accepts the
//     entry at the expected position only if its jseq is the next one and its generation is not
//     older than the previous entry's: stale entries of an older lap or of a torn tail cut by an
//     earlier open can never be taken for the next entry (and open erases the headers of the
//     torn tail it cuts, so the look-ahead past a damaged entry cannot take them either).
//   - Appends complete in jseq order (an append resolves only after every earlier one did), so
//     an entry below a later entry's watermark was acknowledgeable, and one at or above every
//     watermark was acknowledged to nobody.
//   - Space behind the head is reused only after the head that frees it is persisted, so the
//     persisted head always points at a real entry (or the empty tail).
//   - Done-marking persists the head lazily (every `headPersistBytes` reclaimed, when an append
//     waits for space, after `headPersistIdleMs` idle, and on close); a crash in between
//     re-delivers a few done entries, which is harmless (a site ignores a seq it applied) and rare.
//   - open() never moves the persisted head: damage it reports is reported again by the next
//     open until the head moves past it (the first persist after the caller appends or marks
//     entries done). So a caller records the damage before it appends or marks anything done.
//
// Size changes: the superblock records the region size. A journal opened with another size is
// re-formatted at the new size if it holds nothing (drained): lossless. If it still holds
// entries, open refuses and says which size replays them. A cache file shorter than its journal
// was cut short: open refuses, since growing it would hide what the missing part held.
//
// hal/ imports nothing from src/.

import { crc32 } from '@node-rs/crc32';
import { randomInt } from 'node:crypto';
import { sense } from './blockdev.js';
import {
  CacheEntryFlags,
  alignUp,
  encodeEntryHeader,
  encodeSuperblock,
  entryAlignBytes,
  entryHeaderBytes,
  entryPayloadBytesMax,
  ringStartBytes,
  superblockBytes,
  superblockSlotBytes,
  type Head,
  type PrevEntry,
  type Superblock,
} from './cache-format.js';
import { noDamage, readSuperblock, replayJournal, type JournalDamage, type ReplayResult } from './cache-replay.js';
import type { CacheDevice } from './cachedev.js';

export {
  CacheEntryFlags,
  decodeEntryHeader,
  encodeEntryHeader,
  entryAlignBytes,
  entryHeaderBytes,
  entryHeaderBytesV1,
  entryHeaderLayout,
  entryHeaderLayoutV1,
  entryPayloadBytesMax,
  ringStartBytes,
  superblockBytes,
  superblockLayout,
  superblockSlotBytes,
  type EntryHeader,
  type EntryLink,
  type PrevEntry,
} from './cache-format.js';
export type { JournalDamage, LostEntry } from './cache-replay.js';

/** Persist the head after an idle spell of this long, so few done entries replay after a crash. */
export const headPersistIdleMs = 20;
/** Bytes erased at the start of each header of a cut torn tail (its magic and version). */
const tailEraseBytes = 8;

const flagsKnown = CacheEntryFlags.FUA | CacheEntryFlags.RETAIN;

const u64Max = (1n << 64n) - 1n;

export interface EntryMeta {
  /** Volume id (u32). */
  readonly volume: number;
  readonly epoch: bigint;
  readonly seq: bigint;
  /** Byte offset of the write on the volume. */
  readonly offsetBytes: number;
  /** CacheEntryFlags bits. */
  readonly flags?: number;
  /**
   * CRC-32 of the payload when the caller has it (the site checksums a payload once: where a
   * host write came in, or from a WRITE frame's verified body CRC); computed here otherwise.
   */
  readonly payloadCrc?: number;
}

type EntryState = 'writing' | 'cached' | 'done';

/** One journal entry. Returned by append() and replay; pass it back to markDone(). */
export class EntryHandle implements EntryMeta {
  /** @internal */ state: EntryState = 'writing';
  constructor(
    /** Journal sequence number: append order, the order replay returns entries in. */
    readonly jseq: number,
    readonly volume: number,
    readonly epoch: bigint,
    readonly seq: bigint,
    readonly offsetBytes: number,
    readonly flags: number,
    readonly payloadBytes: number,
    /** @internal */ readonly posBytes: number,
    /** @internal */ readonly sizeBytes: number,
    /** @internal */ readonly generation: number,
  ) {}

  get done(): boolean {
    return this.state === 'done';
  }
}

export interface RecoveredEntry {
  readonly handle: EntryHandle;
  /** The payload as read back from the cache device (its own buffer). */
  readonly payload: Buffer;
}

/** What open() found and returns. */
export interface CacheOpenResult {
  readonly journal: CacheJournal;
  /** The intact entries in append order, each still pending: mark them done once re-performed. */
  readonly recovered: RecoveredEntry[];
  /**
   * Acknowledged entries that are gone (lost: repair those ranges; unknownLost: resync the whole
   * volume) and the torn tail that was cut. Reported again by every open until the journal's
   * head moves past them: record them before appending or marking anything done.
   */
  readonly damage: JournalDamage;
  /** Set when an empty journal of this size was re-formatted at the configured size. */
  readonly resizedFromBytes?: number;
}

export interface Occupancy {
  /** Ring bytes not available to appends (live entries, done ones not yet reclaimed, padding). */
  readonly bytes: number;
  /** Entries appended and not yet marked done. */
  readonly entries: number;
  /** Ring capacity in bytes: the configured cache size minus the superblock area. */
  readonly capacityBytes: number;
}

interface Waiter {
  readonly sizeBytes: number;
  readonly meta: EntryMeta;
  readonly flags: number;
  readonly payload: Uint8Array;
  readonly settle: Settle;
}

/**
 * How an append completes: `err` undefined and the handle, or the error. Called directly, never
 * through an adopted promise (see issue()).
 */
export type AppendCallback = (err: Error | undefined, handle: EntryHandle | undefined) => void;
type Settle = AppendCallback;

export interface CacheJournalOptions {
  /** Reclaimed bytes after which the head is persisted at once (default: 1/8 of the ring). */
  readonly headPersistBytes?: number;
}

export class CacheJournal {
  private readonly ringEndBytes: number;
  private readonly headPersistBytes: number;
  /** Allocated entries in jseq order, from the in-memory head; `first` indexes the head. */
  private ring: EntryHandle[] = [];
  private first = 0;
  private tailPos: number;
  private nextJseq: number;
  /** Every entry up to this jseq has completed (its append resolved): the watermark - 1. */
  private completedJseq: number;
  /** The entry nextJseq - 1, named in the next entry's header (when known). */
  private lastIssued: PrevEntry | undefined;
  private durable: Head;
  private sbSeq: number;
  private pendingCount = 0;
  private reclaimedSinceDurableBytes = 0;
  private persisting: Promise<void> | undefined;
  private persistAgain = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private lastCached: Promise<unknown> = Promise.resolve();
  /** Group commits written through the device's promise API and not yet completed. */
  private asyncBatches = 0;
  private readonly waiters: Waiter[] = [];
  private broken: Error | undefined;
  private closed = false;

  private constructor(
    readonly device: CacheDevice,
    private readonly journalId: number,
    /** This session's generation (one per open). */
    readonly generation: number,
    sb: Superblock,
    replay: ReplayResult,
    options: CacheJournalOptions,
  ) {
    this.ringEndBytes = device.sizeBytes;
    this.tailPos = replay.tailPos;
    this.nextJseq = replay.nextJseq;
    this.completedJseq = replay.nextJseq - 1;
    this.lastIssued = replay.lastIssued;
    // The persisted head stays where it is (see the file comment). With nothing replayed, the
    // ring counts as empty from there, so the next append goes to the tail at once.
    this.durable = { pos: sb.pos, jseq: replay.entries.length === 0 ? replay.nextJseq : sb.jseq, generation: sb.generation };
    this.sbSeq = sb.sbSeq;
    this.headPersistBytes = options.headPersistBytes ?? Math.max(entryAlignBytes, Math.floor(this.capacityBytes / 8));
  }

  /** The bound on the cache: its configured size in bytes (the ring holds 4 KiB less). */
  get cacheBytesMax(): number {
    return this.ringEndBytes;
  }

  /** Bytes the ring can hold: the configured size minus the superblock area. */
  get capacityBytes(): number {
    return this.ringEndBytes - ringStartBytes;
  }

  /**
   * Opens the journal on `device` (formatting a blank one), replays it, reports damage and cuts
   * the torn tail. Returns the intact entries in append order (= seq order for a caller that
   * appends in seq order), each still pending: mark them done once re-performed or
   * re-acknowledged. The journal owns the device from the call on: close() closes it, and so
   * does a refused open.
   */
  static async open(device: CacheDevice, options: CacheJournalOptions = {}): Promise<CacheOpenResult> {
    try {
      return await CacheJournal.openOwned(device, options);
    } catch (err) {
      await device.close().catch(() => undefined); // refused: nothing else will close it
      throw err;
    }
  }

  private static async openOwned(device: CacheDevice, options: CacheJournalOptions): Promise<CacheOpenResult> {
    if (device.sizeBytes < ringStartBytes + entryHeaderBytes * 16) {
      throw sense.invalidField(device.name, `cache of ${device.sizeBytes} bytes is too small; give it at least ${ringStartBytes + entryHeaderBytes * 16} bytes`);
    }
    const { sb, replay, resizedFromBytes } = await CacheJournal.recover(device);
    // Erase the cut tail's headers, so no later look-ahead takes a stale entry for a current one.
    const erase = Buffer.alloc(tailEraseBytes);
    for (const at of replay.tailHeaderPositions) await device.writev([erase], at);
    if (device.storedBytes !== undefined && device.storedBytes < device.sizeBytes) {
      // A blank short file, or an empty journal of a smaller size: nothing to hide, so grow it.
      if (device.grow === undefined) throw sense.invalidField(device.name, `holds ${device.storedBytes} bytes but cache.size is ${device.sizeBytes}, and this device cannot grow`);
      await device.grow();
    }
    const journal = new CacheJournal(device, sb.journalId, sb.currentGeneration + 1, sb, replay, options);
    const recovered = replay.entries.map((e): RecoveredEntry => {
      const h = e.header;
      const handle = new EntryHandle(h.jseq, h.volume, h.epoch, h.seq, h.offsetBytes, h.flags, h.payloadBytes, e.posBytes, h.sizeBytes, h.generation);
      handle.state = 'cached';
      journal.ring.push(handle);
      journal.pendingCount++;
      return { handle, payload: e.payload };
    });
    // Persist the new generation (and the same head) before the first append, so entries of
    // this session are never confused with the torn tail just cut.
    await journal.writeSuperblock({ pos: sb.pos, jseq: sb.jseq, generation: sb.generation });
    return { journal, recovered, damage: replay.damage, ...(resizedFromBytes !== undefined ? { resizedFromBytes } : {}) };
  }

  /** Reads the superblock and replays the ring, or decides a size change (no writes here). */
  private static async recover(device: CacheDevice): Promise<{ sb: Superblock; replay: ReplayResult; resizedFromBytes?: number }> {
    const storedBytes = device.storedBytes ?? device.sizeBytes; // the file's own size
    const readableBytes = Math.min(storedBytes, device.sizeBytes);
    const found = await readSuperblock(device, readableBytes);
    if (found === undefined) {
      const sb: Superblock = { sbSeq: 0, regionBytes: device.sizeBytes, journalId: randomInt(1, 0xffff_ffff), currentGeneration: 0, pos: ringStartBytes, jseq: 1, generation: 0, committedJseq: 0, drained: false };
      return { sb, replay: await replayJournal(device, sb, device.sizeBytes) };
    }
    const regionBytes = found.regionBytes;
    if (regionBytes > storedBytes) throw cutShortError(device, storedBytes, regionBytes);
    if (regionBytes === device.sizeBytes) return { sb: found, replay: await replayJournal(device, found, regionBytes) };
    let nextJseq = found.jseq;
    let tailHeaderPositions: number[] = [];
    if (!found.drained) {
      // Closed with entries, or not closed: only a replay at the old size can tell it is empty.
      if (regionBytes > readableBytes) throw resizeError(device, regionBytes, undefined);
      const replay = await replayJournal(device, found, regionBytes);
      const pending = replay.entries.length + replay.damage.lost.length + replay.damage.unknownLost;
      if (pending > 0) throw resizeError(device, regionBytes, replay);
      nextJseq = replay.nextJseq;
      tailHeaderPositions = replay.tailHeaderPositions; // erased: the new ring must not meet them
    }
    // Nothing pending: the ring starts afresh at the configured size (same journal, jseqs go on).
    const sb: Superblock = { ...found, regionBytes: device.sizeBytes, pos: ringStartBytes, jseq: nextJseq, generation: found.currentGeneration, committedJseq: nextJseq };
    const replay: ReplayResult = { entries: [], damage: noDamage, nextJseq, tailPos: ringStartBytes, lastIssued: undefined, tailHeaderPositions };
    return { sb, replay, resizedFromBytes: regionBytes };
  }

  /**
   * Writes one request into the cache: header and payload with one positional writev. The payload
   * is not copied: leave it unchanged until the promise settles. Resolves, in append order, once
   * the entry (and every earlier one) is on the cache device. When the cache is full the promise
   * waits, first come first served, until markDone() frees space; it never drops and never
   * fails for lack of space. An entry bigger than the whole cache is refused at once.
   */
  append(meta: EntryMeta, payload: Uint8Array): Promise<EntryHandle> {
    return new Promise<EntryHandle>((resolve, reject) => this.appendCb(meta, payload, (err, h) => (err === undefined ? resolve(h!) : reject(err))));
  }

  /**
   * append() with a callback: the site's write path (no promise per entry). `done` runs once, in
   * append order, when the entry and every earlier one are on the cache device, or with the
   * error. On a device that writes synchronously (a file in the page cache, writevNow) the group
   * commit is one synchronous pwritev at the end of this synchronous run (a microtask), so `done`
   * runs from a microtask, never inside appendCb for an accepted entry (settleBatch). A refused
   * entry (bad metadata, too big, journal closed or broken) fails before appendCb returns:
   * callers must tolerate that (the executor queues completions, src/site/executor.ts).
   */
  appendCb(meta: EntryMeta, payload: Uint8Array, done: AppendCallback): void {
    let flags: number;
    try {
      flags = checkMeta(this.device.name, meta, payload);
    } catch (err) {
      done(err as Error, undefined);
      return;
    }
    const sizeBytes = alignUp(entryHeaderBytes + payload.byteLength);
    if (sizeBytes > this.capacityBytes) {
      done(sense.invalidField(this.device.name, `a ${payload.byteLength}-byte write cannot fit in a ${this.capacityBytes}-byte cache ring; split it or configure a larger cache.size`), undefined);
      return;
    }
    if (this.closed) return done(sense.notPresent(this.device.name, 'cache journal is closed'), undefined);
    if (this.broken !== undefined) return done(this.brokenError(), undefined);
    const pos = this.waiters.length === 0 ? this.allocate(sizeBytes) : -1;
    if (pos >= 0) {
      this.issue(pos, sizeBytes, meta, flags, payload, done);
    } else {
      this.waiters.push({ sizeBytes, meta, flags, payload, settle: done });
      this.makeRoom();
    }
  }

  /** Marks an appended entry done (executed or acknowledged); entries may be done in any order. */
  markDone(handle: EntryHandle): void {
    if (handle.state === 'done') return; // re-delivery is idempotent, so is this
    if (handle.state !== 'cached') {
      throw new Error(`${this.device.name}: cache entry jseq ${handle.jseq} marked done before its append resolved; await append() first`);
    }
    handle.state = 'done';
    this.pendingCount--;
    // The head advances over done entries in ring order; a pending one stops it.
    let advanced = false;
    while (this.first < this.ring.length && this.ring[this.first]!.state === 'done') {
      this.reclaimedSinceDurableBytes += this.ring[this.first]!.sizeBytes;
      this.first++;
      advanced = true;
    }
    if (this.first > 1024 && this.first * 2 > this.ring.length) {
      this.ring = this.ring.slice(this.first);
      this.first = 0;
    }
    if (!advanced) return;
    if (this.waiters.length > 0 || this.reclaimedSinceDurableBytes >= this.headPersistBytes) {
      void this.persistHead();
    } else if (this.idleTimer === undefined) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = undefined;
        void this.persistHead();
      }, headPersistIdleMs);
      this.idleTimer.unref();
    }
  }

  /** Entries appended (or recovered) and not yet done, in append order. */
  pending(): EntryHandle[] {
    const out: EntryHandle[] = [];
    for (let i = this.first; i < this.ring.length; i++) if (this.ring[i]!.state !== 'done') out.push(this.ring[i]!);
    return out;
  }

  occupancy(): Occupancy {
    const h = this.durable.pos;
    const t = this.tailPos;
    let bytes: number;
    if (this.durable.jseq === this.nextJseq) bytes = 0;
    else if (t > h) bytes = t - h;
    else bytes = this.ringEndBytes - h + (t - ringStartBytes);
    return { bytes, entries: this.pendingCount, capacityBytes: this.capacityBytes };
  }

  /** Appends waiting for space, in arrival order. */
  get waitingAppends(): number {
    return this.waiters.length;
  }

  /** Persists the head, waits for in-flight appends, closes the device. Pending entries stay. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    for (const w of this.waiters.splice(0)) w.settle(sense.notPresent(this.device.name, 'cache journal closed while this append waited for space'), undefined);
    this.flushBatch();
    await this.lastCached.catch(() => undefined);
    if (this.broken === undefined) {
      await this.persistHead().catch(() => undefined);
      // Nothing pending: say so, so the next open may change the cache size at once.
      if (this.pendingCount === 0) await this.writeSuperblock(this.memHead(), true).catch(() => undefined);
    }
    await this.device.close();
  }

  // --- space --------------------------------------------------------------------------------

  /** Where an entry of `sizeBytes` goes now, or -1 if it must wait for the head to move. */
  private allocate(sizeBytes: number): number {
    const h = this.durable.pos;
    const t = this.tailPos;
    const end = this.ringEndBytes;
    if (this.durable.jseq === this.nextJseq) {
      // Nothing live since the persisted head. Replay looks for the next entry at the head or
      // at the ring start; whichever we use, the entry must not straddle the head, or replay
      // would start reading inside its payload.
      const fits = (at: number): boolean => at + sizeBytes <= end && !(at < h && h < at + sizeBytes);
      if (fits(t)) return t;
      if (fits(ringStartBytes)) return ringStartBytes;
      return -1;
    }
    // Live entries occupy [h, t) around the ring; the free space is [t, h) around the ring.
    if (t > h) {
      if (t + sizeBytes <= end) return t;
      if (ringStartBytes + sizeBytes <= h) return ringStartBytes; // wrap, leaving [t, end) unused
      return -1;
    }
    if (t < h && t + sizeBytes <= h) return t;
    return -1;
  }

  /** Called when an append waits: get the head persisted (or rewound) so space frees. */
  private makeRoom(): void {
    const empty = this.first === this.ring.length;
    if (empty && this.durable.jseq === this.nextJseq && this.allocate(this.waiters[0]!.sizeBytes) < 0) {
      // Nothing is live, yet the entry does not fit between the tail and the end of the ring
      // nor before the head: restart the ring at its beginning (and persist that head).
      this.tailPos = ringStartBytes;
    }
    void this.persistHead();
  }

  private serveWaiters(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0]!;
      if (this.broken !== undefined) {
        this.waiters.shift();
        w.settle(this.brokenError(), undefined);
        continue;
      }
      const pos = this.allocate(w.sizeBytes);
      if (pos < 0) {
        // Still no room: if the head can move further (or the ring can rewind), do it.
        const head = this.memHead();
        if (head.jseq !== this.durable.jseq || head.pos !== this.durable.pos || this.first === this.ring.length) this.makeRoom();
        return;
      }
      this.waiters.shift();
      this.issue(pos, w.sizeBytes, w.meta, w.flags, w.payload, w.settle);
    }
  }

  // --- writing ------------------------------------------------------------------------------

  private issue(pos: number, sizeBytes: number, meta: EntryMeta, flags: number, payload: Uint8Array, settle: Settle): void {
    const handle = new EntryHandle(this.nextJseq++, meta.volume, meta.epoch, meta.seq, meta.offsetBytes, flags, payload.byteLength, pos, sizeBytes, this.generation);
    this.ring.push(handle);
    this.pendingCount++;
    this.tailPos = pos + sizeBytes;
    const header = Buffer.allocUnsafe(entryHeaderBytes);
    // The watermark and the previous entry's identity let replay tell damage from a torn tail
    // and name a damaged entry's range (hal/cache-replay.ts).
    encodeEntryHeader(header, this.journalId, handle, meta.payloadCrc ?? crc32(payload), { committedJseq: this.completedJseq + 1, prev: this.lastIssued });
    this.lastIssued = { epoch: meta.epoch, seq: meta.seq, offsetBytes: meta.offsetBytes, payloadBytes: payload.byteLength, posBytes: pos };
    // Group commit: entries appended in one synchronous run (a burst of frames from one socket
    // read, the actions of one core step) that sit back to back in the ring leave in ONE
    // positional writev, header, payload and alignment padding of each in turn. (Starting the
    // payload write first and checksumming while it runs measured slower: the second write to
    // the same pages waits on the file's lock, and on a busy 2-core node there is no idle core
    // to hide the CRC on.)
    const padBytes = sizeBytes - entryHeaderBytes - payload.byteLength;
    let b = this.batch;
    if (b !== undefined && (b.endPos !== pos || b.buffers.length + 3 > batchBuffersMax)) {
      this.flushBatch(false);
      b = undefined;
    }
    if (b === undefined) {
      b = this.batch = { pos, endPos: pos, buffers: [], entries: [], padBytes: 0 };
      queueMicrotask(() => this.flushBatch());
    }
    // Padding goes between entries only: the last entry's tail needs no bytes on the device.
    if (b.padBytes > 0) b.buffers.push(zeroPad.subarray(0, b.padBytes));
    b.buffers.push(header, payload);
    b.endPos = pos + sizeBytes;
    b.padBytes = padBytes;
    b.entries.push({ handle, settle });
    // Big writes go at once on a device written through the thread pool: their device write
    // then overlaps the next entry's CRC, which waiting for the batch would serialize (1 MiB
    // entries measured ~10% slower batched). A synchronous device overlaps nothing: the whole
    // run goes in one writev at its end.
    if (b.endPos - b.pos >= batchBytesMax && this.device.writevNow === undefined) this.flushBatch(false);
  }

  /**
   * Entries of a group commit are on the device (or it failed): complete them in append order.
   * A completion callback may append again, and on a synchronous device such an append can
   * write a group commit at once (issue(): the ring wrapped, or the batch is full) before this
   * loop reached the rest of this one. Completing those first would complete later entries
   * first (and move completedJseq back); completing them inside issue() would re-enter it while
   * it builds a batch (and lose the nested appends). So written batches queue here and complete
   * only from drainSettled(), never inside issue(); a drain that runs while one is under way
   * leaves the work to it.
   */
  private settleBatch(entries: readonly { handle: EntryHandle; settle: Settle }[], err: Error | undefined, now: boolean): void {
    this.toSettle.push({ entries, err });
    if (now) this.drainSettled();
    else if (!this.drainScheduled) {
      this.drainScheduled = true;
      queueMicrotask(() => {
        this.drainScheduled = false;
        this.drainSettled();
      });
    }
  }

  private drainSettled(): void {
    if (this.settling) return;
    this.settling = true;
    let i = 0;
    try {
      for (; i < this.toSettle.length; i++) {
        const t = this.toSettle[i]!;
        if (t.err !== undefined) {
          for (const e of t.entries) e.settle(t.err, undefined);
          continue;
        }
        for (const e of t.entries) {
          e.handle.state = 'cached';
          this.completedJseq = e.handle.jseq;
          e.settle(undefined, e.handle);
        }
      }
    } finally {
      // A callback that threw leaves the batches after its own for the next drain.
      this.toSettle.splice(0, Math.min(i + 1, this.toSettle.length));
      this.settling = false;
    }
  }

  /** Group commits written and waiting to complete, in order (settleBatch). */
  private readonly toSettle: { entries: readonly { handle: EntryHandle; settle: Settle }[]; err: Error | undefined }[] = [];
  private settling = false;
  private drainScheduled = false;

  /** Entries issued in this synchronous run, not yet handed to the device (issue()). */
  private batch: { pos: number; endPos: number; buffers: Uint8Array[]; entries: { handle: EntryHandle; settle: Settle }[]; padBytes: number } | undefined;

  /**
   * Writes the batch. `settleNow`: complete what is written before returning (false from
   * issue(): a nested completion would re-enter it; settleBatch completes them from a microtask).
   */
  private flushBatch(settleNow = true): void {
    const b = this.batch;
    if (b === undefined) return;
    this.batch = undefined;
    const now = this.device.writevNow;
    if (now !== undefined && this.asyncBatches === 0) {
      // Page-cache device: the group commit is done when the syscall returns, and every earlier
      // one is written already (none is in flight), so the entries complete in order after
      // those still queued to complete.
      let failed: Error | undefined;
      try {
        now(b.buffers, b.pos);
      } catch (err) {
        failed = err instanceof Error ? err : new Error(String(err));
        this.broken ??= failed;
      }
      this.settleBatch(b.entries, failed, settleNow);
      return;
    }
    this.asyncBatches++;
    let own: Promise<unknown> = this.device.writev(b.buffers, b.pos);
    own = own.catch((err: unknown) => {
      this.broken ??= err instanceof Error ? err : new Error(String(err));
      throw err;
    });
    // Resolve in append order: replay stops at the first torn entry, so an entry is only safe
    // once every earlier one is written too. Each append's promise is settled from this chain
    // (not by adopting a promise, which costs extra ticks), so callers' reactions also run in
    // append order: a site acks upstream in seq order.
    const cached = Promise.all([this.lastCached, own]).then(
      () => {
        this.asyncBatches--;
        this.settleBatch(b.entries, undefined, true);
      },
      (err: unknown) => {
        this.asyncBatches--;
        this.settleBatch(b.entries, err instanceof Error ? err : new Error(String(err)), true);
        throw err;
      },
    );
    cached.catch(() => undefined); // the callers see the rejection through `settle`
    this.lastCached = cached;
  }

  private brokenError(): Error {
    return sense.hardware(
      this.device.name,
      `an earlier cache write failed (${this.broken?.message}); later entries cannot be made safe, restart the site once the cache device is fixed`,
      this.broken,
    );
  }

  // --- the head -----------------------------------------------------------------------------

  private memHead(): Head {
    const front = this.ring[this.first];
    if (front !== undefined) return { pos: front.posBytes, jseq: front.jseq, generation: front.generation };
    return { pos: this.tailPos, jseq: this.nextJseq, generation: this.generation };
  }

  /** Persists the in-memory head (coalesced: one superblock write in flight at a time). */
  private persistHead(): Promise<void> {
    if (this.persisting !== undefined) {
      this.persistAgain = true;
      return this.persisting;
    }
    this.persisting = (async () => {
      try {
        do {
          this.persistAgain = false;
          await this.persistHeadNow();
        } while (this.persistAgain);
      } finally {
        this.persisting = undefined;
      }
    })();
    this.persisting.catch((err: unknown) => {
      this.broken ??= err instanceof Error ? err : new Error(String(err));
      this.serveWaiters(); // fail the waiters rather than leave them hanging
    });
    return this.persisting;
  }

  private async persistHeadNow(): Promise<void> {
    if (this.idleTimer !== undefined) {
      clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
    const head = this.memHead();
    const reclaimed = this.reclaimedSinceDurableBytes;
    await this.writeSuperblock(head);
    this.durable = head;
    this.reclaimedSinceDurableBytes -= reclaimed;
    this.serveWaiters();
  }

  /** Writes the next superblock copy: `head`, this generation, the watermark as of now. */
  private async writeSuperblock(head: Head, drained = false): Promise<void> {
    const sbSeq = this.sbSeq + 1;
    const buf = Buffer.alloc(superblockBytes);
    encodeSuperblock(buf, {
      sbSeq,
      regionBytes: this.device.sizeBytes,
      journalId: this.journalId,
      currentGeneration: this.generation,
      committedJseq: this.completedJseq + 1,
      drained,
      ...head,
    });
    await this.device.writev([buf], (sbSeq % 2) * superblockSlotBytes);
    this.sbSeq = sbSeq;
  }
}

// --- encoding and errors ----------------------------------------------------------------------

/** Buffers one group-commit writev may carry (IOV_MAX is 1024 on Linux). */
const batchBuffersMax = 512;
/** A group commit is written as soon as it holds this many bytes. */
const batchBytesMax = 128 * 1024;
/** Alignment padding between entries of one group commit (never more than an alignment unit). */
const zeroPad = new Uint8Array(entryAlignBytes);

function checkMeta(device: string, meta: EntryMeta, payload: Uint8Array): number {
  const flags = meta.flags ?? 0;
  if (!Number.isInteger(meta.volume) || meta.volume < 0 || meta.volume > 0xffff_ffff) throw sense.invalidField(device, `volume id ${meta.volume} is not a u32`);
  if (typeof meta.epoch !== 'bigint' || meta.epoch < 0n || meta.epoch > u64Max) throw sense.invalidField(device, `epoch ${meta.epoch} is not a u64 bigint`);
  if (typeof meta.seq !== 'bigint' || meta.seq < 0n || meta.seq > u64Max) throw sense.invalidField(device, `seq ${meta.seq} is not a u64 bigint`);
  if (!Number.isSafeInteger(meta.offsetBytes) || meta.offsetBytes < 0) throw sense.invalidField(device, `write offset ${meta.offsetBytes} bytes is not valid`);
  if (!Number.isInteger(flags) || (flags & ~flagsKnown) !== 0) throw sense.invalidField(device, `cache entry flags 0x${flags.toString(16)} include unknown bits`);
  if (payload.byteLength > entryPayloadBytesMax) throw sense.invalidField(device, `payload of ${payload.byteLength} bytes exceeds ${entryPayloadBytesMax}`);
  return flags;
}

/** The cache file is shorter than the journal in it: its missing part cannot be replayed. */
function cutShortError(device: CacheDevice, storedBytes: number, regionBytes: number): Error {
  return sense.invalidField(
    device.name,
    `the file holds ${storedBytes} bytes but the cache journal in it was formatted for ${regionBytes} bytes (cache.size is ${device.sizeBytes}): ` +
      `it was cut short, and writes pending in its missing part can no longer be replayed. Restore the whole file if you have a copy; ` +
      `do not grow it back, that would hide the loss. Without a copy, move the file aside and have this site resynced in full from its peers before it serves (its storage may lack acknowledged writes)`,
  );
}

/** The journal was formatted for another size and may hold pending writes. */
function resizeError(device: CacheDevice, regionBytes: number, replay: ReplayResult | undefined): Error {
  const shortFile = device.storedBytes !== undefined && device.storedBytes < device.sizeBytes ? ` (the file holds ${device.storedBytes} bytes)` : '';
  const holds =
    replay === undefined
      ? 'and it was not closed empty, so it may hold pending writes'
      : `and it still holds ${replay.entries.length} pending write(s)${replay.damage.lost.length + replay.damage.unknownLost > 0 ? ` and ${replay.damage.lost.length + replay.damage.unknownLost} damaged one(s)` : ''}`;
  return sense.invalidField(
    device.name,
    `the cache journal on this device was formatted for ${regionBytes} bytes but cache.size is ${device.sizeBytes}${shortFile}, ${holds}. ` +
      `Set cache.size to ${regionBytes} so the site replays them; once it has drained its cache (geomirror status shows no cache entries), stop it and set cache.size to ${device.sizeBytes}: ` +
      `a journal closed empty is re-formatted at the new size`,
  );
}

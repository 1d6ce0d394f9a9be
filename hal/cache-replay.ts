// Replay of the cache journal (hal/cache.ts) after a restart: which entries are intact, which
// were lost to damage in the middle of the log, and which torn tail is cut. The byte format is in
// hal/cache-format.ts. DESIGN.md "Damage is reported and repaired, never cut silently".
//
// The question replay must answer at an unreadable entry: torn tail or damage? Appends complete
// in jseq order (an append resolves only once every earlier one did), but a crash can tear a
// group-commit writev anywhere, and two writevs in flight can land in either order, so an intact
// entry after a bad one does not by itself prove damage. The watermark does: every version-2
// entry carries committedJseq, below which every entry had completed when it was written (and
// every superblock carries the watermark as of its write). So:
//
//   1. Walk the chain from the persisted head as before (the next jseq at the expected position,
//      or at the ring start). At a bad entry, follow the chain on while headers are readable
//      (payload damaged: its own header names its range), then look ahead, in 64-byte steps
//      through the rest of the ring (up to the head, through the ring start), for the next
//      intact entry of this journal and generation with a higher jseq; resume there. The entry
//      it follows is named by its prev* fields, and that one's by its own, back to the bad one.
//   2. With the whole ring read, the highest watermark seen (intact entries, readable headers,
//      the superblock) decides: a bad entry below it had completed once: it is LOST (reported,
//      with its range when any header names it, unknown otherwise) and replay continues past it.
//      The first bad entry at or above it was never acknowledged to anyone: the TORN TAIL starts
//      there, and it and everything after it is cut (and its headers erased, so no later scan
//      can take a stale entry for a current one), as before.
//
// What it cannot see: damage to the last entries whose completion no later entry and no later
// superblock write recorded (a crash right after they were acknowledged, before anything else
// was written) looks like a torn tail. A clean close() writes the superblock, so after a clean
// stop every acknowledged entry is covered. Version-1 entries carry no watermark.
//
// Bounds: one pass over the ring. The chain and the look-ahead only move forward in ring order
// (from the head round to the head), so headers are checked at most capacity / 64 times, and
// payloads are checksummed at most once per entry found; a budget of two ring capacities of
// checksummed payload bytes stops a pathological image with an error instead of quadratic work.
//
// hal/ imports nothing from src/.

import { crc32 } from '@node-rs/crc32';
import { sense } from './blockdev.js';
import type { CacheDevice } from './cachedev.js';
import {
  decodeEntryHeader,
  decodeSuperblock,
  entryAlignBytes,
  entryHeaderBytes,
  entryHeaderBytesV1,
  entryMagic,
  ringStartBytes,
  superblockBytes,
  superblockSlotBytes,
  type EntryHeader,
  type PrevEntry,
  type Superblock,
} from './cache-format.js';

/** An acknowledged entry that replay found damaged, with the range its write covered. */
export interface LostEntry {
  readonly jseq: number;
  readonly epoch: bigint;
  readonly seq: bigint;
  /** Where the write went on the volume, and how long it was. */
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/**
 * What replay found wrong, as facts for the caller (hal logs nothing). `lost` and `unknownLost`
 * are acknowledged writes that are gone from the journal: each `lost` range must be repaired
 * (from the site's upstream or mirrors); `unknownLost` > 0 means some lost write cannot be named,
 * so the whole volume must be resynced. The torn tail is what a crash cut mid-append: entries
 * never acknowledged to anyone, so no loss.
 */
export interface JournalDamage {
  readonly lost: LostEntry[];
  readonly unknownLost: number;
  /** Entries of the cut tail (counted from the first cut jseq to the highest one seen). */
  readonly tornTailEntries: number;
  /** Ring bytes from the end of the last replayed entry to the end of the furthest cut entry. */
  readonly tornTailBytes: number;
}

export const noDamage: JournalDamage = { lost: [], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 };

/** An intact entry, in replay order. */
export interface ReplayedEntry {
  readonly posBytes: number;
  readonly header: EntryHeader;
  readonly payload: Buffer;
}

export interface ReplayResult {
  readonly entries: ReplayedEntry[];
  readonly damage: JournalDamage;
  /** The jseq the next append takes: above every replayed and every lost entry. */
  readonly nextJseq: number;
  /** Where the next append goes: the end of the last replayed entry (or the head). */
  readonly tailPos: number;
  /** The entry nextJseq - 1, for the next append's prev* fields, when known. */
  readonly lastIssued: PrevEntry | undefined;
  /** Where the cut tail's readable headers are: erase them before the next append. */
  readonly tailHeaderPositions: number[];
}

/**
 * Reads the ring through a window so replay does a few big reads, not two per entry. Where the
 * device can read into a given buffer, the window is one buffer reused for the whole pass: a
 * view it returns is valid until the next get() (headers are decoded at once; a payload is
 * copied out once its checksum holds). A fresh buffer per window left ~80 MiB of garbage per
 * start of a site with a 64 MiB cache, resident until a mark-compact that an idle site may not
 * run for a long time (issue 18, RSS).
 */
class WindowReader {
  private static readonly windowBytes = 4 * 1024 * 1024;
  private buf: Buffer = Buffer.alloc(0);
  private filled = 0;
  private start = 0;
  constructor(
    private readonly device: CacheDevice,
    private readonly endBytes: number,
  ) {}

  async get(pos: number, lengthBytes: number): Promise<Buffer> {
    if (pos < this.start || pos + lengthBytes > this.start + this.filled) {
      const len = Math.min(Math.max(lengthBytes, WindowReader.windowBytes), this.endBytes - pos);
      if (this.device.readInto !== undefined) {
        if (this.buf.byteLength < len) this.buf = Buffer.allocUnsafe(Math.max(len, WindowReader.windowBytes));
        await this.device.readInto(this.buf, pos, len);
      } else {
        this.buf = await this.device.read(pos, len);
      }
      this.filled = len;
      this.start = pos;
    }
    return this.buf.subarray(pos - this.start, pos - this.start + lengthBytes);
  }

  /** The big-endian u32 at `pos` if the window holds it, without a read or an allocation. */
  peekU32(pos: number): number | undefined {
    if (pos < this.start || pos + 4 > this.start + this.filled) return undefined;
    return this.buf.readUInt32BE(pos - this.start);
  }
}

function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.byteLength; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * The newest valid superblock copy, or undefined for a device that never held a journal (or
 * whose very first superblock write was torn, before anything could be appended). A device that
 * holds journal entries but no valid superblock copy is refused: its pending writes cannot be
 * located, and formatting it over would lose them silently.
 */
export async function readSuperblock(device: CacheDevice, storedBytes: number): Promise<Superblock | undefined> {
  const areaBytes = Math.min(2 * superblockSlotBytes, storedBytes);
  if (areaBytes === 0) return undefined;
  const buf = await device.read(0, areaBytes);
  const slot = (at: number): Buffer | undefined => (at + superblockBytes <= areaBytes ? buf.subarray(at, at + superblockBytes) : undefined);
  const slots = [slot(0), slot(superblockSlotBytes)];
  let best: Superblock | undefined;
  for (const s of slots) {
    const c = s === undefined ? undefined : decodeSuperblock(s);
    if (c !== undefined && (best === undefined || c.sbSeq > best.sbSeq)) best = c;
  }
  if (best === undefined) {
    if (isZero(buf)) return undefined; // never formatted
    // The first superblock write of a new journal goes to copy 1 and nothing is appended before
    // it completed: copy 0 blank, copy 1 torn, and no entry anywhere is a new journal.
    const firstWriteTorn = slots[0] !== undefined && isZero(slots[0]) && !(await holdsEntryHeader(device, storedBytes));
    if (firstWriteTorn) return undefined;
    throw sense.mediumRead(
      device.name,
      undefined,
      `neither copy of the cache journal superblock (bytes 0-1023) is valid, but the device is not blank: its pending writes cannot be located. ` +
        `If this is not a geomirror cache, point cache.device at another file; if it is, move it aside and have this site resynced in full from its peers before it serves (its storage may lack acknowledged writes)`,
    );
  }
  const sane = best.pos >= ringStartBytes && best.pos <= best.regionBytes && best.pos % entryAlignBytes === 0 && best.jseq >= 1;
  if (!sane) throw sense.mediumRead(device.name, undefined, `cache superblock names head ${best.pos}, outside the ring; the cache device is corrupt`);
  return best;
}

/** Whether any 64-byte step of the ring holds a valid entry header of any journal. */
async function holdsEntryHeader(device: CacheDevice, storedBytes: number): Promise<boolean> {
  const end = Math.min(storedBytes, device.sizeBytes);
  const reader = new WindowReader(device, end);
  for (let at = ringStartBytes; at + entryHeaderBytesV1 <= end; at += entryAlignBytes) {
    if (decodeEntryHeader(await reader.get(at, Math.min(entryHeaderBytes, end - at))) !== undefined) return true;
  }
  return false;
}

interface Found {
  readonly at: number;
  readonly h: EntryHeader;
}

/** Where the scan is: a ring position, and whether it already went round the ring end (it stops at the head). */
interface Cursor {
  readonly pos: number;
  readonly wrapped: boolean;
}

/** The ring of one journal as replay sees it: headers that belong, payloads, ring order. */
class RingView {
  private readonly reader: WindowReader;
  private payloadBudgetBytes: number;
  readonly head: number;
  readonly capacityBytes: number;

  constructor(
    private readonly device: CacheDevice,
    private readonly sb: Superblock,
    private readonly endBytes: number,
  ) {
    this.reader = new WindowReader(device, endBytes);
    this.head = sb.pos;
    this.capacityBytes = endBytes - ringStartBytes;
    this.payloadBudgetBytes = 2 * this.capacityBytes;
  }

  /** The header at `at` if it is one of this journal's, of a generation up to the current one, whose entry fits where entries lie. */
  async header(at: number): Promise<EntryHeader | undefined> {
    if (at < ringStartBytes || at + entryHeaderBytesV1 > this.endBytes) return undefined;
    const h = decodeEntryHeader(await this.reader.get(at, Math.min(entryHeaderBytes, this.endBytes - at)));
    if (h === undefined || h.journalId !== this.sb.journalId || h.generation > this.sb.currentGeneration) return undefined;
    // Entries never cross the ring end, and one that starts before the head ends by it (the
    // journal never lets an entry straddle its persisted head).
    if (at + h.sizeBytes > (at < this.head ? this.head : this.endBytes)) return undefined;
    return h;
  }

  /**
   * True when the window already shows that no entry header starts at `at` (no magic there):
   * the look-ahead then skips the step without an await (a 64 MiB ring is a million steps; a
   * promise and a view per step made a site's start take ~1.3 s and ~900 MiB of allocation).
   */
  surelyNoHeader(at: number): boolean {
    const magic = this.reader.peekU32(at);
    return magic !== undefined && magic !== entryMagic;
  }

  /** The entry's payload if its checksum is right. */
  async payload(f: Found): Promise<Buffer | undefined> {
    this.payloadBudgetBytes -= f.h.payloadBytes;
    if (this.payloadBudgetBytes < 0) {
      throw sense.mediumRead(this.device.name, undefined, `cache replay checksummed more than twice the ring (${this.capacityBytes} bytes); the journal is corrupt`);
    }
    const payload = await this.reader.get(f.at + f.h.headerBytes, f.h.payloadBytes);
    // A copy: the reader reuses its window for the next read.
    return crc32(payload) === f.h.payloadCrc ? Buffer.from(payload) : undefined;
  }

  /**
   * Entry `jseq` (generation at least `minGen`) where the chain puts it: at `at.pos`, or at the
   * ring start if it did not fit before the end (once per lap).
   */
  async onChain(at: Cursor, jseq: number, minGen: number): Promise<Found | undefined> {
    for (const p of this.chainPositions(at)) {
      const h = await this.header(p);
      if (h !== undefined && h.jseq === jseq && h.generation >= minGen) return { at: p, h };
    }
    return undefined;
  }

  private chainPositions(c: Cursor): number[] {
    if (c.wrapped) return c.pos < this.head ? [c.pos] : []; // back at the head: a whole lap
    return this.head > ringStartBytes ? [c.pos, ringStartBytes] : [c.pos];
  }

  /** 64-byte steps in ring order from the cursor round to the head. */
  *stepsFrom(c: Cursor): Generator<number> {
    let from = c.pos;
    if (!c.wrapped) {
      for (let at = from; at + entryHeaderBytesV1 <= this.endBytes; at += entryAlignBytes) yield at;
      from = ringStartBytes;
    }
    for (let at = from; at < this.head; at += entryAlignBytes) yield at;
  }

  /** The cursor just past the entry found at `f.at`. */
  after(c: Cursor, f: Found): Cursor {
    return { pos: f.at + f.h.sizeBytes, wrapped: c.wrapped || f.at < this.head };
  }

  /** Distance in ring order from the head to `at` (the scan only moves forward in it). */
  lin(at: number): number {
    return at >= this.head ? at - this.head : this.endBytes - this.head + (at - ringStartBytes);
  }
}

/** A run of unreadable entries [from, to) and what is known about each. */
interface BadRun {
  readonly from: number;
  /** The jseq replay resumed at; undefined for the final run (nothing intact after it). */
  readonly to: number | undefined;
  /** Entries of the run named by a readable header or by the next entry's prev* fields. */
  readonly known: Map<number, PrevEntry>;
  /** Readable headers met in the run (its chain and the look-ahead), for the torn-tail count and erasure. */
  readonly headers: Found[];
}

interface Intact extends Found {
  readonly payload: Buffer;
}

/** Reads the whole journal from the persisted head of `sb`, whose ring ends at `endBytes`. */
export async function replayJournal(device: CacheDevice, sb: Superblock, endBytes: number): Promise<ReplayResult> {
  if (sb.currentGeneration === 0) {
    // Freshly formatted: nothing was ever appended.
    return { entries: [], damage: noDamage, nextJseq: sb.jseq, tailPos: sb.pos, lastIssued: undefined, tailHeaderPositions: [] };
  }
  const view = new RingView(device, sb, endBytes);
  const intact: Intact[] = [];
  const runs: BadRun[] = [];
  let watermark = sb.committedJseq;
  let cur: Cursor = { pos: sb.pos, wrapped: false };
  let jseq = sb.jseq;
  let minGen = sb.generation;
  let walkedBytes = 0;
  for (;;) {
    const f = await view.onChain(cur, jseq, minGen);
    const payload = f === undefined ? undefined : await view.payload(f);
    let next: Intact | undefined = f !== undefined && payload !== undefined ? { ...f, payload } : undefined;
    if (next === undefined) {
      const run = await badRun(view, cur, jseq, minGen);
      for (const r of run.run.headers) watermark = Math.max(watermark, r.h.committedJseq);
      runs.push(run.run);
      if (run.resume === undefined) break;
      next = run.resume;
    }
    walkedBytes += next.h.sizeBytes;
    if (walkedBytes > view.capacityBytes) {
      throw sense.mediumRead(device.name, undefined, `cache replay walked more than the whole ring (${view.capacityBytes} bytes); the journal is corrupt`);
    }
    intact.push(next);
    watermark = Math.max(watermark, next.h.committedJseq);
    cur = view.after(cur, next);
    jseq = next.h.jseq + 1;
    minGen = next.h.generation;
  }
  return classify(view, sb, intact, runs, watermark);
}

/**
 * At the unreadable entry `jseq` (expected at `pos`): follows the chain on through readable
 * headers, then looks ahead for the next intact entry to resume at, and names what it can of
 * the entries in between.
 */
async function badRun(view: RingView, start: Cursor, jseq: number, minGen: number): Promise<{ run: BadRun; resume: Intact | undefined }> {
  const known = new Map<number, PrevEntry>();
  const headers: Found[] = [];
  let at = start;
  let j = jseq;
  let gen = minGen;
  for (let f = await view.onChain(at, j, gen); f !== undefined; f = await view.onChain(at, j, gen)) {
    const payload = j === jseq ? undefined : await view.payload(f); // the first one was just found bad
    if (payload !== undefined) return { run: { from: jseq, to: j, known, headers }, resume: { ...f, payload } };
    known.set(j, identity(f));
    headers.push(f);
    at = view.after(at, f);
    j++;
    gen = f.h.generation;
  }
  // Look ahead. Entries of older laps have lower jseqs; torn tails cut by earlier opens were
  // erased then; older generations cannot follow a newer one.
  let resume: Intact | undefined;
  for (const step of view.stepsFrom(at)) {
    if (view.surelyNoHeader(step)) continue; // what header() would say, without the await
    const h = await view.header(step);
    if (h === undefined || h.jseq < j || h.generation < gen) continue;
    const f = { at: step, h };
    headers.push(f);
    if (h.jseq === j) continue; // not where the chain puts it: not the entry j
    const payload = await view.payload(f);
    if (payload !== undefined) {
      resume = { ...f, payload };
      break;
    }
  }
  if (resume !== undefined) headers.pop(); // the resume point is an intact entry, not part of the run
  // Name what the readable headers say: each names itself, and the one before it, and so on back
  // (latest first; a walk stops at an entry already named, so this stays linear).
  for (const f of headers) if (!known.has(f.h.jseq)) known.set(f.h.jseq, identity(f));
  const anchors = [...(resume === undefined ? [] : [resume]), ...headers].sort((x, y) => y.h.jseq - x.h.jseq);
  for (const f of anchors) await nameBackwards(view, f, jseq, known);
  return { run: { from: jseq, to: resume?.h.jseq, known, headers }, resume };
}

function identity(f: Found): PrevEntry {
  return { epoch: f.h.epoch, seq: f.h.seq, offsetBytes: f.h.offsetBytes, payloadBytes: f.h.payloadBytes, posBytes: f.at };
}

/** Walks back from `from` through prev* fields, naming the entries down to `lowJseq` (or one already named). */
async function nameBackwards(view: RingView, from: Found, lowJseq: number, known: Map<number, PrevEntry>): Promise<void> {
  let cur = from.h;
  for (let k = from.h.jseq - 1; k >= lowJseq && cur.prev !== undefined; k--) {
    const prev = cur.prev;
    if (known.has(k)) return; // named already, and walked on from there
    known.set(k, prev);
    if (prev.posBytes === 0) return;
    const h = await view.header(prev.posBytes);
    const same = h !== undefined && h.jseq === k && h.epoch === prev.epoch && h.seq === prev.seq && h.offsetBytes === prev.offsetBytes && h.payloadBytes === prev.payloadBytes;
    if (!same) return;
    cur = h;
  }
}

/** Decides, with the whole ring read, what is lost, what is replayed and where the torn tail starts. */
function classify(view: RingView, sb: Superblock, intact: Intact[], runs: BadRun[], watermark: number): ReplayResult {
  const final = runs.at(-1)!; // the scan always ends in a run (the end of the log is one)
  // The cut: the first unreadable jseq that no watermark shows was ever completed.
  let cut = Math.max(final.from, watermark);
  for (const r of runs) {
    if (r.to !== undefined && r.to > watermark) {
      cut = Math.max(r.from, watermark);
      break;
    }
  }
  const lost: LostEntry[] = [];
  let unknownLost = 0;
  for (const r of runs) {
    const end = Math.min(r.to ?? cut, cut);
    if (end <= r.from) continue;
    let named = 0;
    for (const [k, e] of r.known) {
      if (k < r.from || k >= end) continue;
      lost.push({ jseq: k, epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, lengthBytes: e.payloadBytes });
      named++;
    }
    unknownLost += end - r.from - named;
  }
  lost.sort((a, b) => a.jseq - b.jseq);
  const entries = intact.filter((e) => e.h.jseq < cut);
  const last = entries.at(-1);
  const tailPos = last === undefined ? sb.pos : last.at + last.h.sizeBytes;
  // The torn tail: everything readable at or above the cut. Its headers are erased at open.
  const tail = [...intact, ...runs.flatMap((r) => r.headers)].filter((f) => f.h.jseq >= cut);
  let maxJseq = cut - 1;
  let furthest = last === undefined ? 0 : view.lin(last.at) + last.h.sizeBytes;
  const tailFrom = furthest;
  for (const f of tail) {
    maxJseq = Math.max(maxJseq, f.h.jseq);
    furthest = Math.max(furthest, view.lin(f.at) + f.h.sizeBytes);
  }
  // The next append names the entry before it: the last replayed one, or a lost one if known.
  let lastIssued: PrevEntry | undefined = last !== undefined && last.h.jseq === cut - 1 ? identity(last) : undefined;
  for (const r of runs) lastIssued ??= r.known.get(cut - 1);
  return {
    entries: entries.map((e) => ({ posBytes: e.at, header: e.h, payload: e.payload })),
    damage: { lost, unknownLost, tornTailEntries: maxJseq - cut + 1, tornTailBytes: furthest - tailFrom },
    nextJseq: cut,
    tailPos,
    lastIssued,
    tailHeaderPositions: tail.map((f) => f.at),
  };
}

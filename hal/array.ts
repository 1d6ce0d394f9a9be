// The site-local disk array: one volume over one or more storage devices, RAID-1 when several
// (the mirror's "disk array controller" of claim 1, "the means for storing data" of claims 11,
// 16, 17, 18). Plain RAID-1: write all members, read one, survive member failures, rebuild a
// replaced or recovered member, and bring failed members back. It does not order overlapping
// writes and keeps no cache: the site's local store (src/core/local-store.ts) never issues two
// overlapping writes at once, and the battery-backed cache journal in front of it is the site's.
//
//   write   to every member that is ok or rebuilding; completes when all of them completed. A
//           member that fails is marked failed, the error logged, and the rest keep serving; the
//           call fails only when no ok member took it. With no ok member at all it fails at once
//           (NOT READY, naming the members and saying recovery is being probed): never a hang.
//   read    from one ok member (round-robin), another on a failure; never from a rebuilding one.
//   flush   every member that is ok or rebuilding.
//   rebuild replaceMember() (or a failed member that answers again) gets its slot copied from an
//           ok member, chunk by chunk, while writes continue: a chunk being copied holds back
//           writes that overlap it, and a write already in flight to it finishes first, so the
//           copy never overwrites newer data. The member serves reads once the whole volume is
//           on it.
//   recover a failed member is probed in the background (issue 16 item 3): after
//           probeBackoffMinMs, doubling to probeBackoffMaxMs, it is read at LBA 0, that block
//           written back and the member flushed (through `reopen` for a fresh handle when the old
//           one does not answer). When it answers: if another member is ok, it is rebuilt from
//           it; if none is (a single-member array, or every member failed), it serves again as
//           is, and the ranges it missed while failed (writes that failed or went elsewhere, and
//           writes a failed flush may have dropped) are STALE: its content there is old (all of
//           it when it came back through a new handle: that may be another medium). Stale
//           ranges are kept (coalesced, bounded: the whole volume past staleRangesMax), persisted
//           with the member states, reported by staleRanges() and cleared by clearStale() once
//           the site has repaired them from its peers.
//   logging the first failure of a member is logged; probe failures are counted and logged at
//           most once per probeLogIntervalMs with the count; the recovery is one line.
//
// Member states (and stale ranges) can be persisted (`stateFile`): a member recorded failed or
// rebuilding is not read from after a restart, and an interrupted rebuild starts over, so a
// half-copied member is never taken for a healthy one. A member recorded failed is probed as
// well; what it missed in the earlier life is unknown, so if it comes back alone the whole volume
// is stale.
//
// hal/ imports nothing from src/.

import { open as openFile, readFile, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  MediaStatus,
  SenseError,
  blocksIn,
  checkRange,
  sense,
  type BlockDevice,
  type BlockSizeBytes,
  type Capabilities,
  type MediaStatusFlags,
  type WriteOptions,
} from './blockdev.js';
import { RangeSet } from './ranges.js';

/** Blocks copied per rebuild step (bounds the range that holds back writes). */
export const rebuildChunkBytes = 1024 * 1024;
/** First probe of a failed member after this long. */
export const probeBackoffMinMs = 250;
/** The probe backoff doubles per failed probe up to this. */
export const probeBackoffMaxMs = 30_000;
/** At most one "still failing" line per member per this interval (probe failures are counted). */
export const probeLogIntervalMs = 60_000;
/** Stale ranges (and ranges a failed member missed) kept before they become the whole volume. */
export const staleRangesMax = 1024;
/** Writes remembered since the last flush (a failed flush makes them stale on that member) before that becomes the whole volume. */
export const unflushedWritesMax = 16_384;

/** What the controller logs: a subset of pino's Logger, so a pino child logger fits as is. */
export interface ArrayLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

const stderrLogger: ArrayLogger = {
  error: (obj, msg) => console.error(`[array] ${msg}`, obj),
  warn: (obj, msg) => console.error(`[array] ${msg}`, obj),
  info: () => undefined,
};

/** The clock and timers the probes use (inject a simulated one in tests). */
export interface ArrayTimers {
  nowMs(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realTimers: ArrayTimers = {
  nowMs: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(), // a forgotten array never holds the process open
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface ProbeOptions {
  /** Default probeBackoffMinMs. */
  readonly backoffMinMs?: number;
  /** Default probeBackoffMaxMs. */
  readonly backoffMaxMs?: number;
  /** Default probeLogIntervalMs. */
  readonly logIntervalMs?: number;
}

export interface DiskArrayOptions {
  /** Name used in messages; default "array(<member names>)". */
  readonly name?: string;
  /** The storage devices; several form a RAID-1 mirror. Same block size; the smallest sets the size. */
  readonly members: readonly BlockDevice[];
  readonly logger?: ArrayLogger;
  /** Where member states and stale ranges survive a restart (a JSON file beside the site's other state). */
  readonly stateFile?: string;
  /**
   * Opens a member again by its name (a fresh handle: a USB disk plugged back in, a file
   * reopened; never create a blank one). Without it a probe retries the member's old handle only.
   * A member back through a new handle with no healthy partner reports the whole volume stale.
   */
  readonly reopen?: (name: string) => Promise<BlockDevice>;
  /** Called when new stale ranges are waiting (never from inside an array call): read staleRanges(). */
  readonly onStale?: () => void;
  readonly probe?: ProbeOptions;
  readonly timers?: ArrayTimers;
}

export type MemberState = 'ok' | 'rebuilding' | 'failed';

export interface MemberStatus {
  readonly name: string;
  readonly state: MemberState;
  /** Why it failed (the sense message), when it did. */
  readonly error?: string;
  /** While rebuilding: bytes copied so far, of the volume's. */
  readonly rebuiltBytes?: number;
  /** While failed: probes that failed since it failed. */
  readonly probeFailures?: number;
  /** While failed: the wait before the next probe. */
  readonly probeBackoffMs?: number;
}

/** A byte range of the volume whose content is old: writes to it failed to land. */
export interface StaleRange {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

interface Probe {
  timer: unknown;
  backoffMs: number;
  /** Failed probes since the member failed, and since the last log line about it. */
  failures: number;
  failuresSinceLog: number;
  lastLogMs: number;
  /** When it last came back (a member that fails again soon keeps its grown backoff). */
  recoveredAtMs: number;
  lastError: string | undefined;
  /** The probe in flight, if any (close waits for it). */
  running: Promise<void> | undefined;
}

interface Member {
  dev: BlockDevice;
  state: MemberState;
  error?: Error;
  /** Rebuilding: blocks [0, rebuiltBlocks) hold the volume. */
  rebuiltBlocks: number;
  /** Failed: blocks whose writes it missed (everything when unknown). */
  missed: RangeSet;
  /** Failed and answering probes again: waits for a rebuild slot. */
  answered: boolean;
  probe: Probe;
}

interface Span {
  readonly lba: number;
  readonly endLba: number;
  readonly done: Promise<void>;
}

export class DiskArray implements BlockDevice {
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly capabilities: Capabilities = { flush: true, fua: true, trim: false, readOnly: false };
  private readonly members: Member[];
  private readonly log: ArrayLogger;
  private readonly stateFile: string | undefined;
  private readonly reopen: ((name: string) => Promise<BlockDevice>) | undefined;
  private readonly onStale: (() => void) | undefined;
  private readonly timers: ArrayTimers;
  private readonly backoffMinMs: number;
  private readonly backoffMaxMs: number;
  private readonly logIntervalMs: number;
  private nextReadMember = 0;
  private closed = false;
  /** Writes in flight (a rebuild chunk waits for those overlapping it). */
  private readonly writing = new Set<Span>();
  /** The chunk a rebuild is copying (writes overlapping it wait). */
  private copying: Span | undefined;
  private rebuild: Promise<void> | undefined;
  private saveChain: Promise<void> = Promise.resolve();
  /** Ranges whose content is old (a member came back with no healthy member to rebuild from). */
  private readonly stale: RangeSet;
  /** Writes completed since the last flush started ('all' past unflushedWritesMax). */
  private unflushed: { lba: number; blocks: number }[] | 'all' = [];

  private constructor(options: DiskArrayOptions, saved: SavedState) {
    const devs = options.members;
    this.name = options.name ?? `array(${devs.map((d) => d.name).join(', ')})`;
    this.blockSizeBytes = devs[0]!.blockSizeBytes;
    this.blockCount = Math.min(...devs.map((d) => d.blockCount));
    this.log = options.logger ?? stderrLogger;
    this.stateFile = options.stateFile;
    this.reopen = options.reopen;
    this.onStale = options.onStale;
    this.timers = options.timers ?? realTimers;
    this.backoffMinMs = options.probe?.backoffMinMs ?? probeBackoffMinMs;
    this.backoffMaxMs = Math.max(this.backoffMinMs, options.probe?.backoffMaxMs ?? probeBackoffMaxMs);
    this.logIntervalMs = options.probe?.logIntervalMs ?? probeLogIntervalMs;
    this.members = devs.map((dev) => {
      const state = saved.states[dev.name] ?? 'ok';
      const missed = new RangeSet(staleRangesMax, this.blockCount);
      if (state === 'failed') missed.setAll(); // what it missed in an earlier life is unknown
      return { dev, state, rebuiltBlocks: 0, missed, answered: false, probe: this.newProbe() };
    });
    this.stale = new RangeSet(staleRangesMax, this.blockCount);
    for (const [offsetBytes, lengthBytes] of saved.stale) this.stale.add(Math.floor(offsetBytes / this.blockSizeBytes), Math.ceil(lengthBytes / this.blockSizeBytes));
    if (saved.staleAll) this.stale.setAll();
  }

  static async open(options: DiskArrayOptions): Promise<DiskArray> {
    const devs = options.members;
    const name = options.name ?? 'array';
    if (devs.length === 0) throw sense.invalidField(name, 'a disk array needs at least one storage device; list one under storage');
    const bs = devs[0]!.blockSizeBytes;
    for (const d of devs) {
      if (d.blockSizeBytes !== bs) {
        throw sense.invalidField(name, `member ${d.name} has ${d.blockSizeBytes}-byte blocks but ${devs[0]!.name} has ${bs}; RAID-1 members need one block size`);
      }
    }
    const saved = options.stateFile === undefined ? { states: {}, stale: [], staleAll: false } : await loadState(options.stateFile);
    const array = new DiskArray(options, saved);
    const ok = array.members.filter((m) => m.state === 'ok');
    if (ok.length === 0 && array.members.some((m) => m.state !== 'ok')) {
      // Every member is recorded failed or half-rebuilt: none holds the volume for sure. Serve
      // from them anyway rather than not at all, and report the whole volume stale: the site's
      // peers repair it.
      array.log.error({ array: array.name, states: saved.states }, `no member of ${array.name} is recorded healthy; serving from all of them as they are, the whole volume reported stale (resync this site from its peers)`);
      for (const m of array.members) m.state = 'ok';
      array.stale.setAll();
      await array.saveStates();
    }
    for (const m of array.members) {
      if (m.state === 'rebuilding') m.rebuiltBlocks = 0; // interrupted: start over (reconcile below)
      if (m.state === 'failed') array.scheduleProbe(m);
    }
    if (!array.stale.empty) array.notifyStale();
    array.reconcile();
    return array;
  }

  status(): MediaStatusFlags {
    if (this.closed || this.readable().length === 0) return MediaStatus.NO_MEDIA;
    return MediaStatus.OK;
  }

  /** Health of every member, in configuration order. */
  memberStatus(): MemberStatus[] {
    return this.members.map((m) => ({
      name: m.dev.name,
      state: m.state,
      ...(m.error !== undefined ? { error: m.error.message } : {}),
      ...(m.state === 'rebuilding' ? { rebuiltBytes: m.rebuiltBlocks * this.blockSizeBytes } : {}),
      ...(m.state === 'failed' ? { probeFailures: m.probe.failures, probeBackoffMs: m.probe.backoffMs } : {}),
    }));
  }

  /**
   * Byte ranges whose content is old: writes to them failed to land while no member could take
   * them (or a failed flush may have dropped them), and the member that came back holds older
   * data there. They stay (and survive a restart with a stateFile) until clearStale().
   */
  staleRanges(): StaleRange[] {
    return this.stale.ranges().map(([lba, blocks]) => ({ offsetBytes: lba * this.blockSizeBytes, lengthBytes: blocks * this.blockSizeBytes }));
  }

  /** Forgets stale ranges the caller has repaired (or recorded for repair durably itself); persisted before it resolves. */
  async clearStale(ranges: readonly StaleRange[]): Promise<void> {
    for (const r of ranges) {
      const lba = Math.floor(r.offsetBytes / this.blockSizeBytes);
      this.stale.subtract(lba, Math.ceil((r.offsetBytes + r.lengthBytes) / this.blockSizeBytes) - lba);
    }
    await this.saveStates();
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    const blocks = blocksIn(this, data, lba);
    checkRange(this, lba, blocks);
    if (this.readable().length === 0) {
      for (const m of this.members) if (m.state === 'failed') m.missed.add(lba, blocks); // attempted while failed
      throw this.allFailedError(lba, blocks);
    }
    const span = { lba, endLba: lba + blocks };
    // A rebuild chunk being copied holds back writes that overlap it (see the file comment).
    while (this.copying !== undefined && overlaps(this.copying, span)) await this.copying.done;
    const done = this.onMembers('write', lba, blocks, (dev) => dev.write(lba, data, options));
    const entry: Span = { ...span, done: done.then(() => undefined, () => undefined) };
    this.writing.add(entry);
    try {
      await done;
    } finally {
      this.writing.delete(entry);
    }
    this.noteUnflushed(lba, blocks);
  }

  /**
   * write() with a callback: the site's write path (issue 18). Where every member that takes
   * writes has writeNow (a file in the page cache), no rebuild chunk holds the range back and the
   * write is not FUA, it is written to each member synchronously and `done` runs before this
   * returns; a member that fails it is handled as write() does (marked failed, the write's range
   * missed there, the state saved before `done`). Otherwise it goes through write().
   */
  submitWrite(lba: number, data: Uint8Array, options: WriteOptions | undefined, done: (err: unknown) => void): void {
    const targets = options?.fua === true ? undefined : this.syncTargets(lba, data);
    if (targets === undefined) {
      this.write(lba, data, options).then(() => done(undefined), (err: unknown) => done(err ?? sense.hardware(this.name, 'write failed without a reason')));
      return;
    }
    const blocks = data.byteLength / this.blockSizeBytes;
    for (const m of this.members) if (m.state === 'failed') m.missed.add(lba, blocks);
    let errors: (unknown | undefined)[] | undefined;
    for (let i = 0; i < targets.length; i++) {
      try {
        targets[i]!.dev.writeNow!(lba, data);
      } catch (err) {
        (errors ??= new Array<unknown>(targets.length).fill(undefined))[i] = err;
      }
    }
    if (errors === undefined) {
      this.noteUnflushed(lba, blocks);
      done(undefined);
      return;
    }
    const results = errors.map((e): PromiseSettledResult<void> => (e === undefined ? { status: 'fulfilled', value: undefined } : { status: 'rejected', reason: e }));
    this.settleMembers('write', lba, blocks, targets, results, []).then(() => {
      this.noteUnflushed(lba, blocks);
      done(undefined);
    }, (err: unknown) => done(err ?? sense.hardware(this.name, 'write failed without a reason')));
  }

  /** The members a write goes to when it can be done synchronously now (see submitWrite), else undefined. */
  private syncTargets(lba: number, data: Uint8Array): Member[] | undefined {
    if (this.closed || data.byteLength % this.blockSizeBytes !== 0) return undefined; // write() reports it
    const blocks = data.byteLength / this.blockSizeBytes;
    if (!Number.isSafeInteger(lba) || lba < 0 || lba > this.blockCount || blocks > this.blockCount - lba) return undefined;
    if (this.copying !== undefined && overlaps(this.copying, { lba, endLba: lba + blocks })) return undefined;
    const targets: Member[] = [];
    let ok = false;
    for (const m of this.members) {
      if (m.state === 'failed') continue;
      if (m.dev.writeNow === undefined) return undefined;
      if (m.state === 'ok') ok = true;
      targets.push(m);
    }
    return ok ? targets : undefined;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    if (this.closed) throw sense.notPresent(this.name);
    checkRange(this, lba, blocks);
    let lastErr: unknown;
    for (;;) {
      const ok = this.readable();
      if (ok.length === 0) throw lastErr ?? this.allFailedError(lba, 0);
      const m = ok[this.nextReadMember++ % ok.length]!;
      try {
        return await m.dev.read(lba, blocks);
      } catch (err) {
        lastErr = err;
        await this.fail(m, err, 'read', lba, 0);
      }
    }
  }

  /** Flushes every member that takes writes (what completed before the call is then durable). */
  async flush(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    // A member whose flush fails may have dropped what it had not yet made durable.
    const covered = this.unflushed;
    this.unflushed = [];
    await this.onMembers('flush', undefined, 0, (dev) => dev.flush(), covered);
  }

  /**
   * Puts `dev` in the slot of member `memberName` (failed, or one being replaced) and rebuilds it
   * from an ok member while writes continue. Resolves once the rebuild started; `rebuilt()`
   * resolves when it is done. The old device of that slot is closed.
   */
  async replaceMember(memberName: string, dev: BlockDevice): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    const i = this.members.findIndex((m) => m.dev.name === memberName);
    if (i < 0) throw sense.invalidField(this.name, `no member ${memberName} in ${this.name}; members are ${this.members.map((m) => m.dev.name).join(', ')}`);
    if (dev.blockSizeBytes !== this.blockSizeBytes) throw sense.invalidField(this.name, `${dev.name} has ${dev.blockSizeBytes}-byte blocks; this array has ${this.blockSizeBytes}`);
    if (dev.blockCount < this.blockCount) throw sense.invalidField(this.name, `${dev.name} holds ${dev.blockCount} blocks; the volume needs ${this.blockCount}`);
    if (this.rebuild !== undefined) throw sense.invalidField(this.name, `a rebuild is already running in ${this.name}; wait for it to finish`);
    const m = this.members[i]!;
    if (this.members.filter((x, j) => j !== i && x.state === 'ok').length === 0) {
      throw sense.invalidField(this.name, `no other healthy member to rebuild ${memberName} from; the site must be resynced from its peers instead`);
    }
    const old = m.dev;
    m.dev = dev;
    await this.beginRebuild(i);
    if (old !== dev) await old.close().catch(() => undefined);
  }

  /** Resolves when the running rebuild (if any) ends. */
  rebuilt(): Promise<void> {
    return this.rebuild ?? Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.members) this.timers.clearTimeout(m.probe.timer);
    await Promise.allSettled([...this.writing].map((w) => w.done));
    await Promise.allSettled(this.members.map((m) => m.probe.running));
    await this.rebuild?.catch(() => undefined);
    await this.saveChain;
    const results = await Promise.allSettled(this.members.map((m) => m.dev.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  // --- internals: I/O ---------------------------------------------------------------------------

  /** Members that hold the volume (served from). */
  private readable(): Member[] {
    return this.members.filter((m) => m.state === 'ok');
  }

  /**
   * Runs `op` on every member that takes writes; members that fail are marked failed; fails
   * unless an ok member succeeded. A write's range is recorded as missed by every failed member
   * (a member that fails a flush also misses `unflushed`, what the flush was to make durable).
   */
  private async onMembers(
    what: 'write' | 'flush',
    lba: number | undefined,
    blocks: number,
    op: (dev: BlockDevice) => Promise<void>,
    unflushed: DiskArray['unflushed'] = [],
  ): Promise<void> {
    const targets = this.members.filter((m) => m.state !== 'failed');
    if (lba !== undefined) for (const m of this.members) if (m.state === 'failed') m.missed.add(lba, blocks);
    if (!targets.some((m) => m.state === 'ok')) throw this.allFailedError(lba, blocks);
    const results = await Promise.allSettled(targets.map((m) => op(m.dev)));
    await this.settleMembers(what, lba, blocks, targets, results, unflushed);
  }

  /** After an op on `targets`: members that failed it are marked failed (durably); fails unless an ok member succeeded. */
  private async settleMembers(
    what: 'write' | 'flush',
    lba: number | undefined,
    blocks: number,
    targets: readonly Member[],
    results: readonly PromiseSettledResult<void>[],
    unflushed: DiskArray['unflushed'],
  ): Promise<void> {
    let succeeded = 0;
    let lastErr: unknown;
    const saves: Promise<void>[] = [];
    results.forEach((r, i) => {
      const m = targets[i]!;
      if (r.status === 'fulfilled') {
        if (m.state === 'ok') succeeded++;
      } else {
        lastErr = r.reason;
        saves.push(this.fail(m, r.reason, what, lba, blocks, unflushed));
      }
    });
    // A member that missed this write is recorded failed before the write completes: a restart
    // must never read from it as if it held the volume.
    await Promise.all(saves);
    if (succeeded === 0) throw lastErr ?? this.allFailedError(lba, blocks);
  }

  private noteUnflushed(lba: number, blocks: number): void {
    if (this.unflushed === 'all') return;
    if (this.unflushed.length >= unflushedWritesMax) this.unflushed = 'all';
    else this.unflushed.push({ lba, blocks });
  }

  /**
   * Marks `m` failed (logged once), records what it missed and persists the state; resolves
   * once the record is durable. Starts probing it. Writes it took since the last flush count as
   * missed too: after an I/O error a device (or Linux's page cache, after a failed writeback)
   * may have dropped what was not yet durable.
   */
  private fail(m: Member, err: unknown, op: string, lba: number | undefined, blocks: number, unflushed: DiskArray['unflushed'] = []): Promise<void> {
    if (lba !== undefined && op !== 'read') m.missed.add(lba, blocks);
    if (m.state === 'failed') return Promise.resolve();
    if (m.state === 'rebuilding') m.missed.setAll(); // half copied: it holds no known state
    for (const set of [unflushed, this.unflushed]) {
      if (set === 'all') m.missed.setAll();
      else for (const w of set) m.missed.add(w.lba, w.blocks);
    }
    m.state = 'failed';
    m.answered = false;
    m.error = err instanceof Error ? err : new Error(String(err));
    const saved = this.saveStates();
    const left = this.readable().map((x) => x.dev.name);
    this.log.error(
      { array: this.name, member: m.dev.name, op, lba, err: m.error.message, membersLeft: left },
      left.length > 0
        ? `array member ${m.dev.name} failed a ${op}; marked failed, ${left.length} member(s) keep serving; probing it for recovery`
        : `array member ${m.dev.name} failed a ${op}; no member is left, the volume is offline until one answers again (probing)`,
    );
    this.startProbing(m);
    return saved;
  }

  private allFailedError(lba: number | undefined, blocks: number): SenseError {
    const why = this.members.map((m) => `${m.dev.name}: ${m.error?.message ?? m.state}`).join('; ');
    const next = Math.min(...this.members.filter((m) => m.state === 'failed').map((m) => m.probe.backoffMs));
    const probing = Number.isFinite(next) ? `recovery is being probed in the background (every ${next} ms or less)` : 'no member is being probed';
    const range = lba === undefined ? '' : ` (${blocks} block(s) at LBA ${lba} not stored)`;
    return sense.notPresent(this.name, `every member of the array has failed (${why})${range}; ${probing}; replace the storage devices if they do not come back`);
  }

  // --- internals: recovery ------------------------------------------------------------------------

  private newProbe(): Probe {
    return { timer: undefined, backoffMs: this.backoffMinMs, failures: 0, failuresSinceLog: 0, lastLogMs: 0, recoveredAtMs: Number.NEGATIVE_INFINITY, lastError: undefined, running: undefined };
  }

  /** A member just failed: probe it, from the smallest backoff unless it failed again soon after coming back. */
  private startProbing(m: Member): void {
    const p = m.probe;
    const now = this.timers.nowMs();
    const flapping = now - p.recoveredAtMs < this.backoffMaxMs;
    m.probe = { ...this.newProbe(), backoffMs: flapping ? Math.min(p.backoffMs * 2, this.backoffMaxMs) : this.backoffMinMs, recoveredAtMs: p.recoveredAtMs, lastLogMs: now };
    this.timers.clearTimeout(p.timer);
    this.scheduleProbe(m);
  }

  private scheduleProbe(m: Member): void {
    if (this.closed || m.state !== 'failed') return;
    m.probe.timer = this.timers.setTimeout(() => {
      m.probe.timer = undefined;
      m.probe.running = this.probeOnce(m).finally(() => (m.probe.running = undefined));
    }, m.probe.backoffMs);
  }

  private async probeOnce(m: Member): Promise<void> {
    if (this.closed || m.state !== 'failed') return;
    const before = m.dev;
    let dev: BlockDevice;
    try {
      dev = await this.answer(m.dev);
    } catch (err) {
      this.probeFailed(m, err);
      return;
    }
    if (this.closed || m.state !== 'failed' || m.dev !== before) {
      if (dev !== before) await dev.close().catch(() => undefined); // the slot moved on meanwhile
      return;
    }
    if (dev !== before) {
      m.dev = dev;
      // A fresh handle may be another medium (a disk swapped while unplugged, a file recreated):
      // nothing it holds is known to be ours unless it is rebuilt.
      m.missed.setAll();
      await before.close().catch(() => undefined);
    }
    await this.recovered(m);
  }

  /** The member's device if it answers (read LBA 0, write it back, flush), else a reopened one that does. */
  private async answer(dev: BlockDevice): Promise<BlockDevice> {
    try {
      await probeDevice(dev);
      return dev;
    } catch (err) {
      if (this.reopen === undefined) throw err;
    }
    const fresh = await this.reopen(dev.name);
    try {
      if (fresh.blockSizeBytes !== this.blockSizeBytes || fresh.blockCount < this.blockCount) {
        throw sense.invalidField(fresh.name, `reopened with ${fresh.blockCount} blocks of ${fresh.blockSizeBytes} bytes; ${this.name} needs ${this.blockCount} of ${this.blockSizeBytes}`);
      }
      await probeDevice(fresh);
      return fresh;
    } catch (err) {
      await fresh.close().catch(() => undefined);
      throw err;
    }
  }

  private probeFailed(m: Member, err: unknown): void {
    const p = m.probe;
    p.failures++;
    p.failuresSinceLog++;
    p.lastError = err instanceof Error ? err.message : String(err);
    p.backoffMs = Math.min(p.backoffMs * 2, this.backoffMaxMs);
    const now = this.timers.nowMs();
    if (now - p.lastLogMs >= this.logIntervalMs) {
      this.log.warn(
        { array: this.name, member: m.dev.name, probeFailures: p.failures, sinceLastLine: p.failuresSinceLog, err: p.lastError, nextProbeMs: p.backoffMs },
        `array member ${m.dev.name} still fails: ${p.failuresSinceLog} more probe(s) failed (${p.failures} since it failed; last: ${p.lastError}); next probe in ${p.backoffMs} ms`,
      );
      p.failuresSinceLog = 0;
      p.lastLogMs = now;
    }
    this.scheduleProbe(m);
  }

  /** A failed member answers again: rebuild it from an ok member, or, if none is left, serve from it and report what it missed as stale. */
  private async recovered(m: Member): Promise<void> {
    const p = m.probe;
    p.recoveredAtMs = this.timers.nowMs();
    const source = this.readable()[0];
    if (source !== undefined) {
      this.log.warn({ array: this.name, member: m.dev.name, probeFailures: p.failures }, `array member ${m.dev.name} answers again after ${p.failures} failed probe(s); rebuilding it from ${source.dev.name}`);
      m.answered = true;
      this.reconcile();
      return;
    }
    const missed = m.missed;
    this.stale.addSet(missed);
    m.state = 'ok';
    m.answered = false;
    delete m.error;
    m.missed = new RangeSet(staleRangesMax, this.blockCount);
    const staleBytes = this.stale.ranges().reduce((n, [, blocks]) => n + blocks * this.blockSizeBytes, 0);
    this.log.warn(
      { array: this.name, member: m.dev.name, probeFailures: p.failures, staleRanges: this.stale.all ? 'all' : this.stale.ranges().length, staleBytes },
      `array member ${m.dev.name} answers again after ${p.failures} failed probe(s) and serves again; no healthy member to rebuild it from, so ${staleBytes} byte(s) it missed are reported stale for repair from the site's peers`,
    );
    await this.saveStates();
    this.notifyStale();
    this.reconcile(); // members stuck half-rebuilt or answering can now copy from it
  }

  /** Starts the next rebuild that can run: a member half rebuilt, or one that answers again. */
  private reconcile(): void {
    if (this.closed || this.rebuild !== undefined || this.readable().length === 0) return;
    const i = this.members.findIndex((m) => m.state === 'rebuilding' || (m.state === 'failed' && m.answered));
    if (i < 0) return;
    void this.beginRebuild(i);
  }

  /** Marks member `i` rebuilding and starts its copy once that record is durable (a restart must never read a half-copied member). */
  private beginRebuild(i: number): Promise<void> {
    const m = this.members[i]!;
    this.timers.clearTimeout(m.probe.timer);
    m.state = 'rebuilding';
    m.rebuiltBlocks = 0;
    m.answered = false;
    m.missed = new RangeSet(staleRangesMax, this.blockCount);
    delete m.error;
    const saved = this.saveStates();
    this.startRebuild(i, saved);
    return saved;
  }

  private notifyStale(): void {
    const cb = this.onStale;
    if (cb !== undefined && !this.stale.empty) queueMicrotask(() => cb());
  }

  // --- internals: rebuild ------------------------------------------------------------------------

  private startRebuild(i: number, after: Promise<void>): void {
    const run = after.then(() => this.copyOnto(i)).catch((err: unknown) => {
      this.log.error({ array: this.name, member: this.members[i]!.dev.name, err: (err as Error).message }, `rebuild of ${this.members[i]!.dev.name} stopped: ${(err as Error).message}`);
    });
    this.rebuild = run.finally(() => {
      this.rebuild = undefined;
      this.reconcile(); // the next one waiting, or this one again once a source is back
    });
  }

  /** Copies the volume onto member `i`, chunk by chunk, from the ok members. */
  private async copyOnto(i: number): Promise<void> {
    const m = this.members[i]!;
    const chunkBlocks = Math.max(1, Math.floor(rebuildChunkBytes / this.blockSizeBytes));
    const total = this.blockCount;
    let decile = 0;
    this.log.warn({ array: this.name, member: m.dev.name, bytes: total * this.blockSizeBytes }, `rebuilding ${m.dev.name} from the other member(s) of ${this.name}`);
    while (m.rebuiltBlocks < total) {
      if (this.closed) return;
      if (m.state !== 'rebuilding') throw new Error(`${m.dev.name} failed during its rebuild`);
      if (this.readable().length === 0) throw new Error(`no healthy member is left to copy from; it resumes when one answers again`);
      const lba = m.rebuiltBlocks;
      const blocks = Math.min(chunkBlocks, total - lba);
      const span = { lba, endLba: lba + blocks };
      let release!: () => void;
      this.copying = { ...span, done: new Promise<void>((r) => (release = r)) };
      try {
        // Writes already in flight to this chunk land first (on every member, this one too).
        for (const w of [...this.writing]) if (overlaps(w, span)) await w.done;
        const data = await this.read(lba, blocks);
        try {
          await m.dev.write(lba, data);
        } catch (err) {
          await this.fail(m, err, 'rebuild write', lba, blocks);
          throw err;
        }
      } finally {
        this.copying = undefined;
        release();
      }
      m.rebuiltBlocks = lba + blocks;
      const d = Math.floor((10 * m.rebuiltBlocks) / total);
      if (d > decile && m.rebuiltBlocks < total) {
        decile = d;
        this.log.info({ array: this.name, member: m.dev.name, percent: d * 10 }, `rebuild of ${m.dev.name}: ${d * 10}%`);
      }
    }
    try {
      await m.dev.flush();
    } catch (err) {
      await this.fail(m, err, 'rebuild flush', undefined, 0);
      throw err;
    }
    m.state = 'ok';
    await this.saveStates();
    this.log.warn({ array: this.name, member: m.dev.name }, `${m.dev.name} is rebuilt and serves reads again`);
  }

  // --- internals: persistence --------------------------------------------------------------------

  /** Persists member states and stale ranges (write temp, fdatasync, rename), one save at a time, in order. */
  private saveStates(): Promise<void> {
    const file = this.stateFile;
    if (file === undefined) return Promise.resolve();
    const states = Object.fromEntries(this.members.map((m) => [m.dev.name, m.state]));
    const stale = this.stale.all ? 'all' : this.staleRanges().map((r) => [r.offsetBytes, r.lengthBytes]);
    const record = stale.length === 0 ? { members: states } : { members: states, stale };
    const run = this.saveChain.then(async () => {
      const tmp = join(dirname(file), `.${basename(file)}.tmp`);
      const fh = await openFile(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(record) + '\n');
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
    });
    this.saveChain = run.catch((err: Error) => this.log.error({ array: this.name, file, err: err.message }, `member states could not be saved to ${file}: ${err.message}`));
    return this.saveChain;
  }
}

/** A member answers when it reads LBA 0, takes that block back and flushes. */
async function probeDevice(dev: BlockDevice): Promise<void> {
  const block = await dev.read(0, 1);
  await dev.write(0, block);
  await dev.flush();
}

interface SavedState {
  readonly states: Record<string, MemberState>;
  /** [offsetBytes, lengthBytes] pairs. */
  readonly stale: [number, number][];
  readonly staleAll: boolean;
}

async function loadState(file: string): Promise<SavedState> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { states: {}, stale: [], staleAll: false };
    throw err;
  }
  let parsed: { members?: unknown; stale?: unknown };
  try {
    parsed = JSON.parse(text) as { members?: unknown; stale?: unknown };
  } catch {
    throw sense.mediumRead(file, undefined, `${file}: the array member states are not valid JSON; delete the file only if every member is known to hold the volume`);
  }
  const states: Record<string, MemberState> = {};
  if (typeof parsed.members === 'object' && parsed.members !== null) {
    for (const [k, v] of Object.entries(parsed.members as Record<string, unknown>)) {
      if (v === 'ok' || v === 'failed' || v === 'rebuilding') states[k] = v;
    }
  }
  const stale: [number, number][] = [];
  let staleAll = parsed.stale === 'all';
  if (Array.isArray(parsed.stale)) {
    for (const r of parsed.stale as unknown[]) {
      const ok = Array.isArray(r) && r.length === 2 && r.every((x) => Number.isSafeInteger(x) && (x as number) >= 0);
      if (ok) stale.push([r[0] as number, r[1] as number]);
      else staleAll = true; // a record we cannot read: assume the worst
    }
  }
  return { states, stale, staleAll };
}

function overlaps(a: { lba: number; endLba: number }, b: { lba: number; endLba: number }): boolean {
  return a.lba < b.endLba && b.lba < a.endLba;
}

// The site-local disk array controller: one volume over one or more storage devices (RAID-1
// when several), with the battery-backed cache journal in front. Every site runs one: the
// mirror's "disk array controller" of claim 1, the controller that "writes the data write
// request to the cache and performs it on the means for storing data" of claims 11, 16, 17
// (and the relay's of claim 18).
//
// A write goes through two stages, exposed separately because roles ack at different ones:
//   cached    the request is in the cache journal (a relay acks upstream here, claim 20);
//   executed  it is in the cache AND performed on every healthy member (a mirror acks here,
//             claim 10 (iii)); the cache entry is then marked done (unless `retain` asks the
//             caller to drop it on a downstream ack, claims 12, 21).
// Overlapping writes reach storage in submission order (each waits for the overlapping ones
// before it); disjoint writes run in parallel. Reads wait for overlapping writes still in
// flight, so a read after an acknowledged write sees it even when the ack was "cached".
//
// With a cache, a write reaches storage only once it is cached: replay then covers every write
// that may have touched a member, so members never disagree after a crash (no RAID write hole).
// Without a cache there is no journal and a crash mid-write may leave members different.
//
// RAID-1: write all healthy members, read one (round-robin). A member that fails an I/O is
// marked failed, the error logged, and the rest keep serving; when none is left every call
// fails with the last member's sense. Member health lives in memory only (there is no on-disk
// array metadata yet): a member that failed must be replaced or resynced before a restart.
//
// On open the controller replays the cache: every surviving entry is performed again on storage
// in journal (= seq) order before the first request is served, so every accepted write reaches
// storage. Re-performing one that had already landed is harmless: it writes the same bytes, and
// later overlapping entries are replayed after it.
//
// hal/ imports nothing from src/.

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
import { CacheEntryFlags, CacheJournal, type CacheJournalOptions, type EntryHandle, type RecoveredEntry } from './cache.js';
import type { CacheDevice } from './cachedev.js';

/** Replayed entries performed on storage at once during open (bounds memory and fds in flight). */
export const replayWritesInflightMax = 64;

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

export interface DiskArrayOptions {
  /** Name used in messages; default "array(<member names>)". */
  readonly name?: string;
  /** The storage devices; several form a RAID-1 mirror. Same block size; the smallest sets the size. */
  readonly members: readonly BlockDevice[];
  /** The battery-backed cache device; without one, "cached" means "executed". */
  readonly cache?: CacheDevice;
  readonly cacheOptions?: CacheJournalOptions;
  /** Volume id written into every cache entry (u32); replay refuses entries of another volume. */
  readonly volume?: number;
  readonly logger?: ArrayLogger;
}

export interface ArrayWriteOptions extends WriteOptions {
  /** Identity of the request (DESIGN.md: volume, epoch, seq). Default epoch 0, seq counted here. */
  readonly epoch?: bigint;
  readonly seq?: bigint;
  /** Volume id; must match the array's (it is checked, not routed). */
  readonly volume?: number;
  /** Keep the cache entry after execution until release(handle) (relay/primary: on downstream ack). */
  readonly retain?: boolean;
}

export interface WriteTicket {
  /** Resolves when the request is in the cache (with its entry; undefined without a cache). */
  readonly cached: Promise<EntryHandle | undefined>;
  /** Resolves when the request is cached and performed on every healthy member. */
  readonly executed: Promise<void>;
}

export type MemberState = 'ok' | 'failed';

export interface MemberStatus {
  readonly name: string;
  readonly state: MemberState;
  /** Why it failed (the sense message), when it did. */
  readonly error?: string;
}

interface Member {
  readonly dev: BlockDevice;
  state: MemberState;
  error?: SenseError | Error;
}

interface Inflight {
  readonly lba: number;
  readonly endLba: number;
  readonly performed: Promise<void>;
}

export class DiskArray implements BlockDevice {
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly capabilities: Capabilities = { flush: true, fua: true, trim: false, readOnly: false };
  readonly volume: number;
  /** Replayed entries flagged `retain`: on storage again, still owned by the caller (re-send them). */
  readonly recoveredRetained: RecoveredEntry[] = [];
  private readonly members: Member[];
  private readonly inflight = new Set<Inflight>();
  /** Every write's `executed` until it settles, so close() lets each mark its entry done. */
  private readonly executing = new Set<Promise<void>>();
  private readonly executedOf = new WeakMap<EntryHandle, Promise<void>>();
  private readonly log: ArrayLogger;
  private nextReadMember = 0;
  private nextSeq = 1n;
  private closed = false;

  private constructor(
    options: DiskArrayOptions,
    readonly journal: CacheJournal | undefined,
  ) {
    const devs = options.members;
    this.name = options.name ?? `array(${devs.map((d) => d.name).join(', ')})`;
    this.members = devs.map((dev) => ({ dev, state: 'ok' as MemberState }));
    this.blockSizeBytes = devs[0]!.blockSizeBytes;
    this.blockCount = Math.min(...devs.map((d) => d.blockCount));
    this.volume = options.volume ?? 0;
    this.log = options.logger ?? stderrLogger;
  }

  /**
   * Builds the array and, with a cache, replays every surviving entry onto storage (journal
   * order) before returning: claim 17's controller never serves before accepted writes are safe.
   */
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
    const volume = options.volume ?? 0;
    if (!Number.isInteger(volume) || volume < 0 || volume > 0xffff_ffff) throw sense.invalidField(name, `volume id ${volume} is not a u32`);
    let journal: CacheJournal | undefined;
    let recovered: RecoveredEntry[] = [];
    if (options.cache !== undefined) ({ journal, recovered } = await CacheJournal.open(options.cache, options.cacheOptions));
    const array = new DiskArray(options, journal);
    if (journal !== undefined) {
      try {
        await array.replay(recovered);
      } catch (err) {
        await journal.close().catch(() => undefined); // entries stay in the cache for the next try
        throw err;
      }
    }
    return array;
  }

  private async replay(recovered: RecoveredEntry[]): Promise<void> {
    const window: Promise<void>[] = [];
    for (const r of recovered) {
      const h = r.handle;
      if (h.volume !== this.volume) {
        throw sense.invalidField(this.name, `the cache holds a write for volume ${h.volume} but this array serves volume ${this.volume}; point cache.device at this volume's cache`);
      }
      const lba = h.offsetBytes / this.blockSizeBytes;
      if (!Number.isSafeInteger(lba) || r.payload.byteLength % this.blockSizeBytes !== 0) {
        throw sense.mediumRead(this.name, undefined, `cache entry seq ${h.seq} (${r.payload.byteLength} bytes at byte ${h.offsetBytes}) is not block-aligned for ${this.blockSizeBytes}-byte blocks; was the block size changed?`);
      }
      checkRange(this, lba, r.payload.byteLength / this.blockSizeBytes);
      if (h.seq >= this.nextSeq) this.nextSeq = h.seq + 1n;
      const performed = this.schedule(lba, r.payload, (h.flags & CacheEntryFlags.FUA) !== 0);
      const done = performed.then(() => {
        if ((h.flags & CacheEntryFlags.RETAIN) !== 0) this.recoveredRetained.push(r);
        else this.journal!.markDone(h);
      });
      done.catch(() => undefined); // the first failure is rethrown below; later ones are moot
      window.push(done);
      if (window.length >= replayWritesInflightMax) await window.shift();
    }
    await Promise.all(window);
    if (recovered.length > 0) this.log.info({ array: this.name, entries: recovered.length }, 'replayed the cache onto storage');
  }

  status(): MediaStatusFlags {
    if (this.closed || this.healthy().length === 0) return MediaStatus.NO_MEDIA;
    return MediaStatus.OK;
  }

  /** Health of every member, in configuration order. */
  memberStatus(): MemberStatus[] {
    return this.members.map((m) => (m.error === undefined ? { name: m.dev.name, state: m.state } : { name: m.dev.name, state: m.state, error: m.error.message }));
  }

  /** Submits a write and returns both stages (see the file comment). Never throws. */
  submit(lba: number, data: Uint8Array, options: ArrayWriteOptions = {}): WriteTicket {
    let blocks: number;
    try {
      if (this.closed) throw sense.notPresent(this.name);
      blocks = blocksIn(this, data, lba);
      checkRange(this, lba, blocks);
      if (options.volume !== undefined && options.volume !== this.volume) {
        throw sense.invalidField(this.name, `write for volume ${options.volume} sent to the array of volume ${this.volume}`, lba);
      }
      if (this.healthy().length === 0) throw this.allFailedError(lba);
    } catch (err) {
      const rejected = Promise.reject(err);
      rejected.catch(() => undefined);
      return { cached: rejected as Promise<never>, executed: rejected as Promise<never> };
    }
    const seq = options.seq ?? this.nextSeq;
    if (seq >= this.nextSeq) this.nextSeq = seq + 1n;
    const fua = options.fua === true;
    const retain = options.retain === true;
    const cached: Promise<EntryHandle | undefined> =
      this.journal === undefined
        ? Promise.resolve(undefined)
        : this.journal.append(
            {
              volume: this.volume,
              epoch: options.epoch ?? 0n,
              seq,
              offsetBytes: lba * this.blockSizeBytes,
              flags: (fua ? CacheEntryFlags.FUA : 0) | (retain ? CacheEntryFlags.RETAIN : 0),
            },
            data,
          );
    // Storage only after the cache: every write that may have touched a member is then in the
    // journal (with every earlier one), so replay re-performs it on all members and a crash
    // cannot leave RAID-1 members disagreeing (the write hole an array journal exists for).
    const performed = this.schedule(lba, data, fua, cached);
    const executed = Promise.all([cached, performed]).then(([handle]) => {
      if (handle !== undefined && !retain) this.journal!.markDone(handle);
    });
    executed.catch(() => undefined); // callers may await only one stage
    this.executing.add(executed);
    const forget = () => this.executing.delete(executed);
    executed.then(forget, forget);
    cached.catch(() => undefined);
    if (this.journal !== undefined) {
      void cached.then((h) => {
        if (h !== undefined) this.executedOf.set(h, executed);
      }, () => undefined);
      return { cached, executed };
    }
    // Without a cache there is no battery: a write is accepted only once it is on storage.
    const accepted = executed.then(() => undefined);
    accepted.catch(() => undefined);
    return { cached: accepted, executed };
  }

  /** BlockDevice write: resolves when executed. */
  write(lba: number, data: Uint8Array, options?: ArrayWriteOptions): Promise<void> {
    return this.submit(lba, data, options).executed;
  }

  /** Drops a retained entry from the cache (downstream acknowledged it); waits for local execution first. */
  release(handle: EntryHandle): Promise<void> {
    const journal = this.journal;
    if (journal === undefined) return Promise.resolve();
    const executed = this.executedOf.get(handle) ?? Promise.resolve();
    return executed.then(() => journal.markDone(handle));
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    if (this.closed) throw sense.notPresent(this.name);
    checkRange(this, lba, blocks);
    await this.settleOverlapping(lba, lba + blocks);
    let lastErr: unknown;
    for (;;) {
      const ok = this.healthy();
      if (ok.length === 0) throw lastErr ?? this.allFailedError(lba);
      const m = ok[this.nextReadMember++ % ok.length]!;
      try {
        return await m.dev.read(lba, blocks);
      } catch (err) {
        lastErr = err;
        this.fail(m, err, 'read', lba);
      }
    }
  }

  /** Flushes every healthy member after every write submitted before this call reached storage. */
  async flush(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    await Promise.allSettled([...this.inflight].map((w) => w.performed));
    await this.onMembers('flush', undefined, (dev) => dev.flush());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.inflight].map((w) => w.performed));
    await Promise.allSettled([...this.executing]);
    await this.journal?.close();
    const results = await Promise.allSettled(this.members.map((m) => m.dev.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  // --- internals ----------------------------------------------------------------------------

  private healthy(): Member[] {
    return this.members.filter((m) => m.state === 'ok');
  }

  /** Performs a write on storage once every overlapping earlier write has settled. */
  private schedule(lba: number, data: Uint8Array, fua: boolean, cached?: Promise<unknown>): Promise<void> {
    const endLba = lba + data.byteLength / this.blockSizeBytes;
    const before = this.overlapping(lba, endLba);
    const performed = (async () => {
      if (cached !== undefined) await cached;
      if (before.length > 0) await Promise.allSettled(before);
      await this.onMembers('write', lba, (dev) => dev.write(lba, data, { fua }));
    })();
    const entry: Inflight = { lba, endLba, performed };
    this.inflight.add(entry);
    const forget = () => this.inflight.delete(entry);
    performed.then(forget, forget);
    return performed;
  }

  private overlapping(lba: number, endLba: number): Promise<void>[] {
    const out: Promise<void>[] = [];
    for (const w of this.inflight) if (w.lba < endLba && lba < w.endLba) out.push(w.performed);
    return out;
  }

  private async settleOverlapping(lba: number, endLba: number): Promise<void> {
    const before = this.overlapping(lba, endLba);
    if (before.length > 0) await Promise.allSettled(before);
  }

  /** Runs `op` on every healthy member; members that fail are marked failed; fails only if all do. */
  private async onMembers(what: 'write' | 'flush', lba: number | undefined, op: (dev: BlockDevice) => Promise<void>): Promise<void> {
    const ok = this.healthy();
    if (ok.length === 0) throw this.allFailedError(lba);
    const results = await Promise.allSettled(ok.map((m) => op(m.dev)));
    let succeeded = 0;
    let lastErr: unknown;
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') succeeded++;
      else {
        lastErr = r.reason;
        this.fail(ok[i]!, r.reason, what, lba);
      }
    });
    if (succeeded === 0) throw lastErr;
  }

  private fail(m: Member, err: unknown, op: string, lba: number | undefined): void {
    if (m.state === 'failed') return;
    m.state = 'failed';
    m.error = err instanceof Error ? err : new Error(String(err));
    const left = this.healthy().map((x) => x.dev.name);
    this.log.error(
      { array: this.name, member: m.dev.name, op, lba, err: m.error.message, membersLeft: left },
      left.length > 0
        ? `array member ${m.dev.name} failed a ${op}; marked failed, ${left.length} member(s) keep serving (replace it and resync)`
        : `array member ${m.dev.name} failed a ${op}; no member is left, the volume is offline`,
    );
  }

  private allFailedError(lba: number | undefined): SenseError {
    const why = this.members.map((m) => `${m.dev.name}: ${m.error?.message ?? m.state}`).join('; ');
    return sense.notPresent(this.name, `every member of the array has failed (${why})${lba === undefined ? '' : ` at LBA ${lba}`}; replace the storage devices`);
  }
}

// The site-local disk array: one volume over one or more storage devices, RAID-1 when several
// (the mirror's "disk array controller" of claim 1, "the means for storing data" of claims 11,
// 16, 17, 18). Plain RAID-1 and nothing else: write all members, read one, survive member
// failures, rebuild a replaced member. It does not order overlapping writes and keeps no cache:
// the site's local store (src/core/local-store.ts) never issues two overlapping writes at once,
// and the battery-backed cache journal in front of it is the site's, not the array's.
//
//   write   to every member that is ok or rebuilding; completes when all of them completed. A
//           member that fails is marked failed, the error logged, and the rest keep serving; the
//           call fails only when no ok member took it.
//   read    from one ok member (round-robin), another on a failure; never from a rebuilding one.
//   flush   every member that is ok or rebuilding.
//   rebuild replaceMember() puts a new device in a failed or replaced member's slot and copies
//           the volume onto it from an ok member, chunk by chunk, while writes continue: a chunk
//           being copied holds back writes that overlap it, and a write already in flight to it
//           finishes first, so the copy never overwrites newer data. The member serves reads once
//           the whole volume is on it.
//
// Member states can be persisted (`stateFile`): a member recorded failed or rebuilding is not
// read from after a restart, and an interrupted rebuild starts over, so a half-copied member is
// never taken for a healthy one.
//
// hal/ imports nothing from src/.

import { open as openFile, readFile, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
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

/** Blocks copied per rebuild step (bounds the range that holds back writes). */
export const rebuildChunkBytes = 1024 * 1024;

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
  readonly logger?: ArrayLogger;
  /** Where member states survive a restart (a JSON file beside the site's other state). */
  readonly stateFile?: string;
}

export type MemberState = 'ok' | 'rebuilding' | 'failed';

export interface MemberStatus {
  readonly name: string;
  readonly state: MemberState;
  /** Why it failed (the sense message), when it did. */
  readonly error?: string;
  /** While rebuilding: bytes copied so far, of the volume's. */
  readonly rebuiltBytes?: number;
}

interface Member {
  dev: BlockDevice;
  state: MemberState;
  error?: Error;
  /** Rebuilding: blocks [0, rebuiltBlocks) hold the volume. */
  rebuiltBlocks: number;
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
  private nextReadMember = 0;
  private closed = false;
  /** Writes in flight (a rebuild chunk waits for those overlapping it). */
  private readonly writing = new Set<Span>();
  /** The chunk a rebuild is copying (writes overlapping it wait). */
  private copying: Span | undefined;
  private rebuild: Promise<void> | undefined;
  private saveChain: Promise<void> = Promise.resolve();

  private constructor(options: DiskArrayOptions, states: Record<string, MemberState>) {
    const devs = options.members;
    this.name = options.name ?? `array(${devs.map((d) => d.name).join(', ')})`;
    this.members = devs.map((dev) => ({ dev, state: states[dev.name] === 'ok' || states[dev.name] === undefined ? 'ok' : states[dev.name]!, rebuiltBlocks: 0 }));
    this.blockSizeBytes = devs[0]!.blockSizeBytes;
    this.blockCount = Math.min(...devs.map((d) => d.blockCount));
    this.log = options.logger ?? stderrLogger;
    this.stateFile = options.stateFile;
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
    const states = options.stateFile === undefined ? {} : await loadStates(options.stateFile);
    const array = new DiskArray(options, states);
    const ok = array.members.filter((m) => m.state === 'ok');
    if (ok.length === 0 && array.members.some((m) => m.state !== 'ok')) {
      // Every member is recorded failed or half-rebuilt: none holds the volume for sure. Serve
      // from them anyway rather than not at all, and say so: the site's peers repair it.
      array.log.error({ array: array.name, states }, `no member of ${array.name} is recorded healthy; serving from all of them as they are (resync this site from its peers)`);
      for (const m of array.members) m.state = 'ok';
    }
    for (const [i, m] of array.members.entries()) {
      if (m.state === 'rebuilding') {
        m.rebuiltBlocks = 0; // interrupted: start over
        array.startRebuild(i);
      }
    }
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
    }));
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    const blocks = blocksIn(this, data, lba);
    checkRange(this, lba, blocks);
    if (this.readable().length === 0) throw this.allFailedError(lba);
    const span = { lba, endLba: lba + blocks };
    // A rebuild chunk being copied holds back writes that overlap it (see the file comment).
    while (this.copying !== undefined && overlaps(this.copying, span)) await this.copying.done;
    const done = this.onMembers('write', lba, (dev) => dev.write(lba, data, options));
    const entry: Span = { ...span, done: done.then(() => undefined, () => undefined) };
    this.writing.add(entry);
    try {
      await done;
    } finally {
      this.writing.delete(entry);
    }
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    if (this.closed) throw sense.notPresent(this.name);
    checkRange(this, lba, blocks);
    let lastErr: unknown;
    for (;;) {
      const ok = this.readable();
      if (ok.length === 0) throw lastErr ?? this.allFailedError(lba);
      const m = ok[this.nextReadMember++ % ok.length]!;
      try {
        return await m.dev.read(lba, blocks);
      } catch (err) {
        lastErr = err;
        await this.fail(m, err, 'read', lba);
      }
    }
  }

  /** Flushes every member that takes writes (what completed before the call is then durable). */
  async flush(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    await this.onMembers('flush', undefined, (dev) => dev.flush());
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
    m.state = 'rebuilding';
    m.rebuiltBlocks = 0;
    delete m.error;
    await this.saveStates();
    if (old !== dev) await old.close().catch(() => undefined);
    this.startRebuild(i);
  }

  /** Resolves when the running rebuild (if any) ends. */
  rebuilt(): Promise<void> {
    return this.rebuild ?? Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.writing].map((w) => w.done));
    await this.rebuild?.catch(() => undefined);
    await this.saveChain;
    const results = await Promise.allSettled(this.members.map((m) => m.dev.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  // --- internals ----------------------------------------------------------------------------

  /** Members that hold the volume (served from). */
  private readable(): Member[] {
    return this.members.filter((m) => m.state === 'ok');
  }

  private startRebuild(i: number): void {
    const run = this.copyOnto(i).catch((err: unknown) => {
      this.log.error({ array: this.name, member: this.members[i]!.dev.name, err: (err as Error).message }, `rebuild of ${this.members[i]!.dev.name} stopped: ${(err as Error).message}`);
    });
    this.rebuild = run.finally(() => {
      this.rebuild = undefined;
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
          await this.fail(m, err, 'rebuild write', lba);
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
    await m.dev.flush();
    m.state = 'ok';
    await this.saveStates();
    this.log.warn({ array: this.name, member: m.dev.name }, `${m.dev.name} is rebuilt and serves reads again`);
  }

  /** Runs `op` on every member that takes writes; members that fail are marked failed; fails unless an ok member succeeded. */
  private async onMembers(what: 'write' | 'flush', lba: number | undefined, op: (dev: BlockDevice) => Promise<void>): Promise<void> {
    const targets = this.members.filter((m) => m.state !== 'failed');
    if (!targets.some((m) => m.state === 'ok')) throw this.allFailedError(lba);
    const results = await Promise.allSettled(targets.map((m) => op(m.dev)));
    let succeeded = 0;
    let lastErr: unknown;
    const saves: Promise<void>[] = [];
    results.forEach((r, i) => {
      const m = targets[i]!;
      if (r.status === 'fulfilled') {
        if (m.state === 'ok') succeeded++;
      } else {
        lastErr = r.reason;
        saves.push(this.fail(m, r.reason, what, lba));
      }
    });
    // A member that missed this write is recorded failed before the write completes: a restart
    // must never read from it as if it held the volume.
    await Promise.all(saves);
    if (succeeded === 0) throw lastErr ?? this.allFailedError(lba);
  }

  /** Marks `m` failed (logged) and persists that; resolves once the record is durable. */
  private fail(m: Member, err: unknown, op: string, lba: number | undefined): Promise<void> {
    if (m.state === 'failed') return Promise.resolve();
    m.state = 'failed';
    m.error = err instanceof Error ? err : new Error(String(err));
    const saved = this.saveStates();
    const left = this.readable().map((x) => x.dev.name);
    this.log.error(
      { array: this.name, member: m.dev.name, op, lba, err: m.error.message, membersLeft: left },
      left.length > 0
        ? `array member ${m.dev.name} failed a ${op}; marked failed, ${left.length} member(s) keep serving (replace it and rebuild)`
        : `array member ${m.dev.name} failed a ${op}; no member is left, the volume is offline`,
    );
    return saved;
  }

  private allFailedError(lba: number | undefined): SenseError {
    const why = this.members.map((m) => `${m.dev.name}: ${m.error?.message ?? m.state}`).join('; ');
    return sense.notPresent(this.name, `every member of the array has failed (${why})${lba === undefined ? '' : ` at LBA ${lba}`}; replace the storage devices`);
  }

  /** Persists member states (write temp, fdatasync, rename), one save at a time, in order. */
  private saveStates(): Promise<void> {
    const file = this.stateFile;
    if (file === undefined) return Promise.resolve();
    const states = Object.fromEntries(this.members.map((m) => [m.dev.name, m.state]));
    const run = this.saveChain.then(async () => {
      const tmp = join(dirname(file), `.${basename(file)}.tmp`);
      const fh = await openFile(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify({ members: states }) + '\n');
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

async function loadStates(file: string): Promise<Record<string, MemberState>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  let parsed: { members?: unknown };
  try {
    parsed = JSON.parse(text) as { members?: unknown };
  } catch {
    throw sense.mediumRead(file, undefined, `${file}: the array member states are not valid JSON; delete the file only if every member is known to hold the volume`);
  }
  const out: Record<string, MemberState> = {};
  if (typeof parsed.members !== 'object' || parsed.members === null) return out;
  for (const [k, v] of Object.entries(parsed.members as Record<string, unknown>)) {
    if (v === 'ok' || v === 'failed' || v === 'rebuilding') out[k] = v;
  }
  return out;
}

function overlaps(a: { lba: number; endLba: number }, b: { lba: number; endLba: number }): boolean {
  return a.lba < b.endLba && b.lba < a.endLba;
}

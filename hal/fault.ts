// Fault-injection wrapper: any BlockDevice behind the same interface, with seeded latency,
// errors (on LBA ranges, on ops, at a rate), torn writes, power cuts, write-protect and unplug.
// nbdkit's error/delay filters as one wrapper; TigerBeetle's simulated storage: every decision
// comes from one PRNG seed, so a failing schedule replays exactly from (seed, operations).
//
// Durability model (what powerCut() may lose): the wrapper plays the device's volatile write
// cache. A write is durable once a later flush() succeeds, or at once if it was FUA. Until then
// the wrapper keeps the block's pre-image (its durable content); powerCut() then keeps or
// reverts each such block independently at random. So after a cut every block holds either its
// last durable content or the latest content written to it since, never anything else. The
// pre-image map is bounded by `volatileCacheBlocksMax`: like a real drive's cache, when it is
// full the oldest dirty block is written back (becomes durable) and its pre-image dropped.
//
// Ordering: latency is applied before an operation reaches the device, and the device executes
// operations one at a time, so with jitter concurrent operations may complete out of issue order
// (as on a real disk and as NBD allows); with jitter 0 they keep issue order.
//
// Claims served: tests and simulation of claims 2, 4, 11, 16, 17 (cache and storage faults).
// hal/ imports nothing from src/.

import {
  MediaStatus,
  blocksIn,
  checkRange,
  sense,
  type BlockDevice,
  type BlockSizeBytes,
  type Capabilities,
  type MediaStatusFlags,
  type SenseError,
  type WriteOptions,
} from './blockdev.js';
import { Prng } from './prng.js';

export type FaultOp = 'read' | 'write' | 'flush' | 'trim';
export const faultOps: readonly FaultOp[] = ['read', 'write', 'flush', 'trim'];

/** Which sense an injected error carries. */
export type FaultSense = 'medium' | 'notReady' | 'hardware' | 'timeout' | 'dataProtect';

/** Fail matching operations. A rule with a range matches only read/write/trim touching it. */
export interface FaultRule {
  /** Ops the rule applies to; default all. */
  readonly ops?: readonly FaultOp[];
  /** First LBA of the bad range; absent = the rule matches regardless of LBA (and flush). */
  readonly lba?: number;
  /** Length of the bad range in blocks; default 1 when `lba` is given. */
  readonly blocks?: number;
  /** Default 'medium' (MEDIUM ERROR, read or write flavour by op). */
  readonly sense?: FaultSense;
  /** Fire this many times, then the rule is spent; default unlimited. */
  readonly times?: number;
}

export interface FaultConfig {
  /** Added to every operation before it reaches the device; 0 and 0 = resolve on a microtask. */
  readonly latencyMs: number;
  /** Uniform extra delay in [0, jitterMs). */
  readonly jitterMs: number;
  /** Probability that an operation in `errorRateOps` fails with MEDIUM ERROR before touching the device. */
  readonly errorRate: number;
  readonly errorRateOps: readonly FaultOp[];
  readonly rules: readonly FaultRule[];
  /** Probability that a write of 2+ blocks lands only a random subset of its blocks, then fails. */
  readonly tornWriteRate: number;
  /** Probability that powerCut() keeps each not-yet-durable block (else it reverts). */
  readonly powerCutKeepRate: number;
  /** Write-protect switch: writes and trims fail with DATA PROTECT. */
  readonly readOnly: boolean;
}

export interface FaultDeviceOptions extends Partial<FaultConfig> {
  readonly seed: number;
  /** Name in error messages; default the inner device's name. */
  readonly name?: string;
  /** Bound on tracked pre-images (the simulated volatile write cache), in blocks. */
  readonly volatileCacheBlocksMax?: number;
  /** Timer used for latency; inject a simulated clock here. Default setTimeout. */
  readonly sleep?: (ms: number) => Promise<void>;
}

export const volatileCacheBlocksMaxDefault = 65_536;

export interface PowerCutReport {
  /** Not-yet-durable blocks that kept their latest content. */
  readonly blocksKept: number;
  /** Not-yet-durable blocks reverted to their last durable content. */
  readonly blocksReverted: number;
}

export interface FaultStats {
  injectedErrors: number;
  tornWrites: number;
  powerCuts: number;
  writeBacks: number;
}

const defaultConfig: FaultConfig = {
  latencyMs: 0,
  jitterMs: 0,
  errorRate: 0,
  errorRateOps: faultOps,
  rules: [],
  tornWriteRate: 0,
  powerCutKeepRate: 0.5,
  readOnly: false,
};

const realSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class FaultDevice implements BlockDevice {
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly stats: FaultStats = { injectedErrors: 0, tornWrites: 0, powerCuts: 0, writeBacks: 0 };
  private readonly rng: Prng;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly volatileCacheBlocksMax: number;
  private cfg: FaultConfig = defaultConfig;
  /** Spent-count per rule object (rules are compared by identity). */
  private ruleFired = new Map<FaultRule, number>();
  /** LBA -> durable content of a block written since the last flush (insertion order = age). */
  private readonly preImages = new Map<number, Buffer>();
  /** Operations reach the inner device one at a time, in the order they leave their latency. */
  private tail: Promise<unknown> = Promise.resolve();
  private off = false;
  private unplugged = false;
  private closed = false;

  constructor(
    readonly inner: BlockDevice,
    options: FaultDeviceOptions,
  ) {
    this.name = options.name ?? inner.name;
    this.blockSizeBytes = inner.blockSizeBytes;
    this.blockCount = inner.blockCount;
    this.rng = new Prng(options.seed);
    this.sleep = options.sleep ?? realSleep;
    this.volatileCacheBlocksMax = options.volatileCacheBlocksMax ?? volatileCacheBlocksMaxDefault;
    if (!Number.isSafeInteger(this.volatileCacheBlocksMax) || this.volatileCacheBlocksMax < 1) {
      throw new RangeError(`${this.name}: volatileCacheBlocksMax ${this.volatileCacheBlocksMax} must be a whole number >= 1`);
    }
    this.configure(options);
  }

  get capabilities(): Capabilities {
    const c = this.inner.capabilities;
    return { flush: c.flush, fua: c.fua, trim: c.trim, readOnly: c.readOnly || this.cfg.readOnly };
  }

  /** The current fault settings. */
  get config(): FaultConfig {
    return this.cfg;
  }

  /** True between powerCut() and powerOn(). */
  get poweredOff(): boolean {
    return this.off;
  }

  /** Blocks written since the last flush and not yet durable (what a power cut may revert). */
  get volatileBlocks(): number {
    return this.preImages.size;
  }

  /** Changes fault settings from now on; fields not given keep their value. Validated here. */
  configure(patch: Partial<FaultConfig>): void {
    const next: FaultConfig = {
      latencyMs: patch.latencyMs ?? this.cfg.latencyMs,
      jitterMs: patch.jitterMs ?? this.cfg.jitterMs,
      errorRate: patch.errorRate ?? this.cfg.errorRate,
      errorRateOps: patch.errorRateOps ?? this.cfg.errorRateOps,
      rules: patch.rules ?? this.cfg.rules,
      tornWriteRate: patch.tornWriteRate ?? this.cfg.tornWriteRate,
      powerCutKeepRate: patch.powerCutKeepRate ?? this.cfg.powerCutKeepRate,
      readOnly: patch.readOnly ?? this.cfg.readOnly,
    };
    for (const k of ['latencyMs', 'jitterMs'] as const) {
      if (!Number.isFinite(next[k]) || next[k] < 0) throw new RangeError(`${this.name}: fault ${k} ${next[k]} must be a number >= 0`);
    }
    for (const k of ['errorRate', 'tornWriteRate', 'powerCutKeepRate'] as const) {
      if (!(next[k] >= 0 && next[k] <= 1)) throw new RangeError(`${this.name}: fault ${k} ${next[k]} must be a probability in [0, 1]`);
    }
    next.rules.forEach((r, i) => this.checkRule(r, i));
    this.cfg = next;
    if (patch.rules !== undefined) this.ruleFired = new Map();
  }

  private checkRule(r: FaultRule, i: number): void {
    const where = `${this.name}: fault rule ${i}`;
    if (r.lba !== undefined && (!Number.isSafeInteger(r.lba) || r.lba < 0)) throw new RangeError(`${where}: lba ${r.lba} must be a whole number >= 0`);
    if (r.blocks !== undefined && (r.lba === undefined || !Number.isSafeInteger(r.blocks) || r.blocks < 1)) {
      throw new RangeError(`${where}: blocks ${r.blocks} needs an lba and must be a whole number >= 1`);
    }
    if (r.times !== undefined && (!Number.isSafeInteger(r.times) || r.times < 1)) throw new RangeError(`${where}: times ${r.times} must be a whole number >= 1`);
    for (const op of r.ops ?? []) if (!faultOps.includes(op)) throw new RangeError(`${where}: op "${op}" is not one of ${faultOps.join(', ')}`);
  }

  status(): MediaStatusFlags {
    if (this.closed || this.off || this.unplugged) return MediaStatus.NO_MEDIA;
    return this.inner.status() | (this.cfg.readOnly ? MediaStatus.WRITE_PROTECTED : 0);
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    this.assertReady();
    checkRange(this, lba, blocks);
    await this.delay();
    return this.serial(async () => {
      this.assertReady();
      this.inject('read', lba, blocks);
      return this.inner.read(lba, blocks);
    });
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.assertReady();
    const blocks = blocksIn(this, data, lba);
    checkRange(this, lba, blocks);
    await this.delay();
    return this.serial(async () => {
      this.assertReady();
      if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
      this.inject('write', lba, blocks);
      const fua = options?.fua === true;
      if (blocks >= 2 && this.rng.chance(this.cfg.tornWriteRate)) {
        await this.tornWrite(lba, blocks, data);
        return; // tornWrite always throws; kept for the type checker
      }
      // FUA data is durable when this resolves, so it needs no pre-image; if the FUA write
      // fails half-way the block holds old or new content, both allowed after a cut.
      if (!fua) await this.track(lba, blocks);
      await this.inner.write(lba, data, options);
      if (fua) this.untrack(lba, blocks);
      this.writeBackOverflow();
    });
  }

  async flush(): Promise<void> {
    this.assertReady();
    await this.delay();
    return this.serial(async () => {
      this.assertReady();
      this.inject('flush', undefined, 0);
      await this.inner.flush();
      // Every write that completed before this point is durable now.
      this.preImages.clear();
    });
  }

  async trim(lba: number, blocks: number): Promise<void> {
    this.assertReady();
    checkRange(this, lba, blocks);
    const innerTrim = this.inner.trim;
    if (!this.inner.capabilities.trim || innerTrim === undefined) {
      throw sense.invalidField(this.name, 'trim is not supported by this device (capabilities.trim is false)', lba);
    }
    await this.delay();
    return this.serial(async () => {
      this.assertReady();
      if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
      this.inject('trim', lba, blocks);
      await this.track(lba, blocks);
      await innerTrim.call(this.inner, lba, blocks);
      this.writeBackOverflow();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.serial(() => this.inner.close());
  }

  /**
   * Cuts power: from this call on every operation fails NOT READY until powerOn(). Each block
   * written since the last successful flush (and not FUA) independently keeps its new content
   * or reverts to its pre-write content. An operation already executing on the device finishes
   * first (it completed before the cut); queued ones fail.
   */
  async powerCut(): Promise<PowerCutReport> {
    if (this.closed) throw sense.notPresent(this.name);
    this.off = true;
    this.stats.powerCuts++;
    return this.serial(async () => {
      let blocksKept = 0;
      let blocksReverted = 0;
      for (const [lba, pre] of this.preImages) {
        if (this.rng.chance(this.cfg.powerCutKeepRate)) {
          blocksKept++;
        } else {
          await this.inner.write(lba, pre);
          blocksReverted++;
        }
      }
      this.preImages.clear();
      // What survived is on stable storage now: make it so on the inner device too.
      await this.inner.flush();
      return { blocksKept, blocksReverted };
    });
  }

  /** Restores power after powerCut(); an unplugged device stays gone. */
  powerOn(): void {
    this.off = false;
  }

  /** The device is removed: every later operation fails NOT READY / MEDIUM NOT PRESENT. */
  unplug(): void {
    this.unplugged = true;
  }

  private assertReady(): void {
    if (this.closed) throw sense.notPresent(this.name);
    if (this.unplugged) throw sense.notPresent(this.name, 'medium not present (device unplugged)');
    if (this.off) throw sense.notPresent(this.name, 'medium not present (device powered off by a power cut; call powerOn())');
  }

  private delay(): Promise<void> {
    const { latencyMs, jitterMs } = this.cfg;
    const ms = latencyMs + (jitterMs > 0 ? this.rng.float() * jitterMs : 0);
    return ms > 0 ? this.sleep(ms) : Promise.resolve();
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Throws the injected error for this op, if a rule or the error rate says so. */
  private inject(op: FaultOp, lba: number | undefined, blocks: number): void {
    for (const rule of this.cfg.rules) {
      if (rule.ops !== undefined && !rule.ops.includes(op)) continue;
      let failLba = lba;
      if (rule.lba !== undefined) {
        if (lba === undefined) continue;
        const ruleEnd = rule.lba + (rule.blocks ?? 1);
        if (rule.lba >= lba + blocks || ruleEnd <= lba) continue;
        failLba = Math.max(lba, rule.lba);
      }
      const fired = this.ruleFired.get(rule) ?? 0;
      if (rule.times !== undefined && fired >= rule.times) continue;
      this.ruleFired.set(rule, fired + 1);
      throw this.injected(rule.sense ?? 'medium', op, failLba, 'injected fault (rule)');
    }
    if (this.cfg.errorRateOps.includes(op) && this.rng.chance(this.cfg.errorRate)) {
      throw this.injected('medium', op, lba, `injected fault (error rate ${this.cfg.errorRate})`);
    }
  }

  private injected(kind: FaultSense, op: FaultOp, lba: number | undefined, detail: string): SenseError {
    this.stats.injectedErrors++;
    const what = `${op} failed: ${detail}`;
    switch (kind) {
      case 'medium':
        return op === 'read' ? sense.mediumRead(this.name, lba, what) : sense.mediumWrite(this.name, lba, what);
      case 'notReady':
        return sense.notPresent(this.name, what);
      case 'hardware':
        return sense.hardware(this.name, what);
      case 'timeout':
        return sense.timeout(this.name, what, lba);
      case 'dataProtect':
        return sense.writeProtected(this.name, lba);
    }
  }

  /** Lands a random subset of the write's blocks, then fails: the caller sees MEDIUM ERROR. */
  private async tornWrite(lba: number, blocks: number, data: Uint8Array): Promise<never> {
    this.stats.tornWrites++;
    const bs = this.blockSizeBytes;
    const landed: boolean[] = [];
    for (let i = 0; i < blocks; i++) landed.push(this.rng.chance(0.5));
    await this.track(lba, blocks);
    let firstLost = -1;
    for (let i = 0; i < blocks; ) {
      if (!landed[i]) {
        if (firstLost < 0) firstLost = i;
        i++;
        continue;
      }
      let j = i;
      while (j < blocks && landed[j]) j++;
      await this.inner.write(lba + i, data.subarray(i * bs, j * bs));
      i = j;
    }
    this.writeBackOverflow();
    const at = firstLost < 0 ? lba : lba + firstLost;
    throw sense.mediumWrite(this.name, at, `write of ${blocks} blocks torn: injected fault (torn write), blocks from LBA ${at} may not have landed`);
  }

  /** Saves the durable content of every block in the range not already saved since the last flush. */
  private async track(lba: number, blocks: number): Promise<void> {
    const bs = this.blockSizeBytes;
    const end = lba + blocks;
    for (let i = lba; i < end; ) {
      if (this.preImages.has(i)) {
        i++;
        continue;
      }
      let j = i;
      while (j < end && !this.preImages.has(j)) j++;
      // One read per run of untracked blocks; each block keeps a view into it, and the whole
      // run buffer stays referenced only while some block of it is still volatile.
      const run = await this.inner.read(i, j - i);
      for (let k = i; k < j; k++) this.preImages.set(k, run.subarray((k - i) * bs, (k - i + 1) * bs));
      i = j;
    }
  }

  private untrack(lba: number, blocks: number): void {
    for (let i = lba; i < lba + blocks; i++) this.preImages.delete(i);
  }

  /** A full volatile cache writes back its oldest block: that block becomes durable. */
  private writeBackOverflow(): void {
    while (this.preImages.size > this.volatileCacheBlocksMax) {
      const oldest = this.preImages.keys().next().value as number;
      this.preImages.delete(oldest);
      this.stats.writeBacks++;
    }
  }
}

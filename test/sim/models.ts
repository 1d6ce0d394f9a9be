// Seeded models of the devices a site persists to, for the deterministic simulator:
// a disk with power-cut semantics, a battery-backed cache journal, the dirty-bitmap file and the
// meta record. Each keeps "what survives" separate from "what is in flight", so a crash can
// keep or lose in-flight work at random (from the run's seed) exactly as the executor contract
// in src/core/types.ts allows, and no more.

import type { Prng } from '../../hal/prng.js';
import type { CacheEntry, Epoch, Meta, PeerId, Seq } from '../../src/core/types.js';
import { siteBitmapKeys } from '../../src/core/bitmap-keys.js';

/**
 * A disk: `cur` is what a read returns (it survives a process crash, like the page cache
 * behind a loopback file); `durable` is what survives a power cut. Blocks written since the
 * last flush covering them are each kept or lost at random on a power cut.
 */
export class SimDisk {
  readonly cur: Uint8Array;
  readonly durable: Uint8Array;
  private readonly version: Uint32Array;
  /** Version of each block's durable content (a flush must not roll back a newer FUA write). */
  private readonly durableVersion: Uint32Array;
  private readonly unflushed = new Set<number>();

  constructor(readonly volumeBytes: number, readonly blockBytes: number) {
    this.cur = new Uint8Array(volumeBytes);
    this.durable = new Uint8Array(volumeBytes);
    this.version = new Uint32Array(volumeBytes / blockBytes);
    this.durableVersion = new Uint32Array(volumeBytes / blockBytes);
  }

  write(offsetBytes: number, data: Uint8Array, fua: boolean): void {
    if (offsetBytes % this.blockBytes !== 0 || data.byteLength % this.blockBytes !== 0 || offsetBytes + data.byteLength > this.volumeBytes) {
      throw new Error(`sim disk: bad write ${offsetBytes}+${data.byteLength}`);
    }
    this.cur.set(data, offsetBytes);
    const first = offsetBytes / this.blockBytes;
    for (let i = 0; i < data.byteLength / this.blockBytes; i++) {
      const b = first + i;
      this.version[b]!++;
      if (fua) {
        this.durable.set(data.subarray(i * this.blockBytes, (i + 1) * this.blockBytes), b * this.blockBytes);
        this.durableVersion[b] = this.version[b]!;
        this.unflushed.delete(b);
      } else {
        this.unflushed.add(b);
      }
    }
  }

  /** Writes one block of a write (a torn write at a crash lands some blocks, not others). */
  writeBlock(offsetBytes: number, data: Uint8Array, blockIndex: number): void {
    const bb = this.blockBytes;
    this.write(offsetBytes + blockIndex * bb, data.subarray(blockIndex * bb, (blockIndex + 1) * bb), false);
  }

  read(offsetBytes: number, lengthBytes: number): Uint8Array {
    return this.cur.slice(offsetBytes, offsetBytes + lengthBytes);
  }

  /** A flush covers what was written before it was issued: snapshot now, apply on completion. */
  flushSnapshot(): Map<number, { version: number; data: Uint8Array }> {
    const snap = new Map<number, { version: number; data: Uint8Array }>();
    const bb = this.blockBytes;
    for (const b of this.unflushed) snap.set(b, { version: this.version[b]!, data: this.cur.slice(b * bb, (b + 1) * bb) });
    return snap;
  }

  flushApply(snap: Map<number, { version: number; data: Uint8Array }>): void {
    for (const [b, s] of snap) {
      if (s.version <= this.durableVersion[b]!) continue;
      this.durable.set(s.data, b * this.blockBytes);
      this.durableVersion[b] = s.version;
      if (this.version[b] === s.version) this.unflushed.delete(b);
    }
  }

  powerCut(prng: Prng): number {
    const bb = this.blockBytes;
    let lost = 0;
    for (const b of [...this.unflushed].sort((x, y) => x - y)) {
      if (prng.chance(0.5)) {
        this.cur.set(this.durable.subarray(b * bb, (b + 1) * bb), b * bb);
        lost++;
      } else {
        this.durable.set(this.cur.subarray(b * bb, (b + 1) * bb), b * bb);
        this.durableVersion[b] = this.version[b]!;
      }
    }
    this.unflushed.clear();
    return lost;
  }
}

const key = (epoch: Epoch, seq: Seq): string => `${epoch}/${seq}`;

/**
 * The battery-backed cache journal: appends complete in issue order; a crash keeps the
 * appended entries plus a random prefix of those still in flight (a torn tail is cut);
 * drops take effect at once and in order. Battery-backed, so a power cut is the same as a crash.
 */
export class SimCache {
  readonly entries = new Map<string, CacheEntry>();
  readonly inflight: CacheEntry[] = [];

  append(e: CacheEntry): void {
    this.inflight.push(e);
  }

  /** The oldest in-flight append reaches the journal. */
  completeOne(): CacheEntry {
    const e = this.inflight.shift();
    if (e === undefined) throw new Error('sim cache: completion with nothing in flight');
    this.entries.set(key(e.epoch, e.seq), e);
    return e;
  }

  drop(list: readonly { epoch: Epoch; seq: Seq }[]): void {
    for (const k of list) this.entries.delete(key(k.epoch, k.seq));
  }

  crash(prng: Prng): void {
    const keep = prng.int(this.inflight.length + 1);
    for (const e of this.inflight.slice(0, keep)) this.entries.set(key(e.epoch, e.seq), e);
    this.inflight.length = 0;
  }

  list(): CacheEntry[] {
    return [...this.entries.values()];
  }
}

/**
 * Dirty bitmaps and meta record: ordered updates, durable on completion. `acting` and
 * `inSyncEpoch` are sticky as in the real store (src/site/persist.ts): a meta save that leaves it out keeps the stored value.
 * A crash keeps a random prefix of the updates in flight, so `acting` survives exactly when the
 * save that carried it does.
 */
export class SimPersist {
  readonly bitmaps = new Map<PeerId, Set<number>>();
  meta: Meta;
  readonly inflight: ({ kind: 'set' | 'clear'; peer: PeerId; regions: readonly number[] } | { kind: 'meta'; meta: Meta })[] = [];

  constructor(meta: Meta) {
    this.meta = meta;
  }

  applyOne(): void {
    const u = this.inflight.shift();
    if (u === undefined) throw new Error('sim persist: completion with nothing in flight');
    if (u.kind === 'meta') {
      const acting = u.meta.acting ?? this.meta.acting;
      const inSyncEpoch = u.meta.inSyncEpoch ?? this.meta.inSyncEpoch;
      this.meta = { ...u.meta, ...(acting !== undefined ? { acting } : {}), ...(inSyncEpoch !== undefined ? { inSyncEpoch } : {}) };
      return;
    }
    let set = this.bitmaps.get(u.peer);
    if (set === undefined) this.bitmaps.set(u.peer, (set = new Set()));
    for (const r of u.regions) {
      if (u.kind === 'set') set.add(r);
      else set.delete(r);
    }
  }

  crash(prng: Prng): void {
    const keep = prng.int(this.inflight.length + 1);
    for (let i = 0; i < keep; i++) this.applyOne();
    this.inflight.length = 0;
  }

  /** What a restart loads: every peer's bitmap, and of the site's own ('@...') the keys the real site loads (siteBitmapKeys). */
  dirtyRegions(): Map<PeerId, number[]> {
    const m = new Map<PeerId, number[]>();
    for (const [p, s] of this.bitmaps) if (s.size > 0 && (!p.startsWith('@') || siteBitmapKeys.includes(p))) m.set(p, [...s].sort((a, b) => a - b));
    return m;
  }
}

// Dirty-region arithmetic for the persistent bitmap (issue 5 item 5): a region is
// Limits.regionBytes of the volume; region i covers [i * regionBytes, (i + 1) * regionBytes).

import { assert, type ByteRange } from './types.js';

/** Region indexes touched by a byte range. */
export function regionsOf(offsetBytes: number, lengthBytes: number, regionBytes: number): number[] {
  assert(lengthBytes > 0 && offsetBytes >= 0, () => `regionsOf: bad range ${offsetBytes}+${lengthBytes}`);
  const first = Math.floor(offsetBytes / regionBytes);
  const last = Math.floor((offsetBytes + lengthBytes - 1) / regionBytes);
  const out: number[] = [];
  for (let r = first; r <= last; r++) out.push(r);
  return out;
}

export function regionCount(volumeBytes: number, regionBytes: number): number {
  return Math.ceil(volumeBytes / regionBytes);
}

/** Byte range of region `r`, clipped at the end of the volume. */
export function regionRange(r: number, volumeBytes: number, regionBytes: number): { offsetBytes: number; lengthBytes: number } {
  const offsetBytes = r * regionBytes;
  assert(offsetBytes < volumeBytes, () => `region ${r} lies past the end of the ${volumeBytes}-byte volume`);
  return { offsetBytes, lengthBytes: Math.min(regionBytes, volumeBytes - offsetBytes) };
}

/** Regions touched by any of `ranges`, sorted. */
export function regionsOfRanges(ranges: readonly ByteRange[], regionBytes: number): number[] {
  const set = new Set<number>();
  for (const r of ranges) if (r.lengthBytes > 0) for (const x of regionsOf(r.offsetBytes, r.lengthBytes, regionBytes)) set.add(x);
  return [...set].sort((a, b) => a - b);
}

/** Regions as byte ranges, runs of consecutive regions merged (so a list of them stays short on the wire). */
export function rangesOfRegions(regions: Iterable<number>, volumeBytes: number, regionBytes: number): ByteRange[] {
  const sorted = [...new Set(regions)].sort((a, b) => a - b);
  const out: ByteRange[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    const start = regionRange(sorted[i]!, volumeBytes, regionBytes).offsetBytes;
    const last = regionRange(sorted[j]!, volumeBytes, regionBytes);
    out.push({ offsetBytes: start, lengthBytes: last.offsetBytes + last.lengthBytes - start });
    i = j + 1;
  }
  return out;
}

/**
 * At most `max` ranges covering `ranges` (sorted, disjoint): the closest neighbours are merged
 * first. Naming more than was asked only costs resync; a list that does not fit a frame would
 * cost the whole message.
 */
export function coarsenRanges(ranges: readonly ByteRange[], max: number): ByteRange[] {
  if (ranges.length <= max) return [...ranges];
  const gaps = ranges.slice(1).map((r, i) => r.offsetBytes - (ranges[i]!.offsetBytes + ranges[i]!.lengthBytes)).sort((a, b) => a - b);
  const limit = gaps[ranges.length - max - 1]!; // merging every gap up to this one leaves <= max
  const out: ByteRange[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && r.offsetBytes - (last.offsetBytes + last.lengthBytes) <= limit) {
      out[out.length - 1] = { offsetBytes: last.offsetBytes, lengthBytes: r.offsetBytes + r.lengthBytes - last.offsetBytes };
    } else {
      out.push(r);
    }
  }
  return out;
}

/** Why a peer's list of ranges does not lie within the volume (undefined: it does). */
export function badRanges(ranges: readonly ByteRange[], volumeBytes: number, max: number): string | undefined {
  if (ranges.length > max) return `${ranges.length} ranges, at most ${max}`;
  for (const r of ranges) {
    if (!Number.isSafeInteger(r.offsetBytes) || !Number.isSafeInteger(r.lengthBytes) || r.offsetBytes < 0 || r.lengthBytes < 0 || r.offsetBytes + r.lengthBytes > volumeBytes) {
      return `range ${r.offsetBytes}+${r.lengthBytes} is not within the ${volumeBytes}-byte volume`;
    }
  }
  return undefined;
}

/** A set of block indexes within one region (a bitmap: a region holds regionBytes / blockBytes blocks). */
export class BlockSet {
  private readonly bits: Uint8Array;
  private n = 0;

  constructor(readonly blocks: number) {
    this.bits = new Uint8Array(Math.ceil(blocks / 8));
  }

  get size(): number {
    return this.n;
  }

  full(): boolean {
    return this.n === this.blocks;
  }

  has(i: number): boolean {
    return ((this.bits[i >> 3]! >> (i & 7)) & 1) === 1;
  }

  add(i: number): void {
    if (this.has(i)) return;
    this.bits[i >> 3]! |= 1 << (i & 7);
    this.n++;
  }

  delete(i: number): void {
    if (!this.has(i)) return;
    this.bits[i >> 3]! &= ~(1 << (i & 7));
    this.n--;
  }

  /** Whether every block of this set is in `other`. */
  within(other: BlockSet | undefined): boolean {
    for (let i = 0; i < this.blocks; i++) if (this.has(i) && !(other?.has(i) ?? false)) return false;
    return true;
  }
}

/** The blocks of region `r` (of `regionBytes`) that `offsetBytes+lengthBytes` covers, as indexes within the region. */
export function blocksIn(r: number, regionBytes: number, blockBytes: number, offsetBytes: number, lengthBytes: number): [number, number] {
  const start = Math.max(offsetBytes, r * regionBytes);
  const end = Math.min(offsetBytes + lengthBytes, (r + 1) * regionBytes);
  return [Math.floor((start - r * regionBytes) / blockBytes), Math.ceil((end - r * regionBytes) / blockBytes)];
}

/** Per block of one region, how many writes a mirror missed there (one it missed can be forgotten again: it failed everywhere). */
export class MissedBlocks {
  private readonly counts: Uint16Array;

  constructor(readonly blocks: number) {
    this.counts = new Uint16Array(blocks);
  }

  has(i: number): boolean {
    return this.counts[i]! > 0;
  }

  add(i: number): void {
    if (this.counts[i]! < 0xffff) this.counts[i]!++;
  }

  forget(i: number): void {
    if (this.counts[i]! > 0 && this.counts[i]! < 0xffff) this.counts[i]!--;
  }
}

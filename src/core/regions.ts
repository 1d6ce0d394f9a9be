// Dirty-region arithmetic for the persistent bitmap (issue 5 item 5): a region is
// Limits.regionBytes of the volume; region i covers [i * regionBytes, (i + 1) * regionBytes).

import { assert, type ByteRange } from './types.js';

/** Region indexes touched by a byte range. */
export function regionsOf(offsetBytes: number, lengthBytes: number, regionBytes: number): number[] {
  assert(lengthBytes > 0 && offsetBytes >= 0, `regionsOf: bad range ${offsetBytes}+${lengthBytes}`);
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
  assert(offsetBytes < volumeBytes, `region ${r} lies past the end of the ${volumeBytes}-byte volume`);
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

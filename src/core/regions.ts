// Dirty-region arithmetic for the persistent bitmap (issue 5 item 5): a region is
// Limits.regionBytes of the volume; region i covers [i * regionBytes, (i + 1) * regionBytes).

import { assert } from './types.js';

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

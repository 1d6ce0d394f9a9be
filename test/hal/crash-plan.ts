// The seeded write plan shared by the crash test (test/hal/crash.test.ts) and its child
// (test/hal/crash-child.ts): both derive every write from (run seed, index), so the parent knows
// the content of writes the child issued but never reported.

import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Prng } from '../../hal/prng.js';

export const crashBlockSizeBytes = 4096;
/** 1 MiB volume: small, so writes overlap often. */
export const crashBlockCount = 256;
/** 192 KiB cache: a few dozen entries, so the ring wraps and fills (backpressure) all the time. */
export const crashCacheBytes = 192 * 1024;
export const crashWriteBlocksMax = 8;
/** Writes the child keeps in flight (it waits for the oldest to execute beyond this). */
export const crashWritesInflightMax = 8;
/** The child stops (and the test fails) if it is not killed before this many writes. */
export const crashPlanWritesMax = 50_000;

export interface PlannedWrite {
  readonly lba: number;
  readonly blocks: number;
  readonly data: Buffer;
  readonly fua: boolean;
}

export function plannedWrite(runSeed: number, index: number): PlannedWrite {
  const rng = new Prng(runSeed * 1_000_003 + index);
  const blocks = 1 + rng.int(crashWriteBlocksMax);
  const lba = rng.int(crashBlockCount - blocks + 1);
  const data = Buffer.allocUnsafe(blocks * crashBlockSizeBytes);
  for (let at = 0; at < data.length; at += 4) data.writeUInt32LE(rng.u32(), at);
  // No FUA: it adds an fdatasync per write (slow) and kill -9 never loses the page cache anyway.
  return { lba, blocks, data, fua: false };
}

export function hashOf(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex').slice(0, 16);
}

export function crashPaths(dir: string): { members: string[]; cache: string } {
  return { members: [join(dir, 'member-a.img'), join(dir, 'member-b.img')], cache: join(dir, 'site.cache') };
}

// hal/concat.ts: the BlockDevice contract (run unchanged, as every adapter and wrapper runs it),
// and the one thing a concatenation adds: I/O across part boundaries lands in the right part,
// byte for byte against a reference, and a failing part fails the whole request naming itself.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openLoopback } from '../../hal/loopback.js';
import { ConcatDevice } from '../../hal/concat.js';
import { FaultDevice } from '../../hal/fault.js';
import { MemoryDevice } from '../../hal/memory.js';
import { adapterContract, pattern, senseOf } from './adapter-contract.js';
import { SenseKey } from '../../hal/blockdev.js';

/** Three unequal parts making up blockCount blocks (the contract asks for 64 and other counts). */
function parts(o: { blockSizeBytes: 512 | 4096; blockCount: number; readOnly?: boolean }): MemoryDevice[] {
  const a = Math.max(1, Math.floor(o.blockCount / 4));
  const b = Math.max(1, Math.floor(o.blockCount / 3));
  const sizes = o.blockCount >= 3 ? [a, b, o.blockCount - a - b] : [o.blockCount];
  return sizes.map((n, i) => new MemoryDevice({ blockSizeBytes: o.blockSizeBytes, blockCount: n, readOnly: o.readOnly, name: `memory:part${i}` }));
}

adapterContract('concatenation of three memory devices', async (o) => new ConcatDevice(parts(o)), { issueOrder: false });

describe('ConcatDevice across part boundaries', () => {
  it('writes and reads spanning every boundary equal a single reference device, and each part holds its slice', async () => {
    const ps = [5, 7, 3].map((n, i) => new MemoryDevice({ blockSizeBytes: 512, blockCount: n, name: `memory:p${i}` }));
    const dev = new ConcatDevice(ps);
    const ref = new MemoryDevice({ blockSizeBytes: 512, blockCount: 15 });
    expect(dev.blockCount).toBe(15);
    let seed = 1;
    for (const [lba, blocks] of [[0, 15], [3, 4], [4, 9], [11, 4], [12, 1], [5, 7], [0, 1], [14, 1]] as const) {
      const data = pattern(blocks * 512, seed++);
      await dev.write(lba, data);
      await ref.write(lba, data);
      expect((await dev.read(0, 15)).equals(await ref.read(0, 15)), `after a write of ${blocks} blocks at LBA ${lba}`).toBe(true);
    }
    const whole = await ref.read(0, 15);
    expect((await ps[1]!.read(0, 7)).equals(whole.subarray(5 * 512, 12 * 512))).toBe(true);
    expect((await ps[2]!.read(0, 3)).equals(whole.subarray(12 * 512))).toBe(true);
    expect(dev.writeNow, 'memory parts have no writeNow, so neither has their concatenation').toBeUndefined();
  });

  it('writeNow (the page-cache path of hal/array.ts) over loopback parts lands across the boundary', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gm-concat-'));
    try {
      const ps = [await openLoopback(join(dir, 'a'), { blockSizeBytes: 512, blockCount: 4, create: true }), await openLoopback(join(dir, 'b'), { blockSizeBytes: 512, blockCount: 4, create: true })];
      const dev = new ConcatDevice(ps);
      expect(dev.writeNow).toBeDefined();
      const data = pattern(4 * 512, 7);
      dev.writeNow!(2, data);
      expect((await dev.read(2, 4)).equals(data)).toBe(true);
      expect((await ps[1]!.read(0, 2)).equals(data.subarray(1024))).toBe(true);
      await dev.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a request touching a failing part fails, naming that part; the others stay readable', async () => {
    const good = new MemoryDevice({ blockSizeBytes: 512, blockCount: 8, name: 'memory:good' });
    const bad = new FaultDevice(new MemoryDevice({ blockSizeBytes: 512, blockCount: 8, name: 'memory:inner' }), { seed: 1, name: 'fault:bad', rules: [{ ops: ['read'], lba: 2 }] });
    const dev = new ConcatDevice([good, bad]);
    const e = await senseOf(dev.read(6, 6));
    expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
    expect(e.message).toContain('fault:bad');
    await expect(dev.read(0, 8)).resolves.toHaveLength(8 * 512);
    await expect(dev.read(16, 1)).rejects.toThrow(/past the end/);
  });

  it('refuses parts of different block sizes', () => {
    expect(() => new ConcatDevice([new MemoryDevice({ blockSizeBytes: 512, blockCount: 8 }), new MemoryDevice({ blockSizeBytes: 4096, blockCount: 8, name: 'memory:big' })])).toThrow(/memory:big.*block size 4096 differs/);
  });
});

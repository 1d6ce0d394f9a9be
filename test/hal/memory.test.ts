import { describe, expect, it } from 'vitest';
import { SenseKey } from '../../hal/blockdev.js';
import { MemoryDevice } from '../../hal/memory.js';
import { adapterContract, pattern, senseOf } from './adapter-contract.js';

adapterContract('memory', async (o) => new MemoryDevice(o), { issueOrder: true });

describe('MemoryDevice', () => {
  it('trims to zeroes', async () => {
    const dev = new MemoryDevice({ blockSizeBytes: 512, blockCount: 8 });
    expect(dev.capabilities.trim).toBe(true);
    await dev.write(0, pattern(4 * 512, 5));
    await dev.trim(1, 2);
    const back = await dev.read(0, 4);
    expect(Buffer.compare(back.subarray(0, 512), pattern(4 * 512, 5).subarray(0, 512))).toBe(0);
    expect(Buffer.compare(back.subarray(512, 1536), Buffer.alloc(1024))).toBe(0);
    expect(Buffer.compare(back.subarray(1536), pattern(4 * 512, 5).subarray(1536))).toBe(0);
  });

  it('returns copies: mutating a read buffer or the written buffer later changes nothing', async () => {
    const dev = new MemoryDevice({ blockSizeBytes: 512, blockCount: 2 });
    const w = pattern(512, 6);
    await dev.write(0, w);
    w.fill(1);
    const r = await dev.read(0, 1);
    r.fill(2);
    expect(Buffer.compare(await dev.read(0, 1), pattern(512, 6))).toBe(0);
  });

  it('refuses a bad geometry naming the device', () => {
    expect(() => new MemoryDevice({ name: 'memory:x', blockSizeBytes: 1024, blockCount: 8 })).toThrow(/memory:x.*block size 1024/);
    expect(() => new MemoryDevice({ blockSizeBytes: 512, blockCount: 0 })).toThrow(/block count 0/);
  });

  it('read-only trim is DATA PROTECT', async () => {
    const dev = new MemoryDevice({ blockSizeBytes: 512, blockCount: 2, readOnly: true });
    expect((await senseOf(dev.trim(0, 1))).key).toBe(SenseKey.DATA_PROTECT);
  });
});

// The behaviours every BlockDevice adapter must show, run against each adapter by its own test
// file (memory, loopback, fault wrapper with no faults). Each check compares bytes or sense codes.

import { describe, expect, it } from 'vitest';
import { Asc, MediaStatus, SenseError, SenseKey, type BlockDevice } from '../../hal/blockdev.js';

export type Factory = (opts: { blockSizeBytes: 512 | 4096; blockCount: number; readOnly?: boolean }) => Promise<BlockDevice>;

export function pattern(bytes: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(bytes);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

export async function senseOf(p: Promise<unknown>): Promise<SenseError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof SenseError) return err;
    throw err;
  }
  throw new Error('expected a SenseError, the call succeeded');
}

export interface ContractOptions {
  /** The adapter promises that concurrent calls take effect in issue order (not required by BlockDevice). */
  issueOrder: boolean;
}

export function adapterContract(label: string, make: Factory, options: ContractOptions): void {
  describe(`${label}: BlockDevice contract`, () => {
    for (const blockSizeBytes of [512, 4096] as const) {
      it(`writes and reads back whole blocks (${blockSizeBytes}-byte blocks)`, async () => {
        const dev = await make({ blockSizeBytes, blockCount: 64 });
        try {
          expect(dev.blockSizeBytes).toBe(blockSizeBytes);
          expect(dev.blockCount).toBe(64);
          expect(dev.status()).toBe(MediaStatus.OK);
          const a = pattern(3 * blockSizeBytes, 7);
          await dev.write(5, a);
          const b = pattern(blockSizeBytes, 9);
          await dev.write(63, b, { fua: true });
          await dev.flush();
          expect(Buffer.compare(await dev.read(5, 3), a)).toBe(0);
          expect(Buffer.compare(await dev.read(63, 1), b)).toBe(0);
          expect(Buffer.compare(await dev.read(0, 1), Buffer.alloc(blockSizeBytes))).toBe(0);
          expect((await dev.read(0, 0)).length).toBe(0);
        } finally {
          await dev.close();
        }
      });
    }

    it('accepts a write from a view into a larger buffer', async () => {
      const dev = await make({ blockSizeBytes: 512, blockCount: 8 });
      const big = pattern(4096, 3);
      const view = big.subarray(512, 1536);
      await dev.write(2, view);
      expect(Buffer.compare(await dev.read(2, 2), big.subarray(512, 1536))).toBe(0);
      await dev.close();
    });

    it('never settles synchronously; a read issued after a write settled sees it', async () => {
      const dev = await make({ blockSizeBytes: 512, blockCount: 8 });
      let settled = false;
      const w = dev.write(1, pattern(512, 1)).then(() => { settled = true; });
      expect(settled).toBe(false);
      await w;
      expect(Buffer.compare(await dev.read(1, 1), pattern(512, 1))).toBe(0);
      await dev.close();
    });

    // hal/blockdev.ts: concurrent overlapping calls have no defined order in general (a loopback
    // file's pread/pwrite run on the OS thread pool in either order). Adapters that do promise
    // issue order (memory; USB and serial run one call at a time) are held to it here.
    if (options.issueOrder) {
      it('applies concurrent overlapping calls in issue order', async () => {
        const dev = await make({ blockSizeBytes: 512, blockCount: 8 });
        let settled = false;
        const w = dev.write(1, pattern(512, 1)).then(() => { settled = true; });
        expect(settled).toBe(false);
        const r = dev.read(1, 1);
        await w;
        expect(Buffer.compare(await r, pattern(512, 1))).toBe(0);
        await dev.close();
      });
    }

    it('out of range is ILLEGAL REQUEST / LBA OUT OF RANGE naming device and LBA', async () => {
      const dev = await make({ blockSizeBytes: 512, blockCount: 16 });
      for (const p of [dev.read(15, 2), dev.write(16, Buffer.alloc(512)), dev.read(17, 0)]) {
        const e = await senseOf(p);
        expect(e.key).toBe(SenseKey.ILLEGAL_REQUEST);
        expect([e.asc, e.ascq]).toEqual([...Asc.LBA_OUT_OF_RANGE]);
        expect(e.message).toContain(dev.name);
        expect(e.message).toMatch(/LBA 1[567]/);
      }
      const partial = await senseOf(dev.write(0, Buffer.alloc(100)));
      expect(partial.key).toBe(SenseKey.ILLEGAL_REQUEST);
      expect([partial.asc, partial.ascq]).toEqual([...Asc.INVALID_FIELD_IN_CDB]);
      const neg = await senseOf(dev.read(-1, 1));
      expect(neg.key).toBe(SenseKey.ILLEGAL_REQUEST);
      await dev.close();
    });

    it('write to a read-only device is DATA PROTECT and leaves data alone', async () => {
      const dev = await make({ blockSizeBytes: 512, blockCount: 8, readOnly: true });
      expect(dev.capabilities.readOnly).toBe(true);
      expect(dev.status() & MediaStatus.WRITE_PROTECTED).toBeTruthy();
      const e = await senseOf(dev.write(3, pattern(512, 2)));
      expect(e.key).toBe(SenseKey.DATA_PROTECT);
      expect([e.asc, e.ascq]).toEqual([...Asc.WRITE_PROTECTED]);
      expect(e.message).toContain(dev.name);
      expect(e.lba).toBe(3);
      expect(Buffer.compare(await dev.read(3, 1), Buffer.alloc(512))).toBe(0);
      await dev.close();
    });

    it('after close every call is NOT READY / MEDIUM NOT PRESENT', async () => {
      const dev = await make({ blockSizeBytes: 512, blockCount: 8 });
      await dev.write(0, pattern(512, 4));
      await dev.close();
      expect(dev.status() & MediaStatus.NO_MEDIA).toBeTruthy();
      const calls: Promise<unknown>[] = [dev.read(0, 1), dev.write(0, Buffer.alloc(512)), dev.flush()];
      if (dev.trim) calls.push(dev.trim(0, 1));
      for (const p of calls) {
        const e = await senseOf(p);
        expect(e.key).toBe(SenseKey.NOT_READY);
        expect([e.asc, e.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
        expect(e.message).toContain(dev.name);
      }
    });
  });
}

// The disk array: plain RAID-1 over members with one failing, flush, validation, and the
// rebuild of a replaced member while writes continue. (Ordering of overlapping writes and the
// cache journal's replay are the site's: src/core/local-store.ts, test/hal/crash*.test.ts.)

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DiskArray, rebuildChunkBytes, type ArrayLogger } from '../../hal/array.js';
import { SenseError, SenseKey, type BlockDevice } from '../../hal/blockdev.js';
import { FaultDevice } from '../../hal/fault.js';
import { MemoryDevice } from '../../hal/memory.js';

const bs = 512;
const blockCount = 256;

function mem(name: string): MemoryDevice {
  return new MemoryDevice({ name, blockSizeBytes: bs, blockCount });
}

function fill(blocks: number, tag: number): Buffer {
  const b = Buffer.alloc(blocks * bs);
  for (let i = 0; i < b.length; i++) b[i] = (tag * 37 + i * 11 + (i >> 9)) & 0xff;
  return b;
}

function captureLog(): ArrayLogger & { errors: string[] } {
  const errors: string[] = [];
  return { errors, error: (_o, m) => errors.push(m), warn: (_o, m) => errors.push(m), info: () => undefined };
}

/** Wraps a device so writes hang forever: what storage looks like when the process dies mid-write. */
function stuckWrites(inner: BlockDevice): FaultDevice {
  return new FaultDevice(inner, { seed: 1, latencyMs: 1, sleep: () => new Promise<void>(() => undefined) });
}

describe('DiskArray', () => {
  it('writes to every member and reads back from either', async () => {
    const a = mem('memory:a');
    const b = mem('memory:b');
    const array = await DiskArray.open({ members: [a, b] });
    expect(array.blockCount).toBe(blockCount);
    expect(array.blockSizeBytes).toBe(bs);
    const data = fill(8, 1);
    await array.write(10, data);
    expect((await a.read(10, 8)).equals(data)).toBe(true);
    expect((await b.read(10, 8)).equals(data)).toBe(true);
    expect((await array.read(10, 8)).equals(data)).toBe(true);
    expect((await array.read(10, 8)).equals(data)).toBe(true); // the other member, round-robin
    await array.close();
  });

  it('marks a member that fails a write as failed, logs it, and keeps serving from the rest', async () => {
    const log = captureLog();
    const a = mem('memory:a');
    const bad = new FaultDevice(mem('memory:b'), { seed: 7, name: 'memory:b', rules: [{ ops: ['write'], lba: 5 }] });
    const array = await DiskArray.open({ members: [a, bad], logger: log });
    await array.write(0, fill(4, 1)); // does not touch LBA 5: both members fine
    expect(array.memberStatus().map((m) => m.state)).toEqual(['ok', 'ok']);
    await array.write(4, fill(4, 2)); // member b fails at LBA 5; a carries on
    expect(array.memberStatus()[1]).toMatchObject({ name: 'memory:b', state: 'failed' });
    expect(array.memberStatus()[1]!.error).toMatch(/memory:b/);
    expect(log.errors.join('\n')).toMatch(/memory:b failed a write.*1 member\(s\) keep serving/);
    await array.write(100, fill(2, 3)); // only a now
    for (let i = 0; i < 4; i++) expect((await array.read(4, 4)).equals(fill(4, 2))).toBe(true);
    expect((await array.read(100, 2)).equals(fill(2, 3))).toBe(true);
    await array.flush();
    await array.close();
  });

  it('fails every call with NOT READY naming the members once all have failed', async () => {
    const log = captureLog();
    const x = new FaultDevice(mem('memory:x'), { seed: 1, name: 'memory:x', rules: [{ ops: ['write'] }] });
    const y = new FaultDevice(mem('memory:y'), { seed: 2, name: 'memory:y', rules: [{ ops: ['write'] }] });
    const array = await DiskArray.open({ members: [x, y], logger: log });
    const err = await array.write(0, fill(1, 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SenseError);
    expect(log.errors.at(-1)).toMatch(/no member is left/);
    const err2 = (await array.read(0, 1).catch((e: unknown) => e)) as SenseError;
    expect(err2.key).toBe(SenseKey.NOT_READY);
    expect(err2.message).toMatch(/memory:x.*memory:y.*recovery is being probed.*replace/);
    expect(array.status()).not.toBe(0);
    await array.close(); // stops probing them
  });

  it('reads from the other member when one fails a read', async () => {
    const log = captureLog();
    const a = new FaultDevice(mem('memory:a'), { seed: 3, name: 'memory:a', rules: [{ ops: ['read'], lba: 20 }] });
    const b = mem('memory:b');
    const array = await DiskArray.open({ members: [a, b], logger: log });
    await array.write(20, fill(2, 9));
    for (let i = 0; i < 3; i++) expect((await array.read(20, 2)).equals(fill(2, 9))).toBe(true);
    expect(array.memberStatus()[0]!.state).toBe('failed');
    await array.close();
  });

  it('flushes every member, and drops a member whose flush fails', async () => {
    const log = captureLog();
    const flushes: string[] = [];
    const spy = (d: BlockDevice): BlockDevice => {
      const flush = d.flush.bind(d);
      return Object.assign(Object.create(d) as BlockDevice, { flush: async () => { flushes.push(d.name); await flush(); } });
    };
    const a = spy(mem('memory:a'));
    const b = new FaultDevice(mem('memory:b'), { seed: 5, name: 'memory:b', rules: [{ ops: ['flush'] }] });
    const array = await DiskArray.open({ members: [a, b], logger: log });
    await array.write(0, fill(4, 1));
    await array.flush();
    expect(flushes).toEqual(['memory:a']);
    expect(array.memberStatus()[1]!.state).toBe('failed');
    expect((await a.read(0, 4)).equals(fill(4, 1))).toBe(true);
    await array.close();
  });

  it('validates requests and geometry at the edge', async () => {
    const array = await DiskArray.open({ members: [mem('memory:a')] });
    const err = (await array.write(blockCount - 1, fill(2, 1)).catch((e: unknown) => e)) as SenseError;
    expect(err.key).toBe(SenseKey.ILLEGAL_REQUEST);
    await expect(array.write(0, Buffer.alloc(100))).rejects.toThrow(/not a whole number of 512-byte blocks/);
    await expect(array.read(blockCount, 1)).rejects.toThrow(/run past the end/);
    const big = new MemoryDevice({ name: 'memory:4k', blockSizeBytes: 4096, blockCount: 8 });
    await expect(DiskArray.open({ members: [mem('memory:a'), big] })).rejects.toThrow(/memory:4k has 4096-byte blocks/);
    await expect(DiskArray.open({ members: [] })).rejects.toThrow(/at least one storage device/);
  });
  it('rebuilds a member replaced with a blank device from the healthy one while writes continue; both hash equal after', async () => {
    const log = captureLog();
    const big = 16384; // blocks (8 MiB): several rebuild chunks
    const a = new MemoryDevice({ name: 'memory:a', blockSizeBytes: bs, blockCount: big });
    const b = new MemoryDevice({ name: 'memory:b', blockSizeBytes: bs, blockCount: big });
    // Latency on the healthy member, so writes and the copy interleave.
    const slowA = new FaultDevice(a, { seed: 11, name: 'memory:a', latencyMs: 0, jitterMs: 2 });
    const array = await DiskArray.open({ members: [slowA, b], logger: log });
    for (let lba = 0; lba < big; lba += 64) await array.write(lba, fill(64, lba));
    // The disk behind member b is swapped for a blank one.
    const blank = new MemoryDevice({ name: 'memory:b', blockSizeBytes: bs, blockCount: big });
    await array.replaceMember('memory:b', new FaultDevice(blank, { seed: 12, name: 'memory:b', latencyMs: 3, jitterMs: 3 }));
    expect(array.memberStatus()[1]).toMatchObject({ name: 'memory:b', state: 'rebuilding' });
    // Writes keep coming while it rebuilds (all over the volume, ahead of and behind the copy).
    const writes: Promise<void>[] = [];
    let tag = 1000;
    for (let i = 0; i < 200; i++) {
      writes.push(array.write((i * 97) % (big - 8), fill(8, tag++)));
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
      if (i === 0) {
        // Reads during the rebuild come from the healthy member only (the new one is still
        // blank at the far end of the volume).
        await Promise.all(writes);
        expect(array.memberStatus()[1]!.state).toBe('rebuilding');
        expect((await array.read(big - 64, 64)).equals(await a.read(big - 64, 64))).toBe(true);
      }
    }
    await Promise.all(writes);
    await array.rebuilt();
    expect(array.memberStatus().map((m) => m.state)).toEqual(['ok', 'ok']);
    expect((await blank.read(0, big)).equals(await a.read(0, big))).toBe(true);
    expect(log.errors.join('\n')).toMatch(/is rebuilt and serves reads again/);
    expect(big * bs).toBeGreaterThan(2 * rebuildChunkBytes);
    await array.close();
  });

  it('an interrupted rebuild starts over after a restart (member states persist); a failed member is not read from', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-array-'));
    try {
      const stateFile = join(dir, 'site.array');
      const a = mem('memory:a');
      const b = mem('memory:b');
      const array = await DiskArray.open({ members: [a, b], stateFile, logger: captureLog() });
      await array.write(0, fill(16, 1));
      const blank = mem('memory:b');
      // Writes to the new member hang: the rebuild never finishes in this life.
      await array.replaceMember('memory:b', stuckWrites(blank));
      expect(JSON.parse(await readFile(stateFile, 'utf8'))).toEqual({ members: { 'memory:a': 'ok', 'memory:b': 'rebuilding' } });
      // Restart (the old process is gone): b is still half-copied, so it is rebuilt again before it serves reads.
      const again = await DiskArray.open({ members: [a, blank], stateFile, logger: captureLog() });
      await again.rebuilt();
      expect(again.memberStatus().map((m) => m.state)).toEqual(['ok', 'ok']);
      expect((await blank.read(0, 16)).equals(fill(16, 1))).toBe(true);
      await again.close();
      // A member recorded failed stays out of reads after a restart.
      const x = mem('memory:x');
      const y = new FaultDevice(mem('memory:y'), { seed: 4, name: 'memory:y', rules: [{ ops: ['write'] }] });
      const third = await DiskArray.open({ members: [x, y], stateFile: join(dir, 'xy.array'), logger: captureLog() });
      await third.write(0, fill(1, 7));
      const y2 = mem('memory:y');
      const fourth = await DiskArray.open({ members: [x, y2], stateFile: join(dir, 'xy.array'), logger: captureLog() });
      expect(fourth.memberStatus().map((m) => m.state)).toEqual(['ok', 'failed']);
      for (let i = 0; i < 4; i++) expect((await fourth.read(0, 1)).equals(fill(1, 7))).toBe(true);
      await fourth.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a rebuild with no healthy member to copy from, naming why', async () => {
    const a = mem('memory:a');
    const array = await DiskArray.open({ members: [a] });
    await expect(array.replaceMember('memory:a', mem('memory:a'))).rejects.toThrow(/no other healthy member.*resynced from its peers/);
    await expect(array.replaceMember('memory:zz', mem('memory:zz'))).rejects.toThrow(/no member memory:zz.*members are memory:a/);
    await array.close();
  });
});

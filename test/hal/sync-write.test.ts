// Synchronous page-cache writes on the write path (issue 18): LoopbackDevice.writeNow,
// DiskArray.submitWrite (synchronous where every member can, the promise path otherwise, member
// failures handled as write() does) and the cache journal's appendCb over a file device
// (FileCacheDevice.writevNow: one pwritev per group commit on the event loop).

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskArray, type ArrayLogger } from '../../hal/array.js';
import { SenseError, SenseKey, sense, type BlockDevice } from '../../hal/blockdev.js';
import { CacheJournal, type EntryHandle } from '../../hal/cache.js';
import { openFileCacheDevice } from '../../hal/cachedev.js';
import { openLoopback } from '../../hal/loopback.js';
import { MemoryDevice } from '../../hal/memory.js';

const bs = 4096;
const blockCount = 64;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gm-syncwrite-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function fill(blocks: number, tag: number): Buffer {
  const b = Buffer.alloc(blocks * bs);
  for (let i = 0; i < b.length; i++) b[i] = (tag * 37 + i * 11 + (i >> 12)) & 0xff;
  return b;
}

function captureLog(): ArrayLogger & { errors: string[] } {
  const errors: string[] = [];
  return { errors, error: (_o, m) => errors.push(m), warn: (_o, m) => errors.push(m), info: () => undefined };
}

const loop = (name: string) => openLoopback(join(dir, name), { blockSizeBytes: bs, blockCount, create: true });

describe('LoopbackDevice.writeNow', () => {
  it('writes into the file before it returns, and refuses what write() refuses, naming the device', async () => {
    const dev = await loop('a.img');
    dev.writeNow(3, fill(2, 1));
    expect((await readFile(join(dir, 'a.img'))).subarray(3 * bs, 5 * bs).equals(fill(2, 1))).toBe(true);
    expect((await dev.read(3, 2)).equals(fill(2, 1))).toBe(true);
    expect(() => dev.writeNow(blockCount - 1, fill(2, 2))).toThrow(SenseError);
    expect(() => dev.writeNow(0, Buffer.alloc(100))).toThrow(/a\.img/);
    await dev.close();
    expect(() => dev.writeNow(0, fill(1, 3))).toThrow(/a\.img/);
  });

  it('is refused on a read-only device', async () => {
    await (await loop('ro.img')).close();
    const ro = await openLoopback(join(dir, 'ro.img'), { blockSizeBytes: bs, blockCount, readOnly: true });
    let err: unknown;
    try {
      ro.writeNow(0, fill(1, 1));
    } catch (e) {
      err = e;
    }
    expect((err as SenseError).key).toBe(SenseKey.DATA_PROTECT);
    await ro.close();
  });
});

describe('DiskArray.submitWrite', () => {
  it('completes before it returns when every member writes synchronously; both members hold the data', async () => {
    const a = await loop('a.img');
    const b = await loop('b.img');
    const array = await DiskArray.open({ members: [a, b] });
    let result: unknown = 'pending';
    array.submitWrite(5, fill(3, 7), undefined, (err) => (result = err));
    expect(result).toBeUndefined();
    expect((await a.read(5, 3)).equals(fill(3, 7))).toBe(true);
    expect((await b.read(5, 3)).equals(fill(3, 7))).toBe(true);
    await array.close();
  });

  it('goes through the promise path for FUA and for a member without writeNow, with the same result', async () => {
    const a = await loop('a.img');
    const m = new MemoryDevice({ name: 'memory:m', blockSizeBytes: bs, blockCount });
    const mixed = await DiskArray.open({ members: [a, m] });
    let result: unknown = 'pending';
    const done = new Promise<void>((resolve) =>
      mixed.submitWrite(1, fill(2, 4), undefined, (err) => {
        result = err;
        resolve();
      }),
    );
    expect(result).toBe('pending'); // asynchronous: the memory member has no writeNow
    await done;
    expect(result).toBeUndefined();
    expect((await m.read(1, 2)).equals(fill(2, 4))).toBe(true);
    expect((await a.read(1, 2)).equals(fill(2, 4))).toBe(true);
    await mixed.close();

    const b = await loop('b.img');
    const fuaArray = await DiskArray.open({ members: [b] });
    let fuaResult: unknown = 'pending';
    const fuaDone = new Promise<void>((resolve) =>
      fuaArray.submitWrite(9, fill(1, 5), { fua: true }, (err) => {
        fuaResult = err;
        resolve();
      }),
    );
    expect(fuaResult).toBe('pending'); // FUA waits for fdatasync, off the event loop
    await fuaDone;
    expect(fuaResult).toBeUndefined();
    expect((await b.read(9, 1)).equals(fill(1, 5))).toBe(true);
    await fuaArray.close();
  });

  it('marks a member whose synchronous write fails as failed (logged, saved) and completes from the rest; fails once none is left', async () => {
    const log = captureLog();
    const a = await loop('a.img');
    const b = await loop('b.img');
    // b's file refuses writes the way a full or failing filesystem would.
    const failing = Object.assign(Object.create(b) as BlockDevice, {
      writeNow: () => {
        throw sense.mediumWrite(b.name, 2, 'write failed (test)');
      },
    });
    const array = await DiskArray.open({ members: [a, failing], logger: log, stateFile: join(dir, 'array.state') });
    const err = await new Promise<unknown>((resolve) => array.submitWrite(2, fill(1, 9), undefined, resolve));
    expect(err).toBeUndefined();
    expect(array.memberStatus().map((s) => s.state)).toEqual(['ok', 'failed']);
    expect(log.errors.join('\n')).toMatch(/b\.img failed a write/);
    expect((await a.read(2, 1)).equals(fill(1, 9))).toBe(true);
    expect(await readFile(join(dir, 'array.state'), 'utf8')).toMatch(/failed/); // saved before the write completed

    const x = await loop('x.img');
    const dead = Object.assign(Object.create(x) as BlockDevice, {
      writeNow: () => {
        throw sense.mediumWrite(x.name, 0, 'write failed (test)');
      },
    });
    const alone = await DiskArray.open({ members: [dead], logger: captureLog() });
    const err2 = await new Promise<unknown>((resolve) => alone.submitWrite(0, fill(1, 1), undefined, resolve));
    expect(err2).toBeInstanceOf(SenseError);
    await alone.close();
    await array.close();
  });
});

describe('CacheJournal.appendCb over a file cache device', () => {
  const meta = (i: number) => ({ volume: 1, epoch: 2n, seq: BigInt(i), offsetBytes: i * bs });

  it('completes appends in append order without the thread pool, and a crash right after replays them', async () => {
    const path = join(dir, 'site.cache');
    const dev = await openFileCacheDevice(path, { sizeBytes: 256 * 1024 });
    expect(dev.writevNow).toBeDefined();
    const { journal } = await CacheJournal.open(dev);
    const order: number[] = [];
    const handles: EntryHandle[] = [];
    for (let i = 1; i <= 40; i++) {
      journal.appendCb(meta(i), fill(1, i), (err, h) => {
        expect(err).toBeUndefined();
        order.push(i);
        handles.push(h!);
      });
    }
    expect(order).toEqual([]); // a group commit is written at the end of the synchronous run
    await Promise.resolve();
    // 40 x 4 KiB is above one group commit's byte bound, so it takes more than one batch, still
    // in one microtask: no thread-pool round trip.
    expect(order).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    for (const h of handles.slice(0, 10)) journal.markDone(h);
    // The file as it is now, read by a fresh open (a kill -9: the page cache holds the writes).
    const { journal: again, recovered } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 256 * 1024 }));
    const seqs = recovered.map((r) => Number(r.handle.seq));
    expect(seqs.slice(-30)).toEqual(Array.from({ length: 30 }, (_, i) => i + 11));
    for (const r of recovered) expect(r.payload.equals(fill(1, Number(r.handle.seq)))).toBe(true);
    await again.close();
    await journal.close();
  });

  it('completes appends made from inside a completion after every earlier one, even when they fill a group commit at once', async () => {
    const dev = await openFileCacheDevice(join(dir, 'reentrant.cache'), { sizeBytes: 256 * 1024 });
    const { journal } = await CacheJournal.open(dev);
    const order: number[] = [];
    const small = (i: number) => Buffer.alloc(64, i & 0xff);
    const onDone = (i: number) => (err: Error | undefined) => {
      expect(err).toBeUndefined();
      order.push(i);
      // The first completion appends 400 more (a core step run from the callback): more than one
      // group commit holds, so one of them is written while entries 2 and 3 still wait to complete.
      if (i === 1) for (let k = 100; k < 500; k++) journal.appendCb(meta(k), small(k), onDone(k));
    };
    for (let i = 1; i <= 3; i++) journal.appendCb(meta(i), small(i), onDone(i));
    for (let t = 0; t < 5; t++) await Promise.resolve();
    expect(order).toEqual([1, 2, 3, ...Array.from({ length: 400 }, (_, k) => k + 100)]);
    await journal.close();
  });

  it('never completes an entry inside appendCb: an append from that completion would be lost from the batch being built', async () => {
    const dev = await openFileCacheDevice(join(dir, 'nested.cache'), { sizeBytes: 256 * 1024 });
    const { journal } = await CacheJournal.open(dev);
    const order: number[] = [];
    const small = (i: number) => Buffer.alloc(64, i & 0xff);
    const onDone = (i: number) => (err: Error | undefined) => {
      expect(err).toBeUndefined();
      order.push(i);
      if (i === 1) journal.appendCb(meta(1000), small(1000), onDone(1000));
    };
    // 300 entries in one run: the batch fills (buffers bound) and is written from inside appendCb.
    for (let i = 1; i <= 300; i++) journal.appendCb(meta(i), small(i), onDone(i));
    expect(order).toEqual([]);
    for (let t = 0; t < 5; t++) await Promise.resolve();
    expect(order).toEqual([...Array.from({ length: 300 }, (_, k) => k + 1), 1000]);
    await journal.close();
    const { journal: again, recovered } = await CacheJournal.open(await openFileCacheDevice(join(dir, 'nested.cache'), { sizeBytes: 256 * 1024 }));
    expect(recovered.map((r) => Number(r.handle.seq))).toEqual([...Array.from({ length: 300 }, (_, k) => k + 1), 1000]);
    await again.close();
  });

  it('keeps every append on the thread pool with sync: true (each write waits for fdatasync)', async () => {
    const dev = await openFileCacheDevice(join(dir, 'durable.cache'), { sizeBytes: 256 * 1024, sync: true });
    expect(dev.writevNow).toBeUndefined();
    const { journal } = await CacheJournal.open(dev);
    const seen: number[] = [];
    const all = Array.from({ length: 3 }, (_, k) => new Promise<void>((resolve) => journal.appendCb(meta(k + 1), fill(1, k), () => (seen.push(k + 1), resolve()))));
    await Promise.resolve();
    expect(seen).toEqual([]);
    await Promise.all(all);
    expect(seen).toEqual([1, 2, 3]);
    await journal.close();
  });
});

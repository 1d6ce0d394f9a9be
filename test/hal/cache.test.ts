// The battery-backed cache journal: append, replay, torn tail, bad checksums, ring wrap,
// backpressure when full, out-of-order done, and the documented byte layout.

import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from '@node-rs/crc32';
import { describe, expect, it } from 'vitest';
import {
  CacheEntryFlags,
  CacheJournal,
  EntryHandle,
  decodeEntryHeader,
  encodeEntryHeader,
  entryHeaderBytes,
  entryHeaderBytesV1,
  entryHeaderLayout,
  ringStartBytes,
  superblockLayout,
  superblockSlotBytes,
  type RecoveredEntry,
} from '../../hal/cache.js';
import { MemoryCacheDevice, openFileCacheDevice } from '../../hal/cachedev.js';
import { SenseError } from '../../hal/blockdev.js';

const sizeBytes = 64 * 1024;

function payloadFor(i: number, len = 512): Buffer {
  const b = Buffer.alloc(len);
  for (let k = 0; k < len; k++) b[k] = (i * 31 + k * 7) & 0xff;
  return b;
}

function meta(i: number, flags = 0) {
  return { volume: 7, epoch: 3n, seq: BigInt(i), offsetBytes: i * 4096, flags };
}

/** What the device holds at this instant, as a fresh device: a crash of the process. */
function crashCopy(dev: MemoryCacheDevice): MemoryCacheDevice {
  const copy = new MemoryCacheDevice(dev.name, dev.sizeBytes);
  copy.raw().set(dev.raw());
  return copy;
}

function seqs(rs: RecoveredEntry[]): number[] {
  return rs.map((r) => Number(r.handle.seq));
}

async function ticks(n = 20): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

describe('CacheJournal', () => {
  it('replays every pending entry with its metadata and payload, in append order', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal, recovered } = await CacheJournal.open(dev);
    expect(recovered).toEqual([]);
    for (let i = 1; i <= 5; i++) await journal.append(meta(i, i === 3 ? CacheEntryFlags.FUA : 0), payloadFor(i, 512 * i));
    const { recovered: again } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(again)).toEqual([1, 2, 3, 4, 5]);
    for (const r of again) {
      const i = Number(r.handle.seq);
      expect(r.handle.volume).toBe(7);
      expect(r.handle.epoch).toBe(3n);
      expect(r.handle.offsetBytes).toBe(i * 4096);
      expect(r.handle.flags).toBe(i === 3 ? CacheEntryFlags.FUA : 0);
      expect(r.payload.equals(payloadFor(i, 512 * i))).toBe(true);
    }
  });

  it('a file journal replays many MiB of entries byte-exact through its one reused read window', async () => {
    // 48 entries of 256 KiB..512 KiB: the ring holds ~18 MiB, several 4 MiB replay windows,
    // with entries straddling window ends. Each payload must come back as written, not as
    // bytes of a later window (the window buffer is reused, issue 18).
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-window-'));
    try {
      const path = join(dir, 'c.cache');
      const big = 32 * 1024 * 1024;
      const { journal } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: big }));
      const lens = Array.from({ length: 48 }, (_, i) => (256 + (i * 37) % 257) * 1024);
      for (let i = 1; i <= lens.length; i++) await journal.append(meta(i), payloadFor(i, lens[i - 1]!));
      const { journal: j2, recovered } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: big }));
      expect(seqs(recovered)).toEqual(lens.map((_, i) => i + 1));
      for (const r of recovered) {
        const i = Number(r.handle.seq);
        expect(r.payload.equals(payloadFor(i, lens[i - 1]!)), `payload of entry ${i}`).toBe(true);
      }
      await j2.close();
      await journal.close().catch(() => undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps u64 epoch and seq exact past 2^53', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const big = (1n << 64n) - 3n;
    await journal.append({ volume: 0xffff_ffff, epoch: big + 1n, seq: big, offsetBytes: 2 ** 40 }, payloadFor(1));
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    expect(recovered[0]!.handle.seq).toBe(big);
    expect(recovered[0]!.handle.epoch).toBe(big + 1n);
    expect(recovered[0]!.handle.volume).toBe(0xffff_ffff);
    expect(recovered[0]!.handle.offsetBytes).toBe(2 ** 40);
  });

  it('does not replay entries marked done once the head is persisted (close)', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 6; i++) hs.push(await journal.append(meta(i), payloadFor(i)));
    journal.markDone(hs[0]!);
    journal.markDone(hs[1]!);
    journal.markDone(hs[3]!); // out of order: stays until 3 is done
    expect(journal.pending().map((h) => Number(h.seq))).toEqual([3, 5, 6]);
    await journal.close();
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    // 4 is behind the pending 3, so it may come back (harmless re-delivery); 1 and 2 never.
    expect(seqs(recovered)).toEqual([3, 4, 5, 6]);
  });

  it('persists the head after an idle spell, so a crash re-delivers few done entries', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 4; i++) hs.push(await journal.append(meta(i), payloadFor(i)));
    for (const h of hs.slice(0, 3)) journal.markDone(h);
    await new Promise((r) => setTimeout(r, 100));
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(recovered)).toEqual([4]);
  });

  it('cuts the tail at a torn payload of the last group commit and never resurrects what followed it', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 2; i++) hs.push(await journal.append(meta(i), payloadFor(i, 1024)));
    // 3, 4 and 5 leave in one writev: none of them completed before the others were written.
    hs.push(...(await Promise.all([3, 4, 5].map((i) => journal.append(meta(i), payloadFor(i, 1024))))));
    const crashed = crashCopy(dev);
    crashed.raw()[hs[2]!.posBytes + entryHeaderBytes + 100]! ^= 0xff; // entry 3: only part of its payload landed
    const { journal: j2, recovered, damage } = await CacheJournal.open(crashed);
    expect(seqs(recovered)).toEqual([1, 2]);
    expect(damage).toEqual({ lost: [], unknownLost: 0, tornTailEntries: 3, tornTailBytes: 3 * hs[2]!.sizeBytes });
    // The next session writes an entry of the same size where 3 was, so the stale 4 sits
    // exactly where the new 4 is expected: its older generation (and its erased header) keep it dead.
    await j2.append(meta(30), payloadFor(30, 1024));
    const { recovered: r3, damage: d3 } = await CacheJournal.open(crashCopy(crashed));
    expect(seqs(r3)).toEqual([1, 2, 30]);
    expect(d3.lost).toEqual([]);
  });

  it('replays past a bad header checksum in the middle (the next entry names it) and stops at a header that is not the next entry', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 4; i++) hs.push(await journal.append(meta(i), payloadFor(i)));
    const badHeader = crashCopy(dev);
    badHeader.raw()[hs[1]!.posBytes + 30]! ^= 0x01; // inside the header: header crc fails
    const opened = await CacheJournal.open(badHeader);
    expect(seqs(opened.recovered)).toEqual([1, 3, 4]);
    expect(opened.damage).toEqual({ lost: [{ jseq: hs[1]!.jseq, epoch: 3n, seq: 2n, offsetBytes: 2 * 4096, lengthBytes: 512 }], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
    const zeroed = crashCopy(dev);
    // The last entry never landed: nothing written after it says it completed, so it is a torn tail.
    zeroed.raw().fill(0, hs[3]!.posBytes, hs[3]!.posBytes + entryHeaderBytes);
    const z = await CacheJournal.open(zeroed);
    expect(seqs(z.recovered)).toEqual([1, 2, 3]);
    expect(z.damage.lost).toEqual([]);
  });

  it('falls back to the other superblock copy when the newer one is torn', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 3; i++) hs.push(await journal.append(meta(i), payloadFor(i)));
    journal.markDone(hs[0]!);
    await journal.close();
    const crashed = crashCopy(dev);
    // Tear both copies in turn: the surviving one names an older head (1 comes back) or the
    // newer one (it does not); both are safe.
    const tornNew = crashCopy(crashed);
    const tornOld = crashCopy(crashed);
    const slotA = tornNew.raw().subarray(0, 64);
    const slotB = tornNew.raw().subarray(superblockSlotBytes, superblockSlotBytes + 64);
    const newer = slotA.readUInt32BE(12) > slotB.readUInt32BE(12) ? 0 : superblockSlotBytes;
    tornNew.raw()[newer + 20]! ^= 0xff;
    tornOld.raw()[(newer === 0 ? superblockSlotBytes : 0) + 20]! ^= 0xff;
    expect(seqs((await CacheJournal.open(tornNew)).recovered)).toEqual([1, 2, 3]);
    expect(seqs((await CacheJournal.open(tornOld)).recovered)).toEqual([2, 3]);
  });

  it('wraps around the ring many times and replays correctly at every step', async () => {
    let dev = new MemoryCacheDevice('memory:c', sizeBytes);
    let { journal } = await CacheJournal.open(dev, { headPersistBytes: 1 });
    const live: EntryHandle[] = [];
    let maxPos = 0;
    let wrapped = 0;
    let lastPos = 0;
    for (let i = 1; i <= 400; i++) {
      const len = 512 * (1 + (i % 13));
      const h = await journal.append(meta(i), payloadFor(i, len));
      if (h.posBytes < lastPos) wrapped++;
      lastPos = h.posBytes;
      maxPos = Math.max(maxPos, h.posBytes + h.sizeBytes);
      live.push(h);
      while (live.length > 4) journal.markDone(live.shift()!);
      if (i % 37 === 0) {
        await ticks();
        // Crash and reopen: the pending ones (and maybe a few done ones just before) come back.
        const crashed = crashCopy(dev);
        const reopened = await CacheJournal.open(crashed, { headPersistBytes: 1 });
        const got = seqs(reopened.recovered);
        const want = live.map((h) => Number(h.seq));
        expect(got.slice(-want.length)).toEqual(want);
        for (const r of reopened.recovered) expect(r.payload.equals(payloadFor(Number(r.handle.seq), r.handle.payloadBytes))).toBe(true);
        // Continue on the crashed copy: mark what came back done and keep going.
        journal = reopened.journal;
        dev = crashed;
        live.length = 0;
        for (const r of reopened.recovered) {
          if (want.includes(Number(r.handle.seq))) live.push(r.handle);
          else journal.markDone(r.handle);
        }
      }
    }
    expect(wrapped).toBeGreaterThan(5);
    expect(maxPos).toBeLessThanOrEqual(sizeBytes);
  });

  it('makes a full append wait (never drop, never throw) and serves waiters first come first served', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const len = 8192 - entryHeaderBytes;
    const hs: EntryHandle[] = [];
    // (64 KiB - 4 KiB superblocks) / 8 KiB entries = 7 entries fit.
    for (let i = 1; i <= 7; i++) hs.push(await journal.append(meta(i), payloadFor(i, len)));
    expect(journal.occupancy().bytes).toBe(7 * 8192);
    const order: number[] = [];
    const p8 = journal.append(meta(8), payloadFor(8, len)).then((h) => (order.push(8), h));
    const p9 = journal.append(meta(9), payloadFor(9, 64)).then((h) => (order.push(9), h)); // small, but queued behind 8
    await ticks();
    expect(order).toEqual([]);
    expect(journal.waitingAppends).toBe(2);
    journal.markDone(hs[3]!); // out of order: frees nothing yet
    await ticks();
    expect(order).toEqual([]);
    journal.markDone(hs[0]!); // head moves: 8 fits at the ring start
    journal.markDone(hs[1]!); // and 9 after it
    const [h8, h9] = await Promise.all([p8, p9]);
    expect(order).toEqual([8, 9]);
    expect(h8.posBytes).toBe(ringStartBytes);
    expect(h9.jseq).toBe(h8.jseq + 1);
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    // 4 was done out of order behind the pending 3: it may be re-delivered, harmlessly.
    expect(seqs(recovered)).toEqual([3, 4, 5, 6, 7, 8, 9]);
  });

  it('settles appends in append order, waiters and direct appends alike (acks go out in seq order)', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev, { headPersistBytes: 1 });
    const len = 8192 - entryHeaderBytes;
    const order: number[] = [];
    const track = (i: number, p: Promise<EntryHandle>) => p.then((h) => (order.push(i), h));
    const first: Promise<EntryHandle>[] = [];
    for (let i = 1; i <= 10; i++) first.push(track(i, journal.append(meta(i), payloadFor(i, len)))); // 8-10 wait
    const hs = await Promise.all(first.slice(0, 7));
    for (const h of hs) journal.markDone(h);
    const late: Promise<EntryHandle>[] = [];
    // Appended while the waiters are being served: must still come after them.
    for (let i = 11; i <= 13; i++) late.push(track(i, journal.append(meta(i), payloadFor(i, 64))));
    await Promise.all([...first, ...late]);
    expect(order).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  });

  it('rewinds an empty ring whose tail is near the end for an entry that only fits from the start', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const a = await journal.append(meta(1), payloadFor(1, 40 * 1024));
    journal.markDone(a);
    // 40 KiB used from the start; 20 KiB left before the end; a 50 KiB entry must go at the
    // start, which covers the persisted head: the journal must move the head first.
    const b = await journal.append(meta(2), payloadFor(2, 50 * 1024));
    expect(b.posBytes).toBe(ringStartBytes);
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(recovered)).toEqual([2]);
    expect(recovered[0]!.payload.equals(payloadFor(2, 50 * 1024))).toBe(true);
  });

  it('refuses an entry bigger than the whole cache with an error naming the device and the fix', async () => {
    const { journal } = await CacheJournal.open(new MemoryCacheDevice('memory:tiny', sizeBytes));
    const err = await journal.append(meta(1), Buffer.alloc(sizeBytes)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SenseError);
    expect((err as Error).message).toMatch(/memory:tiny.*cannot fit.*cache\.size/);
  });

  it('refuses bad metadata at the edge', async () => {
    const { journal } = await CacheJournal.open(new MemoryCacheDevice('memory:c', sizeBytes));
    await expect(journal.append({ ...meta(1), seq: -1n }, payloadFor(1))).rejects.toThrow(/seq -1/);
    await expect(journal.append({ ...meta(1), seq: 1n << 64n }, payloadFor(1))).rejects.toThrow(/seq/);
    await expect(journal.append({ ...meta(1), flags: 0x80 }, payloadFor(1))).rejects.toThrow(/unknown bits/);
    await expect(journal.append({ ...meta(1), offsetBytes: -4096 }, payloadFor(1))).rejects.toThrow(/offset/);
  });

  it('refuses to reopen a journal with a different configured size', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-'));
    try {
      const path = join(dir, 'c.cache');
      const { journal } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      await journal.append(meta(1), payloadFor(1));
      await journal.close();
      await expect(CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: sizeBytes * 2 }))).rejects.toThrow(/formatted for 65536 bytes.*cache\.size/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a cache file shorter than cache.size without growing it, names both sizes and the size that replays it; after the drain the new size takes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-'));
    try {
      const path = join(dir, 'c.cache');
      const first = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      for (let i = 1; i <= 3; i++) await first.journal.append(meta(i), payloadFor(i));
      await first.journal.close();
      const before = await readFile(path);
      const err = (await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes })).catch((e: unknown) => e)) as Error;
      expect(err).toBeInstanceOf(SenseError);
      expect(err.message).toMatch(/formatted for 65536 bytes but cache\.size is 131072 \(the file holds 65536 bytes\), and it still holds 3 pending write\(s\)\. Set cache\.size to 65536 so the site replays them; once it has drained its cache .*set cache\.size to 131072/);
      expect(err.message).not.toMatch(/truncate|delete/);
      expect((await readFile(path)).equals(before)).toBe(true); // not grown, not touched
      // Following the message: the old size replays everything, the site drains and stops...
      const replay = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      expect(seqs(replay.recovered)).toEqual([1, 2, 3]);
      for (const r of replay.recovered) replay.journal.markDone(r.handle);
      await replay.journal.close();
      // ...and the new size then takes: the file grows, the empty journal is re-formatted.
      const grown = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes }));
      expect(grown.resizedFromBytes).toBe(sizeBytes);
      expect(grown.recovered).toEqual([]);
      expect((await stat(path)).size).toBe(2 * sizeBytes);
      const big = await grown.journal.append(meta(9), payloadFor(9, 100 * 1024)); // only fits the new size
      expect(big.jseq).toBeGreaterThan(3);
      await grown.journal.close();
      const again = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes }));
      expect(seqs(again.recovered)).toEqual([9]);
      await again.journal.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('grows a journal that replays empty at its old size even after a crash; lowers cache.size only after a clean empty close (the old ring cannot be read at the smaller size)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-'));
    try {
      const path = join(dir, 'c.cache');
      const big = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes }));
      const h = await big.journal.append(meta(1), payloadFor(1));
      big.journal.markDone(h);
      await new Promise((r) => setTimeout(r, 50)); // the head is persisted past it; then a crash (no close)
      await expect(CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }))).rejects.toThrow(/formatted for 131072 bytes but cache\.size is 65536, and it was not closed empty.*Set cache\.size to 131072/);
      const again = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes }));
      expect(again.recovered).toEqual([]);
      await again.journal.close(); // closed empty
      const small = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      expect(small.resizedFromBytes).toBe(2 * sizeBytes);
      const h2 = await small.journal.append(meta(2), payloadFor(2));
      small.journal.markDone(h2);
      await new Promise((r) => setTimeout(r, 50)); // crash again, empty, not closed
      const path2 = join(dir, 'c2.cache');
      await writeFile(path2, await readFile(path));
      const grown = await CacheJournal.open(await openFileCacheDevice(path2, { sizeBytes: 2 * sizeBytes })); // it replays empty at 64 KiB
      expect(grown.resizedFromBytes).toBe(sizeBytes);
      const h3 = await grown.journal.append(meta(3), payloadFor(3));
      expect(h3.jseq).toBeGreaterThan(h2.jseq); // same journal, jseqs go on
      await grown.journal.close();
      // The crashed sessions' handles: released without the journal's close (a crash writes nothing).
      await small.journal.device.close();
      await big.journal.device.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a cache file cut short below its journal (never grows it back over the loss) and says what to do', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-'));
    try {
      const path = join(dir, 'c.cache');
      const { journal } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: 2 * sizeBytes }));
      for (let i = 1; i <= 12; i++) await journal.append(meta(i), payloadFor(i, 8000)); // well past 64 KiB
      await journal.close();
      await truncate(path, sizeBytes);
      for (const configured of [2 * sizeBytes, sizeBytes]) {
        const err = (await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes: configured })).catch((e: unknown) => e)) as Error;
        expect(err.message).toMatch(/holds 65536 bytes but the cache journal in it was formatted for 131072 bytes.*cut short.*do not grow it back.*resynced in full from its peers/);
        expect((await stat(path)).size).toBe(sizeBytes);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a device whose superblock copies are both damaged but which holds entries; a torn very first superblock write is a new journal', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    await journal.append(meta(1), payloadFor(1));
    await journal.close();
    const both = crashCopy(dev);
    both.raw()[20]! ^= 1;
    both.raw()[superblockSlotBytes + 20]! ^= 1;
    await expect(CacheJournal.open(both)).rejects.toThrow(/neither copy of the cache journal superblock.*pending writes cannot be located/);
    // The first open's superblock write (copy 1) torn, nothing appended yet: a blank device.
    const fresh = new MemoryCacheDevice('memory:f', sizeBytes);
    fresh.raw().fill(0x77, superblockSlotBytes, superblockSlotBytes + 30);
    const opened = await CacheJournal.open(fresh);
    expect(opened.recovered).toEqual([]);
    await opened.journal.append(meta(1), payloadFor(1));
    expect(seqs((await CacheJournal.open(crashCopy(fresh))).recovered)).toEqual([1]);
  });

  it('survives reopening a file-backed cache without close (what kill -9 leaves)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-cache-'));
    try {
      const path = join(dir, 'c.cache');
      const { journal } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      const big = payloadFor(2, 200 * 1024); // bigger than the whole 64 KiB cache
      await expect(journal.append(meta(2), big)).rejects.toThrow(/cannot fit/);
      const hs: EntryHandle[] = [];
      for (let i = 1; i <= 5; i++) hs.push(await journal.append(meta(i), payloadFor(i, 4096)));
      journal.markDone(hs[0]!);
      // No close: a second handle on the same file sees what the page cache holds.
      const { journal: j2, recovered } = await CacheJournal.open(await openFileCacheDevice(path, { sizeBytes }));
      expect(seqs(recovered).slice(-4)).toEqual([2, 3, 4, 5]);
      await j2.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('takes the payload CRC the caller gives (the site checksums once) and replay checks the payload against it', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    const good = payloadFor(1, 4096);
    await journal.append({ ...meta(1), payloadCrc: crc32(good) }, good);
    // A CRC that does not match its payload: replay must refuse that entry (the header's CRC is
    // what replay checks the payload against, so the given one is really the one written).
    const other = payloadFor(2, 4096);
    await journal.append({ ...meta(2), payloadCrc: (crc32(other) ^ 0x80) >>> 0 }, other);
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(recovered)).toEqual([1]);
    expect(recovered[0]!.payload.equals(good)).toBe(true);
  });

  it('writes 1 MiB payloads that replay byte for byte', async () => {
    const dev = new MemoryCacheDevice('memory:c', 4 * 1024 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const p = payloadFor(1, 1024 * 1024);
    await journal.append(meta(1), p);
    const { recovered } = await CacheJournal.open(crashCopy(dev));
    expect(recovered[0]!.payload.equals(p)).toBe(true);
  });
});

describe('cache journal byte layout', () => {
  it('hand-encoded entry header (version 2) equals the documented buffer-layout struct and decodes back', () => {
    const h = new EntryHandle(0x1_0000_0002, 9, (1n << 63n) + 5n, 0x0102030405060708n, 2 ** 45 + 4096, CacheEntryFlags.FUA | CacheEntryFlags.RETAIN, 4096, ringStartBytes, 4224, 77);
    const link = { committedJseq: 0x1_0000_0001, prev: { epoch: 3n, seq: 0x0102030405060707n, offsetBytes: 2 ** 33 + 512, payloadBytes: 8192, posBytes: 2 ** 32 + 64 } };
    const hand = Buffer.alloc(entryHeaderBytes);
    encodeEntryHeader(hand, 0xdeadbeef, h, 0xcafef00d, link);
    const viaLayout = Buffer.alloc(entryHeaderBytes);
    expect(entryHeaderBytes).toBe(128);
    expect(entryHeaderLayout.span).toBe(entryHeaderBytes);
    entryHeaderLayout.encode(
      {
        magic: 0x474d4345,
        flags: 3,
        version: 2,
        link: 1,
        journalId: 0xdeadbeef,
        generation: 77,
        jseqHi: 1,
        jseqLo: 2,
        volume: 9,
        payloadBytes: 4096,
        epochHi: 0x8000_0000,
        epochLo: 5,
        seqHi: 0x01020304,
        seqLo: 0x05060708,
        offsetBytesHi: 2 ** 13,
        offsetBytesLo: 4096,
        payloadCrc: 0xcafef00d,
        prevPayloadBytes: 8192,
        committedJseqHi: 1,
        committedJseqLo: 1,
        prevEpochHi: 0,
        prevEpochLo: 3,
        prevSeqHi: 0x01020304,
        prevSeqLo: 0x05060707,
        prevOffsetBytesHi: 2,
        prevOffsetBytesLo: 512,
        prevPosBytesHi: 1,
        prevPosBytesLo: 64,
        reserved0: 0,
        reserved1: 0,
        reserved2: 0,
        reserved3: 0,
        reserved4: 0,
        headerCrc: hand.readUInt32BE(124),
      },
      viaLayout,
    );
    expect(viaLayout.toString('hex')).toBe(hand.toString('hex'));
    const back = decodeEntryHeader(hand)!;
    expect(back).toMatchObject({ version: 2, jseq: h.jseq, epoch: h.epoch, seq: h.seq, offsetBytes: h.offsetBytes, payloadBytes: 4096, sizeBytes: 4224, generation: 77, journalId: 0xdeadbeef, ...link });
    hand[100]! ^= 1; // any byte of the 124 the crc covers
    expect(decodeEntryHeader(hand)).toBeUndefined();
  });

  it('a 128-byte header costs 64 bytes more per entry than version 1 and no alignment padding for 4 KiB-multiple payloads', () => {
    for (const payloadBytes of [4096, 8192, 65536, 1024 * 1024]) {
      const v1 = Math.ceil((entryHeaderBytesV1 + payloadBytes) / 64) * 64;
      const v2 = Math.ceil((entryHeaderBytes + payloadBytes) / 64) * 64;
      expect(v2 - payloadBytes).toBe(entryHeaderBytes); // no padding at all
      expect(v2 - v1).toBe(64);
    }
  });

  it('superblock on the device decodes with the documented buffer-layout struct', async () => {
    const dev = new MemoryCacheDevice('memory:c', sizeBytes);
    const { journal } = await CacheJournal.open(dev);
    await journal.append(meta(1), payloadFor(1));
    await journal.close();
    expect(superblockLayout.span).toBe(64);
    const slots = [0, superblockSlotBytes].map((at) => superblockLayout.decode(dev.raw().subarray(at, at + 64)));
    const newest = slots.reduce((a, b) => (a.sbSeqLo > b.sbSeqLo ? a : b));
    expect(newest.magic).toBe(0x474d4353);
    expect(newest.regionBytesLo).toBe(sizeBytes);
    expect(newest.generation).toBe(1);
    expect(newest.headPosLo).toBe(ringStartBytes);
    expect(newest.headJseqLo).toBe(1);
  });
});


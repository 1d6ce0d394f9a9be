// Journal damage (issue 16 item 2): a flipped byte in the middle is reported by range and replay
// goes on past it; a torn tail (a group commit cut mid-writev) is cut and is no loss; the two are
// told apart by the watermark every entry carries (hal/cache-replay.ts).

import { gunzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CacheJournal, EntryHandle, decodeEntryHeader, entryHeaderBytes, entryHeaderLayoutV1, ringStartBytes, type LostEntry, type RecoveredEntry } from '../../hal/cache.js';
import { MemoryCacheDevice, type CacheDevice } from '../../hal/cachedev.js';
import { Prng } from '../../hal/prng.js';

const here = dirname(fileURLToPath(import.meta.url));

function payloadFor(i: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let k = 0; k < len; k++) b[k] = (i * 31 + k * 7) & 0xff;
  return b;
}

function meta(i: number) {
  return { volume: 7, epoch: 3n, seq: BigInt(i), offsetBytes: i * 4096 };
}

/** What the device holds at this instant, as a fresh device: a crash of the process. */
function crashCopy(dev: MemoryCacheDevice): MemoryCacheDevice {
  const copy = new MemoryCacheDevice(dev.name, dev.sizeBytes);
  copy.raw().set(dev.raw());
  return copy;
}

function seqs(rs: readonly RecoveredEntry[]): number[] {
  return rs.map((r) => Number(r.handle.seq));
}

/** The lost-entry report for an entry appended with meta(seq) and a payload of `len` bytes. */
function lostOf(h: EntryHandle): LostEntry {
  return { jseq: h.jseq, epoch: h.epoch, seq: h.seq, offsetBytes: h.offsetBytes, lengthBytes: h.payloadBytes };
}

function expectPayloadsIntact(rs: readonly RecoveredEntry[]): void {
  for (const r of rs) expect(r.payload.equals(payloadFor(Number(r.handle.seq), r.handle.payloadBytes)), `payload of seq ${r.handle.seq}`).toBe(true);
}

interface Built {
  readonly dev: MemoryCacheDevice;
  readonly journal: CacheJournal;
  /** Each group commit (one writev), in order. */
  readonly bursts: EntryHandle[][];
}

/**
 * A journal with `entries` appends in group commits of 1..burstMax entries (each burst awaited
 * before the next), entries done as they fall `keepLive` behind, so the head moves and the ring
 * wraps.
 */
async function build(rng: Prng, o: { sizeBytes: number; entries: number; burstMax: number; lenMax: number; keepLive: number }): Promise<Built> {
  const dev = new MemoryCacheDevice('memory:c', o.sizeBytes);
  const { journal } = await CacheJournal.open(dev, { headPersistBytes: 1 });
  const bursts: EntryHandle[][] = [];
  const live: EntryHandle[] = [];
  for (let i = 1; i <= o.entries; ) {
    const ps: Promise<EntryHandle>[] = [];
    for (let n = 1 + rng.int(o.burstMax); n > 0 && i <= o.entries; n--, i++) ps.push(journal.append(meta(i), payloadFor(i, 1 + rng.int(o.lenMax))));
    const hs = await Promise.all(ps);
    bursts.push(hs);
    live.push(...hs);
    while (live.length > o.keepLive) journal.markDone(live.shift()!);
  }
  return { dev, journal, bursts };
}

function flip(dev: MemoryCacheDevice, at: number, rng: Prng): void {
  dev.raw()[at]! ^= 1 << rng.int(8);
}

describe('cache journal damage', () => {
  it('reports exactly the entry a byte flipped at a seeded position damaged (header or payload), by range, and replays every other one', async () => {
    let headerFlips = 0;
    for (let seed = 1; seed <= 60; seed++) {
      const rng = new Prng(seed);
      const { dev, bursts } = await build(rng, { sizeBytes: 256 * 1024, entries: 120, burstMax: 6, lenMax: 5000, keepLive: 24 });
      const snapshot = crashCopy(dev);
      const baseline = (await CacheJournal.open(crashCopy(snapshot))).recovered;
      // A later group commit was written after the victim completed: its watermark proves it.
      const candidates = baseline.filter((r) => r.handle.jseq < bursts.at(-1)![0]!.jseq);
      const victim = candidates[rng.int(candidates.length)]!.handle;
      const damaged = crashCopy(snapshot);
      const offset = rng.int(entryHeaderBytes + victim.payloadBytes);
      if (offset < entryHeaderBytes) headerFlips++;
      flip(damaged, victim.posBytes + offset, rng);
      const { recovered, damage } = await CacheJournal.open(damaged);
      const where = `seed ${seed}, seq ${victim.seq}, byte ${offset}`;
      expect(damage, where).toEqual({ lost: [lostOf(victim)], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
      expect(seqs(recovered), where).toEqual(seqs(baseline).filter((s) => s !== Number(victim.seq)));
      expectPayloadsIntact(recovered);
    }
    expect(headerFlips).toBeGreaterThan(3); // both kinds were exercised
  });

  it('tells a torn tail (the last group commit cut mid-writev: no loss) from a flipped byte in an earlier entry (loss, by range)', async () => {
    for (let seed = 1; seed <= 40; seed++) {
      const rng = new Prng(100 + seed);
      const { dev, journal, bursts } = await build(rng, { sizeBytes: 256 * 1024, entries: 60, burstMax: 5, lenMax: 5000, keepLive: 1000 });
      const before = crashCopy(dev);
      const last = await Promise.all([61, 62, 63, 64].map((i) => journal.append(meta(i), payloadFor(i, 1 + rng.int(5000)))));
      // The final writev landed only up to `cutAt` (a prefix, as a killed pwritev leaves it).
      const start = last[0]!.posBytes;
      const end = last.at(-1)!.posBytes + entryHeaderBytes + last.at(-1)!.payloadBytes;
      const cutAt = start + rng.int(end - start);
      const torn = crashCopy(before);
      torn.raw().set(dev.raw().subarray(start, cutAt), start);
      const landed = last.filter((h) => h.posBytes + entryHeaderBytes + h.payloadBytes <= cutAt);
      const tornOne = last[landed.length];
      const tornHeaderReadable = tornOne !== undefined && cutAt >= tornOne.posBytes + entryHeaderBytes;
      const baseline = (await CacheJournal.open(crashCopy(before))).recovered;
      const opened = await CacheJournal.open(crashCopy(torn));
      const where = `seed ${seed}, cut at ${cutAt - start} of ${end - start}`;
      expect(opened.damage.lost, where).toEqual([]);
      expect(opened.damage.unknownLost, where).toBe(0);
      expect(opened.damage.tornTailEntries, where).toBe(tornHeaderReadable ? 1 : 0);
      expect(seqs(opened.recovered), where).toEqual([...seqs(baseline), ...landed.map((h) => Number(h.seq))]);
      // The same torn tail, plus one flipped byte in an entry whose completion a later intact
      // group commit recorded: that one is lost, the torn tail still only cut.
      const proven = bursts.slice(0, -1).flat();
      const victim = proven[rng.int(proven.length)]!;
      const both = crashCopy(torn);
      flip(both, victim.posBytes + rng.int(entryHeaderBytes + victim.payloadBytes), rng);
      const opened2 = await CacheJournal.open(both);
      expect(opened2.damage, where).toEqual({ ...opened.damage, lost: [lostOf(victim)] });
      expect(seqs(opened2.recovered), where).toEqual(seqs(opened.recovered).filter((s) => s !== Number(victim.seq)));
      expectPayloadsIntact(opened2.recovered);
    }
  });

  it('names a damaged entry whose own header is unreadable from the prev fields of the entry after it', async () => {
    const { dev, bursts } = await build(new Prng(7), { sizeBytes: 256 * 1024, entries: 30, burstMax: 3, lenMax: 3000, keepLive: 1000 });
    const victim = bursts.flat()[10]!;
    const damaged = crashCopy(dev);
    damaged.raw().fill(0xa5, victim.posBytes, victim.posBytes + entryHeaderBytes); // the whole header is garbage
    const { recovered, damage } = await CacheJournal.open(damaged);
    expect(damage.lost).toEqual([lostOf(victim)]);
    expect(damage.unknownLost).toBe(0);
    expect(seqs(recovered)).toEqual(bursts.flat().map((h) => Number(h.seq)).filter((s) => s !== Number(victim.seq)));
  });

  it('two damaged entries in a row: the second named by its successor, the first unknown unless its own header survived', async () => {
    const { dev, bursts } = await build(new Prng(8), { sizeBytes: 256 * 1024, entries: 30, burstMax: 3, lenMax: 3000, keepLive: 1000 });
    const all = bursts.flat();
    const [a, b] = [all[12]!, all[13]!];
    const headers = crashCopy(dev);
    headers.raw().fill(0, a.posBytes, a.posBytes + entryHeaderBytes);
    headers.raw().fill(0, b.posBytes, b.posBytes + entryHeaderBytes);
    const one = await CacheJournal.open(headers);
    expect(one.damage).toEqual({ lost: [lostOf(b)], unknownLost: 1, tornTailEntries: 0, tornTailBytes: 0 });
    expect(seqs(one.recovered)).toEqual(all.filter((h) => h !== a && h !== b).map((h) => Number(h.seq)));
    // a's payload damaged (its header names it), b's header gone (its successor names it).
    const mixed = crashCopy(dev);
    mixed.raw()[a.posBytes + entryHeaderBytes + 5]! ^= 0x40;
    mixed.raw().fill(0xff, b.posBytes + 8, b.posBytes + 16);
    const two = await CacheJournal.open(mixed);
    expect(two.damage).toEqual({ lost: [lostOf(a), lostOf(b)], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
  });

  it('ignores garbage after the tail, and reads a ring full of garbage once with no loss reported', async () => {
    const rng = new Prng(9);
    const { dev, bursts } = await build(rng, { sizeBytes: 256 * 1024, entries: 20, burstMax: 3, lenMax: 3000, keepLive: 1000 });
    const last = bursts.flat().at(-1)!;
    const garbage = crashCopy(dev);
    for (let at = last.posBytes + last.sizeBytes; at < garbage.sizeBytes; at++) garbage.raw()[at] = rng.int(256);
    const g = await CacheJournal.open(garbage);
    expect(g.damage).toEqual({ lost: [], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
    expect(seqs(g.recovered)).toEqual(bursts.flat().map((h) => Number(h.seq)));
    // A journal whose whole ring is garbage: every 64-byte step is looked at, the ring is read once.
    const big = new MemoryCacheDevice('memory:big', 8 * 1024 * 1024);
    await (await CacheJournal.open(big)).journal.close();
    for (let at = ringStartBytes; at < big.sizeBytes; at++) big.raw()[at] = rng.int(256);
    const counted = countingReads(crashCopy(big));
    const opened = await CacheJournal.open(counted.dev);
    expect(opened.recovered).toEqual([]);
    expect(opened.damage).toEqual({ lost: [], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
    expect(counted.bytesRead()).toBeLessThanOrEqual(big.sizeBytes + 2 * 4 * 1024 * 1024);
  });

  it('stops a pathological image (headers that all pass, payloads that all fail) with an error, not quadratic work', async () => {
    const dev = new MemoryCacheDevice('memory:evil', 1024 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const h = await journal.append(meta(1), payloadFor(1, 100));
    await journal.close();
    // Copies of a valid header of this journal claiming a later jseq and a 300 KiB payload, at every step.
    const header = Buffer.from(dev.raw().subarray(h.posBytes, h.posBytes + entryHeaderBytes));
    const evil = crashCopy(dev);
    const { encodeEntryHeader } = await import('../../hal/cache.js');
    const fake = new EntryHandle(50, 7, 3n, 50n, 0, 0, 300 * 1024, 0, 0, decodeEntryHeader(header)!.generation);
    const journalId = decodeEntryHeader(header)!.journalId;
    encodeEntryHeader(header, journalId, fake, 0x1234, { committedJseq: 1, prev: undefined });
    for (let at = h.posBytes; at + entryHeaderBytes <= dev.sizeBytes; at += entryHeaderBytes) evil.raw().set(header, at);
    await expect(CacheJournal.open(evil)).rejects.toThrow(/checksummed more than twice the ring.*corrupt/);
  });

  it('finds the next entry across the ring end: damage just before the wrap and at the ring start', async () => {
    const dev = new MemoryCacheDevice('memory:c', 64 * 1024);
    const { journal } = await CacheJournal.open(dev, { headPersistBytes: 1 });
    const live: EntryHandle[] = [];
    let wrapAt = -1;
    for (let i = 1; i <= 40 && wrapAt < 0; i++) {
      const h = await journal.append(meta(i), payloadFor(i, 5000));
      if (live.length > 0 && h.posBytes < live.at(-1)!.posBytes) wrapAt = live.length;
      live.push(h);
      while (live.length > 6) {
        journal.markDone(live.shift()!);
        if (wrapAt >= 0) wrapAt--;
      }
    }
    for (let i = 0; i < 2; i++) live.push(await journal.append(meta(100 + i), payloadFor(100 + i, 5000)));
    expect(wrapAt).toBeGreaterThan(0);
    const beforeWrap = live[wrapAt - 1]!;
    const atStart = live[wrapAt]!;
    expect(atStart.posBytes).toBe(ringStartBytes);
    await new Promise((r) => setTimeout(r, 50)); // head persisted
    const snapshot = crashCopy(dev);
    const baseline = seqs((await CacheJournal.open(crashCopy(snapshot))).recovered);
    for (const victim of [beforeWrap, atStart]) {
      const damaged = crashCopy(snapshot);
      damaged.raw().fill(0x5a, victim.posBytes, victim.posBytes + entryHeaderBytes);
      const { recovered, damage } = await CacheJournal.open(damaged);
      expect(damage.lost).toEqual([lostOf(victim)]);
      expect(seqs(recovered)).toEqual(baseline.filter((s) => s !== Number(victim.seq)));
    }
  });

  it('after a clean close the superblock watermark covers the last entry too', async () => {
    const dev = new MemoryCacheDevice('memory:c', 64 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 4; i++) hs.push(await journal.append(meta(i), payloadFor(i, 700)));
    await journal.close();
    dev.raw()[hs[3]!.posBytes + entryHeaderBytes + 3]! ^= 1;
    const { recovered, damage } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(recovered)).toEqual([1, 2, 3]);
    expect(damage.lost).toEqual([lostOf(hs[3]!)]);
  });

  it('damage at the very end, proven by the superblock: a readable header names itself and the unreadable entry before it', async () => {
    const dev = new MemoryCacheDevice('memory:c', 64 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 5; i++) hs.push(await journal.append(meta(i), payloadFor(i, 700)));
    await journal.close();
    dev.raw().fill(0, hs[3]!.posBytes, hs[3]!.posBytes + entryHeaderBytes); // 4: header gone
    dev.raw()[hs[4]!.posBytes + entryHeaderBytes + 9]! ^= 2; // 5: payload damaged, header readable
    const { recovered, damage } = await CacheJournal.open(crashCopy(dev));
    expect(seqs(recovered)).toEqual([1, 2, 3]);
    expect(damage).toEqual({ lost: [lostOf(hs[3]!), lostOf(hs[4]!)], unknownLost: 0, tornTailEntries: 0, tornTailBytes: 0 });
  });

  it('reports the damage again at every open until the head moves past it, then never again', async () => {
    const dev = new MemoryCacheDevice('memory:c', 64 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 5; i++) hs.push(await journal.append(meta(i), payloadFor(i, 700)));
    dev.raw()[hs[0]!.posBytes + 20]! ^= 1; // the entry at the head
    const first = await CacheJournal.open(crashCopy(dev));
    expect(first.damage.lost).toEqual([lostOf(hs[0]!)]);
    const crashedAfterOpen = crashCopy(first.journal.device as MemoryCacheDevice);
    const again = await CacheJournal.open(crashedAfterOpen);
    expect(again.damage).toEqual(first.damage);
    expect(seqs(again.recovered)).toEqual([2, 3, 4, 5]);
    for (const r of again.recovered) again.journal.markDone(r.handle);
    await again.journal.close();
    const later = await CacheJournal.open(crashCopy(crashedAfterOpen));
    expect(later.damage.lost).toEqual([]);
    expect(later.recovered).toEqual([]);
  });

  it('a lost entry at the tail keeps its jseq: appends after it do not make it vanish before the head moves', async () => {
    const dev = new MemoryCacheDevice('memory:c', 64 * 1024);
    const { journal } = await CacheJournal.open(dev);
    const hs: EntryHandle[] = [];
    for (let i = 1; i <= 3; i++) hs.push(await journal.append(meta(i), payloadFor(i, 700)));
    await journal.close(); // the superblock watermark now covers 3
    dev.raw().fill(0, hs[2]!.posBytes, hs[2]!.posBytes + entryHeaderBytes); // 3's header gone
    const opened = await CacheJournal.open(crashCopy(dev));
    expect(opened.damage).toEqual({ lost: [], unknownLost: 1, tornTailEntries: 0, tornTailBytes: 0 });
    const h = await opened.journal.append(meta(10), payloadFor(10, 700)); // overwrites where 3 was
    expect(h.jseq).toBe(hs[2]!.jseq + 1);
    const crashed = await CacheJournal.open(crashCopy(opened.journal.device as MemoryCacheDevice));
    expect(seqs(crashed.recovered)).toEqual([1, 2, 10]);
    expect(crashed.damage.unknownLost + crashed.damage.lost.length).toBe(1); // still reported
  });
});

describe('cache journal written by an earlier install (format version 1)', () => {
  /** Made by the version-1 code (commit fe753ab), see testdata/README.md: seqs 3-7 pending. */
  function v1Image(): MemoryCacheDevice {
    const dev = new MemoryCacheDevice('memory:v1', 64 * 1024);
    dev.raw().set(gunzipSync(readFileSync(join(here, 'testdata', 'cache-v1.img.gz'))));
    return dev;
  }

  it('replays a version-1 journal as before and writes version 2 after it; damage in a v1 entry is then seen from v2 watermarks', async () => {
    const dev = v1Image();
    const first = await CacheJournal.open(crashCopy(dev));
    expect(seqs(first.recovered)).toEqual([3, 4, 5, 6, 7]);
    expect(first.recovered.map((r) => r.handle.payloadBytes)).toEqual([3000, 4000, 5000, 6000, 7000]);
    expectPayloadsIntact(first.recovered);
    const v1Header = entryHeaderLayoutV1.decode(dev.raw().subarray(first.recovered[0]!.handle.posBytes, first.recovered[0]!.handle.posBytes + 64));
    expect(v1Header).toMatchObject({ magic: 0x474d4345, version: 1, seqLo: 3, payloadBytes: 3000 });
    const mixed = first.journal.device as MemoryCacheDevice;
    const added: EntryHandle[] = [];
    for (let i = 8; i <= 9; i++) added.push(await first.journal.append(meta(i), payloadFor(i, 1000)));
    expect(decodeEntryHeader(mixed.raw().subarray(added[0]!.posBytes, added[0]!.posBytes + entryHeaderBytes))!.version).toBe(2);
    const reopened = await CacheJournal.open(crashCopy(mixed));
    expect(seqs(reopened.recovered)).toEqual([3, 4, 5, 6, 7, 8, 9]);
    expect(reopened.damage.lost).toEqual([]);
    // A flipped byte in v1 entry 5: the v2 entries written after the upgrade prove it had completed.
    const damaged = crashCopy(mixed);
    const five = first.recovered[2]!.handle;
    damaged.raw()[five.posBytes + 64 + 10]! ^= 1;
    const d = await CacheJournal.open(damaged);
    expect(seqs(d.recovered)).toEqual([3, 4, 6, 7, 8, 9]);
    expect(d.damage.lost).toEqual([lostOf(five)]);
  });

  it('a damaged entry in a pure version-1 journal is cut as before (no watermark to tell)', async () => {
    const dev = v1Image();
    const first = await CacheJournal.open(crashCopy(dev));
    const five = first.recovered[2]!.handle;
    dev.raw()[five.posBytes + 64 + 10]! ^= 1;
    const { recovered, damage } = await CacheJournal.open(dev);
    expect(seqs(recovered)).toEqual([3, 4]);
    expect(damage.lost).toEqual([]);
    expect(damage.unknownLost).toBe(0);
    expect(damage.tornTailEntries).toBe(3); // 5, 6, 7 (their headers were readable)
  });
});

function countingReads(dev: CacheDevice): { dev: CacheDevice; bytesRead(): number } {
  let n = 0;
  const wrapped: CacheDevice = {
    name: dev.name,
    sizeBytes: dev.sizeBytes,
    durableWrites: dev.durableWrites,
    writev: (b, o) => dev.writev(b, o),
    read: (o, l) => {
      n += l;
      return dev.read(o, l);
    },
    sync: () => dev.sync(),
    close: () => dev.close(),
  };
  return { dev: wrapped, bytesRead: () => n };
}

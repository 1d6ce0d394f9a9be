// npm run bench:hal — HAL write throughput against plain fs.write on the same disk, same run.
//
// Systems, each writing sequentially (queue depth 1) over its own region file of the same size
// in one temp dir, no fsync anywhere:
//   fs.write       FileHandle.write(buf, 0, len, position): the floor we compare against
//   loopback       hal/loopback.ts LoopbackDevice.write(lba, buf)
//   cache append   hal/cache.ts CacheJournal.append() + markDone() on a file cache device
//                  (steady state: the ring wraps and the head is reclaimed as it would be live)
// for 4 KiB and 1 MiB writes. The machine is shared and noisy, so the systems alternate inside
// every round (rotating who goes first) and each point is repeated; we report the median MiB/s
// and the median of the per-round ratios against fs.write (paired, so a noisy round hits both).
// Goal (issue 3): cache append >= 0.8x fs.write at 1 MiB and >= 0.5x at 4 KiB.
//
// Also measures the entry-header encoding by hand vs buffer-layout (why cache.ts hand-encodes).

import { crc32 } from '@node-rs/crc32';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CacheJournal, EntryHandle, encodeEntryHeader, entryHeaderBytes, entryHeaderLayout } from '../hal/cache.js';
import { openFileCacheDevice } from '../hal/cachedev.js';
import { openLoopback } from '../hal/loopback.js';

const regionBytes = 64 * 1024 * 1024;
const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
const points = [
  { label: '4 KiB', sizeBytes: 4096, bytesPerTrial: 16 * 1024 * 1024 },
  { label: '1 MiB', sizeBytes: 1024 * 1024, bytesPerTrial: 256 * 1024 * 1024 },
] as const;

type Writer = { name: string; run: (buf: Buffer, ops: number) => Promise<void>; close: () => Promise<void> };

async function plainWriter(dir: string): Promise<Writer> {
  const fh = await open(join(dir, 'plain.img'), 'w+');
  await fh.truncate(regionBytes);
  let pos = 0;
  return {
    name: 'fs.write',
    run: async (buf, ops) => {
      for (let i = 0; i < ops; i++) {
        if (pos + buf.length > regionBytes) pos = 0;
        await fh.write(buf, 0, buf.length, pos);
        pos += buf.length;
      }
    },
    close: () => fh.close(),
  };
}

async function loopbackWriter(dir: string): Promise<Writer> {
  const dev = await openLoopback(join(dir, 'loopback.img'), { blockSizeBytes: 4096, blockCount: regionBytes / 4096, create: true });
  let lba = 0;
  return {
    name: 'loopback',
    run: async (buf, ops) => {
      const blocks = buf.length / 4096;
      for (let i = 0; i < ops; i++) {
        if (lba + blocks > dev.blockCount) lba = 0;
        await dev.write(lba, buf);
        lba += blocks;
      }
    },
    close: () => dev.close(),
  };
}

async function cacheWriter(dir: string): Promise<Writer> {
  const dev = await openFileCacheDevice(join(dir, 'site.cache'), { sizeBytes: regionBytes });
  const { journal } = await CacheJournal.open(dev);
  let seq = 1n;
  let offsetBytes = 0;
  return {
    name: 'cache append',
    run: async (buf, ops) => {
      for (let i = 0; i < ops; i++) {
        const h = await journal.append({ volume: 1, epoch: 1n, seq: seq++, offsetBytes }, buf);
        journal.markDone(h);
        offsetBytes = (offsetBytes + buf.length) % regionBytes;
      }
    },
    close: () => journal.close(),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function headerEncodingNs(): { handNs: number; layoutNs: number } {
  const h = new EntryHandle(123_456, 1, 7n, 99_999n, 4096 * 1000, 0, 4096, 4096, 4160, 3);
  const buf = Buffer.alloc(entryHeaderBytes);
  const link = { committedJseq: 123_450, prev: { epoch: 7n, seq: 99_998n, offsetBytes: 4096 * 999, payloadBytes: 4096, posBytes: 4096 } };
  const n = 200_000;
  const time = (f: () => void): number => {
    for (let i = 0; i < 10_000; i++) f();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) f();
    return Number(process.hrtime.bigint() - t0) / n;
  };
  const handNs = time(() => encodeEntryHeader(buf, 0x1234, h, 0xabcd, link));
  const layoutNs = time(() => {
    // What the hot path would do with buffer-layout: build the field object, encode, then crc.
    entryHeaderLayout.encode(
      {
        magic: 0x474d4345, flags: h.flags, version: 2, link: 1, journalId: 0x1234, generation: h.generation,
        jseqHi: Math.floor(h.jseq / 2 ** 32), jseqLo: h.jseq >>> 0, volume: h.volume, payloadBytes: h.payloadBytes,
        epochHi: Number(h.epoch >> 32n), epochLo: Number(h.epoch & 0xffff_ffffn), seqHi: Number(h.seq >> 32n), seqLo: Number(h.seq & 0xffff_ffffn),
        offsetBytesHi: Math.floor(h.offsetBytes / 2 ** 32), offsetBytesLo: h.offsetBytes >>> 0, payloadCrc: 0xabcd,
        prevPayloadBytes: link.prev.payloadBytes, committedJseqHi: 0, committedJseqLo: link.committedJseq,
        prevEpochHi: 0, prevEpochLo: Number(link.prev.epoch), prevSeqHi: 0, prevSeqLo: Number(link.prev.seq),
        prevOffsetBytesHi: 0, prevOffsetBytesLo: link.prev.offsetBytes, prevPosBytesHi: 0, prevPosBytesLo: link.prev.posBytes,
        reserved0: 0, reserved1: 0, reserved2: 0, reserved3: 0, reserved4: 0, headerCrc: 0,
      },
      buf,
    );
    buf.writeUInt32BE(crc32(buf.subarray(0, 124)), 124); // the header crc, as the hand encoder does
  });
  return { handNs, layoutNs };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'gm-bench-hal-'));
  try {
    const writers = [await plainWriter(dir), await loopbackWriter(dir), await cacheWriter(dir)];
    console.log(`bench:hal  dir ${dir}  region ${regionBytes / 2 ** 20} MiB per system  ${rounds} rounds  queue depth 1  no fsync`);
    const rows: string[] = [];
    const verdicts: string[] = [];
    for (const p of points) {
      const buf = Buffer.alloc(p.sizeBytes);
      for (let i = 0; i < buf.length; i++) buf[i] = (i * 131) & 0xff;
      const ops = p.bytesPerTrial / p.sizeBytes;
      for (const w of writers) await w.run(buf, Math.min(ops, regionBytes / p.sizeBytes)); // warm: allocate pages
      const mibps = new Map<string, number[]>(writers.map((w) => [w.name, []]));
      for (let r = 0; r < rounds; r++) {
        for (let k = 0; k < writers.length; k++) {
          const w = writers[(r + k) % writers.length]!; // rotate who goes first
          const t0 = process.hrtime.bigint();
          await w.run(buf, ops);
          const s = Number(process.hrtime.bigint() - t0) / 1e9;
          mibps.get(w.name)!.push(p.bytesPerTrial / 2 ** 20 / s);
        }
      }
      const plain = mibps.get('fs.write')!;
      for (const w of writers) {
        const xs = mibps.get(w.name)!;
        const ratio = median(xs.map((x, i) => x / plain[i]!));
        rows.push(`${p.label.padEnd(7)} ${w.name.padEnd(14)} ${median(xs).toFixed(1).padStart(9)} ${ratio.toFixed(2).padStart(7)}x   (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`);
        if (w.name === 'cache append') {
          const goal = p.sizeBytes >= 1024 * 1024 ? 0.8 : 0.5;
          verdicts.push(`cache append at ${p.label}: ${ratio.toFixed(2)}x fs.write (goal >= ${goal}x): ${ratio >= goal ? 'met' : 'NOT met'}`);
        }
      }
    }
    console.log(`${'size'.padEnd(7)} ${'system'.padEnd(14)} ${'MiB/s'.padStart(9)} ${'ratio'.padStart(8)}   (median MiB/s; ratio = median of per-round ratios vs fs.write)`);
    for (const r of rows) console.log(r);
    for (const v of verdicts) console.log(v);
    const enc = headerEncodingNs();
    console.log(`entry header encode: by hand ${enc.handNs.toFixed(0)} ns, buffer-layout ${enc.layoutNs.toFixed(0)} ns (both with the header crc)`);
    for (const w of writers) await w.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

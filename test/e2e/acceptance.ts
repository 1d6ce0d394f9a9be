// Shared pieces of the issue 16 acceptance tests (test/e2e/issue16-*.test.ts): cluster and
// writer bookkeeping for afterAll, NBD helpers, log waits, and whole-file hashes that stream
// (1 GiB replicas).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, openSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CacheJournal, decodeEntryHeader, entryHeaderBytes, superblockSlotBytes, type EntryHandle } from '../../hal/cache.js';
import { decodeSuperblock } from '../../hal/cache-format.js';
import { MemoryCacheDevice } from '../../hal/cachedev.js';
import type { SiteStatus } from '../../src/site/status.js';
import { Cluster, NbdWriter, planWrites, sleep, waitMsMax, type ClusterOptions, type PlannedWrite } from './harness.js';

export const MiB = 1024 * 1024;

/** Phase `k` of a test's writes: seeded by `seedBase + k`, indices apart from every other phase's. */
export function phaseWrites(seedBase: number, k: number, c: Cluster, bytes: number): PlannedWrite[] {
  return planWrites(seedBase + k, c.volumeBytes, bytes).map((w) => ({ ...w, index: w.index + k * 100_000 }));
}
const run = promisify(execFile);

/** The clusters and NBD writers of a test file, for afterEach/afterAll. */
export class Tracker {
  readonly clusters: Cluster[] = [];
  readonly writers: NbdWriter[] = [];

  /** Creates a cluster; starts it and waits until the primary has every mirror in sync unless `start` is false. */
  async cluster(opts: ClusterOptions, start = true): Promise<Cluster> {
    const c = await Cluster.create(opts);
    this.clusters.push(c);
    if (start) {
      await c.start();
      await c.waitInSync();
    }
    return c;
  }

  /** Connects to an NBD export, retrying while nothing listens there yet. */
  async connectWhenUp(port: number, timeoutMs = waitMsMax): Promise<NbdWriter> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const w = await NbdWriter.connect(port);
        this.writers.push(w);
        return w;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`no NBD export on 127.0.0.1:${port} within ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(50);
      }
    }
  }

  closeWriters(): void {
    for (const w of this.writers.splice(0)) w.close();
  }

  async destroy(): Promise<void> {
    this.closeWriters();
    for (const c of this.clusters.splice(0)) await c.destroy();
  }
}

/** A failing test carries every site's log. */
export async function withLogs(c: Cluster | undefined, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const e = err as Error;
    if (c) e.message = `${e.message}\n${c.dumpLogs()}`;
    throw e;
  }
}

/** The whole volume as a site's NBD export serves it, read with the real nbdcopy. */
export async function readVolume(c: Cluster, port: number): Promise<Buffer> {
  const out = join(c.dir, `readback-${port}-${Date.now()}.img`);
  await run('nbdcopy', [`nbd://127.0.0.1:${port}/vol0`, out], { timeout: waitMsMax });
  return readFileSync(out);
}

export function peer(s: SiteStatus, name: string): SiteStatus['peers'][number] | undefined {
  return s.peers.find((p) => p.name === name);
}

/** Waits until a log record of `site` satisfies `pred`; returns it. */
export async function waitLog(c: Cluster, site: string, pred: (r: Record<string, unknown>) => boolean, what: string, timeoutMs = waitMsMax): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = c.logRecords(site).find(pred);
    if (hit !== undefined) return hit;
    if (Date.now() > deadline) throw new Error(`${site} logged no ${what} within ${timeoutMs} ms\n${c.logTail(site, 60)}`);
    await sleep(50);
  }
}

/** Bytes of every site's log file. */
export function logBytes(c: Cluster): number {
  let sum = 0;
  for (const n of c.names) {
    try {
      sum += statSync(c.site(n).logPath).size;
    } catch {
      /* never started */
    }
  }
  return sum;
}

/** Runs the real CLI against the cluster's file; resolves with its exit code and output. */
export function cli(c: Cluster, args: string[]): Promise<{ code: number; out: string }> {
  return run(process.execPath, [join(import.meta.dirname, '../../bin/geomirror.mjs'), ...args, '--config', c.configPath], { timeout: waitMsMax }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );
}

/** sha256 of a file, streamed (replicas of 1 GiB). */
export async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** `length` bytes of a file at `offset`. */
export function readRange(path: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    for (let done = 0; done < length; ) {
      const n = readSync(fd, b, done, length - done, offset + done);
      if (n === 0) throw new Error(`${path} ends at byte ${offset + done}, before ${offset + length}`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return b;
}

/** A journal entry a test damaged: where its write went on the volume, where it sits in the ring. */
export interface FlippedEntry {
  readonly jseq: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly posBytes: number;
  /** Entries the journal replayed before the flip, and where the victim was among them. */
  readonly entries: number;
  readonly index: number;
}

/** The journal in a cache file as a site's next open replays it (on a copy in RAM: the file is not touched). */
async function replayCopy(image: Buffer): Promise<Awaited<ReturnType<typeof CacheJournal.open>>> {
  const d = new MemoryCacheDevice('memory:e2e-journal-copy', image.length);
  d.raw().set(image);
  const r = await CacheJournal.open(d);
  await r.journal.device.close();
  return r;
}

/**
 * Flips one byte in the middle of the payload of an acknowledged journal entry in the middle of
 * the cache file of a stopped site: an entry that completed (a later entry's watermark or the
 * superblock records it, so its write may have been acked) and whose successor is intact (so
 * replay can tell damage from a torn tail), never the last one. Checks on a copy that the next
 * open reports exactly that entry as lost; returns it, or undefined when the journal holds fewer
 * than three entries to choose from.
 */
export async function flipMiddleEntry(cachePath: string): Promise<FlippedEntry | undefined> {
  const image = readFileSync(cachePath);
  const before = await replayCopy(image);
  const handles = before.recovered.map((r) => r.handle);
  const committed = (h: EntryHandle): number => decodeEntryHeader(image.subarray(h.posBytes, h.posBytes + entryHeaderBytes))!.committedJseq;
  const sbWatermark = Math.max(...[0, superblockSlotBytes].map((at) => decodeSuperblock(image.subarray(at, at + 64))?.committedJseq ?? 0));
  const eligible = handles.filter((v, i) => i > 0 && i < handles.length - 1 && handles[i + 1]!.jseq === v.jseq + 1 && Math.max(sbWatermark, ...handles.filter((h) => h !== v).map(committed)) > v.jseq);
  if (eligible.length === 0) return undefined;
  const victim = eligible[Math.floor(eligible.length / 2)]!;
  const at = victim.posBytes + entryHeaderBytes + Math.floor(victim.payloadBytes / 2);
  image[at] = image[at]! ^ 0xff;
  const after = await replayCopy(image);
  const lost = after.damage.lost.map((l) => `${l.offsetBytes}+${l.lengthBytes}`);
  if (lost.length !== 1 || lost[0] !== `${victim.offsetBytes}+${victim.payloadBytes}` || after.damage.unknownLost !== 0) {
    throw new Error(`flipping byte ${at} of ${cachePath} (entry jseq ${victim.jseq}) should lose exactly ${victim.offsetBytes}+${victim.payloadBytes}; the journal reports lost [${lost.join(', ')}], unknown ${after.damage.unknownLost}`);
  }
  const fd = openSync(cachePath, 'r+');
  try {
    writeSync(fd, image, at, 1, at);
  } finally {
    closeSync(fd);
  }
  return { jseq: victim.jseq, offsetBytes: victim.offsetBytes, lengthBytes: victim.payloadBytes, posBytes: victim.posBytes, entries: handles.length, index: handles.indexOf(victim) };
}

/** Which planned write a block of an image holds (harness.planWrites stamps index and block number), or zero. */
export function blockOrigin(img: Buffer, block: number, blockBytes = 4096): string {
  const b = img.subarray(block * blockBytes, (block + 1) * blockBytes);
  if (b.every((x) => x === 0)) return 'zeroes';
  const index = b.readUInt32LE(0);
  const stamped = b.readUInt32LE(4);
  return stamped === block ? `write #${index}` : `unstamped bytes (${b.subarray(0, 8).toString('hex')})`;
}

/** Byte ranges (offset+length, block granular) where two images differ, each with what `a` and `b` hold at its first block; at most `max`. */
export function diffRanges(a: Buffer, b: Buffer, blockBytes = 4096, max = 8): string[] {
  const out: string[] = [];
  let start = -1;
  const blocks = Math.min(a.length, b.length) / blockBytes;
  for (let i = 0; i <= blocks; i++) {
    const differs = i < blocks && !a.subarray(i * blockBytes, (i + 1) * blockBytes).equals(b.subarray(i * blockBytes, (i + 1) * blockBytes));
    if (differs && start < 0) start = i;
    if (!differs && start >= 0) {
      out.push(`${start * blockBytes}+${(i - start) * blockBytes} (${blockOrigin(a, start, blockBytes)} vs ${blockOrigin(b, start, blockBytes)})`);
      start = -1;
      if (out.length >= max) break;
    }
  }
  return out;
}

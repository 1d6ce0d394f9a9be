// In-process crash simulation of the write path a site really runs (test/hal/crash-site.ts: a
// core and the production executor over the cache journal and a RAID-1 array): the same seeded
// plan and check as the kill -9 crash test (crash.test.ts), but the "kill" is a synchronous
// snapshot of the cache and both RAID-1 members taken the moment the Nth write is accepted, with
// every write still in flight at that instant torn at a random byte (as a killed pwrite may be).
// Devices complete in random order (immediate, after a few turns of the event loop, or after a
// timer), so cache writes, superblock writes and member writes interleave in many ways. Cheap
// enough to run many crashes; the child-process test proves the same on real files and kill -9.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MediaStatus, type BlockDevice } from '../../hal/blockdev.js';
import type { CacheDevice } from '../../hal/cachedev.js';
import { Prng } from '../../hal/prng.js';
import { crashBlockCount, crashBlockSizeBytes, crashCacheBytes, crashWritesInflightMax, plannedWrite } from './crash-plan.js';
import { openCrashSite, type CrashRole, type CrashSite } from './crash-site.js';

const bs = crashBlockSizeBytes;

interface InflightWrite {
  readonly target: Buffer;
  readonly offsetBytes: number;
  readonly data: Buffer;
}

/** Everything written but not yet landed, across all devices of one simulated site. */
class Disks {
  readonly inflight = new Set<InflightWrite>();
  landed = 0;
  /** Called after each landed write (a crash hook). */
  onLand: (() => void) | undefined;
  constructor(readonly rng: Prng) {}

  async land(target: Buffer, offsetBytes: number, data: Buffer): Promise<void> {
    const w = { target, offsetBytes, data };
    this.inflight.add(w);
    const n = this.rng.int(6);
    if (n > 0 && n < 4) for (let k = 0; k < n; k++) await new Promise((r) => setImmediate(r));
    else if (n >= 4) await new Promise((r) => setTimeout(r, n - 3));
    this.inflight.delete(w);
    data.copy(target, offsetBytes);
    this.landed++;
    this.onLand?.();
  }
}

/** The site as a kill -9 leaves it now: landed writes stay, in-flight ones land partly or not at all. */
function snapshot(site: Site, disks: Disks, rng: Prng): Site {
  const crashed = { cache: Buffer.from(site.cache), a: Buffer.from(site.a), b: Buffer.from(site.b) };
  for (const f of disks.inflight) {
    if (rng.chance(0.5)) continue;
    const dst = f.target === site.cache ? crashed.cache : f.target === site.a ? crashed.a : crashed.b;
    f.data.copy(dst, f.offsetBytes, 0, rng.int(f.data.length + 1));
  }
  return crashed;
}

/** Crashes the site while it opens (replays), after `landedMax` device writes; or once open. */
async function crashDuringOpen(site: Site, landedMax: number, rng: Prng, role: CrashRole, dir: string): Promise<Site> {
  const disks = new Disks(rng.fork());
  let crashed: Site | undefined;
  disks.onLand = () => {
    if (crashed === undefined && disks.landed >= landedMax) crashed = snapshot(site, disks, rng);
  };
  const opened = await openSite(site, disks, role, dir, 0n);
  await opened.settle();
  crashed ??= snapshot(site, disks, rng);
  disks.onLand = undefined;
  await opened.close();
  return crashed;
}

class SimMember implements BlockDevice {
  readonly blockSizeBytes = 4096 as const;
  readonly blockCount = crashBlockCount;
  readonly capabilities = { flush: true, fua: true, trim: false, readOnly: false };
  constructor(
    readonly name: string,
    readonly raw: Buffer,
    private readonly disks: Disks,
  ) {}
  status() {
    return MediaStatus.OK;
  }
  async read(lba: number, blocks: number): Promise<Buffer> {
    await new Promise((r) => setImmediate(r));
    return Buffer.from(this.raw.subarray(lba * bs, (lba + blocks) * bs));
  }
  write(lba: number, data: Uint8Array): Promise<void> {
    return this.disks.land(this.raw, lba * bs, Buffer.from(data));
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

class SimCache implements CacheDevice {
  readonly durableWrites = false;
  readonly name = 'memory:sim-cache';
  readonly sizeBytes = crashCacheBytes;
  constructor(
    readonly raw: Buffer,
    private readonly disks: Disks,
  ) {}
  writev(buffers: readonly Uint8Array[], offsetBytes: number): Promise<void> {
    return this.disks.land(this.raw, offsetBytes, Buffer.concat(buffers));
  }
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    await new Promise((r) => setImmediate(r));
    return Buffer.from(this.raw.subarray(offsetBytes, offsetBytes + lengthBytes));
  }
  async sync(): Promise<void> {}
  async close(): Promise<void> {}
}

interface Site {
  cache: Buffer;
  a: Buffer;
  b: Buffer;
}

async function openSite(site: Site, disks: Disks, role: CrashRole, dir: string, seqBase: bigint, onAccepted?: () => void): Promise<CrashSite> {
  const quiet = { error: () => undefined, warn: () => undefined, info: () => undefined };
  const fatal = (err: Error): void => {
    throw err;
  };
  return openCrashSite({ role, dir, cache: new SimCache(site.cache, disks), members: [new SimMember('a', site.a, disks), new SimMember('b', site.b, disks)], seqBase, logger: quiet, fatal, ...(onAccepted ? { onAccepted } : {}) });
}

/** Runs until the Nth accepted write, then returns the crashed site (torn in-flight writes included). */
async function runUntilCrash(site: Site, runSeed: number, killAfter: number, rng: Prng, role: CrashRole, dir: string, seqBase: bigint): Promise<{ crashed: Site; acceptedCount: number }> {
  const disks = new Disks(rng.fork());
  let crashed: Site | undefined;
  let acceptedCount = 0;
  const opened: CrashSite = await openSite(site, disks, role, dir, seqBase, () => {
    if (crashed !== undefined || opened.acceptedCount < killAfter) return;
    acceptedCount = opened.acceptedCount;
    crashed = snapshot(site, disks, rng); // kill -9 now
  });
  for (let i = 0; crashed === undefined; i++) {
    if (i - opened.acceptedCount >= crashWritesInflightMax) await opened.whenAccepted(i - crashWritesInflightMax + 1);
    if (crashed !== undefined) break;
    opened.submit(i, plannedWrite(runSeed, i));
  }
  await opened.close(); // the dead process's leftovers run against the old buffers
  return { crashed: crashed!, acceptedCount };
}

describe('site crash simulation (torn in-flight writes)', () => {
  it('replays every accepted write and keeps RAID-1 members equal across 36 simulated crashes (12 of them during replay)', async () => {
    for (let seed = 1; seed <= Number(process.env.CRASHSIM_SEEDS ?? 6); seed++) {
      const rng = new Prng(seed);
      const role: CrashRole = seed % 2 === 0 ? 'primary' : 'mirror';
      const dir = await mkdtemp(join(tmpdir(), 'gm-crashsim-'));
      let site: Site = { cache: Buffer.alloc(crashCacheBytes), a: Buffer.alloc(crashBlockCount * bs), b: Buffer.alloc(crashBlockCount * bs) };
      let baseline = Buffer.alloc(crashBlockCount * bs);
      for (let run = 0; run < 4; run++) {
        const runSeed = 5000 + seed * 10 + run;
        // Every other run first crashes once more while replaying the previous crash.
        if (run % 2 === 1) site = await crashDuringOpen(site, rng.int(40), rng, role, dir);
        const { crashed, acceptedCount } = await runUntilCrash(site, runSeed, 1 + rng.int(150), rng, role, dir, BigInt(run + 1) * 1_000_000n);
        const where = `seed ${seed} (${role}) run ${run}`;
        const restarted = await openSite(crashed, new Disks(rng.fork()), role, dir, 0n);
        await restarted.settle();
        await restarted.close();
        expect(crashed.a.equals(crashed.b), `${where}: members differ`).toBe(true);
        const lastAccepted = acceptedCount - 1;
        const issuedMax = lastAccepted + crashWritesInflightMax;
        const writes = Array.from({ length: issuedMax + 1 }, (_, i) => plannedWrite(runSeed, i));
        for (let block = 0; block < crashBlockCount; block++) {
          const covers = (i: number) => writes[i]!.lba <= block && block < writes[i]!.lba + writes[i]!.blocks;
          let last = -1;
          for (let i = 0; i <= lastAccepted; i++) if (covers(i)) last = i;
          const actual = crashed.a.subarray(block * bs, (block + 1) * bs);
          let ok = last < 0 && actual.equals(baseline.subarray(block * bs, (block + 1) * bs));
          for (let i = Math.max(last, 0); !ok && i <= issuedMax; i++) {
            if (!covers(i)) continue;
            const at = (block - writes[i]!.lba) * bs;
            ok = actual.equals(writes[i]!.data.subarray(at, at + bs));
          }
          if (!ok) expect.fail(`${where}: block ${block} lost the last accepted write covering it (index ${last})`);
        }
        baseline = Buffer.from(crashed.a);
        site = crashed;
      }
      await rm(dir, { recursive: true, force: true });
    }
  });
});

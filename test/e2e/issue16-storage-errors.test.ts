// Issue 16 acceptance, items 4 and 8 ("A few seconds of storage errors livelock a site"; "a failing
// local storage at the primary ... is never reconciled"), multi-process, with a site's storage
// on a real failing device: its image served by nbdkit behind the error filter (EPERM on every
// request while the test holds the trigger) and exposed as a file through nbdfuse
// (test/e2e/faulty-storage.ts). Checked by bytes:
//  - 5 s of EPERM on the primary's storage, and in another cluster on a mirror's, under a steady
//    NBD writer: within 30 s of the errors ending every replica hashes equal to the volume read
//    back over NBD (which holds every acked write) and status says in sync; the logs of all sites
//    together stay under 1 MiB (no busy loop, repeated lines rate-limited);
//  - a primary whose storage fails mid-stream keeps acking host writes through its mirrors (DRBD's
//    on-io-error detach) and NBD reads return the bytes of every acked write; once the storage
//    answers again its copy is repaired and all replicas hash equal; a host flush in that state
//    should complete too (it failed before the core completed it through the mirrors).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { applyWrites, checkAckedWrites, planWrites, sha256, sleep, type Cluster, type PlannedWrite } from './harness.js';
import { logBytes, MiB, readVolume, Tracker, withLogs } from './acceptance.js';
import { closeAllFaultyStorage, FaultyStorage, faultyStorageUnavailable } from './faulty-storage.js';

const testTimeoutMs = 300_000;
const volumeBytes = 16 * MiB;
/** The issue's bound: converged within 30 s of the storage answering again. */
const convergeMs = 30_000;
const errorWindowMs = 5_000;
const logBytesMax = 1024 * 1024;
/** Item 8 sets no time bound on the repair: a generous one, so a loaded machine does not fail it. */
const repairWaitMs = 120_000;

const t = new Tracker();
const faultDirs: string[] = [];
afterEach(() => t.closeWriters());
afterAll(async () => {
  await t.destroy();
  await closeAllFaultyStorage();
  for (const d of faultDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A three-site cluster (local, east, west) whose site `faulty` keeps its storage on a FaultyStorage. */
async function clusterWithFaulty(faulty: string): Promise<{ c: Cluster; storage: FaultyStorage }> {
  const dir = mkdtempSync(join(tmpdir(), 'geomirror-fault-'));
  faultDirs.push(dir);
  const storage = await FaultyStorage.start(dir, join(dir, `${faulty}.img`), volumeBytes);
  const c = await t.cluster({ volumeBytes, storage: (name) => (name === faulty ? `loopback:${storage.devicePath}` : `loopback:./${name}.img`) }, false);
  // The site's storage as a disk holds it: the image behind nbdkit.
  c.site(faulty).storagePath = storage.imagePath;
  await c.start();
  await c.waitInSync();
  return { c, storage };
}

interface Written {
  issued: PlannedWrite[];
  acked: Set<number>;
  errors: string[];
}

/**
 * Writes planned rounds of `roundBytes` at queue depth 4 until `stop()`: a write that fails ends
 * its connection's round, and the writer reconnects and goes on with the next round.
 */
async function steadyWriter(c: Cluster, seed: number, stop: () => boolean, roundBytes = 2 * MiB): Promise<Written> {
  const out: Written = { issued: [], acked: new Set(), errors: [] };
  for (let round = 0; !stop(); round++) {
    const plan = planWrites(seed + round, c.volumeBytes, roundBytes).map((w) => ({ ...w, index: w.index + round * 100_000 }));
    let w;
    try {
      w = await t.connectWhenUp(c.nbdPort, 5_000);
    } catch (err) {
      out.errors.push(`connect: ${(err as Error).message}`);
      await sleep(200);
      continue;
    }
    const errors = await w.run(plan, 4, { stop });
    out.issued.push(...w.issued);
    for (const i of w.acked) out.acked.add(i);
    out.errors.push(...errors.map((e) => e.message));
    w.close();
  }
  return out;
}

/** Every replica equals the volume as NBD serves it, which holds every acked write; the primary says in sync. */
async function expectConverged(c: Cluster, written: Written, deadline: number): Promise<void> {
  await c.waitInSync(Math.max(1_000, deadline - Date.now()));
  let last: Record<string, string> = {};
  for (;;) {
    await c.waitStatus('local', (s) => s.cache.entries === 0 && s.state === 'in-sync', 'in sync with an empty cache', Math.max(1_000, deadline - Date.now()));
    const image = await readVolume(c, c.nbdPort);
    expect(checkAckedWrites(image, written.issued, written.acked), 'the volume over NBD holds every acked write').toEqual([]);
    const want = sha256(image);
    last = Object.fromEntries(c.names.map((n) => [n, c.hash(n)]));
    if (Object.values(last).every((h) => h === want)) return;
    if (Date.now() > deadline) {
      expect(last, `replicas still differ at the deadline (${new Date(deadline).toISOString()})`).toEqual(Object.fromEntries(c.names.map((n) => [n, want])));
    }
    await sleep(500);
  }
}

describe.skipIf(faultyStorageUnavailable !== undefined)(`issue 16 item 4: 5 s of EPERM under a steady writer${faultyStorageUnavailable ? ` (skipped: ${faultyStorageUnavailable})` : ''}`, () => {
  for (const faulty of ['local', 'east']) {
    it(`on ${faulty === 'local' ? "the primary's" : "a mirror's"} storage: converged (hashes equal, in sync) within 30 s of the errors ending, logs of all sites under 1 MiB`, async () => {
      const { c, storage } = await clusterWithFaulty(faulty);
      await withLogs(c, async () => {
        let stopping = false;
        const writer = steadyWriter(c, 16_400 + (faulty === 'local' ? 0 : 50), () => stopping);
        await sleep(1_000);
        storage.fail();
        await sleep(errorWindowMs);
        storage.clear();
        const clearedAt = Date.now();
        await sleep(1_000);
        stopping = true;
        const written = await writer;
        console.log(`EPERM on ${faulty}: ${written.acked.size} of ${written.issued.length} writes acked, ${written.errors.length} error(s): ${written.errors.slice(0, 2).join(' | ')}`);
        expect(written.acked.size).toBeGreaterThan(0);
        await expectConverged(c, written, clearedAt + convergeMs);
        const bytes = logBytes(c);
        expect(bytes, `log volume of all sites: ${bytes} bytes`).toBeLessThan(logBytesMax);
        // The storage error was seen and reported, not silently absorbed.
        expect(c.logText(faulty)).toMatch(/EPERM|not permitted|storage/i);
      });
    }, testTimeoutMs);
  }
});

describe.skipIf(faultyStorageUnavailable !== undefined)(`issue 16 item 8: the primary's storage fails mid-stream${faultyStorageUnavailable ? ` (skipped: ${faultyStorageUnavailable})` : ''}`, () => {
  let c8: { c: Cluster; storage: FaultyStorage } | undefined;
  const all: PlannedWrite[] = [];
  const acked = new Set<number>();

  it('host writes are still acked (through the mirrors), NBD reads return every acked write, and after the storage returns all replicas hash equal', async () => {
    c8 = await clusterWithFaulty('local');
    const { c, storage } = c8;
    await withLogs(c, async () => {
      const writes = planWrites(16_500, c.volumeBytes, 12 * MiB);
      const third = Math.floor(writes.length / 3);
      const w = await t.connectWhenUp(c.nbdPort);
      // A third before the failure, the rest while the primary's storage fails every request.
      expect(await w.run(writes.slice(0, third), 8)).toEqual([]);
      storage.fail();
      expect(await w.run(writes.slice(third), 8), 'host writes while the primary storage fails').toEqual([]);
      expect(w.acked.size).toBe(writes.length);
      all.push(...writes);
      for (const i of w.acked) acked.add(i);
      const want = applyWrites(c.volumeBytes, writes);

      // Reads while the local copy fails: served by the mirrors, byte for byte.
      const image = await readVolume(c, c.nbdPort);
      expect(checkAckedWrites(image, writes, w.acked), 'NBD read-back while the primary storage fails').toEqual([]);
      expect(sha256(image)).toBe(sha256(want));
      expect(storage.failing).toBe(true);

      storage.clear();
      await expectConverged(c, { issued: writes, acked: w.acked, errors: [] }, Date.now() + repairWaitMs);
      expect(c.hash('local')).toBe(sha256(want));
    });
  }, testTimeoutMs);

  // Was a finding (main 07d5cc8): a host flush failed with EIO while the primary's storage
  // failed, although every write before it was acked through the mirrors; a host's file system
  // takes a failed flush as lost data (ext4 and XFS go read-only). Now, like DRBD's on-io-error
  // detach, the flush completes once a mirror flushed (the writes stay in the local journal until
  // the local storage flushes).
  it('a host flush while the primary storage fails completes (every mirror holds the writes before it); after the storage returns all replicas hash equal', async () => {
    expect(c8, 'needs the cluster of the test before').toBeDefined();
    const { c, storage } = c8!;
    await withLogs(c, async () => {
      const writes = planWrites(16_501, c.volumeBytes, 2 * MiB).map((w) => ({ ...w, index: w.index + 100_000 }));
      const w = await t.connectWhenUp(c.nbdPort);
      storage.fail();
      expect(await w.run(writes, 8), 'host writes while the primary storage fails').toEqual([]);
      all.push(...w.issued);
      for (const i of w.acked) acked.add(i);
      const flushed = await w.flush().then(() => 'ok', (err: Error) => err.message);
      storage.clear();
      await expectConverged(c, { issued: all, acked, errors: [] }, Date.now() + repairWaitMs);
      expect(flushed, 'a host flush while the primary storage fails').toBe('ok');
    });
  }, testTimeoutMs);
});

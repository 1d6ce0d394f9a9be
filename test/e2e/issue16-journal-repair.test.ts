// Issue 16 follow-up, multi-process, with the primary's storage on a real failing device (nbdkit's
// error filter behind nbdfuse, test/e2e/faulty-storage.ts): writes the primary's own storage
// failed are acked through the mirrors; then both mirrors and the primary die (kill -9), the
// storage answers again and only the primary comes back. Its journal kept the failed writes and
// recorded their regions journaled, so its own copy is made whole from the journal alone, with no
// mirror reachable: checked by the hash of its storage against every acked write. Before, the
// failed writes left the journal once acked, a restart forgot which blocks were right, and the
// copy waited for a mirror (which, had it also missed writes there, could not help: an acked write
// was lost; fan-out sim, 16 of 20000 seeds).
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { applyWrites, planWrites, sha256, sleep, type Cluster } from './harness.js';
import { MiB, Tracker, withLogs } from './acceptance.js';
import { closeAllFaultyStorage, FaultyStorage, faultyStorageUnavailable } from './faulty-storage.js';

const testTimeoutMs = 240_000;
const volumeBytes = 16 * MiB;
/** A bound on the waits below, generous for a loaded machine (not a timing check). */
const waitMs = 60_000;

const t = new Tracker();
const faultDirs: string[] = [];
afterAll(async () => {
  await t.destroy();
  await closeAllFaultyStorage();
  for (const d of faultDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Polls `pred` until it holds or `waitMs` passed; returns whether it held. */
async function eventually(pred: () => boolean): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (pred()) return true;
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
}

/** Whether a persisted bitmap file of the site has any bit set. */
function anyBitSet(path: string): boolean {
  return existsSync(path) && readFileSync(path).some((b) => b !== 0);
}

describe.skipIf(faultyStorageUnavailable !== undefined)(`issue 16: the primary repairs its own copy from its journal${faultyStorageUnavailable ? ` (skipped: ${faultyStorageUnavailable})` : ''}`, () => {
  it('writes its storage failed (acked through the mirrors), then kill -9 of every site: the primary alone, back with its storage answering, holds every acked write (no mirror reachable); then the mirrors rejoin and every replica hashes equal', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'geomirror-jrepair-'));
    faultDirs.push(dir);
    const storage = await FaultyStorage.start(dir, join(dir, 'local.img'), volumeBytes);
    const c: Cluster = await t.cluster({ volumeBytes, storage: (name) => (name === 'local' ? `loopback:${storage.devicePath}` : `loopback:./${name}.img`) }, false);
    c.site('local').storagePath = storage.imagePath;
    await c.start();
    await c.waitInSync();
    await withLogs(c, async () => {
      const before = planWrites(16_600, volumeBytes, 2 * MiB);
      const during = planWrites(16_601, volumeBytes, 1 * MiB).map((w) => ({ ...w, index: w.index + 100_000 }));
      const w = await t.connectWhenUp(c.nbdPort);
      expect(await w.run(before, 8)).toEqual([]);
      await w.flush();
      storage.fail();
      expect(await w.run(during, 8), 'host writes while the primary storage fails').toEqual([]);
      w.close();
      const want = sha256(applyWrites(applyWrites(volumeBytes, before), during));
      expect(c.hash('local'), 'the primary\'s copy lacks the failed writes').not.toBe(want);
      // The regions are recorded suspect and journaled (state files beside its cache).
      const state = join(c.dir, 'local.cache');
      expect(await eventually(() => anyBitSet(`${state}.dirty-@local`) && anyBitSet(`${state}.dirty-@journaled`)), 'suspect and journaled regions recorded').toBe(true);

      await c.kill9('east');
      await c.kill9('west');
      await c.kill9('local');
      storage.clear();
      await c.restart('local');
      // No mirror runs: only the journal can make the copy whole.
      const whole = await eventually(() => c.hash('local') === want);
      const records = c.logRecords('local');
      expect(whole, `the primary's copy holds every acked write with no mirror reachable; its log: ${records.filter((r) => /journal|repair|suspect|recovered/.test(String(r.event ?? r.msg))).map((r) => r.event ?? r.msg).join(', ')}`).toBe(true);
      expect(records.some((r) => r.event === 'local_regions_journaled'), 'the restart trusted the journaled regions').toBe(true);
      expect(records.some((r) => r.event === 'local_regions_unrecoverable')).toBe(false);

      await c.restart('east');
      await c.restart('west');
      await c.waitInSync(waitMs * 2);
      expect(await eventually(() => c.names.every((n) => c.hash(n) === want)), 'every replica holds every acked write').toBe(true);
    });
  }, testTimeoutMs);
});

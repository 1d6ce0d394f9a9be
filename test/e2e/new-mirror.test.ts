// A mirror new to a running volume (added to the cluster file, or its disk replaced) owes a full
// initial sync: the primary kept no dirty bitmap for it, so it must not count it as in sync
// holding nothing. Multi-process, bytes compared by whole-replica hashes.
import { rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Cluster, NbdWriter, planWrites } from './harness.js';

const MiB = 1024 * 1024;
let c: Cluster | undefined;
afterAll(async () => {
  await c?.destroy();
});

it('a mirror whose disk and state were replaced gets a full initial sync; all hashes equal', async () => {
  c = await Cluster.create({ volumeBytes: 32 * MiB });
  try {
    await c.start();
    await c.waitInSync();
    const w = await NbdWriter.connect(c.nbdPort);
    expect(await w.run(planWrites(4040, c.volumeBytes, 12 * MiB), 8)).toEqual([]);
    await w.flush();
    w.close();
    await c.stopAll();

    // west comes back as a blank site: new disk, empty cache, no state; local has no bitmap for it.
    const west = c.site('west');
    truncateSync(west.storagePath, 0);
    truncateSync(west.storagePath, c.volumeBytes);
    const cache = join(c.dir, 'west.cache');
    truncateSync(cache, 0);
    truncateSync(cache, 32 * MiB);
    rmSync(`${cache}.meta`, { force: true });
    rmSync(join(c.dir, 'local.cache.dirty-west'));
    expect(c.hash('west')).not.toBe(c.hash('local'));

    await c.start();
    await c.waitInSync();
    expect(c.logRecords('local').some((r) => r.event === 'new-mirror-full-sync' && r.peer === 'west')).toBe(true);
    expect(c.logRecords('local').some((r) => r.event === 'new-mirror-full-sync' && r.peer === 'east')).toBe(false);
    const want = c.hash('local');
    expect({ east: c.hash('east'), west: c.hash('west') }).toEqual({ east: want, west: want });
  } catch (err) {
    (err as Error).message += `\n${c.dumpLogs()}`;
    throw err;
  }
}, 240_000);

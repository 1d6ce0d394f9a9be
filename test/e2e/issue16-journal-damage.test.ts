// Issue 16 acceptance, item 3 ("A damaged journal entry silently drops everything after it"),
// multi-process. A site is stopped with kill -9 while its cache journal holds acknowledged
// entries, one byte in the middle of an entry in the middle of the journal is flipped (never the
// last entry: that would be a torn tail), and the site is restarted:
//  - at a `relay-ack: cached` relay (no copy of its own) whose downstream was cut off, so the
//    host-acked writes lived only in its journal and at the primary: the far mirror must end with
//    every host-acked write (sha256 of its image against the image the writes produce);
//  - at a primary whose kill came mid-stream, with that write's range on the primary's storage
//    zeroed too (the write had not reached its storage): the mirrors hold every host-acked write,
//    the primary's copy is repaired from them, all replicas hash equal.
// Either site's log names the lost range (`cache-damage`).
import { join } from 'node:path';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CascadeCluster } from './cascade-harness.js';
import { applyWrites, checkAckedWrites, NbdWriter, planWrites, sha256, sleep, type Cluster } from './harness.js';
import { diffRanges, flipMiddleEntry, MiB, readVolume, Tracker, waitLog, withLogs } from './acceptance.js';

const testTimeoutMs = 300_000;
const t = new Tracker();
let cascade: CascadeCluster | undefined;
let cascadeWriter: NbdWriter | undefined;
afterEach(async () => {
  t.closeWriters();
  cascadeWriter?.close();
  cascadeWriter = undefined;
  if (cascade !== undefined) {
    await cascade.destroy();
    cascade = undefined;
  }
});
afterAll(() => t.destroy());

/** JSON log records of a cascade site. */
function records(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      /* cut by kill -9 */
    }
  }
  return out;
}

function damageRanges(recs: Record<string, unknown>[]): string[] {
  return recs.filter((r) => r.event === 'cache-damage').flatMap((r) => (Array.isArray(r.ranges) ? r.ranges.map(String) : []));
}

describe('issue 16 item 3: a byte flipped in the middle of a journal', () => {
  // Was a finding (fails on main 4b20555, 07d5cc8 and 1449235): a relay without a copy ignored
  // the journal's lost ranges (src/core/relay.ts called startSuspect only with storage): they
  // were named in no join, the primary never resynced them through the relay and showed r1 in
  // sync while remote kept its old bytes where the lost write was not overwritten later (seen:
  // 1519616+73728, zeroes where write #10 belongs). Now the relay records them suspect with or
  // without a copy, names them at every join, and clears them once the downstream acked the
  // resync data covering them.
  it("at a cached relay whose downstream was cut: after its restart the far mirror holds every host-acked write (hash), and the relay's log names the lost range", async () => {
    cascade = await CascadeCluster.create({
      sites: [
        { name: 'local', role: 'primary', mirrors: ['r1'] },
        { name: 'r1', role: 'relay', forward: 'remote', relayAck: 'cached' },
        { name: 'remote', role: 'mirror' },
      ],
      volumeBytes: 16 * MiB,
      hopLatencyMs: 0,
    });
    const c = cascade;
    try {
      await c.start();
      await c.waitLinked();
      cascadeWriter = await NbdWriter.connect(c.nbdPort);

      // The far mirror is cut off: the relay acks from its cache and holds every write.
      c.proxy('remote').partition();
      const writes = planWrites(16_301, c.volumeBytes, 4 * MiB);
      expect(await cascadeWriter.run(writes, 8)).toEqual([]);
      expect(cascadeWriter.acked.size).toBe(writes.length);
      const r1 = await c.waitStatus('r1', (s) => s.cache.entries === writes.length, 'r1 holds every write in its cache');
      expect(r1.cache.entries).toBe(writes.length);

      await c.kill9('r1');
      const flipped = await flipMiddleEntry(join(c.dir, 'r1.cache'));
      expect(flipped, `r1's journal holds ${writes.length} acked entries; one in the middle can be damaged`).toBeDefined();
      await c.restart('r1');
      c.proxy('remote').heal();
      // The relay names the lost ranges when it rejoins and the primary resyncs them through it;
      // until then the primary's status may still show r1 in sync (its link was down only for
      // the restart), so wait for the resync's end before the drain.
      const resyncDeadline = Date.now() + 120_000;
      while (!records(c.logText('local')).some((r) => r.event === 'mirror_in_sync' && r.peer === 'r1')) {
        if (Date.now() > resyncDeadline) throw new Error('local logged no mirror_in_sync for r1 within 120000 ms');
        await sleep(50);
      }
      await c.waitDrained(120_000);

      const image = applyWrites(c.volumeBytes, writes);
      const want = sha256(image);
      const remote = readFileSync(c.proc('remote').storagePath!);
      expect(diffRanges(remote, image), `remote differs from the acked writes (the flipped entry was ${flipped!.offsetBytes}+${flipped!.lengthBytes}, entry ${flipped!.index + 1} of ${flipped!.entries})`).toEqual([]);
      expect({ remote: sha256(remote), local: c.hash('local') }).toEqual({ remote: want, local: want });
      expect(damageRanges(records(c.logText('r1')))).toContain(`${flipped!.offsetBytes}+${flipped!.lengthBytes}`);
    } catch (err) {
      (err as Error).message += `\n${c.dumpLogs()}`;
      throw err;
    }
  }, testTimeoutMs);

  it("at a primary killed mid-stream (the damaged write's range zeroed on its storage): the mirrors hold every host-acked write, the primary's copy is repaired, all replicas hash equal, its log names the lost range", async () => {
    const c: Cluster = await t.cluster({ volumeBytes: 16 * MiB });
    await withLogs(c, async () => {
      // Kill -9 mid-stream until the journal holds an acknowledged entry in its middle (the
      // head is persisted lazily, so a running primary's journal holds the last few dozen).
      const attemptsMax = 5;
      const issued: NbdWriter['issued'] = [];
      const acked = new Set<number>();
      let flipped: Awaited<ReturnType<typeof flipMiddleEntry>>;
      for (let attempt = 0; attempt < attemptsMax && flipped === undefined; attempt++) {
        if (attempt > 0) {
          await c.restart('local');
          await c.waitInSync();
        }
        const writes = planWrites(16_310 + attempt, c.volumeBytes, 8 * MiB).map((w) => ({ ...w, index: w.index + attempt * 100_000 }));
        const w = await t.connectWhenUp(c.nbdPort);
        await w.run(writes, 16, {
          afterAck: async (_w, n) => {
            if (n === Math.floor(writes.length / 2)) await c.kill9('local');
          },
        });
        issued.push(...w.issued);
        for (const i of w.acked) acked.add(i);
        flipped = await flipMiddleEntry(join(c.dir, 'local.cache'));
      }
      expect(flipped, `no kill of ${attemptsMax} left an acknowledged entry in the middle of local's journal`).toBeDefined();
      const f = flipped!;
      // The write had not reached the primary's storage.
      const fd = openSync(c.site('local').storagePath, 'r+');
      writeSync(fd, Buffer.alloc(f.lengthBytes), 0, f.lengthBytes, f.offsetBytes);
      closeSync(fd);

      await c.restart('local');
      const damage = await waitLog(c, 'local', (r) => r.event === 'cache-damage', 'cache-damage');
      expect((damage.ranges as string[]).map(String)).toContain(`${f.offsetBytes}+${f.lengthBytes}`);
      await waitLog(c, 'local', (r) => r.event === 'local_copy_repaired', 'local_copy_repaired (its suspect regions read back from the mirrors)', 120_000);
      await c.waitInSync(120_000);

      // Every host-acked write is on each mirror and on the primary; the replicas are equal.
      for (const m of ['east', 'west', 'local']) expect(checkAckedWrites(c.storage(m), issued, acked), `${m} holds every acked write`).toEqual([]);
      const image = await readVolume(c, c.nbdPort);
      expect(checkAckedWrites(image, issued, acked), 'the volume over NBD').toEqual([]);
      const want = sha256(image);
      // Settled: the copies stop changing once every mirror is in sync and the cache drained.
      await c.waitStatus('local', (s) => s.cache.entries === 0, 'local cache drained');
      await sleep(200);
      expect({ local: c.hash('local'), east: c.hash('east'), west: c.hash('west') }).toEqual({ local: want, east: want, west: want });
    });
  }, testTimeoutMs);
});

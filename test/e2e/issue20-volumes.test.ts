// Issue 20 acceptance, multi-process on loopback: 8 volumes in 2 consistency groups over a
// primary (`local`), a standby (`backup`) and 2 mirrors (`east`, `west`), each site one
// `geomirror site` process. A writer per volume over NBD; kill -9 of the primary mid-stream;
// after the promotion every acked write of every volume reads back from the promoted site (with
// the real nbdcopy), and each group's cut is consistent: a workload writes sequence-numbered
// records alternately to two volumes of a group, one record after the other was acked, and the
// records present on the two volumes after the failover are a prefix of that order.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import type { SiteStatus } from '../../src/site/status.js';
import { checkAckedWrites, Cluster, NbdWriter, planWrites, sha256, sleep, waitMsMax, type PlannedWrite } from './harness.js';
import { cli, withLogs } from './acceptance.js';
import { haveEtcd, TestEtcd } from './etcd.js';
import { openSync, writeSync, closeSync } from 'node:fs';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const volumeBytes = 8 * MiB;
const recordMagic = 0x47524543; // "GREC"

/** Two groups of four volumes: in each, v0/v1 take the records, v2/v3 random writes. */
const groups = ['ga', 'gb'];
const volumes = groups.flatMap((g) => [0, 1, 2, 3].map((i) => ({ name: `${g}${i}`, sizeBytes: volumeBytes, group: g })));

const clusters: Cluster[] = [];
const writers: NbdWriter[] = [];
afterAll(async () => {
  for (const w of writers.splice(0)) w.close();
  for (const c of clusters.splice(0)) await c.destroy();
});

/** Record k of a group: block k/2 of volume v(k%2), carrying k and bytes derived from it. */
function record(k: number): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt32LE(recordMagic, 0);
  b.writeUInt32LE(k, 4);
  for (let i = 8; i < b.length; i += 4) b.writeUInt32LE((Math.imul(k + 1, 2654435761) ^ i) >>> 0, i);
  return b;
}

/** The records found on a group's two record volumes, as a sorted list of k (a wrong or torn block is reported). */
function recordsPresent(v0: Buffer, v1: Buffer, upTo: number): { present: number[]; bad: string[] } {
  const present: number[] = [];
  const bad: string[] = [];
  for (let k = 0; k < upTo; k++) {
    const img = k % 2 === 0 ? v0 : v1;
    const at = Math.floor(k / 2) * 4096;
    const block = img.subarray(at, at + 4096);
    if (block.every((x) => x === 0)) continue;
    if (!block.equals(record(k))) bad.push(`record ${k}: block ${at / 4096} of ${k % 2 === 0 ? 'v0' : 'v1'} holds something else`);
    else present.push(k);
  }
  return { present, bad };
}

/** Every consistency group's status at a site (a single-group site reports itself). */
function groupStatuses(s: SiteStatus): SiteStatus[] {
  return s.groups?.map((g) => g.status) ?? [s];
}

async function readExport(c: Cluster, port: number, name: string): Promise<Buffer> {
  const out = join(c.dir, `readback-${port}-${name}-${Date.now()}.img`);
  await run('nbdcopy', [`nbd://127.0.0.1:${port}/${name}`, out], { timeout: waitMsMax });
  return readFileSync(out);
}

async function connectWhenUp(port: number, name: string, timeoutMs = waitMsMax): Promise<NbdWriter> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const w = await NbdWriter.connect(port, name);
      writers.push(w);
      return w;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`no NBD export ${name} on 127.0.0.1:${port} within ${timeoutMs} ms: ${(err as Error).message}`);
      await sleep(50);
    }
  }
}

/** 1 MiB of seeded writes to each volume through the primary's export, one after the other; the writers, by volume. */
async function writeEach(c: Cluster, vols: readonly { name: string; sizeBytes: number }[], seed: number): Promise<Map<string, NbdWriter>> {
  const ws = new Map<string, NbdWriter>();
  for (const v of vols) {
    const w = await connectWhenUp(c.nbdPort, v.name);
    ws.set(v.name, w);
    for (const p of planWrites(seed, v.sizeBytes, MiB)) await w.write(p);
  }
  return ws;
}

describe('issue 20: 8 volumes in 2 consistency groups, primary + standby + 2 mirrors, one process per site', () => {
  it('lists every volume as its own export; after kill -9 of the primary mid-stream every acked write of every volume reads back and each group cut is a prefix of the record order', async () => {
    const c = await Cluster.create({ volumes, volumeBytes, cacheBytes: 64 * MiB, standby: 'backup', failoverTimeoutMs: 1500 });
    clusters.push(c);
    await withLogs(c, async () => {
      await c.start();
      await c.waitStatus('local', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.state === 'in-sync' && g.peers.length === 3 && g.peers.every((p) => p.sync === 'in-sync' && p.link === 'up')), 'every group in sync with all three targets');
      // Each site is one process: one pid per site, whatever the number of volumes.
      const pids = new Set((await Promise.all(c.names.map((n) => c.status(n)))).map((s) => s!.pid));
      expect(pids.size).toBe(c.names.length);

      // The real nbdinfo lists one export per volume.
      const { stdout } = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${c.nbdPort}`], { timeout: waitMsMax });
      const listed = [...stdout.matchAll(/export="([^"]+)"/g)].map((m) => m[1]).sort();
      expect(listed).toEqual(volumes.map((v) => v.name).sort());

      // Random writers on v2/v3 of each group (4 writers), record writers on v0/v1 (one per group).
      const randomVols = volumes.filter((v) => v.name.endsWith('2') || v.name.endsWith('3'));
      const plans = new Map<string, PlannedWrite[]>(randomVols.map((v, i) => [v.name, planWrites(2000 + i, volumeBytes, 24 * MiB)]));
      const randomWriters = new Map<string, NbdWriter>();
      for (const v of randomVols) randomWriters.set(v.name, await connectWhenUp(c.nbdPort, v.name));
      const recordWriters = new Map<string, [NbdWriter, NbdWriter]>();
      for (const g of groups) recordWriters.set(g, [await connectWhenUp(c.nbdPort, `${g}0`), await connectWhenUp(c.nbdPort, `${g}1`)]);

      let killed = false;
      const recordsAcked = new Map<string, number>(groups.map((g) => [g, 0]));
      const recordsIssued = new Map<string, number>(groups.map((g) => [g, 0]));
      const recordLoop = async (g: string): Promise<void> => {
        const [w0, w1] = recordWriters.get(g)!;
        for (let k = 0; k < 2 * (volumeBytes / 4096) && !killed; k++) {
          recordsIssued.set(g, k + 1);
          try {
            await (k % 2 === 0 ? w0 : w1).write({ index: k, offsetBytes: Math.floor(k / 2) * 4096, data: record(k) });
          } catch {
            return; // the primary died with this record in flight
          }
          recordsAcked.set(g, k + 1);
        }
      };
      const randomRuns = [...randomWriters].map(([name, w]) => w.run(plans.get(name)!, 4, { stop: () => killed }));
      const recordRuns = groups.map((g) => recordLoop(g));

      // Kill the primary once every stream has made progress.
      const t0 = Date.now();
      while ([...recordsAcked.values()].some((n) => n < 200) || [...randomWriters.values()].some((w) => w.acked.size < 40)) {
        if (Date.now() - t0 > waitMsMax) throw new Error(`writers made too little progress: records ${JSON.stringify([...recordsAcked])}, random ${[...randomWriters].map(([n, w]) => `${n}=${w.acked.size}`).join(' ')}`);
        await sleep(20);
      }
      await c.kill9('local');
      killed = true;
      await Promise.all([...randomRuns, ...recordRuns]);

      // Every group of the standby promotes.
      await c.waitStatus('backup', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.standby?.phase === 'primary'), 'every group promoted');

      // Every acked write of every volume reads back from the promoted site.
      for (const v of randomVols) {
        const w = randomWriters.get(v.name)!;
        const img = await readExport(c, c.standbyNbdPort, v.name);
        expect(checkAckedWrites(img, w.issued, w.acked), `volume ${v.name}: acked writes read back`).toEqual([]);
      }
      // Each group's cut: every acked record present, and the records present are a prefix.
      for (const g of groups) {
        const v0 = await readExport(c, c.standbyNbdPort, `${g}0`);
        const v1 = await readExport(c, c.standbyNbdPort, `${g}1`);
        const { present, bad } = recordsPresent(v0, v1, recordsIssued.get(g)! + 1);
        expect(bad, `group ${g}: record blocks hold only records`).toEqual([]);
        expect(present.length, `group ${g}: every acked record (${recordsAcked.get(g)}) present`).toBeGreaterThanOrEqual(recordsAcked.get(g)!);
        expect(present, `group ${g}: the records present are a prefix of the record order`).toEqual(present.map((_, i) => i));
      }

      // The promoted site keeps both mirrors in sync in every group; their copies then equal its own, volume by volume.
      await c.waitStatus('backup', (s) => groupStatuses(s).every((g) => ['east', 'west'].every((m) => g.peers.some((p) => p.name === m && p.sync === 'in-sync' && p.link === 'up')) && g.cache.entries === 0), 'both mirrors in sync in every group');
      for (const n of ['east', 'west']) await c.waitStatus(n, (s) => groupStatuses(s).every((g) => g.cache.entries === 0), `${n} drained`);
      for (const v of volumes) {
        const hashes = ['backup', 'east', 'west'].map((n) => sha256(readFileSync(c.volumePath(n, v.name))));
        expect(new Set(hashes).size, `volume ${v.name}: backup, east and west hold the same bytes`).toBe(1);
      }
    });
  }, 300_000);

  it('geomirror status prints a table per group, and geomirror verify compares every group and names the volume a damaged replica differs in', async () => {
    const vols = [{ name: 'log', sizeBytes: 4 * MiB, group: 'db' }, { name: 'data', sizeBytes: 8 * MiB, group: 'db' }, { name: 'vm', sizeBytes: 4 * MiB }];
    const c = await Cluster.create({ volumes: vols, volumeBytes: 4 * MiB, cacheBytes: 32 * MiB });
    clusters.push(c);
    await withLogs(c, async () => {
      await c.start();
      await c.waitStatus('local', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.peers.length === 2 && g.peers.every((p) => p.sync === 'in-sync' && p.link === 'up')), 'every group in sync');
      for (const v of vols) {
        const w = await connectWhenUp(c.nbdPort, v.name);
        for (const p of planWrites(7, v.sizeBytes, MiB)) await w.write(p);
        await w.flush();
      }
      await c.waitStatus('local', (s) => groupStatuses(s).every((g) => g.cache.entries === 0), 'primary drained');
      const status = await cli(c, ['status']);
      expect(status.out).toMatch(/group db \(log 4 MiB, data 8 MiB\)\nSITE/);
      expect(status.out).toMatch(/group vm \(vm 4 MiB\)\nSITE/);
      const agree = await cli(c, ['verify', '--region-size', '64KiB']);
      expect(agree.out).toContain('group db: all 3 replicas agree');
      expect(agree.out).toContain('group vm: all 3 replicas agree');
      expect(agree.code).toBe(0);
      // One flipped byte in west's copy of 'data', 3 MiB into it: verify names the volume and the range in it.
      await c.stop('west');
      const fd = openSync(c.volumePath('west', 'data'), 'r+');
      writeSync(fd, Buffer.from([0x5a]), 0, 1, 3 * MiB + 17);
      closeSync(fd);
      await c.restart('west');
      const differ = await cli(c, ['verify', '--region-size', '64KiB']);
      expect(differ.code).toBe(1);
      expect(differ.out).toMatch(/volume data: mismatch bytes 3145728-3211263 \(64 KiB, 1 region\): west differs from local, east/);
      expect(differ.out).toContain('group vm: all 3 replicas agree');
    });
  }, 300_000);

  it('a witness answers for every consistency group: with primary, standby and witness only, kill -9 of the primary promotes every group and the acked writes read back', async () => {
    const vols = [{ name: 'a', sizeBytes: 4 * MiB, group: 'g1' }, { name: 'b', sizeBytes: 4 * MiB, group: 'g1' }, { name: 'c', sizeBytes: 4 * MiB }];
    const c = await Cluster.create({ volumes: vols, volumeBytes: 4 * MiB, cacheBytes: 32 * MiB, mirrors: [], standby: 'backup', witness: 'wit', failoverTimeoutMs: 1500 });
    clusters.push(c);
    await withLogs(c, async () => {
      await c.start();
      await c.waitStatus('local', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.peers.some((p) => p.name === 'backup' && p.sync === 'in-sync' && p.link === 'up')), 'backup in sync in every group');
      await c.waitStatus('wit', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.peers.some((p) => p.name === 'local' && p.link === 'up')), 'the witness hears the primary in every group');
      const ws = await writeEach(c, vols, 11);
      await c.kill9('local');
      await c.waitStatus('backup', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.standby?.phase === 'primary'), 'every group promoted with the witness vote');
      // Each group's promotion counted the witness's answer (2 of 3 sites: backup and wit).
      const promoted = c.logRecords('backup').filter((r) => r.event === 'promoted' && typeof r.reason === 'string');
      expect(new Set(promoted.map((r) => r.group))).toEqual(new Set(['g1', 'c']));
      for (const r of promoted) expect(r.reason).toMatch(/2 of 3 sites cannot reach it \(backup, wit\)/);
      for (const v of vols) {
        const w = ws.get(v.name)!;
        const img = await readExport(c, c.standbyNbdPort, v.name);
        expect(checkAckedWrites(img, w.issued, w.acked), `volume ${v.name}`).toEqual([]);
      }
    });
  }, 300_000);

  it('with etcd as the coordinator each consistency group has its own key: kill -9 of the primary, the standby wins every group\'s key (epoch 2 in etcd for each), every acked write reads back', async () => {
    if (!haveEtcd()) throw new Error('this test needs etcd and etcdctl: apt-get install etcd-server etcd-client');
    const etcd = await TestEtcd.start();
    try {
      const vols = [{ name: 'a', sizeBytes: 4 * MiB, group: 'g1' }, { name: 'b', sizeBytes: 4 * MiB, group: 'g1' }, { name: 'c', sizeBytes: 4 * MiB }];
      const c = await Cluster.create({ volumes: vols, volumeBytes: 4 * MiB, cacheBytes: 32 * MiB, mirrors: ['east'], standby: 'backup', failoverTimeoutMs: 1500, coordinator: { endpoints: [etcd.endpoint], leaseTtl: '2s' } });
      clusters.push(c);
      await withLogs(c, async () => {
        await c.start();
        await c.waitStatus('local', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.coordinator?.authority === 'held'), 'local holds every group key');
        await c.waitStatus('backup', (s) => groupStatuses(s).every((g) => g.standby?.inSync === true && g.coordinator?.lease === 'held'), 'backup in sync and campaigning in every group');
        for (const g of ['g1', 'c']) expect(JSON.parse(etcd.get(`/geomirror/e2e/${g}/primary`)!)).toMatchObject({ site: 'local', epoch: '1' });
        const ws = await writeEach(c, vols, 13);
        await c.kill9('local');
        await c.waitStatus('backup', (s) => groupStatuses(s).length === 2 && groupStatuses(s).every((g) => g.standby?.phase === 'primary'), 'every group promoted after winning its key');
        for (const g of ['g1', 'c']) {
          expect(JSON.parse(etcd.get(`/geomirror/e2e/${g}/primary`)!)).toMatchObject({ site: 'backup', epoch: '2' });
          expect(etcd.get(`/geomirror/e2e/${g}/epoch`)).toBe('2');
        }
        for (const v of vols) {
          const w = ws.get(v.name)!;
          expect(checkAckedWrites(await readExport(c, c.standbyNbdPort, v.name), w.issued, w.acked), `volume ${v.name}`).toEqual([]);
        }
      });
    } finally {
      await etcd.destroy();
    }
  }, 300_000);
});

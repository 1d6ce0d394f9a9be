// Issue 20 item 3 acceptance: etcd as the failover coordinator, with a real etcd (Debian's
// etcd-server, on 127.0.0.1 with free ports and a temp data dir) and every site its own process:
// primary `local`, standby `backup`, mirrors `east` and `west`, lease TTL 2 s.
//   1. kill -9 the primary: the standby promotes after winning the key (the etcd revision is in
//      its failover record and log), every acked write reads back, replicas hash equal.
//   2. the primary cut off from etcd only (its etcd traffic goes through a proxy the test cuts;
//      its mirrors still reach it): it stops acking host writes before the standby can win,
//      within the lease TTL, the standby takes over, every acked write is there.
//   3. etcd killed: no promotion, the primary keeps serving and its log says why; etcd started
//      again on the same data dir: the lease is held again (status says so). Then a planned
//      switchover: promote is refused (winning the key is the only way), demote releases the
//      key and the standby wins it at once.
// Checks are on bytes and on the order of events; the one timing relation is the issue's
// ("within the lease TTL"), with a margin.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkAckedWrites, sha256, sleep, waitMsMax, type Cluster, type PlannedWrite } from './harness.js';
import { MiB, peer, phaseWrites, readVolume, Tracker, withLogs } from './acceptance.js';
import { haveEtcd, TestEtcd } from './etcd.js';
import { WanProxy } from '../wanem/proxy.js';

const testTimeoutMs = 180_000;
const run = promisify(execFile);

/** Runs the real CLI against the cluster's file; resolves with its exit code and output. */
function cli(c: Cluster, args: string[]): Promise<{ code: number; out: string }> {
  return run(process.execPath, [join(import.meta.dirname, '../../bin/geomirror.mjs'), ...args, '--config', c.configPath], { timeout: waitMsMax }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );
}
const leaseTtlMs = 2000;
const key = '/geomirror/e2e/vol0';

const t = new Tracker();
const etcds: TestEtcd[] = [];
const proxies: WanProxy[] = [];
afterEach(() => t.closeWriters());
afterAll(async () => {
  await t.destroy();
  for (const e of etcds.splice(0)) await e.destroy();
  for (const p of proxies.splice(0)) await p.close();
});

beforeAll(() => {
  if (!haveEtcd()) throw new Error('these tests need etcd and etcdctl: apt-get install etcd-server etcd-client');
});

async function startEtcd(): Promise<TestEtcd> {
  const e = await TestEtcd.start();
  etcds.push(e);
  return e;
}

/** The cluster with etcd as its arbiter; `local` reaches etcd at `localEndpoint` if given. */
async function coordinated(etcd: TestEtcd, localEndpoint?: string): Promise<Cluster> {
  const c = await t.cluster({ standby: 'backup', coordinator: { endpoints: [etcd.endpoint], leaseTtl: `${leaseTtlMs / 1000}s`, ...(localEndpoint ? { siteEndpoints: { local: [localEndpoint] } } : {}) } });
  await withLogs(c, async () => {
    const local = await c.waitStatus('local', (s) => s.coordinator?.authority === 'held' && s.coordinator.lease === 'held', 'local holds the group key in etcd');
    expect(local.coordinator).toMatchObject({ mode: 'holder', key: `${key}/primary`, holder: 'local', epoch: 1, reachable: true });
    await c.waitStatus('backup', (s) => s.standby?.inSync === true && s.coordinator?.mode === 'candidate' && s.coordinator.lease === 'held', 'backup: in sync, campaigning with a lease of its own');
  });
  expect(JSON.parse(etcd.get(`${key}/primary`)!)).toMatchObject({ site: 'local', epoch: '1' });
  expect(etcd.get(`${key}/epoch`)).toBe('1');
  return c;
}

/** Timestamp (ms) of the first JSON log line of `site` with this event, after `afterMs`. */
function eventAt(c: Cluster, site: string, event: string, afterMs = 0): { time: number; rec: Record<string, unknown> } | undefined {
  for (const r of c.logRecords(site)) {
    const time = timeOf(r);
    if (r.event === event && time >= afterMs) return { time, rec: r };
  }
  return undefined;
}

/** A log record's time in ms (pino writes ISO 8601). */
function timeOf(r: Record<string, unknown>): number {
  return typeof r.time === 'number' ? r.time : typeof r.time === 'string' ? Date.parse(r.time) : NaN;
}

/** Every replica the test names holds the same image, and it holds every acked write. */
async function expectConverged(c: Cluster, port: number, issued: PlannedWrite[], acked: Set<number>, sites: string[]): Promise<void> {
  const image = await readVolume(c, port);
  expect(checkAckedWrites(image, issued, acked)).toEqual([]);
  const want = sha256(image);
  expect(Object.fromEntries(sites.map((n) => [n, c.hash(n)]))).toEqual(Object.fromEntries(sites.map((n) => [n, want])));
}

describe('etcd as the failover coordinator (issue 20 item 3)', () => {
  it('kill -9 of the primary: the standby promotes after winning the key (its etcd revision in the record), every acked write reads back, replicas are identical', async () => {
    const etcd = await startEtcd();
    const c = await coordinated(etcd);
    await withLogs(c, async () => {
      const writes = phaseWrites(2000, 0, c, 12 * MiB);
      const w1 = await t.connectWhenUp(c.nbdPort);
      const errors = await w1.run(writes, 8, {
        afterAck: async (_w, n) => {
          if (n === Math.floor(writes.length / 3)) await c.kill9('local');
        },
      });
      expect(errors.length).toBeGreaterThan(0);
      const promoted = await c.waitStatus('backup', (s) => s.role === 'primary', 'backup promoted');
      expect(promoted.epoch).toBe(2);
      const rec = promoted.failovers?.find((f) => f.kind === 'promoted');
      expect(rec).toMatchObject({ site: 'backup', fromEpoch: 1, toEpoch: 2, revision: expect.stringMatching(/^\d+$/) });
      expect(rec!.reason).toMatch(new RegExp(`won the coordinator's primary key for epoch 2 at etcd revision ${rec!.revision}`));
      // The log says the same revision, and etcd holds the new epoch and holder.
      expect(eventAt(c, 'backup', 'coordinator-won')?.rec).toMatchObject({ epoch: 2, revision: rec!.revision });
      expect(eventAt(c, 'backup', 'promoted')?.rec).toMatchObject({ revision: rec!.revision });
      expect(etcd.get(`${key}/epoch`)).toBe('2');
      expect(JSON.parse(etcd.get(`${key}/primary`)!)).toMatchObject({ site: 'backup', epoch: '2' });
      const st = await c.waitStatus('backup', (s) => s.coordinator?.mode === 'holder' && s.coordinator.authority === 'held', 'backup holds the key');
      expect(st.coordinator).toMatchObject({ holder: 'backup', epoch: 2, lease: 'held', revision: rec!.revision });
      expect(await c.metricsText('backup')).toMatch(/^geomirror_coordinator_lease_held\{[^}]*\} 1$/m);

      const w2 = await t.connectWhenUp(c.standbyNbdPort);
      expect(await w2.run(writes.slice(w1.issued.length), 8)).toEqual([]);
      await w2.flush();
      const issued = [...w1.issued, ...w2.issued];
      const acked = new Set([...w1.acked, ...w2.acked]);
      await c.waitStatus('backup', (s) => ['east', 'west'].every((n) => peer(s, n)?.sync === 'in-sync' && peer(s, n)?.link === 'up'), 'east and west in sync');
      await expectConverged(c, c.standbyNbdPort, issued, acked, ['backup', 'east', 'west']);
    });
  }, testTimeoutMs);

  it('the primary cut off from etcd only (its mirrors still reach it): it stops acking within the lease TTL, before the standby wins; the standby takes over; every acked write is there', async () => {
    const etcd = await startEtcd();
    const proxy = await WanProxy.start({ targetHost: '127.0.0.1', targetPort: etcd.clientPort });
    proxies.push(proxy);
    const c = await coordinated(etcd, `http://127.0.0.1:${proxy.port}`);
    await withLogs(c, async () => {
      const writes = phaseWrites(2100, 0, c, 48 * MiB);
      const w1 = await t.connectWhenUp(c.nbdPort);
      const ackTimes: number[] = [];
      let cutAtMs = 0;
      const run1 = w1.run(writes, 4, {
        afterAck: async (_w, n) => {
          ackTimes.push(Date.now());
          if (n === 40) {
            cutAtMs = Date.now();
            proxy.partition();
          }
          // After the cut, at most 4 writes per 100 ms: the ~190 writes left must still be
          // flowing when the lease lapses (up to one TTL after the cut), so some are held. At full
          // speed the writer can finish them all within the TTL (it did once the write path got
          // faster, issue 18), and then nothing is held to be failed.
          if (cutAtMs > 0) await sleep(100);
        },
      });
      const promoted = await c.waitStatus('backup', (s) => s.role === 'primary', 'backup promoted');
      expect(cutAtMs).toBeGreaterThan(0);
      const lost = eventAt(c, 'local', 'coordinator-authority-lost', cutAtMs);
      const won = eventAt(c, 'backup', 'coordinator-won', cutAtMs);
      expect(lost, 'local logs that it holds host writes').toBeDefined();
      expect(won).toBeDefined();
      // The order the timing argument promises, and the bound (the TTL counts from the
      // last keepalive before the cut, so the stop comes within one TTL of the cut).
      expect(lost!.time).toBeLessThan(won!.time);
      expect(lost!.time - cutAtMs).toBeLessThanOrEqual(leaseTtlMs);
      expect(String(lost!.rec.why)).toMatch(/lapsed/);
      // Its mirrors still reached it when it stopped: no link of local went down before that.
      expect(c.logRecords('local').filter((r) => r.event === 'link-down' && timeOf(r) >= cutAtMs && timeOf(r) < lost!.time)).toEqual([]);
      // No host write was acked by local after it stopped acking (allow the ack already on its way).
      expect(ackTimes.filter((at) => at > lost!.time + 250)).toEqual([]);
      expect(promoted.failovers?.find((f) => f.kind === 'promoted')).toMatchObject({ fromEpoch: 1, toEpoch: 2, revision: String(won!.rec.revision) });
      // The held writes fail once local learns epoch 2 (fenced), never succeed.
      const errors1 = await run1;
      expect(errors1.length).toBeGreaterThan(0);
      await c.waitStatus('local', (s) => s.role === 'standby' && s.epoch === 2, 'local follows backup as its standby');

      const w2 = await t.connectWhenUp(c.standbyNbdPort);
      const rest = writes.slice(w1.issued.length, w1.issued.length + 200);
      expect(await w2.run(rest, 8)).toEqual([]);
      await w2.flush();
      const issued = [...w1.issued, ...w2.issued];
      const acked = new Set([...w1.acked, ...w2.acked]);
      await c.waitStatus('backup', (s) => ['east', 'west'].every((n) => peer(s, n)?.sync === 'in-sync' && peer(s, n)?.link === 'up'), 'east and west in sync');
      await expectConverged(c, c.standbyNbdPort, issued, acked, ['backup', 'east', 'west']);
      proxy.heal();
    });
  }, testTimeoutMs);

  it('etcd killed: no promotion, the primary keeps serving host writes and says why; etcd back on the same data dir: the lease is held again', async () => {
    const etcd = await startEtcd();
    const c = await coordinated(etcd);
    await withLogs(c, async () => {
      const w = await t.connectWhenUp(c.nbdPort);
      const before = phaseWrites(2200, 0, c, 4 * MiB);
      expect(await w.run(before, 8)).toEqual([]);

      const killedAtMs = Date.now();
      await etcd.kill();
      // Write for well past the lease TTL while etcd is down: every write is acked.
      const during: PlannedWrite[] = [];
      for (let k = 1; Date.now() - killedAtMs < 4 * leaseTtlMs; k++) {
        const batch = phaseWrites(2200, k, c, 512 * 1024);
        expect(await w.run(batch, 4)).toEqual([]);
        during.push(...batch);
        await sleep(200);
      }
      const exempt = eventAt(c, 'local', 'coordinator-authority-exempt', killedAtMs);
      expect(exempt, 'local says why it serves without a lease').toBeDefined();
      expect(String(exempt!.rec.why)).toMatch(/etcd is unreachable from here and from the standby too .*nobody can win the key, so no promotion can happen; serving on/);
      const local = await c.status('local');
      expect(local?.coordinator).toMatchObject({ authority: 'exempt', reachable: false });
      const backup = await c.status('backup');
      expect(backup).toMatchObject({ role: 'standby', epoch: 1 });
      expect(backup?.coordinator?.reachable).toBe(false);

      await etcd.restart();
      const back = await c.waitStatus('local', (s) => s.coordinator?.authority === 'held' && s.coordinator.lease === 'held' && s.coordinator.reachable, 'local holds its lease again');
      expect(back.coordinator).toMatchObject({ holder: 'local', epoch: 1 });
      expect(eventAt(c, 'local', 'coordinator-authority-held', killedAtMs)).toBeDefined();
      const after = phaseWrites(2200, 99, c, 4 * MiB);
      expect(await w.run(after, 8)).toEqual([]);
      await w.flush();
      // Still nobody promoted: the key and epoch are local's.
      expect(JSON.parse(etcd.get(`${key}/primary`)!)).toMatchObject({ site: 'local', epoch: '1' });
      expect(etcd.get(`${key}/epoch`)).toBe('1');
      expect(c.logRecords('backup').some((r) => r.event === 'failover_decided')).toBe(false);
      expect((await c.status('backup'))?.role).toBe('standby');
      await c.waitInSync();
      const acked = new Set([...w.acked]);
      await expectConverged(c, c.nbdPort, [...before, ...during, ...after], acked, ['local', 'backup', 'east', 'west']);

      // Planned switchover with a coordinator: promote is refused naming the way; demote drains
      // local and revokes its lease, and backup wins the key without waiting for the TTL.
      w.close();
      expect(await cli(c, ['promote', '--site', 'backup'])).toMatchObject({ code: 1, out: expect.stringMatching(/takes over when it wins the coordinator's key \/geomirror\/e2e\/vol0\/primary .*geomirror demote --site local/) });
      expect(await cli(c, ['demote', '--site', 'local', '--reason', 'maintenance'])).toMatchObject({ code: 0 });
      const released = eventAt(c, 'local', 'coordinator-released');
      expect(released).toBeDefined();
      const promoted = await c.waitStatus('backup', (s) => s.role === 'primary', 'backup promoted after the demotion');
      const won = eventAt(c, 'backup', 'coordinator-won', released!.time);
      expect(won).toBeDefined();
      // Won from the revoked key, not from a lease that ran out: well within one TTL.
      expect(won!.time - released!.time).toBeLessThan(leaseTtlMs);
      expect(promoted.failovers?.find((f) => f.kind === 'promoted')).toMatchObject({ fromEpoch: 1, toEpoch: 2, revision: String(won!.rec.revision) });
      expect(etcd.get(`${key}/epoch`)).toBe('2');
    });
  }, testTimeoutMs);
});

// Issue 16 acceptance, item 2 ("Zombie primary: split brain, acked writes lost"), multi-process,
// every site-to-site connection through its own WAN proxy so single links can be cut: primary
// `local`, standby `backup`, mirrors `east` and `west`. backup is promoted (epoch 2), local
// restarts and follows it as its standby (no file edited), then backup dies unfenced (kill -9)
// and local takes over (epoch 3). backup is restarted with every link of it cut: its meta still
// says `acting: primary` of epoch 2. It must not ack a host write (it cannot prove it
// is the primary: no majority confirms epoch 2) while local, the real primary of epoch 3, serves
// writes; when the links heal it is fenced and follows local again. Checked by bytes: no host
// write to backup was acked, every write local acked reads back over NBD, and all four replicas
// hash equal.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { checkAckedWrites, sha256, sleep, type Cluster, type NbdWriter, type PlannedWrite } from './harness.js';
import { MiB, phaseWrites, peer, readVolume, Tracker, withLogs } from './acceptance.js';

const testTimeoutMs = 420_000;
const failoverTimeoutMs = 1500;
/** The core's authorityWaitMs (src/core/types.ts defaultLimits): how long an unproven primary holds host writes before refusing them. */
const authorityWaitMs = 10_000;
const t = new Tracker();
afterEach(() => t.closeWriters());
afterAll(() => t.destroy());

const phase = (k: number, c: Cluster, bytes: number): PlannedWrite[] => phaseWrites(16_200, k, c, bytes);

describe('issue 16 item 2: a zombie primary', () => {
  it('a promoted site that died unfenced, restarted with its links cut, acks no host write; local (epoch 3) serves meanwhile; after the heal no acked write is lost and all replicas hash equal', async () => {
    const c = await t.cluster({ standby: 'backup', failoverTimeoutMs, volumeBytes: 16 * MiB, proxies: true });
    const issued: PlannedWrite[] = [];
    const acked = new Set<number>();
    const record = (...ws: NbdWriter[]) => {
      for (const w of ws) {
        issued.push(...w.issued);
        for (const i of w.acked) acked.add(i);
      }
    };
    const writeAll = async (port: number, writes: PlannedWrite[]) => {
      const w = await t.connectWhenUp(port);
      expect(await w.run(writes, 8)).toEqual([]);
      await w.flush();
      record(w);
      w.close();
    };

    await withLogs(c, async () => {
      await c.waitStatus('backup', (s) => s.standby?.inSync === true, 'backup confirmed in sync (epoch 1)');
      await writeAll(c.nbdPort, phase(1, c, 2 * MiB));

      // Failover: backup becomes the primary of epoch 2; local restarts and follows it as its
      // standby by itself (failback by command: no file edited).
      await c.kill9('local');
      expect((await c.waitStatus('backup', (s) => s.role === 'primary', 'backup promoted')).epoch).toBe(2);
      await writeAll(c.standbyNbdPort, phase(2, c, 2 * MiB));
      await c.restart('local');
      await c.waitStatus('local', (s) => s.role === 'standby' && s.standby?.inSync === true && s.epoch === 2, 'local is the in-sync standby of backup (epoch 2)');

      // backup dies unfenced; local takes over at epoch 3.
      await c.kill9('backup');
      expect((await c.waitStatus('local', (s) => s.role === 'primary', 'local promoted')).epoch).toBe(3);
      await writeAll(c.nbdPort, phase(3, c, 2 * MiB));
      await c.waitStatus('local', (s) => s.role === 'primary' && s.epoch === 3 && ['east', 'west'].every((n) => peer(s, n)?.link === 'up'), 'local is the primary of epoch 3 with east and west linked');

      // backup restarts with every link of it cut: its meta still says acting primary of epoch 2.
      c.isolate('backup');
      await c.restart('backup');

      // The real primary serves while the zombie is up; the zombie gets writes of its own.
      const real = await t.connectWhenUp(c.nbdPort);
      const realDone = real.run(phase(4, c, 4 * MiB), 8);
      const zombieWrites = phase(5, c, 1 * MiB);
      const zombieIssued: PlannedWrite[] = [];
      const zombieAcked = new Set<number>();
      const zombieErrors: string[] = [];
      let zombieServed = false;
      const deadline = Date.now() + authorityWaitMs + 5_000;
      // Each write on a connection of its own (an export that refuses may close it), one after
      // the other, until well past authorityWaitMs.
      for (const zw of zombieWrites) {
        if (Date.now() > deadline) break;
        let w: NbdWriter;
        try {
          w = await t.connectWhenUp(c.standbyNbdPort, 2_000);
        } catch (err) {
          zombieErrors.push(`connect: ${(err as Error).message}`);
          await sleep(200);
          continue;
        }
        zombieServed = true;
        zombieIssued.push(zw);
        const outcome = await Promise.race([w.write(zw).then(() => 'acked', (err: Error) => `error: ${err.message}`), sleep(deadline - Date.now() + 1_000).then(() => 'pending')]);
        if (outcome === 'acked') zombieAcked.add(zw.index);
        else zombieErrors.push(outcome);
        w.close();
      }
      expect([...zombieAcked], `backup (epoch 2, cut off) acked host writes; it served its export: ${zombieServed}; errors: ${zombieErrors.slice(0, 3).join(' | ')}`).toEqual([]);
      expect(zombieIssued.length + zombieErrors.length).toBeGreaterThan(0);
      const bs = await c.status('backup');
      console.log(`zombie backup (cut off): role ${bs?.role} epoch ${bs?.epoch}; ${zombieIssued.length} write(s) sent to its export, ${zombieAcked.size} acked; first answers: ${zombieErrors.slice(0, 2).join(' | ')}`);
      expect(bs?.epoch, 'backup learned no newer epoch while cut off').toBeLessThanOrEqual(3);
      if (bs?.role === 'primary') {
        // It acts as primary of its old epoch: then it says it cannot prove it.
        expect(c.logRecords('backup').some((r) => r.event === 'authority_unproven'), 'backup logs authority_unproven').toBe(true);
      }

      expect(await realDone).toEqual([]);
      await real.flush();
      record(real);

      // Heal: backup learns epoch 3, follows local as its standby and is resynced.
      c.heal();
      await c.waitStatus('backup', (s) => s.role === 'standby' && s.epoch === 3, 'backup follows local (epoch 3) as its standby');
      await c.waitStatus('local', (s) => s.peers.length === 3 && s.peers.every((p) => p.sync === 'in-sync' && p.link === 'up'), 'backup, east and west in sync at local', 120_000);
      const image = await readVolume(c, c.nbdPort);
      // Every write anyone acked, the zombie's included (none, checked above).
      expect(checkAckedWrites(image, [...issued, ...zombieIssued], new Set([...acked, ...zombieAcked]))).toEqual([]);
      const want = sha256(image);
      expect(Object.fromEntries(c.names.map((n) => [n, c.hash(n)]))).toEqual(Object.fromEntries(c.names.map((n) => [n, want])));
    });
  }, testTimeoutMs);
});

// geomirror events, multi-process (issue 19 acceptance): a primary and a mirror, each its own
// `geomirror site` process; `geomirror events --json` follows both while the mirror is killed
// with SIGKILL, misses writes, is restarted and resynced. The stream must show, in order, the
// mirror's link down, degraded, link up, resyncing with progress and in sync; `--now --json`
// must parse as JSON lines. Meanwhile local's status of east is sampled: its acked seq never
// goes back within an epoch and its out-of-sync bytes fall to 0.
import { execFile, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import type { SiteEvent } from '../../src/site/events.js';
import { Cluster, NbdWriter, planWrites } from './harness.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const MiB = 1024 * 1024;
const testTimeoutMs = 240_000;

let cluster: Cluster | undefined;
afterAll(async () => {
  await cluster?.destroy();
});

describe('geomirror events', () => {
  it('shows a killed mirror go link down, degraded, link up, resyncing with progress, in sync; --now --json parses', { timeout: testTimeoutMs }, async () => {
    const c = (cluster = await Cluster.create({ mirrors: ['east'] }));
    // A bounded resync rate, so the resync of what east missed lasts seconds, not one sample.
    writeFileSync(c.configPath, readFileSync(c.configPath, 'utf8').replace('on-mirror-loss: degrade', 'on-mirror-loss: degrade, resync-rate: 2MiB'));
    await c.start();
    await c.waitInSync();

    const follower = spawn(process.execPath, [bin, 'events', '--config', c.configPath, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    follower.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const lines = (): SiteEvent[] => out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as SiteEvent);
    try {
      // Both sites said what exists before anything changed.
      await expect.poll(() => new Set(lines().filter((e) => e.type === 'exists').map((e) => e.site)), { timeout: 30_000, interval: 100 }).toEqual(new Set(['local', 'east']));

      await c.kill9('east');
      await c.waitStatus('local', (s) => s.peers.some((p) => p.name === 'east' && p.sync === 'degraded'), 'east degraded');
      // Writes east misses, spread over the volume: many dirty regions to resync.
      const w = await NbdWriter.connect(c.nbdPort);
      try {
        expect(await w.run(planWrites(19, c.volumeBytes, 8 * MiB), 8)).toEqual([]);
      } finally {
        w.close();
      }
      // Status while east is restarted and resynced (issue 19): local's view of east, sampled.
      const samples: { epoch: number; acked: bigint; outOfSync: number; sync: string }[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const st = await c.status('local').catch(() => undefined);
          const e = st?.peers.find((p) => p.name === 'east');
          if (st !== undefined && e?.lastSeqAcked !== undefined && e.outOfSyncBytes !== undefined) samples.push({ epoch: st.epoch, acked: BigInt(e.lastSeqAcked), outOfSync: e.outOfSyncBytes, sync: String(e.sync) });
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      await c.restart('east');
      await c.waitInSync();
      await c.waitStatus('local', (s) => s.peers.some((p) => p.name === 'east' && p.outOfSyncBytes === 0 && p.sync === 'in-sync'), 'east out-of-sync bytes 0');
      sampling = false;
      await sampler;
      // A sample fetched before that answer may have landed after it: the last word is a fresh one.
      const last = (await c.status('local'))?.peers.find((p) => p.name === 'east');
      samples.push({ epoch: samples.at(-1)?.epoch ?? 0, acked: BigInt(last?.lastSeqAcked ?? '0'), outOfSync: last?.outOfSyncBytes ?? -1, sync: String(last?.sync) });
      // Acked seq never goes back within an epoch; out-of-sync bytes were counted and fell to 0.
      for (let i = 1; i < samples.length; i++) {
        const [a, b] = [samples[i - 1]!, samples[i]!];
        if (a.epoch === b.epoch) expect(b.acked >= a.acked, `acked seq of east went from ${a.acked} to ${b.acked} in epoch ${a.epoch}`).toBe(true);
      }
      expect(Math.max(...samples.map((x) => x.outOfSync)), 'east was seen out of sync by some bytes').toBeGreaterThan(0);
      const resyncing = samples.filter((x) => x.sync === 'resyncing').map((x) => x.outOfSync);
      for (let i = 1; i < resyncing.length; i++) expect(resyncing[i]!, `out-of-sync bytes grew during the resync: ${resyncing.join(', ')}`).toBeLessThanOrEqual(resyncing[i - 1]!);
      expect(samples.at(-1)!.outOfSync).toBe(0);
      const distinct = [...new Set(samples.map((x) => x.outOfSync))];
      console.log(`status of east at local: ${samples.length} samples, out-of-sync bytes ${distinct[0]} -> ${distinct.at(-1)} in ${distinct.length} steps, acked seq ${samples[0]!.acked} -> ${samples.at(-1)!.acked}`);
      const eastChanges = (): SiteEvent[] => lines().filter((e) => e.type === 'change' && e.site === 'local' && e.peer === 'east');
      await expect.poll(() => eastChanges().some((e) => e.what === 'sync' && e.to === 'in-sync'), { timeout: 30_000, interval: 100 }).toBe(true);
    } finally {
      follower.kill('SIGINT');
    }
    const changes = lines().filter((e) => e.type === 'change' && e.site === 'local' && e.peer === 'east' && (e.what === 'link' || e.what === 'sync' || e.what === 'progress'));
    const seen = changes.map((e) => `${e.what}:${e.to}${e.percent !== undefined ? `@${Math.floor(e.percent)}` : ''}`);
    // In order: each step found after the previous one.
    let at = -1;
    const step = (label: string, pred: (e: SiteEvent) => boolean): SiteEvent => {
      const i = changes.findIndex((e, j) => j > at && pred(e));
      // On failure, also what the command said about each site's own stream (a stream lost and
      // reopened misses the changes in between) and the first lines it printed for local.
      const admin = lines().filter((e) => (e.what as string) === 'admin').map((e) => `${e.site}:${e.to}@${e.at}`);
      const head = lines().filter((e) => e.site === 'local').slice(0, 12).map((e) => `${e.type}/${e.what}${e.peer ? `/${e.peer}` : ''}:${e.to}@${e.at}`);
      // ... and what the primary itself logged about east (when its link dropped, when it degraded).
      const eastLog = c.logRecords('local').filter((r) => r.peer === 'east').slice(0, 16).map((r) => `${String(r.event ?? r.msg)}@${String(r.time)}`);
      expect(i, `${label} after position ${at} in: ${seen.join(', ')}; admin: ${admin.join(', ')}; local head: ${head.join(', ')}; local's log about east: ${eastLog.join(', ')}`).toBeGreaterThan(at);
      at = i;
      return changes[i]!;
    };
    const down = step('link down', (e) => e.what === 'link' && e.to !== 'up');
    step('degraded', (e) => e.what === 'sync' && e.to === 'degraded');
    step('link up', (e) => e.what === 'link' && e.to === 'up');
    const resync = step('resyncing', (e) => e.what === 'sync' && e.to === 'resyncing');
    expect(typeof resync.percent, 'resyncing carries its progress').toBe('number');
    step('in sync', (e) => e.what === 'sync' && e.to === 'in-sync');
    // Human lines name time, site and the change.
    expect(down.text).toMatch(/^link to east down/);
    console.log(`events for local -> east: ${seen.join(', ')}`);
    // The command itself says when it lost east's own stream and when east answered again.
    const eastAdmin = lines().filter((e) => e.site === 'east' && (e.what as string) === 'admin').map((e) => e.to);
    expect(eastAdmin.slice(0, 2)).toEqual(['unreachable', 'reachable']);

    // --now --json: the state now, one JSON object per line, from every site.
    const now = await run(process.execPath, [bin, 'events', '--config', c.configPath, '--now', '--json']);
    const nowEvents = now.stdout.trim().split('\n').map((l) => JSON.parse(l) as SiteEvent);
    expect(nowEvents.every((e) => e.type === 'exists')).toBe(true);
    expect(nowEvents.find((e) => e.site === 'local' && e.what === 'peer' && e.peer === 'east')).toMatchObject({ to: 'in-sync' });
    expect(new Set(nowEvents.map((e) => e.site))).toEqual(new Set(['local', 'east']));
    const human = await run(process.execPath, [bin, 'events', '--config', c.configPath, '--now']);
    expect(human.stdout).toMatch(/^\d\d:\d\d:\d\d\.\d{3} local\s+exists: primary, epoch \d+, in-sync/m);
  });
});

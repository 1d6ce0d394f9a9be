// Smoke test of `npm run bench:fleet` (bench/fleet.ts) so it cannot rot: the quick mode with 2
// volumes (one volume vs 2 volumes each its own group) runs every point for a second and writes
// a report with every row: the load table, the failover table and every goal. It checks that
// numbers came back, never how big they are (timing is not a test's business).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { goalsOf, layoutLabel, parseArgs, parseLayout, runFleet, siteNames, volumesOf } from '../../bench/fleet.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-fleet-smoke-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('bench/fleet', () => {
  it('parses its options and layouts and refuses bad ones', () => {
    const d = parseArgs([]);
    expect(d).toMatchObject({ seconds: 10, repeat: 3, volumes: 16, volumeMib: 64, iodepth: 8 });
    expect(d.layouts.map((l) => l.id)).toEqual(['1', '16', '16/2']);
    expect(d.failoverLayouts.map((l) => l.id)).toEqual(['1', '16']);
    expect(parseArgs(['--quick'])).toMatchObject({ seconds: 3, repeat: 1, volumes: 2, volumeMib: 16 });
    expect(parseArgs(['--quick', '--volumes', '4']).layouts.map((l) => l.id)).toEqual(['1', '4', '4/2']);
    expect(parseArgs(['--failover-layouts', 'none']).failoverLayouts).toEqual([]);
    expect(parseLayout('16/2')).toEqual({ id: '16/2', volumes: 16, groups: 2 });
    expect(() => parseLayout('16/3')).toThrow('16 volumes do not split into 3 groups');
    expect(() => parseLayout('32/1')).toThrow('a group holds at most 16 volumes');
    expect(() => parseArgs(['--seconds', '0'])).toThrow('--seconds 0: expected a whole number of at least 1');
    expect(() => parseArgs(['--layouts', '1,1'])).toThrow('--layouts: a layout is listed twice');
    expect(() => parseArgs(['--bogus'])).toThrow('unknown option --bogus');
    // Each volume its own group: no group key; V/G: G groups of V/G volumes.
    expect(volumesOf(parseLayout('2'), 4096)).toEqual([{ name: 'v00', sizeBytes: 4096 }, { name: 'v01', sizeBytes: 4096 }]);
    expect(volumesOf(parseLayout('4/2'), 4096).map((v) => v.group)).toEqual(['g0', 'g0', 'g1', 'g1']);
  });

  it('judges each goal against its line and marks a miss', () => {
    const one = parseLayout('1');
    const many = parseLayout('16');
    const mem = (mib: number) => Object.fromEntries(siteNames.map((n) => [n, mib * 2 ** 20]));
    const row = (layout: typeof one, iops: number, ratio: number, rssMib: number) => ({
      layout, iops, ratio, perVolumeIopsMin: 1, perVolumeIopsMax: 1, latP99Us: 1, cpuUsPerOp: 1, cpuUsPerOpBy: {}, rssBytesPeak: mem(rssMib), rssBytesAtRest: mem(rssMib), idleCpuMsPerS: {}, rssGoalBytes: (64 + 8 * layout.volumes) * 2 ** 20, primaryMemory: undefined, anonymousBytes: {},
    });
    const fo = (layout: typeof one, ms: number) => ({ layout, runs: 1, promoteFirstMs: ms, promoteAllMs: ms, writeFirstMs: ms, writeAllMs: ms, resyncMs: ms });
    const g = goalsOf([row(one, 1000, 1, 100), row(many, 900, 0.9, 190)], [fo(one, 1000), fo(many, 1600)]);
    expect(g.map((x) => [x.goal, x.pass])).toEqual([
      ['aggregate IOPS, 16 volumes, 16 groups of 1 / 1 volume', false],
      ['peak RSS per site, 1 volume', false], // 100 MiB > 72 MiB
      ['peak RSS per site, 16 volumes, 16 groups of 1', true], // 190 MiB <= 192 MiB
      ['failover, kill -> every group promoted, 16 volumes, 16 groups of 1 / 1 volume', false], // 1.6x
      ['failover, kill -> a write acked on every volume, 16 volumes, 16 groups of 1 / 1 volume', false],
    ]);
  });

  it('runs the quick mode with 2 volumes and writes a report with every row', async () => {
    const o = parseArgs(['--quick', '--seconds', '1', '--volume-mib', '8', '--out', join(dir, 'results')]);
    const r = await runFleet({ ...o, log: () => undefined });
    expect(r.load).toHaveLength(2);
    for (const x of r.load) {
      expect(x.iops, `layout ${x.layout} IOPS`).toBeGreaterThan(0);
      expect(x.perVolumeIops, `layout ${x.layout}: a writer per volume`).toHaveLength(parseLayout(x.layout).volumes);
      expect(x.cpuUsPerOp, `layout ${x.layout} CPU per op`).toBeGreaterThan(0);
      expect(Object.keys(x.rssBytesPeak).sort(), `layout ${x.layout} RSS per site`).toEqual([...siteNames].sort());
      expect(x.memory.local!.heapUsedBytes, `layout ${x.layout}: the primary's heap from its /metrics`).toBeGreaterThan(0);
    }
    for (const x of r.layouts) expect(Object.keys(x.idleCpuMsPerS).sort(), `layout ${x.layout.id}: idle CPU per site`).toEqual([...siteNames].sort());
    expect(r.failover.map((x) => x.layout)).toEqual(['1', '2']);
    for (const x of r.failover) {
      for (const k of ['promoteFirstMs', 'promoteAllMs', 'writeFirstMs', 'writeAllMs', 'resyncMs'] as const) expect(Number.isFinite(x[k]), `failover ${x.layout} ${k}`).toBe(true);
      expect(x.promoteAllMs).toBeGreaterThanOrEqual(x.promoteFirstMs);
      expect(x.writeAllMs).toBeGreaterThanOrEqual(x.writeFirstMs);
    }
    expect(r.goals).toHaveLength(5); // IOPS 2/1, RSS of each layout, failover promote and write gap 2/1
    const md = readFileSync(r.files.md, 'utf8');
    for (const l of o.layouts) expect(md).toContain(`| ${layoutLabel(l)} | `);
    for (const g of r.goals) expect(md).toContain(`| ${g.goal} | ${g.measured} | ${g.target} | ${g.pass ? 'PASS' : 'MISS'} |`);
    expect(md).toContain('kill -> write acked on every volume (ms)');
    expect(md).toMatch(/Load average \(1, 5, 15 min\) [\d. ]+ at the start, [\d. ]+ at the end/);
    expect(md).toContain('`node --import tsx bench/fleet.ts --quick --seconds 1 --volume-mib 8');
    expect(JSON.parse(readFileSync(r.files.json, 'utf8'))).toMatchObject({ layouts: [{}, {}], failovers: [{}, {}] });
  }, 480_000); // ~1 min on an idle 2-core machine (four small clusters); the bound is for a loaded one
});

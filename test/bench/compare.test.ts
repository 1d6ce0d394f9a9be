// Smoke test of `npm run bench` (bench/compare.ts) so it cannot rot: every system starts, fio
// runs every point against each for 1 s, and the JSON, SVG and README block are written. It
// checks that numbers came back, never how big they are (timing is not a test's business).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseArgs, points, readmeEnd, readmeStart, runCompare, systemIds } from '../../bench/compare.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-bench-smoke-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('bench/compare', () => {
  it('parses its options and refuses bad ones', () => {
    expect(parseArgs(['--seconds', '2', '--repeat', '1', '--size', '64MiB', '--no-readme'])).toMatchObject({ seconds: 2, repeat: 1, sizeBytes: 64 * 2 ** 20, readme: undefined });
    expect(() => parseArgs(['--seconds', '0'])).toThrow('--seconds 0: expected a whole number above 0');
    expect(() => parseArgs(['--size', 'big'])).toThrow('--size big');
    expect(() => parseArgs(['--size', '8M'])).toThrow('--size 8M: expected a size of at least 16MiB');
    expect(parseArgs(['--size', '64MB']).sizeBytes).toBe(64 * 2 ** 20); // sizes are binary: 64MB = 64MiB
    expect(parseArgs(['--systems', 'floor-3,geomirror-3', '--points', '4k-randwrite-qd16'])).toMatchObject({ systems: ['floor-3', 'geomirror-3'], points: ['4k-randwrite-qd16'] });
    expect(() => parseArgs(['--systems', 'ceph'])).toThrow('--systems: unknown system ceph');
    expect(() => parseArgs(['--points', '8k'])).toThrow('--points: unknown point 8k');
  });

  it('runs every point on every system for 1 s and writes JSON, SVG and the README block', async () => {
    const readme = join(dir, 'README.md');
    writeFileSync(readme, '# Benchmarks\n\nhand-written text that must survive\n');
    const r = await runCompare({ seconds: 1, repeat: 1, sizeBytes: 32 * 2 ** 20, outDir: join(dir, 'results'), readme, profile: false, log: () => undefined });
    expect(r.runs).toHaveLength(points.length * systemIds.length);
    for (const row of r.runs) {
      expect(row.iops, `${row.system} ${row.point}`).toBeGreaterThan(0);
      expect(Number.isFinite(row.latP99Us), `${row.system} ${row.point} p99`).toBe(true);
      // issue 18: CPU per op of every server process, from /proc (one per process of the system).
      expect(row.ops, `${row.system} ${row.point} ops`).toBeGreaterThan(0);
      expect(row.cpuUsPerOp, `${row.system} ${row.point} CPU per op`).toBeGreaterThan(0);
      expect(Object.keys(row.cpuUsPerOpBy).length, `${row.system} processes`).toBe({ 'geomirror-3': 3, 'geomirror-3-insecure': 3, 'floor-3': 3, 'qemu-quorum-3': 4, 'nbdkit-1': 1, 'geomirror-1': 1 }[row.system]);
    }
    // The primary's GC share comes from its /metrics (geomirror systems only).
    expect(r.runs.find((x) => x.system === 'geomirror-3')!.gcShare).toBeGreaterThanOrEqual(0);
    expect(r.runs.find((x) => x.system === 'floor-3')!.gcShare).toBeUndefined();
    // RSS is sampled for geomirror's processes only: three sites, then the lone primary.
    expect(Object.keys(r.runs.find((x) => x.system === 'geomirror-3')!.rssBytesPeak ?? {}).sort()).toEqual(['east', 'local', 'west']);
    expect(Object.keys(r.runs.find((x) => x.system === 'geomirror-1')!.rssBytesPeak ?? {})).toEqual(['local']);
    expect(r.runs.find((x) => x.system === 'nbdkit-1')!.rssBytesPeak).toBeUndefined();

    const json = JSON.parse(readFileSync(r.files.json, 'utf8')) as { summary: unknown[]; ratios: { name: string }[] };
    expect(json.summary).toHaveLength(points.length * systemIds.length);
    expect(json.ratios.map((x) => x.name)).toContain('geomirror-3 / nbdkit-1 IOPS, 4 KiB randwrite QD16');
    // issue 18: ratios vs QEMU quorum (IOPS and CPU per op) and vs the floor pipeline.
    expect(json.ratios.map((x) => x.name)).toEqual(
      expect.arrayContaining(['geomirror-3 / qemu-quorum-3 CPU per op, 4 KiB randwrite QD16', 'geomirror-3 / floor-3 IOPS, 4 KiB randwrite QD16', 'geomirror-3 primary peak RSS during 1 MiB QD4 (MiB)']),
    );
    // issue 17: the TLS cost, against the same cluster over plain TCP in the same run.
    expect(json.ratios.map((x) => x.name)).toEqual(expect.arrayContaining(['geomirror-3 TLS / plain TCP IOPS, 4 KiB randwrite QD16', 'geomirror-3 TLS / plain TCP IOPS, 1 MiB seq write QD4']));
    const svg = readFileSync(r.files.svg, 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.match(/<rect [^>]*fill="#1f77b4"><title>/g)).toHaveLength(points.length * 3); // geomirror-3: one bar per point, IOPS, p99 and CPU per op
    const text = readFileSync(readme, 'utf8');
    expect(text).toContain('hand-written text that must survive');
    expect(text).toContain(readmeStart);
    expect(text).toContain(readmeEnd);
    expect(text).toContain('| 4 KiB randwrite QD16 | QEMU quorum, 3 copies |');
    expect(text).toContain('| 4 KiB randwrite QD16 | floor: minimal Node 3-copy pipeline |');
  }, 240_000); // ~25 s on an idle 2-core machine; the bound is for a loaded one
});

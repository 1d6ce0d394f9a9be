// The shipped loopback cluster files load, and first-run preparation creates exactly the
// missing files (sparse, at the configured sizes) and the key, then runSite's checks pass.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/site/config.js';
import { prepareLoopbackCluster } from '../../src/site/prepare.js';
import { checkDevices } from '../../src/site/run.js';
import { checkGeography } from '../../src/core/geo.js';

const targets = fileURLToPath(new URL('../../targets/loopback/', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-targets-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('targets/loopback cluster files', () => {
  it('the default cluster is a primary with two mirrors, NBD on 10809 and admin on 9400', () => {
    const c = loadConfig(join(targets, 'cluster.yaml'));
    expect(c.siteNames).toEqual(['local', 'east', 'west']);
    expect(c.sites.local!.nbd!.text).toBe('127.0.0.1:10809');
    expect(c.sites.local!.admin!.text).toBe('127.0.0.1:9400');
    expect(c.sites.local!.storage[0]!.text).toBe(`loopback:${join(targets, 'data/local.img')}`);
    expect(c.warnings).toEqual([]);
    const geo = checkGeography({ name: 'local', location: c.sites.local!.location! }, ['east', 'west'].map((n) => ({ name: n, location: c.sites[n]!.location! })));
    expect(geo.warnings).toEqual([]);
    expect(geo.opposition!.substantiallyOpposed).toBe(true);
  });

  it.each(['cascade.yaml', 'mixed.yaml'])('%s loads without warnings', (f) => {
    const c = loadConfig(join(targets, f));
    expect(c.warnings).toEqual([]);
    expect(c.siteNames.some((n) => c.sites[n]!.role === 'relay')).toBe(true);
  });
});

describe('prepareLoopbackCluster', () => {
  it('creates missing sparse files and the key, and leaves existing ones alone', () => {
    const text = readFileSync(join(targets, 'cluster.yaml'), 'utf8');
    const c = parseConfig(text, join(dir, 'cluster.yaml'));
    writeFileSync(join(dir, 'keep.txt'), '');
    expect(checkDevices(c, c.sites.east!)).toHaveLength(2);
    const first = prepareLoopbackCluster(c);
    expect(first.createdFiles.sort()).toEqual(['east.cache', 'east.img', 'local.cache', 'local.img', 'west.cache', 'west.img'].map((f) => join(dir, 'data', f)));
    expect(first.createdKey).toBe(join(dir, 'data', 'cluster.key'));
    expect(statSync(join(dir, 'data', 'local.img')).size).toBe(1024 ** 3);
    expect(statSync(join(dir, 'data', 'local.img')).blocks).toBeLessThan(64); // sparse
    expect(statSync(join(dir, 'data', 'east.cache')).size).toBe(64 * 1024 ** 2);
    for (const n of c.siteNames) expect(checkDevices(c, c.sites[n]!)).toEqual([]);
    const key = readFileSync(first.createdKey!, 'utf8');
    expect(prepareLoopbackCluster(c)).toEqual({ createdFiles: [] });
    expect(readFileSync(first.createdKey!, 'utf8')).toBe(key);
  });
});

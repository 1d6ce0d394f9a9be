// Issue 20 items 1-2 in the cluster file: volumes: (several volumes, consistency groups), each
// volume's devices at each site, the group's view of the cluster (src/site/volumes.ts), and
// every refusal naming its key.
import { describe, expect, it } from 'vitest';
import { configProblems } from './config-problems.js';
import { parseConfig } from '../../src/site/config.js';
import { cacheShareBytes, groupClusterConfig, groupContext } from '../../src/site/volumes.js';
import type { SiteContext } from '../../src/site/context.js';

const file = '/srv/fleet/cluster.yaml';
const base = (volumes: string, sites = '') => `
cluster: fleet
secret: file:./data/cluster.key
volumes:
${volumes}
sites:
  local:
    role: primary
    listen: 127.0.0.1:7400
    nbd: 127.0.0.1:10809
    cache: { device: "loopback:./data/local.cache", size: 64MiB }
    storage: ["loopback:./data/local-{volume}.img"]
    mirrors: [east, west]
  backup: { role: standby, standby-for: local, listen: 127.0.0.1:7403, cache: { device: "loopback:./data/backup.cache", size: 64MiB }, storage: ["loopback:./data/backup-{volume}.img"] }
  east: { role: mirror, listen: 127.0.0.1:7401, cache: { device: "loopback:./data/east.cache", size: 64MiB }, storage: ["loopback:./data/east-{volume}.img"] }
  west: { role: mirror, listen: 127.0.0.1:7402, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"] }
${sites}`;
const dbVolumes = `  - { name: db-log, size: 64MiB, group: db }
  - { name: db-data, size: 256MiB, group: db }
  - { name: vm1, size: 1GiB }`;

function problems(text: string): string[] {
  return configProblems(text, file);
}

describe('volumes: in the cluster file (issue 20)', () => {
  it('places the volumes of a group back to back, a group of its own for an ungrouped volume, each site one device per volume', () => {
    const c = parseConfig(base(dbVolumes), file);
    expect(c.multiVolume).toBe(true);
    expect(c.groups.map((g) => [g.name, g.index, g.volume.sizeBytes, g.volumes.map((v) => [v.name, v.offsetBytes])])).toEqual([
      ['db', 0, 320 * 2 ** 20, [['db-log', 0], ['db-data', 64 * 2 ** 20]]],
      ['vm1', 1, 2 ** 30, [['vm1', 0]]],
    ]);
    expect(c.sites.east!.volumeStorage!['db-data']!.map((d) => d.text)).toEqual(['loopback:/srv/fleet/data/east-db-data.img']);
    expect(c.sites.west!.volumeStorage!.vm1!.map((d) => d.text)).toEqual(['memory:']);
  });

  it("a group's view: its address space as the volume, the RAID-1 members made of its volumes' devices, a cache file and share of its own, HELLO carrying its number", () => {
    const c = parseConfig(base(dbVolumes), file);
    const db = groupClusterConfig(c, c.groups[0]!);
    expect(db.volume).toMatchObject({ name: 'db', sizeBytes: 320 * 2 ** 20 });
    const local = db.sites.local!;
    expect(local.storageParts).toEqual([{ devices: [expect.objectContaining({ text: 'loopback:/srv/fleet/data/local-db-log.img' }), expect.objectContaining({ text: 'loopback:/srv/fleet/data/local-db-data.img' })], blockCounts: [16384, 65536] }]);
    expect(local.cache!.device.text).toBe('loopback:/srv/fleet/data/local.cache.db');
    // 64 MiB shared by three volumes: db (two of them) gets two thirds, block aligned.
    expect(cacheShareBytes(c, c.sites.local!, c.groups[0]!)).toBe(Math.floor((64 * 2 ** 20 * 2) / 3 / 4096) * 4096);
    const vm1 = groupClusterConfig(c, c.groups[1]!);
    expect(vm1.sites.west!.cache!.device.text).toBe('memory:vm1');
    const ctx = { config: c, site: c.sites.east!, linkSecurity: { transport: 'insecure', geometry: { volumeBytes: 1n, blockBytes: 4096 } }, log: { child: () => ({}) } } as unknown as SiteContext;
    expect(groupContext(ctx, c.groups[1]!).linkSecurity.geometry).toEqual({ volumeBytes: BigInt(2 ** 30), blockBytes: 4096, group: 1 });
  });

  it('a volume may leave out a mirror: that mirror is not in the group, nor in the primary\'s or standby\'s list for it', () => {
    const c = parseConfig(base(`  - { name: a, size: 1GiB }\n  - { name: b, size: 1GiB, sites: [local, backup, east] }`), file);
    const b = groupClusterConfig(c, c.groups[1]!);
    expect(b.siteNames).toEqual(['local', 'backup', 'east']);
    expect(b.sites.local!.mirrors).toEqual(['east', 'backup']);
    expect(b.sites.backup!.mirrors).toEqual(['east']);
  });

  it('refuses, naming the key: both volume: and volumes:, a duplicate name, a shared storage file, unequal groups, a volume without the standby, a cache too small to share', () => {
    const both = base(dbVolumes).replace('volumes:', 'volume: { name: x, size: 1GiB }\nvolumes:');
    expect(problems(both)).toEqual([expect.stringMatching(/^volumes: give either volume: .* or volumes: .*not both/)]);
    expect(problems(base(`  - { name: a, size: 1GiB }\n  - { name: a, size: 2GiB }`))).toEqual([expect.stringMatching(/^volumes\[1\]\.name: a is listed twice/)]);
    expect(problems(base(dbVolumes).replace('"loopback:./data/east-{volume}.img"', '"loopback:./data/east.img"'))).toEqual([expect.stringMatching(/^sites\.east\.storage\[0\]: .*east\.img would hold 3 volumes at once; put \{volume\} in it/)]);
    expect(problems(base(`  - { name: a, size: 64MiB, group: g }\n  - { name: b, size: 64MiB, group: g, blockSize: 512 }`))).toEqual([expect.stringMatching(/^volumes\[1\]\.blockSize: 512 differs from a's 4096; the volumes of group g share one stream/)]);
    expect(problems(base(`  - { name: a, size: 64MiB, group: g }\n  - { name: b, size: 100000KiB, group: g }`))).toEqual([expect.stringMatching(/^volumes\[1\]\.size: .* not a multiple of 64 KiB/)]);
    expect(problems(base(`  - { name: a, size: 1GiB, sites: [local, east] }`))).toEqual([expect.stringMatching(/^volumes\[0\]\.sites: must include backup: the standby carries every volume/)]);
    expect(problems(base(Array.from({ length: 17 }, (_, i) => `  - { name: v${i}, size: 1GiB }`).join('\n')))).toEqual(expect.arrayContaining([expect.stringMatching(/^sites\.local\.cache\.size: .* shared by 17 volumes .* each volume needs at least 4 MiB of cache/)]));
  });

  it('storage as a mapping of volume -> devices (a disk per volume), every carried volume named', () => {
    const mapped = base(dbVolumes).replace('storage: ["loopback:./data/east-{volume}.img"]', 'storage: { db-log: ["loopback:./log.img"], db-data: ["loopback:./data.img"], vm1: ["loopback:./vm.img"] }');
    expect(parseConfig(mapped, file).sites.east!.volumeStorage!.vm1![0]!.text).toBe('loopback:/srv/fleet/vm.img');
    const missing = base(dbVolumes).replace('storage: ["loopback:./data/east-{volume}.img"]', 'storage: { db-log: ["loopback:./log.img"], db-data: ["loopback:./data.img"], vm2: ["loopback:./vm.img"] }');
    expect(problems(missing)).toEqual([expect.stringMatching(/^sites\.east\.storage: has no devices for volume vm1/), expect.stringMatching(/^sites\.east\.storage\.vm2: east does not carry a volume named vm2/)]);
  });

  it('a volume: file is one group named after its volume, with the paths it always had', () => {
    const c = parseConfig(base('').replace('volumes:\n', 'volume: { name: vol0, size: 1GiB }\n').replaceAll('-{volume}', ''), file);
    expect(c.multiVolume).toBe(false);
    expect(c.groups).toHaveLength(1);
    expect(groupClusterConfig(c, c.groups[0]!)).toBe(c);
  });
});

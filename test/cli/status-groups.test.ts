// geomirror status with several volumes (issue 20 item 4): one table per consistency group,
// headed by its volumes; a site that does not carry a group is not in its table; an
// unreachable site shows in every table.
import { describe, expect, it } from 'vitest';
import { groupedResults, statusText, type StatusResult } from '../../src/cli/status.js';
import type { SiteStatus } from '../../src/site/status.js';

const st = (site: string, role: SiteStatus['role'], volume: string, epoch: number, peers: SiteStatus['peers'] = []): SiteStatus => ({
  cluster: 'fleet', site, role, volume, epoch, lastSeqAcked: String(epoch * 10), state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 1 << 20, entries: 0 }, peers, pid: 1, uptimeSeconds: 1,
});
const withGroups = (s: SiteStatus, groups: [string, string[], SiteStatus][]): SiteStatus => ({
  ...groups[0]![2],
  groups: groups.map(([group, vols, status]) => ({ group, volumes: vols.map((name) => ({ name, sizeBytes: 1 << 30, offsetBytes: 0 })), status })),
  site: s.site,
});

describe('geomirror status with consistency groups', () => {
  it('prints one table per group, headed by its volumes; a mirror left out of a group is not in its table', () => {
    const local = withGroups(st('local', 'primary', '', 0), [['db', ['db-log', 'db-data'], st('local', 'primary', 'db', 3, [{ name: 'east', relation: 'mirror', link: 'up', sync: 'in-sync' }])], ['vm1', ['vm1'], st('local', 'primary', 'vm1', 5)]]);
    const east = withGroups(st('east', 'mirror', '', 0), [['db', ['db-log', 'db-data'], st('east', 'mirror', 'db', 3)]]);
    const results: StatusResult[] = [
      { target: { name: 'local', admin: '127.0.0.1:1' }, status: local },
      { target: { name: 'east', admin: '127.0.0.1:2' }, status: east },
      { target: { name: 'west', admin: '127.0.0.1:3' }, error: 'connection refused (is the site running?)' },
    ];
    const groups = groupedResults(results)!;
    expect(groups.map((g) => [g.group, g.volumes, g.results.map((r) => r.target.name)])).toEqual([
      ['db', 'db-log 1 GiB, db-data 1 GiB', ['local', 'east', 'west']],
      ['vm1', 'vm1 1 GiB', ['local', 'west']],
    ]);
    const text = statusText(results);
    expect(text).toMatch(/^group db \(db-log 1 GiB, db-data 1 GiB\)\nSITE +ROLE +EPOCH/);
    expect(text).toMatch(/group vm1 \(vm1 1 GiB\)\nSITE[^\n]*\nlocal +primary +5 +50 /);
    expect(text.split('group vm1')[1]).not.toMatch(/\neast /);
  });

  it('a single-volume cluster prints one table as before', () => {
    const results: StatusResult[] = [{ target: { name: 'local', admin: '127.0.0.1:1' }, status: st('local', 'primary', 'vol0', 2) }];
    expect(groupedResults(results)).toBeUndefined();
    expect(statusText(results)).toMatch(/^SITE +ROLE/);
  });
});

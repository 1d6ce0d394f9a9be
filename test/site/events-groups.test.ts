// geomirror events with several volumes (issue 20 item 4): a change in one consistency group
// is an event naming that group; the other group's unchanged state makes none.
import { describe, expect, it } from 'vitest';
import { siteSnapshotEvents, siteStatusEvents } from '../../src/site/events.js';
import type { SiteStatus } from '../../src/site/status.js';

const st = (volume: string, epoch: number, link: 'up' | 'down'): SiteStatus => ({
  cluster: 'fleet', site: 'local', role: 'primary', volume, epoch, lastSeqAcked: '1', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 1 << 20, entries: 0 },
  peers: [{ name: 'east', relation: 'mirror', link, sync: 'in-sync' }], pid: 1, uptimeSeconds: 1,
});
const site = (db: SiteStatus, vm: SiteStatus): SiteStatus => ({
  ...db,
  groups: [
    { group: 'db', volumes: [{ name: 'db-log', sizeBytes: 1, offsetBytes: 0 }, { name: 'db-data', sizeBytes: 1, offsetBytes: 1 }], status: db },
    { group: 'vm1', volumes: [{ name: 'vm1', sizeBytes: 1, offsetBytes: 0 }], status: vm },
  ],
});

describe('events per consistency group', () => {
  it('a link that drops in one group is an event of that group only', () => {
    const before = site(st('db', 1, 'up'), st('vm1', 1, 'up'));
    const after = site(st('db', 1, 'up'), st('vm1', 2, 'down'));
    const events = siteStatusEvents(before, after);
    expect(events.map((e) => [e.group, e.what, e.text])).toEqual([
      ['vm1', 'epoch', 'group vm1: epoch 1 -> 2'],
      ['vm1', 'link', 'group vm1: link to east down (down)'],
    ]);
  });

  it('the snapshot lists each group', () => {
    const events = siteSnapshotEvents(site(st('db', 1, 'up'), st('vm1', 3, 'up')));
    expect(events.filter((e) => e.what === 'site').map((e) => e.text)).toEqual(['group db: primary, epoch 1, in-sync, acked seq 1', 'group vm1: primary, epoch 3, in-sync, acked seq 1']);
  });
});

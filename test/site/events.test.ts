// The event diff of `geomirror events` (issue 19 item 3): what changed between two status
// snapshots, one event per change, peers' links before their sync state; the feed numbers
// events, keeps a bounded ring for late joiners and hands new ones to listeners.
import { describe, expect, it } from 'vitest';
import { EventFeed, eventListenersMax, eventRingMax, snapshotEvents, statusEvents } from '../../src/site/events.js';
import type { PeerStatus, SiteStatus } from '../../src/site/status.js';

const east = (over: Partial<PeerStatus> = {}): PeerStatus => ({ name: 'east', relation: 'mirror', link: 'up', sync: 'in-sync', lastSeqAcked: '10', ...over });
const site = (over: Partial<SiteStatus> = {}): SiteStatus => ({
  cluster: 'demo', site: 'local', role: 'primary', volume: 'vol0', epoch: 1, lastSeqAcked: '10', state: 'in-sync',
  cache: { usedBytes: 0, capacityBytes: 1000, entries: 0 }, peers: [east()], pid: 1, uptimeSeconds: 1, ...over,
});
const whats = (prev: SiteStatus | undefined, next: SiteStatus) => statusEvents(prev, next).map((e) => [e.what, e.peer ?? e.device ?? '', e.from ?? '', e.to ?? '']);

describe('statusEvents', () => {
  it('sees nothing without a previous snapshot, and nothing when nothing changed', () => {
    expect(statusEvents(undefined, site())).toEqual([]);
    expect(statusEvents(site(), site({ uptimeSeconds: 9, lastSeqAcked: '99' }))).toEqual([]);
  });

  it('follows a mirror through link down, degraded, link up, resyncing with progress, in sync', () => {
    const steps = [
      site(),
      site({ peers: [east({ link: 'connecting' })] }),
      site({ state: 'degraded', peers: [east({ link: 'connecting', sync: 'degraded', outOfSyncBytes: 4096 })] }),
      site({ state: 'degraded', peers: [east({ link: 'up', sync: 'degraded', outOfSyncBytes: 4096 })] }),
      site({ state: 'resyncing', resyncPercent: 2, peers: [east({ sync: 'resyncing', resyncPercent: 2, outOfSyncBytes: 4000 })] }),
      site({ state: 'resyncing', resyncPercent: 4, peers: [east({ sync: 'resyncing', resyncPercent: 4 })] }),
      site({ state: 'resyncing', resyncPercent: 55, peers: [east({ sync: 'resyncing', resyncPercent: 55, outOfSyncBytes: 1800 })] }),
      site({ peers: [east()] }),
    ];
    const all = steps.slice(1).flatMap((s, i) => statusEvents(steps[i], s));
    expect(all.map((e) => e.text)).toEqual([
      'link to east down (connecting)',
      'state in-sync -> degraded',
      'east in-sync -> degraded',
      'link to east up',
      'state degraded -> resyncing',
      'east degraded -> resyncing 2%',
      'east resyncing 55%',
      'state resyncing -> in-sync',
      'east resyncing -> in-sync',
    ]);
    expect(all.find((e) => e.what === 'progress')).toMatchObject({ peer: 'east', percent: 55, outOfSyncBytes: 1800 });
    expect(all.find((e) => e.what === 'sync' && e.to === 'resyncing')).toMatchObject({ percent: 2, outOfSyncBytes: 4000 });
  });

  it('names role, epoch, fencing, failovers, a full cache and device health', () => {
    const f = { at: '2026-12-07T01:00:00.000Z', kind: 'promoted' as const, site: 'backup', fromEpoch: 1, toEpoch: 2, lastSeq: '7', reason: 'primary silent' };
    const prev = site({ devices: [{ device: 'loopback:/d/a.img', health: 'ok' }] });
    const next = site({ role: 'mirror', configuredRole: 'primary', epoch: 2, fencedBy: 2, failovers: [f], cache: { usedBytes: 960, capacityBytes: 1000, entries: 3 }, devices: [{ device: 'loopback:/d/a.img', health: 'failed', error: 'EIO at LBA 8' }] });
    expect(whats(prev, next)).toEqual([
      ['role', '', 'primary', 'mirror'],
      ['epoch', '', 1, 2],
      ['fenced', '', '', 2],
      ['failover', '', 1, 2],
      ['cache', '', 'ok', 'full'],
      ['device', 'loopback:/d/a.img', 'ok', 'failed'],
    ]);
    expect(statusEvents(prev, next).find((e) => e.what === 'device')!.text).toBe('device loopback:/d/a.img failed: EIO at LBA 8');
    // The same failover reported again is not new; the cache draining is.
    expect(whats(next, { ...next, cache: { usedBytes: 10, capacityBytes: 1000, entries: 1 } })).toEqual([['cache', '', 'full', 'ok']]);
  });

  it('a peer that appears up is a link-up; one that disappears while up is a link-down', () => {
    expect(whats(site({ peers: [] }), site())).toEqual([['link', 'east', 'down', 'up'], ['sync', 'east', '', 'in-sync']]);
    expect(whats(site(), site({ peers: [] }))).toEqual([['link', 'east', 'up', 'down']]);
  });
});

describe('snapshotEvents', () => {
  it('says what exists: the site, each peer and device', () => {
    const evs = snapshotEvents(site({ state: 'resyncing', resyncPercent: 40, peers: [east({ sync: 'resyncing', resyncPercent: 40.5 })], devices: [{ device: 'memory:', health: 'ok' }] }));
    expect(evs.map((e) => [e.what, e.text])).toEqual([
      ['site', 'primary, epoch 1, resyncing 40%, acked seq 10'],
      ['peer', 'mirror east: link up, resyncing 40%, acked seq 10'],
      ['device', 'device memory: ok'],
    ]);
  });
});

describe('EventFeed', () => {
  it('numbers change events, keeps a bounded ring and tells listeners', () => {
    const feed = new EventFeed(() => new Date('2026-12-07T02:00:00.000Z'));
    const heard: number[] = [];
    const off = feed.subscribe((e) => heard.push(e.seq))!;
    expect(feed.sample(site())).toEqual([]);
    const [down] = feed.sample(site({ peers: [east({ link: 'down' })] }));
    expect(down).toMatchObject({ seq: 1, at: '2026-12-07T02:00:00.000Z', type: 'change', site: 'local', what: 'link', peer: 'east' });
    feed.sample(site());
    expect(heard).toEqual([1, 2]);
    off();
    feed.sample(site({ peers: [east({ link: 'down' })] }));
    expect(heard).toEqual([1, 2]);
    expect(feed.since(1).map((e) => e.seq)).toEqual([2, 3]);
    for (let i = 0; i < eventRingMax; i++) feed.sample(site({ peers: [east({ link: i % 2 === 0 ? 'up' : 'down' })] }));
    expect(feed.since(0)).toHaveLength(eventRingMax);
    expect(feed.since(0)[0]!.seq).toBe(4);
    expect(feed.exists(site())[0]).toMatchObject({ seq: 0, type: 'exists', what: 'site' });
  });

  it('diffs the next change against the snapshot a new client was shown, not an older idle sample (a link that went down right after it is reported)', () => {
    const feed = new EventFeed();
    // An idle sample from before the link came up; then a client joins while it is up.
    feed.sample(site({ peers: [east({ link: 'connecting' })] }));
    const shown = feed.snapshot(site());
    expect(shown.find((e) => e.what === 'peer')).toMatchObject({ type: 'exists', peer: 'east' });
    const heard: string[] = [];
    feed.subscribe((e) => heard.push(`${e.what}:${e.to}`));
    // East is killed: the next sample has its link down again, as in the idle sample.
    feed.sample(site({ peers: [east({ link: 'connecting' })] }));
    expect(heard).toEqual(['link:connecting']);
  });

  it('refuses listeners beyond its bound', () => {
    const feed = new EventFeed();
    const offs = Array.from({ length: eventListenersMax }, () => feed.subscribe(() => undefined));
    expect(offs.every((o) => o !== undefined)).toBe(true);
    expect(feed.subscribe(() => undefined)).toBeUndefined();
    offs[0]!();
    expect(feed.subscribe(() => undefined)).toBeDefined();
  });
});

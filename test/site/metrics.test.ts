// Site metrics (issue 19 item 6): state gauges read one status snapshot per scrape, states are
// labels (1 for the current state, 0 for the others), no series totals others (sum() is right),
// host reads and I/O errors are counted.
import { describe, expect, it } from 'vitest';
import { bindStatusGauges, createSiteMetrics } from '../../src/site/metrics.js';
import { meteredExport } from '../../src/site/host-export.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import { MemoryDevice } from '../../hal/memory.js';
import { payloadPool, slotHeadroomBytes } from '../../hal/payload-pool.js';
import type { SiteStatus } from '../../src/site/status.js';

/** name{labels} value for every sample of `name` in Prometheus text. */
function samples(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    out.push({ labels: Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1]!, l[2]!])), value: Number(m[3]) });
  }
  return out;
}
const value = (text: string, name: string, want: Record<string, string> = {}): number | undefined =>
  samples(text, name).find((s) => Object.entries(want).every(([k, v]) => s.labels[k] === v))?.value;

const status = (over: Partial<SiteStatus> = {}): SiteStatus => ({
  cluster: 'demo',
  site: 'local',
  role: 'primary',
  volume: 'vol0',
  epoch: 3,
  lastSeqAcked: '120',
  state: 'resyncing',
  resyncPercent: 25,
  cache: { usedBytes: 4096, capacityBytes: 1 << 20, entries: 1 },
  hostInflight: { writes: 5, bytes: 20480 },
  peers: [
    { name: 'east', relation: 'mirror', link: 'up', rttMs: 2, sync: 'in-sync', lastSeqAcked: '120', inflightWrites: 2, inflightBytes: 8192, outOfSyncBytes: 0 },
    { name: 'west', relation: 'mirror', link: 'connecting', sync: 'resyncing', resyncPercent: 25, lastSeqAcked: '80', inflightWrites: 3, inflightBytes: 12288, outOfSyncBytes: 3 << 20, resyncBytesPerSec: 1 << 20, resyncEtaSeconds: 3, resyncedBytes: 5 << 16 },
  ],
  failovers: [{ at: '2026-12-07T02:00:00.000Z', kind: 'promoted', site: 'local', fromEpoch: 2, toEpoch: 3, lastSeq: '100', reason: 'x' }],
  pid: 1,
  uptimeSeconds: 1,
  ...over,
});

describe('site metrics', () => {
  it('write tallies reach geomirror_writes_total and _write_bytes_total at each scrape, once', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const t = m.tally('write');
    expect(m.tally('write')).toBe(t); // one object per op: the hot path keeps it
    t.writes += 3;
    t.bytes += 12288;
    m.writesTotal.inc({ op: 'flush' });
    let text = await m.registry.metrics();
    expect(value(text, 'geomirror_writes_total', { op: 'write' })).toBe(3);
    expect(value(text, 'geomirror_write_bytes_total', { op: 'write' })).toBe(12288);
    expect(value(text, 'geomirror_writes_total', { op: 'flush' })).toBe(1);
    t.writes++;
    t.bytes += 4096;
    m.tally('replicated').writes++;
    text = await m.registry.metrics();
    expect(value(text, 'geomirror_writes_total', { op: 'write' })).toBe(4);
    expect(value(text, 'geomirror_write_bytes_total', { op: 'write' })).toBe(16384);
    expect(value(text, 'geomirror_writes_total', { op: 'replicated' })).toBe(1);
    text = await m.registry.metrics(); // nothing new: nothing added twice
    expect(value(text, 'geomirror_writes_total', { op: 'write' })).toBe(4);
  });

  it('reports the process payload pool: idle bytes and refused double gives (issue 18)', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo' });
    const slot = payloadPool.take(1 << 20);
    const idle = payloadPool.stats().idleBytes;
    payloadPool.give(slot);
    const text = await m.registry.metrics();
    expect(value(text, 'geomirror_payload_pool_idle_bytes')).toBe(idle + (1 << 20) + slotHeadroomBytes);
    expect(value(text, 'geomirror_payload_pool_double_gives')).toBe(payloadPool.stats().doubleGives);
  });

  it('reads state gauges from one status snapshot per scrape, states as labels', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    let calls = 0;
    bindStatusGauges(m, () => {
      calls++;
      return status();
    });
    const text = await m.registry.metrics();
    expect(calls).toBe(1);
    expect(value(text, 'geomirror_epoch')).toBe(3);
    expect(value(text, 'geomirror_last_seq_acked')).toBe(120);
    expect(value(text, 'geomirror_cache_used_bytes')).toBe(4096);
    expect(value(text, 'geomirror_cache_capacity_bytes')).toBe(1 << 20);
    for (const [state, v] of [['degraded', 0], ['resyncing', 1], ['in-sync', 0]] as const) {
      expect(value(text, 'geomirror_peer_sync_state', { peer: 'west', state }), state).toBe(v);
    }
    expect(value(text, 'geomirror_peer_sync_state', { peer: 'east', state: 'in-sync' })).toBe(1);
    expect(value(text, 'geomirror_link_state', { peer: 'west', state: 'connecting' })).toBe(1);
    expect(value(text, 'geomirror_link_state', { peer: 'west', state: 'up' })).toBe(0);
    expect(value(text, 'geomirror_site_state', { state: 'resyncing' })).toBe(1);
    expect(samples(text, 'geomirror_site_state').reduce((a, s) => a + s.value, 0)).toBe(1);
    expect(value(text, 'geomirror_acting_role', { acting: 'primary' })).toBe(1);
    expect(value(text, 'geomirror_peer_out_of_sync_bytes', { peer: 'west' })).toBe(3 << 20);
    expect(value(text, 'geomirror_resync_remaining_bytes', { peer: 'east' })).toBe(0);
    expect(value(text, 'geomirror_resync_bytes_per_second', { peer: 'west' })).toBe(1 << 20);
    expect(value(text, 'geomirror_resync_eta_seconds', { peer: 'west' })).toBe(3);
    expect(value(text, 'geomirror_resynced_bytes', { peer: 'west' })).toBe(5 << 16);
    expect(value(text, 'geomirror_resynced_bytes', { peer: 'east' })).toBeUndefined();
    expect(value(text, 'geomirror_resync_progress_ratio', { peer: 'west' })).toBe(0.25);
    expect(value(text, 'geomirror_peer_last_seq_acked', { peer: 'west' })).toBe(80);
    expect(value(text, 'geomirror_link_rtt_seconds', { peer: 'east' })).toBe(0.002);
    expect(value(text, 'geomirror_failover_last_seq', { kind: 'promoted' })).toBe(100);
    // No totals among the per-peer series: sum() over peers is the host-side total's business.
    const inflight = samples(text, 'geomirror_inflight_writes');
    expect(inflight.map((s) => s.labels.peer).sort()).toEqual(['east', 'west']);
    expect(inflight.reduce((a, s) => a + s.value, 0)).toBe(5);
    expect(value(text, 'geomirror_host_inflight_writes')).toBe(5);
    expect(value(text, 'geomirror_host_inflight_bytes')).toBe(20480);
  });

  it('drops peers that left and a peer="all" set directly (the old double count)', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    m.inflightWrites.set({ peer: 'all' }, 9);
    m.inflightWrites.set({ peer: 'east' }, 4);
    m.setSyncState('gone', 'degraded');
    // A status that does not report per-peer in-flight numbers keeps the directly set ones, minus "all".
    bindStatusGauges(m, () => status({ peers: [{ name: 'east', relation: 'mirror', link: 'up', sync: 'in-sync' }], hostInflight: undefined }));
    const text = await m.registry.metrics();
    expect(samples(text, 'geomirror_inflight_writes').map((s) => [s.labels.peer, s.value])).toEqual([['east', 4]]);
    expect(samples(text, 'geomirror_peer_sync_state').map((s) => s.labels.peer)).not.toContain('gone');
    expect(value(text, 'geomirror_host_inflight_writes') ?? 0).toBe(0); // prom-client always shows a label-less gauge
  });

  it('sets states directly (one-hot) while no status is bound', async () => {
    const m = createSiteMetrics({ site: 'w', role: 'witness', cluster: 'demo', processMetrics: false });
    m.setLinkState('local', 'down');
    m.setLinkState('local', 'up');
    const text = await m.registry.metrics();
    expect(samples(text, 'geomirror_link_state').map((s) => [s.labels.state, s.value])).toEqual([['down', 0], ['connecting', 0], ['up', 1]]);
  });

  it('counts host reads, read bytes and I/O errors; ioError counts device failures', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const dev = new MemoryDevice({ blockSizeBytes: 4096, blockCount: 16 });
    const exp = meteredExport(blockDeviceExport(dev, { name: 'v', description: '' }), m);
    await exp.read(0, 8192);
    await exp.read(8192, 4096);
    await exp.write(0, Buffer.alloc(4096), { fua: false });
    await dev.close();
    await expect(exp.read(0, 4096)).rejects.toThrow();
    await expect(exp.flush()).rejects.toThrow();
    m.ioError('loopback:/data/east.img', 'write');
    m.ioError('loopback:/data/east.img', 'write');
    const text = await m.registry.metrics();
    expect(value(text, 'geomirror_reads_total')).toBe(2);
    expect(value(text, 'geomirror_read_bytes_total')).toBe(12288);
    expect(value(text, 'geomirror_host_io_errors_total', { op: 'read' })).toBe(1);
    expect(value(text, 'geomirror_host_io_errors_total', { op: 'flush' })).toBe(1);
    expect(value(text, 'geomirror_device_io_errors_total', { device: 'loopback:/data/east.img', op: 'write' })).toBe(2);
  });

  it('every status series carries its volume and consistency group; a site with several volumes reports each group for each of its volumes (issue 20)', async () => {
    const single = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    bindStatusGauges(single, () => status());
    expect(samples(await single.registry.metrics(), 'geomirror_epoch')).toEqual([{ labels: expect.objectContaining({ volume: 'vol0', group: 'vol0' }), value: 3 }]);
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const db = status({ volume: 'db', epoch: 4 });
    const vm = status({ volume: 'vm1', epoch: 7, lastSeqAcked: '9' });
    bindStatusGauges(m, () => ({ ...db, groups: [
      { group: 'db', volumes: [{ name: 'db-log', sizeBytes: 1 << 20, offsetBytes: 0 }, { name: 'db-data', sizeBytes: 4 << 20, offsetBytes: 1 << 20 }], status: db },
      { group: 'vm1', volumes: [{ name: 'vm1', sizeBytes: 8 << 20, offsetBytes: 0 }], status: vm },
    ] }));
    const text = await m.registry.metrics();
    expect(value(text, 'geomirror_epoch', { volume: 'db-log', group: 'db' })).toBe(4);
    expect(value(text, 'geomirror_epoch', { volume: 'db-data', group: 'db' })).toBe(4);
    expect(value(text, 'geomirror_epoch', { volume: 'vm1', group: 'vm1' })).toBe(7);
    expect(value(text, 'geomirror_last_seq_acked', { volume: 'vm1' })).toBe(9);
    expect(value(text, 'geomirror_peer_sync_state', { volume: 'db-data', peer: 'west', state: 'resyncing' })).toBe(1);
    expect(samples(text, 'geomirror_epoch')).toHaveLength(3);
  });
});

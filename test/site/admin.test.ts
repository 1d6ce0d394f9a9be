// Admin HTTP over real sockets on 127.0.0.1: /status JSON from the provider, /metrics in
// Prometheus text with the metrics the runtime updates, 404 and 405 otherwise.
import { afterEach, describe, expect, it } from 'vitest';
import { startAdminServer, type AdminServer } from '../../src/site/admin.js';
import { createSiteMetrics } from '../../src/site/metrics.js';
import type { SiteStatus } from '../../src/site/status.js';

const servers: AdminServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** The value of the one sample of `name` whose labels are exactly `labels` (any order). */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (JSON.stringify(Object.entries(got).sort()) === JSON.stringify(Object.entries(labels).sort())) return Number(m[3]);
  }
  return undefined;
}

function status(overrides: Partial<SiteStatus> = {}): SiteStatus {
  return {
    cluster: 'demo',
    site: 'local',
    role: 'primary',
    volume: 'vol0',
    epoch: 3,
    lastSeqAcked: '9007199254740993', // past 2^53: must survive as a string
    state: 'resyncing',
    resyncPercent: 41.5,
    cache: { usedBytes: 4096, capacityBytes: 65536, entries: 1 },
    peers: [{ name: 'east', relation: 'mirror', link: 'up', rttMs: 0.25, sync: 'resyncing', resyncPercent: 41.5 }],
    pid: process.pid,
    uptimeSeconds: 12,
    ...overrides,
  };
}

describe('admin server', () => {
  it('serves /status from the provider on each request', async () => {
    let epoch = 3;
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const admin = await startAdminServer({ host: '127.0.0.1', port: 0, status: async () => status({ epoch: epoch++ }), registry: metrics.registry });
    servers.push(admin);
    const first = await fetch(`${admin.url}/status`);
    expect(first.status).toBe(200);
    expect(first.headers.get('content-type')).toMatch(/^application\/json/);
    const body = (await first.json()) as SiteStatus;
    expect(body).toEqual(status({ epoch: 3 }));
    expect(((await (await fetch(`${admin.url}/status`)).json()) as SiteStatus).epoch).toBe(4);
  });

  it('serves the site metrics as Prometheus text', async () => {
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo' });
    metrics.writesTotal.inc({ op: 'write' }, 3);
    metrics.writeBytesTotal.inc({ op: 'write' }, 12288);
    metrics.ackLatencySeconds.observe({ peer: 'east' }, 0.0004);
    metrics.cacheUsedBytes.set(8192);
    metrics.inflightWrites.set({ peer: 'east' }, 2);
    metrics.resyncProgressRatio.set({ peer: 'west' }, 0.25);
    metrics.setLinkState('west', 'connecting');
    metrics.setSyncState('west', 'resyncing');
    metrics.epoch.set(7);
    const admin = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    servers.push(admin);
    const res = await fetch(`${admin.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const site = { cluster: 'demo', site: 'local', role: 'primary' };
    expect(sample(text, 'geomirror_writes_total', { ...site, op: 'write' })).toBe(3);
    expect(sample(text, 'geomirror_write_bytes_total', { ...site, op: 'write' })).toBe(12288);
    expect(sample(text, 'geomirror_ack_latency_seconds_bucket', { ...site, peer: 'east', le: '0.0005' })).toBe(1);
    expect(sample(text, 'geomirror_ack_latency_seconds_bucket', { ...site, peer: 'east', le: '0.00025' })).toBe(0);
    expect(sample(text, 'geomirror_cache_used_bytes', site)).toBe(8192);
    expect(sample(text, 'geomirror_inflight_writes', { ...site, peer: 'east' })).toBe(2);
    expect(sample(text, 'geomirror_resync_progress_ratio', { ...site, peer: 'west' })).toBe(0.25);
    expect(sample(text, 'geomirror_link_state', { ...site, peer: 'west' })).toBe(1);
    expect(sample(text, 'geomirror_peer_sync_state', { ...site, peer: 'west' })).toBe(1);
    expect(sample(text, 'geomirror_epoch', site)).toBe(7);
    expect(sample(text, 'process_resident_memory_bytes', site)).toBeGreaterThan(0);
  });
  it('answers 404 for other paths and 405 for writes', async () => {
    const metrics = createSiteMetrics({ site: 's', role: 'mirror', cluster: 'c', processMetrics: false });
    const admin = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    servers.push(admin);
    const missing = await fetch(`${admin.url}/nope`);
    expect(missing.status).toBe(404);
    expect(await missing.text()).toContain('try /status or /metrics');
    const post = await fetch(`${admin.url}/status`, { method: 'POST', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
  });

  it('answers 500 naming the error when the provider throws, and keeps serving', async () => {
    const metrics = createSiteMetrics({ site: 's', role: 'mirror', cluster: 'c', processMetrics: false });
    let fail = true;
    const admin = await startAdminServer({
      host: '127.0.0.1',
      port: 0,
      status: () => {
        if (fail) throw new Error('runtime not ready');
        return status();
      },
      registry: metrics.registry,
    });
    servers.push(admin);
    const res = await fetch(`${admin.url}/status`);
    expect(res.status).toBe(500);
    expect(await res.text()).toContain('runtime not ready');
    fail = false;
    expect((await fetch(`${admin.url}/status`)).status).toBe(200);
  });

  it('names a taken port', async () => {
    const metrics = createSiteMetrics({ site: 's', role: 'mirror', cluster: 'c', processMetrics: false });
    const first = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    servers.push(first);
    await expect(startAdminServer({ host: '127.0.0.1', port: first.port, status: () => status(), registry: metrics.registry })).rejects.toThrow(
      `admin: cannot listen on 127.0.0.1:${first.port}: the port is already in use`,
    );
  });
});

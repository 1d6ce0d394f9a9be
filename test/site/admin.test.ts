// Admin HTTP over real sockets on 127.0.0.1: /status JSON from the provider, /metrics in
// Prometheus text with the metrics the runtime updates, 404 and 405 otherwise.
import { afterEach, describe, expect, it } from 'vitest';
import { roleChangeAuth, roleChangeSkewSecondsMax, startAdminServer, type AdminServer, type AdminServerOptions } from '../../src/site/admin.js';
import { RoleChangeError, type RoleChangeAnswer } from '../../src/site/role-change.js';
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
    // States are labels: 1 for the current state, 0 for the others.
    expect(sample(text, 'geomirror_link_state', { ...site, peer: 'west', state: 'connecting' })).toBe(1);
    expect(sample(text, 'geomirror_link_state', { ...site, peer: 'west', state: 'up' })).toBe(0);
    expect(sample(text, 'geomirror_peer_sync_state', { ...site, peer: 'west', state: 'resyncing' })).toBe(1);
    expect(sample(text, 'geomirror_peer_sync_state', { ...site, peer: 'west', state: 'in-sync' })).toBe(0);
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

describe('admin role change (POST /promote, /demote)', () => {
  const secret = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const now = (): number => Math.floor(Date.now() / 1000);

  async function start(roleChange: AdminServerOptions['roleChange']): Promise<AdminServer> {
    const metrics = createSiteMetrics({ site: 'backup', role: 'standby', cluster: 'demo', processMetrics: false });
    const admin = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => status({ site: 'backup', role: 'standby' }), registry: metrics.registry, ...(roleChange ? { roleChange } : {}) });
    servers.push(admin);
    return admin;
  }

  /** A fake runtime: records every call, answers like a standby starting its promotion. */
  function fake(fail?: Error) {
    const calls: { action: string; reason: string }[] = [];
    const answer = (action: string) => async (reason: string): Promise<RoleChangeAnswer> => {
      calls.push({ action, reason });
      if (fail) throw fail;
      return { site: 'backup', epoch: 2, phase: action === 'promote' ? 'promoting' : 'mirror' };
    };
    return { calls, roleChange: { site: 'backup', secret, promote: answer('promote'), demote: answer('demote') } };
  }

  const post = (admin: AdminServer, path: string, authorization?: string) =>
    fetch(`${admin.url}${path}`, { method: 'POST', ...(authorization !== undefined ? { headers: { authorization } } : {}) });

  it('runs a request signed with the cluster key and answers its JSON', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    const res = await post(admin, '/promote?reason=maintenance%20at%20local', roleChangeAuth(secret, 'promote', 'backup', undefined, 'maintenance at local'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ site: 'backup', epoch: 2, phase: 'promoting' });
    const demoted = await post(admin, '/demote', roleChangeAuth(secret, 'demote', 'backup', now() - 30)); // within the allowed skew
    expect(demoted.status).toBe(200);
    expect(f.calls).toEqual([
      { action: 'promote', reason: 'maintenance at local' },
      { action: 'demote', reason: expect.stringMatching(/^planned switchover \(demote requested from .*127\.0\.0\.1\)$/) },
    ]);
  });

  it('refuses with 401 and does not call the runtime: wrong key, stale or future time, missing or malformed header, another action, site or reason', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    const other = Buffer.from('ffeeddccbbaa99887766554433221100', 'hex');
    const refusals: [string | undefined, RegExp][] = [
      [roleChangeAuth(other, 'promote', 'backup'), /signature does not match this cluster's key/],
      [roleChangeAuth(secret, 'promote', 'backup', now() - roleChangeSkewSecondsMax - 5), /request time \d+ is more than 60 s from this site's clock/],
      [roleChangeAuth(secret, 'promote', 'backup', now() + roleChangeSkewSecondsMax + 5), /request time \d+ is more than 60 s from this site's clock/],
      [roleChangeAuth(secret, 'demote', 'backup'), /signature does not match/], // signed for the other action
      [roleChangeAuth(secret, 'promote', 'local'), /signature does not match/], // signed for another site
      [roleChangeAuth(secret, 'promote', 'backup', undefined, 'another reason'), /signature does not match/], // the reason is signed too
      [undefined, /missing or malformed Authorization/],
      ['Bearer abc', /missing or malformed Authorization/],
      [roleChangeAuth(secret, 'promote', 'backup').toUpperCase(), /missing or malformed Authorization/],
      [`Geomirror ${now()}:${'0'.repeat(63)}`, /missing or malformed Authorization/],
    ];
    for (const [auth, why] of refusals) {
      const res = await post(admin, '/promote', auth);
      expect(res.status, String(auth)).toBe(401);
      expect(await res.text()).toMatch(new RegExp(`^promote refused: ${why.source}`));
    }
    expect(f.calls).toEqual([]);
  });

  it('answers 405 on GET /promote and /demote without calling the runtime', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    for (const action of ['promote', 'demote'] as const) {
      const res = await fetch(`${admin.url}/${action}`, { headers: { authorization: roleChangeAuth(secret, action, 'backup') } });
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe('POST');
      expect(await res.text()).toContain(`use POST (geomirror ${action} --site NAME)`);
    }
    expect(f.calls).toEqual([]);
  });

  it('answers 409 with the refusal when the runtime refuses, and when the role has no such action', async () => {
    const f = fake(new RoleChangeError('backup cannot promote: it is not following a primary (phase primary)'));
    const admin = await start(f.roleChange);
    const res = await post(admin, '/promote', roleChangeAuth(secret, 'promote', 'backup'));
    expect(res.status).toBe(409);
    expect(await res.text()).toBe('backup cannot promote: it is not following a primary (phase primary)\n');
    expect(f.calls).toHaveLength(1);

    const promoteOnly = await start({ site: 'backup', secret, promote: fake().roleChange.promote });
    const demote = await post(promoteOnly, '/demote', roleChangeAuth(secret, 'demote', 'backup'));
    expect(demote.status).toBe(409);
    expect(await demote.text()).toContain('this site cannot demote');
    const none = await start(undefined);
    expect((await post(none, '/promote', roleChangeAuth(secret, 'promote', 'backup'))).status).toBe(409);
  });

  it('answers 500 (not 409) when the runtime fails with another error, and keeps serving', async () => {
    const admin = await start(fake(new Error('disk on fire')).roleChange);
    const res = await post(admin, '/promote', roleChangeAuth(secret, 'promote', 'backup'));
    expect(res.status).toBe(500);
    expect(await res.text()).toContain('disk on fire');
    expect((await fetch(`${admin.url}/status`)).status).toBe(200);
  });

  it('leaves the read-only GETs as they were', async () => {
    const admin = await start(fake().roleChange);
    const st = await fetch(`${admin.url}/status`);
    expect(st.status).toBe(200);
    expect(((await st.json()) as SiteStatus).site).toBe('backup');
    expect((await fetch(`${admin.url}/metrics`)).status).toBe(200);
    expect((await fetch(`${admin.url}/status`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${admin.url}/nope`)).status).toBe(404);
  });
});

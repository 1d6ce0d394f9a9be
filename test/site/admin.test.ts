// Admin server over real sockets on 127.0.0.1: /status JSON from the provider, /metrics in
// Prometheus text with the metrics the runtime updates, 404 and 405 otherwise; every request
// authenticated (issue 17 item 6): one-time tokens from the cluster key, or a client certificate
// from the cluster CA over HTTPS; an unauthenticated GET and a replayed signed POST get 401.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { startAdminServer, type AdminServer, type AdminServerOptions } from '../../src/site/admin.js';
import { adminToken, adminTokenKey, tokenSkewSecondsMax } from '../../src/site/admin-auth.js';
import { RoleChangeError, type RoleChangeAnswer } from '../../src/site/role-change.js';
import { createSiteMetrics } from '../../src/site/metrics.js';
import type { SiteStatus } from '../../src/site/status.js';
import { parseConfig } from '../../src/site/config.js';
import { createCa, issueClientCert, preparePki } from '../../src/site/pki.js';
import { SiteTlsIdentity, tlsContextOptions } from '../../src/site/link-security.js';
import { adminRequest } from '../../src/cli/admin-client.js';

const servers: AdminServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

const clusterKey = randomBytes(32);
const tokenKey = adminTokenKey(clusterKey);

type StartOptions = Omit<AdminServerOptions, 'auth'> & { site?: string };

/** An admin server of site `site` (default local) of cluster demo, plain HTTP unless `tls`. */
async function startAdmin(o: StartOptions): Promise<AdminServer> {
  const { site, ...rest } = o;
  const admin = await startAdminServer({ ...rest, auth: { site: site ?? 'local', cluster: 'demo', tokenKey } });
  servers.push(admin);
  return admin;
}

/** fetch with a fresh token for (method, path, site); `token: false` sends none, a string sends that. */
function call(admin: AdminServer, path: string, o: { method?: string; site?: string; token?: string | false; body?: string } = {}): Promise<Response> {
  const method = o.method ?? 'GET';
  const token = o.token === false ? undefined : (o.token ?? adminToken(tokenKey, method, path, o.site ?? '*'));
  return fetch(`${admin.url}${path}`, { method, ...(o.body !== undefined ? { body: o.body } : {}), ...(token !== undefined ? { headers: { authorization: token } } : {}) });
}

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
    const admin = await startAdmin({ host: '127.0.0.1', port: 0, status: async () => status({ epoch: epoch++ }), registry: metrics.registry });
    const first = await call(admin, '/status');
    expect(first.status).toBe(200);
    expect(first.headers.get('content-type')).toMatch(/^application\/json/);
    const body = (await first.json()) as SiteStatus;
    expect(body).toEqual(status({ epoch: 3 }));
    expect(((await (await call(admin, '/status')).json()) as SiteStatus).epoch).toBe(4);
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
    const admin = await startAdmin({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    const res = await call(admin, '/metrics');
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
    const admin = await startAdmin({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    const missing = await call(admin, '/nope');
    expect(missing.status).toBe(404);
    expect(await missing.text()).toContain('try /status or /metrics');
    const post = await call(admin, '/status', { method: 'POST', site: 'local', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
  });

  it('answers 500 naming the error when the provider throws, and keeps serving', async () => {
    const metrics = createSiteMetrics({ site: 's', role: 'mirror', cluster: 'c', processMetrics: false });
    let fail = true;
    const admin = await startAdmin({
      host: '127.0.0.1',
      port: 0,
      status: () => {
        if (fail) throw new Error('runtime not ready');
        return status();
      },
      registry: metrics.registry,
    });
    const res = await call(admin, '/status');
    expect(res.status).toBe(500);
    expect(await res.text()).toContain('runtime not ready');
    fail = false;
    expect((await call(admin, '/status')).status).toBe(200);
  });

  it('names a taken port', async () => {
    const metrics = createSiteMetrics({ site: 's', role: 'mirror', cluster: 'c', processMetrics: false });
    const first = await startAdmin({ host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry });
    await expect(startAdmin({ host: '127.0.0.1', port: first.port, status: () => status(), registry: metrics.registry })).rejects.toThrow(
      `admin: cannot listen on 127.0.0.1:${first.port}: the port is already in use`,
    );
  });
});

describe('admin role change (POST /promote, /demote)', () => {
  const now = (): number => Math.floor(Date.now() / 1000);

  async function start(roleChange: AdminServerOptions['roleChange']): Promise<AdminServer> {
    const metrics = createSiteMetrics({ site: 'backup', role: 'standby', cluster: 'demo', processMetrics: false });
    return startAdmin({ site: 'backup', host: '127.0.0.1', port: 0, status: () => status({ site: 'backup', role: 'standby' }), registry: metrics.registry, ...(roleChange ? { roleChange } : {}) });
  }

  /** A fake runtime: records every call, answers like a standby starting its promotion. */
  function fake(fail?: Error) {
    const calls: { action: string; reason: string }[] = [];
    const answer = (action: string) => async (reason: string): Promise<RoleChangeAnswer> => {
      calls.push({ action, reason });
      if (fail) throw fail;
      return { site: 'backup', epoch: 2, phase: action === 'promote' ? 'promoting' : 'mirror' };
    };
    return { calls, roleChange: { promote: answer('promote'), demote: answer('demote') } };
  }

  const post = (admin: AdminServer, path: string, authorization?: string | false) =>
    call(admin, path, { method: 'POST', site: 'backup', ...(authorization !== undefined ? { token: authorization } : {}) });

  it('runs a request with a token made from the cluster key and answers its JSON', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    const res = await post(admin, '/promote?reason=maintenance%20at%20local');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ site: 'backup', epoch: 2, phase: 'promoting' });
    const demoted = await post(admin, '/demote', adminToken(tokenKey, 'POST', '/demote', 'backup', now() - 30)); // within the allowed skew
    expect(demoted.status).toBe(200);
    expect(f.calls).toEqual([
      { action: 'promote', reason: 'maintenance at local' },
      { action: 'demote', reason: expect.stringMatching(/^planned switchover \(demote requested from .*127\.0\.0\.1\)$/) },
    ]);
  });

  it('a replayed signed POST gets 401 and the runtime runs it once', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    const token = adminToken(tokenKey, 'POST', '/demote', 'backup');
    expect((await post(admin, '/demote', token)).status).toBe(200);
    const replay = await post(admin, '/demote', token);
    expect(replay.status).toBe(401);
    expect(await replay.text()).toContain('token already used (replayed request)');
    expect(f.calls).toHaveLength(1);
  });

  it('refuses with 401 and does not call the runtime: wrong key, stale or future time, missing or malformed header, another method, path, site or reason, a token for any site', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    const other = adminTokenKey(randomBytes(32));
    const refusals: [string | false, RegExp][] = [
      [adminToken(other, 'POST', '/promote', 'backup'), /token does not match this cluster's key/],
      [adminToken(tokenKey, 'POST', '/promote', 'backup', now() - tokenSkewSecondsMax - 5), /token time \d+ is more than 60 s from this site's clock/],
      [adminToken(tokenKey, 'POST', '/promote', 'backup', now() + tokenSkewSecondsMax + 5), /token time \d+ is more than 60 s from this site's clock/],
      [adminToken(tokenKey, 'POST', '/demote', 'backup'), /token does not match/], // made for the other action
      [adminToken(tokenKey, 'GET', '/promote', 'backup'), /token does not match/], // made for another method
      [adminToken(tokenKey, 'POST', '/promote', 'local'), /token is for site local, this is site backup/],
      [adminToken(tokenKey, 'POST', '/promote?reason=another', 'backup'), /token does not match/], // the reason is signed too
      [adminToken(tokenKey, 'POST', '/promote', '*'), /a token for any site only admits GET/],
      [false, /no credentials/],
      ['Bearer abc', /malformed Authorization/],
      [adminToken(tokenKey, 'POST', '/promote', 'backup').toUpperCase(), /malformed Authorization/],
    ];
    for (const [auth, why] of refusals) {
      const res = await post(admin, '/promote', auth);
      expect(res.status, String(auth)).toBe(401);
      expect(await res.text()).toMatch(new RegExp(`^unauthorized: ${why.source}`));
    }
    expect(f.calls).toEqual([]);
  });

  it('answers 405 on GET /promote and /demote without calling the runtime', async () => {
    const f = fake();
    const admin = await start(f.roleChange);
    for (const action of ['promote', 'demote'] as const) {
      const res = await call(admin, `/${action}`, { site: 'backup' });
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe('POST');
      expect(await res.text()).toContain(`use POST (geomirror ${action} --site NAME)`);
    }
    expect(f.calls).toEqual([]);
  });

  it('answers 409 with the refusal when the runtime refuses, and when the role has no such action', async () => {
    const f = fake(new RoleChangeError('backup cannot promote: it is not following a primary (phase primary)'));
    const admin = await start(f.roleChange);
    const res = await post(admin, '/promote');
    expect(res.status).toBe(409);
    expect(await res.text()).toBe('backup cannot promote: it is not following a primary (phase primary)\n');
    expect(f.calls).toHaveLength(1);

    const promoteOnly = await start({ promote: fake().roleChange.promote });
    const demote = await post(promoteOnly, '/demote');
    expect(demote.status).toBe(409);
    expect(await demote.text()).toContain('this site cannot demote');
    const none = await start(undefined);
    expect((await post(none, '/promote')).status).toBe(409);
  });

  it('answers 500 (not 409) when the runtime fails with another error, and keeps serving', async () => {
    const admin = await start(fake(new Error('disk on fire')).roleChange);
    const res = await post(admin, '/promote');
    expect(res.status).toBe(500);
    expect(await res.text()).toContain('disk on fire');
    expect((await call(admin, '/status')).status).toBe(200);
  });
});

describe('admin authentication (issue 17 item 6)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'geomirror-admin-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const yaml = (cluster: string) =>
    `cluster: ${cluster}\nsecret: ${clusterKey.toString('hex')}\nvolume: { name: v, size: 1MiB }\nsites:\n  local: { role: primary, nbd: 127.0.0.1:1, admin: 127.0.0.1:2, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], mirrors: [east] }\n  east: { role: mirror, listen: 127.0.0.1:3, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }\n`;

  it('an unauthenticated GET of /status, /metrics or /checksums gets 401 and says nothing about the site', async () => {
    let asked = 0;
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const admin = await startAdmin({ host: '127.0.0.1', port: 0, status: () => (asked++, status()), registry: metrics.registry, checksums: async () => { asked++; throw new Error('not reached'); } });
    for (const path of ['/status', '/metrics', '/checksums?offset=0&regionBytes=4096&count=1', '/nope']) {
      const res = await call(admin, path, { token: false });
      expect(res.status, path).toBe(401);
      const text = await res.text();
      expect(text).toMatch(/^unauthorized: no credentials/);
      expect(text).not.toContain('local');
    }
    expect(asked).toBe(0);
    // A token made for another path does not open this one.
    expect((await call(admin, '/status', { token: adminToken(tokenKey, 'GET', '/metrics') })).status).toBe(401);
    expect((await call(admin, '/status')).status).toBe(200);
  });

  it('HTTPS with the site certificate: a client certificate from the cluster CA is enough, none or a foreign one gets 401', async () => {
    const config = parseConfig(yaml('demo'), join(dir, 'demo', 'cluster.yaml'));
    await preparePki(config);
    const clientDir = join(dir, 'demo', 'client-prom');
    await issueClientCert(config, 'prometheus', clientDir);
    const foreign = parseConfig(yaml('demo'), join(dir, 'foreign', 'cluster.yaml')); // same names, another CA
    await createCa(foreign);
    const foreignDir = join(dir, 'foreign', 'client-x');
    await issueClientCert(foreign, 'prometheus', foreignDir);
    const identity = new SiteTlsIdentity(config, 'local', { info: () => {}, warn: () => {} });
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    const admin = await startAdmin({
      host: '127.0.0.1', port: 0, status: () => status(), registry: metrics.registry,
      tls: { contextOptions: () => tlsContextOptions(identity.material), trusted: () => identity.trusted(), onReload: (fn) => identity.onReload(fn) },
    });
    expect(admin.url).toMatch(/^https:\/\//);
    const ca = readFileSync(config.tls.caCert, 'utf8');
    const get = (cert?: string, key?: string): Promise<{ code: number; body: string }> =>
      new Promise((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port: admin.port, path: '/status', ca, ...(cert ? { cert, key } : {}), checkServerIdentity: () => undefined, agent: false }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    const ok = await get(readFileSync(join(clientDir, 'client-cert.pem'), 'utf8'), readFileSync(join(clientDir, 'client-key.pem'), 'utf8'));
    expect(ok.code).toBe(200);
    expect((JSON.parse(ok.body) as SiteStatus).site).toBe('local');
    const none = await get();
    expect(none.code).toBe(401);
    const bad = await get(readFileSync(join(foreignDir, 'client-cert.pem'), 'utf8'), readFileSync(join(foreignDir, 'client-key.pem'), 'utf8'));
    expect(bad.code).toBe(401);
    expect(bad.body).toContain("not signed by this cluster's CA");
    // The CLI's client: HTTPS, checks the server is site local of cluster demo, token auth.
    const viaCli = await adminRequest({ host: '127.0.0.1', port: admin.port, method: 'GET', path: '/status', site: 'local', creds: { cluster: 'demo', ca, tokenKey }, timeoutMs: 5000, bodyCharsMax: 1 << 20 });
    expect(viaCli.code).toBe(200);
    await expect(adminRequest({ host: '127.0.0.1', port: admin.port, method: 'GET', path: '/status', site: 'east', creds: { cluster: 'demo', ca, tokenKey }, timeoutMs: 5000, bodyCharsMax: 1 << 20 })).rejects.toThrow(/is site local, not east/);
  });
});

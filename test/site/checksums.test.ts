// GET /checksums (geomirror verify's per-site half) and /metrics refreshing the runtime's gauges:
// keyed digests (HMAC-SHA256) compared with node:crypto over the same bytes, bounds refused with 400, a site that
// cannot answer with 503.
import { createHmac, randomBytes } from 'node:crypto';
import { adminToken, adminTokenKey } from '../../src/site/admin-auth.js';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../hal/memory.js';
import { startAdminServer, type AdminServer } from '../../src/site/admin.js';
import { ChecksumRequestError, checksumCountMax, parseChecksumQuery, regionChecksums } from '../../src/site/checksums.js';
import { createSiteMetrics } from '../../src/site/metrics.js';
import type { SiteStatus } from '../../src/site/status.js';

const servers: AdminServer[] = [];
afterAll(async () => Promise.all(servers.map((s) => s.close())));
const kib = 1024;
const digestKey = randomBytes(32);
const tokenKey = adminTokenKey(randomBytes(32));
const auth = { site: 'local', cluster: 'c', tokenKey };
const get = (url: string, path: string, method = 'GET') => fetch(`${url}${path}`, { method, headers: { authorization: adminToken(tokenKey, method, path, 'local') } });
const status: SiteStatus = { cluster: 'c', site: 'local', role: 'primary', volume: 'vol0', epoch: 1, lastSeqAcked: '0', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 0, entries: 0 }, peers: [], pid: 1, uptimeSeconds: 0 };

describe('regionChecksums', () => {
  it('digests each region of the device, clipping the last one at the volume end', async () => {
    const dev = new MemoryDevice({ blockSizeBytes: 4096, blockCount: 10 });
    const data = Buffer.alloc(40 * kib);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
    await dev.write(0, data);
    const a = await regionChecksums(dev, 40 * kib, { offsetBytes: 16 * kib, regionBytes: 16 * kib, count: 5, digestKey });
    const mac = (b: Buffer, k = digestKey) => createHmac('sha256', k).update(b).digest('hex');
    expect(a.checksums).toEqual([mac(data.subarray(16 * kib, 32 * kib)), mac(data.subarray(32 * kib, 40 * kib))]);
    // Keyed: without the cluster's key a digest says nothing about the data.
    const other = await regionChecksums(dev, 40 * kib, { offsetBytes: 16 * kib, regionBytes: 16 * kib, count: 1, digestKey: randomBytes(32) });
    expect(other.checksums[0]).not.toBe(a.checksums[0]);
    expect(a).toMatchObject({ algorithm: 'hmac-sha256', volumeBytes: 40 * kib, offsetBytes: 16 * kib, regionBytes: 16 * kib });
  });

  it('refuses requests outside its bounds, naming the parameter', () => {
    const q = (s: string) => () => parseChecksumQuery(new URLSearchParams(s), 1024 * kib, 4096, digestKey);
    expect(q('offset=0&regionBytes=4096&count=1')()).toEqual({ offsetBytes: 0, regionBytes: 4096, count: 1, digestKey });
    expect(q('offset=0&regionBytes=4096')).toThrow('missing ?count=');
    expect(q('offset=0&regionBytes=1000&count=1')).toThrow('regionBytes=1000 must be a multiple of the block size 4096');
    expect(q('offset=4097&regionBytes=4096&count=1')).toThrow('offset=4097');
    expect(q(`offset=${1024 * kib}&regionBytes=4096&count=1`)).toThrow('below the volume size');
    expect(q(`offset=0&regionBytes=4096&count=${checksumCountMax + 1}`)).toThrow(`count=${checksumCountMax + 1} must be between 1 and ${checksumCountMax}`);
    expect(q('offset=0&regionBytes=-1&count=1')).toThrow('is not a whole number');
  });
});

describe('admin /checksums and /metrics', () => {
  it('answers digests as JSON, 400 for a bad request, 503 when the site cannot answer', async () => {
    let ready = false;
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'c', processMetrics: false });
    const admin = await startAdminServer({
      host: '127.0.0.1',
      port: 0,
      status: () => status,
      registry: metrics.registry,
      auth,
      checksums: async (query) => {
        if (!ready) throw new ChecksumRequestError('site local is still starting; retry in a moment', 503);
        const req = parseChecksumQuery(query, 64 * kib, 4096, digestKey);
        return { algorithm: 'hmac-sha256', volumeBytes: 64 * kib, offsetBytes: req.offsetBytes, regionBytes: req.regionBytes, checksums: ['ab'] };
      },
    });
    servers.push(admin);
    const starting = await get(admin.url, '/checksums?offset=0&regionBytes=4096&count=1');
    expect([starting.status, await starting.text()]).toEqual([503, 'site local is still starting; retry in a moment\n']);
    ready = true;
    const ok = await get(admin.url, '/checksums?offset=0&regionBytes=4096&count=1');
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ algorithm: 'hmac-sha256', checksums: ['ab'] });
    const bad = await get(admin.url, '/checksums?offset=0&regionBytes=4096&count=0');
    expect(bad.status).toBe(400);
    expect(await bad.text()).toContain('count=0 must be between 1 and');
    expect((await get(admin.url, '/checksums', 'POST')).status).toBe(405);
  });

  it('refreshes the runtime gauges (via status()) on every /metrics scrape', async () => {
    const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'c', processMetrics: false });
    let epoch = 0;
    const admin = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => (metrics.epoch.set(++epoch), status), registry: metrics.registry, auth });
    servers.push(admin);
    expect(await (await get(admin.url, '/metrics')).text()).toMatch(/^geomirror_epoch\{[^}]*\} 1$/m);
    expect(await (await get(admin.url, '/metrics')).text()).toMatch(/^geomirror_epoch\{[^}]*\} 2$/m);
  });
});

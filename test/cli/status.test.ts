// geomirror status: queries real admin servers on 127.0.0.1 (HTTPS with each site's certificate,
// authenticated with a token from the cluster key) and prints one row per site, taking a
// mirror's sync state, link and RTT from the primary that feeds it.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coordinatorLines, failoverLines, fetchStatus, formatEtaSeconds, formatStatusTable, peerLines, progressBar, progressLines, statusRows, watchFrame, type StatusResult } from '../../src/cli/status.js';
import { startAdminServer, type AdminServer, type AdminServerOptions } from '../../src/site/admin.js';
import { randomBytes } from 'node:crypto';
import { adminTokenKey } from '../../src/site/admin-auth.js';
import { adminCredentials, type AdminCredentials } from '../../src/cli/admin-client.js';
import { parseConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';
import { SiteTlsIdentity, tlsContextOptions } from '../../src/site/link-security.js';
import { createSiteMetrics } from '../../src/site/metrics.js';
import type { FailoverRecord, SiteStatus } from '../../src/site/status.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-status-'));

const base = { cluster: 'demo', volume: 'vol0', epoch: 2, pid: 1, uptimeSeconds: 5 };
const primary: SiteStatus = {
  ...base,
  site: 'local',
  role: 'primary',
  lastSeqAcked: '1200',
  state: 'resyncing',
  resyncPercent: 40,
  cache: { usedBytes: 1024 * 1024, capacityBytes: 64 * 1024 * 1024, entries: 3 },
  peers: [
    { name: 'east', relation: 'mirror', link: 'up', rttMs: 0.3, sync: 'in-sync' },
    { name: 'west', relation: 'mirror', link: 'up', rttMs: 12.5, sync: 'resyncing', resyncPercent: 40.7 },
  ],
};
const east: SiteStatus = { ...base, site: 'east', role: 'mirror', lastSeqAcked: '1200', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 64 * 1024 * 1024, entries: 0 }, peers: [{ name: 'local', relation: 'upstream', link: 'up', rttMs: 0.3 }] };
const west: SiteStatus = { ...east, site: 'west', lastSeqAcked: '900', peers: [{ name: 'local', relation: 'upstream', link: 'up', rttMs: 12.5 }] };

const servers: AdminServer[] = [];
let cfg = '';
let deadPort = 0;
let creds: AdminCredentials;
let localTls: AdminServerOptions['tls'];
const key = randomBytes(32);
beforeAll(async () => {
  writeFileSync(join(dir, 'cluster.key'), `${key.toString('hex')}\n`, { mode: 0o600 });
  const clusterText = (p: number, e: number, w: number, d = deadPort) => `cluster: demo
secret: file:./cluster.key
volume: { name: vol0, size: 1MiB }
sites:
  local: { role: primary, nbd: 127.0.0.1:10809, admin: 127.0.0.1:${p}, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"], mirrors: [east, west, north] }
  east: { role: mirror, listen: 127.0.0.1:7401, admin: 127.0.0.1:${e}, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"] }
  west: { role: mirror, listen: 127.0.0.1:7402, admin: 127.0.0.1:${w}, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"] }
  north: { role: mirror, listen: 127.0.0.1:7403, admin: 127.0.0.1:${d}, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"] }
`;
  cfg = join(dir, 'cluster.yaml');
  // Certificates name hosts, not ports: issue them first, then start the servers on free ports.
  const first = parseConfig(clusterText(1, 2, 3, 4), cfg);
  await preparePki(first);
  const quiet = { info: () => {}, warn: () => {} };
  for (const s of [primary, east, west]) {
    const m = createSiteMetrics({ site: s.site, role: s.role, cluster: 'demo', processMetrics: false });
    const id = new SiteTlsIdentity(first, s.site, quiet);
    if (s.site === 'local') localTls = { contextOptions: () => tlsContextOptions(id.material), trusted: () => id.trusted(), onReload: () => undefined };
    servers.push(await startAdminServer({
      host: '127.0.0.1', port: 0, status: () => s, registry: m.registry,
      auth: { site: s.site, cluster: 'demo', tokenKey: adminTokenKey(key) },
      tls: { contextOptions: () => tlsContextOptions(id.material), trusted: () => id.trusted(), onReload: () => undefined },
    }));
  }
  // A port that was free a moment ago: nobody answers there.
  const m = createSiteMetrics({ site: 'x', role: 'mirror', cluster: 'demo', processMetrics: false });
  const gone = await startAdminServer({ host: '127.0.0.1', port: 0, status: () => east, registry: m.registry, auth: { site: 'north', cluster: 'demo', tokenKey: adminTokenKey(key) } });
  deadPort = gone.port;
  await gone.close();
  const [p, e, w] = servers.map((s) => s.port);
  writeFileSync(cfg, clusterText(p!, e!, w!));
  creds = adminCredentials(parseConfig(clusterText(p!, e!, w!), cfg));
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

describe('geomirror status', () => {
  it('builds rows from the sites and their feeders', async () => {
    const results = await Promise.all([
      fetchStatus({ name: 'local', admin: `127.0.0.1:${servers[0]!.port}`, site: 'local' }, 3000, creds),
      fetchStatus({ name: 'east', admin: `127.0.0.1:${servers[1]!.port}`, site: 'east' }, 3000, creds),
      fetchStatus({ name: 'west', admin: `127.0.0.1:${servers[2]!.port}`, site: 'west' }, 3000, creds),
      fetchStatus({ name: 'north', admin: `127.0.0.1:${deadPort}`, site: 'north' }, 3000, creds),
    ]);
    expect(results[3]).toEqual({ target: { name: 'north', admin: `127.0.0.1:${deadPort}`, site: 'north' }, error: 'connection refused (is the site running?)' });
    const rows = statusRows(results);
    expect(rows).toEqual([
      { site: 'local', role: 'primary', epoch: '2', acked: '1200', state: 'resyncing 40%', cache: '1 MiB/64 MiB (1%)', link: '2/2 up', rtt: '-' },
      { site: 'east', role: 'mirror', epoch: '2', acked: '1200', state: 'in-sync', cache: '0 B/64 MiB (0%)', link: 'up', rtt: '300 us' },
      { site: 'west', role: 'mirror', epoch: '2', acked: '900', state: 'resyncing 40%', cache: '0 B/64 MiB (0%)', link: 'up', rtt: '12.5 ms' },
      { site: 'north', role: '?', epoch: '-', acked: '-', state: 'unreachable', cache: '-', link: '-', rtt: '-' },
    ]);
    const table = formatStatusTable(rows).split('\n');
    expect(table[0]).toMatch(/^SITE\s+ROLE\s+EPOCH\s+LAST ACKED\s+STATE\s+CACHE\s+LINK\s+RTT$/);
    expect(table[3]).toMatch(/^west\s+mirror\s+2\s+900\s+resyncing 40%\s+0 B\/64 MiB \(0%\)\s+up\s+12\.5 ms$/);
  });

  it('prints the table for a cluster file and exits 1 when a site does not answer', async () => {
    const err = await run(process.execPath, [bin, 'status', '--config', cfg]).then(
      () => undefined,
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    const lines = err!.stdout.trim().split('\n');
    expect(lines).toHaveLength(5);
    expect(lines[1]).toMatch(/^local\s+primary\s+2\s+1200\s+resyncing 40%/);
    expect(lines[4]).toMatch(/^north\s+\?\s+-\s+-\s+unreachable/);
    expect(err!.stderr).toContain(`north (127.0.0.1:${deadPort}): connection refused`);
  });

  it('shows acting and configured roles after a failover, a fenced primary, and one line per failover', () => {
    const promoted: FailoverRecord = { at: '2026-11-25T05:49:35.412Z', kind: 'promoted', site: 'backup', fromEpoch: 1, toEpoch: 2, lastSeq: '2', reason: 'primary silent for 5000 ms; 2 of 3 votes' };
    const fenced: FailoverRecord = { at: '2026-11-25T05:49:36.001Z', kind: 'fenced', site: 'local', fromEpoch: 1, toEpoch: 2, lastSeq: '2', reason: 'a peer is at epoch 2: another site was promoted' };
    const demoted: FailoverRecord = { at: '2026-11-25T05:40:00.000Z', kind: 'demoted', site: 'local', fromEpoch: 1, toEpoch: 1, lastSeq: '0', reason: 'planned switchover' };
    const at = (name: string, status: SiteStatus): StatusResult => ({ target: { name, admin: '127.0.0.1:1' }, status });
    const results: StatusResult[] = [
      // The old primary: fenced, now a mirror; it knows of its own demotion and fencing.
      at('local', { ...east, site: 'local', role: 'mirror', configuredRole: 'primary', fencedBy: 2, epoch: 2, peers: [{ name: 'backup', relation: 'upstream', link: 'up', rttMs: 0.4 }], failovers: [demoted, fenced] }),
      // The promoted standby reports the same promotion with a millisecond time that moved: one line.
      at('backup', { ...primary, site: 'backup', role: 'primary', configuredRole: 'standby', epoch: 2, state: 'in-sync', peers: [{ name: 'local', relation: 'mirror', link: 'up', sync: 'in-sync' }], failovers: [promoted, { ...promoted, at: '2026-11-25T05:49:35.413Z' }] }),
      at('east', { ...east, failovers: [fenced, promoted] }),
      { target: { name: 'west', admin: '127.0.0.1:2' }, error: 'connection refused (is the site running?)' },
    ];
    const rows = statusRows(results);
    expect(rows.map((r) => [r.site, r.role, r.state])).toEqual([
      ['local', 'mirror (was primary)', 'in-sync, fenced by epoch 2'],
      ['backup', 'primary (was standby)', 'in-sync'],
      ['east', 'mirror', 'in-sync'],
      ['west', '?', 'unreachable'],
    ]);
    const lines = failoverLines(results);
    expect(lines).toEqual([
      'failover 2026-11-25T05:40:00Z local demoted epoch 1 at seq 0: planned switchover',
      'failover 2026-11-25T05:49:35Z backup promoted epoch 1 -> 2 at seq 2: primary silent for 5000 ms; 2 of 3 votes',
      'failover 2026-11-25T05:49:36Z local fenced epoch 1 -> 2 at seq 2: a peer is at epoch 2: another site was promoted',
    ]);
    const table = formatStatusTable(rows, lines).split('\n');
    expect(table[1]).toMatch(/^local\s+mirror \(was primary\)\s+2\s+1200\s+in-sync, fenced by epoch 2\s/);
    expect(table.slice(5)).toEqual(['', ...lines]);
    // Sites that never failed over (or an older site without the field) add no lines; junk is skipped.
    expect(failoverLines([at('east', east), at('x', { ...east, failovers: [{ at: 7 } as unknown as FailoverRecord] })])).toEqual([]);
    expect(formatStatusTable(statusRows([at('east', east)]), [])).not.toContain('\n\n');
    expect(failoverLines([at('local', { ...east, failovers: [{ ...demoted, reason: 'line one\n\u001b[31mred' }] })])).toEqual(['failover 2026-11-25T05:40:00Z local demoted epoch 1 at seq 0: line one [31mred']);
  });

  it('with an etcd coordinator: a line per site with lease, key holder, epoch and reachability, why when host writes are not plainly served, and the revision of a promotion', () => {
    const at = (name: string, status: SiteStatus): StatusResult => ({ target: { name, admin: '127.0.0.1:1' }, status });
    const holder = { endpoints: ['http://127.0.0.1:2379'], key: '/geomirror/demo/vol0/primary', mode: 'holder' as const, reachable: false, lease: 'lost' as const, leaseId: '7587', holder: 'local', epoch: 2, revision: '41', authority: 'exempt' as const, why: 'etcd is unreachable from here and from the standby too' };
    const results: StatusResult[] = [
      at('local', { ...primary, coordinator: holder }),
      at('backup', { ...east, site: 'backup', role: 'standby', coordinator: { endpoints: holder.endpoints, key: holder.key, mode: 'candidate', lease: 'held', leaseId: '7587', holder: 'local', epoch: 2, reachable: true, why: 'local holds the key' } }),
      at('east', east),
    ];
    expect(coordinatorLines(results)).toEqual([
      'coordinator local holder: lease lost (7587), key held by local, epoch 2, etcd unreachable, host writes served without a lease: etcd is unreachable from here and from the standby too',
      'coordinator backup candidate: lease held (7587), key held by local, epoch 2, etcd reachable: local holds the key',
    ]);
    const promoted: FailoverRecord = { at: '2026-11-25T05:49:35Z', kind: 'promoted', site: 'backup', fromEpoch: 1, toEpoch: 2, lastSeq: '2', reason: 'won the key', revision: '41' };
    expect(failoverLines([at('backup', { ...east, failovers: [promoted] })])).toEqual(['failover 2026-11-25T05:49:35Z backup promoted epoch 1 -> 2 at seq 2: won the key (etcd revision 41)']);
  });

  it('prints JSON for one admin address', async () => {
    const { stdout } = await run(process.execPath, [bin, 'status', '--json', '--admin', `127.0.0.1:${servers[2]!.port}`, '--config', cfg]);
    const out = JSON.parse(stdout) as { site: string; status: SiteStatus }[];
    expect(out).toEqual([{ site: 'west', admin: `127.0.0.1:${servers[2]!.port}`, status: west }]);
  });
});

describe('status numbers and progress bars (issue 19)', () => {
  const at = (name: string, status: SiteStatus): StatusResult => ({ target: { name, admin: '127.0.0.1:1' }, status });
  const resyncing: SiteStatus = {
    ...primary,
    peers: [
      { name: 'east', relation: 'mirror', link: 'up', sync: 'in-sync', outOfSyncBytes: 0, lastSeqAcked: '1200' },
      { name: 'west', relation: 'mirror', link: 'up', sync: 'resyncing', resyncPercent: 40.7, outOfSyncBytes: 120 * 2 ** 20, resyncBytesPerSec: 16 * 2 ** 20, resyncEtaSeconds: 7.5, lastSeqAcked: '900' },
    ],
    verify: { doneBytes: 256 * 2 ** 20, totalBytes: 2 ** 30 },
  };

  it('formats ETAs and bars', () => {
    expect([8, 75, 3700].map(formatEtaSeconds)).toEqual(['8s', '1m15s', '1h01m']);
    expect(progressBar(0.5, 10)).toBe('[#####-----]  50%');
    expect(progressBar(0, 4)).toBe('[----]   0%');
    expect(progressBar(1.7, 4)).toBe('[####] 100%');
    expect(progressBar(Number.NaN, 4)).toBe('[----]   0%');
  });

  it('prints out-of-sync bytes, resync rate and ETA and acked seq per fed peer, when the site reports them', () => {
    expect(peerLines([at('local', resyncing), at('east', east)])).toEqual([
      'peer local -> east: in-sync, nothing out of sync, acked seq 1200',
      'peer local -> west: resyncing 40%, 120 MiB out of sync, resync 16 MiB/s, ETA 8s, acked seq 900',
    ]);
    // An older site without the numbers adds no lines unless asked (watch asks).
    expect(peerLines([at('local', primary)])).toEqual([]);
    expect(peerLines([at('local', primary)], true)).toEqual(['peer local -> east: in-sync', 'peer local -> west: resyncing 40%']);
    // Junk from the network is not printed as a number.
    expect(peerLines([at('local', { ...primary, peers: [{ name: 'x', relation: 'mirror', link: 'up', outOfSyncBytes: -1, resyncEtaSeconds: 'soon' as unknown as number }] })])).toEqual([]);
  });

  it('draws a bar per resync and per verify', () => {
    expect(progressLines([at('local', resyncing)])).toEqual([
      `resync local -> west  ${progressBar(0.407)}  120 MiB left  16 MiB/s  ETA 8s`,
      `verify local  ${progressBar(0.25)}  256 MiB of 1 GiB`,
    ]);
    const frame = watchFrame([at('local', resyncing), at('east', east)], new Date('2026-12-07T02:00:00.123Z'));
    expect(frame.split('\n')[0]).toBe('geomirror status at 2026-12-07T02:00:00Z (Ctrl-C ends)');
    expect(frame).toContain('peer local -> west: resyncing 40%, 120 MiB out of sync');
    expect(frame).toContain('resync local -> west  [############------------------]  40%');
  });

  it('status --watch --count 2 redraws twice from the live sites', async () => {
    const m = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'demo', processMetrics: false });
    let calls = 0;
    const server = await startAdminServer({
      host: '127.0.0.1', port: 0, status: () => ({ ...resyncing, peers: resyncing.peers.map((p) => (p.name === 'west' ? { ...p, resyncPercent: 40 + 30 * calls++ } : p)) }), registry: m.registry,
      auth: { site: 'local', cluster: 'demo', tokenKey: adminTokenKey(key) }, tls: localTls,
    });
    try {
      // --config for the credentials (the CA, the cluster key), --admin for the one address.
      const { stdout } = await run(process.execPath, [bin, 'status', '--config', cfg, '--admin', `127.0.0.1:${server.port}`, '--watch', '--count', '2', '--interval', '200']);
      const frames = stdout.split(/^geomirror status at /m).filter((f) => f !== '');
      expect(frames).toHaveLength(2);
      expect(frames[0]).toContain(`resync local -> west  ${progressBar(0.4)}`);
      expect(frames[1]).toContain(`resync local -> west  ${progressBar(0.7)}`);
      expect(frames[1]).toContain('verify local');
    } finally {
      await server.close();
    }
  });
});

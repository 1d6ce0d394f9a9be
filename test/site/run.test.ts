// runSite: start-up checks name what is wrong (site, device file, key, taken port) before
// anything starts; the admin server answers "starting" while the runtime comes up, then the
// runtime's own status; stop closes it. The role runtime here is a test double, since the
// replication runtimes are wired in separately (src/site/roles.ts).
import { createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync } from 'node:fs';
import { preparePki } from '../../src/site/pki.js';
import { adminCredentials, adminRequest } from '../../src/cli/admin-client.js';
import { freePort } from '../net/helpers.js';
import { parseConfig, type ClusterConfig } from '../../src/site/config.js';
import { createLogger } from '../../src/site/log.js';
import { roleRuntimes } from '../../src/site/roles.js';
import { runSite, StartupError, type RoleRuntime, type SiteContext } from '../../src/site/run.js';
import type { SiteStatus } from '../../src/site/status.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-run-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// Every config of this file is cluster t in `dir`: one CA and one certificate per site for all.
beforeAll(async () => {
  await preparePki(await config('pki'));
});

/** GET over the site's admin HTTPS with a token from the cluster key; undefined when it does not answer. */
async function adminGet(cfg: ClusterConfig, path: string): Promise<{ code: number; body: string } | undefined> {
  const a = cfg.sites.local!.admin!;
  return adminRequest({ host: a.host, port: a.port, method: 'GET', path, site: 'local', creds: adminCredentials(cfg), timeoutMs: 2000, bodyCharsMax: 1 << 22 }).catch(() => undefined);
}


async function config(name: string, extra = ''): Promise<ClusterConfig> {
  const [listen, nbd, admin, east] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const text = `cluster: t
secret: file:./${name}.key
volume: { name: v, size: 1MiB }
sites:
  local:
    role: primary
    listen: 127.0.0.1:${listen}
    nbd: 127.0.0.1:${nbd}
    admin: 127.0.0.1:${admin}
    cache: { device: "loopback:./${name}-local.cache", size: 64KiB }
    storage: ["loopback:./${name}-local.img"]
    mirrors: [east]
    location: { lat: 51.752, lon: -1.2577 }
${extra}
  east: { role: mirror, listen: 127.0.0.1:${east}, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], location: { lat: 51.671, lon: -1.2828 } }
`;
  return parseConfig(text, join(dir, `${name}.yaml`));
}

function files(name: string, { key = true, img = 1024 * 1024 } = {}): void {
  if (key) writeFileSync(join(dir, `${name}.key`), `${'cd'.repeat(32)}\n`, { mode: 0o600 });
  writeFileSync(join(dir, `${name}-local.cache`), '');
  truncateSync(join(dir, `${name}-local.cache`), 64 * 1024);
  writeFileSync(join(dir, `${name}-local.img`), '');
  truncateSync(join(dir, `${name}-local.img`), img);
}

function collector(): { lines: () => Record<string, unknown>[]; write(s: string): void } {
  const out: string[] = [];
  return { lines: () => out.flatMap((s) => s.split('\n').filter(Boolean)).map((l) => JSON.parse(l) as Record<string, unknown>), write: (s) => void out.push(s) };
}

async function startupProblems(p: Promise<unknown>): Promise<string[]> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StartupError);
  return (err as StartupError).problems;
}

const noRuntime: RoleRuntime = () => Promise.reject(new Error('must not be reached'));

describe('runSite', () => {
  it('serves starting, then the runtime status, over admin HTTP; stop closes it', async () => {
    const cfg = await config('ok');
    files('ok');
    const logs = collector();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let seen: SiteContext | undefined;
    let stopped = false;
    const runtime: RoleRuntime = async (ctx) => {
      seen = ctx;
      await gate;
      const status = (): SiteStatus => ({ cluster: 't', site: 'local', role: 'primary', volume: 'v', epoch: 1, lastSeqAcked: '5', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 65536, entries: 0 }, peers: [], pid: process.pid, uptimeSeconds: 0 });
      return { status, stop: async () => void (stopped = true) };
    };
    const starting = runSite(cfg, 'local', { runtime, log: createLogger({ site: 'local', destination: logs, format: 'json' }), processMetrics: false });
    await expect.poll(async () => (JSON.parse((await adminGet(cfg, '/status'))?.body ?? '{}') as { state?: string }).state).toBe('starting');
    release();
    const site = await starting;
    expect(seen!.secret).toEqual(Buffer.alloc(32, 0xcd));
    expect(seen!.site.name).toBe('local');
    expect(seen!.geo!.mirrors[0]!.tooClose).toBe(true);
    const status = JSON.parse((await adminGet(cfg, '/status'))!.body) as SiteStatus;
    expect(status).toMatchObject({ state: 'in-sync', lastSeqAcked: '5', epoch: 1 });
    const metrics = (await adminGet(cfg, '/metrics'))!.body;
    expect(metrics).toMatch(/^geomirror_cache_capacity_bytes\{.*\} 65536$/m);
    await site.stop();
    expect(stopped).toBe(true);
    expect(await adminGet(cfg, '/status')).toBeUndefined();
    const lines = logs.lines();
    expect(lines.find((l) => l.event === 'geography' && l.level === 'warn')?.msg).toMatch(/mirror east is only \d+\.\d miles from local; claim 5/);
    expect(lines.map((l) => l.event)).toEqual(expect.arrayContaining(['starting', 'ready', 'stopping', 'stopped']));
  });

  it('shows a verify in progress in /status (SiteStatus.verify) after a checksum request', async () => {
    const cfg = await config('verify');
    files('verify');
    const status = (): SiteStatus => ({ cluster: 't', site: 'local', role: 'primary', volume: 'v', epoch: 1, lastSeqAcked: '5', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 65536, entries: 0 }, peers: [], pid: process.pid, uptimeSeconds: 0 });
    const runtime: RoleRuntime = async () => ({
      status,
      stop: async () => undefined,
      checksums: async (req) => ({ algorithm: 'hmac-sha256', volumeBytes: 1024 * 1024, offsetBytes: req.offsetBytes, regionBytes: req.regionBytes, checksums: Array.from({ length: req.count }, () => '00'.repeat(32)) }),
    });
    const site = await runSite(cfg, 'local', { runtime, log: createLogger({ site: 'local', destination: collector(), format: 'json' }), processMetrics: false });
    try {
      const statusNow = async (): Promise<SiteStatus> => JSON.parse((await adminGet(cfg, '/status'))!.body) as SiteStatus;
      expect((await statusNow()).verify).toBeUndefined();
      expect((await adminGet(cfg, '/checksums?offset=262144&regionBytes=65536&count=4'))?.code).toBe(200);
      expect((await statusNow()).verify).toEqual({ doneBytes: 524288, totalBytes: 1024 * 1024 });
      expect(site.status().verify).toEqual({ doneBytes: 524288, totalBytes: 1024 * 1024 });
    } finally {
      await site.stop();
    }
  });

  it('names an unknown site with a suggestion', async () => {
    const cfg = await config('unknown');
    expect(await startupProblems(runSite(cfg, 'eats', { runtime: noRuntime }))).toEqual([
      `--site eats: no such site in ${cfg.file} (did you mean "east"?); sites are local, east`,
    ]);
  });

  it('names missing and short device files and a missing key, all at once', async () => {
    const cfg = await config('files');
    files('files', { key: false, img: 4096 });
    rmSync(join(dir, 'files-local.cache'));
    const problems = await startupProblems(runSite(cfg, 'local', { runtime: noRuntime }));
    expect(problems).toEqual([
      `sites.local.cache.device: loopback device ${join(dir, 'files-local.cache')} does not exist; create it with: truncate -s 65536 ${join(dir, 'files-local.cache')}`,
      `sites.local.storage[0]: ${join(dir, 'files-local.img')} holds 4 KiB but volume.size is 1 MiB; grow it with: truncate -s 1048576 ${join(dir, 'files-local.img')}`,
      `secret: cannot read key file ${join(dir, 'files.key')} (ENOENT); create it with: geomirror keygen --out ${join(dir, 'files.key')}`,
    ]);
  });

  it('refuses a key file that group or others can read, with the chmod that fixes it (issue 17 item 8)', async () => {
    const cfg = await config('open');
    files('open');
    chmodSync(join(dir, 'open.key'), 0o644);
    expect(await startupProblems(runSite(cfg, 'local', { runtime: noRuntime }))).toEqual([
      `secret: ${join(dir, 'open.key')} is readable or writable by group/others (mode 0644); a key must be private to the service user. Fix: chmod 600 ${join(dir, 'open.key')}`,
    ]);
    chmodSync(join(dir, 'site-local.key'), 0o640);
    chmodSync(join(dir, 'open.key'), 0o600);
    try {
      expect(await startupProblems(runSite(cfg, 'local', { runtime: noRuntime }))).toEqual([
        `site local key: ${join(dir, 'site-local.key')} is readable or writable by group/others (mode 0640); a key must be private to the service user. Fix: chmod 600 ${join(dir, 'site-local.key')}`,
      ]);
    } finally {
      chmodSync(join(dir, 'site-local.key'), 0o600);
    }
  });

  it('names a missing site certificate with the command that issues it', async () => {
    const cfg = await config('nocert');
    files('nocert');
    rmSync(join(dir, 'site-east.crt'));
    try {
      const p2 = await startupProblems(runSite(cfg, 'east', { runtime: noRuntime }));
      expect(p2).toContain(`site east: certificate ${join(dir, 'site-east.crt')} does not exist; issue it with: geomirror pki issue --config ${cfg.file} --site east`);
    } finally {
      await preparePki(cfg); // put it back (key and certificate are made as a pair)
    }
  });

  it('names a missing block device, a file given as one, and a block device as cache', async () => {
    const [nbd, east] = await Promise.all([freePort(), freePort()]);
    writeFileSync(join(dir, 'block.key'), `${'cd'.repeat(32)}\n`, { mode: 0o600 });
    const img = join(dir, 'block-file.img');
    writeFileSync(img, '');
    truncateSync(img, 1024 * 1024);
    const cfg = parseConfig(
      `cluster: t
secret: file:./block.key
volume: { name: v, size: 1MiB }
sites:
  local: { role: primary, nbd: 127.0.0.1:${nbd}, cache: { device: "block:/dev/geomirror-cache-disk", size: 64KiB }, storage: ["block:/dev/geomirror-no-such-disk", "block:${img}"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:${east}, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }
`,
      join(dir, 'block.yaml'),
    );
    expect(await startupProblems(runSite(cfg, 'local', { runtime: noRuntime }))).toEqual([
      'sites.local.cache.device: block:/dev/geomirror-cache-disk cannot hold the cache; block devices are storage. Put the cache on loopback:PATH (a file, e.g. on an SSD\'s file system) or memory:',
      'sites.local.storage[0]: block:/dev/geomirror-no-such-disk: no device /dev/geomirror-no-such-disk; is it plugged in? (geomirror devices lists the block devices this machine has) (NOT READY 3a/00)',
      `sites.local.storage[1]: block:${img}: ${img} is not a block device; for a disk-image file use loopback:${img} (ILLEGAL REQUEST 24/00)`,
    ]);
  });

  it('names a taken port by its key', async () => {
    const cfg = await config('ports');
    files('ports');
    const nbd = cfg.sites.local!.nbd!;
    const squatter: Server = createServer();
    await new Promise<void>((r) => squatter.listen(nbd.port, nbd.host, r));
    try {
      expect(await startupProblems(runSite(cfg, 'local', { runtime: noRuntime }))).toEqual([
        `sites.local.nbd: ${nbd.text} is taken by another process (is site local already running? see: ss -ltnp 'sport = :${nbd.port}')`,
      ]);
    } finally {
      await new Promise((r) => squatter.close(r));
    }
  });

  it('refuses a role with no runtime in this build', async () => {
    const cfg = await config('norole');
    const registered = roleRuntimes.mirror;
    delete roleRuntimes.mirror; // whatever this build has, take the mirror runtime out for this test
    try {
      const problems = await startupProblems(runSite(cfg, 'east', {}));
      expect(problems.at(-1)).toMatch(/^sites\.east\.role: this build of geomirror has no mirror runtime yet/);
    } finally {
      if (registered) roleRuntimes.mirror = registered;
    }
  });
});

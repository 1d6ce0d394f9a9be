// The cluster process manager: one child per site, output prefixed with the site name, all
// stopped on request, non-zero exit when a site dies. The manager is tested with a test-only
// child (fixtures/fake-site.mjs) because the real sites need the replication runtime; the
// last test runs the real `geomirror cluster` on a file whose site cannot start.
import { adminCredentials } from '../../src/cli/admin-client.js';
import { loadConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../net/helpers.js';
import { startCluster, type ClusterOptions } from '../../src/cli/cluster.js';
import { fetchStatus, statusRows } from '../../src/cli/status.js';

const fakeSite = fileURLToPath(new URL('./fixtures/fake-site.mjs', import.meta.url));
const siteWithTestRuntime = fileURLToPath(new URL('./fixtures/site-with-test-runtime.mjs', import.meta.url));
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-cluster-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sink(): { text: () => string; write(s: string): void } {
  let buf = '';
  return { text: () => buf, write: (s: string) => void (buf += s) };
}

function fakeCluster(sites: string[], stopTimeoutMs?: number, extra: Partial<ClusterOptions> = {}) {
  const out = sink();
  const err = sink();
  const handle = startCluster({ configFile: '/unused.yaml', sites, command: (site) => ({ file: process.execPath, args: [fakeSite, site] }), out, err, ...(stopTimeoutMs ? { stopTimeoutMs } : {}), ...extra });
  return { handle, out, err };
}


const alive = (pid: number | undefined): boolean => {
  try {
    process.kill(pid!, 0);
    return true;
  } catch {
    return false;
  }
};

describe('cluster process manager', () => {
  it('starts every site, prefixes output lines with the site name, and stops them all', async () => {
    const { handle, out } = fakeCluster(['local', 'east', 'west']);
    await handle.ready;
    const pids = Object.values(handle.pids());
    expect(pids.every(alive)).toBe(true);
    expect(await handle.stop()).toBe(0);
    expect(pids.some(alive)).toBe(false);
    const lines = out.text().split('\n');
    for (const s of ['local', 'east', 'west']) {
      expect(lines).toContain(`${s.padEnd(5)} | hello from ${s}`);
      expect(lines).toContain(`${s.padEnd(5)} | second line`);
      expect(lines).toContain(`${s.padEnd(5)} | bye from ${s}`);
    }
  });

  it('names a site that dies during start, stops the others and exits 1', async () => {
    const { handle, err } = fakeCluster(['local', 'east-dies-at-start', 'west']);
    await expect(handle.ready).rejects.toThrow('site east-dies-at-start exited with code 3 during start');
    expect(await handle.done).toBe(1);
    expect(Object.values(handle.pids()).some(alive)).toBe(false);
    expect(err.text()).toContain('east-dies-at-start | east-dies-at-start: cannot open storage');
    expect(err.text()).toContain('geomirror: site east-dies-at-start exited with code 3 during start');
  });

  it('keeps the others running when a site is killed after start, and exits 1 at the end', async () => {
    const { handle, err } = fakeCluster(['local', 'east']);
    await handle.ready;
    const pids = handle.pids();
    process.kill(pids.east!, 'SIGKILL');
    await expect.poll(() => err.text()).toContain(`geomirror: site east (pid ${pids.east}) was killed by SIGKILL; the other sites keep running`);
    expect(alive(pids.local)).toBe(true);
    expect(await handle.stop()).toBe(1);
  });

  it('prints a site\'s death and its restart on the notice stream, with backoff and a cap', async () => {
    const notice = sink();
    const { handle, err } = fakeCluster(['local', 'east'], undefined, { notice, restart: { delayMsMin: 50, delayMsMax: 100, attemptsMax: 2, stableMs: 60_000 } });
    await handle.ready;
    const first = handle.pids().east!;
    process.kill(first, 'SIGKILL');
    await expect.poll(() => notice.text()).toContain(`geomirror: site east (pid ${first}) was killed by SIGKILL; restarting it in 0.05 s (restart 1 of at most 2)`);
    await expect.poll(() => notice.text()).toMatch(/geomirror: site east is running again \(pid \d+, restart 1\)/);
    const second = handle.pids().east!;
    expect(second).not.toBe(first);
    expect(alive(second)).toBe(true);
    process.kill(second, 'SIGKILL');
    await expect.poll(() => notice.text()).toContain(`site east (pid ${second}) was killed by SIGKILL; restarting it in 0.1 s (restart 2 of at most 2)`);
    await expect.poll(() => notice.text()).toMatch(/site east is running again \(pid \d+, restart 2\)/);
    const third = handle.pids().east!;
    process.kill(third, 'SIGTERM'); // a clean-looking exit the manager did not ask for is a death too
    await expect.poll(() => notice.text()).toContain(`geomirror: site east (pid ${third}) exited with code 0 and was restarted 2 times in a row; giving up on it; the other sites keep running`);
    expect(alive(handle.pids().local)).toBe(true);
    expect(err.text()).not.toContain('geomirror:'); // site output and manager notices are apart
    expect(await handle.stop()).toBe(1);
  });

  it('kills a site that ignores SIGTERM after the stop timeout', async () => {
    const { handle, err } = fakeCluster(['stubborn-ignores-term'], 300);
    await handle.ready;
    expect(await handle.stop()).toBe(1);
    expect(err.text()).toContain('site stubborn-ignores-term did not stop within 300 ms; killing it');
  });

  it('runs real site commands: ready, admin /status, clean stop', async () => {
    const ports = await Promise.all(Array.from({ length: 5 }, () => freePort()));
    const cfg = join(dir, 'real.yaml');
    writeFileSync(join(dir, 'real.key'), `${'ef'.repeat(32)}\n`, { mode: 0o600 });
    writeFileSync(
      cfg,
      `cluster: real
secret: file:./real.key
volume: { name: v, size: 1MiB }
sites:
  local: { role: primary, nbd: 127.0.0.1:${ports[0]}, admin: 127.0.0.1:${ports[1]}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:${ports[2]}, admin: 127.0.0.1:${ports[3]}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
`,
    );
    await preparePki(loadConfig(cfg)); // what geomirror cluster/start do before starting sites
    const out = sink();
    const err = sink();
    const handle = startCluster({
      configFile: cfg,
      sites: ['local', 'east'],
      command: (site) => ({ file: process.execPath, args: [siteWithTestRuntime, 'site', '--config', cfg, '--site', site] }),
      out,
      err,
      env: { GEOMIRROR_LOG_FORMAT: 'json' },
    });
    await handle.ready;
    const creds = adminCredentials(loadConfig(cfg));
    const rows = statusRows(
      await Promise.all([fetchStatus({ name: 'local', admin: `127.0.0.1:${ports[1]}`, site: 'local' }, 3000, creds), fetchStatus({ name: 'east', admin: `127.0.0.1:${ports[3]}`, site: 'east' }, 3000, creds)]),
    );
    expect(rows.map((r) => [r.site, r.role, r.state, r.link])).toEqual([
      ['local', 'primary', 'in-sync', '1/1 up'],
      ['east', 'mirror', 'in-sync', 'up'],
    ]);
    expect(await handle.stop()).toBe(0);
    const logged = out
      .text()
      .split('\n')
      .filter(Boolean)
      .map((l) => /^(\w+)\s+\| (.*)$/.exec(l)!)
      .map((m) => ({ site: m[1], rec: JSON.parse(m[2]!) as { site: string; msg: string; event?: string } }));
    for (const s of ['local', 'east']) {
      const mine = logged.filter((l) => l.site === s).map((l) => l.rec);
      expect(mine.every((r) => r.site === s)).toBe(true);
      expect(mine.map((r) => r.event)).toEqual(expect.arrayContaining(['starting', 'ready', 'signal', 'stopping', 'stopped']));
    }
    expect(err.text()).toBe('');
  });

  it('geomirror cluster exits non-zero naming a site that cannot start', async () => {
    const cfg = join(dir, 'cluster.yaml');
    writeFileSync(join(dir, 'cluster.key'), `${'ab'.repeat(32)}\n`, { mode: 0o600 });
    writeFileSync(
      cfg,
      `cluster: t
secret: file:./cluster.key
volume: { name: v, size: 1MiB }
sites:
  local: { role: primary, nbd: 127.0.0.1:1, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:2, cache: { device: "memory:", size: 1MiB }, storage: ["loopback:./missing.img"] }
`,
    );
    // Ports 1 and 2 need privileges only root has; the missing file fails east either way.
    const child = spawn(process.execPath, [bin, 'cluster', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    expect(code).toBe(1);
    expect(stderr).toMatch(/geomirror: site (local|east) exited with code 1 during start/);
    const dead = /site (local|east) exited with code 1 during start/.exec(stderr)![1]!;
    expect(stderr).toContain(`${dead.padEnd(5)} | site ${dead} cannot start:`);
    if (dead === 'east') expect(stderr).toContain(`east  |   sites.east.storage[0]: loopback device ${join(dir, 'missing.img')} does not exist`);
  });
});

// `geomirror start` (npm start) end to end: on a fresh folder it creates the loopback files and
// key, brings up a primary and two mirrors as processes, prints the NBD URI, the export answers
// real nbdinfo, a write through it lands on all three replicas, and SIGINT stops every site.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { counterTotal } from '../../src/cli/start.js';
import { fetchStatus, statusTimeoutMs } from '../../src/cli/status.js';
import { adminCredentials } from '../../src/cli/admin-client.js';
import { loadConfig } from '../../src/site/config.js';
import { freePort } from '../e2e/harness.js';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-start-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('counterTotal', () => {
  it('sums a counter over its label sets and ignores look-alike names', () => {
    const text = ['# HELP geomirror_writes_total x', 'geomirror_writes_total{op="write"} 5', 'geomirror_writes_total{op="flush"} 2', 'geomirror_writes_total_other 100', ''].join('\n');
    expect(counterTotal(text, 'geomirror_writes_total')).toBe(7);
  });
});

describe('geomirror start', () => {
  it('creates files and key, serves NBD, replicates a write to every site, stops on SIGINT', async () => {
    const [p1, p2, n, a1, a2, a3] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const cfg = join(dir, 'cluster.yaml');
    writeFileSync(
      cfg,
      `cluster: starttest
secret: file:./data/cluster.key
volume: { name: vol0, size: 16MiB, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:${n}, admin: 127.0.0.1:${a1}, cache: { device: "loopback:./data/local.cache", size: 8MiB }, storage: ["loopback:./data/local.img"], mirrors: [east, west] }
  east: { role: mirror, listen: 127.0.0.1:${p1}, admin: 127.0.0.1:${a2}, cache: { device: "loopback:./data/east.cache", size: 8MiB }, storage: ["loopback:./data/east.img"] }
  west: { role: mirror, listen: 127.0.0.1:${p2}, admin: 127.0.0.1:${a3}, cache: { device: "loopback:./data/west.cache", size: 8MiB }, storage: ["loopback:./data/west.img"] }
`,
    );
    const child = spawn(process.execPath, [bin, 'start', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 60_000;
      while (!out.includes('is up') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
      expect(out, out).toContain(`nbd://127.0.0.1:${n}/vol0`);
      expect(existsSync(join(dir, 'data', 'cluster.key'))).toBe(true);

      const info = JSON.parse(execFileSync('nbdinfo', ['--json', `nbd://127.0.0.1:${n}/vol0`], { encoding: 'utf8' })) as { exports: { 'export-size': number }[] };
      expect(info.exports[0]!['export-size']).toBe(16 * 2 ** 20);

      const img = join(dir, 'rand.img');
      const data = Buffer.alloc(16 * 2 ** 20);
      for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
      writeFileSync(img, data);
      execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, `nbd://127.0.0.1:${n}/vol0`]);
      const want = sha(img);
      for (const s of ['local', 'east', 'west']) expect(sha(join(dir, 'data', `${s}.img`)), s).toBe(want);
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
    expect(out).toContain('every site stopped cleanly');
  });
  it('names a killed site on the terminal, with its signal, and restarts it', async () => {
    const [p1, n, a1, a2] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
    const sub = join(dir, 'restart');
    mkdirSync(sub, { recursive: true });
    const cfg = join(sub, 'cluster.yaml');
    writeFileSync(
      cfg,
      `cluster: restarttest
secret: file:./data/cluster.key
volume: { name: vol0, size: 8MiB, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:${n}, admin: 127.0.0.1:${a1}, cache: { device: "loopback:./data/local.cache", size: 4MiB }, storage: ["loopback:./data/local.img"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:${p1}, admin: 127.0.0.1:${a2}, cache: { device: "loopback:./data/east.cache", size: 4MiB }, storage: ["loopback:./data/east.img"] }
`,
    );
    const child = spawn(process.execPath, [bin, 'start', '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await expect.poll(() => out, { timeout: 60_000, interval: 100 }).toContain('is up');
      // The admin port is HTTPS with a token from the cluster key that start made (issue 17).
      const creds = adminCredentials(loadConfig(cfg));
      const east = await fetchStatus({ name: 'east', admin: `127.0.0.1:${a2}`, site: 'east' }, statusTimeoutMs, creds);
      const pid = 'status' in east ? east.status.pid : undefined;
      expect(pid).toBeGreaterThan(0);
      process.kill(pid!, 'SIGKILL');
      // On the terminal (this process's stdout/stderr), not only in data/cluster.log.
      await expect.poll(() => out, { timeout: 10_000, interval: 100 }).toContain(`geomirror: site east (pid ${pid}) was killed by SIGKILL; restarting it in 1 s (restart 1 of at most 5)`);
      await expect.poll(() => out, { timeout: 30_000, interval: 100 }).toMatch(/geomirror: site east is running again \(pid \d+, restart 1\)/);
      const again = await fetchStatus({ name: 'east', admin: `127.0.0.1:${a2}`, site: 'east' }, statusTimeoutMs, creds);
      expect('status' in again && again.status.pid !== pid).toBe(true);
      expect(readFileSync(join(sub, 'data', 'cluster.log'), 'utf8')).toContain(`site east (pid ${pid}) was killed by SIGKILL`);
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(1); // a site died: the run was not clean, even though it recovered
    expect(out).toContain('some with errors');
  });
});

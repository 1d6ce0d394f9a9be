// Issue 6 acceptance against the replicated volume (not a single file): real NBD clients drive
// the primary of a three-site cluster (each site its own process) and every replica must end up
// byte-identical; a mirror's `nbd:` export is read-only and serves the same bytes.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadConfig } from '../../src/site/config.js';
import { siteCertFiles } from '../../src/site/pki.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cmd, Errno } from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/raw-client.js';
import { freePort } from './harness.js';
import { runLive } from '../conformance/live.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-nbd-cluster-'));
const volumeBytes = 64 * 2 ** 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const replica = (s: string) => readFileSync(join(dir, `${s}.img`));

let child: ChildProcess;
let out = '';
let primaryUri = '';
let mirrorUri = '';
let mirrorNbdPort = 0;
let eastListenPort = 0;

beforeAll(async () => {
  const [n, en, p1, p2] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  primaryUri = `nbd://127.0.0.1:${n}/vol0`;
  mirrorUri = `nbd://127.0.0.1:${en}/vol0`;
  mirrorNbdPort = en;
  eastListenPort = p1;
  writeFileSync(join(dir, 'cluster.key'), randomBytes(32).toString('hex'), { mode: 0o600 });
  const site = (name: string) => `cache: { device: "loopback:./${name}.cache", size: 32MiB }, storage: ["loopback:./${name}.img"]`;
  writeFileSync(
    join(dir, 'cluster.yaml'),
    `cluster: nbdtest
secret: file:./cluster.key
volume: { name: vol0, size: 64MiB, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:${n}, ${site('local')}, mirrors: [east, west] }
  east: { role: mirror, listen: 127.0.0.1:${p1}, nbd: 127.0.0.1:${en}, ${site('east')} }
  west: { role: mirror, listen: 127.0.0.1:${p2}, ${site('west')} }
`,
  );
  for (const s of ['local', 'east', 'west']) {
    writeFileSync(join(dir, `${s}.img`), Buffer.alloc(0));
    await run('truncate', ['-s', String(volumeBytes), join(dir, `${s}.img`)]);
    await run('truncate', ['-s', '32M', join(dir, `${s}.cache`)]);
  }
  child = spawn(process.execPath, [bin, 'cluster', '--config', join(dir, 'cluster.yaml')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GEOMIRROR_LOG_FORMAT: 'json' } });
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 90_000;
  while (!out.includes('sites running') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
  if (!out.includes('sites running')) throw new Error(`cluster did not start:\n${out}`);
  // Both mirrors joined (their links are up) before the first write.
  while (!(out.match(/mirror_joined/g)?.length === 2) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
}, 120_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

/** FLUSH barrier through a real client, then every replica must hash to `want`. */
async function expectReplicas(want: string): Promise<void> {
  await run('qemu-io', ['-f', 'raw', '-c', 'flush', primaryUri]);
  for (const s of ['local', 'east', 'west']) expect(sha(replica(s)), `${s} replica`).toBe(want);
}

describe('NBD clients against the replicated volume', () => {
  it('nbdinfo: size, block sizes, flush/FUA/trim/zero, multi-conn; --list names the export', async () => {
    const { stdout } = await run('nbdinfo', ['--json', primaryUri]);
    const e = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
    expect(e['export-size']).toBe(volumeBytes);
    expect(e['block_size_minimum']).toBeGreaterThan(0);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) expect(e[k], k).toBe(true);
    expect(e['is_read_only']).toBe(false);
    const list = await run('nbdinfo', ['--list', primaryUri]);
    expect(list.stdout).toContain('export="vol0"');
  });

  it('qemu-img convert of a 64 MiB random image: compare identical, all three replicas hash equal', async () => {
    const img = join(dir, 'image.raw');
    const data = randomBytes(volumeBytes);
    writeFileSync(img, data);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, primaryUri]);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, primaryUri]);
    expect(cmp.stdout).toMatch(/Images are identical/);
    await expectReplicas(sha(data));
  });

  it('qemu-io patterns (FUA, zeroes, discard) read back, and replicate', async () => {
    const cmds = ['write -P 0xab 0 64k', 'write -f -P 0xcd 65536 4k', 'write -z 131072 64k', 'discard 1M 64k', 'flush', 'read -P 0xab 0 64k', 'read -P 0xcd 65536 4k', 'read -P 0 131072 64k'];
    const { stdout } = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), primaryUri]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    await expectReplicas(sha(replica('local')));
  });

  it('nbdcopy both directions with 4 connections', async () => {
    const src = join(dir, 'copy-src.raw');
    const back = join(dir, 'copy-back.raw');
    const data = randomBytes(volumeBytes);
    writeFileSync(src, data);
    await run('nbdcopy', ['--connections=4', src, primaryUri]);
    await run('nbdcopy', ['--connections=4', primaryUri, back]);
    expect(sha(readFileSync(back))).toBe(sha(data));
    await expectReplicas(sha(data));
  });

  it('fio random writes with verify=crc32c: no verify errors, replicas equal', async () => {
    const { stdout } = await run('fio', ['--name=v', '--ioengine=nbd', `--uri=${primaryUri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=16M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', '--output-format=json'], { maxBuffer: 16 * 2 ** 20 });
    const job = (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { error: number }[] }).jobs[0]!;
    expect(job.error).toBe(0);
    await expectReplicas(sha(replica('local')));
  });

  it('npm run conformance against the live east mirror: every handshake, refusal and vector case passes; replicas untouched', async () => {
    const before = sha(replica('east'));
    const secret = Buffer.from(readFileSync(join(dir, 'cluster.key'), 'utf8').trim(), 'hex');
    // As `west` (a site the mirror accepts), so the primary's own link to east is never replaced.
    const config = loadConfig(join(dir, 'cluster.yaml'));
    const f = siteCertFiles(config, 'west');
    const tls = { ca: readFileSync(config.tls.caCert, 'utf8'), cert: readFileSync(f.cert, 'utf8'), key: readFileSync(f.key, 'utf8') };
    const results = await runLive({ host: '127.0.0.1', port: eastListenPort, secret, cluster: 'nbdtest', site: 'east', as: 'west', tls, volumeBytes: BigInt(volumeBytes), blockBytes: 4096 });
    const failed = results.filter((r) => !r.pass);
    expect(failed, failed.map((f) => `${f.name}: ${f.detail}`).join('\n')).toEqual([]);
    expect(results.length).toBeGreaterThan(20);
    expect(sha(replica('east'))).toBe(before);
    // The mirror still serves its primary: a write after all that replicates.
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 8M 64k', '-c', 'flush', primaryUri]);
    await expectReplicas(sha(replica('local')));
  });

  it("a mirror's export is read-only: same bytes as the primary, writes refused with EPERM", async () => {
    const { stdout } = await run('nbdinfo', ['--json', mirrorUri]);
    expect((JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports[0]!['is_read_only']).toBe(true);
    const fromMirror = join(dir, 'from-mirror.raw');
    await run('nbdcopy', [mirrorUri, fromMirror]);
    expect(sha(readFileSync(fromMirror))).toBe(sha(replica('local')));
    const before = sha(replica('east'));
    const c = await RawClient.connect(mirrorNbdPort);
    try {
      await c.handshake();
      await c.go('vol0');
      c.sendRequest(Cmd.WRITE, { cookie: 7n, offset: 0, payload: Buffer.alloc(4096, 0x5a) });
      expect((await c.readSimpleReply()).error).toBe(Errno.EPERM);
    } finally {
      c.close();
    }
    expect(sha(replica('east'))).toBe(before);
  });
});

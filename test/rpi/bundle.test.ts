// The Raspberry Pi bundle (issue 11 acceptance): built here on x86, it runs under
// qemu-aarch64-static with the official arm64 Node 20 and Debian's arm64 libc; its arm64 native
// modules (usb, serialport, crc32) load; and the emulated site serves as the `east` mirror of an
// x86 primary: 8 MiB written over NBD arrive byte-identical on east's storage.
import { adminCredentials } from '../../src/cli/admin-client.js';
import { loadConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, ftruncateSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../net/helpers.js';
import { buildBundle, type BuildResult } from '../../targets/rpi/build.js';
import { fetchStatus } from '../../src/cli/status.js';
import { arm64Node, underQemu } from './arm64.js';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-rpi-bundle-'));
let built: BuildResult;
let node: string;
let app: string; // unpacked bundle folder

beforeAll(() => {
  // The pruned arm64 node_modules is cached by lock-file hash: repeated runs skip npm install.
  built = buildBundle(join(dir, 'dist'), { depsCacheDir: join(tmpdir(), 'geomirror-rpi-cache'), workDir: join(dir, 'work') });
  node = arm64Node();
  execFileSync('tar', ['-xzf', built.tarball, '-C', dir]);
  app = join(dir, `geomirror-${built.version}-linux-arm64`);
}, 300_000);

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function runArm64(args: string[], cwd: string): string {
  const [cmd, argv] = underQemu(node, args);
  return execFileSync(cmd, argv, { cwd, encoding: 'utf8', timeout: 120_000 });
}


const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('Raspberry Pi bundle under qemu-aarch64', () => {
  it('holds only JavaScript for the CLI and arm64 native parts', () => {
    const list = execFileSync('tar', ['-tzf', built.tarball], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 }).split('\n');
    const top = `geomirror-${built.version}-linux-arm64/`;
    for (const f of ['bin/geomirror', 'lib/src/cli/main.js', 'lib/package.json', 'systemd/geomirror@.service', 'install.sh', 'README.md']) expect(list, f).toContain(top + f);
    expect(list.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.includes('/node_modules/'))).toEqual([]);
    const natives = list.filter((f) => f.endsWith('.node'));
    expect(natives.length).toBeGreaterThanOrEqual(3);
    for (const f of natives) expect(f, f).toMatch(/arm64|armv8/);
    const deps = (JSON.parse(readFileSync(join(app, 'lib', 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies;
    expect(Object.keys(deps)).not.toContain('tsx');
  });

  it('geomirror --version runs on arm64 node', () => {
    expect(runArm64([join(app, 'bin', 'geomirror'), '--version'], app).trim()).toBe(built.version);
  });

  it('loads the arm64 native modules of usb, serialport and crc32', () => {
    const script = [
      "const path = require('node:path');",
      "const usb = require('usb');",
      "const napi = require('@node-usb/usb-linux-arm64-gnu');",
      "const serial = require('node-gyp-build')(path.dirname(require.resolve('@serialport/bindings-cpp/package.json')));",
      "const { crc32c } = require('@node-rs/crc32');",
      "console.log(JSON.stringify({ arch: process.arch, usb: typeof usb.usb, napi: Object.keys(napi).length, serialOpen: typeof serial.open, poller: typeof serial.Poller, crc: crc32c('123456789') }));",
    ].join('\n');
    const out = JSON.parse(runArm64(['-e', script], join(app, 'lib'))) as Record<string, unknown>;
    // CRC-32C check value of "123456789" is 0xE3069283.
    expect(out).toEqual({ arch: 'arm64', usb: 'object', napi: expect.any(Number), serialOpen: 'function', poller: 'function', crc: 0xe3069283 });
    expect(out.napi as number).toBeGreaterThan(0);
  });

  it('serves as the east mirror of an x86 primary: 8 MiB over NBD arrive byte-identical', async () => {
    const [pe, pw, n, a1, a2, a3] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const data = join(dir, 'data');
    execFileSync('mkdir', ['-p', data]);
    writeFileSync(join(data, 'cluster.key'), createHash('sha256').update('rpi-bundle-test').digest('hex') + '\n', { mode: 0o600 });
    const volumeBytes = 16 * 2 ** 20;
    for (const s of ['local', 'east', 'west']) {
      for (const [f, size] of [[`${s}.img`, volumeBytes], [`${s}.cache`, 8 * 2 ** 20]] as const) {
        const fd = openSync(join(data, f), 'w');
        ftruncateSync(fd, size);
        closeSync(fd);
      }
    }
    const cfg = join(dir, 'cluster.yaml');
    writeFileSync(
      cfg,
      `cluster: rpitest
secret: file:./data/cluster.key
volume: { name: vol0, size: 16MiB, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:${n}, admin: 127.0.0.1:${a1}, cache: { device: "loopback:./data/local.cache", size: 8MiB }, storage: ["loopback:./data/local.img"], mirrors: [east, west], on-mirror-loss: block }
  east: { role: mirror, listen: 127.0.0.1:${pe}, admin: 127.0.0.1:${a2}, cache: { device: "loopback:./data/east.cache", size: 8MiB }, storage: ["loopback:./data/east.img"] }
  west: { role: mirror, listen: 127.0.0.1:${pw}, admin: 127.0.0.1:${a3}, cache: { device: "loopback:./data/west.cache", size: 8MiB }, storage: ["loopback:./data/west.img"] }
`,
    );
    const loaded = loadConfig(cfg);
    await preparePki(loaded); // the cluster CA and the three site certificates, as geomirror start makes them
    const creds = adminCredentials(loaded);
    let logs = '';
    const start = (name: string, cmd: string, args: string[]): Promise<number | null> => {
      const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GEOMIRROR_LOG_FORMAT: 'json' } });
      children.push(c);
      c.stdout!.on('data', (d: Buffer) => (logs += `[${name}] ${d}`));
      c.stderr!.on('data', (d: Buffer) => (logs += `[${name}] ${d}`));
      return new Promise((r) => c.once('exit', (code) => r(code)));
    };
    const [qcmd, qargs] = underQemu(node, [join(app, 'bin', 'geomirror'), 'site', '--config', cfg, '--site', 'east']);
    const exits = [
      start('east', qcmd, qargs),
      start('west', process.execPath, [bin, 'site', '--config', cfg, '--site', 'west']),
      start('local', process.execPath, [bin, 'site', '--config', cfg, '--site', 'local']),
    ];
    const deadline = Date.now() + 150_000;
    let state = '';
    while (Date.now() < deadline) {
      const r = await fetchStatus({ name: 'local', admin: `127.0.0.1:${a1}`, site: 'local' }, 3000, creds);
      state = 'status' in r ? r.status.state : r.error;
      if (state === 'in-sync') break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(state, logs.slice(-4000)).toBe('in-sync');

    const src = join(dir, 'rand.img');
    const buf = Buffer.alloc(8 * 2 ** 20);
    for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE((i * 2654435761 + 12345) >>> 0, i);
    writeFileSync(src, buf);
    execFileSync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, `nbd://127.0.0.1:${n}/vol0`], { timeout: 120_000 });
    for (const c of children) c.kill('SIGTERM');
    const codes = await Promise.all(exits);
    expect(codes, logs.slice(-4000)).toEqual([0, 0, 0]);
    const want = createHash('sha256').update(buf).digest('hex');
    const head = (p: string): string => createHash('sha256').update(readFileSync(p).subarray(0, buf.length)).digest('hex');
    expect(head(join(data, 'east.img')), 'east (arm64 under qemu)').toBe(want);
    expect(head(join(data, 'west.img')), 'west').toBe(want);
    expect(sha(join(data, 'local.img'))).toBe(sha(join(data, 'east.img')));
  }, 240_000);
});

// Interop with the real NBD clients over 127.0.0.1, on a loopback-file-backed export: nbdinfo,
// qemu-img, qemu-io, nbdcopy and fio must work unchanged, and the bytes that reach the backing
// file must be exactly the bytes they sent (hashes compared, never trusted from tool output).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { openLoopback, type LoopbackDevice } from '../../hal/loopback.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { Cmd, Errno } from '../../src/nbd/protocol.js';
import { RawClient } from './raw-client.js';

const run = promisify(execFile);
const sizeBytes = 64 * 1024 * 1024;
const blockBytes = 4096;

let dir: string;
let dev: LoopbackDevice;
let roDev: LoopbackDevice;
let server: NbdServer;
let uri: string;
let roUri: string;
let port: number;
let image: Buffer;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const backingFile = () => join(dir, 'volume.img');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'geomirror-nbd-interop-'));
  dev = await openLoopback(backingFile(), { blockSizeBytes: blockBytes, blockCount: sizeBytes / blockBytes, create: true });
  roDev = await openLoopback(backingFile(), { blockSizeBytes: blockBytes, blockCount: sizeBytes / blockBytes, readOnly: true });
  server = new NbdServer({
    exports: [
      blockDeviceExport(dev, { name: 'vol0', description: 'geomirror test volume' }),
      blockDeviceExport(roDev, { name: 'replica', description: 'read-only replica' }),
    ],
  });
  port = await server.listen('127.0.0.1', 0);
  uri = `nbd://127.0.0.1:${port}/vol0`;
  roUri = `nbd://127.0.0.1:${port}/replica`;
  image = randomBytes(sizeBytes);
  await writeFile(join(dir, 'image.raw'), image);
});

afterAll(async () => {
  await server?.close();
  await dev?.close();
  await roDev?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('real NBD clients against a loopback-backed export', () => {
  it('nbdinfo --json reports size, block sizes and capabilities', async () => {
    const { stdout } = await run('nbdinfo', ['--json', uri]);
    const e = JSON.parse(stdout).exports[0];
    expect(e).toMatchObject({
      'export-name': 'vol0',
      description: 'geomirror test volume',
      'export-size': sizeBytes,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 32 * 1024 * 1024,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      is_read_only: false,
    });
    expect(e.contexts).toContain('base:allocation');
  });

  it('nbdinfo --list names every export; the empty name selects the default', async () => {
    const { stdout } = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    const exps = JSON.parse(stdout).exports.map((e: { 'export-name': string; is_read_only: boolean }) => [e['export-name'], e.is_read_only]);
    expect(exps).toEqual([['vol0', false], ['replica', true]]);
    const def = JSON.parse((await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}`])).stdout).exports[0];
    expect(def['export-name']).toBe('vol0');
  });

  it('nbdinfo --map answers BLOCK_STATUS for the whole export', async () => {
    const { stdout } = await run('nbdinfo', ['--map', '--json', uri]);
    const extents = JSON.parse(stdout) as { offset: number; length: number; type: number }[];
    expect(extents[0]!.offset).toBe(0);
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(sizeBytes);
    expect(extents.every((e) => e.type === 0)).toBe(true); // allocated data
  });

  it('qemu-img convert -n writes a 64 MiB random image byte-exact (compare + backing file hash)', async () => {
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(dir, 'image.raw'), uri]);
    const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'image.raw'), uri]);
    expect(stdout).toMatch(/Images are identical/);
    expect(sha256(await readFile(backingFile()))).toBe(sha256(image));
  });

  it('the read-only replica serves the same bytes and refuses writes with EPERM', async () => {
    const out = join(dir, 'from-replica.raw');
    await run('nbdcopy', [roUri, out]);
    expect(sha256(await readFile(out))).toBe(sha256(await readFile(backingFile())));
    // Real clients refuse to write to a read-only export before sending; ask the server directly.
    const c = await RawClient.connect(port);
    try {
      await c.handshake();
      await c.go('replica');
      c.sendRequest(Cmd.WRITE, { cookie: 1n, offset: 0, payload: Buffer.alloc(4096, 1) });
      expect((await c.readSimpleReply()).error).toBe(Errno.EPERM);
    } finally {
      c.close();
    }
    await expect(run('nbdcopy', [join(dir, 'image.raw'), roUri])).rejects.toThrow();
  });

  it('qemu-io write -P, FUA (-f), zeroes (-z) and discard, then read -P', async () => {
    const cmds = [
      'write -P 0xab 0 64k',
      'write -f -P 0xcd 65536 4k',
      'write -P 0x11 70000 1000', // unaligned: read-modify-write on the server
      'write -z 131072 64k',
      'discard 1M 64k',
      'flush',
      'read -P 0xab 0 64k',
      'read -P 0xcd 65536 4k',
      'read -P 0x11 70000 1000',
      'read -P 0 131072 64k',
    ];
    const { stdout, stderr } = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri]);
    expect(stderr).toBe('');
    expect(stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(stdout.match(/^read /gm)?.length).toBe(4);
    const file = await readFile(backingFile());
    expect(file.subarray(0, 65536).equals(Buffer.alloc(65536, 0xab))).toBe(true);
    expect(file.subarray(65536, 69632).equals(Buffer.alloc(4096, 0xcd))).toBe(true);
    expect(file.subarray(70000, 71000).equals(Buffer.alloc(1000, 0x11))).toBe(true);
    expect(file.subarray(69632, 70000).equals(image.subarray(69632, 70000))).toBe(true); // RMW kept neighbours
    expect(file.subarray(71000, 73728).equals(image.subarray(71000, 73728))).toBe(true);
    expect(file.subarray(131072, 196608).equals(Buffer.alloc(65536))).toBe(true);
  });

  it('nbdcopy both directions with 4 connections (multi-conn advertised)', async () => {
    const src = join(dir, 'copy-src.raw');
    const back = join(dir, 'copy-back.raw');
    const data = randomBytes(sizeBytes);
    await writeFile(src, data);
    await run('nbdcopy', ['--connections=4', '--flush', src, uri]);
    expect(sha256(await readFile(backingFile()))).toBe(sha256(data));
    await run('nbdcopy', ['--connections=4', uri, back]);
    expect(sha256(await readFile(back))).toBe(sha256(data));
  });

  it('fio --ioengine=nbd random writes with verify=crc32c: no verify errors', async () => {
    const { stdout } = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      // A fixed amount (not time_based): fio then always verifies everything it wrote, however
      // slow the machine is; 8192 random 4 KiB writes take a few seconds.
      '--size=64m', '--io_size=32m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0',
      '--output-format=json',
    ], { maxBuffer: 16 * 1024 * 1024 });
    const json = JSON.parse(stdout.slice(stdout.indexOf('{')));
    const job = json.jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.total_ios).toBe(8192);
    expect(job.read.total_ios).toBe(8192); // the verify pass read every written block back
  });
});

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
      block_size_maximum: 64 * 1024 * 1024,
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

  // libnbd (nbdsh, python3-libnbd) sends a request as large as the caller asks, up to 64 MiB,
  // in one piece; nbdcopy and qemu cap theirs at 32 MiB. With handshake flags 0 libnbd falls back
  // to NBD_OPT_EXPORT_NAME, which carries no NBD_INFO_BLOCK_SIZE: such a client only knows what
  // nbdkit and nbd-server accept (64 MiB), so we accept that too.
  for (const mode of ['GO', 'EXPORT_NAME'] as const) {
    it(`libnbd writes and reads 48 MiB in one request each (negotiated with ${mode})`, async () => {
      const lengths: { op: string; lengthBytes: number }[] = [];
      const inner = blockDeviceExport(dev, { name: 'big', description: 'records request sizes' });
      const recording = {
        ...inner,
        read: (offsetBytes: number, lengthBytes: number) => {
          lengths.push({ op: 'read', lengthBytes });
          return inner.read(offsetBytes, lengthBytes);
        },
        write: (offsetBytes: number, data: Buffer, o: { fua: boolean }) => {
          lengths.push({ op: 'write', lengthBytes: data.byteLength });
          return inner.write(offsetBytes, data, o);
        },
      };
      const big = new NbdServer({ exports: [recording] });
      const bigPort = await big.listen('127.0.0.1', 0);
      try {
        const offsetBytes = 8 * 1024 * 1024;
        const script = [
          'import hashlib, os',
          ...(mode === 'EXPORT_NAME' ? ['h.set_handshake_flags(0)'] : []),
          `h.connect_uri("nbd://127.0.0.1:${bigPort}/big")`,
          'buf = os.urandom(48 * 1024 * 1024)',
          `h.pwrite(buf, ${offsetBytes})`,
          'h.flush()',
          `back = h.pread(len(buf), ${offsetBytes})`,
          'print(hashlib.sha256(buf).hexdigest(), hashlib.sha256(back).hexdigest(), h.get_protocol(), h.get_block_size(nbd.SIZE_MAXIMUM))',
        ].join('\n');
        // nbdsh runs `python3 -mnbd`: the Debian python3 is the one with the nbd module.
        const { stdout } = await run('nbdsh', ['-c', script], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }, maxBuffer: 1024 * 1024 });
        const [sent, readBack, protocol, maxBlock] = stdout.trim().split(/\s+/);
        const file = await readFile(backingFile());
        expect(sha256(file.subarray(offsetBytes, offsetBytes + 48 * 1024 * 1024))).toBe(sent);
        expect(readBack).toBe(sent);
        expect(lengths.filter((l) => l.lengthBytes > 32 * 1024 * 1024)).toEqual([
          { op: 'write', lengthBytes: 48 * 1024 * 1024 },
          { op: 'read', lengthBytes: 48 * 1024 * 1024 },
        ]);
        if (mode === 'GO') {
          expect(protocol).toBe('newstyle-fixed');
          expect(Number(maxBlock)).toBe(64 * 1024 * 1024);
        } else {
          expect(protocol).toBe('newstyle'); // EXPORT_NAME: no block sizes were exchanged
          expect(Number(maxBlock)).toBe(0);
        }
      } finally {
        await big.close();
      }
    });
  }

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

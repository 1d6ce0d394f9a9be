import { mkdtempSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Asc, SenseKey } from '../../hal/blockdev.js';
import type { FileHandle } from 'node:fs/promises';
import { LoopbackDevice, mapFsError, openLoopback } from '../../hal/loopback.js';
import { adapterContract, pattern, senseOf } from './adapter-contract.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-loopback-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(dir, `vol${n++}.img`);

adapterContract('loopback', async (o) => {
  const path = fresh();
  if (o.readOnly) {
    await (await openLoopback(path, { ...o, readOnly: false, create: true })).close();
  }
  return openLoopback(path, { ...o, create: !o.readOnly });
}, { issueOrder: false });

describe('openLoopback', () => {
  it('creates a file sized to the volume', async () => {
    const path = fresh();
    const dev = await openLoopback(path, { blockSizeBytes: 4096, blockCount: 10, create: true });
    expect(statSync(path).size).toBe(40960);
    expect(dev.name).toBe(`loopback:${path}`);
    expect(dev.capabilities).toEqual({ flush: true, fua: true, trim: false, readOnly: false });
    await dev.close();
  });

  it('keeps data across close and reopen', async () => {
    const path = fresh();
    const a = await openLoopback(path, { blockSizeBytes: 512, blockCount: 32, create: true });
    await a.write(7, pattern(5 * 512, 11));
    await a.flush();
    await a.close();
    const b = await openLoopback(path, { blockSizeBytes: 512, blockCount: 32 });
    expect(Buffer.compare(await b.read(7, 5), pattern(5 * 512, 11))).toBe(0);
    await b.close();
  });

  it('opens a larger file and uses only the configured volume', async () => {
    const path = fresh();
    writeFileSync(path, Buffer.alloc(8192));
    const dev = await openLoopback(path, { blockSizeBytes: 512, blockCount: 4 });
    expect((await senseOf(dev.read(4, 1))).key).toBe(SenseKey.ILLEGAL_REQUEST);
    await dev.close();
    expect(statSync(path).size).toBe(8192);
  });

  it('refuses a file smaller than the volume, naming path, its size and the needed size', async () => {
    const path = fresh();
    writeFileSync(path, Buffer.alloc(1000));
    for (const create of [false, true]) {
      const e = await senseOf(openLoopback(path, { blockSizeBytes: 512, blockCount: 4, create }));
      expect(e.key).toBe(SenseKey.ILLEGAL_REQUEST);
      expect(e.message).toContain(path);
      expect(e.message).toContain('1000 bytes');
      expect(e.message).toContain('2048 bytes');
    }
    expect(statSync(path).size).toBe(1000);
  });

  it('a missing file without create is NOT READY naming the path', async () => {
    const path = fresh();
    const e = await senseOf(openLoopback(path, { blockSizeBytes: 512, blockCount: 4 }));
    expect(e.key).toBe(SenseKey.NOT_READY);
    expect([e.asc, e.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
    expect(e.message).toContain(path);
  });

  it('a file without write permission opened read-write is DATA PROTECT (unless running as root)', async () => {
    const path = fresh();
    writeFileSync(path, Buffer.alloc(2048));
    chmodSync(path, 0o444);
    const isRoot = process.getuid?.() === 0;
    if (isRoot) {
      const dev = await openLoopback(path, { blockSizeBytes: 512, blockCount: 4 });
      await dev.close();
    } else {
      const e = await senseOf(openLoopback(path, { blockSizeBytes: 512, blockCount: 4 }));
      expect(e.key).toBe(SenseKey.DATA_PROTECT);
      expect(e.message).toContain(path);
    }
    const ro = await openLoopback(path, { blockSizeBytes: 512, blockCount: 4, readOnly: true });
    expect(Buffer.compare(await ro.read(0, 4), Buffer.alloc(2048))).toBe(0);
    await ro.close();
  });

  it('refuses a bad geometry before touching the filesystem', async () => {
    const path = fresh();
    const e = await senseOf(openLoopback(path, { blockSizeBytes: 1000, blockCount: 4, create: true }));
    expect(e.message).toMatch(/block size 1000/);
    expect(() => statSync(path)).toThrow();
  });

  it('a read past a file truncated underneath is MEDIUM ERROR', async () => {
    const path = fresh();
    const dev = await openLoopback(path, { blockSizeBytes: 512, blockCount: 4, create: true });
    writeFileSync(path, Buffer.alloc(512)); // someone else truncated the image
    const e = await senseOf(dev.read(2, 1));
    expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
    expect(e.lba).toBe(2);
    await dev.close();
  });
});

describe('mapFsError', () => {
  const err = (code: string) => Object.assign(new Error(`${code}: simulated`), { code });
  it('maps OS errors to sense', () => {
    expect(mapFsError('d', 'read', 3, err('EIO')).key).toBe(SenseKey.MEDIUM_ERROR);
    expect([mapFsError('d', 'read', 3, err('EIO')).asc]).toEqual([Asc.UNRECOVERED_READ_ERROR[0]]);
    expect([mapFsError('d', 'write', 3, err('EIO')).asc]).toEqual([Asc.WRITE_ERROR[0]]);
    const nospc = mapFsError('loopback:/x', 'write', 9, err('ENOSPC'));
    expect(nospc.key).toBe(SenseKey.MEDIUM_ERROR);
    expect(nospc.message).toMatch(/loopback:\/x at LBA 9/);
    expect(mapFsError('d', 'write', 1, err('EROFS')).key).toBe(SenseKey.DATA_PROTECT);
    expect(mapFsError('d', 'write', 1, err('EACCES')).key).toBe(SenseKey.DATA_PROTECT);
    for (const c of ['ENOENT', 'ENXIO', 'EBADF']) {
      const e = mapFsError('d', 'read', 1, err(c));
      expect(e.key).toBe(SenseKey.NOT_READY);
      expect([e.asc, e.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
    }
    expect(mapFsError('d', 'read', 1, err('EWHATEVER')).key).toBe(SenseKey.HARDWARE_ERROR);
  });
});

/**
 * A stand-in FileHandle over a Buffer that returns at most `chunkBytes` per call and can be told
 * to fail with an OS error code: how short I/O and OS errors reach the real adapter code.
 */
class ShortIoHandle {
  readonly bytes = Buffer.alloc(8 * 512);
  calls = 0;
  failWith: { op: 'read' | 'write' | 'datasync'; code: string } | undefined;
  constructor(private readonly chunkBytes: number) {}
  private maybeFail(op: 'read' | 'write' | 'datasync'): void {
    if (this.failWith?.op === op) throw Object.assign(new Error(`${this.failWith.code}: simulated`), { code: this.failWith.code });
  }
  async write(data: Uint8Array, off: number, len: number, pos: number) {
    this.calls++;
    this.maybeFail('write');
    const n = Math.min(len, this.chunkBytes);
    this.bytes.set(data.subarray(off, off + n), pos);
    return { bytesWritten: n, buffer: data };
  }
  async read(out: Buffer, off: number, len: number, pos: number) {
    this.calls++;
    this.maybeFail('read');
    const n = Math.min(len, this.chunkBytes, this.bytes.length - pos);
    this.bytes.copy(out, off, pos, pos + n);
    return { bytesRead: Math.max(n, 0), buffer: out };
  }
  async datasync() {
    this.maybeFail('datasync');
  }
  async close() {}
}

describe('LoopbackDevice over short and failing I/O', () => {
  const make = (chunkBytes: number) => {
    const fh = new ShortIoHandle(chunkBytes);
    const dev = new LoopbackDevice('loopback:/fake.img', '/fake.img', fh as unknown as FileHandle, 512, 8, false);
    return { fh, dev };
  };

  it('loops on short writes and short reads until the whole request is done', async () => {
    const { fh, dev } = make(100);
    const data = pattern(3 * 512, 21);
    await dev.write(2, data, { fua: true });
    expect(Buffer.compare(fh.bytes.subarray(1024, 2560), data)).toBe(0);
    expect(fh.calls).toBe(Math.ceil(1536 / 100));
    expect(Buffer.compare(await dev.read(2, 3), data)).toBe(0);
  });

  it('maps OS errors raised by write, read and datasync to sense with the LBA', async () => {
    const cases: [op: 'read' | 'write' | 'datasync', code: string, key: number][] = [
      ['write', 'EIO', SenseKey.MEDIUM_ERROR],
      ['write', 'ENOSPC', SenseKey.MEDIUM_ERROR],
      ['write', 'EROFS', SenseKey.DATA_PROTECT],
      ['write', 'EBADF', SenseKey.NOT_READY],
      ['read', 'EIO', SenseKey.MEDIUM_ERROR],
      ['read', 'ENXIO', SenseKey.NOT_READY],
      ['datasync', 'EIO', SenseKey.MEDIUM_ERROR],
    ];
    for (const [op, code, key] of cases) {
      const { fh, dev } = make(4096);
      fh.failWith = { op, code };
      const p = op === 'read' ? dev.read(3, 1) : op === 'write' ? dev.write(3, Buffer.alloc(512)) : dev.flush();
      const e = await senseOf(p);
      expect([op, code, e.key]).toEqual([op, code, key]);
      expect(e.message).toContain('loopback:/fake.img');
      if (op !== 'datasync' && key !== SenseKey.NOT_READY) expect(e.lba).toBe(3); // device-gone sense carries no LBA
      expect(e.message).toContain(code);
    }
    const { fh, dev } = make(4096);
    fh.failWith = { op: 'datasync', code: 'EIO' };
    const fua = await senseOf(dev.write(1, Buffer.alloc(512), { fua: true }));
    expect([fua.key, fua.asc]).toEqual([SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR[0]]);
  });

  it('a write the filesystem accepts 0 bytes of fails instead of spinning', async () => {
    const { dev } = make(0);
    const e = await senseOf(dev.write(0, Buffer.alloc(512)));
    expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
    expect(e.message).toMatch(/accepted 0 bytes/);
  });
});

describe('openLoopback on a directory', () => {
  it('says to name a file', async () => {
    const e = await senseOf(openLoopback(dir, { blockSizeBytes: 512, blockCount: 4 }));
    expect(e.message).toMatch(/is a directory|not a regular file/);
    expect(e.message).toContain(dir);
  });
});

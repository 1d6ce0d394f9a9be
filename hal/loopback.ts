// Loopback block device: the volume is a regular file, addressed with positional I/O. The
// default storage and cache device of every site in `targets/loopback` (DESIGN.md, Layout).
//
// Claims served: 2, 4, 11, 16, 17 (cache and storage at every site).
//
// Hot path (bench/hal.ts measures it against plain fs.write): one FileHandle call per request
// unless the kernel returns short, no copies, no per-call allocation beyond the read buffer.
//
// Order: calls go to the libuv thread pool as they come and may run in either order; this
// adapter does not serialize them (hal/blockdev.ts: callers order overlapping calls themselves).
//
// writeNow (issue 18): a plain write to a file lands in the page cache and returns; done through
// the thread pool it costs a futex wake, a completion and ~16-30 us more per write than the
// pwrite itself on a 2-core node. So writeNow is a synchronous positional write on the event
// loop; whatever must wait for the medium (flush, FUA: fdatasync) stays on the pool.
//
// Trim: Node exposes no fallocate(PUNCH_HOLE), and writing zeroes would cost a full write for
// an advisory hint, so this adapter declares `capabilities.trim = false` and has no trim().
//
// hal/ imports nothing from src/.

import { writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import {
  Asc,
  MediaStatus,
  SenseError,
  SenseKey,
  blocksIn,
  checkRange,
  sense,
  type BlockDevice,
  type BlockSizeBytes,
  type Capabilities,
  type MediaStatusFlags,
  type WriteOptions,
} from './blockdev.js';
import { checkGeometry } from './geometry.js';

export interface LoopbackOptions {
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  /** Create the file (sized to the volume) if it does not exist. An existing file is never resized. */
  readonly create?: boolean;
  readonly readOnly?: boolean;
}

type Op = 'read' | 'write' | 'flush' | 'close';

/**
 * Opens (or creates) the file at `path` as a block device of `blockCount` blocks. A file larger
 * than the volume is fine (only its head is used); a smaller one is refused, never grown, so a
 * mistyped size cannot silently turn a disk image into a different volume.
 */
export async function openLoopback(path: string, options: LoopbackOptions): Promise<LoopbackDevice> {
  const name = `loopback:${path}`;
  const g = checkGeometry(name, options.blockSizeBytes, options.blockCount);
  const readOnly = options.readOnly === true;
  const neededBytes = g.blockCount * g.blockSizeBytes;
  if (readOnly && options.create === true) {
    throw sense.invalidField(name, `cannot create ${path} read-only; drop readOnly to create it, or create it first`);
  }
  const flags = readOnly ? 'r' : 'r+';
  let fh: FileHandle;
  let created = false;
  try {
    fh = await open(path, flags);
  } catch (err) {
    if (errCode(err) !== 'ENOENT' || options.create !== true) throw openError(name, path, readOnly, err);
    try {
      // O_EXCL: never truncate a file someone else just made; 0600: a volume image is private
      // to the service user (issue 17 item 8).
      fh = await open(path, 'wx+', 0o600);
      created = true;
    } catch (err2) {
      if (errCode(err2) !== 'EEXIST') throw openError(name, path, readOnly, err2);
      fh = await open(path, flags).catch((err3: unknown) => { throw openError(name, path, readOnly, err3); });
    }
  }
  try {
    if (created) await fh.truncate(neededBytes);
    const st = await fh.stat();
    if (!st.isFile()) {
      const fix = st.isBlockDevice() ? `; for a kernel block device use block:${path}` : '';
      throw sense.invalidField(name, `${path} is not a regular file; loopback devices are files${fix}`);
    }
    if (st.size < neededBytes) {
      throw sense.invalidField(
        name,
        `file ${path} is ${st.size} bytes but the volume needs ${neededBytes} bytes ` +
          `(${g.blockCount} blocks of ${g.blockSizeBytes} bytes); grow it (truncate -s ${neededBytes} ${path}) or configure a smaller volume`,
      );
    }
  } catch (err) {
    await fh.close().catch(() => undefined);
    if (err instanceof SenseError) throw err;
    throw mapFsError(name, 'read', undefined, err);
  }
  return new LoopbackDevice(name, path, fh, g.blockSizeBytes, g.blockCount, readOnly);
}

export class LoopbackDevice implements BlockDevice {
  readonly capabilities: Capabilities;
  private closed = false;

  /** Use openLoopback(); the constructor trusts its already-validated arguments. */
  constructor(
    readonly name: string,
    readonly path: string,
    private readonly fh: FileHandle,
    readonly blockSizeBytes: BlockSizeBytes,
    readonly blockCount: number,
    readOnly: boolean,
  ) {
    this.capabilities = { flush: true, fua: true, trim: false, readOnly };
  }

  status(): MediaStatusFlags {
    if (this.closed) return MediaStatus.NO_MEDIA;
    return this.capabilities.readOnly ? MediaStatus.WRITE_PROTECTED : MediaStatus.OK;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    if (this.closed) throw sense.notPresent(this.name);
    const positionBytes = checkRange(this, lba, blocks);
    const lengthBytes = blocks * this.blockSizeBytes;
    const out = Buffer.allocUnsafe(lengthBytes); // filled completely below or we throw
    let doneBytes = 0;
    try {
      while (doneBytes < lengthBytes) {
        const { bytesRead } = await this.fh.read(out, doneBytes, lengthBytes - doneBytes, positionBytes + doneBytes);
        if (bytesRead === 0) {
          throw sense.mediumRead(this.name, lba, `end of file at byte ${positionBytes + doneBytes}: ${this.path} was truncated while in use`);
        }
        doneBytes += bytesRead;
      }
    } catch (err) {
      throw mapFsError(this.name, 'read', lba, err);
    }
    return out;
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    const blocks = blocksIn(this, data, lba);
    const positionBytes = checkRange(this, lba, blocks);
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    const lengthBytes = data.byteLength;
    let doneBytes = 0;
    try {
      // The kernel may write less than asked (signals, quotas, some filesystems): loop.
      while (doneBytes < lengthBytes) {
        const { bytesWritten } = await this.fh.write(data, doneBytes, lengthBytes - doneBytes, positionBytes + doneBytes);
        if (bytesWritten === 0) {
          throw sense.mediumWrite(this.name, lba, `the filesystem accepted 0 bytes at byte ${positionBytes + doneBytes} of ${this.path}`);
        }
        doneBytes += bytesWritten;
      }
      // FUA: durable on return. fdatasync is the only per-file barrier Node offers.
      if (options?.fua === true) await this.fh.datasync();
    } catch (err) {
      throw mapFsError(this.name, 'write', lba, err);
    }
  }

  /** A synchronous positional write into the page cache (see the file comment); durable after flush(). */
  writeNow(lba: number, data: Uint8Array): void {
    if (this.closed) throw sense.notPresent(this.name);
    const blocks = blocksIn(this, data, lba);
    const positionBytes = checkRange(this, lba, blocks);
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    const lengthBytes = data.byteLength;
    let doneBytes = 0;
    try {
      while (doneBytes < lengthBytes) {
        const n = writeSync(this.fh.fd, data, doneBytes, lengthBytes - doneBytes, positionBytes + doneBytes);
        if (n === 0) throw sense.mediumWrite(this.name, lba, `the filesystem accepted 0 bytes at byte ${positionBytes + doneBytes} of ${this.path}`);
        doneBytes += n;
      }
    } catch (err) {
      throw mapFsError(this.name, 'write', lba, err);
    }
  }

  async flush(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    try {
      await this.fh.datasync(); // SYNCHRONIZE CACHE: data (and the size) reach stable storage
    } catch (err) {
      throw mapFsError(this.name, 'flush', undefined, err);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // later calls fail at once; FileHandle.close waits for in-flight ones
    try {
      await this.fh.close();
    } catch (err) {
      throw mapFsError(this.name, 'close', undefined, err);
    }
  }
}

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** Maps an OS error from a file operation to the sense the rest of the system understands. */
export function mapFsError(device: string, op: Op, lba: number | undefined, err: unknown): SenseError {
  if (err instanceof SenseError) return err;
  const code = errCode(err);
  const what = `${op} failed: ${err instanceof Error ? err.message : String(err)}`;
  switch (code) {
    case 'EIO':
      return op === 'read' ? sense.mediumRead(device, lba, what, err) : sense.mediumWrite(device, lba, what, err);
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return sense.mediumWrite(device, lba, `${what}; free space on the filesystem holding the file`, err);
    case 'EROFS':
    case 'EACCES':
    case 'EPERM':
      if (op === 'write' || op === 'flush') {
        return new SenseError(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, device, `${what}; the file or filesystem is read-only`, lba, { cause: err });
      }
      return sense.hardware(device, what, err);
    case 'ENOENT':
    case 'ENXIO':
    case 'ENODEV':
    case 'EBADF':
    case 'ESTALE':
      return sense.notPresent(device, `${what}; the file is gone or the device was closed`);
    default:
      return sense.hardware(device, what, err);
  }
}

function openError(device: string, path: string, readOnly: boolean, err: unknown): SenseError {
  const code = errCode(err);
  if (code === 'ENOENT') {
    return sense.notPresent(device, `file ${path} does not exist; create it or open with create: true`);
  }
  if (code === 'EISDIR') {
    return sense.invalidField(device, `${path} is a directory; name a file inside it (e.g. ${path}/volume.img)`);
  }
  if (!readOnly && (code === 'EACCES' || code === 'EROFS' || code === 'EPERM')) {
    return new SenseError(
      SenseKey.DATA_PROTECT,
      Asc.WRITE_PROTECTED,
      device,
      `cannot open ${path} for writing (${code}); fix its permissions or open it read-only`,
      undefined,
      { cause: err },
    );
  }
  return mapFsError(device, 'read', undefined, err);
}

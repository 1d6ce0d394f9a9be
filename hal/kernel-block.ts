// Kernel block device: `block:/dev/NAME`, a disk Linux already drives (a USB disk through
// usb-storage, an SD card or one of its partitions, an LVM volume, a loop device, NVMe).
// Positional I/O on the device node, flush = fdatasync (which makes the kernel send the disk a
// cache flush), FUA = write then fdatasync, as for loopback files.
//
// Before opening, sysfs and /proc say whether the device is in use (mounted, swap, LVM/RAID
// built on it): refused naming the mount point or holder. The open itself is O_EXCL, which
// Linux honours for block devices: it fails while anyone has the device claimed (a mount,
// another exclusive opener such as a second geomirror site), and keeps others from mounting it
// while we hold it. Size and logical block size come from sysfs; without sysfs (some
// containers) the adapter reads the volume's last block to prove the device is big enough
// (BLKGETSIZE64 is an ioctl Node cannot issue without an addon).
//
// Devices vanish (a USB disk unplugged, a card pulled): the kernel answers ENXIO/ENODEV, or EIO
// and a capacity of 0. Such errors become NOT READY / MEDIUM NOT PRESENT naming the device; an
// EIO while the device is still there is a MEDIUM ERROR at the LBA.
//
// Overlapping calls issued together apply in issue order (a later write or read waits for an
// earlier overlapping write, and a write for an earlier overlapping read); disjoint calls run
// concurrently on the OS thread pool. No trim: BLKDISCARD is an ioctl too.
//
// Claims served: 2, 4, 11, 16, 17 ("means for storing data" at every site).
//
// hal/ imports nothing from src/.

import { constants, existsSync, readFileSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
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
import { blockInfo, devIdOf, inUseReason, readSystemView, type KernelBlockInfo, type SystemView } from './sysblock.js';

export interface KernelBlockOptions {
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  readonly readOnly?: boolean;
  /** sysfs and /proc texts (tests); default the running system's. */
  readonly system?: SystemView;
}

type Op = 'read' | 'write' | 'flush' | 'close';

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/**
 * Opens the kernel block device at `path` (a /dev node or a symlink to one) for a volume of
 * `blockCount` blocks. A device larger than the volume is fine (only its head is used); a
 * smaller one, one in use, or one whose logical blocks are larger than the volume's is refused
 * with the reason and the fix.
 */
export async function openKernelBlock(path: string, options: KernelBlockOptions): Promise<KernelBlockDevice> {
  const name = `block:${path}`;
  const g = checkGeometry(name, options.blockSizeBytes, options.blockCount);
  const readOnly = options.readOnly === true;
  const system = options.system ?? readSystemView();
  const { devId, info } = precheck(name, path, g.blockSizeBytes, g.blockCount, readOnly, system);
  let fh: FileHandle;
  try {
    fh = await open(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_EXCL);
  } catch (err) {
    throw openError(name, path, err);
  }
  const sysDevDir = info === undefined ? undefined : join(system.sysDir, 'dev', 'block', devId);
  if (info === undefined) {
    // No sysfs: prove the device reaches the volume's last byte by reading its last block.
    const neededBytes = g.blockCount * g.blockSizeBytes;
    try {
      const last = Buffer.allocUnsafe(g.blockSizeBytes);
      const { bytesRead } = await fh.read(last, 0, last.length, neededBytes - g.blockSizeBytes);
      if (bytesRead !== last.length) throw tooSmall(name, path, undefined, neededBytes);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err instanceof SenseError ? err : openError(name, path, err);
    }
  }
  return new KernelBlockDevice(name, path, fh, g.blockSizeBytes, g.blockCount, readOnly, sysDevDir);
}

/**
 * What stands in the way of using `path` for a volume, as one sentence naming the device and
 * the fix (the checks openKernelBlock makes before it opens), or undefined when nothing does.
 * Opens nothing: safe for start-up and config checks next to a mounted disk.
 */
export function kernelBlockProblem(path: string, blockSizeBytes: number, blockCount: number, system: SystemView = readSystemView()): string | undefined {
  const name = `block:${path}`;
  try {
    const g = checkGeometry(name, blockSizeBytes, blockCount);
    precheck(name, path, g.blockSizeBytes, g.blockCount, false, system);
    return undefined;
  } catch (err) {
    if (err instanceof SenseError) return err.message;
    throw err;
  }
}

/** The checks before open, from stat and sysfs; throws a SenseError naming the problem. */
function precheck(name: string, path: string, blockSizeBytes: number, blockCount: number, readOnly: boolean, system: SystemView): { devId: string; info: KernelBlockInfo | undefined } {
  if (!isAbsolute(path)) throw sense.invalidField(name, `${path} is not an absolute path; name the device node, e.g. block:/dev/sdb`);
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch (err) {
    if (errCode(err) === 'ENOENT') throw sense.notPresent(name, `no device ${path}; is it plugged in? (geomirror devices lists the block devices this machine has)`);
    throw sense.hardware(name, `cannot look at ${path}: ${(err as Error).message}`, err);
  }
  if (!st.isBlockDevice()) {
    const fix = st.isFile() ? `; for a disk-image file use loopback:${path}` : '';
    throw sense.invalidField(name, `${path} is not a block device${fix}`);
  }
  const devId = devIdOf(st.rdev);
  const info = blockInfo(devId, system);
  if (info === undefined) return { devId, info };
  const busy = inUseReason(info);
  if (busy) throw new SenseError(SenseKey.NOT_READY, Asc.LOGICAL_UNIT_NOT_READY, name, `${path} ${busy}`);
  if (blockSizeBytes % info.logicalBlockSizeBytes !== 0) {
    throw sense.invalidField(name, `${path} has ${info.logicalBlockSizeBytes}-byte logical blocks but the volume uses ${blockSizeBytes}; set the volume's blockSize to ${info.logicalBlockSizeBytes}`);
  }
  const neededBytes = blockCount * blockSizeBytes;
  if (info.sizeBytes < neededBytes) throw tooSmall(name, path, info.sizeBytes, neededBytes);
  if (info.readOnly && !readOnly) {
    throw new SenseError(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, name, `${path} is read-only in the kernel (a write-protect switch, or blockdev --setro); make it writable (blockdev --setrw ${path}) or use another device`);
  }
  return { devId, info };
}

function tooSmall(name: string, path: string, sizeBytes: number | undefined, neededBytes: number): SenseError {
  const has = sizeBytes === undefined ? 'ends before' : `holds ${sizeBytes} bytes but`;
  return sense.invalidField(name, `${path} ${has} the volume needs ${neededBytes} bytes; use a larger device or configure a smaller volume`);
}

function openError(name: string, path: string, err: unknown): SenseError {
  const code = errCode(err);
  switch (code) {
    case 'EBUSY':
      return new SenseError(
        SenseKey.NOT_READY,
        Asc.LOGICAL_UNIT_NOT_READY,
        name,
        `${path} is in use (mounted, part of LVM or RAID, or opened exclusively by another program, such as another geomirror site); free it first (lsblk and fuser -v ${path} show who)`,
        undefined,
        { cause: err },
      );
    case 'EACCES':
    case 'EPERM':
      return new SenseError(
        SenseKey.DATA_PROTECT,
        Asc.WRITE_PROTECTED,
        name,
        `no permission to open ${path} (${code}); give the service user the device with a udev rule (docs/OPERATIONS.md, "Kernel block devices") or run as its owner`,
        undefined,
        { cause: err },
      );
    case 'EROFS':
      return new SenseError(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, name, `${path} is read-only (${code}); make it writable or use another device`, undefined, { cause: err });
    case 'ENOENT':
    case 'ENXIO':
    case 'ENODEV':
    case 'ENOMEDIUM':
      return sense.notPresent(name, `${path} has no medium or is gone (${code}); plug it in or insert the card`);
    default:
      return sense.hardware(name, `cannot open ${path}: ${err instanceof Error ? err.message : String(err)}`, err);
  }
}

interface Pending {
  readonly write: boolean;
  readonly startBytes: number;
  readonly endBytes: number;
  done: Promise<void>;
}

export class KernelBlockDevice implements BlockDevice {
  readonly capabilities: Capabilities;
  private closed = false;
  /** Calls in flight, so an overlapping call waits for the ones issued before it. */
  private readonly pending = new Set<Pending>();

  /** Use openKernelBlock(); the constructor trusts its already-validated arguments. */
  constructor(
    readonly name: string,
    readonly path: string,
    private readonly fh: FileHandle,
    readonly blockSizeBytes: BlockSizeBytes,
    readonly blockCount: number,
    readOnly: boolean,
    /** /sys/dev/block/MAJ:MIN, to tell a vanished device from a bad sector; undefined without sysfs. */
    private readonly sysDevDir: string | undefined,
  ) {
    this.capabilities = { flush: true, fua: true, trim: false, readOnly };
  }

  status(): MediaStatusFlags {
    if (this.closed) return MediaStatus.NO_MEDIA;
    return this.capabilities.readOnly ? MediaStatus.WRITE_PROTECTED : MediaStatus.OK;
  }

  read(lba: number, blocks: number): Promise<Buffer> {
    return this.ordered(false, lba, blocks, async (positionBytes, lengthBytes) => {
      const out = Buffer.allocUnsafe(lengthBytes); // filled completely below or we throw
      let doneBytes = 0;
      try {
        while (doneBytes < lengthBytes) {
          const { bytesRead } = await this.fh.read(out, doneBytes, lengthBytes - doneBytes, positionBytes + doneBytes);
          if (bytesRead === 0) throw this.shortIo('read', lba, positionBytes + doneBytes);
          doneBytes += bytesRead;
        }
      } catch (err) {
        throw this.mapError('read', lba, err);
      }
      return out;
    });
  }

  write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.ordered(true, lba, data, async (positionBytes, lengthBytes) => {
      let doneBytes = 0;
      try {
        while (doneBytes < lengthBytes) {
          const { bytesWritten } = await this.fh.write(data, doneBytes, lengthBytes - doneBytes, positionBytes + doneBytes);
          if (bytesWritten === 0) throw this.shortIo('write', lba, positionBytes + doneBytes);
          doneBytes += bytesWritten;
        }
        if (options?.fua === true) await this.fh.datasync();
      } catch (err) {
        throw this.mapError('write', lba, err);
      }
    });
  }

  async flush(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    try {
      await this.fh.datasync(); // the kernel writes dirty pages, then sends the disk a cache flush
    } catch (err) {
      throw this.mapError('flush', undefined, err);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // later calls fail at once; FileHandle.close waits for in-flight ones
    try {
      await this.fh.close();
    } catch (err) {
      throw this.mapError('close', undefined, err);
    }
  }

  /**
   * Checks the call at the edge, then runs `io` once every earlier call it overlaps has settled
   * (reads wait only for writes). `what` is a block count for reads, the data for writes.
   */
  private async ordered<T>(write: boolean, lba: number, what: number | Uint8Array, io: (positionBytes: number, lengthBytes: number) => Promise<T>): Promise<T> {
    if (this.closed) throw sense.notPresent(this.name);
    const blocks = typeof what === 'number' ? what : blocksIn(this, what, lba);
    const startBytes = checkRange(this, lba, blocks);
    if (write && this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    const endBytes = startBytes + blocks * this.blockSizeBytes;
    const earlier: Promise<void>[] = [];
    for (const p of this.pending) if ((write || p.write) && p.startBytes < endBytes && startBytes < p.endBytes) earlier.push(p.done);
    const entry: Pending = { write, startBytes, endBytes, done: Promise.resolve() };
    const result = earlier.length === 0 ? io(startBytes, endBytes - startBytes) : Promise.all(earlier).then(() => io(startBytes, endBytes - startBytes));
    entry.done = result.then(
      () => undefined,
      () => undefined,
    );
    this.pending.add(entry);
    void entry.done.then(() => this.pending.delete(entry));
    return result;
  }

  /** The device's size now, from sysfs; undefined without sysfs, 0 when it is gone. */
  private sizeNowBytes(): number | undefined {
    if (this.sysDevDir === undefined) return undefined;
    if (!existsSync(this.sysDevDir)) return 0;
    const sectors = Number(readSysSync(join(this.sysDevDir, 'size')));
    return Number.isSafeInteger(sectors) ? sectors * 512 : undefined;
  }

  /** True when the device is gone or shrank below the volume (card pulled, disk unplugged). */
  private vanished(): boolean {
    const size = this.sizeNowBytes();
    return size !== undefined && size < this.blockCount * this.blockSizeBytes;
  }

  private notPresent(op: Op, code: string): SenseError {
    return sense.notPresent(this.name, `${op} failed: ${this.path} is gone or has no medium now (${code}); plug it back in (the site resyncs it) or replace it`);
  }

  /** A read or write that moved 0 bytes: the device ended under us. */
  private shortIo(op: 'read' | 'write', lba: number, atBytes: number): SenseError {
    if (this.vanished() || this.sysDevDir === undefined) return this.notPresent(op, `end of device at byte ${atBytes}`);
    return op === 'read' ? sense.mediumRead(this.name, lba, `the device returned no data at byte ${atBytes}`) : sense.mediumWrite(this.name, lba, `the device accepted 0 bytes at byte ${atBytes}`);
  }

  /** Maps an OS error to the sense the rest of the system understands, naming the device. */
  private mapError(op: Op, lba: number | undefined, err: unknown): SenseError {
    if (err instanceof SenseError) return err;
    const code = errCode(err) ?? 'unknown error';
    const what = `${op} failed: ${err instanceof Error ? err.message : String(err)}`;
    switch (code) {
      case 'ENXIO':
      case 'ENODEV':
      case 'ENOMEDIUM':
      case 'EBADF':
        return this.notPresent(op, code);
      case 'EIO':
      case 'ENOSPC':
      case 'EFBIG':
        if (this.vanished()) return this.notPresent(op, code);
        return op === 'read' ? sense.mediumRead(this.name, lba, what, err) : sense.mediumWrite(this.name, lba, what, err);
      case 'EROFS':
      case 'EACCES':
      case 'EPERM':
        if (op === 'write' || op === 'flush') return new SenseError(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, this.name, `${what}; the device turned read-only`, lba, { cause: err });
        return sense.hardware(this.name, what, err);
      default:
        return sense.hardware(this.name, what, err);
    }
  }
}

function readSysSync(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

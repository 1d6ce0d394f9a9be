// The cache *device*: a byte-addressed region of fixed size that holds the battery-backed
// cache journal (hal/cache.ts). DESIGN.md "Battery-backed cache"; config key
// `cache: { device, size }` with device `memory:` or `loopback:PATH`.
//
// Claims served: 2, 4, 9, 12, 16, 17, 18, 20 (a cache at every site).
//
// What plays the battery. A site node has no battery-backed DRAM, so the file-backed cache
// writes with positional pwritev and NO fsync on the hot path: once the syscall returns, the
// bytes are in the kernel's page cache, which outlives the controller process (kill -9, a crash,
// an OOM kill). That is exactly what battery-backed DRAM buys a disk array controller: its
// contents survive a controller reset. It does NOT survive a power loss or kernel crash of the
// node; `sync: true` adds an fdatasync after every write for those who need that (slow).
//
// hal/ imports nothing from src/.

import { constants, writevSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { sense } from './blockdev.js';
import { DeviceStringError, parseDeviceString } from './devstring.js';
import { mapFsError } from './loopback.js';
import { memoryBytesMax } from './memory.js';

/** Smallest cache region we accept, in bytes: two superblocks plus room for a few entries. */
export const cacheDeviceBytesMin = 64 * 1024;

export interface CacheDevice {
  /** The device string or a readable name, used in every error message. */
  readonly name: string;
  /** Size of the region in bytes; every access stays inside [0, sizeBytes). */
  readonly sizeBytes: number;
  /** True when every write reaches stable storage before it resolves (power-loss safe). */
  readonly durableWrites: boolean;
  /**
   * The size of the file behind the device when it differs from `sizeBytes` (absent: equal). A
   * shorter file is not grown on open (growing it would hide whatever its missing part held), and
   * reads stay below min(storedBytes, sizeBytes) until grow(); a longer one is used up to
   * sizeBytes. The journal (hal/cache.ts) decides what a difference means.
   */
  readonly storedBytes?: number;
  /** Extends a shorter file to sizeBytes with zeros. The journal decides when. */
  grow?(): Promise<void>;
  /**
   * Writes `buffers` back to back at `offsetBytes`, whole or fails (short writes are looped).
   * The buffers are not copied by the file device; the caller must not change them until the
   * promise settles.
   */
  writev(buffers: readonly Uint8Array[], offsetBytes: number): Promise<void>;
  /**
   * Optional: the same write done synchronously, where the kernel absorbs it without waiting for
   * the medium (a file without `sync: true`: the page cache). Throws on failure. The journal
   * (hal/cache.ts) uses it for entries, sparing a thread-pool round trip per group commit
   * (issue 18); absent on devices whose writes must wait (durable writes, fdatasync).
   */
  readonly writevNow?: (buffers: readonly Uint8Array[], offsetBytes: number) => void;
  /** Reads `lengthBytes` bytes at `offsetBytes` into a new buffer. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /**
   * Optional: reads into the start of `into` (at least `lengthBytes` long), so a reader that
   * scans the whole ring (replay) reuses one buffer instead of leaving a garbage buffer per read.
   */
  readInto?(into: Buffer, offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Makes completed writes durable (fdatasync; no-op in RAM). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface CacheDeviceOptions {
  /** Region size in bytes (the configured `cache.size`). */
  readonly sizeBytes: number;
  /** fdatasync after every write: survives node power loss, costs throughput. Default false. */
  readonly sync?: boolean;
  /** Create the file if missing (sized to the region). Default true. */
  readonly create?: boolean;
}

/** Opens the cache device a device string names: `memory:[LABEL]` or `loopback:PATH`. */
export async function openCacheDevice(deviceString: string, options: CacheDeviceOptions): Promise<CacheDevice> {
  const spec = parseDeviceString(deviceString);
  switch (spec.kind) {
    case 'memory':
      return new MemoryCacheDevice(deviceString, options.sizeBytes);
    case 'loopback':
      return openFileCacheDevice(spec.path, options);
    default:
      throw new DeviceStringError(deviceString, `a cache device must be memory: or loopback:PATH (got ${spec.kind}:); put block, USB or serial disks under storage`);
  }
}

function checkSize(name: string, sizeBytes: number, maxBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < cacheDeviceBytesMin || sizeBytes > maxBytes) {
    throw sense.invalidField(name, `cache size ${sizeBytes} bytes is not valid; use a whole number of bytes from ${cacheDeviceBytesMin} to ${maxBytes}`);
  }
}

function checkAccess(dev: CacheDevice, offsetBytes: number, lengthBytes: number): void {
  if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes > dev.sizeBytes - lengthBytes) {
    throw sense.invalidField(dev.name, `cache access of ${lengthBytes} bytes at byte ${offsetBytes} falls outside the ${dev.sizeBytes}-byte region`);
  }
}

/** RAM cache: survives nothing but is exact for tests and the simulator. */
export class MemoryCacheDevice implements CacheDevice {
  readonly durableWrites = true; // RAM is this device's whole world
  private readonly bytes: Buffer;
  private closed = false;

  constructor(
    readonly name: string,
    readonly sizeBytes: number,
  ) {
    checkSize(name, sizeBytes, memoryBytesMax);
    this.bytes = Buffer.alloc(sizeBytes);
  }

  async writev(buffers: readonly Uint8Array[], offsetBytes: number): Promise<void> {
    await undefined; // never synchronous, like every HAL call
    if (this.closed) throw sense.notPresent(this.name);
    let lengthBytes = 0;
    for (const b of buffers) lengthBytes += b.byteLength;
    checkAccess(this, offsetBytes, lengthBytes);
    let at = offsetBytes;
    for (const b of buffers) {
      this.bytes.set(b, at);
      at += b.byteLength;
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    await undefined;
    if (this.closed) throw sense.notPresent(this.name);
    checkAccess(this, offsetBytes, lengthBytes);
    return Buffer.from(this.bytes.subarray(offsetBytes, offsetBytes + lengthBytes));
  }

  async sync(): Promise<void> {
    await undefined;
    if (this.closed) throw sense.notPresent(this.name);
  }

  async close(): Promise<void> {
    await undefined;
    this.closed = true;
  }

  /** Test hook: the raw region, to tear or corrupt entries on purpose. */
  raw(): Buffer {
    return this.bytes;
  }
}

/**
 * Opens (or creates) a file as a cache region of `sizeBytes`. A new or empty file is sized to
 * the region. A non-empty file that is shorter is opened as it is (`storedBytes`): it may hold a
 * journal of another size, or one cut short, and only the journal (hal/cache.ts) can tell which
 * and whether growing it is safe.
 */
export async function openFileCacheDevice(path: string, options: CacheDeviceOptions): Promise<FileCacheDevice> {
  const name = `loopback:${path}`;
  checkSize(name, options.sizeBytes, Number.MAX_SAFE_INTEGER);
  // O_RDWR | O_CREAT without O_TRUNC: create if missing, never truncate what is there.
  const flags = options.create === false ? constants.O_RDWR : constants.O_RDWR | constants.O_CREAT;
  let fh: FileHandle;
  let storedBytes: number;
  try {
    fh = await open(path, flags, 0o600);
  } catch (err) {
    throw mapFsError(name, options.create === false ? 'read' : 'write', undefined, err);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw sense.invalidField(name, `${path} is not a regular file; a cache device is a file or memory:`);
    // Shrinking could cut pending entries, so we never truncate. An empty file holds nothing
    // and is sized at once; a shorter non-empty one is left for the journal to judge.
    if (st.size === 0) await fh.truncate(options.sizeBytes);
    storedBytes = st.size === 0 ? options.sizeBytes : st.size;
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw mapFsError(name, 'write', undefined, err);
  }
  return new FileCacheDevice(name, fh, options.sizeBytes, options.sync === true, storedBytes !== options.sizeBytes ? storedBytes : undefined);
}

export class FileCacheDevice implements CacheDevice {
  private closed = false;
  readonly writevNow: ((buffers: readonly Uint8Array[], offsetBytes: number) => void) | undefined;

  constructor(
    readonly name: string,
    private readonly fh: FileHandle,
    readonly sizeBytes: number,
    readonly durableWrites: boolean,
    private stored: number | undefined = undefined,
  ) {
    // With durable writes every write waits for fdatasync: that stays off the event loop.
    this.writevNow = durableWrites ? undefined : (buffers, offsetBytes) => this.writevSyncNow(buffers, offsetBytes);
  }

  /** One synchronous positional writev into the page cache (short writes resumed). */
  private writevSyncNow(buffers: readonly Uint8Array[], offsetBytes: number): void {
    if (this.closed) throw sense.notPresent(this.name);
    let lengthBytes = 0;
    for (const b of buffers) lengthBytes += b.byteLength;
    checkAccess(this, offsetBytes, lengthBytes);
    try {
      let doneBytes = 0;
      let rest: readonly Uint8Array[] = buffers;
      for (;;) {
        const n = writevSync(this.fh.fd, rest as Uint8Array[], offsetBytes + doneBytes);
        doneBytes += n;
        if (doneBytes >= lengthBytes) break;
        if (n === 0) throw sense.mediumWrite(this.name, undefined, `the filesystem accepted 0 bytes at byte ${offsetBytes + doneBytes}`);
        rest = skipBytes(rest, n);
      }
    } catch (err) {
      throw mapFsError(this.name, 'write', undefined, err);
    }
  }

  get storedBytes(): number | undefined {
    return this.stored;
  }

  async grow(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    if (this.stored === undefined || this.stored >= this.sizeBytes) return;
    try {
      await this.fh.truncate(this.sizeBytes);
    } catch (err) {
      throw mapFsError(this.name, 'write', undefined, err);
    }
    this.stored = undefined;
  }

  async writev(buffers: readonly Uint8Array[], offsetBytes: number): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    let lengthBytes = 0;
    for (const b of buffers) lengthBytes += b.byteLength;
    checkAccess(this, offsetBytes, lengthBytes);
    try {
      let doneBytes = 0;
      let rest: readonly Uint8Array[] = buffers;
      // pwritev may write less than asked (signals, quotas): resume where it stopped.
      for (;;) {
        const { bytesWritten } = await this.fh.writev(rest as Uint8Array[], offsetBytes + doneBytes);
        doneBytes += bytesWritten;
        if (doneBytes >= lengthBytes) break;
        if (bytesWritten === 0) throw sense.mediumWrite(this.name, undefined, `the filesystem accepted 0 bytes at byte ${offsetBytes + doneBytes}`);
        rest = skipBytes(rest, bytesWritten);
      }
      if (this.durableWrites) await this.fh.datasync();
    } catch (err) {
      throw mapFsError(this.name, 'write', undefined, err);
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (this.closed) throw sense.notPresent(this.name);
    checkAccess(this, offsetBytes, lengthBytes);
    const out = Buffer.allocUnsafe(lengthBytes);
    await this.fill(out, offsetBytes, lengthBytes);
    return out;
  }

  async readInto(out: Buffer, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    checkAccess(this, offsetBytes, lengthBytes);
    if (out.byteLength < lengthBytes) throw new RangeError(`readInto: a ${out.byteLength}-byte buffer cannot take ${lengthBytes} bytes`);
    await this.fill(out, offsetBytes, lengthBytes);
  }

  /** Reads `lengthBytes` at `offsetBytes` into `out` (checked by the caller), looping over short reads. */
  private async fill(out: Buffer, offsetBytes: number, lengthBytes: number): Promise<void> {
    try {
      let doneBytes = 0;
      while (doneBytes < lengthBytes) {
        const { bytesRead } = await this.fh.read(out, doneBytes, lengthBytes - doneBytes, offsetBytes + doneBytes);
        if (bytesRead === 0) throw sense.mediumRead(this.name, undefined, `end of file at byte ${offsetBytes + doneBytes}: the cache file was truncated while in use`);
        doneBytes += bytesRead;
      }
    } catch (err) {
      throw mapFsError(this.name, 'read', undefined, err);
    }
  }

  async sync(): Promise<void> {
    if (this.closed) throw sense.notPresent(this.name);
    try {
      await this.fh.datasync();
    } catch (err) {
      throw mapFsError(this.name, 'flush', undefined, err);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.fh.close();
    } catch (err) {
      throw mapFsError(this.name, 'close', undefined, err);
    }
  }
}

/** The buffers that remain after the first `n` bytes, as views (no copies). */
function skipBytes(buffers: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = n;
  for (const b of buffers) {
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

// RAM block device: the volume lives in one Buffer. Used as storage and cache in tests and the
// simulator, and as the base under the fault wrapper (TigerBeetle-style storage swap).
//
// Claims served: 2, 4, 11 (a cache / storage device at a site), for tests and simulation.
// hal/ imports nothing from src/.

import {
  MediaStatus,
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

/** Largest RAM volume we allocate, in bytes (one Buffer; Node caps a Buffer at 4 GiB). */
export const memoryBytesMax = 2 ** 32;

export interface MemoryDeviceOptions {
  /** Name used in error messages; default `memory:`. */
  readonly name?: string;
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  readonly readOnly?: boolean;
}

export class MemoryDevice implements BlockDevice {
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly capabilities: Capabilities;
  private readonly bytes: Buffer;
  private closed = false;

  constructor(options: MemoryDeviceOptions) {
    this.name = options.name ?? 'memory:';
    const g = checkGeometry(this.name, options.blockSizeBytes, options.blockCount);
    this.blockSizeBytes = g.blockSizeBytes;
    this.blockCount = g.blockCount;
    const sizeBytes = g.blockCount * g.blockSizeBytes;
    if (sizeBytes > memoryBytesMax) {
      throw sense.invalidField(this.name, `a RAM volume of ${sizeBytes} bytes exceeds the ${memoryBytesMax}-byte maximum; use a loopback file`);
    }
    this.bytes = Buffer.alloc(sizeBytes);
    // RAM is this device's stable storage: flush and FUA are trivially true; trim zeroes.
    this.capabilities = { flush: true, fua: true, trim: true, readOnly: options.readOnly === true };
  }

  status(): MediaStatusFlags {
    if (this.closed) return MediaStatus.NO_MEDIA;
    return this.capabilities.readOnly ? MediaStatus.WRITE_PROTECTED : MediaStatus.OK;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    // Every call first yields a microtask, so no effect is visible before the call returns and
    // calls take effect in issue order (random-access-storage's never-synchronous rule).
    await undefined;
    this.assertOpen();
    const offsetBytes = checkRange(this, lba, blocks);
    const lengthBytes = blocks * this.blockSizeBytes;
    const out = Buffer.allocUnsafe(lengthBytes);
    this.bytes.copy(out, 0, offsetBytes, offsetBytes + lengthBytes);
    return out;
  }

  async write(lba: number, data: Uint8Array, _options?: WriteOptions): Promise<void> {
    await undefined;
    this.assertOpen();
    const blocks = blocksIn(this, data, lba);
    const offsetBytes = checkRange(this, lba, blocks);
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    this.bytes.set(data, offsetBytes);
  }

  async flush(): Promise<void> {
    await undefined;
    this.assertOpen();
  }

  async trim(lba: number, blocks: number): Promise<void> {
    await undefined;
    this.assertOpen();
    const offsetBytes = checkRange(this, lba, blocks);
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    this.bytes.fill(0, offsetBytes, offsetBytes + blocks * this.blockSizeBytes);
  }

  async close(): Promise<void> {
    // Also after a microtask, so calls issued before close() still complete and every call
    // issued after it fails with NOT READY.
    await undefined;
    this.closed = true;
  }

  private assertOpen(): void {
    if (this.closed) throw sense.notPresent(this.name);
  }
}

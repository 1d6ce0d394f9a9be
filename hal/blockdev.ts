// The block-device interface of the HAL: what every storage adapter implements (memory,
// loopback file, USB mass storage, serial-attached card) and what every wrapper (fault
// injection, stats, read-only) re-implements around another device. Modelled on nbdkit's
// plugin calls and Zephyr's disk access API: block-addressed, whole-or-fail I/O, declared
// capabilities, media status flags, SCSI-like sense on every error.
//
// Claims served: 2, 4, 11, 16, 17 ("means for storing data" at every site).
//
// hal/ imports nothing from src/.

/** SCSI sense keys (SPC-4 table "Sense key descriptions"). */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
} as const;
export type SenseKey = (typeof SenseKey)[keyof typeof SenseKey];

/** Additional sense code / qualifier pairs we produce or map (SPC-4 annex). */
export const Asc = {
  NONE: [0x00, 0x00],
  LOGICAL_UNIT_NOT_READY: [0x04, 0x00],
  LOGICAL_UNIT_BECOMING_READY: [0x04, 0x01],
  WRITE_ERROR: [0x0c, 0x00],
  UNRECOVERED_READ_ERROR: [0x11, 0x00],
  INVALID_COMMAND_OPERATION_CODE: [0x20, 0x00],
  LBA_OUT_OF_RANGE: [0x21, 0x00],
  INVALID_FIELD_IN_CDB: [0x24, 0x00],
  WRITE_PROTECTED: [0x27, 0x00],
  NOT_READY_TO_READY_CHANGE: [0x28, 0x00],
  POWER_ON_RESET: [0x29, 0x00],
  MEDIUM_NOT_PRESENT: [0x3a, 0x00],
  INTERNAL_TARGET_FAILURE: [0x44, 0x00],
  COMMAND_TIMEOUT: [0x2e, 0x00],
  PERIPHERAL_DEVICE_WRITE_FAULT: [0x03, 0x00],
} as const satisfies Record<string, readonly [number, number]>;
export type AscPair = readonly [number, number];

const senseKeyNames: Record<number, string> = Object.fromEntries(
  Object.entries(SenseKey).map(([name, v]) => [v, name.replaceAll('_', ' ')]),
);

/**
 * Every error a block device raises. `key/asc/ascq` say what happened in SCSI terms (so a
 * USB disk's real sense data passes through unchanged); the message names the device and,
 * where there is one, the LBA, so an operator can act on it.
 */
export class SenseError extends Error {
  readonly key: SenseKey;
  readonly asc: number;
  readonly ascq: number;
  readonly device: string;
  readonly lba: number | undefined;

  constructor(
    key: SenseKey,
    ascPair: AscPair,
    device: string,
    detail: string,
    lba?: number,
    options?: { cause?: unknown },
  ) {
    const where = lba === undefined ? '' : ` at LBA ${lba}`;
    const code = `${senseKeyNames[key] ?? `SENSE ${key}`} ${hex2(ascPair[0])}/${hex2(ascPair[1])}`;
    super(`${device}${where}: ${detail} (${code})`, options);
    this.name = 'SenseError';
    this.key = key;
    this.asc = ascPair[0];
    this.ascq = ascPair[1];
    this.device = device;
    this.lba = lba;
  }

  get senseKeyName(): string {
    return senseKeyNames[this.key] ?? `SENSE ${this.key}`;
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** Shorthands for the sense errors every adapter raises. */
export const sense = {
  outOfRange: (device: string, lba: number, blocks: number, blockCount: number) =>
    new SenseError(
      SenseKey.ILLEGAL_REQUEST,
      Asc.LBA_OUT_OF_RANGE,
      device,
      `${blocks} block(s) from LBA ${lba} run past the end of the device (${blockCount} blocks)`,
      lba,
    ),
  invalidField: (device: string, detail: string, lba?: number) =>
    new SenseError(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, device, detail, lba),
  mediumRead: (device: string, lba: number | undefined, detail: string, cause?: unknown) =>
    new SenseError(SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR, device, detail, lba, { cause }),
  mediumWrite: (device: string, lba: number | undefined, detail: string, cause?: unknown) =>
    new SenseError(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR, device, detail, lba, { cause }),
  notPresent: (device: string, detail = 'medium not present (device removed or closed)') =>
    new SenseError(SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT, device, detail),
  writeProtected: (device: string, lba?: number) =>
    new SenseError(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, device, 'device is write-protected', lba),
  hardware: (device: string, detail: string, cause?: unknown) =>
    new SenseError(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE, device, detail, undefined, { cause }),
  timeout: (device: string, detail: string, lba?: number) =>
    new SenseError(SenseKey.ABORTED_COMMAND, Asc.COMMAND_TIMEOUT, device, detail, lba),
};

/** Media status as flags, as removable and USB media need (Zephyr's disk status). */
export const MediaStatus = {
  OK: 0,
  NO_MEDIA: 1 << 0,
  WRITE_PROTECTED: 1 << 1,
} as const;
export type MediaStatusFlags = number;

/** What a device can do; a caller checks before using an optional call (nbdkit's can_*). */
export interface Capabilities {
  readonly flush: boolean; // flush() reaches stable storage (SYNCHRONIZE CACHE)
  readonly fua: boolean; // write(..., { fua: true }) is durable on return
  readonly trim: boolean; // trim() is implemented
  readonly readOnly: boolean; // write() and trim() fail with DATA PROTECT
}

export interface WriteOptions {
  /** Force Unit Access: the write is on stable storage when the promise resolves. */
  readonly fua?: boolean;
}

export const blockSizesBytes = [512, 4096] as const;
export type BlockSizeBytes = (typeof blockSizesBytes)[number];

/**
 * A block device. All I/O is whole or fails with a SenseError: a short read or write is
 * retried inside the adapter or reported, never returned. Callbacks never fire synchronously
 * (every method returns a promise). Concurrent calls whose ranges overlap have no defined order
 * (a loopback file's pread/pwrite run on the OS thread pool in either order, a disk queues
 * commands): a read issued while an overlapping write is in flight may return the old data or
 * the new. A caller that needs order waits for one call before issuing the other, as hal/array.ts
 * does for overlapping writes and for reads behind them. Some adapters happen to keep issue order
 * (memory, and USB/serial, which run one call at a time); nothing may rely on it.
 */
export interface BlockDevice {
  /** The device string or a readable name, used in every error message. */
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly capabilities: Capabilities;
  /** Current media status flags (MediaStatus.*). */
  status(): MediaStatusFlags;
  /** Reads `blocks` blocks starting at `lba` into a new buffer of blocks * blockSizeBytes. */
  read(lba: number, blocks: number): Promise<Buffer>;
  /** Writes `data` (a whole number of blocks) at `lba`. */
  write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void>;
  /**
   * Optional: writes `data` at `lba` where the kernel absorbs the write without waiting for the
   * medium (a file in the page cache): done when it returns, throws a SenseError otherwise.
   * Not durable until a later flush() (a FUA write goes through write()). The hot path of
   * hal/array.ts uses it to spare a thread-pool round trip per write (issue 18); adapters with
   * their own queues (USB, serial, kernel block devices) and wrappers leave it out.
   */
  writeNow?(lba: number, data: Uint8Array): void;
  /** Makes every completed write durable (fdatasync / SYNCHRONIZE CACHE). */
  flush(): Promise<void>;
  /** Optional: the blocks may be discarded; later reads return zeroes or the old data. */
  trim?(lba: number, blocks: number): Promise<void>;
  /** Releases the device; later calls fail with NOT READY / MEDIUM NOT PRESENT. */
  close(): Promise<void>;
}

/**
 * The one range check every adapter and wrapper runs at its edge (with an overflow guard, as
 * Zephyr's disk_access does). Returns the byte offset of `lba`.
 */
export function checkRange(dev: Pick<BlockDevice, 'name' | 'blockCount' | 'blockSizeBytes'>, lba: number, blocks: number): number {
  if (!Number.isSafeInteger(lba) || lba < 0) throw sense.invalidField(dev.name, `LBA ${lba} is not a valid block address`);
  if (!Number.isSafeInteger(blocks) || blocks < 0) throw sense.invalidField(dev.name, `block count ${blocks} is not valid`, lba);
  if (lba > dev.blockCount || blocks > dev.blockCount - lba) throw sense.outOfRange(dev.name, lba, blocks, dev.blockCount);
  return lba * dev.blockSizeBytes;
}

/** Checks that a write buffer is a whole number of blocks and returns that number. */
export function blocksIn(dev: Pick<BlockDevice, 'name' | 'blockSizeBytes'>, data: Uint8Array, lba: number): number {
  if (data.byteLength % dev.blockSizeBytes !== 0) {
    throw sense.invalidField(dev.name, `write of ${data.byteLength} bytes is not a whole number of ${dev.blockSizeBytes}-byte blocks`, lba);
  }
  return data.byteLength / dev.blockSizeBytes;
}

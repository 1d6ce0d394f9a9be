// What the NBD server serves: one named export. The primary's host API (writes go through
// replication, reads come from local storage) and a mirror's read-only replica both implement
// this; so does blockDeviceExport() over any HAL BlockDevice, for tests and single-site use.
//
// Contract (the server validates once at its edge, then relies on it here, as nbdkit does with
// its plugins):
// - Every offset and length the server passes is a multiple of `blockSizeBytes`, and lies inside
//   [0, sizeBytes). Unaligned client requests are turned into aligned ones by the server
//   (read-modify-write at the edges under a range lock shared by every connection).
// - Writes, zeroes and trims never overlap another in-flight write, zero or trim (the same lock),
//   so an implementation needs no locking of its own for torn-block safety.
// - The server never modifies a buffer after passing it to write(), so the export may keep it
//   (e.g. queued for replication) without copying; the export must not modify it either (one
//   read-only zero buffer is passed repeatedly when zeroing without zero()).
// - Errors: throw NbdExportError to choose the wire error; a HAL SenseError is mapped
//   (DATA PROTECT -> EPERM, LBA out of range -> ENOSPC/EINVAL, anything else -> EIO).
//
// Claims served: 3 (the host-facing SAN of the local site); "a FLUSH reply means every write
// replied to before it is durable at every in-sync site" is the export's flush() promise.

import { Errno } from './protocol.js';

export interface NbdWriteOptions {
  /** Force Unit Access: resolve only when the data is durable (at every in-sync site). */
  readonly fua: boolean;
}

export interface NbdZeroOptions extends NbdWriteOptions {
  /** The range must stay allocated (no hole may be punched). */
  readonly noHole: boolean;
}

/** One run of base:allocation status (State.HOLE / State.ZERO flags). */
export interface NbdExtent {
  readonly lengthBytes: number;
  readonly flags: number;
}

export interface NbdExport {
  /** Export name as clients pass it (`nbdinfo nbd://host/NAME`); the server may also map "" to it. */
  readonly name: string;
  /** Human text shown by `nbdinfo --list`; may be empty. */
  readonly description: string;
  readonly sizeBytes: number;
  /** Alignment of every offset and length the server passes in (512 or 4096 for block devices). */
  readonly blockSizeBytes: number;
  /** Advertised as the preferred block size (efficient I/O, no read-modify-write). */
  readonly preferredBlockSizeBytes: number;
  readonly readOnly: boolean;
  /** flush() makes every completed write durable. */
  readonly canFlush: boolean;
  /** write(..., { fua: true }) is durable on return. */
  readonly canFua: boolean;
  /** trim() is implemented (advisory discard). */
  readonly canTrim: boolean;
  /** zero() is faster than writing zeroes (answers FAST_ZERO requests; otherwise ENOTSUP). */
  readonly canFastZero: boolean;
  /**
   * flush() and FUA effects are visible to every connection when they resolve (no per-connection
   * cache), so clients may spread I/O over several connections (NBD_FLAG_CAN_MULTI_CONN).
   */
  readonly multiConn: boolean;

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  write(offsetBytes: number, data: Buffer, options: NbdWriteOptions): Promise<void>;
  /**
   * Optional callback form of write() for the hot path (issue 18: no promise chain per host
   * write). Same contract; `done` is called exactly once and never before writeNow returns,
   * with undefined on success or the error write() would have rejected with. The server uses
   * it for block-aligned writes that take the range lock at once. A wrapper that spreads an
   * export must wrap this too, or leave it out.
   */
  writeNow?(offsetBytes: number, data: Buffer, options: NbdWriteOptions, done: (err: unknown) => void): void;
  flush(): Promise<void>;
  /** Optional; only called when canTrim. Later reads may return old data or zeroes. */
  trim?(offsetBytes: number, lengthBytes: number, options: NbdWriteOptions): Promise<void>;
  /** Optional; when absent the server writes zero buffers through write(). Must read back as zeroes. */
  zero?(offsetBytes: number, lengthBytes: number, options: NbdZeroOptions): Promise<void>;
  /** Optional; when absent the server reports the whole range as allocated data (flags 0). */
  blockStatus?(offsetBytes: number, lengthBytes: number): Promise<readonly NbdExtent[]>;
}

/** An export failure with the NBD error value the client should see and a message for humans. */
export class NbdExportError extends Error {
  readonly errno: Errno;
  constructor(errno: Errno, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NbdExportError';
    this.errno = errno;
  }
}

/** Checks an export's declared geometry once, when it is added to a server. */
export function checkExport(exp: NbdExport): void {
  const where = `NBD export '${exp.name}'`;
  const b = exp.blockSizeBytes;
  if (!Number.isSafeInteger(b) || b < 1 || b > 65536 || (b & (b - 1)) !== 0) {
    throw new Error(`${where}: blockSizeBytes ${b} must be a power of two from 1 to 65536`);
  }
  const p = exp.preferredBlockSizeBytes;
  if (!Number.isSafeInteger(p) || p < Math.max(b, 512) || (p & (p - 1)) !== 0) {
    throw new Error(`${where}: preferredBlockSizeBytes ${p} must be a power of two >= max(blockSizeBytes, 512)`);
  }
  if (!Number.isSafeInteger(exp.sizeBytes) || exp.sizeBytes < 0 || exp.sizeBytes % b !== 0) {
    throw new Error(`${where}: sizeBytes ${exp.sizeBytes} must be a whole number of ${b}-byte blocks`);
  }
  if (Buffer.byteLength(exp.name) > 4096 || Buffer.byteLength(exp.description) > 4096) {
    throw new Error(`${where}: name and description must be at most 4096 bytes (NBD string limit)`);
  }
  if (exp.canTrim && exp.trim === undefined) throw new Error(`${where}: canTrim is set but trim() is missing`);
}

/**
 * A window of another export: bytes [offsetBytes, offsetBytes + sizeBytes) of `exp` served as an
 * export of their own. A site with a consistency group of several volumes (issue 20) serves each
 * volume this way over the group's one address space; the server range-checks every request
 * against the window's size before it gets here, so a client of one volume never reaches another.
 * FLUSH is the group's barrier (a FLUSH on any volume of a group covers the group, issue 20 item 2).
 */
export function sliceExport(exp: NbdExport, w: { name: string; description: string; offsetBytes: number; sizeBytes: number }): NbdExport {
  const at = w.offsetBytes;
  if (!Number.isSafeInteger(at) || at < 0 || at % exp.blockSizeBytes !== 0 || at + w.sizeBytes > exp.sizeBytes) {
    throw new Error(`NBD export '${w.name}': window ${at}+${w.sizeBytes} does not fit block-aligned in '${exp.name}' (${exp.sizeBytes} bytes)`);
  }
  return {
    ...exp,
    name: w.name,
    description: w.description,
    sizeBytes: w.sizeBytes,
    read: (o, l) => exp.read(at + o, l),
    write: (o, d, opts) => exp.write(at + o, d, opts),
    writeNow: exp.writeNow ? (o, d, opts, done) => exp.writeNow!(at + o, d, opts, done) : undefined,
    flush: () => exp.flush(),
    ...(exp.trim ? { trim: (o: number, l: number, opts: NbdWriteOptions) => exp.trim!(at + o, l, opts) } : {}),
    ...(exp.zero ? { zero: (o: number, l: number, opts: NbdZeroOptions) => exp.zero!(at + o, l, opts) } : {}),
    ...(exp.blockStatus ? { blockStatus: (o: number, l: number) => exp.blockStatus!(at + o, l) } : {}),
  };
}

// USB Mass Storage Class Bulk-Only Transport (BOT, "USB MSC BOT 1.0"): the Command Block
// Wrapper / Command Status Wrapper exchange, and the host error recovery of section 5.3 and 6.
//
// Every transfer carries a timeout and is also raced against our own timer, so a device that
// never answers (missing CSW, unplugged mid-transfer, a native call that ignores its timeout)
// costs at most timeoutMs, never a hang. Any doubt about where the device is in the protocol
// (phase error, invalid or unmeaningful CSW, timeout) ends in Reset Recovery (5.3.4): the class
// request Bulk-Only Mass Storage Reset, then Clear Feature HALT on both bulk endpoints. The
// command is then reported as failed-retryable; device.ts decides whether to retry.

import * as BufferLayout from 'buffer-layout';
import type { TransferStatus, UsbDeviceLike } from './webusb.js';

export const cbwSignature = 0x43425355; // "USBC" little-endian
export const cswSignature = 0x53425355; // "USBS"
export const cbwBytes = 31;
export const cswBytes = 13;
export const cbLengthMax = 16;
/** Class-specific request codes (BOT 3.1, 3.2). */
export const BotRequest = { RESET: 0xff, GET_MAX_LUN: 0xfe } as const;
export const CswStatus = { PASSED: 0, FAILED: 1, PHASE_ERROR: 2 } as const;

export interface Cbw {
  signature: number;
  tag: number;
  dataTransferLength: number;
  flags: number; // bit 7: direction, 1 = data-in (device to host)
  lun: number;
  cbLength: number;
  cb: Buffer;
}
export interface Csw {
  signature: number;
  tag: number;
  dataResidue: number;
  status: number;
}

export const cbwLayout = BufferLayout.struct<Cbw>([
  BufferLayout.u32('signature'),
  BufferLayout.u32('tag'),
  BufferLayout.u32('dataTransferLength'),
  BufferLayout.u8('flags'),
  BufferLayout.u8('lun'),
  BufferLayout.u8('cbLength'),
  BufferLayout.blob(cbLengthMax, 'cb'),
]);
export const cswLayout = BufferLayout.struct<Csw>([
  BufferLayout.u32('signature'),
  BufferLayout.u32('tag'),
  BufferLayout.u32('dataResidue'),
  BufferLayout.u8('status'),
]);

export const cbwDirectionIn = 0x80;

export function encodeCbw(tag: number, dataTransferLength: number, dirIn: boolean, cdb: Buffer, lun = 0): Buffer {
  if (cdb.length < 1 || cdb.length > cbLengthMax) throw new RangeError(`CDB of ${cdb.length} bytes; BOT carries 1..${cbLengthMax}`);
  const cb = Buffer.alloc(cbLengthMax);
  cdb.copy(cb);
  const out = Buffer.alloc(cbwBytes);
  cbwLayout.encode({ signature: cbwSignature, tag, dataTransferLength, flags: dirIn ? cbwDirectionIn : 0, lun, cbLength: cdb.length, cb }, out, 0);
  return out;
}

/** Decodes a CBW (device side); undefined unless it is valid (BOT 6.2.1: 31 bytes, signature). */
export function decodeCbw(b: Uint8Array): Cbw | undefined {
  if (b.byteLength !== cbwBytes) return undefined;
  const c = cbwLayout.decode(Buffer.from(b.buffer, b.byteOffset, b.byteLength), 0);
  if (c.signature !== cbwSignature || c.cbLength < 1 || c.cbLength > cbLengthMax || (c.lun & 0xf0) !== 0) return undefined;
  return { ...c, cb: c.cb.subarray(0, c.cbLength) };
}

export function encodeCsw(tag: number, dataResidue: number, status: number): Buffer {
  const out = Buffer.alloc(cswBytes);
  cswLayout.encode({ signature: cswSignature, tag, dataResidue, status }, out, 0);
  return out;
}

export type BotErrorKind = 'timeout' | 'phase-error' | 'invalid-csw' | 'stall' | 'disconnected' | 'io';

/** A transport failure. `recovered` says Reset Recovery succeeded, so a retry is sensible. */
export class BotError extends Error {
  constructor(
    readonly kind: BotErrorKind,
    message: string,
    readonly recovered: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BotError';
  }
}

export interface BotResult {
  status: typeof CswStatus.PASSED | typeof CswStatus.FAILED;
  /** Data-in bytes received (empty for out/none). */
  data: Buffer;
  residue: number;
}

export interface BotOptions {
  /** Per transfer (ms). A bulk transfer of transferBytesMax must fit well inside it. */
  timeoutMs?: number;
}
export const botDefaults = { timeoutMs: 5000 } as const;
/** Our race timer fires this long after the native timeout, so native errors normally win. */
const raceSlackMs = 250;

export class BotTransport {
  private tag = 0;
  private readonly timeoutMs: number;
  readonly stats = { commands: 0, resetRecoveries: 0, clearHalts: 0 };

  constructor(
    private readonly dev: UsbDeviceLike,
    readonly interfaceNumber: number,
    readonly endpointIn: number,
    readonly endpointOut: number,
    opts: BotOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? botDefaults.timeoutMs;
  }

  /**
   * One command: CBW, optional data phase, CSW. Returns PASSED or FAILED (the caller asks
   * REQUEST SENSE on FAILED); throws BotError for transport failures, after Reset Recovery.
   */
  async command(cdb: Buffer, dir: 'in' | 'out' | 'none', length: number, dataOut?: Uint8Array): Promise<BotResult> {
    this.stats.commands++;
    this.tag = (this.tag + 1) >>> 0;
    const tag = this.tag;
    const len = dir === 'none' ? 0 : length;
    if (dir === 'out' && dataOut?.byteLength !== len) throw new RangeError(`data-out of ${dataOut?.byteLength} bytes for a ${len}-byte transfer`);

    // Command transport (BOT 5.1). A stall here means the device refused the CBW itself.
    const sent = await this.io(() => this.bulkOut(encodeCbw(tag, len, dir === 'in', cdb)), 'CBW');
    if (sent.status !== 'ok' || sent.bytesWritten !== cbwBytes) {
      return this.fail('stall', `device did not accept the CBW (${sent.status}, ${sent.bytesWritten} bytes)`);
    }

    // Data transport (BOT 5.2 / 6.7). A stalled data phase is legal (the device ended the data
    // early, typically on an error): clear the halt, then the CSW still comes.
    let data: Buffer = Buffer.alloc(0);
    let early: Csw | undefined;
    if (dir === 'in' && len > 0) {
      const r = await this.io(() => this.bulkIn(len), 'data-in');
      if (r.status === 'babble') return this.fail('phase-error', 'device sent more data than asked (babble)');
      if (r.status === 'stall') await this.clearHalt('in');
      else if (r.data) {
        data = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
        // A device that skips its data phase sends the CSW in its place: accept it if it is
        // a valid CSW for this very tag (Linux usb-storage does the same).
        if (data.length === cswBytes && len !== cswBytes) early = this.parseCsw(data, tag, len);
        if (data.length > len) return this.fail('phase-error', `device sent ${data.length} bytes for a ${len}-byte data phase`);
      }
    } else if (dir === 'out' && len > 0) {
      const r = await this.io(() => this.bulkOut(dataOut!), 'data-out');
      if (r.status === 'stall') await this.clearHalt('out');
      else if (r.status !== 'ok') return this.fail('phase-error', `data-out ended with ${r.status}`);
    }

    // Status transport (BOT 5.3, 6.7.2 step 4): on a stall, clear it and read the CSW once more.
    let csw = early;
    if (!csw) {
      let r = await this.io(() => this.bulkIn(cswBytes), 'CSW');
      if (r.status === 'stall') {
        await this.clearHalt('in');
        r = await this.io(() => this.bulkIn(cswBytes), 'CSW');
      }
      if (r.status !== 'ok' || !r.data) return this.fail('stall', `CSW not received (${r.status})`);
      const raw = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
      csw = this.parseCsw(raw, tag, len);
      if (!csw) return this.fail('invalid-csw', `invalid CSW (${raw.length} bytes, expected ${cswBytes} with signature USBS and tag ${tag})`);
    }
    if (csw.status === CswStatus.PHASE_ERROR) return this.fail('phase-error', 'device reported a phase error');
    return { status: csw.status as 0 | 1, data, residue: csw.dataResidue };
  }

  /**
   * Bulk transfers with a STALL as a status, whichever way the usb package reports it: the
   * WebUSB spec resolves with status 'stall', while usb 3.x (nusb underneath) rejects with
   * "transferIn error: Stall". A stall is protocol, not failure (BOT 6.7), so it must not end
   * up in the timeout/IO path that forces Reset Recovery.
   */
  private async bulkIn(length: number): Promise<{ data?: DataView | undefined; status: TransferStatus }> {
    try {
      return await this.dev.transferIn(this.endpointIn, length, this.timeoutMs);
    } catch (e) {
      if (isStall(e)) return { status: 'stall' };
      throw e;
    }
  }

  private async bulkOut(data: Uint8Array): Promise<{ bytesWritten: number; status: TransferStatus }> {
    try {
      return await this.dev.transferOut(this.endpointOut, data, this.timeoutMs);
    } catch (e) {
      if (isStall(e)) return { bytesWritten: 0, status: 'stall' };
      throw e;
    }
  }

  /** BOT 5.3.4 Reset Recovery: Mass Storage Reset, then clear HALT on Bulk-In and Bulk-Out. */
  async resetRecovery(): Promise<void> {
    this.stats.resetRecoveries++;
    const r = await this.io(
      // An empty buffer, not undefined: usb 3.1's wrapper reads data.buffer unconditionally.
      () => this.dev.controlTransferOut({ requestType: 'class', recipient: 'interface', request: BotRequest.RESET, value: 0, index: this.interfaceNumber }, new Uint8Array(0), this.timeoutMs),
      'Bulk-Only Mass Storage Reset',
    );
    if (r.status !== 'ok') throw new BotError('stall', `Bulk-Only Mass Storage Reset was refused (${r.status})`, false);
    await this.clearHalt('in');
    await this.clearHalt('out');
  }

  /** CSW validity (6.3.1: size, signature, tag) and meaningfulness (6.3.2: status, residue). */
  private parseCsw(raw: Buffer, tag: number, len: number): Csw | undefined {
    if (raw.length !== cswBytes) return undefined;
    const c = cswLayout.decode(raw, 0);
    if (c.signature !== cswSignature || c.tag !== tag) return undefined;
    if (c.status > CswStatus.PHASE_ERROR) return undefined;
    if (c.status !== CswStatus.PHASE_ERROR && c.dataResidue > len) return undefined;
    return c;
  }

  private async clearHalt(direction: 'in' | 'out'): Promise<void> {
    this.stats.clearHalts++;
    await this.io(() => this.dev.clearHalt(direction, direction === 'in' ? this.endpointIn : this.endpointOut), `clear halt (${direction})`);
  }

  /** Runs Reset Recovery, then throws the transport error (retryable if the recovery worked). */
  private async fail(kind: BotErrorKind, message: string, cause?: unknown): Promise<never> {
    try {
      await this.resetRecovery();
    } catch (e) {
      const gone = e instanceof BotError && e.kind === 'disconnected';
      throw new BotError(gone ? 'disconnected' : kind, `${message}; reset recovery failed: ${(e as Error).message}`, false, { cause: e });
    }
    throw new BotError(kind, `${message} (reset recovery done)`, true, { cause });
  }

  /**
   * One USB call with our own deadline on top of the native one. A timeout or I/O error is
   * followed by Reset Recovery (we no longer know the device's phase); a disconnect is not.
   */
  private async io<T>(call: () => Promise<T>, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BotError('timeout', `${what} timed out after ${this.timeoutMs} ms`, false)), this.timeoutMs + raceSlackMs);
    });
    try {
      return await Promise.race([call(), deadline]);
    } catch (e) {
      const kind = classify(e);
      if (kind === 'disconnected') throw new BotError('disconnected', `${what}: device disconnected (${(e as Error).message})`, false, { cause: e });
      if (what.startsWith('clear halt') || what.startsWith('Bulk-Only')) throw new BotError(kind, `${what} failed: ${(e as Error).message}`, false, { cause: e });
      return this.fail(kind, `${what}: ${(e as Error).message}`, e);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** usb 3.x formats nusb's TransferError with Debug: "transferIn error: Stall". */
export function isStall(e: unknown): boolean {
  return e instanceof Error && /\bStall\b|LIBUSB_ERROR_PIPE/.test(e.message);
}

/**
 * Maps what the usb package or our own timer threw onto a transport error kind. usb 3.x
 * reports nusb's TransferError by name: Disconnected, Cancelled (which is how nusb reports a
 * transfer that hit its timeout), Fault, Unknown; libusb-style names are accepted too.
 */
export function classify(e: unknown): BotErrorKind {
  if (e instanceof BotError) return e.kind;
  const m = e instanceof Error ? `${e.name} ${e.message}` : String(e);
  if (/disconnect|no such device|NotFound|ENODEV|not found/i.test(m)) return 'disconnected';
  if (/time[d ]?out|ETIMEDOUT|Cancelled/i.test(m)) return 'timeout';
  return 'io';
}

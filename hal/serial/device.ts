// Block-device face of serial-attached storage (an SD card behind a microcontroller on a UART):
// the HAL's BlockDevice over the framed protocol of docs/SERIAL-PROTOCOL.md, through the
// `serialport` package (13.x). Device string `serial:PATH[?baud=N]`.
//
// Claims served: 11, 17 ("means for storing data" at a mirror site on a Raspberry Pi).
// hal/ imports nothing from src/.

import { SerialPort } from 'serialport';
import {
  MediaStatus,
  SenseError,
  blocksIn,
  checkRange,
  sense,
  type BlockDevice,
  type BlockSizeBytes,
  type Capabilities,
  type MediaStatusFlags,
  type SenseKey,
  type WriteOptions,
} from '../blockdev.js';
import { checkGeometry } from '../geometry.js';
import { Feature, Flag, Op, decodeInfo, infoBytes, payloadBytesLimit } from './messages.js';
import { LinkError, SerialLink, linkDefaults, type LinkOptions, type Response } from './protocol.js';

/** What the adapter needs of a serial port: serialport's SerialPortStream fits, so does a mock. */
export interface SerialPortLike {
  readonly isOpen: boolean;
  write(data: Buffer): boolean;
  on(event: 'data', fn: (chunk: Buffer) => void): unknown;
  on(event: 'close', fn: () => void): unknown;
  on(event: 'error', fn: (err: Error) => void): unknown;
  close(cb?: (err?: Error | null) => void): void;
}

export interface SerialDeviceOptions extends LinkOptions {
  /** Cap on one frame's payload; the smaller of this and the device's INFO value is used. */
  payloadBytesMax?: number;
  /** An already-open port (tests: @serialport/binding-mock); default opens PATH with serialport. */
  port?: SerialPortLike;
}

export const serialDefaults = { payloadBytesMax: 32 * 1024, baudRate: linkDefaults.baudRate } as const;
/** Same bound as hal/devstring.ts: fast USB-serial bridges reach 3-4 Mbaud, some 12. */
const baudRateMax = 12_000_000;

/** Parses `serial:PATH[?baud=N]`, with errors that name the string and the fix. */
export function parseSerialSpec(spec: string): { path: string; baudRate: number } {
  if (!spec.startsWith('serial:')) throw new Error(`device string "${spec}" is not serial:PATH[?baud=N]`);
  const rest = spec.slice('serial:'.length);
  const q = rest.indexOf('?');
  const path = q === -1 ? rest : rest.slice(0, q);
  if (path === '') throw new Error(`device string "${spec}" has no port path; write e.g. serial:/dev/ttyUSB0?baud=115200`);
  let baudRate: number = serialDefaults.baudRate;
  if (q !== -1) {
    const params = new URLSearchParams(rest.slice(q + 1));
    for (const [k, v] of params) {
      if (k !== 'baud') throw new Error(`device string "${spec}": unknown option "${k}"; only baud=N is accepted`);
      baudRate = Number(v);
      if (!/^[0-9]{1,9}$/.test(v) || baudRate < 1 || baudRate > baudRateMax) throw new Error(`device string "${spec}": baud rate ${v} is not a whole number in 1..${baudRateMax}`);
    }
  }
  return { path, baudRate };
}

/** Opens `serial:PATH[?baud=N]` and asks the device for its geometry (INFO). */
export async function openSerialDevice(spec: string, opts: SerialDeviceOptions = {}): Promise<SerialBlockDevice> {
  const { path, baudRate } = parseSerialSpec(spec);
  const name = `serial:${path}`;
  let port = opts.port;
  if (!port) {
    const sp = new SerialPort({ path, baudRate, autoOpen: false });
    await new Promise<void>((resolve, reject) => sp.open((err) => (err ? reject(err) : resolve()))).catch((err: Error) => {
      const hint = /EACCES|permission/i.test(err.message) ? ' (add your user to the dialout group or a udev rule for the port)' : '';
      throw sense.notPresent(name, `cannot open serial port ${path}: ${err.message}${hint}`);
    });
    keepPollerInterests(sp);
    port = sp;
  }
  const dev = new SerialBlockDevice(name, port, { baudRate, ...opts });
  try {
    await dev.identify();
  } catch (e) {
    await dev.close();
    throw e;
  }
  return dev;
}

/**
 * Works around a bug in @serialport/bindings-cpp (13.x, src/poller.cpp Poller::poll): it
 * records the union of wanted events but calls uv_poll_start with only the newest one, so a
 * read that re-polls for "readable" while a write waits for "writable" (EAGAIN on a full tty
 * buffer) cancels the writable wake-up and the write never finishes. Any frame larger than the
 * kernel's tty buffer hits this on a real UART as well as on a pty. We pass the events still
 * awaited by JS listeners along with the new one. Without a poller (other bindings) this is a
 * no-op.
 */
export function keepPollerInterests(port: unknown): void {
  const poller = (port as { port?: { poller?: PollerLike } }).port?.poller;
  if (!poller || typeof poller.poll !== 'function' || typeof poller.listenerCount !== 'function') return;
  const readable = 0b01;
  const writable = 0b10;
  const poll = poller.poll.bind(poller);
  poller.poll = (flags = 0) => {
    let f = flags;
    if (poller.listenerCount('readable') > 0) f |= readable;
    if (poller.listenerCount('writable') > 0) f |= writable;
    return poll(f);
  };
}

interface PollerLike {
  poll(flags?: number): unknown;
  listenerCount(event: string): number;
}

export class SerialBlockDevice implements BlockDevice {
  readonly name: string;
  blockSizeBytes: BlockSizeBytes = 512;
  blockCount = 0;
  capabilities: Capabilities = { flush: true, fua: true, trim: false, readOnly: false };
  model = '';
  readonly link: SerialLink;
  private payloadBytesMax: number;
  private closed = false;
  /** Serialises whole calls (see exclusive()). */
  private ops: Promise<unknown> = Promise.resolve();

  /** Use openSerialDevice(); this constructor does not talk to the device. */
  constructor(
    name: string,
    private readonly port: SerialPortLike,
    opts: SerialDeviceOptions,
  ) {
    this.name = name;
    this.payloadBytesMax = Math.min(opts.payloadBytesMax ?? serialDefaults.payloadBytesMax, payloadBytesLimit);
    this.link = new SerialLink((bytes) => {
      if (!this.port.isOpen) throw new Error('port is closed');
      this.port.write(bytes);
    }, opts);
    port.on('data', (chunk) => this.link.push(chunk));
    port.on('close', () => this.link.close(`serial port ${name} closed (unplugged?)`));
    port.on('error', () => this.link.close(`serial port ${name} failed`));
  }

  /** INFO: geometry, frame size and write protection, validated at the edge. */
  async identify(): Promise<void> {
    const r = await this.call(Op.INFO, 0, 0, 0, undefined, infoBytes, undefined);
    const info = decodeInfo(r.payload);
    if (!info) throw sense.hardware(this.name, `INFO response of ${r.payload.length} bytes is too short (need ${infoBytes}); check the firmware's protocol version`);
    const g = checkGeometry(this.name, info.blockSizeBytes, info.blockCount);
    this.blockSizeBytes = g.blockSizeBytes;
    this.blockCount = g.blockCount;
    this.model = info.model;
    const perFrame = Math.min(this.payloadBytesMax, info.payloadBytesMax);
    if (perFrame < this.blockSizeBytes) throw sense.hardware(this.name, `device frame payload ${info.payloadBytesMax} bytes is smaller than one ${this.blockSizeBytes}-byte block`);
    this.payloadBytesMax = perFrame - (perFrame % this.blockSizeBytes);
    this.capabilities = { flush: true, fua: (info.features & Feature.FUA) !== 0, trim: false, readOnly: (info.features & Feature.WRITE_PROTECTED) !== 0 };
  }

  status(): MediaStatusFlags {
    if (this.closed || !this.port.isOpen) return MediaStatus.NO_MEDIA;
    return this.capabilities.readOnly ? MediaStatus.WRITE_PROTECTED : MediaStatus.OK;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    await undefined;
    this.assertOpen();
    checkRange(this, lba, blocks);
    return this.exclusive(() => this.readChunks(lba, blocks));
  }

  private async readChunks(lba: number, blocks: number): Promise<Buffer> {
    const bs = this.blockSizeBytes;
    const out = Buffer.allocUnsafe(blocks * bs);
    const step = this.payloadBytesMax / bs;
    for (let done = 0; done < blocks; done += step) {
      const n = Math.min(step, blocks - done);
      const r = await this.call(Op.READ, lba + done, n, 0, undefined, n * bs, lba + done);
      // Whole or fail: a short payload is never handed up (nbdkit's all-or-nothing rule).
      if (r.payload.length !== n * bs || r.header.blocks !== n) {
        throw sense.mediumRead(this.name, lba + done, `device returned ${r.payload.length} bytes for ${n} block(s); firmware bug or protocol mismatch`);
      }
      r.payload.copy(out, done * bs);
    }
    return out;
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    await undefined;
    this.assertOpen();
    const blocks = blocksIn(this, data, lba);
    checkRange(this, lba, blocks);
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
    return this.exclusive(() => this.writeChunks(lba, blocks, data, options));
  }

  private async writeChunks(lba: number, blocks: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    const bs = this.blockSizeBytes;
    const step = this.payloadBytesMax / bs;
    const flags = options?.fua ? Flag.FUA : 0;
    for (let done = 0; done < blocks; done += step) {
      const n = Math.min(step, blocks - done);
      await this.call(Op.WRITE, lba + done, n, flags, data.subarray(done * bs, (done + n) * bs), 0, lba + done);
    }
  }

  async flush(): Promise<void> {
    await undefined;
    this.assertOpen();
    await this.exclusive(() => this.call(Op.FLUSH, 0, 0, 0, undefined, 0, undefined));
  }

  /**
   * Runs one whole BlockDevice call at a time, in issue order: a READ/WRITE split into several
   * frames must not interleave its frames with another call's (the HAL promises calls take
   * effect in issue order). The link is stop-and-wait anyway, so this costs no parallelism.
   */
  private exclusive<T>(op: () => Promise<T>): Promise<T> {
    const p = this.ops.then(op, op);
    this.ops = p.catch(() => undefined);
    return p;
  }

  async close(): Promise<void> {
    await undefined;
    if (this.closed) return;
    this.closed = true;
    await this.ops; // calls issued before close() still complete
    this.link.close(`${this.name} is closed`);
    if (this.port.isOpen) await new Promise<void>((resolve) => this.port.close(() => resolve()));
  }

  private assertOpen(): void {
    if (this.closed) throw sense.notPresent(this.name);
  }

  /** One request; link failures and device status become SenseErrors naming device and LBA. */
  private async call(op: Op, lba: number, blocks: number, flags: number, payload: Uint8Array | undefined, responseBytes: number, errLba: number | undefined): Promise<Response> {
    let r: Response;
    try {
      r = await this.link.request(op, lba, blocks, flags, payload, responseBytes);
    } catch (e) {
      if (e instanceof LinkError && e.kind === 'timeout') throw sense.timeout(this.name, `${opName(op)}: ${e.message}; check the cable, baud rate and that the firmware is running`, errLba);
      throw sense.notPresent(this.name, `${opName(op)}: ${(e as Error).message}`);
    }
    const h = r.header;
    if (h.status !== 0) {
      throw new SenseError(h.status as SenseKey, [h.asc, h.ascq], this.name, `device failed ${opName(op)} of ${blocks} block(s)`, errLba);
    }
    return r;
  }
}

function opName(op: Op): string {
  return op === Op.INFO ? 'INFO' : op === Op.READ ? 'READ' : op === Op.WRITE ? 'WRITE' : 'FLUSH';
}

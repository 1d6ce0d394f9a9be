// Block-device face of a USB mass-storage disk: the HAL's BlockDevice over SCSI (scsi.ts) over
// Bulk-Only Transport (bot.ts) through the `usb` package, 3.x (see webusb.ts for why 3.x).
// Device strings: `usb:VID:PID[:SERIAL]` (hardware) and `usb-sim:PATH` (the SIMULATOR in
// sim/target.ts over a disk-image file; named so nobody mistakes it for hardware).
//
// Claims served: 11, 17 ("means for storing data" at a mirror site on a Raspberry Pi).
// hal/ imports nothing from src/.

import {
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
} from '../blockdev.js';
import { checkGeometry } from '../geometry.js';
import { openLoopback } from '../loopback.js';
import { BotError, BotTransport, CswStatus } from './bot.js';
import {
  capacity10Layout,
  cdb,
  inquiryBytes,
  inquiryLayout,
  inquiryText,
  lba32Max,
  modeHeader6Layout,
  modeSenseBytes,
  modeWriteProtectBit,
  parseCapacity16,
  parseSense,
  readCapacity10Bytes,
  readCapacity16Bytes,
  senseBytes,
} from './scsi.js';
import { SimUsbDevice } from './sim/target.js';
import { MassStorage, hex4, type UsbDeviceLike } from './webusb.js';

export interface UsbDeviceOptions {
  /** Per USB transfer (ms); every transfer has one, so nothing hangs. */
  timeoutMs?: number;
  /** Largest data phase of one READ/WRITE (bytes); larger I/O is split. */
  transferBytesMax?: number;
  /** Sends of one command after transport errors (Reset Recovery in between). */
  attemptsMax?: number;
  /** Retries of UNIT ATTENTION and NOT READY / BECOMING READY per command. */
  senseRetriesMax?: number;
  /** Pause before retrying NOT READY / BECOMING READY (ms). */
  notReadyDelayMs?: number;
  /** usb-sim: only: geometry of a disk-image file created when missing. */
  blockSizeBytes?: number;
  blockCount?: number;
  create?: boolean;
  /** An already-found device (tests hand in a SimUsbDevice). */
  device?: UsbDeviceLike;
}

export const usbDefaults = {
  timeoutMs: 5000,
  // 128 KiB per data phase: Linux usb-storage's default max_sectors (240 x 512) rounded up to
  // a power of two that 4 KiB blocks divide; large enough that per-command overhead is small.
  transferBytesMax: 128 * 1024,
  attemptsMax: 3,
  senseRetriesMax: 8,
  notReadyDelayMs: 50,
} as const;

/** Parses `usb:VID:PID[:SERIAL]` (hex ids). */
export function parseUsbSpec(spec: string): { vendorId: number; productId: number; serial?: string } {
  const m = /^usb:(?:0x)?([0-9a-fA-F]{1,4}):(?:0x)?([0-9a-fA-F]{1,4})(?::([\x21-\x7e]+))?$/.exec(spec);
  if (!m) throw new Error(`device string "${spec}" is not usb:VID:PID[:SERIAL] with hex ids, e.g. usb:0781:5583`);
  return { vendorId: parseInt(m[1]!, 16), productId: parseInt(m[2]!, 16), ...(m[3] ? { serial: m[3] } : {}) };
}

/**
 * Opens a USB disk (`usb:VID:PID[:SERIAL]`) or the simulator (`usb-sim:PATH`), claims its
 * mass-storage interface and reads geometry and write protection.
 */
export async function openUsbDevice(spec: string, opts: UsbDeviceOptions = {}): Promise<UsbBlockDevice> {
  if (spec.startsWith('usb-sim:')) return openSimulator(spec, opts);
  const want = parseUsbSpec(spec);
  let dev = opts.device;
  if (!dev) {
    const { findUsbDevices } = await import('./discovery.js');
    const label = `usb:${hex4(want.vendorId)}:${hex4(want.productId)}${want.serial ? `:${want.serial}` : ''}`;
    const all = await findUsbDevices().catch((e: Error) => {
      const noBus = /\/sys\/bus\/usb|ENOENT/.test(e.message);
      throw sense.notPresent(label, noBus ? `no USB device ${label}: this machine has no USB bus (${e.message})` : `cannot list USB devices to find ${label}: ${e.message}`);
    });
    const found = all.filter(
      (d) => d.vendorId === want.vendorId && d.productId === want.productId && (want.serial === undefined || d.serialNumber === want.serial),
    );
    if (found.length === 0) throw sense.notPresent(label, `no USB device ${label} is connected; run "geomirror devices" to list what is`);
    if (found.length > 1 && want.serial === undefined) {
      throw sense.invalidField(label, `${found.length} devices match; add the serial number: ${found.map((d) => `${label}:${d.serialNumber ?? '?'}`).join(', ')}`);
    }
    dev = found[0]!;
  }
  const name = `usb:${hex4(dev.vendorId)}:${hex4(dev.productId)}:${dev.serialNumber ?? ''}`;
  return UsbBlockDevice.open(dev, name, opts);
}

async function openSimulator(spec: string, opts: UsbDeviceOptions): Promise<UsbBlockDevice> {
  const path = spec.slice('usb-sim:'.length);
  if (path === '') throw new Error(`device string "${spec}" needs a disk-image path: usb-sim:PATH`);
  if (opts.blockSizeBytes === undefined || opts.blockCount === undefined) {
    throw new Error(`device string "${spec}": the USB simulator needs blockSizeBytes and blockCount for its disk image`);
  }
  const medium = await openLoopback(path, { blockSizeBytes: opts.blockSizeBytes, blockCount: opts.blockCount, create: opts.create ?? true });
  const sim = new SimUsbDevice(medium);
  try {
    return await UsbBlockDevice.open(sim, spec, opts, () => medium.close());
  } catch (e) {
    await medium.close();
    throw e;
  }
}

export class UsbBlockDevice implements BlockDevice {
  blockSizeBytes: BlockSizeBytes = 512;
  blockCount = 0;
  capabilities: Capabilities = { flush: true, fua: true, trim: false, readOnly: false };
  inquiry = { vendor: '', product: '', revision: '' };
  private bot!: BotTransport;
  private closed = false;
  private gone = false;
  private detachedDriver = false;
  private interfaceNumber = 0;
  private readonly o: Required<Pick<UsbDeviceOptions, 'timeoutMs' | 'transferBytesMax' | 'attemptsMax' | 'senseRetriesMax' | 'notReadyDelayMs'>>;
  /** Serialises commands: BOT has one command in flight per LUN. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Serialises whole calls (see exclusive()). */
  private ops: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly dev: UsbDeviceLike,
    readonly name: string,
    opts: UsbDeviceOptions,
    private readonly onClose?: () => Promise<void>,
  ) {
    this.o = {
      timeoutMs: opts.timeoutMs ?? usbDefaults.timeoutMs,
      transferBytesMax: opts.transferBytesMax ?? usbDefaults.transferBytesMax,
      attemptsMax: opts.attemptsMax ?? usbDefaults.attemptsMax,
      senseRetriesMax: opts.senseRetriesMax ?? usbDefaults.senseRetriesMax,
      notReadyDelayMs: opts.notReadyDelayMs ?? usbDefaults.notReadyDelayMs,
    };
  }

  static async open(dev: UsbDeviceLike, name: string, opts: UsbDeviceOptions = {}, onClose?: () => Promise<void>): Promise<UsbBlockDevice> {
    const d = new UsbBlockDevice(dev, name, opts, onClose);
    try {
      await d.claim();
      await d.identify();
    } catch (e) {
      await d.close().catch(() => undefined);
      if (e instanceof SenseError) throw e;
      throw hintPermission(d.name, e);
    }
    return d;
  }

  status(): MediaStatusFlags {
    if (this.closed || this.gone) return MediaStatus.NO_MEDIA;
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
    const step = this.stepBlocks();
    for (let done = 0; done < blocks; done += step) {
      const n = Math.min(step, blocks - done);
      const r = await this.run(cdb.readWrite(false, lba + done, n, false), 'in', n * bs, undefined, lba + done, 'READ');
      // Whole or fail: a short data phase is never handed up as data.
      if (r.length !== n * bs) throw sense.mediumRead(this.name, lba + done, `device returned ${r.length} of ${n * bs} bytes`);
      r.copy(out, done * bs);
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
    const step = this.stepBlocks();
    for (let done = 0; done < blocks; done += step) {
      const n = Math.min(step, blocks - done);
      await this.run(cdb.readWrite(true, lba + done, n, options?.fua === true), 'out', n * bs, data.subarray(done * bs, (done + n) * bs), lba + done, 'WRITE');
    }
  }

  async flush(): Promise<void> {
    await undefined;
    this.assertOpen();
    await this.exclusive(() => this.run(cdb.synchronizeCache10(), 'none', 0, undefined, undefined, 'SYNCHRONIZE CACHE'));
  }

  /**
   * Runs one whole BlockDevice call at a time, in issue order: a split READ/WRITE must not
   * interleave its commands with another call's (the HAL promises calls take effect in issue
   * order). BOT has one command in flight anyway, so this costs no parallelism.
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
    await this.queue.catch(() => undefined);
    if (!this.gone) {
      // Give the disk back to the kernel (Linux) so it is usable again after we stop.
      await this.dev.releaseInterface(this.interfaceNumber).catch(() => undefined);
      if (this.detachedDriver) await this.dev.attachKernelDriver?.(this.interfaceNumber).catch(() => undefined);
      await this.dev.close().catch(() => undefined);
    }
    await this.onClose?.();
  }

  private stepBlocks(): number {
    return Math.max(1, Math.floor(this.o.transferBytesMax / this.blockSizeBytes));
  }

  private assertOpen(): void {
    if (this.closed) throw sense.notPresent(this.name);
    if (this.gone) throw sense.notPresent(this.name, 'device was unplugged; plug it back in and restart the site');
  }

  /** Open, configuration, kernel-driver detach (Linux), interface claim, endpoints. */
  private async claim(): Promise<void> {
    const dev = this.dev;
    if (!dev.opened) await dev.open();
    if (!dev.configuration) await dev.selectConfiguration(1);
    const ifc = dev.configuration?.interfaces.find(
      (i) =>
        i.alternate.interfaceClass === MassStorage.CLASS &&
        i.alternate.interfaceSubclass === MassStorage.SUBCLASS_SCSI &&
        i.alternate.interfaceProtocol === MassStorage.PROTOCOL_BOT,
    );
    if (!ifc) throw sense.invalidField(this.name, 'device has no Bulk-Only SCSI mass-storage interface (class 08/06/50); UAS-only or non-storage devices are not supported');
    this.interfaceNumber = ifc.interfaceNumber;
    const epIn = ifc.alternate.endpoints.find((e) => e.type === 'bulk' && e.direction === 'in');
    const epOut = ifc.alternate.endpoints.find((e) => e.type === 'bulk' && e.direction === 'out');
    if (!epIn || !epOut) throw sense.invalidField(this.name, 'mass-storage interface lacks a bulk-in or bulk-out endpoint');
    if (process.platform === 'linux' && dev.detachKernelDriver) {
      try {
        await dev.detachKernelDriver(ifc.interfaceNumber);
        this.detachedDriver = true;
      } catch {
        // No driver bound (already detached, or usb-storage not loaded): nothing to give back.
      }
    }
    await dev.claimInterface(ifc.interfaceNumber);
    this.bot = new BotTransport(dev, ifc.interfaceNumber, epIn.endpointNumber, epOut.endpointNumber, { timeoutMs: this.o.timeoutMs });
  }

  /** TEST UNIT READY (clears power-on UNIT ATTENTION), INQUIRY, READ CAPACITY, MODE SENSE. */
  private async identify(): Promise<void> {
    await this.run(cdb.testUnitReady(), 'none', 0, undefined, undefined, 'TEST UNIT READY');
    const inq = await this.run(cdb.inquiry(), 'in', inquiryBytes, undefined, undefined, 'INQUIRY');
    if (inq.length >= 36) this.inquiry = inquiryText(inquiryLayout.decode(inq, 0));
    if (inq.length >= 1 && (inq[0]! & 0x1f) !== 0) throw sense.invalidField(this.name, `peripheral type ${inq[0]! & 0x1f} is not a direct-access block device`);
    const c10 = await this.run(cdb.readCapacity10(), 'in', readCapacity10Bytes, undefined, undefined, 'READ CAPACITY (10)');
    if (c10.length < readCapacity10Bytes) throw sense.hardware(this.name, `READ CAPACITY (10) returned ${c10.length} bytes`);
    let { lastLba, blockLength } = capacity10Layout.decode(c10, 0);
    if (lastLba === lba32Max) {
      // Larger than 2 TiB at 512 bytes: only READ CAPACITY (16) can say how large (SBC-3 5.16).
      const c16 = parseCapacity16(await this.run(cdb.readCapacity16(), 'in', readCapacity16Bytes, undefined, undefined, 'READ CAPACITY (16)'));
      if (!c16) throw sense.hardware(this.name, 'READ CAPACITY (16) returned too few bytes');
      if (c16.lastLba >= BigInt(Number.MAX_SAFE_INTEGER)) throw sense.invalidField(this.name, `capacity of ${c16.lastLba + 1n} blocks is beyond what we address`);
      lastLba = Number(c16.lastLba);
      blockLength = c16.blockLength;
    }
    const g = checkGeometry(this.name, blockLength, lastLba + 1);
    this.blockSizeBytes = g.blockSizeBytes;
    this.blockCount = g.blockCount;
    let readOnly = false;
    try {
      const ms = await this.run(cdb.modeSense6(), 'in', modeSenseBytes, undefined, undefined, 'MODE SENSE (6)');
      if (ms.length >= 4) readOnly = (modeHeader6Layout.decode(ms, 0).deviceSpecific & modeWriteProtectBit) !== 0;
    } catch (e) {
      // Some cheap sticks reject MODE SENSE; treat them as writable and let a write report
      // DATA PROTECT if they are not (Linux sd does the same).
      if (!(e instanceof SenseError && e.key === SenseKey.ILLEGAL_REQUEST)) throw e;
    }
    this.capabilities = { flush: true, fua: true, trim: false, readOnly };
  }

  /** Serialises `command` so one CBW/data/CSW exchange runs at a time. */
  private run(cb: Buffer, dir: 'in' | 'out' | 'none', len: number, dataOut: Uint8Array | undefined, lba: number | undefined, what: string): Promise<Buffer> {
    const go = () => this.command(cb, dir, len, dataOut, lba, what);
    const p = this.queue.then(go, go);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /**
   * One SCSI command with the retry policy: transport errors after Reset Recovery up to
   * attemptsMax; UNIT ATTENTION, NOT READY / BECOMING READY and ABORTED COMMAND up to
   * senseRetriesMax; any other sense becomes a SenseError naming device and LBA.
   */
  private async command(cb: Buffer, dir: 'in' | 'out' | 'none', len: number, dataOut: Uint8Array | undefined, lba: number | undefined, what: string): Promise<Buffer> {
    let transportTries = 0;
    let senseTries = 0;
    for (;;) {
      if (this.gone) throw sense.notPresent(this.name, 'device was unplugged; plug it back in and restart the site');
      let r;
      try {
        r = await this.bot.command(cb, dir, len, dataOut);
      } catch (e) {
        if (!(e instanceof BotError)) throw e;
        if (e.kind === 'disconnected') {
          this.gone = true;
          throw sense.notPresent(this.name, `${what}: ${e.message}`);
        }
        transportTries++;
        if (transportTries >= this.o.attemptsMax) {
          if (e.kind === 'timeout') throw sense.timeout(this.name, `${what}: ${e.message} (${transportTries} attempts)`, lba);
          throw sense.hardware(this.name, `${what}${lba === undefined ? '' : ` at LBA ${lba}`}: ${e.message} (${transportTries} attempts)`, e);
        }
        if (!e.recovered) await this.bot.resetRecovery().catch(() => undefined);
        continue;
      }
      if (r.status === CswStatus.PASSED) return r.data;
      const s = await this.requestSense(what);
      const becomingReady = s.key === SenseKey.NOT_READY && s.asc === 0x04 && s.ascq === 0x01;
      const retryable = s.key === SenseKey.UNIT_ATTENTION || becomingReady || s.key === SenseKey.ABORTED_COMMAND || s.key === SenseKey.NO_SENSE;
      if (retryable && senseTries < this.o.senseRetriesMax) {
        senseTries++;
        if (becomingReady) await new Promise((res) => setTimeout(res, this.o.notReadyDelayMs));
        continue;
      }
      // A medium error's INFORMATION field names the failing block itself (SBC-3 4.14.1).
      const at = s.key === SenseKey.MEDIUM_ERROR && s.information !== undefined ? s.information : (lba ?? s.information);
      throw new SenseError(s.key as SenseKey, [s.asc, s.ascq], this.name, `${what} failed${retryable ? ` after ${senseTries} retries` : ''}`, at);
    }
  }

  /** REQUEST SENSE after a FAILED CSW; a device that cannot say why is a hardware error. */
  private async requestSense(what: string): Promise<{ key: number; asc: number; ascq: number; information?: number }> {
    for (let tries = 0; ; tries++) {
      try {
        const r = await this.bot.command(cdb.requestSense(), 'in', senseBytes);
        const s = r.status === CswStatus.PASSED ? parseSense(r.data) : undefined;
        if (!s) throw sense.hardware(this.name, `${what} failed and REQUEST SENSE gave no sense data`);
        return s;
      } catch (e) {
        if (e instanceof BotError && e.kind === 'disconnected') {
          this.gone = true;
          throw sense.notPresent(this.name, `${what}: ${e.message}`);
        }
        if (!(e instanceof BotError) || tries + 1 >= this.o.attemptsMax) throw e instanceof SenseError ? e : sense.hardware(this.name, `${what}: REQUEST SENSE failed: ${(e as Error).message}`, e);
      }
    }
  }
}

function hintPermission(name: string, e: unknown): SenseError {
  const msg = (e as Error)?.message ?? String(e);
  if (/EACCES|permission|access denied|LIBUSB_ERROR_ACCESS/i.test(msg)) {
    return sense.notPresent(
      name,
      `cannot open ${name}: ${msg}; add a udev rule, e.g. SUBSYSTEM=="usb", ATTR{idVendor}=="VVVV", ATTR{idProduct}=="PPPP", MODE="0660", GROUP="plugdev", then replug`,
    );
  }
  if (/BUSY|busy/.test(msg)) return sense.notPresent(name, `cannot claim ${name}: ${msg}; unmount it and stop whatever holds it (the usb-storage driver is detached automatically on Linux)`);
  return sense.hardware(name, `cannot open ${name}: ${msg}`, e);
}

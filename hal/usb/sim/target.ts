// USB MASS-STORAGE DEVICE SIMULATOR (never hardware). An object of the same shape as the `usb`
// package's device (webusb.ts: configuration, interface, endpoints, transferIn/Out,
// controlTransferOut, clearHalt, detach/attachKernelDriver) implementing a Bulk-Only Transport
// target and the SCSI block commands over any BlockDevice medium (RAM or a file).
//
// Faults are injected per command (stalls, phase errors, wrong tags, short or missing CSW, a
// CSW that never comes at all, NOT READY, UNIT ATTENTION) or as state (medium errors at LBAs,
// write protection, UNIT ATTENTION after every reset, unplugging), so the adapter's recovery
// paths run byte for byte in CI, where there is no USB bus.

import { SenseError, SenseKey, type BlockDevice } from '../../blockdev.js';
import { CswStatus, decodeCbw, encodeCsw, BotRequest, type Cbw } from '../bot.js';
import {
  ScsiOp,
  capacity10Layout,
  decodeReadWrite,
  encodeCapacity16,
  encodeFixedSense,
  encodeLayout,
  inquiryLayout,
  lba32Max,
  modeHeader6Layout,
  modeWriteProtectBit,
  serviceActionReadCapacity16,
  type Sense,
} from '../scsi.js';
import { MassStorage, type ConfigurationInfo, type ControlSetup, type Direction, type TransferStatus, type UsbDeviceLike } from '../webusb.js';

export type UsbFault =
  /** The data phase stalls; the CSW says FAILED with ABORTED COMMAND (a retry succeeds). */
  | { kind: 'stall-data'; on?: CommandClass }
  /** The CBW is refused with a stall. */
  | { kind: 'stall-cbw'; on?: CommandClass }
  /** The CSW reports status 2 (phase error). */
  | { kind: 'phase-error'; on?: CommandClass }
  /** The CSW carries another command's tag. */
  | { kind: 'wrong-tag'; on?: CommandClass }
  /** The CSW is cut to 10 bytes. */
  | { kind: 'short-csw'; on?: CommandClass }
  /** The CSW never comes; the transfer times out as libusb would. */
  | { kind: 'missing-csw'; on?: CommandClass }
  /** The CSW transfer never settles at all, ignoring its timeout (the adapter's own timer must fire). */
  | { kind: 'hang'; on?: CommandClass }
  /** The command fails with UNIT ATTENTION / POWER ON RESET. */
  | { kind: 'unit-attention'; on?: CommandClass }
  /** The command fails with NOT READY / BECOMING READY. */
  | { kind: 'not-ready'; on?: CommandClass };
export type CommandClass = 'read' | 'write' | 'other' | 'any';

export interface SimUsbOptions {
  /**
   * How a STALL is reported: 'throw' as usb 3.x does (rejects with "transferIn error: Stall"),
   * or 'status' as the WebUSB spec does (resolves with status 'stall'). Default 'throw'.
   */
  stallAs?: 'throw' | 'status';
  vendorId?: number;
  productId?: number;
  serialNumber?: string;
  /** Whether a (pretend) kernel usb-storage driver holds the interface at start. */
  kernelDriverAttached?: boolean;
}

export const simEndpointIn = 1;
export const simEndpointOut = 2;
export const simInterfaceNumber = 0;
/** What a missing CSW costs when the caller gives no timeout (the usb package's default). */
const defaultTimeoutMs = 1000;

type Phase = 'cbw' | 'data-in' | 'data-out' | 'csw' | 'needs-reset';

interface Current {
  cbw: Cbw;
  fault: UsbFault | undefined;
  dataIn?: Buffer;
  stallData: boolean;
  write?: { lba: number; blocks: number; fua: boolean };
  status: number;
  residue: number;
}

export class SimUsbDevice implements UsbDeviceLike {
  readonly vendorId: number;
  readonly productId: number;
  readonly manufacturerName = 'geomirror';
  readonly productName = 'USB mass-storage SIMULATOR';
  readonly serialNumber: string;
  readonly configuration: ConfigurationInfo;
  opened = false;
  kernelDriverAttached: boolean;
  writeProtected = false;
  unitAttentionAfterReset = false;
  readonly mediumErrorLbas = new Set<number>();
  readonly faults: UsbFault[] = [];
  readonly stats = { commands: 0, resets: 0, clearHalts: 0, ops: [] as number[] };
  private unplugged = false;
  private unitAttentionPending = false;
  private phase: Phase = 'cbw';
  private halted = { in: false, out: false };
  private cur: Current | undefined;
  private sense: Sense = { key: 0, asc: 0, ascq: 0 };
  private readonly stallAs: 'throw' | 'status';

  constructor(
    readonly medium: BlockDevice,
    o: SimUsbOptions = {},
  ) {
    this.vendorId = o.vendorId ?? 0x1209; // pid.codes test range: never a real product
    this.productId = o.productId ?? 0x0001;
    this.serialNumber = o.serialNumber ?? 'SIM0001';
    this.kernelDriverAttached = o.kernelDriverAttached ?? true;
    this.stallAs = o.stallAs ?? 'throw';
    this.configuration = {
      configurationValue: 1,
      interfaces: [
        {
          interfaceNumber: simInterfaceNumber,
          claimed: false,
          alternate: {
            alternateSetting: 0,
            interfaceClass: MassStorage.CLASS,
            interfaceSubclass: MassStorage.SUBCLASS_SCSI,
            interfaceProtocol: MassStorage.PROTOCOL_BOT,
            endpoints: [
              { endpointNumber: simEndpointIn, direction: 'in', type: 'bulk', packetSize: 512 },
              { endpointNumber: simEndpointOut, direction: 'out', type: 'bulk', packetSize: 512 },
            ],
          },
        },
      ],
    };
  }

  inject(...faults: UsbFault[]): void {
    this.faults.push(...faults);
  }

  /** Pulls the plug: every later call throws as the usb package does for a vanished device. */
  unplug(): void {
    this.unplugged = true;
  }

  async open(): Promise<void> {
    this.alive();
    this.opened = true;
  }
  async close(): Promise<void> {
    this.opened = false;
  }
  async selectConfiguration(value: number): Promise<void> {
    this.alive();
    if (value !== 1) throw new Error(`configuration ${value} does not exist`);
  }
  async claimInterface(n: number): Promise<void> {
    this.alive();
    if (this.kernelDriverAttached) throw new Error('claimInterface error: Device or resource busy (os error 16)');
    this.iface(n).claimed = true;
  }
  async releaseInterface(n: number): Promise<void> {
    this.alive();
    this.iface(n).claimed = false;
  }
  async detachKernelDriver(n: number): Promise<void> {
    this.alive();
    this.iface(n);
    if (!this.kernelDriverAttached) throw new Error('detachKernelDriver error: No data available (os error 61)');
    this.kernelDriverAttached = false;
  }
  async attachKernelDriver(n: number): Promise<void> {
    this.alive();
    this.iface(n);
    this.kernelDriverAttached = true;
  }

  async controlTransferOut(setup: ControlSetup, data?: Uint8Array, _timeoutMs?: number): Promise<{ bytesWritten: number; status: TransferStatus }> {
    // usb 3.1's wrapper converts `data` with data.buffer, so undefined throws there: same here.
    if (data === undefined) throw new TypeError("Cannot read properties of undefined (reading 'buffer')");
    await this.tick();
    if (setup.requestType === 'class' && setup.recipient === 'interface' && setup.request === BotRequest.RESET && setup.index === simInterfaceNumber) {
      // Bulk-Only Mass Storage Reset (BOT 3.1): ready for a CBW again; halts stay until cleared.
      this.stats.resets++;
      this.phase = 'cbw';
      this.cur = undefined;
      if (this.unitAttentionAfterReset) this.unitAttentionPending = true;
      return { bytesWritten: 0, status: 'ok' };
    }
    return { bytesWritten: 0, status: 'stall' };
  }

  async clearHalt(direction: Direction, endpointNumber: number): Promise<void> {
    await this.tick();
    if (endpointNumber !== (direction === 'in' ? simEndpointIn : simEndpointOut)) throw new Error(`no ${direction} endpoint ${endpointNumber}`);
    this.stats.clearHalts++;
    this.halted[direction] = false;
  }

  async transferOut(ep: number, data: Uint8Array, timeoutMs?: number): Promise<{ bytesWritten: number; status: TransferStatus }> {
    const r = await this.bulkOut(ep, data, timeoutMs);
    if (r.status === 'stall' && this.stallAs === 'throw') throw new Error('transferOut error: Stall');
    return r;
  }

  async transferIn(ep: number, length: number, timeoutMs?: number): Promise<{ data?: DataView; status: TransferStatus }> {
    const r = await this.bulkIn(ep, length, timeoutMs);
    if (r.status === 'stall' && this.stallAs === 'throw') throw new Error('transferIn error: Stall');
    return r;
  }

  private async bulkOut(ep: number, data: Uint8Array, _timeoutMs?: number): Promise<{ bytesWritten: number; status: TransferStatus }> {
    await this.tick();
    if (ep !== simEndpointOut) throw new Error(`no bulk-out endpoint ${ep}`);
    if (this.phase === 'needs-reset' || this.halted.out) return { bytesWritten: 0, status: 'stall' };
    if (this.phase === 'cbw') return this.onCbw(data);
    if (this.phase === 'data-out' && this.cur) return this.onDataOut(this.cur, data);
    // Out of phase: the device halts the endpoint (BOT 6.7).
    this.halted.out = true;
    return { bytesWritten: 0, status: 'stall' };
  }

  private async bulkIn(ep: number, length: number, timeoutMs?: number): Promise<{ data?: DataView; status: TransferStatus }> {
    await this.tick();
    if (ep !== simEndpointIn) throw new Error(`no bulk-in endpoint ${ep}`);
    if (this.phase === 'needs-reset' || this.halted.in) return { status: 'stall' };
    const cur = this.cur;
    if (this.phase === 'data-in' && cur) {
      if (cur.stallData) {
        this.halted.in = true;
        this.phase = 'csw';
        return { status: 'stall' };
      }
      const d = cur.dataIn!;
      this.phase = 'csw';
      if (d.length > length) return { status: 'babble' };
      return { data: view(d), status: 'ok' };
    }
    if (this.phase === 'csw' && cur) {
      const f = cur.fault?.kind;
      if (f === 'hang') return new Promise(() => {}); // never settles: the host's own timer must fire
      if (f === 'missing-csw') return this.timeOut(timeoutMs);
      this.phase = 'cbw';
      this.cur = undefined;
      let csw = encodeCsw(f === 'wrong-tag' ? (cur.cbw.tag + 1) >>> 0 : cur.cbw.tag, cur.residue, f === 'phase-error' ? CswStatus.PHASE_ERROR : cur.status);
      if (f === 'short-csw') csw = csw.subarray(0, 10);
      return { data: view(csw), status: 'ok' };
    }
    // Nothing to send: a real device NAKs until the host gives up.
    return this.timeOut(timeoutMs);
  }

  private async onCbw(data: Uint8Array): Promise<{ bytesWritten: number; status: TransferStatus }> {
    const cbw = decodeCbw(data);
    if (!cbw) {
      // Invalid CBW (BOT 6.6.1): stall both endpoints until Reset Recovery.
      this.phase = 'needs-reset';
      return { bytesWritten: data.byteLength, status: 'ok' };
    }
    const op = cbw.cb[0]!;
    const cls: CommandClass = decodeReadWrite(cbw.cb)?.write ? 'write' : op === ScsiOp.READ_10 || op === ScsiOp.READ_16 ? 'read' : 'other';
    const i = this.faults.findIndex((f) => (f.on ?? 'any') === 'any' || f.on === cls);
    const fault = i === -1 ? undefined : this.faults.splice(i, 1)[0];
    if (fault?.kind === 'stall-cbw') {
      this.halted.out = true;
      return { bytesWritten: 0, status: 'stall' };
    }
    this.stats.commands++;
    this.stats.ops.push(op);
    const cur: Current = { cbw, fault, stallData: false, status: CswStatus.PASSED, residue: 0 };
    this.cur = cur;
    await this.execute(cur, cls);
    const dirIn = (cbw.flags & 0x80) !== 0;
    if (cbw.dataTransferLength === 0) this.phase = 'csw';
    else if (dirIn) this.phase = 'data-in';
    else this.phase = 'data-out';
    if (fault?.kind === 'stall-data' && cbw.dataTransferLength > 0) this.failWith(cur, { key: SenseKey.ABORTED_COMMAND, asc: 0x4b, ascq: 0 }); // DATA PHASE ERROR
    return { bytesWritten: data.byteLength, status: 'ok' };
  }

  private async onDataOut(cur: Current, data: Uint8Array): Promise<{ bytesWritten: number; status: TransferStatus }> {
    this.phase = 'csw';
    if (cur.stallData || !cur.write) {
      this.halted.out = true;
      return { bytesWritten: 0, status: 'stall' };
    }
    const bs = this.medium.blockSizeBytes;
    if (data.byteLength !== cur.write.blocks * bs) {
      cur.status = CswStatus.PHASE_ERROR;
      return { bytesWritten: data.byteLength, status: 'ok' };
    }
    try {
      await this.medium.write(cur.write.lba, data, { fua: cur.write.fua });
      if (cur.write.fua) await this.medium.flush();
    } catch (e) {
      this.failWith(cur, senseOfError(e, SenseKey.MEDIUM_ERROR, 0x0c));
    }
    return { bytesWritten: data.byteLength, status: 'ok' };
  }

  /** Runs the SCSI command of `cur.cbw`, leaving data-in, a pending write, or a failure. */
  private async execute(cur: Current, cls: CommandClass): Promise<void> {
    const cb = cur.cbw.cb;
    const op = cb[0]!;
    const len = cur.cbw.dataTransferLength;
    const answer = (b: Buffer) => {
      cur.dataIn = b.subarray(0, Math.min(b.length, len));
      cur.residue = len - cur.dataIn.length;
    };
    if (op !== ScsiOp.REQUEST_SENSE) this.sense = { key: 0, asc: 0, ascq: 0 };
    if (op !== ScsiOp.INQUIRY && op !== ScsiOp.REQUEST_SENSE) {
      if (this.unitAttentionPending || cur.fault?.kind === 'unit-attention') {
        this.unitAttentionPending = false;
        return this.failWith(cur, { key: SenseKey.UNIT_ATTENTION, asc: 0x29, ascq: 0 });
      }
      if (cur.fault?.kind === 'not-ready') return this.failWith(cur, { key: SenseKey.NOT_READY, asc: 0x04, ascq: 0x01 });
    }
    const bs = this.medium.blockSizeBytes;
    const count = this.medium.blockCount;
    switch (op) {
      case ScsiOp.TEST_UNIT_READY:
        return;
      case ScsiOp.REQUEST_SENSE:
        answer(encodeFixedSense(this.sense));
        this.sense = { key: 0, asc: 0, ascq: 0 };
        return;
      case ScsiOp.INQUIRY:
        return answer(
          encodeLayout(inquiryLayout, {
            peripheral: 0, rmb: 0x80, version: 6, responseFormat: 2, additionalLength: 31, flags5: 0, flags6: 0, flags7: 0,
            vendor: pad('GEOMSIM', 8), product: pad('USB SIM DISK', 16), revision: pad('0001', 4),
          }),
        );
      case ScsiOp.MODE_SENSE_6:
        return answer(encodeLayout(modeHeader6Layout, { modeDataLength: 3, mediumType: 0, deviceSpecific: this.writeProtected ? modeWriteProtectBit : 0, blockDescriptorLength: 0 }));
      case ScsiOp.READ_CAPACITY_10:
        return answer(encodeLayout(capacity10Layout, { lastLba: Math.min(count - 1, lba32Max), blockLength: bs }));
      case ScsiOp.SERVICE_ACTION_IN_16:
        if ((cb[1]! & 0x1f) !== serviceActionReadCapacity16) break;
        return answer(encodeCapacity16(count - 1, bs));
      case ScsiOp.SYNCHRONIZE_CACHE_10:
        try {
          await this.medium.flush();
        } catch (e) {
          this.failWith(cur, senseOfError(e, SenseKey.MEDIUM_ERROR, 0x0c));
        }
        return;
      default: {
        const rw = decodeReadWrite(cb);
        if (!rw) break;
        if (rw.lba + rw.blocks > count) return this.failWith(cur, { key: SenseKey.ILLEGAL_REQUEST, asc: 0x21, ascq: 0 });
        if (rw.blocks * bs !== len) {
          cur.status = CswStatus.PHASE_ERROR; // host and device disagree on the transfer size (BOT 6.7 cases)
          cur.stallData = true;
          return;
        }
        if (rw.write) {
          if (this.writeProtected) return this.failWith(cur, { key: SenseKey.DATA_PROTECT, asc: 0x27, ascq: 0 });
          cur.write = rw;
          return;
        }
        for (let l = rw.lba; l < rw.lba + rw.blocks; l++) {
          if (this.mediumErrorLbas.has(l)) return this.failWith(cur, { key: SenseKey.MEDIUM_ERROR, asc: 0x11, ascq: 0, information: l });
        }
        try {
          return answer(await this.medium.read(rw.lba, rw.blocks));
        } catch (e) {
          return this.failWith(cur, senseOfError(e, SenseKey.MEDIUM_ERROR, 0x11));
        }
      }
    }
    void cls;
    this.failWith(cur, { key: SenseKey.ILLEGAL_REQUEST, asc: 0x20, ascq: 0 }); // INVALID COMMAND OPERATION CODE
  }

  /** CHECK CONDITION: CSW FAILED with the full residue, sense kept for REQUEST SENSE. */
  private failWith(cur: Current, s: Sense): void {
    this.sense = s;
    cur.status = CswStatus.FAILED;
    cur.residue = cur.cbw.dataTransferLength;
    cur.dataIn = undefined;
    cur.write = undefined;
    cur.stallData = cur.cbw.dataTransferLength > 0; // the device ends the data phase with a stall
  }

  private iface(n: number) {
    const i = this.configuration.interfaces.find((x) => x.interfaceNumber === n);
    if (!i) throw new Error(`interface ${n} does not exist`);
    return i;
  }

  private alive(): void {
    if (this.unplugged) throw new Error('transfer error: Disconnected'); // as usb 3.x words nusb's error
  }

  /** Every call settles asynchronously, as a real transfer does, and fails once unplugged. */
  private async tick(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    this.alive();
  }

  private async timeOut(timeoutMs: number | undefined): Promise<never> {
    await new Promise((r) => setTimeout(r, timeoutMs ?? defaultTimeoutMs));
    this.alive();
    throw new Error('transferIn error: Cancelled'); // nusb reports a timed-out transfer as Cancelled
  }
}

function view(b: Buffer): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function pad(s: string, n: number): Buffer {
  return Buffer.from(s.padEnd(n, ' ').slice(0, n), 'latin1');
}

function senseOfError(e: unknown, key: number, asc: number): Sense {
  if (e instanceof SenseError) return { key: e.key, asc: e.asc, ascq: e.ascq };
  return { key, asc, ascq: 0 };
}

// The USB adapter against the device simulator: every injected fault ends in a successful retry
// or a sense-coded error naming the device, never a hang and never wrong data (issue 9).

import { afterEach, describe, expect, it } from 'vitest';
import { Asc, MediaStatus, SenseKey, type BlockDevice, type BlockSizeBytes } from '../../hal/blockdev.js';
import { MemoryDevice } from '../../hal/memory.js';
import { cbwBytes, decodeCbw, encodeCbw, encodeCsw, cswLayout } from '../../hal/usb/bot.js';
import { UsbBlockDevice } from '../../hal/usb/device.js';
import { ScsiOp, cdb, parseSense, encodeFixedSense } from '../../hal/usb/scsi.js';
import { SimUsbDevice, type UsbFault } from '../../hal/usb/sim/target.js';
import { pattern, senseOf } from './adapter-contract.js';

const name = 'usb:1209:0001:SIM0001';
const opened: UsbBlockDevice[] = [];

async function setup(o: { blockCount?: number; timeoutMs?: number; transferBytesMax?: number; medium?: BlockDevice; stallAs?: 'throw' | 'status' } = {}) {
  const medium = o.medium ?? new MemoryDevice({ blockSizeBytes: 512, blockCount: o.blockCount ?? 256 });
  const sim = new SimUsbDevice(medium, { stallAs: o.stallAs ?? 'throw' });
  const dev = await UsbBlockDevice.open(sim, name, { timeoutMs: o.timeoutMs ?? 150, notReadyDelayMs: 1, ...(o.transferBytesMax ? { transferBytesMax: o.transferBytesMax } : {}) });
  opened.push(dev);
  return { sim, dev, medium };
}

afterEach(async () => {
  for (const d of opened.splice(0)) await d.close();
});

describe('BOT wrappers', () => {
  it('CBW is 31 bytes and CSW 13, with signatures, tag and residue in place', () => {
    const cbw = encodeCbw(0x01020304, 4096, true, cdb.readWrite(false, 7, 8, false));
    expect(cbw.length).toBe(cbwBytes);
    expect(cbw.subarray(0, 4).toString('latin1')).toBe('USBC');
    expect(cbw.readUInt32LE(4)).toBe(0x01020304);
    expect(cbw.readUInt32LE(8)).toBe(4096);
    expect(cbw[12]).toBe(0x80);
    expect(cbw[14]).toBe(10);
    expect(cbw[15]).toBe(ScsiOp.READ_10);
    expect(cbw.readUInt32BE(17)).toBe(7); // LBA in the CDB is big-endian
    expect(cbw.readUInt16BE(22)).toBe(8);
    expect(decodeCbw(cbw)?.tag).toBe(0x01020304);
    expect(decodeCbw(cbw.subarray(0, 30))).toBeUndefined();
    const bad = Buffer.from(cbw);
    bad[0] = 0;
    expect(decodeCbw(bad)).toBeUndefined();
    const csw = encodeCsw(9, 512, 1);
    expect(csw.length).toBe(13);
    expect(csw.subarray(0, 4).toString('latin1')).toBe('USBS');
    expect(cswLayout.decode(csw, 0)).toEqual({ signature: 0x53425355, tag: 9, dataResidue: 512, status: 1 });
  });

  it('uses READ/WRITE (16) beyond 32-bit LBAs and (10) below', () => {
    expect(cdb.readWrite(true, 0xfffffff0, 16, true)[0]).toBe(ScsiOp.WRITE_10);
    const c16 = cdb.readWrite(false, 0x1_0000_0000, 8, false);
    expect(c16.length).toBe(16);
    expect(c16[0]).toBe(ScsiOp.READ_16);
    expect(c16.readBigUInt64BE(2)).toBe(0x1_0000_0000n);
    expect(c16.readUInt32BE(10)).toBe(8);
  });

  it('parses fixed and descriptor sense', () => {
    expect(parseSense(encodeFixedSense({ key: 3, asc: 0x11, ascq: 0, information: 77 }))).toEqual({ key: 3, asc: 0x11, ascq: 0, information: 77 });
    expect(parseSense(Buffer.from([0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]))).toEqual({ key: 6, asc: 0x29, ascq: 0 });
    expect(parseSense(Buffer.alloc(18))).toBeUndefined();
  });
});

describe('USB adapter over the simulator', () => {
  it('opens: geometry, inquiry, kernel driver detached on open and re-attached on close', async () => {
    const { sim, dev } = await setup();
    expect(dev.blockCount).toBe(256);
    expect(dev.blockSizeBytes).toBe(512);
    expect(dev.inquiry.vendor).toBe('GEOMSIM');
    if (process.platform === 'linux') expect(sim.kernelDriverAttached).toBe(false);
    await dev.close();
    if (process.platform === 'linux') expect(sim.kernelDriverAttached).toBe(true);
    expect(dev.status() & MediaStatus.NO_MEDIA).toBeTruthy();
  });

  it('splits large transfers into commands of transferBytesMax', async () => {
    const { sim, dev } = await setup({ transferBytesMax: 4096 });
    const data = pattern(64 * 1024, 11);
    const before = sim.stats.ops.length;
    await dev.write(3, data);
    const writes = sim.stats.ops.slice(before).filter((op) => op === ScsiOp.WRITE_10).length;
    expect(writes).toBe(16);
    expect(Buffer.compare(await dev.read(3, 128), data)).toBe(0);
  });

  // [label, faults, whether the adapter must have run Bulk-Only Reset Recovery]
  const recoverable: Array<[string, UsbFault[], boolean?]> = [
    ['stalled data-in phase (clear halt, CSW still read)', [{ kind: 'stall-data', on: 'read' }]],
    ['stalled data-out phase', [{ kind: 'stall-data', on: 'write' }]],
    ['stalled CBW', [{ kind: 'stall-cbw', on: 'read' }, { kind: 'stall-cbw', on: 'write' }], true],
    ['phase error', [{ kind: 'phase-error', on: 'read' }, { kind: 'phase-error', on: 'write' }], true],
    ['wrong CSW tag', [{ kind: 'wrong-tag', on: 'read' }, { kind: 'wrong-tag', on: 'write' }], true],
    ['short CSW', [{ kind: 'short-csw', on: 'read' }, { kind: 'short-csw', on: 'write' }], true],
    ['missing CSW (transfer timeout)', [{ kind: 'missing-csw', on: 'read' }, { kind: 'missing-csw', on: 'write' }], true],
    ['CSW that never settles (adapter timer)', [{ kind: 'hang', on: 'read' }], true],
    ['UNIT ATTENTION', [{ kind: 'unit-attention', on: 'read' }, { kind: 'unit-attention', on: 'write' }]],
    ['NOT READY, becoming ready', [{ kind: 'not-ready', on: 'read' }, { kind: 'not-ready', on: 'read' }, { kind: 'not-ready', on: 'write' }]],
  ];
  for (const [label, faults, resets] of recoverable) {
    it(`recovers from ${label} with the right bytes`, async () => {
      const { sim, dev } = await setup();
      const a = pattern(8 * 512, 21);
      await dev.write(16, a);
      sim.inject(...faults);
      const b = pattern(8 * 512, 22);
      await dev.write(40, b);
      expect(Buffer.compare(await dev.read(16, 8), a)).toBe(0);
      expect(Buffer.compare(await dev.read(40, 8), b)).toBe(0);
      expect(sim.faults).toHaveLength(0); // every fault was hit
      expect(sim.stats.resets > 0).toBe(resets === true);
      // and the medium really holds the bytes (no silent drop behind a "success")
      expect(Buffer.compare(await sim.medium.read(40, 8), b)).toBe(0);
    });
  }

  // usb 3.x rejects a stalled transfer ("transferIn error: Stall"); the WebUSB spec resolves
  // with status 'stall'. Both must take the clear-halt path, not Reset Recovery.
  for (const stallAs of ['throw', 'status'] as const) {
    it(`a stall reported as ${stallAs === 'throw' ? 'a rejection (usb 3.x)' : "status 'stall' (WebUSB)"} clears the halt without a reset`, async () => {
      const { sim, dev } = await setup({ stallAs });
      const a = pattern(2 * 512, 31);
      sim.inject({ kind: 'stall-data', on: 'write' });
      await dev.write(9, a);
      sim.inject({ kind: 'stall-data', on: 'read' });
      expect(Buffer.compare(await dev.read(9, 2), a)).toBe(0);
      expect(sim.stats.clearHalts).toBe(2);
      expect(sim.stats.resets).toBe(0);
      sim.mediumErrorLbas.add(100); // the device stalls data-in, then reports MEDIUM ERROR
      const e = await senseOf(dev.read(99, 4));
      expect([e.key, e.lba]).toEqual([SenseKey.MEDIUM_ERROR, 100]);
      expect(sim.stats.resets).toBe(0);
    });
  }

  it('UNIT ATTENTION after every reset recovery is retried away', async () => {
    const { sim, dev } = await setup();
    sim.unitAttentionAfterReset = true;
    sim.inject({ kind: 'phase-error', on: 'write' }, { kind: 'wrong-tag', on: 'read' });
    const a = pattern(4 * 512, 5);
    await dev.write(0, a);
    expect(Buffer.compare(await dev.read(0, 4), a)).toBe(0);
    expect(sim.stats.resets).toBeGreaterThanOrEqual(2);
  });

  it('a persistent phase error ends in HARDWARE ERROR naming device and LBA', async () => {
    const { sim, dev } = await setup();
    sim.inject(...Array.from({ length: 10 }, (): UsbFault => ({ kind: 'phase-error', on: 'read' })));
    const e = await senseOf(dev.read(33, 2));
    expect(e.key).toBe(SenseKey.HARDWARE_ERROR);
    expect(e.message).toContain(name);
    expect(e.message).toContain('LBA 33');
  });

  it('a CSW that never comes ends in ABORTED COMMAND / timeout naming device and LBA', async () => {
    const { sim, dev } = await setup({ timeoutMs: 50 });
    sim.inject(...Array.from({ length: 10 }, (): UsbFault => ({ kind: 'hang', on: 'write' })));
    const e = await senseOf(dev.write(12, pattern(512, 1)));
    expect(e.key).toBe(SenseKey.ABORTED_COMMAND);
    expect([e.asc, e.ascq]).toEqual([...Asc.COMMAND_TIMEOUT]);
    expect(e.lba).toBe(12);
    expect(e.message).toContain(name);
  });

  it('NOT READY beyond the retry bound is reported, not retried forever', async () => {
    const { sim, dev } = await setup();
    sim.inject(...Array.from({ length: 30 }, (): UsbFault => ({ kind: 'not-ready', on: 'read' })));
    const e = await senseOf(dev.read(0, 1));
    expect(e.key).toBe(SenseKey.NOT_READY);
    expect([e.asc, e.ascq]).toEqual([...Asc.LOGICAL_UNIT_BECOMING_READY]);
    expect(e.message).toContain(name);
  });

  it('a medium error names the failing LBA from the sense INFORMATION field', async () => {
    const { sim, dev } = await setup();
    sim.mediumErrorLbas.add(10);
    const e = await senseOf(dev.read(8, 4));
    expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
    expect([e.asc, e.ascq]).toEqual([...Asc.UNRECOVERED_READ_ERROR]);
    expect(e.lba).toBe(10);
    expect(e.message).toContain(`${name} at LBA 10`);
    expect((await dev.read(11, 2)).length).toBe(1024); // the rest of the disk still reads
  });

  it('write protection: read-only when MODE SENSE says so, DATA PROTECT if set later', async () => {
    const medium = new MemoryDevice({ blockSizeBytes: 512, blockCount: 64 });
    const sim = new SimUsbDevice(medium);
    sim.writeProtected = true;
    const ro = await UsbBlockDevice.open(sim, name, { timeoutMs: 150 });
    opened.push(ro);
    expect(ro.capabilities.readOnly).toBe(true);
    expect(ro.status() & MediaStatus.WRITE_PROTECTED).toBeTruthy();
    expect((await senseOf(ro.write(1, pattern(512, 1)))).key).toBe(SenseKey.DATA_PROTECT);
    await ro.close();

    const { sim: sim2, dev } = await setup();
    sim2.writeProtected = true; // switch flipped after open: the device itself refuses
    const e = await senseOf(dev.write(5, pattern(1024, 3)));
    expect(e.key).toBe(SenseKey.DATA_PROTECT);
    expect([e.asc, e.ascq]).toEqual([...Asc.WRITE_PROTECTED]);
    expect(e.lba).toBe(5);
    expect(Buffer.compare(await dev.read(5, 2), Buffer.alloc(1024))).toBe(0);
  });

  it('unplugging: NOT READY / MEDIUM NOT PRESENT naming the device, also mid-command', async () => {
    const { sim, dev } = await setup({ timeoutMs: 300 });
    sim.inject({ kind: 'hang', on: 'read' });
    const pending = dev.read(0, 1);
    setTimeout(() => sim.unplug(), 20);
    // The hung transfer is cut by the adapter's timer; the reset recovery finds the device gone.
    const e = await senseOf(pending);
    expect(e.key).toBe(SenseKey.NOT_READY);
    expect([e.asc, e.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
    expect(e.message).toContain(name);
    expect(dev.status() & MediaStatus.NO_MEDIA).toBeTruthy();
    const again = await senseOf(dev.write(0, pattern(512, 2)));
    expect(again.key).toBe(SenseKey.NOT_READY);
  });

  it('reads capacity with READ CAPACITY (16) and addresses past 2^32 with READ/WRITE (16)', async () => {
    const blockCount = 2 ** 33;
    const blocks = new Map<number, Buffer>();
    const sparse: BlockDevice = {
      name: 'sparse',
      blockSizeBytes: 512 as BlockSizeBytes,
      blockCount,
      capabilities: { flush: true, fua: true, trim: false, readOnly: false },
      status: () => 0,
      read: async (lba, n) => Buffer.concat(Array.from({ length: n }, (_, i) => blocks.get(lba + i) ?? Buffer.alloc(512))),
      write: async (lba, data) => {
        for (let i = 0; i < data.byteLength / 512; i++) blocks.set(lba + i, Buffer.from(data.subarray(i * 512, (i + 1) * 512)));
      },
      flush: async () => {},
      close: async () => {},
    };
    const { sim, dev } = await setup({ medium: sparse });
    expect(dev.blockCount).toBe(blockCount);
    expect(sim.stats.ops).toContain(ScsiOp.SERVICE_ACTION_IN_16);
    const lba = 2 ** 32 + 5;
    const a = pattern(2 * 512, 8);
    await dev.write(lba, a, { fua: true });
    expect(Buffer.compare(await dev.read(lba, 2), a)).toBe(0);
    expect(sim.stats.ops).toContain(ScsiOp.WRITE_16);
    expect(sim.stats.ops).toContain(ScsiOp.READ_16);
    await dev.flush();
    expect(sim.stats.ops).toContain(ScsiOp.SYNCHRONIZE_CACHE_10);
  });
});

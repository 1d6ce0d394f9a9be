// `geomirror devices`: serial ports found by scanning a /dev tree (serialport's list needs
// udevadm), USB listing without a USB bus, and the printed form with its empty result and
// permission hints.

import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatDevices, listDevices, type DeviceList } from '../../hal/devices.js';
import { discoverSerialPorts } from '../../hal/serial/discovery.js';

const dev = mkdtempSync(join(tmpdir(), 'gm-dev-'));
afterAll(() => rmSync(dev, { recursive: true, force: true }));

describe('serial discovery by scanning /dev', () => {
  it('finds by-id links, ttyUSB/ACM/AMA nodes once each, and ignores other ttys', async () => {
    for (const n of ['ttyUSB0', 'ttyACM3', 'ttyAMA0', 'ttyS0', 'tty1', 'ttyUSBfoo']) writeFileSync(join(dev, n), '');
    mkdirSync(join(dev, 'serial', 'by-id'), { recursive: true });
    symlinkSync('../../ttyUSB0', join(dev, 'serial', 'by-id', 'usb-FTDI_FT232R_A1B2C3-if00-port0'));
    const d = await discoverSerialPorts(dev);
    expect(d.source).toBe(`scan of ${dev}`);
    expect(d.ports.map((p) => p.deviceString)).toEqual([
      `serial:${join(dev, 'serial', 'by-id', 'usb-FTDI_FT232R_A1B2C3-if00-port0')}`,
      `serial:${join(dev, 'ttyACM3')}`,
      `serial:${join(dev, 'ttyAMA0')}`,
    ]);
    expect(d.ports[0]!.path).toBe(join(dev, 'ttyUSB0'));
  });

  it('says clearly when there is nothing', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'gm-dev-empty-'));
    try {
      const list = await listDevices({ devDir: empty });
      expect(list.serial.ports).toEqual([]);
      const text = formatDevices(list);
      expect(text).toContain('Serial ports');
      expect(text).toMatch(/none found \(looked for \/dev\/serial\/by-id, \/dev\/ttyUSB\*/);
      expect(text).toContain('USB mass-storage devices:');
    } finally {
      rmSync(empty, { recursive: true });
    }
  });
});

describe('formatDevices', () => {
  it('prints each device string first, capacity, kernel driver, and permission hints', () => {
    const list: DeviceList = {
      usb: {
        disks: [
          {
            deviceString: 'usb:0781:5583:4C530001', vendorId: 0x0781, productId: 0x5583, manufacturer: 'SanDisk', product: 'Ultra Fit',
            serialNumber: '4C530001', capacityBytes: 16_008_609_792, kernelDriver: 'usb-storage', accessible: false,
          },
        ],
      },
      serial: {
        ports: [{ deviceString: 'serial:/dev/ttyUSB0', path: '/dev/ttyUSB0', byId: undefined, manufacturer: undefined, vendorId: undefined, productId: undefined, accessible: false }],
        source: 'scan of /dev',
        problem: 'no permission to open /dev/ttyUSB0: add your user to the dialout group',
      },
    };
    const text = formatDevices(list);
    expect(text).toContain('  usb:0781:5583:4C530001  SanDisk Ultra Fit, serial 4C530001, 14.9 GiB, held by kernel driver usb-storage');
    expect(text).toMatch(/NO PERMISSION: add a udev rule/);
    expect(text).toMatch(/serial:\/dev\/ttyUSB0 +NO PERMISSION/);
    expect(text).toContain('hint: no permission to open /dev/ttyUSB0: add your user to the dialout group');
  });

  it('reports why the USB list is empty', () => {
    const text = formatDevices({ usb: { disks: [], problem: 'no USB bus on this machine' }, serial: { ports: [], source: 'scan of /dev' } });
    expect(text).toContain('USB mass-storage devices:\n  none found (no USB bus on this machine)\n');
  });
});

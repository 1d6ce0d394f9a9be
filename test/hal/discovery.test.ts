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
      block: {
        devices: [
          {
            deviceString: 'block:/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C530001-0:0', name: 'sdb', sizeBytes: 16_008_609_792, logicalBlockSizeBytes: 512, model: 'SanDisk Ultra Fit',
            removable: true, readOnly: false, partitionOf: undefined, mounts: [{ device: '/dev/sdb1', mountPoint: '/media/usb' }], holders: [], swaps: [], inUse: 'is mounted (/dev/sdb1 at /media/usb); ...',
          },
          {
            deviceString: 'block:/dev/sdb1', name: 'sdb1', sizeBytes: 16_000_000_000, logicalBlockSizeBytes: 512, model: 'SanDisk Ultra Fit',
            removable: true, readOnly: false, partitionOf: 'sdb', mounts: [{ device: '/dev/sdb1', mountPoint: '/media/usb' }], holders: [], swaps: [], inUse: 'is mounted',
          },
          {
            deviceString: 'block:/dev/loop3', name: 'loop3', sizeBytes: 64 * 2 ** 20, logicalBlockSizeBytes: 4096, model: 'loop device over /srv/x.img',
            removable: false, readOnly: false, partitionOf: undefined, mounts: [], holders: [], swaps: [], inUse: null,
          },
        ],
      },
      usb: {
        disks: [
          {
            deviceString: 'usb:0781:5583:4C530001', vendorId: 0x0781, productId: 0x5583, manufacturer: 'SanDisk', product: 'Ultra Fit',
            serialNumber: '4C530001', capacityBytes: 16_008_609_792, kernelDriver: 'usb-storage', accessible: false, blockDevice: '/dev/sdb',
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
    expect(text).toContain('; or through the kernel as block:/dev/sdb\n');
    expect(text).toContain('Kernel block devices:\n  block:/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C530001-0:0  sdb: SanDisk Ultra Fit, 14.9 GiB, 512-byte blocks, removable; mounted: /dev/sdb1 at /media/usb\n');
    expect(text).toContain('\n    block:/dev/sdb1  sdb1: SanDisk Ultra Fit, 14.9 GiB, 512-byte blocks, removable; mounted: /dev/sdb1 at /media/usb\n');
    expect(text).toContain('\n  block:/dev/loop3  loop3: loop device over /srv/x.img, 64.0 MiB, 4096-byte blocks; free\n');
    expect(text).toMatch(/serial:\/dev\/ttyUSB0 +NO PERMISSION/);
    expect(text).toContain('hint: no permission to open /dev/ttyUSB0: add your user to the dialout group');
  });

  it('reports why the USB list is empty', () => {
    const text = formatDevices({ block: { devices: [], problem: 'no block devices under /sys/block' }, usb: { disks: [], problem: 'no USB bus on this machine' }, serial: { ports: [], source: 'scan of /dev' } });
    expect(text).toContain('Kernel block devices:\n  none found (no block devices under /sys/block)\n');
    expect(text).toContain('USB mass-storage devices:\n  none found (no USB bus on this machine)\n');
  });
});

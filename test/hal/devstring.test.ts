import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DeviceStringError, formatDeviceString, openBlockDevice, parseDeviceString } from '../../hal/devstring.js';
import { pattern } from './adapter-contract.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-devstring-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('parseDeviceString', () => {
  const good: [string, unknown][] = [
    ['memory:', { kind: 'memory', label: '' }],
    ['memory:cache-1', { kind: 'memory', label: 'cache-1' }],
    ['loopback:./data/local.img', { kind: 'loopback', path: './data/local.img' }],
    ['loopback:/var/lib/x:y.img', { kind: 'loopback', path: '/var/lib/x:y.img' }],
    ['block:/dev/sdb', { kind: 'block', path: '/dev/sdb' }],
    ['block:/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0', { kind: 'block', path: '/dev/disk/by-id/usb-SanDisk_Ultra_Fit_4C53-0:0' }],
    ['usb:0781:5583', { kind: 'usb', vendorId: 0x0781, productId: 0x5583 }],
    ['usb:0x1D6B:2', { kind: 'usb', vendorId: 0x1d6b, productId: 2 }],
    ['usb:0781:5583:4C530001', { kind: 'usb', vendorId: 0x0781, productId: 0x5583, serial: '4C530001' }],
    ['serial:/dev/ttyUSB0', { kind: 'serial', path: '/dev/ttyUSB0' }],
    ['serial:/dev/ttyACM1?baud=115200', { kind: 'serial', path: '/dev/ttyACM1', baudRate: 115200 }],
  ];
  for (const [text, spec] of good) {
    it(`parses ${text}`, () => {
      const parsed = parseDeviceString(text);
      expect(parsed).toEqual(spec);
      expect(parseDeviceString(formatDeviceString(parsed))).toEqual(parsed);
    });
  }

  const bad: [string, RegExp][] = [
    ['', /no scheme/],
    ['/data/x.img', /no scheme.*loopback:PATH/],
    ['disk:/x', /unknown scheme "disk:"/],
    ['loopback:', /loopback:PATH/],
    ['block:sdb', /block:\/dev\/NAME with the absolute path.*for a disk-image file use loopback:sdb/],
    ['block:', /block:\/dev\/NAME/],
    ['memory:a b', /memory:LABEL/],
    ['usb:0781', /usb:VID:PID/],
    ['usb:07812:5583', /vendor id "07812"/],
    ['usb:0781:zz', /product id "zz"/],
    ['usb:0781:5583:', /serial number/],
    ['serial:', /serial:PATH/],
    ['serial:/dev/ttyS0?speed=9600', /"speed=9600".*\?baud=N/],
    ['serial:/dev/ttyS0?baud=0', /baud rate 0/],
    ['serial:/dev/ttyS0?baud=fast', /"baud=fast"/],
  ];
  for (const [text, why] of bad) {
    it(`rejects ${JSON.stringify(text)}`, () => {
      let err: unknown;
      try {
        parseDeviceString(text);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DeviceStringError);
      expect((err as Error).message).toContain(JSON.stringify(text));
      expect((err as Error).message).toMatch(why);
    });
  }
});

describe('openBlockDevice', () => {
  it('opens memory: from a string', async () => {
    const dev = await openBlockDevice('memory:m1', { blockSizeBytes: 512, blockCount: 8 });
    expect(dev.name).toBe('memory:m1');
    await dev.write(1, pattern(512, 1));
    expect(Buffer.compare(await dev.read(1, 1), pattern(512, 1))).toBe(0);
    await dev.close();
  });

  it('resolves a relative loopback path against baseDir and creates it', async () => {
    const dev = await openBlockDevice('loopback:sub.img', { blockSizeBytes: 4096, blockCount: 4, create: true, baseDir: dir });
    expect(dev.name).toBe(`loopback:${join(dir, 'sub.img')}`);
    expect(statSync(join(dir, 'sub.img')).size).toBe(16384);
    await dev.close();
    const again = await openBlockDevice({ kind: 'loopback', path: join(dir, 'sub.img') }, { blockSizeBytes: 4096, blockCount: 4, readOnly: true });
    expect(again.capabilities.readOnly).toBe(true);
    await again.close();
  });

  it('dispatches usb: and serial: to the hardware adapters, which say what is missing', async () => {
    // No such device on a CI machine: NOT READY naming the device string, never a hang.
    await expect(openBlockDevice('usb:0781:5583', { blockSizeBytes: 512, blockCount: 8 })).rejects.toThrow(/usb:0781:5583.*(no USB device|not present)/);
    await expect(openBlockDevice(`serial:${join(dir, 'no-such-tty')}?baud=9600`, { blockSizeBytes: 512, blockCount: 8 })).rejects.toThrow(/cannot open serial port/);
  });

  it('opens usb-sim:PATH (the USB simulator) relative to baseDir', async () => {
    const dev = await openBlockDevice('usb-sim:usb.img', { blockSizeBytes: 512, blockCount: 16, baseDir: dir });
    expect(dev.name).toBe(`usb-sim:${join(dir, 'usb.img')}`);
    await dev.write(3, Buffer.alloc(512, 7));
    expect(Buffer.compare(await dev.read(3, 1), Buffer.alloc(512, 7))).toBe(0);
    await dev.close();
    expect(formatDeviceString(parseDeviceString('usb-sim:a/b.img'))).toBe('usb-sim:a/b.img');
  });

  it('rejects a bad string before opening anything', async () => {
    await expect(openBlockDevice('loopback', { blockSizeBytes: 512, blockCount: 8 })).rejects.toBeInstanceOf(DeviceStringError);
  });
});

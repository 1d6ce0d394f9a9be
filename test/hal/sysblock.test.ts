// What geomirror reads about kernel block devices from sysfs and /proc (hal/sysblock.ts), on a
// sysfs tree laid out like the kernel's (a USB disk with a partition, an LVM volume on a second
// disk, a swap partition) and mount tables given as text, so every case runs without hardware.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { blockInfo, devIdOf, inUseReason, listKernelBlockDevices, parseMountinfo, stableDevicePath, type SystemView } from '../../hal/sysblock.js';

const root = mkdtempSync(join(tmpdir(), 'gm-sysblock-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const sys = join(root, 'sys');

/** One block device directory the way sysfs has it, linked from /sys/block and /sys/dev/block. */
function dev(path: string, id: string, files: Record<string, string>, opts: { partition?: boolean } = {}): string {
  const dir = join(sys, 'devices', path);
  mkdirSync(join(dir, 'holders'), { recursive: true });
  writeFileSync(join(dir, 'dev'), `${id}\n`);
  if (opts.partition) writeFileSync(join(dir, 'partition'), '1\n');
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, '..'), { recursive: true });
    writeFileSync(join(dir, f), `${text}\n`);
  }
  mkdirSync(join(sys, 'dev', 'block'), { recursive: true });
  symlinkSync(relative(join(sys, 'dev', 'block'), dir), join(sys, 'dev', 'block', id));
  if (!opts.partition) {
    mkdirSync(join(sys, 'block'), { recursive: true });
    symlinkSync(relative(join(sys, 'block'), dir), join(sys, 'block', path.split('/').pop()!));
  }
  return dir;
}

const usb = 'pci0000:00/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sdb';
dev(usb, '8:16', { size: '31266816', ro: '0', removable: '1', 'queue/logical_block_size': '512', 'device/vendor': 'SanDisk ', 'device/model': 'Ultra Fit' });
dev(`${usb}/sdb1`, '8:17', { size: '31264768', ro: '0' }, { partition: true });
const sata = 'pci0000:00/ata1/host1/target1:0:0/1:0:0:0/block/sdc';
const sdc = dev(sata, '8:32', { size: '2097152', ro: '0', removable: '0', 'queue/logical_block_size': '4096', 'device/vendor': 'ATA', 'device/model': 'WDC WD10' });
dev(`${sata}/sdc1`, '8:33', { size: '1000000', ro: '0' }, { partition: true });
dev(`${sata}/sdc2`, '8:34', { size: '1000000', ro: '0' }, { partition: true });
const lv = dev('virtual/block/dm-0', '253:0', { size: '1000000', ro: '0', removable: '0', 'queue/logical_block_size': '4096', 'dm/name': 'vg0-geomirror' });
mkdirSync(join(sdc, 'sdc1', 'holders', 'dm-0'), { recursive: true }); // LVM PV on sdc1
dev('virtual/block/loop7', '7:7', { size: '0', ro: '0', removable: '0', 'queue/logical_block_size': '512' }); // unattached
dev('virtual/block/zram0', '252:0', { size: '8000', ro: '0', removable: '0', 'queue/logical_block_size': '4096' });
void lv;

const mountinfo = [
  '22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw',
  '87 22 8:17 / /media/usb\\040stick rw,relatime shared:40 - vfat /dev/sdb1 rw',
  '',
].join('\n');
const swaps = 'Filename\tType\tSize\tUsed\tPriority\n/dev/sdc2                               partition\t499996\t0\t-2\n';
const view: SystemView = { mountinfo, swaps, sysDir: sys };

describe('sysfs block devices', () => {
  it('parses mountinfo (escaped spaces) and device numbers', () => {
    expect(parseMountinfo(mountinfo)).toEqual([
      { devId: '254:1', mountPoint: '/', source: '/dev/vda1' },
      { devId: '8:17', mountPoint: '/media/usb stick', source: '/dev/sdb1' },
    ]);
    expect(devIdOf(0x811n)).toBe('8:17'); // makedev(8, 17)
    expect(devIdOf(0x10300n)).toBe('259:0'); // makedev(259, 0): major above 255
    expect(devIdOf(0x10000103n)).toBe('1:65539'); // makedev(1, 65539): minor above 255
  });

  it('reads size, block size, model, partitions and mounts of a USB disk', () => {
    const sdb = blockInfo('8:16', view)!;
    expect(sdb).toMatchObject({ name: 'sdb', sizeBytes: 31266816 * 512, logicalBlockSizeBytes: 512, readOnly: false, removable: true, partitionOf: undefined, model: 'SanDisk Ultra Fit', partitions: ['sdb1'] });
    expect(sdb.mounts).toEqual([{ device: '/dev/sdb1', mountPoint: '/media/usb stick' }]);
    expect(inUseReason(sdb)).toBe('is mounted (/dev/sdb1 at /media/usb stick); unmount it (umount /media/usb stick) or pick another device');
    const sdb1 = blockInfo('8:17', view)!;
    expect(sdb1).toMatchObject({ name: 'sdb1', partitionOf: 'sdb', logicalBlockSizeBytes: 512, removable: true });
    expect(blockInfo('9:99', view)).toBeUndefined();
    expect(blockInfo('8:16', { ...view, sysDir: join(root, 'no-sys') })).toBeUndefined();
  });

  it('names the LVM volume on a partition and the swap partition as holders of the disk', () => {
    const sdc = blockInfo('8:32', view)!;
    expect(sdc.holders).toEqual(['dm-0']);
    expect(sdc.swaps).toEqual(['/dev/sdc2']);
    expect(inUseReason(sdc)).toMatch(/^is in use as swap \(\/dev\/sdc2\); swapoff/);
    const sdc1 = blockInfo('8:33', view)!;
    expect(inUseReason(sdc1)).toBe('is in use by /dev/dm-0 (LVM, dm-crypt or RAID built on it); give geomirror that device instead, or take it apart first');
    const dm = blockInfo('253:0', view)!;
    expect(dm).toMatchObject({ model: 'device-mapper vg0-geomirror', logicalBlockSizeBytes: 4096 });
    expect(inUseReason(dm)).toBeUndefined();
  });

  it('lists disks with their partitions, without empty loop devices and zram', () => {
    expect(listKernelBlockDevices(view).map((d) => d.name)).toEqual(['dm-0', 'sdb', 'sdb1', 'sdc', 'sdc1', 'sdc2']);
  });

  it('suggests a /dev/disk/by-id path when udev made one, /dev/mapper for LVM, else /dev/NAME', () => {
    const devDir = join(root, 'dev');
    mkdirSync(join(devDir, 'disk', 'by-id'), { recursive: true });
    mkdirSync(join(devDir, 'mapper'), { recursive: true });
    for (const n of ['sdb', 'sdb1', 'sdc', 'dm-0']) writeFileSync(join(devDir, n), '');
    symlinkSync('../../sdb', join(devDir, 'disk', 'by-id', 'wwn-0x5000'));
    symlinkSync('../../sdb', join(devDir, 'disk', 'by-id', 'usb-SanDisk_Ultra_Fit_4C53-0:0'));
    symlinkSync('../../sdb1', join(devDir, 'disk', 'by-id', 'usb-SanDisk_Ultra_Fit_4C53-0:0-part1'));
    symlinkSync('../dm-0', join(devDir, 'mapper', 'vg0-geomirror'));
    expect(stableDevicePath(blockInfo('8:16', view)!, devDir)).toBe(join(devDir, 'disk', 'by-id', 'usb-SanDisk_Ultra_Fit_4C53-0:0'));
    expect(stableDevicePath(blockInfo('8:17', view)!, devDir)).toBe(join(devDir, 'disk', 'by-id', 'usb-SanDisk_Ultra_Fit_4C53-0:0-part1'));
    expect(stableDevicePath(blockInfo('253:0', view)!, devDir)).toBe(join(devDir, 'mapper', 'vg0-geomirror'));
    expect(stableDevicePath(blockInfo('8:32', view)!, devDir)).toBe(join(devDir, 'sdc'));
  });
});

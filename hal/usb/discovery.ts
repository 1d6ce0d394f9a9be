// Finds USB mass-storage devices by interface class (08/06/50), like zigbee-herdsman's
// adapterDiscovery finds coordinators by ids. Listing never opens or claims a device: capacity
// and "held by the kernel" come from sysfs, so `geomirror devices` cannot disturb a mounted disk.

import { access, constants, readFile, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { MassStorage, hex4, type UsbDeviceLike } from './webusb.js';

export interface UsbDiskInfo {
  deviceString: string;
  vendorId: number;
  productId: number;
  manufacturer: string | undefined;
  product: string | undefined;
  serialNumber: string | undefined;
  /** From sysfs when the kernel driver exposes a block device; undefined when unreadable. */
  capacityBytes: number | undefined;
  /** The kernel block device (/dev/sdb) usb-storage made of it, when the kernel holds it. */
  blockDevice?: string;
  /** 'usb-storage' (or another driver name) when the kernel holds the interface, else null. */
  kernelDriver: string | null | undefined;
  /** False when this user cannot open the device node (udev rules needed). */
  accessible: boolean | undefined;
}

export interface UsbDiscovery {
  disks: UsbDiskInfo[];
  /** Why the list may be incomplete or empty for reasons other than "nothing plugged in". */
  problem?: string;
}

const sysUsb = '/sys/bus/usb/devices';

interface SysDevice extends UsbDeviceLike {
  bus?: string;
  address?: number;
  ports?: number[];
}

/** A mass-storage device and the number of its Bulk-Only SCSI interface. */
export interface FoundUsbDevice {
  device: SysDevice;
  interfaceNumber: number;
  /** Why descriptors could not be read through the device (then sysfs said it is storage). */
  openError?: string;
}

/**
 * Mass-storage devices the `usb` package sees (loaded lazily: a listing must not need it).
 * Reading `configuration` opens the device; when this user may not (no udev rule), the
 * interface class comes from sysfs instead, so one locked-down device never hides the others.
 */
export async function findUsbDevices(): Promise<SysDevice[]> {
  return (await findMassStorage()).map((f) => f.device);
}

export async function findMassStorage(): Promise<FoundUsbDevice[]> {
  const mod = (await import('usb')) as unknown as { usb: { getDevices(): Promise<SysDevice[]> } };
  const out: FoundUsbDevice[] = [];
  for (const d of await mod.usb.getDevices()) {
    try {
      const ifc = d.configuration?.interfaces.find(
        (i) =>
          i.alternate.interfaceClass === MassStorage.CLASS &&
          i.alternate.interfaceSubclass === MassStorage.SUBCLASS_SCSI &&
          i.alternate.interfaceProtocol === MassStorage.PROTOCOL_BOT,
      );
      if (ifc) out.push({ device: d, interfaceNumber: ifc.interfaceNumber });
    } catch (e) {
      const n = await sysMassStorageInterface(sysNameOf(d));
      if (n !== undefined) out.push({ device: d, interfaceNumber: n, openError: (e as Error).message });
    }
  }
  return out;
}

function sysNameOf(d: SysDevice): string | undefined {
  // usb 3.x gives the bus id and the port chain; sysfs names the device "<bus>-<p1>.<p2>...".
  if (d.bus && /^\d+-[\d.]+$/.test(d.bus)) return d.bus;
  return d.bus && d.ports?.length ? `${d.bus}-${d.ports.join('.')}` : undefined;
}

/** Interface number of a 08/06/50 interface, read from sysfs, or undefined. */
async function sysMassStorageInterface(sysName: string | undefined): Promise<number | undefined> {
  if (!sysName) return undefined;
  const hex = async (dir: string, f: string) => parseInt((await readFile(join(sysUsb, dir, f), 'utf8')).trim(), 16);
  for (const entry of await readdir(sysUsb).catch(() => [] as string[])) {
    if (!entry.startsWith(`${sysName}:`)) continue;
    try {
      if ((await hex(entry, 'bInterfaceClass')) === MassStorage.CLASS && (await hex(entry, 'bInterfaceSubClass')) === MassStorage.SUBCLASS_SCSI && (await hex(entry, 'bInterfaceProtocol')) === MassStorage.PROTOCOL_BOT) {
        return await hex(entry, 'bInterfaceNumber');
      }
    } catch {
      // an interface directory without descriptors: not ours
    }
  }
  return undefined;
}

export async function discoverUsbDisks(): Promise<UsbDiscovery> {
  let found: FoundUsbDevice[];
  try {
    found = await findMassStorage();
  } catch (e) {
    const msg = (e as Error).message;
    if (/\/sys\/bus\/usb|not found|ENOENT/i.test(msg)) return { disks: [], problem: 'no USB bus on this machine (/sys/bus/usb is absent: a container or VM without USB passthrough?)' };
    if (/EACCES|permission/i.test(msg)) return { disks: [], problem: `cannot list USB devices: ${msg}; check read access to /sys/bus/usb and /dev/bus/usb` };
    return { disks: [], problem: `cannot list USB devices: ${msg}` };
  }
  const disks: UsbDiskInfo[] = [];
  for (const { device: d, interfaceNumber, openError } of found) {
    const sysName = sysNameOf(d);
    const ifDir = sysName ? join(sysUsb, `${sysName}:1.${interfaceNumber}`) : undefined;
    const serial = safe(() => d.serialNumber) ?? undefined;
    const accessible = openError && /EACCES|permission|access/i.test(openError) ? false : sysName ? await nodeAccessible(sysName, d.address) : undefined;
    const block = ifDir ? await sysBlockDisk(ifDir) : undefined;
    disks.push({
      deviceString: `usb:${hex4(d.vendorId)}:${hex4(d.productId)}${serial ? `:${serial}` : ''}`,
      vendorId: d.vendorId,
      productId: d.productId,
      manufacturer: safe(() => d.manufacturerName) ?? undefined,
      product: safe(() => d.productName) ?? undefined,
      serialNumber: serial,
      capacityBytes: block?.capacityBytes,
      ...(block ? { blockDevice: `/dev/${block.name}` } : {}),
      kernelDriver: ifDir ? await sysDriver(ifDir) : undefined,
      accessible,
    });
  }
  return { disks };
}

function safe<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch {
    return undefined; // string descriptors need an open device on some platforms
  }
}

async function sysDriver(ifDir: string): Promise<string | null | undefined> {
  try {
    return (await readlink(join(ifDir, 'driver'))).split('/').pop() ?? null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? null : undefined;
  }
}

/** The disk usb-storage made (<iface>/hostN/targetN:0:0/N:0:0:0/block/sdX) and its size (512-byte sectors). */
async function sysBlockDisk(ifDir: string): Promise<{ name: string; capacityBytes: number | undefined } | undefined> {
  try {
    for (const host of (await readdir(ifDir)).filter((n) => n.startsWith('host'))) {
      for (const target of (await readdir(join(ifDir, host))).filter((n) => n.startsWith('target'))) {
        for (const lun of (await readdir(join(ifDir, host, target))).filter((n) => /^\d+:\d+:\d+:\d+$/.test(n))) {
          const blockDir = join(ifDir, host, target, lun, 'block');
          for (const disk of await readdir(blockDir)) {
            const sectors = Number((await readFile(join(blockDir, disk, 'size'), 'utf8')).trim());
            return { name: disk, capacityBytes: Number.isFinite(sectors) ? sectors * 512 : undefined };
          }
        }
      }
    }
  } catch {
    // Driver detached or sysfs laid out differently: capacity unknown without opening.
  }
  return undefined;
}

async function nodeAccessible(sysName: string, address: number | undefined): Promise<boolean | undefined> {
  try {
    const busnum = Number((await readFile(join(sysUsb, sysName, 'busnum'), 'utf8')).trim());
    const devnum = address ?? Number((await readFile(join(sysUsb, sysName, 'devnum'), 'utf8')).trim());
    const node = `/dev/bus/usb/${String(busnum).padStart(3, '0')}/${String(devnum).padStart(3, '0')}`;
    await access(node, constants.R_OK | constants.W_OK);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EACCES' ? false : undefined;
  }
}

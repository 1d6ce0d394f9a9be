// Finds serial ports a storage microcontroller may sit behind. serialport's list() shells out
// to `udevadm`, which minimal images (and this CI) lack, so we fall back to scanning the device
// nodes Linux creates for USB-serial bridges and the Raspberry Pi's UARTs.

import { access, constants, readdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';

export interface SerialPortInfo {
  deviceString: string;
  path: string;
  /** /dev/serial/by-id name (stable across reboots), when there is one. */
  byId: string | undefined;
  manufacturer: string | undefined;
  vendorId: string | undefined;
  productId: string | undefined;
  /** False when this user may not open it (dialout group / udev rule needed). */
  accessible: boolean | undefined;
}

export interface SerialDiscovery {
  ports: SerialPortInfo[];
  /** How the list was made ('serialport' or 'scan of /dev'). */
  source: string;
  problem?: string;
}

const scanPrefixes = ['ttyUSB', 'ttyACM', 'ttyAMA'];

export async function discoverSerialPorts(devDir = '/dev'): Promise<SerialDiscovery> {
  let listed: SerialPortInfo[] | undefined;
  let source = 'serialport';
  if (devDir === '/dev') {
    try {
      const { SerialPort } = await import('serialport');
      const ports = await SerialPort.list();
      listed = ports.map((p) => ({
        deviceString: `serial:${p.path}`,
        path: p.path,
        byId: undefined,
        manufacturer: p.manufacturer,
        vendorId: p.vendorId,
        productId: p.productId,
        accessible: undefined,
      }));
    } catch {
      listed = undefined; // no udevadm: scan below
    }
  }
  if (!listed) {
    source = `scan of ${devDir}`;
    listed = await scan(devDir);
  }
  for (const p of listed) p.accessible = await accessible(p.path);
  const denied = listed.filter((p) => p.accessible === false).map((p) => p.path);
  return {
    ports: listed,
    source,
    ...(denied.length
      ? { problem: `no permission to open ${denied.join(', ')}: add your user to the dialout group (sudo usermod -aG dialout $USER, then log in again) or add a udev rule` }
      : {}),
  };
}

async function scan(devDir: string): Promise<SerialPortInfo[]> {
  const found = new Map<string, SerialPortInfo>();
  const byIdDir = join(devDir, 'serial', 'by-id');
  for (const name of await list(byIdDir)) {
    const link = join(byIdDir, name);
    const real = await realpath(link).catch(() => undefined);
    if (!real) continue;
    found.set(real, { deviceString: `serial:${link}`, path: real, byId: link, manufacturer: undefined, vendorId: undefined, productId: undefined, accessible: undefined });
  }
  for (const name of (await list(devDir)).sort()) {
    if (!scanPrefixes.some((p) => name.startsWith(p) && /^\d+$/.test(name.slice(p.length)))) continue;
    const path = join(devDir, name);
    if (!found.has(path)) found.set(path, { deviceString: `serial:${path}`, path, byId: undefined, manufacturer: undefined, vendorId: undefined, productId: undefined, accessible: undefined });
  }
  return [...found.values()];
}

async function list(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return [];
  }
}

async function accessible(path: string): Promise<boolean | undefined> {
  try {
    await access(path, constants.R_OK | constants.W_OK);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EACCES' ? false : undefined;
  }
}

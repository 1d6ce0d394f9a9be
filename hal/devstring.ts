// Device strings: how config files and the CLI name a block device (DESIGN.md, Configuration:
// `storage: ["loopback:./data/local.img"]`). Parsed once at the edge (STYLE rule 3) into a
// typed spec; openBlockDevice() turns a spec into an open adapter.
//
//   memory:[LABEL]            RAM volume (LABEL only names it in messages)
//   loopback:PATH             a regular file; relative PATH resolves against baseDir
//   block:/dev/NAME           a Linux kernel block device (USB or SATA disk, SD card or
//                             partition, LVM volume, loop device); an absolute device path
//   usb:VID:PID[:SERIAL]      USB mass-storage disk, ids in hex (lsusb style, 1-4 digits, optional 0x)
//   serial:PATH[?baud=N]      serial-attached storage
//   usb-sim:PATH              the USB mass-storage SIMULATOR over a disk-image file (tests, demos)
//
// hal/ imports nothing from src/.

import { isAbsolute, resolve } from 'node:path';
import type { BlockDevice } from './blockdev.js';
import { openHardwareDevice } from './devices.js';
import { openKernelBlock } from './kernel-block.js';
import { openLoopback } from './loopback.js';
import { MemoryDevice } from './memory.js';

/** Highest baud rate we accept in a device string (fast USB-serial bridges reach 3-4 Mbaud). */
export const baudRateMax = 12_000_000;
/** Longest device string we parse, in characters (a path plus a query fits easily). */
export const deviceStringCharsMax = 4096;

export type DeviceSpec =
  | { readonly kind: 'memory'; readonly label: string }
  | { readonly kind: 'loopback'; readonly path: string }
  | { readonly kind: 'block'; readonly path: string }
  | { readonly kind: 'usb'; readonly vendorId: number; readonly productId: number; readonly serial?: string }
  | { readonly kind: 'serial'; readonly path: string; readonly baudRate?: number }
  | { readonly kind: 'usb-sim'; readonly path: string };

const expectedForms = 'memory:, loopback:PATH, block:/dev/NAME, usb:VID:PID[:SERIAL] (hex ids), serial:PATH[?baud=N] or usb-sim:PATH';

/** A device string that cannot be parsed or opened in this build; names the string and the fix. */
export class DeviceStringError extends Error {
  constructor(
    readonly deviceString: string,
    detail: string,
  ) {
    super(`device string ${JSON.stringify(deviceString)}: ${detail}`);
    this.name = 'DeviceStringError';
  }
}

export function parseDeviceString(text: string): DeviceSpec {
  if (typeof text !== 'string') throw new DeviceStringError(String(text), `expected a string of the form ${expectedForms}`);
  if (text.length > deviceStringCharsMax) {
    throw new DeviceStringError(text.slice(0, 64) + '...', `is ${text.length} characters, longer than the ${deviceStringCharsMax}-character maximum`);
  }
  const colon = text.indexOf(':');
  if (colon < 0) throw new DeviceStringError(text, `has no scheme; expected ${expectedForms}`);
  const scheme = text.slice(0, colon);
  const rest = text.slice(colon + 1);
  switch (scheme) {
    case 'memory':
      if (rest !== '' && !/^[A-Za-z0-9._-]+$/.test(rest)) {
        throw new DeviceStringError(text, 'expected memory: or memory:LABEL (LABEL of letters, digits, ".", "_", "-")');
      }
      return { kind: 'memory', label: rest };
    case 'loopback':
      if (rest === '') throw new DeviceStringError(text, 'expected loopback:PATH with a file path after the colon');
      if (rest.includes('\0')) throw new DeviceStringError(text, 'the path contains a NUL byte');
      return { kind: 'loopback', path: rest };
    case 'block':
      if (rest.includes('\0')) throw new DeviceStringError(text, 'the path contains a NUL byte');
      if (!rest.startsWith('/')) {
        throw new DeviceStringError(text, `expected block:/dev/NAME with the absolute path of a kernel block device (e.g. block:/dev/sdb, block:/dev/disk/by-id/usb-...); for a disk-image file use loopback:${rest || 'PATH'}`);
      }
      return { kind: 'block', path: rest };
    case 'usb':
      return parseUsb(text, rest);
    case 'serial':
      return parseSerial(text, rest);
    case 'usb-sim':
      if (rest === '' || rest.includes('\0')) throw new DeviceStringError(text, 'expected usb-sim:PATH with a disk-image file path after the colon');
      return { kind: 'usb-sim', path: rest };
    default:
      throw new DeviceStringError(text, `unknown scheme "${scheme}:"; expected ${expectedForms}`);
  }
}

function parseUsb(text: string, rest: string): DeviceSpec {
  const parts = rest.split(':');
  if (parts.length < 2) throw new DeviceStringError(text, 'expected usb:VID:PID[:SERIAL] with hex vendor and product ids, e.g. usb:0781:5583');
  const vendorId = parseHexId(text, 'vendor', parts[0]!);
  const productId = parseHexId(text, 'product', parts[1]!);
  if (parts.length === 2) return { kind: 'usb', vendorId, productId };
  const serial = parts.slice(2).join(':');
  if (!/^[\x21-\x7e]+$/.test(serial)) {
    throw new DeviceStringError(text, 'expected a serial number of printable characters without spaces after usb:VID:PID:');
  }
  return { kind: 'usb', vendorId, productId, serial };
}

function parseHexId(text: string, what: string, s: string): number {
  const m = /^(?:0x)?([0-9a-fA-F]{1,4})$/.exec(s);
  if (!m) throw new DeviceStringError(text, `${what} id "${s}" is not a hex number of 1-4 digits (e.g. 0781)`);
  return parseInt(m[1]!, 16);
}

function parseSerial(text: string, rest: string): DeviceSpec {
  const q = rest.indexOf('?');
  const path = q < 0 ? rest : rest.slice(0, q);
  if (path === '') throw new DeviceStringError(text, 'expected serial:PATH[?baud=N] with a port path, e.g. serial:/dev/ttyUSB0?baud=115200');
  if (q < 0) return { kind: 'serial', path };
  const query = rest.slice(q + 1);
  const m = /^baud=([0-9]{1,9})$/.exec(query);
  if (!m) throw new DeviceStringError(text, `option "${query}" is not understood; the only option is ?baud=N`);
  const baudRate = Number(m[1]);
  if (baudRate < 1 || baudRate > baudRateMax) throw new DeviceStringError(text, `baud rate ${baudRate} is outside 1..${baudRateMax}`);
  return { kind: 'serial', path, baudRate };
}

/** The canonical device string of a spec (parseDeviceString(formatDeviceString(s)) equals s). */
export function formatDeviceString(spec: DeviceSpec): string {
  switch (spec.kind) {
    case 'memory':
      return `memory:${spec.label}`;
    case 'loopback':
      return `loopback:${spec.path}`;
    case 'block':
      return `block:${spec.path}`;
    case 'usb': {
      const id = `${hex4(spec.vendorId)}:${hex4(spec.productId)}`;
      return spec.serial === undefined ? `usb:${id}` : `usb:${id}:${spec.serial}`;
    }
    case 'serial':
      return spec.baudRate === undefined ? `serial:${spec.path}` : `serial:${spec.path}?baud=${spec.baudRate}`;
    case 'usb-sim':
      return `usb-sim:${spec.path}`;
  }
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

export interface OpenOptions {
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  /** Create a missing loopback file (sized to the volume). */
  readonly create?: boolean;
  readonly readOnly?: boolean;
  /** Directory that relative loopback paths resolve against (the config file's); default cwd. */
  readonly baseDir?: string;
}

export async function openBlockDevice(device: DeviceSpec | string, options: OpenOptions): Promise<BlockDevice> {
  const spec = typeof device === 'string' ? parseDeviceString(device) : device;
  return openAdapter(spec, options);
}

/** The one place a spec meets an adapter. */
function openAdapter(spec: DeviceSpec, o: OpenOptions): Promise<BlockDevice> | BlockDevice {
  switch (spec.kind) {
    case 'memory':
      return new MemoryDevice({ name: formatDeviceString(spec), blockSizeBytes: o.blockSizeBytes, blockCount: o.blockCount, readOnly: o.readOnly === true });
    case 'loopback': {
      const path = isAbsolute(spec.path) ? spec.path : resolve(o.baseDir ?? process.cwd(), spec.path);
      return openLoopback(path, { blockSizeBytes: o.blockSizeBytes, blockCount: o.blockCount, create: o.create === true, readOnly: o.readOnly === true });
    }
    case 'block':
      return openKernelBlock(spec.path, { blockSizeBytes: o.blockSizeBytes, blockCount: o.blockCount, readOnly: o.readOnly === true });
    case 'usb':
    case 'serial':
      return openHardwareDevice(formatDeviceString(spec), o);
    case 'usb-sim': {
      const path = isAbsolute(spec.path) ? spec.path : resolve(o.baseDir ?? process.cwd(), spec.path);
      return openHardwareDevice(`usb-sim:${path}`, { ...o, create: o.create !== false });
    }
  }
}

// `geomirror devices`: what storage hardware this node can see. The CLI calls listDevices()
// and prints formatDevices(); both live here so hal owns the knowledge of what a device is.

import { sense, type BlockDevice } from './blockdev.js';
import { discoverSerialPorts, type SerialDiscovery } from './serial/discovery.js';
import { inUseReason, listKernelBlockDevices, readSystemView, stableDevicePath, type SystemView } from './sysblock.js';
import { discoverUsbDisks, type UsbDiscovery } from './usb/discovery.js';

export interface KernelBlockListing {
  /** `block:` and the path to put in a cluster file (a /dev/disk/by-id link when there is one). */
  deviceString: string;
  /** Kernel name: sdb, sdb1, mmcblk0p2, loop3, dm-0. */
  name: string;
  sizeBytes: number;
  logicalBlockSizeBytes: number;
  model: string | undefined;
  removable: boolean;
  readOnly: boolean;
  /** The whole disk of a partition. */
  partitionOf: string | undefined;
  mounts: { device: string; mountPoint: string }[];
  holders: string[];
  swaps: string[];
  /** Why geomirror would refuse it now (mounted, swap, LVM/RAID on it), or null when free. */
  inUse: string | null;
}

export interface BlockDiscovery {
  devices: KernelBlockListing[];
  /** Why the list may be incomplete or empty (no sysfs). */
  problem?: string;
}

export interface DeviceList {
  block: BlockDiscovery;
  usb: UsbDiscovery;
  serial: SerialDiscovery;
}

/** `devDir`: where serial ports are looked for (tests); block devices are always named under /dev. */
export async function listDevices(opts: { devDir?: string; system?: SystemView } = {}): Promise<DeviceList> {
  const [usb, serial] = await Promise.all([discoverUsbDisks(), discoverSerialPorts(opts.devDir)]);
  return { block: discoverKernelBlock('/dev', opts.system), usb, serial };
}

/** Kernel block devices from sysfs; never opens one, so it is safe next to a mounted disk. */
export function discoverKernelBlock(devDir = '/dev', system: SystemView = readSystemView()): BlockDiscovery {
  const found = listKernelBlockDevices(system);
  const devices = found.map((d) => ({
    deviceString: `block:${stableDevicePath(d, devDir)}`,
    name: d.name,
    sizeBytes: d.sizeBytes,
    logicalBlockSizeBytes: d.logicalBlockSizeBytes,
    model: d.model,
    removable: d.removable,
    readOnly: d.readOnly,
    partitionOf: d.partitionOf,
    mounts: [...d.mounts],
    holders: [...d.holders],
    swaps: [...d.swaps],
    inUse: inUseReason(d) ?? null,
  }));
  if (devices.length === 0 && found.length === 0) {
    return { devices, problem: `no block devices under ${system.sysDir}/block (no sysfs in this container?)` };
  }
  return { devices };
}

/** One listing line's facts about a kernel block device, after its device string. */
function blockFacts(d: KernelBlockListing): string {
  const what = [d.model ?? 'unknown model', size(d.sizeBytes), `${d.logicalBlockSizeBytes}-byte blocks`];
  if (d.removable) what.push('removable');
  if (d.readOnly) what.push('read-only');
  const where = d.mounts.length > 0 ? `mounted: ${d.mounts.map((m) => `${m.device} at ${m.mountPoint}`).join(', ')}` : d.swaps.length > 0 ? `swap: ${d.swaps.join(', ')}` : d.holders.length > 0 ? `used by ${d.holders.map((h) => `/dev/${h}`).join(', ')}` : 'free';
  return `${what.join(', ')}; ${where}`;
}

function size(bytes: number | undefined): string {
  if (bytes === undefined) return 'capacity unknown';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 || u === 0 ? 0 : 1)} ${units[u]}`;
}

/** Human-readable listing: one line per device, its device string first (copy into a config). */
export function formatDevices(list: DeviceList): string {
  const out: string[] = ['Kernel block devices:'];
  if (list.block.devices.length === 0) out.push(`  none found${list.block.problem ? ` (${list.block.problem})` : ''}`);
  for (const d of list.block.devices) out.push(`  ${d.partitionOf === undefined ? '' : '  '}${d.deviceString}  ${d.name}: ${blockFacts(d)}`);
  out.push('USB mass-storage devices:');
  if (list.usb.disks.length === 0) out.push(`  none found${list.usb.problem ? ` (${list.usb.problem})` : ''}`);
  for (const d of list.usb.disks) {
    const who = [d.manufacturer, d.product].filter(Boolean).join(' ') || 'unknown product';
    const held = d.kernelDriver ? `held by kernel driver ${d.kernelDriver} (detached automatically on open)` : d.kernelDriver === null ? 'no kernel driver' : 'kernel driver unknown';
    const access = d.accessible === false ? '; NO PERMISSION: add a udev rule for this VID/PID (see docs), then replug' : '';
    const kernel = d.blockDevice ? `; or through the kernel as block:${d.blockDevice}` : '';
    out.push(`  ${d.deviceString}  ${who}, serial ${d.serialNumber ?? '?'}, ${size(d.capacityBytes)}, ${held}${access}${kernel}`);
  }
  if (list.usb.disks.length > 0 && list.usb.problem) out.push(`  note: ${list.usb.problem}`);
  out.push(`Serial ports (${list.serial.source}):`);
  if (list.serial.ports.length === 0) out.push('  none found (looked for /dev/serial/by-id, /dev/ttyUSB*, /dev/ttyACM*, /dev/ttyAMA*)');
  for (const p of list.serial.ports) {
    const extra = [p.manufacturer, p.vendorId && p.productId ? `${p.vendorId}:${p.productId}` : undefined, p.byId ? `-> ${p.path}` : undefined].filter(Boolean).join(', ');
    out.push(`  ${p.deviceString}${extra ? `  ${extra}` : ''}${p.accessible === false ? '  NO PERMISSION' : ''}`);
  }
  if (list.serial.problem) out.push(`  hint: ${list.serial.problem}`);
  return out.join('\n') + '\n';
}

export interface HardwareOpenOptions {
  /** The volume's geometry: the device must use this block size and hold at least this many blocks. */
  readonly blockSizeBytes: number;
  readonly blockCount: number;
  /** usb-sim: only: create a missing disk image (sized to the volume). Default true. */
  readonly create?: boolean;
}

/**
 * Opens `usb:VID:PID[:SERIAL]`, `usb-sim:PATH` or `serial:PATH[?baud=N]` for a volume
 * (hal/devstring.ts dispatches here). The adapters are imported on first use, so a build or
 * platform without the native usb/serialport modules still runs memory: and loopback: volumes.
 * Hardware reports its own geometry, so it is checked against the volume here, at the edge.
 */
export async function openHardwareDevice(deviceString: string, o: HardwareOpenOptions): Promise<BlockDevice> {
  let dev: BlockDevice;
  if (deviceString.startsWith('usb:') || deviceString.startsWith('usb-sim:')) {
    const { openUsbDevice } = await import('./usb/device.js');
    dev = await openUsbDevice(deviceString, { blockSizeBytes: o.blockSizeBytes, blockCount: o.blockCount, create: o.create ?? true });
  } else if (deviceString.startsWith('serial:')) {
    const { openSerialDevice } = await import('./serial/device.js');
    dev = await openSerialDevice(deviceString);
  } else {
    throw new Error(`device string "${deviceString}" is not usb:, usb-sim: or serial:`);
  }
  const problem =
    dev.blockSizeBytes !== o.blockSizeBytes
      ? `device has ${dev.blockSizeBytes}-byte blocks but the volume uses ${o.blockSizeBytes}; set the volume's blockSize to ${dev.blockSizeBytes}`
      : dev.blockCount < o.blockCount
        ? `device holds ${dev.blockCount} blocks but the volume needs ${o.blockCount}; use a larger device or a smaller volume size`
        : undefined;
  if (problem) {
    await dev.close();
    throw sense.invalidField(dev.name, problem);
  }
  return dev;
}

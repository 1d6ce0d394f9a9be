// What Linux says about its kernel block devices (sd*, mmcblk*, loop*, dm-*, md*, nvme*, vd*),
// read from sysfs and /proc without opening a device: size, logical block size, read-only
// flag, model, partitions, holders (LVM, RAID, dm-crypt on top), mounts and swap. The
// `block:` adapter (hal/kernel-block.ts) checks these before it opens a device, and
// `geomirror devices` lists them. Written against /sys/dev/block/MAJ:MIN and
// /proc/self/mountinfo (major:minor per mount), so a device is found whatever its node is
// called (/dev/sdb, /dev/disk/by-id/..., /dev/mapper/vg-lv). The texts come in a SystemView so
// tests can present a mount table without mounting anything.
//
// hal/ imports nothing from src/.

import { existsSync, readFileSync, readdirSync, realpathSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export interface SystemView {
  /** Text of /proc/self/mountinfo. */
  readonly mountinfo: string;
  /** Text of /proc/swaps. */
  readonly swaps: string;
  /** The sysfs root (/sys). */
  readonly sysDir: string;
}

export function readSystemView(): SystemView {
  const read = (p: string): string => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  return { mountinfo: read('/proc/self/mountinfo'), swaps: read('/proc/swaps'), sysDir: '/sys' };
}

export interface MountEntry {
  /** "major:minor" of the mounted device. */
  readonly devId: string;
  readonly mountPoint: string;
  /** The mount source as the kernel reports it (/dev/sdb1, or a name for virtual file systems). */
  readonly source: string;
}

/** mountinfo fields: id parent major:minor root mountpoint opts ... - fstype source superopts. */
export function parseMountinfo(text: string): MountEntry[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f.length < 7 || dash < 0) continue;
    out.push({ devId: f[2]!, mountPoint: unescape(f[4]!), source: unescape(f[dash + 2] ?? '') });
  }
  return out;
}

/** "major:minor" of a device number as stat() returns it (glibc's dev_t encoding). */
export function devIdOf(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

export interface KernelBlockInfo {
  /** Kernel name: sdb, sdb1, mmcblk0p2, loop3, dm-0. */
  readonly name: string;
  /** "major:minor". */
  readonly devId: string;
  readonly sizeBytes: number;
  readonly logicalBlockSizeBytes: number;
  readonly readOnly: boolean;
  readonly removable: boolean;
  /** The whole disk this is a partition of, or undefined for a whole disk. */
  readonly partitionOf: string | undefined;
  /** What the device is: vendor and model, an LVM/dm name, a loop device's backing file. */
  readonly model: string | undefined;
  /** Partitions of a whole disk. */
  readonly partitions: readonly string[];
  /** Devices built on this one or its partitions (dm-0 for LVM or dm-crypt, md0 for RAID). */
  readonly holders: readonly string[];
  /** Mounts of this device or of its partitions. */
  readonly mounts: readonly { readonly device: string; readonly mountPoint: string }[];
  /** This device or its partitions in use as swap. */
  readonly swaps: readonly string[];
}

function readSys(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** What the device is, in words an operator recognises from the label or lsblk. */
function modelOf(sysBlockDir: string): string | undefined {
  const dmName = readSys(join(sysBlockDir, 'dm', 'name'));
  if (dmName) return `device-mapper ${dmName}`;
  const backing = readSys(join(sysBlockDir, 'loop', 'backing_file'));
  if (backing) return `loop device over ${backing}`;
  const device = join(sysBlockDir, 'device');
  // SCSI/USB/SATA: vendor + model; MMC/SD: name; virtio's "vendor" is a PCI id, not a word.
  const vendor = readSys(join(device, 'vendor'));
  const words = [vendor !== undefined && /^0x[0-9a-f]+$/i.test(vendor) ? undefined : vendor, readSys(join(device, 'model')) ?? readSys(join(device, 'name'))].filter((w) => w !== undefined && w !== '');
  if (words.length > 0) return words.join(' ');
  if (basename(sysBlockDir).startsWith('vd')) return 'virtio disk';
  const md = readSys(join(sysBlockDir, 'md', 'level'));
  return md ? `software RAID (${md})` : undefined;
}

/**
 * Facts about the block device "major:minor", or undefined when sysfs does not know it (no
 * such device, or no sysfs in this container).
 */
export function blockInfo(devId: string, view: SystemView): KernelBlockInfo | undefined {
  const link = join(view.sysDir, 'dev', 'block', devId);
  let dir: string;
  try {
    dir = realpathSync(link);
  } catch {
    return undefined;
  }
  const name = basename(dir);
  const isPartition = existsSync(join(dir, 'partition'));
  const diskDir = isPartition ? dirname(dir) : dir;
  const sectors = Number(readSys(join(dir, 'size')));
  const partitions = isPartition ? [] : list(dir).filter((e) => e.startsWith(name) && existsSync(join(dir, e, 'partition')));
  const family = [name, ...partitions];
  const familyDirs = [dir, ...partitions.map((p) => join(dir, p))];
  const holders = familyDirs.flatMap((d) => list(join(d, 'holders')));
  const familyIds = new Set(familyDirs.map((d) => readSys(join(d, 'dev'))).filter((x): x is string => x !== undefined));
  const mounts = parseMountinfo(view.mountinfo)
    .filter((m) => familyIds.has(m.devId) || family.some((n) => m.source === `/dev/${n}`))
    .map((m) => ({ device: m.source, mountPoint: m.mountPoint }));
  const swaps = view.swaps
    .split('\n')
    .slice(1)
    .map((l) => l.split(/\s+/)[0] ?? '')
    .filter((s) => family.some((n) => s === `/dev/${n}`));
  return {
    name,
    devId,
    sizeBytes: Number.isSafeInteger(sectors) ? sectors * 512 : 0, // sysfs counts 512-byte sectors for every device
    logicalBlockSizeBytes: Number(readSys(join(diskDir, 'queue', 'logical_block_size')) ?? 512),
    readOnly: readSys(join(dir, 'ro')) === '1',
    removable: readSys(join(diskDir, 'removable')) === '1',
    partitionOf: isPartition ? basename(diskDir) : undefined,
    model: modelOf(diskDir),
    partitions,
    holders,
    mounts,
    swaps,
  };
}

/**
 * Why the device cannot be given to geomirror without destroying something in use, as a phrase
 * naming the mount point or holder and the fix; undefined when it is free.
 */
export function inUseReason(info: KernelBlockInfo): string | undefined {
  const m = info.mounts[0];
  if (m) return `is mounted (${m.device} at ${m.mountPoint}); unmount it (umount ${m.mountPoint}) or pick another device`;
  if (info.swaps.length > 0) return `is in use as swap (${info.swaps.join(', ')}); swapoff it or pick another device`;
  if (info.holders.length > 0) {
    return `is in use by ${info.holders.map((h) => `/dev/${h}`).join(', ')} (LVM, dm-crypt or RAID built on it); give geomirror that device instead, or take it apart first`;
  }
  return undefined;
}

/** Device names sysfs lists that never hold user data worth offering (RAM disks, compressed swap). */
const unlistedPrefixes = ['ram', 'zram'];

/**
 * Every kernel block device with a size, whole disks first with their partitions after each,
 * for `geomirror devices`. Unattached loop devices (size 0) are left out.
 */
export function listKernelBlockDevices(view: SystemView = readSystemView()): KernelBlockInfo[] {
  const out: KernelBlockInfo[] = [];
  for (const name of list(join(view.sysDir, 'block')).sort()) {
    if (unlistedPrefixes.some((p) => name.startsWith(p))) continue;
    const devId = readSys(join(view.sysDir, 'block', name, 'dev'));
    const info = devId === undefined ? undefined : blockInfo(devId, view);
    if (info === undefined || info.sizeBytes === 0) continue;
    out.push(info);
    for (const p of info.partitions) {
      const pid = readSys(join(view.sysDir, 'block', name, p, 'dev'));
      const pinfo = pid === undefined ? undefined : blockInfo(pid, view);
      if (pinfo !== undefined && pinfo.sizeBytes > 0) out.push(pinfo);
    }
  }
  return out;
}

/** Which /dev/disk/by-id names to prefer: the bus a disk hangs on first, then world-wide names. */
const byIdPreference = ['usb-', 'ata-', 'nvme-', 'mmc-', 'scsi-', 'dm-name-', 'md-name-', 'wwn-'];

/**
 * The path to put in a cluster file for device `name`: a /dev/disk/by-id link when udev made
 * one (sdX names move between boots; by-id names follow the disk), /dev/mapper/NAME for a
 * device-mapper volume, else /dev/NAME.
 */
export function stableDevicePath(info: Pick<KernelBlockInfo, 'name' | 'model'>, devDir = '/dev'): string {
  const own = join(devDir, info.name);
  const byId = join(devDir, 'disk', 'by-id');
  const links = list(byId).filter((l) => {
    try {
      return realpathSync(join(byId, l)) === own;
    } catch {
      return false;
    }
  });
  const rank = (l: string): number => {
    const i = byIdPreference.findIndex((p) => l.startsWith(p));
    return i < 0 ? byIdPreference.length : i;
  };
  const best = links.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))[0];
  if (best !== undefined) return join(byId, best);
  if (info.model?.startsWith('device-mapper ')) {
    const mapper = join(devDir, 'mapper', info.model.slice('device-mapper '.length));
    if (existsSync(mapper)) return mapper;
  }
  return own;
}

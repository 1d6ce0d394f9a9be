// Which targets `geomirror flash` refuses: anything mounted (the target itself, a partition of
// it, or a loop device backed by it), anything used as swap, and the disk the running system
// lives on. Written against /proc/self/mountinfo (major:minor per mount, so it sees mounts
// whatever the device node is called) and /proc/swaps; the texts are parameters so tests can
// present a mount table without mounting anything (the same view and parser as the block:
// adapter's, hal/sysblock.ts).
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseMountinfo, readSystemView, type SystemView } from '../../hal/sysblock.js';

export { readSystemView, type SystemView };

export class TargetRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TargetRefused';
  }
}

const devIdOf = (rdev: number): string => `${Math.floor(rdev / 256) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;

/** major:minor of a block device and of its partitions, from /sys/class/block/NAME. */
function blockFamily(sysDir: string, name: string): { ids: string[]; names: string[] } {
  const ids: string[] = [];
  const names = [name];
  const dir = join(sysDir, 'class', 'block', name);
  const dev = join(dir, 'dev');
  if (existsSync(dev)) ids.push(readFileSync(dev, 'utf8').trim());
  if (existsSync(dir)) {
    for (const entry of readdirSync(dir)) {
      const pdev = join(dir, entry, 'dev');
      if (entry.startsWith(name) && existsSync(pdev)) {
        ids.push(readFileSync(pdev, 'utf8').trim());
        names.push(entry);
      }
    }
  }
  return { ids, names };
}

/** The whole-disk name (mmcblk0, sda) that holds block device major:minor, via /sys/dev/block. */
function diskOf(sysDir: string, devId: string): string | undefined {
  const link = join(sysDir, 'dev', 'block', devId);
  if (!existsSync(link)) return undefined;
  const real = realpathSync(link);
  return existsSync(join(real, 'partition')) ? basename(join(real, '..')) : basename(real);
}

/**
 * Throws TargetRefused when writing `target` would destroy something in use. A target that does
 * not exist yet is a new image file: nothing to check.
 */
export function checkTarget(target: string, view: SystemView = readSystemView()): void {
  if (!existsSync(target)) return;
  const path = realpathSync(target);
  const st = statSync(path);
  const mounts = parseMountinfo(view.mountinfo);
  const fix = 'unmount it first (umount), or pick another target';
  const mountedAt = mounts.find((m) => m.mountPoint === path);
  if (mountedAt) throw new TargetRefused(`${target}: is mounted (it is the mount point of ${mountedAt.source}); ${fix}`);
  if (st.isFile()) {
    // A loop device backed by this file, with the loop device (or a partition of it) mounted.
    const blockDir = join(view.sysDir, 'class', 'block');
    for (const name of existsSync(blockDir) ? readdirSync(blockDir) : []) {
      const backing = join(blockDir, name, 'loop', 'backing_file');
      if (!existsSync(backing) || readFileSync(backing, 'utf8').trim() !== path) continue;
      const fam = blockFamily(view.sysDir, name);
      const m = mounts.find((e) => fam.ids.includes(e.devId));
      if (m) throw new TargetRefused(`${target}: is mounted (through loop device /dev/${name}, at ${m.mountPoint}); ${fix}`);
    }
    return;
  }
  if (!st.isBlockDevice()) throw new TargetRefused(`${target}: is neither a regular file nor a block device; give an image file path or a disk such as /dev/sdX or /dev/mmcblk0`);
  const id = devIdOf(st.rdev);
  const own = join(view.sysDir, 'dev', 'block', id);
  if (existsSync(join(own, 'partition'))) {
    throw new TargetRefused(`${target}: is a partition of /dev/${diskOf(view.sysDir, id)}; give the whole disk (e.g. /dev/sdb, not /dev/sdb1) so the image's partition table lands on it`);
  }
  const name = diskOf(view.sysDir, id) ?? basename(path);
  const fam = blockFamily(view.sysDir, name);
  const familyIds = new Set([id, ...fam.ids]);
  const m = mounts.find((e) => familyIds.has(e.devId) || e.source === path || fam.names.some((n) => e.source === `/dev/${n}`));
  if (m) throw new TargetRefused(`${target}: is mounted (${m.source} at ${m.mountPoint}); ${fix}`);
  const swap = view.swaps.split('\n').slice(1).map((l) => l.split(/\s+/)[0]).find((s) => s !== undefined && fam.names.some((n) => s === `/dev/${n}`));
  if (swap) throw new TargetRefused(`${target}: ${swap} is in use as swap; swapoff it first, or pick another target`);
  const root = mounts.find((e) => e.mountPoint === '/');
  if (root && diskOf(view.sysDir, root.devId) === name) {
    throw new TargetRefused(`${target}: is the disk the running system lives on (/ is on it); pick the SD card's device (see lsblk)`);
  }
}

// A small disk image with the Raspberry Pi OS layout (MBR; partition 1 FAT32 type 0x0c at 4 MiB
// holding config.txt; partition 2 ext4 type 0x83), made with sfdisk, mkfs.vfat --offset,
// mkfs.ext4 -E offset and mcopy: no mounting, no root.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const bootOffsetBytes = 8192 * 512;
export const rootOffsetBytes = 139264 * 512;
export const imageBytes = 88 * 2 ** 20;
export const mtoolsEnv = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

export function makePiImage(dir: string, name: string, withFat = true): string {
  const img = join(dir, name);
  execFileSync('truncate', ['-s', String(imageBytes), img]);
  const table = withFat ? 'label: dos\nstart=8192, size=131072, type=c\nstart=139264, type=83\n' : 'label: dos\nstart=139264, type=83\n';
  execFileSync('sfdisk', ['-q', img], { input: table });
  if (withFat) {
    execFileSync('mkfs.vfat', ['-F', '32', '-n', 'BOOTFS', '--offset', '8192', img, '65536'], { stdio: 'ignore' });
    const cfg = join(dir, 'config.txt');
    writeFileSync(cfg, 'arm_64bit=1\n');
    execFileSync('mcopy', ['-i', `${img}@@${bootOffsetBytes}`, cfg, '::/'], { env: mtoolsEnv });
  }
  execFileSync('mkfs.ext4', ['-F', '-q', '-L', 'rootfs', '-E', `offset=${rootOffsetBytes}`, img, '20M'], { stdio: 'ignore' });
  return img;
}

/** A file from the FAT boot partition of `img`, read back with mtools. */
export function readFat(img: string, path: string): Buffer {
  return execFileSync('mcopy', ['-i', `${img}@@${bootOffsetBytes}`, `::${path}`, '-'], { env: mtoolsEnv, maxBuffer: 256 * 2 ** 20 });
}

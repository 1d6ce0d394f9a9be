// Loop devices for tests of `block:` (kernel block devices): `losetup -f --show FILE` as root.
// Where loop devices cannot be made (not root, no losetup, a container without /dev/loop-control)
// `loopUnavailable` says why, and the tests that need them skip with that reason.
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function probe(): string | undefined {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'loop devices need root (losetup); run the tests as root, as CI does';
  if (spawnSync('losetup', ['--version'], { stdio: 'ignore' }).status !== 0) return 'losetup is not installed (apt-get install mount)';
  const dir = mkdtempSync(join(tmpdir(), 'gm-loop-probe-'));
  try {
    const file = join(dir, 'probe.img');
    closeSync(openSync(file, 'w'));
    truncateSync(file, 1024 * 1024);
    const r = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8' });
    if (r.status !== 0) return `losetup -f cannot attach a loop device here: ${r.stderr.trim()}`;
    spawnSync('losetup', ['-d', r.stdout.trim()]);
    return undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Why loop devices are unavailable here, or undefined when tests can make them. */
export const loopUnavailable: string | undefined = probe();

/** Loop devices attached through this module and not yet detached. */
const attached = new Set<string>();

/** Attaches `file` (created sparse at `sizeBytes` when given) to a free loop device; returns /dev/loopN. */
export function attachLoop(file: string, opts: { sizeBytes?: number; sectorSizeBytes?: number } = {}): string {
  if (opts.sizeBytes !== undefined) {
    closeSync(openSync(file, 'w'));
    truncateSync(file, opts.sizeBytes);
  }
  const args = ['-f', '--show', ...(opts.sectorSizeBytes ? ['--sector-size', String(opts.sectorSizeBytes)] : []), file];
  const dev = execFileSync('losetup', args, { encoding: 'utf8' }).trim();
  attached.add(dev);
  return dev;
}

export function detachLoop(dev: string): void {
  spawnSync('losetup', ['-d', dev]);
  attached.delete(dev);
}

/** Detaches every loop device this module attached (afterAll). */
export function detachAllLoops(): void {
  for (const dev of [...attached]) detachLoop(dev);
}

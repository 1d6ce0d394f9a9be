// Storage that fails on demand, with real components (issue 16 acceptance): a sparse image file
// served by nbdkit's file plugin behind its error filter (every request fails with EPERM while a
// trigger file exists), exposed as a plain file through nbdfuse. A site's `loopback:` storage
// points at that file, so its writes, reads and fdatasync calls go through the kernel's FUSE
// path to nbdkit and fail with EPERM exactly while the test holds the trigger; the image itself
// is the site's storage as a disk would hold it (hash it, read it). Needs root and /dev/fuse;
// where they are missing `faultyStorageUnavailable` says why and the tests skip with that reason.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, mkdirSync, openSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function probe(): string | undefined {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'nbdfuse mounts need root here; run the tests as root, as CI does';
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing (no FUSE in this kernel or container)';
  if (spawnSync('nbdkit', ['--version'], { stdio: 'ignore' }).status !== 0) return 'nbdkit is not installed (apt-get install nbdkit)';
  if (spawnSync('nbdkit', ['--dump-plugin', 'file'], { stdio: 'ignore' }).status !== 0) return 'nbdkit has no file plugin (apt-get install nbdkit)';
  if (spawnSync('nbdkit', ['--filter=error', 'null', '--dump-plugin'], { stdio: 'ignore' }).status !== 0) return 'nbdkit has no error filter (apt-get install nbdkit)';
  if (spawnSync('nbdfuse', ['--version'], { stdio: 'ignore' }).status !== 0) return 'nbdfuse is not installed (apt-get install libnbd-bin)';
  return undefined;
}

/** Why faulty storage cannot be made here, or undefined when it can. */
export const faultyStorageUnavailable: string | undefined = probe();

const readyWaitMs = 10_000;

/** Every faulty storage started and not yet closed (closeAllFaultyStorage in afterAll). */
const open = new Set<FaultyStorage>();

export class FaultyStorage {
  /** The file a site uses as its storage (`loopback:` of it). */
  readonly devicePath: string;
  private readonly trigger: string;
  private readonly socket: string;
  private readonly mountDir: string;
  private nbdkit: ChildProcess | undefined;
  private fuse: ChildProcess | undefined;

  private constructor(readonly imagePath: string, readonly dir: string, readonly sizeBytes: number) {
    this.trigger = join(dir, 'eperm.trigger');
    this.socket = join(dir, 'nbdkit.sock');
    this.mountDir = join(dir, 'mnt');
    this.devicePath = join(this.mountDir, 'nbd');
  }

  /**
   * Makes `imagePath` (sparse, `sizeBytes`) and serves it as `<dir>/mnt/nbd`; nbdkit's and
   * nbdfuse's own messages go to `<dir>/fault.log`.
   */
  static async start(dir: string, imagePath: string, sizeBytes: number): Promise<FaultyStorage> {
    mkdirSync(dir, { recursive: true });
    if (!existsSync(imagePath)) {
      closeSync(openSync(imagePath, 'w'));
      truncateSync(imagePath, sizeBytes);
    }
    const f = new FaultyStorage(imagePath, dir, sizeBytes);
    open.add(f);
    mkdirSync(f.mountDir, { recursive: true });
    const log = createWriteStream(join(dir, 'fault.log'), { flags: 'a' });
    // -f: foreground (so the test owns the process); --exit-with-parent: never outlives the test.
    f.nbdkit = spawn('nbdkit', ['-f', '--exit-with-parent', '--unix', f.socket, '--filter=error', 'file', imagePath, 'error=EPERM', 'error-rate=100%', `error-file=${f.trigger}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    f.nbdkit.stdout!.pipe(log, { end: false });
    f.nbdkit.stderr!.pipe(log, { end: false });
    await waitFor(() => existsSync(f.socket), `nbdkit socket ${f.socket}`, () => f.nbdkit?.exitCode);
    f.fuse = spawn('nbdfuse', [f.mountDir, '--unix', f.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    f.fuse.stdout!.pipe(log, { end: false });
    f.fuse.stderr!.pipe(log, { end: false });
    await waitFor(() => {
      try {
        return statSync(f.devicePath).size === sizeBytes;
      } catch {
        return false;
      }
    }, `nbdfuse file ${f.devicePath}`, () => f.fuse?.exitCode);
    return f;
  }

  /** From now on every request to the storage fails with EPERM. */
  fail(): void {
    writeFileSync(this.trigger, '');
  }

  /** Requests succeed again. */
  clear(): void {
    rmSync(this.trigger, { force: true });
  }

  get failing(): boolean {
    return existsSync(this.trigger);
  }

  /** Unmounts (nbdfuse unmounts on SIGTERM; umount -l if it did not) and stops nbdkit. */
  async close(): Promise<void> {
    open.delete(this);
    this.clear();
    await stop(this.fuse);
    if (isMounted(this.mountDir)) spawnSync('umount', ['-l', this.mountDir], { stdio: 'ignore' });
    await stop(this.nbdkit);
  }
}

/** Closes every faulty storage still open (afterAll). */
export async function closeAllFaultyStorage(): Promise<void> {
  for (const f of [...open]) await f.close();
}

function isMounted(dir: string): boolean {
  const r = spawnSync('mountpoint', ['-q', dir]);
  return r.status === 0;
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
}

async function waitFor(ok: () => boolean, what: string, exitCode: () => number | null | undefined): Promise<void> {
  const deadline = Date.now() + readyWaitMs;
  while (!ok()) {
    const code = exitCode();
    if (code !== null && code !== undefined) throw new Error(`${what}: the process exited with code ${code}`);
    if (Date.now() > deadline) throw new Error(`${what} not ready within ${readyWaitMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// `geomirror flash`: from a Raspberry Pi OS image to a card that boots into a running,
// authenticated site (issue 11). Order matters for safety: everything that can refuse (config,
// site, bundle, tools, the image's partition table and FAT boot sector, the target's mount
// state, the operator's yes) runs BEFORE the first byte reaches the target.
//
// Files go into the FAT boot partition with mtools (mcopy -i TARGET@@OFFSET): no mount, no
// root for an image file, and mtools is the long-standing FAT implementation (long names,
// FAT12/16/32, free-space and directory bookkeeping) that a hand-written FAT32 writer would
// have to re-earn; its cost is one Debian package on the flashing machine.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, copyFileSync, createReadStream, createWriteStream, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, posix, relative } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import { packageRoot } from '../../src/cli/package-root.js';
import { loadConfig, type ClusterConfig } from '../../src/site/config.js';
import { siteCertFiles } from '../../src/site/pki.js';
import { bootSubdir, etcDir, metaData, networkConfig, userData, type ProvisionPlan } from './cloud-init.js';
import { checkFatBootSector, findBootPartition, mbrSectorBytes, parseMbr, type MbrPartition } from './mbr.js';
import { checkTarget, readSystemView, type SystemView } from './target-check.js';


export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
}

export const bundleFileName = (version: string): string => `geomirror-${version}-linux-arm64.tar.gz`;
export const defaultBundlePath = (): string => join(packageRoot, 'targets', 'rpi', 'dist', bundleFileName(packageVersion()));

/** Pi OS boot partitions start at 4 or 8 MiB; refuse images whose boot sector lies absurdly far in. */
export const bootPartitionOffsetBytesMax = 1024 * 2 ** 20;

export class FlashError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FlashError';
  }
}

export interface FlashOptions {
  image: string;
  configFile: string;
  site: string;
  out: string;
  bundle?: string;
  /** Skip the question. Without it, `confirm` decides. */
  yes: boolean;
  /** Asks the operator; absent (no terminal): flash refuses unless `yes`. */
  confirm?: (question: string) => Promise<boolean>;
  /** Mount table etc.; default the running system's. */
  system?: SystemView;
  /** Progress bar on stderr (off in tests). */
  progress?: boolean;
  log?: (line: string) => void;
}

export interface FlashResult {
  boot: MbrPartition;
  bundleSha256: string;
  /** Files written into the boot partition, as FAT paths. */
  files: string[];
  warnings: string[];
}

const isXz = (p: string): boolean => p.endsWith('.xz');

function requireTool(tool: string, why: string): void {
  const r = spawnSync(tool, ['--version'], { stdio: 'ignore' });
  if (r.error) throw new FlashError(`${why} needs the \`${tool}\` program, which is not installed; install it (Debian/Raspberry Pi OS: apt-get install ${tool === 'xz' ? 'xz-utils' : tool === 'mcopy' ? 'mtools' : tool})`);
}

/** The image's first `bytes` bytes (fewer if it is shorter), decompressing .xz on the fly. */
async function readImageHead(image: string, bytes: number): Promise<Buffer> {
  if (!isXz(image)) {
    const fd = openSync(image, 'r');
    try {
      const buf = Buffer.alloc(bytes);
      const n = readSync(fd, buf, 0, bytes, 0);
      return buf.subarray(0, n);
    } finally {
      closeSync(fd);
    }
  }
  const child = spawn('xz', ['-dc', '--', image], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  let have = 0;
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      chunks.push(d);
      have += d.length;
      if (have >= bytes) {
        child.stdout.destroy();
        child.kill();
      }
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (have < bytes && code !== 0) reject(new FlashError(`${image}: xz could not decompress it: ${stderr.trim() || `exit ${code}`}`));
      else resolve(Buffer.concat(chunks).subarray(0, bytes));
    });
  });
}

async function bootPartitionOf(read: (bytes: number) => Promise<Buffer>, what: string): Promise<MbrPartition> {
  const boot = findBootPartition(parseMbr(await read(mbrSectorBytes), what), what);
  if (boot.offsetBytes > bootPartitionOffsetBytesMax) throw new FlashError(`${what}: boot partition starts at byte ${boot.offsetBytes}, past ${bootPartitionOffsetBytesMax}; not a Raspberry Pi OS layout`);
  const head = await read(boot.offsetBytes + mbrSectorBytes);
  checkFatBootSector(head.subarray(boot.offsetBytes), boot, what);
  return boot;
}

function imageSizeBytes(image: string): number | undefined {
  if (!isXz(image)) return statSync(image).size;
  // `xz --robot --list`: the "totals" line's fifth field is the uncompressed size.
  const r = spawnSync('xz', ['--robot', '--list', '--', image], { encoding: 'utf8' });
  const totals = r.stdout?.split('\n').find((l) => l.startsWith('totals'));
  const n = totals ? Number(totals.split('\t')[4]) : NaN;
  return Number.isFinite(n) && n > 0 ? n : undefined;
}

/** Where the Pi must find the key so the cluster file's `secret: file:` path resolves there too. */
function keyDestination(config: ClusterConfig): string | undefined {
  if (config.secret.source !== 'file' || !config.secret.path) return undefined;
  const rel = relative(config.dir, config.secret.path);
  if (rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)) return posix.join(etcDir, ...rel.split(/[\\/]/));
  return config.secret.path;
}

/**
 * The TLS files a site needs ([source, name]), when the cluster runs TLS with its files beside the
 * key (the default layout, which the Pi reproduces); else undefined, with a warning when TLS is
 * on but the files are elsewhere or missing (copy them by hand, or geomirror pki init first).
 */
function tlsFilesFor(config: ClusterConfig, site: string, warnings: string[]): [string, string][] | undefined {
  if (config.transport === 'insecure' || config.secret.source !== 'file') return undefined;
  const f = siteCertFiles(config, site);
  if (config.tls.dir !== dirname(config.secret.path!)) {
    warnings.push(`tls: the certificates are not beside the key (${config.tls.dir}); copy ca.crt, site-${site}.crt and site-${site}.key to the Pi yourself`);
    return undefined;
  }
  const files: [string, string][] = [[config.tls.caCert, 'ca.crt'], [f.cert, `site-${site}.crt`], [f.key, `site-${site}.key`]];
  const missing = files.filter(([p]) => !existsSync(p)).map(([p]) => p);
  if (missing.length > 0) {
    warnings.push(`tls: ${missing.join(', ')} missing; make them with: geomirror pki init --config ${config.file} (the site will not start without them)`);
    return undefined;
  }
  return files;
}

function siteWarnings(config: ClusterConfig, site: string): string[] {
  const s = config.sites[site]!;
  const out: string[] = [];
  for (const dev of [...(s.cache ? [s.cache.device] : []), ...s.storage]) {
    if (dev.kind !== 'loopback') continue;
    const rel = relative(config.dir, dev.path);
    const onPi = !rel.startsWith('..') && !isAbsolute(rel) ? posix.join(etcDir, ...rel.split(/[\\/]/)) : dev.path;
    if (!onPi.startsWith('/var/lib/geomirror/')) {
      out.push(`site ${site}: ${dev.text} is ${onPi} on the Pi, which the unit cannot write (ProtectSystem=strict); use an absolute path under /var/lib/geomirror/ (the unit's StateDirectory)`);
    }
  }
  return out;
}

function mtools(args: string[], what: string): string {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
  if (r.error || r.status !== 0) throw new FlashError(`${what}: ${args[0]} failed: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  return r.stdout;
}

export async function flash(opts: FlashOptions): Promise<FlashResult> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  // 1. Everything that can refuse, target untouched.
  if (!opts.site) throw new FlashError('no site named: pass --site NAME (one of the sites of the cluster file)');
  const config = loadConfig(opts.configFile);
  if (!config.sites[opts.site]) {
    throw new FlashError(`site "${opts.site}" is not in ${config.file}; its sites are: ${config.siteNames.join(', ')}`);
  }
  const bundle = opts.bundle ?? defaultBundlePath();
  if (!existsSync(bundle)) throw new FlashError(`bundle ${bundle} does not exist; build it with \`npm run build:rpi\` or pass --bundle FILE`);
  if (!existsSync(opts.image)) throw new FlashError(`image ${opts.image} does not exist; download a Raspberry Pi OS Lite (64-bit) image (.img.xz) and pass its path`);
  requireTool('mcopy', 'writing files into the FAT boot partition');
  if (isXz(opts.image)) requireTool('xz', `reading ${opts.image}`);
  const bootInImage = await bootPartitionOf((n) => readImageHead(opts.image, n), opts.image);
  checkTarget(opts.out, opts.system ?? readSystemView());
  const warnings = siteWarnings(config, opts.site);
  for (const w of warnings) log(`warning: ${w}`);
  const targetExists = existsSync(opts.out);
  const isDevice = targetExists && statSync(opts.out).isBlockDevice();
  if (!opts.yes) {
    const question = `${targetExists ? 'Overwrite' : 'Create'} ${opts.out}${isDevice ? ' (a block device: everything on it is lost)' : ''} with ${opts.image} for site ${opts.site}?`;
    if (!opts.confirm) throw new FlashError(`${question} Cannot ask: no terminal. Pass --yes to write without asking.`);
    if (!(await opts.confirm(question))) throw new FlashError(`not confirmed; ${opts.out} left as it was`);
  }

  // 2. The image, with progress.
  const total = imageSizeBytes(opts.image);
  // O_EXCL on a Linux block device fails with EBUSY while anything (a mount, swap, a partition in
  // use) holds it: a second, kernel-side guard behind checkTarget.
  let fd: number;
  try {
    fd = openSync(opts.out, isDevice ? constants.O_RDWR | constants.O_EXCL : 'w');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') throw new FlashError(`${opts.out}: the kernel reports it busy (mounted or in use); unmount its partitions first`);
    if (code === 'EACCES' || code === 'EPERM') throw new FlashError(`${opts.out}: no permission to write it; run with sudo (block devices) or pick a writable path`);
    throw err;
  }
  const bar = opts.progress ? new cliProgress.SingleBar({ format: 'writing {bar} {percentage}% | {value}/{total} MiB', stream: process.stderr }, cliProgress.Presets.shades_classic) : undefined;
  const mib = 2 ** 20;
  let written = 0;
  bar?.start(total ? Math.ceil(total / mib) : 0, 0);
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      written += chunk.length;
      bar?.update(Math.floor(written / mib));
      cb(null, chunk);
    },
  });
  try {
    if (isXz(opts.image)) {
      const xz = spawn('xz', ['-dc', '--', opts.image], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise<number | null>((r) => xz.once('close', r));
      await pipeline(xz.stdout, counter, createWriteStream('', { fd, autoClose: false }));
      const code = await exited;
      if (code !== 0) throw new FlashError(`${opts.image}: xz exited with ${code} while decompressing; ${opts.out} is incomplete, flash again`);
    } else {
      await pipeline(createReadStream(opts.image), counter, createWriteStream('', { fd, autoClose: false }));
    }
    fsyncSync(fd);
  } finally {
    bar?.stop();
    closeSync(fd);
  }
  log(`wrote ${written} bytes of ${opts.image} to ${opts.out}`);

  // 3. Files into the boot partition of what is now on the target.
  const boot = await bootPartitionOf((n) => readImageHead(opts.out, n), opts.out);
  if (boot.offsetBytes !== bootInImage.offsetBytes) throw new FlashError(`${opts.out}: boot partition read back at byte ${boot.offsetBytes}, the image has it at ${bootInImage.offsetBytes}; the write did not land, flash again`);
  const img = `${opts.out}@@${boot.offsetBytes}`;
  const stage = mkdtempSync(join(tmpdir(), 'geomirror-flash-'));
  try {
    const bundleName = posix.basename(bundle.replace(/\\/g, '/'));
    const bundleSha256 = createHash('sha256').update(readFileSync(bundle)).digest('hex');
    const keyDest = keyDestination(config);
    // Issue 17: the site needs the cluster CA and its own certificate and key, beside the key.
    const tlsFiles = tlsFilesFor(config, opts.site, warnings);
    const plan: ProvisionPlan = {
      site: opts.site,
      bundleName,
      ...(keyDest ? { key: { name: 'cluster.key', destPath: keyDest } } : {}),
      ...(keyDest && tlsFiles ? { tls: 'tls' } : {}),
      instanceId: `geomirror-${opts.site}-${Date.now()}`,
    };
    const sub = join(stage, bootSubdir);
    mkdirSync(sub);
    copyFileSync(bundle, join(sub, bundleName));
    writeFileSync(join(sub, `${bundleName}.sha256`), `${bundleSha256}  ${bundleName}\n`);
    copyFileSync(config.file, join(sub, 'cluster.yaml'));
    if (plan.key) copyFileSync(config.secret.path!, join(sub, plan.key.name));
    if (plan.tls && tlsFiles) {
      mkdirSync(join(sub, plan.tls));
      for (const [from, name] of tlsFiles) copyFileSync(from, join(sub, plan.tls, name));
    }
    writeFileSync(join(sub, 'site'), `${opts.site}\n`);
    writeFileSync(join(stage, 'user-data'), userData(plan));
    writeFileSync(join(stage, 'meta-data'), metaData(plan));
    const top = ['user-data', 'meta-data'];
    const hasNetworkConfig = spawnSync('mdir', ['-i', img, '-b', '::/network-config'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, stdio: 'ignore' }).status === 0;
    if (!hasNetworkConfig) {
      writeFileSync(join(stage, 'network-config'), networkConfig());
      top.push('network-config');
    }
    // -o: overwrite same-named files (the image ships its own user-data); -s: recurse into geomirror/.
    mtools(['mcopy', '-i', img, '-o', '-s', sub, '::/'], opts.out);
    mtools(['mcopy', '-i', img, '-o', ...top.map((f) => join(stage, f)), '::/'], opts.out);
    const files = [...top.map((f) => `/${f}`), ...['cluster.yaml', 'site', bundleName, `${bundleName}.sha256`, ...(plan.key ? [plan.key.name] : []), ...(plan.tls && tlsFiles ? tlsFiles.map(([, n]) => `${plan.tls}/${n}`) : [])].map((f) => `/${bootSubdir}/${f}`)];
    log(`site ${opts.site}: ${files.length} files in the boot partition (partition ${boot.index} at byte ${boot.offsetBytes}); bundle sha256 ${bundleSha256}`);
    return { boot, bundleSha256, files, warnings };
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}


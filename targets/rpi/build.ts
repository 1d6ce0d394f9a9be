// `npm run build:rpi` (node --import tsx targets/rpi/build.ts [--out-dir DIR]): builds on any
// Linux machine the Raspberry Pi bundle geomirror-<version>-linux-arm64.tar.gz (issue 11):
//
//   geomirror-<version>-linux-arm64/
//     bin/geomirror                 runs lib/src/cli/main.js with the system's node (>= 20)
//     lib/                          the compiled JavaScript of `npm run build` (dist/) + package.json
//     lib/node_modules/             production dependencies with their linux-arm64 native parts
//     systemd/geomirror@.service    one unit instance per site
//     install.sh                    user, config, key, unit, udev rules
//     README.md
//
// Native parts: serialport's @serialport/bindings-cpp carries prebuilds/linux-arm64 inside the
// package (node-gyp-build picks it at load time); usb and @node-rs/crc32 are napi-rs packages
// whose binaries are per-platform optional dependencies, which `npm install --os=linux
// --cpu=arm64 --libc=glibc` selects. Install scripts are skipped: nothing compiles, and nothing
// is fetched when the Pi runs it.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleFileName } from './flash.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = resolve(here, '../..');

/** Native files the bundle must carry, relative to lib/node_modules; checked after install. */
export const arm64NativeParts = [
  '@node-usb/usb-linux-arm64-gnu',
  '@node-rs/crc32-linux-arm64-gnu',
  '@serialport/bindings-cpp/prebuilds/linux-arm64',
] as const;

/** Dependencies that only serve development (tsx runs TypeScript; the bundle ships JavaScript). */
const devOnlyDeps = ['tsx'];

export interface BuildResult {
  tarball: string;
  sha256: string;
  version: string;
}

function run(cmd: string, args: string[], cwd: string): void {
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });
}

/** Package folders that never run (tests, benchmarks, docs of dependencies): dead weight on an SD card. */
const prunedPackageDirs = new Set(['test', 'tests', '__tests__', 'benchmarks', 'benchmark', 'bench', 'docs', 'example', 'examples', '.github']);

function pruneNodeModules(nm: string): void {
  const packages = readdirSync(nm).flatMap((n) => (n.startsWith('@') ? readdirSync(join(nm, n)).map((m) => join(nm, n, m)) : n.startsWith('.') ? [] : [join(nm, n)]));
  for (const dir of packages) {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory() && prunedPackageDirs.has(entry.name)) rmSync(join(dir, entry.name), { recursive: true, force: true });
    }
  }
}

export interface BuildOptions {
  /** Keep the pruned arm64 node_modules here, keyed by the lock file, and reuse it (tests). */
  depsCacheDir?: string;
  /** Scratch folder for staging (default targets/rpi/build; tests use their own). */
  workDir?: string;
}

export function buildBundle(outDir = join(here, 'dist'), opts: BuildOptions = {}): BuildResult {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
    name: string;
    version: string;
    description: string;
    license: string;
    engines: Record<string, string>;
    dependencies: Record<string, string>;
  };
  const name = `geomirror-${pkg.version}-linux-arm64`;
  const work = opts.workDir ?? join(here, 'build');
  rmSync(work, { recursive: true, force: true });
  const log = (line: string): void => void process.stderr.write(`build:rpi: ${line}\n`);

  // The same compiled JavaScript as the npm package (scripts/build.mjs: tsc -b
  // tsconfig.build.json into dist/, skipped when current), without source maps.
  log('building dist/ (npm run build) when it is older than the sources');
  run(process.execPath, [join(root, 'scripts', 'build.mjs')], root);

  const stage = join(work, 'stage', name);
  const lib = join(stage, 'lib');
  mkdirSync(lib, { recursive: true });
  for (const dir of ['src', 'hal', 'targets']) cpSync(join(root, 'dist', dir), join(lib, dir), { recursive: true, filter: (src) => !src.endsWith('.map') });

  const dependencies = Object.fromEntries(Object.entries(pkg.dependencies).filter(([n]) => !devOnlyDeps.includes(n)));
  writeFileSync(
    join(lib, 'package.json'),
    JSON.stringify({ name: pkg.name, version: pkg.version, description: pkg.description, license: pkg.license, type: 'module', private: true, engines: pkg.engines, dependencies }, null, 2) + '\n',
  );
  const nm = join(lib, 'node_modules');
  const lock = readFileSync(join(root, 'package-lock.json'));
  const depsKey = createHash('sha256').update(lock).update(JSON.stringify(dependencies)).update('linux-arm64-glibc').digest('hex').slice(0, 16);
  const cached = opts.depsCacheDir ? join(opts.depsCacheDir, `deps-${depsKey}`) : undefined;
  if (cached && existsSync(cached)) {
    log(`production dependencies for linux-arm64 from ${cached}`);
    cpSync(cached, nm, { recursive: true });
  } else {
    // The project's lock file pins every transitive version; npm drops what only tsx needed.
    writeFileSync(join(lib, 'package-lock.json'), lock);
    log('installing production dependencies for linux-arm64 (glibc)');
    run('npm', ['install', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--os=linux', '--cpu=arm64', '--libc=glibc'], lib);
    rmSync(join(lib, 'package-lock.json'));
    pruneNodeModules(nm);
    if (cached) {
      const part = `${cached}.part-${process.pid}`;
      cpSync(nm, part, { recursive: true });
      renameSync(part, cached);
    }
  }
  for (const part of arm64NativeParts) {
    if (!existsSync(join(nm, part))) throw new Error(`build:rpi: ${part} is missing from the arm64 install; the bundle would not load on a Pi (check the npm registry and the package versions in package.json)`);
  }
  // Other platforms' prebuilds are dead weight on a Pi.
  const prebuilds = join(nm, '@serialport', 'bindings-cpp', 'prebuilds');
  for (const dir of readdirSync(prebuilds)) if (dir !== 'linux-arm64') rmSync(join(prebuilds, dir), { recursive: true, force: true });

  mkdirSync(join(stage, 'bin'));
  // Dynamic import keeps this extensionless file valid whatever module type node assumes for it.
  writeFileSync(join(stage, 'bin', 'geomirror'), "#!/usr/bin/env node\nimport('../lib/src/cli/main.js');\n");
  chmodSync(join(stage, 'bin', 'geomirror'), 0o755);
  mkdirSync(join(stage, 'systemd'));
  cpSync(join(here, 'geomirror@.service'), join(stage, 'systemd', 'geomirror@.service'));
  cpSync(join(here, 'install.sh'), join(stage, 'install.sh'));
  chmodSync(join(stage, 'install.sh'), 0o755);
  cpSync(join(here, 'README.md'), join(stage, 'README.md'));

  mkdirSync(outDir, { recursive: true });
  const tarball = join(outDir, bundleFileName(pkg.version));
  log(`packing ${tarball}`);
  run('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-czf', tarball, '-C', join(work, 'stage'), name], root);
  const sha256 = createHash('sha256').update(readFileSync(tarball)).digest('hex');
  log(`done: ${tarball} sha256 ${sha256}`);
  return { tarball, sha256, version: pkg.version };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--out-dir');
  buildBundle(i > 0 && process.argv[i + 1] ? resolve(process.argv[i + 1]!) : undefined);
}

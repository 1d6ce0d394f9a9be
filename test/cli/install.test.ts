// The product as an operator gets it (issue 19 item 1), from a clean copy of this repository:
//   - `npm ci && npm start` serves NBD, and the banner's `npx geomirror status ...` line works;
//     every site runs the compiled dist/, never tsx;
//   - `npm pack` ships only what runs; `npm install -g ./geomirror-*.tgz` (into a temp prefix)
//     puts a `geomirror` on PATH that loads no tsx module (and for --help nothing but the command
//     line: commander, no yaml, X.509 or site), and the install is small;
//   - upgrading is the same command with a newer tarball;
//   - the shipped systemd unit passes `systemd-analyze verify` against the installed binary.
// These are the install and upgrade commands docs/OPERATIONS.md shows. The copy holds the
// working tree's tracked and untracked-but-not-ignored files (what a commit of everything would
// hold), so a run before committing tests what will be committed. Timings are printed for the
// record, never asserted.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../net/helpers.js';
import { helpMayLoad, moduleTracer } from './module-trace.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const has = (cmd: string, args: string[], cwd?: string): boolean => spawnSync(cmd, args, { cwd, stdio: 'ignore' }).status === 0;
const noGitCheckout = !has('git', ['rev-parse', '--is-inside-work-tree'], repoRoot);
const noSystemdAnalyze = !has('systemd-analyze', ['--version']);
const run = promisify(execFile);

/** The environment of a shell outside npm: no npm_* settings leaking from `npm test`. */
function shellEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^npm_/i.test(k) || k === 'INIT_CWD') delete env[k];
  return { ...env, ...extra };
}

const work = mkdtempSync(join(tmpdir(), 'geomirror-install-'));
const copy = join(work, 'geomirror');
const prefix = join(work, 'prefix');
let tarball = '';
let version = '';
const children: ChildProcess[] = [];
/** The commands run below, as docs/OPERATIONS.md writes them (without the temp prefix and cache flags). */
const ran = new Set<string>();

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) process.kill(-c.pid!, 'SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

/** Runs a command in a shell's environment; rejects with its output on failure. */
async function sh(cmd: string, args: string[], cwd: string, env = shellEnv()): Promise<string> {
  try {
    const r = await run(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    return r.stdout;
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${x.message}\n${x.stdout ?? ''}\n${x.stderr ?? ''}`);
  }
}

describe.skipIf(noGitCheckout)(`installing geomirror${noGitCheckout ? ' (skipped: not a git checkout, so there is no clean copy to make)' : ''}`, async () => {
  beforeAll(async () => {
    mkdirSync(copy);
    const files = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repoRoot, encoding: 'utf8' }).stdout.split('\0');
    const present = files.filter((f) => f !== '' && existsSync(join(repoRoot, f)));
    const tar = spawnSync('sh', ['-c', `tar --null -T - -cf - | tar -xf - -C '${copy}'`], { cwd: repoRoot, input: present.join('\0') });
    expect(tar.status, String(tar.stderr)).toBe(0);
    const t = performance.now();
    await sh('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], copy);
    ran.add('npm ci');
    process.stdout.write(`npm ci in a clean copy (installs, then builds dist/ in prepare): ${((performance.now() - t) / 1000).toFixed(1)} s\n`);
    version = (JSON.parse(readFileSync(join(copy, 'package.json'), 'utf8')) as { version: string }).version;
  }, 300_000);

  it('npm ci && npm start serves NBD; the sites run dist/ without tsx; the banner status command works', async () => {
    expect(existsSync(join(copy, 'dist', 'src', 'cli', 'main.js')), 'npm ci built dist/').toBe(true);
    // The shipped demo file has fixed ports; this copy's gets free ones so parallel runs and
    // other tests cannot collide. Nothing else changes.
    const cfgFile = join(copy, 'targets', 'loopback', 'cluster.yaml');
    const cfg = readFileSync(cfgFile, 'utf8');
    const oldPorts = [...new Set([...cfg.matchAll(/127\.0\.0\.1:(\d+)/g)].map((m) => m[1]!))];
    const newPorts = new Map<string, number>();
    for (const p of oldPorts) newPorts.set(p, await freePort());
    writeFileSync(cfgFile, cfg.replace(/127\.0\.0\.1:(\d+)/g, (_, p: string) => `127.0.0.1:${newPorts.get(p)}`));
    const nbdUri = `nbd://127.0.0.1:${newPorts.get('10809')}/vol0`;

    const t0 = performance.now();
    const child = spawn('npm', ['start'], { cwd: copy, env: shellEnv(), detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
    try {
      let servedMs: number | undefined;
      while (servedMs === undefined && performance.now() - t0 < 60_000 && child.exitCode === null) {
        if (spawnSync('nbdinfo', ['--size', nbdUri], { stdio: 'ignore' }).status === 0) servedMs = performance.now() - t0;
        else await new Promise((r) => setTimeout(r, 100));
      }
      expect(servedMs, `nbdinfo never answered on ${nbdUri}; npm start said:\n${out}`).toBeDefined();
      process.stdout.write(`npm start -> first successful nbdinfo: ${(servedMs! / 1000).toFixed(1)} s\n`);

      while (!out.includes('Ctrl-C stops every site') && performance.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 50));
      const statusLine = out.split('\n').find((l) => l.includes(' status --config '))?.trim();
      expect(statusLine, out).toBe('npx geomirror status --config targets/loopback/cluster.yaml');
      const status = await sh('sh', ['-c', statusLine!], copy);
      for (const site of ['local', 'east', 'west']) expect(status, status).toMatch(new RegExp(`^${site}\\b`, 'm'));

      // Every node process of this copy: the three sites run dist/src/cli/main.js; no tsx anywhere.
      const ours = readdirSync('/proc')
        .filter((p) => /^\d+$/.test(p))
        .map((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
          } catch {
            return '';
          }
        })
        .filter((c) => c.includes(copy));
      const sites = ours.filter((c) => c.includes(' site --config '));
      expect(sites, ours.join('\n')).toHaveLength(3);
      for (const c of sites) expect(c).toContain(join(copy, 'dist', 'src', 'cli', 'main.js'));
      expect(ours.filter((c) => c.includes('tsx'))).toEqual([]);
    } finally {
      process.kill(-child.pid!, 'SIGINT'); // Ctrl-C in the terminal: the whole process group
    }
    // geomirror start exits 0; npm, also hit by the Ctrl-C, then ends itself with SIGINT.
    const end = await exited;
    expect(end.code === 0 || end.signal === 'SIGINT', `${JSON.stringify(end)}\n${out}`).toBe(true);
    expect(out).toContain('every site stopped cleanly');
  });

  it('npm pack ships only what runs', async () => {
    const packed = JSON.parse(await sh('npm', ['pack', '--json', '--no-fund'], copy)) as { filename: string; files: { path: string }[] }[];
    tarball = join(copy, packed[0]!.filename);
    ran.add('npm pack');
    const files = packed[0]!.files.map((f) => f.path);
    for (const f of ['bin/geomirror.mjs', 'dist/src/cli/main.js', 'dist/hal/blockdev.js', 'targets/loopback/cluster.yaml', 'targets/systemd/geomirror@.service', 'package.json', 'README.md']) {
      expect(files, f).toContain(f);
    }
    const stray = files.filter((f) => /^(test|bench|docs|scripts|src|hal|types)\//.test(f) || f.endsWith('.ts') || f.endsWith('.map') || f.includes('tsbuildinfo'));
    expect(stray).toEqual([]);
  }, 120_000);

  it('npm install -g puts a geomirror on PATH that runs compiled JavaScript, loads no tsx, and is small', async () => {
    await sh('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', `./${basename(tarball)}`], copy);
    ran.add(`npm install -g ./${basename(tarball)}`);
    const env = shellEnv({ PATH: `${join(prefix, 'bin')}:${process.env.PATH}` });
    const help = await sh('geomirror', ['--help'], work, env);
    expect(help).toMatch(/^Usage: geomirror \[options\] \[command\]/);
    ran.add('geomirror --help');
    expect((await sh('geomirror', ['--version'], work, env)).trim()).toBe(version);
    ran.add('geomirror --version');

    // Every module the process resolves (test/cli/module-trace.ts): no tsx, and for --help
    // nothing but commander and the command line (what keeps it under 0.5 s).
    const trace = moduleTracer(work)(env);
    await sh('geomirror', ['--help'], work, trace.env);
    const resolved = trace.resolved();
    const installedUrl = `${pathToFileURL(realpathSync(join(prefix, 'lib', 'node_modules', 'geomirror'))).href}/`;
    expect(resolved, resolved.join('\n')).toContain(`${installedUrl}dist/src/cli/main.js`);
    expect(resolved.filter((u) => /tsx|typescript/.test(u))).toEqual([]);
    expect([...new Set(resolved.filter((u) => !helpMayLoad(u, installedUrl)))], 'the installed geomirror --help loaded').toEqual([]);
    expect(existsSync(join(prefix, 'lib', 'node_modules', 'geomirror', 'node_modules', 'tsx'))).toBe(false);

    const walls: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      spawnSync('geomirror', ['--help'], { env, stdio: 'ignore' });
      walls.push(performance.now() - t);
    }
    const bare: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      spawnSync(process.execPath, ['-e', '0'], { stdio: 'ignore' });
      bare.push(performance.now() - t);
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    const kib = Number(spawnSync('du', ['-sk', prefix], { encoding: 'utf8' }).stdout.split('\t')[0]);
    process.stdout.write(`installed geomirror --help: median ${median(walls).toFixed(0)} ms (bare node -e 0: ${median(bare).toFixed(0)} ms); du -sk of the prefix: ${kib} KiB\n`);
    expect(kib, 'installed size in KiB (goal: at most 60 MiB)').toBeLessThanOrEqual(60 * 1024);
  }, 180_000);

  it('the installed geomirror runs a cluster from its own files, and its banner names `geomirror status`, which works', async () => {
    const env = shellEnv({ PATH: `${join(prefix, 'bin')}:${process.env.PATH}` });
    const site = join(work, 'site');
    mkdirSync(site);
    const [p1, p2, n, a1, a2, a3] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    const cfg = join(site, 'cluster.yaml');
    writeFileSync(
      cfg,
      `cluster: installed
secret: file:./data/cluster.key
volume: { name: vol0, size: 16MiB, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:${n}, admin: 127.0.0.1:${a1}, cache: { device: "loopback:./data/local.cache", size: 8MiB }, storage: ["loopback:./data/local.img"], mirrors: [east, west] }
  east: { role: mirror, listen: 127.0.0.1:${p1}, admin: 127.0.0.1:${a2}, cache: { device: "loopback:./data/east.cache", size: 8MiB }, storage: ["loopback:./data/east.img"] }
  west: { role: mirror, listen: 127.0.0.1:${p2}, admin: 127.0.0.1:${a3}, cache: { device: "loopback:./data/west.cache", size: 8MiB }, storage: ["loopback:./data/west.img"] }
`,
    );
    const child = spawn('geomirror', ['start', '--config', cfg], { cwd: site, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 60_000;
      while (!out.includes('Ctrl-C stops every site') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
      const statusLine = out.split('\n').find((l) => l.includes(' status --config '))?.trim();
      expect(statusLine, out).toBe('geomirror status --config cluster.yaml');
      const status = await sh('sh', ['-c', statusLine!], site, env);
      for (const name of ['local', 'east', 'west']) expect(status, status).toMatch(new RegExp(`^${name}\\b`, 'm'));
      ran.add('geomirror status --config FILE');
      const installedMain = join(prefix, 'lib', 'node_modules', 'geomirror', 'dist', 'src', 'cli', 'main.js');
      const sites = readdirSync('/proc')
        .filter((p) => /^\d+$/.test(p))
        .map((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
          } catch {
            return '';
          }
        })
        .filter((c) => c.includes(` site --config ${cfg} `));
      expect(sites, 'site processes').toHaveLength(3);
      for (const c of sites) expect(c).toContain(installedMain);
    } finally {
      process.kill(-child.pid!, 'SIGINT');
    }
    expect(await exited, out).toBe(0);
  }, 120_000);

  it('upgrades in place: npm install -g of a newer tarball replaces the installed one', async () => {
    // A "newer release": the same package with the patch version raised, packed as-is.
    const up = join(work, 'upgrade');
    mkdirSync(up);
    await sh('tar', ['-xzf', tarball, '-C', up], up);
    const manifestFile = join(up, 'package', 'package.json');
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as { version: string };
    const [major, minor, patch] = version.split('-')[0]!.split('.').map(Number) as [number, number, number];
    manifest.version = `${major}.${minor}.${patch + 1}`;
    writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
    const newer = join(up, (JSON.parse(await sh('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', up], join(up, 'package'))) as { filename: string }[])[0]!.filename);

    const env = shellEnv({ PATH: `${join(prefix, 'bin')}:${process.env.PATH}` });
    await sh('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', `./${basename(newer)}`], up);
    ran.add(`npm install -g ./${basename(newer)}`);
    expect((await sh('geomirror', ['--version'], work, env)).trim()).toBe(manifest.version);
  }, 180_000);

  it.skipIf(noSystemdAnalyze)(`the installed systemd unit passes systemd-analyze verify against the installed geomirror${noSystemdAnalyze ? ' (skipped: no systemd-analyze; apt-get install systemd)' : ''}`, async () => {
    // Where the docs copy it from: "$(npm root -g)/geomirror/targets/systemd/geomirror@.service".
    const globalRoot = (await sh('npm', ['root', '-g', '--prefix', prefix], work)).trim();
    const unit = readFileSync(join(globalRoot, 'geomirror', 'targets', 'systemd', 'geomirror@.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=geomirror site --config \$\{GEOMIRROR_CONFIG\} --site %i$/m);
    // Hardened as far as block devices allow: own user, no privileges, read-only system, only
    // storage-class devices, and never PrivateDevices (it would hide /dev/sdX).
    const lines = unit.split('\n');
    for (const l of ['User=geomirror', 'NoNewPrivileges=yes', 'CapabilityBoundingSet=', 'ProtectSystem=strict', 'ProtectHome=yes', 'PrivateTmp=yes', 'DevicePolicy=closed', 'DeviceAllow=block-sd rw', 'DeviceAllow=block-loop rw', 'DeviceAllow=block-device-mapper rw', 'StateDirectory=geomirror', 'UMask=0077', 'Restart=on-failure']) {
      expect(lines, l).toContain(l);
    }
    expect(unit).not.toMatch(/^PrivateDevices=yes/m);
    // systemd finds a bare `geomirror` in /usr/bin or /usr/local/bin, where `npm install -g`
    // puts it on a real host; here the install is in a temp prefix, so point verify at it.
    const inst = join(work, 'geomirror@east.service');
    writeFileSync(inst, unit.replace(/^ExecStart=geomirror /m, `ExecStart=${join(prefix, 'bin', 'geomirror')} `));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', inst], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(`${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('geomirror@'))).toEqual([]);

    // The same check fails for a broken unit (so it can fail).
    const bad = join(work, 'geomirror@bad.service');
    writeFileSync(bad, readFileSync(inst, 'utf8').replace('Restart=on-failure', 'Restart=on-failur'));
    const b = spawnSync('systemd-analyze', ['verify', '--man=no', bad], { encoding: 'utf8' });
    expect(`${b.stdout}${b.stderr}`).toContain('geomirror@bad.service');
  });

  it('docs/OPERATIONS.md shows for install and upgrade only npm and geomirror commands this test ran', () => {
    const doc = readFileSync(join(repoRoot, 'docs', 'OPERATIONS.md'), 'utf8');
    const section = (title: string): string => doc.slice(doc.indexOf(`\n## ${title}\n`), doc.indexOf('\n## ', doc.indexOf(`\n## ${title}\n`) + 1));
    const installText = section('Install');
    const shown = [installText.slice(0, installText.indexOf('### Run a site')), section('Upgrade')]
      .flatMap((t) => [...t.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.split('\n')))
      .map((l) => l.replace(/#.*$/, '').replace(/^sudo /, '').trim())
      .filter((l) => /^(npm|geomirror) /.test(l));
    const versionless = (c: string): string => c.replace(/geomirror-\d+\.\d+\.\d+(-[\w.]+)?\.tgz/, 'geomirror-VERSION.tgz').replace(/--config \S+/, '--config FILE');
    expect(shown.length).toBeGreaterThanOrEqual(5);
    const ranVersionless = new Set([...ran].map(versionless));
    for (const c of shown) expect(ranVersionless, c).toContain(versionless(c));
  });
});

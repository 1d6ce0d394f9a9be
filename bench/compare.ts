// npm run bench (issue 8 item 5): fio over NBD against geomirror and its peers, in one run.
//
//   node --import tsx bench/compare.ts [--seconds 10] [--repeat 3] [--size 1GiB] [--profile]
//
// Systems, all on loopback/sparse files in one temp dir, all up for the whole run:
//   geomirror-3    geomirror primary + 2 mirrors, three site processes (three copies), with the
//                  default mutual TLS 1.3 on the replication links (issue 17)
//   geomirror-3-insecure  the same cluster with transport: insecure (plain TCP): the TLS cost is
//                  the ratio geomirror-3 / geomirror-3-insecure
//   qemu-quorum-3  qemu-nbd, quorum driver, vote-threshold=3 over three `nbdkit file` children:
//                  three copies, a write completes when all three children have it
//   nbdkit-1       `nbdkit file` alone: one copy, no replication (the ceiling)
//   geomirror-1    geomirror primary with no mirror (our own overhead)
//   floor-3        bench/floor.mjs: a minimal Node.js three-copy pipeline with geomirror's
//                  durability steps and nothing else (plain TCP): what the runtime allows
// --profile runs the three geomirror-3 sites under node --cpu-prof and appends each one's top
// self-time functions. Points: 4 KiB randwrite QD1, 4 KiB randwrite QD16, 1 MiB sequential write QD4 (fio
// --ioengine=nbd). Each repeat runs every point on every system, rotating the system order so
// no system always runs first (page cache warm-up and neighbours' noise spread evenly).
// Output: bench/results/<timestamp>.json and .svg, and a table in bench/README.md between
// markers. RSS of every geomirror process is sampled from /proc/<pid>/status while fio runs.
// CPU per op (issue 18): user + system time of every server process of a system (all threads,
// from /proc/<pid>/stat) over one fio run, divided by the writes fio completed. Unlike IOPS it
// hardly moves when neighbours load the machine, so it is the figure to compare across runs.
// The primary's GC share: the growth of its nodejs_gc_duration_seconds (GET /metrics) over the
// same run, divided by its CPU time. --systems and --points run a subset (for development; the
// table in bench/README.md comes from full runs).
import { benchMain } from './main.js';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { fetchStatus } from '../src/cli/status.js';
import { adminCredentials, adminRequest } from '../src/cli/admin-client.js';
import { loadConfig } from '../src/site/config.js';
import { preparePki } from '../src/site/pki.js';
import { parseSizeBytes } from '../src/site/units.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bin = join(repoRoot, 'bin/geomirror.mjs');
const primaryAlone = join(repoRoot, 'bench/primary-alone.mjs');
const floorScript = join(repoRoot, 'bench/floor.mjs');
const run = promisify(execFile);

/** A system that is not serving within this after start is broken, not slow. */
const startTimeoutMs = 60_000;
/** RSS sampling period while fio runs. */
const rssSampleMs = 200;
/** fio gets this much longer than --seconds before it is called hung. */
const fioGraceMs = 60_000;
/** The issue's goals, printed next to the measured ratios. */
export const goals = {
  /** IOPS vs QEMU quorum per point (issue 18). */
  vsQuorum: { '4k-randwrite-qd1': 1.2, '4k-randwrite-qd16': 2.0, '1m-write-qd4': 2.0 } as Record<string, number>,
  /** CPU per op vs QEMU quorum, 4 KiB QD16 (at most). */
  cpuVsQuorumQd16: 1.0,
  /** IOPS vs the floor pipeline, 4 KiB QD16. */
  vsFloorQd16: 0.6,
  /** Primary RSS during 4 KiB QD16 and during 1 MiB. */
  primaryRssBytesMaxQd16: 150 * 1024 * 1024,
  primaryRssBytesMax1m: 200 * 1024 * 1024,
  /** GC time as a share of the primary's CPU time at 1 MiB (below). */
  gcShare1m: 0.1,
  tlsVsPlain: 0.85,
};

export interface Point {
  id: string;
  label: string;
  rw: 'randwrite' | 'write';
  bs: string;
  iodepth: number;
}

export const points: Point[] = [
  { id: '4k-randwrite-qd1', label: '4 KiB randwrite QD1', rw: 'randwrite', bs: '4k', iodepth: 1 },
  { id: '4k-randwrite-qd16', label: '4 KiB randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { id: '1m-write-qd4', label: '1 MiB seq write QD4', rw: 'write', bs: '1m', iodepth: 4 },
];

export const systemIds = ['geomirror-3', 'qemu-quorum-3', 'nbdkit-1', 'geomirror-1', 'geomirror-3-insecure', 'floor-3'] as const;
export type SystemId = (typeof systemIds)[number];
const systemLabels: Record<SystemId, string> = {
  'geomirror-3': 'geomirror, 3 copies',
  'qemu-quorum-3': 'QEMU quorum, 3 copies',
  'nbdkit-1': 'nbdkit file, 1 copy',
  'geomirror-1': 'geomirror, 1 copy',
  'geomirror-3-insecure': 'geomirror, 3 copies, plain TCP',
  'floor-3': 'floor: minimal Node 3-copy pipeline',
};

export interface CompareOptions {
  seconds: number;
  repeat: number;
  sizeBytes: number;
  outDir: string;
  /** Markdown file to update between markers; undefined: leave alone. */
  readme: string | undefined;
  /** Run every geomirror-3 site under node --cpu-prof and print where each one's time goes. */
  profile: boolean;
  /** Only these systems / points (default: all). */
  systems?: readonly SystemId[];
  points?: readonly string[];
  /** Extra node flags of every geomirror site process (experiments, e.g. --max-semi-space-size=4). */
  siteNodeArgs?: readonly string[];
  log?: (line: string) => void;
}

export interface RunRow {
  system: SystemId;
  point: string;
  repeat: number;
  iops: number;
  mibPerSecond: number;
  latMeanUs: number;
  latP50Us: number;
  latP99Us: number;
  /** Peak RSS per geomirror process during this run (bytes), by site name. */
  rssBytesPeak?: Record<string, number>;
  /** Writes fio completed. */
  ops: number;
  /** User + system CPU of every server process over the run, per completed op (µs). */
  cpuUsPerOp: number;
  /** The same per process (by name). */
  cpuUsPerOpBy: Record<string, number>;
  /** geomirror: GC time of the primary over its CPU time in this run (0..1). */
  gcShare?: number;
}

export interface SummaryRow {
  system: SystemId;
  point: string;
  iops: number;
  mibPerSecond: number;
  latP99Us: number;
  cpuUsPerOp: number;
  cpuUsPerOpBy: Record<string, number>;
  gcShare?: number;
  rssBytesPeak?: Record<string, number>;
}

export interface CompareResult {
  date: string;
  host: { cpus: number; cpuModel: string; node: string; fio: string; qemuNbd: string; nbdkit: string; loadAvgStart: number[]; loadAvgEnd?: number[] };
  options: { seconds: number; repeat: number; sizeBytes: number; siteNodeArgs?: readonly string[] };
  runs: RunRow[];
  /** Median over repeats (RSS: max over repeats). */
  summary: SummaryRow[];
  ratios: { name: string; value: number; goal: string; met: boolean }[];
  /** Top self-time functions per geomirror-3 site (--profile). */
  profile?: Record<string, string[]>;
  files: { json: string; svg: string };
}

export interface Running {
  uri: string;
  /** geomirror site processes (name -> pid), for RSS. */
  pids: Record<string, number>;
  /** Every server process of the system (name -> pid), for CPU per op. */
  cpuPids: Record<string, number>;
  /** geomirror: the primary's GC seconds so far (from its /metrics). */
  gcSeconds?: () => Promise<number>;
  stop(): Promise<void>;
}

// ---- process helpers ---------------------------------------------------------------------------

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitPort(port: number, what: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode} before serving on port ${port}`);
    const ok = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), r(true)));
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} is not serving on 127.0.0.1:${port} after ${startTimeoutMs} ms`);
    await sleep(50);
  }
}

function sparseFile(path: string, bytes: number): void {
  closeSync(openSync(path, 'w'));
  truncateSync(path, bytes);
}

function startProc(cmd: string, args: string[], logPath: string, env: NodeJS.ProcessEnv = process.env): { child: ChildProcess; exited: Promise<void> } {
  const log = createWriteStream(logPath, { flags: 'a' });
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd: repoRoot });
  child.stdout!.pipe(log, { end: false });
  child.stderr!.pipe(log, { end: false });
  const exited = new Promise<void>((r) => child.once('exit', () => (log.end(), r())));
  return { child, exited };
}

async function stopProc(p: { child: ChildProcess; exited: Promise<void> }): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
  await p.exited;
  clearTimeout(t);
}

// ---- systems -----------------------------------------------------------------------------------

export async function startGeomirror(dir: string, mirrors: number, sizeBytes: number, profileDir: string | undefined, transport: 'tls' | 'insecure' = 'tls', siteNodeArgs: readonly string[] = []): Promise<Running> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'cluster.key'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  // 0 mirrors: the file still lists one (the cluster file requires it); bench/primary-alone.mjs
  // runs the primary with the list emptied and that mirror never starts.
  const names = ['local', ...['east', 'west'].slice(0, Math.max(1, mirrors))];
  const nbdPort = await freePort();
  const lines = ['cluster: bench', 'secret: file:./cluster.key', ...(transport === 'insecure' ? ['transport: insecure'] : []), `volume: { name: vol0, size: ${sizeBytes}, blockSize: 4096 }`, 'sites:'];
  const admins: Record<string, string> = {};
  for (const n of names) {
    admins[n] = `127.0.0.1:${await freePort()}`;
    sparseFile(join(dir, `${n}.cache`), 64 * 1024 * 1024);
    sparseFile(join(dir, `${n}.img`), sizeBytes);
    const common = `admin: ${admins[n]}, cache: { device: "loopback:./${n}.cache", size: 64MiB }, storage: ["loopback:./${n}.img"]`;
    if (n === 'local') lines.push(`  local: { role: primary, nbd: 127.0.0.1:${nbdPort}, ${common}, mirrors: [${names.slice(1).join(', ')}], on-mirror-loss: block }`);
    else lines.push(`  ${n}: { role: mirror, listen: 127.0.0.1:${await freePort()}, ${common} }`);
  }
  const config = join(dir, 'cluster.yaml');
  writeFileSync(config, `${lines.join('\n')}\n`);
  // As geomirror start does on first run: the cluster CA and the site certificates.
  const loaded = loadConfig(config);
  await preparePki(loaded);
  const creds = adminCredentials(loaded);
  const env = { ...process.env, GEOMIRROR_LOG_FORMAT: 'json', GEOMIRROR_LOG_LEVEL: 'warn' };
  const procs = (mirrors === 0 ? ['local'] : names).map((n) => {
    const nodeFlags = [...siteNodeArgs, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, n)}`] : [])];
    const args = mirrors === 0 ? [...nodeFlags, primaryAlone, config, n] : [...nodeFlags, bin, 'site', '--config', config, '--site', n];
    return { name: n, ...startProc(process.execPath, args, join(dir, `${n}.log`), env) };
  });
  const stop = async () => {
    await Promise.all(procs.map(stopProc));
  };
  try {
    // Ready: the primary serves NBD and says every mirror is in sync.
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      for (const p of procs) if (p.child.exitCode !== null) throw new Error(`geomirror site ${p.name} exited with code ${p.child.exitCode}; see ${join(dir, `${p.name}.log`)}`);
      const r = await fetchStatus({ name: 'local', admin: admins.local!, site: 'local' }, 2_000, creds);
      if ('status' in r && r.status.state === 'in-sync' && r.status.peers.length === mirrors && r.status.peers.every((p) => p.sync === 'in-sync' && p.link === 'up')) break;
      if (Date.now() > deadline) throw new Error(`geomirror (${mirrors} mirrors) not in sync after ${startTimeoutMs} ms; see logs in ${dir}`);
      await sleep(100);
    }
    await waitPort(nbdPort, 'geomirror primary', procs[0]!.child);
  } catch (err) {
    await stop();
    throw err;
  }
  const pids = Object.fromEntries(procs.map((p) => [p.name, p.child.pid!]));
  const [adminHost, adminPort] = admins.local!.split(':');
  const gcSeconds = async (): Promise<number> => {
    const r = await adminRequest({ host: adminHost!, port: Number(adminPort), method: 'GET', path: '/metrics', site: 'local', creds, timeoutMs: 10_000, bodyCharsMax: 4 * 2 ** 20 });
    if (r.code !== 200) throw new Error(`GET /metrics of the primary answered ${r.code}`);
    return gcSecondsOf(r.body);
  };
  return { uri: `nbd://127.0.0.1:${nbdPort}/vol0`, pids, cpuPids: pids, gcSeconds, stop };
}

async function startNbdkit(dir: string, name: string, sizeBytes: number): Promise<{ port: number; proc: { child: ChildProcess; exited: Promise<void> } }> {
  mkdirSync(dir, { recursive: true });
  const img = join(dir, `${name}.img`);
  sparseFile(img, sizeBytes);
  const port = await freePort();
  const proc = startProc('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', img], join(dir, `${name}.log`));
  await waitPort(port, `nbdkit ${name}`, proc.child);
  return { port, proc };
}

async function startNbdkitAlone(dir: string, sizeBytes: number): Promise<Running> {
  const k = await startNbdkit(dir, 'ceiling', sizeBytes);
  return { uri: `nbd://127.0.0.1:${k.port}/`, pids: {}, cpuPids: { nbdkit: k.proc.child.pid! }, stop: () => stopProc(k.proc) };
}

/**
 * qemu-nbd serving a quorum of three NBD children. vote-threshold=3 with three children: QEMU's
 * quorum writes every child and completes the request when all have answered, and fails it
 * unless all three succeeded, so an ack means three copies (the same promise geomirror-3 makes).
 */
export async function startQuorum(dir: string, sizeBytes: number): Promise<Running> {
  const kids: Awaited<ReturnType<typeof startNbdkit>>[] = [];
  for (let i = 0; i < 3; i++) kids.push(await startNbdkit(dir, `child${i}`, sizeBytes));
  const children = kids.map((k, i) => `children.${i}.driver=nbd,children.${i}.server.type=inet,children.${i}.server.host=127.0.0.1,children.${i}.server.port=${k.port}`).join(',');
  const port = await freePort();
  const q = startProc('qemu-nbd', ['--image-opts', `driver=quorum,vote-threshold=3,${children}`, '-b', '127.0.0.1', '-p', String(port), '-x', 'vol0', '--persistent', '--shared=8'], join(dir, 'qemu-nbd.log'));
  const stop = async () => {
    await stopProc(q);
    await Promise.all(kids.map((k) => stopProc(k.proc)));
  };
  try {
    await waitPort(port, 'qemu-nbd quorum', q.child);
  } catch (err) {
    await stop();
    throw err;
  }
  const cpuPids: Record<string, number> = { 'qemu-nbd': q.child.pid! };
  kids.forEach((k, i) => (cpuPids[`nbdkit${i}`] = k.proc.child.pid!));
  return { uri: `nbd://127.0.0.1:${port}/vol0`, pids: {}, cpuPids, stop };
}

/** bench/floor.mjs: a primary serving NBD and two mirrors, three processes on sparse files. */
export async function startFloor(dir: string, sizeBytes: number): Promise<Running> {
  mkdirSync(dir, { recursive: true });
  const mirrorPorts = [await freePort(), await freePort()];
  const nbdPort = await freePort();
  const procs: { name: string; child: ChildProcess; exited: Promise<void> }[] = [];
  const stop = async () => {
    await Promise.all(procs.map(stopProc));
  };
  try {
    for (const [i, port] of mirrorPorts.entries()) {
      const p = { name: `mirror${i + 1}`, ...startProc(process.execPath, [floorScript, 'mirror', dir, String(sizeBytes), String(port)], join(dir, `mirror${i + 1}.log`)) };
      procs.push(p);
      await waitPort(port, `floor mirror ${i + 1}`, p.child);
    }
    const p = { name: 'primary', ...startProc(process.execPath, [floorScript, 'primary', dir, String(sizeBytes), String(nbdPort), mirrorPorts.join(',')], join(dir, 'primary.log')) };
    procs.push(p);
    await waitPort(nbdPort, 'floor primary', p.child);
  } catch (err) {
    await stop();
    throw err;
  }
  const pids = Object.fromEntries(procs.map((p) => [p.name, p.child.pid!]));
  return { uri: `nbd://127.0.0.1:${nbdPort}/`, pids: {}, cpuPids: pids, stop };
}

// ---- fio ---------------------------------------------------------------------------------------

interface FioWrite {
  iops: number;
  total_ios: number;
  bw_bytes: number;
  clat_ns: { mean: number; percentile?: Record<string, number> };
  lat_ns: { mean: number };
}

export interface FioJobResult {
  name: string;
  iops: number;
  ops: number;
  mibPerSecond: number;
  latMeanUs: number;
  latP50Us: number;
  latP99Us: number;
}

/** Every job of fio's JSON output, in order (a job that failed is an error naming it). */
export function parseFioJobs(stdout: string): FioJobResult[] {
  // fio's nbd engine prints "fio: connected to NBD server" (once per job) before the JSON document.
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON: ${stdout.slice(0, 300)}`);
  const doc = JSON.parse(stdout.slice(start)) as { jobs: { jobname: string; error: number; write: FioWrite }[] };
  if (doc.jobs.length === 0) throw new Error('fio JSON has no job');
  return doc.jobs.map((job) => {
    if (job.error !== 0) throw new Error(`fio job ${job.jobname} failed with error ${job.error}`);
    const w = job.write;
    const pct = w.clat_ns.percentile ?? {};
    return {
      name: job.jobname,
      iops: w.iops,
      ops: w.total_ios,
      mibPerSecond: w.bw_bytes / 2 ** 20,
      latMeanUs: w.lat_ns.mean / 1000,
      latP50Us: (pct['50.000000'] ?? NaN) / 1000,
      latP99Us: (pct['99.000000'] ?? NaN) / 1000,
    };
  });
}

export function parseFio(stdout: string): { iops: number; ops: number; mibPerSecond: number; latMeanUs: number; latP50Us: number; latP99Us: number } {
  const { name: _name, ...first } = parseFioJobs(stdout)[0]!;
  return first;
}

export async function runFio(uri: string, p: Point, seconds: number): Promise<ReturnType<typeof parseFio>> {
  const args = ['--name', p.id, '--ioengine=nbd', `--uri=${uri}`, `--rw=${p.rw}`, `--bs=${p.bs}`, `--iodepth=${p.iodepth}`, `--runtime=${seconds}`, '--time_based', '--output-format=json'];
  const { stdout } = await run('fio', args, { timeout: seconds * 1000 + fioGraceMs, maxBuffer: 16 * 2 ** 20 });
  return parseFio(stdout);
}

export function rssBytes(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Samples RSS of each pid until stopped; returns the peak per name. */
export function rssSampler(pids: Record<string, number>): () => Record<string, number> {
  const peak: Record<string, number> = {};
  const sample = () => {
    for (const [name, pid] of Object.entries(pids)) {
      const b = rssBytes(pid);
      if (b !== undefined) peak[name] = Math.max(peak[name] ?? 0, b);
    }
  };
  sample();
  const t = setInterval(sample, rssSampleMs);
  return () => {
    clearInterval(t);
    sample();
    return peak;
  };
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on every Linux we run on). */
const userHz = 100;

/** User + system CPU seconds of a process, all its threads (fields 14 and 15 of /proc/<pid>/stat). */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // field 3 onwards
    return (Number(fields[11]) + Number(fields[12])) / userHz;
  } catch {
    return undefined;
  }
}

/** CPU seconds of each named process now. */
export function cpuNow(pids: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    const s = cpuSeconds(pid);
    if (s === undefined) throw new Error(`server process ${name} (pid ${pid}) is gone`);
    out[name] = s;
  }
  return out;
}

/** Sum of every nodejs_gc_duration_seconds_sum series in a Prometheus text. */
export function gcSecondsOf(metrics: string): number {
  let sum = 0;
  for (const m of metrics.matchAll(/^nodejs_gc_duration_seconds_sum(?:\{[^}]*\})? ([0-9.eE+-]+)$/gm)) sum += Number(m[1]);
  return sum;
}

// ---- the run -----------------------------------------------------------------------------------

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export async function toolVersion(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(cmd, args);
    return stdout.split('\n')[0]!.trim();
  } catch {
    throw new Error(`${cmd} is not installed; the bench needs fio, qemu-nbd and nbdkit (apt-get install fio qemu-utils nbdkit)`);
  }
}

export async function runCompare(opts: CompareOptions): Promise<CompareResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const host = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    node: process.version,
    fio: await toolVersion('fio', ['--version']),
    qemuNbd: await toolVersion('qemu-nbd', ['--version']),
    nbdkit: await toolVersion('nbdkit', ['--version']),
    loadAvgStart: loadavg().map((x) => Math.round(x * 100) / 100),
  } as CompareResult['host'];
  const work = mkdtempSync(join(tmpdir(), 'geomirror-bench-'));
  const profileDir = opts.profile ? join(work, 'cpu-prof') : undefined;
  const systems: Partial<Record<SystemId, Running>> = {};
  const runs: RunRow[] = [];
  let ok = false;
  // Ctrl-C or SIGTERM mid-run: stop every system first (geomirror sites and qemu-nbd would
  // otherwise outlive the bench; nbdkit has --exit-with-parent).
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping every system`);
    void Promise.all(Object.values(systems).map((x) => x.stop().catch(() => undefined))).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    log(`starting systems in ${work} (volume ${opts.sizeBytes} bytes each)`);
    // Started together (start-up is mostly Node loading modules), each recorded as soon as it is
    // up so the finally below stops whatever did start when another fails.
    const wanted = opts.systems ?? systemIds;
    const runPoints = points.filter((p) => opts.points === undefined || opts.points.includes(p.id));
    const starters: Record<SystemId, () => Promise<Running>> = {
      'geomirror-3': () => startGeomirror(join(work, 'geomirror-3'), 2, opts.sizeBytes, profileDir, 'tls', opts.siteNodeArgs),
      'qemu-quorum-3': () => startQuorum(join(work, 'quorum'), opts.sizeBytes),
      'nbdkit-1': () => startNbdkitAlone(join(work, 'nbdkit'), opts.sizeBytes),
      'geomirror-1': () => startGeomirror(join(work, 'geomirror-1'), 0, opts.sizeBytes, undefined, 'tls', opts.siteNodeArgs),
      'geomirror-3-insecure': () => startGeomirror(join(work, 'geomirror-3-insecure'), 2, opts.sizeBytes, undefined, 'insecure', opts.siteNodeArgs),
      'floor-3': () => startFloor(join(work, 'floor'), opts.sizeBytes),
    };
    const started = await Promise.allSettled(wanted.map((id) => starters[id]().then((s) => (systems[id] = s))));
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    for (let r = 0; r < opts.repeat; r++) {
      for (const [pi, p] of runPoints.entries()) {
        const k = (r + pi) % wanted.length;
        const order = [...wanted.slice(k), ...wanted.slice(0, k)];
        for (const id of order) {
          const sys = systems[id]!;
          const stopRss = rssSampler(sys.pids);
          const gc0 = await sys.gcSeconds?.();
          const cpu0 = cpuNow(sys.cpuPids);
          const f = await runFio(sys.uri, p, opts.seconds);
          const cpu1 = cpuNow(sys.cpuPids);
          const gc1 = await sys.gcSeconds?.();
          const rss = stopRss();
          const cpuUsPerOpBy: Record<string, number> = {};
          let cpuS = 0;
          for (const name of Object.keys(cpu0)) {
            const d = cpu1[name]! - cpu0[name]!;
            cpuS += d;
            cpuUsPerOpBy[name] = (d * 1e6) / f.ops;
          }
          const primaryCpuS = cpu1.local !== undefined ? cpu1.local - cpu0.local! : undefined;
          const gcShare = gc0 !== undefined && gc1 !== undefined && primaryCpuS !== undefined && primaryCpuS > 0 ? (gc1 - gc0) / primaryCpuS : undefined;
          const row: RunRow = {
            system: id, point: p.id, repeat: r, ...f, cpuUsPerOp: (cpuS * 1e6) / f.ops, cpuUsPerOpBy,
            ...(gcShare !== undefined ? { gcShare } : {}), ...(Object.keys(rss).length > 0 ? { rssBytesPeak: rss } : {}),
          };
          runs.push(row);
          log(
            `repeat ${r + 1}/${opts.repeat}  ${p.label.padEnd(22)} ${id.padEnd(20)} ${f.iops.toFixed(0).padStart(7)} IOPS  ${f.mibPerSecond.toFixed(1).padStart(7)} MiB/s  p99 ${f.latP99Us.toFixed(0).padStart(6)} us  ` +
              `CPU ${row.cpuUsPerOp.toFixed(0).padStart(5)} us/op (${Object.entries(cpuUsPerOpBy).map(([n, v]) => `${n} ${v.toFixed(0)}`).join(', ')})` +
              `${gcShare !== undefined ? `  GC ${(100 * gcShare).toFixed(1)}%` : ''}${rss.local ? `  primary RSS ${(rss.local / 2 ** 20).toFixed(0)} MiB` : ''}`,
          );
        }
      }
    }
    ok = true;
  } finally {
    await Promise.all(Object.values(systems).map((s) => s.stop().catch(() => undefined)));
    if (!ok) log(`bench failed; logs of every system kept in ${work}`);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const profile = profileDir && systems['geomirror-3'] ? Object.fromEntries(['local', 'east', 'west'].map((n) => [n, summarizeProfile(join(profileDir, n))])) : undefined;
  rmSync(work, { recursive: true, force: true });

  host.loadAvgEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  const summary = summarize(runs);
  const ratios = ratiosOf(summary);
  const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replaceAll(':', '-');
  mkdirSync(opts.outDir, { recursive: true });
  const files = { json: join(opts.outDir, `${date}.json`), svg: join(opts.outDir, `${date}.svg`) };
  const result: CompareResult = { date, host, options: { seconds: opts.seconds, repeat: opts.repeat, sizeBytes: opts.sizeBytes, ...(opts.siteNodeArgs?.length ? { siteNodeArgs: opts.siteNodeArgs } : {}) }, runs, summary, ratios, ...(profile ? { profile } : {}), files };
  writeFileSync(files.json, `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(files.svg, renderSvg(result));
  if (opts.readme) updateReadme(opts.readme, result);
  return result;
}

/** Medians over repeats per system and point (RSS: the peak over repeats). */
export function summarize(runs: readonly RunRow[]): SummaryRow[] {
  const summary: SummaryRow[] = [];
  for (const p of points) {
    for (const id of systemIds) {
      const rows = runs.filter((x) => x.system === id && x.point === p.id);
      if (rows.length === 0) continue;
      const rss: Record<string, number> = {};
      for (const x of rows) for (const [n, b] of Object.entries(x.rssBytesPeak ?? {})) rss[n] = Math.max(rss[n] ?? 0, b);
      const by: Record<string, number> = {};
      for (const n of Object.keys(rows[0]!.cpuUsPerOpBy)) by[n] = median(rows.map((x) => x.cpuUsPerOpBy[n] ?? NaN));
      const gc = rows.map((x) => x.gcShare).filter((x): x is number => x !== undefined);
      summary.push({
        system: id, point: p.id, iops: median(rows.map((x) => x.iops)), mibPerSecond: median(rows.map((x) => x.mibPerSecond)), latP99Us: median(rows.map((x) => x.latP99Us)),
        cpuUsPerOp: median(rows.map((x) => x.cpuUsPerOp)), cpuUsPerOpBy: by, ...(gc.length > 0 ? { gcShare: median(gc) } : {}), ...(Object.keys(rss).length ? { rssBytesPeak: rss } : {}),
      });
    }
  }
  return summary;
}

/** The issue's ratios, for whatever systems and points the summary holds. */
export function ratiosOf(summary: readonly SummaryRow[]): CompareResult['ratios'] {
  const get = (id: SystemId, point: string) => summary.find((s) => s.system === id && s.point === point);
  const out: CompareResult['ratios'] = [];
  const at = (p: Point, a: SystemId, b: SystemId, key: 'iops' | 'cpuUsPerOp', name: string, goal: number | undefined, atMost = false): void => {
    const x = get(a, p.id);
    const y = get(b, p.id);
    if (x === undefined || y === undefined) return;
    const value = x[key] / y[key];
    out.push({ name: `${name}, ${p.label}`, value, goal: goal === undefined ? '' : `${atMost ? '<=' : '>='} ${goal}`, met: goal === undefined ? true : atMost ? value <= goal : value >= goal });
  };
  for (const p of points) {
    at(p, 'geomirror-3', 'qemu-quorum-3', 'iops', 'geomirror-3 / qemu-quorum-3 IOPS', goals.vsQuorum[p.id]);
    at(p, 'geomirror-3', 'qemu-quorum-3', 'cpuUsPerOp', 'geomirror-3 / qemu-quorum-3 CPU per op', p.id === '4k-randwrite-qd16' ? goals.cpuVsQuorumQd16 : undefined, true);
    at(p, 'geomirror-3', 'floor-3', 'iops', 'geomirror-3 / floor-3 IOPS', p.id === '4k-randwrite-qd16' ? goals.vsFloorQd16 : undefined);
    at(p, 'geomirror-3', 'floor-3', 'cpuUsPerOp', 'geomirror-3 / floor-3 CPU per op', undefined, true);
    at(p, 'geomirror-3-insecure', 'floor-3', 'iops', 'geomirror-3-insecure / floor-3 IOPS', undefined);
    if (p.id !== '4k-randwrite-qd1') at(p, 'geomirror-3', 'geomirror-3-insecure', 'iops', 'geomirror-3 TLS / plain TCP IOPS', goals.tlsVsPlain);
  }
  const qd16 = points.find((p) => p.id === '4k-randwrite-qd16')!;
  at(qd16, 'geomirror-3', 'nbdkit-1', 'iops', 'geomirror-3 / nbdkit-1 IOPS', undefined);
  const rss = (point: string, max: number, label: string): void => {
    const local = get('geomirror-3', point)?.rssBytesPeak?.local;
    if (local === undefined) return;
    out.push({ name: `geomirror-3 primary peak RSS during ${label} (MiB)`, value: local / 2 ** 20, goal: `<= ${max / 2 ** 20}`, met: local <= max });
  };
  rss('4k-randwrite-qd16', goals.primaryRssBytesMaxQd16, '4 KiB QD16');
  rss('1m-write-qd4', goals.primaryRssBytesMax1m, '1 MiB QD4');
  const gc = get('geomirror-3', '1m-write-qd4')?.gcShare;
  if (gc !== undefined) out.push({ name: 'geomirror-3 primary GC share of its CPU, 1 MiB seq write QD4 (%)', value: 100 * gc, goal: `< ${100 * goals.gcShare1m}`, met: gc < goals.gcShare1m });
  return out;
}

// ---- profile -----------------------------------------------------------------------------------

interface ProfNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** Top self-time functions of the primary's CPU profile(s), as lines "12.3%  fn  file:line". */
export function summarizeProfile(dir: string): string[] {
  if (!existsSync(dir)) return ['no CPU profile was written (did the site exit cleanly?)'];
  const self = new Map<string, number>();
  let total = 0;
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.cpuprofile'))) {
    const prof = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { nodes: ProfNode[] };
    for (const n of prof.nodes) {
      const hits = n.hitCount ?? 0;
      if (hits === 0) continue;
      const url = n.callFrame.url.replace(/^file:\/\//, '');
      const where = url ? `${url.startsWith(repoRoot) ? relative(repoRoot, url) : url}:${n.callFrame.lineNumber + 1}` : '';
      const key = `${n.callFrame.functionName || '(anonymous)'}  ${where}`.trim();
      self.set(key, (self.get(key) ?? 0) + hits);
      total += hits;
    }
  }
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 25)
    .map(([k, v]) => `${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

// ---- outputs -----------------------------------------------------------------------------------

const colors: Record<SystemId, string> = { 'geomirror-3': '#1f77b4', 'qemu-quorum-3': '#d62728', 'nbdkit-1': '#7f7f7f', 'geomirror-1': '#2ca02c', 'geomirror-3-insecure': '#9467bd', 'floor-3': '#ff7f0e' };
const esc = (s: string) => s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
const fmt = (v: number) => (!Number.isFinite(v) ? 'n/a' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Two rows (IOPS, p99 latency) by three columns (points), each panel with its own linear axis. */
export function renderSvg(r: CompareResult): string {
  const panelW = 300;
  const panelH = 220;
  const top = 70;
  const left = 20;
  const w = left * 2 + panelW * points.length;
  const h = top + panelH * 3 + 30;
  const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="11">`, `<rect width="${w}" height="${h}" fill="white"/>`];
  out.push(`<text x="${w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">geomirror vs QEMU quorum vs nbdkit: fio over NBD (${esc(r.date)}, ${r.options.seconds} s x ${r.options.repeat}, medians)</text>`);
  systemIds.forEach((id, i) => {
    const x = left + (i % 4) * 225;
    const y = 32 + Math.floor(i / 4) * 16;
    out.push(`<rect x="${x}" y="${y}" width="12" height="12" fill="${colors[id]}"/><text x="${x + 16}" y="${y + 10}">${esc(systemLabels[id])}</text>`);
  });
  const metrics: { key: 'iops' | 'latP99Us' | 'cpuUsPerOp'; title: string }[] = [
    { key: 'iops', title: 'IOPS (higher is better)' },
    { key: 'latP99Us', title: 'p99 latency, us (lower is better)' },
    { key: 'cpuUsPerOp', title: 'CPU us per op, all server processes (lower is better)' },
  ];
  metrics.forEach((m, row) => {
    points.forEach((p, col) => {
      const x0 = left + col * panelW;
      const y0 = top + row * panelH;
      const vals = systemIds.map((id) => r.summary.find((s) => s.system === id && s.point === p.id)?.[m.key] ?? NaN);
      const max = Math.max(...vals.filter(Number.isFinite), 1e-9);
      const plotTop = y0 + 36;
      const plotH = panelH - 70;
      const base = plotTop + plotH;
      out.push(`<text x="${x0 + panelW / 2}" y="${y0 + 14}" text-anchor="middle" font-weight="bold">${esc(p.label)}</text>`);
      out.push(`<text x="${x0 + panelW / 2}" y="${y0 + 28}" text-anchor="middle" fill="#555">${esc(m.title)}</text>`);
      out.push(`<line x1="${x0 + 20}" y1="${base}" x2="${x0 + panelW - 20}" y2="${base}" stroke="#333"/>`);
      const barW = (panelW - 60) / systemIds.length;
      vals.forEach((v, i) => {
        const bh = Number.isFinite(v) ? (v / max) * plotH : 0;
        const bx = x0 + 30 + i * barW;
        out.push(`<rect x="${bx.toFixed(1)}" y="${(base - bh).toFixed(1)}" width="${(barW - 8).toFixed(1)}" height="${bh.toFixed(1)}" fill="${colors[systemIds[i]!]}"><title>${esc(systemLabels[systemIds[i]!])}: ${fmt(v)}</title></rect>`);
        out.push(`<text x="${(bx + (barW - 8) / 2).toFixed(1)}" y="${(base - bh - 3).toFixed(1)}" text-anchor="middle">${fmt(v)}</text>`);
      });
    });
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

export const readmeStart = '<!-- bench:compare:start (written by bench/compare.ts; edits here are overwritten) -->';
export const readmeEnd = '<!-- bench:compare:end -->';

export function markdownReport(r: CompareResult, readmeDir: string): string {
  const lines: string[] = [];
  lines.push(`### fio over NBD: geomirror vs QEMU quorum vs nbdkit (${r.date})`, '');
  const load = (l: number[] | undefined) => (l === undefined ? '?' : l.map((x) => x.toFixed(2)).join(' '));
  lines.push(`\`node --import tsx bench/compare.ts --seconds ${r.options.seconds} --repeat ${r.options.repeat}${r.options.siteNodeArgs?.length ? ` --site-node-args "${r.options.siteNodeArgs.join(' ')}"` : ''}\` on ${r.host.cpus} x ${r.host.cpuModel}, Node ${r.host.node}, ${r.host.fio}, ${r.host.qemuNbd}, ${r.host.nbdkit}. Every system on sparse files in one temp dir on this machine, volume ${r.options.sizeBytes} bytes; medians of ${r.options.repeat} repeat(s), systems alternating within each repeat. Load average (1, 5, 15 min) ${load(r.host.loadAvgStart)} at the start, ${load(r.host.loadAvgEnd)} at the end. CPU per op: user + system time of every server process of the system over the run, divided by the writes fio completed.`, '');
  lines.push('| point | system | IOPS | MiB/s | p99 latency (us) | CPU us/op (per process) | GC % of primary CPU | peak RSS per geomirror process (MiB) |', '|---|---|---:|---:|---:|---|---:|---|');
  for (const s of r.summary) {
    const p = points.find((x) => x.id === s.point)!;
    const rss = s.rssBytesPeak ? Object.entries(s.rssBytesPeak).map(([n, b]) => `${n} ${(b / 2 ** 20).toFixed(0)}`).join(', ') : '';
    const by = Object.entries(s.cpuUsPerOpBy).map(([n, v]) => `${n} ${fmt(v)}`).join(', ');
    lines.push(`| ${p.label} | ${systemLabels[s.system]} | ${s.iops.toFixed(0)} | ${s.mibPerSecond.toFixed(1)} | ${fmt(s.latP99Us)} | **${fmt(s.cpuUsPerOp)}** (${by}) | ${s.gcShare === undefined ? '' : (100 * s.gcShare).toFixed(1)} | ${rss} |`);
  }
  lines.push('', '| ratio | measured | goal | met |', '|---|---:|---|---|');
  for (const x of r.ratios) lines.push(`| ${x.name} | ${fmt(x.value)} | ${x.goal} | ${x.goal === '' ? '' : x.met ? 'yes' : 'no'} |`);
  lines.push('', `![IOPS and p99 latency per system](${relative(readmeDir, r.files.svg)})`, '', `Raw runs: \`${relative(readmeDir, r.files.json)}\`.`);
  for (const [site, top] of Object.entries(r.profile ?? {})) lines.push('', `CPU profile of geomirror-3 site ${site} (self time, top functions, whole run):`, '', '```', ...top.slice(0, 12), '```');
  return lines.join('\n');
}

function updateReadme(path: string, r: CompareResult): void {
  const block = `${readmeStart}\n${markdownReport(r, dirname(path))}\n${readmeEnd}`;
  let text = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\n';
  const a = text.indexOf(readmeStart);
  const b = text.indexOf(readmeEnd);
  text = a >= 0 && b > a ? `${text.slice(0, a)}${block}${text.slice(b + readmeEnd.length)}` : `${text.trimEnd()}\n\n## npm run bench\n\n${block}\n`;
  writeFileSync(path, text);
}

// ---- command line ------------------------------------------------------------------------------

export function parseArgs(argv: string[]): CompareOptions {
  const o: CompareOptions = { seconds: 10, repeat: 3, sizeBytes: 1024 ** 3, outDir: join(repoRoot, 'bench/results'), readme: join(repoRoot, 'bench/README.md'), profile: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const posInt = (v: string): number => {
      if (!/^[1-9]\d*$/.test(v)) throw new Error(`${a} ${v}: expected a whole number above 0`);
      return Number(v);
    };
    if (a === '--seconds') o.seconds = posInt(val());
    else if (a === '--repeat') o.repeat = posInt(val());
    else if (a === '--size') {
      const v = val();
      const b = parseSizeBytes(v);
      if (b === undefined || b < 16 * 2 ** 20 || b % 4096 !== 0) throw new Error(`--size ${v}: expected a size of at least 16MiB, a multiple of 4 KiB (e.g. 1GiB)`);
      o.sizeBytes = b;
    } else if (a === '--out') o.outDir = resolve(val());
    else if (a === '--readme') o.readme = resolve(val());
    else if (a === '--no-readme') o.readme = undefined;
    else if (a === '--profile') o.profile = true;
    else if (a === '--site-node-args') o.siteNodeArgs = val().split(' ').filter((x) => x !== '');
    else if (a === '--systems') {
      const v = val().split(',');
      for (const x of v) if (!(systemIds as readonly string[]).includes(x)) throw new Error(`--systems: unknown system ${x}; choose from ${systemIds.join(', ')}`);
      o.systems = v as SystemId[];
    } else if (a === '--points') {
      const v = val().split(',');
      for (const x of v) if (!points.some((p) => p.id === x)) throw new Error(`--points: unknown point ${x}; choose from ${points.map((p) => p.id).join(', ')}`);
      o.points = v;
    }
    else if (a === '--help' || a === '-h') {
      process.stdout.write(`usage: node --import tsx bench/compare.ts [--seconds N] [--repeat N] [--size 1GiB] [--out DIR] [--readme FILE | --no-readme] [--profile] [--site-node-args "FLAGS"] [--systems ${systemIds.join(',')}] [--points ${points.map((p) => p.id).join(',')}]\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}; see --help`);
  }
  return o;
}

await benchMain(import.meta.url, 'compare', parseArgs, async (opts) => {
  const r = await runCompare(opts);
  return `${markdownReport(r, process.cwd())}\n\nwrote ${r.files.json} and ${r.files.svg}${opts.readme ? ` and ${opts.readme}` : ''}`;
});

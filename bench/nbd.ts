// bench:nbd — fio over NBD against our server and against `nbdkit file`, same machine, same run,
// alternating and repeated, printed as ratios (issue 6). Workloads: 4 KiB random writes at QD1
// and QD16, 1 MiB sequential writes at QD4. Goal: >= 0.7x nbdkit at 4K QD16, >= 0.8x at 1M.
//
// The export under test is pluggable so the lead can swap in the primary with 0 mirrors:
//   --export-module PATH   a module exporting
//                          `createExport(file: string, sizeBytes: number): Promise<{ export: NbdExport, close(): Promise<void> }>`
//                          (served by our NbdServer in this process), or
//   --ours-uri URI         an NBD server already running elsewhere (e.g. `geomirror start`).
// Default: blockDeviceExport over a loopback file (hal/loopback.ts).
//
//   npm run bench:nbd -- --runtime-s 5 --repeats 3 --size-mib 256

import { Command } from 'commander';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir, cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { openLoopback } from '../hal/loopback.js';
import { blockDeviceExport } from '../src/nbd/blockdev-export.js';
import type { NbdExport } from '../src/nbd/export.js';
import { NbdServer } from '../src/nbd/server.js';

const run = promisify(execFile);

interface Workload {
  readonly label: string;
  readonly rw: string;
  readonly bs: string;
  readonly iodepth: number;
  readonly goalRatio: number | undefined;
}

const workloads: Workload[] = [
  { label: '4k randwrite QD1', rw: 'randwrite', bs: '4k', iodepth: 1, goalRatio: undefined },
  { label: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, goalRatio: 0.7 },
  { label: '1M write QD4', rw: 'write', bs: '1m', iodepth: 4, goalRatio: 0.8 },
];

interface Result {
  readonly iops: number;
  readonly mibPerS: number;
  /** Server CPU (user + system, all threads) per I/O; undefined when it cannot be measured. */
  readonly cpuUsPerIo: number | undefined;
}

interface Target {
  readonly name: string;
  readonly uri: string;
  /** Cumulative server CPU time in microseconds, if measurable. */
  cpuUs(): Promise<number | undefined>;
  stop(): Promise<void>;
}

/** utime + stime of a process from /proc (Linux), in microseconds. */
async function procCpuUs(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14, 15)
    return (ticks / 100) * 1e6; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

type ExportFactory = (file: string, sizeBytes: number) => Promise<{ export: NbdExport; close(): Promise<void> }>;

const defaultFactory: ExportFactory = async (file, sizeBytes) => {
  const dev = await openLoopback(file, { blockSizeBytes: 4096, blockCount: sizeBytes / 4096 });
  return { export: blockDeviceExport(dev, { name: 'vol0' }), close: () => dev.close() };
};

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

async function waitListening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((res) => {
      const s = connect({ host: '127.0.0.1', port }, () => (s.destroy(), res(true)));
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Creates a fully written file (no holes), so both servers start from the same allocation. */
async function makeFile(path: string, sizeBytes: number): Promise<void> {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  for (let at = 0; at < sizeBytes; at += chunk.length) await fh.write(chunk, 0, Math.min(chunk.length, sizeBytes - at), at);
  await fh.datasync();
  await fh.close();
}

async function startOurs(file: string, sizeBytes: number, factory: ExportFactory): Promise<Target> {
  const made = await factory(file, sizeBytes);
  const server = new NbdServer({ exports: [made.export] });
  const port = await server.listen('127.0.0.1', 0);
  return {
    name: 'geomirror',
    uri: `nbd://127.0.0.1:${port}/${made.export.name}`,
    // This process is the server (fio runs as a child, not counted here).
    cpuUs: async () => {
      const u = process.cpuUsage();
      return u.user + u.system;
    },
    stop: async () => {
      await server.close();
      await made.close();
    },
  };
}

async function startNbdkit(file: string): Promise<Target> {
  const port = await freePort();
  const child: ChildProcess = spawn('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', file], { stdio: 'inherit' });
  await waitListening(port, 10_000);
  return {
    name: 'nbdkit file',
    uri: `nbd://127.0.0.1:${port}/`,
    cpuUs: () => procCpuUs(child.pid!),
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function fio(target: Target, w: Workload, runtimeS: number, sizeBytes: number): Promise<Result> {
  const uri = target.uri;
  const cpu0 = await target.cpuUs();
  const { stdout } = await run(
    'fio',
    [
      '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`,
      `--size=${sizeBytes}`, '--time_based=1', `--runtime=${runtimeS}`, '--output-format=json',
    ],
    { maxBuffer: 16 * 1024 * 1024 },
  );
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  if (job.error !== 0) throw new Error(`fio reported error ${job.error} against ${uri}`);
  const cpu1 = await target.cpuUs();
  // No ramp time, so the CPU measured across the run and fio's I/O count cover the same span
  // (connection setup is included in both and is negligible against seconds of I/O).
  const ios = job.write.total_ios as number;
  const cpuUsPerIo = cpu0 === undefined || cpu1 === undefined || ios === 0 ? undefined : (cpu1 - cpu0) / ios;
  return { iops: job.write.iops, mibPerS: job.write.bw / 1024, cpuUsPerIo };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const program = new Command()
    .name('bench:nbd')
    .option('--runtime-s <n>', 'seconds per fio run', '5')
    .option('--repeats <n>', 'alternating repeats per workload', '3')
    .option('--size-mib <n>', 'volume size in MiB', '256')
    .option('--export-module <path>', 'module exporting createExport(file, sizeBytes) for the export under test')
    .option('--ours-uri <uri>', 'benchmark an already running NBD server instead of starting one')
    .option('--json', 'print results as JSON too')
    .parse();
  const o = program.opts<{ runtimeS: string; repeats: string; sizeMib: string; exportModule?: string; oursUri?: string; json?: boolean }>();
  const runtimeS = Number(o.runtimeS);
  const repeats = Number(o.repeats);
  const sizeBytes = Number(o.sizeMib) * 1024 * 1024;
  if (!(runtimeS > 0 && repeats > 0 && sizeBytes > 0 && sizeBytes % (1024 * 1024) === 0)) {
    throw new Error('bench:nbd: --runtime-s, --repeats and --size-mib must be positive numbers');
  }
  let factory = defaultFactory;
  if (o.exportModule !== undefined) {
    const mod = (await import(pathToFileURL(resolve(o.exportModule)).href)) as { createExport?: ExportFactory };
    if (typeof mod.createExport !== 'function') throw new Error(`${o.exportModule} does not export createExport(file, sizeBytes)`);
    factory = mod.createExport;
  }

  const dir = await mkdtemp(join(tmpdir(), 'geomirror-bench-nbd-'));
  const oursFile = join(dir, 'ours.img');
  const kitFile = join(dir, 'nbdkit.img');
  await makeFile(oursFile, sizeBytes);
  await makeFile(kitFile, sizeBytes);
  const ours: Target =
    o.oursUri !== undefined
      ? { name: 'geomirror', uri: o.oursUri, cpuUs: async () => undefined, stop: async () => {} }
      : await startOurs(oursFile, sizeBytes, factory);
  const kit = await startNbdkit(kitFile);
  console.log('Note: ratios of IOPS depend on machine load (a one-thread event loop loses CPU share to');
  console.log('multi-threaded nbdkit when other work competes); CPU per I/O is the steadier comparison.');
  console.log(`bench:nbd  ${cpus().length} CPUs, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}, ${o.sizeMib} MiB volume, ${runtimeS} s x ${repeats} alternating runs`);
  console.log(`  ours:   ${ours.uri}\n  nbdkit: ${kit.uri}`);
  const rows: {
    workload: string;
    ours: Result;
    nbdkit: Result;
    ratio: number;
    goal: number | undefined;
    runs: { ours: number[]; nbdkit: number[] };
  }[] = [];
  try {
    for (const w of workloads) {
      const oursIops: number[] = [];
      const kitIops: number[] = [];
      const oursMib: number[] = [];
      const kitMib: number[] = [];
      const oursCpu: number[] = [];
      const kitCpu: number[] = [];
      for (let i = 0; i < repeats; i++) {
        // Alternate who goes first so drift (page cache, other load) does not favour one side.
        const order = i % 2 === 0 ? [ours, kit] : [kit, ours];
        for (const t of order) {
          const r = await fio(t, w, runtimeS, sizeBytes);
          (t === kit ? kitIops : oursIops).push(r.iops);
          (t === kit ? kitMib : oursMib).push(r.mibPerS);
          if (r.cpuUsPerIo !== undefined) (t === kit ? kitCpu : oursCpu).push(r.cpuUsPerIo);
        }
      }
      const row = {
        workload: w.label,
        ours: { iops: median(oursIops), mibPerS: median(oursMib), cpuUsPerIo: oursCpu.length ? median(oursCpu) : undefined },
        nbdkit: { iops: median(kitIops), mibPerS: median(kitMib), cpuUsPerIo: kitCpu.length ? median(kitCpu) : undefined },
        ratio: median(oursIops) / median(kitIops),
        goal: w.goalRatio,
        runs: { ours: oursIops.map(Math.round), nbdkit: kitIops.map(Math.round) },
      };
      rows.push(row);
      const goal = w.goalRatio === undefined ? '' : row.ratio >= w.goalRatio ? `  (goal >= ${w.goalRatio}: met)` : `  (goal >= ${w.goalRatio}: NOT met)`;
      console.log(
        `${w.label.padEnd(18)} ours ${row.ours.iops.toFixed(0).padStart(7)} IOPS ${row.ours.mibPerS.toFixed(1).padStart(7)} MiB/s | ` +
          `nbdkit ${row.nbdkit.iops.toFixed(0).padStart(7)} IOPS ${row.nbdkit.mibPerS.toFixed(1).padStart(7)} MiB/s | ratio ${row.ratio.toFixed(2)}x${goal}` +
          `  runs ours [${row.runs.ours.join(', ')}] nbdkit [${row.runs.nbdkit.join(', ')}]`,
      );
      const cpu = (r: Result) => (r.cpuUsPerIo === undefined ? 'n/a' : `${r.cpuUsPerIo.toFixed(0)} us`);
      console.log(`${''.padEnd(18)} server CPU per I/O: ours ${cpu(row.ours)}, nbdkit ${cpu(row.nbdkit)} (load-independent efficiency)`);
    }
  } finally {
    await ours.stop();
    await kit.stop();
    await rm(dir, { recursive: true, force: true });
  }
  if (o.json === true) console.log(JSON.stringify(rows, null, 2));
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});

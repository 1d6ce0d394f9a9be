// npm run bench:fleet (issue 20 acceptance): many volumes on one cluster against one volume.
//
//   node --import tsx bench/fleet.ts [--seconds 10] [--repeat 3] [--volumes 16] [--volume-mib 64]
//                                    [--iodepth 8] [--layouts 1,16,16/2] [--quick] [--profile]
//
// Three sites, each one `geomirror site` process on loopback files (test/e2e/harness.ts): the
// primary `local`, its standby `backup` (so a failover can be timed) and the mirror `east`. A
// layout is V volumes in G consistency groups ("16" = 16 volumes, each its own group, the
// hardest case for the site: 16 streams; "16/2" = two groups of 8; "1" = one volume, the
// baseline). Each volume is its own NBD export; the writer of a volume is one fio job
// (--ioengine=nbd, 4 KiB randwrite, --iodepth the same for every job and layout) against it.
//
// Load points: every throughput layout's cluster is up for the whole run and the layouts take
// turns within each repeat (rotating the order), so neighbours' noise spreads over all of them:
//   aggregate IOPS     the sum over the layout's fio jobs (and the spread between its volumes)
//   CPU per op         user + system time of the three site processes (/proc, as bench/compare.ts)
//                      over the fio run, divided by the writes fio completed
//   RSS per site       peak VmRSS of each site process while fio runs, against the goal line
//                      64 MiB + 8 MiB per volume; at rest (in sync, before any load) too, and the
//                      primary's V8 heap and external memory (its /metrics) after each run
// Failover points (1 volume and all volumes, each its own group; a fresh cluster per run): a
// writer per volume keeps --iodepth writes in flight to the primary, the primary gets kill -9, and
//   promote            kill -> the last group of the standby promoted (the groups' promotion records)
//   write gap          kill -> a write acked by the new primary on every volume (a writer per
//                      volume reconnects to the standby's export of that volume as a host would)
//   resync             last promotion -> the mirror back in sync in every group
// Goals (issue 20): aggregate IOPS of V volumes >= 1.0x one volume's; RSS per site <= 64 MiB +
// 8 MiB per volume; failover with V volumes <= 1.5x one volume's. Output: bench/results/
// fleet-<date>.md (and .json) and stdout. --profile runs the sites under node --cpu-prof and
// appends each site's top self-time functions per layout.
import { benchMain } from './main.js';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { SiteStatus } from '../src/site/status.js';
import { Cluster, fastLinkEnv, NbdWriter, sleep } from '../test/e2e/harness.js';
import { cpuNow, median, parseFioJobs, rssBytes, rssSampler, summarizeProfile, toolVersion, type FioJobResult } from './compare.js';
import { firstAckedWrite, keepWriting, writesForever } from './writers.js';

const run = promisify(execFile);
const MiB = 2 ** 20;
const repoRoot = resolve(import.meta.dirname, '..');

/** The issue's goals. */
export const goals = {
  /** Aggregate IOPS of the many-volume layout over one volume's (at least). */
  iopsRatioMin: 1.0,
  /** RSS per site process (at most): base plus a share per volume it carries. */
  rssBaseBytes: 64 * MiB,
  rssPerVolumeBytes: 8 * MiB,
  /** Failover time with many volumes over one volume's (at most). */
  failoverRatioMax: 1.5,
};

/** The three sites of every cluster of this bench. */
export const siteNames = ['local', 'backup', 'east'] as const;
/** A cluster not in sync after this is broken (initial sync of fresh sparse volumes, and resync after a failover). */
const syncWaitMsMax = 300_000;
/** fio gets this much longer than --seconds before it is called hung. */
const fioGraceMs = 60_000;
/** A failover (promotion and the first write on every volume) slower than this is broken. */
const failoverWaitMsMax = 60_000;
/** Writers run this long (and until every volume has this many acks) before the kill. */
const loadBeforeKillMs = 1_000;
const acksBeforeKillMin = 50;
/** The standby's failover-timeout in the throughput clusters (default link timing there: heartbeat 1 s; nothing fails over). */
const throughputFailoverTimeoutMs = 5_000;
/** Idle CPU (every cluster in sync, no writer) is measured over this window, all clusters at once. */
const idleWindowMs = 5_000;
/** /status polls while waiting for a condition. */
const pollMs = 50;

export interface Layout {
  /** As given on the command line: "16" or "16/2". */
  id: string;
  volumes: number;
  groups: number;
}

export function layoutLabel(l: Layout): string {
  if (l.volumes === 1) return '1 volume';
  return l.groups === l.volumes ? `${l.volumes} volumes, ${l.groups} groups of 1` : `${l.volumes} volumes, ${l.groups} group${l.groups > 1 ? 's' : ''} of ${l.volumes / l.groups}`;
}

/** "V" (V volumes, each its own group) or "V/G" (V volumes in G groups of equal size). */
export function parseLayout(text: string): Layout {
  const m = /^([1-9]\d*)(?:\/([1-9]\d*))?$/.exec(text.trim());
  if (m === null) throw new Error(`layout ${text}: expected V or V/G (V volumes in G groups), e.g. 16 or 16/2`);
  const volumes = Number(m[1]);
  const groups = m[2] === undefined ? volumes : Number(m[2]);
  if (volumes > 64) throw new Error(`layout ${text}: at most 64 volumes per site (config.ts siteVolumesMax)`);
  if (groups > volumes || volumes % groups !== 0) throw new Error(`layout ${text}: ${volumes} volumes do not split into ${groups} groups of equal size`);
  if (volumes / groups > 16) throw new Error(`layout ${text}: a group holds at most 16 volumes (config.ts groupVolumesMax)`);
  return { id: text.trim(), volumes, groups };
}

/** The volumes of a layout: v00.. in groups g0.. (no group key when each volume is its own group). */
export function volumesOf(l: Layout, sizeBytes: number): { name: string; sizeBytes: number; group?: string }[] {
  const per = l.volumes / l.groups;
  return Array.from({ length: l.volumes }, (_, i) => ({ name: `v${String(i).padStart(2, '0')}`, sizeBytes, ...(per > 1 ? { group: `g${Math.floor(i / per)}` } : {}) }));
}

export interface FleetOptions {
  seconds: number;
  repeat: number;
  /** Volumes of the default many-volume layouts. */
  volumes: number;
  volumeMib: number;
  iodepth: number;
  /** Cache of each site: this much per volume it carries. */
  cacheMibPerVolume: number;
  /** Throughput layouts (the first with one volume is the baseline). */
  layouts: Layout[];
  /** Failover layouts (the one-volume one is the baseline); empty: no failover points. */
  failoverLayouts: Layout[];
  failoverTimeoutMs: number;
  profile: boolean;
  /** Extra node flags of every site process (experiments, e.g. --max-semi-space-size=1). */
  siteNodeArgs: string[];
  outDir: string;
  /** How the bench was started, for the report. */
  commandLine: string;
  log?: (line: string) => void;
}

export interface Memory {
  rssBytes: number;
  /** The process's own pages (/proc/PID/smaps_rollup Anonymous): RSS without the node binary and libraries it shares with every other node process. */
  anonymousBytes: number;
  heapUsedBytes: number;
  heapTotalBytes: number;
  externalBytes: number;
}

export interface LoadRun {
  layout: string;
  repeat: number;
  iops: number;
  ops: number;
  /** IOPS of each volume's writer. */
  perVolumeIops: number[];
  /** Median over the volumes of each writer's p99 completion latency. */
  latP99Us: number;
  cpuUsPerOp: number;
  cpuUsPerOpBy: Record<string, number>;
  rssBytesPeak: Record<string, number>;
  /** Each site's memory by its /metrics right after the run. */
  memory: Record<string, Memory>;
}

export interface FailoverRun {
  layout: string;
  repeat: number;
  /** kill -> the first / the last group of the standby promoted (its promotion record). */
  promoteFirstMs: number;
  promoteAllMs: number;
  /** kill -> a write acked by the new primary on the first / on every volume. */
  writeFirstMs: number;
  writeAllMs: number;
  /** Last promotion -> the mirror in sync in every group of the new primary. */
  resyncMs: number;
}

export interface LayoutSummary {
  layout: Layout;
  iops: number;
  ratio: number;
  perVolumeIopsMin: number;
  perVolumeIopsMax: number;
  latP99Us: number;
  cpuUsPerOp: number;
  cpuUsPerOpBy: Record<string, number>;
  /** Peak over repeats. */
  rssBytesPeak: Record<string, number>;
  rssBytesAtRest: Record<string, number>;
  /** CPU time per second of each site process while in sync and idle (ms/s: 10 = 1% of a core). */
  idleCpuMsPerS: Record<string, number>;
  rssGoalBytes: number;
  /** The primary's memory after its last run. */
  primaryMemory: Memory | undefined;
  /** Each site's own (anonymous) pages after the layout's runs: the peak over repeats. */
  anonymousBytes: Record<string, number>;
}

export interface FailoverSummary {
  layout: Layout;
  runs: number;
  promoteFirstMs: number;
  promoteAllMs: number;
  writeFirstMs: number;
  writeAllMs: number;
  resyncMs: number;
}

export interface GoalRow {
  goal: string;
  measured: string;
  target: string;
  pass: boolean;
}

export interface FleetResult {
  date: string;
  commandLine: string;
  host: { cpus: number; cpuModel: string; node: string; fio: string; loadAvgStart: number[]; loadAvgEnd: number[] };
  options: Omit<FleetOptions, 'log' | 'layouts' | 'failoverLayouts' | 'outDir'> & { layouts: string[]; failoverLayouts: string[] };
  load: LoadRun[];
  failover: FailoverRun[];
  layouts: LayoutSummary[];
  failovers: FailoverSummary[];
  /** Failover runs that failed (start-up or measurement), each with its reason and kept logs. */
  failures: string[];
  goals: GoalRow[];
  profile?: Record<string, Record<string, string[]>>;
  files: { md: string; json: string };
}

// ---- cluster helpers ---------------------------------------------------------------------------

/** Every consistency group's status at a site (a single-group site reports itself). */
export function groupStatuses(s: SiteStatus): SiteStatus[] {
  return s.groups?.map((g) => g.status) ?? [s];
}

function pidOf(c: Cluster, name: string): number {
  const pid = c.site(name).child?.pid;
  if (pid === undefined) throw new Error(`site ${name} is not running`);
  return pid;
}

function pidsOf(c: Cluster): Record<string, number> {
  return Object.fromEntries(siteNames.map((n) => [n, pidOf(c, n)]));
}

/** The primary has both targets in sync in every group, and the standby knows it holds every acked write of every group. */
async function waitFleetInSync(c: Cluster, l: Layout): Promise<void> {
  await c.waitStatus('local', (s) => {
    const gs = groupStatuses(s);
    return gs.length === l.groups && gs.every((g) => g.state === 'in-sync' && g.peers.length === 2 && g.peers.every((p) => p.sync === 'in-sync' && p.link === 'up'));
  }, `every one of ${l.groups} group(s) in sync with backup and east`, syncWaitMsMax);
  await c.waitStatus('backup', (s) => {
    const gs = groupStatuses(s);
    return gs.length === l.groups && gs.every((g) => g.standby?.inSync === true);
  }, `the standby confirmed in sync in every one of ${l.groups} group(s)`, syncWaitMsMax);
}

interface StartedCluster {
  c: Cluster;
  layout: Layout;
  volumes: string[];
  /** Site name -> pid of its process (kept for the profiles after the sites stopped). */
  pids: Record<string, number>;
  profileDir?: string;
}

/** A cluster that did not come up in sync (as opposed to a failure in a measured failover). */
class StartupError extends Error {}

/** Start-up attempts per failover run (a cluster that fails over by itself while starting is retried once). */
const startupAttemptsMax = 2;

async function startCluster(l: Layout, o: FleetOptions, env: Record<string, string>, failoverTimeoutMs: number, profileDir?: string): Promise<StartedCluster> {
  const volumes = volumesOf(l, o.volumeMib * MiB);
  const c = await Cluster.create({
    volumes, volumeBytes: o.volumeMib * MiB, mirrors: ['east'], standby: 'backup', cacheBytes: l.volumes * o.cacheMibPerVolume * MiB,
    failoverTimeoutMs, env, nodeArgs: [...o.siteNodeArgs, ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [])],
  });
  try {
    // The standby starts last: a primary starting many groups on a loaded machine can be silent
    // for longer than a short failover-timeout, and a standby already watching would take over
    // (seen on the shared 2-core machine at load 20 with 16 groups and a 1 s timeout).
    await c.start(['local', 'east']);
    await c.start(['backup']);
    await waitFleetInSync(c, l);
  } catch (err) {
    await c.stopAll();
    throw new StartupError(`layout ${l.id}: the cluster did not come up in sync (logs kept in ${c.dir}): ${(err as Error).message}`);
  }
  return { c, layout: l, volumes: volumes.map((v) => v.name), pids: pidsOf(c), ...(profileDir ? { profileDir } : {}) };
}

const metricOf = (text: string, name: string): number => {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
};

function anonymousBytes(pid: number): number {
  try {
    const m = /^Anonymous:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** A site's memory as its /metrics (prom-client's process and V8 metrics) and /proc say. */
async function memoryOf(c: Cluster, name: string, pid: number): Promise<Memory> {
  const t = await c.metricsText(name);
  return { anonymousBytes: anonymousBytes(pid), rssBytes: metricOf(t, 'process_resident_memory_bytes'), heapUsedBytes: metricOf(t, 'nodejs_heap_size_used_bytes'), heapTotalBytes: metricOf(t, 'nodejs_heap_size_total_bytes'), externalBytes: metricOf(t, 'nodejs_external_memory_bytes') };
}

// ---- load points -------------------------------------------------------------------------------

/** One fio process, one job per volume, each its own NBD connection to that volume's export. */
export async function runFioJobs(port: number, volumes: readonly string[], iodepth: number, seconds: number): Promise<FioJobResult[]> {
  const args = ['--ioengine=nbd', '--rw=randwrite', '--bs=4k', `--iodepth=${iodepth}`, `--runtime=${seconds}`, '--time_based', '--output-format=json'];
  for (const v of volumes) args.push(`--name=${v}`, `--uri=nbd://127.0.0.1:${port}/${v}`);
  const { stdout } = await run('fio', args, { timeout: seconds * 1000 + fioGraceMs, maxBuffer: 64 * MiB });
  const jobs = parseFioJobs(stdout);
  if (jobs.length !== volumes.length) throw new Error(`fio reported ${jobs.length} jobs for ${volumes.length} volumes`);
  return jobs;
}

async function loadRun(s: StartedCluster, o: FleetOptions, repeat: number): Promise<LoadRun> {
  const pids = pidsOf(s.c);
  const stopRss = rssSampler(pids);
  const cpu0 = cpuNow(pids);
  const jobs = await runFioJobs(s.c.nbdPort, s.volumes, o.iodepth, o.seconds);
  const cpu1 = cpuNow(pids);
  const rssBytesPeak = stopRss();
  const ops = jobs.reduce((n, j) => n + j.ops, 0);
  const cpuUsPerOpBy: Record<string, number> = {};
  let cpuS = 0;
  for (const n of Object.keys(cpu0)) {
    const d = cpu1[n]! - cpu0[n]!;
    cpuS += d;
    cpuUsPerOpBy[n] = (d * 1e6) / ops;
  }
  const memory: Record<string, Memory> = {};
  for (const n of siteNames) memory[n] = await memoryOf(s.c, n, pids[n]!);
  return {
    layout: s.layout.id, repeat, iops: jobs.reduce((n, j) => n + j.iops, 0), ops, perVolumeIops: jobs.map((j) => j.iops), latP99Us: median(jobs.map((j) => j.latP99Us)),
    cpuUsPerOp: (cpuS * 1e6) / ops, cpuUsPerOpBy, rssBytesPeak, memory,
  };
}

// ---- failover points ---------------------------------------------------------------------------

/** The wall-clock time of each group's latest promotion record at the standby. */
function promotionTimes(s: SiteStatus, l: Layout): number[] {
  const gs = s.groups ?? [{ group: '(the only group)', volumes: [], status: s }];
  return gs.map((g) => {
    const rec = g.status.failovers?.filter((f) => f.kind === 'promoted').at(-1);
    if (rec === undefined) throw new Error(`layout ${l.id}: group ${g.group} of backup acts as primary but has no promotion record`);
    return Date.parse(rec.at);
  });
}

async function failoverRun(l: Layout, o: FleetOptions, repeat: number): Promise<FailoverRun> {
  const s = await startCluster(l, o, fastLinkEnv, o.failoverTimeoutMs);
  const { c } = s;
  const writers: NbdWriter[] = [];
  let ok = false;
  try {
    const volumeBytes = o.volumeMib * MiB;
    const plans = s.volumes.map((_, i) => writesForever(volumeBytes, 9000 + 100 * repeat + i));
    for (const v of s.volumes) writers.push(await NbdWriter.connect(c.nbdPort, v));
    let killed = false;
    const ended: (Error | undefined)[] = s.volumes.map(() => undefined);
    const endedEarly = new Set<number>();
    const loads = writers.map((w, i) =>
      keepWriting(w, plans[i]!, o.iodepth, () => killed).then((err) => {
        ended[i] = err;
        if (!killed) endedEarly.add(i);
      }),
    );
    const t0 = Date.now();
    while (Date.now() - t0 < loadBeforeKillMs || writers.some((w) => w.acked.size < acksBeforeKillMin)) {
      if (endedEarly.size > 0) {
        // Seen on the loaded shared machine: the standby took groups over while the primary was alive (it heard no frame for longer than the failover-timeout).
        const promoted = groupStatuses((await c.status('backup')) ?? ({} as SiteStatus)).filter((g) => g.standby?.phase === 'primary').length;
        throw new Error(`layout ${l.id}: the primary stopped taking writes before the kill (${[...endedEarly].map((i) => `${s.volumes[i]}: ${ended[i]?.message ?? 'stopped'}`).slice(0, 3).join('; ')}); ${promoted} group(s) of backup act as primary: a failover without a kill`);
      }
      if (Date.now() - t0 > failoverWaitMsMax) throw new Error(`layout ${l.id}: writers made too little progress before the kill: ${writers.map((w, i) => `${s.volumes[i]}=${w.acked.size}`).join(' ')}`);
      await sleep(pollMs);
    }
    const killedAt = Date.now();
    await c.kill9('local');
    killed = true;
    const deadline = killedAt + failoverWaitMsMax;
    // The hosts: each volume's writer reconnects to the standby's export of that volume.
    const acks = Promise.all(s.volumes.map((v, i) => firstAckedWrite(c.standbyNbdPort, v, plans[i]!, deadline)));
    await Promise.all(loads);
    const promoted = await c.waitStatus('backup', (st) => {
      const gs = groupStatuses(st);
      return gs.length === l.groups && gs.every((g) => g.standby?.phase === 'primary');
    }, `every one of ${l.groups} group(s) promoted`, failoverWaitMsMax);
    const promotedAt = promotionTimes(promoted, l);
    const ackedAt = await acks;
    const lastPromotedAt = Math.max(...promotedAt);
    await c.waitStatus('backup', (st) => groupStatuses(st).every((g) => g.peers.some((p) => p.name === 'east' && p.sync === 'in-sync' && p.link === 'up')), `east in sync in every one of ${l.groups} group(s) after the failover`, syncWaitMsMax);
    const resyncMs = Date.now() - lastPromotedAt;
    ok = true;
    return {
      layout: l.id, repeat, promoteFirstMs: Math.min(...promotedAt) - killedAt, promoteAllMs: lastPromotedAt - killedAt,
      writeFirstMs: Math.min(...ackedAt) - killedAt, writeAllMs: Math.max(...ackedAt) - killedAt, resyncMs,
    };
  } finally {
    for (const w of writers) w.close();
    if (ok) await c.destroy();
    else await c.stopAll(); // logs kept in c.dir for the report
    if (!ok) process.stderr.write(`bench/fleet: failover run of layout ${l.id} failed; logs kept in ${c.dir}\n`);
  }
}

// ---- the run -----------------------------------------------------------------------------------

const mib = (b: number | undefined): string => (b === undefined || !Number.isFinite(b) ? 'n/a' : (b / MiB).toFixed(0));
const fmt = (v: number): string => (!Number.isFinite(v) ? 'n/a' : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const round2 = (xs: number[]): number[] => xs.map((x) => Math.round(x * 100) / 100);

export function rssGoalBytes(volumes: number): number {
  return goals.rssBaseBytes + goals.rssPerVolumeBytes * volumes;
}

export async function runFleet(o: FleetOptions): Promise<FleetResult> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const host = { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '?', node: process.version, fio: await toolVersion('fio', ['--version']), loadAvgStart: round2(loadavg()), loadAvgEnd: [] as number[] };
  const profileRoot = o.profile ? join(tmpdir(), `geomirror-fleet-prof-${process.pid}`) : undefined;
  const started: StartedCluster[] = [];
  const atRest: Record<string, Record<string, number>> = {};
  const idle: Record<string, Record<string, number>> = {};
  const load: LoadRun[] = [];
  const failover: FailoverRun[] = [];
  /** What went wrong in a failover run, said in the report (that run is left out of the medians). */
  const failures: string[] = [];
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping every site`);
    void Promise.all(started.map((s) => s.c.stopAll().catch(() => undefined))).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let ok = false;
  try {
    // Throughput: every layout up at once (started one after the other: start-up is CPU-bound).
    // Default link timing here: the short one of the failover points only matters there.
    for (const l of o.layouts) {
      log(`starting layout ${l.id} (${layoutLabel(l)}) ...`);
      const s = await startCluster(l, o, { GEOMIRROR_LOG_LEVEL: 'warn' }, throughputFailoverTimeoutMs, profileRoot ? join(profileRoot, l.id.replace('/', 'g')) : undefined);
      started.push(s);
      atRest[l.id] = Object.fromEntries(siteNames.map((n) => [n, rssBytes(s.pids[n]!) ?? NaN]));
      log(`layout ${l.id}: in sync; RSS at rest ${siteNames.map((n) => `${n} ${mib(atRest[l.id]![n])} MiB`).join(', ')}`);
    }
    // What a fleet costs at rest: every group's timers, heartbeats and links, with no writer.
    const cpuIdle0 = started.map((s) => cpuNow(s.pids));
    await sleep(idleWindowMs);
    started.forEach((s, i) => {
      const c1 = cpuNow(s.pids);
      idle[s.layout.id] = Object.fromEntries(siteNames.map((n) => [n, ((c1[n]! - cpuIdle0[i]![n]!) * 1e3) / (idleWindowMs / 1e3)]));
      log(`layout ${s.layout.id}: idle CPU ${siteNames.map((n) => `${n} ${idle[s.layout.id]![n]!.toFixed(0)}`).join(', ')} ms/s`);
    });
    for (let r = 0; r < o.repeat; r++) {
      const k = r % started.length;
      for (const s of [...started.slice(k), ...started.slice(0, k)]) {
        const row = await loadRun(s, o, r);
        load.push(row);
        log(
          `repeat ${r + 1}/${o.repeat}  ${layoutLabel(s.layout).padEnd(30)} ${row.iops.toFixed(0).padStart(7)} IOPS (per volume ${Math.min(...row.perVolumeIops).toFixed(0)}-${Math.max(...row.perVolumeIops).toFixed(0)})  ` +
            `CPU ${row.cpuUsPerOp.toFixed(0)} us/op (${Object.entries(row.cpuUsPerOpBy).map(([n, v]) => `${n} ${v.toFixed(0)}`).join(', ')})  RSS ${siteNames.map((n) => `${n} ${mib(row.rssBytesPeak[n])}`).join(', ')} MiB`,
        );
      }
    }
    await Promise.all(started.map((s) => s.c.stopAll()));
    // Failover: a fresh cluster per run (the kill leaves it with a new primary), layouts alternating.
    for (let r = 0; r < o.repeat && o.failoverLayouts.length > 0; r++) {
      const k = r % o.failoverLayouts.length;
      for (const l of [...o.failoverLayouts.slice(k), ...o.failoverLayouts.slice(0, k)]) {
        for (let attempt = 1; attempt <= startupAttemptsMax; attempt++) {
          try {
            const f = await failoverRun(l, o, r);
            failover.push(f);
            log(`repeat ${r + 1}/${o.repeat}  failover ${layoutLabel(l).padEnd(30)} promoted all ${f.promoteAllMs} ms (first ${f.promoteFirstMs})  write acked on every volume ${f.writeAllMs} ms (first ${f.writeFirstMs})  resync ${f.resyncMs} ms`);
            break;
          } catch (err) {
            const what = `failover ${layoutLabel(l)}, repeat ${r + 1}, attempt ${attempt}: ${(err as Error).message.split('\n')[0]!.slice(0, 600)}`;
            failures.push(what);
            log(what);
            if (!(err instanceof StartupError)) break;
          }
        }
      }
    }
    ok = true;
  } finally {
    for (const s of started) {
      if (ok) await s.c.destroy();
      else await s.c.stopAll();
    }
    if (!ok) log(`bench failed; logs of the clusters kept in ${started.map((s) => s.c.dir).join(', ')}`);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  host.loadAvgEnd = round2(loadavg());

  const profile = profileRoot ? profilesOf(started) : undefined;
  const layouts = summarizeLoad(o, load, atRest, idle);
  const failovers = summarizeFailover(o, failover);
  const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replaceAll(':', '-');
  mkdirSync(o.outDir, { recursive: true });
  const files = { md: join(o.outDir, `fleet-${date}.md`), json: join(o.outDir, `fleet-${date}.json`) };
  const { log: _log, layouts: ls, failoverLayouts: fls, outDir: _out, ...rest } = o;
  const result: FleetResult = {
    date, commandLine: o.commandLine, host, options: { ...rest, layouts: ls.map((l) => l.id), failoverLayouts: fls.map((l) => l.id) },
    load, failover, layouts, failovers, failures, goals: goalsOf(layouts, failovers), ...(profile ? { profile } : {}), files,
  };
  writeFileSync(files.json, `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(files.md, `${markdownReport(result)}\n`);
  return result;
}

/** node --cpu-prof writes one file per process, named by pid: sort them into a directory per site, then summarize. */
function profilesOf(started: StartedCluster[]): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  for (const s of started) {
    if (s.profileDir === undefined || !existsSync(s.profileDir)) continue;
    const sites = Object.fromEntries(Object.entries(s.pids).map(([n, pid]) => [String(pid), n]));
    for (const f of readdirSync(s.profileDir).filter((x) => x.endsWith('.cpuprofile'))) {
      const pid = /^CPU\.\d+\.\d+\.(\d+)\./.exec(f)?.[1];
      const site = pid === undefined ? undefined : sites[pid];
      if (site === undefined) continue;
      mkdirSync(join(s.profileDir, site), { recursive: true });
      renameSync(join(s.profileDir, f), join(s.profileDir, site, f));
    }
    out[layoutLabel(s.layout)] = Object.fromEntries(siteNames.map((n) => [n, summarizeProfile(join(s.profileDir!, n))]));
  }
  return out;
}

/** Medians over repeats per layout (RSS: the peak over repeats); ratios against the one-volume layout. */
export function summarizeLoad(o: Pick<FleetOptions, 'layouts'>, load: readonly LoadRun[], atRest: Record<string, Record<string, number>>, idle: Record<string, Record<string, number>>): LayoutSummary[] {
  const rows = o.layouts.map((l) => {
    const rs = load.filter((x) => x.layout === l.id);
    const rss: Record<string, number> = {};
    for (const x of rs) for (const [n, b] of Object.entries(x.rssBytesPeak)) rss[n] = Math.max(rss[n] ?? 0, b);
    const by: Record<string, number> = {};
    for (const n of siteNames) by[n] = median(rs.map((x) => x.cpuUsPerOpBy[n] ?? NaN));
    return {
      layout: l, iops: median(rs.map((x) => x.iops)), ratio: NaN, perVolumeIopsMin: Math.min(...rs.flatMap((x) => x.perVolumeIops)), perVolumeIopsMax: Math.max(...rs.flatMap((x) => x.perVolumeIops)),
      latP99Us: median(rs.map((x) => x.latP99Us)), cpuUsPerOp: median(rs.map((x) => x.cpuUsPerOp)), cpuUsPerOpBy: by, rssBytesPeak: rss, rssBytesAtRest: atRest[l.id] ?? {}, idleCpuMsPerS: idle[l.id] ?? {},
      rssGoalBytes: rssGoalBytes(l.volumes), primaryMemory: rs.at(-1)?.memory.local,
      anonymousBytes: Object.fromEntries(siteNames.map((n) => [n, Math.max(...rs.map((x) => x.memory[n]?.anonymousBytes ?? NaN))])),
    };
  });
  const base = rows.find((x) => x.layout.volumes === 1);
  for (const x of rows) x.ratio = base === undefined ? NaN : x.iops / base.iops;
  return rows;
}

export function summarizeFailover(o: Pick<FleetOptions, 'failoverLayouts'>, runs: readonly FailoverRun[]): FailoverSummary[] {
  return o.failoverLayouts.map((l) => {
    const rs = runs.filter((x) => x.layout === l.id);
    const m = (k: keyof Pick<FailoverRun, 'promoteFirstMs' | 'promoteAllMs' | 'writeFirstMs' | 'writeAllMs' | 'resyncMs'>): number => median(rs.map((x) => x[k]));
    return { layout: l, runs: rs.length, promoteFirstMs: m('promoteFirstMs'), promoteAllMs: m('promoteAllMs'), writeFirstMs: m('writeFirstMs'), writeAllMs: m('writeAllMs'), resyncMs: m('resyncMs') };
  });
}

/** One row per goal of the issue and layout it applies to. */
export function goalsOf(layouts: readonly LayoutSummary[], failovers: readonly FailoverSummary[]): GoalRow[] {
  const out: GoalRow[] = [];
  for (const x of layouts) {
    if (x.layout.volumes === 1 || !Number.isFinite(x.ratio)) continue;
    out.push({ goal: `aggregate IOPS, ${layoutLabel(x.layout)} / 1 volume`, measured: `${x.ratio.toFixed(2)}x (${x.iops.toFixed(0)} / ${(x.iops / x.ratio).toFixed(0)})`, target: `>= ${goals.iopsRatioMin.toFixed(1)}x`, pass: x.ratio >= goals.iopsRatioMin });
  }
  for (const x of layouts) {
    const worst = Math.max(...siteNames.map((n) => x.rssBytesPeak[n] ?? NaN));
    out.push({ goal: `peak RSS per site, ${layoutLabel(x.layout)}`, measured: `${siteNames.map((n) => `${n} ${mib(x.rssBytesPeak[n])}`).join(', ')} MiB`, target: `<= ${mib(x.rssGoalBytes)} MiB`, pass: worst <= x.rssGoalBytes });
  }
  const base = failovers.find((x) => x.layout.volumes === 1);
  for (const x of failovers) {
    if (base === undefined || x.layout.volumes === 1) continue;
    if (x.runs === 0 || base.runs === 0) {
      out.push({ goal: `failover, ${layoutLabel(x.layout)} / 1 volume`, measured: 'no successful run (see the failed runs above)', target: `<= ${goals.failoverRatioMax}x`, pass: false });
      continue;
    }
    const p = x.promoteAllMs / base.promoteAllMs;
    const w = x.writeAllMs / base.writeAllMs;
    out.push({ goal: `failover, kill -> every group promoted, ${layoutLabel(x.layout)} / 1 volume`, measured: `${p.toFixed(2)}x (${fmt(x.promoteAllMs)} / ${fmt(base.promoteAllMs)} ms)`, target: `<= ${goals.failoverRatioMax}x`, pass: p <= goals.failoverRatioMax });
    out.push({ goal: `failover, kill -> a write acked on every volume, ${layoutLabel(x.layout)} / 1 volume`, measured: `${w.toFixed(2)}x (${fmt(x.writeAllMs)} / ${fmt(base.writeAllMs)} ms)`, target: `<= ${goals.failoverRatioMax}x`, pass: w <= goals.failoverRatioMax });
  }
  return out;
}

export function markdownReport(r: FleetResult): string {
  const o = r.options;
  const lines: string[] = [];
  lines.push(`### bench:fleet: many volumes on one cluster vs one volume (${r.date})`, '');
  lines.push(`\`${r.commandLine}\` on ${r.host.cpus} x ${r.host.cpuModel}, Node ${r.host.node}, ${r.host.fio}. Sites \`local\` (primary), \`backup\` (standby) and \`east\` (mirror), each one \`geomirror site\` process on loopback files; volumes of ${o.volumeMib} MiB, cache ${o.cacheMibPerVolume} MiB per volume per site. Writers: one fio job per volume (nbd engine, 4 KiB randwrite, iodepth ${o.iodepth}, ${o.seconds} s), layouts alternating within each repeat; medians of ${o.repeat} repeat(s). Load average (1, 5, 15 min) ${r.host.loadAvgStart.join(' ')} at the start, ${r.host.loadAvgEnd.join(' ')} at the end.`, '');
  if (r.layouts.length > 0) lines.push('| layout | aggregate IOPS | vs 1 volume | per-volume IOPS (min-max) | p99 latency (us, median of volumes) | CPU us/op (per site) | peak RSS per site (MiB) | RSS at rest (MiB) | own (anonymous) pages after the runs (MiB) | RSS goal (MiB) | primary heap used / total, external (MiB) | idle CPU per site (ms/s) |', '|---|---:|---:|---|---:|---|---|---|---|---:|---|---|');
  for (const x of r.layouts) {
    const pm = x.primaryMemory;
    lines.push(
      `| ${layoutLabel(x.layout)} | ${x.iops.toFixed(0)} | ${Number.isFinite(x.ratio) ? `${x.ratio.toFixed(2)}x` : 'n/a'} | ${x.perVolumeIopsMin.toFixed(0)}-${x.perVolumeIopsMax.toFixed(0)} | ${fmt(x.latP99Us)} | **${fmt(x.cpuUsPerOp)}** (${siteNames.map((n) => `${n} ${fmt(x.cpuUsPerOpBy[n] ?? NaN)}`).join(', ')}) | ` +
        `${siteNames.map((n) => `${n} ${mib(x.rssBytesPeak[n])}`).join(', ')} | ${siteNames.map((n) => `${n} ${mib(x.rssBytesAtRest[n])}`).join(', ')} | ${siteNames.map((n) => `${n} ${mib(x.anonymousBytes[n])}`).join(', ')} | ${mib(x.rssGoalBytes)} | ${pm ? `${mib(pm.heapUsedBytes)} / ${mib(pm.heapTotalBytes)}, ${mib(pm.externalBytes)}` : 'n/a'} | ${siteNames.map((n) => `${n} ${fmt(x.idleCpuMsPerS[n] ?? NaN)}`).join(', ')} |`,
    );
  }
  if (r.failovers.length > 0) {
    lines.push('', `Failover: kill -9 of the primary under a writer per volume (iodepth ${o.iodepth}), standby failover-timeout ${o.failoverTimeoutMs} ms, short link timing (test/e2e/harness.ts fastLinkEnv); a fresh cluster per run, medians of the successful runs.`, '');
    lines.push('| layout | runs | kill -> first group promoted (ms) | kill -> every group promoted (ms) | kill -> write acked on the first volume (ms) | kill -> write acked on every volume (ms) | last promotion -> mirror in sync in every group (ms) |', '|---|---:|---:|---:|---:|---:|---:|');
    for (const x of r.failovers) lines.push(`| ${layoutLabel(x.layout)} | ${x.runs} | ${fmt(x.promoteFirstMs)} | ${fmt(x.promoteAllMs)} | ${fmt(x.writeFirstMs)} | ${fmt(x.writeAllMs)} | ${fmt(x.resyncMs)} |`);
  }
  if (r.failures.length > 0) lines.push('', `**Failover runs that failed** (left out of the medians; logs kept): ${r.failures.length}`, '', ...r.failures.map((f) => `- ${f}`));
  lines.push('', '| goal (issue 20) | measured | target | result |', '|---|---|---|---|');
  for (const g of r.goals) lines.push(`| ${g.goal} | ${g.measured} | ${g.target} | ${g.pass ? 'PASS' : 'MISS'} |`);
  for (const [layout, sites] of Object.entries(r.profile ?? {})) {
    for (const [site, top] of Object.entries(sites)) lines.push('', `CPU profile of ${site}, ${layout} (self time, top functions, whole life of the process):`, '', '```', ...top.slice(0, 15), '```');
  }
  lines.push('', `Raw runs: \`${relative(repoRoot, r.files.json)}\`.`);
  return lines.join('\n');
}

// ---- command line ------------------------------------------------------------------------------

export function parseArgs(argv: string[]): FleetOptions {
  let layouts: string[] | undefined;
  let failoverLayouts: string[] | undefined;
  const o: FleetOptions = {
    seconds: 10, repeat: 3, volumes: 16, volumeMib: 64, iodepth: 8, cacheMibPerVolume: 16, layouts: [], failoverLayouts: [], failoverTimeoutMs: 1000, profile: false, siteNodeArgs: [],
    outDir: join(repoRoot, 'bench/results'), commandLine: ['node --import tsx bench/fleet.ts', ...argv].join(' '),
  };
  let quick = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const posInt = (v: string, min = 1): number => {
      if (!/^[1-9]\d*$/.test(v) || Number(v) < min) throw new Error(`${a} ${v}: expected a whole number of at least ${min}`);
      return Number(v);
    };
    if (a === '--seconds') o.seconds = posInt(val());
    else if (a === '--repeat') o.repeat = posInt(val());
    else if (a === '--volumes') o.volumes = posInt(val(), 2);
    else if (a === '--volume-mib') o.volumeMib = posInt(val(), 4);
    else if (a === '--iodepth') o.iodepth = posInt(val());
    else if (a === '--cache-mib-per-volume') o.cacheMibPerVolume = posInt(val(), 4);
    else if (a === '--failover-timeout') o.failoverTimeoutMs = posInt(val(), 100);
    else if (a === '--layouts') {
      const v = val();
      layouts = v === 'none' ? [] : v.split(',');
    }
    else if (a === '--failover-layouts') {
      const v = val();
      failoverLayouts = v === 'none' ? [] : v.split(',');
    }
    else if (a === '--quick') quick = true;
    else if (a === '--profile') o.profile = true;
    else if (a === '--site-node-args') o.siteNodeArgs = val().split(' ').filter((x) => x !== '');
    else if (a === '--out') o.outDir = resolve(val());
    else if (a === '--help' || a === '-h') {
      process.stdout.write(
        'usage: node --import tsx bench/fleet.ts [--seconds 10] [--repeat 3] [--volumes 16] [--volume-mib 64] [--iodepth 8] [--cache-mib-per-volume 16]\n' +
          '         [--layouts 1,16,16/2] [--failover-layouts 1,16 | none] [--failover-timeout 1000] [--quick] [--profile] [--site-node-args "FLAGS"] [--out DIR]\n' +
          '  a layout is V (V volumes, each its own consistency group) or V/G (V volumes in G groups)\n' +
          '  --quick: a smoke run (2 volumes of 16 MiB, 3 s, one repeat) unless those options are given too\n',
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a}; see --help`);
  }
  if (quick) {
    const given = (flag: string) => argv.includes(flag);
    if (!given('--seconds')) o.seconds = 3;
    if (!given('--repeat')) o.repeat = 1;
    if (!given('--volumes')) o.volumes = 2;
    if (!given('--volume-mib')) o.volumeMib = 16;
  }
  o.layouts = (layouts ?? ['1', String(o.volumes), ...(o.volumes % 2 === 0 && o.volumes > 2 ? [`${o.volumes}/2`] : [])]).map(parseLayout);
  o.failoverLayouts = (failoverLayouts ?? ['1', String(o.volumes)]).map(parseLayout);
  for (const [what, ls] of [['--layouts', o.layouts], ['--failover-layouts', o.failoverLayouts]] as const) {
    if (new Set(ls.map((l) => l.id)).size !== ls.length) throw new Error(`${what}: a layout is listed twice`);
  }
  return o;
}

await benchMain(import.meta.url, 'fleet', parseArgs, async (opts) => {
  const r = await runFleet(opts);
  return `${markdownReport(r)}\n\nwrote ${r.files.md} and ${r.files.json}`;
});

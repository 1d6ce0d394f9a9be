// bench:fanout (issue 5): what synchronous fan-out costs the host, through the in-process host
// API (Replica.write, no NBD). The primary runs in this process; each mirror is its own
// `geomirror site` process on loopback files (as in production, and so the mirrors do not share
// the primary's event loop). Points: 4 KiB writes at queue depth 1 and 32, and 1 MiB writes,
// each with 0, 1 and 2 mirrors. "0 mirrors" is the same primary core, cache journal and storage
// with an empty mirror list, so the ratio isolates the cost of fan-out.
//
// Configurations alternate (0,1,2,0,1,2,...) so drift in machine load hits all of them alike;
// each point is repeated and the table shows medians and the median of per-round ratios.
//
// --mirrors-in-process runs the mirrors' Replicas in this process as well (one event loop for
// every site): a cross-check that separates cross-process scheduling from work on the path.
//
//   npm run bench:fanout [-- --rounds 3 --seconds 2] [-- --mirrors-in-process]
import { Command } from 'commander';
import { loadavg, cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { loadConfig, readSecret } from '../src/site/config.js';
import { createLogger } from '../src/site/log.js';
import { createSiteMetrics } from '../src/site/metrics.js';
import { openSiteDevices, Replica } from '../src/site/replica.js';
import type { SiteContext } from '../src/site/run.js';
import { siteSecurity } from '../test/net/tls-fixture.js';
import { regionCount } from '../src/core/regions.js';
import { defaultLimits } from '../src/core/types.js';
import { Cluster, prng } from '../test/e2e/harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Point {
  name: string;
  writeBytes: number;
  depth: number;
}
const points: Point[] = [
  { name: '4 KiB QD1', writeBytes: 4 * KiB, depth: 1 },
  { name: '4 KiB QD32', writeBytes: 4 * KiB, depth: 32 },
  { name: '1 MiB QD4', writeBytes: 1 * MiB, depth: 4 },
];
const mirrorCounts = [0, 1, 2] as const;
const allMirrors = ['east', 'west'];

const program = new Command('bench:fanout')
  .option('--rounds <n>', 'repetitions of every (point, mirrors) pair', '3')
  .option('--seconds <s>', 'measured time per run', '2')
  .option('--volume-mib <n>', 'volume size', '256')
  .option('--mirrors-in-process', 'run the mirrors in this process too (one event loop for all sites) instead of as site processes')
  .option('--flush-after-writes <n>', 'Limits.flushAfterWritesMax of the sites in this process (default: the core default); shows how much of the cost is per-site fsync on one shared disk')
  .parse();
const opts = program.opts<{ rounds: string; seconds: string; volumeMib: string; mirrorsInProcess?: boolean; flushAfterWrites?: string }>();
const flushAfterWritesMax = opts.flushAfterWrites === undefined ? undefined : Number(opts.flushAfterWrites);
if (flushAfterWritesMax !== undefined && !(Number.isSafeInteger(flushAfterWritesMax) && flushAfterWritesMax >= 1)) throw new Error('--flush-after-writes: a whole number >= 1');
const rounds = Number(opts.rounds);
const runMs = Number(opts.seconds) * 1000;
const volumeBytes = Number(opts.volumeMib) * MiB;
if (!(rounds >= 1 && runMs > 0 && volumeBytes >= 16 * MiB)) throw new Error('--rounds >= 1, --seconds > 0, --volume-mib >= 16');

interface Result {
  iops: number;
  mibPerSec: number;
}

/** One timed run: `depth` writes kept in flight at seeded aligned offsets until runMs passed. */
async function measure(replica: Replica, p: Point, seed: number): Promise<Result> {
  const rnd = prng(seed);
  const slots = volumeBytes / p.writeBytes;
  const payload = Buffer.alloc(p.writeBytes, seed & 0xff);
  let ops = 0;
  const warmupMs = 200;
  const t0 = performance.now();
  let tStart = 0;
  let opsAtStart = 0;
  let tEnd = 0;
  const worker = async () => {
    for (;;) {
      const now = performance.now();
      if (tStart === 0 && now - t0 >= warmupMs) {
        tStart = now;
        opsAtStart = ops;
      }
      if (tStart !== 0 && now - tStart >= runMs) {
        tEnd ||= now;
        return;
      }
      await replica.host.write(Math.floor(rnd() * slots) * p.writeBytes, payload, false);
      ops++;
    }
  };
  await Promise.all(Array.from({ length: p.depth }, worker));
  const secs = (tEnd - tStart) / 1000;
  const n = ops - opsAtStart;
  return { iops: n / secs, mibPerSec: (n * p.writeBytes) / MiB / secs };
}

/** Opens one site's Replica in this process; `mirrors` overrides a primary's mirror list. */
async function openReplica(configPath: string, name: string, mirrors?: string[]): Promise<Replica> {
  const config = loadConfig(configPath);
  const site = { ...config.sites[name]!, ...(mirrors ? { mirrors } : {}) };
  const ctx: SiteContext = {
    config,
    site,
    secret: readSecret(config),
    linkSecurity: await siteSecurity(config, name),
    log: createLogger({ site: name, level: 'warn', format: 'json' }),
    metrics: createSiteMetrics({ site: name, role: site.role, cluster: config.cluster, processMetrics: false }),
  };
  const dev = await openSiteDevices(ctx, regionCount(volumeBytes, defaultLimits.regionBytes));
  const r = new Replica(ctx, dev, flushAfterWritesMax === undefined ? {} : { limits: { flushAfterWritesMax } });
  await r.start();
  return r;
}

async function openPrimary(configPath: string, mirrors: string[]): Promise<Replica> {
  const r = await openReplica(configPath, 'local', mirrors);
  // Wait until every mirror joined in sync (the core sends no writes to a joining mirror).
  const deadline = Date.now() + 30_000;
  for (;;) {
    const s = r.status();
    if (s.peers.length === mirrors.length && s.peers.every((p) => p.sync === 'in-sync' && p.link === 'up')) break;
    if (Date.now() > deadline) throw new Error(`mirrors ${mirrors.join(', ')} did not join: ${JSON.stringify(s.peers)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
  return r;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const cluster = await Cluster.create({ volumeBytes, cacheBytes: 64 * MiB, mirrors: allMirrors, env: {} }); // default link timing, as in production
  const results = new Map<string, Result[]>(); // `${point}|${mirrors}`
  let stopInProcess = async (): Promise<void> => undefined;
  try {
    const inProcess: Replica[] = [];
    if (opts.mirrorsInProcess) for (const m of allMirrors) inProcess.push(await openReplica(cluster.configPath, m));
    else await cluster.start(allMirrors);
    stopInProcess = () => Promise.all(inProcess.map((r) => r.stop())).then(() => undefined);
    console.log(`bench:fanout: primary in-process (host API, no NBD), mirrors ${allMirrors.join(', ')} ${opts.mirrorsInProcess ? 'in the same process' : 'as site processes'} on loopback files`);
    if (flushAfterWritesMax !== undefined) console.log(`flushAfterWritesMax ${flushAfterWritesMax} on the sites in this process${opts.mirrorsInProcess ? '' : ' (the primary only; mirror processes keep the default)'}`);
    console.log(`volume ${volumeBytes / MiB} MiB, ${rounds} round(s) x ${runMs / 1000} s per run, ${cpus().length} CPU(s), load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    let seed = 1;
    for (let round = 0; round < rounds; round++) {
      for (const k of mirrorCounts) {
        const replica = await openPrimary(cluster.configPath, allMirrors.slice(0, k));
        try {
          for (const p of points) {
            const r = await measure(replica, p, seed++);
            const key = `${p.name}|${k}`;
            results.set(key, [...(results.get(key) ?? []), r]);
            process.stderr.write(`  round ${round + 1} ${k} mirror(s) ${p.name}: ${r.iops.toFixed(0)} IOPS ${r.mibPerSec.toFixed(1)} MiB/s\n`);
          }
          await replica.host.flush();
        } finally {
          await replica.stop();
        }
      }
    }
  } finally {
    await stopInProcess();
    await cluster.destroy();
  }

  const rows: string[][] = [['point', 'mirrors', 'IOPS (median)', 'MiB/s (median)', 'ratio vs 0 mirrors']];
  const goal: string[] = [];
  for (const p of points) {
    const base = results.get(`${p.name}|0`)!;
    for (const k of mirrorCounts) {
      const rs = results.get(`${p.name}|${k}`)!;
      // Ratio per round (each against the 0-mirror run of the same round), then the median.
      const ratio = median(rs.map((r, i) => r.iops / base[i]!.iops));
      rows.push([p.name, String(k), median(rs.map((r) => r.iops)).toFixed(0), median(rs.map((r) => r.mibPerSec)).toFixed(1), `${ratio.toFixed(2)}x`]);
      if (p.name === '4 KiB QD32' && k === 2) goal.push(`goal (2 mirrors >= 0.5x of 0 mirrors at 4 KiB QD32): ${ratio.toFixed(2)}x, ${ratio >= 0.5 ? 'met' : 'NOT met'}`);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
  for (const g of goal) console.log(g);
}

await main();
process.exit(0);

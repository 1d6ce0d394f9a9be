// `npm run sim -- --seed S` replays one seed with a readable trace;
// `npm run sim -- --seeds N [--from F]` runs N seeds and prints each failure with its seed.
// `npm run sim -- --topology failover --volumes seeded --seeds N` runs the failover topology with
// a consistency group of 2-4 volumes and the log workload (group-cut checks, test/sim/group.ts).
import { Command } from 'commander';
import { runFailover } from './failover.js';
import { runSim, type SimResult, type Topology } from './sim.js';

type CliTopology = Topology | 'failover';

const program = new Command()
  .name('sim')
  .description('deterministic simulation of the geomirror core (primary + mirrors) under seeded faults')
  .option('--seed <n>', 'replay one seed with a readable trace', (v) => parseSeed(v))
  .option('--seeds <n>', 'run this many seeds (no trace)', (v) => parseSeed(v))
  .option('--from <n>', 'first seed of a --seeds run', (v) => parseSeed(v), 1)
  .option('--ops <n>', 'host operations per run (default: seeded 120-240)', (v) => parseSeed(v))
  .option('--quiet', 'with --seed: only the verdict, no trace')
  .option('--flush-after-writes <n>', 'every site flushes its storage after n performed writes (default: seeded, or 16 in the failover topology; the product default is 256)', (v) => {
    const n = parseSeed(v);
    if (n < 1) throw new Error(`--flush-after-writes ${v}: use 1 or more`);
    return n;
  })
  .option('--topology <t>', 'fanout (default), chain (local -> r1 -> r2 -> remote), mixed (east direct + r1 -> r2 -> west) or failover (local + backup standby + east + west; --ops is ignored)', (v) => {
    if (v !== 'fanout' && v !== 'chain' && v !== 'mixed' && v !== 'failover') throw new Error(`--topology ${v}: use fanout, chain, mixed or failover`);
    return v as CliTopology;
  })
  .option('--volumes <n>', 'failover topology: split the volume into a consistency group of n volumes (2-4), or "seeded" (2-4 drawn per seed); default 1', (v) => {
    if (v === 'seeded') return v;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 4) throw new Error(`--volumes ${v}: use 1, 2, 3, 4 or seeded`);
    return n;
  })
  .option('--workload <w>', 'with --volumes: log (default: sequence-numbered dependent records, group-cut checks) or random', (v) => {
    if (v !== 'log' && v !== 'random') throw new Error(`--workload ${v}: use log or random`);
    return v as 'log' | 'random';
  })
  .option('--load', 'log workload: always add concurrent random writes (default: drawn per seed)')
  .option('--no-load', 'log workload: never add concurrent random writes');
program.parse();
const o = program.opts<{ seed?: number; seeds?: number; from: number; ops?: number; quiet?: boolean; flushAfterWrites?: number; topology?: CliTopology; volumes?: number | 'seeded'; workload?: 'log' | 'random'; load?: boolean }>();
if ((o.volumes !== undefined || o.workload !== undefined) && o.topology !== 'failover') throw new Error('--volumes and --workload need --topology failover');
const loadGiven = process.argv.some((a) => a === '--load' || a === '--no-load');

function parseSeed(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`"${v}" is not a non-negative integer`);
  return n;
}

/** --flush-after-writes, as both drivers take it. */
const flushRule = o.flushAfterWrites !== undefined ? { flushAfterWritesMax: o.flushAfterWrites } : {};

/** The failover topology has its own driver (test/sim/failover.ts); the others share sim.ts. */
function run(seed: number, trace: ((line: string) => void) | undefined): SimResult {
  if (o.topology === 'failover') {
    return runFailover(seed, {
      trace,
      ...(o.volumes !== undefined ? { volumes: o.volumes } : {}),
      ...(o.workload !== undefined ? { workload: o.workload } : {}),
      ...(loadGiven && o.load !== undefined ? { load: o.load } : {}),
      ...flushRule,
    });
  }
  return runSim({ seed, hostOps: o.ops, topology: o.topology, trace, ...flushRule });
}

/** The options of this run that shape a seed (for the replay line of a failed seed). */
const replayArgs = [
  o.topology !== undefined ? `--topology ${o.topology} ` : '',
  o.ops !== undefined ? `--ops ${o.ops} ` : '',
  o.flushAfterWrites !== undefined ? `--flush-after-writes ${o.flushAfterWrites} ` : '',
  o.volumes !== undefined ? `--volumes ${o.volumes} ` : '',
  o.workload !== undefined ? `--workload ${o.workload} ` : '',
  loadGiven && o.load !== undefined ? (o.load ? '--load ' : '--no-load ') : '',
].join('');

if (o.seed !== undefined) {
  const r = run(o.seed, o.quiet ? undefined : (line) => console.log(line));
  console.log(`seed ${r.seed}: ${r.ok ? 'ok' : 'FAILED'} ${JSON.stringify(r.stats)}`);
  for (const f of r.failures) console.log(`  ${f}`);
  process.exitCode = r.ok ? 0 : 1;
} else {
  const n = o.seeds ?? 100;
  const t0 = performance.now();
  let failed = 0;
  for (let seed = o.from; seed < o.from + n; seed++) {
    const r = run(seed, undefined);
    if (!r.ok) {
      failed++;
      console.log(`seed ${seed} FAILED: ${r.failures.join('; ')}  (replay: npm run sim -- ${replayArgs}--seed ${seed})`);
    }
  }
  console.log(`${n - failed}/${n} seeds ok in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  process.exitCode = failed === 0 ? 0 : 1;
}

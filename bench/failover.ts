// bench:failover (issue 10): how long the volume is unavailable when the primary dies. Every
// site is its own `geomirror site` process (test/e2e/harness.ts): primary `local`, standby
// `backup`, mirrors `east` and `west`, on loopback files. A writer keeps 4 KiB writes at QD8
// going over NBD to the primary, the primary is killed with kill -9, and the writer reconnects to
// the standby's export as soon as it listens. Per failover-timeout setting, --repeat runs:
//
//   promote    kill -9 -> the standby's promotion record (its wall-clock time), and that as a
//              ratio of the configured failover-timeout (the thing an operator tunes)
//   write gap  kill -9 -> the first write acked by the new primary (what the host sees)
//   resync     promotion -> east and west back in sync (a full-volume resync from the standby)
//
// Output: a Markdown table under bench/results/ and on stdout.
//
//   npm run bench:failover [-- --timeouts 1000,3000 --repeat 3 --volume-mib 64]
import { Command } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Cluster, NbdWriter, sleep } from '../test/e2e/harness.js';
import { connectBy, keepWriting, writesForever } from './writers.js';

interface Run {
  timeoutMs: number;
  promoteMs: number;
  writeGapMs: number;
  resyncMs: number;
}

const MiB = 1024 * 1024;

async function once(timeoutMs: number, volumeBytes: number, seed: number): Promise<Run> {
  const c = await Cluster.create({ standby: 'backup', failoverTimeoutMs: timeoutMs, volumeBytes });
  try {
    await c.start();
    await c.waitInSync();
    await c.waitStatus('backup', (s) => s.standby?.inSync === true, 'backup confirmed in sync');
    const next = writesForever(volumeBytes, seed);
    const w = await NbdWriter.connect(c.nbdPort);
    let stop = false;
    const load = keepWriting(w, next, 8, () => stop);
    await sleep(1000);
    const killedAt = Date.now();
    await c.kill9('local');
    stop = true;
    await load;
    w.close();

    const w2 = await connectBy(c.standbyNbdPort, Date.now() + 60_000);
    await w2.write(next());
    const firstAckAt = Date.now();
    w2.close();
    const promoted = await c.waitStatus('backup', (s) => s.role === 'primary', 'promoted');
    const rec = promoted.failovers?.find((f) => f.kind === 'promoted');
    if (rec === undefined) throw new Error('backup is primary but has no promotion record');
    const promotedAt = Date.parse(rec.at);
    await c.waitStatus('backup', (s) => ['east', 'west'].every((n) => s.peers.find((p) => p.name === n)?.sync === 'in-sync'), 'east and west in sync', 600_000);
    return { timeoutMs, promoteMs: promotedAt - killedAt, writeGapMs: firstAckAt - killedAt, resyncMs: Date.now() - promotedAt };
  } finally {
    await c.destroy();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const o = new Command()
  .option('--timeouts <list>', 'failover-timeout settings in ms, comma-separated', '1000,3000')
  .option('--repeat <n>', 'runs per setting (median reported)', (v) => Number(v), 3)
  .option('--volume-mib <n>', 'volume size (the resync copies all of it)', (v) => Number(v), 64)
  .parse()
  .opts<{ timeouts: string; repeat: number; volumeMib: number }>();

const runs: Run[] = [];
for (const timeoutMs of o.timeouts.split(',').map(Number)) {
  for (let i = 0; i < o.repeat; i++) {
    const r = await once(timeoutMs, o.volumeMib * MiB, 7000 + i);
    console.log(`timeout ${timeoutMs} ms: promoted ${r.promoteMs} ms (${(r.promoteMs / timeoutMs).toFixed(2)}x), first write on the new primary ${r.writeGapMs} ms, resync ${r.resyncMs} ms`);
    runs.push(r);
  }
}
const lines = ['| failover-timeout | promote (median) | promote / timeout | write gap (median) | full resync of ' + `${o.volumeMib} MiB to 2 mirrors (median) |`, '|---|---|---|---|---|'];
for (const t of [...new Set(runs.map((r) => r.timeoutMs))]) {
  const rs = runs.filter((r) => r.timeoutMs === t);
  const p = median(rs.map((r) => r.promoteMs));
  lines.push(`| ${t} ms | ${p} ms | ${(p / t).toFixed(2)}x | ${median(rs.map((r) => r.writeGapMs))} ms | ${median(rs.map((r) => r.resyncMs))} ms |`);
}
const table = lines.join('\n');
const outDir = resolve(import.meta.dirname, 'results');
mkdirSync(outDir, { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
writeFileSync(join(outDir, `failover-${stamp}.md`), `# bench:failover ${new Date().toISOString()}\n\nkill -9 of the primary under 4 KiB QD8 writes; ${o.repeat} run(s) per setting; each site a process on loopback files.\n\n${table}\n`);
console.log(`\n${table}\n\nwrote bench/results/failover-${stamp}.md`);

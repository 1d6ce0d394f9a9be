// bench:cascade (issue 7): what a relay chain costs the host. Every site is its own `geomirror
// site` process (test/e2e/cascade-harness.ts) with a WAN emulator proxy in front of each hop;
// writes go over NBD to the primary. Configurations: chains of 0..3 relays (0: the primary
// mirrors straight to the remote), each with `relay-ack: cached` and `end-to-end`, with no
// added latency and with --hop-ms (default 5 ms) one-way per hop.
//
// Per configuration two workloads, each for --seconds:
//   4 KiB writes at QD1  -> p50 / p99 host write latency (what one synchronous writer sees)
//   64 KiB writes at QD16 -> IOPS and MiB/s
// Output: a Markdown table and an SVG plot (p50 at QD1 against chain length) under
// bench/results/, plus the table on stdout.
//
//   npm run bench:cascade [-- --seconds 2 --hop-ms 5]
import { Command } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CascadeCluster, type CascadeSite } from '../test/e2e/cascade-harness.js';
import { NbdWriter, prng, type PlannedWrite } from '../test/e2e/harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const volumeBytes = 256 * MiB;

interface Row {
  relays: number;
  mode: 'cached' | 'end-to-end' | '-';
  hopMs: number;
  p50Ms: number;
  p99Ms: number;
  qd1Iops: number;
  iops: number;
  mibPerSec: number;
}

function chain(relays: number, mode: 'cached' | 'end-to-end'): CascadeSite[] {
  const names = Array.from({ length: relays }, (_v, i) => `r${i + 1}`);
  const sites: CascadeSite[] = [{ name: 'local', role: 'primary', mirrors: [names[0] ?? 'remote'] }];
  names.forEach((n, i) => sites.push({ name: n, role: 'relay', forward: names[i + 1] ?? 'remote', relayAck: mode }));
  sites.push({ name: 'remote', role: 'mirror' });
  return sites;
}

/** Writes of `bytes` at random aligned offsets for `seconds` at queue depth `depth`; latencies in ms. */
async function drive(w: NbdWriter, bytes: number, depth: number, seconds: number, seed: number): Promise<{ lat: number[]; count: number; elapsedS: number }> {
  const rnd = prng(seed);
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) data.writeUInt32LE((rnd() * 0x100000000) >>> 0, i);
  const slots = volumeBytes / bytes;
  const lat: number[] = [];
  let index = 0;
  const t0 = performance.now();
  const endMs = t0 + seconds * 1000;
  const worker = async (lane: number) => {
    // Each lane owns a disjoint stripe of slots, so no two in-flight writes overlap.
    while (performance.now() < endMs) {
      const slot = lane + depth * Math.floor(rnd() * Math.floor(slots / depth));
      const pw: PlannedWrite = { index: index++, offsetBytes: slot * bytes, data };
      const t = performance.now();
      await w.write(pw);
      lat.push(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: depth }, (_v, i) => worker(i)));
  return { lat, count: lat.length, elapsedS: (performance.now() - t0) / 1000 };
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? NaN;
}

async function measure(relays: number, mode: 'cached' | 'end-to-end', hopMs: number, seconds: number): Promise<Row> {
  const c = await CascadeCluster.create({ sites: chain(relays, mode), hopLatencyMs: hopMs, volumeBytes, cacheBytes: 64 * MiB, env: {} });
  let w: NbdWriter | undefined;
  try {
    await c.start();
    await c.waitLinked();
    w = await NbdWriter.connect(c.nbdPort);
    const qd1 = await drive(w, 4 * KiB, 1, seconds, 1);
    const big = await drive(w, 64 * KiB, 16, seconds, 2);
    const sorted = [...qd1.lat].sort((a, b) => a - b);
    return {
      relays, mode: relays === 0 ? '-' : mode, hopMs,
      p50Ms: pct(sorted, 50), p99Ms: pct(sorted, 99), qd1Iops: qd1.count / qd1.elapsedS,
      iops: big.count / big.elapsedS, mibPerSec: (big.count * 64 * KiB) / MiB / big.elapsedS,
    };
  } finally {
    w?.close();
    await c.destroy();
  }
}

function table(rows: Row[]): string {
  const head = '| relays | relay-ack | one-way/hop | 4K QD1 p50 ms | 4K QD1 p99 ms | 4K QD1 IOPS | 64K QD16 IOPS | 64K QD16 MiB/s |\n|---|---|---|---|---|---|---|---|';
  const lines = rows.map((r) => `| ${r.relays} | ${r.mode} | ${r.hopMs} ms | ${r.p50Ms.toFixed(2)} | ${r.p99Ms.toFixed(2)} | ${r.qd1Iops.toFixed(0)} | ${r.iops.toFixed(0)} | ${r.mibPerSec.toFixed(1)} |`);
  return [head, ...lines].join('\n');
}

/** p50 at QD1 against chain length, one line per (ack mode, hop latency). */
function svg(rows: Row[]): string {
  const W = 640;
  const H = 400;
  const m = { l: 60, r: 180, t: 30, b: 50 };
  const maxY = Math.max(1, ...rows.map((r) => r.p50Ms)) * 1.1;
  const x = (relays: number) => m.l + (relays / 3) * (W - m.l - m.r);
  const y = (ms: number) => H - m.b - (ms / maxY) * (H - m.t - m.b);
  const series = new Map<string, Row[]>();
  for (const r of rows) {
    for (const mode of r.relays === 0 ? ['cached', 'end-to-end'] : [r.mode]) {
      const key = `${mode}, ${r.hopMs} ms/hop`;
      series.set(key, [...(series.get(key) ?? []), r]);
    }
  }
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e'];
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<text x="${m.l}" y="18">bench:cascade: median 4 KiB QD1 host write latency vs relays in the chain</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
    `<text x="${(W - m.r + m.l) / 2 - 30}" y="${H - 12}">relays</text>`,
    `<text x="8" y="${m.t + 10}">ms</text>`];
  for (let i = 0; i <= 3; i++) parts.push(`<text x="${x(i) - 3}" y="${H - m.b + 16}">${i}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (maxY * i) / 4;
    parts.push(`<text x="${m.l - 40}" y="${y(v) + 4}">${v.toFixed(1)}</text>`);
  }
  [...series.entries()].forEach(([key, rs], i) => {
    const c = colors[i % colors.length]!;
    const pts = rs.sort((a, b) => a.relays - b.relays).map((r) => `${x(r.relays).toFixed(1)},${y(r.p50Ms).toFixed(1)}`).join(' ');
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts}"/>`);
    parts.push(`<text x="${W - m.r + 10}" y="${m.t + 16 * i + 10}" fill="${c}">${key}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

const o = new Command()
  .name('bench:cascade')
  .option('--seconds <n>', 'seconds per workload per configuration', (v) => Number(v), 2)
  .option('--hop-ms <n>', 'emulated one-way latency per hop for the WAN rows', (v) => Number(v), 5)
  .parse()
  .opts<{ seconds: number; hopMs: number }>();

const rows: Row[] = [];
for (const hopMs of [0, o.hopMs]) {
  for (let relays = 0; relays <= 3; relays++) {
    for (const mode of relays === 0 ? (['cached'] as const) : (['cached', 'end-to-end'] as const)) {
      const r = await measure(relays, mode, hopMs, o.seconds);
      console.log(`relays ${relays} ${r.mode} ${hopMs} ms/hop: p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms, 64K QD16 ${r.iops.toFixed(0)} IOPS ${r.mibPerSec.toFixed(1)} MiB/s`);
      rows.push(r);
    }
  }
}
const outDir = resolve(import.meta.dirname, 'results');
mkdirSync(outDir, { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
const md = `# bench:cascade ${new Date().toISOString()}\n\nEach site a process on loopback files; WAN emulator proxy per hop; NBD to the primary; ${o.seconds} s per workload.\n\n${table(rows)}\n`;
writeFileSync(join(outDir, `cascade-${stamp}.md`), md);
writeFileSync(join(outDir, `cascade-${stamp}.svg`), svg(rows));
console.log(`\n${table(rows)}\n\nwrote bench/results/cascade-${stamp}.md and .svg`);

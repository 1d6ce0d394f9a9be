// Acceptance crash test (issue 3; issue 15: on the path a site really runs): a child process runs
// a core and the production executor over the cache journal and a RAID-1 array of two loopback
// files (test/hal/crash-site.ts), writes seeded writes through it and reports each write as it is
// accepted (a mirror's ack upstream in two lanes, a primary's host ack in the third). We kill -9
// it at 24 seeded points (6 of them while it is still replaying the previous crash's cache),
// reopen the site on copies (which replays the journal through the core), and check byte for
// byte that every accepted write is on storage: each block holds the last accepted write covering
// it, or a later write the child issued but never reported; blocks no accepted write of the run
// covers hold what they held before or a write of the run. Both RAID-1 members must agree.
//
// The parent verifies on copies of the files, so the next child starts on the crashed files
// as they are and replays them itself (crash after crash).

import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openFileCacheDevice } from '../../hal/cachedev.js';
import { openLoopback } from '../../hal/loopback.js';
import { Prng } from '../../hal/prng.js';
import {
  crashBlockCount,
  crashBlockSizeBytes,
  crashCacheBytes,
  crashPaths,
  crashWritesInflightMax,
  hashOf,
  plannedWrite,
} from './crash-plan.js';
import { openCrashSite, type CrashRole } from './crash-site.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
const childPath = join(here, 'crash-child.ts');
/** 3 lanes x 8 runs = 24 kill points (issue 3 asks for 20+); CRASH_LANES / CRASH_RUNS raise them for a soak. */
const lanes = Number(process.env.CRASH_LANES ?? 3);
const runsPerLane = Number(process.env.CRASH_RUNS ?? 8);

interface Accepted {
  readonly index: number;
  readonly lba: number;
  readonly blocks: number;
  readonly hash: string;
}

interface ChildRun {
  readonly accepted: Accepted[];
  readonly signal: NodeJS.Signals | null;
  readonly code: number | null;
  readonly stderr: string;
}

/** Runs the child; kills it with SIGKILL after `killAfter` accepted writes, or `killAtOpenMs` after it starts opening. */
function runChild(dir: string, runSeed: number, role: CrashRole, seqBase: bigint, killAfter: number, killAtOpenMs: number | undefined): Promise<ChildRun> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', childPath, dir, String(runSeed), role, String(seqBase)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let killed = false;
    const kill = () => {
      if (!killed) {
        killed = true;
        child.kill('SIGKILL');
      }
    };
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    let openSeen = false;
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
      if (killAtOpenMs !== undefined) {
        if (!openSeen && out.startsWith('O\n')) {
          openSeen = true;
          setTimeout(kill, killAtOpenMs);
        }
        return;
      }
      const acceptedSeen = out.split('\n').slice(0, -1).filter((l) => l.startsWith('A ')).length;
      if (acceptedSeen >= killAfter) kill();
    });
    child.stderr.on('data', (chunk: string) => (err += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      // The log, not stdout, is the record: lines still queued for the pipe die with the child.
      readFile(join(dir, 'accepted.log'), 'utf8')
        .catch(() => '')
        .then((log) => {
          const accepted: Accepted[] = [];
          for (const line of log.split('\n').slice(0, -1)) {
            const [, index, lba, blocks, hash] = line.split(' ');
            accepted.push({ index: Number(index), lba: Number(lba), blocks: Number(blocks), hash: hash! });
          }
          resolvePromise({ accepted, signal, code, stderr: err });
        }, reject);
    });
  });
}

/** Opens the site on copies of the crashed files (its core replays the cache) and returns both members' bytes. */
async function replayCopy(dir: string, verifyDir: string, role: CrashRole): Promise<{ a: Buffer; b: Buffer; errors: string[] }> {
  await rm(verifyDir, { recursive: true, force: true });
  await mkdir(verifyDir);
  const from = crashPaths(dir);
  const to = crashPaths(verifyDir);
  for (let i = 0; i < from.members.length; i++) await copyFile(from.members[i]!, to.members[i]!).catch(() => undefined);
  await copyFile(from.cache, to.cache).catch(() => undefined);
  for (const f of ['site.meta', 'site.array']) await copyFile(join(dir, f), join(verifyDir, f)).catch(() => undefined);
  await rm(join(dir, 'accepted.log'), { force: true }); // each run starts its own record
  const members = await Promise.all(to.members.map((p) => openLoopback(p, { blockSizeBytes: crashBlockSizeBytes, blockCount: crashBlockCount, create: true })));
  const cache = await openFileCacheDevice(to.cache, { sizeBytes: crashCacheBytes });
  const errors: string[] = [];
  const log = { error: (_o: object, m: string) => errors.push(m), warn: (_o: object, m: string) => errors.push(m), info: () => undefined };
  const site = await openCrashSite({ role, dir: verifyDir, cache, members, seqBase: 0n, logger: log, fatal: (err) => errors.push(err.message) });
  await site.settle();
  await site.close();
  return { a: await readFile(to.members[0]!), b: await readFile(to.members[1]!), errors };
}

/** Names what a wrong block holds, for the failure message. */
function identify(runSeed: number, block: number, actual: Buffer, old: Buffer, lastAccepted: number): string {
  if (actual.equals(old)) return 'what it held before the run';
  if (actual.every((x) => x === 0)) return 'zeroes';
  const found: number[] = [];
  for (let i = 0; i <= lastAccepted + 200; i++) {
    const w = plannedWrite(runSeed, i);
    if (w.lba <= block && block < w.lba + w.blocks) {
      const at = (block - w.lba) * crashBlockSizeBytes;
      if (actual.equals(w.data.subarray(at, at + crashBlockSizeBytes))) found.push(i);
    }
  }
  return found.length > 0 ? `write(s) ${found.join(', ')} of this run` : 'bytes of no write of this run';
}

/** One lane: a site directory crashed `runs` times in a row, each crash checked before the next. */
async function crashLane(root: string, lane: number, runs: number): Promise<number> {
  const work = join(root, `site-${lane}`);
  const verifyDir = join(root, `verify-${lane}`);
  await mkdir(work);
  const rng = new Prng(20261125 + lane);
  const role: CrashRole = lane % 3 === 1 ? 'primary' : 'mirror';
  let baseline: Buffer = Buffer.alloc(crashBlockCount * crashBlockSizeBytes); // storage before this run (verified)
  let totalAccepted = 0;
  for (let run = 0; run < runs; run++) {
    const runSeed = 1000 + lane * 100 + run;
    const atOpen = run % 4 === 3; // every fourth kill lands while the child replays the last crash
    const killAfter = 1 + rng.int(80);
    const killAtOpenMs = atOpen ? rng.int(40) : undefined;
    const result = await runChild(work, runSeed, role, BigInt(run + 1) * 1_000_000n, killAfter, killAtOpenMs);
    const where = `lane ${lane} (${role}) run ${run} (seed ${runSeed}, kill ${atOpen ? `${killAtOpenMs} ms into open` : `after ${killAfter} accepted`})`;
    expect(result.signal, `${where}: child ended by itself: code ${result.code}\n${result.stderr}`).toBe('SIGKILL');
    const accepted = result.accepted;
    totalAccepted += accepted.length;
    // The child's report agrees with the plan, and accepted writes are a prefix, in order.
    accepted.forEach((a, i) => {
      const w = plannedWrite(runSeed, a.index);
      expect(a.index, where).toBe(i);
      expect([a.lba, a.blocks, a.hash], where).toEqual([w.lba, w.blocks, hashOf(w.data)]);
    });
    const { a, b, errors } = await replayCopy(work, verifyDir, role);
    expect(errors, `${where}; child stderr: ${result.stderr}`).toEqual([]);
    if (!a.equals(b)) {
      const differ: string[] = [];
      for (let block = 0; block < crashBlockCount && differ.length < 4; block++) {
        const x = a.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes);
        const y = b.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes);
        if (!x.equals(y)) differ.push(`block ${block}: a holds ${identify(runSeed, block, x, baseline.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes), accepted.length - 1)}, b holds ${identify(runSeed, block, y, baseline.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes), accepted.length - 1)}`);
      }
      expect.fail(`${where}: RAID-1 members differ after replay (${accepted.length} accepted): ${differ.join('; ')}\nchild stderr: ${result.stderr}`);
    }
    // Everything the child may have issued: it waits for write i - inflightMax to be accepted
    // (so reported) before issuing write i.
    const lastAccepted = accepted.length - 1;
    const issuedMax = lastAccepted + crashWritesInflightMax;
    const writes = Array.from({ length: issuedMax + 1 }, (_, i) => plannedWrite(runSeed, i));
    for (let block = 0; block < crashBlockCount; block++) {
      const covers = (i: number) => writes[i]!.lba <= block && block < writes[i]!.lba + writes[i]!.blocks;
      let last = -1;
      for (let i = 0; i <= lastAccepted; i++) if (covers(i)) last = i;
      const actual = a.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes);
      const allowed: number[] = [];
      for (let i = Math.max(last, 0); i <= issuedMax; i++) if (covers(i)) allowed.push(i);
      const matches = allowed.some((i) => {
        const w = writes[i]!;
        const at = (block - w.lba) * crashBlockSizeBytes;
        return actual.equals(w.data.subarray(at, at + crashBlockSizeBytes));
      });
      const old = baseline.subarray(block * crashBlockSizeBytes, (block + 1) * crashBlockSizeBytes);
      const ok = matches || (last < 0 && actual.equals(old));
      if (!ok) {
        expect.fail(`${where}: block ${block} holds neither the last accepted write covering it (index ${last}) nor a later issued one (${allowed.join(', ')}); it holds ${identify(runSeed, block, actual, old, lastAccepted)}`);
      }
    }
    baseline = a;
  }
  return totalAccepted;
}

describe('crash test: kill -9 of a site writing through its core, executor, cache journal and RAID-1 array', () => {
  it(`loses no accepted write at ${lanes * runsPerLane} seeded kill points`, async () => {
    const root = await mkdtemp(join(tmpdir(), 'gm-crash-'));
    try {
      // Independent sites crashed side by side: the children mostly wait on process start-up.
      const accepted = await Promise.all(Array.from({ length: lanes }, (_, lane) => crashLane(root, lane, runsPerLane)));
      expect(accepted.reduce((x, y) => x + y, 0)).toBeGreaterThan(lanes * runsPerLane * 10);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 600_000); // ~25 s on an idle 2-core machine; 24 child start-ups crawl when the machine is loaded
});

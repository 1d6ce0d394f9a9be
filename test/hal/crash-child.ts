// Child process of the crash test: runs the write path a site really runs (test/hal/crash-site.ts:
// a core and the production executor over the cache journal, a RAID-1 array of two loopback files
// and the meta record) and writes the seeded plan through it, printing one line per write the
// moment it is *accepted* (a mirror's ack upstream, or a primary's host ack), until killed.
//
//   node --import tsx test/hal/crash-child.ts DIR RUN_SEED ROLE SEQ_BASE
//
// Lines: "O" before open (replay), "S" once serving, "A <index> <lba> <blocks> <hash>" per
// accepted write, in index order. Stdout to a pipe is asynchronous on POSIX (a line still queued
// in the process dies with it), so each "A" line is first appended to DIR/accepted.log with a
// synchronous write(2): once that returns the line is in the page cache and survives kill -9,
// which makes the log the record of what was reported. Stdout only paces the parent's kill.

import { openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openFileCacheDevice } from '../../hal/cachedev.js';
import { openLoopback } from '../../hal/loopback.js';
import {
  crashBlockCount,
  crashBlockSizeBytes,
  crashCacheBytes,
  crashPaths,
  crashPlanWritesMax,
  crashWritesInflightMax,
  hashOf,
  plannedWrite,
} from './crash-plan.js';
import { openCrashSite, type CrashRole } from './crash-site.js';

async function main(): Promise<void> {
  const [dir, seedText, roleText, seqBaseText] = process.argv.slice(2);
  if (dir === undefined || seedText === undefined || (roleText !== 'mirror' && roleText !== 'primary') || seqBaseText === undefined) throw new Error('usage: crash-child.ts DIR RUN_SEED mirror|primary SEQ_BASE');
  const runSeed = Number(seedText);
  const paths = crashPaths(dir);
  const logFd = openSync(join(dir, 'accepted.log'), 'w');
  process.stdout.write('O\n');
  const members = await Promise.all(paths.members.map((p) => openLoopback(p, { blockSizeBytes: crashBlockSizeBytes, blockCount: crashBlockCount, create: true })));
  const cache = await openFileCacheDevice(paths.cache, { sizeBytes: crashCacheBytes });
  // A member failing here would be a fault of the test machine, not something to verify:
  // say so and stop, so the parent reports it instead of a puzzling RAID-1 mismatch.
  const fatal = (obj: object, msg: string): never => {
    process.stderr.write(`crash-child: ${msg} ${JSON.stringify(obj)}\n`);
    process.exit(4);
  };
  let reported = 0;
  const site = await openCrashSite({
    role: roleText as CrashRole, dir, cache, members, seqBase: BigInt(seqBaseText),
    logger: { error: fatal, warn: fatal, info: () => undefined },
    fatal: (err) => fatal({}, `the site stopped: ${err.message}`),
    onAccepted: () => report(),
  });
  process.stdout.write('S\n');
  function report(): void {
    for (; reported < site.acceptedCount; reported++) {
      const w = plannedWrite(runSeed, reported);
      const line = `A ${reported} ${w.lba} ${w.blocks} ${hashOf(w.data)}\n`;
      writeSync(logFd, line); // reported: from here the parent holds us to it
      process.stdout.write(line);
    }
  }
  for (let i = 0; i < crashPlanWritesMax; i++) {
    // At most crashWritesInflightMax writes issued and not yet accepted.
    if (i - site.acceptedCount >= crashWritesInflightMax) await site.whenAccepted(i - crashWritesInflightMax + 1);
    site.submit(i, plannedWrite(runSeed, i));
  }
  await site.whenAccepted(crashPlanWritesMax);
  process.stderr.write(`crash-child: plan of ${crashPlanWritesMax} writes finished without being killed\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`crash-child: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(3);
});

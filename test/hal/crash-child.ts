// Child process of the crash test: writes the seeded plan through the disk array controller
// (RAID-1 over two loopback files, file-backed cache in front) and prints one line per write
// the moment it is *accepted*, i.e. cached (when a site would ack upstream), until killed.
//
//   node --import tsx test/hal/crash-child.ts DIR RUN_SEED
//
// Lines: "O" before open (replay), "S" once serving, "A <index> <lba> <blocks> <hash>" per
// accepted write, in index order. Stdout to a pipe is asynchronous on POSIX (a line still queued
// in the process dies with it), so each "A" line is first appended to DIR/accepted.log with a
// synchronous write(2): once that returns the line is in the page cache and survives kill -9,
// which makes the log the record of what was reported. Stdout only paces the parent's kill.

import { openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DiskArray } from '../../hal/array.js';
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

async function main(): Promise<void> {
  const [dir, seedText] = process.argv.slice(2);
  if (dir === undefined || seedText === undefined) throw new Error('usage: crash-child.ts DIR RUN_SEED');
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
  const logger = { error: fatal, warn: fatal, info: () => undefined };
  const array = await DiskArray.open({ members, cache, volume: 1, logger });
  process.stdout.write('S\n');
  const executing: Promise<void>[] = [];
  for (let i = 0; i < crashPlanWritesMax; i++) {
    const w = plannedWrite(runSeed, i);
    const ticket = array.submit(w.lba, w.data, { fua: w.fua, epoch: 1n });
    void ticket.cached.then(() => {
      const line = `A ${i} ${w.lba} ${w.blocks} ${hashOf(w.data)}\n`;
      writeSync(logFd, line); // reported: from here the parent holds us to it
      process.stdout.write(line);
    });
    executing.push(ticket.executed);
    if (executing.length >= crashWritesInflightMax) await executing.shift();
  }
  await Promise.all(executing);
  process.stderr.write(`crash-child: plan of ${crashPlanWritesMax} writes finished without being killed\n`);
  process.exit(3);
}

main().catch((err: unknown) => {
  process.stderr.write(`crash-child: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(2);
});

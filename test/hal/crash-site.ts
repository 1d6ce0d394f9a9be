// The write path a site really runs, for the crash tests: a core (a Mirror fed WRITE frames by a
// stand-in upstream, or a Primary with no mirrors fed host writes) driven by the PRODUCTION
// executor (src/site/executor.ts) over the production ports (src/site/devices.ts): the cache
// journal (hal/cache.ts) on a cache device, a RAID-1 array (hal/array.ts) over the members, the
// meta record in a file. A write is "accepted" when the site would say so: the mirror's
// cumulative ack upstream, the primary's host ack.

import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DiskArray, type ArrayLogger } from '../../hal/array.js';
import type { BlockDevice } from '../../hal/blockdev.js';
import { CacheJournal } from '../../hal/cache.js';
import type { CacheDevice } from '../../hal/cachedev.js';
import { Mirror } from '../../src/core/mirror.js';
import { Primary } from '../../src/core/primary.js';
import { defaultLimits, type CoreEvent, type Limits, type Role } from '../../src/core/types.js';
import { JournalPortImpl, statePort, storagePort } from '../../src/site/devices.js';
import { Executor } from '../../src/site/executor.js';
import { fileMetaStore, memoryBitmapStore } from '../../src/site/persist.js';
import { crashBlockCount, crashBlockSizeBytes, type PlannedWrite } from './crash-plan.js';

export type CrashRole = 'mirror' | 'primary';

export interface CrashSite {
  readonly role: CrashRole;
  /** Hands write `index` of the run to the site (a WRITE frame, or a host write). */
  submit(index: number, w: PlannedWrite): void;
  /** Writes accepted so far: every index below this one (reported as a prefix, in order). */
  readonly acceptedCount: number;
  /** Resolves once every replayed or submitted write is performed and durable. */
  settle(): Promise<void>;
  close(): Promise<void>;
  /** Resolves when `acceptedCount` reaches `n`. */
  whenAccepted(n: number): Promise<void>;
}

export interface CrashSiteOptions {
  readonly role: CrashRole;
  readonly dir: string;
  readonly cache: CacheDevice;
  readonly members: BlockDevice[];
  /** Seqs of this run start above this (a mirror's upstream never reuses a seq). */
  readonly seqBase: bigint;
  readonly logger: ArrayLogger;
  /** The site stopped on an error (an assertion): the crash test reports it. */
  fatal(err: Error): void;
  /** Called whenever more writes were accepted. */
  onAccepted?(): void;
}

export async function openCrashSite(o: CrashSiteOptions): Promise<CrashSite> {
  const { journal, recovered } = await CacheJournal.open(o.cache);
  const array = await DiskArray.open({ members: o.members, logger: o.logger, stateFile: join(o.dir, 'site.array') });
  const meta = fileMetaStore(join(o.dir, 'site.meta'));
  const limits: Limits = { ...defaultLimits, cacheBytesMax: journal.capacityBytes, inflightBytesMax: Math.floor(journal.capacityBytes / 2), flushIntervalMs: 20 };
  const vol = { self: 'crash', volumeBytes: crashBlockCount * crashBlockSizeBytes, blockBytes: crashBlockSizeBytes, limits };
  const core: Role & { quiescent(): boolean } = o.role === 'mirror' ? new Mirror(vol) : new Primary({ ...vol, mirrors: [], onMirrorLoss: 'block' });
  const t0 = performance.now();
  let accepted = 0;
  const done = new Set<number>(); // primary host acks, possibly out of order
  const waiters: { n: number; resolve(): void }[] = [];
  const advance = (n: number): void => {
    if (n <= accepted) return;
    accepted = n;
    o.onAccepted?.();
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i]!.n <= accepted) waiters.splice(i, 1)[0]!.resolve();
    }
  };
  const journalPort = new JournalPortImpl(journal);
  const exec = new Executor(core, {
    journal: journalPort,
    storage: storagePort(array),
    state: statePort(meta, memoryBitmapStore(), () => undefined),
    peers: {
      // The stand-in upstream: a cumulative ack accepts every write up to its seq.
      send: (_peer, msg) => {
        if (msg.type === 'ack' && msg.seq > o.seqBase) advance(Number(msg.seq - o.seqBase));
      },
      close: (_peer, reason) => o.fatal(new Error(`the core refused its upstream: ${reason}`)),
    },
    host: {
      ack: (id, error) => {
        if (error !== undefined) {
          o.fatal(new Error(`host write ${id} failed: ${error.message}`));
          return;
        }
        done.add(id);
        let n = accepted;
        while (done.delete(n + 1)) n++;
        advance(n);
      },
    },
  }, {
    nowMs: () => performance.now() - t0,
    defer: (fn) => setImmediate(fn),
    log: (level, event, fields) => {
      if (level === 'error') o.logger.error(fields, event);
    },
    fatal: (err) => o.fatal(err),
  });
  const feed = (ev: CoreEvent): void => exec.feed(ev);
  const m = await meta.load();
  feed({ type: 'start', recovered: { meta: m, cacheEntries: journalPort.recovered(recovered), dirtyRegions: new Map() } });
  if (o.role === 'mirror') {
    feed({ type: 'peerUp', peer: 'upstream' });
    feed({ type: 'recv', peer: 'upstream', msg: { type: 'epoch', epoch: m.epoch } });
  }
  const ticker = setInterval(() => feed({ type: 'tick' }), 5);
  return {
    role: o.role,
    submit(index: number, w: PlannedWrite): void {
      const offsetBytes = w.lba * crashBlockSizeBytes;
      if (o.role === 'mirror') feed({ type: 'recv', peer: 'upstream', msg: { type: 'write', epoch: m.epoch, seq: o.seqBase + BigInt(index + 1), offsetBytes, lengthBytes: w.data.byteLength, fua: w.fua, payload: w.data } });
      else feed({ type: 'hostWrite', id: index + 1, offsetBytes, lengthBytes: w.data.byteLength, fua: w.fua, payload: w.data });
    },
    get acceptedCount() {
      return accepted;
    },
    whenAccepted(n: number): Promise<void> {
      if (accepted >= n) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    async settle(): Promise<void> {
      const settled = (): boolean => (core instanceof Mirror ? core.settled() : core.quiescent());
      while (!settled()) await new Promise((r) => setTimeout(r, 5));
    },
    async close(): Promise<void> {
      clearInterval(ticker);
      exec.kill();
      await array.close();
      await journal.close();
    },
  };
}

// A site's devices, opened for one life, and the executor's ports over them (src/site/executor.ts):
// the battery-backed cache journal (hal/cache.ts), the storage array (hal/array.ts, plain RAID-1),
// the meta record and the per-peer dirty bitmaps (src/site/persist.ts). The simulator has its own
// ports over simulated devices (test/sim/world.ts); everything above the ports is shared.
import { CacheJournal, CacheEntryFlags, type EntryHandle, type JournalDamage } from '../../hal/cache.js';
import { openCacheDevice } from '../../hal/cachedev.js';
import { DiskArray } from '../../hal/array.js';
import { ConcatDevice } from '../../hal/concat.js';
import { openBlockDevice } from '../../hal/devstring.js';
import type { BlockDevice } from '../../hal/blockdev.js';
import type { CacheEntry, Epoch, Meta, Seq } from '../core/types.js';
import type { JournalPort, StatePort, StoragePort } from './executor.js';
import type { SiteContext } from './context.js';
import { fileBitmapStore, fileMetaStore, memoryBitmapStore, memoryMetaStore, type BitmapStore, type MetaStore } from './persist.js';
import { volumeId } from './peerwire.js';

/** The opened devices of one site: the cache journal, the storage array, the persistent records. */
export interface SiteDevices {
  journal: CacheJournal;
  recoveredEntries: { handle: EntryHandle; payload: Buffer }[];
  /** What the journal lost to damage (issue 16 item 2): recorded by the core before anything is appended or dropped. */
  damage: JournalDamage;
  /** Undefined only for a relay without storage (a cache-only relay point, claim 20). */
  array: DiskArray | undefined;
  members: BlockDevice[];
  meta: MetaStore;
  /** The meta record as this life found it: its `acting` decides which core runs (issue 10). */
  initialMeta: Meta;
  bitmaps: BitmapStore;
  /** `fn` is called when the array has new stale ranges (read them with array.staleRanges()). */
  watchStale(fn: () => void): void;
}

export async function openSiteDevices(ctx: SiteContext, regionCount: number): Promise<SiteDevices> {
  const { site, config } = ctx;
  // The array reports stale ranges (its storage came back after missing writes) to whoever
  // runs the core; until one is attached they wait in the array (staleRanges()).
  let onStale = (): void => undefined;
  if (!site.cache) throw new Error(`sites.${site.name}.cache: a ${site.role} needs a cache`);
  const cacheDev = await openCacheDevice(site.cache.device.text, { sizeBytes: site.cache.sizeBytes, create: true });
  const { journal, recovered, damage } = await CacheJournal.open(cacheDev);
  const members: BlockDevice[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(members.map((m) => m.close().catch(() => undefined)));
    await journal.close().catch(() => undefined);
  };
  const geometry = { blockSizeBytes: config.volume.blockSize, blockCount: config.volume.blockCount, baseDir: config.dir };
  const specs = new Map<string, (typeof site.storage)[number]>();
  /** A member made of several volumes' devices (issue 20): opened part by part. */
  const concatSpecs = new Map<string, { devices: (typeof site.storage)[number][]; blockCounts: number[] }>();
  const openConcat = async (c: { devices: (typeof site.storage)[number][]; blockCounts: number[] }, create: boolean): Promise<BlockDevice> => {
    const parts: BlockDevice[] = [];
    try {
      for (const [j, d] of c.devices.entries()) parts.push(await openBlockDevice(d.text, { blockSizeBytes: config.volume.blockSize, blockCount: c.blockCounts[j]!, baseDir: config.dir, create }));
    } catch (err) {
      await Promise.all(parts.map((p) => p.close().catch(() => undefined)));
      throw err;
    }
    return new ConcatDevice(parts);
  };
  try {
    if (site.storageParts !== undefined) {
      for (const c of site.storageParts) {
        const dev = await openConcat(c, true);
        concatSpecs.set(dev.name, c);
        members.push(dev);
      }
    } else {
      for (const d of site.storage) {
        const dev = await openBlockDevice(d.text, { ...geometry, create: true });
        specs.set(dev.name, d);
        members.push(dev);
      }
    }
  } catch (err) {
    await closeAll();
    throw err;
  }
  const statePath = site.cache.device.kind === 'loopback' ? site.cache.device.path : undefined;
  let array: DiskArray | undefined;
  try {
    array = members.length === 0 && site.role === 'relay' ? undefined : await DiskArray.open({
      name: `${site.name} storage`, members, logger: ctx.log, ...(statePath ? { stateFile: `${statePath}.array` } : {}),
      // A failed member that answers probes again is reopened by its device string; never
      // created: a blank file in its place would pass for the volume (issue 16 item 3).
      reopen: async (name) => {
        const c = concatSpecs.get(name);
        if (c !== undefined) {
          if (c.devices.some((d) => d.kind === 'memory')) throw new Error(`${name} cannot be reopened (a memory device is gone with its process)`);
          return openConcat(c, false);
        }
        const d = specs.get(name);
        if (d === undefined || d.kind === 'memory') throw new Error(`${name} cannot be reopened (${d === undefined ? 'unknown member' : 'a memory device is gone with its process'})`);
        return openBlockDevice(d.text, { ...geometry, create: false });
      },
      onStale: () => onStale(),
    });
  } catch (err) {
    await closeAll();
    throw err;
  }
  const meta = statePath ? fileMetaStore(`${statePath}.meta`) : memoryMetaStore();
  const bitmaps = statePath ? fileBitmapStore(`${statePath}.dirty-`, regionCount) : memoryBitmapStore();
  let initialMeta: Meta;
  try {
    initialMeta = await meta.load();
  } catch (err) {
    await closeAll();
    throw err;
  }
  return {
    journal, recoveredEntries: recovered, damage, array, members, meta, initialMeta, bitmaps,
    watchStale: (fn) => {
      onStale = fn;
    },
  };
}

/**
 * The journal port: appends resolve in append order (the journal's contract), and a drop finds
 * the entry's handle by (epoch, seq). Entries recovered at open are handed to the core as
 * CacheEntry values (replay), and their handles are known here so the core can drop them.
 */
export class JournalPortImpl implements JournalPort {
  /** Handles by epoch, then seq (bigint keys compare by value; no string per write). */
  private readonly handles = new Map<Epoch, Map<Seq, EntryHandle>>();

  /** `failed` counts each failed append (metrics). */
  constructor(
    private readonly journal: CacheJournal,
    private readonly failed: () => void = () => undefined,
  ) {}

  /** The recovered entries in (epoch, seq) order, their handles kept for drops. */
  recovered(list: readonly { handle: EntryHandle; payload: Buffer }[]): CacheEntry[] {
    const out: CacheEntry[] = [];
    for (const r of list) {
      const h = r.handle;
      this.keep(h);
      out.push({ epoch: h.epoch, seq: h.seq, offsetBytes: h.offsetBytes, lengthBytes: r.payload.byteLength, fua: (h.flags & CacheEntryFlags.FUA) !== 0, payload: r.payload });
    }
    return out.sort((a, b) => (a.epoch === b.epoch ? (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0) : a.epoch < b.epoch ? -1 : 1));
  }

  append(e: CacheEntry, done: (err: unknown) => void): void {
    this.journal.appendCb({ volume: volumeId, epoch: e.epoch, seq: e.seq, offsetBytes: e.offsetBytes, flags: e.fua ? CacheEntryFlags.FUA : 0, payloadCrc: e.payloadCrc }, e.payload, (err, h) => {
      if (err !== undefined) {
        this.failed();
        done(err);
        return;
      }
      this.keep(h!);
      done(undefined);
    });
  }

  drop(entries: readonly { epoch: Epoch; seq: Seq }[]): void {
    for (const e of entries) {
      const bySeq = this.handles.get(e.epoch);
      const h = bySeq?.get(e.seq);
      if (h === undefined) continue; // its append failed: nothing to drop
      bySeq!.delete(e.seq);
      if (bySeq!.size === 0) this.handles.delete(e.epoch);
      this.journal.markDone(h);
    }
  }

  private keep(h: EntryHandle): void {
    let bySeq = this.handles.get(h.epoch);
    if (bySeq === undefined) this.handles.set(h.epoch, (bySeq = new Map()));
    bySeq.set(h.seq, h);
  }
}

const writeFua = { fua: true } as const;

/** The storage port over the site's array: byte offsets in, block addresses to the array. `failed` counts each failed call (metrics). */
export function storagePort(array: DiskArray, failed: (op: 'read' | 'write' | 'flush') => void = () => undefined): StoragePort {
  const bs = array.blockSizeBytes;
  const fail = (op: 'read' | 'write' | 'flush', err: unknown): unknown => {
    failed(op);
    return err ?? new Error('storage operation failed');
  };
  return {
    // Callbacks, not promises: a page-cache write completes before submitWrite returns (issue 18).
    write: (offsetBytes, payload, fua, done) => array.submitWrite(offsetBytes / bs, payload, fua ? writeFua : undefined, (err) => done(err === undefined ? undefined : fail('write', err))),
    read: (offsetBytes, lengthBytes, done) => array.read(offsetBytes / bs, lengthBytes / bs).then((data) => done(undefined, data), (err: unknown) => done(fail('read', err))),
    flush: (done) => array.flush().then(() => done(undefined), (err: unknown) => done(fail('flush', err))),
    // Not saved: the ranges are reported again at the next start, which only costs a repair.
    staleRecorded: (ranges) => void array.clearStale(ranges).catch(() => undefined),
  };
}

/** The meta record and dirty bitmaps; a clear that fails only costs a resync, so it is logged, not fatal. */
export function statePort(meta: MetaStore, bitmaps: BitmapStore, warn: (msg: string, fields: Record<string, unknown>) => void): StatePort {
  const fail = (err: unknown): unknown => err ?? new Error('state write failed');
  return {
    saveMeta: (m, done) => meta.save(m).then(() => done(undefined), (err: unknown) => done(fail(err))),
    setBits: (peer, regions, done) => bitmaps.set(peer, regions).then(() => done(undefined), (err: unknown) => done(fail(err))),
    clearBits: (peer, regions) => {
      bitmaps.clear(peer, regions).catch((err: Error) => warn('dirty bitmap clear failed (costs only a resync)', { event: 'bitmap-clear-failed', peer, err: err.message }));
    },
  };
}

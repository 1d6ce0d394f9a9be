// The small persistent records a site keeps beside its cache (DESIGN "Identity, ordering,
// acknowledgement"): the meta record (epoch for fencing, seq reservation) and, on a primary, one
// dirty-region bitmap per mirror (`on-mirror-loss: degrade`: regions a degraded mirror missed,
// resynced when it returns). The core asks for them through metaPersist / bitmapSet / bitmapClear
// actions; this file executes those with real files.
//
// Where: next to a loopback cache file (`<cache>.meta`, `<cache>.dirty-<peer>`), so one site's
// state lives in one place. A `memory:` cache keeps them in RAM (nothing survives a restart, and
// nothing needs to: the cache itself did not survive either).
import { open, rename, readFile, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import type { Meta, PeerId } from '../core/types.js';

const metaMagic = 'geomirror-meta-v1';
/**
 * A fresh site: epoch 1 (the first primary's epoch), no seq used yet. `load()` returns this very
 * object when no record exists, so `meta === freshMeta` says "first life of this site".
 */
export const freshMeta: Meta = { epoch: 1n, seqReserved: 1n };

export interface MetaStore {
  load(): Promise<Meta>;
  /** Durable when the promise resolves (write temp, fdatasync, rename). Saves apply in issue order. */
  save(meta: Meta): Promise<void>;
}

/** Fields a save that leaves them out keeps (the cores persist epoch and seqs without them). */
type Sticky = Pick<Meta, 'acting' | 'inSyncEpoch'>;

function withSticky(meta: Meta, old: Sticky): { meta: Meta; sticky: Sticky } {
  const acting = meta.acting ?? old.acting;
  const inSyncEpoch = meta.inSyncEpoch ?? old.inSyncEpoch;
  const sticky: Sticky = { ...(acting !== undefined ? { acting } : {}), ...(inSyncEpoch !== undefined ? { inSyncEpoch } : {}) };
  return { meta: { epoch: meta.epoch, seqReserved: meta.seqReserved, ...sticky }, sticky };
}

export function memoryMetaStore(): MetaStore {
  let meta = freshMeta;
  return {
    load: async () => meta,
    save: async (m) => {
      meta = withSticky(m, meta).meta;
    },
  };
}

export function fileMetaStore(path: string): MetaStore {
  /** The sticky fields as last read or written; `known` once the file was read or written. */
  let sticky: Sticky = {};
  let known = false;
  /** Saves run one at a time, in issue order: they share the temp file, and the last issued must win. */
  let chain: Promise<void> = Promise.resolve();

  async function load(): Promise<Meta> {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        sticky = {};
        known = true;
        return freshMeta;
      }
      throw err;
    }
    let parsed: { magic?: unknown; epoch?: unknown; seqReserved?: unknown; acting?: unknown; inSyncEpoch?: unknown };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      throw new Error(`${path}: the site meta record is not valid JSON; restore it from a backup or delete it only if this site's replica is to be resynced from scratch`);
    }
    if (parsed.magic !== metaMagic || typeof parsed.epoch !== 'string' || typeof parsed.seqReserved !== 'string') {
      throw new Error(`${path}: not a geomirror meta record (expected ${metaMagic} with epoch and seqReserved)`);
    }
    if (parsed.acting !== undefined && parsed.acting !== 'primary' && parsed.acting !== 'standby' && parsed.acting !== 'mirror') {
      throw new Error(`${path}: acting is ${JSON.stringify(parsed.acting)}; expected primary, standby or mirror (the role this site took on in a failover)`);
    }
    if (parsed.inSyncEpoch !== undefined && (typeof parsed.inSyncEpoch !== 'string' || !/^\d+$/.test(parsed.inSyncEpoch))) {
      throw new Error(`${path}: inSyncEpoch is ${JSON.stringify(parsed.inSyncEpoch)}; expected a decimal epoch (the epoch in which this standby's primary last said it holds every acked write)`);
    }
    // An older record's `standbyInSync` (a boolean, bound to no epoch) is not trusted: the
    // standby waits for its primary to say in sync again (issue 16 item 1).
    const inSyncEpoch = typeof parsed.inSyncEpoch === 'string' ? BigInt(parsed.inSyncEpoch) : undefined;
    const loaded = withSticky({ epoch: BigInt(parsed.epoch), seqReserved: BigInt(parsed.seqReserved) }, { acting: parsed.acting, ...(inSyncEpoch !== undefined ? { inSyncEpoch } : {}) });
    sticky = loaded.sticky;
    known = true;
    return loaded.meta;
  }

  async function save(meta: Meta): Promise<void> {
    // `acting` and `inSyncEpoch` are sticky: the cores persist epoch and seq reservations
    // without them, and a fenced old primary must stay a mirror through every later save and
    // restart (and a standby keep whether it may be promoted).
    if (!known) {
      // Read once (not on every save): an unreadable old record keeps nothing, as before.
      await load().catch(() => {
        known = true;
      });
    }
    const merged = withSticky(meta, sticky);
    sticky = merged.sticky;
    const tmp = join(dirname(path), `.${basename(path)}.tmp`);
    const body = JSON.stringify({ magic: metaMagic, epoch: meta.epoch.toString(), seqReserved: meta.seqReserved.toString(), ...sticky }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n';
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(body);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  }

  return {
    load,
    save(meta: Meta): Promise<void> {
      const run = chain.then(() => save(meta));
      chain = run.catch(() => undefined);
      return run;
    },
  };
}

/** Dirty-region bitmaps, one per mirror: bit i set = region i may differ on that mirror. */
export interface BitmapStore {
  /** Every mirror's dirty regions as persisted. */
  load(peers: readonly PeerId[]): Promise<Map<PeerId, number[]>>;
  /** Whether a bitmap was ever kept for `peer` (a file exists): false for a mirror new to this primary. */
  has(peer: PeerId): Promise<boolean>;
  /** Durable when the promise resolves. */
  set(peer: PeerId, regions: readonly number[]): Promise<void>;
  /** Takes effect in issue order; need not be durable (a stale set bit only costs a resync). */
  clear(peer: PeerId, regions: readonly number[]): Promise<void>;
  close(): Promise<void>;
}

export function memoryBitmapStore(): BitmapStore {
  const maps = new Map<PeerId, Set<number>>();
  const of = (p: PeerId) => maps.get(p) ?? maps.set(p, new Set()).get(p)!;
  return {
    load: async (peers) => new Map(peers.map((p) => [p, [...of(p)]])),
    has: async (p) => maps.has(p),
    set: async (p, regions) => void regions.forEach((r) => of(p).add(r)),
    clear: async (p, regions) => void regions.forEach((r) => of(p).delete(r)),
    close: async () => undefined,
  };
}

/**
 * One file per mirror, one bit per region (a 1 GiB volume at 64 KiB regions: 2 KiB). A set
 * writes the changed bytes in place and fdatasyncs before resolving; writes to one file are
 * chained so they apply in issue order.
 */
export function fileBitmapStore(pathPrefix: string, regionCount: number): BitmapStore {
  const bytes = Math.ceil(regionCount / 8);
  const files = new Map<PeerId, { fh: FileHandle; bits: Uint8Array; chain: Promise<void> }>();
  const pathOf = (peer: PeerId) => `${pathPrefix}${peer}`;

  async function get(peer: PeerId) {
    let f = files.get(peer);
    if (f) return f;
    const path = pathOf(peer);
    const bits = new Uint8Array(bytes);
    try {
      const old = await readFile(path);
      bits.set(old.subarray(0, bytes));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await writeFile(path, bits, { mode: 0o600 });
    }
    f = files.get(peer); // another caller may have opened it meanwhile
    if (f) return f;
    f = { fh: await open(path, 'r+'), bits, chain: Promise.resolve() };
    files.set(peer, f);
    return f;
  }

  async function update(peer: PeerId, regions: readonly number[], value: boolean, sync: boolean): Promise<void> {
    const f = await get(peer);
    const run = f.chain.then(async () => {
      let lo = bytes;
      let hi = -1;
      for (const r of regions) {
        if (!Number.isSafeInteger(r) || r < 0 || r >= regionCount) throw new Error(`${pathOf(peer)}: dirty region ${r} is outside 0..${regionCount - 1}`);
        const i = r >> 3;
        if (value) f.bits[i]! |= 1 << (r & 7);
        else f.bits[i]! &= ~(1 << (r & 7));
        lo = Math.min(lo, i);
        hi = Math.max(hi, i);
      }
      if (hi < lo) return;
      await f.fh.write(f.bits, lo, hi - lo + 1, lo);
      if (sync) await f.fh.datasync();
    });
    f.chain = run.catch(() => undefined);
    return run;
  }

  return {
    async has(peer) {
      if (files.has(peer)) return true;
      try {
        await stat(pathOf(peer));
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw err;
      }
    },
    async load(peers) {
      const out = new Map<PeerId, number[]>();
      for (const p of peers) {
        const f = await get(p);
        const regions: number[] = [];
        for (let r = 0; r < regionCount; r++) if ((f.bits[r >> 3]! >> (r & 7)) & 1) regions.push(r);
        out.set(p, regions);
      }
      return out;
    },
    set: (peer, regions) => update(peer, regions, true, true),
    clear: (peer, regions) => update(peer, regions, false, false),
    async close() {
      for (const f of files.values()) {
        await f.chain;
        await f.fh.close();
      }
      files.clear();
    },
  };
}

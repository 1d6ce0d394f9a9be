// A site's own suspect regions, as the roles below a primary handle them (issue 16 items 2, 3):
// the mirror, the relay and a standby's inner mirror. Pure helpers over the local store (which
// records the regions, persisted) and the upstream side (which names them in every join and,
// mid-session, in a resyncRequest of their own): the upstream resyncs them, and a region is
// clean again once resync data covering it is on storage.
//
//   start            the regions recorded before (bitmap `localSuspectKey`) plus what the cache
//                    journal reports it lost to damage (a lost entry whose range it cannot name
//                    makes the whole copy suspect)
//   storageRecovered the storage is back after failing and names what it missed
//   readRequest      the upstream reads from this copy (a primary repairing its own, or serving a
//                    host read it cannot), also where it is suspect: the upstream knows block for
//                    block what this site missed, and takes only the other blocks

import type { CoreIO } from './io.js';
import type { LocalStore, StoreEntry } from './local-store.js';
import { rangesOfRegions, regionCount, regionsOfRanges } from './regions.js';
import type { Upstream } from './upstream.js';
import { localSuspectKey, type ByteRange, type CoreEvent, type PeerId, type PeerMsg, type Recovered, type SenseInfo } from './types.js';

/** Every region of the volume (the whole copy is suspect). */
export function allRegions(volumeBytes: number, regionBytes: number): number[] {
  return Array.from({ length: regionCount(volumeBytes, regionBytes) }, (_, i) => i);
}

/** Regions of `ranges`, or of the whole volume when what was missed cannot be named. */
export function suspectRegions(ranges: readonly ByteRange[], unknown: boolean, volumeBytes: number, regionBytes: number): number[] {
  return unknown ? allRegions(volumeBytes, regionBytes) : regionsOfRanges(ranges, regionBytes);
}

/** First event of a life: the recorded suspect regions, and what the journal lost (recorded now). */
export function startSuspect<E extends StoreEntry>(io: CoreIO, store: LocalStore<E>, rec: Recovered, volumeBytes: number, regionBytes: number): number[] {
  store.start(rec.dirtyRegions.get(localSuspectKey) ?? []);
  const lost = rec.lost;
  if (lost === undefined || (lost.ranges.length === 0 && !lost.unknown)) return [];
  const regions = suspectRegions(lost.ranges, lost.unknown, volumeBytes, regionBytes);
  io.log('error', 'journal_damage', {
    lostRanges: lost.ranges.length, unknown: lost.unknown, regions: regions.length,
    effect: 'acknowledged writes are missing from this site\'s journal: their regions are resynced from its peers before this copy counts as whole',
  });
  store.markSuspect(regions);
  return regions;
}

/** `ranges` without the bytes of `cut` (both byte ranges). */
function minusRanges(ranges: readonly ByteRange[], cut: readonly { offsetBytes: number; lengthBytes: number }[]): ByteRange[] {
  let out = [...ranges];
  for (const c of cut) {
    const cEnd = c.offsetBytes + c.lengthBytes;
    out = out.flatMap((r) => {
      const rEnd = r.offsetBytes + r.lengthBytes;
      if (cEnd <= r.offsetBytes || rEnd <= c.offsetBytes) return [r];
      const parts: ByteRange[] = [];
      if (r.offsetBytes < c.offsetBytes) parts.push({ offsetBytes: r.offsetBytes, lengthBytes: c.offsetBytes - r.offsetBytes });
      if (cEnd < rEnd) parts.push({ offsetBytes: cEnd, lengthBytes: rEnd - cEnd });
      return parts;
    });
  }
  return out;
}

/** The storage came back and names what it missed: suspect (durably), then reported upstream. */
export function storageRecovered<E extends StoreEntry>(io: CoreIO, store: LocalStore<E>, up: Upstream<E>, ev: Extract<CoreEvent, { type: 'storageRecovered' }>, volumeBytes: number, regionBytes: number): void {
  const regions = suspectRegions(ev.ranges, ev.unknown, volumeBytes, regionBytes);
  if (regions.length === 0) return;
  io.log('warn', 'storage_recovered', { regions: regions.length, unknown: ev.unknown, effect: 'the regions it missed are resynced from the upstream' });
  store.markSuspect(regions, () => {
    io.push({ type: 'storageStaleRecorded', ranges: ev.ranges });
    // Exactly what it missed (the upstream knows then which blocks this copy still holds); the
    // whole volume when it cannot say.
    // Writes that failed here were reported one by one (writeStatus, again at every join): the
    // upstream knows them exactly (and forgets them where they failed everywhere), so only what
    // else the storage missed is reported as a range.
    up.report(ev.unknown ? rangesOfRegions(regions, volumeBytes, regionBytes) : minusRanges(ev.ranges, up.failed.filter((e) => e.epoch === up.epoch)));
  });
}

/** Answers the upstream's readRequest from this copy (ordered after every write queued before it). */
export function serveRead<E extends StoreEntry>(io: CoreIO, store: LocalStore<E>, up: Upstream<E>, peer: PeerId, m: Extract<PeerMsg, { type: 'readRequest' }>): void {
  const session = up.session;
  const answer = (payload: Uint8Array, sense?: SenseInfo): void => {
    if (session !== up.session) return; // the asker's session ended; it asks again if it still needs to
    io.send(peer, sense === undefined ? { type: 'readData', epoch: up.epoch, readId: m.readId, payload } : { type: 'readData', epoch: up.epoch, readId: m.readId, payload: new Uint8Array(0), sense });
  };
  // Served even where this copy is suspect: the upstream knows, block for block, what this site
  // missed (it was told: writeStatus, exact resyncRequest ranges) and takes only the rest.
  store.readRegion(m.offsetBytes, m.lengthBytes, (data, sense) => answer(data ?? new Uint8Array(0), sense ?? (data === undefined ? { key: 0x3, asc: 0x11, ascq: 0, message: `${io.self}: read failed` } : undefined)));
}

// Multi-volume consistency groups in the simulator (issue 20): the volumes of one group are
// replicated as ONE stream over one address space, each volume a disjoint slice of it (placed in
// order, each offset aligned to the region size); a volume's export is a window onto its slice.
// So a simulated group is the ordinary world with this volume map on top.
//
// The `log` workload writes sequence-numbered records the way a database writes its log and data
// volumes: record k goes to volume k % V, slot floor(k / V) % S of that volume's log area (a
// ring: later records overwrite older ones), and carries k, its place and a checksum. Records
// are issued strictly one after another (record k only after record k - 1 was acked: dependent
// writes). The group cut holds when what a site serves is "records 1..c applied, nothing later"
// for some c: every slot holds the newest record <= c that maps to it (or nothing), never a
// record > c, never a torn or misplaced record. Every acked record must be <= c.

import type { Prng } from '../../hal/prng.js';

export interface GroupVolume {
  readonly index: number;
  /** Where the volume's slice starts in the group's address space (a multiple of the region size). */
  readonly offsetBytes: number;
  readonly sizeBytes: number;
  /** The record ring at the start of the volume (0 with the random workload); the rest is data. */
  readonly logBytes: number;
}

export interface GroupLayout {
  readonly volumes: readonly GroupVolume[];
  readonly blockBytes: number;
  /** Blocks per record. */
  readonly recordBlocks: number;
  /** Record slots per volume. */
  readonly slots: number;
}

/**
 * Splits a group address space of `groupBytes` into `count` volumes: each gets an equal share of
 * whole regions, its size sometimes short of the share (a slice may end mid-region; the next one
 * still starts on a region boundary, so no region holds two volumes).
 */
export function makeLayout(p: Prng, count: number, groupBytes: number, regionBytes: number, blockBytes: number, log: boolean): GroupLayout {
  if (!Number.isInteger(count) || count < 1) throw new Error(`group: ${count} volumes (use 1 or more)`);
  const shareRegions = Math.floor(groupBytes / regionBytes / count);
  if (shareRegions < 1) throw new Error(`group: ${count} volumes do not fit ${groupBytes} bytes in regions of ${regionBytes}`);
  const recordBlocks = 1 + p.int(2);
  const slots = 4 + p.int(5);
  const volumes: GroupVolume[] = [];
  let at = 0;
  for (let v = 0; v < count; v++) {
    const share = shareRegions * regionBytes;
    const sizeBytes = share - p.int(regionBytes / blockBytes) * blockBytes;
    const logBytes = log ? slots * recordBlocks * blockBytes : 0;
    if (logBytes >= sizeBytes) throw new Error(`group: volume ${v} of ${sizeBytes} bytes has no room beside its log of ${logBytes}`);
    volumes.push({ index: v, offsetBytes: at, sizeBytes, logBytes });
    at += Math.ceil(sizeBytes / regionBytes) * regionBytes;
  }
  return { volumes, blockBytes, recordBlocks, slots };
}

/** Where record k lives: its volume and the byte offset of its slot inside that volume. */
export function recordPlace(g: GroupLayout, k: number): { volume: number; slot: number; offsetBytes: number } {
  const n = g.volumes.length;
  const volume = k % n;
  const slot = Math.floor(k / n) % g.slots;
  return { volume, slot, offsetBytes: g.volumes[volume]!.offsetBytes + slot * g.recordBlocks * g.blockBytes };
}

// Record block format, after the 8-byte header every simulated write carries (write id, block):
//   8 magic  12 k  16 volume  20 slot  24 part  28 parts  32 checksum  36.. body (from k, part)
const magic = 0x47524543; // "GREC"
const sumAt = 32;
const bodyAt = 36;

function checksum(blk: Uint8Array): number {
  // FNV-1a over the record fields and the body (not the write header, not the checksum itself).
  let h = 0x811c9dc5;
  for (let i = 8; i < blk.byteLength; i++) {
    if (i >= sumAt && i < bodyAt) continue;
    h = Math.imul(h ^ blk[i]!, 0x01000193) >>> 0;
  }
  return h;
}

/** Fills the record fields of every block of `payload` (its write headers are the caller's). */
export function fillRecord(g: GroupLayout, k: number, payload: Uint8Array): void {
  const { volume, slot } = recordPlace(g, k);
  for (let part = 0; part < g.recordBlocks; part++) {
    const blk = payload.subarray(part * g.blockBytes, (part + 1) * g.blockBytes);
    const dv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
    dv.setUint32(8, magic);
    dv.setUint32(12, k);
    dv.setUint32(16, volume);
    dv.setUint32(20, slot);
    dv.setUint32(24, part);
    dv.setUint32(28, g.recordBlocks);
    for (let i = bodyAt; i < blk.byteLength; i++) blk[i] = (k * 131 + part * 17 + i) & 0xff;
    dv.setUint32(sumAt, checksum(blk));
  }
}

/** Whether a storage write carries a record (its first block does). */
export function isRecordWrite(payload: Uint8Array): boolean {
  return payload.byteLength >= bodyAt && new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(8) === magic;
}

/** The record a slot holds (0: never written), or why it holds none. */
function readSlot(g: GroupLayout, data: Uint8Array, volume: number, slot: number): number | string {
  let k: number | undefined;
  for (let part = 0; part < g.recordBlocks; part++) {
    const at = (slot * g.recordBlocks + part) * g.blockBytes;
    const blk = data.subarray(at, at + g.blockBytes);
    const dv = new DataView(blk.buffer, blk.byteOffset, blk.byteLength);
    let got: number;
    if (blk.every((b) => b === 0)) {
      got = 0;
    } else {
      if (dv.getUint32(8) !== magic) return `part ${part} is no record`;
      if (dv.getUint32(sumAt) !== checksum(blk)) return `part ${part} fails its checksum`;
      got = dv.getUint32(12);
      if (dv.getUint32(16) !== volume || dv.getUint32(20) !== slot || dv.getUint32(24) !== part || dv.getUint32(28) !== g.recordBlocks) {
        return `part ${part} holds part ${dv.getUint32(24)} of record ${got} of volume ${dv.getUint32(16)} slot ${dv.getUint32(20)} (misplaced)`;
      }
    }
    if (k !== undefined && got !== k) return `torn record: part 0 is ${k === 0 ? 'empty' : `record ${k}`}, part ${part} ${got === 0 ? 'empty' : `record ${got}`}`;
    k = got;
  }
  return k!;
}

/**
 * The group-cut check on what a site serves: `logOf(v)` is volume v's log area as read. Returns
 * the cut c (the newest record present) or what is wrong: a garbled slot, a slot that does not
 * hold the newest record <= c mapping to it (a gap: an earlier record missing while a later one
 * is present), an acked record beyond the cut, or a record that was never issued.
 */
export function checkGroupCut(g: GroupLayout, logOf: (volume: number) => Uint8Array, ackedMax: number, issuedMax: number, where: string): { cut: number; error?: string } {
  const held: number[][] = [];
  let cut = 0;
  for (const v of g.volumes) {
    const data = logOf(v.index);
    if (data.byteLength !== v.logBytes) return { cut: 0, error: `${where}: the log of volume ${v.index} read back ${data.byteLength} bytes, not ${v.logBytes}` };
    const row: number[] = [];
    for (let s = 0; s < g.slots; s++) {
      const k = readSlot(g, data, v.index, s);
      if (typeof k === 'string') return { cut: 0, error: `${where}: volume ${v.index} slot ${s}: ${k}` };
      const place = k === 0 ? undefined : recordPlace(g, k);
      if (place !== undefined && (place.volume !== v.index || place.slot !== s)) return { cut: 0, error: `${where}: volume ${v.index} slot ${s} holds record ${k}, which belongs to volume ${place.volume} slot ${place.slot}` };
      row.push(k);
      cut = Math.max(cut, k);
    }
    held.push(row);
  }
  if (cut > issuedMax) return { cut, error: `${where}: record ${cut} is present but only records up to ${issuedMax} were issued` };
  // What "records 1..cut, nothing later" looks like: each slot holds the newest record <= cut on it.
  const want: number[][] = g.volumes.map(() => new Array<number>(g.slots).fill(0));
  for (let k = Math.max(1, cut - g.volumes.length * g.slots); k <= cut; k++) {
    const p = recordPlace(g, k);
    want[p.volume]![p.slot] = k;
  }
  for (const v of g.volumes) {
    for (let s = 0; s < g.slots; s++) {
      const got = held[v.index]![s]!;
      const exp = want[v.index]![s]!;
      if (got !== exp) {
        return { cut, error: `${where}: group cut broken: record ${cut} is present, but volume ${v.index} slot ${s} holds ${got === 0 ? 'nothing' : `record ${got}`} instead of record ${exp} (${got < exp ? `record ${exp} missing: a later write is present without an earlier one` : 'a stale record came back'})` };
      }
    }
  }
  if (cut < ackedMax) return { cut, error: `${where}: acked record ${ackedMax} is missing (the newest record present is ${cut === 0 ? 'none' : cut})` };
  return { cut };
}

// Turns client byte ranges into the block-aligned calls the NbdExport contract promises.
// Unaligned edges are read-modify-written under the export's RangeLock, so a concurrent write
// to the same block (from any connection) is never lost between our read and our write.
// The server has already checked every range against the export size.

import type { NbdExport, NbdExtent } from './export.js';
import type { RangeLock } from './range-lock.js';

function floorTo(n: number, b: number): number {
  return n - (n % b);
}
function ceilTo(n: number, b: number): number {
  const r = n % b;
  return r === 0 ? n : n + (b - r);
}

export async function readRange(exp: NbdExport, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const b = exp.blockSizeBytes;
  const a0 = floorTo(offsetBytes, b);
  const a1 = ceilTo(offsetBytes + lengthBytes, b);
  const data = await exp.read(a0, a1 - a0);
  if (data.length !== a1 - a0) {
    throw new Error(`NBD export '${exp.name}' returned ${data.length} bytes for a ${a1 - a0}-byte read at ${a0} (short reads are bugs)`);
  }
  return a0 === offsetBytes && a1 === offsetBytes + lengthBytes ? data : data.subarray(offsetBytes - a0, offsetBytes - a0 + lengthBytes);
}

export async function writeRange(exp: NbdExport, lock: RangeLock, offsetBytes: number, data: Buffer, fua: boolean): Promise<void> {
  const b = exp.blockSizeBytes;
  const end = offsetBytes + data.length;
  const a0 = floorTo(offsetBytes, b);
  const a1 = ceilTo(end, b);
  const release = lock.tryAcquire(a0, a1) ?? (await lock.acquire(a0, a1));
  try {
    if (a0 === offsetBytes && a1 === end) {
      await exp.write(offsetBytes, data, { fua });
      return;
    }
    const whole = Buffer.allocUnsafe(a1 - a0); // head/tail blocks read below, middle copied
    if (a1 - a0 === b) {
      (await exp.read(a0, b)).copy(whole, 0);
    } else {
      const [head, tail] = await Promise.all([
        offsetBytes !== a0 ? exp.read(a0, b) : undefined,
        end !== a1 ? exp.read(a1 - b, b) : undefined,
      ]);
      head?.copy(whole, 0);
      tail?.copy(whole, a1 - a0 - b);
    }
    data.copy(whole, offsetBytes - a0);
    await exp.write(a0, whole, { fua });
  } finally {
    release();
  }
}

/**
 * Zeroes [offset, offset+length): partial edge blocks by read-modify-write, the aligned middle by
 * exp.zero() or, without it, by writing zero chunks (never punching holes, so NO_HOLE holds).
 */
export async function zeroRange(
  exp: NbdExport,
  lock: RangeLock,
  offsetBytes: number,
  lengthBytes: number,
  opts: { fua: boolean; noHole: boolean; zeroChunkBytes: number },
): Promise<void> {
  const b = exp.blockSizeBytes;
  const end = offsetBytes + lengthBytes;
  const a0 = floorTo(offsetBytes, b);
  const a1 = ceilTo(end, b);
  const m0 = ceilTo(offsetBytes, b);
  const m1 = floorTo(end, b);
  const release = await lock.acquire(a0, a1);
  try {
    if (m1 <= m0) {
      // Inside one block, or two partial blocks with no whole block between.
      await zeroPartial(exp, a0, offsetBytes, Math.min(end, a0 + b), opts.fua);
      if (a1 - a0 > b) await zeroPartial(exp, a1 - b, a1 - b, end, opts.fua);
      return;
    }
    if (offsetBytes !== m0) await zeroPartial(exp, a0, offsetBytes, m0, opts.fua);
    if (end !== m1) await zeroPartial(exp, m1, m1, end, opts.fua);
    if (exp.zero !== undefined) {
      await exp.zero(m0, m1 - m0, { fua: opts.fua, noHole: opts.noHole });
      return;
    }
    const chunkBytes = floorTo(Math.max(opts.zeroChunkBytes, b), b);
    const zeroes = Buffer.alloc(Math.min(chunkBytes, m1 - m0)); // read-only: exports never modify write buffers
    for (let at = m0; at < m1; at += zeroes.length) {
      const n = Math.min(zeroes.length, m1 - at);
      await exp.write(at, n === zeroes.length ? zeroes : zeroes.subarray(0, n), { fua: opts.fua });
    }
  } finally {
    release();
  }
}

/** Zeroes bytes [from, to) of the block at blockStart (caller holds the lock). */
async function zeroPartial(exp: NbdExport, blockStart: number, from: number, to: number, fua: boolean): Promise<void> {
  const b = exp.blockSizeBytes;
  if (to <= from) return;
  let block: Buffer;
  if (from === blockStart && to === blockStart + b) {
    block = Buffer.alloc(b);
  } else {
    block = Buffer.from(await exp.read(blockStart, b)); // copy: the export owns what it returned
    block.fill(0, from - blockStart, to - blockStart);
  }
  await exp.write(blockStart, block, { fua });
}

/** Trims the whole blocks inside the range (the spec lets us round inward). */
export async function trimRange(exp: NbdExport, lock: RangeLock, offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
  if (exp.trim === undefined) return;
  const b = exp.blockSizeBytes;
  const t0 = ceilTo(offsetBytes, b);
  const t1 = floorTo(offsetBytes + lengthBytes, b);
  if (t1 <= t0) return;
  const release = await lock.acquire(t0, t1);
  try {
    await exp.trim(t0, t1 - t0, { fua });
  } finally {
    release();
  }
}

/**
 * base:allocation extents for [offset, offset+length), shaped to the spec's rules: at least one
 * extent, every length nonzero, all but the last summing to less than the request, and with
 * REQ_ONE exactly one extent no longer than the request.
 */
export async function blockStatusRange(
  exp: NbdExport,
  offsetBytes: number,
  lengthBytes: number,
  reqOne: boolean,
  extentsMax: number,
): Promise<NbdExtent[]> {
  const raw = exp.blockStatus === undefined ? [{ lengthBytes, flags: 0 }] : await exp.blockStatus(offsetBytes, lengthBytes);
  const out: NbdExtent[] = [];
  let covered = 0;
  for (const e of raw) {
    if (covered >= lengthBytes || out.length >= (reqOne ? 1 : extentsMax)) break;
    if (!(e.lengthBytes > 0)) continue;
    const n = Math.min(e.lengthBytes, lengthBytes - covered);
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === e.flags) {
      out[out.length - 1] = { lengthBytes: last.lengthBytes + n, flags: e.flags };
    } else {
      out.push({ lengthBytes: n, flags: e.flags });
    }
    covered += n;
  }
  if (out.length === 0) out.push({ lengthBytes, flags: 0 }); // "MAY always safely report 0"
  return out;
}

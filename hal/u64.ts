// Big-endian u64 fields held as bigint (epochs, seqs) without Node's BigInt arithmetic on the
// common path. Buffer.writeBigUInt64BE splits its value with two BigInt masks and shifts, and
// readBigUInt64BE builds its result from three BigInts: a few short-lived heap objects per call,
// several calls per host write (cache entry headers, wire acks). Values below 2^53 (every seq
// and epoch a site will reach) go through one Number conversion instead; anything else takes
// Node's own path, so range errors are Node's.

const two32 = 2 ** 32;

/** Writes `v` as a big-endian u64 at `at`. */
export function writeU64BE(buf: Buffer, v: bigint, at: number): void {
  if (v >= 0n && v <= 0x1fffffffffffffn) {
    const n = Number(v);
    // Low word first: a field that runs past the end throws before anything is written.
    buf.writeUInt32BE(n >>> 0, at + 4);
    buf.writeUInt32BE(Math.floor(n / two32), at);
  } else {
    buf.writeBigUInt64BE(v, at);
  }
}

/** Reads a big-endian u64 at `at` as a bigint. */
export function readU64BE(buf: Buffer, at: number): bigint {
  const hi = buf.readUInt32BE(at);
  return hi < 0x200000 ? BigInt(hi * two32 + buf.readUInt32BE(at + 4)) : buf.readBigUInt64BE(at);
}

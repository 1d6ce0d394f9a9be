// CRC-32 (IEEE 802.3 / zlib / ISO-HDLC polynomial, reflected, init and xorout 0xFFFFFFFF) for
// frame headers and bodies. One algorithm, two implementations picked by measured speed
// (bench/wire.ts prints the figures; on the reference x86-64 box, Node 20):
//   4 KiB body : @node-rs/crc32 crc32 ~10 GiB/s, zlib.crc32 ~4.4 GiB/s, @node-rs crc32c
//                ~4.5 GiB/s, table-driven JS ~0.4 GiB/s
//   24 B header: table JS ~41 ns, zlib.crc32 ~74 ns, @node-rs crc32 ~128 ns (napi call cost)
// So bodies go through @node-rs/crc32 and the 20-byte header through the JS table. CRC-32 (not
// CRC-32C) because it is the faster one here and every microcontroller SDK ships it.
import { crc32 as nativeCrc32 } from '@node-rs/crc32';

const table = (() => {
  const t = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c;
  }
  return t;
})();

/** CRC-32 of `b[start..end)` in JS: fastest for the few bytes of a header (no napi call). */
export function crc32Small(b: Uint8Array, start = 0, end = b.length): number {
  let c = -1;
  for (let i = start; i < end; i++) c = table[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** CRC-32 of a whole buffer, continuing from `previous` (the CRC of the bytes before it). */
export function crc32(b: Uint8Array, previous = 0): number {
  if (b.length < 64) {
    // Continue the JS table from a previous CRC: un-finalise, run, finalise.
    let c = (previous ^ -1) | 0;
    for (let i = 0; i < b.length; i++) c = table[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
    return (c ^ -1) >>> 0;
  }
  return nativeCrc32(b, previous) >>> 0;
}

// ---- combining CRCs (issue 18: each payload checksummed once per site) ----------------------
// CRC-32 is linear over GF(2): for byte strings A and B, crc(A || B) = shift(crc(A), |B|) ^
// crc(B), where shift multiplies by x^(8|B|) modulo the polynomial (what zlib's crc32_combine
// computes). So a WRITE frame's body CRC (fixed fields || payload) follows from the payload's
// CRC without reading the payload again, and a received frame's verified body CRC gives the
// payload's CRC for the cache journal. Polynomials here are in reflected bit order: bit 31 is
// x^0.

/** a(x) * b(x) modulo the CRC-32 polynomial. */
function multModP(a: number, b: number): number {
  if (a === 0) return 0;
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ 0xedb88320 : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial, k = 0..31. */
const x2n = (() => {
  const t = new Array<number>(32);
  let p = 0x40000000; // x^1
  for (let k = 0; k < 32; k++) {
    t[k] = p;
    p = multModP(p, p);
  }
  return t;
})();

/** x^(8 * bytes) modulo the polynomial, for the few lengths a site sends (cached, bounded). */
const shiftOps = new Map<number, number>();
function shiftOp(bytes: number): number {
  let op = shiftOps.get(bytes);
  if (op === undefined) {
    op = 0x80000000; // x^0
    let n = bytes;
    for (let k = 3; n > 0; n = Math.floor(n / 2), k++) if (n % 2 === 1) op = multModP(x2n[k % 32]!, op);
    if (shiftOps.size >= 256) shiftOps.clear();
    shiftOps.set(bytes, op);
  }
  return op;
}

/** crc(A || B) from crc(A), crc(B) and the length of B in bytes. */
export function crc32Combine(crcA: number, crcB: number, bytesB: number): number {
  return (multModP(shiftOp(bytesB), crcA) ^ crcB) >>> 0;
}

/** crc(B) from crc(A || B), crc(A) and the length of B in bytes (the inverse of crc32Combine in B). */
export function crc32Suffix(crcAB: number, crcA: number, bytesB: number): number {
  // The same sum as crc32Combine: XOR with shift(crc(A)) undoes itself.
  return crc32Combine(crcA, crcAB, bytesB);
}

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

// hal/u64.ts against Node's own BigInt codecs: same bytes, same values, same refusals.
import { describe, expect, it } from 'vitest';
import { readU64BE, writeU64BE } from '../../hal/u64.js';

const values = [0n, 1n, 0xffffffffn, 0x100000000n, 0x1fffff_ffffffffn - 1n, 0x1fffff_ffffffffn, 0x20000000000000n, 0x20000000000001n, 0xdeadbeef_cafebaben, 0xffffffff_ffffffffn];

describe('u64 as bigint, big-endian', () => {
  it('writes the bytes Node writes and reads back what Node reads, on both sides of 2^32 and 2^53', () => {
    for (const v of values) {
      const ours = Buffer.alloc(12, 0xaa);
      const node = Buffer.alloc(12, 0xaa);
      writeU64BE(ours, v, 3);
      node.writeBigUInt64BE(v, 3);
      expect(ours.toString('hex'), `0x${v.toString(16)}`).toBe(node.toString('hex'));
      expect(readU64BE(node, 3)).toBe(v);
    }
  });

  it('reads every high word that takes the fast path exactly (2^21 high words, sampled)', () => {
    const b = Buffer.alloc(8);
    for (let hi = 0; hi < 0x200000; hi += 0x1fff) {
      b.writeUInt32BE(hi, 0);
      b.writeUInt32BE(0xffffffff - hi, 4);
      expect(readU64BE(b, 0)).toBe(b.readBigUInt64BE(0));
    }
  });

  it('refuses what Node refuses: negative, above 2^64 - 1, out of the buffer', () => {
    const b = Buffer.alloc(8);
    expect(() => writeU64BE(b, -1n, 0)).toThrow(RangeError);
    expect(() => writeU64BE(b, 1n << 64n, 0)).toThrow(RangeError);
    expect(() => writeU64BE(b, 5n, 1)).toThrow(RangeError);
    expect(b.equals(Buffer.alloc(8)), 'nothing written by a refused write').toBe(true);
    expect(() => readU64BE(b, 1)).toThrow(RangeError);
  });
});

// CRC-32 combine and split (src/wire/crc.ts) against CRCs computed over the bytes: a wrong
// combine would put wrong checksums in WRITE frames (refused by every mirror) and a wrong split
// would put wrong payload checksums in a mirror's cache journal (its entries refused at replay).
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32, crc32Combine, crc32Suffix } from '../../src/wire/crc.js';
import { ErrorCode, MessageReader, encodeFrame, type Message, type WriteMsg } from '../../src/wire/index.js';
import { Prng } from '../../hal/prng.js';

describe('CRC-32 combine / suffix', () => {
  it('crc(A || B) from crc(A) and crc(B), and crc(B) back from crc(A || B), for lengths from 0 to 1 MiB + 1', () => {
    const rng = new Prng(0x18);
    const lengths = [0, 1, 2, 3, 7, 8, 40, 63, 64, 65, 511, 512, 4095, 4096, 4097, 65535, 65536, 131072, 1048576, 1048577];
    for (let i = 0; i < 40; i++) lengths.push(rng.int(300_000));
    const big = randomBytes(1048577 + 64);
    for (const lenB of lengths) {
      const lenA = rng.int(64);
      const a = big.subarray(0, lenA);
      const b = big.subarray(lenA, lenA + lenB);
      const ab = big.subarray(0, lenA + lenB);
      expect(crc32Combine(crc32(a), crc32(b), lenB), `|A| ${lenA} |B| ${lenB}`).toBe(crc32(ab));
      expect(crc32Suffix(crc32(ab), crc32(a), lenB), `|A| ${lenA} |B| ${lenB}`).toBe(crc32(b));
    }
  });

  it('a changed byte in B changes the combined CRC (the combine reads crc(B), not a constant)', () => {
    const a = randomBytes(40);
    const b = randomBytes(4096);
    const before = crc32Combine(crc32(a), crc32(b), b.length);
    b[1234]! ^= 0x10;
    expect(crc32Combine(crc32(a), crc32(b), b.length)).not.toBe(before);
    expect(crc32Combine(crc32(a), crc32(b), b.length)).toBe(crc32(Buffer.concat([a, b])));
  });
});

describe('WRITE frames and the payload CRC (each payload checksummed once per site)', () => {
  const write = (data: Buffer, payloadCrc?: number) => ({ type: 'WRITE' as const, volumeId: 0, flags: 0, epoch: 2n, seq: 99n, offsetBytes: 8192n, data, ...(payloadCrc === undefined ? {} : { payloadCrc }) });

  it('a frame encoded from the payload CRC is the frame encoded from the payload, and decodes with that CRC', () => {
    for (const n of [0, 1, 4096, 65536, 1048576]) {
      const data = randomBytes(n);
      const plain = encodeFrame(write(data), 0);
      const fromCrc = encodeFrame(write(data, crc32(data)), 0);
      expect(fromCrc.equals(plain), `${n} bytes`).toBe(true);
      const got: Message[] = [];
      new MessageReader().push(fromCrc, (m) => got.push(m));
      expect(got[0]!.type).toBe('WRITE');
      expect((got[0] as WriteMsg).payloadCrc, `${n} bytes`).toBe(crc32(data));
      expect((got[0] as WriteMsg).data.equals(data)).toBe(true);
    }
  });

  it('a wrong payload CRC makes a frame the receiver refuses (BODY_CHECKSUM), never one it takes', () => {
    const data = randomBytes(4096);
    const bad = encodeFrame(write(data, (crc32(data) ^ 1) >>> 0), 0);
    expect(() => new MessageReader().push(bad, () => undefined)).toThrow(expect.objectContaining({ code: ErrorCode.BODY_CHECKSUM }));
  });
});

// Serial framing (COBS + CRC-32C): fixtures split at every byte offset, every single-bit flip,
// seeded garbage; a corrupted frame is never delivered (docs/SERIAL-PROTOCOL.md section 2-3).

import { describe, expect, it } from 'vitest';
import { Prng } from '../../hal/prng.js';
import { FrameParser, cobsDecode, cobsEncode, cobsEncodedBytesMax, encodeFrame } from '../../hal/serial/framing.js';
import { Op, decodeInfo, decodeMessage, encodeInfo, encodeMessage, headerBytes } from '../../hal/serial/messages.js';

function bytes(rng: Prng, n: number, zeroChance = 0.1): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rng.chance(zeroChance) ? 0 : 1 + rng.int(255);
  return b;
}

function collect(bodyBytesMax = 4096) {
  const frames: Buffer[] = [];
  const corrupt: string[] = [];
  const p = new FrameParser(bodyBytesMax, (b) => frames.push(Buffer.from(b)), (r) => corrupt.push(r));
  return { p, frames, corrupt };
}

describe('COBS', () => {
  it('round-trips every length around the 254-byte block boundary, never emitting 0x00', () => {
    const rng = new Prng(1);
    for (const n of [0, 1, 2, 253, 254, 255, 256, 507, 508, 509, 1000]) {
      for (const z of [0, 0.05, 1]) {
        const body = bytes(rng, n, z);
        const enc = cobsEncode(body);
        expect(enc.includes(0)).toBe(false);
        expect(enc.length).toBeLessThanOrEqual(cobsEncodedBytesMax(n));
        expect(Buffer.compare(cobsDecode(enc)!, body)).toBe(0);
      }
    }
  });

  it('rejects truncated and zero-bearing encodings', () => {
    expect(cobsDecode(Buffer.from([5, 1, 2]))).toBeUndefined();
    expect(cobsDecode(Buffer.from([3, 1, 0]))).toBeUndefined();
  });
});

describe('frame encoding (docs/SERIAL-PROTOCOL.md 2-3)', () => {
  it('is 0x00 COBS(body || CRC-32C big-endian) 0x00, with the standard check value', () => {
    const f = encodeFrame(Buffer.from('123456789'));
    expect(f[0]).toBe(0);
    expect(f[f.length - 1]).toBe(0);
    const dec = cobsDecode(f.subarray(1, f.length - 1))!;
    expect(dec.subarray(0, 9).toString()).toBe('123456789');
    expect(dec.subarray(9).toString('hex')).toBe('e3069283');
  });
});

describe('FrameParser', () => {
  it('delivers the same frames however the stream is split (every byte offset)', () => {
    const rng = new Prng(2);
    const bodies = [bytes(rng, 40), bytes(rng, 300), bytes(rng, 1)];
    const stream = Buffer.concat(bodies.map(encodeFrame));
    for (let cut = 0; cut <= stream.length; cut++) {
      const { p, frames, corrupt } = collect();
      p.push(stream.subarray(0, cut));
      p.push(stream.subarray(cut));
      expect(frames.map((f) => f.toString('hex'))).toEqual(bodies.map((b) => b.toString('hex')));
      expect(corrupt).toEqual([]);
    }
    const { p, frames } = collect();
    for (const byte of stream) p.push(Buffer.from([byte]));
    expect(frames).toHaveLength(3);
  });

  it('never delivers a frame with any single bit flipped', () => {
    const rng = new Prng(3);
    const body = bytes(rng, 64);
    const enc = encodeFrame(body);
    for (let bit = 0; bit < enc.length * 8; bit++) {
      const bad = Buffer.from(enc);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      const { p, frames } = collect();
      p.push(bad);
      for (const f of frames) expect(Buffer.compare(f, body)).toBe(0); // only possible if the flip hit a delimiter
    }
  });

  it('resynchronises after seeded garbage and drops oversize runs within its bound', () => {
    for (let seed = 10; seed < 40; seed++) {
      const rng = new Prng(seed);
      const body = bytes(rng, 1 + rng.int(500));
      const garbage = bytes(rng, rng.int(3000), 0.02);
      const { p, frames } = collect(1024);
      p.push(Buffer.concat([garbage, encodeFrame(body), bytes(rng, rng.int(50)), encodeFrame(body)]));
      expect(frames.length).toBeGreaterThanOrEqual(1);
      for (const f of frames) expect(Buffer.compare(f, body)).toBe(0);
    }
    const { p, frames } = collect(100);
    p.push(Buffer.alloc(5000, 7)); // no delimiter: bounded, dropped
    expect(p.stats.framesOversize).toBe(1);
    p.push(encodeFrame(Buffer.from('ok')));
    expect(frames.map(String)).toEqual(['ok']);
  });
});

describe('messages', () => {
  it('header is 20 bytes big-endian; INFO round-trips', () => {
    const m = encodeMessage({ op: Op.WRITE, id: 0x1234, lba: 2 ** 40 + 3, blocks: 9, status: 0, asc: 0, ascq: 0, flags: 1 }, Buffer.from('xy'));
    expect(headerBytes).toBe(20);
    expect(m.toString('hex', 0, 20)).toBe('0103123400000100000000030000000900000001');
    const d = decodeMessage(m)!;
    expect(d.header.lba).toBe(2 ** 40 + 3);
    expect(d.payload.toString()).toBe('xy');
    const info = { blockSizeBytes: 4096, blockCount: 123456789, payloadBytesMax: 65536, features: 3, model: 'card' };
    expect(decodeInfo(encodeInfo(info))).toEqual(info);
  });
});

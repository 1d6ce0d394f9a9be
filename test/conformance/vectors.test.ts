// Byte vectors: encode(fields) == bytes, decode(bytes) == fields, every vector split at every
// byte offset and in seeded random chunkings, every refusal refused with its code and reason,
// every handshake transcript replayed byte for byte.
import { describe, expect, it } from 'vitest';
import {
  ErrorCode,
  FrameEncoder,
  MessageReader,
  ProtocolError,
  encodeFrame,
  messageSpecs,
  type Message,
} from '../../src/wire/index.js';
import { loadVectors } from './load.js';
import { buildVectors, runHandshake, toJson, type HandshakeVector } from './vectors.js';

const v = loadVectors();

function decodeAll(chunks: Buffer[], firstFrameSeq = 0): Message[] {
  const r = new MessageReader({ firstFrameSeq });
  const out: Message[] = [];
  for (const c of chunks) r.push(c, (m) => out.push(m));
  return out;
}

function refusalOf(chunks: Buffer[]): ProtocolError | undefined {
  const r = new MessageReader();
  try {
    for (const c of chunks) r.push(c, () => {});
  } catch (e) {
    if (e instanceof ProtocolError) return e;
    throw e;
  }
  return undefined;
}

/** Deterministic PRNG (mulberry32) so a failing chunking replays from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('vectors.json', () => {
  it('is what the generator produces from the current layouts (run test/conformance/gen.ts after a layout change)', () => {
    expect(v.raw).toEqual(JSON.parse(JSON.stringify(buildVectors())));
  });

  it('covers every message type and every framing error code', () => {
    const types = new Set(v.messages.map((m) => m.fields.type));
    for (const t of messageSpecs.map((x) => x.name)) {
      expect(types.has(t as Message['type']), t).toBe(true);
    }
    const codes = new Set([...v.refusals.map((r) => r.code), ...v.handshakes.map((h) => h.code)]);
    for (const c of [1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 28, 29]) expect(codes.has(c), `code ${c}`).toBe(true);
  });
});

describe('message vectors', () => {
  for (const m of v.messages) {
    it(`${m.name}: encode(fields) == bytes`, () => {
      expect(encodeFrame(m.fields, m.frameSeq).toString('hex')).toBe(m.hex);
    });

    it(`${m.name}: decode(bytes) == fields, at every split offset`, () => {
      const want = toJson(m.fields);
      expect(toJson(decodeAll([m.bytes], m.frameSeq))).toEqual([want]);
      for (let at = 0; at <= m.bytes.length; at++) {
        const got = decodeAll([m.bytes.subarray(0, at), m.bytes.subarray(at)], m.frameSeq);
        expect(got.length, `split at ${at}`).toBe(1);
        expect(toJson(got[0]), `split at ${at}`).toEqual(want);
      }
    });
  }

  it('the encoder hands out the caller data buffer itself (no copy) for WRITE', () => {
    const w = v.messages.find((m) => m.fields.type === 'WRITE' && m.fields.data.length > 0)!.fields;
    const parts = new FrameEncoder().encode(w);
    expect(parts.length).toBe(2);
    expect(parts[1]).toBe((w as Extract<Message, { type: 'WRITE' }>).data);
  });

  it('a stream of every vector, re-numbered, decodes the same in 200 seeded random chunkings', () => {
    const enc = new FrameEncoder();
    const stream = Buffer.concat(v.messages.flatMap((m) => enc.encode(m.fields)));
    const want = v.messages.map((m) => toJson(m.fields));
    for (let seed = 1; seed <= 200; seed++) {
      const rnd = prng(seed);
      const chunks: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(rnd() ** 3 * 6000);
        chunks.push(stream.subarray(at, at + n));
        at += n;
      }
      expect(toJson(decodeAll(chunks)), `seed ${seed}`).toEqual(want);
    }
  });

  it('payload views stay intact after the parser moves on (it never writes into handed-out memory)', () => {
    const enc = new FrameEncoder();
    const msgs = v.messages.filter((m) => m.fields.type === 'WRITE' || m.fields.type === 'RESYNC_DATA').map((m) => m.fields);
    const stream = Buffer.concat([...msgs, ...msgs, ...msgs].flatMap((m) => enc.encode(m)));
    const r = new MessageReader();
    const got: Message[] = [];
    for (let at = 0; at < stream.length; at += 333) r.push(Buffer.from(stream.subarray(at, at + 333)), (m) => got.push(m));
    const want = [...msgs, ...msgs, ...msgs];
    expect(got.length).toBe(want.length);
    got.forEach((g, i) => expect(Buffer.compare((g as { data: Buffer }).data, (want[i] as { data: Buffer }).data)).toBe(0));
  });
});

describe('refusal vectors', () => {
  for (const r of v.refusals) {
    it(`${r.name}: refused with ${r.codeName} and a reason, at every split offset`, () => {
      const whole = refusalOf([r.bytes]);
      expect(whole?.code).toBe(r.code);
      expect(whole?.reason).toContain(r.reasonIncludes);
      for (let at = 0; at <= r.bytes.length; at++) {
        expect(refusalOf([r.bytes.subarray(0, at), r.bytes.subarray(at)])?.code, `split at ${at}`).toBe(r.code);
      }
    });
  }

  it('a 4 GiB length field is refused from the header alone, nothing buffered', () => {
    const r = v.refusals.find((x) => x.name === '4 GiB length field')!;
    expect(r.bytes.readUInt32BE(8)).toBe(0xffffffff);
    const reader = new MessageReader();
    expect(() => reader.push(r.bytes, () => {})).toThrow(ProtocolError);
    expect(reader.frames.bufferedBytes).toBe(0);
    expect(reader.frames.error?.code).toBe(ErrorCode.FRAME_TOO_LARGE);
  });

  it('random bytes are refused at the first byte, without waiting for a whole header', () => {
    expect(refusalOf([Buffer.from([0x16])])?.code).toBe(ErrorCode.BAD_MAGIC); // a TLS ClientHello
  });
});

describe('handshake vectors', () => {
  const wrongSecret = Buffer.from('not the secret');
  for (const h of v.handshakes) {
    it(`${h.name}: replays byte for byte (${h.outcome}${h.codeName ? ` ${h.codeName}` : ''})`, () => {
      const inbound = h.steps.filter((s) => s.dir === 'in');
      const reader = new MessageReader();
      let i = 0;
      const replay = () => {
        const s = inbound[i++];
        if (s === undefined) return undefined;
        let got: Message | undefined;
        reader.push(Buffer.from(s.hex, 'hex'), (m) => (got = m));
        return got;
      };
      const { steps: _s, outcome: _o, code: _c, codeName: _n, ...opts } = h;
      const again: HandshakeVector = runHandshake(opts, replay, v.secret);
      expect(again).toEqual(h);
      if (h.outcome === 'refused') expect(h.steps.at(-1)!.dir === 'out' ? h.steps.at(-1)!.type : 'REFUSE').toBe('REFUSE');
    });
  }

  it('the established listener transcript fails with another secret (the MACs depend on it)', () => {
    const h = v.handshakes.find((x) => x.name === 'listener: established')!;
    const inbound = h.steps.filter((s) => s.dir === 'in');
    const reader = new MessageReader();
    let i = 0;
    const { steps: _s, outcome: _o, code: _c, codeName: _n, ...opts } = h;
    const again = runHandshake(opts, () => {
      const s = inbound[i++];
      if (!s) return undefined;
      let got: Message | undefined;
      reader.push(Buffer.from(s.hex, 'hex'), (m) => (got = m));
      return got;
    }, wrongSecret);
    expect(again.outcome).toBe('refused');
    expect(again.codeName).toBe('AUTH_FAILED');
  });
});

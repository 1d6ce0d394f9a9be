// fast-check fuzzing of the parser + decoder: whatever bytes arrive, in whatever chunks, it
// either delivers frames, waits for more, or throws a ProtocolError with a code and a reason;
// it never throws anything else, never holds more than frameBytesMax, and every push returns.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ErrorCode,
  FrameEncoder,
  MessageReader,
  ProtocolError,
  crc32,
  frameBytesMax,
  headerBytes,
  protocolVersion,
  specByCode,
  type Message,
} from '../../src/wire/index.js';
import { toJson } from './vectors.js';
import { loadVectors } from './load.js';
import { rawHeader } from './vectors.js';

const v = loadVectors();
const codes = new Set<number>(Object.values(ErrorCode));
const numRuns = 300;

interface Outcome { messages: Message[]; error: ProtocolError | undefined; bufferedMax: number }

/** Feeds chunks; fails the test on any throw that is not a well-formed ProtocolError. */
function run(chunks: Buffer[]): Outcome {
  const r = new MessageReader();
  const messages: Message[] = [];
  let bufferedMax = 0;
  try {
    for (const c of chunks) {
      r.push(c, (m) => messages.push(m));
      bufferedMax = Math.max(bufferedMax, r.frames.bufferedBytes);
    }
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`parser threw a non-protocol error: ${String(e)}`, { cause: e });
    expect(codes.has(e.code)).toBe(true);
    expect(e.reason.length).toBeGreaterThan(10);
    // Once failed it stays failed with the same error.
    expect(() => r.push(Buffer.from([0]), () => {})).toThrow(e);
    return { messages, error: e, bufferedMax };
  }
  expect(bufferedMax).toBeLessThanOrEqual(frameBytesMax);
  return { messages, error: undefined, bufferedMax };
}

function chunked(b: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of at) {
    out.push(b.subarray(prev, c));
    prev = c;
  }
  out.push(b.subarray(prev));
  return out;
}

const enc = new FrameEncoder();
const validStream = Buffer.concat(v.messages.flatMap((m) => enc.encode(m.fields)));
const validMessages = v.messages.map((m) => toJson(m.fields));
const cuts = fc.array(fc.nat(), { maxLength: 20 });

describe('parser fuzz (fast-check)', () => {
  it('arbitrary bytes: only protocol errors, bounded buffering', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), cuts, (bytes, c) => {
      run(chunked(Buffer.from(bytes), c));
    }), { numRuns });
  });

  it('arbitrary bytes after a valid magic and version: only protocol errors', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), cuts, (bytes, c) => {
      run(chunked(Buffer.concat([Buffer.from('GMRP\x01', 'latin1'), Buffer.from(bytes)]), c));
    }), { numRuns });
  });

  it('bit flips in a valid stream: the frames before the flip, then a protocol error (or, rarely, equal frames)', () => {
    fc.assert(fc.property(fc.nat({ max: validStream.length * 8 - 1 }), cuts, (bit, c) => {
      const b = Buffer.from(validStream);
      b[bit >> 3] = b[bit >> 3]! ^ (1 << (bit & 7));
      const o = run(chunked(b, c));
      expect(o.error).toBeDefined();
      // Every frame delivered before the error is exactly the original.
      expect(toJson(o.messages)).toEqual(validMessages.slice(0, o.messages.length));
    }), { numRuns });
  });

  it('truncation: a prefix of a valid stream yields a prefix of its frames and no error', () => {
    fc.assert(fc.property(fc.nat({ max: validStream.length }), cuts, (len, c) => {
      const o = run(chunked(validStream.subarray(0, len), c));
      expect(o.error).toBeUndefined();
      expect(toJson(o.messages)).toEqual(validMessages.slice(0, o.messages.length));
    }), { numRuns });
  });

  it('huge and arbitrary lengths with a valid header CRC: refused before buffering, or bounded', () => {
    fc.assert(fc.property(
      fc.oneof(fc.constant(0xffffffff), fc.constant(0x1_0000_0000 - headerBytes), fc.integer({ min: 0, max: 0xffffffff })),
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ maxLength: 8192 }),
      (bodyBytes, type, tail) => {
        const o = run([rawHeader({ type, bodyBytes }), Buffer.from(tail)]);
        if (bodyBytes > frameBytesMax - headerBytes) {
          expect(o.error?.code).toBe(ErrorCode.FRAME_TOO_LARGE);
          expect(o.bufferedMax).toBe(0);
        }
        expect(o.bufferedMax).toBeLessThanOrEqual(frameBytesMax);
      },
    ), { numRuns });
  });

  it('unknown types and versions are refused by name', () => {
    for (let type = 0; type < 256; type++) {
      const o = run([rawHeader({ type, bodyBytes: 0 })]);
      expect(o.error?.code, `type ${type}`).toBe(specByCode.has(type) ? (specByCode.get(type)!.bodyBytesMin > 0 ? ErrorCode.MALFORMED : undefined) : ErrorCode.UNKNOWN_TYPE);
    }
    fc.assert(fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), (version, type) => {
      const h = rawHeader({ version, type, bodyBytes: 0 });
      const o = run([h]);
      if (version !== protocolVersion) expect(o.error?.code).toBe(ErrorCode.VERSION_UNSUPPORTED);
      else if (!specByCode.has(type)) {
        expect(o.error?.code).toBe(ErrorCode.UNKNOWN_TYPE);
      } else expect(o.error).toBeDefined(); // known types all need a body: MALFORMED
    }), { numRuns });
  });

  it('trailing garbage after valid frames: all frames, then a protocol error or a wait', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 1, maxLength: 512 }), cuts, (garbage, c) => {
      const o = run(chunked(Buffer.concat([validStream, Buffer.from(garbage)]), c));
      expect(toJson(o.messages)).toEqual(validMessages);
      if (garbage[0] !== 0x47) expect(o.error?.code).toBe(ErrorCode.BAD_MAGIC);
    }), { numRuns });
  });

  it('valid frames with a corrupted body and a recomputed body CRC: decoded or refused, never anything else', () => {
    fc.assert(fc.property(fc.nat({ max: v.messages.length - 1 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (i, pos, x) => {
      const m = v.messages[i]!;
      const body = Buffer.from(m.bytes.subarray(headerBytes));
      if (body.length === 0) return;
      body[pos % body.length] = body[pos % body.length]! ^ x;
      const frame = Buffer.concat([rawHeader({ type: m.bytes[5]!, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
      run([frame]);
    }), { numRuns: 1000 });
  });
});

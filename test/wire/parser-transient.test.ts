// The frame parser fed from a socket's reused read buffer (src/net/read-into.ts, issue 18): every
// chunk is `transient`, written over by the next read as soon as push() returns. Every WRITE kept
// (as the journal keeps them) must still hold the bytes that were sent, whatever the split.
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MessageReader, encodeFrame, type Message } from '../../src/wire/index.js';

function frames(sizes: number[]): { stream: Buffer; sent: string[] } {
  const parts: Buffer[] = [];
  const sent: string[] = [];
  sizes.forEach((n, i) => {
    const msg: Message =
      n === 0
        ? { type: 'ACK', volumeId: 0, epoch: 1n, seq: BigInt(i) }
        : { type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: BigInt(i), offsetBytes: BigInt(i) * 4096n, data: randomBytes(n) };
    sent.push(describeMsg(msg));
    parts.push(encodeFrame(msg, i));
  });
  return { stream: Buffer.concat(parts), sent };
}

function describeMsg(m: Message): string {
  if (m.type === 'WRITE') return `WRITE ${m.seq} ${m.data.length} ${createHash('sha256').update(m.data).digest('hex')}`;
  if (m.type === 'ACK') return `ACK ${m.seq}`;
  return m.type;
}

/** Pushes `stream` through one reused 64 KiB buffer, scribbled over after every read. */
function receive(stream: Buffer, pieceSizes: number[]): Message[] {
  const reader = new MessageReader();
  const reused = Buffer.alloc(64 * 1024);
  const kept: Message[] = [];
  for (let at = 0, i = 0; at < stream.length; i++) {
    const n = Math.min(pieceSizes[i % pieceSizes.length]!, reused.length, stream.length - at);
    stream.copy(reused, 0, at, at + n);
    at += n;
    reader.push(reused.subarray(0, n), (m) => kept.push(m), true);
    reused.fill(0x5a, 0, n); // the next read lands here
  }
  return kept;
}

describe('FrameParser with transient chunks (reused read buffer)', () => {
  it('keeps every WRITE byte for byte (4 KiB..1 MiB bodies, any split)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 9000 }), fc.constantFrom(4096, 65536, 65535, 200_000, 1 << 20)), { minLength: 1, maxLength: 10 }),
        fc.array(fc.integer({ min: 300, max: 70_000 }), { minLength: 1, maxLength: 6 }),
        (sizes, pieceSizes) => {
          const { stream, sent } = frames(sizes);
          expect(receive(stream, pieceSizes).map(describeMsg)).toEqual(sent);
        },
      ),
      { seed: 18, numRuns: 40 },
    );
  });

  it('copies a body that lies wholly inside one read (small ones share a slab, never overlapping)', () => {
    const { stream, sent } = frames([4096, 100, 0, 4096, 65536]);
    // One read per frame boundary region: every body is whole inside its read.
    expect(receive(stream, [stream.length]).map(describeMsg)).toEqual(sent);
  });
});

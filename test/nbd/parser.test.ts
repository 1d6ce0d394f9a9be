// The chunk-fed parser: every fixture split at every byte offset (and fed byte by byte) must
// produce exactly the events of the unsplit stream; bounds are enforced before buffering.
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { NbdServerParser, type ParserEvent } from '../../src/nbd/parser.js';
import { Cmd, IHAVEOPT, Opt, REQUEST_MAGIC } from '../../src/nbd/protocol.js';
import { defaultNbdLimits, requestBytesMaxDefault } from '../../src/nbd/limits.js';
import { hostWritePooledBytesMax, payloadPool } from '../../hal/payload-pool.js';

const limits = { optionBytesMax: 64, optionDiscardBytesMax: 1024, writeBytesMax: 32 };

function option(opt: number, data: Buffer, claimed = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(claimed, 12);
  return Buffer.concat([h, data]);
}

function request(cmd: number, cookie: bigint, offset: bigint, length: number, payload?: Buffer, flags = 0): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(cmd, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(offset, 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

/** Feeds the pieces, pulling events after each; switches to transmission after a GO option. */
function run(pieces: Buffer[]): unknown[] {
  const p = new NbdServerParser(limits);
  const out: unknown[] = [];
  for (const piece of pieces) {
    p.feed(piece);
    for (let ev = p.next(); ev !== undefined; ev = p.next()) {
      out.push(normalise(ev));
      if (ev.type === 'option' && ev.option === Opt.GO) p.startTransmission();
    }
  }
  return out;
}

function normalise(ev: ParserEvent): unknown {
  if (ev.type === 'option') return { ...ev, data: ev.data.toString('hex') };
  if (ev.type === 'request') return { ...ev, cookie: ev.cookie.toString('hex'), payload: ev.payload?.toString('hex') };
  return ev;
}

const flags = Buffer.from([0, 0, 0, 3]);
const stream = Buffer.concat([
  flags,
  option(Opt.STRUCTURED_REPLY, Buffer.alloc(0)),
  option(11, Buffer.from('extended?')),
  option(Opt.LIST, Buffer.alloc(100, 7)), // over optionBytesMax: skipped, reported
  option(Opt.GO, Buffer.from('00000004766f6c300000', 'hex')),
  request(Cmd.WRITE, 0xfedcba9876543210n, 4096n, 8, Buffer.from('0123456789abcdef', 'hex')),
  request(Cmd.READ, 2n ** 63n + 5n, 2n ** 40n, 512),
  request(Cmd.WRITE, 3n, 0n, 40, Buffer.alloc(40, 0xee)), // over writeBytesMax: skipped
  request(Cmd.FLUSH, 4n, 0n, 0),
  request(Cmd.DISC, 5n, 0n, 0),
]);

describe('NbdServerParser', () => {
  const whole = run([stream]);

  it('parses the fixture into the expected events', () => {
    expect(whole.map((e) => (e as { type: string }).type)).toEqual([
      'clientFlags', 'option', 'option', 'optionTooBig', 'option', 'request', 'request', 'request', 'request', 'request',
    ]);
    expect(whole[3]).toEqual({ type: 'optionTooBig', option: Opt.LIST, lengthBytes: 100 });
    expect(whole[5]).toMatchObject({ command: Cmd.WRITE, cookie: 'fedcba9876543210', offset: 4096n, payload: '0123456789abcdef' });
    // A cookie past 2^53 survives bit for bit (it is bytes, never a JS number).
    expect(whole[6]).toMatchObject({ command: Cmd.READ, cookie: '8000000000000005', offset: 2n ** 40n, lengthBytes: 512 });
    expect(whole[7]).toMatchObject({ command: Cmd.WRITE, lengthBytes: 40, payload: undefined, payloadSkipped: true });
    expect(whole[9]).toMatchObject({ command: Cmd.DISC, cookie: '0000000000000005' });
  });

  it('gives the same events for the stream split at every byte offset', () => {
    for (let i = 1; i < stream.length; i++) {
      expect(run([stream.subarray(0, i), stream.subarray(i)])).toEqual(whole);
    }
  });

  it('gives the same events fed one byte at a time', () => {
    const bytes: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
    expect(run(bytes)).toEqual(whole);
  });

  it('gives the same events for random splits (seeded)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 12 }), (cuts) => {
        const sorted = [...cuts].sort((a, b) => a - b);
        const pieces: Buffer[] = [];
        let at = 0;
        for (const c of sorted) {
          pieces.push(stream.subarray(at, c));
          at = c;
        }
        pieces.push(stream.subarray(at));
        expect(run(pieces)).toEqual(whole);
      }),
      { seed: 6, numRuns: 200 },
    );
  });

  it('reports a bad option magic as fatal and then ignores everything', () => {
    const bad = Buffer.concat([flags, Buffer.from('NOTNBDOPT_______'), option(Opt.LIST, Buffer.alloc(0))]);
    const evs = run([bad]);
    expect(evs.map((e) => (e as { type: string }).type)).toEqual(['clientFlags', 'fatal']);
  });

  it('refuses an option that claims more than optionDiscardBytesMax before reading its data', () => {
    const p = new NbdServerParser(limits);
    p.feed(Buffer.concat([flags, option(Opt.LIST, Buffer.alloc(0), 0xffffffff)]));
    expect(p.next()).toEqual({ type: 'clientFlags', flags: 3 });
    expect(p.next()).toMatchObject({ type: 'fatal' });
    expect(p.heldBytes).toBe(0);
  });

  it('holds no more than the current message while skipping an oversize write', () => {
    const p = new NbdServerParser({ ...limits, writeBytesMax: 16 });
    p.feed(Buffer.concat([flags, option(Opt.GO, Buffer.alloc(0))]));
    p.next();
    p.next();
    p.startTransmission();
    p.feed(request(Cmd.WRITE, 1n, 0n, 1_000_000));
    expect(p.next()).toBeUndefined();
    for (let i = 0; i < 99; i++) {
      p.feed(Buffer.alloc(10_000));
      expect(p.next()).toBeUndefined();
      expect(p.heldBytes).toBe(0);
    }
    p.feed(Buffer.alloc(10_000));
    expect(p.next()).toMatchObject({ type: 'request', payloadSkipped: true, lengthBytes: 1_000_000 });
  });

  it('takes a write payload of up to one host-write piece from the payload pool, a longer one not (a slot backs one write)', () => {
    const p = new NbdServerParser({ optionBytesMax: defaultNbdLimits.optionBytesMax, optionDiscardBytesMax: defaultNbdLimits.optionDiscardBytesMax, writeBytesMax: defaultNbdLimits.requestBytesMax });
    p.feed(Buffer.concat([flags, option(Opt.GO, Buffer.alloc(0))]));
    p.next();
    p.next();
    p.startTransmission();
    const pooled = (n: number): boolean => {
      const before = payloadPool.stats();
      p.feed(request(Cmd.WRITE, 1n, 0n, n));
      for (let at = 0; at < n; at += 65536) p.feed(Buffer.alloc(Math.min(65536, n - at), 7));
      const ev = p.next() as Extract<ParserEvent, { type: 'request' }>;
      expect(ev.payload!.length).toBe(n);
      expect(ev.payload!.every((b) => b === 7)).toBe(true);
      const after = payloadPool.stats();
      return after.allocated + after.reused > before.allocated + before.reused;
    };
    expect(pooled(hostWritePooledBytesMax)).toBe(true);
    expect(pooled(hostWritePooledBytesMax + 4096)).toBe(false);
    expect(pooled(2 * hostWritePooledBytesMax)).toBe(false);
  });

  it('hands a 48 MiB write through whole under the default limits (64 MiB, like nbdkit and nbd-server)', () => {
    expect(requestBytesMaxDefault).toBe(64 * 1024 * 1024);
    const p = new NbdServerParser({ optionBytesMax: defaultNbdLimits.optionBytesMax, optionDiscardBytesMax: defaultNbdLimits.optionDiscardBytesMax, writeBytesMax: defaultNbdLimits.requestBytesMax });
    p.feed(Buffer.concat([flags, option(Opt.GO, Buffer.alloc(0))]));
    p.next();
    p.next();
    p.startTransmission();
    const lengthBytes = 48 * 1024 * 1024;
    const payload = Buffer.alloc(lengthBytes);
    for (let i = 0; i < lengthBytes; i += 4096) payload.writeUInt32BE(i, i);
    p.feed(request(Cmd.WRITE, 7n, 4096n, lengthBytes));
    // Socket-sized chunks: nothing is returned before the last byte, then one request.
    for (let at = 0; at < lengthBytes; at += 65536) {
      expect(p.next()).toBeUndefined();
      p.feed(payload.subarray(at, at + 65536));
    }
    const ev = p.next() as Extract<ParserEvent, { type: 'request' }>;
    expect(ev).toMatchObject({ type: 'request', command: Cmd.WRITE, lengthBytes, payloadSkipped: false, offset: 4096n });
    expect(ev.payload!.equals(payload)).toBe(true);
    // Exactly the limit is taken; one byte more is skipped unread.
    p.feed(request(Cmd.WRITE, 8n, 0n, requestBytesMaxDefault, Buffer.alloc(requestBytesMaxDefault, 1)));
    expect(p.next()).toMatchObject({ type: 'request', lengthBytes: requestBytesMaxDefault, payloadSkipped: false });
    p.feed(request(Cmd.WRITE, 9n, 0n, requestBytesMaxDefault + 1, Buffer.alloc(requestBytesMaxDefault + 1, 2)));
    expect(p.next()).toMatchObject({ type: 'request', lengthBytes: requestBytesMaxDefault + 1, payloadSkipped: true, payload: undefined });
    expect(p.heldBytes).toBe(0);
  });

  it('reports a bad request magic as fatal', () => {
    const p = new NbdServerParser(limits);
    p.feed(Buffer.concat([flags, option(Opt.GO, Buffer.alloc(0))]));
    p.next();
    p.next();
    p.startTransmission();
    const r = request(Cmd.READ, 1n, 0n, 512);
    r.writeUInt32BE(0x12560953, 0); // the historic request magic is not accepted
    p.feed(r);
    expect(p.next()).toMatchObject({ type: 'fatal' });
  });

  it('returns payload views that later feeds never overwrite', () => {
    const p = new NbdServerParser(limits);
    p.feed(Buffer.concat([flags, option(Opt.GO, Buffer.alloc(0))]));
    p.next();
    p.next();
    p.startTransmission();
    const chunk = request(Cmd.WRITE, 1n, 0n, 8, Buffer.from('aabbccddeeff0011', 'hex'));
    p.feed(chunk);
    const ev = p.next() as Extract<ParserEvent, { type: 'request' }>;
    p.feed(request(Cmd.WRITE, 2n, 0n, 8, Buffer.alloc(8, 0x55)));
    p.next();
    expect(ev.payload!.toString('hex')).toBe('aabbccddeeff0011');
  });
});

// A socket read into one reused buffer (src/net/read-into.ts) feeds the parser `transient`
// chunks: the memory is read into again after settle(). Every event kept must still hold the
// bytes the client sent. The reused buffer is scribbled over after every read, as the next read
// would; the connection may stop pulling mid-chunk (backpressure) at any point.
describe('NbdServerParser with transient chunks (reused read buffer)', () => {
  const big = { optionBytesMax: 4096, optionDiscardBytesMax: 1 << 20, writeBytesMax: 2 << 20 };

  function makeStream(sizes: number[]): Buffer {
    const parts = [flags, option(Opt.GO, Buffer.from('0000', 'hex'))];
    sizes.forEach((n, i) => {
      if (n === 0) parts.push(request(Cmd.FLUSH, BigInt(i), 0n, 0));
      else {
        const payload = randomBytes(n);
        parts.push(request(Cmd.WRITE, BigInt(i), BigInt(i) * 4096n, n, payload));
      }
    });
    return Buffer.concat(parts);
  }

  /** Feeds `stream` through one reused buffer in pieces of the given sizes, pulling at most pulls[i] events per read. */
  function runTransient(stream: Buffer, pieceSizes: number[], pulls: number[]): unknown[] {
    const p = new NbdServerParser(big);
    const reused = Buffer.alloc(64 * 1024);
    const kept: ParserEvent[] = [];
    const pull = (max: number): void => {
      for (let k = 0; k < max; k++) {
        const ev = p.next();
        if (ev === undefined) return;
        kept.push(ev);
        if (ev.type === 'option' && ev.option === Opt.GO) p.startTransmission();
      }
    };
    let at = 0;
    let i = 0;
    while (at < stream.length) {
      const n = Math.min(pieceSizes[i % pieceSizes.length]!, reused.length, stream.length - at);
      stream.copy(reused, 0, at, at + n);
      at += n;
      p.feed(reused.subarray(0, n), true);
      pull(pulls[i % pulls.length]!);
      p.settle();
      reused.fill(0xa5, 0, n); // the next read lands here
      i++;
    }
    pull(Number.MAX_SAFE_INTEGER);
    return kept.map(digest);
  }

  function runWhole(stream: Buffer): unknown[] {
    const p = new NbdServerParser(big);
    p.feed(Buffer.from(stream));
    const out: unknown[] = [];
    for (let ev = p.next(); ev !== undefined; ev = p.next()) {
      out.push(digest(ev));
      if (ev.type === 'option' && ev.option === Opt.GO) p.startTransmission();
    }
    return out;
  }

  /** normalise() with payloads as sha256 (1 MiB of hex per write made the comparison slow). */
  function digest(ev: ParserEvent): unknown {
    if (ev.type !== 'request' || ev.payload === undefined) return normalise(ev);
    return { ...ev, cookie: ev.cookie.toString('hex'), payload: createHash('sha256').update(ev.payload).digest('hex') };
  }

  it('keeps every payload byte for byte (4 KiB..1 MiB writes, random reads and backpressure)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 9000 }), fc.constantFrom(4096, 65536, 131072, 1 << 20)), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 500, max: 70_000 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 6 }),
        (sizes, pieceSizes, pulls) => {
          const stream = makeStream(sizes);
          expect(runTransient(stream, pieceSizes, pulls)).toEqual(runWhole(stream));
        },
      ),
      { seed: 18, numRuns: 40 },
    );
  });

  it('holds no view of a transient chunk: a split header and a partial payload survive the reuse', () => {
    const stream = makeStream([5000, 3, 0, 70_000]);
    // Cut inside the first request header, inside the first payload and inside the last one.
    expect(runTransient(stream, [40, 2000, 9, 1000, 30_000], [1, 0, 2])).toEqual(runWhole(stream));
  });
});

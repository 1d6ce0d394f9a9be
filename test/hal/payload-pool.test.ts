// hal/payload-pool.ts: large write payloads reuse slots; ownership mistakes are refused.
import { describe, expect, it } from 'vitest';
import { CopySlab, PayloadPool, payloadPoolMaxBytes, payloadPoolMinBytes, slotHeadroomBytes } from '../../hal/payload-pool.js';

describe('payload pool (issue 18)', () => {
  it('hands a given-back slot to the next take of its size class, whole-slot views included', () => {
    const p = new PayloadPool();
    const a = p.take(1024 * 1024);
    expect(a.length).toBe(1024 * 1024);
    p.give(a.subarray(40)); // a frame's payload is a view past the frame's own fields
    const b = p.take(1000 * 1024); // same class (1 MiB)
    expect(b.buffer).toBe(a.buffer);
    expect(b.length).toBe(1000 * 1024);
    expect(p.stats()).toMatchObject({ allocated: 1, reused: 1, doubleGives: 0, idleBytes: 0 });
    const c = p.take(1024 * 1024); // the slot is out again: a new one
    expect(c.buffer).not.toBe(a.buffer);
  });

  it('trim lets go of slots idle for a whole interval, keeps those a steady stream uses', () => {
    const p = new PayloadPool();
    const mib = 1024 * 1024;
    const slot = mib + slotHeadroomBytes; // what a 1 MiB class slot holds
    const burst = Array.from({ length: 6 }, () => p.take(mib));
    for (const b of burst) p.give(b);
    expect(p.stats().idleBytes).toBe(6 * slot);
    // A steady stream of 2 in flight: the free list never went below 4 this interval.
    for (let i = 0; i < 10; i++) {
      const x = p.take(mib);
      const y = p.take(mib);
      p.give(x);
      p.give(y);
    }
    expect(p.trim()).toBe(0); // the first trim only marks: the burst's slots were counted idle from 0
    for (let i = 0; i < 10; i++) {
      const x = p.take(mib);
      const y = p.take(mib);
      p.give(x);
      p.give(y);
    }
    expect(p.trim()).toBe(4 * slot); // four slots nobody needed; the stream's two stay
    expect(p.stats()).toMatchObject({ idleBytes: 2 * slot, trimmedBytes: 4 * slot });
    const kept = p.take(mib);
    expect(p.stats().reused).toBeGreaterThan(0);
    p.give(kept);
    expect(p.trim()).toBe(slot); // the low-water mark this interval was 1
    expect(p.trim()).toBe(slot); // quiet: the last one goes
    expect(p.stats().idleBytes).toBe(0);
    // A trimmed slot is never handed out again: the next take allocates.
    const before = p.stats().allocated;
    p.take(mib);
    expect(p.stats().allocated).toBe(before + 1);
  });

  it('refuses a second give of one slot: two owners would share bytes', () => {
    const p = new PayloadPool();
    const a = p.take(256 * 1024);
    p.give(a);
    p.give(a);
    expect(p.stats().doubleGives).toBe(1);
    const x = p.take(256 * 1024);
    const y = p.take(256 * 1024);
    expect(x.buffer).not.toBe(y.buffer);
  });

  it('leaves small, huge and foreign buffers alone', () => {
    const p = new PayloadPool();
    const small = p.take(payloadPoolMinBytes - 1);
    const huge = p.take(payloadPoolMaxBytes + 1);
    p.give(small);
    p.give(huge);
    p.give(Buffer.alloc(1024 * 1024));
    expect(p.stats()).toMatchObject({ allocated: 0, reused: 0, idleBytes: 0 });
  });

  it('keeps at most idleBytesMax of idle slots', () => {
    const slot = 1024 * 1024 + slotHeadroomBytes;
    const p = new PayloadPool(2 * slot);
    const bufs = [p.take(1024 * 1024), p.take(1024 * 1024), p.take(1024 * 1024)];
    for (const b of bufs) p.give(b);
    expect(p.stats().idleBytes).toBe(2 * slot);
  });

  it('pools small writes, and a data frame body (payload + 40 bytes of fields) in its payload class', () => {
    const p = new PayloadPool();
    for (const payload of [4096, 64 * 1024, 1024 * 1024]) {
      const host = p.take(payload); // an NBD write's payload at the primary
      const frame = p.take(payload + 40); // a WRITE frame's body at a mirror
      p.give(host);
      p.give(frame.subarray(40));
      expect(host.buffer.byteLength).toBe(payload + slotHeadroomBytes);
      expect(frame.buffer.byteLength).toBe(payload + slotHeadroomBytes);
      // Both back in the free list of one class: the next two takes reuse them.
      const again = [p.take(payload), p.take(payload + 40)];
      const given = new Set<ArrayBufferLike>([host.buffer, frame.buffer]);
      expect(again[0]!.buffer !== again[1]!.buffer && given.has(again[0]!.buffer) && given.has(again[1]!.buffer)).toBe(true);
    }
    expect(p.stats().doubleGives).toBe(0);
  });

  it('CopySlab: copies never overlap or move, also across slabs and for a piece longer than a slab', () => {
    const slab = new CopySlab(1024);
    const src = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
    const pieces: [Buffer, number, number][] = [];
    for (const [a, b] of [[0, 100], [5, 405], [1000, 1001], [7, 600], [0, 2500], [2999, 3000], [10, 1010]] as const) pieces.push([slab.copy(src, a, b), a, b]);
    src.fill(0); // the source is reused: every copy must stand on its own
    const want = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
    for (const [piece, a, b] of pieces) expect(Buffer.compare(piece, want.subarray(a, b))).toBe(0);
  });
});

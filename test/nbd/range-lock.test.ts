import { describe, expect, it } from 'vitest';
import { RangeLock } from '../../src/nbd/range-lock.js';

describe('RangeLock', () => {
  it('grants disjoint ranges at once and serialises overlapping ones in FIFO order', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const a = await lock.acquire(0, 4096);
    const b = await lock.acquire(4096, 8192); // disjoint: immediate
    const c = lock.acquire(0, 8192).then((rel) => (order.push('c'), rel));
    const d = lock.acquire(8192, 12288).then((rel) => (order.push('d'), rel)); // disjoint from a, b and c
    const e = lock.acquire(4000, 4100).then((rel) => (order.push('e'), rel)); // overlaps waiting c: waits behind it
    await d;
    expect(order).toEqual(['d']);
    a();
    await Promise.resolve();
    expect(order).toEqual(['d']); // c still needs b
    b();
    (await c)();
    (await e)();
    expect(order).toEqual(['d', 'c', 'e']);
    (await d)();
    expect(lock.size).toBe(0);
  });

  it('tryAcquire grants at once by the same rule, and never overtakes an overlapping waiter', async () => {
    const lock = new RangeLock();
    const a = lock.tryAcquire(0, 4096)!;
    expect(a).toBeTypeOf('function');
    expect(lock.tryAcquire(0, 512)).toBeUndefined(); // overlaps held a
    const waiting = lock.acquire(0, 8192); // waits for a
    expect(lock.tryAcquire(4096, 8192)).toBeUndefined(); // free, but overlaps the waiter: FIFO
    const far = lock.tryAcquire(8192, 12288)!;
    expect(far).toBeTypeOf('function');
    a();
    (await waiting)();
    far();
    expect(lock.size).toBe(0);
    expect(() => lock.tryAcquire(7, 7)).toThrow(/empty/);
  });

  it('rejects empty ranges', () => {
    expect(() => new RangeLock().acquire(5, 5)).toThrow(/empty/);
  });
});

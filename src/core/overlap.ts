// Ordering of local storage operations: overlapping operations never reorder (DESIGN
// "Identity, ordering, acknowledgement"); disjoint ones may be in flight together. An op may
// start only when no op inserted before it and still pending overlaps its byte range.
// Used by the primary (host writes and resync reads) and by mirrors (replicated writes and
// resync data), so a later overlapping write never reaches storage before an earlier one is
// done and a resync read sees exactly the writes queued before it.

import { assert } from './types.js';

interface Pending<T> {
  readonly startBytes: number;
  readonly endBytes: number; // exclusive
  readonly item: T;
  started: boolean;
}

export class OverlapQueue<T> {
  private pending: Pending<T>[] = [];

  constructor(private readonly pendingMax: number) {}

  get size(): number {
    return this.pending.length;
  }

  /** Queues `item`; returns true when it may start now (the caller then issues it). */
  insert(offsetBytes: number, lengthBytes: number, item: T): boolean {
    assert(this.pending.length < this.pendingMax, () => `overlap queue full (${this.pendingMax} ops): a window bound was not enforced upstream`);
    assert(lengthBytes > 0, () => `overlap queue: empty range at ${offsetBytes}`);
    const p: Pending<T> = { startBytes: offsetBytes, endBytes: offsetBytes + lengthBytes, item, started: false };
    p.started = !this.pending.some((q) => overlaps(q, p));
    this.pending.push(p);
    return p.started;
  }

  /** Removes a finished `item`; returns the queued items that may start now, in order. */
  complete(item: T): T[] {
    const idx = this.pending.findIndex((p) => p.item === item);
    assert(idx >= 0, 'overlap queue: completing an op that was never queued');
    assert(this.pending[idx]!.started, 'overlap queue: completing an op that never started');
    this.pending.splice(idx, 1);
    const ready: T[] = [];
    for (let i = idx; i < this.pending.length; i++) {
      const p = this.pending[i]!;
      if (p.started) continue;
      let blocked = false;
      for (let j = 0; j < i && !blocked; j++) blocked = overlaps(this.pending[j]!, p);
      if (!blocked) {
        p.started = true;
        ready.push(p.item);
      }
    }
    return ready;
  }

  /** Whether any pending op overlaps the range. */
  overlaps(offsetBytes: number, lengthBytes: number): boolean {
    const r = { startBytes: offsetBytes, endBytes: offsetBytes + lengthBytes };
    return this.pending.some((q) => overlaps(q, r));
  }

  /** Forgets everything (process restart is a new instance; this is for tests). */
  clear(): void {
    this.pending = [];
  }
}

function overlaps(a: { startBytes: number; endBytes: number }, b: { startBytes: number; endBytes: number }): boolean {
  return a.startBytes < b.endBytes && b.startBytes < a.endBytes;
}

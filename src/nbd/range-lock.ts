// Byte-range lock shared by every connection to one export. The server turns unaligned writes
// into read-modify-write of whole blocks; without this, a concurrent write to the same block
// (from this or another connection) could land between the read and the write and be lost.
// Every write, zero and trim takes the lock on the whole blocks it touches; reads do not (NBD
// promises nothing about requests in flight at the same time).
//
// Grants are FIFO among overlapping requests (a waiter never overtakes an earlier waiter it
// overlaps), so a stream of small writes cannot starve a large one. The number of holders and
// waiters is bounded by the server's in-flight request bound per connection times connections.

interface Range {
  readonly start: number;
  readonly end: number; // exclusive
}

interface Waiter extends Range {
  readonly grant: () => void;
}

export type Release = () => void;

export class RangeLock {
  private readonly held = new Set<Range>();
  private waiters: Waiter[] = [];

  /** Number of held ranges plus waiters (for tests and metrics). */
  get size(): number {
    return this.held.size + this.waiters.length;
  }

  acquire(start: number, end: number): Promise<Release> {
    const now = this.tryAcquire(start, end);
    if (now !== undefined) return Promise.resolve(now);
    return new Promise<Release>((resolve) => {
      const w: Waiter = { start, end, grant: () => resolve(this.releaser(w)) };
      this.waiters.push(w);
    });
  }

  /** The lock at once if nothing held or waiting overlaps (the same rule as acquire), else undefined: no promise on the common path. */
  tryAcquire(start: number, end: number): Release | undefined {
    if (!(end > start)) throw new Error(`range lock: empty or inverted range [${start}, ${end})`);
    const r: Range = { start, end };
    if (this.overlapsHeld(r) || this.waiters.some((w) => overlaps(w, r))) return undefined;
    this.held.add(r);
    return this.releaser(r);
  }

  private releaser(r: Range): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held.delete(r);
      this.wake();
    };
  }

  private wake(): void {
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (!this.overlapsHeld(w) && !still.some((s) => overlaps(s, w))) {
        this.held.add(w); // the waiter object itself is the held range its releaser deletes
        w.grant();
      } else {
        still.push(w);
      }
    }
    this.waiters = still;
  }

  private overlapsHeld(r: Range): boolean {
    for (const h of this.held) if (overlaps(h, r)) return true;
    return false;
  }
}

function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

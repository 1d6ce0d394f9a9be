// A bounded set of block ranges, coalesced: what a disk array member missed while it was failed,
// and what the array reports as stale after it came back alone (hal/array.ts). Past its bound it
// becomes "everything" (the whole volume): conservative, never unbounded.
//
// hal/ imports nothing from src/.

export class RangeSet {
  /** Disjoint, non-adjacent [start, end) ranges in order. */
  private spans: { start: number; end: number }[] = [];
  private everything = false;

  constructor(
    /** Ranges kept before the set becomes the whole space. */
    readonly rangesMax: number,
    /** The size of the whole space, in the set's unit (blocks). */
    readonly size: number,
  ) {}

  /** True once the set covers everything (it overflowed, or was told so). */
  get all(): boolean {
    return this.everything;
  }

  get empty(): boolean {
    return !this.everything && this.spans.length === 0;
  }

  setAll(): void {
    this.everything = true;
    this.spans = [];
  }

  add(start: number, length: number): void {
    if (this.everything || length <= 0) return;
    const end = start + length;
    // The first span that ends at or after `start` (touching spans coalesce).
    let lo = 0;
    let hi = this.spans.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.spans[mid]!.end < start) lo = mid + 1;
      else hi = mid;
    }
    let j = lo;
    let s = start;
    let e = end;
    while (j < this.spans.length && this.spans[j]!.start <= e) {
      s = Math.min(s, this.spans[j]!.start);
      e = Math.max(e, this.spans[j]!.end);
      j++;
    }
    this.spans.splice(lo, j - lo, { start: s, end: e });
    if (this.spans.length > this.rangesMax) this.setAll();
  }

  addSet(other: RangeSet): void {
    if (other.everything) this.setAll();
    else for (const r of other.spans) this.add(r.start, r.end - r.start);
  }

  /** Removes [start, start + length); "everything" stays everything unless the whole space is removed. */
  subtract(start: number, length: number): void {
    const end = start + length;
    if (this.everything) {
      if (start > 0 || end < this.size) return;
      this.everything = false;
      this.spans = [];
      return;
    }
    const out: { start: number; end: number }[] = [];
    for (const r of this.spans) {
      if (r.end <= start || r.start >= end) out.push(r);
      else {
        if (r.start < start) out.push({ start: r.start, end: start });
        if (r.end > end) out.push({ start: end, end: r.end });
      }
    }
    this.spans = out;
  }

  /** The ranges as [start, length] pairs in order; everything is one range over the whole space. */
  ranges(): [number, number][] {
    if (this.everything) return [[0, this.size]];
    return this.spans.map((r) => [r.start, r.end - r.start]);
  }
}

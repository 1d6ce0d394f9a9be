// The in-flight window of one link direction (docs/PROTOCOL.md, "Limits"): WRITEs sent or
// received and not yet acknowledged, by count and by data bytes. A WRITE_ACK removes one write,
// a cumulative ACK every write up to its (epoch, seq). Writes arrive in (epoch, seq) order on an
// ordered stream, so a cumulative ACK removes from the front and stops at the first it does not
// cover.

interface Entry { readonly epoch: bigint; readonly seq: bigint; readonly bytes: number }

export class InflightWindow {
  // Keyed by seq (a bigint key compares by value); the epoch is checked on ack. Building a
  // string key from two bigints cost more than the rest of the receive path per frame.
  private readonly entries = new Map<bigint, Entry>();
  private dataBytes = 0;

  constructor(readonly writesMax: number, readonly bytesMax: number) {
    if (!(writesMax > 0 && bytesMax > 0)) throw new RangeError(`in-flight window needs writesMax (${writesMax}) and bytesMax (${bytesMax}) > 0`);
  }

  get writes(): number {
    return this.entries.size;
  }
  get bytes(): number {
    return this.dataBytes;
  }
  /** True if one more write of `bytes` fits. */
  fits(bytes: number): boolean {
    return this.entries.size < this.writesMax && this.dataBytes + bytes <= this.bytesMax;
  }
  /** True if the window is below both bounds (another small write fits). */
  get open(): boolean {
    return this.entries.size < this.writesMax && this.dataBytes < this.bytesMax;
  }

  add(epoch: bigint, seq: bigint, bytes: number): void {
    const old = this.entries.get(seq);
    if (old !== undefined) {
      // A re-sent write counts once (same seq in a newer epoch replaces it). Re-insert so the
      // map stays in arrival order for ackUpTo.
      this.dataBytes -= old.bytes;
      this.entries.delete(seq);
    }
    this.entries.set(seq, { epoch, seq, bytes });
    this.dataBytes += bytes;
  }

  ackOne(epoch: bigint, seq: bigint): void {
    const e = this.entries.get(seq);
    if (e === undefined || e.epoch !== epoch) return;
    this.entries.delete(seq);
    this.dataBytes -= e.bytes;
  }

  ackUpTo(epoch: bigint, seq: bigint): void {
    for (const [key, e] of this.entries) {
      if (e.epoch > epoch || (e.epoch === epoch && e.seq > seq)) break;
      this.entries.delete(key);
      this.dataBytes -= e.bytes;
    }
  }

  clear(): void {
    this.entries.clear();
    this.dataBytes = 0;
  }
}

// The in-flight window of one link direction (docs/PROTOCOL.md, "Limits"): WRITEs sent or
// received and not yet acknowledged, by count and by data bytes. A WRITE_ACK removes one write,
// a cumulative ACK every write up to its (epoch, seq). Writes arrive in (epoch, seq) order on an
// ordered stream, so a cumulative ACK removes from the front and stops at the first it does not
// cover.

interface Entry { readonly epoch: bigint; readonly seq: bigint; readonly bytes: number }

export class InflightWindow {
  private readonly entries = new Map<string, Entry>();
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
    const key = `${epoch}:${seq}`;
    const old = this.entries.get(key);
    if (old !== undefined) this.dataBytes -= old.bytes; // a re-sent write counts once
    this.entries.set(key, { epoch, seq, bytes });
    this.dataBytes += bytes;
  }

  ackOne(epoch: bigint, seq: bigint): void {
    const key = `${epoch}:${seq}`;
    const e = this.entries.get(key);
    if (e === undefined) return;
    this.entries.delete(key);
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

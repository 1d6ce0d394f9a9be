// Per-peer send-to-ack timing of replicated writes, for geomirror_ack_latency_seconds and the
// per-peer in-flight gauges (issue 8 item 3; claim 10 (iii): the primary waits for every
// mirror's ack, so this latency is what a host write pays per mirror). Acks are cumulative
// ("every seq up to N is executed"), and a peer receives its writes in seq order, so each
// peer's record is a FIFO: an ack pops every entry with seq <= N. Bounded: past
// ackTimerEntriesMax the oldest entry is forgotten (its ack goes untimed), so a peer that never
// acks cannot grow memory. O(1) amortised per write: kept cheap because it sits on the hot path.

/** Entries remembered per peer: above the core's in-flight window, so normally nothing is forgotten. */
export const ackTimerEntriesMax = 16_384;

class PeerRecord {
  seqs: bigint[] = [];
  sentMs: number[] = [];
  bytes: number[] = [];
  head = 0;
  bytesInflight = 0;

  get length(): number {
    return this.seqs.length - this.head;
  }

  push(seq: bigint, bytes: number, nowMs: number): void {
    this.seqs.push(seq);
    this.sentMs.push(nowMs);
    this.bytes.push(bytes);
    this.bytesInflight += bytes;
    if (this.length > ackTimerEntriesMax) this.popFront();
  }

  popFront(): number {
    const sent = this.sentMs[this.head]!;
    this.bytesInflight -= this.bytes[this.head]!;
    this.head++;
    // Compact now and then instead of shifting per pop.
    if (this.head >= 1024 && this.head * 2 >= this.seqs.length) {
      this.seqs = this.seqs.slice(this.head);
      this.sentMs = this.sentMs.slice(this.head);
      this.bytes = this.bytes.slice(this.head);
      this.head = 0;
    }
    return sent;
  }
}

export class AckTimer {
  private readonly peers = new Map<string, PeerRecord>();

  /** A WRITE with `seq` went to `peer`. A seq not above the last one sent (a re-send after reconnect) restarts that peer's record. */
  sent(peer: string, seq: bigint, bytes: number, nowMs: number): void {
    let r = this.peers.get(peer);
    if (r === undefined) this.peers.set(peer, (r = new PeerRecord()));
    else if (r.length > 0 && seq <= r.seqs[r.seqs.length - 1]!) this.peers.set(peer, (r = new PeerRecord()));
    r.push(seq, bytes, nowMs);
  }

  /** `peer` acked every seq up to `seq`; calls `observe` with each covered write's latency in ms. */
  acked(peer: string, seq: bigint, nowMs: number, observe: (latencyMs: number) => void): void {
    const r = this.peers.get(peer);
    if (r === undefined) return;
    while (r.length > 0 && r.seqs[r.head]! <= seq) observe(nowMs - r.popFront());
  }

  /** The link went down: what was in flight will be re-sent (and re-timed) after it returns. */
  forget(peer: string): void {
    this.peers.delete(peer);
  }

  inflight(peer: string): { writes: number; bytes: number } {
    const r = this.peers.get(peer);
    return r === undefined ? { writes: 0, bytes: 0 } : { writes: r.length, bytes: r.bytesInflight };
  }
}

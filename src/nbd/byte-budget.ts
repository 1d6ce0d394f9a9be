// One server-wide budget of payload bytes held in memory: write payloads from the moment their
// header is parsed (before a byte of payload is buffered) until the request completes, and read
// data until the socket has handed it to the kernel. With it, memory is bounded by the budget
// plus small per-connection terms (one header, one socket chunk, option data), however many
// connections there are, instead of connections x (largest request + in-flight + reply queue).
//
// Reservations are all-or-nothing and every single request fits the budget (checked at server
// start), so a connection waiting for budget never deadlocks: bytes already reserved belong to
// requests that complete without needing more.

export class ByteBudget {
  private usedBytesNow = 0;
  private waiters = new Set<() => void>();

  constructor(readonly limitBytes: number) {
    if (!(Number.isSafeInteger(limitBytes) && limitBytes > 0)) throw new Error(`byte budget: limit ${limitBytes} must be a positive integer`);
  }

  get usedBytes(): number {
    return this.usedBytesNow;
  }

  tryReserve(bytes: number): boolean {
    if (bytes > this.limitBytes) throw new Error(`byte budget: ${bytes} bytes can never fit the ${this.limitBytes}-byte budget`);
    if (this.usedBytesNow + bytes > this.limitBytes) return false;
    this.usedBytesNow += bytes;
    return true;
  }

  release(bytes: number): void {
    this.usedBytesNow -= bytes;
    if (this.usedBytesNow < 0) throw new Error(`byte budget: released more than was reserved (${this.usedBytesNow})`);
    if (this.waiters.size === 0) return;
    // Wake everyone waiting; each retries its own reservation (bounded by the connection count).
    const w = [...this.waiters];
    this.waiters.clear();
    for (const f of w) f();
  }

  /** Calls `retry` once, the next time bytes are released. */
  onRelease(retry: () => void): void {
    this.waiters.add(retry);
  }

  forget(retry: () => void): void {
    this.waiters.delete(retry);
  }
}

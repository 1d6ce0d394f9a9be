// The host side of a site (claim 3: the local site's SAN): what the NBD export calls. Writes and
// flushes become core events; the core answers with ackHost (the executor's HostPort, here).
// Reads come from this site's own storage (claim 4), except where the core says its copy is not
// whole (a primary whose storage failed or is being repaired, issue 16 item 3) or the local read
// fails at a site that takes host writes: then the core serves them from a mirror (hostRead).
//
// Backpressure: the core owns the host-queue bound (Limits.hostQueueWritesMax). An operation is
// handed to it only while it says it has room (hostQueueFree); otherwise it waits here, in
// arrival order, and goes in as acks free room. Waiting is not a second decision: nothing here
// counts or bounds; the NBD server's own byte budgets bound what can wait.
import type { CoreEvent, HostError, SenseInfo } from '../core/types.js';
import { payloadBytesMax } from '../wire/index.js';
import { crc32 } from '../wire/crc.js';
import type { HostPort } from './executor.js';

/** Largest piece of a host write handed to the core: one WRITE frame's payload. */
export const hostWriteChunkBytesMax = payloadBytesMax;

/** A host-side failure the NBD layer maps to an errno. */
export class HostIoError extends Error {
  constructor(
    readonly kind: HostError['kind'],
    message: string,
    readonly sense?: SenseInfo,
  ) {
    super(message);
    this.name = 'HostIoError';
  }
}

/** How a host operation completes: `err` undefined on success (with the data of a read the core served). */
type OpDone = (err: Error | undefined, data?: Uint8Array) => void;

/** The core event of one host write piece, once it has an id. */
function hostWrite(offsetBytes: number, payload: Uint8Array, fua: boolean): (id: number) => CoreEvent {
  // Checksummed once here: the cache journal and every WRITE frame to a mirror reuse it (issue 18).
  const payloadCrc = crc32(payload);
  return (id) => ({ type: 'hostWrite', id, offsetBytes, lengthBytes: payload.byteLength, fua, payload, payloadCrc });
}

interface Waiter {
  done: OpDone;
  startedMs: number;
}

/** What the host API needs from the site around it. */
export interface HostApiSite {
  readonly name: string;
  /** Feeds an event to the core (through the executor). */
  feed(ev: CoreEvent): void;
  /** Whether a host read of the range may come from local storage (false: the core serves it). */
  readable(offsetBytes: number, lengthBytes: number): boolean;
  /** Room in the core's host queue now (0: wait); undefined when this core takes no host writes. */
  hostRoom(): number | undefined;
  /** The role, for the refusal when this site takes no host writes. */
  acting(): string;
  /** Why the site cannot take work any more (stopping, or stopped on an error), if so. */
  down(): string | undefined;
  readBlocks(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  nowMs(): number;
  /** A host op completed successfully after `ms` (metrics). */
  acked(ms: number): void;
  wrote(bytes: number): void;
  flushed(): void;
}

export class HostApi implements HostPort {
  private readonly ops = new Map<number, Waiter>();
  private idNext = 1;
  private readonly parked: { go: () => void; fail: (err: Error) => void }[] = [];
  /** Completions of writeNow() not yet reported: run together after the executor's turn. */
  private completions: { done: (err: Error | undefined) => void; err: Error | undefined }[] = [];

  constructor(private readonly site: HostApiSite) {}

  /** Writes `data` at `offsetBytes` through replication; resolves when every in-sync site executed it. */
  async write(offsetBytes: number, data: Uint8Array, fua: boolean): Promise<void> {
    if (data.byteLength <= hostWriteChunkBytesMax) {
      // One piece (every write up to 1 MiB): no array of promises to gather.
      await this.writePiece(offsetBytes, data, fua);
    } else {
      const parts: Promise<unknown>[] = [];
      for (let at = 0; at < data.byteLength; at += hostWriteChunkBytesMax) parts.push(this.writePiece(offsetBytes + at, data.subarray(at, Math.min(data.byteLength, at + hostWriteChunkBytesMax)), fua));
      await Promise.all(parts);
    }
    this.site.wrote(data.byteLength);
  }

  /**
   * write() without a promise per write (the NBD server's hot path, issue 18): `done` runs once,
   * never before this returns and never inside the executor's turn (completions are reported
   * together in one microtask after it), so a caller's reply code can neither re-enter the
   * executor nor stop the site by throwing there.
   */
  writeNow(offsetBytes: number, data: Uint8Array, fua: boolean, done: (err: Error | undefined) => void): void {
    if (data.byteLength > hostWriteChunkBytesMax) {
      this.write(offsetBytes, data, fua).then(() => done(undefined), (err: unknown) => done(err instanceof Error ? err : new Error(String(err))));
      return;
    }
    this.submitCb(hostWrite(offsetBytes, data, fua), (err) => {
      if (err === undefined) this.site.wrote(data.byteLength);
      if (this.completions.push({ done, err }) === 1) queueMicrotask(this.complete);
    });
  }

  private readonly complete = (): void => {
    const list = this.completions;
    this.completions = [];
    // Every completion runs even if one throws (the others would wait for ever); the first
    // error is then thrown on, as a throw in a promise reaction would have surfaced.
    let thrown: { e: unknown } | undefined;
    for (const c of list) {
      try {
        c.done(c.err);
      } catch (e) {
        thrown ??= { e };
      }
    }
    if (thrown !== undefined) throw thrown.e;
  };

  private writePiece(offsetBytes: number, piece: Uint8Array, fua: boolean): Promise<Uint8Array | undefined> {
    return this.submit(hostWrite(offsetBytes, piece, fua));
  }

  /** Barrier: every write acked before this call is durable on every in-sync site's storage. */
  async flush(): Promise<void> {
    await this.submit((id) => ({ type: 'hostFlush', id }));
    this.site.flushed();
  }

  /** Reads come from this site's own storage (claim 4), or through the core where that is not whole or fails. */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (this.site.readable(offsetBytes, lengthBytes)) {
      try {
        return await this.site.readBlocks(offsetBytes, lengthBytes);
      } catch (err) {
        // At a primary, a failed local read is served by a mirror that holds the range.
        if (this.site.hostRoom() === undefined || !(err instanceof Error)) throw err;
      }
    }
    const out = Buffer.allocUnsafe(lengthBytes);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += hostWriteChunkBytesMax) {
      const n = Math.min(hostWriteChunkBytesMax, lengthBytes - at);
      parts.push(this.submit((id) => ({ type: 'hostRead', id, offsetBytes: offsetBytes + at, lengthBytes: n })).then((data) => {
        if (data === undefined || data.byteLength !== n) throw new HostIoError('io', `read of ${offsetBytes + at}+${n} came back with ${data?.byteLength ?? 0} bytes`);
        out.set(data, at);
      }));
    }
    await Promise.all(parts);
    return out;
  }

  /** The executor's HostPort: the core completed host op `id`. */
  ack(id: number, error: HostError | undefined, data?: Uint8Array): void {
    const w = this.ops.get(id);
    if (w === undefined) return;
    this.ops.delete(id);
    if (error === undefined) {
      this.site.acked(this.site.nowMs() - w.startedMs);
      w.done(undefined, data);
    } else {
      w.done(new HostIoError(error.kind, error.message, error.kind === 'io' ? error.sense : undefined));
    }
  }

  /** Hands waiting operations to the core while it has room (after every executor turn). */
  unpark(): void {
    while (this.parked.length > 0 && (this.site.hostRoom() ?? 0) > 0 && this.site.down() === undefined) this.parked.shift()!.go();
  }

  /** Every operation not yet completed fails with `err` (the site stops, or its life ends). */
  failAll(err: HostIoError): void {
    for (const w of this.ops.values()) w.done(err);
    this.ops.clear();
    for (const p of this.parked.splice(0)) p.fail(err);
  }

  private submit(make: (id: number) => CoreEvent): Promise<Uint8Array | undefined> {
    return new Promise<Uint8Array | undefined>((resolve, reject) => this.submitCb(make, (err, data) => (err === undefined ? resolve(data) : reject(err))));
  }

  /** Hands an operation to the core now if it has room, else parks it; `done` runs once, never before this returns. */
  private submitCb(make: (id: number) => CoreEvent, done: OpDone): void {
    const down = this.site.down();
    if (down !== undefined) return void queueMicrotask(() => done(new HostIoError('io', down)));
    const room = this.site.hostRoom();
    if (room === undefined) {
      const refusal = new HostIoError('fenced', `site ${this.site.name} runs as a ${this.site.acting()}; host writes go to the primary`);
      return void queueMicrotask(() => done(refusal));
    }
    const go = (): void => {
      const why = this.site.down();
      if (why !== undefined) {
        done(new HostIoError('io', why));
        return;
      }
      const id = this.idNext++;
      this.ops.set(id, {
        done: (err, data) => {
          // The core said "no room" (a standby mid-promotion): wait for room like any other.
          if (err instanceof HostIoError && err.kind === 'busy') this.parked.push({ go, fail: done });
          else done(err, data);
        },
        startedMs: this.site.nowMs(),
      });
      this.site.feed(make(id));
    };
    if (this.parked.length > 0 || room <= 0) this.parked.push({ go, fail: done });
    else go();
  }
}

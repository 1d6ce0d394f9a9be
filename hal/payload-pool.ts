// Reused buffers for large write payloads (issue 18 item 3).
//
// Why: a 1 MiB host write used to get a fresh 1 MiB ArrayBuffer at every site (the NBD parser at
// the primary, the frame parser at each mirror), held until the journal let the entry go. Those
// buffers outlive a scavenge or two, get promoted, and only a full mark-compact frees them: at
// 1 MiB QD4 a site ran 8-10 mark-compacts a second and concurrent marking and sweeping took a
// third of its CPU (perf, bench/README.md). A slot taken from here and given back when its
// write is done is reused for the next write: no new external memory per write, nothing for
// the collector to find.
//
// Ownership is the whole risk, so the rules are narrow:
//  - `take(n)` hands out a view of a slot (size classes of a power of two from 4 KiB to 1 MiB,
//    plus `slotHeadroomBytes`, so a WRITE frame's body, its payload and 40 bytes of its own
//    fields, fits the class of its payload: a 1 MiB write takes a 1 MiB slot at a mirror, not
//    2 MiB; other sizes are plain allocations, which `give` ignores). One slot backs at most
//    one write: the NBD parser pools host writes only up to `hostWritePooledBytesMax`.
//  - `give(b)` is called by the one owner that knows nothing reads `b` any more: the local
//    store, when the write's entry leaves the journal's view (the core emits `payloadDone`,
//    src/core/local-store.ts); resends, forwards and repairs only ever look among the entries
//    still there, and a replay after a crash reads the journal device. (Letting go earlier, once
//    acked everywhere and performed but before the flush, was tried: the simulator showed
//    entries re-sent after their acks, when a mirror or relay comes back claiming less than it
//    acked.) Anything not given back is simply garbage: a refused write, a frame for a dead
//    link. So a missed give costs speed, never data.
//  - A slot given back while it already waits in a free list is refused and counted
//    (`doubleGives`; the simulator fails a run on any double release or use after release,
//    test/sim/world.ts). A give from a stale owner after the slot was taken again cannot be
//    told apart here: that is why exactly one place, the local store's drop, gives back.
//  - At most `idleBytesMax` of slots wait in the free lists; beyond that a given slot is
//    dropped for the collector, so the pool's resident size is bounded. `trim()`, run by the
//    site every payloadPoolTrimIntervalMs, drops the slots no take() needed since the last
//    trim (each class's low-water mark), so memory taken by a burst of large writes goes back
//    within two intervals of the burst ending and a steady stream keeps its slots.
// Frames carry their own CRC, computed when they were encoded: if a slot were ever reused
// while a stale reference still sat in a socket's queue, the receiver would refuse the frame,
// not store the bytes.

/**
 * Bytes past the power of two in every slot: room for a data frame's own fields (40 bytes) in
 * front of its payload.
 */
export const slotHeadroomBytes = 64;
/**
 * Smallest pooled size. Small writes are pooled too: a 4 KiB payload in a slab or a fresh buffer
 * lives until its entry leaves the journal (the next storage flush), long enough to be promoted,
 * and then only a mark-compact frees it (a primary alone at 4 KiB QD16 after a 1 MiB run held
 * 44 MiB of array buffers, 16 MiB with small payloads pooled; process.memoryUsage, issue 18).
 */
export const payloadPoolMinBytes = 4 * 1024;
/** Largest pooled size: a frame carrying a 1 MiB write payload plus its own fields. */
export const payloadPoolMaxBytes = 1024 * 1024 + slotHeadroomBytes;
/**
 * Largest host write (NBD) taken from the pool. It must not exceed the largest piece the core
 * takes as ONE write (src/site/host-api.ts hostWriteChunkBytesMax, 1 MiB;
 * test/site/payload-pool-bound.test.ts checks it): a longer host write is cut into pieces that
 * are views of one buffer, and its slot would go back to the pool when the first piece left
 * the journal while the others were still in it. Longer requests (up to 64 MiB) are rare and
 * allocated. A frame is always one write, so the frame parser may pool up to the top class.
 */
export const hostWritePooledBytesMax = 1024 * 1024;
/** Default bound on idle slots (per process: every volume group of a site shares it). */
export const payloadPoolIdleBytesMax = 16 * 1024 * 1024;
/** How often a site trims idle slots (see trim()). */
export const payloadPoolTrimIntervalMs = 5000;

const minShift = 12; // 4 KiB
const classes = 9; // 4 KiB .. 1 MiB, each plus slotHeadroomBytes

function classOf(n: number): number {
  let c = 0;
  while ((1 << (minShift + c)) + slotHeadroomBytes < n) c++;
  return c;
}

export interface PayloadPoolStats {
  /** Slots handed out that came from a free list. */
  reused: number;
  /** Slots allocated because the free list of their class was empty. */
  allocated: number;
  /** Given back while already free: an ownership bug (two owners), refused. */
  doubleGives: number;
  /** Bytes of slots waiting in the free lists. */
  idleBytes: number;
  /** Bytes of idle slots let go by trim() since the pool was made. */
  trimmedBytes: number;
}

export class PayloadPool {
  private readonly free: Buffer[][] = Array.from({ length: classes }, () => []);
  /** Every slot this pool made, by its ArrayBuffer: the whole slot and its class. */
  private readonly slots = new WeakMap<ArrayBufferLike, { slot: Buffer; cls: number }>();
  private readonly idle = new WeakSet<ArrayBufferLike>();
  /** Per class: the shortest its free list was since the last trim (slots nobody needed). */
  private readonly lowWater: number[] = new Array<number>(classes).fill(0);
  private readonly s: PayloadPoolStats = { reused: 0, allocated: 0, doubleGives: 0, idleBytes: 0, trimmedBytes: 0 };

  constructor(readonly idleBytesMax = payloadPoolIdleBytesMax) {}

  /** A buffer of exactly `n` bytes (contents undefined), pooled when `n` is in the pooled range. */
  take(n: number): Buffer {
    if (n < payloadPoolMinBytes || n > payloadPoolMaxBytes) return Buffer.allocUnsafe(n);
    const cls = classOf(n);
    const list = this.free[cls]!;
    let slot = list.pop();
    if (list.length < this.lowWater[cls]!) this.lowWater[cls] = list.length;
    if (slot !== undefined) {
      this.idle.delete(slot.buffer);
      this.s.idleBytes -= slot.length;
      this.s.reused++;
    } else {
      slot = Buffer.allocUnsafeSlow((1 << (minShift + cls)) + slotHeadroomBytes);
      this.slots.set(slot.buffer, { slot, cls });
      this.s.allocated++;
    }
    return slot.subarray(0, n);
  }

  /**
   * Nothing reads `b` (or any other view of its slot: a frame's payload is a view past the
   * frame's own fields) any more: the slot may serve the next take(). Not a pool buffer: ignored.
   */
  give(b: Uint8Array): void {
    const known = this.slots.get(b.buffer);
    if (known === undefined) return;
    if (this.idle.has(b.buffer)) {
      this.s.doubleGives++;
      return;
    }
    if (this.s.idleBytes + known.slot.length > this.idleBytesMax) return;
    this.idle.add(b.buffer);
    this.s.idleBytes += known.slot.length;
    this.free[known.cls]!.push(known.slot);
  }

  /**
   * Lets go of the slots that stayed idle since the last trim: per class, as many as the free
   * list's low-water mark, oldest first (the bottom of the stack). Returns the bytes let go.
   */
  trim(): number {
    let bytes = 0;
    for (let cls = 0; cls < classes; cls++) {
      const list = this.free[cls]!;
      const drop = list.splice(0, Math.min(this.lowWater[cls]!, list.length));
      for (const slot of drop) {
        this.idle.delete(slot.buffer);
        this.s.idleBytes -= slot.length;
        bytes += slot.length;
      }
      this.lowWater[cls] = list.length;
    }
    this.s.trimmedBytes += bytes;
    return bytes;
  }

  stats(): Readonly<PayloadPoolStats> {
    return { ...this.s };
  }
}

/**
 * Small pieces copied out of a socket's reused read buffer (src/net/read-into.ts): the next
 * bytes of a 64 KiB slab, filled front to back and never written behind, so a piece stays
 * valid while referenced (and keeps its slab alive, as a view kept a socket chunk before).
 * One per parser.
 */
export class CopySlab {
  private slab = Buffer.alloc(0);
  private used = 0;

  constructor(private readonly slabBytes = 64 * 1024) {}

  /** A copy of src[start..end] (a piece longer than a slab gets a buffer of its own). */
  copy(src: Uint8Array, start: number, end: number): Buffer {
    const n = end - start;
    if (this.slab.length - this.used < n) {
      this.slab = Buffer.allocUnsafeSlow(Math.max(this.slabBytes, n));
      this.used = 0;
    }
    const out = this.slab.subarray(this.used, this.used + n);
    this.used += (n + 7) & ~7;
    out.set(src.subarray(start, end));
    return out;
  }
}

/** The process's pool: the NBD and frame parsers take from it, the executor gives back. */
export const payloadPool = new PayloadPool();

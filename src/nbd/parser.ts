// The server side of the NBD byte stream as a plain class fed chunks (no socket inside), in the
// pg-protocol style STYLE.md asks for. The connection feeds socket chunks in and pulls one
// message at a time with next(); because it pulls, it can switch the phase (options ->
// transmission) between two messages that arrived in the same chunk, and it can stop pulling
// (backpressure) without the parser buffering more than one message.
//
// Bounds are checked from the header, before any payload is buffered: an option longer than
// optionBytesMax and a write longer than writeBytesMax are skipped byte by byte (never stored)
// and reported, so the connection answers with the spec's error and stays in sync.
//
// Payload lifetime: a payload is a subarray view of the chunks given to feed() when it lies in
// one chunk, else a copy filled as its bytes arrive (a pool slot up to hostWritePooledBytesMax).
// The parser never writes into chunks it was given, so views stay valid for as long as the
// caller holds them. A chunk fed as `transient` (a socket's reused read buffer,
// src/net/read-into.ts) is read into again after the caller returns: nothing taken from it is a
// view (small pieces are copied to a slab), and settle() copies what is left of it.

import { CopySlab, hostWritePooledBytesMax, payloadPool } from '../../hal/payload-pool.js';
import {
  IHAVEOPT,
  REQUEST_MAGIC,
  Cmd,
  clientFlagsBytes,
  optionHeaderBytes,
  requestHeaderBytes,
} from './protocol.js';

export interface ParserLimits {
  /** Largest option payload buffered; longer ones are skipped and reported as 'optionTooBig'. */
  readonly optionBytesMax: number;
  /** Longer options are a denial of service: the parser reports 'fatal' instead of skipping. */
  readonly optionDiscardBytesMax: number;
  /** Largest NBD_CMD_WRITE payload buffered; longer ones are skipped and reported. */
  readonly writeBytesMax: number;
}

export type ParserEvent =
  | { readonly type: 'clientFlags'; readonly flags: number }
  | { readonly type: 'option'; readonly option: number; readonly data: Buffer }
  | { readonly type: 'optionTooBig'; readonly option: number; readonly lengthBytes: number }
  | {
      readonly type: 'request';
      readonly flags: number;
      readonly command: number;
      /** The client's 8 opaque bytes, copied (never a JS number: cookies exceed 2^53). */
      readonly cookie: Buffer;
      readonly offset: bigint;
      readonly lengthBytes: number;
      /** NBD_CMD_WRITE only; undefined when the payload was too long and was skipped. */
      readonly payload: Buffer | undefined;
      /** True when a write payload longer than writeBytesMax was skipped unread. */
      readonly payloadSkipped: boolean;
    }
  | { readonly type: 'fatal'; readonly reason: string };

export type ParserPhase = 'clientFlags' | 'options' | 'transmission' | 'dead';

type Pending =
  | { kind: 'optionData'; option: number; lengthBytes: number }
  | { kind: 'writeAdmit'; header: RequestHeader }
  | { kind: 'optionSkip'; option: number; lengthBytes: number; leftBytes: number }
  | { kind: 'writeData'; header: RequestHeader; buf: Buffer | undefined; filled: number }
  | { kind: 'writeSkip'; header: RequestHeader; leftBytes: number };

interface RequestHeader {
  flags: number;
  command: number;
  cookie: Buffer;
  offset: bigint;
  lengthBytes: number;
}

export class NbdServerParser {
  private chunks: Buffer[] = [];
  private headOffset = 0; // bytes of chunks[0] already consumed
  private bufferedBytes = 0;
  private pending: Pending | undefined;
  private phaseNow: ParserPhase = 'clientFlags';
  /** The last chunk fed, when it was fed as transient (see settle()). */
  private transient: Buffer | undefined;
  private readonly slab = new CopySlab();

  /**
   * `admitWrite` is asked for a write's payload bytes after its header is parsed and before any
   * payload is buffered; while it says no, next() returns undefined and awaitingAdmission is true
   * (the connection stops reading and asks again when memory is released).
   */
  constructor(
    private readonly limits: ParserLimits,
    private readonly admitWrite: (bytes: number) => boolean = () => true,
  ) {}

  /** Payload bytes admitted for a write still being received (the owner releases them on close). */
  get admittedPendingBytes(): number {
    return this.pending?.kind === 'writeData' ? this.pending.header.lengthBytes : 0;
  }

  /** True while a write header waits for admitWrite to accept its payload size. */
  get awaitingAdmission(): boolean {
    return this.pending?.kind === 'writeAdmit';
  }

  get phase(): ParserPhase {
    return this.phaseNow;
  }

  /** Bytes held (fed but not yet consumed): bounded by one message plus one chunk. */
  get heldBytes(): number {
    return this.bufferedBytes + (this.pending?.kind === 'writeData' ? this.pending.filled : 0);
  }

  /** True when a message is partly received (a clean EOF is one that leaves this false). */
  get midMessage(): boolean {
    return this.pending !== undefined || this.bufferedBytes > 0;
  }

  /**
   * `transient`: the chunk's memory is reused once the caller returns; the caller pulls what it
   * can with next() and then calls settle() before returning.
   */
  feed(chunk: Buffer, transient = false): void {
    if (this.phaseNow === 'dead' || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    this.transient = transient ? chunk : undefined;
  }

  /**
   * The transient chunk is about to be reused: move a partly received write payload on into its
   * own buffer and copy whatever else of the chunk is still unconsumed (a split header, a small
   * partial payload).
   */
  settle(): void {
    const t = this.transient;
    if (t === undefined) return;
    this.transient = undefined;
    const p = this.pending;
    if (p?.kind === 'writeData') this.fill(p);
    const last = this.chunks.length - 1;
    if (last < 0 || this.chunks[last] !== t) return;
    if (last === 0) {
      this.chunks[0] = Buffer.from(t.subarray(this.headOffset));
      this.headOffset = 0;
    } else this.chunks[last] = Buffer.from(t);
  }

  /** Called by the connection when NBD_OPT_GO succeeded or NBD_OPT_EXPORT_NAME was accepted. */
  startTransmission(): void {
    if (this.phaseNow !== 'options') throw new Error(`NBD parser: cannot enter transmission from phase ${this.phaseNow}`);
    this.phaseNow = 'transmission';
  }

  /** Next complete message, or undefined when more bytes are needed. */
  next(): ParserEvent | undefined {
    if (this.phaseNow === 'dead') return undefined;
    if (this.pending !== undefined) return this.continuePending(this.pending);
    switch (this.phaseNow) {
      case 'clientFlags': {
        if (this.bufferedBytes < clientFlagsBytes) return undefined;
        const flags = this.take(clientFlagsBytes).readUInt32BE(0);
        this.phaseNow = 'options';
        return { type: 'clientFlags', flags };
      }
      case 'options':
        return this.nextOption();
      case 'transmission':
        return this.nextRequest();
    }
  }

  private nextOption(): ParserEvent | undefined {
    if (this.bufferedBytes < optionHeaderBytes) return undefined;
    const h = this.take(optionHeaderBytes);
    if (h.readBigUInt64BE(0) !== IHAVEOPT) {
      return this.die(`option magic is 0x${h.readBigUInt64BE(0).toString(16)}, expected IHAVEOPT (client out of sync or not NBD)`);
    }
    const option = h.readUInt32BE(8);
    const lengthBytes = h.readUInt32BE(12);
    if (lengthBytes > this.limits.optionDiscardBytesMax) {
      return this.die(`option ${option} claims ${lengthBytes} bytes of data (over ${this.limits.optionDiscardBytesMax}); treated as denial of service`);
    }
    if (lengthBytes > this.limits.optionBytesMax) {
      this.pending = { kind: 'optionSkip', option, lengthBytes, leftBytes: lengthBytes };
    } else {
      this.pending = { kind: 'optionData', option, lengthBytes };
    }
    return this.continuePending(this.pending);
  }

  private nextRequest(): ParserEvent | undefined {
    if (this.bufferedBytes < requestHeaderBytes) return undefined;
    const h = this.take(requestHeaderBytes);
    const magic = h.readUInt32BE(0);
    if (magic !== REQUEST_MAGIC) {
      return this.die(`request magic is 0x${magic.toString(16)}, expected 0x${REQUEST_MAGIC.toString(16)} (client out of sync)`);
    }
    const header: RequestHeader = {
      flags: h.readUInt16BE(4),
      command: h.readUInt16BE(6),
      cookie: Buffer.from(h.subarray(8, 16)), // copy: the header may be a view of a chunk
      offset: h.readBigUInt64BE(16),
      lengthBytes: h.readUInt32BE(24),
    };
    if (header.command !== Cmd.WRITE) return request(header, undefined, false);
    if (header.lengthBytes > this.limits.writeBytesMax) {
      this.pending = { kind: 'writeSkip', header, leftBytes: header.lengthBytes };
    } else {
      this.pending = { kind: 'writeAdmit', header };
    }
    return this.continuePending(this.pending);
  }

  private continuePending(p: Pending): ParserEvent | undefined {
    switch (p.kind) {
      case 'optionData': {
        if (this.bufferedBytes < p.lengthBytes) return undefined;
        this.pending = undefined;
        return { type: 'option', option: p.option, data: this.take(p.lengthBytes) };
      }
      case 'writeAdmit': {
        if (!this.admitWrite(p.header.lengthBytes)) return undefined;
        this.pending = { kind: 'writeData', header: p.header, buf: undefined, filled: 0 };
        return this.continuePending(this.pending);
      }
      case 'writeData': {
        if (p.buf === undefined) {
          if (this.bufferedBytes >= p.header.lengthBytes) {
            this.pending = undefined;
            return request(p.header, this.takePayload(p.header.lengthBytes), false);
          }
          if (this.transient === undefined) return undefined; // wait: it may yet arrive in one chunk
        }
        if (!this.fill(p)) return undefined;
        this.pending = undefined;
        return request(p.header, p.buf, false);
      }
      case 'optionSkip':
      case 'writeSkip': {
        p.leftBytes -= this.skip(p.leftBytes);
        if (p.leftBytes > 0) return undefined;
        this.pending = undefined;
        if (p.kind === 'optionSkip') return { type: 'optionTooBig', option: p.option, lengthBytes: p.lengthBytes };
        return request(p.header, undefined, true);
      }
    }
  }

  private die(reason: string): ParserEvent {
    this.phaseNow = 'dead';
    this.chunks = [];
    this.bufferedBytes = 0;
    this.pending = undefined;
    return { type: 'fatal', reason };
  }

  /** Moves buffered bytes into a write's payload buffer; true once it is complete. */
  private fill(p: Extract<Pending, { kind: 'writeData' }>): boolean {
    const n = p.header.lengthBytes;
    if (p.buf === undefined) p.buf = payloadBuffer(n);
    p.filled += this.copyInto(p.buf, p.filled, Math.min(n - p.filled, this.bufferedBytes));
    return p.filled === n;
  }

  /** Consumes n buffered bytes (caller checked n <= bufferedBytes): a view if in one chunk. */
  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    const availableInFirst = first.length - this.headOffset;
    if (n <= availableInFirst && first !== this.transient) {
      const view = first.subarray(this.headOffset, this.headOffset + n);
      this.advance(n);
      return view;
    }
    if (n <= availableInFirst && n < slabCopyBytesMax) {
      // A small piece of a transient chunk: to the slab.
      const piece = this.slab.copy(first, this.headOffset, this.headOffset + n);
      this.advance(n);
      return piece;
    }
    // Option data or a header across chunks: not a write's payload, so not from the pool
    // (nothing would give the slot back).
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /**
   * A write's payload of n buffered bytes (caller checked n <= bufferedBytes): a view when it
   * sits in one chunk that stays as it is, else a pool slot (given back when the write's entry
   * leaves the journal), never the slab, whose pieces would pin 64 KiB each until a
   * mark-compact.
   */
  private takePayload(n: number): Buffer {
    const first = this.chunks[0];
    if (n === 0 || first === undefined || (first !== this.transient && n <= first.length - this.headOffset)) return this.take(n);
    const out = payloadBuffer(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Copies and consumes n buffered bytes (caller checked n <= bufferedBytes) into out[at..]. */
  private copyInto(out: Buffer, at: number, n: number): number {
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const m = Math.min(c.length - this.headOffset, n - filled);
      c.copy(out, at + filled, this.headOffset, this.headOffset + m);
      filled += m;
      this.advance(m);
    }
    return n;
  }

  /** Drops up to n buffered bytes; returns how many were dropped. */
  private skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const m = Math.min(c.length - this.headOffset, n - dropped);
      dropped += m;
      this.advance(m);
    }
    return dropped;
  }

  private advance(n: number): void {
    this.headOffset += n;
    this.bufferedBytes -= n;
    if (this.headOffset === this.chunks[0]!.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}

/** Pieces of a transient chunk up to this size are copied to the slab. */
const slabCopyBytesMax = 16 * 1024;

/** Memory for n payload bytes: a pool slot for a large write (the local store gives it back
 * once the write is journaled and performed, issue 18), else a buffer of its own. */
function payloadBuffer(n: number): Buffer {
  return n <= hostWritePooledBytesMax ? payloadPool.take(n) : Buffer.allocUnsafe(n);
}

function request(h: RequestHeader, payload: Buffer | undefined, payloadSkipped: boolean): ParserEvent {
  return { type: 'request', ...h, payload, payloadSkipped };
}

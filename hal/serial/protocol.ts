// Host side of the serial block protocol: request ids, per-request timeout, bounded
// retransmission, resync after garbage (docs/SERIAL-PROTOCOL.md section 5).
//
// Stop-and-wait: one request is outstanding at a time. A microcontroller with a few KiB of RAM
// can then keep exactly one response for retransmission, and ordering is trivially the host's
// order (the mirror applies writes in seq order: DESIGN "Identity, ordering").
//
// SerialLink knows no stream: it is fed received chunks (push) and given a function that sends
// bytes, so it runs the same over a real tty, a socat pty and @serialport/binding-mock.

import { FrameParser, encodeFrame } from './framing.js';
import { type Header, type Op, decodeMessage, encodeMessage, headerBytes, payloadBytesLimit, responseBit } from './messages.js';

export interface LinkOptions {
  /** Base wait for a response before retransmitting (ms), added to the wire time below. */
  timeoutMs?: number;
  /** Sends of one request before giving up (first send included). */
  attemptsMax?: number;
  /** Nominal line rate: the per-request timeout grows with the bytes that must cross it. */
  baudRate?: number;
}

export const linkDefaults = { timeoutMs: 1000, attemptsMax: 4, baudRate: 115200 } as const;

export interface Response {
  header: Header;
  payload: Buffer;
}

/** Why a request failed after every attempt; device.ts maps it onto a SenseError. */
export class LinkError extends Error {
  constructor(
    readonly kind: 'timeout' | 'closed',
    message: string,
  ) {
    super(message);
    this.name = 'LinkError';
  }
}

interface Pending {
  id: number;
  op: number;
  lba: number;
  frame: Buffer;
  attemptsLeft: number;
  /** Retransmissions triggered by a corrupt frame rather than a timeout (bounded separately). */
  earlyLeft: number;
  timer: NodeJS.Timeout | undefined;
  timeoutMs: number;
  resolve: (r: Response) => void;
  reject: (e: Error) => void;
}

export interface LinkStats {
  requests: number;
  retransmits: number;
  staleResponses: number;
}

export class SerialLink {
  readonly stats: LinkStats = { requests: 0, retransmits: 0, staleResponses: 0 };
  private readonly parser: FrameParser;
  private readonly opts: Required<LinkOptions>;
  private nextId = 1;
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private earlyQueued = false;

  constructor(
    private readonly send: (bytes: Buffer) => void,
    opts: LinkOptions = {},
  ) {
    this.opts = { ...linkDefaults, ...opts };
    if (!(this.opts.attemptsMax >= 1 && this.opts.attemptsMax <= 16)) throw new RangeError(`attemptsMax ${this.opts.attemptsMax} must be 1..16`);
    if (!(this.opts.timeoutMs >= 1)) throw new RangeError(`timeoutMs ${this.opts.timeoutMs} must be >= 1`);
    this.parser = new FrameParser(
      headerBytes + payloadBytesLimit,
      (body) => this.onFrame(body),
      () => this.onCorrupt(),
    );
  }

  get parserStats() {
    return this.parser.stats;
  }

  /** Feed bytes received from the device. */
  push(chunk: Uint8Array): void {
    this.parser.push(chunk);
  }

  /** Sends one request and resolves with its checked response; requests are serialised. */
  request(op: Op, lba: number, blocks: number, flags: number, payload: Uint8Array | undefined, responseBytes: number): Promise<Response> {
    const run = () => this.start(op, lba, blocks, flags, payload, responseBytes);
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Fails the outstanding and every later request; used on close or when the port goes away. */
  close(reason = 'serial link closed'): void {
    this.closed = true;
    const p = this.pending;
    if (p) {
      this.pending = undefined;
      clearTimeout(p.timer);
      p.reject(new LinkError('closed', reason));
    }
  }

  private start(op: Op, lba: number, blocks: number, flags: number, payload: Uint8Array | undefined, responseBytes: number): Promise<Response> {
    if (this.closed) return Promise.reject(new LinkError('closed', 'serial link closed'));
    const id = this.nextId;
    this.nextId = (this.nextId % 0xffff) + 1; // 1..65535: id 0 is never used, so a zeroed frame never matches
    const frame = encodeFrame(encodeMessage({ op, id, lba, blocks, status: 0, asc: 0, ascq: 0, flags }, payload));
    // Wire time both ways at 10 bits per byte, doubled for slack, on top of the base timeout.
    const wireMs = Math.ceil(((frame.length + headerBytes + responseBytes + 16) * 10 * 1000 * 2) / this.opts.baudRate);
    this.stats.requests++;
    return new Promise<Response>((resolve, reject) => {
      this.pending = { id, op, lba, frame, attemptsLeft: this.opts.attemptsMax, earlyLeft: this.opts.attemptsMax, timer: undefined, timeoutMs: this.opts.timeoutMs + wireMs, resolve, reject };
      this.transmit();
    });
  }

  private transmit(): void {
    const p = this.pending;
    if (!p) return;
    clearTimeout(p.timer);
    if (p.attemptsLeft === 0) {
      this.pending = undefined;
      p.reject(new LinkError('timeout', `no valid response after ${this.opts.attemptsMax} attempt(s) of ${p.timeoutMs} ms`));
      return;
    }
    if (p.attemptsLeft < this.opts.attemptsMax) this.stats.retransmits++;
    p.attemptsLeft--;
    p.timer = setTimeout(() => {
      this.parser.reset(); // the rest of a torn response is never coming
      this.transmit();
    }, p.timeoutMs);
    try {
      this.send(p.frame);
    } catch (e) {
      this.pending = undefined;
      clearTimeout(p.timer);
      p.reject(new LinkError('closed', `serial port write failed: ${(e as Error).message}`));
    }
  }

  private onFrame(body: Buffer): void {
    const m = decodeMessage(body);
    const p = this.pending;
    // A response to an earlier id is a late duplicate of a retransmitted request: ignore it.
    if (!m || !p || m.header.id !== p.id || m.header.op !== (p.op | responseBit) || m.header.lba !== p.lba) {
      this.stats.staleResponses++;
      return;
    }
    this.pending = undefined;
    clearTimeout(p.timer);
    p.resolve(m);
  }

  private onCorrupt(): void {
    // A corrupt frame while waiting is most likely our response damaged on the wire: ask again
    // now instead of sitting out the timeout. One early resend per received chunk (a burst of
    // garbage holds many "frames"), at most attemptsMax per request, and it does not use up
    // the timeout attempts, so garbage alone never fails a request.
    const p = this.pending;
    if (!p || p.earlyLeft === 0 || this.earlyQueued) return;
    this.earlyQueued = true;
    setImmediate(() => {
      this.earlyQueued = false;
      if (this.pending !== p || p.earlyLeft === 0) return;
      p.earlyLeft--;
      this.stats.retransmits++;
      try {
        this.send(p.frame);
      } catch {
        // The port is going away; the timeout path reports it.
      }
    });
  }
}

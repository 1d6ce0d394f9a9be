// Serial framing: COBS-encoded frames delimited by 0x00, each carrying a CRC-32C trailer.
// Spec: docs/SERIAL-PROTOCOL.md sections 2 (framing) and 3 (integrity).
//
// Why COBS and not SLIP: COBS has a fixed worst-case overhead (1 byte per 254) so a frame's
// wire size is bounded before encoding, and the 0x00 delimiter can never appear inside a
// frame, so a receiver that lost sync resynchronises at the very next 0x00 (resync after
// garbage, issue 9). Why our own parser: serialport's packet-length and SLIP parsers copy the
// whole buffer on every byte and check no CRC.
//
// FrameParser is a plain class fed chunks (no stream inside), like pg-protocol's parser: the
// stream adapter in protocol.ts is a few lines. Claims served: 11, 17 (the "means for storing
// data" behind a microcontroller must never hand back corrupted blocks).

import { crc32c } from '@node-rs/crc32';

export const frameDelimiter = 0x00;
export const crcBytes = 4;

/** Largest encoded size of a decoded body of `n` bytes (COBS: one code byte per 254 + 1). */
export function cobsEncodedBytesMax(n: number): number {
  return n + Math.ceil((n + 1) / 254) + 1;
}

/** COBS-encodes `body` (no delimiter added). */
export function cobsEncode(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(cobsEncodedBytesMax(body.length));
  let codeAt = 0;
  let o = 1;
  let code = 1;
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === 0) {
      out[codeAt] = code;
      codeAt = o++;
      code = 1;
    } else {
      out[o++] = b;
      code++;
      if (code === 0xff) {
        out[codeAt] = code;
        codeAt = o++;
        code = 1;
      }
    }
  }
  out[codeAt] = code;
  return out.subarray(0, o);
}

/** COBS-decodes one frame (delimiter excluded). Returns undefined when the encoding is invalid. */
export function cobsDecode(enc: Uint8Array): Buffer | undefined {
  const out = Buffer.allocUnsafe(enc.length);
  let i = 0;
  let o = 0;
  while (i < enc.length) {
    const code = enc[i]!;
    if (code === 0) return undefined; // a zero can never appear inside an encoded frame
    i++;
    const end = i + code - 1;
    if (end > enc.length) return undefined; // truncated block: bytes were dropped
    for (; i < end; i++) {
      const b = enc[i]!;
      if (b === 0) return undefined;
      out[o++] = b;
    }
    if (code !== 0xff && i < enc.length) out[o++] = 0;
  }
  return out.subarray(0, o);
}

/** Appends CRC-32C (big-endian) to `body` and COBS-encodes it, with a delimiter on both sides. */
export function encodeFrame(body: Uint8Array): Buffer {
  const withCrc = Buffer.allocUnsafe(body.length + crcBytes);
  withCrc.set(body, 0);
  withCrc.writeUInt32BE(crc32c(body), body.length);
  const enc = cobsEncode(withCrc);
  // The leading delimiter ends whatever garbage the receiver holds, so this frame is never
  // glued onto a torn one (section 2: "every frame starts and ends with 0x00").
  const out = Buffer.allocUnsafe(enc.length + 2);
  out[0] = frameDelimiter;
  enc.copy(out, 1);
  out[out.length - 1] = frameDelimiter;
  return out;
}

export interface FrameParserStats {
  framesOk: number;
  /** Frames whose COBS encoding or CRC-32C was wrong (bit flips, dropped bytes). */
  framesCorrupt: number;
  /** Runs of bytes longer than the bound, dropped up to the next delimiter (garbage). */
  framesOversize: number;
}

/**
 * Splits a byte stream into checked frame bodies. `onFrame` receives the body without CRC;
 * the buffer is owned by the callee (never reused by the parser). `onCorrupt` hears about
 * every rejected frame so the protocol can retransmit at once instead of waiting a timeout.
 */
export class FrameParser {
  readonly stats: FrameParserStats = { framesOk: 0, framesCorrupt: 0, framesOversize: 0 };
  private readonly encodedBytesMax: number;
  private parts: Buffer[] = [];
  private partsBytes = 0;
  private skipping = false;

  constructor(
    bodyBytesMax: number,
    private readonly onFrame: (body: Buffer) => void,
    private readonly onCorrupt: (reason: 'crc' | 'cobs' | 'oversize') => void = () => {},
  ) {
    if (!Number.isSafeInteger(bodyBytesMax) || bodyBytesMax < 1) throw new RangeError(`bodyBytesMax ${bodyBytesMax} must be a positive integer`);
    this.encodedBytesMax = cobsEncodedBytesMax(bodyBytesMax + crcBytes);
  }

  push(chunk: Uint8Array): void {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = 0;
    while (start < buf.length) {
      const end = buf.indexOf(frameDelimiter, start);
      if (end === -1) {
        this.collect(buf.subarray(start));
        return;
      }
      this.collect(buf.subarray(start, end));
      this.finish();
      start = end + 1;
    }
  }

  /** Drops any partial frame (after a timeout the rest of it is never coming). */
  reset(): void {
    this.parts = [];
    this.partsBytes = 0;
    this.skipping = false;
  }

  private collect(piece: Buffer): void {
    if (piece.length === 0 || this.skipping) return;
    // Bound before buffering (STYLE: pg-protocol read lengths without a maximum).
    if (this.partsBytes + piece.length > this.encodedBytesMax) {
      this.parts = [];
      this.partsBytes = 0;
      this.skipping = true;
      this.stats.framesOversize++;
      this.onCorrupt('oversize');
      return;
    }
    // Copy: the caller may reuse its chunk (serialport does not, but a pty reader might).
    this.parts.push(Buffer.from(piece));
    this.partsBytes += piece.length;
  }

  private finish(): void {
    const skipped = this.skipping;
    this.skipping = false;
    if (skipped || this.partsBytes === 0) {
      this.reset();
      return; // empty frame: back-to-back delimiters are idle fill, not an error
    }
    const enc = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.partsBytes);
    this.reset();
    const dec = cobsDecode(enc);
    if (dec === undefined || dec.length < crcBytes + 1) {
      this.stats.framesCorrupt++;
      this.onCorrupt('cobs');
      return;
    }
    const body = dec.subarray(0, dec.length - crcBytes);
    if (crc32c(body) !== dec.readUInt32BE(dec.length - crcBytes)) {
      this.stats.framesCorrupt++;
      this.onCorrupt('crc');
      return;
    }
    this.stats.framesOk++;
    this.onFrame(body);
  }
}

// Stream reassembly: a plain class fed chunks (no socket inside; src/net adapts it in three
// lines). Checks every header field before a single body byte is buffered, so no peer can make
// it hold more than frameBytesMax (the pg-protocol counter-example in STYLE.md).
//
// View lifetime: a frame's `body` (and the `data` of a decoded WRITE/RESYNC_DATA) is either a
// subarray of the chunk passed to push() (when the whole body is inside it) or a fresh buffer
// the parser allocated for a body that spanned chunks. The parser NEVER writes into memory it
// has handed out: a reassembly buffer is filled completely before its frame is emitted and is
// then dropped by the parser. So a view stays valid for as long as the caller references it,
// provided the caller does not mutate the chunks it pushed. A chunk pushed as `transient` (a
// link's reused read buffer, src/net/read-into.ts) IS written over after push() returns: then
// every body is copied out (a WRITE's, or any large one, to a pool slot; others to a slab the
// parser fills front to back and never writes behind). A retained view keeps its whole chunk or slab alive (64 KiB):
// consumers that keep payloads long (the cache) copy them into their own storage.
import { CopySlab, payloadPool, payloadPoolMinBytes } from '../../hal/payload-pool.js';
import { crc32, crc32Small } from './crc.js';
import { ErrorCode, ProtocolError } from './errors.js';
import {
  decodeMessage,
  frameBytesMax as defaultFrameBytesMax,
  frameMagic,
  FrameType,
  headerBytes,
  protocolVersion,
  specByCode,
  type Frame,
  type Message,
} from './frames.js';

const magicBytes = [(frameMagic >>> 24) & 0xff, (frameMagic >>> 16) & 0xff, (frameMagic >>> 8) & 0xff, frameMagic & 0xff];
const versionOffset = 4;
/** Bodies of other frames than WRITE from this size on come from the pool (resync data, reads). */
const otherPooledBytesMin = 64 * 1024;
const emptyBody = Buffer.alloc(0);

export interface ParserOptions {
  /** Largest frame accepted; at most the protocol's frameBytesMax. */
  readonly frameBytesMax?: number;
  /** frameSeq expected of the first frame (0 on a new connection; tests start elsewhere). */
  readonly firstFrameSeq?: number;
}

export function versionRefusal(peerVersion: number): string {
  return peerVersion < protocolVersion
    ? `peer speaks wire protocol v${peerVersion}, older than this site's v${protocolVersion}: upgrade the peer`
    : `peer speaks wire protocol v${peerVersion}, newer than this site's v${protocolVersion}: upgrade this site (or run the peer at v${protocolVersion})`;
}

export class FrameParser {
  readonly frameBytesMax: number;
  private readonly headerScratch = Buffer.alloc(headerBytes);
  private headerFilled = 0;
  private inBody = false;
  private type = 0;
  private flags = 0;
  private frameSeq = 0;
  private bodyBytes = 0;
  private bodyCrc = 0;
  private bodyBuf: Buffer | undefined;
  private bodyFilled = 0;
  private expectedSeq = 0;
  private readonly slab = new CopySlab();
  private failure: ProtocolError | undefined;
  /** Frames delivered so far. */
  framesParsed = 0;

  constructor(options: ParserOptions = {}) {
    const max = options.frameBytesMax ?? defaultFrameBytesMax;
    if (!Number.isInteger(max) || max < headerBytes || max > defaultFrameBytesMax) {
      throw new RangeError(`FrameParser frameBytesMax ${max} must be an integer in ${headerBytes}..${defaultFrameBytesMax}`);
    }
    this.frameBytesMax = max;
    this.expectedSeq = (options.firstFrameSeq ?? 0) >>> 0;
  }

  /** Bytes the parser holds in its own buffers right now (never more than frameBytesMax). */
  get bufferedBytes(): number {
    return this.headerFilled + (this.bodyBuf?.length ?? 0);
  }

  /** The error that stopped this parser, if any; once failed, every push throws it again. */
  get error(): ProtocolError | undefined {
    return this.failure;
  }

  /**
   * Feed one chunk; `onFrame` is called for every complete frame, in order. Throws a
   * ProtocolError (and only that) at the first bad byte; frames before it were delivered.
   */
  push(chunk: Buffer, onFrame: (frame: Frame) => void, transient = false): void {
    if (this.failure !== undefined) throw this.failure;
    try {
      this.consume(chunk, onFrame, transient);
    } catch (e) {
      if (e instanceof ProtocolError) this.failure = e;
      throw e;
    }
  }

  private consume(chunk: Buffer, onFrame: (frame: Frame) => void, transient: boolean): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (!this.inBody) {
        if (this.headerFilled === 0 && end - pos >= headerBytes) {
          this.checkPrefix(chunk, pos, 0, headerBytes);
          this.acceptHeader(chunk, pos);
          pos += headerBytes;
        } else {
          const n = Math.min(headerBytes - this.headerFilled, end - pos);
          chunk.copy(this.headerScratch, this.headerFilled, pos, pos + n);
          this.checkPrefix(this.headerScratch, 0, this.headerFilled, this.headerFilled + n);
          this.headerFilled += n;
          pos += n;
          if (this.headerFilled < headerBytes) return;
          this.headerFilled = 0;
          this.acceptHeader(this.headerScratch, 0);
        }
        if (this.bodyBytes === 0) {
          this.emit(emptyBody, onFrame);
          continue;
        }
        this.inBody = true;
      }
      // Body: a view of the chunk when it is all here (a copy when the chunk is `transient`:
      // its memory is read into again after this call), else reassemble into a fresh buffer.
      if (this.bodyBuf === undefined && end - pos >= this.bodyBytes) {
        const body = transient ? this.copyOut(chunk, pos) : chunk.subarray(pos, pos + this.bodyBytes);
        pos += this.bodyBytes;
        this.inBody = false;
        this.emit(body, onFrame);
        continue;
      }
      if (this.bodyBuf === undefined) {
        // A WRITE's body (and any large one) comes from the site's pool: the local store gives
        // a write's back once its entry leaves the journal (issue 18); other bodies are
        // garbage as before when their frame is done.
        this.bodyBuf = this.pooled() ? payloadPool.take(this.bodyBytes) : Buffer.allocUnsafeSlow(this.bodyBytes);
        this.bodyFilled = 0;
      }
      const n = Math.min(this.bodyBytes - this.bodyFilled, end - pos);
      chunk.copy(this.bodyBuf, this.bodyFilled, pos, pos + n);
      this.bodyFilled += n;
      pos += n;
      if (this.bodyFilled < this.bodyBytes) return;
      const body = this.bodyBuf;
      this.bodyBuf = undefined; // handed out: never written again
      this.inBody = false;
      this.emit(body, onFrame);
    }
  }

  /** Whether this frame's body comes from the pool: a WRITE's (given back when its entry goes), or a large one. */
  private pooled(): boolean {
    return this.bodyBytes >= (this.type === FrameType.WRITE ? payloadPoolMinBytes : otherPooledBytesMin);
  }

  /** The body at chunk[pos..] in memory of its own: a pool slot for a WRITE or a large body, else the slab. */
  private copyOut(chunk: Buffer, pos: number): Buffer {
    const n = this.bodyBytes;
    if (!this.pooled()) return this.slab.copy(chunk, pos, pos + n);
    const body = payloadPool.take(n);
    chunk.copy(body, 0, pos, pos + n);
    return body;
  }

  /** Reject random bytes at the first byte that cannot start a frame (magic, then version). */
  private checkPrefix(b: Buffer, base: number, from: number, to: number): void {
    for (let i = from; i < to && i <= versionOffset; i++) {
      const byte = b[base + i]!;
      if (i < 4 && byte !== magicBytes[i]) {
        throw new ProtocolError(
          ErrorCode.BAD_MAGIC,
          `byte ${i} of a frame header is 0x${byte.toString(16).padStart(2, '0')}, not the magic "GMRP": the peer does not speak the geomirror replication protocol (wrong port?)`,
        );
      }
      if (i === versionOffset && byte !== protocolVersion) {
        throw new ProtocolError(ErrorCode.VERSION_UNSUPPORTED, versionRefusal(byte));
      }
    }
  }

  private acceptHeader(b: Buffer, at: number): void {
    const headerCrc = b.readUInt32BE(at + 20);
    const computed = crc32Small(b, at, at + 20);
    if (headerCrc !== computed) {
      throw new ProtocolError(
        ErrorCode.HEADER_CHECKSUM,
        `header CRC is 0x${headerCrc.toString(16)}, bytes 0..19 give 0x${computed.toString(16)}: corrupted in transit`,
      );
    }
    const type = b[at + 5]!;
    const flags = b.readUInt16BE(at + 6);
    const bodyBytes = b.readUInt32BE(at + 8);
    const frameSeq = b.readUInt32BE(at + 12);
    // Length first, before anything else can make us buffer: a 4 GiB length ends here.
    if (bodyBytes > this.frameBytesMax - headerBytes) {
      throw new ProtocolError(
        ErrorCode.FRAME_TOO_LARGE,
        `frame announces ${bodyBytes} body bytes; frameBytesMax is ${this.frameBytesMax} (${this.frameBytesMax - headerBytes} body bytes)`,
      );
    }
    const spec = specByCode.get(type);
    if (spec === undefined) {
      throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `frame type 0x${type.toString(16).padStart(2, '0')} is not a v${protocolVersion} message`);
    }
    if (bodyBytes > spec.bodyBytesMax) {
      throw new ProtocolError(ErrorCode.FRAME_TOO_LARGE, `${spec.name} frame announces ${bodyBytes} body bytes; at most ${spec.bodyBytesMax} allowed`);
    }
    if (bodyBytes < spec.bodyBytesMin) {
      throw new ProtocolError(ErrorCode.MALFORMED, `${spec.name} frame announces ${bodyBytes} body bytes; at least ${spec.bodyBytesMin} needed`);
    }
    if (flags !== 0) {
      throw new ProtocolError(ErrorCode.BAD_FLAGS, `${spec.name} frame has header flags 0x${flags.toString(16)}; all are reserved in v1`);
    }
    if (frameSeq !== this.expectedSeq) {
      throw new ProtocolError(
        ErrorCode.FRAME_SEQUENCE,
        `${spec.name} frame has frameSeq ${frameSeq}, expected ${this.expectedSeq}: a frame was lost, duplicated or injected`,
      );
    }
    this.type = type;
    this.flags = flags;
    this.frameSeq = frameSeq;
    this.bodyBytes = bodyBytes;
    this.bodyCrc = b.readUInt32BE(at + 16);
  }

  private emit(body: Buffer, onFrame: (frame: Frame) => void): void {
    const computed = body.length === 0 ? 0 : crc32(body);
    if (computed !== this.bodyCrc) {
      throw new ProtocolError(
        ErrorCode.BODY_CHECKSUM,
        `body CRC of ${specByCode.get(this.type)!.name} frame ${this.frameSeq} is 0x${this.bodyCrc.toString(16)}, the body gives 0x${computed.toString(16)}: corrupted in transit`,
      );
    }
    this.expectedSeq = (this.expectedSeq + 1) >>> 0;
    this.framesParsed++;
    onFrame({ type: this.type, flags: this.flags, frameSeq: this.frameSeq, body, bodyCrc: computed });
  }
}

/** Parser + body decoding: chunks in, typed messages out. Throws only ProtocolError. */
export class MessageReader {
  readonly frames: FrameParser;

  constructor(options: ParserOptions = {}) {
    this.frames = new FrameParser(options);
  }

  push(chunk: Buffer, onMessage: (msg: Message) => void, transient = false): void {
    this.frames.push(chunk, (frame) => onMessage(decodeMessage(frame)), transient);
  }
}

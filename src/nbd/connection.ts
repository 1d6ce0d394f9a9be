// One client connection: the fixed-newstyle handshake, then the transmission phase. Socket
// bytes go into an NbdServerParser; messages are pulled one at a time so the phase switch and
// backpressure happen between messages. Requests are served concurrently and replied to as they
// complete; every reply is written in one synchronous burst (cork/uncork), so replies never
// interleave on the wire.
//
// Backpressure: we stop pulling (and pause the socket) while requestsInflightMax requests or
// inflightBytesMax bytes are being served, while replyQueueBytesMax reply bytes wait for a
// client that does not read, or while a write's payload cannot reserve the server-wide byte
// budget (byte-budget.ts). Payload memory is therefore bounded server-wide by that budget;
// per connection there is at most one header, one socket chunk and one option (<= optionBytesMax)
// on top, plus reply headers.
//
// Claim 3: the host's SAN. Spec: doc/proto.md of NetworkBlockDevice/nbd (sections cited inline).

import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { readInto } from '../net/read-into.js';
import type { NbdTlsOptions } from './tls.js';
import { clientHelloOffersPsk, nbdTlsClientProblem, tlsHelloBytesMax } from './tls.js';
import { NbdServerParser, type ParserEvent } from './parser.js';
import { NbdExportError, type NbdExport } from './export.js';
import type { NbdLimits } from './limits.js';
import type { RangeLock } from './range-lock.js';
import type { ByteBudget } from './byte-budget.js';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  Info,
  Opt,
  Rep,
  TransmissionFlag,
  clientFlagsKnown,
  optionHeaderBytes,
} from './protocol.js';
import * as r from './replies.js';
import { blockStatusRange, readRange, trimRange, writeRange, zeroRange } from './aligned-io.js';
import { SenseError, SenseKey } from '../../hal/blockdev.js';

export interface NbdLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly limits: NbdLimits;
  readonly logger: NbdLogger;
  /** Looks an export up by the name a client sent ("" selects the default). */
  lookup(name: string): NbdExport | undefined;
  exports(): readonly NbdExport[];
  lockFor(exp: NbdExport): RangeLock;
  /** NBD_OPT_STARTTLS (issue 17 item 7); undefined: TLS off. */
  readonly tls: NbdTlsOptions | undefined;
  /** The connection chose an export (it leaves the negotiating pool). */
  transmitting(conn: Connection): void;
  /** Server-wide payload memory (see byte-budget.ts). */
  readonly budget: ByteBudget;
  closed(conn: Connection): void;
}

/** Size of a connection's reused read buffer (what libuv reads per call by default). */
const nbdReadBufferBytes = 64 * 1024;

/** Context id we hand out for base:allocation (any nonzero-or-zero u32 is fine; we use 1). */
const baseAllocationContextId = 1;

type Request = Extract<ParserEvent, { type: 'request' }>;

export class Connection {
  private readonly parser: NbdServerParser;
  private structured = false;
  private noZeroes = false;
  private optionsSeen = 0;
  /** Export for which base:allocation was selected by the last SET_META_CONTEXT (if any). */
  private metaExport: NbdExport | undefined;
  private exp: NbdExport | undefined;

  /** The export this connection is transmitting on (undefined while negotiating). */
  get servedExport(): NbdExport | undefined {
    return this.exp;
  }
  private flagsSent = 0;
  private inflightRequests = 0;
  private inflightBytes = 0;
  private stopReading = false; // after DISC, ABORT, a fatal error or server close
  private peerEnded = false; // the client shut down its sending side (or closed)
  private ended = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  /** The stream in use: the accepted socket, or the TLS socket over it after NBD_OPT_STARTTLS. */
  private socket: Socket;
  /** TLS is up on this connection (after STARTTLS), and who the client proved to be. */
  private tlsUp = false;
  private upgrading = false;
  /** 0 nothing received yet, 1 the client spoke (admission control evicts 0s first). */
  progress: 0 | 1 = 0;
  /** The client's source address (per-address limits). */
  readonly address: string;
  /** Set once the client authenticated in TLS: certificate CN or PSK identity. */
  tlsClient: string | undefined;

  constructor(
    readonly id: number,
    socket: Socket,
    private readonly host: ConnectionHost,
    /** When set, the server is full: every option is refused with this reason. */
    private readonly refusal?: string,
  ) {
    const l = host.limits;
    this.parser = new NbdServerParser(
      { optionBytesMax: l.optionBytesMax, optionDiscardBytesMax: l.optionDiscardBytesMax, writeBytesMax: l.requestBytesMax },
      (bytes) => host.budget.tryReserve(bytes), // released when the write completes
    );
    this.socket = socket;
    this.address = socket.remoteAddress ?? '?';
    socket.setNoDelay(true); // spec: "both the client and server SHOULD disable Nagle's algorithm"
    this.attach(socket);
    // Without NBD TLS (the default), reads land in one reused buffer per connection instead of
    // a fresh 64 KiB one each (src/net/read-into.ts); the parser copies what it keeps. With TLS
    // configured, STARTTLS needs the plain socket's own read buffering (the ClientHello is read
    // through it), so 'data' events stay until TLS is up; the TLSSocket reads into a reused
    // buffer (tlsHandshake).
    if (host.tls === undefined) readInto(socket, Buffer.allocUnsafeSlow(nbdReadBufferBytes), this.onRead);
    socket.on('close', () => this.onClose());
    this.handshakeTimer = setTimeout(() => this.hardDisconnect(`still negotiating after ${l.handshakeTimeoutMs} ms`), l.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.send(r.greeting());
  }

  private readonly onData = (chunk: Buffer): void => this.received(chunk, false);
  /** A read into the reused buffer (src/net/read-into.ts). */
  private readonly onRead = (bytes: number, buffer: Buffer): void => this.received(buffer.subarray(0, bytes), true);

  /** Bytes from the client; of a `transient` chunk, everything the parser keeps is copied before we return. */
  private received(chunk: Buffer, transient: boolean): void {
    this.progress = 1;
    if (this.stopReading) return void this.socket.pause(); // nothing may follow DISC/ABORT; drop it
    this.parser.feed(chunk, transient);
    this.pump();
    this.parser.settle();
  }
  private readonly onDrain = (): void => {
    this.clearStall();
    this.pump();
  };
  private readonly onEnd = (): void => this.onPeerEnd();
  private readonly onError = (err: Error): void => this.log().debug({ conn: this.id, err: err.message }, 'socket error');

  private attach(s: Socket): void {
    s.on('data', this.onData);
    s.on('drain', this.onDrain);
    s.on('end', this.onEnd);
    s.on('error', this.onError);
  }

  private detach(s: Socket): void {
    s.off('data', this.onData);
    s.off('drain', this.onDrain);
    s.off('end', this.onEnd);
  }

  get inTransmission(): boolean {
    return this.exp !== undefined;
  }

  /** What this connection holds right now (for metrics and the bounded-memory tests). */
  stats(): { inflightRequests: number; inflightBytes: number; replyQueueBytes: number; parserHeldBytes: number } {
    return {
      inflightRequests: this.inflightRequests,
      inflightBytes: this.inflightBytes,
      replyQueueBytes: this.socket.writableLength,
      parserHeldBytes: this.parser.heldBytes,
    };
  }

  /** Server shutdown: stop taking requests, let in-flight ones finish, then close. */
  shutdown(): void {
    this.stopReading = true;
    if (this.exp === undefined) this.hardDisconnect('server shutting down');
    else this.endWhenIdle();
  }

  destroy(): void {
    this.socket.destroy();
  }

  private log(): NbdLogger {
    return this.host.logger;
  }

  private readonly retryPump = (): void => this.pump();

  private pump(): void {
    const l = this.host.limits;
    while (!this.stopReading && !this.ended && !this.upgrading) {
      const replyQueueFull = this.socket.writableLength > l.replyQueueBytesMax;
      if (replyQueueFull && this.stallTimer === undefined) {
        this.stallTimer = setTimeout(() => this.hardDisconnect(`replies not read for ${l.replyStallTimeoutMs} ms`), l.replyStallTimeoutMs);
        this.stallTimer.unref();
      }
      if (this.inflightRequests >= l.requestsInflightMax || this.inflightBytes >= l.inflightBytesMax || replyQueueFull) {
        this.socket.pause(); // resumed by pump() when a request completes or the socket drains
        return;
      }
      const ev = this.parser.next();
      if (ev === undefined) {
        if (this.parser.awaitingAdmission) {
          // A write's payload does not fit the server-wide budget yet: stop reading until
          // some memory is released, then try again.
          this.socket.pause();
          this.host.budget.onRelease(this.retryPump);
          return;
        }
        if (this.peerEnded) {
          // Everything the client sent before closing has been taken: finish it, then close.
          this.stopReading = true;
          return this.endWhenIdle();
        }
        break;
      }
      this.handle(ev);
    }
    if (!this.stopReading && !this.ended && !this.upgrading && this.socket.isPaused()) this.socket.resume();
  }

  private handle(ev: ParserEvent): void {
    switch (ev.type) {
      case 'clientFlags':
        return this.onClientFlags(ev.flags);
      case 'option':
        return this.onOption(ev.option, ev.data);
      case 'optionTooBig':
        return this.onOptionTooBig(ev.option, ev.lengthBytes);
      case 'request':
        return this.onRequest(ev);
      case 'fatal':
        return this.hardDisconnect(ev.reason);
    }
  }

  // ---- handshake ------------------------------------------------------------------------

  private onClientFlags(flags: number): void {
    // "the server MUST drop the TCP connection if the client sets an unknown flag"
    if ((flags & ~clientFlagsKnown) !== 0) {
      return this.hardDisconnect(`client flags 0x${flags.toString(16)} include unknown bits`);
    }
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    // A client without C_FIXED_NEWSTYLE still gets fixed-newstyle replies ("Servers MAY choose to
    // honour fixed newstyle from clients that didn't set this bit").
  }

  private onOptionTooBig(option: number, lengthBytes: number): void {
    if (option === Opt.EXPORT_NAME) {
      return this.hardDisconnect(`NBD_OPT_EXPORT_NAME of ${lengthBytes} bytes (it cannot be answered with an error)`);
    }
    if (!this.countOption()) return;
    this.send(r.optionError(option, Rep.ERR_TOO_BIG, `option data of ${lengthBytes} bytes exceeds this server's limit of ${this.host.limits.optionBytesMax} bytes`));
  }

  private countOption(): boolean {
    this.optionsSeen++;
    if (this.optionsSeen > this.host.limits.optionsPerConnectionMax) {
      this.hardDisconnect(`more than ${this.host.limits.optionsPerConnectionMax} options without choosing an export`);
      return false;
    }
    return true;
  }

  private onOption(option: number, data: Buffer): void {
    if (!this.countOption()) return;
    if (this.refusal !== undefined) return this.refuseOption(option);
    const tls = this.host.tls;
    if (tls?.mode === 'require' && !this.tlsUp && option !== Opt.STARTTLS && option !== Opt.ABORT) {
      // Spec, "TLS support": a server that requires TLS answers every option but STARTTLS and
      // ABORT with NBD_REP_ERR_TLS_REQD; EXPORT_NAME cannot be answered, so the session ends.
      if (option === Opt.EXPORT_NAME) return this.hardDisconnect('NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on an export that requires TLS');
      this.log().info({ conn: this.id, remote: this.address, option }, 'plain-text option refused: this export requires TLS (NBD_REP_ERR_TLS_REQD)');
      return this.optErr(option, Rep.ERR_TLS_REQD, 'this export requires TLS: negotiate NBD_OPT_STARTTLS first (e.g. nbds:// URIs, --tls)');
    }
    switch (option) {
      case Opt.EXPORT_NAME:
        return this.optExportName(data);
      case Opt.ABORT:
        // "The server MUST reply with NBD_REP_ACK" (and ignore any data sent with it).
        this.send(r.optionReply(option, Rep.ACK));
        return this.endNow();
      case Opt.LIST:
        return this.optList(data);
      case Opt.INFO:
      case Opt.GO:
        return this.optInfoGo(option, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optErr(option, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.send(r.optionReply(option, Rep.ACK));
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.optMetaContext(option, data);
      case Opt.STARTTLS:
        if (tls === undefined) return this.optErr(option, Rep.ERR_UNSUP, 'TLS is not enabled on this export (nbd-tls: off)');
        if (this.tlsUp) return this.optErr(option, Rep.ERR_INVALID, 'TLS is already in use on this connection');
        if (data.length !== 0) return this.optErr(option, Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
        return this.startTls(tls);
      default:
        // Includes NBD_OPT_EXTENDED_HEADERS (11), which newer libnbd sends first.
        return this.optErr(option, Rep.ERR_UNSUP, `option ${option} is not supported by this server`);
    }
  }

  /**
   * NBD_OPT_STARTTLS: ACK in plain text, then the TLS handshake on the same socket; option
   * haggling goes on inside TLS. The client sends nothing until it reads the ACK, and bytes
   * read early stay in the paused socket, which node:tls feeds to the handshake.
   */
  private startTls(tls: NbdTlsOptions): void {
    this.upgrading = true;
    const raw = this.socket;
    this.detach(raw);
    raw.pause();
    this.sendFlushed(() => {
      if (this.ended || raw.destroyed) return;
      if (tls.psk === undefined || tls.pskContext === undefined) return this.tlsHandshake(tls, raw, false);
      // Both x509 and PSK configured: read the ClientHello first to pick the context.
      let hello = Buffer.alloc(0);
      const onReadable = (): void => {
        let chunk: Buffer | null;
        while ((chunk = raw.read() as Buffer | null) !== null) hello = Buffer.concat([hello, chunk]);
        const psk = clientHelloOffersPsk(hello);
        if (psk === undefined && hello.length < tlsHelloBytesMax) return;
        raw.off('readable', onReadable);
        raw.unshift(hello);
        this.tlsHandshake(tls, raw, psk === true);
      };
      raw.on('readable', onReadable);
    }, r.optionReply(Opt.STARTTLS, Rep.ACK));
  }

  private tlsHandshake(tls: NbdTlsOptions, raw: Socket, pskOnly: boolean): void {
    {
      let pskIdentity: string | undefined;
      const t = new TLSSocket(raw, {
        isServer: true,
        secureContext: pskOnly ? tls.pskContext!() : tls.secureContext(),
        ...(pskOnly ? {} : { requestCert: tls.requestCert }),
        rejectUnauthorized: false,
        ...(tls.psk !== undefined
          ? {
              pskCallback: (_s: TLSSocket, identity: string): Buffer | null => {
                const key = tls.psk!.get(identity) ?? null;
                if (key !== null) pskIdentity = identity;
                return key;
              },
            }
          : {}),
      } as ConstructorParameters<typeof TLSSocket>[1]);
      // Cleartext lands in one reused buffer, as on a plain connection (issue 18 item 3; a
      // TLSSocket otherwise hands out a fresh 16 KiB buffer per record). Set before the first
      // turn, as readInto requires; what arrives before 'secure' (the client not yet checked)
      // is kept, copied, and parsed only once the client is accepted.
      const early: Buffer[] = [];
      let earlyBytes = 0;
      const reused = readInto(t, Buffer.allocUnsafeSlow(nbdReadBufferBytes), (bytes, buffer) => {
        if (this.tlsUp) return this.onRead(bytes, buffer);
        if (this.ended) return;
        earlyBytes += bytes;
        // Bounded like an option: a client that keeps sending before it is checked is closed.
        if (earlyBytes > this.host.limits.optionBytesMax + optionHeaderBytes) return this.hardDisconnect(`sent ${earlyBytes} bytes before its TLS client check finished (more than one option of optionBytesMax ${this.host.limits.optionBytesMax})`);
        early.push(Buffer.from(buffer.subarray(0, bytes)));
      });
      t.on('error', (err) => {
        if (!this.tlsUp) this.hardDisconnect(`TLS handshake failed: ${err.message}`);
      });
      t.once('secure', () => {
        const who = nbdTlsClientProblem(tls, t, pskIdentity);
        if ('problem' in who) {
          this.log().warn({ conn: this.id, remote: this.address, reason: who.problem }, 'NBD TLS client refused');
          this.hardDisconnect(`TLS client refused: ${who.problem}`);
          return;
        }
        this.tlsClient = who.client;
        this.tlsUp = true;
        this.upgrading = false;
        this.socket = t;
        this.phaseCorked = false; // a fresh stream: nothing corked on it
        this.attach(t);
        this.log().info({ conn: this.id, remote: this.address, client: who.client, by: who.by, protocol: t.getProtocol(), cipher: t.getCipher()?.name, reusedReadBuffer: reused }, 'NBD TLS established');
        for (const chunk of early.splice(0)) this.received(chunk, false);
        this.pump();
      });
    }
  }

  private refuseOption(option: number): void {
    if (option === Opt.EXPORT_NAME) return this.hardDisconnect(`refused: ${this.refusal}`);
    if (option === Opt.ABORT) {
      this.send(r.optionReply(option, Rep.ACK));
      return this.endNow();
    }
    this.optErr(option, Rep.ERR_POLICY, this.refusal!);
  }

  private optErr(option: number, rep: number, message: string): void {
    this.log().debug({ conn: this.id, option, rep: rep >>> 0, reason: message }, 'option refused');
    this.send(r.optionError(option, rep, message));
  }

  private optExportName(data: Buffer): void {
    const name = data.toString('utf8');
    const exp = this.host.lookup(name);
    // "If the chosen export does not exist ... the server MUST terminate the session."
    if (exp === undefined) return this.hardDisconnect(`NBD_OPT_EXPORT_NAME for unknown export '${name}'`);
    const flags = this.transmissionFlags(exp);
    this.send(r.exportNameReply(exp.sizeBytes, flags, this.noZeroes));
    this.enterTransmission(exp, flags);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optErr(Opt.LIST, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
    for (const e of this.host.exports()) this.send(r.repServer(Opt.LIST, e.name, e.description));
    this.send(r.optionReply(Opt.LIST, Rep.ACK));
  }

  private optInfoGo(option: number, data: Buffer): void {
    // Data: u32 name length, name, u16 count, count x u16 info requests.
    if (data.length < 6) return this.optErr(option, Rep.ERR_INVALID, `option data of ${data.length} bytes is shorter than 6`);
    const nameBytes = data.readUInt32BE(0);
    if (nameBytes > data.length - 6) return this.optErr(option, Rep.ERR_INVALID, `export name length ${nameBytes} overruns the option`);
    const count = data.readUInt16BE(4 + nameBytes);
    if (data.length !== 6 + nameBytes + 2 * count) {
      return this.optErr(option, Rep.ERR_INVALID, `option length ${data.length} does not match ${count} information requests`);
    }
    const name = data.toString('utf8', 4, 4 + nameBytes);
    const exp = this.host.lookup(name);
    if (exp === undefined) {
      const known = this.host.exports().map((e) => `'${e.name}'`).join(', ');
      return this.optErr(option, Rep.ERR_UNKNOWN, `no export named '${name}' (exports: ${known || 'none'})`);
    }
    // We send every information type we have; clients ignore the ones they did not ask for, and
    // we never rely on a client honouring BLOCK_SIZE (unaligned requests are read-modify-written).
    const flags = this.transmissionFlags(exp);
    this.send(r.infoExport(option, exp.sizeBytes, flags));
    this.send(r.infoString(option, Info.NAME, exp.name));
    if (exp.description !== '') this.send(r.infoString(option, Info.DESCRIPTION, exp.description));
    this.send(r.infoBlockSize(option, 1, exp.preferredBlockSizeBytes, this.maxBlockBytes(exp)));
    this.send(r.optionReply(option, Rep.ACK));
    if (option === Opt.GO) this.enterTransmission(exp, flags);
  }

  /** Largest READ/WRITE we accept: requestBytesMax, as a multiple of the minimum block size (1). */
  private maxBlockBytes(exp: NbdExport): number {
    return Math.max(Math.min(this.host.limits.requestBytesMax, 0xffffffff), Math.min(exp.preferredBlockSizeBytes, exp.sizeBytes));
  }

  private optMetaContext(option: number, data: Buffer): void {
    const set = option === Opt.SET_META_CONTEXT;
    if (set) this.metaExport = undefined; // "replaces all previously-set metadata contexts (including when this command fails)"
    if (!this.structured) return this.optErr(option, Rep.ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts');
    const parsed = parseMetaContextData(data);
    if (typeof parsed === 'string') return this.optErr(option, Rep.ERR_INVALID, parsed);
    const exp = this.host.lookup(parsed.exportName);
    if (exp === undefined) return this.optErr(option, Rep.ERR_UNKNOWN, `no export named '${parsed.exportName}'`);
    // base:allocation is our only context. LIST: zero queries, 'base:' or 'base:allocation' list it.
    // SET: only the exact name selects it ("base:" MUST be ignored during SET). Unknown
    // namespaces and leaf names are ignored, never errors.
    const match = set
      ? parsed.queries.includes(BASE_ALLOCATION)
      : parsed.queries.length === 0 || parsed.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
    if (match) {
      this.send(r.repMetaContext(option, set ? baseAllocationContextId : 0, BASE_ALLOCATION));
      if (set) this.metaExport = exp;
    }
    this.send(r.optionReply(option, Rep.ACK));
  }

  private transmissionFlags(exp: NbdExport): number {
    const T = TransmissionFlag;
    let f = T.HAS_FLAGS | T.SEND_CACHE;
    if (exp.readOnly) f |= T.READ_ONLY;
    else {
      f |= T.SEND_WRITE_ZEROES | T.SEND_FAST_ZERO;
      if (exp.canTrim) f |= T.SEND_TRIM;
    }
    if (exp.canFlush) f |= T.SEND_FLUSH;
    if (exp.canFua) f |= T.SEND_FUA;
    if (this.structured) f |= T.SEND_DF; // every read is answered in one chunk, so DF always holds
    if (exp.multiConn) f |= T.CAN_MULTI_CONN;
    return f;
  }

  private enterTransmission(exp: NbdExport, flags: number): void {
    // BLOCK_STATUS needs SET_META_CONTEXT on the same export that was finally chosen.
    if (this.metaExport !== exp) this.metaExport = undefined;
    this.exp = exp;
    this.flagsSent = flags;
    this.parser.startTransmission();
    if (this.handshakeTimer !== undefined) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.host.transmitting(this);
    this.log().debug({ conn: this.id, export: exp.name, flags, structured: this.structured }, 'transmission started');
  }

  // ---- transmission ---------------------------------------------------------------------

  private onRequest(req: Request): void {
    if (req.command === Cmd.DISC) {
      // "The server MUST handle all outstanding requests ... and close the TCP session."
      this.stopReading = true;
      return this.endWhenIdle();
    }
    // A write's payload bytes were reserved by the parser before buffering; a read reserves its
    // reply bytes before it is served, waiting (as an in-flight request) if the budget is spent.
    const isRead = req.command === Cmd.READ && req.lengthBytes <= this.host.limits.requestBytesMax;
    const bytes = isRead ? req.lengthBytes : (req.payload?.length ?? 0);
    this.inflightRequests++;
    this.inflightBytes += bytes;
    const start = (): void => {
      if (req.command === Cmd.WRITE && this.exp?.writeNow !== undefined && this.writeNow(req, bytes)) return;
      let readReserved = isRead ? bytes : 0; // handed to the socket write that sends the data
      const releaseRead = (): void => {
        this.host.budget.release(readReserved);
        readReserved = 0;
      };
      this.serve(req, releaseRead)
        .catch((err: unknown) => this.replyError(req, err))
        .finally(() => {
          if (!isRead) this.host.budget.release(bytes);
          else if (readReserved > 0 && !this.readDataQueued.has(req)) releaseRead(); // error: no data sent
          this.readDataQueued.delete(req);
          this.requestDone(bytes);
        });
    };
    if (!isRead || this.host.budget.tryReserve(bytes)) return start();
    const retry = (): void => {
      if (this.host.budget.tryReserve(bytes)) start();
      else this.host.budget.onRelease(retry);
    };
    this.host.budget.onRelease(retry);
  }

  /** A request left the server (answered, or failed): its room goes back, the next may be read. */
  private requestDone(bytes: number): void {
    this.inflightRequests--;
    this.inflightBytes -= bytes;
    if (this.stopReading) this.endWhenIdle();
    else this.pump();
  }

  /**
   * A block-aligned write whose range lock is free, through the export's callback form: no
   * promise per write (issue 18). False when it does not apply (unaligned, invalid, range
   * busy, no writeNow): the general path below serves it, and answers any error.
   */
  private writeNow(req: Request, bytes: number): boolean {
    const exp = this.exp!;
    const b = exp.blockSizeBytes;
    let v: { offsetBytes: number; lengthBytes: number };
    try {
      v = this.validate(exp, req);
    } catch {
      return false;
    }
    const { offsetBytes, lengthBytes } = v;
    if (lengthBytes === 0 || offsetBytes % b !== 0 || lengthBytes % b !== 0 || req.payload === undefined) return false;
    const release = this.host.lockFor(exp).tryAcquire(offsetBytes, offsetBytes + lengthBytes);
    if (release === undefined) return false;
    exp.writeNow!(offsetBytes, req.payload, { fua: (req.flags & CmdFlag.FUA) !== 0 }, (err) => {
      release();
      try {
        if (err === undefined) this.sendReply(r.simpleReply(req.cookie, 0));
        else this.replyError(req, err);
      } catch (e) {
        // Never expected (send() checks the socket first); a reply that cannot be sent ends
        // this connection, with the reason, not the site.
        this.log().warn({ conn: this.id, reason: (e as Error)?.message ?? String(e) }, 'reply to a write failed; closing the connection');
        this.socket.destroy();
      }
      this.host.budget.release(bytes);
      this.requestDone(bytes);
    });
    return true;
  }

  /** Reads whose data was handed to the socket (their budget is released when it is flushed). */
  private readonly readDataQueued = new Set<Request>();

  private async serve(req: Request, releaseRead: () => void): Promise<void> {
    const exp = this.exp!;
    const { offsetBytes, lengthBytes } = this.validate(exp, req);
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    const lock = this.host.lockFor(exp);
    switch (req.command) {
      case Cmd.READ: {
        const data = lengthBytes === 0 ? Buffer.alloc(0) : await readRange(exp, offsetBytes, lengthBytes);
        this.readDataQueued.add(req);
        return this.replyRead(req.cookie, offsetBytes, data, releaseRead);
      }
      case Cmd.WRITE:
        if (lengthBytes > 0) await writeRange(exp, lock, offsetBytes, req.payload!, fua);
        break;
      case Cmd.FLUSH:
        await exp.flush();
        break;
      case Cmd.TRIM:
        if (lengthBytes > 0) await trimRange(exp, lock, offsetBytes, lengthBytes, fua);
        break;
      case Cmd.CACHE:
        break; // advisory; the range was checked. Reads come from local storage anyway.
      case Cmd.WRITE_ZEROES:
        if ((req.flags & CmdFlag.FAST_ZERO) !== 0 && !(exp.canFastZero && exp.zero !== undefined)) {
          // "MUST fail quickly with NBD_ENOTSUP ... and SHOULD NOT alter the contents"
          throw new NbdExportError(Errno.ENOTSUP, `export '${exp.name}' cannot zero faster than it writes`);
        }
        if (lengthBytes > 0) {
          const noHole = (req.flags & CmdFlag.NO_HOLE) !== 0;
          await zeroRange(exp, lock, offsetBytes, lengthBytes, { fua, noHole, zeroChunkBytes: this.host.limits.zeroChunkBytes });
        }
        break;
      case Cmd.BLOCK_STATUS: {
        const reqOne = (req.flags & CmdFlag.REQ_ONE) !== 0;
        const extents = await blockStatusRange(exp, offsetBytes, lengthBytes, reqOne, this.host.limits.blockStatusExtentsMax);
        return this.sendReply(r.structuredBlockStatus(req.cookie, baseAllocationContextId, extents));
      }
    }
    this.sendReply(r.simpleReply(req.cookie, 0)); // allowed even with structured replies: no payload
  }

  /** The edge check of every request (doc/proto.md "Error values"); returns the range as numbers. */
  private validate(exp: NbdExport, req: Request): { offsetBytes: number; lengthBytes: number } {
    const bad = (errno: Errno, msg: string): never => {
      throw new NbdExportError(errno, msg);
    };
    const allowed = this.allowedFlags(req.command);
    if (allowed === undefined) bad(Errno.EINVAL, `unknown command ${req.command}`);
    if ((req.flags & ~allowed!) !== 0) bad(Errno.EINVAL, `flags 0x${req.flags.toString(16)} not valid for command ${req.command}`);
    const writes = req.command === Cmd.WRITE || req.command === Cmd.WRITE_ZEROES || req.command === Cmd.TRIM;
    if (writes && exp.readOnly) bad(Errno.EPERM, `export '${exp.name}' is read-only`);
    if (req.command === Cmd.TRIM && !exp.canTrim) bad(Errno.EINVAL, `export '${exp.name}' does not support trim`);
    if (req.command === Cmd.FLUSH) {
      if (!exp.canFlush) bad(Errno.EINVAL, `export '${exp.name}' does not support flush`);
      if (req.offset !== 0n || req.lengthBytes !== 0) bad(Errno.EINVAL, 'flush offset and length must be zero');
      return { offsetBytes: 0, lengthBytes: 0 };
    }
    if (req.command === Cmd.BLOCK_STATUS) {
      if (this.metaExport !== exp) bad(Errno.EINVAL, 'no metadata context was selected (NBD_OPT_SET_META_CONTEXT base:allocation)');
      if (req.lengthBytes === 0) bad(Errno.EINVAL, 'block status of zero length');
    }
    if ((req.command === Cmd.READ || req.command === Cmd.WRITE) && req.lengthBytes > this.host.limits.requestBytesMax) {
      bad(Errno.EINVAL, `length ${req.lengthBytes} exceeds the maximum block size ${this.host.limits.requestBytesMax}`);
    }
    if (req.offset + BigInt(req.lengthBytes) > BigInt(exp.sizeBytes)) {
      const errno = req.command === Cmd.WRITE || req.command === Cmd.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL;
      bad(errno, `${req.lengthBytes} bytes at offset ${req.offset} run past the end of export '${exp.name}' (${exp.sizeBytes} bytes)`);
    }
    return { offsetBytes: Number(req.offset), lengthBytes: req.lengthBytes };
  }

  /** Command flags valid for a command under what we advertised; undefined for unknown commands. */
  private allowedFlags(command: number): number | undefined {
    const fua = (this.flagsSent & TransmissionFlag.SEND_FUA) !== 0 ? CmdFlag.FUA : 0;
    switch (command) {
      case Cmd.READ:
        return fua | (this.structured ? CmdFlag.DF : 0);
      case Cmd.WRITE:
      case Cmd.FLUSH:
      case Cmd.TRIM:
      case Cmd.CACHE:
        return fua;
      case Cmd.WRITE_ZEROES:
        return fua | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO;
      case Cmd.BLOCK_STATUS:
        return fua | CmdFlag.REQ_ONE;
      default:
        return undefined;
    }
  }

  private replyRead(cookie: Buffer, offsetBytes: number, data: Buffer, flushed: () => void): void {
    if (!this.structured) return this.sendFlushed(flushed, r.simpleReply(cookie, 0), data);
    if (data.length === 0) return this.sendFlushed(flushed, r.structuredNone(cookie));
    this.sendFlushed(flushed, r.structuredOffsetDataHeader(cookie, offsetBytes, data.length), data);
  }

  /**
   * Replies that complete in one event-loop phase leave in one vectored write: the socket stays
   * corked from the first reply of the phase until setImmediate (the end of this loop turn), so
   * a burst of completions (QD16, coalesced acks) costs one syscall, not one per reply. The
   * per-reply cork/uncork below nests inside and keeps each reply's pieces together.
   */
  private batchPhase(): void {
    if (this.phaseCorked) return;
    this.phaseCorked = true;
    this.socket.cork();
    setImmediate(() => {
      this.phaseCorked = false;
      if (!this.socket.destroyed) this.socket.uncork();
    });
  }

  private phaseCorked = false;

  /** send(), then calls `flushed` once the kernel has the bytes (or the socket is gone). */
  private sendFlushed(flushed: () => void, ...bufs: Buffer[]): void {
    if (this.ended || this.socket.destroyed || !this.socket.writable) return flushed();
    this.batchPhase();
    this.socket.cork();
    for (let i = 0; i < bufs.length - 1; i++) this.socket.write(bufs[i]!);
    this.socket.write(bufs[bufs.length - 1]!, () => flushed()); // also called (with an error) on destroy
    this.socket.uncork();
  }

  private replyError(req: Request, err: unknown): void {
    const { errno, message } = errorFor(err, req.command);
    const level = err instanceof NbdExportError ? 'debug' : 'warn';
    this.log()[level]({ conn: this.id, command: req.command, offset: req.offset.toString(), length: req.lengthBytes, errno, reason: message }, 'request failed');
    // Structured replies are mandatory for READ once negotiated, and preferred for errors.
    if (this.structured) this.sendReply(r.structuredError(req.cookie, errno, message));
    else this.sendReply(r.simpleReply(req.cookie, errno));
  }

  // ---- socket ---------------------------------------------------------------------------

  private sendReply(...bufs: Buffer[]): void {
    this.send(...bufs);
  }

  /** Writes the buffers back to back; nothing else can be written between them. */
  private send(...bufs: Buffer[]): void {
    if (this.ended || this.socket.destroyed || !this.socket.writable) return; // client already gone
    this.batchPhase();
    if (bufs.length === 1) {
      this.socket.write(bufs[0]!);
      return;
    }
    this.socket.cork();
    for (const b of bufs) this.socket.write(b);
    this.socket.uncork();
  }

  private endWhenIdle(): void {
    if (this.inflightRequests === 0) this.endNow();
  }

  /** Soft end: flush what we queued, then close. */
  private endNow(): void {
    if (this.ended) return;
    this.stopReading = true;
    this.ended = true;
    this.socket.end();
  }

  private hardDisconnect(reason: string): void {
    this.log().info({ conn: this.id, reason }, 'closing NBD connection');
    this.stopReading = true;
    this.ended = true;
    this.socket.destroy();
  }

  private onPeerEnd(): void {
    // Clients may close without NBD_CMD_DISC (fio does), or shut down their sending side while
    // waiting for replies: serve every complete request already received, then close. A partial
    // message (e.g. a write cut mid-payload) is dropped, never applied.
    this.peerEnded = true;
    this.pump();
    if (this.parser.midMessage) this.log().debug({ conn: this.id, heldBytes: this.parser.heldBytes }, 'client closed mid-message');
  }

  private clearStall(): void {
    if (this.stallTimer !== undefined) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }

  private onClose(): void {
    this.ended = true;
    this.stopReading = true;
    this.clearStall();
    this.host.budget.forget(this.retryPump);
    // A write cut off mid-payload never completes: give its admitted bytes back.
    const partial = this.parser.admittedPendingBytes;
    if (partial > 0) this.host.budget.release(partial);
    if (this.handshakeTimer !== undefined) clearTimeout(this.handshakeTimer);
    this.host.closed(this);
  }
}

/** Parses LIST/SET_META_CONTEXT data; returns a reason string when it is malformed. */
function parseMetaContextData(data: Buffer): { exportName: string; queries: string[] } | string {
  let at = 0;
  const u32 = (what: string): number | string => {
    if (at + 4 > data.length) return `${what} runs past the option data`;
    const v = data.readUInt32BE(at);
    at += 4;
    return v;
  };
  const str = (len: number, what: string): string | { err: string } => {
    if (len > data.length - at) return { err: `${what} of ${len} bytes runs past the option data` };
    const s = data.toString('utf8', at, at + len);
    at += len;
    return s;
  };
  const nameLen = u32('export name length');
  if (typeof nameLen === 'string') return nameLen;
  const exportName = str(nameLen, 'export name');
  if (typeof exportName !== 'string') return exportName.err;
  const count = u32('query count');
  if (typeof count === 'string') return count;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const qLen = u32(`length of query ${i}`);
    if (typeof qLen === 'string') return qLen;
    const q = str(qLen, `query ${i}`);
    if (typeof q !== 'string') return q.err;
    queries.push(q);
  }
  if (at !== data.length) return `${data.length - at} stray bytes after ${count} queries`;
  return { exportName, queries };
}

/** Maps an export failure to the NBD error value and a message for the client. */
function errorFor(err: unknown, command: number): { errno: Errno; message: string } {
  if (err instanceof NbdExportError) return { errno: err.errno, message: err.message };
  if (err instanceof SenseError) {
    if (err.key === SenseKey.DATA_PROTECT) return { errno: Errno.EPERM, message: err.message };
    if (err.key === SenseKey.ILLEGAL_REQUEST && err.asc === 0x21) {
      const w = command === Cmd.WRITE || command === Cmd.WRITE_ZEROES;
      return { errno: w ? Errno.ENOSPC : Errno.EINVAL, message: err.message };
    }
    if (err.key === SenseKey.ILLEGAL_REQUEST) return { errno: Errno.EINVAL, message: err.message };
    return { errno: Errno.EIO, message: err.message };
  }
  return { errno: Errno.EIO, message: err instanceof Error ? err.message : String(err) };
}

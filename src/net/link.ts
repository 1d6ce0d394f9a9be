// One authenticated replication link over a net.Socket: with `transport: tls` (the default of
// every cluster, issue 17) it first runs mutual TLS 1.3 on the socket and checks the peer's
// certificate (src/net/security.ts); then, inside TLS, it runs the handshake (dialer or listener),
// then delivers decoded data messages to its listeners and sends messages with one vectored
// write each. Heartbeats every heartbeatIntervalMs measure RTT; nothing received for
// linkTimeoutMs and the link is dead. Any protocol error, refusal or timeout ends the link with
// a REFUSE/ERROR frame carrying the code and reason, a log line naming the peer and the remote
// address, and a closed socket; nothing else on the site is affected (DESIGN.md, wire protocol).
import { randomBytes as cryptoRandomBytes, type X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { TLSSocket, connect as tlsConnect } from 'node:tls';
import {
  ErrorCode,
  FrameEncoder,
  Handshake,
  MessageReader,
  ProtocolError,
  errorCodeName,
  inflightBytesMax,
  inflightWritesMax,
  specByName,
  type DataMessage,
  type HandshakeStep,
  type HeartbeatMsg,
  type Message,
  type VolumeGeometry,
} from '../wire/index.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import { InflightWindow } from './window.js';
import { readInto } from './read-into.js';
import { peerCertificateProblem, certifiedSite, channelBindingBytes, channelBindingLabel, type LinkSecurity } from './security.js';

export interface LinkLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** Size of a link's reused receive buffer: one socket read (TLS hands out at most 16 KiB). */
const linkReadBufferBytes = 64 * 1024;

export const silentLogger: LinkLogger = { info: () => {}, warn: () => {} };

export const linkDefaults = {
  heartbeatIntervalMs: 1000,
  linkTimeoutMs: 5000,
  handshakeTimeoutMs: 5000,
  /** Bytes queued in the socket above which send() says wait (and refuses further sends). */
  sendQueueBytesMax: 4 * 1024 * 1024,
  /** After sending REFUSE/ERROR, how long to wait for the peer to close before destroying. */
  closeGraceMs: 2000,
  /**
   * Once established, a frame whose first bytes arrived must be complete within this (a peer
   * that trickles one byte a second cannot hold a half frame forever). 1 MiB at 1 Mbit/s takes
   * ~8 s, so this leaves slow links room.
   */
  frameDeadlineMs: 30_000,
} as const;

export interface LinkTimingOptions {
  readonly heartbeatIntervalMs?: number;
  readonly linkTimeoutMs?: number;
  readonly handshakeTimeoutMs?: number;
  readonly sendQueueBytesMax?: number;
  readonly closeGraceMs?: number;
  readonly frameDeadlineMs?: number;
  /** In-flight window per direction (protocol limits by default); see InflightWindow. */
  readonly inflightWritesMax?: number;
  readonly inflightBytesMax?: number;
  readonly clock?: Clock;
  readonly logger?: LinkLogger;
  readonly randomBytes?: (n: number) => Buffer;
  /** Epoch and last seq to put in outgoing HEARTBEATs (the site's core knows them). */
  readonly heartbeatState?: () => { epoch: bigint; lastSeq: bigint };
  /**
   * A port shared by several consistency groups (issue 20): the heartbeat state of the group a
   * link carries, known once HELLO named it (so even the first HEARTBEAT, sent when the link is
   * established, carries that group's epoch). Takes precedence over heartbeatState.
   */
  readonly heartbeatStateOf?: (group: number) => { epoch: bigint; lastSeq: bigint };
}

export interface LinkOptions extends LinkTimingOptions {
  readonly role: 'dialer' | 'listener';
  readonly cluster: string;
  readonly site: string;
  readonly secret: Buffer;
  /** TLS or lab-mode plain TCP, and the volume geometry the handshake checks (security.ts). */
  readonly security: LinkSecurity;
  /** Dialer: the site it dials. */
  readonly peer?: string;
  /** Listener: which dialing site names to accept. */
  readonly acceptPeer?: (site: string) => boolean;
  /** Listener: replay memory shared by all connections of a server. */
  readonly seenNonce?: (nonce: Buffer) => boolean;
  /** Listener with several consistency groups (issue 20): the geometry of a group a HELLO names (Handshake.geometryOf). */
  readonly geometryOf?: (group: number) => VolumeGeometry | undefined;
  /**
   * Listener: where lines go until the peer is identified (certificate verified or handshake
   * done); a stranger can make those at will, so the server passes a rate-limited logger.
   */
  readonly strangerLogger?: LinkLogger;
}

export interface LinkClose {
  /** Wire error code, or undefined when the transport closed without one. */
  readonly code: number | undefined;
  readonly reason: string;
  /** local: this site ended it; peer: the peer sent REFUSE/ERROR; transport: the socket ended. */
  readonly by: 'local' | 'peer' | 'transport';
}

export type LinkState = 'handshaking' | 'established' | 'closed';

export class LinkClosedError extends Error {
  constructor(readonly close: LinkClose, what: string) {
    super(`${what}: ${close.reason}`);
    this.name = 'LinkClosedError';
  }
}

export interface Link {
  on(event: 'established', fn: (peer: string) => void): this;
  /** TLS: the peer's certificate was verified and names this site (before HELLO/CHALLENGE). */
  on(event: 'identified', fn: (site: string) => void): this;
  on(event: 'message', fn: (msg: DataMessage) => void): this;
  on(event: 'heartbeat', fn: (msg: HeartbeatMsg, rttMs: number | undefined) => void): this;
  on(event: 'close', fn: (info: LinkClose) => void): this;
  on(event: 'drain', fn: () => void): this;
  /** The send window opened (an ACK or WRITE_ACK arrived). */
  on(event: 'window', fn: () => void): this;
  once(event: 'established', fn: (peer: string) => void): this;
  once(event: 'identified', fn: (site: string) => void): this;
  once(event: 'close', fn: (info: LinkClose) => void): this;
  once(event: 'drain', fn: () => void): this;
  once(event: 'window', fn: () => void): this;
}

export class Link extends EventEmitter {
  readonly role: 'dialer' | 'listener';
  /** "host:port" of the other end, for logs. */
  readonly remote: string;
  private st: LinkState = 'handshaking';
  /** Created once the transport is ready (after the TLS handshake, or at once without TLS). */
  private hs: Handshake | undefined;
  /** The stream frames travel on: the TLS socket over `raw`, or `raw` itself (insecure). */
  readonly socket: Socket;
  /** The peer's site name as its certificate states it (TLS only, once verified). */
  private certified: string | undefined;
  /** The peer's verified certificate (TLS only). */
  peerCertificate: X509Certificate | undefined;
  /** When a partial frame was last begun or a frame completed (frameDeadlineMs). */
  private frameProgressMs = 0;
  /**
   * How far the handshake got, for the listener's admission control (LinkServer evicts the
   * least advanced, oldest unidentified connection first): 0 nothing received, 1 a TLS
   * ClientHello (or, without TLS, some bytes), 2 identified (certificate verified).
   */
  progress: 0 | 1 | 2 = 0;
  /** Frames may be written: TLS is up (or there is no TLS). A REFUSE before that would be garbage. */
  private transportUp = false;
  private readonly reader = new MessageReader();
  private readonly encoder = new FrameEncoder();
  private readonly clock: Clock;
  private readonly known: LinkLogger;
  private readonly stranger: LinkLogger;
  /** The logger for this moment: rate-limited until the peer is identified. */
  private get log(): LinkLogger {
    return this.certified !== undefined || this.everEstablished ? this.known : this.stranger;
  }
  private readonly o: Required<Omit<LinkTimingOptions, 'clock' | 'logger' | 'randomBytes' | 'heartbeatState' | 'heartbeatStateOf' | 'inflightWritesMax' | 'inflightBytesMax'>>;
  private readonly options: LinkOptions;
  /** WRITEs this side sent and the peer has not acknowledged. */
  readonly sendWindow: InflightWindow;
  /** WRITEs the peer sent and this side has not acknowledged (refused past the limit). */
  readonly receiveWindow: InflightWindow;
  private heartbeatState: () => { epoch: bigint; lastSeq: bigint };
  private timer: TimerHandle | undefined;
  private graceTimer: TimerHandle | undefined;
  private lastRxMs: number;
  private echoTimeUs = 0n;
  private echoRxMs = 0;
  private closeInfo: LinkClose | undefined;
  private closeEmitted = false;
  private peerName: string | undefined;
  private everEstablished = false;
  private corked = false;
  /** Latest round-trip time measured by heartbeats, in milliseconds. */
  rttMs: number | undefined;
  /** Frames received and sent since the link started. */
  framesRx = 0;
  framesTx = 0;

  constructor(raw: Socket, options: LinkOptions) {
    super();
    this.options = options;
    this.role = options.role;
    this.clock = options.clock ?? systemClock;
    this.known = options.logger ?? silentLogger;
    this.stranger = options.strangerLogger ?? this.known;
    this.o = {
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? linkDefaults.heartbeatIntervalMs,
      linkTimeoutMs: options.linkTimeoutMs ?? linkDefaults.linkTimeoutMs,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? linkDefaults.handshakeTimeoutMs,
      sendQueueBytesMax: options.sendQueueBytesMax ?? linkDefaults.sendQueueBytesMax,
      closeGraceMs: options.closeGraceMs ?? linkDefaults.closeGraceMs,
      frameDeadlineMs: options.frameDeadlineMs ?? linkDefaults.frameDeadlineMs,
    };
    if (!(this.o.heartbeatIntervalMs > 0 && this.o.heartbeatIntervalMs < this.o.linkTimeoutMs)) {
      throw new RangeError(`link: heartbeatIntervalMs (${this.o.heartbeatIntervalMs}) must be > 0 and below linkTimeoutMs (${this.o.linkTimeoutMs})`);
    }
    if (this.o.sendQueueBytesMax < raw.writableHighWaterMark) {
      // 'drain' only fires after a write crossed the socket's high-water mark; a smaller bound
      // would leave whenWritable() waiting for an event that never comes.
      throw new RangeError(`link: sendQueueBytesMax (${this.o.sendQueueBytesMax}) must be at least the socket's writableHighWaterMark (${raw.writableHighWaterMark})`);
    }
    this.sendWindow = new InflightWindow(options.inflightWritesMax ?? inflightWritesMax, options.inflightBytesMax ?? inflightBytesMax);
    this.receiveWindow = new InflightWindow(options.inflightWritesMax ?? inflightWritesMax, options.inflightBytesMax ?? inflightBytesMax);
    const of = options.heartbeatStateOf;
    this.heartbeatState = of !== undefined ? () => of(this.group) : options.heartbeatState ?? (() => ({ epoch: 0n, lastSeq: 0n }));
    this.remote = `${raw.remoteAddress ?? '?'}:${raw.remotePort ?? '?'}`;
    this.lastRxMs = this.clock.nowMs();
    if (options.peer !== undefined) this.peerName = options.peer;
    raw.setNoDelay(true);
    const sec = options.security;
    let socket: Socket = raw;
    if (sec.transport === 'tls') {
      // Both ends verify the chain themselves (rejectUnauthorized: false, then the checks in
      // onSecure), so every refusal has a reason in the log and, inside TLS, in a REFUSE frame.
      const secureContext = sec.tls.secureContext();
      const t: TLSSocket = options.role === 'listener'
        ? new TLSSocket(raw, { isServer: true, secureContext, requestCert: true, rejectUnauthorized: false })
        : tlsConnect({ socket: raw, secureContext, rejectUnauthorized: false, checkServerIdentity: () => undefined });
      t.once(options.role === 'listener' ? 'secure' : 'secureConnect', () => this.onSecure(t));
      // The first key material exists once a well-formed ClientHello was answered.
      if (options.role === 'listener') t.once('keylog', () => (this.progress = Math.max(this.progress, 1) as 0 | 1 | 2));
      socket = t;
    }
    this.socket = socket;
    // Received bytes land in one buffer per link, reused for every read (src/net/read-into.ts);
    // the parser copies out what it hands on. 'data' events (a fresh buffer per read) where
    // this Node cannot.
    const rx = Buffer.allocUnsafeSlow(linkReadBufferBytes);
    if (!readInto(socket, rx, (n, b) => this.onData(b.subarray(0, n), true))) socket.on('data', (chunk: Buffer) => this.onData(chunk, false));
    socket.on('error', (err: NodeJS.ErrnoException & { reason?: string }) => {
      // TLS errors say more in code/reason (ERR_SSL_DECRYPTION_FAILED_OR_BAD_RECORD_MAC: a
      // record altered on the path) than in message ("write EPROTO").
      const detail = [err.code, err.reason].filter((x) => x !== undefined && !err.message.includes(String(x))).join(', ');
      this.onTransportEnd(`${sec.transport === 'tls' && this.hs === undefined ? 'TLS handshake failed' : sec.transport === 'tls' ? 'TLS error' : 'socket error'}: ${err.message}${detail ? ` (${detail})` : ''}`);
    });
    socket.on('close', () =>
      this.onTransportEnd(sec.transport === 'tls' && this.hs === undefined ? 'connection closed during the TLS handshake (a client without TLS or a certificate, or a handshake altered on the path)' : 'connection closed by the peer without a reason'),
    );
    socket.on('drain', () => this.emit('drain'));
    this.timer = this.clock.setTimeout(() => {
      this.fail(ErrorCode.HANDSHAKE_TIMEOUT, `handshake not finished within handshakeTimeoutMs (${this.o.handshakeTimeoutMs} ms)${this.hs === undefined && sec.transport === 'tls' ? ' (still in the TLS handshake)' : ''}`);
    }, this.o.handshakeTimeoutMs);
    if (sec.transport === 'insecure') {
      this.transportUp = true;
      this.startHandshake(undefined, undefined);
    }
  }

  /** TLS is up: check the peer's certificate, then start the replication handshake inside it. */
  private onSecure(t: TLSSocket): void {
    if (this.closeInfo) return;
    const sec = this.options.security;
    if (sec.transport !== 'tls') return;
    this.transportUp = true;
    // Read once: node hands the peer certificate out as a fresh object per call.
    const leaf = t.getPeerX509Certificate();
    const bad = peerCertificateProblem(leaf, sec.tls.trusted());
    const who = bad === undefined ? certifiedSite(leaf, sec.tls.cluster) : { problem: bad };
    if ('problem' in who) {
      this.fail(ErrorCode.AUTH_FAILED, `TLS peer refused: ${who.problem}`);
      return;
    }
    if (this.role === 'dialer' && who.site !== this.options.peer) {
      this.fail(ErrorCode.WRONG_SITE, `dialed '${this.options.peer}' but the certificate at ${this.remote} names site '${who.site}': check the address configured for '${this.options.peer}'`);
      return;
    }
    this.certified = who.site;
    this.peerCertificate = leaf;
    this.progress = 2;
    this.emit('identified', who.site);
    this.startHandshake(who.site, t.exportKeyingMaterial(channelBindingBytes, channelBindingLabel, Buffer.alloc(0)));
  }

  private startHandshake(peerIdentity: string | undefined, channelBinding: Buffer | undefined): void {
    const options = this.options;
    this.hs = new Handshake({
      role: options.role,
      cluster: options.cluster,
      site: options.site,
      secret: options.secret,
      geometry: options.security.geometry,
      randomBytes: options.randomBytes ?? cryptoRandomBytes,
      ...(peerIdentity !== undefined ? { peerIdentity } : {}),
      ...(channelBinding !== undefined ? { channelBinding } : {}),
      ...(options.peer !== undefined ? { peer: options.peer } : {}),
      ...(options.acceptPeer !== undefined ? { acceptPeer: options.acceptPeer } : {}),
      ...(options.seenNonce !== undefined ? { seenNonce: options.seenNonce } : {}),
      ...(options.geometryOf !== undefined ? { geometryOf: options.geometryOf } : {}),
    });
    this.applyStep(this.hs.start());
  }

  /**
   * Who the peer is, for log lines: the authenticated name once established (the dialed one for a
   * dialer), else the site its verified certificate names (a listener refusing a handshake of an
   * identified peer still names it), else undefined (the line has the remote address).
   */
  private get logPeer(): string | undefined {
    return this.peerName ?? this.certified;
  }

  /** TLS: the site the peer's verified certificate names (before and after establishment). */
  get certifiedPeer(): string | undefined {
    return this.certified;
  }

  get state(): LinkState {
    return this.st;
  }
  /** The peer's site name: the authenticated one once established (dialer: the one it dialed). */
  get peer(): string | undefined {
    return this.peerName;
  }
  /**
   * Where this link's HEARTBEATs take epoch and last seq from from now on: a link accepted on a
   * port shared by several consistency groups (issue 20) learns its group only from HELLO, so
   * the group's Peers sets it when the link is handed over.
   */
  heartbeatFrom(fn: () => { epoch: bigint; lastSeq: bigint }): void {
    this.heartbeatState = fn;
  }

  /** The consistency group this link carries (issue 20; 0 in a single-volume cluster). */
  get group(): number {
    return this.hs?.group ?? this.options.security.geometry.group ?? 0;
  }
  /** True once the handshake succeeded (stays true after close). */
  get wasEstablished(): boolean {
    return this.everEstablished;
  }
  /** Why the link closed (once closed or closing). */
  get closed(): LinkClose | undefined {
    return this.closeInfo;
  }
  /** Bytes waiting in the socket to be sent. */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  /** Resolves with the peer's name once authenticated; rejects if the link closes first. */
  whenEstablished(): Promise<string> {
    if (this.st === 'established') return Promise.resolve(this.peerName!);
    if (this.closeInfo) return Promise.reject(new LinkClosedError(this.closeInfo, 'link closed before it was established'));
    return new Promise((resolve, reject) => {
      const onEst = (peer: string) => {
        this.off('close', onClose);
        resolve(peer);
      };
      const onClose = (info: LinkClose) => {
        this.off('established', onEst);
        reject(new LinkClosedError(info, 'link closed before it was established'));
      };
      this.once('established', onEst);
      this.once('close', onClose);
    });
  }

  /**
   * Sends one data message as one vectored write (payload not copied: do not change a WRITE's
   * data until the write is acknowledged). Returns false when the caller must wait before the
   * next send: the send queue is at or above sendQueueBytesMax, or the in-flight window of
   * unacknowledged WRITEs is full; await whenWritable(). Throws if called while the queue is
   * full, with a WRITE that does not fit the window, or when not established (caller bugs,
   * named in the message). ACK/WRITE_ACK sent here open the receive window.
   */
  send(msg: DataMessage): boolean {
    if (this.st !== 'established') {
      throw new Error(`link to '${this.peerName ?? this.remote}' is ${this.st}: cannot send ${msg.type}${this.closeInfo ? ` (${this.closeInfo.reason})` : ''}`);
    }
    if (specByName.get(msg.type)?.phase === 'handshake') throw new Error(`link: ${msg.type} is a handshake message; the link sends those itself`);
    if (this.socket.writableLength >= this.o.sendQueueBytesMax) {
      throw new Error(`link to '${this.peerName}': send queue is full (${this.socket.writableLength} bytes >= sendQueueBytesMax ${this.o.sendQueueBytesMax}); await link.whenWritable() after send() returns false`);
    }
    switch (msg.type) {
      case 'WRITE':
        if (!this.sendWindow.fits(msg.data.length)) {
          throw new Error(`link to '${this.peerName}': in-flight window is full (${this.sendWindow.writes} writes, ${this.sendWindow.bytes} bytes unacknowledged; inflightWritesMax ${this.sendWindow.writesMax}, inflightBytesMax ${this.sendWindow.bytesMax}); await link.whenWritable() after send() returns false`);
        }
        this.sendWindow.add(msg.epoch, msg.seq, msg.data.length);
        break;
      case 'WRITE_ACK':
        this.receiveWindow.ackOne(msg.epoch, msg.seq);
        break;
      case 'ACK':
        this.receiveWindow.ackUpTo(msg.epoch, msg.seq);
        break;
      default:
        break;
    }
    this.write(msg);
    return this.writable;
  }

  /** True when send() may be called without waiting (queue below its bound, window open). */
  get writable(): boolean {
    return this.socket.writableLength < this.o.sendQueueBytesMax && this.sendWindow.open;
  }

  /** Resolves when send() may be called again; rejects if the link closes. */
  whenWritable(): Promise<void> {
    if (this.closeInfo) return Promise.reject(new LinkClosedError(this.closeInfo, `link to '${this.peerName ?? this.remote}' closed`));
    if (this.writable) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!this.writable) return;
        done();
        resolve();
      };
      const onClose = (info: LinkClose) => {
        done();
        reject(new LinkClosedError(info, `link to '${this.peerName ?? this.remote}' closed`));
      };
      const done = () => {
        this.off('drain', check);
        this.off('window', check);
        this.off('close', onClose);
      };
      this.on('drain', check);
      this.on('window', check);
      this.once('close', onClose);
    });
  }

  /** Orderly close: send ERROR (or REFUSE while handshaking) with the code and reason, then end. */
  close(code: ErrorCode = ErrorCode.SHUTDOWN, reason = 'link closed by this site'): void {
    this.fail(code, reason, 'info');
  }

  // ---- internals ----

  private write(msg: Message): void {
    const parts = this.encoder.encode(msg);
    this.framesTx++;
    // Every frame sent in one event-loop turn goes out in one writev: cork at the first, uncork
    // at the end of the turn (bench/wire.ts: uncorking per frame cost ~40% of throughput). Not
    // the next tick: that is the end of one socket read's callback, and a turn that reads
    // several sockets (NBD requests, journal completions, acks) then paid one writev, and one
    // TLS record, per read (issue 18: the primary's socket writev was ~27% of its CPU at 4 KiB).
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(this.uncork);
    }
    for (const p of parts) this.socket.write(p);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private onData(chunk: Buffer, transient: boolean): void {
    if (this.st === 'closed') return;
    const now = this.clock.nowMs();
    this.lastRxMs = now;
    if (this.progress === 0) this.progress = 1;
    if (this.reader.frames.bufferedBytes === 0) this.frameProgressMs = now;
    try {
      this.reader.push(
        chunk,
        (msg) => {
          this.frameProgressMs = now;
          this.onMessage(msg);
        },
        transient,
      );
    } catch (e) {
      if (e instanceof ProtocolError) this.fail(e.code, e.reason);
      else {
        // A bug in a handler: the stack goes to our log, never onto the wire.
        this.log.warn({ peer: this.logPeer, remote: this.remote, err: (e as Error).stack ?? String(e) }, 'link handler threw');
        this.fail(ErrorCode.INTERNAL, 'internal error while handling a frame; see the log of this site');
      }
    }
  }

  private onMessage(msg: Message): void {
    if (this.st === 'closed') return;
    this.framesRx++;
    if (this.st === 'handshaking') {
      if (this.hs === undefined) return; // cannot happen: no frame arrives before TLS is up
      this.applyStep(this.hs.receive(msg));
      return;
    }
    switch (msg.type) {
      case 'ERROR':
      case 'REFUSE':
        this.endByPeer(msg.code, msg.reason);
        return;
      case 'HELLO':
      case 'CHALLENGE':
      case 'RESPONSE':
      case 'WELCOME':
        this.fail(ErrorCode.UNEXPECTED_MESSAGE, `${msg.type} frame after the link was established`);
        return;
      case 'HEARTBEAT':
        this.onHeartbeat(msg);
        return;
      case 'WRITE':
        if (!this.receiveWindow.fits(msg.data.length)) {
          this.fail(
            ErrorCode.WINDOW_EXCEEDED,
            `'${this.peerName}' sent WRITE seq ${msg.seq} with ${this.receiveWindow.writes} writes / ${this.receiveWindow.bytes} bytes already unacknowledged (inflightWritesMax ${this.receiveWindow.writesMax}, inflightBytesMax ${this.receiveWindow.bytesMax})`,
          );
          return;
        }
        this.receiveWindow.add(msg.epoch, msg.seq, msg.data.length);
        this.emit('message', msg);
        return;
      case 'WRITE_ACK':
        this.sendWindow.ackOne(msg.epoch, msg.seq);
        this.emit('message', msg);
        this.emit('window');
        return;
      case 'ACK':
        this.sendWindow.ackUpTo(msg.epoch, msg.seq);
        this.emit('message', msg);
        this.emit('window');
        return;
      default:
        this.emit('message', msg);
    }
  }

  private applyStep(step: HandshakeStep): void {
    if (step.state === 'refused') {
      const r = step.refusal!;
      if (r.by === 'peer') {
        this.endByPeer(r.code, r.reason.replace(/^[A-Z_0-9]+: /, ''));
      } else {
        this.fail(r.code as ErrorCode, r.reason); // sends the REFUSE the step carries
      }
      return;
    }
    for (const m of step.send) this.write(m);
    if (step.state === 'established') {
      this.st = 'established';
      this.everEstablished = true;
      this.peerName = this.hs!.peerSite!;
      this.clock.clearTimeout(this.timer!);
      this.lastRxMs = this.clock.nowMs();
      this.log.info({ peer: this.peerName, remote: this.remote, role: this.role }, 'link established');
      this.tick(); // first heartbeat now, then every interval
      this.emit('established', this.peerName);
    }
  }

  private tick(): void {
    if (this.st !== 'established') return;
    const now = this.clock.nowMs();
    if (now - this.lastRxMs >= this.o.linkTimeoutMs) {
      this.fail(ErrorCode.LINK_TIMEOUT, `nothing received from '${this.peerName}' for ${Math.round(now - this.lastRxMs)} ms (linkTimeoutMs ${this.o.linkTimeoutMs})`);
      return;
    }
    const held = this.reader.frames.bufferedBytes;
    if (held > 0 && now - this.frameProgressMs >= this.o.frameDeadlineMs) {
      this.fail(ErrorCode.LINK_TIMEOUT, `'${this.peerName}' sent ${held} bytes of a frame and no complete frame for ${Math.round(now - this.frameProgressMs)} ms (frameDeadlineMs ${this.o.frameDeadlineMs})`);
      return;
    }
    const { epoch, lastSeq } = this.heartbeatState();
    const echoHeldUs = this.echoTimeUs === 0n ? 0 : Math.min(0xffffffff, Math.max(0, Math.round((now - this.echoRxMs) * 1000)));
    this.write({ type: 'HEARTBEAT', epoch, lastSeq, sendTimeUs: this.nowUs(now), echoTimeUs: this.echoTimeUs, echoHeldUs });
    this.timer = this.clock.setTimeout(() => this.tick(), this.o.heartbeatIntervalMs);
  }

  private nowUs(nowMs: number): bigint {
    return BigInt(Math.max(1, Math.round(nowMs * 1000))); // 0 means "no echo" on the wire
  }

  private onHeartbeat(msg: HeartbeatMsg): void {
    const now = this.clock.nowMs();
    this.echoTimeUs = msg.sendTimeUs;
    this.echoRxMs = now;
    let rtt: number | undefined;
    if (msg.echoTimeUs !== 0n) {
      const us = Number(this.nowUs(now) - msg.echoTimeUs) - msg.echoHeldUs;
      if (us >= 0) {
        rtt = us / 1000;
        this.rttMs = rtt;
      }
    }
    this.emit('heartbeat', msg, rtt);
  }

  /** End the link from this side: log, send REFUSE/ERROR with the reason, end the socket. */
  private fail(code: ErrorCode, reason: string, level: 'warn' | 'info' = 'warn'): void {
    if (this.closeInfo) return;
    const wasHandshaking = this.st === 'handshaking';
    this.closeInfo = { code, reason, by: 'local' };
    this.log[level](
      { peer: this.logPeer, remote: this.remote, role: this.role, code, codeName: errorCodeName(code), reason },
      wasHandshaking ? 'link refused' : 'link closed',
    );
    this.st = 'closed';
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    if (!this.socket.destroyed && this.socket.writable && this.transportUp) {
      this.write(wasHandshaking ? { type: 'REFUSE', code, reason } : { type: 'ERROR', code, reason });
      this.socket.end();
      this.graceTimer = this.clock.setTimeout(() => this.socket.destroy(), this.o.closeGraceMs);
    } else {
      this.socket.destroy();
    }
    this.emitClose();
  }

  private endByPeer(code: number, reason: string): void {
    if (this.closeInfo) return;
    const wasHandshaking = this.st === 'handshaking';
    this.closeInfo = { code, reason: `${errorCodeName(code)} from '${this.peerName ?? this.remote}': ${reason}`, by: 'peer' };
    this.log.warn(
      { peer: this.logPeer, remote: this.remote, role: this.role, code, codeName: errorCodeName(code), reason, by: 'peer' },
      wasHandshaking ? 'link refused by peer' : 'link closed by peer',
    );
    this.st = 'closed';
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.socket.end();
    this.graceTimer = this.clock.setTimeout(() => this.socket.destroy(), this.o.closeGraceMs);
    this.emitClose();
  }

  private onTransportEnd(reason: string): void {
    if (this.socket.destroyed && this.graceTimer !== undefined) this.clock.clearTimeout(this.graceTimer);
    if (this.closeInfo) {
      this.socket.destroy();
      return;
    }
    this.closeInfo = { code: undefined, reason: `link to '${this.peerName ?? this.remote}': ${reason}`, by: 'transport' };
    this.log.warn({ peer: this.logPeer, remote: this.remote, role: this.role, reason }, 'link lost');
    this.st = 'closed';
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.socket.destroy();
    this.emitClose();
  }

  private emitClose(): void {
    if (this.closeEmitted) return;
    this.closeEmitted = true;
    // Asynchronously, so a 'close' handler never runs inside our own data or send path.
    queueMicrotask(() => this.emit('close', this.closeInfo!));
  }
}

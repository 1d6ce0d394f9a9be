// A hostile but authenticated peer for the issue 17 acceptance tests: it dials a site as a REAL
// site of the cluster would (that site's certificate and key from the cluster CA, the cluster
// key, mutual TLS 1.3, the v2 HMAC handshake bound to the TLS session), and then sends whatever
// the test wants: well-formed frames a site of its role must not send, malformed frames with
// good checksums, or raw bytes. It numbers frames itself (frameSeq), so a test controls every
// byte; it keeps the link alive with heartbeats of the epoch it is told.
//
// Built from src/wire (Handshake, MessageReader, encodeFrameParts, writeHeader) and node:tls,
// with the site's own TLS options (src/site/link-security.ts): the same bytes a real site sends
// up to the first frame the test chooses.
import { createSecureContext, connect as tlsConnect, type TLSSocket } from 'node:tls';
import { randomBytes } from 'node:crypto';
import type { ClusterConfig } from '../../src/site/config.js';
import { readSecret } from '../../src/site/config.js';
import { loadSiteTls } from '../../src/site/pki.js';
import { tlsContextOptions } from '../../src/site/link-security.js';
import { certifiedSite, channelBindingBytes, channelBindingLabel } from '../../src/net/security.js';
import {
  Handshake,
  MessageReader,
  ProtocolError,
  crc32,
  encodeFrameParts,
  errorCodeName,
  headerBytes,
  writeHeader,
  type Message,
  type VolumeGeometry,
} from '../../src/wire/index.js';

export interface RogueOptions {
  /** The cluster file the identity comes from (a copy may add a site the running sites do not know). */
  readonly config: ClusterConfig;
  /** Whose identity: that site's certificate and key (and the cluster key). */
  readonly as: string;
  /** The site dialed (HELLO target) and its port on 127.0.0.1. */
  readonly target: string;
  readonly port: number;
  /** The volume geometry claimed in HELLO; default the cluster file's. */
  readonly geometry?: VolumeGeometry;
  /** Epoch carried by this peer's heartbeats (default 0: "no epoch", fences nobody). */
  readonly heartbeatEpoch?: bigint;
  /** Heartbeat interval; default 100 ms (the e2e sites time links out after 600 ms). */
  readonly heartbeatMs?: number;
  /** Give up on the TLS + HMAC handshake after this long. */
  readonly handshakeTimeoutMs?: number;
}

export interface RogueClose {
  /** peer: the site sent ERROR/REFUSE (code, reason); transport: the connection ended without one. */
  readonly by: 'peer' | 'transport' | 'local';
  readonly code?: number;
  readonly reason: string;
}

/** Thrown by RoguePeer.connect when the site refused the handshake. */
export class RogueRefused extends Error {
  constructor(readonly close: RogueClose) {
    super(`refused: ${close.code !== undefined ? `${errorCodeName(close.code)}: ` : ''}${close.reason}`);
  }
}

export class RoguePeer {
  private frameSeqNext = 0;
  private readonly reader = new MessageReader();
  private hs: Handshake | undefined;
  private hbTimer: NodeJS.Timeout | undefined;
  private closeInfo: RogueClose | undefined;
  private readonly closeWaiters: ((c: RogueClose) => void)[] = [];
  private readonly msgWaiters: { pred: (m: Message) => boolean; resolve: (m: Message) => void }[] = [];
  /** Every data message the site sent us (heartbeats excluded). */
  readonly received: Message[] = [];
  heartbeatEpoch: bigint;

  private constructor(
    private readonly socket: TLSSocket,
    private readonly o: RogueOptions,
  ) {
    this.heartbeatEpoch = o.heartbeatEpoch ?? 0n;
  }

  /** Dials, runs TLS and the handshake; resolves once established, rejects with RogueRefused otherwise. */
  static connect(o: RogueOptions): Promise<RoguePeer> {
    const mat = loadSiteTls(o.config, o.as);
    const socket = tlsConnect({
      host: '127.0.0.1',
      port: o.port,
      secureContext: createSecureContext(tlsContextOptions(mat)),
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    });
    const p = new RoguePeer(socket, o);
    return new Promise<RoguePeer>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        p.end({ by: 'local', reason: `handshake not done within ${o.handshakeTimeoutMs ?? 10_000} ms` });
        reject(new RogueRefused(p.closeInfo!));
      }, o.handshakeTimeoutMs ?? 10_000);
      p.onClose((c) => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        reject(new RogueRefused(c));
      });
      p.onEstablished = () => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        resolve(p);
      };
      socket.on('error', (err) => p.end({ by: 'transport', reason: `socket error: ${err.message}` }));
      socket.on('close', () => p.end({ by: 'transport', reason: 'connection closed' }));
      socket.on('data', (chunk: Buffer) => p.onData(chunk));
      socket.once('secureConnect', () => p.onSecure());
    });
  }

  private onEstablished: () => void = () => undefined;

  private onSecure(): void {
    const leaf = this.socket.getPeerX509Certificate();
    const who = certifiedSite(leaf, this.o.config.cluster);
    const binding = this.socket.exportKeyingMaterial(channelBindingBytes, channelBindingLabel, Buffer.alloc(0));
    const cfgGeo = { volumeBytes: BigInt(this.o.config.volume.sizeBytes), blockBytes: this.o.config.volume.blockSize };
    this.hs = new Handshake({
      role: 'dialer',
      cluster: this.o.config.cluster,
      site: this.o.as,
      secret: readSecret(this.o.config),
      peer: this.o.target,
      geometry: this.o.geometry ?? cfgGeo,
      randomBytes,
      channelBinding: binding,
      ...('site' in who ? { peerIdentity: who.site } : {}),
    });
    const step = this.hs.start();
    for (const m of step.send) this.send(m);
  }

  private onData(chunk: Buffer): void {
    if (this.closeInfo) return;
    try {
      this.reader.push(chunk, (m) => this.onMessage(m));
    } catch (e) {
      const reason = e instanceof ProtocolError ? `site sent a frame we cannot parse: ${e.reason}` : String(e);
      this.end({ by: 'local', reason });
    }
  }

  private onMessage(m: Message): void {
    if (this.hs !== undefined && this.hs.state !== 'established') {
      const step = this.hs.receive(m);
      for (const out of step.send) if (out.type !== 'REFUSE') this.send(out);
      if (step.state === 'refused') {
        this.end({ by: step.refusal!.by === 'peer' ? 'peer' : 'local', code: step.refusal!.code, reason: step.refusal!.reason });
        return;
      }
      if (step.state === 'established') {
        this.startHeartbeats();
        this.onEstablished();
      }
      return;
    }
    if (m.type === 'ERROR' || m.type === 'REFUSE') {
      this.end({ by: 'peer', code: m.code, reason: m.reason });
      return;
    }
    if (m.type === 'HEARTBEAT') return;
    this.received.push(m);
    for (const w of [...this.msgWaiters]) {
      if (w.pred(m)) {
        this.msgWaiters.splice(this.msgWaiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  }

  private startHeartbeats(): void {
    const every = this.o.heartbeatMs ?? 100;
    const beat = () => {
      if (this.closeInfo) return;
      this.send({ type: 'HEARTBEAT', epoch: this.heartbeatEpoch, lastSeq: 0n, sendTimeUs: BigInt(Math.round(performance.now() * 1000)) + 1n, echoTimeUs: 0n, echoHeldUs: 0 });
      this.hbTimer = setTimeout(beat, every);
    };
    beat();
  }

  private end(c: RogueClose): void {
    if (this.closeInfo) return;
    this.closeInfo = c;
    if (this.hbTimer) clearTimeout(this.hbTimer);
    this.socket.destroy();
    for (const w of this.closeWaiters.splice(0)) w(c);
  }

  private onClose(fn: (c: RogueClose) => void): void {
    if (this.closeInfo) fn(this.closeInfo);
    else this.closeWaiters.push(fn);
  }

  get isOpen(): boolean {
    return this.closeInfo === undefined;
  }

  get closed(): RogueClose | undefined {
    return this.closeInfo;
  }

  /** Resolves when the link ends (at once if it has). */
  whenClosed(): Promise<RogueClose> {
    return new Promise((r) => this.onClose(r));
  }

  /** Resolves with the first message (from now on) `pred` accepts; undefined if the link ends or `timeoutMs` passes first. */
  waitMessage(pred: (m: Message) => boolean, timeoutMs: number): Promise<Message | undefined> {
    if (this.closeInfo) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const w = { pred, resolve: (m: Message | undefined) => done(m) };
      const t = setTimeout(() => done(undefined), timeoutMs);
      const done = (m: Message | undefined) => {
        clearTimeout(t);
        const i = this.msgWaiters.indexOf(w as never);
        if (i >= 0) this.msgWaiters.splice(i, 1);
        resolve(m);
      };
      this.msgWaiters.push(w as never);
      this.onClose(() => done(undefined));
    });
  }

  /** The frameSeq the next frame must carry. */
  get frameSeq(): number {
    return this.frameSeqNext;
  }

  /** Encodes and sends one message (numbered like a real site's next frame). */
  send(m: Message): void {
    this.sendRaw(Buffer.concat(encodeFrameParts(m, this.frameSeqNext)));
  }

  /** Sends bytes as they are; `frames` is how many frame numbers they use up (1 per whole frame). */
  sendRaw(bytes: Buffer, frames = 1): void {
    if (this.closeInfo) return;
    this.frameSeqNext = (this.frameSeqNext + frames) >>> 0;
    this.socket.write(bytes);
  }

  /** A frame of `type` with this body, numbered next, with good checksums (a valid frame whatever the body says). */
  frame(type: number, body: Buffer, flags = 0): Buffer {
    return wrapFrame(type, body, this.frameSeqNext, flags);
  }

  close(): void {
    this.end({ by: 'local', reason: 'closed by the test' });
  }
}

/** Header + body with good CRCs; `flags` other than 0 goes into the header after the header CRC is computed over it. */
export function wrapFrame(type: number, body: Buffer, frameSeq: number, flags = 0): Buffer {
  const h = Buffer.alloc(headerBytes);
  writeHeader(h, 0, type, body.length, frameSeq, body.length === 0 ? 0 : crc32(body));
  if (flags !== 0) {
    h.writeUInt16BE(flags, 6);
    h.writeUInt32BE(crc32(h.subarray(0, 20)), 20);
  }
  return Buffer.concat([h, body]);
}

/** The body of a message as encodeFrame lays it out (frameSeq does not matter for the body). */
export function bodyOf(m: Message): Buffer {
  return Buffer.concat(encodeFrameParts(m, 0)).subarray(headerBytes);
}

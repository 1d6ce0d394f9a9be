// Mutual authentication of two sites as a pure state machine: messages in, messages out,
// established or refused with a reason. No sockets, no clock, no randomness of its own (nonces
// come from the injected randomBytes), so the conformance vectors replay it byte for byte.
//
//   dialer                                   listener
//   HELLO(versions, nonceD, cluster, me, you) ->
//                                          <- CHALLENGE(version, nonceL, cluster, me)
//   RESPONSE(HMAC(secret, input("dialer")))  ->
//                                          <- WELCOME(HMAC(secret, input("listener")))
//
// Inside TLS (issue 17) the HMAC exchange is a second factor: the certificate says which site
// the peer is (peerIdentity, checked against the name it claims), and the MACs also cover the
// TLS channel binding (RFC 5705 exporter), so a proof made on one TLS session is worthless on any
// other, and the volume geometry, which both sides must agree on (GEOMETRY_MISMATCH otherwise).
//
// The dialer proves first, so a stranger never gets a MAC of the secret over a nonce of its
// choosing. Both nonces are fresh per connection, so a recorded RESPONSE or WELCOME is worthless
// on another connection; the listener also remembers recent HELLO nonces and refuses a replayed
// HELLO outright (REPLAYED_NONCE). The secret itself never crosses the wire.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { ErrorCode, ProtocolError, errorCodeName } from './errors.js';
import {
  macBytes,
  nonceBytes,
  protocolVersionMax,
  protocolVersionMin,
  specByName,
  type ChallengeMsg,
  type Message,
} from './frames.js';

export type HandshakeRole = 'dialer' | 'listener';

/** The volume both ends must agree on: a site with another size or block size is refused. */
export interface VolumeGeometry {
  readonly volumeBytes: bigint;
  readonly blockBytes: number;
  /** Consistency group (issue 20): HELLO's group, 0 (absent) in a single-volume cluster. */
  readonly group?: number;
}

export interface HandshakeOptions {
  readonly role: HandshakeRole;
  readonly cluster: string;
  /** This site's name. */
  readonly site: string;
  /** The cluster secret (contents of the secret file). Never sent. */
  readonly secret: Buffer;
  /** Dialer: the site it means to reach. */
  readonly peer?: string;
  /** Listener: is this site name allowed to connect? */
  readonly acceptPeer?: (site: string) => boolean;
  /** Listener: returns true if this nonce was seen before (and records it). */
  readonly seenNonce?: (nonce: Buffer) => boolean;
  readonly randomBytes: (n: number) => Buffer;
  /** This site's volume geometry (from its cluster file); the peer's must be equal. Dialer: with the group it dials. */
  readonly geometry: VolumeGeometry;
  /**
   * Listener with several consistency groups (issue 20): the geometry of the group a HELLO
   * names, undefined when this site carries no such group. Default: `geometry` for its group.
   */
  readonly geometryOf?: (group: number) => VolumeGeometry | undefined;
  /**
   * The peer's site name as its TLS certificate states it (verified by the transport against
   * the cluster CA); the name claimed in HELLO/CHALLENGE must equal it. Undefined on a
   * `transport: insecure` link, where the HMAC alone authenticates.
   */
  readonly peerIdentity?: string;
  /** TLS exporter bytes of this connection, covered by both MACs (empty without TLS). */
  readonly channelBinding?: Buffer;
  readonly versionMin?: number;
  readonly versionMax?: number;
}

export type HandshakeState = 'start' | 'awaitHello' | 'awaitChallenge' | 'awaitResponse' | 'awaitWelcome' | 'established' | 'refused';

export interface Refusal {
  readonly code: number;
  readonly reason: string;
  /** 'local': we refused (and send REFUSE); 'peer': the peer's REFUSE arrived. */
  readonly by: 'local' | 'peer';
}

export interface HandshakeStep {
  readonly send: Message[];
  readonly state: HandshakeState;
  readonly refusal?: Refusal;
}

/** The bytes both MACs cover. Documented in docs/PROTOCOL.md, "Authentication". */
export function authInput(
  label: 'dialer' | 'listener',
  version: number,
  nonceDialer: Buffer,
  nonceListener: Buffer,
  cluster: string,
  dialer: string,
  listener: string,
  geometry: VolumeGeometry,
  channelBinding: Buffer = Buffer.alloc(0),
): Buffer {
  const str8 = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    return Buffer.concat([Buffer.from([b.length]), b]);
  };
  const u64 = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    return b;
  };
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  if (channelBinding.length > 255) throw new Error(`authInput: channel binding of ${channelBinding.length} bytes (at most 255)`);
  return Buffer.concat([
    Buffer.from(`geomirror-auth-${label}\0`, 'ascii'),
    Buffer.from([version]),
    nonceDialer,
    nonceListener,
    str8(cluster),
    str8(dialer),
    str8(listener),
    u64(geometry.volumeBytes),
    u32(geometry.blockBytes),
    // The group is covered too (issue 20), only when not 0 so single-volume MACs stay as they were.
    ...(geometry.group ? [Buffer.from('group\0', 'ascii'), u32(geometry.group)] : []),
    Buffer.from([channelBinding.length]),
    channelBinding,
  ]);
}

export function authMac(secret: Buffer, input: Buffer): Buffer {
  return createHmac('sha256', secret).update(input).digest();
}

export class Handshake {
  private st: HandshakeState = 'start';
  /** The geometry of this connection: ours (dialer), or the group's a HELLO named (listener). */
  private geometry!: VolumeGeometry;
  private nonceDialer: Buffer | undefined;
  private nonceListener: Buffer | undefined;
  private version = 0;
  private dialerName = '';
  private listenerName = '';
  private refusalValue: Refusal | undefined;
  readonly versionMin: number;
  readonly versionMax: number;

  constructor(private readonly o: HandshakeOptions) {
    if (o.secret.length === 0) throw new Error('handshake: the cluster secret is empty; put at least 32 random bytes in the secret file');
    if (o.role === 'dialer' && o.peer === undefined) throw new Error('handshake: a dialer must name the site it dials (peer)');
    if (o.role === 'listener' && o.acceptPeer === undefined) throw new Error('handshake: a listener needs acceptPeer');
    this.versionMin = o.versionMin ?? protocolVersionMin;
    this.versionMax = o.versionMax ?? protocolVersionMax;
    this.geometry = o.geometry;
  }

  /** The consistency group this connection carries (issue 20): the dialer's, as the listener accepted it. */
  get group(): number {
    return this.geometry.group ?? 0;
  }

  get state(): HandshakeState {
    return this.st;
  }
  /** The authenticated peer's site name (once established). */
  get peerSite(): string | undefined {
    if (this.st !== 'established') return undefined;
    return this.o.role === 'dialer' ? this.listenerName : this.dialerName;
  }
  get refusal(): Refusal | undefined {
    return this.refusalValue;
  }
  get negotiatedVersion(): number {
    return this.version;
  }

  /** Dialer: returns the HELLO to send. Listener: starts waiting for HELLO. */
  start(): HandshakeStep {
    if (this.st !== 'start') throw new Error(`handshake: start() called in state ${this.st}`);
    if (this.o.role === 'listener') {
      this.st = 'awaitHello';
      return { send: [], state: this.st };
    }
    this.nonceDialer = this.nonce();
    this.dialerName = this.o.site;
    this.st = 'awaitChallenge';
    return {
      send: [{
        type: 'HELLO', versionMin: this.versionMin, versionMax: this.versionMax, nonce: this.nonceDialer,
        volumeBytes: this.o.geometry.volumeBytes, blockBytes: this.o.geometry.blockBytes, group: this.o.geometry.group ?? 0, cluster: this.o.cluster, site: this.o.site, target: this.o.peer!,
      }],
      state: this.st,
    };
  }

  /** A protocol error from the parser while handshaking: refuse with its code. */
  fail(err: ProtocolError): HandshakeStep {
    return this.refuse(err.code, err.reason);
  }

  receive(msg: Message): HandshakeStep {
    if (this.st === 'established' || this.st === 'refused' || this.st === 'start') {
      throw new Error(`handshake: receive() in state ${this.st}`);
    }
    if (msg.type === 'REFUSE' || msg.type === 'ERROR') {
      this.st = 'refused';
      this.refusalValue = { code: msg.code, reason: `${errorCodeName(msg.code)}: ${msg.reason}`, by: 'peer' };
      return { send: [], state: this.st, refusal: this.refusalValue };
    }
    const expected: Record<string, Message['type']> = {
      awaitHello: 'HELLO', awaitChallenge: 'CHALLENGE', awaitResponse: 'RESPONSE', awaitWelcome: 'WELCOME',
    };
    if (msg.type !== expected[this.st]) {
      const isData = specByName.get(msg.type)?.phase === 'data';
      return isData
        ? this.refuse(ErrorCode.NOT_AUTHENTICATED, `${msg.type} frame before authentication (expected ${expected[this.st]}); authenticate first`)
        : this.refuse(ErrorCode.UNEXPECTED_MESSAGE, `${msg.type} frame while waiting for ${expected[this.st]}`);
    }
    switch (msg.type) {
      case 'HELLO': {
        const v = Math.min(msg.versionMax, this.versionMax);
        if (v < Math.max(msg.versionMin, this.versionMin)) {
          return this.refuse(
            ErrorCode.VERSION_UNSUPPORTED,
            `site '${msg.site}' speaks protocol v${msg.versionMin}..v${msg.versionMax}, this site v${this.versionMin}..v${this.versionMax}: upgrade the ${msg.versionMax < this.versionMin ? `peer '${msg.site}'` : 'this site'}`,
          );
        }
        if (msg.cluster !== this.o.cluster) {
          return this.refuse(ErrorCode.UNKNOWN_CLUSTER, `site '${msg.site}' belongs to cluster '${msg.cluster}', this site to '${this.o.cluster}': check the cluster name in its config`);
        }
        if (msg.target !== this.o.site) {
          return this.refuse(ErrorCode.WRONG_SITE, `site '${msg.site}' dialed '${msg.target}' but reached '${this.o.site}': check its address for '${msg.target}'`);
        }
        if (this.o.peerIdentity !== undefined && msg.site !== this.o.peerIdentity) {
          return this.refuse(ErrorCode.IDENTITY_MISMATCH, `the peer claims to be site '${msg.site}' but its certificate names site '${this.o.peerIdentity}'`);
        }
        if (!this.o.acceptPeer!(msg.site)) {
          return this.refuse(ErrorCode.UNKNOWN_SITE, `site '${msg.site}' is not a peer of '${this.o.site}' in cluster '${this.o.cluster}': add it to the config or fix its name`);
        }
        const mine = this.o.geometryOf ? this.o.geometryOf(msg.group) : (this.o.geometry.group ?? 0) === msg.group ? this.o.geometry : undefined;
        if (mine === undefined) return this.refuse(ErrorCode.GEOMETRY_MISMATCH, `site '${msg.site}' dialed consistency group ${msg.group}, which '${this.o.site}' does not carry: check that both run the same cluster file (its volumes: list)`);
        this.geometry = mine;
        const geo = this.geometryProblem(msg.site, msg.volumeBytes, msg.blockBytes);
        if (geo !== undefined) return this.refuse(ErrorCode.GEOMETRY_MISMATCH, geo);
        if (this.o.seenNonce?.(msg.nonce) === true) {
          return this.refuse(ErrorCode.REPLAYED_NONCE, `HELLO from '${msg.site}' reuses a nonce already seen: replayed handshake`);
        }
        this.version = v;
        this.nonceDialer = msg.nonce;
        this.dialerName = msg.site;
        this.listenerName = this.o.site;
        this.nonceListener = this.nonce();
        this.st = 'awaitResponse';
        const challenge: ChallengeMsg = {
          type: 'CHALLENGE', version: v, nonce: this.nonceListener,
          volumeBytes: mine.volumeBytes, blockBytes: mine.blockBytes, cluster: this.o.cluster, site: this.o.site,
        };
        return { send: [challenge], state: this.st };
      }
      case 'CHALLENGE': {
        if (msg.version < this.versionMin || msg.version > this.versionMax) {
          return this.refuse(ErrorCode.VERSION_UNSUPPORTED, `site '${msg.site}' chose protocol v${msg.version}, this site speaks v${this.versionMin}..v${this.versionMax}`);
        }
        if (msg.cluster !== this.o.cluster) {
          return this.refuse(ErrorCode.UNKNOWN_CLUSTER, `site '${msg.site}' belongs to cluster '${msg.cluster}', this site to '${this.o.cluster}': check the cluster name`);
        }
        if (msg.site !== this.o.peer) {
          return this.refuse(ErrorCode.WRONG_SITE, `dialed '${this.o.peer}' but reached site '${msg.site}': check the address configured for '${this.o.peer}'`);
        }
        if (this.o.peerIdentity !== undefined && msg.site !== this.o.peerIdentity) {
          return this.refuse(ErrorCode.IDENTITY_MISMATCH, `the peer claims to be site '${msg.site}' but its certificate names site '${this.o.peerIdentity}'`);
        }
        const geo = this.geometryProblem(msg.site, msg.volumeBytes, msg.blockBytes);
        if (geo !== undefined) return this.refuse(ErrorCode.GEOMETRY_MISMATCH, geo);
        this.version = msg.version;
        this.nonceListener = msg.nonce;
        this.listenerName = msg.site;
        this.st = 'awaitWelcome';
        return { send: [{ type: 'RESPONSE', mac: this.mac('dialer') }], state: this.st };
      }
      case 'RESPONSE': {
        if (!macEqual(msg.mac, this.mac('dialer'))) {
          return this.refuse(ErrorCode.AUTH_FAILED, `site '${this.dialerName}' failed to prove the cluster secret: the secret files of '${this.dialerName}' and '${this.o.site}' differ`);
        }
        const welcome = { type: 'WELCOME' as const, mac: this.mac('listener') };
        this.st = 'established';
        return { send: [welcome], state: this.st };
      }
      case 'WELCOME': {
        if (!macEqual(msg.mac, this.mac('listener'))) {
          return this.refuse(ErrorCode.AUTH_FAILED, `site '${this.listenerName}' failed to prove the cluster secret: the secret files of '${this.o.site}' and '${this.listenerName}' differ`);
        }
        this.st = 'established';
        return { send: [], state: this.st };
      }
      default:
        return this.refuse(ErrorCode.UNEXPECTED_MESSAGE, `${msg.type} frame during the handshake`);
    }
  }

  /** Undefined when the peer's volume equals ours; else a reason naming both geometries. */
  private geometryProblem(peer: string, volumeBytes: bigint, blockBytes: number): string | undefined {
    const g = this.geometry;
    if (volumeBytes === g.volumeBytes && blockBytes === g.blockBytes) return undefined;
    return `site '${peer}' has volume size ${volumeBytes} bytes and block size ${blockBytes}, site '${this.o.site}' has ${g.volumeBytes} bytes and block size ${g.blockBytes}: every site of a cluster must use the same volume (fix volume: in the cluster file of one of them)`;
  }

  private refuse(code: ErrorCode, reason: string): HandshakeStep {
    this.st = 'refused';
    this.refusalValue = { code, reason, by: 'local' };
    return { send: [{ type: 'REFUSE', code, reason }], state: this.st, refusal: this.refusalValue };
  }

  private nonce(): Buffer {
    const n = this.o.randomBytes(nonceBytes);
    if (n.length !== nonceBytes) throw new Error(`handshake: randomBytes returned ${n.length} bytes, need ${nonceBytes}`);
    return n;
  }

  private mac(label: 'dialer' | 'listener'): Buffer {
    return authMac(
      this.o.secret,
      authInput(label, this.version, this.nonceDialer!, this.nonceListener!, this.o.cluster, this.dialerName, this.listenerName, this.geometry, this.o.channelBinding),
    );
  }
}

function macEqual(a: Buffer, b: Buffer): boolean {
  return a.length === macBytes && b.length === macBytes && timingSafeEqual(a, b);
}

/** A bounded set of recently seen HELLO nonces (the listener's replay memory). */
export class NonceMemory {
  private readonly seen = new Set<string>();
  constructor(readonly noncesMax = 65536) {}

  /** True if `nonce` was seen before; records it otherwise (oldest forgotten past noncesMax). */
  check(nonce: Buffer): boolean {
    const key = nonce.toString('hex');
    if (this.seen.has(key)) return true;
    this.seen.add(key);
    if (this.seen.size > this.noncesMax) this.seen.delete(this.seen.values().next().value!);
    return false;
  }
}

// The listening side of a site's replication port: accepts TCP connections, authenticates each
// as a Link (listener role), hands established links to the site by peer name, and logs every
// refusal with the remote address and reason while it keeps serving everyone else.
//
// Admission (issue 17 item 5: a flood must not lock the configured peers out). A connection is
// "pending" until it is identified (TLS: its certificate names a configured site; lab mode: its
// HMAC handshake succeeded). Pending connections are bounded in all (pendingMax) and per source
// address (pendingPerAddressMax); when a bound is hit the NEW connection is admitted and the
// least advanced, oldest pending one of that address (or of the busiest address) is dropped,
// so a real peer, which finishes its handshake in milliseconds, always gets its turn while idle
// flood connections are cycled out. Every pending connection also has the handshake deadline
// (handshakeTimeoutMs). Identified connections leave the pending pool for the peer's own
// reserved slots (perPeerConnectionsMax each), which no unidentified connection can take.
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { ErrorCode, NonceMemory } from '../wire/index.js';
import { Link, silentLogger, type LinkClose, type LinkLogger, type LinkTimingOptions } from './link.js';
import type { LinkSecurity } from './security.js';
import { systemClock } from './clock.js';
import { rateLimitedLogger } from './log-limit.js';

export const linkServerDefaults = {
  /** Unidentified connections held at once (TLS or HMAC handshake in progress). */
  pendingMax: 64,
  /** ... of which from one source address. */
  pendingPerAddressMax: 16,
  /** Identified connections per configured peer (an established link plus reconnects racing it). */
  perPeerConnectionsMax: 4,
  /** At most one log line per this interval about dropped flood connections (with a count). */
  dropLogIntervalMs: 10_000,
} as const;

export interface LinkServerOptions extends LinkTimingOptions {
  readonly cluster: string;
  readonly site: string;
  readonly secret: Buffer;
  /** TLS or lab-mode plain TCP, built once per site (src/net/security.ts). */
  readonly security: LinkSecurity;
  /** Site names allowed to connect (the other sites of the cluster config). */
  readonly peers: readonly string[] | ((site: string) => boolean);
  readonly host: string;
  readonly port: number;
  readonly pendingMax?: number;
  readonly pendingPerAddressMax?: number;
  readonly perPeerConnectionsMax?: number;
  readonly dropLogIntervalMs?: number;
  /**
   * A site with several consistency groups (issue 20) takes every group's links on its one port:
   * the geometry of the group a HELLO names (undefined: not carried here), and how many groups
   * there are (each peer may hold perPeerConnectionsMax connections per group).
   */
  readonly geometryOf?: (group: number) => import('../wire/index.js').VolumeGeometry | undefined;
  readonly groupCount?: number;
}

interface Admitted {
  readonly link: Link;
  readonly address: string;
  readonly seq: number;
  /** Set once identified: the peer whose reserved slots it uses. */
  peer?: string;
}

export interface Refused {
  readonly remote: string;
  readonly code: number | undefined;
  readonly reason: string;
  readonly by: LinkClose['by'];
}

export interface LinkServer {
  on(event: 'link', fn: (link: Link) => void): this;
  on(event: 'refused', fn: (info: Refused) => void): this;
  once(event: 'link', fn: (link: Link) => void): this;
  once(event: 'refused', fn: (info: Refused) => void): this;
}

export class LinkServer extends EventEmitter {
  private readonly server: Server;
  private readonly nonces = new NonceMemory();
  private readonly sockets = new Set<Socket>();
  private readonly byPeer = new Map<string, Link>();
  private readonly log: LinkLogger;
  private readonly acceptPeer: (site: string) => boolean;
  private readonly strangerLog: LinkLogger;
  /** Unidentified connections, in arrival order (Map keeps insertion order). */
  private readonly pending = new Map<Link, Admitted>();
  private readonly pendingByAddress = new Map<string, number>();
  /** Identified connections per peer name. */
  private readonly identified = new Map<string, Set<Admitted>>();
  private admittedSeq = 0;
  private dropped = 0;
  private dropLoggedMs: number | undefined;
  readonly pendingMax: number;
  readonly pendingPerAddressMax: number;
  readonly perPeerConnectionsMax: number;
  /** Connections dropped by admission control since start (flood evidence, metrics). */
  droppedTotal = 0;

  constructor(private readonly o: LinkServerOptions) {
    super();
    this.log = o.logger ?? silentLogger;
    this.strangerLog = rateLimitedLogger(this.log, 'refused or failed unidentified connections', o.dropLogIntervalMs ?? linkServerDefaults.dropLogIntervalMs, 20, o.clock ?? systemClock);
    const peers = o.peers;
    this.acceptPeer = typeof peers === 'function' ? peers : (s: string) => s !== o.site && peers.includes(s);
    this.pendingMax = o.pendingMax ?? linkServerDefaults.pendingMax;
    this.pendingPerAddressMax = Math.min(this.pendingMax, o.pendingPerAddressMax ?? linkServerDefaults.pendingPerAddressMax);
    this.perPeerConnectionsMax = o.perPeerConnectionsMax ?? linkServerDefaults.perPeerConnectionsMax * Math.max(1, o.groupCount ?? 1);
    this.server = createServer((socket) => this.onConnection(socket));
  }

  /** Unidentified connections right now (tests, metrics). */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free one). */
  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`site '${this.o.site}': cannot listen on ${this.o.host}:${this.o.port}: ${err.message}`, { cause: err }));
      this.server.once('error', onError);
      this.server.listen(this.o.port, this.o.host, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) => this.log.warn({ site: this.o.site, err: err.message }, 'replication listener error'));
        const a = this.server.address() as AddressInfo;
        this.log.info({ site: this.o.site, host: a.address, port: a.port }, 'replication listener up');
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** The established link to a peer (for consistency group `group`), if any. */
  link(peer: string, group = 0): Link | undefined {
    return this.byPeer.get(linkKey(peer, group));
  }
  get links(): Link[] {
    return [...this.byPeer.values()];
  }

  /** Stops listening and closes every connection with SHUTDOWN. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const l of this.byPeer.values()) l.close(ErrorCode.SHUTDOWN, `site '${this.o.site}' is stopping`);
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private onConnection(socket: Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    const address = socket.remoteAddress ?? '?';
    if (!this.server.listening) {
      socket.destroy();
      return;
    }
    this.makeRoom(address);
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined); // the Link reports errors; a reset before it exists is noise
    const link = new Link(socket, {
      ...this.o,
      role: 'listener',
      acceptPeer: this.acceptPeer,
      seenNonce: (n) => this.nonces.check(n),
      strangerLogger: this.strangerLog,
    });
    const entry: Admitted = { link, address, seq: this.admittedSeq++ };
    this.pending.set(link, entry);
    this.pendingByAddress.set(address, (this.pendingByAddress.get(address) ?? 0) + 1);
    // TLS: the certificate names the peer before the HMAC handshake; lab mode: only the HMAC does.
    const identify = (peer: string): void => {
      if (entry.peer !== undefined) return;
      this.unpend(entry);
      entry.peer = peer;
      let set = this.identified.get(peer);
      if (set === undefined) this.identified.set(peer, (set = new Set()));
      set.add(entry);
      if (set.size > this.perPeerConnectionsMax) {
        // The oldest one that is not the established link of this peer makes room.
        const victim = [...set].find((e) => e !== entry && this.byPeer.get(linkKey(peer, e.link.group)) !== e.link) ?? [...set].find((e) => e !== entry)!;
        victim.link.close(ErrorCode.REPLACED, `more than perPeerConnectionsMax (${this.perPeerConnectionsMax}) connections from '${peer}'; the oldest is closed`);
      }
    };
    link.once('identified', identify);
    link.once('close', (info) => {
      this.unpend(entry);
      if (entry.peer !== undefined) {
        const set = this.identified.get(entry.peer);
        set?.delete(entry);
        if (set?.size === 0) this.identified.delete(entry.peer);
      }
      if (link.peer !== undefined && this.byPeer.get(linkKey(link.peer, link.group)) === link) this.byPeer.delete(linkKey(link.peer, link.group));
      if (!link.wasEstablished) this.emit('refused', { remote, code: info.code, reason: info.reason, by: info.by });
    });
    link.once('established', (peer) => {
      identify(peer);
      const key = linkKey(peer, link.group);
      const old = this.byPeer.get(key);
      if (old !== undefined) old.close(ErrorCode.REPLACED, `a newer authenticated connection from '${peer}' (${link.remote}) replaced this one`);
      this.byPeer.set(key, link);
      this.emit('link', link);
    });
  }

  private unpend(entry: Admitted): void {
    if (!this.pending.delete(entry.link)) return;
    const n = (this.pendingByAddress.get(entry.address) ?? 1) - 1;
    if (n <= 0) this.pendingByAddress.delete(entry.address);
    else this.pendingByAddress.set(entry.address, n);
  }

  /** Drops pending connections until one more from `address` fits both bounds. */
  private makeRoom(address: string): void {
    while ((this.pendingByAddress.get(address) ?? 0) >= this.pendingPerAddressMax) this.evict(address);
    while (this.pending.size >= this.pendingMax) {
      let busiest = address;
      for (const [a, n] of this.pendingByAddress) if (n > (this.pendingByAddress.get(busiest) ?? 0)) busiest = a;
      this.evict(busiest);
    }
  }

  /** Drops the least advanced, oldest pending connection of `address`. */
  private evict(address: string): void {
    let victim: Admitted | undefined;
    for (const e of this.pending.values()) {
      if (e.address !== address) continue;
      if (victim === undefined || e.link.progress < victim.link.progress) victim = e;
      if (victim.link.progress === 0) break; // oldest of the least advanced kind: Map order is arrival order
    }
    if (victim === undefined) {
      // Counts out of step: cannot happen, but never loop forever on it.
      this.pendingByAddress.delete(address);
      return;
    }
    this.unpend(victim);
    this.droppedTotal++;
    this.dropped++;
    victim.link.socket.destroy();
    const now = systemClock.nowMs();
    if (this.dropLoggedMs === undefined || now - this.dropLoggedMs >= (this.o.dropLogIntervalMs ?? linkServerDefaults.dropLogIntervalMs)) {
      this.log.warn(
        { site: this.o.site, address, dropped: this.dropped, pending: this.pending.size, pendingMax: this.pendingMax, pendingPerAddressMax: this.pendingPerAddressMax },
        `replication port under a connection flood? dropped ${this.dropped} unidentified connection(s) (oldest first) to keep room for configured peers`,
      );
      this.dropLoggedMs = now;
      this.dropped = 0;
    }
  }
}

/** Established links are one per peer and consistency group (issue 20); group 0 keys by the peer alone. */
function linkKey(peer: string, group: number): string {
  return group === 0 ? peer : `${peer}#${group}`;
}

// The listening side of a site's replication port: accepts TCP connections, authenticates each
// as a Link (listener role), hands established links to the site by peer name, and logs every
// refusal with the remote address and reason while it keeps serving everyone else.
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { ErrorCode, NonceMemory } from '../wire/index.js';
import { Link, silentLogger, type LinkClose, type LinkLogger, type LinkTimingOptions } from './link.js';

export interface LinkServerOptions extends LinkTimingOptions {
  readonly cluster: string;
  readonly site: string;
  readonly secret: Buffer;
  /** Site names allowed to connect (the other sites of the cluster config). */
  readonly peers: readonly string[] | ((site: string) => boolean);
  readonly host: string;
  readonly port: number;
  /** Most simultaneous connections (authenticated or not); extra ones are closed at once. */
  readonly connectionsMax?: number;
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
  readonly connectionsMax: number;

  constructor(private readonly o: LinkServerOptions) {
    super();
    this.log = o.logger ?? silentLogger;
    const peers = o.peers;
    this.acceptPeer = typeof peers === 'function' ? peers : (s: string) => s !== o.site && peers.includes(s);
    this.connectionsMax = o.connectionsMax ?? 64;
    this.server = createServer((socket) => this.onConnection(socket));
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

  /** The established link to a peer, if any. */
  link(peer: string): Link | undefined {
    return this.byPeer.get(peer);
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
    if (this.sockets.size >= this.connectionsMax) {
      this.log.warn({ site: this.o.site, remote, connectionsMax: this.connectionsMax }, 'connection refused: too many connections');
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    const link = new Link(socket, {
      ...this.o,
      role: 'listener',
      acceptPeer: this.acceptPeer,
      seenNonce: (n) => this.nonces.check(n),
    });
    link.once('close', (info) => {
      if (link.peer !== undefined && this.byPeer.get(link.peer) === link) this.byPeer.delete(link.peer);
      if (!link.wasEstablished) this.emit('refused', { remote, code: info.code, reason: info.reason, by: info.by });
    });
    link.once('established', (peer) => {
      const old = this.byPeer.get(peer);
      if (old !== undefined) old.close(ErrorCode.REPLACED, `a newer authenticated connection from '${peer}' (${link.remote}) replaced this one`);
      this.byPeer.set(peer, link);
      this.emit('link', link);
    });
  }
}

// The NBD server: a TCP listener serving several named exports (the empty name selects the
// default one), each connection handled by a Connection. Bounded: connectionsMax connections are
// served; beyond that up to refusedConnectionsMax are told why (NBD_REP_ERR_POLICY) and the rest
// are closed at once.
//
// A flood cannot lock a well-behaved client out (issue 17 item 5): connections still negotiating
// are bounded in all (negotiatingMax) and per source address (negotiatingPerAddressMax); when a
// bound is hit the new connection is admitted and the least advanced, oldest negotiating one is
// closed (one that never sent a byte first). Negotiation has a deadline (handshakeTimeoutMs).
// Connections in transmission count against connectionsMax and connectionsPerAddressMax.
//
// Claim 3: the host-facing SAN of the local site. DESIGN.md: "The NBD export is named after the
// volume; the empty export name selects it too."

import { createServer, type Server, type Socket } from 'node:net';
import { Connection, type ConnectionHost, type NbdLogger } from './connection.js';
import { checkExport, type NbdExport } from './export.js';
import { defaultNbdLimits, type NbdLimits } from './limits.js';
import { RangeLock } from './range-lock.js';
import { ByteBudget } from './byte-budget.js';
import type { NbdTlsOptions } from './tls.js';

export type { NbdLogger } from './connection.js';

export interface NbdServerOptions {
  readonly exports: readonly NbdExport[];
  /** Export selected by the empty name; default: the first export. */
  readonly defaultExport?: string;
  readonly limits?: Partial<NbdLimits>;
  /** pino-compatible; default: silent. */
  readonly logger?: NbdLogger;
  /** NBD_OPT_STARTTLS (allow or require); undefined: TLS off. */
  readonly tls?: NbdTlsOptions;
}

/** At most one log line per this interval about connections dropped by admission control. */
const dropLogIntervalMs = 10_000;

const silent: NbdLogger = { debug() {}, info() {}, warn() {} };

export class NbdServer implements ConnectionHost {
  readonly limits: NbdLimits;
  readonly logger: NbdLogger;
  readonly budget: ByteBudget;
  private readonly byName = new Map<string, NbdExport>();
  private defaultName: string | undefined;
  private readonly locks = new WeakMap<NbdExport, RangeLock>();
  private readonly served = new Set<Connection>();
  private readonly refused = new Set<Connection>();
  /** Served connections still negotiating, in arrival order. */
  private readonly negotiating = new Set<Connection>();
  private readonly negotiatingByAddress = new Map<string, number>();
  private readonly servedByAddress = new Map<string, number>();
  private dropped = 0;
  private dropLoggedMs: number | undefined;
  /** Connections closed by admission control since start. */
  droppedTotal = 0;
  readonly tls: NbdTlsOptions | undefined;
  private readonly server: Server;
  private nextId = 1;
  private closing = false;

  constructor(options: NbdServerOptions) {
    this.limits = { ...defaultNbdLimits, ...options.limits };
    this.logger = options.logger ?? silent;
    this.tls = options.tls;
    if (this.limits.serverPayloadBytesMax < this.limits.requestBytesMax) {
      throw new Error(`NBD server: serverPayloadBytesMax (${this.limits.serverPayloadBytesMax}) must be at least requestBytesMax (${this.limits.requestBytesMax})`);
    }
    this.budget = new ByteBudget(this.limits.serverPayloadBytesMax);
    for (const e of options.exports) {
      checkExport(e);
      if (this.byName.has(e.name)) throw new Error(`NBD server: two exports are named '${e.name}'; export names must be unique`);
      this.byName.set(e.name, e);
    }
    this.defaultName = options.defaultExport ?? options.exports[0]?.name;
    if (this.defaultName !== undefined && !this.byName.has(this.defaultName)) {
      throw new Error(`NBD server: default export '${this.defaultName}' is not one of the exports (${[...this.byName.keys()].join(', ')})`);
    }
    // allowHalfOpen: a client that shuts down its sending side still gets its in-flight replies.
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (s) => this.accept(s));
  }

  /** Starts listening; resolves with the bound port (pass 0 for an ephemeral one). */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`NBD server cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        this.logger.info({ host, port: typeof addr === 'object' && addr ? addr.port : port }, 'NBD server listening');
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  get connectionCount(): number {
    return this.served.size;
  }

  /** Per-connection resource use (served connections only). */
  connectionStats(): ReturnType<Connection['stats']>[] {
    return [...this.served].map((c) => c.stats());
  }

  /** Stops listening; lets in-flight requests finish (up to closeGraceMs), then closes everything. */
  async close(): Promise<void> {
    this.closing = true;
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of [...this.served, ...this.refused]) c.shutdown();
    const grace = setTimeout(() => {
      for (const c of [...this.served, ...this.refused]) c.destroy();
    }, this.limits.closeGraceMs);
    await listenerClosed;
    clearTimeout(grace);
  }

  /**
   * Adds an export while serving (a site with several volumes opens each as its group's life
   * allows: a standby's volumes when it is promoted, issue 20). The first export added to an
   * empty server is also the default one.
   */
  addExport(e: NbdExport): void {
    checkExport(e);
    if (this.byName.has(e.name)) throw new Error(`NBD server: two exports are named '${e.name}'; export names must be unique`);
    this.byName.set(e.name, e);
    this.defaultName ??= e.name;
  }

  /** Withdraws an export: new clients no longer see it, and its connections are closed (shutdown: in-flight requests finish, up to closeGraceMs). */
  removeExport(name: string): void {
    const e = this.byName.get(name);
    if (e === undefined) return;
    this.byName.delete(name);
    if (this.defaultName === name) this.defaultName = this.byName.keys().next().value;
    const conns = [...this.served].filter((c) => c.servedExport === e);
    for (const c of conns) c.shutdown();
    if (conns.length > 0) setTimeout(() => conns.forEach((c) => c.destroy()), this.limits.closeGraceMs).unref();
  }

  lookup(name: string): NbdExport | undefined {
    if (name === '' && this.defaultName !== undefined) return this.byName.get(this.defaultName);
    return this.byName.get(name);
  }

  exports(): readonly NbdExport[] {
    return [...this.byName.values()];
  }

  lockFor(exp: NbdExport): RangeLock {
    let l = this.locks.get(exp);
    if (l === undefined) {
      l = new RangeLock();
      this.locks.set(exp, l);
    }
    return l;
  }

  closed(conn: Connection): void {
    if (this.served.delete(conn)) bump(this.servedByAddress, conn.address, -1);
    this.refused.delete(conn);
    if (this.negotiating.delete(conn)) bump(this.negotiatingByAddress, conn.address, -1);
  }

  transmitting(conn: Connection): void {
    if (this.negotiating.delete(conn)) bump(this.negotiatingByAddress, conn.address, -1);
  }

  /** Closes negotiating connections until one more from `address` fits both bounds. */
  private makeRoom(address: string): void {
    const l = this.limits;
    while ((this.negotiatingByAddress.get(address) ?? 0) >= l.negotiatingPerAddressMax) this.evict(address);
    while (this.negotiating.size >= l.negotiatingMax) {
      let busiest = address;
      for (const [a, n] of this.negotiatingByAddress) if (n > (this.negotiatingByAddress.get(busiest) ?? 0)) busiest = a;
      this.evict(busiest);
    }
  }

  private evict(address: string): void {
    let victim: Connection | undefined;
    for (const c of this.negotiating) {
      if (c.address !== address) continue;
      if (victim === undefined || c.progress < victim.progress) victim = c;
      if (victim.progress === 0) break;
    }
    if (victim === undefined) {
      this.negotiatingByAddress.delete(address);
      return;
    }
    this.negotiating.delete(victim);
    bump(this.negotiatingByAddress, address, -1);
    this.droppedTotal++;
    this.dropped++;
    victim.destroy();
    const now = performance.now();
    if (this.dropLoggedMs === undefined || now - this.dropLoggedMs >= dropLogIntervalMs) {
      this.logger.warn({ address, dropped: this.dropped, negotiating: this.negotiating.size, negotiatingMax: this.limits.negotiatingMax }, `NBD port under a connection flood? closed ${this.dropped} connection(s) still negotiating (oldest idle first) to keep room for clients`);
      this.dropLoggedMs = now;
      this.dropped = 0;
    }
  }

  private accept(socket: Socket): void {
    const id = this.nextId++;
    if (this.closing) {
      socket.destroy();
      return;
    }
    const address = socket.remoteAddress ?? '?';
    this.makeRoom(address);
    const perAddress = this.servedByAddress.get(address) ?? 0;
    if (this.served.size < this.limits.connectionsMax && perAddress < this.limits.connectionsPerAddressMax) {
      const c = new Connection(id, socket, this);
      this.served.add(c);
      bump(this.servedByAddress, address, 1);
      this.negotiating.add(c);
      bump(this.negotiatingByAddress, address, 1);
      return;
    }
    const reason = perAddress >= this.limits.connectionsPerAddressMax
      ? `${address} already has ${perAddress} connections (connectionsPerAddressMax); retry later`
      : `server is at its limit of ${this.limits.connectionsMax} connections; retry later`;
    this.logger.warn({ conn: id, remote: socket.remoteAddress }, `refusing NBD connection: ${reason}`);
    if (this.refused.size >= this.limits.refusedConnectionsMax) {
      socket.destroy();
      return;
    }
    this.refused.add(new Connection(id, socket, this, reason));
  }
}

function bump(m: Map<string, number>, key: string, by: number): void {
  const n = (m.get(key) ?? 0) + by;
  if (n <= 0) m.delete(key);
  else m.set(key, n);
}

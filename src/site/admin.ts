// The admin server of a site (issue 5 item 8, issue 8 items 2-3, issue 17 item 6): GET /status
// (JSON from the runtime), GET /metrics (Prometheus text), GET /checksums (keyed per-region
// digests of the site's storage for geomirror verify, src/site/checksums.ts) and the two POSTs
// of a planned switchover (/promote, /demote).
//
// HTTPS with the site's certificate from the cluster CA (plain HTTP only under transport:
// insecure). Every request, GET included, must be authenticated: a client certificate from the
// cluster CA (OU geomirror-client or geomirror-site, this cluster), or a one-time token made
// from the cluster key (src/site/admin-auth.ts); anything else is 401 before a byte about the
// site is said. A token is never accepted twice, so a captured signed POST cannot be replayed.
import type { X509Certificate } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import type { Registry } from 'prom-client';
import { ChecksumRequestError, type ChecksumAnswer } from './checksums.js';
import { serveEvents, type EventSource } from './events.js';
import type { Logger } from './log.js';
import type { SiteStatus } from './status.js';
import { RoleChangeError, type RoleChangeAnswer } from './role-change.js';
import { AdminTokenChecker } from './admin-auth.js';
import { clientCertUnit, peerCertificateProblem, siteCertUnit, subjectField } from '../net/security.js';

/** The site's TLS identity as the admin server needs it (src/site/link-security.ts SiteTlsIdentity). */
export interface AdminTls {
  /** Key, certificate and CA bundle for node:https (re-read when they change). */
  contextOptions(): SecureContextOptions;
  trusted(): readonly X509Certificate[];
  onReload(fn: () => void): void;
}

/** A stuck provider must not hold admin connections forever. */
export const adminRequestTimeoutMs = 10_000;

export interface AdminServerOptions {
  host: string;
  /** 0 picks a free port (tests); the bound port is in AdminServer.port. */
  port: number;
  status: () => SiteStatus | Promise<SiteStatus>;
  registry: Registry;
  /** GET /checksums (geomirror verify): validates the query, digests this site's storage regions. */
  checksums?: (query: URLSearchParams) => Promise<ChecksumAnswer>;
  /** GET /events (geomirror events): the site's state changes as NDJSON (src/site/events.ts). */
  events?: EventSource;
  /** POST /promote and /demote (planned switchover). */
  roleChange?: { promote?: (reason: string, force: boolean) => Promise<RoleChangeAnswer>; demote?: (reason: string) => Promise<RoleChangeAnswer> };
  /** Who may ask: this site and cluster, the admin-token key (adminTokenKey of the cluster key). */
  auth: { site: string; cluster: string; tokenKey: Buffer };
  /** HTTPS with the site's certificate; undefined: plain HTTP (transport: insecure only). */
  tls?: AdminTls;
  log?: Logger;
}

export interface AdminServer {
  host: string;
  port: number;
  /** https://host:port (http:// under transport: insecure) */
  url: string;
  close(): Promise<void>;
}

export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  const tokens = new AdminTokenChecker(options.auth.tokenKey, options.auth.site);
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const who = authenticate(options, tokens, req);
    if ('why' in who) {
      options.log?.warn({ event: 'admin-refused', remote: req.socket.remoteAddress, method: req.method, path: req.url, why: who.why }, `admin request refused: ${who.why}`);
      res.setHeader('WWW-Authenticate', 'Geomirror-Token');
      send(res, who.busy ? 503 : 401, 'text/plain; charset=utf-8', `${who.busy ? 'busy' : 'unauthorized'}: ${who.why}\n`);
      return;
    }
    handle(options, req, res).catch((err: unknown) => {
      options.log?.error({ err, path: req.url }, 'admin request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `internal error: ${(err as Error).message ?? String(err)}\n`);
      else res.destroy();
    });
  };
  const tls = options.tls;
  const server: Server = tls
    ? createHttpsServer({ ...tls.contextOptions(), requestCert: true, rejectUnauthorized: false }, handler)
    : createHttpServer(handler);
  if (tls) tls.onReload(() => (server as unknown as { setSecureContext(o: SecureContextOptions): void }).setSecureContext(tls.contextOptions()));
  server.requestTimeout = adminRequestTimeoutMs;
  server.headersTimeout = adminRequestTimeoutMs;
  await listen(server, options.host, options.port);
  const port = (server.address() as AddressInfo).port;
  const hostText = options.host.includes(':') ? `[${options.host}]` : options.host;
  const scheme = tls ? 'https' : 'http';
  options.log?.info({ event: 'admin-listening', host: options.host, port }, `admin ${scheme.toUpperCase()} on ${scheme}://${hostText}:${port} (/status, /metrics; a client certificate or a geomirror token is required)`);
  return {
    host: options.host,
    port,
    url: `${scheme}://${hostText}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** A client certificate of this cluster, or a one-time token; else why not. */
function authenticate(options: AdminServerOptions, tokens: AdminTokenChecker, req: IncomingMessage): { by: string } | { why: string; busy?: boolean } {
  const sock = req.socket as TLSSocket;
  if (options.tls && typeof sock.getPeerX509Certificate === 'function') {
    const cert = sock.getPeerX509Certificate();
    if (cert !== undefined) {
      const bad = peerCertificateProblem(cert, options.tls.trusted());
      const unit = subjectField(cert.subject, 'OU');
      if (bad !== undefined) return { why: `client certificate refused: ${bad}` };
      if (subjectField(cert.subject, 'O') !== options.auth.cluster || (unit !== clientCertUnit && unit !== siteCertUnit)) {
        return { why: `client certificate of ${JSON.stringify(subjectField(cert.subject, 'CN') ?? '?')} is not a client or site certificate of cluster ${options.auth.cluster}` };
      }
      return { by: `certificate ${subjectField(cert.subject, 'CN')}` };
    }
  }
  const r = tokens.check(req.headers.authorization, req.method ?? 'GET', req.url ?? '/');
  return r.ok ? { by: 'token' } : { why: r.why, ...(r.busy ? { busy: true } : {}) };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const why = err.code === 'EADDRINUSE' ? 'the port is already in use' : err.code === 'EADDRNOTAVAIL' ? 'no interface has that address' : err.message;
      reject(new Error(`admin: cannot listen on ${host}:${port}: ${why}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

async function handle(options: AdminServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://admin');
  const path = url.pathname;
  if (path === '/promote' || path === '/demote') {
    await roleChange(options, path === '/promote' ? 'promote' : 'demote', url, req, res);
    return;
  }
  const known = path === '/status' || path === '/metrics' || path === '/checksums' || path === '/events';
  if (known && req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    send(res, 405, 'text/plain; charset=utf-8', `${req.method} not allowed on ${path}; use GET\n`);
    return;
  }
  if (path === '/status') {
    const status = await options.status();
    send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(status)}\n`);
  } else if (path === '/metrics') {
    // The runtime refreshes its gauges (cache, epoch, in-flight and resync per peer) in
    // status(); calling it here keeps a Prometheus that only scrapes /metrics current.
    await options.status();
    const text = await options.registry.metrics();
    send(res, 200, options.registry.contentType, text);
  } else if (path === '/events' && options.events) {
    await serveEvents(options.events, url, req, res);
  } else if (path === '/checksums' && options.checksums) {
    try {
      const answer = await options.checksums(url.searchParams);
      send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(answer)}\n`);
    } catch (err) {
      if (!(err instanceof ChecksumRequestError)) throw err;
      send(res, err.httpStatus, 'text/plain; charset=utf-8', `${err.message}\n`);
    }
  } else {
    send(res, 404, 'text/plain; charset=utf-8', `no ${path} here; try /status or /metrics\n`);
  }
}

async function roleChange(options: AdminServerOptions, action: 'promote' | 'demote', url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    send(res, 405, 'text/plain; charset=utf-8', `${req.method} not allowed on /${action}; use POST (geomirror ${action} --site NAME)\n`);
    return;
  }
  const rc = options.roleChange;
  if (rc === undefined) {
    send(res, 409, 'text/plain; charset=utf-8', `this site takes no role changes\n`);
    return;
  }
  // Already authenticated (authenticate(): certificate, or a one-time token for this site,
  // method and path, reason and force included, so none of them can be changed or replayed).
  const signedReason = url.searchParams.get('reason') ?? '';
  const force = url.searchParams.get('force') === '1';
  const fn = rc[action];
  if (fn === undefined) {
    send(res, 409, 'text/plain; charset=utf-8', `this site cannot ${action} (its role has no ${action})\n`);
    return;
  }
  const reason = (signedReason || `planned switchover (${action} requested from ${req.socket.remoteAddress})`).slice(0, 200);
  try {
    const answer = await fn(reason, force);
    send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(answer)}\n`);
  } catch (err) {
    if (!(err instanceof RoleChangeError)) throw err;
    send(res, 409, 'text/plain; charset=utf-8', `${(err as Error).message}\n`);
  }
}

function send(res: ServerResponse, code: number, type: string, body: string): void {
  res.writeHead(code, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

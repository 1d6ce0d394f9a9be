// The admin HTTP server of a site (issue 5 item 8, issue 8 items 2-3): GET /status (JSON from
// the runtime), GET /metrics (Prometheus text) and GET /checksums (per-region digests of the
// site's storage for geomirror verify, src/site/checksums.ts). The GETs are read-only on purpose:
// exposing them to a monitoring network cannot corrupt data. The two POSTs of a planned
// switchover (issue 10 item 5: /promote, /demote) change roles, so they need a request signed
// with the cluster key (roleChangeAuth below), fresh within a minute; anything else is 401.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { ChecksumRequestError, type ChecksumAnswer } from './checksums.js';
import { serveEvents, type EventSource } from './events.js';
import type { Logger } from './log.js';
import type { SiteStatus } from './status.js';
import { RoleChangeError, type RoleChangeAnswer } from './role-change.js';

/** How far a signed role-change request's clock may be from ours. */
export const roleChangeSkewSecondsMax = 60;

/**
 * `Authorization` value for POST /promote or /demote on `site`: HMAC-SHA256 with the cluster key
 * over the action, the site, the time and the `reason` query parameter ('' when none), so a
 * captured request cannot be replayed elsewhere, later, or with another reason.
 */
export function roleChangeAuth(secret: Buffer, action: 'promote' | 'demote', site: string, unixSeconds = Math.floor(Date.now() / 1000), reason = '', force = false): string {
  const mac = createHmac('sha256', secret).update(`geomirror ${action} ${site} ${unixSeconds}${force ? ' force' : ''}\n${reason}`).digest('hex');
  return `Geomirror ${unixSeconds}:${mac}`;
}

function authOk(secret: Buffer, action: 'promote' | 'demote', site: string, reason: string, force: boolean, header: string | undefined): string | undefined {
  const m = /^Geomirror (\d+):([0-9a-f]{64})$/.exec(header ?? '');
  if (!m) return 'missing or malformed Authorization (geomirror promote/demote sign requests with the cluster key)';
  const t = Number(m[1]);
  if (Math.abs(Date.now() / 1000 - t) > roleChangeSkewSecondsMax) return `request time ${t} is more than ${roleChangeSkewSecondsMax} s from this site's clock`;
  const want = Buffer.from(roleChangeAuth(secret, action, site, t, reason, force).split(':')[1]!, 'hex');
  const got = Buffer.from(m[2]!, 'hex');
  return timingSafeEqual(want, got) ? undefined : 'signature does not match this cluster\'s key';
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
  /** POST /promote and /demote (planned switchover), signed with `secret`. */
  roleChange?: { site: string; secret: Buffer; promote?: (reason: string, force: boolean) => Promise<RoleChangeAnswer>; demote?: (reason: string) => Promise<RoleChangeAnswer> };
  log?: Logger;
}

export interface AdminServer {
  host: string;
  port: number;
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  const server = createServer((req, res) => {
    handle(options, req, res).catch((err: unknown) => {
      options.log?.error({ err, path: req.url }, 'admin request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `internal error: ${(err as Error).message ?? String(err)}\n`);
      else res.destroy();
    });
  });
  server.requestTimeout = adminRequestTimeoutMs;
  await listen(server, options.host, options.port);
  const port = (server.address() as AddressInfo).port;
  const hostText = options.host.includes(':') ? `[${options.host}]` : options.host;
  options.log?.info({ event: 'admin-listening', host: options.host, port }, `admin HTTP on http://${hostText}:${port} (/status, /metrics)`);
  return {
    host: options.host,
    port,
    url: `http://${hostText}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
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
  // Authenticated before anything else is said about this site (its role included).
  const signedReason = url.searchParams.get('reason') ?? '';
  const force = url.searchParams.get('force') === '1';
  const bad = authOk(rc.secret, action, rc.site, signedReason, force, req.headers.authorization);
  if (bad !== undefined) {
    options.log?.warn({ event: 'role-change-refused', action, remote: req.socket.remoteAddress, why: bad }, `${action} refused: ${bad}`);
    send(res, 401, 'text/plain; charset=utf-8', `${action} refused: ${bad}\n`);
    return;
  }
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

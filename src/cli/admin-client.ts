// The CLI side of the admin port (issue 17 item 6): HTTPS to a site, checking that the server's
// certificate is a site certificate from the cluster CA (of the site asked for, when known), and
// authenticating every request with a one-time token made from the cluster key
// (src/site/admin-auth.ts) or, where the key is not at hand, a client certificate from
// `geomirror pki client` (GEOMIRROR_CLIENT_CERT_DIR: ca-cert.pem, client-cert.pem, client-key.pem).
import { readFileSync } from 'node:fs';
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { adminToken, adminTokenKey } from '../site/admin-auth.js';
import { readSecret, type ClusterConfig } from '../site/config.js';
import { siteCertUnit } from '../net/security.js';

export interface AdminCredentials {
  cluster: string;
  /** HTTPS: the CA bundle the site's certificate must chain to; undefined: plain HTTP (transport: insecure). */
  ca?: string;
  /** The admin-token key (from the cluster key), when this machine has the key. */
  tokenKey?: Buffer;
  /** A client certificate from the cluster CA, when this machine has no cluster key. */
  cert?: string;
  key?: string;
}

/** Credentials from a cluster file: its CA and key, or GEOMIRROR_CLIENT_CERT_DIR's client certificate. */
export function adminCredentials(config: ClusterConfig): AdminCredentials {
  const creds: AdminCredentials = { cluster: config.cluster };
  if (config.transport === 'tls') {
    try {
      creds.ca = readFileSync(config.tls.caCert, 'utf8');
    } catch (err) {
      throw new Error(`cannot read the cluster CA ${config.tls.caCert} (${(err as NodeJS.ErrnoException).code ?? String(err)}): the admin port is HTTPS with a certificate from it`);
    }
  }
  const dir = process.env.GEOMIRROR_CLIENT_CERT_DIR;
  if (dir !== undefined && dir !== '') {
    creds.cert = readFileSync(join(dir, 'client-cert.pem'), 'utf8');
    creds.key = readFileSync(join(dir, 'client-key.pem'), 'utf8');
    return creds;
  }
  try {
    creds.tokenKey = adminTokenKey(readSecret(config));
  } catch (err) {
    throw new Error(`${(err as Error).message}; the admin port needs the cluster key (or a client certificate: geomirror pki client --name NAME, then GEOMIRROR_CLIENT_CERT_DIR=DIR)`);
  }
  return creds;
}

export interface AdminRequest {
  host: string;
  port: number;
  method: 'GET' | 'POST';
  /** Path with query string. */
  path: string;
  /** The site expected at that address (its certificate must name it; tokens name it). */
  site?: string;
  creds: AdminCredentials;
  timeoutMs: number;
  /** Longest body accepted; past it the request is aborted. */
  bodyCharsMax: number;
}

/** One request without keep-alive (pooled sockets would hold the CLI open for seconds). */
export function adminRequest(r: AdminRequest): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = openAdmin(r, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
        if (body.length > r.bodyCharsMax) req.destroy(new Error(`${r.path} answer longer than ${r.bodyCharsMax} characters`));
      });
      res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * GET `path` handed back as it streams (geomirror events: GET /events), authenticated like
 * adminRequest; the caller reads and closes it. `timeoutMs` bounds the wait for the response
 * head only: a stream may then be quiet for a long time.
 */
export function adminStream(r: Omit<AdminRequest, 'method' | 'bodyCharsMax'>): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = openAdmin({ ...r, method: 'GET' }, (res) => {
      req.setTimeout(0);
      resolve(res);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The request itself: HTTPS checked against the cluster CA (HTTP under transport: insecure), with a one-time token when this machine has the key. */
function openAdmin(r: Omit<AdminRequest, 'bodyCharsMax'>, onResponse: (res: IncomingMessage) => void): ClientRequest {
  const headers: Record<string, string> = {};
  if (r.creds.tokenKey !== undefined) headers.Authorization = adminToken(r.creds.tokenKey, r.method, r.path, r.site ?? '*');
  const common = { host: r.host, port: r.port, path: r.path, method: r.method, agent: false as const, timeout: r.timeoutMs, headers };
  const req =
    r.creds.ca !== undefined
      ? httpsRequest(
          {
            ...common,
            ca: r.creds.ca,
            ...(r.creds.cert !== undefined ? { cert: r.creds.cert, key: r.creds.key } : {}),
            minVersion: 'TLSv1.3',
            // The address may be any name or IP; what matters is that the certificate (chained to
            // the cluster CA by node:tls) is a site certificate of this cluster, of this site.
            checkServerIdentity: (_host: string, cert: PeerCertificate) => serverIdentityProblem(cert, r.creds.cluster, r.site),
          },
          onResponse,
        )
      : httpRequest(common, onResponse);
  req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
  return req;
}

function serverIdentityProblem(cert: PeerCertificate, cluster: string, site: string | undefined): Error | undefined {
  const one = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);
  const s = cert.subject ?? {};
  if (one(s.OU) !== siteCertUnit || one(s.O) !== cluster) return new Error(`the admin server's certificate is not a site certificate of cluster ${cluster} (subject ${JSON.stringify(s)})`);
  if (site !== undefined && one(s.CN) !== site) return new Error(`the admin server at this address is site ${one(s.CN)}, not ${site}`);
  return undefined;
}

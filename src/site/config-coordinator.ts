// The `coordinator:` key of the cluster file (issue 20 item 3): etcd as the failover arbiter
// instead of the built-in majority vote. Validated here, with errors naming the key and the
// fix, and turned into a CoordinatorConfig the site runtime trusts (src/site/coordinator.ts).
//
//   coordinator:
//     etcd: [https://10.0.0.5:2379, https://10.0.0.6:2379]   # http:// = plain, https:// = TLS
//     prefix: /geomirror                                     # keys live under PREFIX/CLUSTER/GROUP/
//     lease-ttl: 5s                                          # whole seconds, 2s .. 5m
//     ca: ./etcd/ca.crt                                      # https only; cert + key: client auth
//   sites: { NAME: { coordinator-endpoints: [URL, ...] } }   # optional per-site endpoints
//
// With a coordinator the vote is not used (the two never mix in one group): a `witness` site
// (a voter) together with it is refused.
import { parseDurationMs } from './units.js';
import { coordinatorKeys, type Role } from './config-keys.js';

/** etcd grants leases in whole seconds and raises a TTL below its own minimum (1.5 s by default election timing). */
export const leaseTtlMsMin = 2_000;
export const leaseTtlMsMax = 300_000;
/** Endpoints one list may name (a list is a handful of etcd members). */
export const endpointsMax = 16;

export interface CoordinatorTls {
  /** CA that the etcd server certificate must chain to (default: the system's). */
  ca?: string;
  /** Client certificate and key, when etcd asks for client auth. */
  cert?: string;
  key?: string;
}

export interface CoordinatorConfig {
  /** etcd endpoints, normalized `http(s)://HOST:PORT`. */
  endpoints: string[];
  /** Key prefix without a trailing '/': keys are PREFIX/CLUSTER/GROUP/{primary,epoch}. */
  prefix: string;
  leaseTtlMs: number;
  /** Set when the endpoints are https: TLS to etcd. */
  tls?: CoordinatorTls;
}

type Fail = (keys: (string | number)[], message: string) => undefined;
type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => typeof x === 'object' && x !== null && !Array.isArray(x);
const show = (x: unknown): string => JSON.stringify(x) ?? String(x);

/** A list of etcd endpoint URLs, all of one scheme; undefined (reported) if anything is wrong. */
export function parseEndpoints(x: unknown, keys: (string | number)[], fail: Fail): { urls: string[]; https: boolean } | undefined {
  if (!Array.isArray(x) || x.length === 0 || x.length > endpointsMax) {
    return fail(keys, `must be a list of 1 to ${endpointsMax} etcd endpoints, e.g. [http://10.0.0.5:2379] (https:// for TLS)`);
  }
  const urls: string[] = [];
  let ok = true;
  x.forEach((u, i) => {
    const r = parseEndpoint(u);
    if ('url' in r) {
      urls.push(r.url);
    } else {
      ok = false;
      fail([...keys, i], `${show(u)} is not an etcd endpoint (${r.problem}); use http://HOST:PORT or https://HOST:PORT (TLS), e.g. http://127.0.0.1:2379`);
    }
  });
  if (!ok) return undefined;
  const https = urls[0]!.startsWith('https:');
  if (urls.some((u) => u.startsWith('https:') !== https)) return fail(keys, 'mixes http:// and https:// endpoints; use one scheme for every etcd member (https:// = TLS)');
  return { urls, https };
}

/** `http(s)://HOST:PORT` normalized (port 2379 when none is given), or why it is not one. */
function parseEndpoint(u: unknown): { url: string } | { problem: string } {
  if (typeof u !== 'string') return { problem: 'not a string' };
  let url: URL;
  try {
    url = new URL(u.trim());
  } catch {
    return { problem: 'not a URL' };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return { problem: `scheme ${url.protocol} is neither http: nor https:` };
  if (url.hostname === '') return { problem: 'no host' };
  if (url.username !== '' || url.password !== '') return { problem: 'credentials in a URL are not taken: they would end up in logs' };
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') return { problem: 'an endpoint has no path, query or fragment' };
  return { url: `${url.protocol}//${url.hostname}:${url.port === '' ? '2379' : url.port}` };
}

/** `coordinator:`; `path` makes a file key absolute (relative to the cluster file). */
export function parseCoordinator(x: unknown, fail: Fail, path: (p: string) => string): CoordinatorConfig | undefined {
  const at = ['coordinator'];
  if (!isObj(x)) return fail(at, 'must be a mapping, e.g. { etcd: [http://127.0.0.1:2379], prefix: /geomirror, lease-ttl: 5s }');
  const known = Object.keys(coordinatorKeys);
  for (const k of Object.keys(x)) if (!known.includes(k)) fail([...at, k], `unknown key; known keys here: ${known.join(', ')}`);
  const eps = 'etcd' in x ? parseEndpoints(x.etcd, [...at, 'etcd'], fail) : fail([...at, 'etcd'], 'is missing: the etcd endpoints, e.g. etcd: [http://127.0.0.1:2379]');
  let prefix: string = coordinatorKeys.prefix.default;
  if ('prefix' in x) {
    const p = x.prefix;
    if (typeof p !== 'string' || !/^\/[A-Za-z0-9_.\-/]*$/.test(p) || p.includes('//') || p.length > 128) fail([...at, 'prefix'], `${show(p)} is not a key prefix; use a path of letters, digits, '.', '_', '-' starting with '/', e.g. /geomirror`);
    else prefix = p.replace(/\/+$/, '');
  }
  let leaseTtlMs = parseDurationMs(coordinatorKeys['lease-ttl'].default)!;
  if ('lease-ttl' in x) {
    const ms = parseDurationMs(x['lease-ttl']);
    if (ms === undefined || ms % 1000 !== 0 || ms < leaseTtlMsMin || ms > leaseTtlMsMax) {
      fail([...at, 'lease-ttl'], `${show(x['lease-ttl'])} is not a lease TTL; use whole seconds from ${leaseTtlMsMin / 1000}s to ${leaseTtlMsMax / 1000}s (etcd leases count seconds), e.g. 5s`);
    } else {
      leaseTtlMs = ms;
    }
  }
  const tls: CoordinatorTls = {};
  for (const k of ['ca', 'cert', 'key'] as const) {
    if (!(k in x)) continue;
    const v = x[k];
    if (typeof v !== 'string' || v.trim() === '') fail([...at, k], `${show(v)} is not a path`);
    else if (eps !== undefined && !eps.https) fail([...at, k], `is only used with TLS to etcd: write the endpoints as https:// URLs, or remove ${k}`);
    else tls[k] = path(v.trim());
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) fail([...at, tls.cert === undefined ? 'cert' : 'key'], 'cert and key go together (the client certificate etcd checks, and its private key)');
  if (eps === undefined) return undefined;
  return { endpoints: eps.urls, prefix, leaseTtlMs, ...(eps.https ? { tls } : {}) };
}

/** Cross-site rules of the coordinator: no witness beside it, per-site endpoints only with it. */
export function checkCoordinatorSites(coordinator: CoordinatorConfig | undefined, present: boolean, sites: Record<string, { role: Role; coordinatorEndpoints?: string[] }>, fail: Fail): void {
  for (const [name, s] of Object.entries(sites)) {
    if (s.role === 'witness' && present) {
      fail(['sites', name, 'role'], `a witness votes in the built-in majority failover, and coordinator: (etcd) replaces that vote: the two never mix in one group. Remove the witness site ${name}, or remove the coordinator key`);
    }
    if (s.coordinatorEndpoints !== undefined && !present) fail(['sites', name, 'coordinator-endpoints'], 'needs a cluster-wide coordinator: key (coordinator: { etcd: [URL, ...] }); remove it or add the coordinator');
    if (s.coordinatorEndpoints !== undefined && coordinator !== undefined && s.coordinatorEndpoints[0]!.startsWith('https:') !== (coordinator.tls !== undefined)) {
      fail(['sites', name, 'coordinator-endpoints'], `must use the same scheme as coordinator.etcd (${coordinator.tls !== undefined ? 'https' : 'http'}://): TLS settings are cluster-wide`);
    }
  }
}

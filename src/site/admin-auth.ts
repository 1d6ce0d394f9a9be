// Who may use a site's admin port (issue 17 item 6): every request carries either a client
// certificate from the cluster CA (TLS; for Prometheus and operators' machines, issued by
// `geomirror pki client`) or a token that `geomirror` makes from the cluster key:
//
//   Authorization: Geomirror-Token <unixSeconds>:<nonce hex 32>:<site or *>:<mac hex 64>
//   mac = HMAC-SHA256(adminKey, "geomirror-admin-v1\n" method "\n" path?query "\n" site "\n" unixSeconds "\n" nonce)
//   adminKey = HMAC-SHA256(clusterKey, "geomirror admin token key v1")
//
// A token is good for one request: within tokenSkewSecondsMax of the site's clock, never twice
// (the nonce is remembered for the skew window), for the method and path it names and, for
// anything that changes state (POST), only for the site it names ('*' is for read-only GETs
// sent to an address, e.g. `geomirror status --admin HOST:PORT`).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const tokenSkewSecondsMax = 60;
/** Remembered nonces: beyond this many within the skew window, new tokens are refused (503). */
export const tokenNoncesMax = 100_000;
export const tokenScheme = 'Geomirror-Token';

/** The admin-token key derived from the cluster key (never the cluster key itself on the wire). */
export function adminTokenKey(clusterKey: Buffer): Buffer {
  return createHmac('sha256', clusterKey).update('geomirror admin token key v1').digest();
}

/** Keyed digest key of /checksums (so a digest is no oracle of the content to someone without the key). */
export function checksumDigestKey(clusterKey: Buffer): Buffer {
  return createHmac('sha256', clusterKey).update('geomirror checksum key v1').digest();
}

function tokenMac(key: Buffer, method: string, path: string, site: string, unixSeconds: number, nonceHex: string): Buffer {
  return createHmac('sha256', key).update(`geomirror-admin-v1\n${method.toUpperCase()}\n${path}\n${site}\n${unixSeconds}\n${nonceHex}`).digest();
}

/** The Authorization header value for one request (`path` with its query string). */
export function adminToken(key: Buffer, method: string, path: string, site = '*', unixSeconds = Math.floor(Date.now() / 1000), nonceHex = randomBytes(16).toString('hex')): string {
  return `${tokenScheme} ${unixSeconds}:${nonceHex}:${site}:${tokenMac(key, method, path, site, unixSeconds, nonceHex).toString('hex')}`;
}

/** Checks tokens and remembers their nonces (one per site's admin server). */
export class AdminTokenChecker {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly key: Buffer,
    private readonly site: string,
    private readonly nowSeconds: () => number = () => Date.now() / 1000,
  ) {}

  /** Undefined when the token admits this request; otherwise why not (for a 401, or 503 when `busy`). */
  check(header: string | undefined, method: string, path: string): { ok: true } | { ok: false; why: string; busy?: boolean } {
    if (header === undefined || header === '') return { ok: false, why: `no credentials: send a client certificate from the cluster CA or an Authorization: ${tokenScheme} header (geomirror status/verify/promote make one from the cluster key)` };
    const m = /^Geomirror-Token (\d{1,12}):([0-9a-f]{32}):([A-Za-z0-9_.*-]{1,64}):([0-9a-f]{64})$/.exec(header);
    if (!m) return { ok: false, why: `malformed Authorization (expected ${tokenScheme} TIME:NONCE:SITE:MAC)` };
    const t = Number(m[1]);
    const nonce = m[2]!;
    const site = m[3]!;
    const now = this.nowSeconds();
    if (Math.abs(now - t) > tokenSkewSecondsMax) return { ok: false, why: `token time ${t} is more than ${tokenSkewSecondsMax} s from this site's clock (${Math.floor(now)}); check the clocks` };
    if (site !== this.site && (site !== '*' || (method !== 'GET' && method !== 'HEAD'))) {
      return { ok: false, why: site === '*' ? `a token for any site only admits GET; ${method} needs a token naming site ${this.site}` : `token is for site ${site}, this is site ${this.site}` };
    }
    const want = tokenMac(this.key, method, path, site, t, nonce);
    if (!timingSafeEqual(want, Buffer.from(m[4]!, 'hex'))) return { ok: false, why: 'token does not match this cluster\'s key (or was made for another method or path)' };
    this.prune(now);
    if (this.seen.has(nonce)) return { ok: false, why: 'token already used (replayed request)' };
    if (this.seen.size >= tokenNoncesMax) return { ok: false, why: `more than ${tokenNoncesMax} tokens within ${tokenSkewSecondsMax} s; retry later`, busy: true };
    this.seen.set(nonce, t + tokenSkewSecondsMax);
    return { ok: true };
  }

  private prune(now: number): void {
    // Insertion order is roughly time order; stop at the first nonce still inside its window.
    for (const [n, until] of this.seen) {
      if (until + tokenSkewSecondsMax >= now) break;
      this.seen.delete(n);
    }
  }
}

// A site's NBD TLS (issue 17 item 7) from its `nbd-tls:` key: x509 with the site's own
// certificate from the cluster CA (or the operator's cert/key/ca files), PSK from a
// `identity:hexkey` file, an optional allow-list. Built once at start (SiteContext.nbdTls) and
// handed to the NbdServer; problems are start-up problems naming the key and the fix.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { SecureContextOptions } from 'node:tls';
import { cachedContext, parsePskFile, type NbdTlsOptions } from '../nbd/tls.js';
import type { ClusterConfig, SiteConfig } from './config.js';
import type { SiteTlsIdentity } from './link-security.js';
import { splitPem } from './pki.js';
import { privateFileProblem } from './private-files.js';

const loopbackHosts = new Set(['127.0.0.1', '::1', 'localhost']);

/** Undefined with nbd-tls: off; throws (message names the key and the fix) when it cannot be built. */
export function buildNbdTls(config: ClusterConfig, site: SiteConfig, identity: SiteTlsIdentity | undefined): NbdTlsOptions | undefined {
  const t = site.nbdTls;
  if (t.mode === 'off') return undefined;
  const key = `sites.${site.name}.nbd-tls`;
  const read = (path: string, what: string): string => {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new Error(`${key}: cannot read the ${what} ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  };
  let psk: Map<string, Buffer> | undefined;
  if (t.psk !== undefined) {
    const p = privateFileProblem(t.psk, `${key}.psk`);
    if (p !== undefined) throw new Error(p);
    psk = parsePskFile(read(t.psk, 'PSK file'), t.psk);
  }
  let options: () => SecureContextOptions | undefined;
  let trustedPem: () => string;
  if (t.cert !== undefined && t.key !== undefined) {
    const p = privateFileProblem(t.key, `${key}.key`);
    if (p !== undefined) throw new Error(p);
    const own = { cert: read(t.cert, 'certificate'), key: read(t.key, 'key'), ...(t.ca !== undefined ? { ca: read(t.ca, 'CA file') } : {}) };
    options = () => own;
    trustedPem = () => own.ca ?? (identity?.material.ca ?? '');
  } else if (identity !== undefined) {
    const caOverride = t.ca !== undefined ? read(t.ca, 'CA file') : undefined;
    options = () => ({ cert: identity.material.cert, key: identity.material.key, ca: caOverride ?? identity.material.ca });
    trustedPem = () => caOverride ?? identity.material.ca;
  } else if (psk === undefined) {
    throw new Error(`${key}: ${t.mode} needs a server certificate or a PSK file: with transport: insecure there is no site certificate, so give cert: and key: (and ca: for client certificates), or psk: FILE`);
  } else {
    options = () => undefined;
    trustedPem = () => '';
  }
  const requestCert = options() !== undefined;
  let lastPem = '';
  let trusted: X509Certificate[] = [];
  const ctxOptions = (): SecureContextOptions | undefined => {
    const o = options();
    return o === undefined ? undefined : { ...o, minVersion: 'TLSv1.2' };
  };
  let lastOpts: SecureContextOptions | undefined;
  let lastKey = '';
  const stable = (): SecureContextOptions | undefined => {
    const o = ctxOptions();
    const k = o === undefined ? '' : `${String(o.cert)}${String(o.ca)}`;
    if (k !== lastKey) {
      lastKey = k;
      lastOpts = o;
    }
    return lastOpts;
  };
  return {
    mode: t.mode,
    contextOptions: stable,
    secureContext: cachedContext(stable),
    ...(psk !== undefined ? { pskContext: cachedContext(() => undefined) } : {}),
    requestCert,
    trusted: () => {
      const pem = trustedPem();
      if (pem !== lastPem) {
        lastPem = pem;
        trusted = splitPem(pem).map((p) => new X509Certificate(p));
      }
      return trusted;
    },
    ...(psk !== undefined ? { psk } : {}),
    ...(t.allow !== undefined ? { allow: t.allow } : {}),
  };
}

/** The warning for an NBD export reachable off this machine without required TLS (or undefined). */
export function nbdExposureWarning(config: ClusterConfig, site: SiteConfig): string | undefined {
  if (site.nbd === undefined || site.nbdTls.mode === 'require' || loopbackHosts.has(site.nbd.host)) return undefined;
  return `sites.${site.name}.nbd: the NBD export ${config.volume.name} listens on ${site.nbd.text}, not only this machine, and nbd-tls is ${site.nbdTls.mode}: any host that reaches it reads and writes the volume in plain text. Set nbd-tls: require (x509 or psk) or bind it to 127.0.0.1.`;
}

// Builds a site's LinkSecurity (src/net/security.ts) once at start, from the cluster file and
// the site's TLS files (src/site/pki.ts): the one object every LinkServer and Dialer of the site
// gets (SiteContext.linkSecurity). The TLS context is re-read when ca.crt or the site's
// certificate or key change on disk (checked at most once per reloadCheckMs, on a new
// connection), so a renewed certificate or a CA roll takes effect without a restart; a reload
// that fails its checks keeps the current context and is logged.
import { X509Certificate } from 'node:crypto';
import { statSync } from 'node:fs';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import { tls13CipherOrder } from '../../hal/cpu.js';
import type { LinkSecurity, LinkTls } from '../net/security.js';
import type { ClusterConfig } from './config.js';
import { certExpiryWarnDays, loadSiteTls, siteCertFiles, splitPem, type TlsMaterial } from './pki.js';

export const reloadCheckMs = 1000;

export interface SecurityLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** node:tls options of a site's own identity: TLS 1.3 only, suites in the order this CPU runs fastest. */
export function tlsContextOptions(m: TlsMaterial): SecureContextOptions {
  return { ca: m.ca, cert: m.cert, key: m.key, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: tls13CipherOrder(), honorCipherOrder: true };
}

/**
 * The site's TLS identity, reloaded when its files change. `current()` never throws after the
 * first successful load; `material` is the last good one (the admin server and NBD use it too).
 */
export class SiteTlsIdentity {
  private ctx: SecureContext;
  private mat: TlsMaterial;
  private cas: X509Certificate[];
  private stamp: string;
  private checkedMs = 0;
  private readonly listeners: ((m: TlsMaterial) => void)[] = [];

  /** Throws (with the file and the fix) when the site's TLS files are missing or wrong. */
  constructor(
    private readonly config: ClusterConfig,
    private readonly site: string,
    private readonly log: SecurityLog,
  ) {
    this.mat = loadSiteTls(config, site);
    this.ctx = createSecureContext(tlsContextOptions(this.mat));
    this.cas = splitPem(this.mat.ca).map((p) => new X509Certificate(p));
    this.stamp = this.fileStamp();
    this.warnExpiry();
  }

  get material(): TlsMaterial {
    return this.mat;
  }

  /** Called with the new material after each successful reload. */
  onReload(fn: (m: TlsMaterial) => void): void {
    this.listeners.push(fn);
  }

  /** The trusted CA certificates (current files). */
  trusted(): readonly X509Certificate[] {
    this.current();
    return this.cas;
  }

  current(): SecureContext {
    const now = Date.now();
    if (now - this.checkedMs >= reloadCheckMs) {
      this.checkedMs = now;
      const stamp = this.fileStamp();
      if (stamp !== this.stamp) this.reload(stamp);
    }
    return this.ctx;
  }

  private reload(stamp: string): void {
    try {
      const m = loadSiteTls(this.config, this.site);
      this.ctx = createSecureContext(tlsContextOptions(m));
      this.cas = splitPem(m.ca).map((p) => new X509Certificate(p));
      this.mat = m;
      this.stamp = stamp;
      this.log.info({ event: 'tls-reloaded', notAfter: m.notAfter.toISOString() }, `TLS files of site ${this.site} changed: new connections use them (certificate valid until ${m.notAfter.toISOString()})`);
      this.warnExpiry();
      for (const fn of this.listeners) fn(m);
    } catch (err) {
      // Half-copied files, a key that does not match yet: keep what works, say why, retry later.
      this.stamp = stamp;
      this.log.warn({ event: 'tls-reload-failed', err: (err as Error).message }, `TLS files of site ${this.site} changed but cannot be used; keeping the current ones: ${(err as Error).message}`);
    }
  }

  private warnExpiry(): void {
    const days = (this.mat.notAfter.getTime() - Date.now()) / 86_400_000;
    if (days < certExpiryWarnDays) {
      this.log.warn({ event: 'tls-cert-expiring', notAfter: this.mat.notAfter.toISOString() }, `the certificate of site ${this.site} expires in ${Math.max(0, Math.floor(days))} day(s); renew it: geomirror pki issue --config ${this.config.file} --site ${this.site} --force`);
    }
  }

  private fileStamp(): string {
    const f = siteCertFiles(this.config, this.site);
    return [this.config.tls.caCert, f.cert, f.key]
      .map((p) => {
        try {
          const st = statSync(p);
          return `${st.mtimeMs}:${st.size}:${st.ino}`;
        } catch {
          return 'missing';
        }
      })
      .join('|');
  }
}

/** The site's LinkSecurity: TLS with its identity, or lab-mode plain TCP; both with the volume geometry. */
export function buildLinkSecurity(config: ClusterConfig, identity: SiteTlsIdentity | undefined): LinkSecurity {
  const geometry = { volumeBytes: BigInt(config.volume.sizeBytes), blockBytes: config.volume.blockSize };
  if (config.transport === 'insecure' || identity === undefined) return { transport: 'insecure', geometry };
  const tls: LinkTls = { cluster: config.cluster, secureContext: () => identity.current(), trusted: () => identity.trusted() };
  return { transport: 'tls', tls, geometry };
}

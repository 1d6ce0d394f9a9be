// How a replication link is secured (issue 17): ONE options object, built once per site
// (src/site/link-security.ts) and carried to every Link, LinkServer and Dialer the site makes.
//
//   transport 'tls'      mutual TLS 1.3: both ends present a certificate from the cluster CA; the
//                        certificate's subject names the site (CN) and the cluster (O), and that
//                        name, not the one claimed in HELLO/CHALLENGE, is who the peer is. The
//                        existing frames and the HMAC handshake run inside the TLS stream
//                        unchanged; the HMAC stays as a second factor (a stolen site key alone
//                        does not let anyone in) and is bound to the TLS session.
//   transport 'insecure' plain TCP with only the HMAC handshake: lab mode, logged loudly at
//                        every site start (src/site/run.ts).
//
// Both carry the volume geometry that the handshake checks (GEOMETRY_MISMATCH).
import type { X509Certificate } from 'node:crypto';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { VolumeGeometry } from '../wire/index.js';

/** Subject OU of a site certificate; client (CLI, NBD host) certificates carry another. */
export const siteCertUnit = 'geomirror-site';
/** Subject OU of a client certificate (geomirror CLI, Prometheus, an NBD host). */
export const clientCertUnit = 'geomirror-client';
/** RFC 5705 exporter label of the channel binding that the handshake MACs cover. */
export const channelBindingLabel = 'EXPORTER-geomirror-link-v2';
export const channelBindingBytes = 32;

export interface LinkTls {
  /** Cluster name every peer certificate must carry (subject O). */
  readonly cluster: string;
  /**
   * This site's key and certificate and the trusted CA certificates, as a node:tls context.
   * Called for every new connection, so a renewed certificate or a rolled CA (files changed on
   * disk) is used from the next connection on without a restart.
   */
  secureContext(): SecureContext;
  /** The CA certificates peers must chain to (old and new during a CA roll). */
  trusted(): readonly X509Certificate[];
}

export type LinkSecurity =
  | { readonly transport: 'tls'; readonly tls: LinkTls; readonly geometry: VolumeGeometry }
  | { readonly transport: 'insecure'; readonly geometry: VolumeGeometry };

/** Plain TCP (tests of the frame layer, `transport: insecure` clusters). */
export function insecureLinks(geometry: VolumeGeometry): LinkSecurity {
  return { transport: 'insecure', geometry };
}


/**
 * The site a verified peer certificate names, or a reason to refuse it. The chain was checked
 * against the cluster CA by TLS (socket.authorized); here: it is a site certificate (not a
 * client's) of this cluster, with exactly one CN.
 */
export function certifiedSite(cert: X509Certificate | undefined, cluster: string): { site: string } | { problem: string } {
  if (cert === undefined) return { problem: 'the peer sent no certificate' };
  const cn = subjectField(cert.subject, 'CN');
  const o = subjectField(cert.subject, 'O');
  const ou = subjectField(cert.subject, 'OU');
  if (ou !== siteCertUnit) return { problem: `the certificate of '${cn ?? '?'}' is not a site certificate (OU ${JSON.stringify(ou ?? null)}, want ${siteCertUnit}); issue one with: geomirror pki issue --site NAME` };
  if (o !== cluster) return { problem: `the certificate of '${cn ?? '?'}' is for cluster ${JSON.stringify(o ?? null)}, this is cluster '${cluster}'` };
  if (cn === undefined || cn === '') return { problem: 'the certificate names no site (no single CN)' };
  return { site: cn };
}

/**
 * Verifies the peer's certificate against the trusted CAs ourselves (both ends run with
 * rejectUnauthorized: false so that every refusal has a reason in words): signed by one of them,
 * both valid now. A certificate presented in TLS is also proven held (CertificateVerify).
 */
export function peerCertificateProblem(leaf: X509Certificate | undefined, trusted: readonly X509Certificate[], nowMs = Date.now()): string | undefined {
  if (leaf === undefined) return 'the peer sent no certificate (every site needs its own from the cluster CA)';
  const issuer = trusted.find((ca) => ca.ca && leaf.checkIssued(ca) && leaf.verify(ca.publicKey));
  if (issuer === undefined) {
    return `the certificate of '${subjectField(leaf.subject, 'CN') ?? '?'}' is not signed by this cluster's CA (issuer: ${leaf.issuer.replace(/\n/g, ', ')})`;
  }
  const from = Date.parse(leaf.validFrom);
  const to = Date.parse(leaf.validTo);
  if (nowMs > to) return `the certificate of '${subjectField(leaf.subject, 'CN') ?? '?'}' expired on ${new Date(to).toISOString()}; renew it with: geomirror pki issue --site NAME --force`;
  if (nowMs < from) return `the certificate of '${subjectField(leaf.subject, 'CN') ?? '?'}' is not valid before ${new Date(from).toISOString()} (clock skew?)`;
  if (nowMs > Date.parse(issuer.validTo)) return `the cluster CA that signed the certificate of '${subjectField(leaf.subject, 'CN') ?? '?'}' expired on ${issuer.validTo}; roll the CA: geomirror pki roll-ca`;
  return undefined;
}

/** One attribute of an X509Certificate subject ("CN=east\nOU=...\nO=demo"); undefined if absent or repeated. */
export function subjectField(subject: string, key: string): string | undefined {
  const values = subject.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
  return values.length === 1 ? values[0] : undefined;
}

/** Why TLS verification failed, in words an operator can act on (sockets verified by node:tls). */
export function authorizationProblem(sock: TLSSocket): string | undefined {
  if (sock.authorized) return undefined;
  const code = String(sock.authorizationError ?? 'UNKNOWN');
  const hint: Record<string, string> = {
    CERT_HAS_EXPIRED: 'the peer certificate has expired; renew it with: geomirror pki issue --site NAME --force',
    CERT_NOT_YET_VALID: 'the peer certificate is not valid yet (clock skew?)',
    UNABLE_TO_GET_ISSUER_CERT: 'the peer certificate is not signed by this cluster\'s CA',
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'the peer certificate is not signed by this cluster\'s CA',
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'the peer certificate is not signed by this cluster\'s CA',
    DEPTH_ZERO_SELF_SIGNED_CERT: 'the peer certificate is self-signed, not from this cluster\'s CA',
    SELF_SIGNED_CERT_IN_CHAIN: 'the peer certificate chains to another CA than this cluster\'s',
    ERR_TLS_CERT_ALTNAME_INVALID: 'the peer certificate names another host',
  };
  return `${hint[code] ?? 'the peer certificate did not verify against the cluster CA'} (${code})`;
}

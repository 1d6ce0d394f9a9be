// TLS on the NBD export (issue 17 item 7): NBD_OPT_STARTTLS as the NBD spec's "TLS support"
// section describes it, like qemu-nbd and nbdkit: x509 (a server certificate; clients present a
// certificate from the trusted CA) and PSK (`identity:hexkey` lines, the format of
// `nbdinfo --tls-psk-file` and qemu's tls-creds-psk keys.psk), and an optional allow-list of
// client names (certificate CN or PSK identity).
//
//   off      no TLS: STARTTLS answered NBD_REP_ERR_UNSUP
//   allow    plain and TLS clients
//   require  every option but STARTTLS and ABORT answered NBD_REP_ERR_TLS_REQD before TLS
import type { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext, type SecureContextOptions, type TLSSocket } from 'node:tls';
import { peerCertificateProblem, subjectField } from '../net/security.js';

export interface NbdTlsOptions {
  readonly mode: 'allow' | 'require';
  /** Server certificate, key and CA for x509; undefined for PSK only. Re-read per handshake. */
  contextOptions(): SecureContextOptions | undefined;
  /** A context built from contextOptions() (cached by the caller when it likes). */
  secureContext(): SecureContext;
  /** A context without a certificate, for clients that offer a PSK (see clientHelloOffersPsk). */
  pskContext?(): SecureContext;
  /** Ask for a client certificate (x509 configured). */
  readonly requestCert: boolean;
  /** CA certificates client certificates must chain to. */
  trusted(): readonly X509Certificate[];
  /** PSK identities and keys. */
  readonly psk?: ReadonlyMap<string, Buffer>;
  /** Client names admitted (certificate CN or PSK identity); undefined: every authenticated client. */
  readonly allow?: readonly string[];
}

/** Most bytes read while waiting for a whole ClientHello (one TLS record is at most 16 KiB + 5). */
export const tlsHelloBytesMax = 16 * 1024 + 5;

/** Longest PSK identity and key accepted from a PSK file. */
export const pskIdentityBytesMax = 128;
export const pskKeyBytesMax = 64;

/**
 * Parses a PSK file: one `identity:hexkey` per line (blank lines and # comments skipped), as
 * psktool writes and nbdinfo/qemu read. Throws naming the line.
 */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const identity = colon > 0 ? line.slice(0, colon) : '';
    const hex = colon > 0 ? line.slice(colon + 1) : '';
    if (identity === '' || Buffer.byteLength(identity) > pskIdentityBytesMax || !/^([0-9a-fA-F]{2}){16,}$/.test(hex) || hex.length / 2 > pskKeyBytesMax) {
      throw new Error(`${file}:${i + 1}: not an identity:hexkey line (a key of 16..${pskKeyBytesMax} bytes as hex; make one with: psktool -u NAME -p ${file})`);
    }
    out.set(identity, Buffer.from(hex, 'hex'));
  });
  if (out.size === 0) throw new Error(`${file}: no identity:hexkey line`);
  return out;
}

/** After the TLS handshake: who the client is, or why it is refused. */
export function nbdTlsClientProblem(tls: NbdTlsOptions, sock: TLSSocket, pskIdentity: string | undefined): { client: string; by: 'psk' | 'x509' } | { problem: string } {
  let client: string;
  let by: 'psk' | 'x509';
  if (pskIdentity !== undefined) {
    client = pskIdentity;
    by = 'psk';
  } else {
    const cert = sock.getPeerX509Certificate();
    if (cert === undefined) return { problem: 'no client certificate (x509 clients need one from the export\'s CA, e.g. geomirror pki client --name NAME; or use a PSK)' };
    const bad = peerCertificateProblem(cert, tls.trusted());
    if (bad !== undefined) return { problem: bad };
    client = subjectField(cert.subject, 'CN') ?? '';
    by = 'x509';
  }
  if (tls.allow !== undefined && !tls.allow.includes(client)) return { problem: `client '${client}' is not in the export's allow list (${tls.allow.join(', ')})` };
  return { client, by };
}

/** Wraps context options into NbdTlsOptions' secureContext with a cache keyed by identity. */
export function cachedContext(options: () => SecureContextOptions | undefined): () => SecureContext {
  let last: SecureContextOptions | undefined;
  let ctx: SecureContext | undefined;
  return () => {
    const o = options() ?? {};
    if (ctx === undefined || o !== last) {
      ctx = createSecureContext({ minVersion: 'TLSv1.2', ...o });
      last = o;
    }
    return ctx;
  };
}

/**
 * Does this TLS ClientHello offer a pre-shared key (extension 41, pre_shared_key; not 45,
 * psk_key_exchange_modes, which GnuTLS sends in every TLS 1.3 hello)? node:tls (OpenSSL) with a certificate in its context does not pick
 * an external PSK in TLS 1.3 (GnuTLS PSK clients then fail with "insufficient credentials"), so
 * the server looks at the ClientHello and hands a PSK client the PSK-only context. Returns
 * undefined while the record is incomplete; every length is bounds-checked (hostile input).
 */
export function clientHelloOffersPsk(b: Buffer): boolean | undefined {
  if (b.length < 5) return undefined;
  if (b[0] !== 22) return false; // not a handshake record: let TLS refuse it
  const recordBytes = b.readUInt16BE(3);
  if (b.length < 5 + recordBytes) return recordBytes > 16 * 1024 ? false : undefined;
  let at = 5;
  const end = 5 + recordBytes;
  const need = (n: number): boolean => at + n <= end;
  if (!need(4) || b[at] !== 1) return false; // ClientHello
  at += 4 + 2 + 32; // handshake header, legacy_version, random
  if (!need(1)) return false;
  at += 1 + b[at]!; // session id
  if (!need(2)) return false;
  at += 2 + b.readUInt16BE(at); // cipher suites
  if (!need(1)) return false;
  at += 1 + b[at]!; // compression methods
  if (!need(2)) return false;
  const extEnd = Math.min(end, at + 2 + b.readUInt16BE(at));
  at += 2;
  while (at + 4 <= extEnd) {
    const type = b.readUInt16BE(at);
    const len = b.readUInt16BE(at + 2);
    if (type === 41) return true;
    at += 4 + len;
  }
  return false;
}

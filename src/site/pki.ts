// The cluster's small PKI (issue 17 item 1): one CA per cluster, one key and certificate per
// site whose subject names the site (CN) and the cluster (O, OU geomirror-site), and client
// certificates (OU geomirror-client) for the CLI, Prometheus or an NBD host.
//
// Certificates are made with @peculiar/x509 (X.509 building and parsing on WebCrypto, typed,
// maintained; node-forge cannot sign with EC keys) over node:crypto's WebCrypto keys: ECDSA
// P-256, which node:tls 1.3 and GnuTLS (qemu, libnbd's nbdinfo/nbdcopy) all accept, and which
// OpenSSL signs and verifies fast on a Cortex-A72 without crypto extensions.
//
// Files (defaults beside the `secret:` file; `tls:` in the cluster file moves them):
//   ca.crt            trusted CA certificate(s), PEM; during a CA roll: new CA, then old CA
//   ca.key            the CA's private key (0600): where `geomirror pki` runs, not on sites
//   ca.old.key        the previous CA key, kept during a roll (removed by roll-ca --finish)
//   site-NAME.crt     site NAME's certificate (0644) and its private key site-NAME.key (0600)
//   client-NAME/      a client's ca-cert.pem, client-cert.pem, client-key.pem (GnuTLS layout,
//                     what nbdinfo's tls-certificates= and qemu's tls-creds-x509 dir= read)
import 'reflect-metadata';
import { X509Certificate as NodeX509, createPrivateKey, createPublicKey, webcrypto, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import type { ClusterConfig } from './config.js';
import { clientCertUnit, siteCertUnit } from '../net/security.js';
import { ensurePrivateDir, privateFileProblem, writePrivateFile } from './private-files.js';

x509.cryptoProvider.set(webcrypto as never);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const keyAlgorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
export const caCertUnit = 'geomirror-ca';
export const caValidDays = 3650;
export const siteCertValidDaysDefault = 365;
/** A site warns at start when its certificate expires within this. */
export const certExpiryWarnDays = 30;
const dayMs = 86_400_000;

export interface SiteCertFiles {
  cert: string;
  key: string;
}

export function siteCertFiles(config: ClusterConfig, site: string): SiteCertFiles {
  return { cert: join(config.tls.dir, `site-${site}.crt`), key: join(config.tls.dir, `site-${site}.key`) };
}

export function clientCertDir(config: ClusterConfig, name: string): string {
  return join(config.tls.dir, `client-${name}`);
}

const oldCaKeyPath = (config: ClusterConfig): string => config.tls.caKey.replace(/(\.key)?$/, '.old.key');

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(keyAlgorithm, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
}

async function importKeyPem(pem: string, what: string): Promise<CryptoKey> {
  const m = /-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/.exec(pem);
  if (!m) throw new Error(`${what} is not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)`);
  const der = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
  return webcrypto.subtle.importKey('pkcs8', der, keyAlgorithm, false, ['sign']);
}

/** Every certificate of a PEM bundle. */
export function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((p) => `${p}\n`) ?? [];
}

function readText(path: string, what: string, fix: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(`${what} ${path} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`}; ${fix}`);
  }
}

function serial(): string {
  const b = webcrypto.getRandomValues(new Uint8Array(16));
  b[0]! &= 0x7f; // positive
  return Buffer.from(b).toString('hex');
}

export interface CreatedFile {
  path: string;
  what: string;
}

/** A new CA key and self-signed certificate (refuses existing files unless force). */
export async function createCa(config: ClusterConfig, options: { force?: boolean } = {}): Promise<CreatedFile[]> {
  const { caCert, caKey } = config.tls;
  if (!options.force && (existsSync(caKey) || existsSync(caCert))) {
    throw new Error(`${existsSync(caKey) ? caKey : caCert} already exists; a new CA makes every site certificate of this cluster untrusted. To replace the CA without stopping the cluster use: geomirror pki roll-ca`);
  }
  const { certPem, keyPemText } = await makeCa(config.cluster);
  ensurePrivateDir(config.tls.dir);
  writePrivateFile(caKey, keyPemText, { force: options.force === true, what: 'CA key' });
  writePrivateFile(caCert, certPem, { force: options.force === true, mode: 0o644, what: 'CA certificate' });
  return [{ path: caKey, what: 'CA key' }, { path: caCert, what: 'CA certificate' }];
}

async function makeCa(cluster: string): Promise<{ certPem: string; keyPemText: string }> {
  const keys = await newKeyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: [{ CN: [`geomirror CA ${cluster} ${new Date(now).toISOString().slice(0, 10)}`] }, { OU: [caCertUnit] }, { O: [cluster] }],
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + caValidDays * dayMs),
    signingAlgorithm: keyAlgorithm,
    keys: keys as never,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as never),
    ],
  });
  return { certPem: `${cert.toString('pem')}\n`, keyPemText: await keyPem(keys.privateKey) };
}

/** The CA that signs: the newest certificate of ca.crt whose key is ca.key. */
async function loadSigningCa(config: ClusterConfig): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  const { caCert, caKey } = config.tls;
  const keyText = readText(caKey, 'CA key', 'certificates are issued where the CA key is (create a CA with: geomirror pki init)');
  const problem = privateFileProblem(caKey, 'tls.ca-key');
  if (problem !== undefined) throw new Error(problem);
  const key = await importKeyPem(keyText, caKey);
  const certs = splitPem(readText(caCert, 'CA certificate', 'create a CA with: geomirror pki init')).map((p) => new x509.X509Certificate(p));
  const pub = await webcrypto.subtle.exportKey('spki', await derivePublic(keyText));
  for (const c of certs) {
    if (Buffer.from(c.publicKey.rawData).equals(Buffer.from(pub))) return { cert: c, key };
  }
  throw new Error(`no certificate in ${caCert} belongs to the CA key ${caKey}; they come from different CAs`);
}

/** The public half of a PKCS#8 EC key (via node's KeyObject). */
async function derivePublic(pem: string): Promise<CryptoKey> {
  const spki = createPublicKey(createPrivateKey(pem)).export({ type: 'spki', format: 'der' });
  return webcrypto.subtle.importKey('spki', spki, keyAlgorithm, true, ['verify']);
}

/** Host names and addresses a site is reached at (its listen/nbd/admin, and peers' connect: to it). */
export function siteHosts(config: ClusterConfig, site: string): string[] {
  const s = config.sites[site];
  const hosts = new Set<string>();
  if (s) for (const a of [s.listen, s.nbd, s.admin]) if (a) hosts.add(a.host);
  for (const other of Object.values(config.sites)) {
    const a = other.connect[site];
    if (a) hosts.add(a.host);
  }
  for (const w of ['0.0.0.0', '::', '']) hosts.delete(w);
  return [...hosts];
}

export interface IssueOptions {
  force?: boolean;
  validDays?: number;
  /** Tests: a certificate valid from/until these times (an expired one, say). */
  notBefore?: Date;
  notAfter?: Date;
}

async function issue(config: ClusterConfig, subject: x509.JsonName, unit: string, hosts: string[], o: IssueOptions): Promise<{ certPem: string; keyPemText: string }> {
  const ca = await loadSigningCa(config);
  const keys = await newKeyPair();
  const now = Date.now();
  const notAfter = o.notAfter ?? new Date(now + (o.validDays ?? siteCertValidDaysDefault) * dayMs);
  if (notAfter.getTime() > ca.cert.notAfter.getTime()) throw new Error(`the certificate would outlive its CA (which expires ${ca.cert.notAfter.toISOString()}); roll the CA first: geomirror pki roll-ca`);
  const san = hosts.map((h) => ({ type: (isIP(h) ? 'ip' : 'dns') as 'ip' | 'dns', value: h }));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject,
    issuer: ca.cert.subject,
    notBefore: o.notBefore ?? new Date(now - 60_000),
    notAfter,
    signingAlgorithm: keyAlgorithm,
    publicKey: keys.publicKey as never,
    signingKey: ca.key as never,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(unit === siteCertUnit ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.clientAuth]),
      ...(san.length > 0 ? [new x509.SubjectAlternativeNameExtension(san)] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  return { certPem: `${cert.toString('pem')}\n`, keyPemText: await keyPem(keys.privateKey) };
}

/** Issues (or, with force, renews) site `site`'s key and certificate. */
export async function issueSiteCert(config: ClusterConfig, site: string, o: IssueOptions = {}): Promise<CreatedFile[]> {
  if (config.sites[site] === undefined) throw new Error(`no site named ${site} in ${config.file}; sites are ${config.siteNames.join(', ')}`);
  const files = siteCertFiles(config, site);
  if (!o.force && (existsSync(files.cert) || existsSync(files.key))) {
    throw new Error(`${existsSync(files.cert) ? files.cert : files.key} already exists; renew it with --force (the site picks the new one up on its next connection)`);
  }
  const { certPem, keyPemText } = await issue(config, [{ CN: [site] }, { OU: [siteCertUnit] }, { O: [config.cluster] }], siteCertUnit, siteHosts(config, site), o);
  // Key first, then certificate: a site reloading in between sees the old pair fail to match
  // and keeps its current context (src/site/link-security.ts).
  writePrivateFile(files.key, keyPemText, { force: o.force === true, what: 'site key' });
  writePrivateFile(files.cert, certPem, { force: o.force === true, mode: 0o644, what: 'site certificate' });
  return [{ path: files.key, what: `site ${site} key` }, { path: files.cert, what: `site ${site} certificate` }];
}

/**
 * A client certificate (geomirror CLI on another machine, Prometheus, an NBD host) in the
 * GnuTLS folder layout: ca-cert.pem, client-cert.pem, client-key.pem.
 */
export async function issueClientCert(config: ClusterConfig, name: string, outDir = clientCertDir(config, name), o: IssueOptions = {}): Promise<CreatedFile[]> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) throw new Error(`client name ${JSON.stringify(name)}: use letters, digits, '.', '_' or '-' (at most 64)`);
  const { certPem, keyPemText } = await issue(config, [{ CN: [name] }, { OU: [clientCertUnit] }, { O: [config.cluster] }], clientCertUnit, [], o);
  ensurePrivateDir(outDir);
  const caPem = readFileSync(config.tls.caCert, 'utf8');
  const out = { ca: join(outDir, 'ca-cert.pem'), cert: join(outDir, 'client-cert.pem'), key: join(outDir, 'client-key.pem') };
  writePrivateFile(out.key, keyPemText, { force: o.force === true, what: 'client key' });
  writePrivateFile(out.cert, certPem, { force: o.force === true, mode: 0o644, what: 'client certificate' });
  writePrivateFile(out.ca, caPem, { force: true, mode: 0o644, what: 'CA certificate' });
  return [{ path: out.key, what: `client ${name} key` }, { path: out.cert, what: `client ${name} certificate` }, { path: out.ca, what: 'CA certificate' }];
}

/**
 * CA roll without stopping the cluster (docs/OPERATIONS.md, "Certificates and rotation"):
 *   start:  a new CA key; ca.crt = new CA + old CA (every site trusts both); the old key is
 *           kept as ca.old.key. Copy ca.crt to every site, then re-issue every site's
 *           certificate (pki issue --force, now signed by the new CA) and copy those.
 *   finish: ca.crt = the new CA only; ca.old.key removed. Copy ca.crt to every site.
 */
export async function rollCa(config: ClusterConfig, phase: 'start' | 'finish', force = false): Promise<CreatedFile[]> {
  const { caCert, caKey } = config.tls;
  const old = oldCaKeyPath(config);
  if (phase === 'start') {
    if (existsSync(old)) throw new Error(`${old} exists: a CA roll is already under way; finish it with: geomirror pki roll-ca --finish`);
    const current = splitPem(readText(caCert, 'CA certificate', 'nothing to roll; create a CA with: geomirror pki init'));
    readText(caKey, 'CA key', 'the roll needs the current CA key');
    const { certPem, keyPemText } = await makeCa(config.cluster);
    renameSync(caKey, old);
    writePrivateFile(caKey, keyPemText, { what: 'CA key' });
    writePrivateFile(caCert, [certPem, ...current].join(''), { force: true, mode: 0o644, what: 'CA bundle' });
    return [{ path: caKey, what: 'new CA key' }, { path: caCert, what: 'CA bundle (new + old)' }, { path: old, what: 'old CA key (kept until --finish)' }];
  }
  if (!existsSync(old)) throw new Error(`no CA roll under way (${old} does not exist); start one with: geomirror pki roll-ca --start`);
  const signing = await loadSigningCa(config);
  // Finishing drops the old CA: a site still holding an old certificate would be locked out.
  const newCa = new NodeX509(signing.cert.toString('pem'));
  const stale = config.siteNames.filter((s) => {
    const f = siteCertFiles(config, s);
    if (!existsSync(f.cert)) return false;
    const c = new NodeX509(readFileSync(f.cert, 'utf8'));
    return !(c.checkIssued(newCa) && c.verify(newCa.publicKey));
  });
  if (stale.length > 0 && !force) {
    throw new Error(`site certificate(s) of ${stale.join(', ')} are still from the old CA; re-issue them first (geomirror pki issue --config ${config.file} --site NAME --force) and copy them, or finish anyway with --force`);
  }
  writePrivateFile(caCert, `${signing.cert.toString('pem')}\n`, { force: true, mode: 0o644, what: 'CA certificate' });
  rmSync(old);
  return [{ path: caCert, what: 'CA certificate (new CA only)' }];
}

export interface PreparedPki {
  created: CreatedFile[];
}

/** First run (geomirror start, test harnesses): a missing CA and missing site certificates are made. */
export async function preparePki(config: ClusterConfig, sites: readonly string[] = config.siteNames): Promise<PreparedPki> {
  const created: CreatedFile[] = [];
  if (config.transport === 'insecure') return { created };
  if (!existsSync(config.tls.caCert) && !existsSync(config.tls.caKey)) created.push(...(await createCa(config)));
  for (const s of sites) {
    const f = siteCertFiles(config, s);
    if (!existsSync(f.cert) && !existsSync(f.key)) created.push(...(await issueSiteCert(config, s)));
  }
  return { created };
}

export interface TlsMaterial {
  /** PEM bundle of trusted CA certificates. */
  ca: string;
  cert: string;
  key: string;
  /** When the site certificate stops being valid. */
  notAfter: Date;
}

/**
 * A site's TLS files, checked at start (and at every reload): present, the key private, the
 * certificate a site certificate of this cluster naming this site, not expired, chaining to a
 * CA of ca.crt. Throws with the file and the fix.
 */
export function loadSiteTls(config: ClusterConfig, site: string): TlsMaterial {
  const files = siteCertFiles(config, site);
  const fixIssue = `issue it with: geomirror pki issue --config ${config.file} --site ${site}`;
  const ca = readText(config.tls.caCert, 'tls.ca: CA certificate', `every site needs the cluster's ca.crt (geomirror pki init makes one)`);
  const cert = readText(files.cert, `site ${site}: certificate`, fixIssue);
  const key = readText(files.key, `site ${site}: key`, fixIssue);
  const problem = privateFileProblem(files.key, `site ${site} key`);
  if (problem !== undefined) throw new Error(problem);
  const cas = splitPem(ca).map((p) => new NodeX509(p));
  if (cas.length === 0) throw new Error(`tls.ca: ${config.tls.caCert} holds no PEM certificate`);
  const c = new NodeX509(cert);
  const subject = Object.fromEntries(c.subject.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  if (subject.CN !== site || subject.O !== config.cluster || subject.OU !== siteCertUnit) {
    throw new Error(`site ${site}: ${files.cert} is not a certificate of site '${site}' of cluster '${config.cluster}' (its subject: ${c.subject.replace(/\n/g, ', ')}); ${fixIssue} --force`);
  }
  const notAfter = new Date(c.validTo);
  if (notAfter.getTime() < Date.now()) throw new Error(`site ${site}: ${files.cert} expired on ${notAfter.toISOString()}; renew it with: geomirror pki issue --config ${config.file} --site ${site} --force`);
  if (!cas.some((a) => c.checkIssued(a) && c.verify(a.publicKey))) {
    throw new Error(`site ${site}: ${files.cert} is not signed by a CA in ${config.tls.caCert}; copy the cluster's current ca.crt here, or re-issue: ${fixIssue} --force`);
  }
  if (!c.checkPrivateKey(createPrivateKeySync(key, files.key))) throw new Error(`site ${site}: ${files.key} is not the key of ${files.cert}; re-issue both: ${fixIssue} --force`);
  return { ca, cert, key, notAfter };
}

function createPrivateKeySync(pem: string, path: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new Error(`${path} is not a readable private key (${(err as Error).message})`);
  }
}

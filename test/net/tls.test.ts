// Mutual TLS on replication links (issue 17 items 1-2), over real loopback TCP: a listener with
// site east's certificate refuses, each with a logged reason, a client holding another site's
// certificate from the cluster CA, a certificate from a foreign CA, an expired certificate and a
// plain-TCP client; a wrong volume geometry is refused at the handshake naming both values; a
// renewed site certificate and a CA roll (old + new trusted) take effect without a restart.
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Dialer, LinkServer, type Link, type LinkSecurity } from '../../src/net/index.js';
import { parseConfig, type ClusterConfig } from '../../src/site/config.js';
import { buildLinkSecurity, SiteTlsIdentity, tlsContextOptions } from '../../src/site/link-security.js';
import { createCa, issueSiteCert, preparePki, rollCa, siteCertFiles, splitPem } from '../../src/site/pki.js';
import { encodeFrame } from '../../src/wire/index.js';
import { captureLogger, rawExchange, sendWritesKeepAll, until } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-tls-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
const secret = Buffer.alloc(32, 0xa7);
const quiet = { info: () => {}, warn: () => {} };

function cluster(sub: string, size = '1GiB'): ClusterConfig {
  return parseConfig(
    `cluster: demo\nsecret: ${secret.toString('hex')}\nvolume: { name: v, size: ${size} }\nsites:\n` +
      `  local: { role: primary, nbd: 127.0.0.1:1, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], mirrors: [east, west] }\n` +
      `  east: { role: mirror, listen: 127.0.0.1:2, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }\n` +
      `  west: { role: mirror, listen: 127.0.0.1:3, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }\n`,
    join(dir, sub, 'cluster.yaml'),
  );
}

function security(config: ClusterConfig, site: string): LinkSecurity {
  return buildLinkSecurity(config, new SiteTlsIdentity(config, site, quiet));
}

/** A LinkSecurity from raw PEMs, bypassing the start-up checks (an expired certificate, say). */
function rawSecurity(config: ClusterConfig, cert: string, key: string): LinkSecurity {
  const ca = readFileSync(config.tls.caCert, 'utf8');
  const ctx = createSecureContext(tlsContextOptions({ ca, cert, key, notAfter: new Date() }));
  const trusted = splitPem(ca).map((p) => new X509Certificate(p));
  return { transport: 'tls', geometry: { volumeBytes: 1n << 30n, blockBytes: 4096 }, tls: { cluster: config.cluster, secureContext: () => ctx, trusted: () => trusted } };
}

async function listen(config: ClusterConfig, sec = security(config, 'east')) {
  const logger = captureLogger();
  const server = new LinkServer({ cluster: 'demo', site: 'east', secret, security: sec, peers: ['local', 'west'], host: '127.0.0.1', port: 0, logger });
  const { port } = await server.listen();
  cleanups.push(() => server.close());
  return { server, port, logger };
}

function dial(port: number, sec: LinkSecurity, site = 'local') {
  const logger = captureLogger();
  const d = new Dialer({ cluster: 'demo', site, peer: 'east', secret, security: sec, host: '127.0.0.1', port, logger, backoffMsMin: 30, backoffMsMax: 200 });
  const linked = new Promise<Link>((r) => d.once('link', r));
  const failed = new Promise<{ reason: string }>((r) => d.once('attempt-failed', r));
  d.start();
  cleanups.push(() => d.stop());
  return { d, logger, linked, failed };
}

const refusals = (l: ReturnType<typeof captureLogger>) => l.lines.filter((x) => x.level === 'warn').map((x) => String(x.obj.reason ?? ''));

describe('mutual TLS on replication links', () => {
  const config = cluster('main');

  it('links with certificates from the cluster CA, inside TLS 1.3', async () => {
    await preparePki(config);
    const { port, server } = await listen(config);
    const { linked } = dial(port, security(config, 'local'));
    const link = await linked;
    expect(link.peer).toBe('east');
    expect(link.certifiedPeer).toBe('east');
    await until(() => server.link('local')?.certifiedPeer === 'local', 'listener side certified local');
    const tls = link.socket as import('node:tls').TLSSocket;
    expect(tls.getProtocol()).toBe('TLSv1.3');
  });

  it('received payloads of 1 B..1 MiB stay intact while kept, both directions (TLS cleartext into reused buffers)', async () => {
    await preparePki(config);
    const { port, server } = await listen(config);
    const { linked } = dial(port, security(config, 'local'));
    const link = await linked;
    await until(() => server.link('local')?.state === 'established', 'listener side established');
    await sendWritesKeepAll(link, server.link('local')!);
    await sendWritesKeepAll(server.link('local')!, link, 18);
  });

  it('refuses another site\'s certificate (west claiming to be local): IDENTITY_MISMATCH, logged', async () => {
    const { port, logger } = await listen(config);
    const { failed } = dial(port, security(config, 'west'), 'local');
    expect((await failed).reason).toMatch(/IDENTITY_MISMATCH|claims to be site 'local' but its certificate names site 'west'/);
    await until(() => refusals(logger).some((r) => /claims to be site 'local' but its certificate names site 'west'/.test(r)), 'listener logs the mismatch');
  });

  it('refuses a certificate from a foreign CA, logged', async () => {
    const foreign = cluster('foreign');
    await createCa(foreign);
    await issueSiteCert(foreign, 'local');
    const f = siteCertFiles(foreign, 'local');
    const { port, logger } = await listen(config);
    dial(port, rawSecurity(config, readFileSync(f.cert, 'utf8'), readFileSync(f.key, 'utf8')));
    await until(() => refusals(logger).some((r) => /not signed by this cluster's CA/.test(r)), 'listener logs the foreign CA');
  });

  it('refuses an expired certificate, logged', async () => {
    const old = cluster('expired');
    // Same CA as the cluster (copied in), an expired certificate for local.
    const { copyFileSync, mkdirSync } = await import('node:fs');
    mkdirSync(old.tls.dir, { recursive: true, mode: 0o700 });
    copyFileSync(config.tls.caCert, old.tls.caCert);
    copyFileSync(config.tls.caKey, old.tls.caKey);
    await issueSiteCert(old, 'local', { notBefore: new Date(Date.now() - 3 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
    const f = siteCertFiles(old, 'local');
    const { port, logger } = await listen(config);
    dial(port, rawSecurity(config, readFileSync(f.cert, 'utf8'), readFileSync(f.key, 'utf8')));
    await until(() => refusals(logger).some((r) => /certificate of 'local' expired on/.test(r)), 'listener logs the expiry');
    // And a site refuses to start with one (named, with the renewal command).
    expect(() => new SiteTlsIdentity(old, 'local', quiet)).toThrow(/expired on .*geomirror pki issue .* --site local --force/);
  });

  it('refuses a plain-TCP client speaking the old protocol, logged', async () => {
    const { port, logger } = await listen(config);
    const hello = encodeFrame({ type: 'HELLO', versionMin: 2, versionMax: 2, nonce: Buffer.alloc(32, 1), volumeBytes: 1n << 30n, blockBytes: 4096, group: 0, cluster: 'demo', site: 'local', target: 'east' }, 0);
    const r = await rawExchange(port, hello);
    expect(r.closed).toBe(true);
    expect(r.received.includes(Buffer.from('GMRP'))).toBe(false); // not a word of the protocol in plain text
    await until(() => refusals(logger).some((x) => /TLS handshake/.test(x)), 'listener logs the TLS failure');
  });

  it('refuses a peer whose volume geometry differs, naming both values', async () => {
    const { port, logger } = await listen(config);
    const sec = security(config, 'local');
    const other: LinkSecurity = { ...sec, geometry: { volumeBytes: 2n << 30n, blockBytes: 4096 } } as LinkSecurity;
    const { failed } = dial(port, other);
    expect((await failed).reason).toMatch(/GEOMETRY_MISMATCH/);
    await until(() => refusals(logger).some((r) => /volume size 2147483648 bytes and block size 4096, site 'east' has 1073741824 bytes/.test(r)), 'listener names both geometries');
  });

  it('renewal and a CA roll take effect on new connections without restarting the listener', async () => {
    const c = cluster('roll');
    await preparePki(c);
    const { port } = await listen(c);
    const eastCert = () => new X509Certificate(readFileSync(siteCertFiles(c, 'east').cert, 'utf8')).serialNumber;
    const before = eastCert();
    await (await dial(port, security(c, 'local')).linked);
    // Renew east (the listener reloads its files on the next connection).
    await issueSiteCert(c, 'east', { force: true });
    expect(eastCert()).not.toBe(before);
    await new Promise((r) => setTimeout(r, 1100)); // reloadCheckMs
    const renewed = await (await dial(port, security(c, 'local')).linked);
    expect(renewed.peerCertificate!.serialNumber).toBe(eastCert());
    // Roll: new CA trusted next to the old; local re-issued by the new CA, east still old: both link.
    await rollCa(c, 'start');
    await issueSiteCert(c, 'local', { force: true });
    await expect(rollCa(c, 'finish')).rejects.toThrow(/east.*still from the old CA/);
    await new Promise((r) => setTimeout(r, 1100));
    await (await dial(port, security(c, 'local')).linked);
    await issueSiteCert(c, 'east', { force: true });
    await issueSiteCert(c, 'west', { force: true });
    await rollCa(c, 'finish');
    await new Promise((r) => setTimeout(r, 1100));
    await (await dial(port, security(c, 'local')).linked);
  });
});

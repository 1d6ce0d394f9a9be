// The live conformance player against this repo's own LinkServer over real TCP with mutual TLS
// (the player holds site 'local''s certificate, as `npm run conformance -- --config` does):
// every case passes against a correct site, and the player does report failures (wrong key).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/site/config.js';
import { siteCertFiles } from '../../src/site/pki.js';
import { siteSecurity } from '../net/tls-fixture.js';
import type { LiveOptions } from './live.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinkServer, type Link } from '../../src/net/index.js';
import { heardAgoNever } from '../../src/wire/index.js';
import { runLive } from './live.js';

const secret = randomBytes(32);
let server: LinkServer;
let port = 0;
const refusals: string[] = [];
const dir = mkdtempSync(join(tmpdir(), 'geomirror-live-'));
let tls: LiveOptions['tls'];

beforeAll(async () => {
  const config = parseConfig(
    `cluster: demo\nsecret: ${secret.toString('hex')}\nvolume: { name: v, size: 1GiB }\nsites:\n  local: { role: primary, nbd: 127.0.0.1:1, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], mirrors: [east] }\n  east: { role: mirror, listen: 127.0.0.1:2, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }\n`,
    join(dir, 'cluster.yaml'),
  );
  const security = await siteSecurity(config, 'east');
  await siteSecurity(config, 'local');
  const f = siteCertFiles(config, 'local');
  tls = { ca: readFileSync(config.tls.caCert, 'utf8'), cert: readFileSync(f.cert, 'utf8'), key: readFileSync(f.key, 'utf8') };
  server = new LinkServer({ cluster: 'demo', site: 'east', secret, security, peers: ['local'], host: '127.0.0.1', port: 0 });
  // The site layer's part, minimal: answer STATUS_REQUEST and LAST_HEARD_QUERY (as a site that
  // never heard its primary).
  server.on('link', (link: Link) => {
    link.on('message', (m) => {
      if (m.type === 'STATUS_REQUEST') link.send({ type: 'STATUS_REPLY', requestId: m.requestId, entries: [['role', 'mirror']] });
      if (m.type === 'LAST_HEARD_QUERY') link.send({ type: 'LAST_HEARD_ANSWER', epoch: 1n, queryId: m.queryId, heardAgoMs: heardAgoNever, seqReceived: 0n });
    });
  });
  server.on('refused', (r) => refusals.push(String(r.code)));
  ({ port } = await server.listen());
});
afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('npm run conformance against a live LinkServer', () => {
  it('passes every case', async () => {
    const results = await runLive({ host: '127.0.0.1', port, secret, cluster: 'demo', site: 'east', as: 'local', tls });
    const failed = results.filter((r) => !r.pass);
    expect(failed, failed.map((f) => `${f.name}: ${f.detail}`).join('\n')).toEqual([]);
    expect(results.length).toBeGreaterThan(25);
    expect(refusals.length).toBeGreaterThan(20);
  });

  it('reports failures when the site does not accept its key', async () => {
    const results = await runLive({ host: '127.0.0.1', port, secret: randomBytes(32), cluster: 'demo', site: 'east', as: 'local', timeoutMs: 1000, tls });
    const hs = results.find((r) => r.name.startsWith('handshake'))!;
    expect(hs.pass).toBe(false);
    expect(hs.detail).toContain('AUTH_FAILED');
  });
});

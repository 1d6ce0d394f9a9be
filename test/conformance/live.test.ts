// The live conformance player against this repo's own LinkServer over real TCP: every case
// passes against a correct site, and the player does report failures (wrong key).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinkServer, type Link } from '../../src/net/index.js';
import { heardAgoNever } from '../../src/wire/index.js';
import { runLive } from './live.js';

const secret = randomBytes(32);
let server: LinkServer;
let port = 0;
const refusals: string[] = [];

beforeAll(async () => {
  server = new LinkServer({ cluster: 'demo', site: 'east', secret, peers: ['local'], host: '127.0.0.1', port: 0 });
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
afterAll(() => server.close());

describe('npm run conformance against a live LinkServer', () => {
  it('passes every case', async () => {
    const results = await runLive({ host: '127.0.0.1', port, secret, cluster: 'demo', site: 'east', as: 'local' });
    const failed = results.filter((r) => !r.pass);
    expect(failed, failed.map((f) => `${f.name}: ${f.detail}`).join('\n')).toEqual([]);
    expect(results.length).toBeGreaterThan(25);
    expect(refusals.length).toBeGreaterThan(20);
  });

  it('reports failures when the site does not accept its key', async () => {
    const results = await runLive({ host: '127.0.0.1', port, secret: randomBytes(32), cluster: 'demo', site: 'east', as: 'local', timeoutMs: 1000 });
    const hs = results.find((r) => r.name.startsWith('handshake'))!;
    expect(hs.pass).toBe(false);
    expect(hs.detail).toContain('AUTH_FAILED');
  });
});

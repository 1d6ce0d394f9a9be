// One replication port for several consistency groups (issue 20, src/site/link-hub.ts): HELLO
// names the group, the hub hands the link to that group's handler, a group the site does not
// carry is refused at the handshake naming it, a group between lives is closed so its dialer
// redials, and the first HEARTBEAT already carries the group's epoch.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { Dialer, insecureLinks, type Link, type LinkClose } from '../../src/net/index.js';
import { LinkHub } from '../../src/site/link-hub.js';
import { freePort, until } from '../net/helpers.js';

const secret = randomBytes(32);
const geometry = (group: number) => ({ volumeBytes: BigInt((group + 1) << 20), blockBytes: 4096, group });
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function hub(): Promise<{ hub: LinkHub; port: number }> {
  const port = await freePort();
  const h = new LinkHub({ cluster: 'demo', site: 'east', secret, security: insecureLinks(geometry(0)), peers: ['local'], host: '127.0.0.1', port }, new Map([0, 1, 2].map((g) => [g, geometry(g)])));
  await h.listen();
  cleanup.push(() => h.close());
  return { hub: h, port };
}

function dial(port: number, group: number, volumeBytes = BigInt((group + 1) << 20)): { dialer: Dialer; links: Link[]; refusals: string[]; heard: bigint[] } {
  const dialer = new Dialer({ cluster: 'demo', site: 'local', peer: 'east', secret, security: insecureLinks({ volumeBytes, blockBytes: 4096, group }), host: '127.0.0.1', port, backoffMsMin: 20, backoffMsMax: 100 });
  const links: Link[] = [];
  const refusals: string[] = [];
  const heard: bigint[] = [];
  dialer.on('link', (l: Link) => {
    links.push(l);
    l.on('heartbeat', (hb) => heard.push(hb.epoch));
    l.once('close', (c: LinkClose) => refusals.push(c.reason));
  });
  dialer.on('attempt-failed', (r) => refusals.push(r.reason));
  dialer.start();
  cleanup.push(() => dialer.stop());
  return { dialer, links, refusals, heard };
}

describe('LinkHub', () => {
  it("hands each group's link to that group's handler, its heartbeats carrying the group's epoch from the first", async () => {
    const { hub: h, port } = await hub();
    const got = new Map<number, Link>();
    h.register(1, (l) => got.set(1, l), () => ({ epoch: 11n, lastSeq: 5n }));
    h.register(2, (l) => got.set(2, l), () => ({ epoch: 22n, lastSeq: 7n }));
    const a = dial(port, 1);
    const b = dial(port, 2);
    await until(() => got.size === 2 && a.heard.length > 0 && b.heard.length > 0, 'both handed over, a heartbeat each');
    expect(got.get(1)!.group).toBe(1);
    expect(got.get(2)!.group).toBe(2);
    expect(a.heard[0]).toBe(11n);
    expect(b.heard[0]).toBe(22n);
  });

  it('refuses a group the site does not carry, naming it, and one whose geometry differs', async () => {
    const { port } = await hub();
    const unknown = dial(port, 5);
    await until(() => unknown.refusals.length > 0, 'the refusal');
    expect(unknown.refusals[0]).toMatch(/dialed consistency group 5, which 'east' does not carry/);
    const wrongSize = dial(port, 1, 123n * 4096n);
    await until(() => wrongSize.refusals.length > 0, 'the refusal');
    expect(wrongSize.refusals[0]).toMatch(/volume size 503808 bytes .* 2097152 bytes/);
  });

  it('a group between lives (no handler) has its link closed; once its handler is back the dialer gets in', async () => {
    const { hub: h, port } = await hub();
    const d = dial(port, 0);
    await until(() => d.refusals.some((r) => /consistency group 0 of site 'east' is restarting/.test(r)), 'the close');
    let attached: Link | undefined;
    h.register(0, (l) => (attached = l), () => ({ epoch: 1n, lastSeq: 0n }));
    await until(() => attached !== undefined, 'the redial handed over');
    expect(attached!.group).toBe(0);
  });
});

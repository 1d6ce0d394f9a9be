// The `coordinator:` key (issue 20 item 3): etcd as the failover arbiter. A valid one is
// normalized; every refusal names its key path and says the fix; a witness beside it is refused
// naming both keys (the vote and etcd never mix).
import { describe, expect, it } from 'vitest';
import { configProblems } from './config-problems.js';
import { parseConfig } from '../../src/site/config.js';

const file = '/srv/demo/cluster.yaml';
const base = `
cluster: demo
secret: 00112233445566778899aabbccddeeff
volume: { name: vol0, size: 1GiB, blockSize: 4096 }
COORD
sites:
  local: { role: primary, listen: 127.0.0.1:7400, nbd: 127.0.0.1:10809, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], mirrors: [east]LOCAL }
  backup: { role: standby, standby-for: local, listen: 127.0.0.1:7403, nbd: 127.0.0.1:10810, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"]BACKUP }
  east: { role: mirror, listen: 127.0.0.1:7401, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
EXTRA`;

function text(coord: string, o: { local?: string; backup?: string; extra?: string } = {}): string {
  return base.replace('COORD', coord).replace('LOCAL', o.local ?? '').replace('BACKUP', o.backup ?? '').replace('EXTRA', o.extra ?? '');
}

function problems(t: string): string[] {
  return configProblems(t, file);
}

describe('coordinator: (etcd as the failover arbiter)', () => {
  it('is absent by default: the built-in vote', () => {
    expect(parseConfig(text(''), file).coordinator).toBeUndefined();
  });

  it('normalizes endpoints, prefix and lease TTL, with defaults', () => {
    const c = parseConfig(text('coordinator: { etcd: ["http://10.0.0.5:2379", "http://etcd-b.lan"] }'), file);
    expect(c.coordinator).toEqual({ endpoints: ['http://10.0.0.5:2379', 'http://etcd-b.lan:2379'], prefix: '/geomirror', leaseTtlMs: 5000 });
    const d = parseConfig(text('coordinator: { etcd: [http://127.0.0.1:2379], prefix: /fleet/a/, lease-ttl: 2s }', { local: ', coordinator-endpoints: [http://127.0.0.1:12379]' }), file);
    expect(d.coordinator).toMatchObject({ prefix: '/fleet/a', leaseTtlMs: 2000 });
    expect(d.sites.local!.coordinatorEndpoints).toEqual(['http://127.0.0.1:12379']);
    expect(d.sites.backup!.coordinatorEndpoints).toBeUndefined();
  });

  it('https endpoints mean TLS to etcd, with optional ca, cert and key (absolute paths)', () => {
    const c = parseConfig(text('coordinator: { etcd: [https://etcd.lan:2379], ca: ./etcd/ca.crt, cert: /etc/gm/etcd.crt, key: ./etcd/client.key }'), file);
    expect(c.coordinator).toEqual({ endpoints: ['https://etcd.lan:2379'], prefix: '/geomirror', leaseTtlMs: 5000, tls: { ca: '/srv/demo/etcd/ca.crt', cert: '/etc/gm/etcd.crt', key: '/srv/demo/etcd/client.key' } });
    expect(parseConfig(text('coordinator: { etcd: [https://etcd.lan:2379] }'), file).coordinator!.tls).toEqual({});
  });

  it('refuses bad values, naming the key and the fix', () => {
    expect(problems(text('coordinator: { prefix: /x }'))).toEqual([expect.stringMatching(/^coordinator\.etcd: is missing: the etcd endpoints/)]);
    expect(problems(text('coordinator: { etcd: [] }'))).toEqual([expect.stringMatching(/^coordinator\.etcd: must be a list of 1 to 16 etcd endpoints/)]);
    expect(problems(text('coordinator: { etcd: ["ftp://x:1"] }'))).toEqual([expect.stringMatching(/^coordinator\.etcd\[0\]: "ftp:\/\/x:1" is not an etcd endpoint \(scheme ftp: is neither http: nor https:\); use http:\/\/HOST:PORT/)]);
    expect(problems(text('coordinator: { etcd: ["http://u:p@x:1"] }'))[0]).toMatch(/credentials in a URL are not taken/);
    expect(problems(text('coordinator: { etcd: ["http://x:1/v3"] }'))[0]).toMatch(/no path/);
    expect(problems(text('coordinator: { etcd: ["127.0.0.1:2379"] }'))[0]).toMatch(/^coordinator\.etcd\[0\]: .* is not an etcd endpoint/);
    expect(problems(text('coordinator: { etcd: [http://a:1, https://b:1] }'))).toEqual([expect.stringMatching(/^coordinator\.etcd: mixes http:\/\/ and https:\/\//)]);
    expect(problems(text('coordinator: { etcd: [http://a:1], lease-ttl: 1s }'))).toEqual([expect.stringMatching(/^coordinator\.lease-ttl: "1s" is not a lease TTL; use whole seconds from 2s to 300s/)]);
    expect(problems(text('coordinator: { etcd: [http://a:1], lease-ttl: 2500ms }'))[0]).toMatch(/^coordinator\.lease-ttl:/);
    expect(problems(text('coordinator: { etcd: [http://a:1], prefix: geomirror }'))).toEqual([expect.stringMatching(/^coordinator\.prefix: "geomirror" is not a key prefix; .*starting with '\/'/)]);
    expect(problems(text('coordinator: { etcd: [http://a:1], ca: ./ca.crt }'))).toEqual([expect.stringMatching(/^coordinator\.ca: is only used with TLS to etcd: write the endpoints as https:\/\/ URLs/)]);
    expect(problems(text('coordinator: { etcd: [https://a:1], cert: ./c.crt }'))).toEqual([expect.stringMatching(/^coordinator\.key: cert and key go together/)]);
    expect(problems(text('coordinator: { etcd: [http://a:1], ttl: 5s }'))).toEqual([expect.stringMatching(/^coordinator\.ttl: unknown key; known keys here: etcd, prefix, lease-ttl, ca, cert, key/)]);
    expect(problems(text('coordinator: [http://a:1]'))).toEqual([expect.stringMatching(/^coordinator: must be a mapping/)]);
  });

  it('refuses a witness beside a coordinator, naming both keys', () => {
    const p = problems(text('coordinator: { etcd: [http://a:1] }', { extra: '  judge: { role: witness, listen: 127.0.0.1:7409 }\n' }));
    expect(p).toEqual([expect.stringMatching(/^sites\.judge\.role: a witness votes in the built-in majority failover, and coordinator: \(etcd\) replaces that vote: the two never mix in one group\. Remove the witness site judge, or remove the coordinator key/)]);
  });

  it('coordinator-endpoints: only with a coordinator, only on the primary or standby, same scheme', () => {
    expect(problems(text('', { local: ', coordinator-endpoints: [http://a:1]' }))).toEqual([expect.stringMatching(/^sites\.local\.coordinator-endpoints: needs a cluster-wide coordinator: key/)]);
    expect(problems(text('coordinator: { etcd: [http://a:1] }', { backup: ', coordinator-endpoints: [https://a:1]' }))).toEqual([expect.stringMatching(/^sites\.backup\.coordinator-endpoints: must use the same scheme as coordinator\.etcd \(http:\/\/\)/)]);
    expect(problems(text('coordinator: { etcd: [http://a:1] }', { extra: '  west: { role: mirror, listen: 127.0.0.1:7402, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], coordinator-endpoints: [http://a:1] }\n' }))).toEqual([
      expect.stringMatching(/^sites\.west\.coordinator-endpoints: a mirror site has no coordinator-endpoints \(only primary, standby sites do\)/),
    ]);
  });

  it('warns when nobody can take over (no standby)', () => {
    const t = text('coordinator: { etcd: [http://a:1] }').replace(/ {2}backup: .*\n/, '');
    expect(parseConfig(t, file).warnings.join('\n')).toMatch(/coordinator: local holds the etcd lease, but no site has role: standby/);
  });
});

// Role authorisation at the edge (issue 17 item 3, src/site/authority.ts): from the cluster file
// alone, which site may send which message to which. The relation is the one the core's EPOCH
// check uses (src/site/replica.ts upstreamsOf): checked equal on every shipped cluster file and
// on a topology with every role.
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PeerAuthority, upstreamsOf } from '../../src/site/authority.js';
import { loadConfig, parseConfig } from '../../src/site/config.js';
import { upstreamsOf as coreUpstreamsOf } from '../../src/site/replica.js';
import { messageFlow, messageSpecs, type FrameTypeName } from '../../src/wire/index.js';

const repo = resolve(import.meta.dirname, '../..');
const dev = 'cache: { device: "memory:", size: 64KiB }, storage: ["memory:"]';
const all = parseConfig(
  `cluster: roles
secret: ${'ab'.repeat(32)}
volume: { name: v, size: 1MiB }
sites:
  local: { role: primary, listen: 127.0.0.1:7400, nbd: 127.0.0.1:10809, ${dev}, mirrors: [east, west, r1] }
  backup: { role: standby, standby-for: local, listen: 127.0.0.1:7403, ${dev} }
  east: { role: mirror, listen: 127.0.0.1:7401, ${dev} }
  west: { role: mirror, listen: 127.0.0.1:7402, ${dev} }
  r1: { role: relay, listen: 127.0.0.1:7404, forward: far, ${dev} }
  far: { role: mirror, listen: 127.0.0.1:7405, ${dev} }
  judge: { role: witness, listen: 127.0.0.1:7406 }
`,
  join(repo, 'roles.yaml'),
);

describe('upstreamsOf', () => {
  it('is the relation the core checks EPOCH with, on every shipped cluster file and on every role', () => {
    const files = readdirSync(join(repo, 'targets/loopback')).filter((f) => f.endsWith('.yaml')).map((f) => loadConfig(join(repo, 'targets/loopback', f)));
    expect(files.length).toBeGreaterThan(2);
    for (const config of [...files, all]) {
      for (const n of config.siteNames) expect(upstreamsOf(config, n), `${config.file}: ${n}`).toEqual(coreUpstreamsOf(config, n));
    }
  });
  it('names the primary and the standby of a mirror, the relay of its leaf, the standby of the old primary', () => {
    expect(upstreamsOf(all, 'east').sort()).toEqual(['backup', 'local']);
    expect(upstreamsOf(all, 'far')).toEqual(['r1']);
    expect(upstreamsOf(all, 'local')).toEqual(['backup']);
    expect(upstreamsOf(all, 'backup')).toEqual(['local']);
    expect(upstreamsOf(all, 'judge')).toEqual([]);
  });
});

describe('PeerAuthority: who may send what', () => {
  const may = (self: string, peer: string, type: FrameTypeName) => new PeerAuthority(all, self).refusal(peer, type) === undefined;

  it('takes writes, resync data, epochs, flushes, IN_SYNC and read requests only from an upstream', () => {
    for (const t of ['WRITE', 'RESYNC_DATA', 'EPOCH', 'FLUSH', 'IN_SYNC', 'READ_REQUEST'] as const) {
      expect(may('east', 'local', t), t).toBe(true);
      expect(may('east', 'backup', t), t).toBe(true); // the standby, once promoted
      expect(may('far', 'r1', t), t).toBe(true);
      expect(may('local', 'backup', t), t).toBe(true); // the promoted standby resyncs the old primary
      for (const [self, peer] of [['east', 'west'], ['east', 'r1'], ['east', 'far'], ['east', 'judge'], ['far', 'local'], ['far', 'east'], ['r1', 'east'], ['local', 'east']]) {
        expect(may(self!, peer!, t), `${t} ${peer} -> ${self}`).toBe(false);
      }
    }
  });

  it('takes acknowledgements and resync requests only from a downstream', () => {
    for (const t of ['WRITE_ACK', 'FLUSH_ACK', 'RESYNC_REQUEST', 'RESYNC_ACK', 'READ_DATA', 'READ_FAILED'] as const) {
      expect(may('local', 'east', t), t).toBe(true);
      expect(may('local', 'r1', t), t).toBe(true);
      expect(may('r1', 'far', t), t).toBe(true);
      expect(may('backup', 'east', t), t).toBe(true);
      for (const [self, peer] of [['east', 'local'], ['local', 'far'], ['east', 'west'], ['far', 'r1'], ['local', 'judge']]) {
        expect(may(self!, peer!, t), `${t} ${peer} -> ${self}`).toBe(false);
      }
    }
  });

  it('takes the standby\'s copy of dirty bits only between the primary and its standby', () => {
    expect(may('backup', 'local', 'PEER_DIRTY')).toBe(true);
    expect(may('backup', 'local', 'PEER_CLEAN')).toBe(true);
    expect(may('local', 'backup', 'PEER_DIRTY_ACK')).toBe(true);
    expect(may('backup', 'east', 'PEER_DIRTY')).toBe(false);
    expect(may('east', 'west', 'PEER_CLEAN')).toBe(false);
  });

  it('takes ACK and FENCE both ways between related sites, never from an unrelated one', () => {
    for (const t of ['ACK', 'FENCE'] as const) {
      expect(may('local', 'east', t)).toBe(true);
      expect(may('east', 'local', t)).toBe(true);
      expect(may('far', 'r1', t)).toBe(true);
      expect(may('east', 'west', t)).toBe(false);
      expect(may('local', 'far', t)).toBe(false);
      expect(may('local', 'judge', t)).toBe(false);
    }
  });

  it('takes heartbeats, status and failover queries from any site of the cluster', () => {
    for (const t of ['HEARTBEAT', 'STATUS_REQUEST', 'STATUS_REPLY', 'LAST_HEARD_QUERY', 'LAST_HEARD_ANSWER'] as const) {
      expect(may('east', 'west', t)).toBe(true);
      expect(may('judge', 'far', t)).toBe(true);
    }
  });

  it('gives every data message a flow, and names the peer, the message and who may send it in a refusal', () => {
    for (const s of messageSpecs) expect(messageFlow[s.name], s.name).toBeDefined();
    expect(new PeerAuthority(all, 'east').refusal('west', 'WRITE')).toMatch(/^west sent WRITE, which only (local, backup|backup, local) \(its upstreams in .*roles\.yaml\) may send to east; west neither sends writes to east nor receives them from it/);
    expect(new PeerAuthority(all, 'local').refusal('far', 'RESYNC_REQUEST')).toMatch(/^far sent RESYNC_REQUEST, which only .*east.* \(its downstreams in .*\) may send to local/);
  });
});

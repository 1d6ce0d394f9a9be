// The core's hooks for an external failover arbiter (issue 20 item 3: etcd, src/site/coordinator.ts).
// Primary: serves only while the arbiter's grant is held (`authority`), holds host acks while it
// is not, releases them in order when it is back, fails them when a newer epoch (from a peer or
// from the arbiter: `arbiterEpoch`) fences it. Standby: no vote at all; promotes on
// `arbiterGranted` for exactly the next epoch, while its guard holds, even while it still hears
// its primary, and keeps the arbiter's revision in the promotion record.
import { describe, expect, it } from 'vitest';
import { Standby } from '../../src/core/standby.js';
import type { Primary } from '../../src/core/primary.js';
import { blockBytes, hostWrite, primaryScript, Script, testLimits, writeMsg } from './harness.js';

function join(t: Script<Primary>, peer: string): void {
  expect(t.step({ type: 'peerUp', peer })).toEqual([`send ${peer} epoch 1`]);
  t.recv(peer, { type: 'resyncRequest', epoch: 1n, seqReceived: 0n });
}

/** Primary `local` with mirror east, its authority from the arbiter (not yet granted unless `held`). */
function primary(held = false): Script<Primary> {
  const t = primaryScript(['east'], { externalAuthority: { held } });
  join(t, 'east');
  return t;
}

/** One write through to its acks from east and local storage (the host ack is the caller's to check). */
function writeThrough(t: Script<Primary>, id: number, seq: bigint, reserve: boolean): string[] {
  if (reserve) t.done('metaPersist');
  t.done(`cacheAppend s${seq}`);
  t.done(`storageWrite`);
  return t.recv('east', { type: 'ack', epoch: 1n, seq });
}

describe('primary with an external arbiter (issue 20 item 3)', () => {
  it('at start takes no host write into the window before the grant: held, then served once granted', () => {
    const t = primary();
    expect(t.step(hostWrite(1, 0, 512))).toEqual([]);
    expect(t.tick(100)).toEqual([]);
    expect(t.role.status().authority).toEqual({ held: false, heldAcks: 0, reason: 'not yet granted by the coordinator' });
    expect(t.step({ type: 'authority', held: true, reason: 'lease 7 holds the key at revision 12' })).toEqual(['metaPersist e1 reserved s1001']);
    expect(t.logs).toContain('authority_held');
    expect(writeThrough(t, 1, 1n, true)).toEqual(['ackHost #1']);
  });

  it('never granted within authorityWaitMs: what waits is refused, new writes too, with the reason', () => {
    const t = primary();
    t.step(hostWrite(1, 0, 512));
    expect(t.tick(testLimits.authorityWaitMs)).toEqual(['ackHost #1 fenced']);
    expect(t.logs).toContain('authority_unproven');
    const refused = t.last.find((a) => a.type === 'ackHost');
    expect(refused).toMatchObject({ error: { message: expect.stringMatching(/the coordinator \(etcd\) has not granted it \(not yet granted by the coordinator\)/) } });
    expect(t.step(hostWrite(2, 0, 512))).toEqual(['ackHost #2 fenced']);
    // Granted late: served again.
    t.step({ type: 'authority', held: true, reason: 'etcd reachable again' });
    expect(t.step(hostWrite(3, 0, 512))).toEqual(['metaPersist e1 reserved s1001']);
  });

  it('grant lost: acks of writes in flight are held back, nothing new is admitted; regained: released in order', () => {
    const t = primary(true);
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.done('cacheAppend s1');
    t.step(hostWrite(2, 1024, 512));
    t.done('cacheAppend s2');
    expect(t.step({ type: 'authority', held: false, reason: 'lease keepalive failing for 1500 ms' })).toEqual([]);
    expect(t.logs).toContain('authority_lost');
    t.done('storageWrite @0');
    t.done('storageWrite @1024');
    // Both writes are on east and local storage: the acks are held, not sent.
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 2n })).toEqual([]);
    expect(t.step(hostWrite(3, 2048, 512))).toEqual([]); // queued, not admitted
    expect(t.step({ type: 'hostFlush', id: 4 })).toEqual([]);
    expect(t.role.status().authority).toMatchObject({ held: false, heldAcks: 2 });
    expect(t.role.quiescent()).toBe(false);
    expect(t.step({ type: 'authority', held: true, reason: 'lease 7 renewed' })).toEqual(['ackHost #1', 'ackHost #2', 'cacheAppend s3 @2048+512']);
  });

  it('fenced by the arbiter\'s newer epoch while held: held acks and queued writes fail, nothing is acked OK', () => {
    const t = primary(true);
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.step({ type: 'authority', held: false, reason: 'lease lost' });
    expect(writeThrough(t, 1, 1n, false)).toEqual([]);
    t.step(hostWrite(2, 1024, 512));
    expect(t.step({ type: 'arbiterEpoch', epoch: 1n })).toEqual([]); // its own epoch fences nothing
    expect(t.step({ type: 'arbiterEpoch', epoch: 2n })).toEqual(['ackHost #2 fenced', 'ackHost #1 fenced']);
    expect(t.logs).toContain('fenced');
    expect(t.role.fencedBy()).toBe(2n);
    expect(t.step({ type: 'authority', held: true, reason: 'late' })).toEqual([]);
    expect(t.step(hostWrite(3, 0, 512))).toEqual(['ackHost #3 fenced']);
  });

  it('a primary without an external arbiter ignores authority events (the vote and etcd never mix)', () => {
    const t = primaryScript(['east']);
    join(t, 'east');
    t.step({ type: 'authority', held: false, reason: 'x' });
    expect(t.logs).toContain('authority_ignored');
    t.step(hostWrite(1, 0, 512));
    expect(writeThrough(t, 1, 1n, true)).toEqual(['ackHost #1']);
  });
});

const limits = { ...testLimits, heartbeatIntervalMs: 100 };

/** External-arbiter standby `backup` of `local`, mirrors east and west, links up, in sync unless told. */
function standby(inSync = true): Script<Standby> {
  const s = new Script(new Standby({ self: 'backup', primary: 'local', mirrors: ['east', 'west'], volumeBytes: 16 * 1024, blockBytes, limits, failoverTimeoutMs: 500, queryIntervalMs: 200, onMirrorLoss: 'degrade', arbiter: 'external' }));
  s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map() } });
  for (const p of ['local', 'east', 'west']) s.step({ type: 'peerUp', peer: p });
  s.recv('local', { type: 'epoch', epoch: 1n });
  if (inSync) {
    s.recv('local', { type: 'inSync', epoch: 1n, seq: 0n });
    s.done('metaPersist');
  }
  return s;
}

describe('standby with an external arbiter (issue 20 item 3)', () => {
  it('never votes: long silence from the primary asks nobody', () => {
    const s = standby();
    s.step({ type: 'peerDown', peer: 'local' });
    expect(s.tick(5000)).toEqual([]);
    expect(s.logs).not.toContain('primary_silent');
    expect(s.role.status().phase).toBe('following');
  });

  it('promotes on the grant even while it still hears the primary, and keeps the revision in the record', () => {
    const s = standby();
    s.recv('local', writeMsg(1n, 0, 512, 1n, true));
    s.done('cacheAppend s1');
    s.done('storageWrite');
    s.step({ type: 'peerHeard', peer: 'local', epoch: 1n, lastSeq: 1n });
    expect(s.step({ type: 'arbiterGranted', epoch: 2n, revision: 41n })).toEqual(['bitmapSet local [0]', 'bitmapSet east [0]', 'bitmapSet west [0]']);
    expect(s.logs).toContain('failover_decided');
    // From the decision on, the old primary's frames are dropped: it gets no more acks.
    expect(s.recv('local', writeMsg(2n, 1024, 512, 1n))).toEqual([]);
    s.done('bitmapSet local');
    s.done('bitmapSet east');
    expect(s.done('bitmapSet west')).toEqual(['metaPersist e2 reserved s1']);
    // The old primary is still linked: it hears epoch 2 at once (and is fenced by it).
    expect(s.done('metaPersist')).toEqual(['cacheDrop s1', 'send local epoch 2', 'send east epoch 2', 'send west epoch 2']);
    const st = s.role.status();
    expect(st.phase).toBe('primary');
    expect(st.promotions).toMatchObject([{ fromEpoch: 1n, toEpoch: 2n, revision: 41n, reason: expect.stringMatching(/etcd revision 41/) }]);
    // The new primary holds its grant from the promotion; losing it holds host acks.
    const inner = st.inner;
    expect(inner.role === 'primary' && inner.authority).toMatchObject({ held: true });
    s.step({ type: 'authority', held: false, reason: 'lease lost' });
    const after = s.role.status().inner;
    expect(after.role === 'primary' && after.authority).toMatchObject({ held: false });
  });

  it('refuses a grant that is not exactly the next epoch, and one while the guard is closed', () => {
    const s = standby();
    expect(s.step({ type: 'arbiterGranted', epoch: 3n, revision: 9n })).toEqual([]);
    expect(s.logs).toContain('arbiter_grant_refused');
    expect(s.step({ type: 'arbiterGranted', epoch: 1n, revision: 9n })).toEqual([]);
    expect(s.role.status().phase).toBe('following');
    const n = standby(false);
    expect(n.step({ type: 'arbiterGranted', epoch: 2n, revision: 9n })).toEqual([]);
    expect(n.logs).toContain('failover_refused');
    expect(n.role.status().phase).toBe('following');
  });

  it('a vote-based standby ignores a grant', () => {
    const s = new Script(new Standby({ self: 'backup', primary: 'local', mirrors: ['east'], volumeBytes: 16 * 1024, blockBytes, limits, failoverTimeoutMs: 500, queryIntervalMs: 200, onMirrorLoss: 'degrade' }));
    s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map() } });
    s.step({ type: 'arbiterGranted', epoch: 2n, revision: 1n });
    expect(s.logs).toContain('arbiter_grant_ignored');
    expect(s.role.status().phase).toBe('following');
  });
});

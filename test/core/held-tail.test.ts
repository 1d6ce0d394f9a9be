// keepTail (a standby's inner mirror): regions held as tail after a resync dropped the journal's
// entries there (src/core/upstream.ts holdForResync) are recorded under '@held' before the
// entries go, and a restart names them at the join. They were in memory only: a standby that
// restarted after such a resync forgot them, and once promoted it would not have resynced
// those regions to the other mirrors (its tail is what it marks dirty for them, standby.ts).
import { describe, expect, it } from 'vitest';
import { Mirror } from '../../src/core/mirror.js';
import { Standby } from '../../src/core/standby.js';
import { blockBytes, mirrorScript, Script, testLimits, writeMsg } from './harness.js';

describe('a keepTail mirror records the tail a resync drops (@held)', () => {
  it('records the regions durably before the journal drops its entries, and lets them go once committed', () => {
    const t = mirrorScript([], { keepTail: true });
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0']);
    t.recv('local', writeMsg(1n, 0, 1024));
    t.done('cacheAppend s1');
    t.recv('local', { type: 'resyncData', epoch: 1n, resyncId: 1n, offsetBytes: 4096, payload: new Uint8Array(1024).fill(9) });
    expect(t.done('storageWrite @0+1024')).toEqual(['send local ack s1', 'storageFlush']);
    // s1 (region 0) is about to leave the journal and region 4 to take the upstream's copy: both
    // are tail now, and the entry is their only record until '@held' is durable.
    expect(t.done('storageFlush')).toEqual(['bitmapSet @held [0,4]']);
    expect(t.done('bitmapSet @held [0,4]')).toEqual(['cacheDrop s1', 'storageWrite @4096+1024 fua']);
    t.done('storageWrite @4096+1024 fua');
    // Released once the committed watermark passes the inSync that ended the resync.
    t.recv('local', { type: 'inSync', epoch: 1n, seq: 1n });
    expect(t.recv('local', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['bitmapClear @held [0,4]']);
  });

  it('a restart names the recorded regions at the join, until the upstream says inSync', () => {
    const m = new Mirror({ self: 'east', volumeBytes: 16 * 1024, blockBytes, limits: testLimits, keepTail: true });
    const t = new Script(m);
    t.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map([['@held', [4]]]) } });
    expect(m.heldRegions()).toEqual([4]);
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0 ranges @4096+1024']);
    expect(t.recv('local', { type: 'inSync', epoch: 1n, seq: 0n })).toEqual(['bitmapClear @held [4]']);
    expect(m.heldRegions()).toEqual([]);
  });

  it('a promotion owes the recorded regions to every other site, then lets the @held bits go', () => {
    const s = new Script(new Standby({ self: 'backup', primary: 'local', mirrors: ['east', 'west'], volumeBytes: 16 * 1024, blockBytes, limits: { ...testLimits, heartbeatIntervalMs: 100 }, failoverTimeoutMs: 500, queryIntervalMs: 200, onMirrorLoss: 'degrade' }));
    s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map([['@held', [4]]]) } });
    for (const p of ['local', 'east', 'west']) s.step({ type: 'peerUp', peer: p });
    expect(s.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0 ranges @4096+1024']);
    s.step({ type: 'peerDown', peer: 'local' });
    const decided = s.took(s.role.promote('operator accepts loss', s.nowMs, true));
    expect(decided.filter((l) => l.startsWith('bitmapSet'))).toEqual(['bitmapSet local [4]', 'bitmapSet east [4]', 'bitmapSet west [4]']);
    const out: string[] = [];
    for (const p of ['local', 'east', 'west']) out.push(...s.done(`bitmapSet ${p}`));
    out.push(...s.done('metaPersist'));
    expect(s.role.status().phase).toBe('primary');
    // Before: no clear; the bit stayed, and this site named region 4 once more if it followed again.
    expect(out).toContain('bitmapClear @held [4]');
  });

  it('control: a mirror without keepTail records nothing and drops at once', () => {
    const t = mirrorScript([]);
    t.step({ type: 'peerUp', peer: 'local' });
    t.recv('local', { type: 'epoch', epoch: 1n });
    t.recv('local', writeMsg(1n, 0, 1024));
    t.done('cacheAppend s1');
    t.recv('local', { type: 'resyncData', epoch: 1n, resyncId: 1n, offsetBytes: 4096, payload: new Uint8Array(1024).fill(9) });
    t.done('storageWrite @0+1024');
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1', 'storageWrite @4096+1024 fua']);
  });
});

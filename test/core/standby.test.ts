// Scenario scripts for the standby (claims 8, 9, 13; issue 10): it mirrors the primary, asks the
// other sites before declaring the primary lost, persists the new epoch first, resyncs every
// other site from its own image and then acts as the primary. Fencing of the old epoch is
// checked on the mirror and on the old primary.
import { describe, expect, it } from 'vitest';
import { Standby } from '../../src/core/standby.js';
import { senseOf, type CoreAction } from '../../src/core/types.js';
import { blockBytes, hostWrite, mirrorScript, primaryScript, Script, testLimits, writeMsg } from './harness.js';

const limits = { ...testLimits, heartbeatIntervalMs: 100 };

/** Standby `backup` of primary `local`, with mirrors east and west; links to all three up. */
function standby(opts: { witness?: string; inSync?: boolean } = {}): Script<Standby> {
  const s = new Script(new Standby({
    self: 'backup', primary: 'local', mirrors: ['east', 'west'], volumeBytes: 16 * 1024, blockBytes, limits,
    failoverTimeoutMs: 500, queryIntervalMs: 200, onMirrorLoss: 'degrade', ...(opts.witness ? { witness: opts.witness } : {}),
  }));
  s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map() } });
  for (const p of ['local', 'east', 'west', ...(opts.witness === undefined ? [] : [opts.witness])]) s.step({ type: 'peerUp', peer: p });
  expect(s.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0']);
  if (opts.inSync !== false) {
    // The primary answers the join: in sync (the promotion guard opens, durably).
    expect(s.recv('local', { type: 'inSync', epoch: 1n, seq: 0n })).toEqual(['metaPersist e1 reserved s0']);
    expect(s.last.find((a) => a.type === 'metaPersist')).toMatchObject({ meta: { inSyncEpoch: 1n } });
    s.done('metaPersist');
  }
  return s;
}

/** Silence from the primary past the timeout: the standby asks east and west. */
function silence(s: Script<Standby>): void {
  expect(s.tick(499)).toEqual([]);
  expect(s.tick(1)).toEqual(['send east lastHeardQuery #1 e1', 'send west lastHeardQuery #1 e1']);
}

describe('standby: follows the primary as a mirror (claims 8, 9)', () => {
  it('caches, performs and acks the primary\'s writes like any mirror, and refuses host writes', () => {
    const s = standby();
    // Journal first, then storage (claims 11, 17: no write reaches storage before it is cached).
    expect(s.recv('local', writeMsg(1n, 0, 512, 1n, true))).toEqual(['cacheAppend s1 @0+512']);
    expect(s.done('cacheAppend')).toEqual(['storageWrite @0+512 fua']);
    // A standby keeps what is above its primary's committed watermark (issue 16: a failover's
    // tail); the watermark lets it go.
    expect(s.done('storageWrite')).toEqual(['send local ack s1']);
    expect(s.recv('local', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['cacheDrop s1']);
    expect(s.step({ type: 'hostWrite', id: 7, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) })).toEqual(['ackHost #7 fenced']);
  });

  it('keeps quiet while the primary is heard: heartbeats reset the silence', () => {
    const s = standby();
    s.tick(400);
    // The link answers heartbeats itself (contract 6); the core only learns it heard the primary.
    expect(s.step({ type: 'peerHeard', peer: 'local', epoch: 1n, lastSeq: 0n })).toEqual([]);
    expect(s.tick(400)).toEqual([]);
    expect(s.role.status().phase).toBe('following');
  });
});

describe('standby: detection needs a majority (claim 13 v)', () => {
  it('a cut link between the standby and the primary alone never promotes: the mirrors still hear it', () => {
    const s = standby();
    s.step({ type: 'peerDown', peer: 'local' });
    silence(s);
    expect(s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 40, seqReceived: 0n })).toEqual([]);
    expect(s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 90, seqReceived: 0n })).toEqual([]);
    // Asked again every queryIntervalMs while the silence lasts; still no promotion.
    expect(s.tick(200)).toEqual(['send east lastHeardQuery #2 e1', 'send west lastHeardQuery #2 e1']);
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 2n, heardAgoMs: 30, seqReceived: 0n });
    s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 2n, heardAgoMs: 30, seqReceived: 0n });
    expect(s.role.status().phase).toBe('following');
    expect(s.logs).not.toContain('failover_decided');
  });

  it('a mirror that heard the primary just before the timeout is asked again when it would agree, not a full interval later', () => {
    const s = standby();
    silence(s); // timeout 500 ms, query interval 200 ms
    s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n });
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 470, seqReceived: 0n });
    expect(s.logs).not.toContain('failover_decided');
    // east agrees in 30 ms: ask again then (+1 tick of 10 ms), not 200 ms later.
    expect(s.tick(39)).toEqual([]);
    expect(s.tick(1)).toEqual(['send east lastHeardQuery #2 e1', 'send west lastHeardQuery #2 e1']);
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 2n, heardAgoMs: 501, seqReceived: 0n });
    s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 2n, heardAgoMs: 511, seqReceived: 0n });
    expect(s.logs).toContain('failover_decided');
  });

  it('two of four sites (standby + one mirror) are not a majority', () => {
    const s = standby();
    silence(s);
    expect(s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n })).toEqual([]);
    expect(s.role.status().phase).toBe('following');
  });

  it('answers of an older query do not count, and a newer epoch elsewhere stops the promotion', () => {
    const s = standby();
    silence(s);
    s.tick(200); // query #2
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 900, seqReceived: 0n });
    expect(s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 2n, heardAgoMs: 900, seqReceived: 0n })).toEqual([]);
    expect(s.recv('east', { type: 'lastHeardAnswer', epoch: 2n, queryId: 2n, heardAgoMs: 900, seqReceived: 0n })).toEqual([]);
    expect(s.logs).toContain('newer_epoch_seen');
    expect(s.role.status().phase).toBe('following');
  });

  it('a witness counts: with 5 sites, standby + one mirror + the witness are a majority', () => {
    const s = standby({ witness: 'judge' });
    expect(s.tick(500)).toEqual(['send east lastHeardQuery #1 e1', 'send west lastHeardQuery #1 e1', 'send judge lastHeardQuery #1 e1']);
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 700, seqReceived: 0n });
    // Nothing held above the watermark and no site degraded: no site owes anything (issue 16 item 4).
    expect(s.recv('judge', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n })).toEqual(['bitmapSet local []', 'bitmapSet east []', 'bitmapSet west []']);
  });

  it('a mirror answers "when did you last hear the primary?" whatever its epoch', () => {
    const m = mirrorScript();
    m.recv('local', { type: 'epoch', epoch: 1n });
    m.tick(120);
    expect(m.recv('backup', { type: 'lastHeardQuery', epoch: 0n, queryId: 5n })).toEqual(['send backup lastHeardAnswer #5 e1 ago 120 s0']);
    // One that never heard it in this life vouches only for the time since it started (issue 16
    // item 8: a site that just restarted is no witness to a long silence).
    const fresh = mirrorScript();
    fresh.tick(30);
    expect(fresh.recv('backup', { type: 'lastHeardQuery', epoch: 1n, queryId: 6n })).toEqual(['send backup lastHeardAnswer #6 e1 ago 30 s0']);
  });
});

describe('standby: promotion (claim 13 vi, vii)', () => {
  /** Standby holding write 1 (performed) and write 2 (received, storage write still running). */
  function decided(): Script<Standby> {
    const s = standby();
    s.recv('local', writeMsg(1n, 0, 512, 1n, true));
    s.done('cacheAppend s1');
    s.done('storageWrite');
    s.recv('local', writeMsg(2n, 2048, 1024, 1n));
    s.done('cacheAppend s2');
    s.step({ type: 'peerDown', peer: 'local' });
    silence(s);
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 510, seqReceived: 2n });
    // (c) the catch-up debt first: one bitmap per other site (local bookkeeping), the regions of
    // the writes this site holds above the committed watermark (its divergent tail: @0 and @2048)
    expect(s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n })).toEqual(['bitmapSet local [0,2]', 'bitmapSet east [0,2]', 'bitmapSet west [0,2]']);
    expect(s.logs).toContain('failover_decided');
    s.done('bitmapSet local');
    s.done('bitmapSet east');
    // (a) then the new epoch, durable before anything of it happens
    expect(s.done('bitmapSet west')).toEqual(['metaPersist e2 reserved s1']);
    expect(s.last.find((a) => a.type === 'metaPersist')).toMatchObject({ meta: { acting: 'primary' } });
    return s;
  }

  it('persists the epoch, finishes what it received, owes every other site the regions of its divergent tail, then serves as primary of epoch 2', () => {
    const s = decided();
    expect(s.step({ type: 'hostWrite', id: 1, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) })).toEqual(['ackHost #1 busy']);
    expect(s.done('metaPersist')).toEqual([]);
    // (b) write 2 is not yet performed and durable: nothing else happens until it is.
    // (its link to the old primary is down: no ack goes out; the flush interval has long passed)
    expect(s.done('storageWrite @2048')).toEqual(['storageFlush']);
    expect(s.tick(50)).toEqual([]);
    // (d) the primary of epoch 2 announces itself on every link that is up
    // (s1 was kept too: the old primary never said it was committed, issue 16)
    expect(s.done('storageFlush')).toEqual(['cacheDrop s1,s2', 'send east epoch 2', 'send west epoch 2']);
    expect(s.logs).toContain('promoted');
    const st = s.role.status();
    expect(st.phase).toBe('primary');
    expect(st.epoch).toBe(2n);
    expect(st.promotions).toMatchObject([{ fromEpoch: 1n, toEpoch: 2n, seqReceived: 2n }]);
    // east adopts the epoch and asks to join: it is resynced (region by region) from this image.
    expect(s.recv('east', { type: 'resyncRequest', epoch: 2n, seqReceived: 0n })).toEqual([]);
    expect(s.tick(1)).toEqual(['storageRead @0+1024']); // heartbeats are the link's (contract 6)
    // Host writes are accepted for the new epoch.
    expect(s.step({ type: 'hostWrite', id: 2, offsetBytes: 8192, lengthBytes: 512, fua: false, payload: new Uint8Array(512).fill(2) })).toEqual(['metaPersist e2 reserved s1001']);
    expect(s.done('metaPersist')).toEqual(['cacheAppend s1 @8192+512']);
  });

  it('drops frames from the old primary once the failover is decided', () => {
    const s = decided();
    s.step({ type: 'peerUp', peer: 'local' });
    expect(s.recv('local', writeMsg(3n, 0, 512, 1n))).toEqual([]);
    expect(s.logs).toContain('old_primary_frame_dropped');
  });

  it('the old primary comes back: the new primary announces epoch 2 and the old one refuses host writes (fenced)', () => {
    const s = decided();
    s.done('metaPersist');
    s.done('storageWrite @2048');
    s.done('storageFlush');
    expect(s.role.status().phase).toBe('primary');
    expect(s.step({ type: 'peerUp', peer: 'local' })).toEqual(['send local epoch 2']);
    // Frames of epoch 1 reaching the new primary are refused and answered with `fence`.
    expect(s.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local fence e2']);
    expect(s.recv('local', writeMsg(3n, 0, 512, 1n))).toEqual(['send local fence e2']);
    expect(s.recv('local', { type: 'fence', epoch: 1n, reason: 'x' })).toEqual([]);
    const old = primaryScript(['backup', 'east', 'west']);
    old.step({ type: 'peerUp', peer: 'backup' });
    old.recv('backup', { type: 'epoch', epoch: 2n });
    expect(old.logs).toContain('fenced');
    expect(old.step({ type: 'hostWrite', id: 9, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) })).toEqual(['ackHost #9 fenced']);
  });
});

describe('fencing on mirrors (issue 10 item 4)', () => {
  it('a mirror that adopted epoch 2 refuses every frame of epoch 1 with `fence`', () => {
    const m = mirrorScript();
    m.recv('local', { type: 'epoch', epoch: 1n });
    expect(m.recv('backup', { type: 'epoch', epoch: 2n })).toEqual(['metaPersist e2 reserved s0']);
    expect(m.done('metaPersist')).toEqual(['send backup resyncRequest e2 received s0']);
    expect(m.recv('local', writeMsg(7n, 0, 512, 1n))).toEqual(['send local fence e2']);
    expect(m.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local fence e2']);
    expect(m.recv('local', { type: 'flush', epoch: 1n, flushId: 1n, seq: 7n })).toEqual(['send local fence e2']);
  });
});

describe('primary with a standby (issue 10: every host-acked write is on the standby)', () => {
  it('under `degrade` an unreachable plain mirror is degraded after the grace, the unreachable standby never: the host ack waits for it', () => {
    const t = primaryScript(['backup', 'east'], { standby: 'backup' });
    for (const p of ['backup', 'east']) {
      t.step({ type: 'peerUp', peer: p });
      t.recv(p, { type: 'resyncRequest', epoch: 1n, seqReceived: 0n });
    }
    t.step(hostWrite(1, 0, 1024));
    t.done('metaPersist');
    t.done('cacheAppend s1');
    t.done('storageWrite');
    t.step({ type: 'peerDown', peer: 'backup' });
    t.step({ type: 'peerDown', peer: 'east' });
    t.tick(500); // 5x the grace
    expect(t.role.status().mirrors.map((m) => [m.peer, m.sync])).toEqual([['backup', 'inSync'], ['east', 'degraded']]);
    t.done('bitmapSet east');
    expect(t.last.some((a) => a.type === 'ackHost')).toBe(false);
    // The standby returns, gets write 1 again and acks: only now the host is acked.
    expect(t.step({ type: 'peerUp', peer: 'backup' })).toEqual(['send backup epoch 1']);
    // It also gets the copy of east's dirty bits (issue 16: a promotion resyncs east by bitmap),
    // and the committed watermark; the host ack waits for the copy to be durable there too.
    expect(t.recv('backup', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n })).toEqual(['send backup peerDirty #1 east @0+1024', 'send backup write s1 @0+1024', 'send backup ack s0', 'send backup inSync e1 s1']);
    expect(t.recv('backup', { type: 'ack', epoch: 1n, seq: 1n })).toEqual([]);
    expect(t.recv('backup', { type: 'peerDirtyAck', epoch: 1n, id: 1n })).toEqual(['ackHost #1']);
  });
});

describe('a promoted primary and its new standby (issue 16 item 5: failback)', () => {
  it('the old primary, its standby now, holds no host write up until it is in sync, and is then given a copy of every dirty bit the primary holds for the other mirrors', () => {
    // Promoted in an earlier life: east misses region 3 (the persisted bitmap); local, the old
    // primary, is the standby, protected only once this primary has seen it in sync.
    const t = primaryScript(['local', 'east'], { self: 'backup', standby: 'local', standbyArm: 'inSync' }, [], new Map([['east', [3]]]));
    const out: string[] = [];
    const drive = (rounds: number): void => {
      for (let i = 0; i < rounds; i++) {
        for (const prefix of ['metaPersist', 'cacheAppend', 'storageWrite', 'storageRead', 'bitmapSet']) {
          while (t.openActions().some((a) => a.startsWith(prefix))) out.push(...t.done(prefix));
        }
        for (const a of t.last) {
          if (a.type === 'send' && a.peer === 'local' && a.msg.type === 'resyncData') out.push(...t.recv('local', { type: 'resyncAck', epoch: 1n, resyncId: a.msg.resyncId }));
        }
        out.push(...t.tick(5));
      }
    };
    // local is dead: a host write is acked without it once it is degraded (it is not armed).
    out.push(...t.step(hostWrite(1, 0, 1024)));
    drive(30);
    expect(t.role.status().mirrors.map((m) => [m.peer, m.sync])).toEqual([['local', 'degraded'], ['east', 'degraded']]);
    // east comes back (it is resynced), the host write is acked by east.
    out.push(...t.step({ type: 'peerUp', peer: 'east' }));
    out.push(...t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n }));
    for (let i = 0; i < 20; i++) {
      for (const a of t.last) {
        if (a.type === 'send' && a.peer === 'east' && a.msg.type === 'resyncData') out.push(...t.recv('east', { type: 'resyncAck', epoch: 1n, resyncId: a.msg.resyncId }));
        if (a.type === 'send' && a.peer === 'east' && a.msg.type === 'write') out.push(...t.recv('east', { type: 'ack', epoch: 1n, seq: a.msg.seq }));
      }
      drive(1);
    }
    expect(out).toContain('ackHost #1');
    expect(t.logs).not.toContain('standby_armed');
    // A new write while east is cut again: east misses it (dirty); local is still out.
    out.push(...t.step({ type: 'peerDown', peer: 'east' }));
    drive(40);
    const eastDirty = t.role.status().mirrors.find((m) => m.peer === 'east')!.dirtyRegions;
    out.push(...t.step(hostWrite(2, 2048, 1024)));
    drive(5);
    // local comes back, is resynced and, once in sync, armed and given east's dirty bits.
    out.length = 0;
    out.push(...t.step({ type: 'peerUp', peer: 'local' }));
    out.push(...t.recv('local', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n }));
    drive(60);
    expect(t.role.status().mirrors.find((m) => m.peer === 'local')?.sync).toBe('inSync');
    expect(t.logs).toContain('standby_armed');
    // east's dirty regions: region 3 (persisted from the earlier life) and region 2 (write 2),
    // in one copy; on the old code local got none (it was degraded when they were marked).
    expect(t.role.status().mirrors.find((m) => m.peer === 'east')!.dirtyRegions).toBe(eastDirty + 1);
    expect(out.filter((l) => l.startsWith('send local peerDirty'))).toEqual([expect.stringMatching(/^send local peerDirty #\d+ east (@0\+1024,)?@2048\+2048$/)]);
  });
});

describe('standby: promotion guard (issue 10: a standby that may miss acked writes is never promoted by itself)', () => {
  function voteLost(s: Script<Standby>): CoreAction[] {
    s.step({ type: 'peerDown', peer: 'local' });
    silence(s);
    s.recv('east', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n });
    s.recv('west', { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: -1, seqReceived: 0n });
    return s.last;
  }

  it('never told "in sync" by its primary: the majority agrees, but it refuses to promote and says why', () => {
    const s = standby({ inSync: false });
    expect(voteLost(s).some((a) => a.type === 'bitmapSet' || a.type === 'metaPersist')).toBe(false);
    expect(s.logs).toContain('failover_refused');
    expect(s.role.status()).toMatchObject({ phase: 'following', inSyncConfirmed: false });
    expect(s.role.notPromotable()).toMatch(/promoting it could lose acknowledged writes/);
  });

  it('a resync region from the primary closes the guard again (durably); the next inSync opens it', () => {
    const s = standby();
    s.recv('local', { type: 'resyncData', epoch: 1n, resyncId: 1n, offsetBytes: 0, payload: new Uint8Array(1024) });
    expect(s.last.find((a) => a.type === 'metaPersist')).toMatchObject({ meta: { inSyncEpoch: 0n } });
    expect(s.logs).toContain('standby_out_of_sync');
    expect(s.role.status().inSyncConfirmed).toBe(false);
    s.done('metaPersist');
    s.recv('local', { type: 'inSync', epoch: 1n, seq: 0n });
    expect(s.role.status().inSyncConfirmed).toBe(true);
  });

  it('a write that fails on its storage closes the guard: the primary will degrade it and may ack without it', () => {
    const s = standby();
    s.recv('local', writeMsg(1n, 0, 512, 1n));
    s.done('cacheAppend s1');
    s.done('storageWrite', { sense: senseOf('medium error at LBA 0', 0x3, 0x11) });
    s.done('bitmapSet @local'); // its region is recorded suspect first (issue 16 item 3)
    expect(s.last.some((a) => a.type === 'send' && a.msg.type === 'writeStatus')).toBe(true);
    expect(s.last.find((a) => a.type === 'metaPersist')).toMatchObject({ meta: { inSyncEpoch: 0n } });
    expect(s.role.status().inSyncConfirmed).toBe(false);
  });

  it('an inSync that crossed its own failed write (link reset: the writeStatus arrives after the join) is ignored', () => {
    const s = standby();
    s.recv('local', writeMsg(1n, 0, 512, 1n));
    s.done('cacheAppend s1');
    s.done('storageWrite', { sense: senseOf('medium error at LBA 0', 0x3, 0x11) });
    s.done('bitmapSet @local'); // its region is recorded suspect first (issue 16 item 3)
    s.done('metaPersist');
    // The link resets; at the rejoin the primary still thinks this site is in sync.
    s.step({ type: 'peerDown', peer: 'local' });
    s.step({ type: 'peerUp', peer: 'local' });
    s.recv('local', { type: 'epoch', epoch: 1n });
    expect(s.recv('local', { type: 'inSync', epoch: 1n, seq: 1n })).toEqual([]);
    expect(s.logs).toContain('in_sync_ignored');
    expect(s.role.status().inSyncConfirmed).toBe(false);
  });

  it('a forced promotion with a failed write settles: the write is lost, the cache is emptied, the primary starts', () => {
    const s = standby({ inSync: false });
    s.recv('local', writeMsg(1n, 0, 512, 1n));
    s.done('cacheAppend s1');
    s.done('storageWrite', { sense: senseOf('medium error at LBA 0', 0x3, 0x11) });
    s.done('bitmapSet @local'); // its region is recorded suspect first (issue 16 item 3)
    s.step({ type: 'peerDown', peer: 'local' });
    s.took(s.role.promote('operator accepts loss', s.nowMs, true));
    for (const p of ['local', 'east', 'west']) s.done(`bitmapSet ${p}`);
    const out = s.done('metaPersist');
    expect(out).toContain('cacheDrop s1');
    expect(s.role.status().phase).toBe('primary');
  });

  it('the guard comes back from the meta record after a restart', () => {
    const s = new Script(new Standby({ self: 'backup', primary: 'local', mirrors: ['east', 'west'], volumeBytes: 16 * 1024, blockBytes, limits, failoverTimeoutMs: 500, queryIntervalMs: 200, onMirrorLoss: 'degrade' }));
    s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n, inSyncEpoch: 1n }, cacheEntries: [], dirtyRegions: new Map() } });
    expect(s.role.status().inSyncConfirmed).toBe(true);
  });

  it('promote with force overrides the guard (a person accepts the loss) and logs it', () => {
    const s = standby({ inSync: false });
    expect(() => s.role.promote('planned', 10)).toThrow(/without force/);
    const out = s.role.promote('operator accepts loss', 20, true);
    expect(out.filter((a) => a.type === 'bitmapSet')).toHaveLength(3);
    expect(s.role.status().phase).toBe('promoting');
  });
});

// Scenario scripts for the primary's mirror controller (claims 10-12): each step feeds one event
// and lists the actions that must come back, in order.
import { describe, expect, it } from 'vitest';
import { hostWrite, primaryScript, writeFailed, type Script } from './harness.js';
import type { Primary } from '../../src/core/primary.js';

function join(t: Script<Primary>, peer: string, seqReceived = 0n): void {
  expect(t.step({ type: 'peerUp', peer })).toEqual([`send ${peer} epoch 1`]);
  t.recv(peer, { type: 'resyncRequest', epoch: 1n, seqReceived });
}

/** Two mirrors joined, seqs reserved, write 1 (@0+1024) cached and fanned out. */
function writeOneFannedOut(): Script<Primary> {
  const t = primaryScript(['east', 'west']);
  join(t, 'east');
  join(t, 'west');
  expect(t.step(hostWrite(1, 0, 1024))).toEqual(['metaPersist e1 reserved s1001']);
  expect(t.done('metaPersist')).toEqual(['cacheAppend s1 @0+1024']);
  return t;
}

describe('primary: write path (claims 10, 11, 12)', () => {
  it('caches first, then sends to every mirror at once and performs locally; acks the host after every mirror and local storage; drops after the local flush', () => {
    const t = writeOneFannedOut();
    // Claim 12 (v): nothing leaves before the cache append completes.
    expect(t.last.some((a) => a.type === 'send' || a.type === 'storageWrite')).toBe(false);
    expect(t.done('cacheAppend s1')).toEqual(['send east write s1 @0+1024', 'send west write s1 @0+1024', 'storageWrite @0+1024']);
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 1n })).toEqual([]);
    expect(t.done('storageWrite @0')).toEqual([]);
    expect(t.recv('west', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1']); // claim 10 (iv)
    expect(t.tick(60)).toEqual(['storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']); // claim 12 (vi)
  });

  it('with 31 mirrors (the most a site fans out to) the host ack waits for the last of them, whatever the order of acks', () => {
    // PrimaryEntry.waitingMask holds one bit per mirror (issue 18): the 31st mirror's bit is
    // 1 << 30, and an ack from an unknown or repeated mirror must not complete the write.
    const names = Array.from({ length: 31 }, (_, i) => `m${i}`);
    const t = primaryScript(names);
    for (const n of names) join(t, n);
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    expect(t.done('cacheAppend s1').filter((a) => a.startsWith('send '))).toHaveLength(31);
    t.done('storageWrite @0');
    const order = [...names.slice(16), ...names.slice(0, 16)].reverse(); // m15..m0, m30..m16: the last bit acks last but one
    const last = order.splice(order.indexOf('m30'), 1)[0]!;
    for (const n of order) {
      expect(t.recv(n, { type: 'ack', epoch: 1n, seq: 1n })).toEqual([]);
      expect(t.recv(n, { type: 'ack', epoch: 1n, seq: 1n })).toEqual([]); // a repeated ack adds nothing
    }
    expect(t.recv(last, { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1']);
  });

  it('a FUA write is durable on completion: no flush needed before the drop', () => {
    const t = primaryScript(['east']);
    join(t, 'east');
    t.step(hostWrite(1, 0, 512, true));
    t.done('metaPersist');
    expect(t.done('cacheAppend')).toEqual(['send east write s1 @0+512 fua', 'storageWrite @0+512 fua']);
    t.done('storageWrite');
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1', 'cacheDrop s1']);
  });

  it('overlapping writes never reorder on local storage; disjoint ones run together', () => {
    const t = writeOneFannedOut();
    t.done('cacheAppend s1');
    expect(t.step(hostWrite(2, 512, 1024))).toEqual(['cacheAppend s2 @512+1024']); // overlaps s1
    expect(t.step(hostWrite(3, 4096, 512))).toEqual(['cacheAppend s3 @4096+512']); // disjoint
    expect(t.done('cacheAppend s2')).toEqual(['send east write s2 @512+1024', 'send west write s2 @512+1024']);
    expect(t.done('cacheAppend s3')).toEqual(['send east write s3 @4096+512', 'send west write s3 @4096+512', 'storageWrite @4096+512']);
    expect(t.done('storageWrite @0+1024')).toEqual(['storageWrite @512+1024']);
  });

  it('cumulative acks complete every write up to the acked seq', () => {
    const t = primaryScript(['east']);
    join(t, 'east');
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.step(hostWrite(2, 1024, 512));
    t.done('cacheAppend s1');
    t.done('cacheAppend s2');
    t.done('storageWrite @0');
    t.done('storageWrite @1024');
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 2n })).toEqual(['ackHost #1', 'ackHost #2']);
  });

  it('bounded window: writes beyond inflightWritesMax queue, beyond hostQueueWritesMax the host gets busy', () => {
    const t = primaryScript(['east']);
    join(t, 'east');
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    for (let i = 2; i <= 4; i++) t.step(hostWrite(i, i * 512, 512)); // window of 4 now full
    expect(t.step(hostWrite(5, 4096, 512))).toEqual([]); // queued
    expect(t.step(hostWrite(6, 4608, 512))).toEqual([]); // queued (host queue max 2)
    expect(t.step(hostWrite(7, 5120, 512))).toEqual(['ackHost #7 busy']);
    expect(t.role.status().hostQueued).toBe(2);
    // One write completes: the first queued write gets a seq and goes to the cache.
    t.done('cacheAppend s1');
    t.done('storageWrite @0');
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1', 'cacheAppend s5 @4096+512']);
  });

  it('refuses a write that is not whole blocks or runs past the volume, naming the problem', () => {
    const t = primaryScript(['east']);
    expect(t.step(hostWrite(1, 100, 512))).toEqual(['ackHost #1 io']);
    expect(t.last[0]).toMatchObject({ error: { message: expect.stringContaining('not a multiple of the 512-byte block size') } });
    expect(t.step(hostWrite(2, 16 * 1024, 512))).toEqual(['ackHost #2 io']);
    expect(t.last[0]).toMatchObject({ error: { message: expect.stringContaining('runs past the end') } });
  });
});

describe('primary: FLUSH barrier (issue 5 item 6)', () => {
  it('waits for earlier writes, then flushes locally and at every in-sync mirror', () => {
    const t = writeOneFannedOut();
    t.done('cacheAppend s1');
    expect(t.step({ type: 'hostFlush', id: 9 })).toEqual([]); // write 1 not yet acked
    t.done('storageWrite');
    t.recv('east', { type: 'ack', epoch: 1n, seq: 1n });
    expect(t.recv('west', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1', 'send east flush #1 upto s1', 'send west flush #1 upto s1', 'storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']);
    expect(t.recv('east', { type: 'flushAck', epoch: 1n, flushId: 1n })).toEqual([]);
    expect(t.recv('west', { type: 'flushAck', epoch: 1n, flushId: 1n })).toEqual(['ackHost #9']);
  });
});

describe('primary: mirror loss (issue 5 item 5)', () => {
  it('degrade: after the grace period the missed regions go to the persistent bitmap before the host ack; resync on return, then in sync', () => {
    const t = writeOneFannedOut();
    t.done('cacheAppend s1');
    t.done('storageWrite');
    t.recv('east', { type: 'ack', epoch: 1n, seq: 1n });
    t.step({ type: 'peerDown', peer: 'west' });
    expect(t.tick(50)).toEqual(['storageFlush']); // within grace: the host keeps waiting (the periodic local flush runs)
    expect(t.tick(60)).toEqual(['bitmapSet west [0]']); // regionBytes 1024: @0+1024 is region 0
    expect(t.logs).toContain('mirror_degraded');
    expect(t.done('bitmapSet')).toEqual(['ackHost #1']);
    // While degraded, new writes are not sent to west; their regions are dirtied.
    t.step(hostWrite(2, 2048, 512));
    expect(t.done('cacheAppend s2')).toEqual(['send east write s2 @2048+512', 'bitmapSet west [2]', 'storageWrite @2048+512']);
    t.done('bitmapSet');
    t.done('storageWrite');
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 2n })).toEqual(['ackHost #2']);
    // West returns: resync region by region (rate-limited by ticks), then back in sync.
    expect(t.step({ type: 'peerUp', peer: 'west' })).toEqual(['send west epoch 1']);
    t.recv('west', { type: 'resyncRequest', epoch: 1n, seqReceived: 1n });
    expect(t.role.status().mirrors.find((m) => m.peer === 'west')).toMatchObject({ sync: 'resyncing', dirtyRegions: 2, resyncPercent: 0 });
    expect(t.tick(1)).toEqual(['storageRead @0+1024']);
    expect(t.done('storageRead')).toEqual(['send west resyncData #1 @0+1024']);
    expect(t.recv('west', { type: 'resyncAck', epoch: 1n, resyncId: 1n })).toEqual(['bitmapClear west [0]']);
    expect(t.role.status().mirrors.find((m) => m.peer === 'west')).toMatchObject({ sync: 'resyncing', resyncPercent: 50 });
    expect(t.tick(1)).toEqual(['storageRead @2048+1024']);
    t.done('storageRead');
    // The last region lands: west is in sync, and is told so (a standby's promotion guard).
    expect(t.recv('west', { type: 'resyncAck', epoch: 1n, resyncId: 2n })).toEqual(['bitmapClear west [2]', 'send west inSync e1 s2']);
    expect(t.logs).toContain('mirror_in_sync');
    t.step(hostWrite(3, 0, 512));
    expect(t.done('cacheAppend s3')).toEqual(['send east write s3 @0+512', 'send west write s3 @0+512', 'storageWrite @0+512']);
  });

  it('degraded: a write to a region whose dirty bit is still being persisted waits for that persist too', () => {
    const t = primaryScript(['east'], {}, [], new Map([['east', [5]]]));
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.step(hostWrite(2, 512, 512)); // same region 0
    expect(t.done('cacheAppend s1')).toEqual(['bitmapSet east [0]', 'storageWrite @0+512']);
    expect(t.done('cacheAppend s2')).toEqual(['storageWrite @512+512']); // no second bitmapSet for region 0
    t.done('storageWrite @0');
    expect(t.done('storageWrite @512')).toEqual([]); // bit for region 0 not durable yet: no host ack
    expect(t.done('bitmapSet')).toEqual(['ackHost #1', 'ackHost #2']);
  });

  it('resync: a write landing in a region being resynced re-dirties it, so the region is sent again', () => {
    const t = primaryScript(['east'], {}, [], new Map([['east', [0]]]));
    expect(t.role.status().mirrors[0]).toMatchObject({ sync: 'degraded', dirtyRegions: 1 });
    join(t, 'east', 0n);
    expect(t.tick(1)).toEqual(['storageRead @0+1024']);
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    // Region 0 is already dirty (durable), so no new bitmapSet; the local write waits behind the read.
    expect(t.done('cacheAppend s1')).toEqual([]);
    t.done('storageRead'); // read came before the write: it holds the old data
    expect(t.openActions()).toContain('storageWrite @0+512');
    expect(t.recv('east', { type: 'resyncAck', epoch: 1n, resyncId: 1n })).toEqual([]); // touched: stays dirty
    expect(t.role.status().mirrors[0]).toMatchObject({ sync: 'resyncing', dirtyRegions: 1 });
    t.done('storageWrite');
    expect(t.tick(1)).toEqual(['storageRead @0+1024']); // sent again, now with the new data
  });

  // Simulator seed 3512 at a flush after 256 writes (test/sim/sim.test.ts), cut down: the region
  // becomes suspect while its resync read waits behind the failed write, and the repair makes
  // it whole again before the mirror acks what the read returned.
  it('resync: a read queued behind a local write that fails is sent again, though the repair makes the region whole before the ack', () => {
    const t = primaryScript(['east', 'west'], {}, [], new Map([['east', [0]]]));
    join(t, 'west');
    join(t, 'east');
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    expect(t.done('cacheAppend s1')).toEqual(['send west write s1 @0+512', 'storageWrite @0+512']); // east misses it: region 0 dirty
    expect(t.tick(1)).toEqual([]); // east's resync read of region 0 waits behind the write
    expect(t.done('storageWrite @0+512', writeFailed)).toEqual(['storageRead @0+1024', 'bitmapSet @local [0]']);
    t.done('bitmapSet @local');
    expect(t.done('storageRead')).toEqual(['send east resyncData #1 @0+1024']); // without s1
    expect(t.recv('west', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1']);
    // The repair writes s1 back from the journal: region 0 is whole again, and s1 leaves the journal.
    expect(t.tick(1)).toEqual(['storageWrite @0+512 fua']);
    t.done('bitmapSet @journaled');
    expect(t.done('storageWrite @0+512 fua')).toEqual(['bitmapClear @local [0]', 'bitmapClear @journaled [0]', 'cacheDrop s1']);
    // East acks data without s1: region 0 stays dirty for it and is read and sent again.
    expect(t.recv('east', { type: 'resyncAck', epoch: 1n, resyncId: 1n })).toEqual([]);
    expect(t.role.status().mirrors.find((m) => m.peer === 'east')).toMatchObject({ sync: 'resyncing', dirtyRegions: 1 });
    expect(t.tick(1)).toEqual(['storageRead @0+1024']);
    expect(t.done('storageRead')).toEqual(['send east resyncData #2 @0+1024']);
    expect(t.recv('east', { type: 'resyncAck', epoch: 1n, resyncId: 2n })).toEqual(['bitmapClear east [0]', 'send east inSync e1 s1']);
  });

  it('block: host writes wait while a mirror is down, however long; the mirror gets them re-sent on return', () => {
    const t = primaryScript(['east'], { onMirrorLoss: 'block' });
    join(t, 'east');
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.done('cacheAppend');
    t.step({ type: 'peerDown', peer: 'east' });
    t.done('storageWrite');
    expect(t.tick(10_000)).toEqual(['storageFlush']); // no bitmap, no host ack
    expect(t.role.status().mirrors[0]).toMatchObject({ sync: 'inSync', link: 'down' });
    t.step({ type: 'peerUp', peer: 'east' });
    expect(t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n })).toEqual(['send east write s1 @0+512', 'send east inSync e1 s1']);
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1']);
  });

  it('on rejoin re-sends only what the mirror has not received', () => {
    const t = primaryScript(['east']);
    join(t, 'east');
    t.step(hostWrite(1, 0, 512));
    t.done('metaPersist');
    t.step(hostWrite(2, 1024, 512));
    t.done('cacheAppend s1');
    t.done('cacheAppend s2');
    t.step({ type: 'peerDown', peer: 'east' });
    t.step({ type: 'peerUp', peer: 'east' });
    expect(t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 1n })).toEqual(['send east write s2 @1024+512', 'send east inSync e1 s2']);
  });
});

describe('primary: restart and fencing', () => {
  it('a heartbeat of an older epoch is RTT only (a mirror not yet at our epoch): no fence; any other older frame is fenced', () => {
    const t = primaryScript(['east'], {}, [], new Map(), 1n);
    t.step({ type: 'peerUp', peer: 'east' });
    expect(t.step({ type: 'peerHeard', peer: 'east', epoch: 0n, lastSeq: 0n, rttMs: 1 })).toEqual([]);
    expect(t.recv('east', { type: 'ack', epoch: 0n, seq: 1n })).toEqual(['send east fence e1']);
  });

  it('replays its cache: re-performs locally and re-sends to mirrors; continues above the persisted seq reservation', () => {
    const entry = { epoch: 1n, seq: 7n, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) };
    const t = primaryScript(['east'], {}, [entry], new Map(), 8n);
    expect(t.last.map((a) => a.type)).toContain('storageWrite');
    expect(t.step({ type: 'peerUp', peer: 'east' })).toEqual(['send east epoch 1']);
    expect(t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n })).toEqual(['send east write s7 @0+512', 'send east inSync e1 s7']);
    // A replayed entry has no host to ack; it completes and leaves the cache like any other.
    t.done('storageWrite');
    expect(t.recv('east', { type: 'ack', epoch: 1n, seq: 7n })).toEqual([]);
    // Seqs up to 7 may have been used before the crash: a new reservation is persisted first,
    // and the next write continues at s8.
    expect(t.step(hostWrite(1, 4096, 512))).toEqual(['metaPersist e1 reserved s1008']);
    expect(t.done('metaPersist')).toEqual(['cacheAppend s8 @4096+512']);
  });

  it('a message from a newer epoch fences it: host writes are refused with a clear error', () => {
    const t = primaryScript(['east']);
    t.step({ type: 'peerUp', peer: 'east' });
    t.recv('east', { type: 'fence', epoch: 2n, reason: 'promoted' });
    expect(t.logs).toContain('fenced');
    expect(t.step(hostWrite(1, 0, 512))).toEqual(['ackHost #1 fenced']);
    expect(t.last[0]).toMatchObject({ error: { message: expect.stringContaining('epoch 2') } });
  });
});

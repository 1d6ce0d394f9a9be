// Scenario scripts for a mirror site (claims 11, 17): each step feeds one event and lists the
// actions that must come back, in order.
import { describe, expect, it } from 'vitest';
import { mirrorScript, writeMsg } from './harness.js';

function joined(entries: Parameters<typeof mirrorScript>[0] = []) {
  const t = mirrorScript(entries);
  t.step({ type: 'peerUp', peer: 'local' });
  t.recv('local', { type: 'epoch', epoch: 1n });
  return t;
}

describe('mirror: receive, cache, perform, ack (claims 11, 17)', () => {
  it('answers the upstream epoch with what it holds', () => {
    const t = mirrorScript();
    expect(t.step({ type: 'peerUp', peer: 'local' })).toEqual([]);
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0']);
  });

  it('writes to cache and storage, acks only when both are done, drops once durable', () => {
    const t = joined();
    // Journal first, then storage (claims 11, 17): a write that may have touched storage is
    // always in the journal, so a crash can never leave RAID-1 members disagreeing about it.
    expect(t.recv('local', writeMsg(1n, 0, 512))).toEqual(['cacheAppend s1 @0+512']);
    expect(t.done('cacheAppend')).toEqual(['storageWrite @0+512']); // cached, not yet performed: no ack
    expect(t.done('storageWrite')).toEqual(['send local ack s1']);
    expect(t.tick(60)).toEqual(['storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']);
  });

  it('acks cumulatively, in seq order, and never past a write still being performed', () => {
    const t = joined();
    t.recv('local', writeMsg(1n, 0, 512));
    t.recv('local', writeMsg(2n, 512, 512));
    t.done('cacheAppend s1');
    t.done('cacheAppend s2');
    expect(t.done('storageWrite @512')).toEqual([]); // s1 still on its way to storage
    expect(t.done('storageWrite @0')).toEqual(['send local ack s2']);
  });

  it('applies overlapping writes in seq order', () => {
    const t = joined();
    expect(t.recv('local', writeMsg(1n, 0, 1024))).toEqual(['cacheAppend s1 @0+1024']);
    expect(t.recv('local', writeMsg(2n, 512, 512))).toEqual(['cacheAppend s2 @512+512']);
    expect(t.done('cacheAppend s1')).toEqual(['storageWrite @0+1024']);
    expect(t.done('cacheAppend s2')).toEqual([]); // overlaps s1, still on its way to storage
    expect(t.done('storageWrite @0')).toEqual(['storageWrite @512+512', 'send local ack s1']);
  });

  it('ignores a duplicate seq of the same epoch', () => {
    const t = joined();
    t.recv('local', writeMsg(1n, 0, 512));
    expect(t.recv('local', writeMsg(1n, 0, 512))).toEqual([]);
    expect(t.logs).toContain('duplicate_write_ignored');
  });

  it('refuses frames of an older epoch with a fence, and adopts a newer epoch only once it is persisted', () => {
    const t = joined();
    expect(t.recv('local', { type: 'epoch', epoch: 3n })).toEqual(['metaPersist e3 reserved s0']);
    expect(t.done('metaPersist')).toEqual(['send local resyncRequest e3 received s0']);
    expect(t.recv('local', writeMsg(5n, 0, 512, 1n))).toEqual(['send local fence e3']);
    expect(t.role.status().epoch).toBe(3n);
  });

  it('flush: waits for earlier writes to be performed, flushes storage, then acks the flush', () => {
    const t = joined();
    t.recv('local', writeMsg(1n, 0, 512));
    t.done('cacheAppend');
    expect(t.recv('local', { type: 'flush', epoch: 1n, flushId: 4n, seq: 1n })).toEqual([]);
    expect(t.done('storageWrite')).toEqual(['send local ack s1', 'storageFlush']);
    expect(t.done('storageFlush')).toEqual(['send local flushAck #4', 'cacheDrop s1']);
  });

  it('reports a failed storage write, records its region suspect, acks past it only then, and names it on every join until resynced', () => {
    const t = joined();
    t.recv('local', writeMsg(1n, 0, 512));
    t.recv('local', writeMsg(2n, 1024, 512));
    t.done('cacheAppend s1');
    t.done('cacheAppend s2');
    t.done('storageWrite @1024');
    expect(t.openActions()).toEqual(['storageWrite @0+512']);
    // The write of s1 fails on storage: its region is recorded suspect before anything else.
    expect(t.done('storageWrite @0', { sense: { key: 3, asc: 0x0c, ascq: 0, message: 'east.img at LBA 0: write error' } }))
      .toEqual(['bitmapSet @local [0]']); // no ack for s1 nor s2 yet
    // Durably suspect: the failure is reported, and the ack passes s1 (reported failed, owed by a
    // resync), so nothing behind it is pinned. The failed entry has nothing left to keep in the
    // journal (the suspect record stands for it).
    expect(t.done('bitmapSet')).toEqual(['send local writeStatus s1 east.img at LBA 0: write error', 'send local ack s2', 'cacheDrop s1']);
    // The link drops (the status may be lost with it): the next join names the region and repeats the status.
    t.step({ type: 'peerDown', peer: 'local' });
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s2 ranges @0+1024', 'send local writeStatus s1 east.img at LBA 0: write error', 'send local ack s2']);
    // Resync data means the primary degraded us: the stuck entries are flushed, dropped, superseded.
    expect(t.recv('local', { type: 'resyncData', epoch: 1n, resyncId: 1n, offsetBytes: 0, payload: new Uint8Array(1024) })).toEqual(['storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s2', 'storageWrite @0+1024 fua']);
    // On storage: the region holds the upstream's content, no longer suspect.
    expect(t.done('storageWrite')).toEqual(['bitmapClear @local [0]', 'send local resyncAck #1']);
    t.step({ type: 'peerDown', peer: 'local' });
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s2', 'send local ack s2']);
  });
});

describe('mirror: restart and resync', () => {
  it('replays its cache onto storage first, and reports the highest seq it holds', () => {
    const e = (seq: bigint, off: number) => ({ epoch: 1n, seq, offsetBytes: off, lengthBytes: 512, fua: false, payload: new Uint8Array(512) });
    const t = mirrorScript([e(4n, 0), e(5n, 0)]);
    expect(t.openActions()).toEqual(['storageWrite @0+512']); // s5 waits behind s4 (same block)
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s5']);
    t.done('storageWrite');
    expect(t.done('storageWrite')).toEqual(['send local ack s5']);
  });

  it('applies resync data only once its cache has drained, as a FUA write, then acks it', () => {
    const t = joined();
    t.recv('local', writeMsg(1n, 0, 512));
    t.done('cacheAppend');
    t.done('storageWrite');
    const data = { type: 'resyncData' as const, epoch: 1n, resyncId: 9n, offsetBytes: 0, payload: new Uint8Array(1024) };
    // Entry s1 is acked but not yet flushed: the cache is flushed first.
    expect(t.recv('local', data)).toEqual(['storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1', 'storageWrite @0+1024 fua']);
    expect(t.done('storageWrite')).toEqual(['send local resyncAck #9']);
  });
});

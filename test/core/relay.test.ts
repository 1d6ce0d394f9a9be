// Scenario scripts for a relay point (claims 14, 18, 20, 21): each step feeds one event and
// lists the actions that must come back, in order.
import { describe, expect, it } from 'vitest';
import { Relay, type RelayConfig } from '../../src/core/relay.js';
import { blockBytes, Script, testLimits, writeMsg } from './harness.js';

function relayScript(opts: Partial<RelayConfig> = {}): Script<Relay> {
  const r = new Relay({ self: 'r1', downstream: 'r2', volumeBytes: 16 * 1024, blockBytes, ackMode: 'cached', storage: false, limits: testLimits, ...opts });
  const s = new Script(r);
  s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map() } });
  s.done('metaPersist'); // the relay's life counter (unique downstream resync ids)
  return s;
}

/** Both links up and joined. */
function linked(opts: Partial<RelayConfig> = {}): Script<Relay> {
  const t = relayScript(opts);
  t.step({ type: 'peerUp', peer: 'local' });
  t.recv('local', { type: 'epoch', epoch: 1n });
  t.step({ type: 'peerUp', peer: 'r2' });
  t.recv('r2', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n });
  return t;
}

describe('relay: cache, ack upstream, forward, drop on downstream ack (claims 20, 21)', () => {
  it('joins both ways: answers the upstream epoch, announces its own downstream', () => {
    const t = relayScript();
    t.step({ type: 'peerUp', peer: 'local' });
    expect(t.recv('local', { type: 'epoch', epoch: 1n })).toEqual(['send local resyncRequest e1 received s0']);
    expect(t.step({ type: 'peerUp', peer: 'r2' })).toEqual(['send r2 epoch 1']);
  });

  it('cached: caches (20 a), then acks upstream (20 b) and forwards with the origin seq (20 c); drops on the downstream ack (21)', () => {
    const t = linked();
    expect(t.recv('local', writeMsg(7n, 0, 512))).toEqual(['cacheAppend s7 @0+512']);
    expect(t.done('cacheAppend')).toEqual(['send local ack s7', 'send r2 write s7 @0+512']);
    expect(t.role.status().oldestUnackedSeq).toBe(7n);
    expect(t.recv('r2', { type: 'ack', epoch: 1n, seq: 7n })).toEqual(['cacheDrop s7']);
    expect(t.role.quiescent()).toBe(true);
  });

  it('end-to-end: acks upstream only after the downstream acked', () => {
    const t = linked({ ackMode: 'end-to-end' });
    t.recv('local', writeMsg(1n, 0, 512));
    expect(t.done('cacheAppend')).toEqual(['send r2 write s1 @0+512']);
    expect(t.recv('r2', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['send local ack s1', 'cacheDrop s1']);
  });

  it('with storage (claim 18): performs each write and acks once cached AND performed', () => {
    const t = linked({ storage: true });
    // Journal first, then storage (claim 18 with 20 a): performed and forwarded once cached.
    expect(t.recv('local', writeMsg(1n, 0, 512))).toEqual(['cacheAppend s1 @0+512']);
    expect(t.done('cacheAppend')).toEqual(['storageWrite @0+512', 'send r2 write s1 @0+512']);
    expect(t.done('storageWrite')).toEqual(['send local ack s1']);
    expect(t.recv('r2', { type: 'ack', epoch: 1n, seq: 1n })).toEqual([]); // not durable yet
    expect(t.tick(60)).toEqual(['storageFlush']);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']);
  });

  it('downstream outage: the cache fills, then writes wait un-acked (backpressure); heal drains in seq order', () => {
    const t = linked();
    t.step({ type: 'peerDown', peer: 'r2' });
    // testLimits.cacheBytesMax is 16 KiB: four 4 KiB writes fill it, the fifth waits.
    for (let s = 1n; s <= 5n; s++) t.recv('local', writeMsg(s, Number(s - 1n) * 4096 % 16384, 4096));
    const acks: string[] = [];
    for (let i = 0; i < 4; i++) acks.push(...t.done('cacheAppend'));
    expect(acks).toEqual(['send local ack s1', 'send local ack s2', 'send local ack s3', 'send local ack s4']);
    expect(t.openActions()).toEqual([]); // s5 not admitted: nothing dropped, nothing acked
    expect(t.role.status().receiveQueued).toBe(1);
    expect(t.step({ type: 'peerUp', peer: 'r2' })).toEqual(['send r2 epoch 1']);
    // The window (inflightWritesMax 4, inflightBytesMax 8 KiB) lets two 4 KiB writes go at once.
    expect(t.recv('r2', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n })).toEqual(['send r2 write s1 @0+4096', 'send r2 write s2 @4096+4096']);
    expect(t.recv('r2', { type: 'ack', epoch: 1n, seq: 2n })).toEqual(['send r2 write s3 @8192+4096', 'send r2 write s4 @12288+4096', 'cacheDrop s1,s2', 'cacheAppend s5 @0+4096']);
  });

  it('restart: replays its cache downstream; the far end reports what it already has', () => {
    const entry = (seq: bigint) => ({ epoch: 1n, seq, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) });
    const r = new Relay({ self: 'r1', downstream: 'r2', volumeBytes: 16 * 1024, blockBytes, ackMode: 'cached', storage: false, limits: testLimits });
    const t = new Script(r);
    t.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [entry(3n), entry(4n)], dirtyRegions: new Map() } });
    t.done('metaPersist');
    t.step({ type: 'peerUp', peer: 'r2' });
    expect(t.recv('r2', { type: 'resyncRequest', epoch: 1n, seqReceived: 3n })).toEqual(['send r2 write s4 @0+512']);
    expect(t.recv('r2', { type: 'ack', epoch: 1n, seq: 4n })).toEqual(['cacheDrop s3,s4']);
  });

  it('flush: forwarded after the writes it covers, answered once the downstream answered', () => {
    const t = linked();
    t.recv('local', writeMsg(1n, 0, 512));
    expect(t.recv('local', { type: 'flush', epoch: 1n, flushId: 9n, seq: 1n })).toEqual([]); // s1 not cached yet
    expect(t.done('cacheAppend')).toEqual(['send local ack s1', 'send r2 write s1 @0+512', 'send r2 flush #1 upto s1']);
    expect(t.recv('r2', { type: 'flushAck', epoch: 1n, flushId: 1n })).toEqual(['send local flushAck #9']);
  });

  it('resync data passes through once the cache is drained, and its ack goes back up', () => {
    const t = linked();
    t.recv('local', writeMsg(1n, 0, 512));
    t.done('cacheAppend');
    expect(t.recv('local', { type: 'resyncData', epoch: 1n, resyncId: 5n, offsetBytes: 0, payload: new Uint8Array(1024) })).toEqual([]);
    const out = t.recv('r2', { type: 'ack', epoch: 1n, seq: 1n });
    expect(out[0]).toBe('cacheDrop s1');
    expect(out[1]).toMatch(/^send r2 resyncData #\d+ @0\+1024$/);
    const downId = BigInt(/#(\d+)/.exec(out[1]!)![1]!);
    expect(t.recv('r2', { type: 'resyncAck', epoch: 1n, resyncId: downId })).toEqual(['send local resyncAck #5']);
  });
});

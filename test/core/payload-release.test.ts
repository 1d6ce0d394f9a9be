// Issue 18 item 3: a write's payload is let go (`payloadDone`, its buffer back to the site's
// pool) when its entry leaves the journal's view, and not before: a mirror that has not acked
// may need it re-sent, and a write whose storage write failed may be repaired from it.
import { describe, expect, it } from 'vitest';
import { hostWrite, mirrorScript, primaryScript, writeMsg, type Script } from './harness.js';
import type { Primary } from '../../src/core/primary.js';

function joined(): Script<Primary> {
  const t = primaryScript(['east', 'west']);
  for (const peer of ['east', 'west']) {
    t.step({ type: 'peerUp', peer });
    t.recv(peer, { type: 'resyncRequest', epoch: 1n, seqReceived: 0n });
  }
  t.step(hostWrite(1, 0, 1024));
  t.done('metaPersist');
  return t;
}

describe('payload release (issue 18)', () => {
  it('primary: with the cacheDrop, after every mirror acked and the local flush; a re-send before it carries the whole payload', () => {
    const t = joined();
    t.done('cacheAppend s1');
    t.recv('east', { type: 'ack', epoch: 1n, seq: 1n });
    t.done('storageWrite @0');
    // West's link resets before its ack: s1 is re-sent whole on its return.
    t.step({ type: 'peerDown', peer: 'west' });
    t.step({ type: 'peerUp', peer: 'west' });
    expect(t.recv('west', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n })[0]).toBe('send west write s1 @0+1024');
    const resent = t.last.find((a) => a.type === 'send' && a.msg.type === 'write');
    expect(resent?.type === 'send' && resent.msg.type === 'write' && resent.msg.payload.length === 1024 && resent.msg.payload.every((b) => b === 1)).toBe(true);
    expect(t.recv('west', { type: 'ack', epoch: 1n, seq: 1n })).toEqual(['ackHost #1']);
    expect(t.tick(60)).toEqual(['storageFlush']);
    expect(t.released).toEqual([]); // acked everywhere, not yet durable here: still in the journal's view
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']);
    expect(t.released).toEqual([1024]);
  });

  it('primary: a write whose local storage write failed keeps its bytes while repair may need them', () => {
    const t = joined();
    t.done('cacheAppend s1');
    t.recv('east', { type: 'ack', epoch: 1n, seq: 1n });
    t.recv('west', { type: 'ack', epoch: 1n, seq: 1n });
    t.done('storageWrite @0', { sense: { key: 3, asc: 0x0c, ascq: 0, message: 'local.img at LBA 0: write error' } });
    for (let i = 0; i < 5; i++) t.tick(60);
    expect(t.last.map((a) => a.type)).not.toContain('cacheDrop');
    expect(t.released).toEqual([]);
  });

  it('mirror: with the cacheDrop after its ack and flush', () => {
    const t = mirrorScript();
    t.step({ type: 'peerUp', peer: 'local' });
    t.recv('local', { type: 'epoch', epoch: 1n });
    t.recv('local', writeMsg(1n, 0, 512));
    t.done('cacheAppend');
    expect(t.done('storageWrite')).toEqual(['send local ack s1']);
    expect(t.tick(60)).toEqual(['storageFlush']);
    expect(t.released).toEqual([]);
    expect(t.done('storageFlush')).toEqual(['cacheDrop s1']);
    expect(t.released).toEqual([512]);
  });
});

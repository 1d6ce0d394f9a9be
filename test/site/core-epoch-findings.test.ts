// Findings in src/core (epochs and seqs a peer claims) from the issue 17 peer fuzz
// (test/e2e/peer-fuzz.test.ts). The edge (src/site/peers.ts) keeps both epoch inputs from the
// core (a FENCE not newer than the site's epoch is ignored there, any epoch more than
// epochStepMax past the site's closes the link), and the primary's core now refuses them too
// (a second line), as well as an ack of a seq it never assigned. Still open (it.fails): a relay
// believes a downstream that claims more than it was sent (below).
import { describe, expect, it } from 'vitest';
import { blockBytes, hostWrite, primaryScript, Script, testLimits, writeMsg } from '../core/harness.js';
import type { Primary } from '../../src/core/primary.js';
import { Relay } from '../../src/core/relay.js';

function joined(): Script<Primary> {
  const t = primaryScript(['east']);
  expect(t.step({ type: 'peerUp', peer: 'east' })).toEqual(['send east epoch 1']);
  t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 0n });
  return t;
}

describe('primary core and epochs a mirror claims (issue 17 items 3-4)', () => {
  // src/core/primary.ts onRecv: after the newer/older epoch checks, `if (msg.type === 'fence')
  // this.fence(msg.epoch, peer)` also runs for a FENCE of the primary's own epoch, so the primary
  // fences itself at epoch 1 and becomes a mirror: the cluster has no primary. A legitimate FENCE
  // always names a newer epoch; one of the same epoch can also arrive legitimately after a race
  // (a promoted primary's old-epoch frames answered after its promotion), which would stop the
  // new primary too.
  it('a FENCE of its own epoch from a mirror does not fence the primary', () => {
    const t = joined();
    t.recv('east', { type: 'fence', epoch: 1n, reason: 'same epoch' });
    expect(t.logs).not.toContain('fenced');
    expect(t.step(hostWrite(1, 0, 512))).not.toEqual(['ackHost #1 fenced']);
  });

  // src/core/primary.ts onRecv / fanout.ts peerHeard: any newer epoch from a mirror fences the
  // primary, with no bound like upstream.ts's epochStepMax on EPOCH: one frame of epoch 2^64-1
  // from a mirror's identity fences it at 2^64-1 (persisted; no promotion can ever follow).
  it('a frame of epoch 2^64-1 from a mirror is refused, not obeyed', () => {
    const t = joined();
    t.recv('east', { type: 'ack', epoch: (1n << 64n) - 1n, seq: 1n });
    expect(t.logs).not.toContain('fenced');
    expect(t.step(hostWrite(1, 0, 512))).not.toEqual(['ackHost #1 fenced']);
  });

  it('a heartbeat of epoch 2^64-1 from a mirror is refused, not obeyed', () => {
    const t = joined();
    t.step({ type: 'peerHeard', peer: 'east', epoch: (1n << 64n) - 1n, lastSeq: 0n });
    expect(t.logs).not.toContain('fenced');
    expect(t.step(hostWrite(1, 0, 512))).not.toEqual(['ackHost #1 fenced']);
  });

  // The control: a FENCE of the next epoch (a promoted standby's news) does fence it.
  it('a FENCE of a newer epoch fences the primary (by design)', () => {
    const t = joined();
    t.recv('east', { type: 'fence', epoch: 2n, reason: 'promoted' });
    expect(t.logs).toContain('fenced');
    expect(t.step(hostWrite(1, 0, 512))).toEqual(['ackHost #1 fenced']);
  });
});

describe('relay core and a downstream that claims more than it was sent (issue 17 item 4)', () => {
  // Found by the peer fuzz, reproduced as processes: a WRITE of seq 2^30 (the bytes the leaf
  // already held) from r1's identity to its leaf `far` while r1->far was cut; after the cut
  // healed, far answered r1's EPOCH with seqReceived 2^30, src/core/relay.ts onDownJoin counted
  // every cached write with seq <= 2^30 as already held (e.sent = true) and far's upstream core
  // (src/core/upstream.ts onWrite) drops each later real write as a duplicate (seq <= seqReceived)
  // while its cumulative ack covers them: the cluster reports in sync, far's image differs from
  // the primary's (hash compared), silently. The primary's fan-out does not lose them (east in
  // the same run matched: it was degraded and resynced). A downstream that claims more than the
  // relay ever received is impossible on an honest link: the relay should resync it (or refuse
  // the join), not believe it.
  it.fails('a downstream join claiming a seq beyond anything the relay received does not make its cached writes count as sent', () => {
    const r = new Relay({ self: 'r1', downstream: 'r2', volumeBytes: 16 * 1024, blockBytes, ackMode: 'cached', storage: false, limits: testLimits });
    const t = new Script(r);
    t.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries: [], dirtyRegions: new Map() } });
    t.done('metaPersist');
    t.step({ type: 'peerUp', peer: 'local' });
    t.recv('local', { type: 'epoch', epoch: 1n });
    for (let s = 1n; s <= 2n; s++) t.recv('local', writeMsg(s, Number(s - 1n) * 4096, 4096));
    t.done('cacheAppend');
    t.done('cacheAppend');
    expect(t.step({ type: 'peerUp', peer: 'r2' })).toEqual(['send r2 epoch 1']);
    // Honest: seqReceived 0 gets s1 and s2 (relay.test.ts). Claimed: 2^30, more than r1 ever received.
    const out = t.recv('r2', { type: 'resyncRequest', epoch: 1n, seqReceived: 1n << 30n });
    expect(out).toEqual(['send r2 write s1 @0+4096', 'send r2 write s2 @4096+4096']);
  });
});

describe('primary core and a mirror that acks more than it was sent (issue 17 item 4)', () => {
  // Found by the peer fuzz (test/e2e/peer-fuzz.test.ts, stream mirror->up): an ACK of seq 2^63
  // from east's identity while no write was in flight. src/core/fanout.ts takes a mirror's ack (and
  // a heartbeat's lastSeq, peerHeard) as its seqAcked without checking it against the seqs the
  // primary assigned; the next host writes then wait for east forever (its real acks are below the
  // forged watermark): /status showed east "in-sync", lastSeqAcked 9223372036854775808,
  // inflightWrites 8, and the primary's hostInflight stuck at 8 writes. The edge cannot check this
  // without knowing the primary's assigned seqs; the core should refuse the ack (io.refuse).
  it('an ack of a seq the primary never assigned does not stop later host writes from completing', () => {
    const t = joined();
    t.recv('east', { type: 'ack', epoch: 1n, seq: 1n << 63n });
    t.step(hostWrite(1, 0, 1024));
    t.done('metaPersist');
    t.done('cacheAppend');
    const acked = [...t.recv('east', { type: 'ack', epoch: 1n, seq: 1n }), ...t.done('storageWrite')];
    expect(acked).toContain('ackHost #1');
  });

  it('control: the same write completes without the forged ack', () => {
    const t = joined();
    t.step(hostWrite(1, 0, 1024));
    t.done('metaPersist');
    t.done('cacheAppend');
    const acked = [...t.recv('east', { type: 'ack', epoch: 1n, seq: 1n }), ...t.done('storageWrite')];
    expect(acked).toContain('ackHost #1');
  });
});

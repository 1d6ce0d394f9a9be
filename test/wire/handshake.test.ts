// The handshake state machine with real random nonces: both roles establish; a full recorded
// dialer transcript replayed to a listener is refused (REPLAYED_NONCE with the listener's nonce
// memory, AUTH_FAILED without it); the secret never appears in any frame.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ErrorCode, FrameEncoder, Handshake, NonceMemory, type Message } from '../../src/wire/index.js';

const secret = randomBytes(32);
const geometry = { volumeBytes: 1n << 30n, blockBytes: 4096 };

function listener(nonces = new NonceMemory(), key = secret) {
  return new Handshake({ role: 'listener', cluster: 'demo', site: 'east', secret: key, acceptPeer: (s) => s === 'local', seenNonce: (n) => nonces.check(n), randomBytes, geometry });
}
function dialer(key = secret) {
  return new Handshake({ role: 'dialer', cluster: 'demo', site: 'local', peer: 'east', secret: key, randomBytes, geometry });
}

/** Runs both machines against each other; returns every message the dialer sent. */
function converse(d: Handshake, l: Handshake): { fromDialer: Message[]; all: Message[] } {
  l.start();
  const fromDialer: Message[] = [];
  const all: Message[] = [];
  let pending = d.start().send;
  let toListener = true;
  while (pending.length > 0) {
    const m = pending[0]!;
    all.push(m);
    if (toListener) fromDialer.push(m);
    pending = (toListener ? l : d).receive(m).send;
    toListener = !toListener;
  }
  return { fromDialer, all };
}

describe('Handshake', () => {
  it('establishes both ways; each side knows the other by name; the secret is in no frame', () => {
    const d = dialer();
    const l = listener();
    const { all } = converse(d, l);
    expect([d.state, l.state]).toEqual(['established', 'established']);
    expect([d.peerSite, l.peerSite]).toEqual(['east', 'local']);
    const enc = new FrameEncoder();
    const wire = Buffer.concat(all.flatMap((m) => enc.encode(m)));
    expect(wire.includes(secret)).toBe(false);
    expect(wire.includes(secret.subarray(0, 8))).toBe(false);
  });

  it('a wrong key is refused by the listener with AUTH_FAILED; the dialer learns the reason', () => {
    const d = dialer(randomBytes(32));
    const l = listener();
    converse(d, l);
    expect(l.refusal).toMatchObject({ code: ErrorCode.AUTH_FAILED, by: 'local' });
    expect(d.refusal).toMatchObject({ code: ErrorCode.AUTH_FAILED, by: 'peer' });
    expect(d.refusal!.reason).toContain("'local' failed to prove the cluster secret");
  });

  it('a recorded dialer transcript replayed on a new connection is refused', () => {
    const nonces = new NonceMemory();
    const { fromDialer } = converse(dialer(), listener(nonces));
    // Same listener memory: the HELLO nonce is known.
    const l1 = listener(nonces);
    l1.start();
    expect(l1.receive(fromDialer[0]!).refusal?.code).toBe(ErrorCode.REPLAYED_NONCE);
    // A listener that forgot the nonce (restart): its own fresh nonce makes the old RESPONSE fail.
    const l2 = listener(new NonceMemory());
    l2.start();
    expect(l2.receive(fromDialer[0]!).send[0]!.type).toBe('CHALLENGE');
    expect(l2.receive(fromDialer[1]!).refusal?.code).toBe(ErrorCode.AUTH_FAILED);
  });

  it('NonceMemory is bounded and forgets the oldest first', () => {
    const m = new NonceMemory(3);
    const n = [1, 2, 3, 4].map((i) => Buffer.alloc(32, i));
    expect(n.map((x) => m.check(x))).toEqual([false, false, false, false]);
    expect(m.check(n[3]!)).toBe(true);
    expect(m.check(n[0]!)).toBe(false); // forgotten when the 4th arrived
  });
});

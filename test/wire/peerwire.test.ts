// src/site/peerwire.ts for the failover-detection frames (claim 13 v, issue 10): the core's
// lastHeardQuery / lastHeardAnswer map onto LAST_HEARD_QUERY / LAST_HEARD_ANSWER and back, through
// real frame bytes, with heardAgoMs -1 <-> 0xFFFFFFFF and ages past 0xFFFFFFFE clamped.
import { describe, expect, it } from 'vitest';
import type { PeerMsg } from '../../src/core/types.js';
import { fromWire, heardAgoToWire, toWire } from '../../src/site/peerwire.js';
import {
  MessageReader,
  encodeFrame,
  heardAgoMsMax,
  heardAgoNever,
  type DataMessage,
  type Message,
} from '../../src/wire/index.js';

/** Core -> wire -> bytes -> wire -> core. */
function roundTrip(msg: PeerMsg): { wire: DataMessage; back: PeerMsg | undefined } {
  const wire = toWire(msg, 'standby');
  expect(wire, msg.type).toBeDefined();
  const got: Message[] = [];
  new MessageReader().push(encodeFrame(wire!, 0), (m) => got.push(m));
  expect(got.length).toBe(1);
  return { wire: wire!, back: fromWire(got[0] as DataMessage, 'east') };
}

const u64Max = 0xffff_ffff_ffff_ffffn;

describe('peerwire: lastHeardQuery <-> LAST_HEARD_QUERY', () => {
  it('maps every field both ways, u64 values intact', () => {
    for (const msg of [
      { type: 'lastHeardQuery', epoch: 3n, queryId: 1n },
      { type: 'lastHeardQuery', epoch: u64Max, queryId: 2n ** 53n + 1n },
    ] as const) {
      const { wire, back } = roundTrip(msg);
      expect(wire).toEqual({ type: 'LAST_HEARD_QUERY', epoch: msg.epoch, queryId: msg.queryId });
      expect(back).toEqual(msg);
    }
  });
});

describe('peerwire: lastHeardAnswer <-> LAST_HEARD_ANSWER', () => {
  it('maps an age in ms both ways', () => {
    const msg: PeerMsg = { type: 'lastHeardAnswer', epoch: 3n, queryId: 7n, heardAgoMs: 40, seqReceived: 1234n };
    const { wire, back } = roundTrip(msg);
    expect(wire).toEqual({ type: 'LAST_HEARD_ANSWER', epoch: 3n, queryId: 7n, heardAgoMs: 40, seqReceived: 1234n });
    expect(back).toEqual(msg);
  });

  it('0 ms (heard just now) stays 0, not "never"', () => {
    const msg: PeerMsg = { type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 0, seqReceived: 0n };
    expect(roundTrip(msg).wire).toMatchObject({ heardAgoMs: 0 });
    expect(roundTrip(msg).back).toEqual(msg);
  });

  it('never heard: -1 <-> 0xFFFFFFFF', () => {
    const msg: PeerMsg = { type: 'lastHeardAnswer', epoch: 4n, queryId: 9n, heardAgoMs: -1, seqReceived: 0n };
    const { wire, back } = roundTrip(msg);
    expect(wire).toMatchObject({ heardAgoMs: heardAgoNever });
    expect(heardAgoNever).toBe(0xffffffff);
    expect(back).toEqual(msg);
  });

  it('ages past 0xFFFFFFFE ms are clamped to it (still an age, never "never")', () => {
    for (const ms of [heardAgoMsMax, heardAgoMsMax + 1, 2 ** 40, Number.MAX_SAFE_INTEGER]) {
      const msg: PeerMsg = { type: 'lastHeardAnswer', epoch: 2n, queryId: 3n, heardAgoMs: ms, seqReceived: u64Max };
      const { wire, back } = roundTrip(msg);
      expect(wire, String(ms)).toMatchObject({ heardAgoMs: 0xfffffffe, seqReceived: u64Max });
      expect(back, String(ms)).toEqual({ ...msg, heardAgoMs: 0xfffffffe });
    }
  });

  it('heardAgoToWire: negative is never, fractions cut to whole ms', () => {
    expect(heardAgoToWire(-1)).toBe(0xffffffff);
    expect(heardAgoToWire(-5)).toBe(0xffffffff);
    expect(heardAgoToWire(12.9)).toBe(12);
    expect(heardAgoToWire(Infinity)).toBe(0xfffffffe);
  });

  it('a wire age just below "never" reads as an age', () => {
    expect(fromWire({ type: 'LAST_HEARD_ANSWER', epoch: 1n, queryId: 1n, heardAgoMs: 0xfffffffe, seqReceived: 5n }, 'east'))
      .toEqual({ type: 'lastHeardAnswer', epoch: 1n, queryId: 1n, heardAgoMs: 0xfffffffe, seqReceived: 5n });
  });
});

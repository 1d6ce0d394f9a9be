// src/site/peerwire.ts for the failover-detection frames (claim 13 v, issue 10): the core's
// lastHeardQuery / lastHeardAnswer map onto LAST_HEARD_QUERY / LAST_HEARD_ANSWER and back, through
// real frame bytes, with heardAgoMs -1 <-> 0xFFFFFFFF and ages past 0xFFFFFFFE clamped; and
// inSync <-> IN_SYNC, the basis of the standby's promotion guard.
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

describe('peerwire: inSync <-> IN_SYNC', () => {
  it('maps every field both ways, u64 values intact, on volume 0', () => {
    for (const msg of [
      { type: 'inSync', epoch: 2n, seq: 1234n },
      { type: 'inSync', epoch: 1n, seq: 0n },
      { type: 'inSync', epoch: u64Max, seq: 2n ** 53n + 1n },
      { type: 'inSync', epoch: 2n ** 32n, seq: u64Max },
    ] as const) {
      const { wire, back } = roundTrip(msg);
      expect(wire).toEqual({ type: 'IN_SYNC', volumeId: 0, epoch: msg.epoch, seq: msg.seq });
      expect(back).toEqual(msg);
    }
  });

  it('IN_SYNC is a replication message for the core (not dropped like STATUS_*)', () => {
    expect(fromWire({ type: 'IN_SYNC', volumeId: 0, epoch: 3n, seq: 9n }, 'local')).toEqual({ type: 'inSync', epoch: 3n, seq: 9n });
  });

  it('the frame is 24 body bytes: volumeId, reserved 0, epoch, seq (8-byte fields 8-aligned)', () => {
    const bytes = encodeFrame(toWire({ type: 'inSync', epoch: 0x0102030405060708n, seq: 0x1112131415161718n }, 'local')!, 0);
    const body = bytes.subarray(24);
    expect(bytes[5]).toBe(0x33);
    expect(body.toString('hex')).toBe('00000000' + '00000000' + '0102030405060708' + '1112131415161718');
  });
});

describe('peerwire: fields no volume of this cluster can have (issue 17 item 4)', () => {
  const data = Buffer.alloc(4096, 7);
  it('refuses a frame for another volume number, naming the peer and the volume', () => {
    const frames: DataMessage[] = [
      { type: 'WRITE', volumeId: 1, flags: 0, epoch: 1n, seq: 1n, offsetBytes: 0n, data },
      { type: 'RESYNC_DATA', volumeId: 0xffffffff, flags: 0, epoch: 1n, resyncId: 1n, offsetBytes: 0n, data },
      { type: 'ACK', volumeId: 2, epoch: 1n, seq: 1n },
      { type: 'IN_SYNC', volumeId: 3, epoch: 1n, seq: 1n },
      { type: 'READ_REQUEST', volumeId: 4, epoch: 1n, readId: 1n, offsetBytes: 0n, lengthBytes: 4096 },
    ];
    for (const m of frames) expect(() => fromWire(m, 'west'), m.type).toThrow(/west: .* is for volume \d+, but this link carries consistency group 0/);
  });
  it('refuses offsets past 2^53 instead of rounding them', () => {
    expect(() => fromWire({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n, offsetBytes: 1n << 60n, data }, 'west')).toThrow(/west: offset 1152921504606846976 is beyond any volume/);
    expect(() => fromWire({ type: 'RESYNC_REQUEST', volumeId: 0, epoch: 1n, seqReceived: 0n, ranges: [{ offsetBytes: 0n, lengthBytes: u64Max }] }, 'west')).toThrow(/beyond any volume/);
  });
  it('passes volume 0 through', () => {
    expect(fromWire({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n, offsetBytes: 4096n, data }, 'west')).toMatchObject({ type: 'write', offsetBytes: 4096, lengthBytes: 4096 });
  });
});

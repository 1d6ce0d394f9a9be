import { describe, expect, it } from 'vitest';
import { AckTimer, ackTimerEntriesMax } from '../../src/site/ack-timer.js';

describe('AckTimer', () => {
  it('times each write from its send to the cumulative ack that covers it, per peer', () => {
    const t = new AckTimer();
    t.sent('east', 1n, 4096, 100);
    t.sent('east', 2n, 8192, 105);
    t.sent('west', 1n, 4096, 100);
    t.sent('east', 3n, 4096, 110);
    expect(t.inflight('east')).toEqual({ writes: 3, bytes: 16384 });
    const seen: number[] = [];
    t.acked('east', 2n, 120, (ms) => seen.push(ms));
    expect(seen).toEqual([20, 15]);
    expect(t.inflight('east')).toEqual({ writes: 1, bytes: 4096 });
    expect(t.inflight('west')).toEqual({ writes: 1, bytes: 4096 });
    t.acked('east', 2n, 130, (ms) => seen.push(ms)); // a repeated ack times nothing twice
    expect(seen).toEqual([20, 15]);
  });

  it('restarts a peer on a re-send or link loss, and stays bounded when a peer never acks', () => {
    const t = new AckTimer();
    t.sent('east', 5n, 1, 0);
    t.sent('east', 3n, 1, 10); // re-send after reconnect: only the new send is timed
    const seen: number[] = [];
    t.acked('east', 5n, 12, (ms) => seen.push(ms));
    expect(seen).toEqual([2]);
    t.sent('east', 6n, 1, 0);
    t.forget('east');
    expect(t.inflight('east')).toEqual({ writes: 0, bytes: 0 });
    for (let i = 1; i <= ackTimerEntriesMax + 3000; i++) t.sent('west', BigInt(i), 2, i);
    expect(t.inflight('west')).toEqual({ writes: ackTimerEntriesMax, bytes: 2 * ackTimerEntriesMax });
    let n = 0;
    t.acked('west', BigInt(ackTimerEntriesMax + 3000), 1e9, () => n++);
    expect(n).toBe(ackTimerEntriesMax);
  });
});

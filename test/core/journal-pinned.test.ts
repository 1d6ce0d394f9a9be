// The primary's journal holding the only copy of acked writes under cache pressure (src/core/
// repair.ts keeps; sim seeds 3137 and 11014). A restart replays an acked write s5 @0+512, its
// local storage write fails: region 0 is suspect and journaled, the journal keeps s5 for the
// repair. Host writes to other regions then fill the cache past 3/4 while east (down,
// degraded) is dirty in region 0: no copy but the journal's holds s5, so it must stay until
// the repair writes it back; with the cache full, host writes wait (here one to region 0
// itself) and go in once the write-back lets s5 go.
import { describe, expect, it } from 'vitest';
import type { Primary } from '../../src/core/primary.js';
import { hostWrite, primaryScript, writeFailed, type Script } from './harness.js';

const acked = new Uint8Array(512).fill(0x5a);

/**
 * After the restart: s5's replayed storage write failed, region 0 recorded suspect and journaled.
 * `east`: 'degraded' (down, dirty where the primary has writes it may not hold, region 0 among
 * them) or 'joined' (it says it holds up to s5 and missed nothing: in sync, acking every write).
 */
function restarted(east: 'degraded' | 'joined'): Script<Primary> {
  const t = primaryScript(['east'], {}, [{ epoch: 1n, seq: 5n, offsetBytes: 0, lengthBytes: 512, fua: false, payload: acked }], new Map(east === 'degraded' ? [['east', [15]]] : []), 100n);
  if (east === 'joined') {
    t.step({ type: 'peerUp', peer: 'east' });
    t.recv('east', { type: 'resyncRequest', epoch: 1n, seqReceived: 5n });
  }
  t.done('storageWrite @0+512', writeFailed);
  t.done('bitmapSet @local [0]');
  t.done('bitmapSet @journaled [0]');
  settle(t);
  return t;
}

/** Records `out` in `lines`, east acking every write it is sent (and whatever that answers); returns `out`. */
function answer(t: Script<Primary>, out: string[], lines: string[]): string[] {
  lines.push(...out);
  for (const l of out) {
    const m = /^send east write s(\d+)/.exec(l);
    if (m !== null) answer(t, t.recv('east', { type: 'ack', epoch: 1n, seq: BigInt(m[1]!) }), lines);
  }
  return out;
}

/**
 * Completes every open action (oldest first), east acking what it is sent, until none is left;
 * returns every line. Actions `fails` names complete with a write error.
 */
function settle(t: Script<Primary>, lines: string[] = [], fails: (action: string) => boolean = () => false): string[] {
  for (let open = t.openActions(); open.length > 0; open = t.openActions()) answer(t, t.done(open[0]!, fails(open[0]!) ? writeFailed : {}), lines);
  return lines;
}

/** Host writes of 1 KiB to regions 1..n, each settled: the journal fills (s5 at its head holds them all). */
function fill(t: Script<Primary>, n: number): string[] {
  const lines: string[] = [];
  for (let i = 1; i <= n; i++) {
    answer(t, t.step(hostWrite(i, i * 1024, 1024)), lines);
    settle(t, lines);
  }
  return lines;
}

describe('the primary journal under cache pressure (issue 18 note: sim seeds 3137, 11014)', () => {
  it('keeps an acked write no mirror holds past 3/4 full, then writes it back from the journal', () => {
    const t = restarted('degraded');
    const lines = fill(t, 13); // 512 + 13 KiB of 16 KiB
    expect(t.logs).toContain('journal_pinned');
    // Old code: "bitmapSet @uncovered [0]", then "cacheDrop s5,...": the only copy gone.
    expect(lines.filter((l) => l.includes('@uncovered') || /cacheDrop .*s5\b/.test(l))).toEqual([]);
    const back = t.tick(20);
    expect(back).toContain('storageWrite @0+512 fua');
    const written = t.last.find((a) => a.type === 'storageWrite' && a.offsetBytes === 0);
    expect(written?.type === 'storageWrite' && Buffer.from(written.payload).equals(acked)).toBe(true);
    const after = settle(t);
    expect(after).toContain('bitmapClear @local [0]');
    const drops = [...after, ...t.tick(100), ...settle(t)].filter((l) => l.startsWith('cacheDrop'));
    expect(drops.join(' ')).toMatch(/\bs5\b/); // written back and durable: now it may go
  });

  it('with the cache full, a host write to that region waits; the write-back still runs, and then the write goes in', () => {
    const t = restarted('degraded');
    fill(t, 15); // 15.5 of 16 KiB
    expect(t.step(hostWrite(99, 0, 1024))).toEqual([]); // no room: queued
    expect(t.tick(20)).toContain('storageWrite @0+512 fua');
    const lines = settle(t);
    for (let i = 0; i < 5 && !lines.some((l) => l.startsWith('cacheAppend s115 @0+1024')); i++) lines.push(...t.tick(100), ...settle(t));
    expect(lines).toContain('cacheAppend s115 @0+1024');
    expect(lines).toContain('ackHost #99');
  });

  it('a storage that keeps failing: the write-back retries with a capped backoff, the pinned log is rate-limited, s5 stays, the waiting host write is neither acked nor refused; once a write-back succeeds it goes in', () => {
    const t = restarted('degraded');
    fill(t, 15);
    const logsBefore = t.logs.filter((l) => l === 'journal_pinned').length;
    expect(t.step(hostWrite(99, 0, 1024))).toEqual([]);
    // Ten minutes of ticks, every write-back failing at once.
    const writeBack = 'storageWrite @0+512 fua';
    const lines: string[] = [];
    for (let ms = 0; ms < 600_000; ms += 100) {
      lines.push(...t.tick(100));
      settle(t, lines, (a) => a === writeBack);
    }
    const attempts = lines.filter((l) => l === writeBack).length;
    expect(attempts).toBeGreaterThan(10); // it keeps trying ...
    expect(attempts).toBeLessThan(600); // ... but not every 100 ms tick: the repair backs off, up to repairRetryMsMax (10 s) between attempts
    const pinnedLogs = t.logs.filter((l) => l === 'journal_pinned').length - logsBefore;
    expect(pinnedLogs).toBeGreaterThan(0);
    expect(pinnedLogs).toBeLessThanOrEqual(61); // one per 10 s at most
    expect(lines.filter((l) => /cacheDrop .*\bs5\b/.test(l) || l.includes('#99'))).toEqual([]);
    // The storage answers again: the next write-back lands, s5 goes, host write 99 goes in.
    const after: string[] = [];
    for (let i = 0; i < 100 && !after.includes('ackHost #99'); i++) after.push(...t.tick(100), ...settle(t));
    expect(after.join(' ')).toMatch(/cacheDrop .*\bs5\b/);
    expect(after).toContain('ackHost #99');
  });

  it('control: where a mirror holds the region, the journal lets the failed write go under pressure (marked uncovered first)', () => {
    const t = restarted('joined');
    const lines = fill(t, 13);
    expect(t.logs).not.toContain('journal_pinned');
    expect(lines).toContain('bitmapSet @uncovered [0]');
  });
});

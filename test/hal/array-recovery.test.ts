// Storage errors are bounded and recovered (issue 16 item 3): a failed member is probed with a
// capped exponential backoff and comes back by itself; a single member (or the last one) comes
// back serving and reports the ranges it missed as stale; a member with a healthy partner is
// rebuilt from it. Bursts of errors come from hal/fault.ts rules; probe intervals are short
// constants here, and the backoff test runs on an injected clock.

import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DiskArray, type ArrayLogger, type ArrayTimers } from '../../hal/array.js';
import { SenseError, SenseKey, type BlockDevice } from '../../hal/blockdev.js';
import { FaultDevice, type FaultRule } from '../../hal/fault.js';
import { MemoryDevice } from '../../hal/memory.js';

const bs = 512;
const blockCount = 256;
const fast = { backoffMinMs: 2, backoffMaxMs: 20, logIntervalMs: 60_000 };
const burst: FaultRule[] = [{ ops: ['read', 'write', 'flush'], sense: 'hardware' }];

function mem(name: string, blocks = blockCount): MemoryDevice {
  return new MemoryDevice({ name, blockSizeBytes: bs, blockCount: blocks });
}

function fill(blocks: number, tag: number): Buffer {
  const b = Buffer.alloc(blocks * bs);
  for (let i = 0; i < b.length; i++) b[i] = (tag * 37 + i * 11 + (i >> 9)) & 0xff;
  return b;
}

function captureLog(): ArrayLogger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, error: (_o, m) => lines.push(m), warn: (_o, m) => lines.push(m), info: () => undefined };
}

/** Waits until `cond` holds: a liveness bound (the array must get there by itself), not a timing check. */
async function until(cond: () => boolean, what: string, limitMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > limitMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Another handle on the same memory: closing it leaves the memory (and other handles) open, as closing one fd of a disk does. */
function handle(dev: MemoryDevice): BlockDevice {
  return Object.assign(Object.create(dev) as BlockDevice, { close: async () => undefined });
}

async function hash(dev: BlockDevice): Promise<string> {
  return createHash('sha256').update(await dev.read(0, dev.blockCount)).digest('hex');
}

describe('DiskArray member recovery', () => {
  it('single member: writes fail fast during an error burst, the array recovers by itself after it, and the stale ranges are exactly the writes that failed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-array-'));
    try {
      const log = captureLog();
      const disk = new FaultDevice(mem('memory:a'), { seed: 1, name: 'memory:a' });
      let staleCalls = 0;
      const stateFile = join(dir, 'site.array');
      const array = await DiskArray.open({ members: [disk], logger: log, probe: fast, stateFile, onStale: () => staleCalls++ });
      await array.write(0, fill(4, 1));
      await array.flush(); // nothing unflushed when the burst starts
      disk.configure({ rules: burst });
      const failed = [
        { lba: 10, blocks: 2 },
        { lba: 40, blocks: 8 },
        { lba: 100, blocks: 1 },
      ];
      const errs: unknown[] = [];
      for (const w of failed) errs.push(await array.write(w.lba, fill(w.blocks, w.lba)).catch((e: unknown) => e));
      expect(errs.every((e) => e instanceof SenseError)).toBe(true);
      const fastFail = errs[2] as SenseError; // the member was already failed: refused before any I/O
      expect(fastFail.key).toBe(SenseKey.NOT_READY);
      expect(fastFail.message).toMatch(/memory:a.*recovery is being probed/);
      await expect(array.read(0, 1)).rejects.toThrow(/every member of the array has failed/);
      await expect(array.flush()).rejects.toThrow(/recovery is being probed/);
      await until(() => (array.memberStatus()[0]!.probeFailures ?? 0) >= 4, 'several probes failed');
      expect(array.memberStatus()[0]!.state).toBe('failed');
      disk.configure({ rules: [] }); // the burst ends
      await until(() => array.memberStatus()[0]!.state === 'ok', 'the member serves again');
      const stale = failed.map((w) => ({ offsetBytes: w.lba * bs, lengthBytes: w.blocks * bs }));
      expect(array.staleRanges()).toEqual(stale);
      await until(() => staleCalls > 0, 'onStale called');
      expect(JSON.parse(await readFile(stateFile, 'utf8'))).toEqual({ members: { 'memory:a': 'ok' }, stale: stale.map((r) => [r.offsetBytes, r.lengthBytes]) });
      // It serves again: old data intact, new writes land.
      expect((await array.read(0, 4)).equals(fill(4, 1))).toBe(true);
      await array.write(10, fill(2, 99));
      expect((await array.read(10, 2)).equals(fill(2, 99))).toBe(true);
      // Bounded log: the failure, the recovery; probe failures are counted, not logged one by one.
      expect(log.lines).toHaveLength(2);
      expect(log.lines[0]).toMatch(/memory:a failed a write; no member is left.*probing/);
      expect(log.lines[1]).toMatch(/memory:a answers again after \d+ failed probe\(s\).*stale for repair/);
      // The stale ranges survive a restart until the site says they are repaired.
      await array.close();
      const again = await DiskArray.open({ members: [new FaultDevice(mem('memory:a'), { seed: 2, name: 'memory:a' })], logger: captureLog(), stateFile });
      expect(again.staleRanges()).toEqual(stale);
      await again.clearStale(again.staleRanges());
      expect(again.staleRanges()).toEqual([]);
      expect(JSON.parse(await readFile(stateFile, 'utf8'))).toEqual({ members: { 'memory:a': 'ok' } });
      await again.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a failed flush makes the writes since the previous flush stale too (they may not have reached the disk)', async () => {
    const disk = new FaultDevice(mem('memory:a'), { seed: 3, name: 'memory:a' });
    const array = await DiskArray.open({ members: [disk], logger: captureLog(), probe: fast });
    await array.write(0, fill(2, 1));
    await array.flush();
    await array.write(20, fill(3, 2)); // completed, not yet durable
    disk.configure({ rules: [{ ops: ['flush'], times: 2 }] });
    await expect(array.flush()).rejects.toThrow(SenseError);
    await until(() => array.memberStatus()[0]!.state === 'ok', 'the member serves again');
    expect(array.staleRanges()).toEqual([{ offsetBytes: 20 * bs, lengthBytes: 3 * bs }]);
    await array.close();
  });

  it('two members: the one that fails is probed and, once it answers, rebuilt from the other; both hash equal and nothing is stale', async () => {
    const log = captureLog();
    const a = mem('memory:a');
    const bInner = mem('memory:b');
    const b = new FaultDevice(bInner, { seed: 4, name: 'memory:b' });
    const array = await DiskArray.open({ members: [a, b], logger: log, probe: fast });
    for (let lba = 0; lba < blockCount; lba += 16) await array.write(lba, fill(16, lba));
    b.configure({ rules: burst });
    await array.write(32, fill(8, 1000)); // b fails, a carries on
    expect(array.memberStatus().map((m) => m.state)).toEqual(['ok', 'failed']);
    for (let i = 0; i < 20; i++) await array.write((i * 37) % (blockCount - 4), fill(4, 2000 + i)); // b misses these
    await until(() => (array.memberStatus()[1]!.probeFailures ?? 0) >= 2, 'b probed and still failing');
    b.configure({ rules: [] });
    await until(() => array.memberStatus()[1]!.state !== 'failed', 'b answers');
    for (let i = 0; i < 20; i++) await array.write((i * 53) % (blockCount - 4), fill(4, 3000 + i)); // during its rebuild
    await until(() => array.memberStatus()[1]!.state === 'ok', 'b rebuilt');
    await array.rebuilt();
    expect(await hash(bInner)).toBe(await hash(a));
    expect(array.staleRanges()).toEqual([]);
    expect(log.lines.join('\n')).toMatch(/memory:b answers again after \d+ failed probe\(s\); rebuilding it from memory:a[\s\S]*memory:b is rebuilt/);
    await array.close();
  });

  it('every member failed: the first to answer serves with what it missed stale (writes that went only to the other included); the other is rebuilt from it', async () => {
    const aInner = mem('memory:a');
    const bInner = mem('memory:b');
    const a = new FaultDevice(aInner, { seed: 5, name: 'memory:a' });
    const b = new FaultDevice(bInner, { seed: 6, name: 'memory:b' });
    const array = await DiskArray.open({ members: [a, b], logger: captureLog(), probe: fast });
    await array.write(0, fill(8, 1));
    await array.flush();
    a.configure({ rules: burst });
    await array.write(30, fill(2, 2)); // a fails; b takes it
    b.configure({ rules: burst });
    await expect(array.write(60, fill(2, 3))).rejects.toThrow(SenseError); // b fails too
    await expect(array.write(90, fill(2, 4))).rejects.toThrow(/recovery is being probed/);
    a.configure({ rules: [] }); // a answers first, with no healthy member to copy from
    await until(() => array.memberStatus()[0]!.state === 'ok', 'a serves again');
    expect(array.staleRanges()).toEqual([
      { offsetBytes: 30 * bs, lengthBytes: 2 * bs },
      { offsetBytes: 60 * bs, lengthBytes: 2 * bs },
      { offsetBytes: 90 * bs, lengthBytes: 2 * bs },
    ]);
    b.configure({ rules: [] });
    await until(() => array.memberStatus()[1]!.state === 'ok', 'b rebuilt from a');
    expect(await hash(bInner)).toBe(await hash(aInner));
    await array.close();
  });

  it('reopens a member whose handle is gone (unplugged and plugged back) through the reopen hook; alone, it may be another disk, so the whole volume is stale', async () => {
    const inner = mem('memory:usb');
    const first = new FaultDevice(handle(inner), { seed: 7, name: 'memory:usb' });
    const opened: string[] = [];
    let plugged = false;
    const array = await DiskArray.open({
      members: [first],
      logger: captureLog(),
      probe: fast,
      reopen: async (name) => {
        opened.push(name);
        if (!plugged) throw new SenseError(SenseKey.NOT_READY, [0x3a, 0], name, 'not plugged in');
        return new FaultDevice(inner, { seed: 8, name });
      },
    });
    await array.write(0, fill(1, 1));
    await array.flush();
    first.unplug(); // this handle never answers again
    await expect(array.write(5, fill(1, 2))).rejects.toThrow(SenseError);
    await until(() => opened.length >= 2, 'reopen tried');
    expect(array.memberStatus()[0]!.state).toBe('failed');
    plugged = true;
    await until(() => array.memberStatus()[0]!.state === 'ok', 'served through the new handle');
    expect(opened.every((n) => n === 'memory:usb')).toBe(true);
    expect(array.staleRanges()).toEqual([{ offsetBytes: 0, lengthBytes: blockCount * bs }]);
    await array.write(5, fill(1, 3));
    expect((await inner.read(5, 1)).equals(fill(1, 3))).toBe(true);
    await array.close();
  });

  it('after a restart: a member recorded failed is probed and rebuilt from the healthy one; a lone member recorded failed serves with the whole volume stale', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gm-array-'));
    try {
      const stateFile = join(dir, 'xy.array');
      const x = mem('memory:x');
      const y = new FaultDevice(mem('memory:y'), { seed: 9, name: 'memory:y', rules: [{ ops: ['write'] }] });
      const first = await DiskArray.open({ members: [handle(x), y], stateFile, logger: captureLog(), probe: { ...fast, backoffMinMs: 60_000 } });
      await first.write(0, fill(4, 7));
      expect(first.memberStatus()[1]!.state).toBe('failed');
      await first.close();
      const y2 = mem('memory:y');
      const second = await DiskArray.open({ members: [x, y2], stateFile, logger: captureLog(), probe: fast });
      await until(() => second.memberStatus()[1]!.state === 'ok', 'y rebuilt after the restart');
      expect((await y2.read(0, 4)).equals(fill(4, 7))).toBe(true);
      await second.close();
      const lone = join(dir, 'lone.array');
      const z = new FaultDevice(mem('memory:z'), { seed: 10, name: 'memory:z', rules: [{ ops: ['write'] }] });
      const third = await DiskArray.open({ members: [z], stateFile: lone, logger: captureLog(), probe: { ...fast, backoffMinMs: 60_000 } });
      await expect(third.write(0, fill(1, 1))).rejects.toThrow(SenseError);
      await third.close();
      let told = 0;
      const fourth = await DiskArray.open({ members: [mem('memory:z')], stateFile: lone, logger: captureLog(), onStale: () => told++ });
      expect(fourth.memberStatus()[0]!.state).toBe('ok');
      expect(fourth.staleRanges()).toEqual([{ offsetBytes: 0, lengthBytes: blockCount * bs }]);
      await until(() => told > 0, 'onStale called');
      await fourth.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** A clock the test moves: timers fire only when advanced to. */
class FakeTimers implements ArrayTimers {
  now = 0;
  private next = 1;
  private readonly pending = new Map<number, { at: number; fn: () => void }>();
  readonly delays: number[] = [];
  nowMs(): number {
    return this.now;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    this.delays.push(ms);
    const id = this.next++;
    this.pending.set(id, { at: this.now + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  /** Fires the earliest timer (moving the clock to it), then lets its promise chains run. */
  async fireNext(): Promise<void> {
    const [id, t] = [...this.pending.entries()].sort((p, q) => p[1].at - q[1].at)[0]!;
    this.pending.delete(id);
    this.now = t.at;
    t.fn();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  }
  get waiting(): number {
    return this.pending.size;
  }
}

describe('DiskArray probe backoff and log rate', () => {
  it('doubles the probe interval from its minimum to its cap, logs probe failures at most once per interval, and a member failing again soon keeps its grown backoff', async () => {
    const timers = new FakeTimers();
    const log = captureLog();
    const disk = new FaultDevice(mem('memory:a'), { seed: 11, name: 'memory:a', rules: burst });
    const array = await DiskArray.open({ members: [disk], logger: log, timers, probe: { backoffMinMs: 250, backoffMaxMs: 30_000, logIntervalMs: 60_000 } });
    await expect(array.write(0, fill(1, 1))).rejects.toThrow(SenseError);
    for (let i = 0; i < 40; i++) {
      expect(timers.waiting).toBe(1); // one probe pending at a time, never a busy loop
      await timers.fireNext();
    }
    expect(timers.delays.slice(0, 10)).toEqual([250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(Math.max(...timers.delays)).toBe(30_000);
    expect(array.memberStatus()[0]!.probeFailures).toBe(40);
    // ~1,000 s of failing probes: the failure line plus at most one line per 60 s.
    const stillFailing = log.lines.filter((l) => /still fails/.test(l));
    expect(stillFailing.length).toBeGreaterThan(0);
    expect(stillFailing.length).toBeLessThanOrEqual(Math.ceil(timers.now / 60_000));
    expect(log.lines.length).toBe(1 + stillFailing.length);
    expect(stillFailing.at(-1)).toMatch(/memory:a still fails: \d+ more probe\(s\) failed \(\d+ since it failed; last: .*\); next probe in 30000 ms/);
    // It recovers, then fails again at once: the next probe waits longer than the minimum.
    disk.configure({ rules: [] });
    await timers.fireNext();
    expect(array.memberStatus()[0]!.state).toBe('ok');
    expect(log.lines.at(-1)).toMatch(/answers again after 40 failed probe/);
    disk.configure({ rules: burst });
    timers.delays.length = 0;
    await expect(array.write(0, fill(1, 2))).rejects.toThrow(SenseError);
    expect(timers.delays[0]).toBe(30_000);
    await array.close();
    expect(timers.waiting).toBe(0);
  });
});

import { describe, expect, it } from 'vitest';
import { Asc, MediaStatus, SenseKey } from '../../hal/blockdev.js';
import { FaultDevice, type FaultDeviceOptions } from '../../hal/fault.js';
import { MemoryDevice } from '../../hal/memory.js';
import { Prng } from '../../hal/prng.js';
import { adapterContract, pattern, senseOf } from './adapter-contract.js';

adapterContract('fault wrapper (no faults) over memory', async (o) => new FaultDevice(new MemoryDevice({ ...o, name: 'memory:inner' }), { seed: 1, name: 'fault:mem' }), { issueOrder: true });

function make(opts: Partial<FaultDeviceOptions> = {}, blockCount = 16): { dev: FaultDevice; mem: MemoryDevice } {
  const mem = new MemoryDevice({ name: 'memory:t', blockSizeBytes: 512, blockCount });
  return { mem, dev: new FaultDevice(mem, { seed: 7, ...opts }) };
}
const blk = (seed: number) => pattern(512, seed);

describe('Prng', () => {
  it('replays the same sequence from the same seed and differs across seeds', () => {
    const a = new Prng(123);
    const b = new Prng(123);
    const c = new Prng(124);
    const sa = Array.from({ length: 8 }, () => a.u32());
    expect(Array.from({ length: 8 }, () => b.u32())).toEqual(sa);
    expect(Array.from({ length: 8 }, () => c.u32())).not.toEqual(sa);
    const d = new Prng(5);
    for (let i = 0; i < 1000; i++) {
      const v = d.int(7);
      expect(v >= 0 && v < 7 && Number.isInteger(v)).toBe(true);
      const f = d.float();
      expect(f >= 0 && f < 1).toBe(true);
    }
  });
});

describe('FaultDevice latency', () => {
  it('delays each op by latency + jitter through the injected timer', async () => {
    const slept: number[] = [];
    const { dev } = make({ latencyMs: 5, jitterMs: 10, sleep: async (ms) => { slept.push(ms); } });
    await dev.write(0, blk(1));
    await dev.read(0, 1);
    await dev.flush();
    expect(slept).toHaveLength(3);
    for (const ms of slept) expect(ms >= 5 && ms < 15).toBe(true);
  });

  it('latency 0 never touches the timer and still resolves asynchronously', async () => {
    let calls = 0;
    const { dev } = make({ sleep: async () => { calls++; } });
    let done = false;
    const p = dev.write(0, blk(1)).then(() => { done = true; });
    expect(done).toBe(false);
    await p;
    expect(calls).toBe(0);
  });

  it('delays for real with the default timer', async () => {
    const { dev } = make({ latencyMs: 2 });
    await dev.write(0, blk(3));
    expect(Buffer.compare(await dev.read(0, 1), blk(3))).toBe(0);
  });
});

describe('FaultDevice errors', () => {
  it('fails ops touching a bad LBA range with MEDIUM ERROR at the first bad LBA', async () => {
    const { dev } = make({ rules: [{ lba: 5, blocks: 2, ops: ['write'] }] });
    const e = await senseOf(dev.write(3, Buffer.alloc(4 * 512)));
    expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
    expect([e.asc, e.ascq]).toEqual([...Asc.WRITE_ERROR]);
    expect(e.lba).toBe(5);
    expect(e.message).toMatch(/memory:t at LBA 5/);
    await dev.write(7, blk(1)); // just past the range
    await dev.write(0, Buffer.alloc(5 * 512)); // just before it
    expect((await dev.read(5, 1)).length).toBe(512); // reads are not in the rule
  });

  it('fails chosen ops with the chosen sense, a limited number of times', async () => {
    const { dev } = make({ rules: [{ ops: ['flush'], sense: 'hardware', times: 2 }, { ops: ['read'], lba: 1, sense: 'timeout' }] });
    expect((await senseOf(dev.flush())).key).toBe(SenseKey.HARDWARE_ERROR);
    expect((await senseOf(dev.flush())).key).toBe(SenseKey.HARDWARE_ERROR);
    await dev.flush();
    const t = await senseOf(dev.read(0, 2));
    expect(t.key).toBe(SenseKey.ABORTED_COMMAND);
    expect(t.lba).toBe(1);
    const r = await senseOf(dev.read(1, 1));
    expect(r.key).toBe(SenseKey.ABORTED_COMMAND);
    dev.configure({ rules: [{ ops: ['read'], sense: 'medium' }, { sense: 'notReady' }] });
    const m = await senseOf(dev.read(0, 1));
    expect([m.key, m.asc]).toEqual([SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR[0]]);
    const nr = await senseOf(dev.flush());
    expect([nr.key, nr.asc]).toEqual([SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT[0]]);
    expect(dev.stats.injectedErrors).toBe(6);
  });

  it('fails at a rate, only on the chosen ops, reproducibly from the seed', async () => {
    const run = async (seed: number) => {
      const { dev } = make({ seed, errorRate: 0.5, errorRateOps: ['write'] });
      const outcome: boolean[] = [];
      for (let i = 0; i < 40; i++) outcome.push(await dev.write(i % 16, blk(i)).then(() => true, () => false));
      for (let i = 0; i < 10; i++) await dev.read(i, 1); // reads never fail
      return outcome;
    };
    const a = await run(99);
    expect(await run(99)).toEqual(a);
    expect(a.filter((x) => x).length).toBeGreaterThan(5);
    expect(a.filter((x) => !x).length).toBeGreaterThan(5);
    const { dev } = make({ errorRate: 1 });
    expect((await senseOf(dev.read(0, 1))).key).toBe(SenseKey.MEDIUM_ERROR);
  });

  it('a failed (non-torn) write leaves the old data', async () => {
    const { dev } = make({ rules: [{ ops: ['write'], times: 1 }] });
    await senseOf(dev.write(2, blk(9)));
    expect(Buffer.compare(await dev.read(2, 1), Buffer.alloc(512))).toBe(0);
  });

  it('torn writes land a random subset of blocks, each whole old or whole new, then fail', async () => {
    let sawMixed = false;
    for (let seed = 1; seed <= 10; seed++) {
      const { dev } = make({ seed });
      const old = pattern(8 * 512, 100 + seed);
      await dev.write(0, old);
      dev.configure({ tornWriteRate: 1 });
      const neu = pattern(8 * 512, 200 + seed);
      const e = await senseOf(dev.write(0, neu));
      expect(e.key).toBe(SenseKey.MEDIUM_ERROR);
      expect(e.message).toMatch(/torn/);
      const back = await dev.read(0, 8);
      let news = 0;
      for (let i = 0; i < 8; i++) {
        const got = back.subarray(i * 512, (i + 1) * 512);
        const isNew = Buffer.compare(got, neu.subarray(i * 512, (i + 1) * 512)) === 0;
        const isOld = Buffer.compare(got, old.subarray(i * 512, (i + 1) * 512)) === 0;
        expect(isNew || isOld).toBe(true);
        if (isNew) news++;
      }
      if (news > 0 && news < 8) sawMixed = true;
      // single-block writes are atomic: never torn
      await dev.write(9, blk(1));
    }
    expect(sawMixed).toBe(true);
  });
});

describe('FaultDevice power, write-protect, unplug', () => {
  it('a power cut reverts unflushed writes (keep rate 0) and keeps flushed and FUA writes', async () => {
    const { dev, mem } = make({ powerCutKeepRate: 0 });
    await dev.write(0, blk(1));
    await dev.flush();
    await dev.write(0, blk(2)); // unflushed over flushed
    await dev.write(1, blk(3)); // unflushed over zeroes
    await dev.write(2, blk(4), { fua: true });
    await dev.write(3, blk(5));
    await dev.write(3, blk(6), { fua: true }); // FUA after an unflushed write: durable
    expect(dev.volatileBlocks).toBe(2);
    const report = await dev.powerCut();
    expect(report).toEqual({ blocksKept: 0, blocksReverted: 2 });
    expect(dev.status()).toBe(MediaStatus.NO_MEDIA);
    const e = await senseOf(dev.read(0, 1));
    expect([e.key, e.asc]).toEqual([SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT[0]]);
    expect(e.message).toMatch(/power/);
    dev.powerOn();
    expect(Buffer.compare(await dev.read(0, 1), blk(1))).toBe(0);
    expect(Buffer.compare(await dev.read(1, 1), Buffer.alloc(512))).toBe(0);
    expect(Buffer.compare(await dev.read(2, 1), blk(4))).toBe(0);
    expect(Buffer.compare(await dev.read(3, 1), blk(6))).toBe(0);
    expect(Buffer.compare(await mem.read(0, 1), blk(1))).toBe(0);
  });

  it('keep rate 1 keeps everything; a mixed rate keeps some and reverts some', async () => {
    const a = make({ powerCutKeepRate: 1 });
    await a.dev.write(0, pattern(8 * 512, 1));
    expect(await a.dev.powerCut()).toEqual({ blocksKept: 8, blocksReverted: 0 });
    a.dev.powerOn();
    expect(Buffer.compare(await a.dev.read(0, 8), pattern(8 * 512, 1))).toBe(0);
    const b = make({ seed: 3 }, 64);
    await b.dev.write(0, pattern(64 * 512, 2));
    const r = await b.dev.powerCut();
    expect(r.blocksKept + r.blocksReverted).toBe(64);
    expect(r.blocksKept).toBeGreaterThan(0);
    expect(r.blocksReverted).toBeGreaterThan(0);
  });

  it('ops queued behind a power cut fail; the op executing completes', async () => {
    const { dev } = make({ powerCutKeepRate: 1 });
    const w1 = dev.write(0, blk(1));
    const cut = dev.powerCut();
    const w2 = dev.write(1, blk(2));
    expect((await senseOf(w2)).key).toBe(SenseKey.NOT_READY);
    await cut;
    await w1.then(() => undefined, () => undefined);
    dev.powerOn();
    const b0 = await dev.read(0, 1);
    expect(Buffer.compare(b0, blk(1)) === 0 || Buffer.compare(b0, Buffer.alloc(512)) === 0).toBe(true);
  });

  it('a full volatile cache writes back its oldest blocks, which then survive a cut', async () => {
    const { dev } = make({ powerCutKeepRate: 0, volatileCacheBlocksMax: 2 });
    for (let i = 0; i < 4; i++) await dev.write(i, blk(10 + i));
    expect(dev.volatileBlocks).toBe(2);
    expect(dev.stats.writeBacks).toBe(2);
    await dev.powerCut();
    dev.powerOn();
    expect(Buffer.compare(await dev.read(0, 2), Buffer.concat([blk(10), blk(11)]))).toBe(0);
    expect(Buffer.compare(await dev.read(2, 2), Buffer.alloc(1024))).toBe(0);
  });

  it('trim is tracked like a write', async () => {
    const { dev } = make({ powerCutKeepRate: 0 });
    await dev.write(4, blk(8));
    await dev.flush();
    await dev.trim(4, 1);
    expect(Buffer.compare(await dev.read(4, 1), Buffer.alloc(512))).toBe(0);
    await dev.powerCut();
    dev.powerOn();
    expect(Buffer.compare(await dev.read(4, 1), blk(8))).toBe(0);
  });

  it('the write-protect switch gives DATA PROTECT until turned off', async () => {
    const { dev } = make();
    dev.configure({ readOnly: true });
    expect(dev.capabilities.readOnly).toBe(true);
    expect(dev.status() & MediaStatus.WRITE_PROTECTED).toBeTruthy();
    const e = await senseOf(dev.write(1, blk(1)));
    expect([e.key, e.asc]).toEqual([SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED[0]]);
    expect((await senseOf(dev.trim(1, 1))).key).toBe(SenseKey.DATA_PROTECT);
    dev.configure({ readOnly: false });
    await dev.write(1, blk(1));
  });

  it('unplug is NOT READY / MEDIUM NOT PRESENT from then on, power-on does not bring it back', async () => {
    const { dev } = make();
    await dev.write(0, blk(1));
    dev.unplug();
    dev.powerOn();
    expect(dev.status()).toBe(MediaStatus.NO_MEDIA);
    for (const p of [dev.read(0, 1), dev.write(0, blk(2)), dev.flush()]) {
      const e = await senseOf(p);
      expect([e.key, e.asc, e.ascq]).toEqual([SenseKey.NOT_READY, ...Asc.MEDIUM_NOT_PRESENT]);
      expect(e.message).toMatch(/memory:t.*unplugged/);
    }
  });

  it('trim on a device without trim is ILLEGAL REQUEST', async () => {
    const mem = new MemoryDevice({ blockSizeBytes: 512, blockCount: 4 });
    const noTrim = Object.create(mem, { capabilities: { value: { ...mem.capabilities, trim: false } } });
    const dev = new FaultDevice(noTrim, { seed: 1 });
    expect((await senseOf(dev.trim(0, 1))).key).toBe(SenseKey.ILLEGAL_REQUEST);
  });

  it('rejects bad settings naming the field', () => {
    const { dev } = make();
    expect(() => dev.configure({ errorRate: 2 })).toThrow(/errorRate 2/);
    expect(() => dev.configure({ latencyMs: -1 })).toThrow(/latencyMs -1/);
    expect(() => dev.configure({ rules: [{ blocks: 3 }] })).toThrow(/rule 0.*blocks 3/);
    expect(() => dev.configure({ rules: [{ ops: ['erase' as 'read'] }] })).toThrow(/"erase"/);
    expect(() => make({ volatileCacheBlocksMax: 0 })).toThrow(/volatileCacheBlocksMax/);
  });
});

describe('FaultDevice over a loopback file', () => {
  it('a power cut reverts unflushed blocks in the file itself, so a reopen sees only durable data', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { openLoopback } = await import('../../hal/loopback.js');
    const dir = mkdtempSync(join(tmpdir(), 'geomirror-fault-'));
    try {
      const path = join(dir, 'v.img');
      const dev = new FaultDevice(await openLoopback(path, { blockSizeBytes: 4096, blockCount: 8, create: true }), { seed: 5, powerCutKeepRate: 0 });
      await dev.write(0, pattern(2 * 4096, 1));
      await dev.flush();
      await dev.write(1, pattern(3 * 4096, 2));
      await dev.powerCut();
      await dev.close();
      const again = await openLoopback(path, { blockSizeBytes: 4096, blockCount: 8 });
      const want = Buffer.concat([pattern(2 * 4096, 1), Buffer.alloc(2 * 4096)]);
      expect(Buffer.compare(await again.read(0, 4), want)).toBe(0);
      await again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

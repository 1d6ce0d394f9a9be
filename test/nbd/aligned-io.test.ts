// The NbdExport contract: whatever clients send (unaligned, overlapping blocks, from several
// connections at once), the export only ever sees block-aligned calls, and the bytes end up
// exactly as if the requests had been applied one by one. Seeded, so a failure replays.
import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice } from '../../hal/memory.js';
import type { BlockDevice } from '../../hal/blockdev.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import type { NbdExport } from '../../src/nbd/export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { Cmd, CmdFlag } from '../../src/nbd/protocol.js';
import { RawClient } from './raw-client.js';

const blockBytes = 4096;
const blocks = 32;
const sizeBytes = blockBytes * blocks;

/**
 * Wraps an export, recording every call that breaks the alignment contract, and delays each
 * call by a few event-loop turns (deterministic sequence) so concurrent requests interleave
 * between a read-modify-write's read and its write, as they do on real storage.
 */
function strict(exp: NbdExport, violations: string[]): NbdExport {
  let n = 0;
  const later = async <T>(f: () => Promise<T>): Promise<T> => {
    for (let i = (n++ * 7) % 4; i > 0; i--) await new Promise((r) => setImmediate(r));
    return f();
  };
  const check = (op: string, off: number, len: number) => {
    if (off % exp.blockSizeBytes !== 0 || len % exp.blockSizeBytes !== 0 || off + len > exp.sizeBytes || len <= 0) {
      violations.push(`${op} ${off}+${len}`);
    }
  };
  return {
    ...exp,
    read: (o, l) => (check('read', o, l), later(() => exp.read(o, l))),
    write: (o, d, opts) => (check('write', o, d.length), later(() => exp.write(o, d, opts))),
    flush: () => exp.flush(),
    trim: (o, l, opts) => (check('trim', o, l), exp.trim!(o, l, opts)),
  };
}

let server: NbdServer | undefined;
const open: RawClient[] = [];
afterEach(async () => {
  for (const c of open.splice(0)) c.close();
  await server?.close();
  server = undefined;
});

describe('aligned I/O at the export edge', () => {
  it('random unaligned writes and zeroes from two connections: aligned export calls, exact bytes', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            kind: fc.constantFrom('write', 'zero'),
            offset: fc.integer({ min: 0, max: sizeBytes - 1 }),
            length: fc.integer({ min: 1, max: 3 * blockBytes }),
            fua: fc.boolean(),
            seed: fc.integer({ min: 1, max: 255 }),
          }),
          { minLength: 1, maxLength: 24 },
        ),
        async (ops) => {
          const dev = new MemoryDevice({ blockSizeBytes: blockBytes, blockCount: blocks });
          await dev.write(0, Buffer.alloc(sizeBytes, 0xff)); // nonzero start: zeroing is observable
          const violations: string[] = [];
          server = new NbdServer({ exports: [strict(blockDeviceExport(dev, { name: 'v' }), violations)] });
          const port = await server.listen('127.0.0.1', 0);
          const cs = [await RawClient.connect(port), await RawClient.connect(port)];
          open.push(...cs);
          for (const c of cs) {
            await c.handshake();
            await c.go('v');
          }
          // Keep only ops whose byte ranges are disjoint from earlier ones (they may share
          // blocks: that is the torn-block case), so the final bytes do not depend on ordering.
          const taken: [number, number][] = [];
          const model = Buffer.alloc(sizeBytes, 0xff);
          const sent: number[] = [0, 0];
          let cookie = 0n;
          for (const op of ops) {
            const len = Math.min(op.length, sizeBytes - op.offset);
            if (taken.some(([a, b]) => op.offset < b && a < op.offset + len)) continue;
            taken.push([op.offset, op.offset + len]);
            const who = Number(cookie % 2n);
            const flags = op.fua ? CmdFlag.FUA : 0;
            if (op.kind === 'write') {
              const data = Buffer.alloc(len, op.seed);
              data.copy(model, op.offset);
              cs[who]!.sendRequest(Cmd.WRITE, { cookie: cookie++, offset: op.offset, payload: data, flags });
            } else {
              model.fill(0, op.offset, op.offset + len);
              cs[who]!.sendRequest(Cmd.WRITE_ZEROES, { cookie: cookie++, offset: op.offset, length: len, flags });
            }
            sent[who]!++;
          }
          for (let w = 0; w < 2; w++) for (let i = 0; i < sent[w]!; i++) expect((await cs[w]!.readSimpleReply()).error).toBe(0);
          expect(violations).toEqual([]);
          expect((await dev.read(0, blocks)).equals(model)).toBe(true);
          for (const c of open.splice(0)) c.close();
          await server.close();
          server = undefined;
        },
      ),
      { seed: 42, numRuns: 25 },
    );
  });
});

describe('blockDeviceExport', () => {
  function spyDevice(caps: { fua: boolean; trim: boolean }): { dev: BlockDevice; calls: string[] } {
    const base = new MemoryDevice({ blockSizeBytes: 512, blockCount: 64 });
    const calls: string[] = [];
    const dev: BlockDevice = {
      name: 'spy',
      blockSizeBytes: 512,
      blockCount: 64,
      capabilities: { flush: true, fua: caps.fua, trim: caps.trim, readOnly: false },
      status: () => base.status(),
      read: (lba, n) => (calls.push(`read ${lba} ${n}`), base.read(lba, n)),
      write: (lba, d, o) => (calls.push(`write ${lba} ${d.length} fua=${o?.fua === true}`), base.write(lba, d)),
      flush: () => (calls.push('flush'), base.flush()),
      close: () => base.close(),
      ...(caps.trim ? { trim: (lba: number, n: number) => (calls.push(`trim ${lba} ${n}`), base.trim(lba, n)) } : {}),
    };
    return { dev, calls };
  }

  it('passes FUA to a device that has it, and emulates it with a flush on one that does not', async () => {
    const a = spyDevice({ fua: true, trim: true });
    await blockDeviceExport(a.dev, { name: 'a' }).write(1024, Buffer.alloc(512), { fua: true });
    expect(a.calls).toEqual(['write 2 512 fua=true']);
    const b = spyDevice({ fua: false, trim: false });
    const eb = blockDeviceExport(b.dev, { name: 'b' });
    expect(eb.canFua).toBe(true);
    await eb.write(1024, Buffer.alloc(512), { fua: true });
    expect(b.calls).toEqual(['write 2 512 fua=false', 'flush']);
  });

  it('trims through the device when it can, and accepts trim as a no-op hint when it cannot', async () => {
    const a = spyDevice({ fua: true, trim: true });
    await blockDeviceExport(a.dev, { name: 'a' }).trim!(2048, 1024, { fua: false });
    expect(a.calls).toEqual(['trim 4 2']);
    const b = spyDevice({ fua: true, trim: false });
    await blockDeviceExport(b.dev, { name: 'b' }).trim!(2048, 1024, { fua: true });
    expect(b.calls).toEqual([]);
  });

  it('a read-only export of a writable device refuses writes and offers no trim', async () => {
    const a = spyDevice({ fua: true, trim: true });
    const e = blockDeviceExport(a.dev, { name: 'ro', readOnly: true });
    expect([e.readOnly, e.canTrim, e.sizeBytes, e.blockSizeBytes]).toEqual([true, false, 64 * 512, 512]);
    await expect(e.write(0, Buffer.alloc(512), { fua: false })).rejects.toThrow(/read-only/);
    expect(a.calls).toEqual([]);
  });
});

// Property: on the fault wrapper over a memory device, random sequences of writes (plain and
// FUA), flushes, torn writes, injected errors and power cuts never lose a flushed or FUA write,
// and every block always holds either its last durable content or content written to it since:
// never garbage, never a block from another write or another LBA.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FaultDevice } from '../../hal/fault.js';
import { MemoryDevice } from '../../hal/memory.js';

const blockSizeBytes = 512;
const blockCount = 24;

/** Block `lba` of write `tag`: self-describing, so a read tells which write (if any) it came from. */
function blockOf(tag: number, lba: number): Buffer {
  const b = Buffer.alloc(blockSizeBytes, (tag * 31 + lba * 7) & 0xff);
  b.writeUInt32BE(tag, 0);
  b.writeUInt32BE(lba, 4);
  return b;
}

/** The tag a block holds (0 = never written), or a failure if the bytes are garbage. */
function tagOf(b: Buffer, lba: number): number {
  const tag = b.readUInt32BE(0);
  const expected = tag === 0 ? Buffer.alloc(blockSizeBytes) : blockOf(tag, lba);
  if (Buffer.compare(b, expected) !== 0) throw new Error(`LBA ${lba} holds garbage (first bytes ${b.subarray(0, 12).toString('hex')})`);
  return tag;
}

type Cmd =
  | { op: 'write'; lba: number; blocks: number; fua: boolean }
  | { op: 'flush' }
  | { op: 'cut' };

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), lba: fc.nat(blockCount - 1), blocks: fc.integer({ min: 1, max: 6 }), fua: fc.boolean() }) },
  { weight: 2, arbitrary: fc.constant({ op: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'cut' as const }) },
);

/** Per block: tags that may be durable, tags written since, tags that may be there now. */
interface BlockModel {
  durable: Set<number>;
  since: Set<number>;
  now: Set<number>;
}

describe('FaultDevice durability property', () => {
  it('never loses a flushed or FUA write and never shows garbage', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer(),
        fc.constantFrom(0, 0.3),
        fc.constantFrom(0, 0.1),
        fc.constantFrom(3, 1000),
        fc.array(cmdArb, { minLength: 1, maxLength: 40 }),
        async (seed, tornWriteRate, errorRate, volatileCacheBlocksMax, cmds) => {
          const mem = new MemoryDevice({ blockSizeBytes, blockCount });
          const dev = new FaultDevice(mem, { seed, tornWriteRate, errorRate, errorRateOps: ['write', 'flush'], volatileCacheBlocksMax });
          const model: BlockModel[] = Array.from({ length: blockCount }, () => ({ durable: new Set([0]), since: new Set(), now: new Set([0]) }));
          let tag = 0;

          const checkAll = async (afterCut: boolean) => {
            const all = await dev.read(0, blockCount);
            for (let lba = 0; lba < blockCount; lba++) {
              const t = tagOf(all.subarray(lba * blockSizeBytes, (lba + 1) * blockSizeBytes), lba);
              const m = model[lba]!;
              if (afterCut) {
                // Flushed/FUA data survives: if nothing was written since, only durable tags are allowed.
                expect(m.durable.has(t) || m.since.has(t), `LBA ${lba} after cut holds tag ${t}`).toBe(true);
                m.durable = new Set([t]);
                m.since = new Set();
                m.now = new Set([t]);
              } else {
                expect(m.now.has(t), `LBA ${lba} holds tag ${t}, expected one of ${[...m.now]}`).toBe(true);
              }
            }
          };

          for (const c of cmds) {
            if (c.op === 'write') {
              const blocks = Math.min(c.blocks, blockCount - c.lba);
              tag++;
              const data = Buffer.concat(Array.from({ length: blocks }, (_, i) => blockOf(tag, c.lba + i)));
              const ok = await dev.write(c.lba, data, { fua: c.fua }).then(() => true, () => false);
              for (let lba = c.lba; lba < c.lba + blocks; lba++) {
                const m = model[lba]!;
                if (ok && c.fua) {
                  m.durable = new Set([tag]);
                  m.since = new Set();
                  m.now = new Set([tag]);
                } else if (ok) {
                  m.since.add(tag);
                  m.now = new Set([tag]);
                } else {
                  m.since.add(tag); // a failed write may have landed (torn) or not
                  m.now.add(tag);
                }
              }
            } else if (c.op === 'flush') {
              const ok = await dev.flush().then(() => true, () => false);
              if (ok) {
                for (const m of model) {
                  m.durable = new Set(m.now);
                  m.since = new Set();
                }
              }
            } else {
              await dev.powerCut();
              dev.powerOn();
              await checkAll(true);
            }
            if (c.op !== 'cut') await checkAll(false);
          }
          // A final cut: whatever was flushed last must still be there.
          await dev.powerCut();
          dev.powerOn();
          await checkAll(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});

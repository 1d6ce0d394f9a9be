// The serial adapter over @serialport/binding-mock, with the device-side target in process and
// seeded faults on the wire: dropped bytes, flipped bits, garbage, silence, a vanished port.
// Every fault ends in a successful retried operation with the right bytes, or a sense-coded
// error naming the device, within attemptsMax x timeout (issue 9).

import { SerialPortMock } from 'serialport';
import { afterEach, describe, expect, it } from 'vitest';
import { Asc, MediaStatus, SenseKey } from '../../hal/blockdev.js';
import { MemoryDevice } from '../../hal/memory.js';
import { Prng } from '../../hal/prng.js';
import { openSerialDevice, type SerialBlockDevice } from '../../hal/serial/device.js';
import { SerialTarget } from '../../hal/serial/sim/target.js';
import { pattern, senseOf } from './adapter-contract.js';

interface Wire {
  dropRate: number; // chance a chunk loses one byte
  flipRate: number; // chance a chunk gets one bit flipped
  garbageRate: number; // chance random bytes are sent ahead of a chunk
  silent: boolean; // device hears nothing and says nothing
}

const cleanups: Array<() => Promise<void>> = [];
/** The part of @serialport/binding-mock's port we use (its ESM entry ships no typings). */
interface MockPortBinding {
  isOpen: boolean;
  emitData(data: Buffer): void;
  write(buf: Buffer): Promise<void>;
}

// The binding instance serialport itself loaded (its CJS copy; an ESM import of
// @serialport/binding-mock would be a second instance with its own port table).
const MockBinding = SerialPortMock.binding;

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  MockBinding.reset();
});

let portNo = 0;
async function setup(seed: number, opts: { timeoutMs?: number; attemptsMax?: number } = {}) {
  const rng = new Prng(seed);
  const wire: Wire = { dropRate: 0, flipRate: 0, garbageRate: 0, silent: false };
  const medium = new MemoryDevice({ blockSizeBytes: 512, blockCount: 512 });
  const path = `/dev/ttyMOCK${portNo++}`;
  MockBinding.createPort(path, { maxReadSize: 700 });
  const port = new SerialPortMock({ path, baudRate: 115200, autoOpen: false });
  await new Promise<void>((res, rej) => port.open((e) => (e ? rej(e) : res())));
  const binding = port.port as unknown as MockPortBinding;
  const damage = (b: Buffer): Buffer => {
    let out = Buffer.from(b);
    if (wire.dropRate && rng.chance(wire.dropRate) && out.length > 0) {
      const i = rng.int(out.length);
      out = Buffer.concat([out.subarray(0, i), out.subarray(i + 1)]);
    }
    if (wire.flipRate && rng.chance(wire.flipRate) && out.length > 0) out[rng.int(out.length)]! ^= 1 << rng.int(8);
    if (wire.garbageRate && rng.chance(wire.garbageRate)) {
      const g = Buffer.alloc(1 + rng.int(200));
      for (let i = 0; i < g.length; i++) g[i] = rng.chance(0.05) ? 0 : rng.int(256);
      out = Buffer.concat([g, out]);
    }
    return out;
  };
  const target = new SerialTarget(medium, (bytes) => {
    if (wire.silent || !binding.isOpen) return;
    binding.emitData(damage(bytes));
  }, { payloadBytesMax: 4096 });
  const write = binding.write.bind(binding);
  binding.write = async (buf: Buffer) => {
    await write(buf);
    if (!wire.silent) target.push(damage(buf));
  };
  // A high nominal baud keeps the wire-time part of each timeout small for the tests.
  const dev = await openSerialDevice(`serial:${path}`, { port, timeoutMs: opts.timeoutMs ?? 100, attemptsMax: opts.attemptsMax ?? 6, baudRate: 4_000_000 });
  cleanups.push(async () => {
    await dev.close();
    await medium.close();
  });
  return { dev, wire, medium, target, port };
}

async function roundTrips(dev: SerialBlockDevice, medium: MemoryDevice, seed: number) {
  for (let i = 0; i < 6; i++) {
    const lba = i * 40;
    const data = pattern(((i % 3) + 1) * 4096, seed + i); // 8..24 blocks: 1..3 frames of 4 KiB
    await dev.write(lba, data, { fua: i % 2 === 0 });
    expect(Buffer.compare(await dev.read(lba, data.length / 512), data)).toBe(0);
    expect(Buffer.compare(await medium.read(lba, data.length / 512), data)).toBe(0);
  }
  await dev.flush();
}

describe('serial adapter over binding-mock with wire faults', () => {
  it('identifies the device and moves bytes on a clean wire', async () => {
    const { dev, medium } = await setup(1);
    expect(dev.blockCount).toBe(512);
    expect(dev.model).toBe('geomirror-sim');
    expect(dev.status()).toBe(MediaStatus.OK);
    await roundTrips(dev, medium, 100);
    expect(dev.link.stats.retransmits).toBe(0);
  });

  const faults: Array<[string, Partial<Wire>]> = [
    ['dropped bytes', { dropRate: 0.2 }],
    ['flipped bits', { flipRate: 0.3 }],
    ['garbage on the line', { garbageRate: 0.4 }],
    ['all three at once', { dropRate: 0.15, flipRate: 0.15, garbageRate: 0.15 }],
  ];
  for (const [label, f] of faults) {
    it(`recovers from ${label} with the right bytes`, async () => {
      const { dev, wire, medium } = await setup(label.length * 7);
      Object.assign(wire, f);
      await roundTrips(dev, medium, 200);
      // The faults did bite: frames were rejected (garbage alone needs no resend: every frame
      // opens with a delimiter, so the parser drops the junk and still takes the response).
      expect(dev.link.stats.retransmits + dev.link.parserStats.framesCorrupt + dev.link.parserStats.framesOversize).toBeGreaterThan(0);
    });
  }

  it('silence ends in ABORTED COMMAND / timeout naming device and LBA; the link resyncs after', async () => {
    const { dev, wire, medium } = await setup(5, { timeoutMs: 60, attemptsMax: 3 });
    await dev.write(7, pattern(512, 1));
    wire.silent = true;
    const e = await senseOf(dev.read(7, 1));
    expect(e.key).toBe(SenseKey.ABORTED_COMMAND);
    expect([e.asc, e.ascq]).toEqual([...Asc.COMMAND_TIMEOUT]);
    expect(e.lba).toBe(7);
    expect(e.message).toContain(dev.name);
    wire.silent = false;
    wire.garbageRate = 0.5;
    expect(Buffer.compare(await dev.read(7, 1), pattern(512, 1))).toBe(0);
    expect(Buffer.compare(await medium.read(7, 1), pattern(512, 1))).toBe(0);
  });

  it("the device's sense passes through unchanged, naming the host-side device and LBA", async () => {
    const { dev } = await setup(6);
    const e = await senseOf(dev.write(600, Buffer.alloc(512)));
    expect(e.key).toBe(SenseKey.ILLEGAL_REQUEST); // range checked at the host edge
    const gone = new MemoryDevice({ blockSizeBytes: 512, blockCount: 8 });
    await gone.close(); // a medium that answers NOT READY / MEDIUM NOT PRESENT to everything
    const { dev: dev2 } = await setupWithMedium(gone);
    const e2 = await senseOf(dev2.read(3, 1));
    expect(e2.key).toBe(SenseKey.NOT_READY);
    expect([e2.asc, e2.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
    expect(e2.lba).toBe(3);
    expect(e2.message).toContain(dev2.name);
  });

  it('a port that goes away mid-request is NOT READY / MEDIUM NOT PRESENT, not a hang', async () => {
    const { dev, wire, port } = await setup(7, { timeoutMs: 5000 });
    wire.silent = true;
    const pending = dev.read(0, 1);
    setTimeout(() => port.close(), 20);
    const e = await senseOf(pending);
    expect(e.key).toBe(SenseKey.NOT_READY);
    expect([e.asc, e.ascq]).toEqual([...Asc.MEDIUM_NOT_PRESENT]);
    expect(e.message).toContain(dev.name);
    expect(dev.status() & MediaStatus.NO_MEDIA).toBeTruthy();
  });
});

/** Same rig, but INFO answered by a live medium and later requests by `medium`. */
async function setupWithMedium(medium: MemoryDevice) {
  const live = new MemoryDevice({ blockSizeBytes: 512, blockCount: 8 });
  const path = `/dev/ttyMOCK${portNo++}`;
  MockBinding.createPort(path);
  const port = new SerialPortMock({ path, baudRate: 115200, autoOpen: false });
  await new Promise<void>((res, rej) => port.open((e) => (e ? rej(e) : res())));
  const binding = port.port as unknown as MockPortBinding;
  let target = new SerialTarget(live, (b) => binding.isOpen && binding.emitData(b));
  const write = binding.write.bind(binding);
  binding.write = async (buf: Buffer) => {
    await write(buf);
    target.push(buf);
  };
  const dev = await openSerialDevice(`serial:${path}`, { port, timeoutMs: 100, baudRate: 4_000_000 });
  target = new SerialTarget(medium, (b) => binding.isOpen && binding.emitData(b));
  cleanups.push(() => dev.close());
  return { dev };
}

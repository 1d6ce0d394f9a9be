// Hardware-adapter throughput against the memory adapter (issue 9): what each protocol costs.
//
//   memory      hal/memory.ts MemoryDevice.write: the floor
//   usb-sim     hal/usb UsbBlockDevice (CBW/data/CSW per 128 KiB, SCSI) over the USB simulator
//               on a RAM medium: adapter + Bulk-Only Transport + SCSI cost, no bus time
//   serial-pty  hal/serial SerialBlockDevice over a real socat pty, device simulator script at
//               the far end on a file: framing, CRC-32C, stop-and-wait round trips, tty copies
//
// Sequential writes at queue depth 1, 4 KiB and 1 MiB, in alternating rounds (noisy shared
// machine); reports the median MiB/s and the median per-round ratio against memory. The lead
// merges this into `npm run bench:hal`; standalone: node --import tsx bench/hal-hw.ts

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockDevice } from '../hal/blockdev.js';
import { MemoryDevice } from '../hal/memory.js';
import { openSerialDevice } from '../hal/serial/device.js';
import { startSerialSim } from '../hal/serial/sim/pty.js';
import { UsbBlockDevice } from '../hal/usb/device.js';
import { SimUsbDevice } from '../hal/usb/sim/target.js';

const blockSizeBytes = 4096;
const regionBytes = 64 * 1024 * 1024;
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const points = [
  { label: '4 KiB', sizeBytes: 4096, bytesPerTrial: 4 * 1024 * 1024 },
  { label: '1 MiB', sizeBytes: 1024 * 1024, bytesPerTrial: 32 * 1024 * 1024 },
] as const;

interface Sys {
  name: string;
  dev: BlockDevice;
  lba: number;
}

async function trial(s: Sys, buf: Buffer, ops: number): Promise<number> {
  const blocks = buf.length / blockSizeBytes;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) {
    if (s.lba + blocks > s.dev.blockCount) s.lba = 0;
    await s.dev.write(s.lba, buf);
    s.lba += blocks;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return (buf.length * ops) / (1024 * 1024) / seconds;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'gm-bench-hw-'));
  const blockCount = regionBytes / blockSizeBytes;
  const serialSim = await startSerialSim({ dir, blockSizeBytes, blockCount });
  const systems: Sys[] = [];
  try {
    systems.push({ name: 'memory', dev: new MemoryDevice({ blockSizeBytes, blockCount }), lba: 0 });
    const sim = new SimUsbDevice(new MemoryDevice({ blockSizeBytes, blockCount }));
    systems.push({ name: 'usb-sim', dev: await UsbBlockDevice.open(sim, 'usb-sim:memory'), lba: 0 });
    systems.push({ name: 'serial-pty', dev: await openSerialDevice(`serial:${serialSim.hostPath}`), lba: 0 });

    console.log(`HAL hardware adapters, sequential writes at QD1, ${rounds} rounds, median MiB/s (ratio vs memory)`);
    console.log(['size', ...systems.map((s) => s.name)].map((c) => c.padEnd(22)).join(''));
    for (const p of points) {
      const buf = Buffer.alloc(p.sizeBytes, 0xa5);
      const mibs = new Map<string, number[]>(systems.map((s) => [s.name, []]));
      const ratios = new Map<string, number[]>(systems.map((s) => [s.name, []]));
      for (let r = 0; r < rounds; r++) {
        const order = systems.map((_, i) => systems[(i + r) % systems.length]!);
        const got = new Map<string, number>();
        for (const s of order) {
          // The serial line is ~100x slower: give it fewer ops so a round stays short.
          const bytes = s.name === 'serial-pty' ? p.bytesPerTrial / 8 : p.bytesPerTrial;
          got.set(s.name, await trial(s, buf, Math.max(1, Math.floor(bytes / p.sizeBytes))));
        }
        for (const s of systems) {
          mibs.get(s.name)!.push(got.get(s.name)!);
          ratios.get(s.name)!.push(got.get(s.name)! / got.get('memory')!);
        }
      }
      const cells = systems.map((s) => `${median(mibs.get(s.name)!).toFixed(1)} (${median(ratios.get(s.name)!).toFixed(3)}x)`);
      console.log([p.label, ...cells].map((c) => c.padEnd(22)).join(''));
    }
  } finally {
    for (const s of systems) await s.dev.close();
    await serialSim.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// SERIAL DEVICE SIMULATOR (not hardware): speaks the device side of docs/SERIAL-PROTOCOL.md
// over a file-backed disk, on one end of a pseudo-terminal pair, e.g.
//
//   socat -d -d pty,raw,echo=0,link=/tmp/A pty,raw,echo=0,link=/tmp/B &
//   node --import tsx hal/serial/sim/device-sim.ts --port /tmp/B --disk /tmp/disk.img \
//        --block-size 512 --blocks 32768 [--create] [--read-only]
//
// and the host opens the real adapter on the other end: `serial:/tmp/A`. Prints "ready" on
// stdout once the port is open, so a parent process knows when to start.

import { parseArgs } from 'node:util';
import { existsSync, openSync, constants as fsc } from 'node:fs';
import { ReadStream, WriteStream } from 'node:tty';
import type { BlockDevice } from '../../blockdev.js';
import { FaultDevice } from '../../fault.js';
import { openLoopback } from '../../loopback.js';
import { SerialTarget } from './target.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      disk: { type: 'string' },
      'block-size': { type: 'string', default: '512' },
      blocks: { type: 'string' },
      'payload-bytes-max': { type: 'string', default: String(64 * 1024) },
      create: { type: 'boolean', default: false },
      'read-only': { type: 'boolean', default: false },
      // Test hook: reads touching this LBA fail with MEDIUM ERROR, as a bad sector would.
      'medium-error-lba': { type: 'string' },
    },
  });
  if (!values.port || !values.disk || !values.blocks) {
    throw new Error('usage: device-sim.ts --port PTY --disk FILE --blocks N [--block-size 512|4096] [--create] [--read-only]');
  }
  const geometry = { blockSizeBytes: Number(values['block-size']), blockCount: Number(values.blocks) };
  const readOnly = values['read-only'];
  // A write-protected card still has to exist: make the image first, then open it read-only.
  if (readOnly && values.create && !existsSync(values.disk)) await (await openLoopback(values.disk, { ...geometry, create: true })).close();
  const file = await openLoopback(values.disk, { ...geometry, create: values.create && !readOnly, readOnly });
  const bad = values['medium-error-lba'];
  const medium: BlockDevice = bad === undefined ? file : new FaultDevice(file, { seed: 1, rules: [{ ops: ['read'], lba: Number(bad) }] });
  // The device end uses Node's own tty streams, not serialport, so the simulated device shares
  // no code (nor bugs: see keepPollerInterests in ../device.ts) with the adapter under test.
  const fd = openSync(values.port, fsc.O_RDWR | fsc.O_NOCTTY);
  const rx = new ReadStream(fd);
  rx.setRawMode(true);
  const tx = new WriteStream(fd);
  const port = {
    write: (b: Buffer) => tx.write(b),
    on: (ev: 'data' | 'close', fn: (...a: any[]) => void) => rx.on(ev === 'data' ? 'data' : 'close', fn),
    close: (cb: () => void) => { rx.destroy(); tx.destroy(); cb(); },
  };
  const target = new SerialTarget(medium, (bytes) => port.write(bytes), { payloadBytesMax: Number(values['payload-bytes-max']) });
  port.on('data', (chunk: Buffer) => target.push(chunk));
  const stop = async () => {
    await target.idle().catch(() => undefined);
    await medium.close();
    port.close(() => process.exit(0));
  };
  port.on('close', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.stdout.write('ready\n');
}

main().catch((e: Error) => {
  process.stderr.write(`device-sim: ${e.message}\n`);
  process.exit(1);
});

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
import { SerialPort } from 'serialport';
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
    },
  });
  if (!values.port || !values.disk || !values.blocks) {
    throw new Error('usage: device-sim.ts --port PTY --disk FILE --blocks N [--block-size 512|4096] [--create] [--read-only]');
  }
  const medium = await openLoopback(values.disk, {
    blockSizeBytes: Number(values['block-size']),
    blockCount: Number(values.blocks),
    create: values.create,
    readOnly: values['read-only'],
  });
  const port = new SerialPort({ path: values.port, baudRate: 115200, autoOpen: false });
  await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(err) : resolve())));
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

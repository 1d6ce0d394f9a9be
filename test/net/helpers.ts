// Shared helpers of the link tests: a capturing logger, a raw TCP client, waiting on events.
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { expect } from 'vitest';
import type { Link, LinkLogger } from '../../src/net/index.js';
import type { DataMessage, WriteMsg } from '../../src/wire/index.js';

export interface LogLine { level: 'info' | 'warn'; msg: string; obj: Record<string, unknown> }

export function captureLogger(): LinkLogger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  return {
    lines,
    info: (obj, msg) => lines.push({ level: 'info', msg, obj: obj as Record<string, unknown> }),
    warn: (obj, msg) => lines.push({ level: 'warn', msg, obj: obj as Record<string, unknown> }),
  };
}

/** Resolves when `pred` holds, polling on the event loop; rejects after `ms` with `what`. */
export async function until(pred: () => boolean, what: string, ms = 10_000): Promise<void> {
  const start = Date.now();
  while (!pred()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A raw client: connects, sends `bytes`, collects everything received until the server closes. */
export function rawExchange(port: number, bytes: Buffer): Promise<{ received: Buffer; closed: boolean; local: string }> {
  return new Promise((resolve, reject) => {
    let local = '';
    const s: Socket = connect({ host: '127.0.0.1', port }, () => {
      local = `${s.localAddress}:${s.localPort}`;
      s.write(bytes);
    });
    const got: Buffer[] = [];
    s.on('data', (c) => got.push(c));
    s.on('error', () => {}); // a reset after the server's close is fine: we only need 'close'
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`server did not close the connection after ${bytes.length} raw bytes`));
    }, 10_000);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(got), closed: true, local });
    });
  });
}

/** Ports freePort() handed out in this process: the kernel may offer a closed one again at once. */
const handedOut = new Set<number>();

export async function freePort(): Promise<number> {
  // Never the same port twice in one process: two sites of one cluster file once got the same
  // one (the file was refused: "127.0.0.1:43365 is already used by sites.backup.listen").
  for (let attempt = 0; ; attempt++) {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    if (!handedOut.has(port) || attempt >= 100) {
      handedOut.add(port);
      return port;
    }
  }
}

/**
 * Issue 18, reused receive buffers (src/net/read-into.ts): `from` sends WRITEs of 1 B..1 MiB,
 * `to` keeps every payload it receives as the journal would (no copy), and only after the last
 * one arrives are all of them hashed and compared with what was sent. A payload left as a view
 * of the link's reused read buffer would have been overwritten by later reads. Also checks that
 * the receiving socket really reads into its reused buffer (no 'data' listener).
 */
export async function sendWritesKeepAll(from: Link, to: Link, count = 48): Promise<void> {
  expect(to.socket.listenerCount('data'), 'receiver reads into a reused buffer').toBe(0);
  const sizes = [1, 4096, 4100, 65536, 65537, 200_000, 1 << 20, 512, 9000];
  const sent: string[] = [];
  const kept: WriteMsg[] = [];
  to.on('message', (m: DataMessage) => {
    if (m.type !== 'WRITE') return;
    kept.push(m);
    to.send({ type: 'ACK', volumeId: 0, epoch: m.epoch, seq: m.seq });
  });
  for (let i = 0; i < count; i++) {
    const data = randomBytes(sizes[i % sizes.length]!);
    sent.push(createHash('sha256').update(data).digest('hex'));
    const msg: WriteMsg = { type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: BigInt(i + 1), offsetBytes: BigInt(i) * 4096n, data };
    if (!from.send(msg)) await from.whenWritable(); // false: sent, wait before the next
  }
  await until(() => kept.length === count, `${count} WRITEs received`, 30_000);
  expect(kept.map((m) => createHash('sha256').update(m.data).digest('hex'))).toEqual(sent);
}

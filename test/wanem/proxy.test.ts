// The WAN emulator itself: bytes pass unchanged and in order, a partition black-holes them,
// heal resets the black-holed connection and new ones flow, drop resets every connection.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { latencyFromDistanceMs, WanProxy } from './proxy.js';

let proxy: WanProxy | undefined;
let echo: net.Server | undefined;

afterEach(async () => {
  await proxy?.close();
  await new Promise<void>((r) => (echo ? echo.close(() => r()) : r()));
  proxy = undefined;
  echo = undefined;
});

async function setup(oneWayLatencyMs = 1, bandwidthBytesPerSec?: number): Promise<WanProxy> {
  echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echo!.listen(0, '127.0.0.1', () => r()));
  const port = (echo.address() as net.AddressInfo).port;
  proxy = await WanProxy.start({ targetHost: '127.0.0.1', targetPort: port, oneWayLatencyMs, ...(bandwidthBytesPerSec ? { bandwidthBytesPerSec } : {}) });
  return proxy;
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((res, rej) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => res(s));
    s.once('error', rej);
  });
}

function readN(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((res, rej) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (b: Buffer) => {
      parts.push(b);
      got += b.length;
      if (got >= n) {
        s.off('data', onData);
        res(Buffer.concat(parts).subarray(0, n));
      }
    };
    s.on('data', onData);
    s.once('close', () => rej(new Error(`closed after ${got} of ${n} bytes`)));
  });
}

describe('WAN emulator proxy', () => {
  it('carries bytes unchanged and in order through latency and a bandwidth cap', async () => {
    const p = await setup(2, 4 * 1024 * 1024);
    const s = await connect(p.port);
    const data = Buffer.alloc(256 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 8)) & 0xff;
    const back = readN(s, data.length);
    for (let at = 0; at < data.length; at += 1000) s.write(data.subarray(at, at + 1000));
    expect((await back).equals(data)).toBe(true);
    s.destroy();
  });

  it('partition black-holes, heal resets that connection and a new one flows; drop resets', async () => {
    const p = await setup();
    const s = await connect(p.port);
    p.partition();
    s.write('lost');
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    await new Promise((r) => setTimeout(r, 50));
    expect(p.stats.bytesDropped).toBeGreaterThan(0);
    p.heal();
    await closed;
    const s2 = await connect(p.port);
    const back = readN(s2, 5);
    s2.write('hello');
    expect((await back).toString()).toBe('hello');
    const closed2 = new Promise<void>((r) => s2.once('close', () => r()));
    p.drop();
    await closed2;
  });

  it('derives latency from distance at about 5 us per km', () => {
    expect(latencyFromDistanceMs(1000)).toBeCloseTo(5);
  });
});

// bench:wire: 4 KiB WRITE frames encoded, sent through a loopback TCP socket pair and decoded,
// in MiB/s of payload, against the same payload bytes sent unframed (one write per 4 KiB) in
// the same run, alternating, repeated; the figure is the ratio of the medians. Goal >= 0.85x.
// Also prints the measurements behind two codec choices: the CRC implementation and
// buffer-layout vs the hand-coded WRITE header on the hot path.
//
//   npm run bench:wire [-- --mib 32 --rounds 15 --queue-kib 1024]
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { crc32 as rsCrc32, crc32c as rsCrc32c } from '@node-rs/crc32';
import { crc32Small } from '../src/wire/crc.js';
import { Link, insecureLinks } from '../src/net/index.js';
import { FrameEncoder, MessageReader, specByName, writeHeader, type WriteMsg } from '../src/wire/index.js';

const args = process.argv.slice(2);
const arg = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const payloadBytes = 4096;
const mib = arg('mib', 32);
const rounds = arg('rounds', 15);
const sendQueueBytes = arg('queue-kib', 1024) * 1024;
const frames = Math.floor((mib * 1024 * 1024) / payloadBytes);

async function socketPair(): Promise<[Socket, Socket]> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = once(srv, 'connection');
  const a = connect({ host: '127.0.0.1', port: (srv.address() as AddressInfo).port, writableHighWaterMark: sendQueueBytes } as unknown as Parameters<typeof connect>[0]);
  await once(a, 'connect');
  const [b] = (await accepted) as [Socket];
  srv.close();
  if (a.writableHighWaterMark !== sendQueueBytes) throw new Error(`socket writableHighWaterMark is ${a.writableHighWaterMark}, wanted ${sendQueueBytes}`);
  a.setNoDelay(true);
  b.setNoDelay(true);
  return [a, b];
}

const payloads = Array.from({ length: 64 }, (_, i) => Buffer.alloc(payloadBytes, i));

/**
 * Sends n items, batching every synchronous run of writes under one cork (one writev per
 * batch, as Link does per event-loop turn), waiting for 'drain' when the socket says so. The
 * same pump drives both modes, so the ratio measures framing, not batching.
 */
async function pump(sock: Socket, n: number, send: (i: number) => boolean): Promise<void> {
  let i = 0;
  while (i < n) {
    sock.cork();
    let ok = true;
    while (ok && i < n) ok = send(i++);
    sock.uncork();
    if (!ok) await once(sock, 'drain');
  }
}

async function runRaw(a: Socket, b: Socket): Promise<number> {
  let got = 0;
  const want = frames * payloadBytes;
  const done = new Promise<void>((r) => {
    const on = (c: Buffer) => {
      got += c.length;
      if (got >= want) {
        b.off('data', on);
        r();
      }
    };
    b.on('data', on);
  });
  const t0 = process.hrtime.bigint();
  await pump(a, frames, (i) => a.write(payloads[i & 63]!));
  await done;
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function runFramed(a: Socket, b: Socket): Promise<number> {
  const enc = new FrameEncoder();
  const reader = new MessageReader();
  let got = 0;
  let bytes = 0;
  const done = new Promise<void>((r) => {
    const on = (c: Buffer) => {
      reader.push(c, (m) => {
        if (m.type === 'WRITE') {
          got++;
          bytes += m.data.length;
        }
      });
      if (got >= frames) {
        b.off('data', on);
        r();
      }
    };
    b.on('data', on);
  });
  const t0 = process.hrtime.bigint();
  const msg: WriteMsg = { type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 0n, offsetBytes: 0n, data: payloads[0]! };
  await pump(a, frames, (i) => {
    msg.seq = BigInt(i);
    msg.offsetBytes = BigInt(i) * 4096n;
    msg.data = payloads[i & 63]!;
    const parts = enc.encode(msg);
    a.write(parts[0]!);
    return a.write(parts[1]!);
  });
  await done;
  if (bytes !== frames * payloadBytes) throw new Error(`framed run decoded ${bytes} payload bytes, sent ${frames * payloadBytes}`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** The same WRITEs through two authenticated Links (send()/whenWritable(), 'message' events, ACKs every 32 writes). */
async function runLink(a: Socket, b: Socket): Promise<number> {
  const secret = Buffer.alloc(32, 1);
  const common = { cluster: 'bench', secret, security: insecureLinks({ volumeBytes: 1n << 40n, blockBytes: 4096 }), sendQueueBytesMax: sendQueueBytes, heartbeatIntervalMs: 1000, linkTimeoutMs: 60_000 };
  const la = new Link(a, { ...common, role: 'dialer', site: 'primary', peer: 'mirror' });
  const lb = new Link(b, { ...common, role: 'listener', site: 'mirror', acceptPeer: () => true });
  await Promise.all([la.whenEstablished(), lb.whenEstablished()]);
  let got = 0;
  const done = new Promise<void>((r) => {
    lb.on('message', (m) => {
      if (m.type !== 'WRITE') return;
      // The mirror side acknowledges cumulatively every 32 writes (the window is 1024 writes).
      if (++got % 32 === 0 || got === frames) lb.send({ type: 'ACK', volumeId: 0, epoch: m.epoch, seq: m.seq });
      if (got === frames) r();
    });
  });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < frames; i++) {
    const ok = la.send({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: BigInt(i), offsetBytes: BigInt(i) * 4096n, data: payloads[i & 63]! });
    if (!ok) await la.whenWritable();
    else if ((i & 255) === 255) await new Promise((r) => setImmediate(r)); // let the corked batch go out
  }
  await done;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  la.close();
  return s;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)]!;
}

function perOp(fn: () => void, n: number): number {
  for (let i = 0; i < Math.min(n, 10_000); i++) fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn();
  return Number(process.hrtime.bigint() - t0) / n;
}

async function main(): Promise<void> {
  console.log(`bench:wire  node ${process.version}  ${frames} x ${payloadBytes} B = ${mib} MiB per run, ${rounds} rounds, alternating, send queue ${sendQueueBytes / 1024} KiB`);
  const raw: number[] = [];
  const framed: number[] = [];
  const viaLink: number[] = [];
  const ratios: number[] = [];
  const linkRatios: number[] = [];
  const mibps = (s: number) => (frames * payloadBytes) / s / 1048576;
  // Besides wall-clock MiB/s, MiB per CPU-second of this process (user + system: both socket
  // ends and the kernel's loopback copies run in it). On a loaded machine the wall clock
  // measures the scheduler; CPU time still measures the work each path does.
  const cpuRaw: number[] = [];
  const cpuFramed: number[] = [];
  const cpuLink: number[] = [];
  let lastCpu = 0;
  const once1 = async (fn: (a: Socket, b: Socket) => Promise<number>) => {
    const [x, y] = await socketPair();
    const c0 = process.cpuUsage();
    const v = mibps(await fn(x, y));
    const c = process.cpuUsage(c0);
    lastCpu = (frames * payloadBytes) / ((c.user + c.system) / 1e6) / 1048576;
    x.destroy();
    y.destroy();
    return v;
  };
  await once1(runRaw); // warm-up every path
  await once1(runFramed);
  await once1(runLink);
  // Short runs, alternated, order flipped every round, and the figure is the median of the
  // per-round ratios: on a shared machine the load drifts, and adjacent runs see the same load.
  for (let r = 0; r < rounds; r++) {
    let rr: number;
    let ff: number;
    if (r % 2 === 0) {
      rr = await once1(runRaw);
      cpuRaw.push(lastCpu);
      ff = await once1(runFramed);
      cpuFramed.push(lastCpu);
    } else {
      ff = await once1(runFramed);
      cpuFramed.push(lastCpu);
      rr = await once1(runRaw);
      cpuRaw.push(lastCpu);
    }
    const ll = await once1(runLink);
    cpuLink.push(lastCpu);
    raw.push(rr);
    framed.push(ff);
    viaLink.push(ll);
    ratios.push(ff / rr);
    linkRatios.push(ll / rr);
  }
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(' ');
  console.log(`unframed 4 KiB writes : median ${median(raw).toFixed(0)} MiB/s  [${fmt(raw)}]`);
  console.log(`framed 4 KiB WRITEs   : median ${median(framed).toFixed(0)} MiB/s  [${fmt(framed)}]`);
  console.log(`through Link.send()   : median ${median(viaLink).toFixed(0)} MiB/s  [${fmt(viaLink)}]`);
  console.log(`ratio framed/unframed : ${median(ratios).toFixed(3)}x median of ${rounds} adjacent-run ratios (goal >= 0.85x)  [${ratios.map((x) => x.toFixed(2)).join(' ')}]`);
  console.log(`ratio Link/unframed   : ${median(linkRatios).toFixed(3)}x`);
  const cr = median(cpuRaw);
  console.log(`per CPU-second        : unframed ${cr.toFixed(0)}, framed ${median(cpuFramed).toFixed(0)} (${(median(cpuFramed) / cr).toFixed(3)}x), Link ${median(cpuLink).toFixed(0)} (${(median(cpuLink) / cr).toFixed(3)}x) MiB per CPU-s`);
  console.log(`load average          : ${(await import('node:os')).loadavg().map((x) => x.toFixed(1)).join(' ')} on ${(await import('node:os')).cpus().length} CPUs`);

  console.log('\nchecksums (ns per call):');
  for (const size of [20, 4096 + 40]) {
    const buf = Buffer.alloc(size, 0xa5);
    const n = size < 100 ? 2_000_000 : 200_000;
    const row = [
      ['JS table', () => crc32Small(buf)],
      ['zlib.crc32', () => zlibCrc32(buf)],
      ['@node-rs crc32', () => rsCrc32(buf)],
      ['@node-rs crc32c', () => rsCrc32c(buf)],
    ] as const;
    const js = size < 100 ? row : row; // all measured at both sizes
    console.log(`  ${String(size).padStart(5)} B: ${js.map(([name, f]) => `${name} ${perOp(f, size < 100 ? n : n / 10).toFixed(0)}`).join(', ')}`);
  }

  const spec = specByName.get('WRITE')!;
  const h = Buffer.alloc(24 + 40);
  const fields = { volumeId: 0, flags: 1, reserved: 0, epoch: 7n, seq: 123456789n, offsetBytes: 4096n, lengthBytes: 4096, reserved2: 0 };
  const hand = perOp(() => {
    h.writeUInt32BE(0, 24);
    h.writeUInt16BE(1, 28);
    h.writeUInt16BE(0, 30);
    h.writeBigUInt64BE(7n, 32);
    h.writeBigUInt64BE(123456789n, 40);
    h.writeBigUInt64BE(4096n, 48);
    h.writeUInt32BE(4096, 56);
    h.writeUInt32BE(0, 60);
    writeHeader(h, 0, 0x10, 4136, 1, 0);
  }, 1_000_000);
  const bl = perOp(() => {
    spec.fixed.layout.encode(fields, h, 24);
    writeHeader(h, 0, 0x10, 4136, 1, 0);
  }, 1_000_000);
  const blDecode = perOp(() => spec.fixed.layout.decode(h, 24), 1_000_000);
  const handDecode = perOp(() => {
    h.readUInt32BE(24);
    h.readUInt16BE(28);
    h.readBigUInt64BE(32);
    h.readBigUInt64BE(40);
    h.readBigUInt64BE(48);
    h.readUInt32BE(56);
  }, 1_000_000);
  console.log(`\nWRITE header+fixed fields (ns per frame): hand-coded encode ${hand.toFixed(0)}, buffer-layout encode ${bl.toFixed(0)}; hand-coded decode ${handDecode.toFixed(0)}, buffer-layout decode ${blDecode.toFixed(0)}`);
}

main().then(
  () => process.exit(0),
  (e: Error) => {
    console.error(`bench:wire: ${e.stack ?? e.message}`);
    process.exit(1);
  },
);

// Links over real loopback TCP: two sites authenticate and exchange frames; wrong keys are
// refused on both sides with reasons; garbage, a 4 GiB length field and a wrong key on a
// listening port are each logged and closed while an authenticated peer keeps exchanging;
// heartbeats, RTT, link timeout, handshake timeout, backpressure and reconnect backoff.
import { randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Dialer, Link, LinkServer, ManualClock, insecureLinks, type LinkClose } from '../../src/net/index.js';
import { ErrorCode, MessageReader, ProtocolError, encodeFrame, type DataMessage, type Message, type WriteMsg } from '../../src/wire/index.js';
import { rawHeader } from '../conformance/vectors.js';
import { captureLogger, freePort, rawExchange, sendWritesKeepAll, until } from './helpers.js';

const secret = randomBytes(32);
const security = insecureLinks({ volumeBytes: 1n << 30n, blockBytes: 4096 });
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function startServer(opts: Partial<ConstructorParameters<typeof LinkServer>[0]> = {}) {
  const logger = captureLogger();
  const server = new LinkServer({ cluster: 'demo', site: 'east', secret, security, peers: ['local', 'standby'], host: '127.0.0.1', port: 0, logger, ...opts });
  const { port } = await server.listen();
  cleanups.push(() => server.close());
  return { server, port, logger };
}

function startDialer(port: number, opts: Partial<ConstructorParameters<typeof Dialer>[0]> = {}) {
  const logger = captureLogger();
  const dialer = new Dialer({ cluster: 'demo', site: 'local', peer: 'east', secret, security, host: '127.0.0.1', port, logger, backoffMsMin: 20, backoffMsMax: 200, ...opts });
  dialer.start();
  cleanups.push(() => dialer.stop());
  return { dialer, logger };
}

function write(seq: bigint, fill: number): WriteMsg {
  return { type: 'WRITE', volumeId: 0, flags: 1, epoch: 1n, seq, offsetBytes: (seq % 1000n) * 4096n, data: Buffer.alloc(4096, fill) };
}

/** Echo server behaviour: ACK every WRITE it gets. */
function ackWrites(link: Link, got: WriteMsg[]): void {
  link.on('message', (m: DataMessage) => {
    if (m.type !== 'WRITE') return;
    got.push({ ...m, data: Buffer.from(m.data) });
    link.send({ type: 'ACK', volumeId: 0, epoch: m.epoch, seq: m.seq });
  });
}

async function exchange(link: Link, seqs: bigint[]): Promise<bigint[]> {
  const acked: bigint[] = [];
  const onMsg = (m: DataMessage) => {
    if (m.type === 'ACK') acked.push(m.seq);
  };
  link.on('message', onMsg);
  for (const s of seqs) link.send(write(s, Number(s % 251n)));
  await until(() => acked.length === seqs.length, 'ACKs');
  link.off('message', onMsg);
  return acked;
}

describe('Link over TCP', () => {
  it('two sites authenticate both ways and exchange WRITEs and ACKs (bytes compared)', async () => {
    const { server, port, logger } = await startServer();
    const got: WriteMsg[] = [];
    server.on('link', (l) => ackWrites(l, got));
    const { dialer } = startDialer(port);
    const link = await new Promise<Link>((r) => dialer.once('link', r));
    expect(link.peer).toBe('east');
    await until(() => server.link('local') !== undefined, 'server side link');
    expect(server.link('local')!.peer).toBe('local');
    const acked = await exchange(link, [1n, 2n, 3n, 2n ** 60n]);
    expect(acked).toEqual([1n, 2n, 3n, 2n ** 60n]);
    expect(got.map((w) => w.seq)).toEqual(acked);
    for (const w of got) expect(Buffer.compare(w.data, Buffer.alloc(4096, Number(w.seq % 251n)))).toBe(0);
    expect(logger.lines.some((l) => l.msg === 'link established' && l.obj.peer === 'local')).toBe(true);
  });

  it('received payloads of 1 B..1 MiB stay intact while kept, both directions (reused read buffers)', async () => {
    const { server, port } = await startServer();
    const { dialer } = startDialer(port);
    const link = await new Promise<Link>((r) => dialer.once('link', r));
    await until(() => server.link('local') !== undefined, 'server side link');
    await sendWritesKeepAll(link, server.link('local')!);
    await sendWritesKeepAll(server.link('local')!, link, 18);
  });

  it('a wrong key is refused on both sides, each logging the reason', async () => {
    const { server, port, logger: serverLog } = await startServer();
    const refused: unknown[] = [];
    server.on('refused', (r) => refused.push(r));
    const { dialer, logger: dialLog } = startDialer(port, { secret: randomBytes(32) });
    const failed = await new Promise<{ reason: string }>((r) => dialer.once('attempt-failed', r));
    dialer.stop();
    expect(failed.reason).toContain('AUTH_FAILED');
    await until(() => refused.length > 0, 'server refusal');
    const s = serverLog.lines.find((l) => l.msg === 'link refused')!;
    expect(s.obj.codeName).toBe('AUTH_FAILED');
    expect(String(s.obj.reason)).toContain("'local' failed to prove the cluster secret");
    expect(String(s.obj.remote)).toMatch(/^127\.0\.0\.1:\d+$/);
    const d = dialLog.lines.find((l) => l.msg === 'link refused by peer')!;
    expect(d.obj.codeName).toBe('AUTH_FAILED');
  });

  it('the dialer refuses a listener that is not the site it dialed (WRONG_SITE, logged by the dialer)', async () => {
    const { port } = await startServer({ site: 'west' }); // HELLO says target 'east': west refuses first
    const { dialer, logger } = startDialer(port);
    const failed = await new Promise<{ reason: string }>((r) => dialer.once('attempt-failed', r));
    dialer.stop();
    expect(failed.reason).toContain('WRONG_SITE');
    expect(logger.lines.find((l) => l.msg === 'link refused by peer')?.obj.codeName).toBe('WRONG_SITE');
  });

  it('random bytes, a 4 GiB length field and a wrong key are each logged and closed while the primary keeps exchanging', async () => {
    const { server, port, logger } = await startServer();
    const got: WriteMsg[] = [];
    server.on('link', (l) => ackWrites(l, got));
    const { dialer } = startDialer(port);
    const link = await new Promise<Link>((r) => dialer.once('link', r));
    expect(await exchange(link, [1n])).toEqual([1n]);

    const refusalCode = (bytes: Buffer) => {
      const r = new MessageReader();
      const msgs: Message[] = [];
      try {
        r.push(bytes, (m) => msgs.push(m));
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
      }
      const m = msgs.find((x) => x.type === 'REFUSE');
      return m?.type === 'REFUSE' ? m.code : undefined;
    };
    const garbage = await rawExchange(port, randomBytes(3000).fill(0x00, 0, 1));
    expect(refusalCode(garbage.received)).toBe(ErrorCode.BAD_MAGIC);
    expect(await exchange(link, [2n])).toEqual([2n]);

    const huge = await rawExchange(port, rawHeader({ type: 0x10, bodyBytes: 0xffffffff }));
    expect(refusalCode(huge.received)).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(await exchange(link, [3n])).toEqual([3n]);

    const { dialer: bad } = startDialer(port, { secret: randomBytes(32), site: 'standby' });
    await new Promise((r) => bad.once('attempt-failed', r));
    bad.stop();
    expect(await exchange(link, [4n])).toEqual([4n]);

    const refusals = logger.lines.filter((l) => l.msg === 'link refused');
    const byCode = (c: string) => refusals.find((l) => l.obj.codeName === c);
    expect(byCode('BAD_MAGIC')?.obj.remote).toBe(garbage.local);
    expect(byCode('FRAME_TOO_LARGE')?.obj.remote).toBe(huge.local);
    expect(String(byCode('FRAME_TOO_LARGE')?.obj.reason)).toContain('4294967295');
    expect(byCode('AUTH_FAILED')?.obj.reason).toContain("'standby'");
    expect(server.link('local')).toBe(server.links[0]);
    expect(got.map((w) => w.seq)).toEqual([1n, 2n, 3n, 4n]);
  });

  it('a data frame before authentication is refused with NOT_AUTHENTICATED', async () => {
    const { port, logger } = await startServer();
    const res = await rawExchange(port, encodeFrame(write(1n, 1), 0));
    const r = new MessageReader();
    const msgs: Message[] = [];
    r.push(res.received, (m) => msgs.push(m));
    expect(msgs[0]).toMatchObject({ type: 'REFUSE', code: ErrorCode.NOT_AUTHENTICATED });
    expect(logger.lines.some((l) => l.obj.codeName === 'NOT_AUTHENTICATED')).toBe(true);
  });
});

/** Two Links over one real loopback connection, timers on a ManualClock. */
async function linkedPair(clock: ManualClock, extra: { heartbeatIntervalMs?: number; linkTimeoutMs?: number; frameDeadlineMs?: number; sendQueueBytesMax?: number; inflightWritesMax?: number; clockB?: ManualClock; windowB?: number } = {}) {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const a = connect({ host: '127.0.0.1', port: (srv.address() as AddressInfo).port });
  await new Promise((r) => a.once('connect', r));
  const b = await accepted;
  srv.close();
  const { clockB, windowB, ...timing } = extra;
  const common = { cluster: 'demo', secret, security, clock, heartbeatIntervalMs: 100, linkTimeoutMs: 500, frameDeadlineMs: 2000, ...timing };
  const logA = captureLogger();
  const logB = captureLogger();
  const la = new Link(a, { ...common, role: 'dialer', site: 'local', peer: 'east', logger: logA });
  const lb = new Link(b, { ...common, clock: clockB ?? clock, ...(windowB ? { inflightWritesMax: windowB } : {}), role: 'listener', site: 'east', acceptPeer: (s) => s === 'local', logger: logB });
  cleanups.push(() => {
    a.destroy();
    b.destroy();
  });
  await Promise.all([la.whenEstablished(), lb.whenEstablished()]);
  return { la, lb, a, b, logA, logB };
}

describe('Link timers (ManualClock)', () => {
  it('heartbeats flow both ways and measure RTT from the echo', async () => {
    const clock = new ManualClock();
    const { la, lb } = await linkedPair(clock);
    const beats: number[] = [];
    la.on('heartbeat', (_m, rtt) => rtt !== undefined && beats.push(rtt));
    for (let i = 0; i < 4 && beats.length === 0; i++) {
      const before = lb.framesRx + la.framesRx;
      clock.advance(100);
      await until(() => lb.framesRx + la.framesRx >= before + 2, 'heartbeats');
    }
    expect(beats.length).toBeGreaterThan(0);
    // No clock time passes while frames are in flight, so the RTT is exactly 0 here.
    expect(la.rttMs).toBe(0);
    expect(la.state).toBe('established');
  });

  it('an authenticated peer that trickles a frame byte by byte is cut after frameDeadlineMs, though bytes keep coming', async () => {
    const clock = new ManualClock();
    // The dialer's clock never moves (it sends no heartbeats into our hand-made bytes).
    const { la, lb, a, logB } = await linkedPair(new ManualClock(), { clockB: clock, heartbeatIntervalMs: 100, linkTimeoutMs: 500 });
    const closed = new Promise<LinkClose>((r) => lb.once('close', r));
    // The start of a 4 KiB WRITE (encoded by hand, frameSeq continuing the dialer's frames),
    // then one byte per 100 ms: always something received, never a whole frame.
    const frame = encodeFrame(write(1n, 1), la.framesTx);
    let sent = 0;
    for (let t = 0; t < 40 && lb.state === 'established'; t++) {
      a.write(frame.subarray(sent, sent + (t === 0 ? 30 : 1)));
      sent += t === 0 ? 30 : 1;
      await new Promise((r) => setTimeout(r, 2));
      clock.advance(100);
    }
    const info = await closed;
    expect(info.code).toBe(ErrorCode.LINK_TIMEOUT);
    expect(info.reason).toMatch(/bytes of a frame and no complete frame for \d+ ms \(frameDeadlineMs 2000\)/);
    expect(logB.lines.some((l) => /no complete frame/.test(String(l.obj.reason)))).toBe(true);
  });

  it('a silent peer is declared dead after linkTimeoutMs (LINK_TIMEOUT on both logs)', async () => {
    const clock = new ManualClock();
    // The peer runs on its own clock, which never moves: after its first heartbeat it falls silent.
    const { la, logA } = await linkedPair(clock, { clockB: new ManualClock() });
    const closed = new Promise<LinkClose>((r) => la.once('close', r));
    clock.advance(600);
    const info = await closed;
    expect(info.code).toBe(ErrorCode.LINK_TIMEOUT);
    expect(info.by).toBe('local');
    expect(logA.lines.some((l) => l.obj.codeName === 'LINK_TIMEOUT')).toBe(true);
    expect(la.state).toBe('closed');
  });

  it('a connection that never handshakes is refused after handshakeTimeoutMs', async () => {
    const clock = new ManualClock();
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const accepted = new Promise<Socket>((r) => srv.once('connection', r));
    const a = connect({ host: '127.0.0.1', port: (srv.address() as AddressInfo).port });
    const b = await accepted;
    srv.close();
    cleanups.push(() => a.destroy());
    const log = captureLogger();
    const lb = new Link(b, { role: 'listener', cluster: 'demo', site: 'east', secret, security, acceptPeer: () => true, clock, logger: log, handshakeTimeoutMs: 3000 });
    const closed = new Promise<LinkClose>((r) => lb.once('close', r));
    const peerClosed = new Promise((r) => a.once('close', r));
    a.on('error', () => {});
    a.resume();
    clock.advance(3000);
    expect((await closed).code).toBe(ErrorCode.HANDSHAKE_TIMEOUT);
    await peerClosed;
    expect(log.lines.find((l) => l.msg === 'link refused')?.obj.codeName).toBe('HANDSHAKE_TIMEOUT');
  });

  it('backpressure: send() says wait at sendQueueBytesMax, refuses beyond, whenWritable() resolves on drain', async () => {
    const clock = new ManualClock();
    const { la, lb } = await linkedPair(clock, { sendQueueBytesMax: 256 * 1024 });
    const received: bigint[] = [];
    lb.on('message', (m) => m.type === 'WRITE' && received.push(m.seq));
    lb.socket.pause();
    let seq = 0n;
    const big = (s: bigint): WriteMsg => ({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: s, offsetBytes: 0n, data: Buffer.alloc(1024 * 1024, 7) });
    // Send until the queue stays full after the socket had its turn (the kernel buffers take
    // megabytes first; frames of one turn are corked into one writev).
    for (;;) {
      expect(seq).toBeLessThan(1000n);
      if (la.send(big(++seq))) continue;
      await new Promise((r) => setTimeout(r, 10));
      if (la.queuedBytes >= 256 * 1024) break;
      await la.whenWritable();
    }
    expect(la.queuedBytes).toBeGreaterThanOrEqual(256 * 1024);
    expect(() => la.send(big(seq + 1n))).toThrow(/sendQueueBytesMax/);
    let writable = false;
    const w = la.whenWritable().then(() => (writable = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(writable).toBe(false);
    lb.socket.resume();
    await w;
    expect(la.queuedBytes).toBeLessThan(256 * 1024);
    await until(() => received.length === Number(seq), 'all writes delivered');
    expect(received).toEqual(Array.from({ length: Number(seq) }, (_, i) => BigInt(i + 1)));
  });

  it('in-flight window: send() says wait at inflightWritesMax, refuses beyond, reopens on a cumulative ACK', async () => {
    const clock = new ManualClock();
    const { la, lb } = await linkedPair(clock, { inflightWritesMax: 4 });
    const got: bigint[] = [];
    lb.on('message', (m) => m.type === 'WRITE' && got.push(m.seq));
    expect([1n, 2n, 3n, 4n].map((s) => la.send(write(s, 1)))).toEqual([true, true, true, false]);
    expect(() => la.send(write(5n, 1))).toThrow(/in-flight window is full/);
    let open = false;
    const w = la.whenWritable().then(() => (open = true));
    await until(() => got.length === 4, 'writes delivered');
    expect(open).toBe(false);
    lb.send({ type: 'WRITE_ACK', volumeId: 0, status: 0, senseKey: 0, asc: 0, ascq: 0, epoch: 1n, seq: 1n });
    await w;
    expect(la.sendWindow.writes).toBe(3);
    lb.send({ type: 'ACK', volumeId: 0, epoch: 1n, seq: 4n });
    await until(() => la.sendWindow.writes === 0, 'cumulative ACK');
    expect(la.send(write(5n, 1))).toBe(true);
  });

  it('a peer that exceeds the receive window is closed with WINDOW_EXCEEDED', async () => {
    const clock = new ManualClock();
    const { la, lb, logB } = await linkedPair(clock, { windowB: 2 });
    const closed = new Promise<LinkClose>((r) => la.once('close', r));
    for (const s of [1n, 2n, 3n]) la.send(write(s, 2));
    const info = await closed;
    expect(info).toMatchObject({ code: ErrorCode.WINDOW_EXCEEDED, by: 'peer' });
    expect(logB.lines.find((l) => l.msg === 'link closed')?.obj.codeName).toBe('WINDOW_EXCEEDED');
    expect(lb.state).toBe('closed');
  });

  it('the dialer logs the first failure, then at most one summary per interval with a count (not a line per retry)', async () => {
    const clock = new ManualClock();
    const port = await freePort();
    const logger = captureLogger();
    let fails = 0;
    let downMs = 0;
    const dialer = new Dialer({ cluster: 'demo', site: 'local', peer: 'east', secret, security, host: '127.0.0.1', port, clock, logger, random: () => 0.5, backoffMsMin: 100, backoffMsMax: 1000, downLogIntervalMs: 5000 });
    cleanups.push(() => dialer.stop());
    dialer.on('attempt-failed', (f) => {
      fails++;
      downMs += f.retryInMs;
      setImmediate(() => clock.advance(f.retryInMs)); // retry at once (the clock is ours)
    });
    dialer.start();
    await until(() => fails >= 20, '20 failed attempts');
    dialer.stop();
    const down = logger.lines.filter((l) => /link to peer (down|still down)/.test(l.msg));
    // 20 attempts, ~750 ms apart once backed off (~13 s of downtime): the first line, then one
    // summary per 5 s of (manual) clock, never one per attempt.
    expect(down[0]!.msg).toBe('link to peer down; reconnecting');
    expect(down.length).toBeGreaterThanOrEqual(2);
    expect(down.length).toBeLessThanOrEqual(2 + Math.floor(downMs / 5000));
    expect(down.length).toBeLessThan(fails / 2);
    const summaries = down.slice(1);
    expect(summaries.every((l) => /still down: \d+ failed attempt\(s\)/.test(l.msg) && typeof l.obj.failedAttempts === 'number')).toBe(true);
  });

  it('the dialer reconnects with exponential backoff and jitter until a listener appears', async () => {
    const clock = new ManualClock();
    const port = await freePort();
    const fails: { attempt: number; retryInMs: number }[] = [];
    const dialer = new Dialer({ cluster: 'demo', site: 'local', peer: 'east', secret, security, host: '127.0.0.1', port, clock, random: () => 0.5, backoffMsMin: 100, backoffMsMax: 1000 });
    cleanups.push(() => dialer.stop());
    dialer.on('attempt-failed', (f) => fails.push(f));
    dialer.start();
    for (let i = 1; i <= 6; i++) {
      await until(() => fails.length === i, `failed attempt ${i}`);
      clock.advance(fails[i - 1]!.retryInMs);
    }
    // 0.75 x min(1000, 100 * 2^(n-1))
    await until(() => fails.length === 7, 'failed attempt 7');
    expect(fails.map((f) => f.retryInMs)).toEqual([75, 150, 300, 600, 750, 750, 750]);
    const server = new LinkServer({ cluster: 'demo', site: 'east', secret, security, peers: ['local'], host: '127.0.0.1', port, clock });
    await server.listen();
    cleanups.push(() => server.close());
    const linked = new Promise<Link>((r) => dialer.once('link', r));
    clock.advance(fails[6]!.retryInMs);
    const link = await linked;
    expect(link.peer).toBe('east');
  });
});

describe('InflightWindow', () => {
  it('counts a re-sent write once, acks one by (epoch, seq) and cumulatively up to (epoch, seq)', async () => {
    const { InflightWindow } = await import('../../src/net/index.js');
    const w = new InflightWindow(3, 100);
    w.add(1n, 1n, 10);
    w.add(1n, 2n, 10);
    w.add(1n, 2n, 10); // re-sent
    expect([w.writes, w.bytes]).toEqual([2, 20]);
    w.ackOne(2n, 1n); // wrong epoch: no effect
    expect(w.writes).toBe(2);
    w.add(1n, 3n, 80);
    expect([w.open, w.fits(1)]).toEqual([false, false]);
    w.ackOne(1n, 2n);
    expect([w.writes, w.bytes, w.fits(10), w.fits(11)]).toEqual([2, 90, true, false]);
    w.add(2n, 4n, 5);
    w.ackUpTo(1n, 3n);
    expect([w.writes, w.bytes]).toEqual([1, 5]);
    w.ackUpTo(2n, 4n);
    expect([w.writes, w.bytes]).toEqual([0, 0]);
  });
});

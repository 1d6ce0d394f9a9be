// Issue 17 acceptance, multi-process on 127.0.0.1 (geomirror site processes, TLS by default):
//  - an on-path TCP proxy between the primary and mirror east never sees a marker written over
//    NBD; flipping a byte or injecting a frame closes the link, nothing forged is applied, the
//    primary does not show east in sync while the link is cut, and east resyncs when it returns;
//    every replica file hashes equal to what the host wrote;
//  - a 3,000-connection flood at east's replication port and another at the primary's NBD port, while
//    east is restarted (so the primary must get back in) and a well-behaved NBD client connects
//    and writes: east rejoins in sync, the writes are acked, replicas hash equal.
import { connect, type Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeFrame } from '../../src/wire/index.js';
import { applyWrites, Cluster, NbdWriter, planWrites, sha256, sleep, type PlannedWrite } from './harness.js';

const MiB = 1024 * 1024;
const testTimeoutMs = 240_000;
const clusters: Cluster[] = [];
const writers: NbdWriter[] = [];
afterAll(async () => {
  for (const w of writers.splice(0)) w.close();
  for (const c of clusters.splice(0)) await c.destroy();
});

async function cluster(opts: Parameters<typeof Cluster.create>[0]): Promise<Cluster> {
  const c = await Cluster.create(opts);
  clusters.push(c);
  await c.start();
  await c.waitInSync();
  return c;
}

async function writeAll(c: Cluster, writes: readonly PlannedWrite[]): Promise<void> {
  const w = await NbdWriter.connect(c.nbdPort);
  writers.push(w);
  expect(await w.run(writes, 8)).toEqual([]);
  await w.flush();
  w.close();
}

function expectReplicas(c: Cluster, expected: Buffer): void {
  const want = sha256(expected);
  expect(Object.fromEntries(c.names.map((n) => [n, c.hash(n)]))).toEqual(Object.fromEntries(c.names.map((n) => [n, want])));
}

const eastSync = (s: { peers: { name: string; sync?: string; link: string }[] }) => s.peers.find((p) => p.name === 'east');

describe('trusted links (issue 17), as processes', () => {
  it('an on-path proxy sees no plaintext; a flipped byte or an injected frame cuts the link, nothing is applied, east is not shown in sync, then resyncs', { timeout: testTimeoutMs }, async () => {
    const c = await cluster({ proxies: true, volumeBytes: 32 * MiB });
    let image: Buffer = Buffer.alloc(c.volumeBytes);
    const proxy = c.proxies.get('local->east')!;
    proxy.recorded = [];
    // A marker over NBD: it reaches east's image, never the wire in the clear.
    const marker = Buffer.from('GEOMIRROR-TRUST-MARKER-7f3a9c-');
    const block = Buffer.alloc(64 * 1024);
    for (let i = 0; i + marker.length <= block.length; i += marker.length) marker.copy(block, i);
    const markerWrites: PlannedWrite[] = [{ index: 0, offsetBytes: 1 * MiB, data: block }];
    await writeAll(c, markerWrites);
    image = applyWrites(image, markerWrites);
    await c.waitInSync();
    const seen = Buffer.concat(proxy.recorded!);
    proxy.recorded = undefined;
    expect(seen.length).toBeGreaterThan(block.length); // the write did go through this proxy
    expect(seen.includes(marker)).toBe(false);
    expect(seen.includes(marker.subarray(0, 12))).toBe(false);
    expect(c.storage('east').includes(marker)).toBe(true);

    // Attack 1: flip one byte of every chunk towards east for a while (the link cannot come up).
    let flipped = 0;
    proxy.tamper = (dir, chunk) => {
      if (dir !== 'up' || chunk.length === 0) return chunk;
      const out = Buffer.from(chunk);
      out[Math.floor(out.length / 2)]! ^= 0x01;
      flipped++;
      return out;
    };
    const during = planWrites(1701, c.volumeBytes, 2 * MiB);
    const w = await NbdWriter.connect(c.nbdPort);
    writers.push(w);
    const run = w.run(during, 4);
    // The primary must not call east in sync while the link is cut.
    await c.waitStatus('local', (s) => flipped > 0 && eastSync(s)?.sync !== 'in-sync', 'east not in sync while its link is tampered with');
    await sleep(1500);
    const st = await c.status('local');
    expect(eastSync(st!)?.sync).not.toBe('in-sync');
    expect(await run).toEqual([]); // degrade: host writes go on (west and local have them)
    await w.flush();
    image = applyWrites(image, during);
    proxy.tamper = undefined;
    // TLS caught it: east logged a failed record (bad MAC), never a decoded forged frame.
    const lost = c.logRecords('east').filter((r) => r.msg === 'link lost' || r.msg === 'link refused').map((r) => String(r.reason));
    expect(lost.some((r) => /TLS (error|handshake)/.test(r)), JSON.stringify(lost)).toBe(true);
    await c.waitInSync();
    expectReplicas(c, image);

    // Attack 2: inject a well-formed (plaintext) replication frame into the live TLS stream.
    const forged = Buffer.alloc(4096, 0xee);
    const frame = encodeFrame({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n << 40n, offsetBytes: 0n, data: forged }, 7);
    const downsBefore = c.logRecords('local').filter((r) => r.event === 'link-down' && r.peer === 'east').length;
    expect(proxy.inject('up', frame)).toBeGreaterThan(0);
    await c.waitStatus('local', () => c.logRecords('local').filter((r) => r.event === 'link-down' && r.peer === 'east').length > downsBefore, 'the injected frame closes the link');
    await c.waitInSync();
    expect(c.storage('east').includes(forged.subarray(0, 1024))).toBe(false); // nothing forged applied
    expectReplicas(c, image);
    expect(c.allRunning).toBe(true);
  });

  it('a 3,000-connection flood at a replication port and at the NBD port: the configured peers and a well-behaved NBD client still connect and work', { timeout: testTimeoutMs }, async () => {
    const c = await cluster({ volumeBytes: 32 * MiB });
    let image: Buffer = Buffer.alloc(c.volumeBytes);
    const targets = [c.listenPorts.get('east')!, c.nbdPort];
    // 3,000 at each port (the acceptance's count per port, not in all).
    const flood = new Flood(targets, 3000 * targets.length);
    try {
      await flood.start();
      // Kill east: the primary must dial in through the flood when it comes back.
      await c.kill9('east');
      const writes = planWrites(1702, c.volumeBytes, 4 * MiB);
      // A well-behaved NBD client connects during the flood and writes (degraded: east down).
      await writeAll(c, writes.slice(0, writes.length / 2));
      await c.restart('east');
      await writeAll(c, writes.slice(writes.length / 2));
      image = applyWrites(image, writes);
      await c.waitInSync();
      for (const port of targets) expect(flood.openedTo.get(port), `connections opened to port ${port}`).toBeGreaterThanOrEqual(3000);
    } finally {
      flood.stop();
    }
    expectReplicas(c, image);
    // Both ports said they were shedding unidentified connections (rate-limited lines).
    expect(c.logRecords('east').some((r) => /connection flood/.test(String(r.msg)))).toBe(true);
    expect(c.logRecords('local').some((r) => /connection flood/.test(String(r.msg)))).toBe(true);
    expect(c.allRunning).toBe(true);
  });
});

/**
 * Opens `total` idle TCP connections spread over `ports` (from this process, 127.0.0.1), and
 * keeps the pressure on: every connection the server closes is opened again (after a short
 * pause) until stop().
 */
class Flood {
  opened = 0;
  /** Connections opened per port (reopened ones count again). */
  readonly openedTo = new Map<number, number>();
  private stopped = false;
  private readonly sockets = new Set<Socket>();
  constructor(private readonly ports: number[], private readonly total: number) {}

  async start(): Promise<void> {
    const batch = 250;
    for (let i = 0; i < this.total; i += batch) {
      await Promise.all(Array.from({ length: Math.min(batch, this.total - i) }, (_, j) => this.open(this.ports[(i + j) % this.ports.length]!)));
    }
  }

  private open(port: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped) return resolve();
      const s = connect({ host: '127.0.0.1', port });
      this.sockets.add(s);
      this.opened++;
      this.openedTo.set(port, (this.openedTo.get(port) ?? 0) + 1);
      s.on('error', () => undefined);
      s.once('connect', () => resolve());
      s.once('close', () => {
        this.sockets.delete(s);
        resolve();
        if (!this.stopped) setTimeout(() => void this.open(port), 20);
      });
    });
  }

  stop(): void {
    this.stopped = true;
    for (const s of this.sockets) s.destroy();
  }
}

// Issue 17 items 3 and 4, multi-process on 127.0.0.1 (geomirror site processes, mutual TLS): real
// sites of the cluster, dialing with their own certificate and the cluster key as they would
// (test/e2e/rogue-peer.ts), send frames their role does not allow or that no volume can hold.
//
// Topology: primary `local` (listening, so it can be dialed) fans out to mirrors east and west and
// to relay r1, which forwards to mirror far; a witness `judge`. Every link goes through a proxy,
// so a test can cut the primary off a mirror and speak as that mirror's upstream.
//
//  - not the upstream: west and r1 (sites elsewhere) to east, local and east to far (the primary
//    is not the upstream of a site behind a relay), the witness to east, a site with a
//    certificate from the cluster CA that the cluster file does not name, and any site to the
//    witness: EPOCH, WRITE, RESYNC_DATA, FENCE, IN_SYNC are refused, each with a log line
//    naming the peer; nothing changes, the primary writes on and is never fenced;
//  - malformed but authenticated, from the real upstream's identity: past the end, straddling
//    it, zero length, seq 2^64-1, an epoch jump, an offset past 2^53, another volume, a read past
//    the end, reserved bits; from a mirror's identity to the primary: resync ranges past the
//    end; and a geometry mismatch at the handshake (a dialer claiming another volume size, and
//    a real site started from a cluster file with another size): each closes that link with a
//    logged reason, the site stays up and serves its real upstream, replicas stay identical.
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig, type ClusterConfig } from '../../src/site/config.js';
import { issueSiteCert } from '../../src/site/pki.js';
import { ErrorCode, type Message } from '../../src/wire/index.js';
import { applyWrites, Cluster, NbdWriter, planWrites, sha256, sleep, type PlannedWrite } from './harness.js';
import { RoguePeer, RogueRefused, bodyOf, type RogueClose } from './rogue-peer.js';

const MiB = 1024 * 1024;
const testTimeoutMs = 240_000;
const u64Max = (1n << 64n) - 1n;
/** How long a refused frame may take to close its link (a bound on the wait, not a timing check). */
const closeWaitMs = 10_000;

let c: Cluster;
let config: ClusterConfig;
let image: Buffer;
const writers: NbdWriter[] = [];

beforeAll(async () => {
  c = await Cluster.create({ volumeBytes: 16 * MiB, primaryListen: true, relay: { name: 'r1', leaf: 'far' }, witness: 'judge', proxies: true });
  await c.start();
  await c.waitInSync();
  config = loadConfig(c.configPath);
  image = Buffer.alloc(c.volumeBytes);
  await writeAll(planWrites(1711, c.volumeBytes, 2 * MiB));
}, 120_000);

afterAll(async () => {
  for (const w of writers.splice(0)) w.close();
  await c?.destroy();
});

async function writeAll(writes: readonly PlannedWrite[]): Promise<void> {
  const w = await NbdWriter.connect(c.nbdPort);
  writers.push(w);
  expect(await w.run(writes, 8)).toEqual([]);
  await w.flush();
  w.close();
  image = applyWrites(image, writes);
}

/** Every replica (the relay keeps a copy too) holds exactly what the host wrote. */
async function expectReplicasIdentical(): Promise<void> {
  await c.waitInSync();
  const want = sha256(image);
  const sites = c.names.filter((n) => n !== 'judge');
  expect(Object.fromEntries(sites.map((n) => [n, c.hash(n)]))).toEqual(Object.fromEntries(sites.map((n) => [n, want])));
}

/** Nobody moved an epoch, the primary is still the primary and was never fenced. */
async function expectNoEpochMoved(): Promise<void> {
  const local = await c.status('local');
  expect(local).toMatchObject({ role: 'primary', epoch: 1 });
  expect(local!.configuredRole ?? 'primary').toBe('primary');
  expect(local!.failovers ?? []).toEqual([]);
  for (const n of c.names) expect((await c.status(n))?.epoch, n).toBe(1);
}

/** Dials `target` as `as` (its real listen port, no proxy) and sends `frames`; resolves with how the link ended. */
async function attack(as: string, target: string, frames: readonly Message[], cfg: ClusterConfig = config): Promise<RogueClose> {
  const r = await RoguePeer.connect({ config: cfg, as, target, port: c.listenPorts.get(target)!, heartbeatEpoch: 1n });
  for (const f of frames) r.send(f);
  r.send({ type: 'STATUS_REQUEST', requestId: 1 });
  const closed = await Promise.race([r.whenClosed(), sleep(closeWaitMs).then(() => undefined)]);
  r.close();
  if (closed === undefined) throw new Error(`${as} -> ${target}: ${frames.map((f) => f.type).join(', ')} did not close the link within ${closeWaitMs} ms; received ${r.received.map((m) => m.type).join(', ')}`);
  return closed;
}

/**
 * Whether `site`'s log gets a record `pred` accepts (it is written by the site process through a
 * pipe, so it may land a moment after the frame that closed the link): polled, bounded.
 */
async function logged(site: string, pred: (r: Record<string, unknown>) => boolean): Promise<boolean> {
  const deadline = Date.now() + closeWaitMs;
  for (;;) {
    if (c.logRecords(site).some(pred)) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** The target logged a warning naming `peer` whose reason matches (the edge's frame-refused, or the core's own event). */
function refusalLogged(target: string, peer: string, pattern: RegExp): Promise<boolean> {
  return logged(target, (r) => r.peer === peer && r.level === 'warn' && pattern.test(String(r.reason ?? '')));
}

const marker = Buffer.alloc(4096, 0);
Buffer.from('GEOMIRROR-FORGED-BLOCK-17-').copy(marker);

/** The frames an upstream sends, as a site that is not one would forge them. */
function upstreamFrames(as: string): [string, Message][] {
  return [
    ['EPOCH +1', { type: 'EPOCH', epoch: 2n, agreedLastSeq: 0n, primary: as }],
    ['EPOCH +1000', { type: 'EPOCH', epoch: 1001n, agreedLastSeq: 0n, primary: as }],
    ['WRITE', { type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n << 40n, offsetBytes: 0n, data: marker }],
    ['RESYNC_DATA', { type: 'RESYNC_DATA', volumeId: 0, flags: 1, epoch: 1n, resyncId: 1n, offsetBytes: BigInt(MiB), data: marker }],
    ['FENCE', { type: 'FENCE', currentEpoch: 5n, refusedEpoch: 1n, primary: as, reason: `${as} says stop` }],
    ['IN_SYNC', { type: 'IN_SYNC', volumeId: 0, epoch: 1n, seq: u64Max - 1n }],
  ];
}

describe('hostile peers (issue 17 items 3-4), as processes', () => {
  it('a real site that is not the upstream (another mirror, a relay elsewhere, the primary to a site behind a relay, the witness) sends EPOCH, WRITE, RESYNC_DATA, FENCE, IN_SYNC: each refused with the peer named, nothing changes, the primary writes on unfenced', { timeout: testTimeoutMs }, async () => {
    const hashesBefore = Object.fromEntries(['east', 'far'].map((n) => [n, c.hash(n)]));
    // The host keeps writing through the primary while the attacks run.
    const during = planWrites(1712, c.volumeBytes, 3 * MiB);
    const w = await NbdWriter.connect(c.nbdPort);
    writers.push(w);
    const run = w.run(during, 4);
    const pairs: [string, string][] = [['west', 'east'], ['r1', 'east'], ['far', 'east'], ['judge', 'east'], ['local', 'far'], ['east', 'far']];
    for (const [as, target] of pairs) {
      for (const [what, frame] of upstreamFrames(as)) {
        const closed = await attack(as, target, [frame]);
        expect(closed, `${what} ${as} -> ${target}`).toMatchObject({ by: 'peer', code: ErrorCode.REFUSED });
        expect(closed.reason, `${what} ${as} -> ${target}`).toMatch(new RegExp(`^${as} sent ${frame.type}, which only .* may send to ${target}`));
        expect(await refusalLogged(target, as, new RegExp(`^${as} sent ${frame.type}`)), `${target} logged the refusal of ${what} from ${as}`).toBe(true);
      }
    }
    expect(await run).toEqual([]);
    await w.flush();
    image = applyWrites(image, during);
    expect(c.allRunning).toBe(true);
    await expectNoEpochMoved();
    await expectReplicasIdentical();
    for (const n of c.names.filter((x) => x !== 'judge')) expect(c.storage(n).includes(marker.subarray(0, 26)), `forged block in ${n}`).toBe(false);
    expect(hashesBefore.east).not.toBe(c.hash('east')); // the host's writes did land meanwhile
    // The primary wrote on: more writes after the attacks, acked by every mirror.
    await writeAll(planWrites(1713, c.volumeBytes, 1 * MiB));
    await expectReplicasIdentical();
  });

  it('a site the cluster file does not name (its certificate from the cluster CA) and a mirror dialing the witness are refused at the handshake, named in the log; the witness\'s epoch stays', { timeout: testTimeoutMs }, async () => {
    // `ghost`: a certificate issued by this cluster's CA for a site only a copy of the file names.
    const ghostFile = join(c.dir, 'cluster-ghost.yaml');
    const text = readFileSync(c.configPath, 'utf8');
    writeFileSync(ghostFile, `${text}  ghost: { role: mirror, listen: 127.0.0.1:1, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }\n`);
    const ghostConfig = parseConfig(readFileSync(ghostFile, 'utf8'), ghostFile);
    await issueSiteCert(ghostConfig, 'ghost');
    for (const target of ['east', 'local', 'judge']) {
      const err = await attack('ghost', target, upstreamFrames('ghost').map(([, f]) => f), ghostConfig).then(() => undefined, (e: unknown) => e);
      expect(err, `ghost -> ${target}`).toBeInstanceOf(RogueRefused);
      expect((err as RogueRefused).close).toMatchObject({ by: 'peer', code: ErrorCode.UNKNOWN_SITE });
      expect(await logged(target, (r) => r.msg === 'link refused' && r.peer === 'ghost' && /site 'ghost' is not a peer/.test(String(r.reason))), `${target} names ghost`).toBe(true);
    }
    // Only the primary and the standby dial a witness: a mirror's heartbeat cannot raise its epoch.
    for (const as of ['west', 'east', 'far']) {
      const err = await attack(as, 'judge', [{ type: 'HEARTBEAT', epoch: 40n, lastSeq: 0n, sendTimeUs: 1n, echoTimeUs: 0n, echoHeldUs: 0 }]).then(() => undefined, (e: unknown) => e);
      expect((err as RogueRefused).close, `${as} -> judge`).toMatchObject({ code: ErrorCode.UNKNOWN_SITE });
      expect(await logged('judge', (r) => r.msg === 'link refused' && r.peer === as), `judge names ${as}`).toBe(true);
    }
    await sleep(300); // a few witness heartbeats reach the primary
    expect((await c.status('judge'))?.epoch).toBe(1);
    await expectNoEpochMoved();
    expect(c.allRunning).toBe(true);
  });

  it('malformed frames from the real upstream\'s identity (past the end, zero length, seq 2^64-1, an epoch jump, ...) each close the link with a logged reason; the mirror stays up, serves its real upstream again, replicas stay identical', { timeout: testTimeoutMs }, async () => {
    const V = BigInt(c.volumeBytes);
    const block = Buffer.alloc(4096, 0x5a);
    const w = (offsetBytes: bigint, data: Buffer, seq = 1n << 30n, over: Partial<Message> = {}): Message => ({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq, offsetBytes, data, ...over }) as Message;
    const cases: [string, Message | Buffer, RegExp][] = [
      ['WRITE past the end', w(V, block), /range 16777216\+4096 runs past the 16777216-byte volume/],
      ['WRITE straddling the end', w(V - 4096n, Buffer.alloc(8192, 0x5a)), /runs past the 16777216-byte volume/],
      ['WRITE of zero bytes', w(0n, Buffer.alloc(0)), /range 0\+0 is not whole 4096-byte blocks/],
      ['WRITE seq 2^64-1', w(0n, block, u64Max), /seq 2\^64-1 leaves no room/],
      ['WRITE offset 2^60', w(1n << 60n, block), /offset 1152921504606846976 is beyond any volume/],
      ['WRITE not block aligned', w(512n, block), /not whole 4096-byte blocks/],
      ['WRITE for volume 7', w(0n, block, 1n << 30n, { volumeId: 7 } as Partial<Message>), /is for volume 7, but this link carries consistency group 0/],
      ['RESYNC_DATA past the end', { type: 'RESYNC_DATA', volumeId: 0, flags: 0, epoch: 1n, resyncId: 9n, offsetBytes: V, data: block }, /resync data #9: range 16777216\+4096 runs past/],
      ['RESYNC_DATA of zero bytes', { type: 'RESYNC_DATA', volumeId: 0, flags: 0, epoch: 1n, resyncId: 9n, offsetBytes: 0n, data: Buffer.alloc(0) }, /resync data #9: range 0\+0/],
      ['READ_REQUEST past the end', { type: 'READ_REQUEST', volumeId: 0, epoch: 1n, readId: 3n, offsetBytes: V - 4096n, lengthBytes: 8192 }, /read request #3: .*runs past/],
      ['EPOCH jump of 2000', { type: 'EPOCH', epoch: 2001n, agreedLastSeq: 0n, primary: 'local' }, /epoch 2001, 2000 past east's 1: more than 1024 promotions/],
      ['EPOCH 2^64-1', { type: 'EPOCH', epoch: u64Max, agreedLastSeq: 0n, primary: 'local' }, /epoch 18446744073709551615, 18446744073709551614 past east's 1/],
      ['WRITE with a reserved field set', (() => { const b = bodyOf(w(0n, block)); b.writeUInt16BE(1, 6); return b; })(), /reserved field reserved is not 0/],
      ['WRITE with an unknown flag', (() => { const b = bodyOf(w(0n, block)); b.writeUInt16BE(0x8000, 4); return b; })(), /unknown flag bits 0x8000/],
      ['WRITE whose length field disagrees with its body', (() => { const b = bodyOf(w(0n, block)); b.writeUInt32BE(8192, 32); return b; })(), /lengthBytes is 8192 but the body carries 4096/],
    ];
    // The real primary cannot reach east meanwhile: east's upstream is whoever holds local's identity.
    c.cut('local', 'east');
    for (const [what, frame, why] of cases) {
      const r = await RoguePeer.connect({ config, as: 'local', target: 'east', port: c.listenPorts.get('east')!, heartbeatEpoch: 1n });
      r.send({ type: 'EPOCH', epoch: 1n, agreedLastSeq: 0n, primary: 'local' }); // the join, as the primary does it
      expect(await r.waitMessage((m) => m.type === 'RESYNC_REQUEST', closeWaitMs), `${what}: east joined`).toBeDefined();
      if (Buffer.isBuffer(frame)) r.sendRaw(r.frame(0x10, frame));
      else r.send(frame);
      const closed = await Promise.race([r.whenClosed(), sleep(closeWaitMs).then(() => undefined)]);
      r.close();
      expect(closed, `${what} closes the link`).toMatchObject({ by: 'peer' });
      expect(closed!.reason, what).toMatch(why);
      // Logged at east, naming local (the link's line, and the core's or the edge's own).
      expect(await logged('east', (x) => x.peer === 'local' && why.test(String(x.reason ?? ''))), `east logged ${what} naming local`).toBe(true);
      expect(c.allRunning, `${what}: every site still up`).toBe(true);
    }
    // A mirror's identity to the primary: resync ranges past the end close that link. The
    // primary's own link to west is cut meanwhile: its redial would replace the forged link
    // ("replaced by a new connection from west", seen once in CI) before the frame is judged.
    c.cut('local', 'west');
    const past = await attack('west', 'local', [{ type: 'RESYNC_REQUEST', volumeId: 0, epoch: 1n, seqReceived: 0n, ranges: [{ offsetBytes: V - 4096n, lengthBytes: 8192n }] }]);
    expect(past.reason).toMatch(/resync request: range 16773120\+8192 is not within the 16777216-byte volume/);
    expect(await logged('local', (x) => x.peer === 'west' && /resync request/.test(String(x.reason ?? '')))).toBe(true);
    c.heal();
    await expectNoEpochMoved();
    await writeAll(planWrites(1714, c.volumeBytes, 1 * MiB));
    await expectReplicasIdentical();
    expect(c.allRunning).toBe(true);
  });

  it('a downstream\'s identity claiming an epoch more than epochStepMax ahead (in a WRITE_ACK, FENCE, RESYNC_REQUEST, ACK or its heartbeats) is refused at the edge, named in the log; a FENCE of the primary\'s own epoch is ignored; the primary is not fenced and writes on', { timeout: testTimeoutMs }, async () => {
    // The primary's core fences itself on any newer epoch from a mirror (how an old primary learns
    // it was superseded), without a bound: one WRITE_ACK of epoch 2^64-1 fenced it for good.
    const far = 1n + 1025n;
    const frames: [string, Message][] = [
      ['WRITE_ACK', { type: 'WRITE_ACK', volumeId: 0, status: 0, senseKey: 0, asc: 0, ascq: 0, epoch: u64Max, seq: 1n }],
      ['FENCE', { type: 'FENCE', currentEpoch: far, refusedEpoch: 1n, primary: 'west', reason: 'west says stop' }],
      ['RESYNC_REQUEST', { type: 'RESYNC_REQUEST', volumeId: 0, epoch: 1n << 63n, seqReceived: 0n, ranges: [] }],
      ['ACK', { type: 'ACK', volumeId: 0, epoch: far, seq: 1n }],
    ];
    // The primary's own link to west is cut meanwhile: its redial would replace the forged link.
    c.cut('local', 'west');
    for (const [what, frame] of frames) {
      const closed = await attack('west', 'local', [frame]);
      expect(closed, what).toMatchObject({ by: 'peer', code: ErrorCode.REFUSED });
      expect(closed.reason, what).toMatch(new RegExp(`^west sent ${frame.type} of epoch \\d+, \\d+ past local's 1: more than 1024 promotions`));
      expect(await refusalLogged('local', 'west', new RegExp(`^west sent ${frame.type} of epoch`)), `local logged ${what}`).toBe(true);
    }
    // The same in heartbeats (the link's own frames, which reach the core as "peer heard").
    const r = await RoguePeer.connect({ config, as: 'east', target: 'local', port: c.listenPorts.get('local')!, heartbeatEpoch: u64Max });
    const closed = await Promise.race([r.whenClosed(), sleep(closeWaitMs).then(() => undefined)]);
    r.close();
    expect(closed).toMatchObject({ by: 'peer', code: ErrorCode.REFUSED });
    expect(closed!.reason).toMatch(/^east sent HEARTBEAT of epoch 18446744073709551615/);
    // A FENCE of the primary's own epoch is no news (its core would fence itself on it): ignored, logged, the link kept.
    const same = await RoguePeer.connect({ config, as: 'west', target: 'local', port: c.listenPorts.get('local')!, heartbeatEpoch: 1n });
    same.send({ type: 'FENCE', currentEpoch: 1n, refusedEpoch: 1n, primary: 'west', reason: 'west says stop' });
    same.send({ type: 'STATUS_REQUEST', requestId: 77 });
    expect(await same.waitMessage((m) => m.type === 'STATUS_REPLY' && m.requestId === 77, closeWaitMs)).toBeDefined();
    expect(same.isOpen).toBe(true);
    same.close();
    expect(await logged('local', (x) => x.event === 'stale-fence-ignored' && x.peer === 'west')).toBe(true);
    expect(c.logRecords('local').filter((x) => x.event === 'fenced' || x.msg === 'fenced')).toEqual([]);
    c.heal();
    await expectNoEpochMoved();
    await writeAll(planWrites(1716, c.volumeBytes, 1 * MiB));
    await expectReplicasIdentical();
    expect(c.allRunning).toBe(true);
  });

  it('a geometry mismatch at the handshake: a dialer claiming another volume size, and a real site started from a cluster file with another size, are refused with the reason logged; the rest serve on and the site rejoins once its file is fixed', { timeout: testTimeoutMs }, async () => {
    const err = await RoguePeer.connect({ config, as: 'west', target: 'east', port: c.listenPorts.get('east')!, geometry: { volumeBytes: BigInt(c.volumeBytes) + 4096n, blockBytes: 4096 } }).then(() => undefined, (e: unknown) => e);
    expect((err as RogueRefused).close).toMatchObject({ by: 'peer', code: ErrorCode.GEOMETRY_MISMATCH });
    expect(await logged('east', (r) => r.msg === 'link refused' && r.peer === 'west' && /site 'west' has volume size 16781312 bytes/.test(String(r.reason)))).toBe(true);
    // west restarted from a cluster file that says 8 MiB: the primary dials it and is refused.
    const good = readFileSync(c.configPath, 'utf8');
    await c.stop('west');
    writeFileSync(c.configPath, good.replace(/size: \d+, blockSize/, `size: ${8 * MiB}, blockSize`));
    try {
      await c.restart('west');
      await c.waitStatus('local', () => c.logRecords('west').some((r) => r.msg === 'link refused' && r.peer === 'local' && /GEOMETRY|volume size/.test(String(r.reason ?? r.codeName))), 'west refuses local for its volume size');
      expect(await logged('local', (r) => r.peer === 'west' && /volume size/.test(String(r.reason ?? '')))).toBe(true);
      // Everyone else serves on (degraded for west).
      await writeAll(planWrites(1715, c.volumeBytes, 1 * MiB));
      expect(c.allRunning).toBe(true);
      await c.stop('west');
    } finally {
      writeFileSync(c.configPath, good);
    }
    await c.restart('west');
    await expectNoEpochMoved();
    await expectReplicasIdentical();
  });
});

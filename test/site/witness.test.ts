// The witness runtime (issue 10): started in-process with runSite, reached over real TCP by
// Dialers that authenticate as the primary ('local') and as the standby ('backup'). It answers
// LAST_HEARD_QUERY with how long ago the primary's link last spoke to it: never before the
// primary connected, a few ms while heartbeats flow, growing once the primary is gone. A wrong
// key is refused and it keeps serving; frames it has no use for are ignored. Issue 17 item 3: only
// the primary and the standby (the sites that dial a witness) may connect, and a heartbeat that
// jumps the epoch past epochStepMax is refused (the witness's epoch fences the primary).
import { freePort } from '../net/helpers.js';
import { siteSecurity } from '../net/tls-fixture.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dialer, type Link, type LinkSecurity } from '../../src/net/index.js';
import { parseConfig, type ClusterConfig } from '../../src/site/config.js';
import { createLogger } from '../../src/site/log.js';
import { fromWire } from '../../src/site/peerwire.js';
import { roleRuntimes } from '../../src/site/roles.js';
import { runSite, type RunningSite } from '../../src/site/run.js';
import type { DataMessage } from '../../src/wire/index.js';

const heartbeatMs = 40;
const secretHex = randomBytes(32).toString('hex');
const secret = Buffer.from(secretHex, 'hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


let cfg: ClusterConfig;
let dir = '';
const security = new Map<string, LinkSecurity>();
let port = 0;
let witness: RunningSite;
const dialers: Dialer[] = [];
const savedEnv = { hb: process.env.GEOMIRROR_HEARTBEAT_MS, to: process.env.GEOMIRROR_LINK_TIMEOUT_MS };

beforeAll(async () => {
  const [local, east, backup, judge] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  port = judge;
  cfg = parseConfig(
    `cluster: w
secret: ${secretHex}
volume: { name: v, size: 1MiB }
sites:
  local: { role: primary, listen: 127.0.0.1:${local}, nbd: 127.0.0.1:${await freePort()}, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:${east}, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }
  backup: { role: standby, standby-for: local, listen: 127.0.0.1:${backup}, failover-timeout: 1s, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }
  judge: { role: witness, listen: 127.0.0.1:${judge} }
`,
    join((dir = mkdtempSync(join(tmpdir(), 'geomirror-witness-'))), 'cluster.yaml'),
  );
  for (const s of ['local', 'backup', 'judge', 'east']) security.set(s, await siteSecurity(cfg, s));
  process.env.GEOMIRROR_HEARTBEAT_MS = String(heartbeatMs);
  process.env.GEOMIRROR_LINK_TIMEOUT_MS = '600';
  witness = await runSite(cfg, 'judge', { log: createLogger({ site: 'judge', level: 'silent' }), processMetrics: false });
});

afterAll(async () => {
  for (const d of dialers.splice(0)) d.stop();
  await witness?.stop();
  rmSync(dir, { recursive: true, force: true });
  for (const [k, v] of [['GEOMIRROR_HEARTBEAT_MS', savedEnv.hb], ['GEOMIRROR_LINK_TIMEOUT_MS', savedEnv.to]] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

/** Dials the witness as `as`; resolves with the established link. */
function dial(as: string, opts: { key?: Buffer; epoch?: bigint } = {}): { dialer: Dialer; link: Promise<Link>; failed: Promise<{ reason: string }> } {
  const dialer = new Dialer({
    cluster: 'w', site: as, secret: opts.key ?? secret, security: security.get(as)!, peer: 'judge', host: '127.0.0.1', port,
    heartbeatIntervalMs: heartbeatMs, backoffMsMin: 50, backoffMsMax: 200,
    heartbeatState: () => ({ epoch: opts.epoch ?? 1n, lastSeq: 0n }),
  });
  dialers.push(dialer);
  const link = new Promise<Link>((resolve) => dialer.once('link', resolve));
  const failed = new Promise<{ reason: string }>((resolve) => dialer.once('attempt-failed', resolve));
  dialer.start();
  return { dialer, link, failed };
}

let queryIdNext = 0x1_0000_0000_0001n; // above 2^32: a number round trip would show
/** Asks "when did you last hear the primary?"; resolves with the core view of the answer. */
async function ask(link: Link): Promise<{ epoch: bigint; heardAgoMs: number; seqReceived: bigint }> {
  const queryId = queryIdNext++;
  const answer = new Promise<DataMessage>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no LAST_HEARD_ANSWER to query ${queryId}`)), 2000);
    const on = (m: DataMessage) => {
      if (m.type !== 'LAST_HEARD_ANSWER' || m.queryId !== queryId) return;
      clearTimeout(timer);
      link.off('message', on);
      resolve(m);
    };
    link.on('message', on);
  });
  link.send({ type: 'LAST_HEARD_QUERY', epoch: 1n, queryId });
  const msg = fromWire(await answer, 'judge');
  if (msg?.type !== 'lastHeardAnswer') throw new Error(`not an answer: ${msg?.type}`);
  expect(msg.queryId).toBe(queryId);
  return msg;
}

describe('witness runtime', () => {
  it('is registered for role: witness', () => {
    expect(roleRuntimes.witness).toBeDefined();
    expect(witness.role).toBe('witness');
  });

  let standby: Link;
  let standbyDial: ReturnType<typeof dial>;
  let primary: { dialer: Dialer; link: Promise<Link> };

  it('answers "never" before the primary ever connected', async () => {
    standbyDial = dial('backup');
    standby = await standbyDial.link;
    const a = await ask(standby);
    expect(a.heardAgoMs).toBe(-1);
    expect(a.epoch).toBe(1n); // the highest epoch of any heartbeat: the standby's own
    expect(a.seqReceived).toBe(0n);
    const st = witness.status();
    expect(st).toMatchObject({ role: 'witness', state: 'in-sync', epoch: 1, lastSeqAcked: '0', cache: { usedBytes: 0, capacityBytes: 0, entries: 0 } });
    expect(st.peers).toEqual(expect.arrayContaining([
      expect.objectContaining({ name: 'local', relation: 'primary', link: 'down' }),
      expect.objectContaining({ name: 'backup', relation: 'standby', link: 'up' }),
    ]));
  });

  it('answers a small age while the primary\'s heartbeats flow, with the primary\'s epoch', async () => {
    primary = dial('local', { epoch: 3n });
    await primary.link;
    await sleep(heartbeatMs * 5);
    const a = await ask(standby);
    expect(a.heardAgoMs).toBeGreaterThanOrEqual(0);
    expect(a.heardAgoMs).toBeLessThan(1000);
    expect(a.epoch).toBe(3n);
    const st = witness.status();
    expect(st.epoch).toBe(3);
    const local = st.peers.find((p) => p.name === 'local');
    expect(local).toMatchObject({ relation: 'primary', link: 'up' });
    expect(local!.rttMs).toBeGreaterThanOrEqual(0);
    const metrics = await witness.metrics.registry.metrics();
    expect(metrics).toMatch(/geomirror_last_heard_answers_total\{[^}]*\} 2/);
    expect(metrics).toMatch(/geomirror_link_state\{[^}]*peer="local"[^}]*state="up"[^}]*\} 1/);
  });

  it('answers a growing age once the primary is gone', async () => {
    primary.dialer.stop();
    await sleep(300);
    const a1 = await ask(standby);
    expect(a1.heardAgoMs).toBeGreaterThanOrEqual(250);
    await sleep(300);
    const a2 = await ask(standby);
    expect(a2.heardAgoMs).toBeGreaterThanOrEqual(a1.heardAgoMs + 250);
    expect(a2.epoch).toBe(3n); // the highest epoch seen stays
    expect(witness.status().peers.find((p) => p.name === 'local')).toMatchObject({ link: 'down' });
  });

  it('does not count the primary heard from heartbeats of an older epoch', async () => {
    const before = await ask(standby);
    const stale = dial('local', { epoch: 2n });
    await stale.link;
    await sleep(heartbeatMs * 5);
    const after = await ask(standby);
    expect(after.heardAgoMs).toBeGreaterThanOrEqual(before.heardAgoMs + heartbeatMs * 4);
    stale.dialer.stop();
  });

  it('ignores frames it has no use for and keeps the link', async () => {
    standby.send({ type: 'EPOCH', epoch: 9n, agreedLastSeq: 0n, primary: 'backup' });
    const a = await ask(standby);
    expect(a.epoch).toBe(3n); // an EPOCH frame is not a heartbeat: nothing adopted
    expect(standby.state).toBe('established');
  });

  it('refuses a mirror (only the primary and the standby dial a witness): its heartbeats cannot raise the epoch', async () => {
    const mirror = dial('east', { epoch: 50n });
    const f = await mirror.failed;
    mirror.dialer.stop();
    expect(f.reason).toMatch(/UNKNOWN_SITE|not a peer of 'judge'/);
    expect((await ask(standby)).epoch).toBe(3n);
  });

  it('refuses a heartbeat that jumps the epoch by more than epochStepMax, even from the standby, and keeps serving', async () => {
    standbyDial.dialer.stop(); // one connection per site: the jump's would replace it
    const jump = dial('backup', { epoch: 3n + 1025n });
    const link = await jump.link;
    const closed = await new Promise<{ reason: string }>((resolve) => link.once('close', resolve));
    jump.dialer.stop();
    expect(closed.reason).toMatch(/REFUSED.*backup claims epoch 1028, 1025 past judge's 3/);
    // One promotion ahead is what a failover looks like: taken.
    standbyDial = dial('backup', { epoch: 4n });
    standby = await standbyDial.link;
    await sleep(heartbeatMs * 3);
    expect((await ask(standby)).epoch).toBe(4n);
  });

  it('refuses a wrong key and keeps serving', async () => {
    const refusedBefore = (await witness.metrics.framesRefusedTotal.get()).values.reduce((n, v) => n + v.value, 0);
    const bad = new Dialer({ cluster: 'w', site: 'local', secret: randomBytes(32), security: security.get('local')!, peer: 'judge', host: '127.0.0.1', port, backoffMsMin: 1000, backoffMsMax: 1000 });
    dialers.push(bad);
    const failed = new Promise<{ reason: string }>((resolve) => bad.once('attempt-failed', resolve));
    let established = false;
    bad.on('link', () => (established = true));
    bad.start();
    const f = await failed;
    bad.stop();
    expect(established).toBe(false);
    expect(f.reason).toMatch(/AUTH|auth|key/);
    const refusedAfter = (await witness.metrics.framesRefusedTotal.get()).values.reduce((n, v) => n + v.value, 0);
    expect(refusedAfter).toBeGreaterThan(refusedBefore);
    // Still serving: the standby's link works and a new authenticated link is accepted.
    const a = await ask(standby);
    expect(a.heardAgoMs).toBeGreaterThan(0);
    const again = await dial('backup').link;
    expect((await ask(again)).epoch).toBe(4n);
  });
});

// Live conformance: plays the handshake and frame vectors against a running site over TCP and
// reports each case, so a second implementation (a relay on a microcontroller, say) can be
// checked byte for byte against the spec.
//
//   npm run conformance -- HOST:PORT --config CLUSTER.yaml [--site S] [--as NAME]
//   npm run conformance -- HOST:PORT --secret FILE [--cluster C] [--site S] [--as NAME]   (transport: insecure)
//
// With --config the player speaks TLS as site --as (its certificate from the cluster's files,
// src/site/pki.ts) and takes the cluster name, key and volume geometry from the file.
//
// --site is the name of the site listening at HOST:PORT, --as a site name it accepts as a peer
// (any configured peer of it; the tool authenticates as that site). Only non-mutating frames are
// sent after authentication (HEARTBEAT, STATUS_REQUEST, LAST_HEARD_QUERY, malformed frames): no WRITE ever reaches
// the volume. Exit status 0 when every case passes, 1 otherwise.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { channelBindingBytes, channelBindingLabel } from '../../src/net/index.js';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import {
  ErrorCode,
  FrameEncoder,
  MessageReader,
  ProtocolError,
  authInput,
  authMac,
  errorCodeName,
  heardAgoNever,
  type Message,
} from '../../src/wire/index.js';
import { loadVectors } from './load.js';
import { loadConfig, readSecret } from '../../src/site/config.js';
import { siteCertFiles } from '../../src/site/pki.js';
import { rawHeader } from './vectors.js';

export interface LiveOptions {
  host: string;
  port: number;
  secret: Buffer;
  cluster: string;
  /** Name of the site under test. */
  site: string;
  /** A peer name the site accepts. */
  as: string;
  timeoutMs?: number;
  /** The site's volume geometry (HELLO carries ours; default 1 GiB / 4096). */
  volumeBytes?: bigint;
  blockBytes?: number;
  /** TLS as site `as`: PEM CA bundle, certificate and key (transport: tls sites). */
  tls?: { ca: string; cert: string; key: string };
}

const geometryOf = (o: LiveOptions) => ({ volumeBytes: o.volumeBytes ?? 1n << 30n, blockBytes: o.blockBytes ?? 4096, group: 0 });

export interface CaseResult { name: string; pass: boolean; detail: string }

/** One TCP connection speaking frames; collects what the site sends and whether it closed. */
class Conn {
  private readonly reader = new MessageReader();
  readonly enc = new FrameEncoder();
  private readonly inbox: Message[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  parseError: ProtocolError | undefined;

  /** TLS exporter bytes of this connection (empty without TLS). */
  binding: Buffer = Buffer.alloc(0);

  private constructor(private readonly s: Socket, private readonly timeoutMs: number) {
    s.on('data', (c: Buffer) => {
      try {
        this.reader.push(c, (m) => this.inbox.push(m));
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        this.parseError = e;
      }
      this.wake();
    });
    s.on('error', () => {});
    s.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static open(o: LiveOptions): Promise<Conn> {
    return new Promise((resolve, reject) => {
      if (o.tls !== undefined) {
        const t: TLSSocket = tlsConnect({ host: o.host, port: o.port, ca: o.tls.ca, cert: o.tls.cert, key: o.tls.key, minVersion: 'TLSv1.3', rejectUnauthorized: false, checkServerIdentity: () => undefined });
        t.once('secureConnect', () => {
          const c = new Conn(t, o.timeoutMs ?? 5000);
          c.binding = t.exportKeyingMaterial(channelBindingBytes, channelBindingLabel, Buffer.alloc(0));
          resolve(c);
        });
        t.once('error', (e) => reject(new Error(`cannot connect (TLS) to ${o.host}:${o.port}: ${e.message}`)));
        return;
      }
      const s = connect({ host: o.host, port: o.port });
      s.once('connect', () => resolve(new Conn(s, o.timeoutMs ?? 5000)));
      s.once('error', (e) => reject(new Error(`cannot connect to ${o.host}:${o.port}: ${e.message}`)));
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  send(m: Message): void {
    for (const p of this.enc.encode(m)) this.s.write(p);
  }
  sendRaw(b: Buffer): void {
    this.s.write(b);
  }

  /** Next message matching `pred` (others are skipped), or undefined on close/timeout. */
  async next(pred: (m: Message) => boolean = () => true): Promise<Message | undefined> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const i = this.inbox.findIndex(pred);
      if (i >= 0) return this.inbox.splice(i, 1)[0];
      if (this.closed || this.parseError || Date.now() > deadline) return undefined;
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Resolves true if the site closes the connection within the timeout. */
  async whenClosed(): Promise<boolean> {
    const deadline = Date.now() + this.timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    return this.closed;
  }

  end(): void {
    this.s.destroy();
  }
}

const hello = (o: LiveOptions, nonce: Buffer, over: Partial<Extract<Message, { type: 'HELLO' }>> = {}): Message => ({
  type: 'HELLO', versionMin: 2, versionMax: 2, nonce, ...geometryOf(o), cluster: o.cluster, site: o.as, target: o.site, ...over,
});

/** Full handshake as `o.as`; returns the open connection and what it used, or a failure detail. */
async function authenticate(o: LiveOptions, secret = o.secret): Promise<{ conn: Conn; nonceD: Buffer; response: Message } | string> {
  const conn = await Conn.open(o);
  const nonceD = randomBytes(32);
  conn.send(hello(o, nonceD));
  const ch = await conn.next();
  if (ch?.type !== 'CHALLENGE') {
    conn.end();
    return `expected CHALLENGE, got ${describe(ch, conn)}`;
  }
  if (ch.version !== 2 || ch.cluster !== o.cluster || ch.site !== o.site || ch.nonce.length !== 32) {
    conn.end();
    return `CHALLENGE fields wrong: version ${ch.version}, cluster '${ch.cluster}', site '${ch.site}'`;
  }
  const mac = (label: 'dialer' | 'listener') => authMac(secret, authInput(label, 2, nonceD, ch.nonce, o.cluster, o.as, o.site, geometryOf(o), conn.binding));
  const response: Message = { type: 'RESPONSE', mac: mac('dialer') };
  conn.send(response);
  const w = await conn.next();
  if (w?.type !== 'WELCOME') {
    conn.end();
    return `expected WELCOME, got ${describe(w, conn)}`;
  }
  if (!w.mac.equals(mac('listener'))) {
    conn.end();
    return 'WELCOME MAC does not prove the cluster secret';
  }
  return { conn, nonceD, response };
}

function describe(m: Message | undefined, conn: Conn): string {
  if (m === undefined) return conn.parseError ? `unparseable bytes (${conn.parseError.message})` : conn.closed ? 'connection closed' : 'nothing (timeout)';
  if (m.type === 'REFUSE' || m.type === 'ERROR') return `${m.type} ${errorCodeName(m.code)}: ${m.reason}`;
  return m.type;
}

/** Expect a REFUSE (or ERROR) with `code`, then the site closing the connection. */
async function expectRefusal(conn: Conn, code: number, type: 'REFUSE' | 'ERROR' = 'REFUSE'): Promise<[boolean, string]> {
  const m = await conn.next((x) => x.type === 'REFUSE' || x.type === 'ERROR');
  const closed = await conn.whenClosed();
  conn.end();
  if (m === undefined) return [false, `expected ${type} ${errorCodeName(code)}, got ${describe(m, conn)}`];
  if (m.type !== type || m.code !== code) return [false, `expected ${type} ${errorCodeName(code)}, got ${describe(m, conn)}`];
  if (!closed) return [false, `${type} ${errorCodeName(code)} received but the connection stayed open`];
  return [true, `${type} ${errorCodeName(code)}: ${m.reason}`];
}

export async function runLive(o: LiveOptions): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  const run = async (name: string, fn: () => Promise<[boolean, string]>) => {
    try {
      const [pass, detail] = await fn();
      results.push({ name, pass, detail });
    } catch (e) {
      results.push({ name, pass: false, detail: `error: ${(e as Error).message}` });
    }
  };
  const vectors = loadVectors();
  let recorded: { nonceD: Buffer; response: Message } | undefined;

  await run('handshake: authenticate, exchange HEARTBEATs, close with ERROR SHUTDOWN', async () => {
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    recorded = a;
    const { conn } = a;
    conn.send({ type: 'HEARTBEAT', epoch: 0n, lastSeq: 0n, sendTimeUs: 1n, echoTimeUs: 0n, echoHeldUs: 0 });
    const hb = await conn.next((m) => m.type === 'HEARTBEAT');
    if (hb === undefined) return [false, `no HEARTBEAT from the site (${describe(hb, conn)})`];
    conn.send({ type: 'ERROR', code: ErrorCode.SHUTDOWN, reason: 'conformance run done' });
    conn.end();
    return [true, 'CHALLENGE, WELCOME and HEARTBEAT as specified'];
  });

  await run('STATUS_REQUEST answered by STATUS_REPLY with the same requestId', async () => {
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    a.conn.send({ type: 'STATUS_REQUEST', requestId: 4242 });
    const r = await a.conn.next((m) => m.type === 'STATUS_REPLY');
    a.conn.end();
    if (r?.type !== 'STATUS_REPLY') return [false, `no STATUS_REPLY (${describe(r, a.conn)})`];
    if (r.requestId !== 4242) return [false, `STATUS_REPLY requestId ${r.requestId}, expected 4242`];
    return [true, `${r.entries.length} entries`];
  });

  await run('LAST_HEARD_QUERY of an older epoch answered by LAST_HEARD_ANSWER with the same queryId (not FENCE)', async () => {
    // Epoch 0 is older than any site's: the query is read-only, so every site answers it whatever
    // the epoch (docs/PROTOCOL.md, failover detection), and an older epoch can never fence the
    // site under test. The queryId is above 2^53 so a number round-trip would show.
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    const queryId = 0x1234_5678_9abc_def1n;
    a.conn.send({ type: 'LAST_HEARD_QUERY', epoch: 0n, queryId });
    const r = await a.conn.next((m) => m.type === 'LAST_HEARD_ANSWER' || m.type === 'FENCE' || m.type === 'ERROR');
    a.conn.end();
    if (r?.type !== 'LAST_HEARD_ANSWER') return [false, `no LAST_HEARD_ANSWER (${describe(r, a.conn)})`];
    if (r.queryId !== queryId) return [false, `LAST_HEARD_ANSWER queryId ${r.queryId}, expected ${queryId}`];
    return [true, `epoch ${r.epoch}, heardAgoMs ${r.heardAgoMs === heardAgoNever ? 'never' : r.heardAgoMs}, seqReceived ${r.seqReceived}`];
  });

  const refused = (name: string, code: number, hs: (c: Conn) => Promise<void> | void) =>
    run(name, async () => {
      const c = await Conn.open(o);
      await hs(c);
      return expectRefusal(c, code);
    });

  await refused('wrong key: REFUSE AUTH_FAILED', ErrorCode.AUTH_FAILED, async (c) => {
    const nonceD = randomBytes(32);
    c.send(hello(o, nonceD));
    const ch = await c.next();
    if (ch?.type !== 'CHALLENGE') return;
    c.send({ type: 'RESPONSE', mac: authMac(randomBytes(32), authInput('dialer', 2, nonceD, ch.nonce, o.cluster, o.as, o.site, geometryOf(o), c.binding)) });
  });
  await refused('unknown cluster: REFUSE UNKNOWN_CLUSTER', ErrorCode.UNKNOWN_CLUSTER, (c) => c.send(hello(o, randomBytes(32), { cluster: `${o.cluster}-other` })));
  // Over TLS the certificate says who we are: claiming another name is IDENTITY_MISMATCH.
  if (o.tls === undefined) await refused('unknown site: REFUSE UNKNOWN_SITE', ErrorCode.UNKNOWN_SITE, (c) => c.send(hello(o, randomBytes(32), { site: 'no-such-site-conformance' })));
  else await refused('claimed site is not the certificate\'s: REFUSE IDENTITY_MISMATCH', ErrorCode.IDENTITY_MISMATCH, (c) => c.send(hello(o, randomBytes(32), { site: 'no-such-site-conformance' })));
  await refused('volume geometry differs: REFUSE GEOMETRY_MISMATCH', ErrorCode.GEOMETRY_MISMATCH, (c) => c.send(hello(o, randomBytes(32), { volumeBytes: geometryOf(o).volumeBytes + 4096n })));
  await refused('wrong target: REFUSE WRONG_SITE', ErrorCode.WRONG_SITE, (c) => c.send(hello(o, randomBytes(32), { target: `${o.site}-elsewhere` })));
  await refused('no common version: REFUSE VERSION_UNSUPPORTED', ErrorCode.VERSION_UNSUPPORTED, (c) => c.send(hello(o, randomBytes(32), { versionMin: 3, versionMax: 9 })));
  await refused('WRITE before authentication: REFUSE NOT_AUTHENTICATED', ErrorCode.NOT_AUTHENTICATED, (c) =>
    c.send({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n, offsetBytes: 0n, data: Buffer.alloc(512) }));
  await refused('replayed HELLO (nonce of the first case): REFUSE REPLAYED_NONCE', ErrorCode.REPLAYED_NONCE, (c) =>
    c.send(hello(o, recorded?.nonceD ?? Buffer.alloc(32))));
  await refused('replayed RESPONSE from an earlier connection: REFUSE AUTH_FAILED', ErrorCode.AUTH_FAILED, async (c) => {
    c.send(hello(o, randomBytes(32)));
    await c.next((m) => m.type === 'CHALLENGE');
    c.send(recorded?.response ?? { type: 'RESPONSE', mac: Buffer.alloc(32) });
  });

  for (const r of vectors.refusals) {
    await refused(`framing vector "${r.name}": REFUSE ${r.codeName}`, r.code, (c) => c.sendRaw(r.bytes));
  }

  await run('after authentication, a corrupted body: ERROR BODY_CHECKSUM', async () => {
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    const f = Buffer.concat(a.conn.enc.encode({ type: 'HEARTBEAT', epoch: 0n, lastSeq: 0n, sendTimeUs: 1n, echoTimeUs: 0n, echoHeldUs: 0 }));
    f[f.length - 5] = f[f.length - 5]! ^ 0x10;
    a.conn.sendRaw(f);
    return expectRefusal(a.conn, ErrorCode.BODY_CHECKSUM, 'ERROR');
  });
  await run('after authentication, a 4 GiB length field: ERROR FRAME_TOO_LARGE', async () => {
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    a.conn.sendRaw(rawHeader({ type: 0x10, bodyBytes: 0xffffffff, frameSeq: a.conn.enc.frameSeq }));
    return expectRefusal(a.conn, ErrorCode.FRAME_TOO_LARGE, 'ERROR');
  });
  await run('after authentication, a HELLO: ERROR UNEXPECTED_MESSAGE', async () => {
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    a.conn.send(hello(o, randomBytes(32)));
    return expectRefusal(a.conn, ErrorCode.UNEXPECTED_MESSAGE, 'ERROR');
  });
  await run('every data message vector decodes on the site side (sent as HEARTBEAT-safe frames only)', async () => {
    // Vectors with side effects (WRITE, FLUSH, RESYNC, EPOCH, FENCE) are not sent to a live
    // site; the non-mutating ones are, renumbered, and the link must stay up.
    const a = await authenticate(o);
    if (typeof a === 'string') return [false, a];
    const safe = vectors.messages.filter((m) => m.fields.type === 'HEARTBEAT' || m.fields.type === 'STATUS_REQUEST');
    for (const m of safe) a.conn.send(m.fields);
    a.conn.send({ type: 'STATUS_REQUEST', requestId: 777 });
    const r = await a.conn.next((m) => (m.type === 'STATUS_REPLY' && m.requestId === 777) || m.type === 'ERROR');
    a.conn.end();
    if (r?.type !== 'STATUS_REPLY') return [false, `link did not stay up after ${safe.length} vectors: ${describe(r, a.conn)}`];
    return [true, `${safe.length} vectors accepted`];
  });
  return results;
}

/** Secret file: the cluster key as hex text (geomirror keygen's format), whitespace trimmed. */
export function readSecretFile(path: string): Buffer {
  const hex = readFileSync(path, 'utf8').trim();
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`secret file ${path} must hold the cluster key as hex (geomirror keygen --out ${path})`);
  return Buffer.from(hex, 'hex');
}

async function main(argv: string[]): Promise<number> {
  const program = new Command()
    .name('npm run conformance --')
    .description('play the wire protocol vectors against a live geomirror site and report each case')
    .argument('<HOST:PORT>', 'replication port of the site under test')
    .option('--config <FILE>', 'the cluster file: cluster name, key, volume and (TLS) the certificate of --as')
    .option('--secret <FILE>', 'cluster key file (hex, as written by geomirror keygen), for a transport: insecure site')
    .option('--cluster <NAME>', 'cluster name', 'demo')
    .option('--site <NAME>', 'name of the site under test', 'east')
    .option('--as <NAME>', 'authenticate as this site (a peer the site accepts)', 'local')
    .option('--timeout-ms <MS>', 'how long to wait for each answer', '5000')
    .parse(argv, { from: 'user' });
  const target = program.args[0]!;
  const m = /^(.*):(\d+)$/.exec(target);
  if (!m) throw new Error(`'${target}' is not HOST:PORT (e.g. 127.0.0.1:7401)`);
  const opts = program.opts<{ config?: string; secret?: string; cluster: string; site: string; as: string; timeoutMs: string }>();
  let live: LiveOptions;
  if (opts.config !== undefined) {
    const config = loadConfig(opts.config);
    const files = siteCertFiles(config, opts.as);
    live = {
      host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]), secret: readSecret(config), cluster: config.cluster, site: opts.site, as: opts.as,
      timeoutMs: Number(opts.timeoutMs), volumeBytes: BigInt(config.volume.sizeBytes), blockBytes: config.volume.blockSize,
      ...(config.transport === 'tls' ? { tls: { ca: readFileSync(config.tls.caCert, 'utf8'), cert: readFileSync(files.cert, 'utf8'), key: readFileSync(files.key, 'utf8') } } : {}),
    };
  } else {
    if (opts.secret === undefined) throw new Error('give --config CLUSTER.yaml (or --secret FILE for a transport: insecure site)');
    live = {
      host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]), secret: readSecretFile(opts.secret),
      cluster: opts.cluster, site: opts.site, as: opts.as, timeoutMs: Number(opts.timeoutMs),
    };
  }
  (await Conn.open(live)).end(); // one clear error instead of every case failing to connect
  const results = await runLive(live);
  for (const r of results) console.log(`${r.pass ? 'PASS' : 'FAIL'}  ${r.name}${r.pass ? '' : `\n      ${r.detail}`}`);
  const failed = results.filter((r) => !r.pass).length;
  console.log(`\n${results.length - failed}/${results.length} cases passed against ${target} (site '${opts.site}', as '${opts.as}')`);
  return failed === 0 ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      console.error(`conformance: ${err.message}`);
      process.exit(2);
    },
  );
}

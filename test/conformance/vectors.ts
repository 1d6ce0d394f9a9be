// The byte vectors of the conformance suite: what they are built from (this file) and how they
// are stored (vectors.json, checked in and compared by vectors.test.ts). JSON conventions: a
// bigint is a decimal string ending in "n"; a Buffer is { "hex": "..." }.
import { createHash } from 'node:crypto';
import { crc32 } from '../../src/wire/crc.js';
import {
  AckStatus,
  ErrorCode,
  FrameEncoder,
  Handshake,
  MessageReader,
  ProtocolError,
  WriteFlags,
  ResyncDataFlags,
  heardAgoMsMax,
  heardAgoNever,
  authInput,
  authMac,
  crc32Small,
  encodeFrame,
  headerBytes,
  messageSpecs,
  protocolVersion,
  writeHeader,
  type HandshakeOptions,
  type Message,
  type MessageSpec,
} from '../../src/wire/index.js';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export function toJson(v: unknown): Json {
  if (typeof v === 'bigint') return `${v}n`;
  if (Buffer.isBuffer(v)) return { hex: v.toString('hex') };
  if (Array.isArray(v)) return v.map(toJson);
  if (v !== null && typeof v === 'object') {
    // A decoded WRITE carries payloadCrc, which is not on the wire: the decoder derives it (the
    // CRC-32 of data) from the body CRC it verified. Checked here, then left out of the fields.
    const o = v as { type?: unknown; payloadCrc?: unknown; data?: unknown };
    if (o.type === 'WRITE' && 'payloadCrc' in o) {
      if (o.payloadCrc !== undefined && (!Buffer.isBuffer(o.data) || o.payloadCrc !== crc32(o.data))) throw new Error(`decoded WRITE has payloadCrc ${String(o.payloadCrc)}, not the CRC-32 of its data`);
      return Object.fromEntries(Object.entries(v).filter(([k]) => k !== 'payloadCrc').map(([k, x]) => [k, toJson(x)]));
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]));
  }
  return v as Json;
}

export function fromJson(v: Json): unknown {
  if (typeof v === 'string' && /^\d+n$/.test(v)) return BigInt(v.slice(0, -1));
  if (Array.isArray(v)) return v.map(fromJson);
  if (v !== null && typeof v === 'object') {
    if (typeof v.hex === 'string' && Object.keys(v).length === 1) return Buffer.from(v.hex, 'hex');
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x)]));
  }
  return v;
}

/** Deterministic bytes for vectors: sha256 chain of a label. */
export function detBytes(label: string, n: number): Buffer {
  const out: Buffer[] = [];
  let h = Buffer.from(label);
  let have = 0;
  while (have < n) {
    h = createHash('sha256').update(h).digest();
    out.push(h);
    have += h.length;
  }
  return Buffer.concat(out).subarray(0, n);
}

const u64Max = 0xffff_ffff_ffff_ffffn;

export function messageCases(): { name: string; frameSeq: number; msg: Message }[] {
  const nonce = detBytes('nonce', 32);
  const mac = detBytes('mac', 32);
  const c = (name: string, msg: Message, frameSeq = 0) => ({ name, frameSeq, msg });
  const cases = [
    c('HELLO', { type: 'HELLO', versionMin: 2, versionMax: 2, nonce, volumeBytes: 1n << 30n, blockBytes: 4096, group: 0, cluster: 'demo', site: 'local', target: 'east' }),
    c('HELLO utf8 names', { type: 'HELLO', versionMin: 2, versionMax: 3, nonce, volumeBytes: (1n << 44n) + 512n, blockBytes: 512, group: 3, cluster: 'grappe-é', site: 'sité-1', target: '東' }),
    c('CHALLENGE', { type: 'CHALLENGE', version: 2, nonce, volumeBytes: 1n << 30n, blockBytes: 4096, cluster: 'demo', site: 'east' }),
    c('RESPONSE', { type: 'RESPONSE', mac }, 1),
    c('WELCOME', { type: 'WELCOME', mac }, 1),
    c('REFUSE', { type: 'REFUSE', code: ErrorCode.AUTH_FAILED, reason: "site 'local' failed to prove the cluster secret" }),
    c('REFUSE empty reason', { type: 'REFUSE', code: ErrorCode.SHUTDOWN, reason: '' }),
    c('WRITE 4 KiB FUA', { type: 'WRITE', volumeId: 0, flags: WriteFlags.FUA, epoch: 1n, seq: 42n, offsetBytes: 8192n, data: detBytes('data', 4096) }, 7),
    c('WRITE 512 B u64 max', { type: 'WRITE', volumeId: 0xffffffff, flags: 0, epoch: u64Max, seq: u64Max, offsetBytes: u64Max - 511n, data: detBytes('d512', 512) }, 0xffffffff),
    c('WRITE empty', { type: 'WRITE', volumeId: 0, flags: 0, epoch: 2n, seq: 1n, offsetBytes: 0n, data: Buffer.alloc(0) }),
    c('WRITE_ACK ok', { type: 'WRITE_ACK', volumeId: 0, status: AckStatus.OK, senseKey: 0, asc: 0, ascq: 0, epoch: 1n, seq: 42n }),
    c('WRITE_ACK sense', { type: 'WRITE_ACK', volumeId: 0, status: AckStatus.SENSE, senseKey: 0x3, asc: 0x0c, ascq: 0x00, epoch: 1n, seq: 2n ** 53n + 1n }),
    c('ACK', { type: 'ACK', volumeId: 0, epoch: 3n, seq: 2n ** 63n }),
    c('FLUSH', { type: 'FLUSH', volumeId: 0, epoch: 1n, flushId: 9n, barrierSeq: 42n }),
    c('FLUSH_ACK', { type: 'FLUSH_ACK', volumeId: 0, status: AckStatus.OK, senseKey: 0, asc: 0, ascq: 0, epoch: 1n, flushId: 9n }),
    c('RESYNC_ACK', { type: 'RESYNC_ACK', volumeId: 0, status: AckStatus.OK, senseKey: 0, asc: 0, ascq: 0, epoch: 2n, resyncId: 7n }),
    c('RESYNC_ACK medium error', { type: 'RESYNC_ACK', volumeId: 0, status: AckStatus.SENSE, senseKey: 3, asc: 0x0c, ascq: 0, epoch: 2n, resyncId: 8n }),
    c('HEARTBEAT first', { type: 'HEARTBEAT', epoch: 1n, lastSeq: 0n, sendTimeUs: 1_000_000n, echoTimeUs: 0n, echoHeldUs: 0 }),
    c('HEARTBEAT echo', { type: 'HEARTBEAT', epoch: 5n, lastSeq: 77n, sendTimeUs: 9_000_123n, echoTimeUs: 8_999_000n, echoHeldUs: 250 }),
    c('STATUS_REQUEST', { type: 'STATUS_REQUEST', requestId: 1 }),
    c('STATUS_REPLY', { type: 'STATUS_REPLY', requestId: 1, entries: [['role', 'mirror'], ['epoch', '3'], ['lastSeq', '18446744073709551615'], ['inSync', 'true']] }),
    c('STATUS_REPLY empty', { type: 'STATUS_REPLY', requestId: 2, entries: [] }),
    c('RESYNC_REQUEST', { type: 'RESYNC_REQUEST', volumeId: 0, epoch: 2n, seqReceived: 41n, ranges: [{ offsetBytes: 0n, lengthBytes: 65536n }, { offsetBytes: 2n ** 40n, lengthBytes: 4096n }] }),
    c('RESYNC_DATA last', { type: 'RESYNC_DATA', volumeId: 0, flags: ResyncDataFlags.LAST, epoch: 2n, resyncId: 7n, offsetBytes: 4096n, data: detBytes('resync', 1024) }),
    c('IN_SYNC', { type: 'IN_SYNC', volumeId: 0, epoch: 2n, seq: 1234n }),
    c('IN_SYNC nothing acked yet', { type: 'IN_SYNC', volumeId: 0, epoch: 1n, seq: 0n }),
    c('IN_SYNC u64 max', { type: 'IN_SYNC', volumeId: 0xffffffff, epoch: u64Max, seq: u64Max }, 3),
    c('EPOCH', { type: 'EPOCH', epoch: 4n, agreedLastSeq: 1234n, primary: 'standby' }),
    c('FENCE', { type: 'FENCE', currentEpoch: 4n, refusedEpoch: 3n, primary: 'standby', reason: 'east is at epoch 4; local speaks for 3' }),
    c('FENCE unknown primary', { type: 'FENCE', currentEpoch: 4n, refusedEpoch: 3n, primary: '', reason: '' }),
    c('LAST_HEARD_QUERY', { type: 'LAST_HEARD_QUERY', epoch: 3n, queryId: 1n }),
    c('LAST_HEARD_QUERY u64 max', { type: 'LAST_HEARD_QUERY', epoch: u64Max, queryId: u64Max }, 5),
    c('LAST_HEARD_ANSWER heard 40 ms ago', { type: 'LAST_HEARD_ANSWER', epoch: 3n, queryId: 1n, heardAgoMs: 40, seqReceived: 1234n }),
    c('LAST_HEARD_ANSWER never heard', { type: 'LAST_HEARD_ANSWER', epoch: 4n, queryId: 1n, heardAgoMs: heardAgoNever, seqReceived: 0n }),
    c('LAST_HEARD_ANSWER oldest age, u64 max', { type: 'LAST_HEARD_ANSWER', epoch: u64Max, queryId: u64Max, heardAgoMs: heardAgoMsMax, seqReceived: u64Max }),
    c('ERROR', { type: 'ERROR', code: ErrorCode.LINK_TIMEOUT, reason: 'nothing received from east for 5000 ms' }),
  ];
  // Every message type without a hand-picked case gets one built from its layout, so a new
  // message is pinned by a vector without an edit here (issue 15: a wire message touches few files).
  const covered = new Set(cases.map((x) => x.msg.type));
  for (const spec of messageSpecs) if (!covered.has(spec.name)) cases.push(c(`${spec.name} (from its layout)`, sampleOf(spec)));
  return cases;
}

/** A valid message of `spec` with deterministic field values (reserved fields 0, names valid). */
export function sampleOf(spec: MessageSpec): Message {
  const out: Record<string, unknown> = { type: spec.name };
  let n = 1;
  for (const f of spec.fixed.fields) {
    if (f.name.startsWith('reserved')) continue;
    if (f.name === 'status') out[f.name] = AckStatus.OK;
    else if (f.name === 'flags' || f.name === 'senseKey' || f.name === 'asc' || f.name === 'ascq') out[f.name] = 0;
    else if (f.name === 'lengthBytes' && spec.tail.some((t) => t.kind === 'data')) continue; // the data's length
    else if (f.type === 'u64') out[f.name] = BigInt(n++) * 4096n;
    else if (f.type === 'bytes32') out[f.name] = detBytes(`${spec.name}.${f.name}`, 32);
    else out[f.name] = n++ * 512;
  }
  for (const t of spec.tail) {
    if (t.kind === 'str8') out[t.name] = 'east';
    else if (t.kind === 'str16') out[t.name] = `${spec.name} sample`;
    else if (t.kind === 'kv') out[t.name] = [['role', 'mirror']];
    else if (t.kind === 'ranges') out[t.name] = [{ offsetBytes: 0n, lengthBytes: 65536n }, { offsetBytes: 1n << 20n, lengthBytes: 4096n }];
    else out[t.name] = detBytes(spec.name, 1024);
  }
  return out as unknown as Message;
}

/** A raw header with every field chosen (for refusal vectors), CRC computed unless given. */
export function rawHeader(o: { magic?: number; version?: number; type: number; flags?: number; bodyBytes: number; frameSeq?: number; bodyCrc?: number; headerCrc?: number }): Buffer {
  const h = Buffer.alloc(headerBytes);
  h.writeUInt32BE(o.magic ?? 0x474d5250, 0);
  h[4] = o.version ?? protocolVersion;
  h[5] = o.type;
  h.writeUInt16BE(o.flags ?? 0, 6);
  h.writeUInt32BE(o.bodyBytes, 8);
  h.writeUInt32BE(o.frameSeq ?? 0, 12);
  h.writeUInt32BE(o.bodyCrc ?? 0, 16);
  h.writeUInt32BE(o.headerCrc ?? crc32Small(h, 0, 20), 20);
  return h;
}

export interface RefusalVector { name: string; hex: string; code: number; codeName: string; reasonIncludes: string }

export function refusalCases(): { name: string; bytes: Buffer; code: ErrorCode; reasonIncludes: string }[] {
  const hello = encodeFrame(messageCases()[0]!.msg, 0);
  const flip = (b: Buffer, at: number, mask = 0x01) => {
    const c = Buffer.from(b);
    c[at] = c[at]! ^ mask;
    return c;
  };
  const withHeader = (b: Buffer, o: Parameters<typeof rawHeader>[0]) => Buffer.concat([rawHeader(o), b.subarray(headerBytes)]);
  const helloBody = hello.subarray(headerBytes);
  const { crc32 } = { crc32: (b: Buffer) => Number(b.length === 0 ? 0 : crc32Of(b)) };
  const r = (name: string, bytes: Buffer, code: ErrorCode, reasonIncludes: string) => ({ name, bytes, code, reasonIncludes });
  const heartbeatType = 0x20;
  const inSyncType = 0x33;
  const inSync = encodeFrame(messageCases().find((m) => m.msg.type === 'IN_SYNC')!.msg, 0);
  const lastHeardQueryType = 0x42;
  const lastHeardAnswerType = 0x43;
  const lastHeardAnswer = encodeFrame(messageCases().find((m) => m.msg.type === 'LAST_HEARD_ANSWER')!.msg, 0);
  return [
    r('random bytes (HTTP request)', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), ErrorCode.BAD_MAGIC, 'magic'),
    r('bad magic at byte 3', flip(hello, 3), ErrorCode.BAD_MAGIC, 'byte 3'),
    r('version 3 (newer peer)', withHeader(hello, { version: 3, type: 0x01, bodyBytes: helloBody.length, bodyCrc: crc32(helloBody) }), ErrorCode.VERSION_UNSUPPORTED, 'newer'),
    r('version 0 (older peer)', withHeader(hello, { version: 0, type: 0x01, bodyBytes: helloBody.length, bodyCrc: crc32(helloBody) }), ErrorCode.VERSION_UNSUPPORTED, 'older'),
    r('header checksum', flip(hello, 12, 0x80), ErrorCode.HEADER_CHECKSUM, 'header CRC'),
    r('4 GiB length field', rawHeader({ type: 0x10, bodyBytes: 0xffffffff }), ErrorCode.FRAME_TOO_LARGE, 'frameBytesMax'),
    r('length above frameBytesMax by 1', rawHeader({ type: 0x10, bodyBytes: 1024 * 1024 + 4096 - headerBytes + 1 }), ErrorCode.FRAME_TOO_LARGE, 'frameBytesMax'),
    r('HEARTBEAT longer than its layout', rawHeader({ type: heartbeatType, bodyBytes: 4096 }), ErrorCode.FRAME_TOO_LARGE, 'HEARTBEAT'),
    r('HEARTBEAT shorter than its layout', rawHeader({ type: heartbeatType, bodyBytes: 8 }), ErrorCode.MALFORMED, 'HEARTBEAT'),
    r('IN_SYNC longer than its layout', rawHeader({ type: inSyncType, bodyBytes: 25 }), ErrorCode.FRAME_TOO_LARGE, 'IN_SYNC'),
    r('IN_SYNC shorter than its layout (no seq)', rawHeader({ type: inSyncType, bodyBytes: 16 }), ErrorCode.MALFORMED, 'IN_SYNC'),
    r('IN_SYNC shorter than its layout by 1', rawHeader({ type: inSyncType, bodyBytes: 23 }), ErrorCode.MALFORMED, 'IN_SYNC'),
    r('IN_SYNC reserved field not 0', (() => {
      const body = Buffer.from(inSync.subarray(headerBytes));
      body.writeUInt32BE(1, 4);
      return Buffer.concat([rawHeader({ type: inSyncType, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.BAD_FLAGS, 'reserved'),
    r('LAST_HEARD_QUERY longer than its layout', rawHeader({ type: lastHeardQueryType, bodyBytes: 17 }), ErrorCode.FRAME_TOO_LARGE, 'LAST_HEARD_QUERY'),
    r('LAST_HEARD_QUERY shorter than its layout', rawHeader({ type: lastHeardQueryType, bodyBytes: 15 }), ErrorCode.MALFORMED, 'LAST_HEARD_QUERY'),
    r('LAST_HEARD_ANSWER longer than its layout', rawHeader({ type: lastHeardAnswerType, bodyBytes: 33 }), ErrorCode.FRAME_TOO_LARGE, 'LAST_HEARD_ANSWER'),
    r('LAST_HEARD_ANSWER shorter than its layout (no seqReceived)', rawHeader({ type: lastHeardAnswerType, bodyBytes: 24 }), ErrorCode.MALFORMED, 'LAST_HEARD_ANSWER'),
    r('LAST_HEARD_ANSWER reserved field not 0', (() => {
      const body = Buffer.from(lastHeardAnswer.subarray(headerBytes));
      body.writeUInt32BE(1, 20);
      return Buffer.concat([rawHeader({ type: lastHeardAnswerType, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.BAD_FLAGS, 'reserved'),
    r('unknown type 0x99', rawHeader({ type: 0x99, bodyBytes: 0 }), ErrorCode.UNKNOWN_TYPE, '0x99'),
    r('reserved header flag', withHeader(hello, { type: 0x01, flags: 0x8000, bodyBytes: helloBody.length, bodyCrc: crc32(helloBody) }), ErrorCode.BAD_FLAGS, 'flags'),
    r('first frame with frameSeq 1', encodeFrame(messageCases()[0]!.msg, 1), ErrorCode.FRAME_SEQUENCE, 'expected 0'),
    r('body checksum', flip(hello, hello.length - 1), ErrorCode.BODY_CHECKSUM, 'body CRC'),
    r('HELLO with trailing garbage in body', (() => {
      const body = Buffer.concat([helloBody, Buffer.from([0xee])]);
      return Buffer.concat([rawHeader({ type: 0x01, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.MALFORMED, 'trailing'),
    r('HELLO with invalid UTF-8 name', (() => {
      const body = Buffer.from(helloBody);
      body[52 + 1] = 0xff; // first byte of the cluster name (after the 52 bytes of fixed fields)
      return Buffer.concat([rawHeader({ type: 0x01, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.MALFORMED, 'UTF-8'),
    r('WRITE lengthBytes disagrees with body', (() => {
      const w = encodeFrame(messageCases()[7]!.msg, 0);
      const body = Buffer.from(w.subarray(headerBytes));
      body.writeUInt32BE(4095, 32);
      return Buffer.concat([rawHeader({ type: 0x10, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.MALFORMED, 'lengthBytes'),
    r('WRITE unknown flag bit', (() => {
      const w = encodeFrame(messageCases()[7]!.msg, 0);
      const body = Buffer.from(w.subarray(headerBytes));
      body.writeUInt16BE(0x0003, 4);
      return Buffer.concat([rawHeader({ type: 0x10, bodyBytes: body.length, bodyCrc: crc32(body) }), body]);
    })(), ErrorCode.BAD_FLAGS, 'flag'),
  ];
}

import { crc32 as crc32Of } from '../../src/wire/crc.js';

// ---- Handshake vectors ---------------------------------------------------------------------

export const vectorSecret = detBytes('cluster-secret', 32);
export const vectorCluster = 'demo';
/** The volume every vector site has (HELLO/CHALLENGE carry it, the MACs cover it). */
export const vectorGeometry = { volumeBytes: 1n << 30n, blockBytes: 4096 };

export interface HandshakeStepVector { dir: 'in' | 'out'; hex: string; type: string }
export interface HandshakeVector {
  name: string;
  role: 'dialer' | 'listener';
  site: string;
  peer?: string;
  acceptPeers?: string[];
  nonce: string;
  seenNonces: string[];
  /** The TLS exporter bytes both MACs cover (hex; '' for a transport: insecure link). */
  channelBinding: string;
  /** The peer's site name as its TLS certificate states it, when the link runs over TLS. */
  peerIdentity?: string;
  steps: HandshakeStepVector[];
  outcome: 'established' | 'refused';
  code?: number;
  codeName?: string;
}

/** Runs a handshake against scripted peer frames; returns the vector (used to build and check). */
export function runHandshake(
  o: Omit<HandshakeVector, 'steps' | 'outcome' | 'code' | 'codeName'>,
  inbound: (sent: Message[]) => Message | undefined,
  secret = vectorSecret,
): HandshakeVector {
  const seen = new Set(o.seenNonces);
  const opts: HandshakeOptions = {
    role: o.role,
    cluster: vectorCluster,
    site: o.site,
    secret,
    geometry: vectorGeometry,
    channelBinding: Buffer.from(o.channelBinding, 'hex'),
    ...(o.peerIdentity !== undefined ? { peerIdentity: o.peerIdentity } : {}),
    randomBytes: () => Buffer.from(o.nonce, 'hex'),
    ...(o.peer !== undefined ? { peer: o.peer } : {}),
    ...(o.acceptPeers !== undefined ? { acceptPeer: (s: string) => o.acceptPeers!.includes(s) } : {}),
    seenNonce: (n: Buffer) => {
      const k = n.toString('hex');
      const was = seen.has(k);
      seen.add(k);
      return was;
    },
  };
  const hs = new Handshake(opts);
  const enc = new FrameEncoder();
  const steps: HandshakeStepVector[] = [];
  const sentAll: Message[] = [];
  const out = (msgs: Message[]) => {
    for (const m of msgs) {
      steps.push({ dir: 'out', type: m.type, hex: Buffer.concat(enc.encode(m)).toString('hex') });
      sentAll.push(m);
    }
  };
  let inSeq = 0;
  out(hs.start().send);
  const reader = new MessageReader();
  while (hs.state !== 'established' && hs.state !== 'refused') {
    const next = inbound(sentAll);
    if (next === undefined) break;
    const hex = encodeFrame(next, inSeq++).toString('hex');
    steps.push({ dir: 'in', type: next.type, hex });
    let step;
    try {
      let got: Message | undefined;
      reader.push(Buffer.from(hex, 'hex'), (m) => (got = m));
      step = hs.receive(got!);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      step = hs.fail(e);
    }
    out(step.send);
  }
  const refusal = hs.refusal;
  return {
    ...o,
    steps,
    outcome: hs.state === 'established' ? 'established' : 'refused',
    ...(refusal ? { code: refusal.code, codeName: Object.entries(ErrorCode).find(([, v]) => v === refusal.code)![0] } : {}),
  };
}

export function handshakeCases(): HandshakeVector[] {
  const nD = detBytes('nonce-dialer', 32);
  const nL = detBytes('nonce-listener', 32);
  const nOld = detBytes('nonce-listener-earlier-connection', 32);
  const wrongSecret = detBytes('wrong-secret', 32);
  const hello = (over: Partial<Extract<Message, { type: 'HELLO' }>> = {}): Message => ({
    type: 'HELLO', versionMin: 2, versionMax: 2, nonce: nD, ...vectorGeometry, group: 0, cluster: vectorCluster, site: 'local', target: 'east', ...over,
  });
  // The TLS exporter of the vectors' connection (a real one differs per connection).
  const binding = detBytes('tls-channel-binding', 32);
  const macFor = (label: 'dialer' | 'listener', nonceL: Buffer, secret = vectorSecret, dialer = 'local', listener = 'east', cb = binding) =>
    authMac(secret, authInput(label, 2, nD, nonceL, vectorCluster, dialer, listener, vectorGeometry, cb));
  const listener = { role: 'listener' as const, site: 'east', acceptPeers: ['local', 'standby'], nonce: nL.toString('hex'), seenNonces: [] as string[], channelBinding: binding.toString('hex'), peerIdentity: 'local' };
  const dialer = { role: 'dialer' as const, site: 'local', peer: 'east', nonce: nD.toString('hex'), seenNonces: [] as string[], channelBinding: binding.toString('hex'), peerIdentity: 'east' };
  const plainListener = { role: 'listener' as const, site: 'east', acceptPeers: ['local', 'standby'], nonce: nL.toString('hex'), seenNonces: [] as string[], channelBinding: '' };
  const script = (...msgs: Message[]) => {
    let i = 0;
    return () => msgs[i++];
  };
  const challenge = (over: Partial<Extract<Message, { type: 'CHALLENGE' }>> = {}): Message => ({ type: 'CHALLENGE', version: 2, nonce: nL, ...vectorGeometry, cluster: vectorCluster, site: 'east', ...over });
  return [
    runHandshake({ name: 'listener: established', ...listener }, script(hello(), { type: 'RESPONSE', mac: macFor('dialer', nL) })),
    runHandshake({ name: 'dialer: established', ...dialer }, script(challenge(), { type: 'WELCOME', mac: macFor('listener', nL) })),
    runHandshake({ name: 'listener: wrong key', ...listener }, script(hello(), { type: 'RESPONSE', mac: macFor('dialer', nL, wrongSecret) })),
    runHandshake({ name: 'dialer: wrong key', ...dialer }, script(challenge(), { type: 'WELCOME', mac: macFor('listener', nL, wrongSecret) })),
    runHandshake({ name: 'listener: replayed RESPONSE from an earlier connection', ...listener }, script(hello(), { type: 'RESPONSE', mac: macFor('dialer', nOld) })),
    runHandshake({ name: 'listener: replayed HELLO nonce', ...listener, seenNonces: [nD.toString('hex')] }, script(hello())),
    runHandshake({ name: 'listener: unknown cluster', ...listener }, script(hello({ cluster: 'other' }))),
    runHandshake({ name: 'listener: unknown site', ...listener, peerIdentity: 'intruder' }, script(hello({ site: 'intruder' }))),
    runHandshake({ name: 'listener: claimed site is not the certificate\'s', ...listener, peerIdentity: 'standby' }, script(hello())),
    runHandshake({ name: 'dialer: listener claims another site than its certificate', ...dialer, peerIdentity: 'west' }, script(challenge())),
    runHandshake({ name: 'listener: volume size differs', ...listener }, script(hello({ volumeBytes: 2n << 30n }))),
    runHandshake({ name: 'listener: block size differs', ...listener }, script(hello({ blockBytes: 512 }))),
    runHandshake({ name: 'dialer: volume size differs', ...dialer }, script(challenge({ volumeBytes: 1n << 20n }))),
    runHandshake({ name: 'listener: RESPONSE made on another TLS session', ...listener }, script(hello(), { type: 'RESPONSE', mac: macFor('dialer', nL, vectorSecret, 'local', 'east', detBytes('other-session', 32)) })),
    runHandshake({ name: 'listener: established without TLS (transport: insecure)', ...plainListener }, script(hello(), { type: 'RESPONSE', mac: macFor('dialer', nL, vectorSecret, 'local', 'east', Buffer.alloc(0)) })),
    runHandshake({ name: 'listener: wrong target', ...listener }, script(hello({ target: 'west' }))),
    runHandshake({ name: 'listener: no common version', ...listener }, script(hello({ versionMin: 3, versionMax: 4 }))),
    runHandshake({ name: 'listener: WRITE before authentication', ...listener }, script({ type: 'WRITE', volumeId: 0, flags: 0, epoch: 1n, seq: 1n, offsetBytes: 0n, data: detBytes('x', 512) })),
    runHandshake({ name: 'listener: WRITE after HELLO, before RESPONSE', ...listener }, script(hello(), { type: 'ACK', volumeId: 0, epoch: 1n, seq: 1n })),
    runHandshake({ name: 'listener: WELCOME out of order', ...listener }, script({ type: 'WELCOME', mac: macFor('listener', nL) })),
    runHandshake({ name: 'dialer: reached the wrong site', ...dialer, peerIdentity: 'west' }, script(challenge({ site: 'west' }))),
    runHandshake({ name: 'dialer: other cluster', ...dialer }, script(challenge({ cluster: 'other' }))),
    runHandshake({ name: 'dialer: refused by listener', ...dialer }, script({ type: 'REFUSE', code: ErrorCode.UNKNOWN_SITE, reason: "site 'local' is not a peer of 'east'" })),
  ];
}

export function buildVectors(): Json {
  return {
    comment: 'geomirror wire protocol v2 byte vectors; generated by test/conformance/gen.ts from src/wire, checked by test/conformance/*.test.ts. bigint: "123n"; bytes: {"hex": ...}.',
    secretHex: vectorSecret.toString('hex'),
    cluster: vectorCluster,
    volumeBytes: toJson(vectorGeometry.volumeBytes),
    blockBytes: vectorGeometry.blockBytes,
    messages: messageCases().map((c) => ({ name: c.name, frameSeq: c.frameSeq, fields: toJson(c.msg), hex: encodeFrame(c.msg, c.frameSeq).toString('hex') })),
    refusals: refusalCases().map((c) => ({
      name: c.name, hex: c.bytes.toString('hex'), code: c.code,
      codeName: Object.entries(ErrorCode).find(([, v]) => v === c.code)![0], reasonIncludes: c.reasonIncludes,
    })),
    handshakes: handshakeCases() as unknown as Json,
  };
}

export { writeHeader };

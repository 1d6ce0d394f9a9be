// Frame and message layouts of the replication wire protocol v2, and their codec.
// docs/PROTOCOL.md is generated from the specs in this file (src/wire/doc.ts); the byte vectors
// in test/conformance/vectors.json pin the encoding. Big-endian everywhere; u64 fields are
// bigint (never JS numbers: seqs and byte offsets pass 2^53).
import { SmartBuffer } from 'smart-buffer';
import { crc32, crc32Combine, crc32Small, crc32Suffix } from './crc.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { buildStruct, type BuiltStruct, type FieldSpec } from './layout.js';
import { readU64BE, writeU64BE } from '../../hal/u64.js';

/** "GMRP": geomirror replication protocol. Bytes 0..4 (magic, version) never change layout. */
export const frameMagic = 0x474d5250;
/** The wire protocol version this code speaks (header byte 4, HELLO/CHALLENGE version fields). */
// v2 (issue 17): HELLO and CHALLENGE carry the volume geometry, and the MACs cover it and the
// TLS channel binding. v1 sites cannot join a v2 cluster (refused with VERSION_UNSUPPORTED).
export const protocolVersion = 2;
export const protocolVersionMin = 2;
export const protocolVersionMax = 2;

export const headerBytes = 24;
/** Largest data payload of one WRITE or RESYNC_DATA. */
export const payloadBytesMax = 1024 * 1024;
/** Largest frame (header + body) a receiver accepts; the length is checked before buffering. */
export const frameBytesMax = payloadBytesMax + 4096;
/** Site and cluster names: 1..nameBytesMax bytes of UTF-8, no control characters. */
export const nameBytesMax = 64;
/** REFUSE/ERROR reasons and STATUS values are cut to this many UTF-8 bytes. */
export const reasonBytesMax = 1024;
export const statusEntriesMax = 256;
export const resyncRangesMax = 4096;
/** A sender keeps at most this many WRITEs unacknowledged on one link (receiver may ERROR 42). */
export const inflightWritesMax = 1024;
/** ... and at most this many payload bytes unacknowledged on one link. */
export const inflightBytesMax = 64 * 1024 * 1024;
export const nonceBytes = 32;
export const macBytes = 32;

export const WriteFlags = { FUA: 0x0001 } as const;
export const ResyncDataFlags = { LAST: 0x0001 } as const;
/** WRITE_ACK / FLUSH_ACK status byte. */
export const AckStatus = { OK: 0, SENSE: 1, STALE_EPOCH: 2 } as const;
/** LAST_HEARD_ANSWER heardAgoMs: the answering site never heard its primary (in this process life). */
export const heardAgoNever = 0xffffffff;
/** LAST_HEARD_ANSWER heardAgoMs: the largest age that can be stated; older ages are clamped to it. */
export const heardAgoMsMax = 0xfffffffe;

export const FrameType = {
  HELLO: 0x01,
  CHALLENGE: 0x02,
  RESPONSE: 0x03,
  WELCOME: 0x04,
  REFUSE: 0x05,
  WRITE: 0x10,
  WRITE_ACK: 0x11,
  ACK: 0x12,
  FLUSH: 0x13,
  FLUSH_ACK: 0x14,
  HEARTBEAT: 0x20,
  STATUS_REQUEST: 0x21,
  STATUS_REPLY: 0x22,
  RESYNC_REQUEST: 0x30,
  RESYNC_DATA: 0x31,
  RESYNC_ACK: 0x32,
  IN_SYNC: 0x33,
  READ_REQUEST: 0x34,
  READ_DATA: 0x35,
  READ_FAILED: 0x36,
  EPOCH: 0x40,
  FENCE: 0x41,
  LAST_HEARD_QUERY: 0x42,
  LAST_HEARD_ANSWER: 0x43,
  PEER_DIRTY: 0x44,
  PEER_DIRTY_ACK: 0x45,
  PEER_CLEAN: 0x46,
  ERROR: 0x7f,
} as const;
export type FrameTypeName = keyof typeof FrameType;

export const headerStruct: BuiltStruct = buildStruct({
  name: 'header',
  fields: [
    { name: 'magic', type: 'u32', doc: '0x474D5250 ("GMRP")' },
    { name: 'version', type: 'u8', doc: 'wire protocol version: 2' },
    { name: 'type', type: 'u8', doc: 'message type (table "Message types")' },
    { name: 'flags', type: 'u16', doc: 'reserved in v1: must be 0' },
    { name: 'bodyBytes', type: 'u32', doc: 'body length in bytes (frame = 24 + bodyBytes <= frameBytesMax)' },
    { name: 'frameSeq', type: 'u32', doc: 'per-direction frame counter: 0 for the first frame, +1 mod 2^32 per frame' },
    { name: 'bodyCrc', type: 'u32', doc: 'CRC-32 (IEEE) of the body (0 for an empty body)' },
    { name: 'headerCrc', type: 'u32', doc: 'CRC-32 (IEEE) of header bytes 0..19' },
  ],
});

export type TailKind = 'str8' | 'str16' | 'kv' | 'ranges' | 'data';
export interface TailSpec {
  readonly name: string;
  readonly kind: TailKind;
  readonly doc: string;
}

export const tailKindDocs: Record<TailKind, { layout: string; bytesMax: number; bytesMin: number }> = {
  str8: { layout: 'u8 length n, then n bytes UTF-8 (n <= nameBytesMax = 64)', bytesMax: 1 + nameBytesMax, bytesMin: 1 },
  str16: { layout: 'u16 length n, then n bytes UTF-8 (n <= reasonBytesMax = 1024)', bytesMax: 2 + reasonBytesMax, bytesMin: 2 },
  kv: {
    layout: 'u16 count (<= statusEntriesMax = 256), then count x (str8 key, str16 value)',
    bytesMax: 2 + statusEntriesMax * (1 + nameBytesMax + 2 + reasonBytesMax),
    bytesMin: 2,
  },
  ranges: {
    layout: 'u32 count (<= resyncRangesMax = 4096), then count x (u64 offsetBytes, u64 lengthBytes)',
    bytesMax: 4 + resyncRangesMax * 16,
    bytesMin: 4,
  },
  data: { layout: 'the rest of the body: lengthBytes bytes of volume data (<= payloadBytesMax)', bytesMax: payloadBytesMax, bytesMin: 0 },
};

export type Phase = 'handshake' | 'data' | 'any';
export interface MessageSpec {
  readonly name: FrameTypeName;
  readonly code: number;
  /** handshake: only before authentication; data: only after; any: both (REFUSE/ERROR). */
  readonly phase: Phase;
  readonly doc: string;
  readonly fixed: BuiltStruct;
  readonly tail: readonly TailSpec[];
  readonly bodyBytesMin: number;
  readonly bodyBytesMax: number;
}

const f = (name: string, type: FieldSpec['type'], doc: string): FieldSpec => ({ name, type, doc });
const volumeId = f('volumeId', 'u32', 'volume number (0 for the one volume of v1 clusters)');
const epochF = f('epoch', 'u64', 'epoch of the sender (grows by 1 at each promotion)');
const statusF = f('status', 'u8', 'AckStatus: 0 OK, 1 SENSE (see sense fields), 2 STALE_EPOCH');
const senseF = [
  f('senseKey', 'u8', 'SCSI sense key (0 when status is OK)'),
  f('asc', 'u8', 'additional sense code'),
  f('ascq', 'u8', 'additional sense code qualifier'),
];

function spec(
  name: FrameTypeName,
  phase: Phase,
  doc: string,
  fields: FieldSpec[],
  tail: TailSpec[] = [],
): MessageSpec {
  const fixed = buildStruct({ name, fields });
  let min = fixed.spanBytes;
  let max = fixed.spanBytes;
  for (const t of tail) {
    min += tailKindDocs[t.kind].bytesMin;
    max += tailKindDocs[t.kind].bytesMax;
  }
  return { name, code: FrameType[name], phase, doc, fixed, tail, bodyBytesMin: min, bodyBytesMax: max };
}

export const messageSpecs: readonly MessageSpec[] = [
  spec('HELLO', 'handshake', 'Dialer -> listener, first frame of a connection.', [
    f('versionMin', 'u8', 'lowest protocol version the dialer speaks'),
    f('versionMax', 'u8', 'highest protocol version the dialer speaks'),
    f('reserved', 'u16', 'must be 0'),
    f('nonce', 'bytes32', 'dialer nonce: 32 fresh random bytes per connection'),
    f('volumeBytes', 'u64', 'volume size of the dialer\'s cluster file, bytes (v2)'),
    f('blockBytes', 'u32', 'volume block size of the dialer\'s cluster file, bytes (v2)'),
    f('group', 'u32', 'consistency group this connection carries: its number in the cluster file, 0 for the one volume of a single-volume cluster; data frames on it carry it as volumeId'),
  ], [
    { name: 'cluster', kind: 'str8', doc: 'cluster name' },
    { name: 'site', kind: 'str8', doc: 'dialer site name' },
    { name: 'target', kind: 'str8', doc: 'site name the dialer means to reach' },
  ]),
  spec('CHALLENGE', 'handshake', 'Listener -> dialer, answer to HELLO.', [
    f('version', 'u8', 'the version chosen for this connection (highest both speak)'),
    f('reserved', 'u8', 'must be 0'),
    f('reserved2', 'u16', 'must be 0'),
    f('nonce', 'bytes32', 'listener nonce: 32 fresh random bytes per connection'),
    f('volumeBytes', 'u64', 'volume size of the listener\'s cluster file, bytes (v2)'),
    f('blockBytes', 'u32', 'volume block size of the listener\'s cluster file, bytes (v2)'),
    f('reserved3', 'u32', 'must be 0'),
  ], [
    { name: 'cluster', kind: 'str8', doc: 'cluster name' },
    { name: 'site', kind: 'str8', doc: 'listener site name' },
  ]),
  spec('RESPONSE', 'handshake', 'Dialer -> listener: proof that the dialer holds the cluster secret.', [
    f('mac', 'bytes32', 'HMAC-SHA256(secret, authInput("dialer"))'),
  ]),
  spec('WELCOME', 'handshake', 'Listener -> dialer: the listener\'s proof; the link is established.', [
    f('mac', 'bytes32', 'HMAC-SHA256(secret, authInput("listener"))'),
  ]),
  spec('REFUSE', 'any', 'Either side, during the handshake: refusal; the sender closes the connection.', [
    f('code', 'u16', 'error code (table "Error codes")'),
  ], [{ name: 'reason', kind: 'str16', doc: 'human-readable reason' }]),
  spec('WRITE', 'data', 'A write request (claims 10-11, 14, 19): perform lengthBytes of data at offsetBytes.', [
    volumeId,
    f('flags', 'u16', 'bit 0 FUA (durable before ack); other bits must be 0'),
    f('reserved', 'u16', 'must be 0'),
    epochF,
    f('seq', 'u64', 'write sequence number assigned by the primary of this epoch, strictly increasing'),
    f('offsetBytes', 'u64', 'byte offset in the volume'),
    f('lengthBytes', 'u32', 'data length; must equal bodyBytes - 40'),
    f('reserved2', 'u32', 'must be 0'),
  ], [{ name: 'data', kind: 'data', doc: 'the data to write' }]),
  spec('WRITE_ACK', 'data', 'Per-write acknowledgement (claim 10 (iii)): received and executed, or failed with sense.', [
    volumeId, statusF, ...senseF, epochF, f('seq', 'u64', 'the WRITE acknowledged'),
  ]),
  spec('ACK', 'data', 'Cumulative acknowledgement: every WRITE of this epoch up to and including seq is executed.', [
    volumeId, f('reserved', 'u32', 'must be 0'), epochF, f('seq', 'u64', 'highest seq executed with all before it'),
  ]),
  spec('FLUSH', 'data', 'Barrier: make every WRITE up to barrierSeq durable on storage.', [
    volumeId, f('reserved', 'u32', 'must be 0'), epochF,
    f('flushId', 'u64', 'sender-chosen id echoed in FLUSH_ACK'),
    f('barrierSeq', 'u64', 'every WRITE with seq <= barrierSeq is covered'),
  ]),
  spec('FLUSH_ACK', 'data', 'Answer to FLUSH.', [volumeId, statusF, ...senseF, epochF, f('flushId', 'u64', 'the FLUSH answered')]),
  spec('HEARTBEAT', 'data', 'Liveness and RTT, every heartbeatIntervalMs from both sides.', [
    epochF,
    f('lastSeq', 'u64', 'sender\'s last seq (primary: last sent; mirror: last executed)'),
    f('sendTimeUs', 'u64', 'sender\'s monotonic clock, microseconds'),
    f('echoTimeUs', 'u64', 'sendTimeUs of the last HEARTBEAT received from the peer (0 if none)'),
    f('echoHeldUs', 'u32', 'microseconds between receiving that HEARTBEAT and sending this one'),
    f('reserved', 'u32', 'must be 0'),
  ]),
  spec('STATUS_REQUEST', 'data', 'Ask the peer for its status.', [f('requestId', 'u32', 'echoed in STATUS_REPLY')]),
  spec('STATUS_REPLY', 'data', 'Status as key/value strings.', [f('requestId', 'u32', 'the STATUS_REQUEST answered')], [
    { name: 'entries', kind: 'kv', doc: 'status entries (e.g. role, epoch, lastSeq, inSync)' },
  ]),
  spec('RESYNC_REQUEST', 'data', 'Downstream -> upstream, the answer to EPOCH on every new link (the join): "I hold every WRITE of this epoch up to seqReceived; send the rest, and resync the regions I miss". Optional ranges name byte ranges the sender knows it misses.', [
    volumeId, f('reserved', 'u32', 'must be 0'), epochF,
    f('seqReceived', 'u64', 'highest seq of this epoch the sender holds with every seq before it'),
  ], [{ name: 'ranges', kind: 'ranges', doc: 'byte ranges to resend (may be empty)' }]),
  spec('RESYNC_DATA', 'data', 'Data of one resync region (upstream storage content), acknowledged by RESYNC_ACK.', [
    volumeId,
    f('flags', 'u16', 'bit 0 LAST (last frame of the request); other bits must be 0'),
    f('reserved', 'u16', 'must be 0'),
    epochF,
    f('resyncId', 'u64', 'sender-chosen id echoed in RESYNC_ACK'),
    f('offsetBytes', 'u64', 'byte offset in the volume'),
    f('lengthBytes', 'u32', 'data length; must equal bodyBytes - 40'),
    f('reserved2', 'u32', 'must be 0'),
  ], [{ name: 'data', kind: 'data', doc: 'the data' }]),
  spec('RESYNC_ACK', 'data', 'Answer to RESYNC_DATA: the region is on the receiver\'s stable storage, or failed with sense.', [
    volumeId, statusF, ...senseF, epochF, f('resyncId', 'u64', 'the RESYNC_DATA answered'),
  ]),
  spec('IN_SYNC', 'data', 'Upstream -> downstream (primary or relay -> mirror or standby): "you are in sync: you hold every WRITE of epoch I acked to the host up to seq, and from now on I ack the host only with you". Sent when the downstream joins in sync or finishes its resync; a standby is promotable only after it.', [
    volumeId, f('reserved', 'u32', 'must be 0'), epochF,
    f('seq', 'u64', 'every WRITE of epoch up to seq that the sender acked to the host is held by the receiver'),
  ]),
  spec('READ_REQUEST', 'data', 'Upstream -> downstream (issue 16 item 3): send these bytes of your copy. A primary whose own copy is not whole repairs it, or serves a host read, from a mirror that holds every acked write there; the read is ordered after every WRITE sent before it. Answered by READ_DATA or READ_FAILED.', [
    volumeId, f('reserved', 'u32', 'must be 0'), epochF,
    f('readId', 'u64', 'sender-chosen id echoed in the answer'),
    f('offsetBytes', 'u64', 'byte offset in the volume (whole blocks)'),
    f('lengthBytes', 'u32', 'bytes to read: whole blocks, at most payloadBytesMax'),
    f('reserved2', 'u32', 'must be 0'),
  ]),
  spec('READ_DATA', 'data', 'Answer to READ_REQUEST: the bytes, as the sender\'s storage holds them.', [
    volumeId,
    f('flags', 'u16', 'must be 0'),
    f('reserved', 'u16', 'must be 0'),
    epochF,
    f('readId', 'u64', 'the READ_REQUEST answered'),
    f('offsetBytes', 'u64', 'byte offset in the volume (as requested)'),
    f('lengthBytes', 'u32', 'data length; must equal bodyBytes - 40'),
    f('reserved2', 'u32', 'must be 0'),
  ], [{ name: 'data', kind: 'data', doc: 'the data' }]),
  spec('READ_FAILED', 'data', 'Answer to READ_REQUEST: the sender cannot serve it (its storage failed, or its own copy of the range is being repaired).', [
    volumeId, statusF, ...senseF, epochF, f('readId', 'u64', 'the READ_REQUEST answered'),
  ], [{ name: 'reason', kind: 'str16', doc: 'human-readable reason' }]),
  spec('EPOCH', 'data', 'A new epoch begins (claim 13: failover): primary and the last seq every in-sync site has.', [
    f('epoch', 'u64', 'the new epoch'),
    f('agreedLastSeq', 'u64', 'last seq of the previous epoch that the new primary holds'),
  ], [{ name: 'primary', kind: 'str8', doc: 'site name of the new primary' }]),
  spec('FENCE', 'data', 'Refusal of an older epoch: the receiver must stop acting as primary.', [
    f('currentEpoch', 'u64', 'the epoch the sender is in'),
    f('refusedEpoch', 'u64', 'the older epoch that was refused'),
  ], [
    { name: 'primary', kind: 'str8', doc: 'current primary, empty if unknown' },
    { name: 'reason', kind: 'str16', doc: 'human-readable reason' },
  ]),
  spec('LAST_HEARD_QUERY', 'data', 'Failover detection (claim 13 v): a standby that stopped hearing the primary asks every other site when it last heard the primary. Read-only: any site answers with LAST_HEARD_ANSWER whatever its epoch, and never FENCEs it.', [
    f('epoch', 'u64', 'epoch of the asker'),
    f('queryId', 'u64', 'asker-chosen id echoed in LAST_HEARD_ANSWER'),
  ]),
  spec('LAST_HEARD_ANSWER', 'data', 'Answer to LAST_HEARD_QUERY: how long ago the answering site last heard its primary (its upstream).', [
    f('epoch', 'u64', 'epoch of the answering site'),
    f('queryId', 'u64', 'the LAST_HEARD_QUERY answered'),
    f('heardAgoMs', 'u32', 'ms since the answering site last heard its primary; 0xFFFFFFFF never heard; older ages are sent as 0xFFFFFFFE'),
    f('reserved', 'u32', 'must be 0'),
    f('seqReceived', 'u64', 'highest seq of epoch the answering site holds with every seq before it'),
  ]),
  spec('PEER_DIRTY', 'data', 'Primary -> its standby (issue 16 item 4): `peer` may miss these ranges (they are in the primary\'s dirty bitmap for it). The standby keeps a durable copy, so that after a promotion it resyncs only what each site is owed; it answers PEER_DIRTY_ACK once the copy is durable.', [
    epochF, f('id', 'u64', 'sender-chosen id echoed in PEER_DIRTY_ACK'),
  ], [
    { name: 'peer', kind: 'str8', doc: 'the site the ranges are dirty for' },
    { name: 'ranges', kind: 'ranges', doc: 'byte ranges' },
  ]),
  spec('PEER_DIRTY_ACK', 'data', 'Standby -> primary: the PEER_DIRTY with this id is durable here.', [epochF, f('id', 'u64', 'the PEER_DIRTY answered')]),
  spec('PEER_CLEAN', 'data', 'Primary -> its standby: `peer` holds these ranges again (resynced). Best effort: a lost PEER_CLEAN costs a resync after a promotion.', [epochF], [
    { name: 'peer', kind: 'str8', doc: 'the site the ranges are clean for' },
    { name: 'ranges', kind: 'ranges', doc: 'byte ranges' },
  ]),
  spec('ERROR', 'any', 'Either side, established link: close reason; the sender closes the connection.', [
    f('code', 'u16', 'error code (table "Error codes")'),
  ], [{ name: 'reason', kind: 'str16', doc: 'human-readable reason' }]),
];

/**
 * Which way each data message flows between two sites (issue 17 item 3), a fact of the protocol
 * that a receiver checks against its cluster file before anything else looks at the frame:
 *   down   from a site's upstream (the primary, the standby, the relay that forwards to it)
 *   up     from a site's downstream (a mirror, relay or standby it sends writes to)
 *   both   either way between an upstream and its downstream
 *   any    from any authenticated site of the cluster (link upkeep, status, failover queries)
 * Handshake messages flow before anything is known; REFUSE/ERROR end a link whoever sends them.
 */
export type MessageFlow = 'down' | 'up' | 'both' | 'any';
export const messageFlow: Readonly<Record<FrameTypeName, MessageFlow>> = {
  HELLO: 'any', CHALLENGE: 'any', RESPONSE: 'any', WELCOME: 'any', REFUSE: 'any', ERROR: 'any',
  WRITE: 'down', FLUSH: 'down', RESYNC_DATA: 'down', IN_SYNC: 'down', READ_REQUEST: 'down', EPOCH: 'down',
  PEER_DIRTY: 'down', PEER_CLEAN: 'down',
  WRITE_ACK: 'up', FLUSH_ACK: 'up', RESYNC_REQUEST: 'up', RESYNC_ACK: 'up', READ_DATA: 'up', READ_FAILED: 'up', PEER_DIRTY_ACK: 'up',
  // ACK: cumulative acks go up; the upstream's committed watermark comes down (issue 16 item 4).
  // FENCE: whichever of the two is in the newer epoch tells the other.
  ACK: 'both', FENCE: 'both',
  HEARTBEAT: 'any', STATUS_REQUEST: 'any', STATUS_REPLY: 'any', LAST_HEARD_QUERY: 'any', LAST_HEARD_ANSWER: 'any',
};

export const specByCode: ReadonlyMap<number, MessageSpec> = new Map(messageSpecs.map((s) => [s.code, s]));
export const specByName: ReadonlyMap<string, MessageSpec> = new Map(messageSpecs.map((s) => [s.name, s]));

// Bodies never exceed what a frame may carry: checked once at load.
for (const s of messageSpecs) {
  if (headerBytes + s.bodyBytesMax > frameBytesMax) {
    throw new Error(`wire: ${s.name} bodyBytesMax ${s.bodyBytesMax} does not fit frameBytesMax ${frameBytesMax}`);
  }
}

// ---- Message types -----------------------------------------------------------------------

export interface HelloMsg { type: 'HELLO'; versionMin: number; versionMax: number; nonce: Buffer; volumeBytes: bigint; blockBytes: number; group: number; cluster: string; site: string; target: string }
export interface ChallengeMsg { type: 'CHALLENGE'; version: number; nonce: Buffer; volumeBytes: bigint; blockBytes: number; cluster: string; site: string }
export interface ResponseMsg { type: 'RESPONSE'; mac: Buffer }
export interface WelcomeMsg { type: 'WELCOME'; mac: Buffer }
export interface RefuseMsg { type: 'REFUSE'; code: number; reason: string }
export interface WriteMsg {
  type: 'WRITE'; volumeId: number; flags: number; epoch: bigint; seq: bigint; offsetBytes: bigint; data: Buffer;
  /**
   * CRC-32 of `data`, when known (issue 18: each payload checksummed once per site). Encoding
   * combines it with the fixed fields' CRC instead of reading data again; decoding sets it from
   * the body CRC the parser verified, for the cache journal.
   */
  payloadCrc?: number;
}
export interface WriteAckMsg { type: 'WRITE_ACK'; volumeId: number; status: number; senseKey: number; asc: number; ascq: number; epoch: bigint; seq: bigint }
export interface AckMsg { type: 'ACK'; volumeId: number; epoch: bigint; seq: bigint }
export interface FlushMsg { type: 'FLUSH'; volumeId: number; epoch: bigint; flushId: bigint; barrierSeq: bigint }
export interface FlushAckMsg { type: 'FLUSH_ACK'; volumeId: number; status: number; senseKey: number; asc: number; ascq: number; epoch: bigint; flushId: bigint }
export interface HeartbeatMsg { type: 'HEARTBEAT'; epoch: bigint; lastSeq: bigint; sendTimeUs: bigint; echoTimeUs: bigint; echoHeldUs: number }
export interface StatusRequestMsg { type: 'STATUS_REQUEST'; requestId: number }
export interface StatusReplyMsg { type: 'STATUS_REPLY'; requestId: number; entries: [string, string][] }
export interface ResyncRange { offsetBytes: bigint; lengthBytes: bigint }
export interface ResyncRequestMsg { type: 'RESYNC_REQUEST'; volumeId: number; epoch: bigint; seqReceived: bigint; ranges: ResyncRange[] }
export interface ResyncDataMsg { type: 'RESYNC_DATA'; volumeId: number; flags: number; epoch: bigint; resyncId: bigint; offsetBytes: bigint; data: Buffer }
export interface ResyncAckMsg { type: 'RESYNC_ACK'; volumeId: number; status: number; senseKey: number; asc: number; ascq: number; epoch: bigint; resyncId: bigint }
/** Upstream -> downstream: the receiver holds every WRITE of epoch acked to the host up to seq. */
export interface InSyncMsg { type: 'IN_SYNC'; volumeId: number; epoch: bigint; seq: bigint }
export interface ReadRequestMsg { type: 'READ_REQUEST'; volumeId: number; epoch: bigint; readId: bigint; offsetBytes: bigint; lengthBytes: number }
export interface ReadDataMsg { type: 'READ_DATA'; volumeId: number; flags: number; epoch: bigint; readId: bigint; offsetBytes: bigint; data: Buffer }
export interface ReadFailedMsg { type: 'READ_FAILED'; volumeId: number; status: number; senseKey: number; asc: number; ascq: number; epoch: bigint; readId: bigint; reason: string }
export interface PeerDirtyMsg { type: 'PEER_DIRTY'; epoch: bigint; id: bigint; peer: string; ranges: ResyncRange[] }
export interface PeerDirtyAckMsg { type: 'PEER_DIRTY_ACK'; epoch: bigint; id: bigint }
export interface PeerCleanMsg { type: 'PEER_CLEAN'; epoch: bigint; peer: string; ranges: ResyncRange[] }
export interface EpochMsg { type: 'EPOCH'; epoch: bigint; agreedLastSeq: bigint; primary: string }
export interface FenceMsg { type: 'FENCE'; currentEpoch: bigint; refusedEpoch: bigint; primary: string; reason: string }
export interface LastHeardQueryMsg { type: 'LAST_HEARD_QUERY'; epoch: bigint; queryId: bigint }
/** heardAgoMs: 0..heardAgoMsMax ms, or heardAgoNever (src/site/peerwire.ts maps it to -1). */
export interface LastHeardAnswerMsg { type: 'LAST_HEARD_ANSWER'; epoch: bigint; queryId: bigint; heardAgoMs: number; seqReceived: bigint }
export interface ErrorMsg { type: 'ERROR'; code: number; reason: string }

/** The messages that carry volume data (hand-coded: one fixed layout, data not copied). */
export type DataPayloadMsg = WriteMsg | ResyncDataMsg | ReadDataMsg;

export type HandshakeMessage = HelloMsg | ChallengeMsg | ResponseMsg | WelcomeMsg | RefuseMsg;
export type DataMessage =
  | WriteMsg | WriteAckMsg | AckMsg | FlushMsg | FlushAckMsg | HeartbeatMsg | StatusRequestMsg | StatusReplyMsg
  | ResyncRequestMsg | ResyncDataMsg | ResyncAckMsg | InSyncMsg | ReadRequestMsg | ReadDataMsg | ReadFailedMsg | EpochMsg | FenceMsg
  | LastHeardQueryMsg | LastHeardAnswerMsg | PeerDirtyMsg | PeerDirtyAckMsg | PeerCleanMsg | ErrorMsg;
export type Message = HandshakeMessage | DataMessage;

/** A frame as the parser delivers it: header fields and a view of the body. */
export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly frameSeq: number;
  /** View into received memory; valid as long as it is referenced (see parser.ts). */
  readonly body: Buffer;
  /** The body's CRC-32 as the parser verified it (absent for frames not from a parser). */
  readonly bodyCrc?: number;
}

// ---- Header (hand-coded hot path; test/conformance/layout.test.ts proves it equals headerStruct) ----

export function writeHeader(h: Buffer, at: number, type: number, bodyBytes: number, frameSeq: number, bodyCrc: number): void {
  h.writeUInt32BE(frameMagic, at);
  h[at + 4] = protocolVersion;
  h[at + 5] = type;
  h[at + 6] = 0;
  h[at + 7] = 0;
  h.writeUInt32BE(bodyBytes, at + 8);
  h.writeUInt32BE(frameSeq >>> 0, at + 12);
  h.writeUInt32BE(bodyCrc >>> 0, at + 16);
  h.writeUInt32BE(crc32Small(h, at, at + 20), at + 20);
}

// ---- Encoding ----------------------------------------------------------------------------

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/** Cut a string to at most `bytesMax` UTF-8 bytes without splitting a character. */
export function truncateUtf8(s: string, bytesMax: number): string {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= bytesMax) return s;
  let end = bytesMax;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString('utf8');
}

function encodeError(msg: string): never {
  // Encoding bad fields is a programming error of the caller, not a peer's fault: plain Error.
  throw new Error(`wire encode: ${msg}`);
}

function writeTail(sb: SmartBuffer, t: TailSpec, value: unknown, msgName: string): void {
  switch (t.kind) {
    case 'str8': {
      const b = Buffer.from(String(value), 'utf8');
      if (b.length > nameBytesMax) encodeError(`${msgName}.${t.name} is ${b.length} bytes, nameBytesMax is ${nameBytesMax}`);
      sb.writeUInt8(b.length);
      sb.writeBuffer(b);
      return;
    }
    case 'str16': {
      const b = Buffer.from(truncateUtf8(String(value), reasonBytesMax), 'utf8');
      sb.writeUInt16BE(b.length);
      sb.writeBuffer(b);
      return;
    }
    case 'kv': {
      const entries = value as [string, string][];
      if (entries.length > statusEntriesMax) encodeError(`${msgName} has ${entries.length} entries, statusEntriesMax is ${statusEntriesMax}`);
      sb.writeUInt16BE(entries.length);
      for (const [k, v] of entries) {
        writeTail(sb, { name: 'key', kind: 'str8', doc: '' }, k, msgName);
        writeTail(sb, { name: 'value', kind: 'str16', doc: '' }, v, msgName);
      }
      return;
    }
    case 'ranges': {
      const ranges = value as ResyncRange[];
      if (ranges.length > resyncRangesMax) encodeError(`${msgName} has ${ranges.length} ranges, resyncRangesMax is ${resyncRangesMax}`);
      sb.writeUInt32BE(ranges.length);
      for (const r of ranges) {
        sb.writeBigUInt64BE(r.offsetBytes);
        sb.writeBigUInt64BE(r.lengthBytes);
      }
      return;
    }
    case 'data':
      encodeError('data tails are encoded by the hot path');
  }
}

/** Body of a control message (everything but WRITE / RESYNC_DATA), through buffer-layout + smart-buffer. */
function encodeControlBody(s: MessageSpec, msg: Record<string, unknown>): Buffer {
  const fixedBuf = Buffer.alloc(s.fixed.spanBytes);
  const src: Record<string, unknown> = {};
  for (const fl of s.fixed.fields) {
    const v = fl.name.startsWith('reserved') ? 0 : msg[fl.name];
    if (fl.type === 'u64') src[fl.name] = typeof v === 'bigint' ? v : encodeError(`${s.name}.${fl.name} must be a bigint`);
    else if (fl.type === 'bytes32') {
      if (!Buffer.isBuffer(v) || v.length !== 32) encodeError(`${s.name}.${fl.name} must be a 32-byte Buffer`);
      src[fl.name] = v;
    } else src[fl.name] = typeof v === 'number' ? v : encodeError(`${s.name}.${fl.name} must be a number`);
  }
  s.fixed.layout.encode(src, fixedBuf, 0);
  if (s.tail.length === 0) return fixedBuf;
  const sb = new SmartBuffer();
  sb.writeBuffer(fixedBuf);
  for (const t of s.tail) writeTail(sb, t, msg[t.name], s.name);
  // smart-buffer views stop tracking the buffer once it grows: building is finished here, so
  // the view is taken now, once, and never written through again.
  return sb.toBuffer();
}

export const writeFixedBytes = 40;
export const resyncDataFixedBytes = 40;

/**
 * u64 big-endian writes/reads for the hot path. Node's BigInt buffer methods do BigInt
 * arithmetic per call; most epochs, seqs and offsets fit 32 bits, so those take a number path.
 * Same bytes either way (test/wire/layout.test.ts checks them against buffer-layout).
 */
/** Header + fixed fields of a WRITE, RESYNC_DATA or READ_DATA, hand-coded (the hot path; one fixed layout). */
function encodeDataHead(msg: DataPayloadMsg, frameSeq: number): Buffer {
  const fixedBytes = writeFixedBytes;
  const data = msg.data;
  if (data.length > payloadBytesMax) encodeError(`${msg.type} data is ${data.length} bytes, payloadBytesMax is ${payloadBytesMax}`);
  const h = Buffer.allocUnsafe(headerBytes + fixedBytes);
  const b = headerBytes;
  h.writeUInt32BE(msg.volumeId, b);
  h.writeUInt16BE(msg.flags, b + 4);
  h.writeUInt16BE(0, b + 6);
  writeU64BE(h, msg.epoch, b + 8);
  // One fixed layout: the u64 at 16 is the seq, resyncId or readId.
  const at = b + 24;
  writeU64BE(h, msg.type === 'WRITE' ? msg.seq : msg.type === 'RESYNC_DATA' ? msg.resyncId : msg.readId, b + 16);
  writeU64BE(h, msg.offsetBytes, at);
  h.writeUInt32BE(data.length, at + 8);
  h.writeUInt32BE(0, at + 12);
  const fixedCrc = crc32Small(h, b, b + fixedBytes);
  const bodyCrc = msg.type === 'WRITE' && msg.payloadCrc !== undefined ? crc32Combine(fixedCrc, msg.payloadCrc, data.length) : crc32(data, fixedCrc);
  writeHeader(h, 0, FrameType[msg.type], fixedBytes + data.length, frameSeq, bodyCrc);
  return h;
}

/**
 * Encodes messages into frames, numbering them (frameSeq) in the order encoded: encode and
 * write in the same order. Returns the buffers of one vectored write: for WRITE and
 * RESYNC_DATA `[header+fixed fields, data]` where data is the caller's Buffer itself (never
 * copied; the caller must not change it until the socket has written it); otherwise one or two
 * small buffers.
 */
export class FrameEncoder {
  private nextSeq = 0;

  get frameSeq(): number {
    return this.nextSeq;
  }

  encode(msg: Message): Buffer[] {
    // Number the frame only once it encoded: a rejected message must not leave a gap that
    // the peer would refuse as FRAME_SEQUENCE.
    const parts = encodeFrameParts(msg, this.nextSeq);
    this.nextSeq = (this.nextSeq + 1) >>> 0;
    return parts;
  }
}

export const ackBodyBytes = 24;

/**
 * ACK and WRITE_ACK, hand-coded: one per WRITE on the return path, so they skip the
 * buffer-layout + smart-buffer control path (test/wire/layout.test.ts proves the same bytes).
 * One 48-byte buffer, one write.
 */
function encodeAck(msg: AckMsg | WriteAckMsg, frameSeq: number): Buffer {
  const h = Buffer.allocUnsafe(headerBytes + ackBodyBytes);
  const b = headerBytes;
  h.writeUInt32BE(msg.volumeId, b);
  if (msg.type === 'ACK') {
    h.writeUInt32BE(0, b + 4);
  } else {
    h[b + 4] = msg.status;
    h[b + 5] = msg.senseKey;
    h[b + 6] = msg.asc;
    h[b + 7] = msg.ascq;
  }
  writeU64BE(h, msg.epoch, b + 8);
  writeU64BE(h, msg.seq, b + 16);
  writeHeader(h, 0, FrameType[msg.type], ackBodyBytes, frameSeq, crc32Small(h, b, b + ackBodyBytes));
  return h;
}

function decodeAck(s: MessageSpec, body: Buffer): AckMsg | WriteAckMsg {
  if (body.length !== ackBodyBytes) malformed(s, `body is ${body.length} bytes, ${s.name} is ${ackBodyBytes}`);
  const volumeId = body.readUInt32BE(0);
  const epoch = readU64BE(body, 8);
  const seq = readU64BE(body, 16);
  if (s === ackSpec) {
    if (body.readUInt32BE(4) !== 0) reservedNonZero(s, 'reserved');
    return { type: 'ACK', volumeId, epoch, seq };
  }
  const status = body[4]!;
  if (status > AckStatus.STALE_EPOCH) malformed(s, `status ${status} is not a v1 AckStatus`);
  return { type: 'WRITE_ACK', volumeId, status, senseKey: body[5]!, asc: body[6]!, ascq: body[7]!, epoch, seq };
}

export function encodeFrameParts(msg: Message, frameSeq: number): Buffer[] {
  if (msg.type === 'WRITE' || msg.type === 'RESYNC_DATA' || msg.type === 'READ_DATA') {
    const head = encodeDataHead(msg, frameSeq);
    return msg.data.length === 0 ? [head] : [head, msg.data];
  }
  if (msg.type === 'ACK' || msg.type === 'WRITE_ACK') return [encodeAck(msg, frameSeq)];
  const s = specByName.get(msg.type);
  if (s === undefined) encodeError(`unknown message type ${String((msg as { type: unknown }).type)}`);
  const body = encodeControlBody(s, msg as unknown as Record<string, unknown>);
  const h = Buffer.allocUnsafe(headerBytes);
  writeHeader(h, 0, s.code, body.length, frameSeq, crc32(body));
  return [h, body];
}

/** One contiguous frame (vectors, tests, the live conformance player). */
export function encodeFrame(msg: Message, frameSeq: number): Buffer {
  return Buffer.concat(encodeFrameParts(msg, frameSeq));
}

// ---- Decoding ----------------------------------------------------------------------------

function malformed(s: MessageSpec, why: string): never {
  throw new ProtocolError(ErrorCode.MALFORMED, `${s.name} frame: ${why}`);
}

class Cursor {
  at: number;
  constructor(readonly b: Buffer, at: number, readonly s: MessageSpec) {
    this.at = at;
  }
  need(n: number, what: string): void {
    if (this.at + n > this.b.length) malformed(this.s, `body ends inside ${what} (needs ${n} byte(s) at ${this.at}, body is ${this.b.length})`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.b[this.at++]!;
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.b.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.b.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.b.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  str(n: number, what: string): string {
    this.need(n, what);
    const v = this.b.subarray(this.at, this.at + n);
    this.at += n;
    try {
      return utf8Strict.decode(v);
    } catch {
      return malformed(this.s, `${what} is not valid UTF-8`);
    }
  }
}

function readTail(c: Cursor, t: TailSpec): unknown {
  switch (t.kind) {
    case 'str8': {
      const n = c.u8(`${t.name} length`);
      if (n > nameBytesMax) malformed(c.s, `${t.name} is ${n} bytes, nameBytesMax is ${nameBytesMax}`);
      return c.str(n, t.name);
    }
    case 'str16': {
      const n = c.u16(`${t.name} length`);
      if (n > reasonBytesMax) malformed(c.s, `${t.name} is ${n} bytes, reasonBytesMax is ${reasonBytesMax}`);
      return c.str(n, t.name);
    }
    case 'kv': {
      const count = c.u16('entry count');
      if (count > statusEntriesMax) malformed(c.s, `${count} entries, statusEntriesMax is ${statusEntriesMax}`);
      const out: [string, string][] = [];
      for (let i = 0; i < count; i++) {
        const k = readTail(c, { name: `entry ${i} key`, kind: 'str8', doc: '' }) as string;
        const v = readTail(c, { name: `entry ${i} value`, kind: 'str16', doc: '' }) as string;
        out.push([k, v]);
      }
      return out;
    }
    case 'ranges': {
      const count = c.u32('range count');
      if (count > resyncRangesMax) malformed(c.s, `${count} ranges, resyncRangesMax is ${resyncRangesMax}`);
      c.need(count * 16, 'ranges');
      const out: ResyncRange[] = [];
      for (let i = 0; i < count; i++) out.push({ offsetBytes: c.u64('offsetBytes'), lengthBytes: c.u64('lengthBytes') });
      return out;
    }
    case 'data':
      return malformed(c.s, 'data tail outside the hot path');
  }
}

/** Names: 1..nameBytesMax bytes, no control characters (they end up in logs and metrics labels). */
export function checkName(name: string, what: string): string | undefined {
  const n = Buffer.byteLength(name, 'utf8');
  if (n === 0) return `${what} is empty`;
  if (n > nameBytesMax) return `${what} is ${n} bytes, nameBytesMax is ${nameBytesMax}`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return `${what} contains a control character`;
  return undefined;
}

function reservedNonZero(s: MessageSpec, field: string): never {
  throw new ProtocolError(ErrorCode.BAD_FLAGS, `${s.name} frame: reserved field ${field} is not 0`);
}

const writeSpec = specByName.get('WRITE')!;
const ackSpec = specByName.get('ACK')!;
const writeAckSpec = specByName.get('WRITE_ACK')!;
if (ackSpec.fixed.spanBytes !== 24 || writeAckSpec.fixed.spanBytes !== 24 || ackSpec.tail.length + writeAckSpec.tail.length !== 0) {
  throw new Error('wire: ACK/WRITE_ACK layouts changed; update encodeAck/decodeAck (the hand-coded path)');
}
const resyncDataSpec = specByName.get('RESYNC_DATA')!;
const readDataSpec = specByName.get('READ_DATA')!;
for (const s of [writeSpec, resyncDataSpec, readDataSpec]) {
  if (s.fixed.spanBytes !== writeFixedBytes) throw new Error(`wire: ${s.name}'s layout changed; update encodeDataHead/decodeDataBody (the hand-coded path)`);
}

/** WRITE / RESYNC_DATA / READ_DATA body, hand-coded (the hot path); `data` is a view of the body. */
function decodeDataBody(s: MessageSpec, body: Buffer, bodyCrc: number | undefined): DataPayloadMsg {
  const isWrite = s === writeSpec;
  const fixedBytes = writeFixedBytes;
  if (body.length < fixedBytes) malformed(s, `body is ${body.length} bytes, the fixed fields need ${fixedBytes}`);
  const volumeId = body.readUInt32BE(0);
  const flags = body.readUInt16BE(4);
  if (body.readUInt16BE(6) !== 0) reservedNonZero(s, 'reserved');
  const allowed = isWrite ? WriteFlags.FUA : s === resyncDataSpec ? ResyncDataFlags.LAST : 0;
  if ((flags & ~allowed) !== 0) {
    throw new ProtocolError(ErrorCode.BAD_FLAGS, `${s.name} frame: unknown flag bits 0x${(flags & ~allowed).toString(16)}`);
  }
  const epoch = readU64BE(body, 8);
  const seq = readU64BE(body, 16); // seq of a WRITE, resyncId of a RESYNC_DATA, readId of a READ_DATA
  const at = 24;
  const offsetBytes = readU64BE(body, at);
  const lengthBytes = body.readUInt32BE(at + 8);
  if (body.readUInt32BE(at + 12) !== 0) reservedNonZero(s, 'reserved2');
  if (lengthBytes !== body.length - fixedBytes) {
    malformed(s, `lengthBytes is ${lengthBytes} but the body carries ${body.length - fixedBytes} data bytes`);
  }
  const data = body.subarray(fixedBytes);
  return isWrite
    ? { type: 'WRITE', volumeId, flags, epoch, seq, offsetBytes, data, payloadCrc: bodyCrc === undefined ? undefined : crc32Suffix(bodyCrc, crc32Small(body, 0, fixedBytes), data.length) }
    : s === resyncDataSpec
      ? { type: 'RESYNC_DATA', volumeId, flags, epoch, resyncId: seq, offsetBytes, data }
      : { type: 'READ_DATA', volumeId, flags, epoch, readId: seq, offsetBytes, data };
}

/**
 * Decodes the body of a frame the parser accepted (type known, length within the type's
 * bounds, checksums good). Throws only ProtocolError (MALFORMED, BAD_FLAGS).
 */
export function decodeMessage(frame: Frame): Message {
  const s = specByCode.get(frame.type);
  if (s === undefined) throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `type 0x${frame.type.toString(16)} is not a v1 message`);
  const body = frame.body;
  if (s === writeSpec || s === resyncDataSpec || s === readDataSpec) return decodeDataBody(s, body, frame.bodyCrc);
  if (s === ackSpec || s === writeAckSpec) return decodeAck(s, body);
  if (body.length < s.fixed.spanBytes) malformed(s, `body is ${body.length} bytes, the fixed fields need ${s.fixed.spanBytes}`);
  const fixed = s.fixed.layout.decode(body, 0);
  const out: Record<string, unknown> = { type: s.name };
  for (const fl of s.fixed.fields) {
    if (fl.name.startsWith('reserved')) {
      if (fixed[fl.name] !== 0) reservedNonZero(s, fl.name);
      continue;
    }
    // buffer-layout's blob decode returns a view of the body; copy the 32 bytes so a nonce or
    // MAC kept by the handshake owns its memory.
    out[fl.name] = fl.type === 'bytes32' ? Buffer.from(fixed[fl.name] as Buffer) : fixed[fl.name];
  }
  const c = new Cursor(body, s.fixed.spanBytes, s);
  for (const t of s.tail) out[t.name] = readTail(c, t);
  if (c.at !== body.length) malformed(s, `${body.length - c.at} trailing byte(s) after the last field`);
  const msg = out as unknown as Message;
  checkFields(s, msg);
  return msg;
}

function checkFields(s: MessageSpec, msg: Message): void {
  let bad: string | undefined;
  switch (msg.type) {
    case 'HELLO':
      bad = checkName(msg.cluster, 'cluster') ?? checkName(msg.site, 'site') ?? checkName(msg.target, 'target');
      break;
    case 'CHALLENGE':
      bad = checkName(msg.cluster, 'cluster') ?? checkName(msg.site, 'site');
      break;
    case 'EPOCH':
      bad = checkName(msg.primary, 'primary');
      break;
    case 'PEER_DIRTY':
    case 'PEER_CLEAN':
      bad = checkName(msg.peer, 'peer');
      break;
    case 'WRITE_ACK':
    case 'FLUSH_ACK':
    case 'RESYNC_ACK':
    case 'READ_FAILED':
      if (msg.status > AckStatus.STALE_EPOCH) bad = `status ${msg.status} is not a v1 AckStatus`;
      break;
    default:
      break;
  }
  if (bad !== undefined) malformed(s, bad);
}

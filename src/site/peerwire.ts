// Maps the core's abstract peer messages (src/core/types.ts PeerMsg) onto wire frames
// (src/wire, docs/PROTOCOL.md) and back. The core never sees bytes; the wire never sees roles.
// Payloads cross as views both ways (no copy): a WRITE's data view is handed to the core, which
// hands it to the cache journal. The parser takes a large body from the site's payload pool,
// which hands that memory out again only after the core let the write go (payloadDone, when
// its entry left the journal's view: hal/payload-pool.ts).
import type { ByteRange, PeerMsg, SenseInfo } from '../core/types.js';
import { AckStatus, WriteFlags, heardAgoMsMax, heardAgoNever, type DataMessage, type ResyncRange } from '../wire/index.js';

/** The one volume of a single-volume cluster (with several, data frames carry their consistency group's number, issue 20). */
export const volumeId = 0;

function senseFields(sense: SenseInfo | undefined): { status: number; senseKey: number; asc: number; ascq: number } {
  return sense === undefined
    ? { status: AckStatus.OK, senseKey: 0, asc: 0, ascq: 0 }
    : { status: AckStatus.SENSE, senseKey: sense.key, asc: sense.asc, ascq: sense.ascq };
}

function senseOf(m: { status: number; senseKey: number; asc: number; ascq: number }, peer: string, what: string): SenseInfo | undefined {
  if (m.status === AckStatus.OK) return undefined;
  return { key: m.senseKey, asc: m.asc, ascq: m.ascq, message: `${peer}: ${what} failed (sense ${m.senseKey}/${m.asc}/${m.ascq})` };
}

/** Core -> wire. (Heartbeats are the link's own frames: src/net's Link sends and answers them.) */
export function toWire(msg: PeerMsg, self: string, volumeId = 0): DataMessage {
  switch (msg.type) {
    case 'write':
      return {
        type: 'WRITE',
        volumeId,
        flags: msg.fua ? WriteFlags.FUA : 0,
        epoch: msg.epoch,
        seq: msg.seq,
        offsetBytes: BigInt(msg.offsetBytes),
        data: Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength),
        payloadCrc: msg.payloadCrc,
      };
    case 'ack':
      return { type: 'ACK', volumeId, epoch: msg.epoch, seq: msg.seq };
    case 'writeStatus':
      return { type: 'WRITE_ACK', volumeId, ...senseFields(msg.sense), epoch: msg.epoch, seq: msg.seq };
    case 'flush':
      return { type: 'FLUSH', volumeId, epoch: msg.epoch, flushId: msg.flushId, barrierSeq: msg.seq };
    case 'flushAck':
      return { type: 'FLUSH_ACK', volumeId, ...senseFields(msg.sense), epoch: msg.epoch, flushId: msg.flushId };
    case 'epoch':
      return { type: 'EPOCH', epoch: msg.epoch, agreedLastSeq: 0n, primary: self };
    case 'resyncRequest':
      return { type: 'RESYNC_REQUEST', volumeId, epoch: msg.epoch, seqReceived: msg.seqReceived, ranges: rangesToWire(msg.ranges ?? []) };
    case 'resyncData':
      return {
        type: 'RESYNC_DATA',
        volumeId,
        flags: 0,
        epoch: msg.epoch,
        resyncId: msg.resyncId,
        offsetBytes: BigInt(msg.offsetBytes),
        data: Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength),
      };
    case 'resyncAck':
      return { type: 'RESYNC_ACK', volumeId, ...senseFields(msg.sense), epoch: msg.epoch, resyncId: msg.resyncId };
    case 'inSync':
      return { type: 'IN_SYNC', volumeId, epoch: msg.epoch, seq: msg.seq };
    case 'fence':
      return { type: 'FENCE', currentEpoch: msg.epoch, refusedEpoch: 0n, primary: '', reason: msg.reason };
    case 'lastHeardQuery':
      return { type: 'LAST_HEARD_QUERY', epoch: msg.epoch, queryId: msg.queryId };
    case 'lastHeardAnswer':
      return { type: 'LAST_HEARD_ANSWER', epoch: msg.epoch, queryId: msg.queryId, heardAgoMs: heardAgoToWire(msg.heardAgoMs), seqReceived: msg.seqReceived };
    case 'readRequest':
      return { type: 'READ_REQUEST', volumeId, epoch: msg.epoch, readId: msg.readId, offsetBytes: BigInt(msg.offsetBytes), lengthBytes: msg.lengthBytes };
    case 'readData':
      return msg.sense === undefined
        ? { type: 'READ_DATA', volumeId, flags: 0, epoch: msg.epoch, readId: msg.readId, offsetBytes: 0n, data: Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength) }
        : { type: 'READ_FAILED', volumeId, ...senseFields(msg.sense), epoch: msg.epoch, readId: msg.readId, reason: msg.sense.message };
    case 'peerDirty':
      return { type: 'PEER_DIRTY', epoch: msg.epoch, id: msg.id, peer: msg.peer, ranges: rangesToWire(msg.ranges) };
    case 'peerDirtyAck':
      return { type: 'PEER_DIRTY_ACK', epoch: msg.epoch, id: msg.id };
    case 'peerClean':
      return { type: 'PEER_CLEAN', epoch: msg.epoch, peer: msg.peer, ranges: rangesToWire(msg.ranges) };
  }
}

/**
 * Wire -> core. Returns undefined for frames that are not replication messages. Throws a
 * RangeError naming the peer for a field no volume of this cluster can have (another volume
 * number, an offset past 2^53): the caller refuses the frame and closes the link.
 */
export function fromWire(m: DataMessage, peer: string, volumeId = 0): PeerMsg | undefined {
  if ('volumeId' in m && m.volumeId !== volumeId) {
    throw new RangeError(`${peer}: ${m.type} is for volume ${m.volumeId}, but this link carries consistency group ${volumeId}; check that ${peer} runs the same cluster file`);
  }
  switch (m.type) {
    case 'WRITE':
      return { type: 'write', epoch: m.epoch, seq: m.seq, offsetBytes: safeOffset(m.offsetBytes, peer), lengthBytes: m.data.byteLength, fua: (m.flags & WriteFlags.FUA) !== 0, payload: m.data, payloadCrc: m.payloadCrc };
    case 'ACK':
      return { type: 'ack', epoch: m.epoch, seq: m.seq };
    case 'WRITE_ACK': {
      const sense = senseOf(m, peer, `write seq ${m.seq}`);
      // An OK per-write ack carries no more than the cumulative ACK that follows it.
      return sense === undefined ? undefined : { type: 'writeStatus', epoch: m.epoch, seq: m.seq, sense };
    }
    case 'FLUSH':
      return { type: 'flush', epoch: m.epoch, flushId: m.flushId, seq: m.barrierSeq };
    case 'FLUSH_ACK': {
      const sense = senseOf(m, peer, `flush ${m.flushId}`);
      return { type: 'flushAck', epoch: m.epoch, flushId: m.flushId, ...(sense ? { sense } : {}) };
    }
    case 'EPOCH':
      return { type: 'epoch', epoch: m.epoch };
    case 'RESYNC_REQUEST':
      return m.ranges.length === 0 ? { type: 'resyncRequest', epoch: m.epoch, seqReceived: m.seqReceived } : { type: 'resyncRequest', epoch: m.epoch, seqReceived: m.seqReceived, ranges: rangesFromWire(m.ranges, peer) };
    case 'RESYNC_DATA':
      return { type: 'resyncData', epoch: m.epoch, resyncId: m.resyncId, offsetBytes: safeOffset(m.offsetBytes, peer), payload: m.data };
    case 'RESYNC_ACK': {
      const sense = senseOf(m, peer, `resync ${m.resyncId}`);
      return { type: 'resyncAck', epoch: m.epoch, resyncId: m.resyncId, ...(sense ? { sense } : {}) };
    }
    case 'IN_SYNC':
      return { type: 'inSync', epoch: m.epoch, seq: m.seq };
    case 'FENCE':
      return { type: 'fence', epoch: m.currentEpoch, reason: m.reason || `${peer} is at epoch ${m.currentEpoch}` };
    case 'LAST_HEARD_QUERY':
      return { type: 'lastHeardQuery', epoch: m.epoch, queryId: m.queryId };
    case 'LAST_HEARD_ANSWER':
      return { type: 'lastHeardAnswer', epoch: m.epoch, queryId: m.queryId, heardAgoMs: m.heardAgoMs === heardAgoNever ? -1 : m.heardAgoMs, seqReceived: m.seqReceived };
    case 'READ_REQUEST':
      return { type: 'readRequest', epoch: m.epoch, readId: m.readId, offsetBytes: safeOffset(m.offsetBytes, peer), lengthBytes: m.lengthBytes };
    case 'READ_DATA':
      return { type: 'readData', epoch: m.epoch, readId: m.readId, payload: m.data };
    case 'READ_FAILED':
      return { type: 'readData', epoch: m.epoch, readId: m.readId, payload: new Uint8Array(0), sense: senseOf(m, peer, `read ${m.readId}`) ?? { key: 0x4, asc: 0, ascq: 0, message: `${peer}: ${m.reason || `read ${m.readId} failed`}` } };
    case 'PEER_DIRTY':
      return { type: 'peerDirty', epoch: m.epoch, id: m.id, peer: m.peer, ranges: rangesFromWire(m.ranges, peer) };
    case 'PEER_DIRTY_ACK':
      return { type: 'peerDirtyAck', epoch: m.epoch, id: m.id };
    case 'PEER_CLEAN':
      return { type: 'peerClean', epoch: m.epoch, peer: m.peer, ranges: rangesFromWire(m.ranges, peer) };
    default:
      return undefined; // HEARTBEAT (handled by the link), STATUS_*, ERROR (closes the link)
  }
}

/**
 * The core's heardAgoMs (-1 never, else ms >= 0) as LAST_HEARD_ANSWER's u32: -1 (or any negative)
 * is 0xFFFFFFFF; an age past 0xFFFFFFFE ms (49.7 days) is clamped to it, still "long ago", never
 * "never"; fractions are cut to whole ms.
 */
export function heardAgoToWire(ms: number): number {
  if (ms < 0) return heardAgoNever;
  if (!(ms <= heardAgoMsMax)) return heardAgoMsMax; // also NaN and Infinity: long ago
  return Math.floor(ms);
}

function rangesToWire(ranges: readonly ByteRange[]): ResyncRange[] {
  return ranges.map((r) => ({ offsetBytes: BigInt(r.offsetBytes), lengthBytes: BigInt(r.lengthBytes) }));
}

/** Ranges as the core takes them: beyond 2^53 they cannot name a byte of any volume we serve (the core checks them against the volume). */
function rangesFromWire(ranges: readonly ResyncRange[], peer: string): ByteRange[] {
  return ranges.map((r) => ({ offsetBytes: safeOffset(r.offsetBytes, peer), lengthBytes: safeOffset(r.lengthBytes, peer) }));
}

/** Offsets beyond 2^53 cannot name a byte of any volume we serve; the core refuses out-of-range. */
function safeOffset(offset: bigint, peer: string): number {
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`${peer}: offset ${offset} is beyond any volume`);
  return Number(offset);
}

// Builders for every message the server sends. Pure functions returning Buffers (payload data
// is never copied: a read reply is a header Buffer plus the data Buffer, written as a pair).

import {
  HandshakeFlag,
  IHAVEOPT,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  Info,
  Rep,
  exportNameZeroesBytes,
  greetingBytes,
  optionReplyHeaderBytes,
  simpleReplyHeaderBytes,
  stringBytesMax,
  structuredReplyHeaderBytes,
} from './protocol.js';
import type { NbdExtent } from './export.js';

export function greeting(): Buffer {
  const b = Buffer.alloc(greetingBytes);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  return b;
}

export function optionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(optionReplyHeaderBytes + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, optionReplyHeaderBytes);
  return b;
}

/** An option error reply carrying a message for the human (capped at the spec's string bound). */
export function optionError(option: number, replyType: number, message: string): Buffer {
  return optionReply(option, replyType, boundedString(message));
}

export function repServer(option: number, name: string, description: string): Buffer {
  const n = Buffer.from(name);
  const d = Buffer.from(description);
  const data = Buffer.allocUnsafe(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return optionReply(option, Rep.SERVER, data);
}

export function repMetaContext(option: number, contextId: number, name: string): Buffer {
  const n = Buffer.from(name);
  const data = Buffer.allocUnsafe(4 + n.length);
  data.writeUInt32BE(contextId, 0);
  n.copy(data, 4);
  return optionReply(option, Rep.META_CONTEXT, data);
}

export function infoExport(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(Info.EXPORT, 0);
  data.writeBigUInt64BE(BigInt(sizeBytes), 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return optionReply(option, Rep.INFO, data);
}

export function infoString(option: number, infoType: number, text: string): Buffer {
  const s = Buffer.from(text);
  const data = Buffer.allocUnsafe(2 + s.length);
  data.writeUInt16BE(infoType, 0);
  s.copy(data, 2);
  return optionReply(option, Rep.INFO, data);
}

export function infoBlockSize(option: number, minimumBytes: number, preferredBytes: number, maximumBytes: number): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(Info.BLOCK_SIZE, 0);
  data.writeUInt32BE(minimumBytes, 2);
  data.writeUInt32BE(preferredBytes, 6);
  data.writeUInt32BE(maximumBytes, 10);
  return optionReply(option, Rep.INFO, data);
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES was agreed. */
export function exportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : exportNameZeroesBytes));
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export function simpleReply(cookie: Buffer, errno: number): Buffer {
  const b = Buffer.allocUnsafe(simpleReplyHeaderBytes);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  cookie.copy(b, 8);
  return b;
}

function chunkHeader(cookie: Buffer, flags: number, type: number, lengthBytes: number, extraBytes: number): Buffer {
  const b = Buffer.allocUnsafe(structuredReplyHeaderBytes + extraBytes);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(lengthBytes, 16);
  return b;
}

export function structuredNone(cookie: Buffer): Buffer {
  return chunkHeader(cookie, ReplyFlag.DONE, ReplyType.NONE, 0, 0);
}

/**
 * Header (with the 8-byte offset) of a final OFFSET_DATA chunk; the data follows as its own
 * Buffer. DONE is set because the data is fully read before the header is sent, so no error
 * can be detected while the chunk is on the wire (spec: "MUST NOT mark a chunk as final if...").
 */
export function structuredOffsetDataHeader(cookie: Buffer, offsetBytes: number, dataBytes: number): Buffer {
  const b = chunkHeader(cookie, ReplyFlag.DONE, ReplyType.OFFSET_DATA, 8 + dataBytes, 8);
  b.writeBigUInt64BE(BigInt(offsetBytes), structuredReplyHeaderBytes);
  return b;
}

export function structuredError(cookie: Buffer, errno: number, message: string): Buffer {
  const m = boundedString(message);
  const b = chunkHeader(cookie, ReplyFlag.DONE, ReplyType.ERROR, 6 + m.length, 6 + m.length);
  b.writeUInt32BE(errno, structuredReplyHeaderBytes);
  b.writeUInt16BE(m.length, structuredReplyHeaderBytes + 4);
  m.copy(b, structuredReplyHeaderBytes + 6);
  return b;
}

export function structuredBlockStatus(cookie: Buffer, contextId: number, extents: readonly NbdExtent[]): Buffer {
  const payloadBytes = 4 + 8 * extents.length;
  const b = chunkHeader(cookie, ReplyFlag.DONE, ReplyType.BLOCK_STATUS, payloadBytes, payloadBytes);
  let at = structuredReplyHeaderBytes;
  b.writeUInt32BE(contextId, at);
  at += 4;
  for (const e of extents) {
    b.writeUInt32BE(e.lengthBytes, at);
    b.writeUInt32BE(e.flags >>> 0, at + 4);
    at += 8;
  }
  return b;
}

/** UTF-8 bytes of `s`, cut to the spec's 4096-byte string bound on a character boundary. */
export function boundedString(s: string): Buffer {
  const b = Buffer.from(s);
  if (b.length <= stringBytesMax) return b;
  let end = stringBytesMax;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // do not split a UTF-8 sequence
  return b.subarray(0, end);
}

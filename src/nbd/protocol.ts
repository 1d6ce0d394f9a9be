// NBD wire constants and fixed sizes, exactly as doc/proto.md (NetworkBlockDevice/nbd) names
// them. One table per field so dispatch is one switch and nothing is spelled twice.
//
// Claim 3 (the local site's SAN): the host reaches the mirrored volume only through this.

/** 'NBDMAGIC': first 8 bytes the server sends. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second greeting word, and the prefix of every client option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every fixed-newstyle option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, 16 bits). */
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (32 bits); any other bit set means we must drop the connection. */
export const ClientFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;
export const clientFlagsKnown = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;

/** Transmission flags (16 bits). */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const errBit = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: errBit + 1,
  ERR_POLICY: errBit + 2,
  ERR_INVALID: errBit + 3,
  ERR_PLATFORM: errBit + 4,
  ERR_TLS_REQD: errBit + 5,
  ERR_UNKNOWN: errBit + 6,
  ERR_SHUTDOWN: errBit + 7,
  ERR_BLOCK_SIZE_REQD: errBit + 8,
  ERR_TOO_BIG: errBit + 9,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = {
  DONE: 1 << 0,
} as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** Error values allowed on the wire ("Error values"). */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type Errno = (typeof Errno)[keyof typeof Errno];

/** base:allocation flags. */
export const State = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
} as const;

export const BASE_ALLOCATION = 'base:allocation';

/** Fixed sizes in bytes. */
export const greetingBytes = 18; // NBDMAGIC + IHAVEOPT + u16 handshake flags
export const clientFlagsBytes = 4;
export const optionHeaderBytes = 16; // IHAVEOPT + u32 option + u32 length
export const requestHeaderBytes = 28; // magic, flags, type, cookie(8), offset(8), length(4)
export const optionReplyHeaderBytes = 20;
export const simpleReplyHeaderBytes = 16;
export const structuredReplyHeaderBytes = 20;
export const exportNameZeroesBytes = 124;
/** The spec's string bound: names, descriptions and error messages are at most this long. */
export const stringBytesMax = 4096;
/** 2^25: "any length less than 2^25 SHOULD NOT be considered a denial of service attack". */
export const interopPayloadBytes = 2 ** 25;

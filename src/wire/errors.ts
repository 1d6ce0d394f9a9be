// Protocol error codes and the one error type the wire layer raises. Every refusal and every
// malformed frame ends up as a ProtocolError with a code from this table and a reason a human
// can act on; the code crosses the wire in REFUSE and ERROR frames (docs/PROTOCOL.md, "Error
// codes", is generated from `errorCodeDocs` below).

export const ErrorCode = {
  // Framing (raised by the parser; the connection is closed).
  BAD_MAGIC: 1,
  VERSION_UNSUPPORTED: 2,
  HEADER_CHECKSUM: 3,
  FRAME_TOO_LARGE: 4,
  UNKNOWN_TYPE: 5,
  BAD_FLAGS: 6,
  FRAME_SEQUENCE: 7,
  BODY_CHECKSUM: 8,
  MALFORMED: 9,
  // Handshake and authentication (REFUSE).
  AUTH_FAILED: 20,
  REPLAYED_NONCE: 21,
  UNKNOWN_CLUSTER: 22,
  UNKNOWN_SITE: 23,
  WRONG_SITE: 24,
  NOT_AUTHENTICATED: 25,
  UNEXPECTED_MESSAGE: 26,
  HANDSHAKE_TIMEOUT: 27,
  GEOMETRY_MISMATCH: 28,
  IDENTITY_MISMATCH: 29,
  // Established link (ERROR).
  LINK_TIMEOUT: 40,
  SHUTDOWN: 41,
  WINDOW_EXCEEDED: 42,
  STALE_EPOCH: 43,
  REPLACED: 44,
  INTERNAL: 45,
  REFUSED: 46,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** One line per code: when it is sent and what the operator should do. Rendered into the doc. */
export const errorCodeDocs: Record<ErrorCode, string> = {
  [ErrorCode.BAD_MAGIC]: 'The first 4 bytes of a frame are not "GMRP": the peer is not speaking this protocol (wrong port?).',
  [ErrorCode.VERSION_UNSUPPORTED]: 'Header version byte or HELLO version range does not include a version this site speaks; upgrade the older site.',
  [ErrorCode.HEADER_CHECKSUM]: 'The header CRC-32 does not match bytes 0..19: corruption on the path.',
  [ErrorCode.FRAME_TOO_LARGE]: 'The body length is larger than frameBytesMax or than this type allows; checked before any body byte is buffered.',
  [ErrorCode.UNKNOWN_TYPE]: 'The type byte names no message of this version.',
  [ErrorCode.BAD_FLAGS]: 'A reserved header flag or reserved field is not zero.',
  [ErrorCode.FRAME_SEQUENCE]: 'The frame sequence number is not the previous one plus 1 (a frame was lost, duplicated or injected).',
  [ErrorCode.BODY_CHECKSUM]: 'The body CRC-32 does not match: corruption on the path.',
  [ErrorCode.MALFORMED]: 'The body does not match the layout of its type (too short, bad string, length mismatch).',
  [ErrorCode.AUTH_FAILED]: 'The peer\'s HMAC does not prove the cluster secret: the two sites\' secret files differ.',
  [ErrorCode.REPLAYED_NONCE]: 'The HELLO nonce was already seen by this listener: a replayed handshake.',
  [ErrorCode.UNKNOWN_CLUSTER]: 'The peer belongs to another cluster (cluster name differs).',
  [ErrorCode.UNKNOWN_SITE]: 'The dialing site name is not a peer this listener accepts (not in its config).',
  [ErrorCode.WRONG_SITE]: 'The listener is not the site the dialer meant to reach (HELLO target or CHALLENGE site name differs).',
  [ErrorCode.NOT_AUTHENTICATED]: 'A data frame (WRITE, ACK, ...) arrived before the handshake finished.',
  [ErrorCode.UNEXPECTED_MESSAGE]: 'A handshake frame arrived out of order, or after the link was established.',
  [ErrorCode.HANDSHAKE_TIMEOUT]: 'The handshake did not finish within handshakeTimeoutMs.',
  [ErrorCode.GEOMETRY_MISMATCH]: 'The peer\'s cluster file gives another volume size or block size than this site\'s (v2): fix the cluster files so every site has the same volume.',
  [ErrorCode.IDENTITY_MISMATCH]: 'The site name claimed in HELLO/CHALLENGE is not the site named by the peer\'s TLS certificate (or the certificate names another cluster).',
  [ErrorCode.LINK_TIMEOUT]: 'Nothing was received for linkTimeoutMs: the link is declared dead.',
  [ErrorCode.SHUTDOWN]: 'The sender is stopping (orderly close).',
  [ErrorCode.WINDOW_EXCEEDED]: 'The sender has more unacknowledged WRITEs in flight than inflightWritesMax or inflightBytesMax.',
  [ErrorCode.STALE_EPOCH]: 'The peer works in an older epoch; see FENCE.',
  [ErrorCode.REPLACED]: 'A newer authenticated connection from the same site replaced this one.',
  [ErrorCode.INTERNAL]: 'The sender hit an internal error and closes the link; see its log.',
  [ErrorCode.REFUSED]: 'A well-formed frame the receiving site refuses: its sender may not send it (see "Who sends what": not this site\'s upstream or downstream in the cluster file, an answer to no question, an epoch not announced through a primary or standby) or it names a volume, bytes or sequence numbers the site cannot accept. The reason names the peer and the frame; check both sites\' cluster files.',
};

const codeNames: Record<number, string> = Object.fromEntries(
  Object.entries(ErrorCode).map(([name, code]) => [code, name]),
);

/** Name of a wire error code, or `CODE_<n>` for one this version does not know. */
export function errorCodeName(code: number): string {
  return codeNames[code] ?? `CODE_${code}`;
}

/**
 * The only error the parser, the decoders and the handshake raise. `code` goes on the wire,
 * `reason` goes in the log (and, truncated to reasonBytesMax, in the REFUSE/ERROR frame).
 */
export class ProtocolError extends Error {
  readonly code: ErrorCode;
  readonly reason: string;

  constructor(code: ErrorCode, reason: string) {
    super(`${errorCodeName(code)}: ${reason}`);
    this.name = 'ProtocolError';
    this.code = code;
    this.reason = reason;
  }
}

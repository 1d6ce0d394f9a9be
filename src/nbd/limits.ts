// Every bound of the NBD front end, named with its unit (STYLE.md: put a limit on everything).

export interface NbdLimits {
  /** Largest option payload buffered during the handshake; longer ones get NBD_REP_ERR_TOO_BIG. */
  readonly optionBytesMax: number;
  /** Options claiming more data than this are treated as denial of service (hard disconnect). */
  readonly optionDiscardBytesMax: number;
  /** Options one connection may send before it must pick an export (stops endless haggling). */
  readonly optionsPerConnectionMax: number;
  /**
   * Largest READ/WRITE length, advertised as the maximum block size (NBD_INFO_BLOCK_SIZE).
   * Default requestBytesMaxDefault; longer writes are skipped unread and answered EINVAL.
   */
  readonly requestBytesMax: number;
  /** Requests of one connection being served at once; beyond it we stop reading the socket. */
  readonly requestsInflightMax: number;
  /** Payload and reply bytes of one connection in flight at once; beyond it we stop reading. */
  readonly inflightBytesMax: number;
  /**
   * Server-wide payload bytes in memory (write payloads from header to completion, read data
   * until the kernel took it). At least requestBytesMax. Connections wait (stop reading) for it.
   */
  readonly serverPayloadBytesMax: number;
  /** Reply bytes queued in the socket for a client that does not read; beyond it we stop reading. */
  readonly replyQueueBytesMax: number;
  /**
   * A client whose queued replies do not drain for this long is disconnected, so a client that
   * stops reading cannot hold reply memory (and the server-wide budget) forever.
   */
  readonly replyStallTimeoutMs: number;
  /** Connections served at once; more are refused (NBD_REP_ERR_POLICY, then closed). */
  readonly connectionsMax: number;
  /** Refused connections kept open long enough to say why; beyond it they are closed at once. */
  readonly refusedConnectionsMax: number;
  /** Time from accept to entering transmission; a client still haggling after it is dropped. */
  readonly handshakeTimeoutMs: number;
  /** Connections still negotiating at once; past it the oldest idle one is closed for a new one. */
  readonly negotiatingMax: number;
  /** ... of which from one source address. */
  readonly negotiatingPerAddressMax: number;
  /** Connections served at once from one source address. */
  readonly connectionsPerAddressMax: number;
  /** On close(), time to let in-flight requests finish before connections are destroyed. */
  readonly closeGraceMs: number;
  /** Chunk of zeroes written per call when an export has no zero() of its own. */
  readonly zeroChunkBytes: number;
  /** Most extents returned in one BLOCK_STATUS reply. */
  readonly blockStatusExtentsMax: number;
}

/**
 * 64 MiB, what nbdkit and nbd-server accept. The spec's floor is 2^25 (32 MiB: "any length less
 * than 2^25 SHOULD NOT be considered a denial of service"), but a client that negotiates with
 * NBD_OPT_EXPORT_NAME never sees NBD_INFO_BLOCK_SIZE and sends what its peers take: a replay of
 * the nbd project's integrity log sends writes of ~48 MiB. Memory stays bounded by the budgets
 * below, which are multiples of it: inflightBytesMaxDefault holds two such requests per
 * connection, serverPayloadBytesMaxDefault eight server-wide.
 */
export const requestBytesMaxDefault = 64 * 1024 * 1024;
/** Payload and reply bytes one connection has in flight before it stops reading: two maximal requests. */
export const inflightBytesMaxDefault = 2 * requestBytesMaxDefault;
/** Server-wide payload bytes in memory (byte-budget.ts): eight maximal requests. */
export const serverPayloadBytesMaxDefault = 8 * requestBytesMaxDefault;
/** Reply bytes queued for a slow reader before we stop reading: one maximal read reply. */
export const replyQueueBytesMaxDefault = requestBytesMaxDefault;

export const defaultNbdLimits: NbdLimits = {
  optionBytesMax: 64 * 1024,
  optionDiscardBytesMax: 16 * 1024 * 1024,
  optionsPerConnectionMax: 256,
  requestBytesMax: requestBytesMaxDefault,
  requestsInflightMax: 64,
  inflightBytesMax: inflightBytesMaxDefault,
  serverPayloadBytesMax: serverPayloadBytesMaxDefault,
  replyQueueBytesMax: replyQueueBytesMaxDefault,
  replyStallTimeoutMs: 60_000,
  connectionsMax: 1024,
  refusedConnectionsMax: 64,
  handshakeTimeoutMs: 10_000,
  negotiatingMax: 1024,
  negotiatingPerAddressMax: 512,
  connectionsPerAddressMax: 768,
  closeGraceMs: 5_000,
  zeroChunkBytes: 1024 * 1024,
  blockStatusExtentsMax: 1024,
};

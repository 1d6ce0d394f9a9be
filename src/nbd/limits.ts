// Every bound of the NBD front end, named with its unit (STYLE.md: put a limit on everything).

export interface NbdLimits {
  /** Largest option payload buffered during the handshake; longer ones get NBD_REP_ERR_TOO_BIG. */
  readonly optionBytesMax: number;
  /** Options claiming more data than this are treated as denial of service (hard disconnect). */
  readonly optionDiscardBytesMax: number;
  /** Options one connection may send before it must pick an export (stops endless haggling). */
  readonly optionsPerConnectionMax: number;
  /**
   * Largest READ/WRITE length, advertised as the maximum block size. 2^25 is the spec's interop
   * size (qemu-img sends 7+ MB zero writes when WRITE_ZEROES is not offered); longer writes are
   * skipped unread and answered EINVAL.
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

export const defaultNbdLimits: NbdLimits = {
  optionBytesMax: 64 * 1024,
  optionDiscardBytesMax: 16 * 1024 * 1024,
  optionsPerConnectionMax: 256,
  requestBytesMax: 32 * 1024 * 1024,
  requestsInflightMax: 64,
  inflightBytesMax: 128 * 1024 * 1024,
  serverPayloadBytesMax: 512 * 1024 * 1024,
  replyQueueBytesMax: 64 * 1024 * 1024,
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

// The vocabulary of the pure core: identities, the abstract peer messages, the events a role
// is fed and the actions it hands back. Nothing here does I/O (DESIGN "The core is a set of
// pure state machines"; etcd raft's Ready, TigerBeetle's replica). The site layer executes the
// actions with real devices and sockets and feeds the completions back as events; the
// simulator in test/sim does the same with seeded fakes.
//
// Contract the executor (site layer or simulator) must keep, because correctness rests on it:
//  1. Actions of one returned list are started in list order. An action that has an `opId`
//     produces exactly one completion event with that `opId` (unless the process dies first).
//  2. cacheAppend completions arrive in issue order, and after a crash the cache holds a prefix
//     of the appends issued (a journal: replay stops at the first torn entry). cacheDrop takes
//     effect in issue order before the next action runs (a crash may forget only the newest
//     drops), so a replay never resurrects an entry older than one that was dropped after it.
//  3. bitmapSet is durable when its completion arrives; bitmapSet/bitmapClear apply in issue
//     order. metaPersist is durable when its completion arrives.
//  4. `send` on a peer whose link is down is dropped silently: links are ordered streams
//     (TCP), a reset loses what was in flight, and the core re-sends after the next peerUp.
//     `closePeer` ends that link (the core refused the peer's input); a peerDown follows.
//  5. Timers are ticks: feed `tick` every few ms (Limits.tickMs); every event carries `nowMs`
//     from a monotonic clock. The core never reads a clock or a random source itself.
//  6. Liveness is the link's: it exchanges heartbeats by itself and reports each one it hears
//     as `peerHeard` (with the round trip when it measured one). The core sends none.

/** Epoch: grows by one at every promotion; persisted by every site (fencing). u64 on the wire. */
export type Epoch = bigint;
/** Sequence number assigned by the primary of an epoch, strictly increasing. u64 on the wire. */
export type Seq = bigint;
/** A site name from the cluster file. */
export type PeerId = string;
/** Host operation id chosen by the site (e.g. an index into its NBD cookie table). */
export type HostOpId = number;
/** Id of one I/O action, echoed by its completion event. Unique per core instance. */
export type OpId = number;

/** A byte range of the volume. */
export interface ByteRange {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** SCSI-style failure carried across the wire (hal/blockdev.ts SenseError flattened). */
export interface SenseInfo {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
  readonly message: string;
}

// ---------------------------------------------------------------------------------------------
// Peer messages (abstract; src/wire maps each to a frame)

export type PeerMsg =
  /** A replicated host write. `fua`: durable at the receiver before it is acked. */
  | { type: 'write'; epoch: Epoch; seq: Seq; offsetBytes: number; lengthBytes: number; fua: boolean; payload: Uint8Array; payloadCrc?: number }
  /**
   * Cumulative ack. Downstream -> upstream: every write with seq <= `seq` of `epoch` is in the
   * sender's cache AND performed on its storage (claim 10 iii, 11). Upstream -> downstream
   * (issue 16 item 4): every write up to `seq` is acked by every in-sync site (committed), so the
   * receiver may let those go; it keeps the writes above it (the tail a failover reconciles).
   */
  | { type: 'ack'; epoch: Epoch; seq: Seq }
  /** Per-write failure, sent before the cumulative ack that covers `seq`. */
  | { type: 'writeStatus'; epoch: Epoch; seq: Seq; sense: SenseInfo }
  /** Barrier: flush storage once every write with seq <= `seq` is performed. */
  | { type: 'flush'; epoch: Epoch; flushId: bigint; seq: Seq }
  | { type: 'flushAck'; epoch: Epoch; flushId: bigint; sense?: SenseInfo }
  /** Upstream -> downstream, first message on every new link: "I speak for `epoch`". */
  | { type: 'epoch'; epoch: Epoch }
  /**
   * Downstream -> upstream, the answer to `epoch`: "I hold every write of `epoch` up to
   * `seqReceived`; send the rest, and resync me if you owe me regions". `ranges` names what the
   * sender knows may differ from the upstream (issue 16): writes it holds of an older epoch
   * above what every site acked (a failover's divergent tail), and ranges its own copy lost
   * (journal damage, failed storage writes). Sent again mid-session when such ranges appear.
   */
  | { type: 'resyncRequest'; epoch: Epoch; seqReceived: Seq; ranges?: readonly ByteRange[] }
  /** One region of the upstream's storage, sent to a mirror being resynced. */
  | { type: 'resyncData'; epoch: Epoch; resyncId: bigint; offsetBytes: number; payload: Uint8Array }
  /** The region is on the receiver's stable storage. */
  | { type: 'resyncAck'; epoch: Epoch; resyncId: bigint; sense?: SenseInfo }
  /**
   * Upstream -> downstream: "you are in sync: you hold every write of `epoch` I acked to the
   * host up to `seq`, and from now on I ack the host only with you". Sent when a mirror joins
   * in sync or finishes its resync. A standby may be promoted only after it heard this (and
   * nothing since put it out of sync: a resync region, a failed storage write), or a promotion
   * could lose acked writes it never received.
   */
  | { type: 'inSync'; epoch: Epoch; seq: Seq }
  /** "Your epoch is stale; mine is `epoch`." The receiver must stop acting for its epoch. `primary`: who is primary of `epoch`, if the sender knows. */
  | { type: 'fence'; epoch: Epoch; reason: string; primary?: PeerId }
  /**
   * Primary -> its standby (issue 16 item 4): `peer` misses these ranges (the primary's dirty
   * bitmap for it), so the standby keeps a copy and a promotion resyncs `peer` by bitmap, not
   * the whole volume. Answered with peerDirtyAck once the copy is durable; the host ack of the
   * write that caused it waits for that.
   */
  | { type: 'peerDirty'; epoch: Epoch; id: bigint; peer: PeerId; ranges: readonly ByteRange[] }
  | { type: 'peerDirtyAck'; epoch: Epoch; id: bigint }
  /** Primary -> its standby: `peer` holds these ranges again (resynced). Best effort. */
  | { type: 'peerClean'; epoch: Epoch; peer: PeerId; ranges: readonly ByteRange[] }
  /**
   * Upstream -> downstream (issue 16 item 3): "send me these bytes of your copy" (the primary
   * repairs its own copy, or serves a host read it cannot serve itself). Answered with readData.
   */
  | { type: 'readRequest'; epoch: Epoch; readId: bigint; offsetBytes: number; lengthBytes: number }
  | { type: 'readData'; epoch: Epoch; readId: bigint; payload: Uint8Array; sense?: SenseInfo }
  /**
   * Failover detection (claim 13 v, issue 10): a standby that stopped hearing the primary asks
   * every other site "when did you last hear the primary?". `epoch` is the asker's; the answer
   * is read-only, so any site answers it whatever its own epoch.
   */
  | { type: 'lastHeardQuery'; epoch: Epoch; queryId: bigint }
  /**
   * `heardAgoMs`: ms since the answering site last heard its primary (its upstream), or -1 if
   * never in this process life. Ages, not timestamps: sites' monotonic clocks are unrelated.
   * `seqReceived`: the highest seq of `epoch` it holds (status and the catch-up rule).
   */
  | { type: 'lastHeardAnswer'; epoch: Epoch; queryId: bigint; heardAgoMs: number; seqReceived: Seq };

// ---------------------------------------------------------------------------------------------
// Persistent state handed to a role at start (what the cache journal, bitmap file and meta
// record held when the process last stopped)

/** One pending write as it sits in the battery-backed cache journal. */
export interface CacheEntry {
  readonly epoch: Epoch;
  readonly seq: Seq;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  readonly payload: Uint8Array;
  /**
   * CRC-32 of `payload` when the site computed it already (issue 18: once per site): where the
   * host write came in, or from a WRITE frame's verified body CRC. The core only passes it on,
   * to the cache journal and in WRITEs it sends; absent, whoever needs it computes it.
   */
  readonly payloadCrc?: number;
}

/** The small persistent record every site keeps (epoch for fencing, seq reservation). */
export interface Meta {
  readonly epoch: Epoch;
  /** Every seq below this may have been used; a restarted primary continues from here. */
  readonly seqReserved: Seq;
  /**
   * The role this site took on in a failover, which overrides its configured role at every
   * restart (issues 10, 16 item 5): `primary` = promoted (the configured standby, or the
   * configured primary promoted back), `standby` = a fenced primary that follows the site that
   * was promoted (and can be promoted back: failback), `mirror` = a demoted primary waiting for
   * the next primary (it becomes its standby once it adopts that epoch). Sticky: a save that
   * leaves it out keeps the stored value (src/site/persist.ts).
   */
  readonly acting?: 'primary' | 'standby' | 'mirror';
  /**
   * A standby's promotion guard (issue 10; issue 16 item 1: bound to its epoch): the epoch in
   * which its primary last said `inSync`, 0 once a resync region or a failed write undid that.
   * It permits a promotion only while it equals the site's epoch, so a guard granted in an
   * earlier epoch dies with it. Sticky like `acting`. Absent: 0.
   */
  readonly inSyncEpoch?: Epoch;
}

export interface Recovered {
  readonly meta: Meta;
  /** Cache journal contents in append order. */
  readonly cacheEntries: readonly CacheEntry[];
  /**
   * Persistent dirty bitmaps: peer -> dirty region indexes (a primary's mirrors, a standby's
   * copies). Under `localSuspectKey`: regions of this site's own copy that may be wrong.
   */
  readonly dirtyRegions: ReadonlyMap<PeerId, readonly number[]>;
  /**
   * What the cache journal lost to damage (issue 16 item 2): ranges it could name, and whether
   * some entry's range could not be named (then this site's whole copy is suspect).
   */
  readonly lost?: { readonly ranges: readonly ByteRange[]; readonly unknown: boolean };
}

/** The dirty-bitmap key of a site's own suspect regions (never a site name: names are plain). */
export const localSuspectKey = '@local';

/** Most byte ranges one message names (resyncRequest, peerDirty): the wire's resyncRangesMax. */
export const peerRangesMax = 4096;

/** Largest readRequest a site serves: the wire's payloadBytesMax (one READ_DATA frame). */
export const peerReadBytesMax = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Events (fed to `step(event, nowMs)`)

export type CoreEvent =
  /** First event of every process life. `recovered` is what persistent storage held. */
  | { type: 'start'; recovered: Recovered }
  | { type: 'tick' }
  | { type: 'hostWrite'; id: HostOpId; offsetBytes: number; lengthBytes: number; fua: boolean; payload: Uint8Array; payloadCrc?: number }
  | { type: 'hostFlush'; id: HostOpId }
  /** A host read this site cannot serve from its own storage (it is suspect there): read from a peer. */
  | { type: 'hostRead'; id: HostOpId; offsetBytes: number; lengthBytes: number }
  /**
   * The storage came back after failing (hal/array.ts recovery): these ranges missed writes
   * while it was down (`unknown`: it cannot say which, the whole copy is suspect).
   */
  | { type: 'storageRecovered'; ranges: readonly ByteRange[]; unknown: boolean }
  /** A link to `peer` is connected and authenticated. */
  | { type: 'peerUp'; peer: PeerId }
  /** The link to `peer` was lost (reset, timeout, peer died). Whatever was in flight is gone. */
  | { type: 'peerDown'; peer: PeerId }
  | { type: 'recv'; peer: PeerId; msg: PeerMsg }
  /**
   * The link heard the peer's heartbeat (contract 6): the peer's epoch and last seq (a primary:
   * the last it assigned; any other role: the last it acked), and the round trip when measured.
   */
  | { type: 'peerHeard'; peer: PeerId; epoch: Epoch; lastSeq: Seq; rttMs?: number }
  | { type: 'cacheAppended'; opId: OpId; sense?: SenseInfo }
  | { type: 'storageWritten'; opId: OpId; sense?: SenseInfo }
  | { type: 'storageRead'; opId: OpId; data?: Uint8Array; sense?: SenseInfo }
  | { type: 'storageFlushed'; opId: OpId; sense?: SenseInfo }
  | { type: 'bitmapPersisted'; opId: OpId }
  | { type: 'metaPersisted'; opId: OpId }
  // External arbiter (issue 20 item 3: etcd instead of the built-in vote). The site layer runs
  // the arbiter's session (src/site/coordinator.ts) and feeds what it proved; the core decides.
  /**
   * A primary with `externalAuthority`: whether it holds the arbiter's grant for its epoch now
   * (its lease, or the exception of the coordinator's header). Not held: host writes and
   * flushes are held, neither admitted nor acked, until it is held again or a newer epoch
   * fences this primary (then they fail).
   */
  | { type: 'authority'; held: boolean; reason: string }
  /**
   * A following standby with `arbiter: 'external'` won the primary's role for `epoch` (the
   * arbiter's epoch record moved to it in the same transaction) at the arbiter's `revision`.
   */
  | { type: 'arbiterGranted'; epoch: Epoch; revision: bigint }
  /** The arbiter holds `epoch`: a primary of an older epoch is fenced by it. */
  | { type: 'arbiterEpoch'; epoch: Epoch };

// ---------------------------------------------------------------------------------------------
// Actions (returned by `step`)

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Why a host operation failed: `busy` means "queue full, retry later" (backpressure). */
export type HostError =
  | { kind: 'busy'; message: string }
  | { kind: 'fenced'; message: string }
  | { kind: 'io'; message: string; sense: SenseInfo };

export type CoreAction =
  /** Append to the battery-backed cache; completion `cacheAppended`. */
  | { type: 'cacheAppend'; opId: OpId; entry: CacheEntry }
  /** Remove entries from the cache (claim 12 vi, 21). No completion; in issue order. */
  | { type: 'cacheDrop'; entries: readonly { epoch: Epoch; seq: Seq }[] }
  /** Perform a write on local storage; completion `storageWritten`. */
  | { type: 'storageWrite'; opId: OpId; offsetBytes: number; payload: Uint8Array; fua: boolean }
  /** Read local storage (resync source); completion `storageRead` with `data`. */
  | { type: 'storageRead'; opId: OpId; offsetBytes: number; lengthBytes: number }
  /** Make every completed storage write durable; completion `storageFlushed`. */
  | { type: 'storageFlush'; opId: OpId }
  | { type: 'send'; peer: PeerId; msg: PeerMsg }
  /** End the link to `peer`: it sent something the core refuses (named in `reason`). */
  | { type: 'closePeer'; peer: PeerId; reason: string }
  /**
   * The `storageRecovered` ranges are durably recorded here as suspect (they will be repaired
   * from peers): the storage may forget them (hal/array.ts clearStale). No completion.
   */
  | { type: 'storageStaleRecorded'; ranges: readonly ByteRange[] }
  /** Complete a host write or flush; no `error` means success. */
  | { type: 'ackHost'; id: HostOpId; error?: HostError; data?: Uint8Array }
  /** Persist dirty bits for `peer`; completion `bitmapPersisted`. */
  | { type: 'bitmapSet'; opId: OpId; peer: PeerId; regions: readonly number[] }
  /** Clear dirty bits for `peer` (no completion needed: a stale set bit only costs a resync). */
  | { type: 'bitmapClear'; peer: PeerId; regions: readonly number[] }
  /** Persist the meta record; completion `metaPersisted`. */
  | { type: 'metaPersist'; opId: OpId; meta: Meta }
  | { type: 'log'; level: LogLevel; event: string; fields: Record<string, unknown> }
  /**
   * Nothing reads this write payload any more (its entry left the journal's view): the site
   * may reuse its buffer (hal/payload-pool.ts). No completion.
   */
  | { type: 'payloadDone'; payload: Uint8Array };

// ---------------------------------------------------------------------------------------------
// Named bounds (TigerBeetle style: every queue and window has a maximum, checked on insert)

export interface Limits {
  /** Writes with a seq assigned and not yet acked to the host (the per-mirror window). */
  readonly inflightWritesMax: number;
  /** Payload bytes of those writes. */
  readonly inflightBytesMax: number;
  /** Host operations waiting for a window slot; beyond this the host gets `busy`. */
  readonly hostQueueWritesMax: number;
  /** Bytes of payload the cache may hold (pending + awaiting the next storage flush). */
  readonly cacheBytesMax: number;
  /** Granularity of the dirty bitmap and of resync transfers. */
  readonly regionBytes: number;
  /** Resync rate: bytes of token budget added per second of ticks. */
  readonly resyncBytesPerSecMax: number;
  /** Regions being read/sent/acked at once per resyncing mirror. */
  readonly resyncInflightRegionsMax: number;
  /** Under `degrade`, how long an in-sync mirror may be unreachable before it is degraded. */
  readonly mirrorLossGraceMs: number;
  readonly heartbeatIntervalMs: number;
  /** Flush local storage at least this often while unflushed writes sit in the cache. */
  readonly flushIntervalMs: number;
  /**
   * ... or once this many performed writes await a flush. Each fdatasync costs a fixed ~450 us of
   * CPU (the file system's journal commit and the device's cache flush) beyond writing back its
   * pages: at 64 writes that was ~7 us per 4 KiB write on every site, at 256 under 2 (issue 18;
   * the payloads held until the flush, 1 MiB at 4 KiB, are the price).
   */
  readonly flushAfterWritesMax: number;
  /**
   * ... or once performed writes of this many bytes await one: large writes then leave the
   * journal (and give their buffers back, hal/payload-pool.ts) after a few MiB, not after half
   * the cache (issue 18).
   */
  readonly flushAfterBytesMax: number;
  /** Seqs reserved per metaPersist (the persisted high-water mark a restarted primary resumes from). */
  readonly seqReserveChunk: bigint;
  /** Host flushes in flight at once (beyond: queued in the host queue). */
  readonly flushesInflightMax: number;
  /** Writes a mirror holds received but not yet admitted to its cache (cache full). */
  readonly mirrorReceiveQueueMax: number;
  /** Resync regions a mirror holds waiting for its cache to drain. */
  readonly mirrorResyncQueueMax: number;
  /** Suggested tick period for the site layer. */
  readonly tickMs: number;
  /**
   * How long a (re)started primary that must prove its authority (issue 16 item 1) holds host
   * writes back waiting for a majority to confirm its epoch; after it they are refused with
   * the reason until the majority is there.
   */
  readonly authorityWaitMs: number;
}

export const defaultLimits: Limits = {
  inflightWritesMax: 128,
  inflightBytesMax: 32 * 1024 * 1024,
  hostQueueWritesMax: 256,
  cacheBytesMax: 64 * 1024 * 1024,
  regionBytes: 64 * 1024, // 64 KiB: 16 Ki regions per GiB, a 2 KiB bitmap per GiB per mirror
  resyncBytesPerSecMax: 64 * 1024 * 1024,
  resyncInflightRegionsMax: 8,
  mirrorLossGraceMs: 3000,
  heartbeatIntervalMs: 1000,
  flushIntervalMs: 1000,
  flushAfterWritesMax: 256,
  flushAfterBytesMax: 8 * 1024 * 1024,
  seqReserveChunk: 1n << 20n,
  flushesInflightMax: 16,
  mirrorReceiveQueueMax: 1024,
  mirrorResyncQueueMax: 64,
  tickMs: 10,
  authorityWaitMs: 10_000,
};

export type MirrorLossPolicy = 'block' | 'degrade';

/** Assertions stay on in production (TigerBeetle): a broken invariant stops the role loudly. */
export class CoreAssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CoreAssertionError';
  }
}

/** `message` may be a function: hot paths build their text only when the assertion fails. */
export function assert(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new CoreAssertionError(typeof message === 'function' ? message() : message);
}

/** What every role is configured with: its name, the volume's geometry, the bounds. */
export interface CoreConfig {
  readonly self: PeerId;
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly limits: Limits;
}

/** What a site's links put in the heartbeats they send (contract 6). */
export interface HeartbeatState {
  readonly epoch: Epoch;
  /** A primary: the last seq it assigned; any other role: the last seq it acked upstream. */
  readonly lastSeq: Seq;
}

/** A role: fed one event at a time, returns the actions to execute. */
export interface Role {
  step(event: CoreEvent, nowMs: number): CoreAction[];
  heartbeat(): HeartbeatState;
  /** Nothing in flight: no host op, no cache entry, every peer it feeds in sync. */
  quiescent(): boolean;
}

/** The events that complete an I/O action (they carry its `opId`). */
export type Completion = Extract<CoreEvent, { opId: OpId }>;

export function senseOf(message: string, key = 0x4, asc = 0x44, ascq = 0): SenseInfo {
  return { key, asc, ascq, message };
}

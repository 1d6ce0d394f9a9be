// What a site says about itself on GET /status, and what `geomirror status` reads back
// (issue 5 item 8): role, epoch, last seq acked, sync state, cache occupancy and, per peer,
// link state and round-trip time. One shape, shared by the admin server and the CLI.
import type { Role } from './config.js';
import type { CoordinatorStatus } from './coordinator.js';
import type { LinkState, SyncState } from './metrics.js';

/**
 * The site's own state. in-sync/degraded/resyncing describe the replicas this site feeds
 * (a primary: every mirror in sync, some not, or one being resynced); a mirror reports
 * in-sync once it serves its upstream. `starting`/`stopping` bracket the run.
 */
export const siteStates = ['starting', 'in-sync', 'degraded', 'resyncing', 'standby', 'stopping'] as const;
export type SiteState = (typeof siteStates)[number];

export interface PeerStatus {
  name: string;
  /** How this site sees the peer: it sends writes to a `mirror`/`downstream`, receives from `upstream`. */
  relation: 'mirror' | 'downstream' | 'upstream' | 'standby' | 'primary' | 'witness';
  link: LinkState;
  /** Last heartbeat round trip, when the link is up. */
  rttMs?: number;
  /** For peers this site feeds: is that replica in sync. */
  sync?: SyncState;
  resyncPercent?: number;
  /** Decimal string: seqs are u64 and may pass 2^53. */
  lastSeqAcked?: string;
  inflightWrites?: number;
  /** Payload bytes sent to this peer and not yet acked. */
  inflightBytes?: number;
  /**
   * For peers this site feeds: bytes of the peer's replica known to differ from this site's
   * (its dirty regions times the region size): 0 in sync, falling to 0 as a resync copies.
   * Optional: filled in by the replication status where the core knows it.
   */
  outOfSyncBytes?: number;
  /** While resyncing this peer: bytes per second copied to it, averaged over the last seconds. */
  resyncBytesPerSec?: number;
  /** While resyncing this peer: seconds until done at resyncBytesPerSec (outOfSyncBytes / rate). */
  resyncEtaSeconds?: number;
  /**
   * For peers this site feeds: bytes resynced to the peer since this site started acting as
   * primary (regions copied, each counted once it is on the peer's storage). After a failover it
   * says how much the promotion cost each mirror (issue 16 item 4: the divergent tail, not the
   * volume). Optional: filled in where the core knows it.
   */
  resyncedBytes?: number;
  /** A relay's view of its downstream hop (issue 7 item 4): what it holds that has not gone down. */
  relay?: {
    ackMode: 'cached' | 'end-to-end';
    cachedEntries: number;
    cachedBytes: number;
    /** Decimal string (u64): oldest seq in the relay cache not yet acked downstream. */
    oldestUnackedSeq?: string;
    /** How far the downstream is behind this relay: writes, payload bytes, age of the oldest. */
    lagWrites: number;
    lagBytes: number;
    lagMs: number;
  };
}

/** One failover this site took part in (issue 10 item 6): when, what, why, and the last seq. */
export interface FailoverRecord {
  /** ISO 8601 wall-clock time. */
  at: string;
  /** promoted: this site became primary; fenced: it saw a newer epoch and stopped acting as primary; demoted: planned. */
  kind: 'promoted' | 'fenced' | 'demoted';
  site: string;
  fromEpoch: number;
  toEpoch: number;
  /** Decimal string (u64): the agreed last seq of the old epoch (promoted) or the last seq it assigned. */
  lastSeq: string;
  reason: string;
  /** promoted by the etcd coordinator: the etcd revision of the transaction that won the key (decimal). */
  revision?: string;
}

export interface SiteStatus {
  cluster: string;
  site: string;
  /** The role this site acts as now; a failover can differ from the cluster file's. */
  role: Role;
  /** The cluster file's role, when a failover changed it. */
  configuredRole?: Role;
  /** Set when a newer epoch fenced this site as primary: host writes are refused. */
  fencedBy?: number;
  /** A standby's watch on its primary. */
  standby?: {
    phase: 'following' | 'promoting' | 'primary';
    primary: string;
    failoverTimeoutMs: number;
    lastHeardPrimaryMsAgo?: number;
    /** Promotion guard: the primary said this site holds every acked write (false: it would not take over by itself). */
    inSync: boolean;
  };
  /** Every failover this site took part in, oldest first. */
  failovers?: FailoverRecord[];
  /** With an etcd coordinator (issue 20 item 3): this site's lease, who holds the key, whether etcd answers. */
  coordinator?: CoordinatorStatus;
  volume: string;
  epoch: number;
  /** Decimal string (u64). */
  lastSeqAcked: string;
  state: SiteState;
  /** With state resyncing: overall progress 0-100. */
  resyncPercent?: number;
  cache: { usedBytes: number; capacityBytes: number; entries: number };
  /**
   * Health of this site's storage and cache devices, where the runtime knows it (an array
   * member that failed, a cache device that vanished): `geomirror events` reports changes.
   */
  devices?: { device: string; health: 'ok' | 'failed' | 'missing'; error?: string }[];
  /** A primary's host writes in flight (received, not yet acked to the host), over all peers at once. */
  hostInflight?: { writes: number; bytes: number };
  /**
   * While a `geomirror verify` reads this site's storage (GET /checksums within the last
   * verifyProgressFreshMs): how far it got. Set by the admin layer (run.ts), not the role.
   */
  verify?: { doneBytes: number; totalBytes: number };
  peers: PeerStatus[];
  pid: number;
  uptimeSeconds: number;
  /**
   * A site with several volumes (issue 20): each consistency group's own status, with its volumes.
   * The fields above are then those of the first group the site carries.
   */
  groups?: GroupStatus[];
}

/** One consistency group at a site: its volumes and the status of its replication stream. */
export interface GroupStatus {
  group: string;
  volumes: { name: string; sizeBytes: number; offsetBytes: number }[];
  status: SiteStatus;
}

/** Checks a /status body from the network before the CLI trusts it (validate at the edge). */
export function parseSiteStatus(body: unknown, from: string): SiteStatus {
  const s = body as Partial<SiteStatus> | null;
  const bad = (what: string): never => {
    throw new Error(`${from}: /status answer is not a geomirror site status (${what})`);
  };
  if (typeof s !== 'object' || s === null) return bad('not a JSON object');
  if (typeof s.site !== 'string') bad('no site');
  if (typeof s.role !== 'string') bad('no role');
  if (typeof s.epoch !== 'number') bad('no epoch');
  if (typeof s.lastSeqAcked !== 'string') bad('no lastSeqAcked');
  if (typeof s.state !== 'string') bad('no state');
  if (typeof s.cache !== 'object' || s.cache === null) bad('no cache');
  if (!Array.isArray(s.peers)) bad('no peers');
  return s as SiteStatus;
}

// What a site says about itself (GET /status, STATUS_REPLY, `geomirror status`), computed from
// its core's status, its links and its cache: a pure function, so the same state always reads
// the same way. The status gauges read it when Prometheus scrapes (bindStatusGauges in
// src/site/metrics.ts); nothing here sets a metric.
import type { MirrorStatus } from '../core/mirror.js';
import type { PrimaryStatus } from '../core/primary.js';
import type { RelayStatus } from '../core/relay.js';
import type { ClusterConfig, SiteConfig } from './config.js';
import type { ActingRole, CoreStatus } from './cores.js';
import type { FailoverRecord, PeerStatus, SiteState, SiteStatus } from './status.js';

export interface StatusInput {
  readonly config: ClusterConfig;
  readonly site: SiteConfig;
  readonly acting: ActingRole;
  readonly core: CoreStatus;
  readonly cache: { usedBytes: number; capacityBytes: number; entries: number };
  linkOf(peer: string): { up: boolean; rttMs?: number };
  /** Set once the site stopped on an error. */
  readonly fatal: boolean;
  /** Monotonic now, in the core's clock (for ages). */
  readonly nowMs: number;
  readonly failovers: FailoverRecord[];
  readonly pid: number;
  readonly uptimeSeconds: number;
  readonly regionBytes: number;
  /** Health of the site's storage members and cache device. */
  readonly devices?: SiteStatus['devices'];
}

export function siteStatus(i: StatusInput): SiteStatus {
  const top = i.core;
  const s = top.role === 'standby' ? top.inner : top;
  let state: SiteState = 'in-sync';
  let peers: PeerStatus[] = [];
  let lastSeqAcked: bigint;
  let resyncPercent: number | undefined;
  if (s.role === 'primary') {
    lastSeqAcked = s.mirrors.reduce((min, x) => (x.sync === 'inSync' && x.seqAcked < min ? x.seqAcked : min), s.seqNext - 1n);
    peers = primaryPeers(s, i.regionBytes);
    if (s.mirrors.some((x) => x.sync === 'resyncing')) {
      state = 'resyncing';
      resyncPercent = Math.min(...s.mirrors.filter((x) => x.sync === 'resyncing').map((x) => x.resyncPercent ?? 0));
    } else if (s.mirrors.some((x) => x.sync === 'degraded')) state = 'degraded';
  } else if (s.role === 'relay') {
    lastSeqAcked = s.seqAcked;
    peers = relayPeers(s, i.linkOf);
  } else {
    lastSeqAcked = s.seqAcked;
    peers = mirrorPeers(s, top.role === 'standby', i.site.standbyFor, i.linkOf);
  }
  if (i.fatal) state = 'stopping';
  // The role this site acts as now: a failover can make a standby the primary and an old
  // primary a mirror (issue 10 item 6); `configuredRole` keeps what the cluster file says.
  const role = top.role === 'standby' ? (top.phase === 'primary' ? 'primary' : 'standby') : i.acting;
  const fencedBy = s.role === 'primary' ? s.fencedBy : undefined;
  return {
    cluster: i.config.cluster,
    site: i.site.name,
    role,
    ...(role !== i.site.role ? { configuredRole: i.site.role } : {}),
    ...(fencedBy !== undefined ? { fencedBy: Number(fencedBy) } : {}),
    ...(top.role === 'standby'
      ? {
          standby: {
            phase: top.phase,
            primary: i.site.standbyFor!,
            failoverTimeoutMs: i.site.failoverTimeoutMs,
            inSync: top.inSyncConfirmed,
            ...(top.lastHeardPrimaryMs !== undefined ? { lastHeardPrimaryMsAgo: Math.round(i.nowMs - top.lastHeardPrimaryMs) } : {}),
          },
        }
      : {}),
    failovers: i.failovers,
    volume: i.config.volume.name,
    epoch: Number(s.epoch),
    lastSeqAcked: lastSeqAcked.toString(),
    state,
    ...(resyncPercent !== undefined ? { resyncPercent } : {}),
    cache: i.cache,
    ...(s.role === 'primary' ? { hostInflight: { writes: s.writesInflight, bytes: s.bytesInflight } } : {}),
    ...(i.devices !== undefined ? { devices: i.devices } : {}),
    peers,
    pid: i.pid,
    uptimeSeconds: i.uptimeSeconds,
  };
}

function primaryPeers(s: PrimaryStatus, regionBytes: number): PeerStatus[] {
  return s.mirrors.map((x) => {
    const outOfSyncBytes = x.sync === 'inSync' ? 0 : x.dirtyRegions * regionBytes;
    const rate = x.resyncBytesPerSec;
    return {
      name: x.peer,
      relation: 'mirror' as const,
      link: x.link === 'down' ? ('connecting' as const) : ('up' as const),
      ...(x.rttMs !== undefined ? { rttMs: x.rttMs } : {}),
      sync: x.sync === 'inSync' ? ('in-sync' as const) : x.sync,
      ...(x.resyncPercent !== undefined ? { resyncPercent: x.resyncPercent } : {}),
      lastSeqAcked: x.seqAcked.toString(),
      inflightWrites: x.inflightWrites,
      inflightBytes: x.inflightBytes,
      outOfSyncBytes,
      resyncedBytes: x.resyncedBytes,
      ...(rate !== undefined ? { resyncBytesPerSec: Math.round(rate), ...(rate > 0 ? { resyncEtaSeconds: Math.ceil(outOfSyncBytes / rate) } : {}) } : {}),
    };
  });
}

function mirrorPeers(s: MirrorStatus, standby: boolean, standbyFor: string | undefined, linkOf: StatusInput['linkOf']): PeerStatus[] {
  const up = s.upstream ?? (standby ? standbyFor : undefined);
  if (!up) return [];
  const l = linkOf(up);
  return [{ name: up, relation: standby ? 'primary' : 'upstream', link: l.up ? 'up' : 'down', ...(l.rttMs !== undefined ? { rttMs: l.rttMs } : {}) }];
}

/** Per hop: the upstream, and the downstream with what this relay holds for it (issue 7 item 4). */
function relayPeers(rs: RelayStatus, linkOf: StatusInput['linkOf']): PeerStatus[] {
  const linkState = (peer: string) => {
    const l = linkOf(peer);
    return { link: l.up ? ('up' as const) : ('down' as const), ...(l.rttMs !== undefined ? { rttMs: l.rttMs } : {}) };
  };
  const peers: PeerStatus[] = [];
  if (rs.upstream) peers.push({ name: rs.upstream, relation: 'upstream', ...linkState(rs.upstream), lastSeqAcked: rs.seqAcked.toString() });
  peers.push({
    name: rs.downstream, relation: 'downstream', ...linkState(rs.downstream), lastSeqAcked: rs.seqAckedDownstream.toString(),
    inflightWrites: rs.lagWrites,
    relay: {
      ackMode: rs.ackMode, cachedEntries: rs.cacheEntries, cachedBytes: rs.cacheBytes,
      ...(rs.oldestUnackedSeq !== undefined ? { oldestUnackedSeq: rs.oldestUnackedSeq.toString() } : {}),
      lagWrites: rs.lagWrites, lagBytes: rs.lagBytes, lagMs: Math.round(rs.lagMs),
    },
  });
  return peers;
}

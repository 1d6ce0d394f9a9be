// The Prometheus metrics of one site (issue 8 item 3), served as text on the admin port's
// /metrics. The runtime owns the updates; this file only defines the metric objects, their
// names, units and labels, so dashboards have one place to look. Each site gets its own
// Registry (not prom-client's global one) so several sites can live in one process in tests.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Ack latency buckets in seconds: from loopback (tens of microseconds) to intercontinental
 * WAN round trips plus a slow disk (a few hundred ms), with room for stalls.
 */
export const ackLatencyBucketsSeconds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Values of geomirror_link_state (a gauge so one series per peer carries the state). */
export const linkStateValue = { down: 0, connecting: 1, up: 2 } as const;
export type LinkState = keyof typeof linkStateValue;

/** Values of geomirror_peer_sync_state. */
export const syncStateValue = { degraded: 0, resyncing: 1, 'in-sync': 2 } as const;
export type SyncState = keyof typeof syncStateValue;

export interface SiteMetrics {
  registry: Registry;
  /** Host writes (primary) or applied writes (mirror, relay): count and payload bytes. */
  writesTotal: Counter<'op'>;
  writeBytesTotal: Counter<'op'>;
  /** Time from sending a write to a peer to that peer's ack, per peer (claim 10 iii). */
  ackLatencySeconds: Histogram<'peer'>;
  /** Host-visible write latency (receipt to host ack, claim 10 iv). */
  hostAckLatencySeconds: Histogram;
  /** Battery-backed cache occupancy (claims 12 v/vi): bytes and entries held, capacity. */
  cacheUsedBytes: Gauge;
  cacheCapacityBytes: Gauge;
  cacheEntries: Gauge;
  /** Writes sent to a peer and not yet acked, per peer. */
  inflightWrites: Gauge<'peer'>;
  inflightBytes: Gauge<'peer'>;
  /** Resync of a returning mirror: fraction done in [0, 1] and bytes still to copy. */
  resyncProgressRatio: Gauge<'peer'>;
  resyncRemainingBytes: Gauge<'peer'>;
  /** 0 down, 1 connecting, 2 up (linkStateValue). */
  linkState: Gauge<'peer'>;
  linkRttSeconds: Gauge<'peer'>;
  /** 0 degraded, 1 resyncing, 2 in sync (syncStateValue). */
  peerSyncState: Gauge<'peer'>;
  epoch: Gauge;
  /** Highest seq acked: by every in-sync mirror (primary) or by this site (mirror). */
  lastSeqAcked: Gauge;
  /** Frames refused at the edge (malformed, bad key, stale epoch), by reason. */
  framesRefusedTotal: Counter<'reason'>;
  /** Failover events at this site (issue 10 item 6): promoted, fenced, demoted. */
  failoversTotal: Counter<'kind'>;
  /** 1 for the role this site acts as now (a failover can change it), 0 for the others. */
  actingRole: Gauge<'acting'>;
  /** When the newest failover event of each kind happened, and the last seq it recorded. */
  failoverLastTimestampSeconds: Gauge<'kind'>;
  failoverLastSeq: Gauge<'kind'>;
  /** Relay: age of the oldest cached write its downstream has not acked (0: caught up). */
  relayLagSeconds?: Gauge<'peer'>;
  /** Relay: oldest seq in its cache not yet acked downstream (0: none). */
  relayOldestUnackedSeq?: Gauge<'peer'>;
  /** Witness: LAST_HEARD_ANSWERs sent to a standby asking when it last heard the primary. */
  lastHeardAnswersTotal?: Counter;
  setLinkState(peer: string, state: LinkState): void;
  setSyncState(peer: string, state: SyncState): void;
}

export interface SiteMetricsOptions {
  site: string;
  role: string;
  cluster: string;
  /** Process metrics (RSS, CPU, event-loop lag) too: the bench reads RSS from here. Default true. */
  processMetrics?: boolean;
}

export function createSiteMetrics(options: SiteMetricsOptions): SiteMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ cluster: options.cluster, site: options.site, role: options.role });
  const registers = [registry];
  if (options.processMetrics !== false) collectDefaultMetrics({ register: registry });

  const m = {
    registry,
    writesTotal: new Counter({ name: 'geomirror_writes_total', help: 'Writes handled, by op (write, flush, trim, zero)', labelNames: ['op'], registers }),
    writeBytesTotal: new Counter({ name: 'geomirror_write_bytes_total', help: 'Payload bytes written, by op', labelNames: ['op'], registers }),
    ackLatencySeconds: new Histogram({ name: 'geomirror_ack_latency_seconds', help: 'Send-to-ack latency of replicated writes, per peer', labelNames: ['peer'], buckets: ackLatencyBucketsSeconds, registers }),
    hostAckLatencySeconds: new Histogram({ name: 'geomirror_host_ack_latency_seconds', help: 'Receipt-to-host-ack latency of host writes', buckets: ackLatencyBucketsSeconds, registers }),
    cacheUsedBytes: new Gauge({ name: 'geomirror_cache_used_bytes', help: 'Bytes held in the battery-backed cache', registers }),
    cacheCapacityBytes: new Gauge({ name: 'geomirror_cache_capacity_bytes', help: 'Capacity of the battery-backed cache', registers }),
    cacheEntries: new Gauge({ name: 'geomirror_cache_entries', help: 'Write requests held in the battery-backed cache', registers }),
    inflightWrites: new Gauge({ name: 'geomirror_inflight_writes', help: 'Writes sent to a peer and not yet acked', labelNames: ['peer'], registers }),
    inflightBytes: new Gauge({ name: 'geomirror_inflight_bytes', help: 'Payload bytes sent to a peer and not yet acked', labelNames: ['peer'], registers }),
    resyncProgressRatio: new Gauge({ name: 'geomirror_resync_progress_ratio', help: 'Fraction of a resync done, 0..1', labelNames: ['peer'], registers }),
    resyncRemainingBytes: new Gauge({ name: 'geomirror_resync_remaining_bytes', help: 'Bytes a resync still has to copy', labelNames: ['peer'], registers }),
    linkState: new Gauge({ name: 'geomirror_link_state', help: 'Link to a peer: 0 down, 1 connecting, 2 up', labelNames: ['peer'], registers }),
    linkRttSeconds: new Gauge({ name: 'geomirror_link_rtt_seconds', help: 'Last heartbeat round-trip time to a peer', labelNames: ['peer'], registers }),
    peerSyncState: new Gauge({ name: 'geomirror_peer_sync_state', help: 'Peer replica: 0 degraded, 1 resyncing, 2 in sync', labelNames: ['peer'], registers }),
    epoch: new Gauge({ name: 'geomirror_epoch', help: 'Current epoch (grows at every promotion)', registers }),
    lastSeqAcked: new Gauge({ name: 'geomirror_last_seq_acked', help: 'Highest write sequence number acked', registers }),
    failoversTotal: new Counter({ name: 'geomirror_failovers_total', help: 'Failover events at this site: promoted (became primary), fenced (saw a newer epoch), demoted (planned)', labelNames: ['kind'], registers }),
    failoverLastTimestampSeconds: new Gauge({ name: 'geomirror_failover_last_timestamp_seconds', help: 'Unix time of the newest failover event of each kind at this site (history: geomirror status)', labelNames: ['kind'], registers }),
    failoverLastSeq: new Gauge({ name: 'geomirror_failover_last_seq', help: 'Last seq of the old epoch recorded by the newest failover event of each kind', labelNames: ['kind'], registers }),
    actingRole: new Gauge({ name: 'geomirror_acting_role', help: 'Role this site acts as now (1), after any failover; the role label is the cluster file\'s', labelNames: ['acting'], registers }),
    framesRefusedTotal: new Counter({ name: 'geomirror_frames_refused_total', help: 'Frames refused at the edge, by reason', labelNames: ['reason'], registers }),
    relayLagSeconds: new Gauge({ name: 'geomirror_relay_lag_seconds', help: 'Relay: age of the oldest cached write the downstream has not acked', labelNames: ['peer'], registers }),
    relayOldestUnackedSeq: new Gauge({ name: 'geomirror_relay_oldest_unacked_seq', help: 'Relay: oldest cached seq not yet acked downstream (0: none)', labelNames: ['peer'], registers }),
    ...(options.role === 'witness' ? { lastHeardAnswersTotal: new Counter({ name: 'geomirror_last_heard_answers_total', help: 'Witness: answers to a standby asking when this site last heard the primary', registers }) } : {}),
  };
  return {
    ...m,
    setLinkState: (peer, state) => m.linkState.set({ peer }, linkStateValue[state]),
    setSyncState: (peer, state) => m.peerSyncState.set({ peer }, syncStateValue[state]),
  };
}

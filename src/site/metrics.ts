// The Prometheus metrics of one site (issue 8 item 3, issue 19 item 6), served as text on the
// admin port's /metrics. This file defines every metric object, its name, unit and labels, so
// dashboards (docs/grafana-dashboard.json) have one place to look. Each site gets its own
// Registry (not prom-client's global one) so several sites can live in one process in tests.
//
// Two kinds of series:
// - counters and histograms, incremented where the thing happens (writes, reads, acks, I/O
//   errors, refused frames, failovers);
// - gauges that describe state, read from one SiteStatus snapshot when Prometheus scrapes
//   (bindStatusGauges): cache, epoch, acked seq, roles and states, and per peer link, sync,
//   resync progress, out-of-sync bytes, in-flight writes. They are never set on the write path.
//
// States are labels, drbd-reactor style: geomirror_peer_sync_state{peer,state} is 1 for the
// peer's state and 0 for the others, so `sum by (state)` counts peers per state. No series is a
// total of others (no peer="all"): sum() over a metric never double counts; the host-side totals
// have their own names (geomirror_host_inflight_*).
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { payloadPool } from '../../hal/payload-pool.js';
import { LatencyHistogram } from './latency-histogram.js';
import { roles } from './config-keys.js';
import { siteStates, type SiteStatus } from './status.js';

/**
 * Ack latency buckets in seconds: from loopback (tens of microseconds) to intercontinental
 * WAN round trips plus a slow disk (a few hundred ms), with room for stalls.
 */
export const ackLatencyBucketsSeconds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** The `state` label values of geomirror_link_state. */
export const linkStates = ['down', 'connecting', 'up'] as const;
export type LinkState = (typeof linkStates)[number];

/** The `state` label values of geomirror_peer_sync_state. */
export const syncStates = ['degraded', 'resyncing', 'in-sync'] as const;
export type SyncState = (typeof syncStates)[number];

/** A status snapshot is reused by the gauges of one scrape for this long (one status() per scrape). */
export const statusSnapshotReuseMs = 100;

/** What device I/O failed, for geomirror_device_io_errors_total. */
export type IoOp = 'read' | 'write' | 'flush';

/**
 * Writes of one op counted as plain numbers on the write path and added to writesTotal and
 * writeBytesTotal at each scrape (issue 18: a labelled inc() hashes its labels on every call,
 * twice per write at every site).
 */
export interface WriteTally {
  writes: number;
  bytes: number;
}

export interface SiteMetrics {
  registry: Registry;
  /** Host writes (primary) or applied writes (mirror, relay): count and payload bytes. */
  writesTotal: Counter<'op'>;
  writeBytesTotal: Counter<'op'>;
  /** The tally of `op` (one object per op, for the hot path), folded into the two counters above at every scrape. */
  tally(op: string): WriteTally;
  /** Host reads served through the NBD export (primary, or a mirror's read-only export): count and bytes. */
  readsTotal: Counter;
  readBytesTotal: Counter;
  /** Host requests answered with an error through the NBD export, by op (read, write, flush). */
  hostIoErrorsTotal: Counter<'op'>;
  /** Storage and cache device errors, by device string and op (see ioError). */
  deviceIoErrorsTotal: Counter<'device' | 'op'>;
  /** Time from sending a write to a peer to that peer's ack, per peer (claim 10 iii). */
  ackLatencySeconds: LatencyHistogram<'peer'>;
  /** Host-visible write latency (receipt to host ack, claim 10 iv). */
  hostAckLatencySeconds: LatencyHistogram;
  /** Battery-backed cache occupancy (claims 12 v/vi): bytes and entries held, capacity. From status. */
  cacheUsedBytes: Gauge;
  cacheCapacityBytes: Gauge;
  cacheEntries: Gauge;
  /** Writes sent to a peer and not yet acked, per peer. From status (PeerStatus.inflightWrites/Bytes). */
  inflightWrites: Gauge<'peer'>;
  inflightBytes: Gauge<'peer'>;
  /** A primary's host writes in flight, over all peers (SiteStatus.hostInflight). */
  hostInflightWrites: Gauge;
  hostInflightBytes: Gauge;
  /** Resync of a returning mirror: fraction done in [0, 1] and bytes still to copy. From status. */
  resyncProgressRatio: Gauge<'peer'>;
  resyncRemainingBytes: Gauge<'peer'>;
  /** Bytes of a peer's replica that differ from this site's (PeerStatus.outOfSyncBytes). */
  peerOutOfSyncBytes: Gauge<'peer'>;
  /** Resync copy rate and time left per peer (PeerStatus.resyncBytesPerSec / resyncEtaSeconds). */
  resyncBytesPerSecond: Gauge<'peer'>;
  resyncEtaSeconds: Gauge<'peer'>;
  /** Bytes resynced to a peer since this site began acting as primary (PeerStatus.resyncedBytes). */
  resyncedBytes: Gauge<'peer'>;
  /** Highest seq a peer acked (PeerStatus.lastSeqAcked). */
  peerLastSeqAcked: Gauge<'peer'>;
  /** 1 for the link's state, 0 for the others (linkStates). */
  linkState: Gauge<'peer' | 'state'>;
  linkRttSeconds: Gauge<'peer'>;
  /** 1 for the peer replica's state, 0 for the others (syncStates). */
  peerSyncState: Gauge<'peer' | 'state'>;
  /** 1 for the site's own state, 0 for the others (SiteStatus.state). */
  siteState: Gauge<'state'>;
  epoch: Gauge;
  /** Highest seq acked: by every in-sync mirror (primary) or by this site (mirror). */
  lastSeqAcked: Gauge;
  /** Frames refused at the edge (malformed, bad key, stale epoch), by reason. */
  framesRefusedTotal: Counter<'reason'>;
  /** Failover events at this site (issue 10 item 6): promoted, fenced, demoted. */
  failoversTotal: Counter<'kind'>;
  /** 1 for the role this site acts as now (a failover can change it), 0 for the others. */
  actingRole: Gauge<'acting'>;
  /** With an etcd coordinator (issue 20 item 3): 1 while this site's lease is kept alive, and whether etcd answers. */
  coordinatorLeaseHeld: Gauge;
  coordinatorReachable: Gauge;
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
  /**
   * Counts one failed device call (the executor calls it when storage or the cache device
   * reports an error): `device` is its device string, `op` what failed.
   */
  ioError(device: string, op: IoOp): void;
  /** Where status gauges read their snapshot (bindStatusGauges); undefined until bound. */
  statusProvider?: () => SiteStatus | Promise<SiteStatus>;
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
  if (options.processMetrics !== false) {
    collectDefaultMetrics({ register: registry });
    // The process's payload pool (hal/payload-pool.ts, issue 18): shared by every site and
    // volume group in the process, so these are process metrics too.
    new Gauge({ name: 'geomirror_payload_pool_idle_bytes', help: 'Bytes of large-write payload slots waiting for reuse (process-wide; trimmed after idle intervals)', registers, collect() {
      this.set(payloadPool.stats().idleBytes);
    } });
    new Gauge({ name: 'geomirror_payload_pool_double_gives', help: 'Payload slots given back while already free (process-wide): an ownership bug, refused; should stay 0', registers, collect() {
      this.set(payloadPool.stats().doubleGives);
    } });
  }

  // Status gauges call this from their collect(): the snapshot of this scrape, or undefined
  // while no provider is bound (then they keep what was set on them directly).
  let snapshot: { atMs: number; status: Promise<SiteStatus | undefined> } | undefined;
  const statusNow = (): Promise<SiteStatus | undefined> => {
    const provider = m.statusProvider;
    if (provider === undefined) return Promise.resolve(undefined);
    const now = Date.now();
    if (snapshot === undefined || now - snapshot.atMs > statusSnapshotReuseMs) {
      snapshot = { atMs: now, status: Promise.resolve().then(provider).catch(() => undefined) };
    }
    return snapshot.status;
  };
  /**
   * A gauge whose value(s) come from the status snapshot at scrape time. `reported` says whether
   * the snapshot carries this gauge's numbers at all; when it does not (a status computation
   * that does not fill the optional field yet), the values set directly are kept, minus any
   * peer="all" total (never a series: it made sum() count twice).
   */
  const fromStatus = <L extends string>(name: string, help: string, labelNames: readonly L[], fill: (g: Setter<L>, s: SiteStatus) => void, reported?: (s: SiteStatus) => boolean): Gauge<L | 'group' | 'volume'> =>
    new Gauge<L | 'group' | 'volume'>({
      name,
      help,
      labelNames: [...labelNames, 'group', 'volume'],
      registers,
      async collect() {
        const s = await statusNow();
        if (s === undefined) return;
        if (reported !== undefined && !reported(s)) {
          if ((labelNames as readonly string[]).includes('peer')) this.remove({ peer: 'all' } as Partial<Record<L | 'group' | 'volume', string>>);
          return;
        }
        this.reset();
        // Issue 20: every series carries its volume and consistency group. A group of several
        // volumes has one replication stream: its numbers repeat for each of its volumes (sum
        // by group with max(), not sum()).
        for (const { labels, status } of volumeStatuses(s)) fill(withLabels(this, labels), status);
      },
    });
  const num = (x: unknown): number | undefined => (typeof x === 'number' && Number.isFinite(x) ? x : undefined);
  const eachPeer = (g: Setter<'peer'>, s: SiteStatus, value: (p: SiteStatus['peers'][number]) => number | undefined): void => {
    for (const p of s.peers) {
      const v = value(p);
      if (v !== undefined) g.set({ peer: p.name }, v);
    }
  };
  const oneHot = <L extends string>(g: Setter<L>, labels: Partial<Record<L, string>>, key: L, values: readonly string[], current: string): void => {
    for (const v of values) g.set({ ...labels, [key]: v } as Partial<Record<L, string>>, v === current ? 1 : 0);
  };

  const tallies = new Map<string, WriteTally>();
  const foldTallies = (): void => {
    for (const [op, t] of tallies) {
      if (t.writes > 0) m.writesTotal.inc({ op }, t.writes);
      if (t.bytes > 0) m.writeBytesTotal.inc({ op }, t.bytes);
      t.writes = 0;
      t.bytes = 0;
    }
  };
  const m: SiteMetrics = {
    registry,
    writesTotal: new Counter({ name: 'geomirror_writes_total', help: 'Writes handled, by op (write, flush, trim, zero)', labelNames: ['op'], registers, collect: foldTallies }),
    writeBytesTotal: new Counter({ name: 'geomirror_write_bytes_total', help: 'Payload bytes written, by op', labelNames: ['op'], registers, collect: foldTallies }),
    tally: (op) => {
      let t = tallies.get(op);
      if (t === undefined) tallies.set(op, (t = { writes: 0, bytes: 0 }));
      return t;
    },
    readsTotal: new Counter({ name: 'geomirror_reads_total', help: 'Host reads served through the NBD export', registers }),
    readBytesTotal: new Counter({ name: 'geomirror_read_bytes_total', help: 'Bytes of host reads served through the NBD export', registers }),
    hostIoErrorsTotal: new Counter({ name: 'geomirror_host_io_errors_total', help: 'Host requests through the NBD export answered with an error, by op', labelNames: ['op'], registers }),
    deviceIoErrorsTotal: new Counter({ name: 'geomirror_device_io_errors_total', help: 'Failed storage and cache device calls, by device and op', labelNames: ['device', 'op'], registers }),
    ackLatencySeconds: new LatencyHistogram('geomirror_ack_latency_seconds', 'Send-to-ack latency of replicated writes, per peer', ['peer'], ackLatencyBucketsSeconds, registers),
    hostAckLatencySeconds: new LatencyHistogram('geomirror_host_ack_latency_seconds', 'Receipt-to-host-ack latency of host writes', [], ackLatencyBucketsSeconds, registers),
    cacheUsedBytes: fromStatus('geomirror_cache_used_bytes', 'Bytes held in the battery-backed cache', [], (g, s) => g.set(s.cache.usedBytes)),
    cacheCapacityBytes: fromStatus('geomirror_cache_capacity_bytes', 'Capacity of the battery-backed cache', [], (g, s) => g.set(s.cache.capacityBytes)),
    cacheEntries: fromStatus('geomirror_cache_entries', 'Write requests held in the battery-backed cache', [], (g, s) => g.set(s.cache.entries)),
    inflightWrites: fromStatus('geomirror_inflight_writes', 'Writes sent to a peer and not yet acked, per peer', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.inflightWrites)), (s) => s.peers.some((p) => p.inflightWrites !== undefined)),
    inflightBytes: fromStatus('geomirror_inflight_bytes', 'Payload bytes sent to a peer and not yet acked, per peer', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.inflightBytes) ?? num(p.relay?.lagBytes)), (s) => s.peers.some((p) => p.inflightBytes !== undefined)),
    hostInflightWrites: fromStatus('geomirror_host_inflight_writes', 'Host writes received and not yet acked to the host (primary)', [], (g, s) => {
      if (s.hostInflight) g.set(s.hostInflight.writes);
    }),
    hostInflightBytes: fromStatus('geomirror_host_inflight_bytes', 'Payload bytes of host writes not yet acked to the host (primary)', [], (g, s) => {
      if (s.hostInflight) g.set(s.hostInflight.bytes);
    }),
    resyncProgressRatio: fromStatus('geomirror_resync_progress_ratio', 'Fraction of a resync done, 0..1 (1: in sync)', ['peer'], (g, s) =>
      eachPeer(g, s, (p) => (p.sync === undefined ? undefined : p.sync === 'in-sync' ? 1 : (num(p.resyncPercent) ?? 0) / 100)),
    ),
    resyncRemainingBytes: fromStatus('geomirror_resync_remaining_bytes', 'Bytes a resync still has to copy', ['peer'], (g, s) => eachPeer(g, s, (p) => (p.sync === 'in-sync' ? 0 : num(p.outOfSyncBytes)))),
    peerOutOfSyncBytes: fromStatus('geomirror_peer_out_of_sync_bytes', 'Bytes of a peer replica known to differ from this site (0: in sync)', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.outOfSyncBytes))),
    resyncBytesPerSecond: fromStatus('geomirror_resync_bytes_per_second', 'Resync copy rate to a peer', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.resyncBytesPerSec))),
    resyncedBytes: fromStatus('geomirror_resynced_bytes', 'Bytes resynced to a peer since this site began acting as primary (after a failover: what the promotion cost that mirror)', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.resyncedBytes)), (s) => s.peers.some((p) => p.resyncedBytes !== undefined)),
    resyncEtaSeconds: fromStatus('geomirror_resync_eta_seconds', 'Seconds until a resync to a peer is done at the current rate', ['peer'], (g, s) => eachPeer(g, s, (p) => num(p.resyncEtaSeconds))),
    peerLastSeqAcked: fromStatus('geomirror_peer_last_seq_acked', 'Highest write sequence number a peer acked', ['peer'], (g, s) => eachPeer(g, s, (p) => (p.lastSeqAcked === undefined ? undefined : num(Number(p.lastSeqAcked))))),
    linkState: fromStatus('geomirror_link_state', 'Link to a peer: 1 for its state (down, connecting, up), 0 for the others', ['peer', 'state'], (g, s) => {
      for (const p of s.peers) oneHot(g, { peer: p.name }, 'state', linkStates, p.link);
    }),
    linkRttSeconds: fromStatus('geomirror_link_rtt_seconds', 'Last heartbeat round-trip time to a peer', ['peer'], (g, s) => eachPeer(g, s, (p) => (num(p.rttMs) === undefined ? undefined : p.rttMs! / 1000))),
    peerSyncState: fromStatus('geomirror_peer_sync_state', 'Peer replica: 1 for its state (degraded, resyncing, in-sync), 0 for the others', ['peer', 'state'], (g, s) => {
      for (const p of s.peers) if (p.sync !== undefined) oneHot(g, { peer: p.name }, 'state', syncStates, p.sync);
    }),
    siteState: fromStatus('geomirror_site_state', 'This site: 1 for its state, 0 for the others', ['state'], (g, s) => oneHot(g, {}, 'state', siteStates, s.state)),
    epoch: fromStatus('geomirror_epoch', 'Current epoch (grows at every promotion)', [], (g, s) => g.set(s.epoch)),
    lastSeqAcked: fromStatus('geomirror_last_seq_acked', 'Highest write sequence number acked', [], (g, s) => g.set(Number(s.lastSeqAcked))),
    failoversTotal: new Counter({ name: 'geomirror_failovers_total', help: 'Failover events at this site: promoted (became primary), fenced (saw a newer epoch), demoted (planned)', labelNames: ['kind'], registers }),
    failoverLastTimestampSeconds: fromStatus('geomirror_failover_last_timestamp_seconds', 'Unix time of the newest failover event of each kind at this site (history: geomirror status)', ['kind'], (g, s) => {
      for (const f of s.failovers ?? []) g.set({ kind: f.kind }, Date.parse(f.at) / 1000);
    }),
    failoverLastSeq: fromStatus('geomirror_failover_last_seq', 'Last seq of the old epoch recorded by the newest failover event of each kind', ['kind'], (g, s) => {
      for (const f of s.failovers ?? []) g.set({ kind: f.kind }, Number(f.lastSeq));
    }),
    actingRole: fromStatus('geomirror_acting_role', "Role this site acts as now (1), after any failover; the role label is the cluster file's", ['acting'], (g, s) => oneHot(g, {}, 'acting', roles, s.role)),
    coordinatorLeaseHeld: fromStatus('geomirror_coordinator_lease_held', 'With an etcd coordinator: 1 while this site holds a live etcd lease (the primary: the group key\'s lease), else 0', [], (g, s) => {
      if (s.coordinator !== undefined) g.set(s.coordinator.lease === 'held' ? 1 : 0);
    }),
    coordinatorReachable: fromStatus('geomirror_coordinator_reachable', 'With an etcd coordinator: 1 while etcd answers this site, else 0', [], (g, s) => {
      if (s.coordinator !== undefined) g.set(s.coordinator.reachable ? 1 : 0);
    }),
    framesRefusedTotal: new Counter({ name: 'geomirror_frames_refused_total', help: 'Frames refused at the edge, by reason', labelNames: ['reason'], registers }),
    relayLagSeconds: fromStatus('geomirror_relay_lag_seconds', 'Relay: age of the oldest cached write the downstream has not acked', ['peer'], (g, s) => eachPeer(g, s, (p) => (p.relay ? p.relay.lagMs / 1000 : undefined))),
    relayOldestUnackedSeq: fromStatus('geomirror_relay_oldest_unacked_seq', 'Relay: oldest cached seq not yet acked downstream (0: none)', ['peer'], (g, s) =>
      eachPeer(g, s, (p) => (p.relay ? Number(p.relay.oldestUnackedSeq ?? 0) : undefined)),
    ),
    ...(options.role === 'witness' ? { lastHeardAnswersTotal: new Counter({ name: 'geomirror_last_heard_answers_total', help: 'Witness: answers to a standby asking when this site last heard the primary', registers }) } : {}),
    setLinkState: (peer, state) => oneHot(m.linkState as unknown as Setter<'peer' | 'state'>, { peer }, 'state', linkStates, state),
    setSyncState: (peer, state) => oneHot(m.peerSyncState as unknown as Setter<'peer' | 'state'>, { peer }, 'state', syncStates, state),
    ioError: (device, op) => m.deviceIoErrorsTotal.inc({ device, op }),
  };
  return m;
}

/** What a status gauge's fill sets: a value, or a value for labels (group and volume added by fromStatus). */
export interface Setter<L extends string> {
  set(value: number): void;
  set(labels: Partial<Record<L, string>>, value: number): void;
}

/** `g` with `base` labels added to every set. */
function withLabels<L extends string>(g: Gauge<L | 'group' | 'volume'>, base: { group: string; volume: string }): Setter<L> {
  return {
    set: (a: number | Partial<Record<L, string>>, v?: number) => {
      if (typeof a === 'number') g.set(base as Partial<Record<L | 'group' | 'volume', string>>, a);
      else g.set({ ...a, ...base } as Partial<Record<L | 'group' | 'volume', string>>, v!);
    },
  } as Setter<L>;
}

/** The status of each volume a site serves, with its labels: one per volume of each group (issue 20). */
export function volumeStatuses(s: SiteStatus): { labels: { group: string; volume: string }; status: SiteStatus }[] {
  if (s.groups === undefined) return [{ labels: { group: s.volume, volume: s.volume }, status: s }];
  return s.groups.flatMap((g) => g.volumes.map((v) => ({ labels: { group: g.group, volume: v.name }, status: g.status })));
}

/**
 * Makes the state gauges read `status` when Prometheus scrapes (one snapshot per scrape), so
 * nothing sets them on the write path. Until bound, they hold what was set on them directly.
 */
export function bindStatusGauges(metrics: SiteMetrics, status: () => SiteStatus | Promise<SiteStatus>): void {
  metrics.statusProvider = status;
}

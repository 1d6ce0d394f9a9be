// The events of a site (issue 19 item 3, `geomirror events`, like `drbdsetup events2`): what
// changed between two status snapshots, as one event per change: role, epoch, site state,
// link up/down per peer, a peer replica's sync state (in-sync, degraded, resyncing) with resync
// progress, failovers, fencing, the cache filling up, a device failing. statusEvents() is the
// pure diff; snapshotEvents() says what exists now (`events --now`, and the first lines of a
// stream). EventFeed keeps the newest events in a bounded ring for late joiners and hands new
// ones to listeners; runSite samples status() into it and the admin port streams it as NDJSON
// on GET /events (serveEvents).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PeerStatus, SiteStatus } from './status.js';

/** The cache counts as full from this fraction of its capacity (host writes are about to wait). */
export const cacheFullRatio = 0.95;
/** A resync progress event every this many percent. */
export const progressStepPercent = 5;
/** Events kept for clients that join late (GET /events?since=SEQ). */
export const eventRingMax = 512;
/** Listeners of one site's feed at once (admin clients following /events). */
export const eventListenersMax = 64;

export type EventWhat = 'site' | 'peer' | 'role' | 'epoch' | 'state' | 'link' | 'sync' | 'progress' | 'failover' | 'fenced' | 'cache' | 'device';

export interface SiteEvent {
  /** Per-site sequence number of the feed (0 for `exists` events). */
  seq: number;
  /** ISO 8601 wall-clock time the change was seen. */
  at: string;
  /** `exists`: the state now (events --now, start of a stream); `change`: something changed. */
  type: 'exists' | 'change';
  site: string;
  what: EventWhat;
  peer?: string;
  device?: string;
  /** A site with several volumes (issue 20): the consistency group the event is about. */
  group?: string;
  from?: string | number;
  to?: string | number;
  /** Resync progress 0-100, with sync `resyncing` and progress events. */
  percent?: number;
  outOfSyncBytes?: number;
  /** One line for people: `link to east down`. */
  text: string;
}

type Draft = Omit<SiteEvent, 'seq' | 'at' | 'type' | 'site'>;

const isUp = (p: PeerStatus | undefined): boolean => p?.link === 'up';
const pctText = (x: number): string => `${Math.floor(x)}%`;

function syncText(p: PeerStatus): string {
  return p.sync === 'resyncing' && p.resyncPercent !== undefined ? `resyncing ${pctText(p.resyncPercent)}` : String(p.sync);
}

function cacheFull(s: SiteStatus): boolean {
  return s.cache.capacityBytes > 0 && s.cache.usedBytes >= cacheFullRatio * s.cache.capacityBytes;
}

function progressOf(p: PeerStatus): Pick<SiteEvent, 'percent' | 'outOfSyncBytes'> {
  return {
    ...(p.resyncPercent !== undefined ? { percent: p.resyncPercent } : {}),
    ...(p.outOfSyncBytes !== undefined ? { outOfSyncBytes: p.outOfSyncBytes } : {}),
  };
}

/** One peer's changes: the link first, then its replica's sync state, then resync progress. */
function peerEvents(a: PeerStatus | undefined, b: PeerStatus): Draft[] {
  const out: Draft[] = [];
  if (isUp(a) !== isUp(b)) {
    out.push({ what: 'link', peer: b.name, from: a?.link ?? 'down', to: b.link, text: `link to ${b.name} ${isUp(b) ? 'up' : `down (${b.link})`}` });
  }
  if (b.sync !== undefined && a?.sync !== b.sync) {
    out.push({ what: 'sync', peer: b.name, ...(a?.sync !== undefined ? { from: a.sync } : {}), to: b.sync, ...progressOf(b), text: `${b.name} ${a?.sync ?? 'unknown'} -> ${syncText(b)}` });
  } else if (b.sync === 'resyncing' && a?.sync === 'resyncing' && b.resyncPercent !== undefined) {
    const step = (x: number | undefined): number => Math.floor((x ?? 0) / progressStepPercent);
    if (step(b.resyncPercent) > step(a.resyncPercent)) {
      out.push({ what: 'progress', peer: b.name, to: 'resyncing', ...progressOf(b), text: `${b.name} resyncing ${pctText(b.resyncPercent)}` });
    }
  }
  return out;
}

/** Events of a site with several volumes (issue 20): each consistency group's, named; else the site's. */
function perGroup(next: SiteStatus, events: (s: SiteStatus, g: string | undefined) => Draft[]): Draft[] {
  if (next.groups === undefined) return events(next, undefined);
  return next.groups.flatMap((g) => events(g.status, g.group).map((d) => ({ ...d, group: g.group, text: `group ${g.group}: ${d.text}` })));
}

/** statusEvents per consistency group where the site reports groups. */
export function siteStatusEvents(prev: SiteStatus | undefined, next: SiteStatus): Draft[] {
  return perGroup(next, (s, g) => statusEvents(g === undefined ? prev : prev?.groups?.find((x) => x.group === g)?.status, s));
}

/** snapshotEvents per consistency group where the site reports groups. */
export function siteSnapshotEvents(s: SiteStatus): Draft[] {
  return perGroup(s, (x) => snapshotEvents(x));
}

/** What changed from `prev` to `next` (both of one site). No previous snapshot: nothing changed. */
export function statusEvents(prev: SiteStatus | undefined, next: SiteStatus): Draft[] {
  if (prev === undefined) return [];
  const out: Draft[] = [];
  if (prev.role !== next.role) out.push({ what: 'role', from: prev.role, to: next.role, text: `role ${prev.role} -> ${next.role}` });
  if (prev.epoch !== next.epoch) out.push({ what: 'epoch', from: prev.epoch, to: next.epoch, text: `epoch ${prev.epoch} -> ${next.epoch}` });
  if (prev.state !== next.state) out.push({ what: 'state', from: prev.state, to: next.state, text: `state ${prev.state} -> ${next.state}` });
  if (next.fencedBy !== undefined && prev.fencedBy !== next.fencedBy) {
    out.push({ what: 'fenced', to: next.fencedBy, text: `fenced by epoch ${next.fencedBy}: host writes are refused` });
  }
  const known = new Set((prev.failovers ?? []).map((f) => `${f.at}\0${f.kind}`));
  for (const f of next.failovers ?? []) {
    if (known.has(`${f.at}\0${f.kind}`)) continue;
    out.push({ what: 'failover', from: f.fromEpoch, to: f.toEpoch, text: `failover: ${f.site} ${f.kind}, epoch ${f.fromEpoch} -> ${f.toEpoch} at seq ${f.lastSeq}${f.reason ? `: ${f.reason}` : ''}` });
  }
  if (cacheFull(prev) !== cacheFull(next)) {
    const full = cacheFull(next);
    out.push({ what: 'cache', from: full ? 'ok' : 'full', to: full ? 'full' : 'ok', text: full ? `cache full (${next.cache.usedBytes} of ${next.cache.capacityBytes} bytes): host writes wait` : 'cache has room again' });
  }
  const before = new Map(prev.peers.map((p) => [p.name, p]));
  for (const p of next.peers) out.push(...peerEvents(before.get(p.name), p));
  for (const p of prev.peers) {
    if (!next.peers.some((q) => q.name === p.name) && isUp(p)) out.push({ what: 'link', peer: p.name, from: p.link, to: 'down', text: `link to ${p.name} down (gone from status)` });
  }
  const devices = new Map((prev.devices ?? []).map((d) => [d.device, d]));
  for (const d of next.devices ?? []) {
    const was = devices.get(d.device);
    if (was?.health === d.health) continue;
    out.push({ what: 'device', device: d.device, ...(was ? { from: was.health } : {}), to: d.health, text: `device ${d.device} ${d.health}${d.error ? `: ${d.error}` : ''}` });
  }
  return out;
}

/** What exists now: one event for the site, one per peer and per device (events --now). */
export function snapshotEvents(s: SiteStatus): Draft[] {
  const role = s.configuredRole !== undefined && s.configuredRole !== s.role ? `${s.role} (configured ${s.configuredRole})` : s.role;
  const out: Draft[] = [
    { what: 'site', to: s.state, text: `${role}, epoch ${s.epoch}, ${s.state}${s.resyncPercent !== undefined && s.state === 'resyncing' ? ` ${pctText(s.resyncPercent)}` : ''}, acked seq ${s.lastSeqAcked}${s.fencedBy !== undefined ? `, fenced by epoch ${s.fencedBy}` : ''}${cacheFull(s) ? ', cache full' : ''}` },
  ];
  for (const p of s.peers) {
    out.push({ what: 'peer', peer: p.name, to: p.sync ?? p.link, ...progressOf(p), text: `${p.relation} ${p.name}: link ${p.link}${p.sync !== undefined ? `, ${syncText(p)}` : ''}${p.lastSeqAcked !== undefined ? `, acked seq ${p.lastSeqAcked}` : ''}` });
  }
  for (const d of s.devices ?? []) out.push({ what: 'device', device: d.device, to: d.health, text: `device ${d.device} ${d.health}${d.error ? `: ${d.error}` : ''}` });
  return out;
}

/** The newest events of one site, numbered, with listeners; bounded (eventRingMax, eventListenersMax). */
export class EventFeed {
  private readonly ring: SiteEvent[] = [];
  private readonly listeners = new Set<(e: SiteEvent) => void>();
  private seqNext = 1;
  private last: SiteStatus | undefined;

  constructor(
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** Feeds the newest snapshot; returns the change events it made. */
  sample(s: SiteStatus): SiteEvent[] {
    const drafts = siteStatusEvents(this.last, s);
    this.last = s;
    const at = this.now().toISOString();
    const events = drafts.map((d) => ({ seq: this.seqNext++, at, type: 'change' as const, site: s.site, ...d }));
    for (const e of events) {
      this.ring.push(e);
      if (this.ring.length > eventRingMax) this.ring.shift();
      for (const l of this.listeners) l(e);
    }
    return events;
  }

  /** Events after `seq` still in the ring, oldest first. */
  since(seq: number): SiteEvent[] {
    return this.ring.filter((e) => e.seq > seq);
  }

  /**
   * What a new client is shown first: `s` sampled (so the next change is diffed against exactly
   * this snapshot, not against an older idle sample: a link that went down between the two
   * would otherwise never be reported), then its `exists` events.
   */
  snapshot(s: SiteStatus): SiteEvent[] {
    this.sample(s);
    return this.exists(s);
  }

  /** The `exists` events of a snapshot (seq 0). */
  exists(s: SiteStatus): SiteEvent[] {
    const at = this.now().toISOString();
    return siteSnapshotEvents(s).map((d) => ({ seq: 0, at, type: 'exists' as const, site: s.site, ...d }));
  }

  /** Calls `fn` for every new event until the returned function is called; undefined when full. */
  subscribe(fn: (e: SiteEvent) => void): (() => void) | undefined {
    if (this.listeners.size >= eventListenersMax) return undefined;
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}

/** What GET /events needs from a site. */
export interface EventSource {
  feed: EventFeed;
  status(): SiteStatus | Promise<SiteStatus>;
}

/**
 * GET /events: NDJSON, one SiteEvent per line. `?now=1`: the `exists` events, then the answer
 * ends. Otherwise the `exists` events, the ring's events after `?since=SEQ` (if given), then
 * every new event as it happens, until the client goes away or the site stops.
 */
export async function serveEvents(source: EventSource, url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const sinceText = url.searchParams.get('since');
  const since = sinceText === null ? undefined : Number(sinceText);
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    res.writeHead(400, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`since=${sinceText} is not an event number\n`);
    return;
  }
  const snapshot = source.feed.snapshot(await source.status());
  const now = url.searchParams.get('now') === '1';
  let unsubscribe: (() => void) | undefined;
  if (!now) {
    unsubscribe = source.feed.subscribe((e) => res.write(`${JSON.stringify(e)}\n`));
    if (unsubscribe === undefined) {
      res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`this site already streams events to ${eventListenersMax} clients; retry later\n`);
      return;
    }
  }
  res.writeHead(200, { 'Content-Type': 'application/x-ndjson; charset=utf-8', 'Cache-Control': 'no-store' });
  const head = [...snapshot, ...(since !== undefined ? source.feed.since(since) : [])];
  res.write(head.map((e) => `${JSON.stringify(e)}\n`).join(''));
  if (now || req.method === 'HEAD') {
    res.end();
    return;
  }
  res.socket?.setKeepAlive(true);
  const done = (): void => unsubscribe?.();
  req.once('close', done);
  res.once('close', done);
}

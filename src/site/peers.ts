// A site's replication links (src/net): the listening server, the dialers, one authenticated
// Link per peer. It is the executor's PeersPort (core messages out, as wire frames) and the
// source of the core's link events: peerUp, peerDown, recv (decoded frames) and peerHeard (the
// link's own heartbeats, with the round trip it measured: contract 6 of src/core/types.ts).
// Which peers matter is the core's business: every event is fed, and the core ignores peers it
// does not know. STATUS_REQUEST (a peer or `npm run conformance` asking) is answered here.
// Before the core sees a frame, the edge checks that the peer may send it at all (the cluster
// file's roles, src/site/authority.ts; a LAST_HEARD_ANSWER only answers a query sent on that
// link; no epoch, in a frame or a heartbeat, more than epochStepMax past this site's): a frame
// against that is refused, logged naming the peer (rate-limited per peer), and its link closed.
import { Dialer, LinkServer, type Link } from '../net/index.js';
import { ErrorCode, type DataMessage, type FrameTypeName } from '../wire/index.js';
import { rateLimitedLogger } from '../net/log-limit.js';
import type { LinkLogger } from '../net/index.js';
import { epochStepMax } from '../core/upstream.js';
import { PeerAuthority } from './authority.js';
import type { CoreEvent, HeartbeatState, PeerId, PeerMsg } from '../core/types.js';
import { AckTimer } from './ack-timer.js';
import type { PeersPort } from './executor.js';
import { decodeOrClose, sendOrClose, statusReplyEntries } from './linkio.js';
import { toWire } from './peerwire.js';
import type { SiteContext } from './context.js';
import type { SiteStatus } from './status.js';

/** Link send queue: above the core's in-flight bound, so a link never refuses a send the window allowed. */
const linkSendQueueBytesMax = 96 * 1024 * 1024;
/** LAST_HEARD_QUERYs remembered per link awaiting their answer (a standby asks one at a time). */
const lastHeardQueriesMax = 16;

export interface PeersTiming {
  heartbeatIntervalMs?: number;
  linkTimeoutMs?: number;
}

export interface PeersOptions {
  readonly timing: PeersTiming;
  heartbeatState(): HeartbeatState;
  status(): SiteStatus;
  feed(ev: CoreEvent): void;
  nowMs(): number;
  /**
   * A STATUS_REPLY from `peer` to a STATUS_REQUEST this site sent it (requestStatus): the etcd
   * coordinator's question to the standby (src/site/coordinator.ts). Replies to nothing asked are dropped.
   */
  statusReply?(peer: PeerId, requestId: number, entries: readonly (readonly [string, string])[]): void;
}

export class Peers implements PeersPort {
  private readonly links = new Map<PeerId, Link>();
  private readonly dialers = new Map<PeerId, Dialer>();
  private server: LinkServer | undefined;
  /** With several consistency groups: the site's shared port (src/site/link-hub.ts) and this group's handler on it. */
  private hubHandler: ((link: Link) => void) | undefined;
  /** The consistency group these links carry (issue 20; data frames carry it as volumeId). */
  private readonly group: number;
  /** Send-to-ack timing per peer, for the ack-latency histogram only (the core keeps the window). */
  private readonly ackTimer = new AckTimer();
  /** Per peer, what records an ack's latency in geomirror_ack_latency_seconds (made once: acks are the hot path). */
  private readonly ackObservers = new Map<string, (latencyMs: number) => void>();
  private stopped = false;
  private readonly authority: PeerAuthority;
  /** Per link: the LAST_HEARD_QUERY ids sent on it and not yet answered. */
  private readonly queries = new WeakMap<Link, bigint[]>();
  /** Per link: the STATUS_REQUEST ids this site sent on it and not yet answered. */
  private readonly statusAsked = new WeakMap<Link, number[]>();
  /** Per peer and kind: refusal lines, rate-limited (an authenticated peer can reconnect and refuse itself at will). */
  private readonly refusalLogs = new Map<string, LinkLogger>();

  constructor(
    private readonly ctx: SiteContext,
    private readonly opts: PeersOptions,
  ) {
    this.authority = new PeerAuthority(ctx.config, ctx.site.name);
    this.group = ctx.linkSecurity.geometry.group ?? 0;
  }

  /** What every link of this site is built with (src/site/link-hub.ts builds the shared port's from it too). */
  linkOptions() {
    const log = this.ctx.log;
    return {
      cluster: this.ctx.config.cluster,
      site: this.ctx.site.name,
      secret: this.ctx.secret,
      security: this.ctx.linkSecurity,
      ...(this.opts.timing.heartbeatIntervalMs ? { heartbeatIntervalMs: this.opts.timing.heartbeatIntervalMs } : {}),
      ...(this.opts.timing.linkTimeoutMs ? { linkTimeoutMs: this.opts.timing.linkTimeoutMs } : {}),
      sendQueueBytesMax: linkSendQueueBytesMax,
      heartbeatState: () => this.opts.heartbeatState(),
      logger: { info: (o: object, m: string) => log.info(o, m), warn: (o: object, m: string) => log.warn(o, m) },
    };
  }

  /** Every site with a listen address accepts authenticated peers (a mirror's upstream dials in). */
  async listen(): Promise<void> {
    const { site, config } = this.ctx;
    if (!site.listen) return;
    const hub = this.ctx.linkHub;
    if (hub !== undefined) {
      this.hubHandler = (link) => this.attach(link);
      hub.register(this.group, this.hubHandler, () => this.opts.heartbeatState());
      await hub.listen();
      return;
    }
    const server = new LinkServer({ ...this.linkOptions(), peers: config.siteNames.filter((n) => n !== site.name), host: site.listen.host, port: site.listen.port });
    server.on('link', (link) => this.attach(link));
    server.on('refused', (r) => this.ctx.metrics.framesRefusedTotal.inc({ reason: r.code === undefined ? 'transport' : String(r.code) }));
    await server.listen();
    this.server = server;
  }

  /** Dials `peer` (its `listen`, or this site's `connect:` override) and keeps redialing with backoff. */
  dial(peer: PeerId): void {
    if (this.dialers.has(peer) || this.stopped) return;
    const { site, config } = this.ctx;
    const target = config.sites[peer];
    const addr = site.connect[peer] ?? target?.listen;
    if (!addr) throw new Error(`sites.${peer}.listen: ${target?.role ?? 'site'} ${peer} has no listen address for ${site.name} to dial (or give sites.${site.name}.connect.${peer})`);
    const d = new Dialer({ ...this.linkOptions(), peer, host: addr.host, port: addr.port, backoffMsMin: 50, backoffMsMax: 2000 });
    d.on('link', (link) => this.attach(link));
    this.ctx.metrics.setLinkState(peer, 'connecting');
    d.start();
    this.dialers.set(peer, d);
  }

  /** The link to `peer` as status shows it. */
  linkOf(peer: PeerId): { up: boolean; rttMs?: number } {
    const l = this.links.get(peer);
    return l === undefined ? { up: false } : { up: true, ...(l.rttMs !== undefined ? { rttMs: l.rttMs } : {}) };
  }

  // ---- PeersPort ----------------------------------------------------------------------------

  send(peer: PeerId, msg: PeerMsg): void {
    const link = this.links.get(peer);
    if (link === undefined || link.state !== 'established') return; // contract 4: dropped
    if (!sendOrClose(link, toWire(msg, this.ctx.site.name, this.group))) return;
    if (msg.type === 'write') this.ackTimer.sent(peer, msg.seq, msg.lengthBytes, this.opts.nowMs());
    else if (msg.type === 'lastHeardQuery') {
      const q = this.queries.get(link) ?? [];
      q.push(msg.queryId);
      if (q.length > lastHeardQueriesMax) q.shift();
      this.queries.set(link, q);
    }
  }

  /** Sends STATUS_REQUEST `requestId` to `peer`; false when its link is not up (the answer goes to opts.statusReply). */
  requestStatus(peer: PeerId, requestId: number): boolean {
    const link = this.links.get(peer);
    if (link === undefined || link.state !== 'established') return false;
    if (!sendOrClose(link, { type: 'STATUS_REQUEST', requestId })) return false;
    const q = this.statusAsked.get(link) ?? [];
    q.push(requestId);
    if (q.length > lastHeardQueriesMax) q.shift();
    this.statusAsked.set(link, q);
    return true;
  }

  /** The core refused `peer`'s input (it logged why, naming the peer): end the link with REFUSED. */
  close(peer: PeerId, reason: string): void {
    this.links.get(peer)?.close(ErrorCode.REFUSED, reason);
  }

  /**
   * Why an epoch `peer` claims (in a `type` frame or its heartbeat) cannot be true: more
   * promotions at once than epochStepMax (the bound src/core/upstream.ts puts on EPOCH). The
   * primary's core fences itself on any newer epoch from a mirror or its standby (that is how an
   * old primary learns it was superseded), so a jump to 2^64-1 would fence it for good.
   */
  private epochRefusal(peer: PeerId, type: FrameTypeName, epoch: bigint): string | undefined {
    const ours = this.opts.heartbeatState().epoch;
    if (epoch <= ours + epochStepMax) return undefined;
    return `${peer} sent ${type} of epoch ${epoch}, ${epoch - ours} past ${this.ctx.site.name}'s ${ours}: more than ${epochStepMax} promotions at once is not a failover (an epoch grows by one per promotion)`;
  }

  /** Why the edge refuses `m` from `peer` on `link` (undefined: the core may see it). */
  private edgeRefusal(link: Link, peer: PeerId, m: DataMessage): string | undefined {
    const byRole = this.authority.refusal(peer, m.type);
    if (byRole !== undefined) return byRole;
    const claimed = m.type === 'FENCE' ? m.currentEpoch : 'epoch' in m ? m.epoch : undefined;
    const byEpoch = claimed === undefined ? undefined : this.epochRefusal(peer, m.type, claimed);
    if (byEpoch !== undefined) return byEpoch;
    if (m.type === 'LAST_HEARD_ANSWER') {
      // An answer is a vote in a failover: only one per question this site asked on this link.
      const q = this.queries.get(link);
      const i = q?.indexOf(m.queryId) ?? -1;
      if (i < 0) return `${peer} sent LAST_HEARD_ANSWER to query ${m.queryId}, which ${this.ctx.site.name} did not ask it on this link`;
      q!.splice(i, 1);
    }
    return undefined;
  }

  // ---- links --------------------------------------------------------------------------------

  private attach(link: Link): void {
    const peer = link.peer;
    if (peer === undefined || this.stopped) {
      link.close();
      return;
    }
    if (link.group !== this.group) {
      link.close(ErrorCode.REFUSED, `a link of consistency group ${link.group} reached group ${this.group}`);
      return;
    }
    link.heartbeatFrom(() => this.opts.heartbeatState());
    const old = this.links.get(peer);
    if (old && old !== link) old.close(undefined, `replaced by a new connection from ${peer}`);
    this.links.set(peer, link);
    const { log, metrics } = this.ctx;
    const replicated = metrics.tally('replicated');
    metrics.setLinkState(peer, 'up');
    log.info({ event: 'link-up', peer, remote: link.remote }, `link to ${peer} up`);
    this.opts.feed({ type: 'peerUp', peer });
    link.on('message', (m) => {
      if (m.type === 'STATUS_REQUEST') {
        sendOrClose(link, { type: 'STATUS_REPLY', requestId: m.requestId, entries: statusReplyEntries(this.opts.status()) });
        return;
      }
      if (m.type === 'STATUS_REPLY') {
        // Only the answer to a question asked on this link; anything else is dropped (harmless).
        const q = this.statusAsked.get(link);
        const i = q?.indexOf(m.requestId) ?? -1;
        if (i >= 0) {
          q!.splice(i, 1);
          this.opts.statusReply?.(peer, m.requestId, m.entries);
        }
        return;
      }
      const refused = this.edgeRefusal(link, peer, m);
      if (refused !== undefined) {
        this.refuse(link, peer, m.type, refused);
        return;
      }
      if (m.type === 'FENCE' && m.currentEpoch <= this.opts.heartbeatState().epoch) {
        // A FENCE says "I am at a newer epoch than you". One that is not newer is stale news (it
        // crossed this site's own epoch change) or a lie; the primary's core fences itself on a
        // FENCE of its own epoch, so it never reaches the core. Not a reason to drop the link.
        this.staleFenceLog(peer).info({ event: 'stale-fence-ignored', peer, epoch: String(m.currentEpoch), ours: String(this.opts.heartbeatState().epoch) }, `ignored a FENCE of epoch ${m.currentEpoch} from ${peer}: this site is at epoch ${this.opts.heartbeatState().epoch} already`);
        return;
      }
      const msg = decodeOrClose(link, m, peer, log);
      if (msg === undefined) return;
      if (msg.type === 'ack') this.ackTimer.acked(peer, msg.seq, this.opts.nowMs(), this.ackObserver(peer));
      else if (msg.type === 'write') {
        replicated.writes++;
        replicated.bytes += msg.lengthBytes;
      }
      this.opts.feed({ type: 'recv', peer, msg });
    });
    link.on('heartbeat', (hb, rttMs) => {
      const refused = this.epochRefusal(peer, 'HEARTBEAT', hb.epoch);
      if (refused !== undefined) {
        this.refuse(link, peer, 'HEARTBEAT', refused);
        return;
      }
      if (rttMs !== undefined) metrics.linkRttSeconds.set({ peer }, rttMs / 1000);
      this.opts.feed({ type: 'peerHeard', peer, epoch: hb.epoch, lastSeq: hb.lastSeq, ...(rttMs !== undefined ? { rttMs } : {}) });
    });
    link.once('close', (info) => {
      if (this.links.get(peer) !== link) return;
      this.links.delete(peer);
      this.ackTimer.forget(peer);
      metrics.setLinkState(peer, this.dialers.has(peer) ? 'connecting' : 'down');
      log.warn({ event: 'link-down', peer, reason: info.reason }, `link to ${peer} down: ${info.reason}`);
      this.opts.feed({ type: 'peerDown', peer });
    });
  }

  private staleFenceLog(peer: PeerId): LinkLogger {
    return this.limitedLog(`stale FENCEs ignored from ${peer}`);
  }

  private limitedLog(what: string): LinkLogger {
    let log = this.refusalLogs.get(what);
    if (log === undefined) {
      const base = this.ctx.log;
      log = rateLimitedLogger({ info: (o, msg) => base.info(o, msg), warn: (o, msg) => base.warn(o, msg) }, what);
      this.refusalLogs.set(what, log);
    }
    return log;
  }

  /** What records `peer`'s ack latencies: its histogram series, found once (see ackObservers). */
  private ackObserver(peer: string): (latencyMs: number) => void {
    let o = this.ackObservers.get(peer);
    if (o === undefined) {
      const series = this.ctx.metrics.ackLatencySeconds.seriesOf({ peer });
      this.ackObservers.set(peer, (o = (ms) => series.observe(ms / 1000)));
    }
    return o;
  }

  /** Refuses `peer`'s `type` frame: counted, logged naming the peer (rate-limited per peer), the link closed with REFUSED. */
  private refuse(link: Link, peer: PeerId, type: FrameTypeName, reason: string): void {
    this.ctx.metrics.framesRefusedTotal.inc({ reason: String(ErrorCode.REFUSED) });
    this.limitedLog(`frames refused from ${peer}`).warn({ event: 'frame-refused', peer, remote: link.remote, type, reason }, `refused ${type} from ${peer}: ${reason}`);
    link.close(ErrorCode.REFUSED, reason);
  }

  async stop(reason: string): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const d of this.dialers.values()) d.stop();
    if (this.hubHandler !== undefined) this.ctx.linkHub?.unregister(this.group, this.hubHandler);
    for (const l of this.links.values()) l.close(undefined, reason);
    await this.server?.close();
  }
}

// The witness runtime (issue 10): a site that holds no data and only listens, so a small cluster
// (primary + standby + one mirror, or primary + standby alone) still has a strict majority to
// decide a failover with. The primary dials it (its link heartbeats are how the witness hears the
// primary) and the standby dials it to ask LAST_HEARD_QUERY ("when did you last hear the
// primary?"); the witness answers LAST_HEARD_ANSWER from what its links saw. It never dials,
// never votes by itself and never fences anyone: the standby's core (src/core/standby.ts) counts
// its answer like a mirror's.
//
// "Heard the primary": any frame on a link whose authenticated peer is the cluster's primary,
// and a link heartbeat from it counts only when its epoch is not older than the highest epoch
// the primary has shown us (a restarted old primary replaying an older epoch is not "heard").
// Ages are monotonic (performance.now), never wall clock; "never" means in this process life.
//
// Authority (issue 17 item 3): only the sites that dial a witness, the configured primary and
// standby, may connect, and the epoch it answers with moves only through them, at most
// epochStepMax at once: its epoch reaches the primary in every heartbeat and fences it if newer,
// so a mirror (or a restarted old primary's stale peer) must not be able to raise it.
import { performance } from 'node:perf_hooks';
import { epochStepMax } from '../core/upstream.js';
import { LinkServer, type Link } from '../net/index.js';
import { ErrorCode, type DataMessage } from '../wire/index.js';
import { toWire } from './peerwire.js';
import { decodeOrClose, sendOrClose, statusReplyEntries } from './linkio.js';
import type { RoleRuntime, SiteContext, SiteRuntime } from './context.js';
import { linkTimingFromEnv } from './env-hooks.js';
import type { PeerStatus, SiteStatus } from './status.js';


/** Peers listed in status once they connected: the link's state and its last RTT. */
interface PeerSeen {
  link: Link | undefined;
}

export const witnessRuntime: RoleRuntime = async (ctx: SiteContext): Promise<SiteRuntime> => {
  const { config, site, metrics } = ctx;
  const log = ctx.log;
  if (!site.listen) throw new Error(`sites.${site.name}.listen: a witness needs a listen address (the primary and the standby dial it)`);
  const primary = config.primary;
  const startedAt = Date.now();
  const opts = linkTimingFromEnv();

  /** Highest epoch seen in any heartbeat (what the witness answers with), and from the primary. */
  let epoch = 0n;
  let primaryEpoch = 0n;
  let lastHeardPrimaryMs: number | undefined;
  const peers = new Map<string, PeerSeen>([[primary, { link: undefined }]]);
  let stopped = false;

  /** Who dials a witness, and so who may speak to it and move its epoch: the primary and the standby. */
  const dialers = Object.values(config.sites).filter((s) => s.role === 'primary' || s.role === 'standby').map((s) => s.name);

  const heardPrimary = (): void => {
    lastHeardPrimaryMs = performance.now();
  };

  // With several volumes (issue 20) the witness answers for each consistency group on the
  // site's one port (src/site/link-hub.ts): one of these runtimes per group, each with its own
  // epoch and its own view of the primary.
  const hub = ctx.linkHub;
  const group = ctx.linkSecurity.geometry.group ?? 0;
  const server = hub !== undefined ? undefined : new LinkServer({
    cluster: config.cluster,
    site: site.name,
    secret: ctx.secret,
    security: ctx.linkSecurity,
    peers: dialers,
    host: site.listen.host,
    port: site.listen.port,
    ...(opts.heartbeatIntervalMs ? { heartbeatIntervalMs: opts.heartbeatIntervalMs } : {}),
    ...(opts.linkTimeoutMs ? { linkTimeoutMs: opts.linkTimeoutMs } : {}),
    // Our heartbeats carry the newest epoch we know; a witness has no writes, so no seq.
    heartbeatState: () => ({ epoch, lastSeq: 0n }),
    logger: { info: (o: object, m: string) => log.info(o, m), warn: (o: object, m: string) => log.warn(o, m) },
  });

  const answer = (link: Link, peer: string, m: DataMessage): void => {
    const msg = decodeOrClose(link, m, peer, log);
    if (msg?.type !== 'lastHeardQuery') {
      log.debug({ event: 'frame-ignored', peer, type: m.type }, `witness ignores ${m.type} from ${peer}`);
      return;
    }
    const heardAgoMs = lastHeardPrimaryMs === undefined ? -1 : Math.max(0, performance.now() - lastHeardPrimaryMs);
    const reply = toWire({ type: 'lastHeardAnswer', epoch, queryId: msg.queryId, heardAgoMs, seqReceived: 0n }, site.name, link.group)!;
    if (!sendOrClose(link, reply)) return;
    metrics.lastHeardAnswersTotal?.inc();
    log.info({ event: 'last-heard-answer', peer, queryId: String(msg.queryId), primary, heardAgoMs: Math.round(heardAgoMs), epoch: Number(epoch) }, `${peer} asked when ${site.name} last heard ${primary}: ${heardAgoMs < 0 ? 'never' : `${Math.round(heardAgoMs)} ms ago`}`);
  };

  const attach = (link: Link): void => {
    const peer = link.peer;
    if (peer === undefined || stopped) {
      link.close();
      return;
    }
    if (hub !== undefined) {
      if (!dialers.includes(peer)) {
        link.close(ErrorCode.REFUSED, `${peer} is neither the primary nor the standby; only they dial a witness`);
        return;
      }
      link.heartbeatFrom(() => ({ epoch, lastSeq: 0n }));
      const old = peers.get(peer)?.link;
      if (old !== undefined && old !== link) old.close(undefined, `replaced by a new connection from ${peer}`);
    }
    // LinkServer already closed an older link of the same peer (REPLACED).
    peers.set(peer, { link });
    metrics.setLinkState(peer, 'up');
    log.info({ event: 'link-up', peer, remote: link.remote }, `link to ${peer} up`);
    // Not "heard" yet: the link's first heartbeat (sent at once) says which epoch it speaks.
    link.on('message', (m) => {
      if (peer === primary && (!('epoch' in m) || (m as { epoch: bigint }).epoch >= primaryEpoch)) heardPrimary();
      if (m.type === 'STATUS_REQUEST') {
        // Same answer as every site (npm run conformance asks any site).
        sendOrClose(link, { type: 'STATUS_REPLY', requestId: m.requestId, entries: statusReplyEntries(status()) });
        return;
      }
      answer(link, peer, m);
    });
    link.on('heartbeat', (hb, rttMs) => {
      if (rttMs !== undefined) metrics.linkRttSeconds.set({ peer }, rttMs / 1000);
      if (hb.epoch > epoch + epochStepMax) {
        const reason = `${peer} claims epoch ${hb.epoch}, ${hb.epoch - epoch} past ${site.name}'s ${epoch}: more than ${epochStepMax} promotions at once is not a failover`;
        metrics.framesRefusedTotal.inc({ reason: String(ErrorCode.REFUSED) });
        log.warn({ event: 'frame-refused', peer, type: 'HEARTBEAT', epoch: String(hb.epoch), ours: String(epoch), reason }, `refused HEARTBEAT from ${peer}: ${reason}`);
        link.close(ErrorCode.REFUSED, reason);
        return;
      }
      if (hb.epoch > epoch) {
        epoch = hb.epoch;
        metrics.epoch.set(Number(epoch));
      }
      if (peer === primary && hb.epoch >= primaryEpoch) {
        primaryEpoch = hb.epoch;
        heardPrimary();
      }
    });
    link.once('close', (info) => {
      const seen = peers.get(peer);
      if (seen?.link !== link) return;
      seen.link = undefined;
      metrics.setLinkState(peer, 'down');
      log.warn({ event: 'link-down', peer, reason: info.reason }, `link to ${peer} down: ${info.reason}`);
    });
  };

  const relationOf = (peer: string): PeerStatus['relation'] => {
    if (peer === primary) return 'primary';
    const role = config.sites[peer]?.role;
    return role === 'standby' ? 'standby' : role === 'witness' ? 'witness' : 'mirror';
  };

  const status = (): SiteStatus => ({
    cluster: config.cluster,
    site: site.name,
    role: 'witness',
    volume: config.volume.name,
    epoch: Number(epoch),
    lastSeqAcked: '0',
    state: stopped ? 'stopping' : 'in-sync',
    cache: { usedBytes: 0, capacityBytes: 0, entries: 0 },
    peers: [...peers].map(([name, p]) => {
      const up = p.link !== undefined && p.link.state === 'established';
      return { name, relation: relationOf(name), link: up ? ('up' as const) : ('down' as const), ...(up && p.link!.rttMs !== undefined ? { rttMs: p.link!.rttMs } : {}) };
    }),
    pid: process.pid,
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
  });

  metrics.setLinkState(primary, 'down');
  metrics.actingRole.set({ acting: 'witness' }, 1);
  if (hub !== undefined) {
    hub.register(group, attach, () => ({ epoch, lastSeq: 0n }));
    await hub.listen();
    log.info({ event: 'witness-listening', group, primary }, `witness ${site.name} answering for group ${config.volume.name} on ${site.listen.text}; watching primary ${primary}`);
  } else {
    server!.on('link', attach);
    server!.on('refused', (r) => metrics.framesRefusedTotal.inc({ reason: r.code === undefined ? 'transport' : String(r.code) }));
    const bound = await server!.listen();
    log.info({ event: 'witness-listening', host: bound.host, port: bound.port, primary }, `witness ${site.name} listening on ${site.listen.text}; watching primary ${primary}`);
  }

  return {
    status,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      if (hub !== undefined) {
        hub.unregister(group, attach);
        for (const p of peers.values()) p.link?.close(undefined, `witness ${site.name} is stopping`);
      } else await server!.close();
    },
  };
};

// A site with several volumes (issue 20): one process runs one replication runtime per
// consistency group it carries (src/site/roles.ts replicaRuntime, on the group's view of the
// cluster from src/site/volumes.ts), sharing the site's replication port (src/site/link-hub.ts),
// its NBD server (each group's life adds and withdraws its volumes' exports), its admin server
// and metrics. A failover is per group: each group's standby core watches that group's stream,
// and a kill of the primary's process ends every group's stream at once, so every group fails
// over; a planned promote/demote applies to every group of the site.
import { NbdServer } from '../nbd/server.js';
import { componentLogger } from './log.js';
import { LinkHub } from './link-hub.js';
import { linkTimingFromEnv } from './env-hooks.js';
import { replicaRuntime } from './roles.js';
import { witnessRuntime } from './witness.js';
import { groupContext, groupsOfSite } from './volumes.js';
import type { RoleChangeAnswer } from './role-change.js';
import { ChecksumRequestError } from './checksums.js';
import { RoleChangeError } from './role-change.js';
import type { SiteContext, SiteRuntime } from './context.js';
import type { GroupConfig } from './config.js';
import type { SiteStatus } from './status.js';
import type { VolumeGeometry } from '../wire/index.js';

/** Link send queue per link (as src/site/peers.ts). */
const linkSendQueueBytesMax = 96 * 1024 * 1024;

export async function groupsRuntime(ctx: SiteContext): Promise<SiteRuntime> {
  const { config, site } = ctx;
  const groups = groupsOfSite(config, site);
  if (groups.length === 0) throw new Error(`sites.${site.name}: carries none of the volumes of ${config.file}; list it in a volume's sites: or remove the site`);
  const geometries = new Map<number, VolumeGeometry>(groups.map((g) => [g.index, { volumeBytes: BigInt(g.volume.sizeBytes), blockBytes: g.volume.blockSize, group: g.index }]));
  const timing = linkTimingFromEnv();
  const log = ctx.log;
  const hub = site.listen
    ? new LinkHub({
        cluster: config.cluster, site: site.name, secret: ctx.secret, security: ctx.linkSecurity,
        peers: config.siteNames.filter((n) => n !== site.name), host: site.listen.host, port: site.listen.port,
        ...(timing.heartbeatIntervalMs ? { heartbeatIntervalMs: timing.heartbeatIntervalMs } : {}),
        ...(timing.linkTimeoutMs ? { linkTimeoutMs: timing.linkTimeoutMs } : {}),
        sendQueueBytesMax: linkSendQueueBytesMax,
        logger: { info: (o: object, m: string) => log.info(o, m), warn: (o: object, m: string) => log.warn(o, m) },
      }, geometries)
    : undefined;
  hub?.onRefused((r) => ctx.metrics.framesRefusedTotal.inc({ reason: r.code === undefined ? 'transport' : String(r.code) }));
  let nbd: NbdServer | undefined;
  if (site.nbd) {
    nbd = new NbdServer({ exports: [], logger: componentLogger(log, 'nbd'), ...(ctx.nbdTls ? { tls: ctx.nbdTls } : {}) });
    await nbd.listen(site.nbd.host, site.nbd.port);
  }
  const running: { g: GroupConfig; rt: SiteRuntime }[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.allSettled(running.map((r) => r.rt.stop()));
    await nbd?.close();
    await hub?.close();
  };
  try {
    for (const g of groups) {
      const rt = await (site.role === 'witness' ? witnessRuntime : replicaRuntime)(groupContext({ ...ctx, ...(hub ? { linkHub: hub } : {}), ...(nbd ? { nbdHub: nbd } : {}) }, g));
      running.push({ g, rt });
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  log.info({ event: 'groups-running', groups: groups.map((g) => g.name), volumes: groups.flatMap((g) => g.volumes.map((v) => v.name)) }, `site ${site.name} serves ${groups.length} consistency group(s), ${groups.reduce((n, g) => n + g.volumes.length, 0)} volume(s)`);

  const status = (): SiteStatus => {
    const all = running.map(({ g, rt }) => ({ group: g.name, volumes: g.volumes.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes, offsetBytes: v.offsetBytes })), status: rt.status() }));
    return { ...all[0]!.status, groups: all };
  };
  const each = async (action: 'promote' | 'demote', reason: string, force?: boolean): Promise<RoleChangeAnswer> => {
    const answers: RoleChangeAnswer[] = [];
    const problems: string[] = [];
    for (const { g, rt } of running) {
      const fn = rt[action];
      if (fn === undefined) continue;
      try {
        answers.push(await fn.call(rt, reason, force));
      } catch (err) {
        problems.push(`group ${g.name}: ${(err as Error).message}`);
      }
    }
    if (answers.length === 0) throw new RoleChangeError(problems.join('; ') || `site ${site.name} cannot ${action}`);
    if (problems.length > 0) log.warn({ event: `${action}-partial`, problems }, `${action} did not apply to every group: ${problems.join('; ')}`);
    return answers[0]!;
  };
  const done = Promise.all(running.map((r) => r.rt.done ?? new Promise<void>(() => undefined))).then(() => undefined);
  done.catch(() => undefined);
  return {
    status,
    stop: stopAll,
    done,
    // geomirror verify of several volumes: one consistency group at a time (GET /checksums?group=NAME).
    checksums: async (req, group) => {
      const r = running.find((x) => x.g.name === group);
      if (r?.rt.checksums === undefined) throw new ChecksumRequestError(r === undefined ? `site ${site.name} carries no group named ${group ?? '(none given)'}; groups here: ${running.map((x) => x.g.name).join(', ')}` : `site ${site.name} keeps no storage of group ${group} to checksum`, 400);
      return r.rt.checksums(req);
    },
    promote: (reason, force) => each('promote', reason, force),
    demote: (reason) => each('demote', reason),
  };
}

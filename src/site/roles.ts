// Which replication runtime runs each role. Each runtime (primary fan-out, mirror, relay,
// standby, witness) is added here as it is built; runSite refuses a role missing from this
// table with a message saying so, rather than pretending to run it.
import { blockDeviceExport } from '../nbd/blockdev-export.js';
import { sliceExport } from '../nbd/export.js';
import { NbdServer } from '../nbd/server.js';
import { regionCount } from '../core/regions.js';
import { defaultLimits } from '../core/types.js';
import type { Role } from './config.js';
import { meteredExport, replicaExport } from './host-export.js';
import { regionChecksums } from './checksums.js';
import { componentLogger } from './log.js';
import { openSiteDevices, Replica, type ReplicaOptions, type SiteDevices } from './replica.js';
import type { RoleRuntime, SiteContext, SiteRuntime } from './context.js';
import { RoleChangeError } from './role-change.js';
import { FailoverHistory } from './history.js';
import type { FailoverRecord } from './status.js';
import { witnessRuntime } from './witness.js';
import { linkTimingFromEnv, mirrorLossGraceMsFromEnv } from './env-hooks.js';

/** Test hooks (src/site/env-hooks.ts): shorter link timing and grace for kill -9 tests. */
function replicaOptionsFromEnv(): ReplicaOptions {
  const mirrorLossGraceMs = mirrorLossGraceMsFromEnv();
  return { ...linkTimingFromEnv(), ...(mirrorLossGraceMs ? { limits: { mirrorLossGraceMs } } : {}) };
}

/**
 * A consistency group of a site with several volumes (issue 20 item 1) bounds its writes in
 * flight by its number of volumes, so 16 volumes of one site hold at most 16 x this in flight
 * (each group's cache share bounds it too: the Replica keeps in flight at most half its cache).
 */
export const inflightBytesPerVolumeMax = 8 * 1024 * 1024;

function groupLimits(ctx: SiteContext, opts: ReplicaOptions): ReplicaOptions {
  if (!ctx.config.multiVolume || ctx.group === undefined) return opts;
  const inflightBytesMax = Math.min(opts.limits?.inflightBytesMax ?? defaultLimits.inflightBytesMax, ctx.group.volumes.length * inflightBytesPerVolumeMax);
  return { ...opts, limits: { ...opts.limits, inflightBytesMax } };
}

/** Bound on draining a primary for a planned demotion: past it the demotion is refused. */
const demoteDrainMsMax = 30_000;

/**
 * A replicating site (primary, mirror, relay, standby). One "life" is a Replica on freshly opened
 * devices with its NBD export; a failover ends a life and starts the next in the same process
 * (issue 10): a standby's export goes live read-write when it is promoted; a fenced primary
 * persists `acting: standby` and comes back as the standby of the site that was promoted (its
 * partner in the pair), to be resynced by it and promoted back by `geomirror promote` (failback,
 * issue 16 item 5); a demoted primary persists `acting: mirror` and follows as a mirror until the
 * next primary's epoch reaches it, then as that site's standby. No file edit, no restart.
 */
export async function replicaRuntime(ctx: SiteContext): Promise<SiteRuntime> {
  const { config, site } = ctx;
  const opts = groupLimits(ctx, replicaOptionsFromEnv());
  const historyPath = site.cache?.device.kind === 'loopback' ? `${site.cache.device.path}.failovers.jsonl` : undefined;
  const history = new FailoverHistory(historyPath);
  let replica!: Replica;
  let devices!: SiteDevices;
  let nbd: NbdServer | undefined;
  let swapping: Promise<void> | undefined;
  let stopping = false;
  let doneResolve!: () => void;
  let doneReject!: (err: Error) => void;
  const done = new Promise<void>((res, rej) => {
    doneResolve = res;
    doneReject = rej;
  });
  done.catch(() => undefined);

  /** With several volumes (ctx.nbdHub): the names this life added to the site's NBD server. */
  let served: string[] | undefined;

  const serve = async (readWrite: boolean): Promise<void> => {
    if (!site.nbd || nbd !== undefined || served !== undefined) return;
    const array = devices.array;
    if (!readWrite && array === undefined) return;
    // Primary: the mirrored volume, read-write. Mirror: its replica, read-only (DR checks, backups).
    const exp = meteredExport(readWrite
      ? replicaExport(replica, { name: config.volume.name, description: `geomirror ${config.cluster}: primary ${site.name} (epoch ${replica.status().epoch})`, sizeBytes: config.volume.sizeBytes })
      : blockDeviceExport(array!, { name: config.volume.name, description: `geomirror ${config.cluster}: read-only replica at ${site.name}`, readOnly: true }), ctx.metrics);
    if (ctx.nbdHub !== undefined && ctx.group !== undefined) {
      // Several volumes (issue 20): each volume of the group is a window of the group's export
      // on the site's one NBD server, added while this life serves and withdrawn when it ends.
      const g = ctx.group;
      const exps = g.volumes.length === 1 && g.volumes[0]!.name === exp.name
        ? [exp]
        : g.volumes.map((v) => sliceExport(exp, { name: v.name, description: `${exp.description}, volume ${v.name} of group ${g.name}`, offsetBytes: v.offsetBytes, sizeBytes: v.sizeBytes }));
      for (const e of exps) ctx.nbdHub.addExport(e);
      served = exps.map((e) => e.name);
      for (const e of exps) ctx.log.info({ event: 'nbd-listening', uri: `nbd://${site.nbd.text}/${e.name}`, readOnly: e.readOnly, group: g.name }, `NBD export ${e.name} on ${site.nbd.text}${e.readOnly ? ' (read-only)' : ''}`);
      return;
    }
    const server = new NbdServer({ exports: [exp], logger: componentLogger(ctx.log, 'nbd'), ...(ctx.nbdTls ? { tls: ctx.nbdTls } : {}) });
    await server.listen(site.nbd.host, site.nbd.port);
    nbd = server;
    ctx.log.info({ event: 'nbd-listening', uri: `nbd://${site.nbd.text}/${config.volume.name}`, readOnly: exp.readOnly }, `NBD export ${config.volume.name} on ${site.nbd.text}${exp.readOnly ? ' (read-only)' : ''}`);
  };

  const closeExport = async (): Promise<void> => {
    if (served !== undefined) {
      for (const name of served) ctx.nbdHub?.removeExport(name);
      served = undefined;
    }
    const n = nbd;
    nbd = undefined;
    await n?.close();
  };

  /** The primary and its standby are a pair: each can follow the other. */
  const pairMember = site.role === 'primary' ? site.standby !== undefined : site.role === 'standby';

  /** Ends this life and starts the next in `acting` (durable first); `record`: a failover event to keep. */
  const becomeFollower = (acting: 'standby' | 'mirror', epoch: bigint, record: Omit<FailoverRecord, 'at' | 'site'> | undefined, why: string): Promise<void> => {
    if (swapping) return swapping;
    swapping = (async () => {
      const rec: FailoverRecord | undefined = record && { at: new Date().toISOString(), site: site.name, ...record };
      ctx.log.warn({ event: record === undefined ? 'follows-new-primary' : record.kind === 'fenced' ? 'fenced-rejoin' : 'demoted', acting, epoch: Number(epoch), ...(rec ?? {}) }, `${site.name} ${why}; it comes back as ${acting === 'standby' ? 'the standby of the primary of' : 'a mirror, waiting for the primary of the epoch after'} epoch ${epoch} and is resynced by it`);
      if (record) ctx.metrics.failoversTotal.inc({ kind: record.kind });
      await closeExport();
      await replica.persistActing(acting, epoch);
      if (rec) {
        replica.addHistory(rec);
        await history.append(rec);
      }
      await replica.stop();
      if (stopping) return;
      await startLife();
    })()
      .catch((err: Error) => {
        ctx.log.error({ event: 'role-change-failed', err: err.message }, `could not change role: ${err.message}`);
        doneReject(err);
      })
      .finally(() => {
        swapping = undefined;
      });
    return swapping;
  };

  const startLife = async (): Promise<void> => {
    devices = await openSiteDevices(ctx, regionCount(config.volume.sizeBytes, defaultLimits.regionBytes));
    const r: Replica = new Replica(ctx, devices, opts, {
      onPromoted: () => {
        const last = r.failoverHistory().filter((h) => h.kind === 'promoted').at(-1);
        if (last) void history.append(last).catch((err: Error) => ctx.log.warn({ event: 'failover-history-write-failed', err: err.message }, 'failover history not written'));
        ctx.log.warn({ event: 'promoted', epoch: r.status().epoch, ...(last ?? {}) }, `${site.name} is now the primary of epoch ${r.status().epoch}`);
        serve(true).catch((err: Error) => {
          ctx.log.error({ event: 'nbd-listen-failed', err: err.message }, `promoted, but the NBD export on ${site.nbd?.text} could not open: ${err.message}`);
        });
      },
      onFenced: (epoch) => {
        const st = r.status();
        const reason = `a peer is at epoch ${epoch}: another site was promoted`;
        void becomeFollower(pairMember ? 'standby' : 'mirror', epoch, { kind: 'fenced', fromEpoch: st.epoch, toEpoch: Number(epoch), lastSeq: st.lastSeqAcked, reason }, `stops acting as primary (${reason})`);
      },
      onNewPrimary: (epoch) => {
        if (pairMember) void becomeFollower('standby', epoch, undefined, `(demoted) learned that epoch ${epoch} has a primary`);
      },
    });
    replica = r;
    r.setHistory(await history.load());
    await r.start();
    if (site.nbd && r.acting !== 'primary' && r.acting !== 'standby' && devices.array === undefined) {
      await r.stop();
      throw new Error(`sites.${site.name}.nbd: relay ${site.name} keeps no copy (no storage), so it has nothing to export; remove nbd or add storage`);
    }
    try {
      // A following standby opens its export when it is promoted (onPromoted).
      if (r.acting !== 'standby') await serve(r.acting === 'primary');
    } catch (err) {
      await r.stop();
      throw err;
    }
    r.done.then(
      () => {
        if (replica === r && !swapping) doneResolve();
      },
      (err: Error) => doneReject(err),
    );
  };

  await startLife();
  return {
    status: () => replica.status(),
    stop: async () => {
      stopping = true;
      await swapping;
      await closeExport();
      await replica.stop();
    },
    done,
    // geomirror verify: digests of this site's own replica, read through its array (claim 4's
    // reads path), so a mirror and the primary are compared on what each would serve.
    // A cache-only relay holds no copy to digest.
    ...(devices.array !== undefined ? { checksums: (req: Parameters<typeof regionChecksums>[2]) => regionChecksums(devices.array!, config.volume.sizeBytes, req) } : {}),
    promote: async (reason: string, force = false) => {
      if (swapping) throw new RoleChangeError(`${site.name} is changing role already; retry in a moment`);
      replica.promote(reason, force);
      return { site: site.name, epoch: replica.status().epoch, phase: replica.status().standby?.phase ?? replica.status().role };
    },
    demote: async (reason: string) => {
      if (swapping) throw new RoleChangeError(`${site.name} is changing role already; retry in a moment`);
      const st = replica.status();
      if (st.role !== 'primary') throw new RoleChangeError(`${site.name} acts as ${st.role}; only the primary can be demoted`);
      // Planned: stop taking host writes, let everything in flight reach every in-sync site, then
      // hand over. The epoch stays; the site that is promoted next moves it on and resyncs us.
      await closeExport();
      const t0 = Date.now();
      while (!replica.quiescent()) {
        if (Date.now() - t0 > demoteDrainMsMax) {
          await serve(true);
          throw new RoleChangeError(`${site.name} could not drain its in-flight writes within ${demoteDrainMsMax / 1000} s (a mirror unreachable under on-mirror-loss: block?); it stays primary`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      // With etcd as the arbiter, the drained primary gives the group's key up now: its standby
      // wins it at once instead of after the lease TTL.
      await replica.releaseCoordinator();
      await becomeFollower('mirror', BigInt(st.epoch), { kind: 'demoted', fromEpoch: st.epoch, toEpoch: st.epoch, lastSeq: st.lastSeqAcked, reason }, `stops acting as primary (demoted: ${reason})`);
      return { site: site.name, epoch: st.epoch, phase: 'mirror' };
    },
  };
}

export const roleRuntimes: Partial<Record<Role, RoleRuntime>> = {
  primary: replicaRuntime,
  mirror: replicaRuntime,
  relay: replicaRuntime,
  standby: replicaRuntime,
  witness: witnessRuntime,
};

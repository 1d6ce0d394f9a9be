// Which replication runtime runs each role. Each runtime (primary fan-out, mirror, relay,
// standby, witness) is added here as it is built; runSite refuses a role missing from this
// table with a message saying so, rather than pretending to run it.
import { blockDeviceExport } from '../nbd/blockdev-export.js';
import { NbdServer } from '../nbd/server.js';
import { regionCount } from '../core/regions.js';
import { defaultLimits } from '../core/types.js';
import type { Role } from './config.js';
import { replicaExport } from './host-export.js';
import { regionChecksums } from './checksums.js';
import { componentLogger } from './log.js';
import { openSiteDevices, Replica, type ReplicaOptions } from './replica.js';
import type { RoleRuntime, SiteContext, SiteRuntime } from './run.js';

/** Test hook: shorter link timing for kill -9 tests, from the environment of a site process. */
function replicaOptionsFromEnv(): ReplicaOptions {
  const num = (name: string) => {
    const v = process.env[name];
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const heartbeatIntervalMs = num('GEOMIRROR_HEARTBEAT_MS');
  const linkTimeoutMs = num('GEOMIRROR_LINK_TIMEOUT_MS');
  const mirrorLossGraceMs = num('GEOMIRROR_MIRROR_LOSS_GRACE_MS');
  return {
    ...(heartbeatIntervalMs ? { heartbeatIntervalMs } : {}),
    ...(linkTimeoutMs ? { linkTimeoutMs } : {}),
    ...(mirrorLossGraceMs ? { limits: { mirrorLossGraceMs } } : {}),
  };
}

async function replicaRuntime(ctx: SiteContext): Promise<SiteRuntime> {
  const { config, site } = ctx;
  const devices = await openSiteDevices(ctx, regionCount(config.volume.sizeBytes, defaultLimits.regionBytes));
  const replica = new Replica(ctx, devices, replicaOptionsFromEnv());
  await replica.start();
  let nbd: NbdServer | undefined;
  const array = devices.array;
  if (site.nbd && site.role !== 'primary' && array === undefined) {
    await replica.stop();
    throw new Error(`sites.${site.name}.nbd: relay ${site.name} keeps no copy (no storage), so it has nothing to export; remove nbd or add storage`);
  }
  if (site.nbd) {
    // Primary: the mirrored volume, read-write. Mirror: its replica, read-only (DR checks, backups).
    const exp =
      site.role === 'primary'
        ? replicaExport(replica, { name: config.volume.name, description: `geomirror ${config.cluster}: primary ${site.name}, mirrored to ${site.mirrors.join(', ') || 'no mirror'}`, sizeBytes: config.volume.sizeBytes })
        : blockDeviceExport(array!, { name: config.volume.name, description: `geomirror ${config.cluster}: read-only replica at ${site.name}`, readOnly: true });
    nbd = new NbdServer({ exports: [exp], logger: componentLogger(ctx.log, 'nbd') });
    try {
      await nbd.listen(site.nbd.host, site.nbd.port);
    } catch (err) {
      await replica.stop();
      throw err;
    }
    ctx.log.info({ event: 'nbd-listening', uri: `nbd://${site.nbd.text}/${config.volume.name}`, readOnly: exp.readOnly }, `NBD export ${config.volume.name} on ${site.nbd.text}${exp.readOnly ? ' (read-only)' : ''}`);
  }
  return {
    status: () => replica.status(),
    stop: async () => {
      await nbd?.close();
      await replica.stop();
    },
    done: replica.done,
    // geomirror verify: digests of this site's own replica, read through its array (claim 4's
    // reads path), so a mirror and the primary are compared on what each would serve.
    // A cache-only relay holds no copy to digest.
    ...(array !== undefined ? { checksums: (req: Parameters<typeof regionChecksums>[2]) => regionChecksums(array, config.volume.sizeBytes, req) } : {}),
  };
}

export const roleRuntimes: Partial<Record<Role, RoleRuntime>> = {
  primary: replicaRuntime,
  mirror: replicaRuntime,
  relay: replicaRuntime,
};

// Runs one site of a cluster file: `geomirror site --config FILE --site NAME`.
//
// Order of work, each step refusing with a message that names the thing:
//   1. the site exists in the file;
//   2. start-up checks, all reported together: device files present and big enough, the key
//      file readable, listen/nbd/admin addresses free on this machine;
//   3. logs: the file's warnings and, on a primary or standby, the geography of claims 5-7;
//   4. the admin server (so /status answers "starting" while the runtime replays its cache);
//   5. the role's replication runtime (src/site/roles.ts), which opens devices, binds
//      listen/nbd and connects links; it reports through SiteRuntime.status() and metrics.
import { createServer } from 'node:net';
import { statSync } from 'node:fs';
import { kernelBlockProblem } from '../../hal/kernel-block.js';
import { checkGeography, type GeoReport } from '../core/geo.js';
import { readSecret, type ClusterConfig, type SiteDevice, type Role, type SiteConfig } from './config.js';
import { startAdminServer, type AdminServer } from './admin.js';
import { RoleChangeError, type RoleChangeAnswer } from './role-change.js';
import { ChecksumRequestError, parseChecksumQuery, type ChecksumAnswer } from './checksums.js';
import { componentLogger, createLogger, type Logger } from './log.js';
import { bindStatusGauges, createSiteMetrics, type SiteMetrics } from './metrics.js';
import { EventFeed } from './events.js';
import { roleRuntimes } from './roles.js';
import { groupsRuntime } from './groups-runtime.js';
import { groupClusterConfig, groupsOfSite } from './volumes.js';
import type { SiteStatus } from './status.js';
import { didYouMean } from './suggest.js';
import { formatBytes } from './units.js';
import { buildLinkSecurity, SiteTlsIdentity, tlsContextOptions } from './link-security.js';
import { privateFileProblem } from './private-files.js';
import { adminTokenKey, checksumDigestKey } from './admin-auth.js';
import type { NbdTlsOptions } from '../nbd/tls.js';
import { buildNbdTls, nbdExposureWarning } from './nbd-tls.js';
import type { RoleRuntime, SiteRuntime } from './context.js';

export type { RoleRuntime, SiteContext, SiteRuntime } from './context.js';

export interface RunSiteOptions {
  /** Default: a logger for this site on stdout. */
  log?: Logger;
  /** Default: roleRuntimes[site.role]. Tests and embedders pass their own. */
  runtime?: RoleRuntime;
  /** Default true; tests running several sites in one process may turn process metrics off. */
  processMetrics?: boolean;
}

export interface RunningSite {
  name: string;
  role: Role;
  log: Logger;
  metrics: SiteMetrics;
  admin?: AdminServer;
  status(): SiteStatus;
  stop(): Promise<void>;
  /** The runtime's own end, if it reports one (SiteRuntime.done). */
  done?: Promise<void>;
}

/** Start-up problems, all found before anything is opened. */
export class StartupError extends Error {
  readonly problems: string[];
  constructor(site: string, problems: string[]) {
    super(`site ${site} cannot start:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'StartupError';
    this.problems = problems;
  }
}

export async function runSite(config: ClusterConfig, siteName: string, options: RunSiteOptions = {}): Promise<RunningSite> {
  const site = config.sites[siteName];
  if (site === undefined) {
    throw new StartupError(siteName, [`--site ${siteName}: no such site in ${config.file}${didYouMean(siteName, config.siteNames)}; sites are ${config.siteNames.join(', ')}`]);
  }
  // Several volumes (issue 20): one runtime per consistency group in this process.
  const runtimeFactory = options.runtime ?? (config.multiVolume ? groupsRuntime : roleRuntimes[site.role]);
  const deviceProblems = config.multiVolume
    ? groupsOfSite(config, site).flatMap((g) => {
        const gc = groupClusterConfig(config, g);
        const gs = gc.sites[site.name];
        return gs === undefined ? [] : checkDevices(gc, gs);
      })
    : checkDevices(config, site);
  const problems = [...deviceProblems, ...(await checkAddresses(site))];
  let secret: Buffer | undefined;
  try {
    secret = readSecret(config);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (config.secret.source === 'file') {
    const p = privateFileProblem(config.secret.path!, 'secret');
    if (p !== undefined) problems.push(p);
  }
  const log = options.log ?? createLogger({ site: site.name });
  let tlsIdentity: SiteTlsIdentity | undefined;
  if (config.transport === 'tls') {
    try {
      tlsIdentity = new SiteTlsIdentity(config, site.name, componentLogger(log, 'tls'));
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  let nbdTls: NbdTlsOptions | undefined;
  try {
    nbdTls = buildNbdTls(config, site, tlsIdentity);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (runtimeFactory === undefined) {
    problems.push(`sites.${site.name}.role: this build of geomirror has no ${site.role} runtime yet (built: ${Object.keys(roleRuntimes).join(', ') || 'none'})`);
  }
  if (problems.length > 0 || secret === undefined || runtimeFactory === undefined) throw new StartupError(site.name, problems);

  const startedAtMs = Date.now();
  log.info({ event: 'starting', role: site.role, cluster: config.cluster, config: config.file, transport: config.transport }, `starting ${site.role} site ${site.name} of cluster ${config.cluster}`);
  if (config.transport === 'insecure') {
    log.warn(
      { event: 'insecure-transport' },
      `INSECURE: transport: insecure in ${config.file}: replication links of site ${site.name} are plain TCP. Anyone on the path reads every write and can cut or stall the links; peers are authenticated by the cluster key alone. Lab use only: remove the transport: key to get mutual TLS.`,
    );
  }
  const linkSecurity = buildLinkSecurity(config, tlsIdentity);
  const exposure = nbdExposureWarning(config, site);
  if (exposure !== undefined) log.warn({ event: 'nbd-exposed' }, exposure);
  for (const w of config.warnings) log.warn({ event: 'config-warning' }, w);
  const geo = logGeography(config, site, componentLogger(log, 'geo'));
  const metrics = createSiteMetrics({ site: site.name, role: site.role, cluster: config.cluster, processMetrics: options.processMetrics ?? true });

  let runtime: SiteRuntime | undefined;
  const starting = (): SiteStatus => startingStatus(config, site, startedAtMs);
  // State gauges read one status snapshot per scrape (metrics.ts), never set on the write path.
  const currentStatus = (): SiteStatus => withVerify(site, runtime?.status() ?? starting());
  bindStatusGauges(metrics, currentStatus);
  // geomirror events: status sampled into a feed of changes (src/site/events.ts), streamed on
  // the admin port's GET /events: every eventSampleMs while a client follows, every
  // eventIdleSampleMs otherwise (so the ring still serves clients that join late).
  const feed = new EventFeed();
  let sampledAtMs = 0;
  const sampler = setInterval(() => {
    const now = Date.now();
    if (feed.listenerCount === 0 && now - sampledAtMs < eventIdleSampleMs) return;
    sampledAtMs = now;
    try {
      feed.sample(currentStatus());
    } catch {
      // a status that cannot be taken now is taken at the next tick
    }
  }, eventSampleMs);
  sampler.unref();
  const admin = site.admin
    ? await startAdminServer({
        host: site.admin.host,
        port: site.admin.port,
        status: currentStatus,
        events: { feed, status: currentStatus },
        checksums: (q) => siteChecksums(config, site, runtime, q, checksumDigestKey(secret!)),
        roleChange: { promote: (why, force) => roleChangeOf(runtime, 'promote', site.name)(why, force), demote: (why) => roleChangeOf(runtime, 'demote', site.name)(why) },
        auth: { site: site.name, cluster: config.cluster, tokenKey: adminTokenKey(secret) },
        ...(tlsIdentity ? { tls: { contextOptions: () => tlsContextOptions(tlsIdentity!.material), trusted: () => tlsIdentity!.trusted(), onReload: (fn: () => void) => tlsIdentity!.onReload(fn) } } : {}),
        registry: metrics.registry,
        log: componentLogger(log, 'admin'),
      })
    : undefined;
  try {
    runtime = await runtimeFactory({ config, site, secret, linkSecurity, ...(tlsIdentity ? { tlsIdentity } : {}), ...(nbdTls ? { nbdTls } : {}), log, metrics, ...(geo ? { geo } : {}) });
  } catch (err) {
    clearInterval(sampler);
    await admin?.close();
    throw err;
  }
  log.info({ event: 'ready', role: site.role, admin: admin?.url }, `site ${site.name} ready`);

  let stopping: Promise<void> | undefined;
  const running = runtime;
  return {
    name: site.name,
    role: site.role,
    log,
    metrics,
    ...(admin ? { admin } : {}),
    ...(running.done ? { done: running.done } : {}),
    status: () => withVerify(site, running.status()),
    stop: () =>
      (stopping ??= (async () => {
        log.info({ event: 'stopping' }, `stopping site ${site.name}`);
        try {
          await running.stop();
        } finally {
          clearInterval(sampler);
          await admin?.close();
          log.info({ event: 'stopped' }, `site ${site.name} stopped`);
        }
      })()),
  };
}

/** How often a site samples its status for events while a client follows them (a transition shorter than this may be missed). */
export const eventSampleMs = 100;
/** How often it samples with nobody following: status() costs little, but not nothing. */
export const eventIdleSampleMs = 1_000;

/** At most one checksum request runs per site: a verify reads the whole disk, twice would halve both. */
const checksumsBusy = new WeakSet<SiteConfig>();

/** A verify's progress shows in /status while its last checksum request is at most this old. */
export const verifyProgressFreshMs = 10_000;
/** How far the newest verify got on each site: end of the last range digested, and when. */
const verifyProgress = new WeakMap<SiteConfig, { doneBytes: number; totalBytes: number; atMs: number }>();

/** The runtime's status plus a verify in progress (SiteStatus.verify), if any. */
function withVerify(site: SiteConfig, status: SiteStatus): SiteStatus {
  const v = verifyProgress.get(site);
  if (v === undefined || Date.now() - v.atMs > verifyProgressFreshMs || status.verify !== undefined) return status;
  return { ...status, verify: { doneBytes: v.doneBytes, totalBytes: v.totalBytes } };
}

/** GET /checksums: validated here against the volume (with several volumes: the group named by ?group=), computed by the runtime over its storage. */
async function siteChecksums(config: ClusterConfig, site: SiteConfig, runtime: SiteRuntime | undefined, query: URLSearchParams, digestKey: Buffer): Promise<ChecksumAnswer> {
  if (runtime?.checksums === undefined) {
    throw new ChecksumRequestError(runtime === undefined ? `site ${site.name} is still starting; retry in a moment` : `site ${site.name} (${site.role}) keeps no storage to checksum`, 503);
  }
  let volume = config.volume;
  let group: string | undefined;
  if (config.multiVolume) {
    group = query.get('group') ?? undefined;
    const g = config.groups.find((x) => x.name === group);
    if (g === undefined) throw new ChecksumRequestError(`site ${site.name} carries several volumes: name a consistency group with group= (one of ${config.groups.map((x) => x.name).join(', ')})`, 400);
    volume = g.volume;
    query.delete('group');
  }
  const req = parseChecksumQuery(query, volume.sizeBytes, volume.blockSize, digestKey);
  if (checksumsBusy.has(site)) throw new ChecksumRequestError(`site ${site.name} is already computing checksums for another verify; retry when it is done`, 503);
  checksumsBusy.add(site);
  try {
    const answer = await runtime.checksums(req, group);
    const doneBytes = Math.min(volume.sizeBytes, req.offsetBytes + req.regionBytes * req.count);
    verifyProgress.set(site, { doneBytes, totalBytes: volume.sizeBytes, atMs: Date.now() });
    return answer;
  } finally {
    checksumsBusy.delete(site);
  }
}

/** What /status says before the runtime is up: nothing invented, only the file's facts. */
function startingStatus(config: ClusterConfig, site: SiteConfig, startedAtMs: number): SiteStatus {
  return {
    cluster: config.cluster,
    site: site.name,
    role: site.role,
    volume: config.volume.name,
    epoch: 0,
    lastSeqAcked: '0',
    state: 'starting',
    cache: { usedBytes: 0, capacityBytes: site.cache?.sizeBytes ?? 0, entries: 0 },
    peers: [],
    pid: process.pid,
    uptimeSeconds: Math.round((Date.now() - startedAtMs) / 1000),
  };
}

/** Device files must exist and hold what the file says; the runtime opens them later. */
export function checkDevices(config: ClusterConfig, site: SiteConfig): string[] {
  const problems: string[] = [];
  /** `sized`: a file smaller than `bytesMin` is a problem (not for the cache journal: it judges its own file, issue 16 item 2). */
  const check = (key: string, dev: SiteDevice, bytesMin: number, what: string, sized = true): void => {
    if (dev.kind === 'block') {
      const problem = kernelBlockProblem(dev.path, config.volume.blockSize, Math.ceil(bytesMin / config.volume.blockSize));
      if (problem !== undefined) problems.push(`${key}: ${problem}`);
      return;
    }
    if (dev.kind !== 'loopback' && dev.kind !== 'serial') return; // memory: nothing to find; usb: the HAL enumerates the bus
    let st;
    try {
      st = statSync(dev.path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const fix = dev.kind === 'loopback' ? `; create it with: truncate -s ${bytesMin} ${dev.path}` : '; is the device plugged in?';
      problems.push(`${key}: ${dev.kind} device ${dev.path} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`}${fix}`);
      return;
    }
    if (dev.kind === 'loopback') {
      if (!st.isFile()) problems.push(`${key}: ${dev.path} is not a regular file; loopback devices are plain files`);
      else if (sized && st.size < bytesMin) problems.push(`${key}: ${dev.path} holds ${formatBytes(st.size)} but ${what} is ${formatBytes(bytesMin)}; grow it with: truncate -s ${bytesMin} ${dev.path}`);
    }
  };
  if (site.cache?.device.kind === 'block') {
    // The cache journal and the site's state files live beside a cache file; a raw device has no beside.
    problems.push(`sites.${site.name}.cache.device: ${site.cache.device.text} cannot hold the cache; block devices are storage. Put the cache on loopback:PATH (a file, e.g. on an SSD's file system) or memory:`);
  } else if (site.cache) {
    // A cache file cut short must never be grown back (the zeroes would hide the entries it
    // lost): the journal refuses it at open with the fix, or re-formats one that holds nothing.
    check(`sites.${site.name}.cache.device`, site.cache.device, site.cache.sizeBytes, 'cache.size', false);
  }
  if (site.storageParts !== undefined) {
    // A group of several volumes (issue 20): each volume's device against its own size.
    site.storageParts.forEach((m, i) => m.devices.forEach((d, j) => check(`sites.${site.name}.storage[${i}] (volume ${config.volumes[j]?.name ?? j})`, d, m.blockCounts[j]! * config.volume.blockSize, `volume ${config.volumes[j]?.name ?? j}'s size`)));
  } else {
    site.storage.forEach((d, i) => check(`sites.${site.name}.storage[${i}]`, d, config.volume.sizeBytes, config.multiVolume ? `volume ${config.volume.name}'s size` : 'volume.size'));
  }
  return problems;
}

/** Binds each of listen/nbd/admin for a moment, so a taken port is named before anything starts. */
export async function checkAddresses(site: SiteConfig): Promise<string[]> {
  const problems: string[] = [];
  for (const key of ['listen', 'nbd', 'admin'] as const) {
    const a = site[key];
    if (a === undefined) continue;
    const err = await probeListen(a.host, a.port);
    if (err === undefined) continue;
    const why =
      err.code === 'EADDRINUSE'
        ? `is taken by another process (is site ${site.name} already running? see: ss -ltnp 'sport = :${a.port}')`
        : err.code === 'EADDRNOTAVAIL'
          ? 'is not an address of this machine; run this site on the machine that owns it'
          : err.code === 'EACCES'
            ? 'needs privileges (ports below 1024); pick a port above 1023'
            : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN'
              ? `has a host name that does not resolve (${err.code})`
              : `cannot be bound (${err.code ?? err.message})`;
    problems.push(`sites.${site.name}.${key}: ${a.text} ${why}`);
  }
  return problems;
}

export function probeListen(host: string, port: number): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(err));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
}

/** Claims 5-7 at start: the primary (or standby) logs each mirror's distance and the warnings. */
function logGeography(config: ClusterConfig, site: SiteConfig, log: Logger): GeoReport | undefined {
  if ((site.role !== 'primary' && site.role !== 'standby') || site.mirrors.length === 0) return undefined;
  const mirrors = site.mirrors.map((name) => ({ name, ...(config.sites[name]?.location ? { location: config.sites[name]!.location! } : {}) }));
  const report = checkGeography({ name: site.name, ...(site.location ? { location: site.location } : {}) }, mirrors);
  for (const note of report.notes) log.info({ event: 'geography' }, note);
  for (const warning of report.warnings) log.warn({ event: 'geography' }, warning);
  return report;
}

/** The runtime's promote/demote, or a refusal naming why this site cannot. */
function roleChangeOf(runtime: SiteRuntime | undefined, action: 'promote' | 'demote', name: string): (reason: string, force?: boolean) => Promise<RoleChangeAnswer> {
  const fn = runtime?.[action];
  if (fn === undefined) return async () => Promise.reject(new RoleChangeError(runtime === undefined ? `site ${name} is still starting; retry in a moment` : `site ${name} cannot ${action}: its role has no ${action}`));
  return (reason, force) => fn.call(runtime, reason, force);
}

// Several volumes on one cluster (issue 20): what one consistency group looks like to the code
// that serves a single replicated address space. A group's config is the cluster's with the
// group's address space as its `volume`, each site's storage the group's volumes' devices side
// by side (hal/concat.ts), the site's cache split by volume, and its state files kept per group.
// Everything below (Replica, cores, executor, links) then runs unchanged, once per group, in
// the site's one process; the site's port, TLS identity, NBD server and admin server are shared
// (src/site/link-hub.ts, src/site/roles.ts).
//
// Why one cache file per group rather than windows of one file: a group's journal must never
// move. Windows would be placed by the volume list, so adding a volume to the file would shift
// every later group's journal onto another's bytes; a file per group (beside the configured
// one, sized to the group's share) stays where it is when volumes are added.
import { parseDeviceString, formatDeviceString } from '../../hal/devstring.js';
import type { ClusterConfig, GroupConfig, SiteConfig, SiteDevice } from './config.js';
import type { SiteContext } from './context.js';

/** The groups `site` takes part in: it carries their volumes, or relays them without storage. */
export function groupsOfSite(config: ClusterConfig, site: SiteConfig): GroupConfig[] {
  return config.groups.filter((g) => g.sites.includes(site.name) || (site.role === 'relay' && site.storage.length === 0) || site.role === 'witness');
}

/** The share of `site`'s cache that group `g` journals in: its volumes' part, block aligned. */
export function cacheShareBytes(config: ClusterConfig, site: SiteConfig, g: GroupConfig): number {
  const size = site.cache?.sizeBytes ?? 0;
  if (!config.multiVolume) return size;
  const carried = config.groups.filter((x) => x.sites.includes(site.name) || (site.role === 'relay' && site.storage.length === 0)).reduce((n, x) => n + x.volumes.length, 0);
  return Math.floor((size * g.volumes.length) / Math.max(1, carried) / 4096) * 4096;
}

function groupCacheDevice(dev: SiteDevice, g: GroupConfig): SiteDevice {
  const spec = dev.kind === 'loopback' ? { kind: 'loopback' as const, path: `${dev.path}.${g.name}` } : dev.kind === 'memory' ? { kind: 'memory' as const, label: `${dev.label}${dev.label ? '-' : ''}${g.name}` } : dev;
  const text = formatDeviceString(spec);
  return { ...parseDeviceString(text), text } as SiteDevice;
}

/** `site` as group `g` sees it: its devices for the group's volumes, its cache share, its mirrors that carry the group. */
function groupSite(config: ClusterConfig, g: GroupConfig, site: SiteConfig, kept: Set<string>): SiteConfig {
  if (!config.multiVolume) return site;
  const out: SiteConfig = { ...site, mirrors: site.mirrors.filter((m) => kept.has(m)) };
  if (site.cache !== undefined) out.cache = { device: groupCacheDevice(site.cache.device, g), sizeBytes: cacheShareBytes(config, site, g) };
  const vs = site.volumeStorage;
  if (vs !== undefined && g.sites.includes(site.name)) {
    const perVolume = g.volumes.map((v) => vs[v.name] ?? []);
    out.storage = perVolume[0] ?? [];
    if (g.volumes.length > 1) {
      out.storageParts = out.storage.map((_, i) => ({ devices: perVolume.map((devs) => devs[i]!), blockCounts: g.volumes.map((v) => v.blockCount) }));
    }
  }
  return out;
}

/** The cluster as group `g` sees it: its address space as the volume, the sites that carry it (plus relays without storage and the witness). */
export function groupClusterConfig(config: ClusterConfig, g: GroupConfig): ClusterConfig {
  if (!config.multiVolume) return config;
  const keptNames = config.siteNames.filter((n) => {
    const s = config.sites[n]!;
    return g.sites.includes(n) || s.role === 'witness' || (s.role === 'relay' && s.storage.length === 0);
  });
  const kept = new Set(keptNames);
  const sites = Object.fromEntries(keptNames.map((n) => [n, groupSite(config, g, config.sites[n]!, kept)]));
  return { ...config, volume: g.volume, volumes: g.volumes, groups: [g], sites, siteNames: keptNames };
}

/** The site context of group `g`: its config, its site, its link geometry (HELLO names the group). */
export function groupContext(ctx: SiteContext, g: GroupConfig): SiteContext {
  if (!ctx.config.multiVolume) return { ...ctx, group: g };
  const config = groupClusterConfig(ctx.config, g);
  const site = config.sites[ctx.site.name];
  if (site === undefined) throw new Error(`site ${ctx.site.name} does not carry group ${g.name}`);
  const geometry = { volumeBytes: BigInt(g.volume.sizeBytes), blockBytes: g.volume.blockSize, group: g.index };
  return { ...ctx, config, site, linkSecurity: { ...ctx.linkSecurity, geometry }, log: ctx.log.child({ group: g.name }), group: g };
}

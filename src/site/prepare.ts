// First-run preparation of a loopback cluster (issue 8: `npm start` creates the files and
// the cluster key on first run). Separate from runSite on purpose: a site refuses missing
// devices (a missing disk on a Pi is a fault to report, not to paper over); only the
// one-machine demo path creates them.
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { ClusterConfig, SiteDevice } from './config.js';
import { writeKeyFile } from './key.js';
import { groupClusterConfig, groupsOfSite } from './volumes.js';

export interface Prepared {
  /** Loopback files created (sparse, at the size the file asks for). */
  createdFiles: string[];
  /** The key file, when it had to be made. */
  createdKey?: string;
}

/** Creates missing loopback cache/storage files of the given sites and a missing key file. Existing files are left alone. */
export function prepareLoopbackCluster(config: ClusterConfig, siteNames: readonly string[] = config.siteNames): Prepared {
  const createdFiles: string[] = [];
  const create = (dev: SiteDevice, bytes: number): void => {
    if (dev.kind !== 'loopback' || existsSync(dev.path)) return;
    mkdirSync(dirname(dev.path), { recursive: true, mode: 0o700 });
    const fd = openSync(dev.path, 'wx', 0o600); // images and caches are private to the service user
    try {
      ftruncateSync(fd, bytes);
    } finally {
      closeSync(fd);
    }
    createdFiles.push(dev.path);
  };
  for (const name of siteNames) {
    const site = config.sites[name];
    if (site === undefined) throw new Error(`no site named ${name} in ${config.file}`);
    if (config.multiVolume) {
      // Several volumes (issue 20): a cache file per consistency group, a file per volume.
      for (const g of groupsOfSite(config, site)) {
        const gs = groupClusterConfig(config, g).sites[name];
        if (gs?.cache) create(gs.cache.device, gs.cache.sizeBytes);
      }
      for (const v of config.volumes) for (const d of site.volumeStorage?.[v.name] ?? []) create(d, v.sizeBytes);
      continue;
    }
    if (site.cache) create(site.cache.device, site.cache.sizeBytes);
    for (const d of site.storage) create(d, config.volume.sizeBytes);
  }
  const key = config.secret.source === 'file' && !existsSync(config.secret.path!) ? writeKeyFile(config.secret.path!) : undefined;
  return { createdFiles, ...(key ? { createdKey: key } : {}) };
}

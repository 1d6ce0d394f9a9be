// bench:nbd's export under test: the geomirror primary with 0 mirrors, in this process (issue 6:
// "fio over NBD for the primary with 0 mirrors against nbdkit file"). Everything a host write
// goes through on the primary is here: the NBD export, the host API, the pure core, the battery-
// backed cache journal (a loopback file beside the image) and the storage array. Only the
// replication links are absent. A cluster file refuses a primary without mirrors (claim 1), so
// the bench builds one with a placeholder mirror and empties the list, as bench/primary-alone.mjs
// does for bench/compare.ts.
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { regionCount } from '../src/core/regions.js';
import { defaultLimits } from '../src/core/types.js';
import { parseConfig } from '../src/site/config.js';
import { replicaExport } from '../src/site/host-export.js';
import { createLogger } from '../src/site/log.js';
import { createSiteMetrics } from '../src/site/metrics.js';
import { openSiteDevices, Replica } from '../src/site/replica.js';
import type { NbdExport } from '../src/nbd/export.js';
import { buildLinkSecurity } from '../src/site/link-security.js';

/** Cache size of the bench primary: the default of the loopback target. */
const cacheBytes = 64 * 1024 * 1024;

export async function createExport(file: string, sizeBytes: number): Promise<{ export: NbdExport; close(): Promise<void> }> {
  const dir = dirname(file);
  const cache = join(dir, 'primary-bench.cache');
  const cfgFile = join(dir, 'primary-bench.yaml');
  writeFileSync(
    cfgFile,
    `cluster: bench
secret: ${randomBytes(32).toString('hex')}
volume: { name: vol0, size: ${sizeBytes}, blockSize: 4096 }
sites:
  local: { role: primary, nbd: 127.0.0.1:1, cache: { device: "loopback:${cache}", size: ${cacheBytes} }, storage: ["loopback:${file}"], mirrors: [placeholder] }
  placeholder: { role: mirror, listen: 127.0.0.1:2, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
`,
  );
  const config = parseConfig(readFileSync(cfgFile, 'utf8'), cfgFile);
  const site = config.sites.local!;
  site.mirrors = [];
  const log = createLogger({ site: 'local', level: 'warn' });
  const metrics = createSiteMetrics({ site: 'local', role: 'primary', cluster: 'bench', processMetrics: false });
  const ctx = { config, site, secret: Buffer.alloc(32), linkSecurity: buildLinkSecurity(config, undefined), log, metrics }; // no links: a primary without mirrors
  const devices = await openSiteDevices(ctx, regionCount(sizeBytes, defaultLimits.regionBytes));
  const replica = new Replica(ctx, devices);
  await replica.start();
  const exp = replicaExport(replica, { name: 'vol0', description: 'geomirror primary, 0 mirrors (bench)', sizeBytes });
  return { export: exp, close: () => replica.stop() };
}

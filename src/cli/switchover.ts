// `geomirror promote --site X` and `geomirror demote --site Y`: planned switchover (issue 10
// item 5). Each sends one POST to the site's admin address (HTTPS), with a one-time token made
// from the cluster key for that site, method, path, reason and force (src/site/admin-auth.ts),
// so a captured request can be neither changed nor replayed; prints what the site answered.
//   demote: the primary stops taking host writes, drains what is in flight to every in-sync
//           site, then comes back as a mirror (same epoch).
//   promote: the standby takes over as it would in a failover (new epoch persisted first, every
//           other site resynced from its image), without waiting for the primary to go silent.
// The usual order is demote the primary, then promote the standby; promote alone also works
// (the new epoch fences the old primary, which rejoins as a mirror).
// The command line (their options and help) is switchover-command.ts, which loads this module
// when the command runs.
import { ConfigError, loadConfig, type ClusterConfig } from '../site/config.js';
import { adminCredentials, adminRequest } from './admin-client.js';

/** Draining a primary may take a while (the site bounds it at 30 s). */
const requestTimeoutMs = 45_000;

export interface SwitchoverResult {
  code: number;
  body: string;
}

export async function requestRoleChange(config: ClusterConfig, action: 'promote' | 'demote', siteName: string, reason?: string, force = false): Promise<SwitchoverResult> {
  const site = config.sites[siteName];
  if (site === undefined) throw new Error(`no site named ${siteName} in ${config.file}; sites are ${config.siteNames.join(', ')}`);
  if (site.admin === undefined) throw new Error(`sites.${siteName}.admin is not set in ${config.file}; ${action} talks to the site's admin address`);
  const creds = adminCredentials(config);
  const query = [...(reason ? [`reason=${encodeURIComponent(reason)}`] : []), ...(force ? ['force=1'] : [])];
  const path = `/${action}${query.length > 0 ? `?${query.join('&')}` : ''}`;
  const { host, port } = site.admin;
  try {
    return await adminRequest({ host, port, method: 'POST', path, site: siteName, creds, timeoutMs: requestTimeoutMs, bodyCharsMax: 64 * 1024 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ECONNREFUSED') throw new Error(`${siteName} (${site.admin.text}): connection refused (is the site running?)`);
    if (e.code === 'ETIMEDOUT') throw new Error(`${siteName} (${site.admin.text}) did not answer within ${requestTimeoutMs / 1000} s`);
    throw err;
  }
}

/** What `geomirror promote` and `geomirror demote` are given (src/cli/switchover-command.ts declares the options). */
export interface RoleChangeCliOptions {
  site: string;
  config: string;
  reason?: string;
  force?: boolean;
}

/** `geomirror promote|demote`: asks the site, prints its answer; exit code 1 when it refuses or cannot be reached. */
export async function roleChangeCommand(action: 'promote' | 'demote', opts: RoleChangeCliOptions): Promise<void> {
  try {
    const config = loadConfig(opts.config);
    const r = await requestRoleChange(config, action, opts.site, opts.reason, opts.force === true);
    if (r.code === 200) {
      const a = JSON.parse(r.body) as { site: string; epoch: number; phase: string };
      process.stdout.write(action === 'promote' ? `${a.site}: promotion started (phase ${a.phase}); watch it with geomirror status --config ${opts.config}\n` : `${a.site}: demoted; it is a mirror of epoch ${a.epoch} now. Promote the standby next: geomirror promote --site NAME\n`);
    } else {
      process.stderr.write(`geomirror ${action}: ${opts.site} refused (HTTP ${r.code}): ${r.body.trim()}\n`);
      process.exitCode = 1;
    }
  } catch (e) {
    process.stderr.write(`geomirror ${action}: ${e instanceof ConfigError ? e.message : (e as Error).message}\n`);
    process.exitCode = 1;
  }
}

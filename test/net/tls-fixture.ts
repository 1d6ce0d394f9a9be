// TLS for in-process tests that play a site: the cluster's CA and the site's certificate are
// made as `geomirror start` makes them (src/site/pki.ts preparePki), and the LinkSecurity is the
// one a real site of that name builds (src/site/link-security.ts).
import type { LinkSecurity } from '../../src/net/index.js';
import type { ClusterConfig } from '../../src/site/config.js';
import { buildLinkSecurity, SiteTlsIdentity } from '../../src/site/link-security.js';
import { preparePki } from '../../src/site/pki.js';

const quiet = { info: () => {}, warn: () => {} };

/** The LinkSecurity of site `site` of `config`, creating the CA and its certificate when missing. */
export async function siteSecurity(config: ClusterConfig, site: string): Promise<LinkSecurity> {
  await preparePki(config, [site]);
  return buildLinkSecurity(config, config.transport === 'tls' ? new SiteTlsIdentity(config, site, quiet) : undefined);
}
